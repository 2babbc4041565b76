"""The AP / RS family rejects bad input identically on every backend, whatever the dtype.

``backend="numba"`` reads float32 / float64 arrays in place and leaves the value checks (finite
logits, label values) to the kernel's first pass; the numpy reference checks them up front.  Both
must raise the same exception with the same message, also when one call breaks several rules at
once (the order is: arrays, shapes, options, then values).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rankspec.refimpl as R

pytest.importorskip("numba")

LOSSES = ("ap_loss", "rs_loss", "bucketed_ap_loss", "bucketed_rs_loss")
CONTINUOUS = {"rs_loss", "bucketed_rs_loss"}
BAD_VALUES = ("nan_logit", "inf_logit", "nan_label", "label_two", "label_half", "label_negative")


def _outcome(fn):
    try:
        r = fn()
    except (ValueError, TypeError) as exc:
        return type(exc), str(exc)
    return None, r.loss


@st.composite
def bad_calls(draw):
    name = draw(st.sampled_from(LOSSES))
    n = draw(st.integers(1, 40))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    s = np.asarray(draw(st.lists(st.floats(-5, 5), min_size=n, max_size=n)), dtype)
    t = np.zeros(n, dtype)
    t[draw(st.integers(0, n - 1))] = 1.0
    faults = draw(st.lists(st.sampled_from(BAD_VALUES), min_size=1, max_size=3, unique=True))
    for fault in faults:
        i = draw(st.integers(0, n - 1))
        if fault == "nan_logit":
            s[i] = np.nan
        elif fault == "inf_logit":
            s[i] = -np.inf
        elif fault == "nan_label":
            t[i] = np.nan
        elif fault == "label_two":
            t[i] = 2.0
        elif fault == "label_half":
            t[i] = 0.5  # an error for AP labels, a valid IoU target for RS
        else:
            t[i] = -0.25
    delta = draw(st.sampled_from([0.0, 0.5, -1.0]))  # -1: a bad option on top of bad values
    return name, s, t, delta


@settings(max_examples=150, deadline=None)
@given(bad_calls())
def test_numba_and_numpy_raise_the_same_first_error(call):
    name, s, t, delta = call
    f = getattr(R, name)
    ref = _outcome(lambda: f(s.copy(), t.copy(), delta))
    fast = _outcome(lambda: f(s.copy(), t.copy(), delta, backend="numba"))
    if ref[0] is None:  # only possible for RS with label 0.5 and nothing else wrong
        assert name in CONTINUOUS and fast[0] is None and abs(fast[1] - ref[1]) <= 1e-10
        return
    assert fast == ref
    if delta < 0:  # options are checked before the values, on every backend
        assert "delta must be >= 0" in ref[1]


def test_the_error_names_the_argument_and_the_value_rule():
    s = np.array([0.3, np.nan, 0.1], np.float32)
    t = np.array([1.0, 0.0, 2.0], np.float32)
    for backend in ("numpy", "numba"):
        with pytest.raises(ValueError, match=r"^logits contains 1 NaN or infinite value\(s\)"):
            R.ap_loss(s, t, 0.0, backend=backend)
        with pytest.raises(ValueError, match=r"^labels must contain only 0 \(negative\) and 1 \(positive\); found 2.0"):
            R.ap_loss(np.nan_to_num(s), t, 0.0, backend=backend)
        with pytest.raises(ValueError, match=r"^targets contains 1 NaN"):
            R.rs_loss(np.nan_to_num(s), np.array([1.0, np.nan, 0.0]), 0.0, backend=backend)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.bool_])
def test_numba_reads_any_real_dtype_and_matches_the_reference(dtype):
    # AP at delta = 0 by hand: logits [3, 1, 2, 0], labels [1, 0, 1, 0]: the order is
    # 3 (pos), 2 (pos), 1 (neg), 0 (neg): no negative above a positive, both precisions 1, loss 0.
    s = np.array([3, 1, 2, 0]).astype(dtype if dtype is not np.bool_ else np.float32)
    y = np.array([1, 0, 1, 0]).astype(dtype)
    for backend in ("numpy", "numba"):
        assert R.ap_loss(s, y, 0.0, backend=backend).loss == 0.0
    # swap one: logits [1, 3, 2, 0]: ranks 3 (neg), 2 (pos: 1 negative above -> precision 1/2),
    # 1 (pos: rank 3, 1 negative above -> precision 2/3); loss = 1 - (1/2 + 2/3) / 2 = 5/12
    s2 = np.array([1, 3, 2, 0]).astype(s.dtype)
    for backend in ("numpy", "numba"):
        assert abs(R.ap_loss(s2, y, 0.0, backend=backend).loss - 5 / 12) < 1e-15


@pytest.mark.parametrize("layout", ["matrix", "big-endian", "strided", "read-only", "masked", "fortran-2d"])
def test_numba_reads_every_array_layout_like_the_reference(layout):
    """Arrays the numba backend reads in place (plain float32 ndarrays) and those it converts first
    (subclasses such as np.matrix and masked arrays, non-native byte order) give the reference's
    loss and gradient in the input's shape."""
    rng = np.random.default_rng(5)
    s = rng.normal(size=50).astype(np.float32)
    t = (rng.random(50) < 0.3).astype(np.float32)
    if layout == "matrix":
        a, b = np.matrix(s), np.matrix(t)
    elif layout == "big-endian":
        a, b = s.astype(">f4"), t.astype(">f4")
    elif layout == "strided":
        a, b = np.repeat(s, 2)[::2], np.repeat(t, 2)[::2]
    elif layout == "read-only":
        a, b = s.copy(), t.copy()
        a.setflags(write=False)
        b.setflags(write=False)
    elif layout == "masked":
        a, b = np.ma.array(s), np.ma.array(t)
    else:
        a, b = np.asfortranarray(s.reshape(5, 10)), np.asfortranarray(t.reshape(5, 10))
    ref = R.ap_loss(a, b, 0.5)
    fast = R.ap_loss(a, b, 0.5, backend="numba")
    assert fast.grad.shape == ref.grad.shape
    assert abs(fast.loss - ref.loss) <= 1e-12
    assert np.allclose(fast.grad, ref.grad, rtol=1e-10, atol=1e-15)

"""Bad input to the reference AP / RS / bucketed losses (issue 2, Sec. 8).

Every bad input raises ValueError or TypeError with a message that names the offending argument
(and the rule); defined edge cases are covered in test_ref_tiny_cases / test_ref_properties.
"""

from __future__ import annotations

import numpy as np
import pytest

from rankspec.refimpl import (ap_loss, bucketed_ap_loss, bucketed_rs_loss, make_buckets, rank_counts, rs_loss,
                              smoothed_step)

# (id, function, name of its label argument, continuous labels?)
LOSSES = [
    pytest.param(ap_loss, "labels", False, {}, id="ap"),
    pytest.param(ap_loss, "labels", False, {"interpolated": True}, id="ap_interp"),
    pytest.param(rs_loss, "targets", True, {}, id="rs"),
    pytest.param(bucketed_ap_loss, "labels", False, {}, id="bap"),
    pytest.param(bucketed_rs_loss, "targets", True, {}, id="brs"),
]
S = np.array([0.5, -0.25, 1.0, 0.0])
LAB = np.array([1.0, 0.0, 0.0, 1.0])
IOU = np.array([0.75, 0.0, 0.0, 0.5])


def good_labels(continuous):
    return IOU.copy() if continuous else LAB.copy()


@pytest.mark.parametrize("fn, lname, continuous, extra", LOSSES)
class TestEveryLoss:
    def test_good_input_is_accepted(self, fn, lname, continuous, extra):
        """The baseline for the failures below: same call, valid arguments (incl. int / bool / float32)."""
        r = fn(S, good_labels(continuous), 0.5, **extra)
        assert np.isfinite(r.loss)
        fn(S.astype(np.float32), good_labels(continuous).astype(np.float32), 0.5, **extra)
        fn(np.array([2, -1, 0, 1]), LAB.astype(bool) if not continuous else IOU, 1, **extra)
        fn(S.tolist(), good_labels(continuous).tolist(), np.float32(0.5), **extra)

    @pytest.mark.parametrize("logits, labels", [
        (S, np.ones(3)),
        (S, np.ones(5)),
        (S.reshape(2, 2), np.ones(4)),  # same size, different shape
        (S, np.ones((4, 1))),
    ])
    def test_mismatched_shapes(self, fn, lname, continuous, extra, logits, labels):
        with pytest.raises(ValueError, match=rf"logits has shape .* but {lname} has shape .*must match"):
            fn(logits, labels, 0.5, **extra)

    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
    def test_nonfinite_logits(self, fn, lname, continuous, extra, bad):
        s = S.copy()
        s[2] = bad
        with pytest.raises(ValueError, match=r"logits contains 1 NaN or infinite value"):
            fn(s, good_labels(continuous), 0.5, **extra)

    @pytest.mark.parametrize("bad", [np.nan, np.inf])
    def test_nonfinite_labels(self, fn, lname, continuous, extra, bad):
        y = good_labels(continuous)
        y[1] = bad
        with pytest.raises(ValueError, match=rf"{lname} contains 1 NaN or infinite"):
            fn(S, y, 0.5, **extra)

    def test_labels_outside_domain(self, fn, lname, continuous, extra):
        bad_values = [1.5, -0.1, 2.0] if continuous else [2.0, -1.0, 0.5]
        rule = r"must lie in \[0, 1\]" if continuous else r"must contain only 0 \(negative\) and 1 \(positive\)"
        for bad in bad_values:
            y = good_labels(continuous)
            y[1] = bad
            with pytest.raises(ValueError, match=rf"{lname} {rule}"):
                fn(S, y, 0.5, **extra)

    @pytest.mark.parametrize("delta, exc, msg", [
        (-0.5, ValueError, r"delta must be >= 0"),
        (-1e-300, ValueError, r"delta must be >= 0"),
        (np.nan, ValueError, r"delta must be finite"),
        (np.inf, ValueError, r"delta must be finite"),
        ("0.5", TypeError, r"delta must be a real number"),
        (None, TypeError, r"delta must be a real number"),
        (True, TypeError, r"delta must be a real number, not a bool"),
        (1 + 0j, TypeError, r"delta must be a real number"),
        (np.array([0.5, 1.0]), TypeError, r"delta must be a scalar"),
    ])
    def test_bad_delta(self, fn, lname, continuous, extra, delta, exc, msg):
        with pytest.raises(exc, match=msg):
            fn(S, good_labels(continuous), delta, **extra)

    @pytest.mark.parametrize("which", ["logits", "labels"])
    def test_empty_input(self, fn, lname, continuous, extra, which):
        name = "logits" if which == "logits" else lname
        logits = np.array([]) if which == "logits" else S
        with pytest.raises(ValueError, match=rf"{name} is empty"):
            fn(logits, np.array([]), 0.5, **extra)
        if which == "logits":  # empty of any shape, e.g. a batch with no anchors
            with pytest.raises(ValueError, match=r"logits is empty"):
                fn(np.zeros((2, 0)), np.zeros((2, 0)), 0.5, **extra)

    @pytest.mark.parametrize("bad, msg", [
        (np.array([1 + 0j, 0j, 2j, 1]), r"real numeric or boolean dtype, got dtype complex128"),
        (np.array(["a", "b", "c", "d"]), r"real numeric or boolean dtype, got dtype <U1"),
        (np.array([b"a", b"b", b"c", b"d"]), r"real numeric or boolean dtype"),
        (np.array([1.0, None, 0.0, 1.0], dtype=object), r"must be a numeric array, got an object array"),
        (np.array(["2020-01-01"] * 4, dtype="datetime64[D]"), r"real numeric or boolean dtype"),
    ])
    @pytest.mark.parametrize("which", ["logits", "labels"])
    def test_wrong_dtype(self, fn, lname, continuous, extra, bad, msg, which):
        name = "logits" if which == "logits" else lname
        args = (bad, good_labels(continuous)) if which == "logits" else (S, bad)
        with pytest.raises(TypeError, match=rf"{name} {msg}|{name} must"):
            fn(*args, 0.5, **extra)

    def test_ragged_input(self, fn, lname, continuous, extra):
        with pytest.raises(TypeError, match=r"logits must be array-like"):
            fn([[1.0, 0.0], [1.0]], [1.0, 0.0, 0.0], 0.5, **extra)

    @pytest.mark.parametrize("kw, value, msg", [
        ("self_rank", "two", r"self_rank must be one of \['h0', 'one', 'half'\], got 'two'"),
        ("self_rank", None, r"self_rank must be one of"),
        ("tie_value", 0.3, r"tie_value must be 0.0, 0.5 or 1.0, got 0.3"),
        ("tie_value", "1", r"tie_value must be 0.0, 0.5 or 1.0"),
        ("tie_value", True, r"tie_value must be 0.0, 0.5 or 1.0"),
        ("normalization", "mean", r"normalization must be one of \['positives', 'none'\], got 'mean'"),
        ("normalization", None, r"normalization must be one of"),
    ])
    @pytest.mark.parametrize("delta", [0.0, 0.5])
    def test_invalid_convention_values(self, fn, lname, continuous, extra, kw, value, msg, delta):
        """Rejected at every delta and even when there is no positive (a typo must never pass)."""
        with pytest.raises(ValueError, match=msg):
            fn(S, good_labels(continuous), delta, **{kw: value}, **extra)
        with pytest.raises(ValueError, match=msg):
            fn(S, np.zeros(4), delta, **{kw: value}, **extra)

    def test_self_term_h0_with_tie_value_zero_is_rejected(self, fn, lname, continuous, extra):
        """self_rank='h0' at delta 0 with tie_value 0 makes rank+(i) possibly 0: precision undefined."""
        with pytest.raises(ValueError, match=r"self_rank='h0' with delta=0 and tie_value=0"):
            fn(S, good_labels(continuous), 0.0, self_rank="h0", tie_value=0.0, **extra)
        fn(S, good_labels(continuous), 0.0, self_rank="one", tie_value=0.0, **extra)  # the valid alternative

    def test_inputs_are_not_modified(self, fn, lname, continuous, extra):
        s, y = S.copy(), good_labels(continuous)
        fn(s, y, 0.5, **extra)
        np.testing.assert_array_equal(s, S)
        np.testing.assert_array_equal(y, good_labels(continuous))


@pytest.mark.parametrize("fn", [bucketed_ap_loss, bucketed_rs_loss])
@pytest.mark.parametrize("has_positives", [True, False], ids=["positives", "no-positives"])
def test_invalid_tied_negatives(fn, has_positives):
    y = (IOU if fn is bucketed_rs_loss else LAB) if has_positives else np.zeros(4)
    with pytest.raises(ValueError, match=r"tied_negatives must be one of \['above', 'below'\], got 'left'"):
        fn(S, y, 0.5, tied_negatives="left")


def test_primitives_reject_bad_arguments():
    with pytest.raises(ValueError, match=r"delta must be >= 0"):
        smoothed_step(np.zeros(2), -1.0)
    with pytest.raises(ValueError, match=r"tie_value must be 0.0, 0.5 or 1.0"):
        smoothed_step(np.zeros(2), 0.0, tie_value=0.7)
    with pytest.raises(ValueError, match=r"tie_value must be 0.0, 0.5 or 1.0"):
        smoothed_step(np.zeros(2), 1.0, tie_value=0.7)
    with pytest.raises(ValueError, match=r"self_rank must be one of"):
        rank_counts(0.0, np.array([0.0]), 0, np.array([1.0]), 0.5, self_rank="self")
    with pytest.raises(ValueError, match=r"tied_negatives must be one of"):
        make_buckets(np.array([0.0]), np.array([1.0]), 0.5, tied_negatives="up")


def test_gpu_like_array_is_rejected_with_hint():
    class FakeDeviceArray:
        __cuda_array_interface__ = {"shape": (4,), "typestr": "<f8", "data": (0, False), "version": 3}

    with pytest.raises(TypeError, match=r"logits lives on a GPU.*host memory"):
        ap_loss(FakeDeviceArray(), LAB, 0.5)


@pytest.mark.parametrize("value", ["no", 1, 0.0, None])
def test_flags_must_be_bools_not_truthy_values(value):
    from rankspec.refimpl import ap_loss, bucketed_ap_loss, bucketed_rs_loss

    with pytest.raises(TypeError, match="interpolated"):
        ap_loss([1.0, 0.0], [1, 0], interpolated=value)
    with pytest.raises(TypeError, match="threshold"):
        bucketed_ap_loss([1.0, 0.0], [1, 0], threshold=value)
    with pytest.raises(TypeError, match="threshold"):  # checked even with no positive
        bucketed_rs_loss([1.0, 0.0], [0.0, 0.0], threshold=value)
    for backend in ("numpy", "numba"):  # validated before the zero-positives return, on every backend
        with pytest.raises(TypeError, match="interpolated"):
            ap_loss([1.0, 0.0, 2.0], np.zeros(3), interpolated=value, backend=backend)

"""The Numba fast paths (backend="numba") against the NumPy reference (issue 5).

Every property draws a problem and a set of conventions, runs the reference and the fast path on the
same input, and asserts either that both raise the same exception (type and message) or that loss,
terms and gradient agree to 1e-10 (float64) -- 1e-5 for float32 input, although the kernels widen
float32 exactly and in practice agree to ~1e-12 there too.  The helpers at the top are shared with
test_fast_cuda.py.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankspec.refimpl import ap_loss, bucketed_ap_loss, bucketed_rs_loss, rs_loss
from rankspec.refimpl.fast import BACKENDS, available_backends, check_backend
from rankspec.refimpl.fast import _numba_kernels as K
from rankspec.refimpl.fast._numba_backend import numba_loss
from strategies import no_relevant_negative_problems, ranking_problems

TOL64 = 1e-10
TOL32 = 1e-5

#: short name -> (function, continuous labels?)
LOSS_FUNCS = {"ap": (ap_loss, False), "rs": (rs_loss, True), "bap": (bucketed_ap_loss, False),
              "brs": (bucketed_rs_loss, True)}
FULL_NAMES = {"ap": "ap_loss", "rs": "rs_loss", "bap": "bucketed_ap_loss", "brs": "bucketed_rs_loss"}


# --------------------------------------------------------------------------- shared helpers

def labels_for(name, targets):
    """The label argument of loss ``name`` for a problem's IoU targets."""
    t = np.asarray(targets, dtype=np.float64)
    return t if LOSS_FUNCS[name][1] else (t > 0).astype(np.float64)


def outcome(fn, *args, **kwargs):
    """("ok", LossResult) or ("raise", (exception type, message))."""
    try:
        return "ok", fn(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        return "raise", (type(exc), str(exc))


def to_host(grad):
    return grad.copy_to_host() if hasattr(grad, "copy_to_host") else np.asarray(grad)


def assert_matches(ref, fast, tol):
    """Loss, every term and the gradient agree to ``tol`` (absolute, scaled by 1 + |reference|)."""
    assert isinstance(fast.loss, float)
    assert abs(fast.loss - ref.loss) <= tol * (1 + abs(ref.loss)), (ref.loss, fast.loss)
    assert set(fast.terms) == set(ref.terms)
    for k, v in ref.terms.items():
        assert abs(fast.terms[k] - v) <= tol * (1 + abs(v)), (k, v, fast.terms[k])
    g = to_host(fast.grad)
    assert g.shape == ref.grad.shape and g.dtype == np.float64
    err = np.abs(g - ref.grad)
    assert np.all(err <= tol * (1 + np.abs(ref.grad))), (float(err.max()), ref.grad, g)


def assert_same_outcome(fn, args, kwargs, backend, tol=TOL64, convert=None):
    """Reference and ``backend`` both raise the same exception, or agree to ``tol``; returns the outcome."""
    kind_r, ref = outcome(fn, *args, **kwargs)
    fast_args = convert(args) if convert is not None else args
    kind_f, fast = outcome(fn, *fast_args, backend=backend, **kwargs)
    assert kind_r == kind_f, (kind_r, ref, kind_f, fast)
    if kind_r == "raise":
        assert ref == fast
    else:
        assert_matches(ref, fast, tol)
    return kind_r


@st.composite
def conventions(draw, name):
    """Keyword arguments of loss ``name``: every convention, including combinations the reference rejects."""
    kw = {"self_rank": draw(st.sampled_from(["h0", "one", "half"])),
          "tie_value": draw(st.sampled_from([1.0, 0.5, 0.0])),
          "normalization": draw(st.sampled_from(["positives", "none"]))}
    if name == "ap":
        kw["interpolated"] = draw(st.booleans())
    if name in ("bap", "brs"):
        kw["threshold"] = draw(st.booleans())
        kw["tied_negatives"] = draw(st.sampled_from(["above", "below"]))
    return kw


def problems():
    """General problems: dyadic grids (exact arithmetic, frequent ties), coarse 9-value ties, real
    floats with real deltas, equal IoUs, no negatives, no positives."""
    return st.one_of(
        ranking_problems(max_size=30),
        ranking_problems(max_size=30, ties=True),
        ranking_problems(max_size=30, grid=False, delta=st.floats(1e-3, 3.0)),
        ranking_problems(max_size=30, equal_ious=True),
        ranking_problems(max_size=12, min_pos=0, max_pos=0),
        no_relevant_negative_problems(max_size=20),
    )


# --------------------------------------------------------------------------- the main properties

@pytest.mark.parametrize("name", list(LOSS_FUNCS))
@settings(max_examples=60)
@given(data=st.data())
def test_numba_matches_reference(name, data):
    """Every loss, every convention, ties / delta = 0 / edge cases: same numbers or the same error."""
    prob = data.draw(problems())
    kw = data.draw(conventions(name))
    fn = LOSS_FUNCS[name][0]
    assert_same_outcome(fn, (prob.logits, labels_for(name, prob.targets), prob.delta), kw, "numba")


@pytest.mark.parametrize("name", list(LOSS_FUNCS))
@settings(max_examples=25)
@given(prob=ranking_problems(max_size=30), data=st.data())
def test_numba_float32_input(name, prob, data):
    """float32 logits and labels: the same as the reference on the same float32 arrays."""
    kw = data.draw(conventions(name))
    s32 = prob.logits.astype(np.float32)
    y32 = labels_for(name, prob.targets).astype(np.float32)
    assert_same_outcome(LOSS_FUNCS[name][0], (s32, y32, prob.delta), kw, "numba", tol=TOL32)


@pytest.mark.parametrize("name", list(LOSS_FUNCS))
@settings(max_examples=15)
@given(prob=ranking_problems(min_size=2, max_size=40, ties=True), data=st.data())
def test_numba_parallel_kernels(name, prob, data):
    """The multi-threaded O(N) passes (used for large inputs) give the serial passes' numbers."""
    kw = data.draw(conventions(name))
    fn = LOSS_FUNCS[name][0]
    y = labels_for(name, prob.targets)
    kind, ref = outcome(fn, prob.logits, y, prob.delta, **kw)
    if kind == "raise":
        return
    interp = kw.pop("interpolated", False)
    fast = numba_loss(FULL_NAMES[name], prob.logits, y, prob.delta, interp, parallel=True, **kw)
    assert_matches(ref, fast, TOL64)


@pytest.mark.parametrize("name", list(LOSS_FUNCS))
@pytest.mark.parametrize("case", ["normal", "clumped", "tied", "spread"])
def test_numba_larger_problems(name, case):
    """A few hundred logits: exercises the lookup table (clumped boundaries force its binary-search
    fallback, tied positives its deduplication, a huge spread its degenerate-cell guard)."""
    rng = np.random.default_rng(zlib.crc32(f"{name}-{case}".encode()))
    n = 600
    if case == "normal":
        s = rng.normal(0.0, 1.5, n)
    elif case == "clumped":
        s = np.where(rng.random(n) < 0.5, rng.normal(0, 1e-9, n), rng.normal(0, 2, n))
    elif case == "tied":
        s = rng.integers(-3, 4, n) * 0.5
    else:
        s = rng.normal(0, 1, n) * np.where(rng.random(n) < 0.01, 1e12, 1.0)
    t = np.where(rng.random(n) < 0.2, rng.integers(1, 9, n) / 8.0, 0.0)
    y = labels_for(name, t)
    fn = LOSS_FUNCS[name][0]
    for delta in (0.0, 0.5, 1e-6):
        assert_same_outcome(fn, (s, y, delta), {}, "numba")


def test_interpolated_and_plain_ap_tiny_case_by_hand():
    """AP at delta = 0, logits [3, 2, 1, 0] with labels [1, 0, 1, 1]: the fast path's numbers by hand.

    Ascending: positive 0.0 has rank 4, rank+ 3 -> precision 3/4; positive 1.0: rank 3, rank+ 2 -> 2/3;
    positive 3.0: precision 1.  Plain AP loss = mean(1/4, 1/3, 0) = 7/36.  Interpolated (running max
    from the lowest logit): 3/4, max(3/4, 2/3) = 3/4, 1 -> loss = mean(1/4, 1/4, 0) = 1/6.
    The negative 2.0 is above positives 1.0 and 0.0: gradient (1/4 + 1/3) / 3 plain (pmf 1 each,
    error / |P|), (1/4 + 1/4) / 3 interpolated.
    """
    s = np.array([3.0, 2.0, 1.0, 0.0])
    y = np.array([1.0, 0.0, 1.0, 1.0])
    plain = ap_loss(s, y, 0.0, backend="numba")
    assert plain.loss == pytest.approx(7 / 36, abs=1e-15)
    assert plain.grad[1] == pytest.approx((1 / 4 + 1 / 3) / 3, abs=1e-15)
    np.testing.assert_allclose(plain.grad[[0, 2, 3]], [0.0, -1 / 9, -1 / 12], atol=1e-15)
    interp = ap_loss(s, y, 0.0, True, backend="numba")
    assert interp.loss == pytest.approx(1 / 6, abs=1e-15)
    assert interp.grad[1] == pytest.approx(1 / 6, abs=1e-15)


def test_rs_sorting_tiny_case_by_hand():
    """RS at delta = 0 (tie_value 1, self term H(0) = 1), no negatives, logits [2, 1], IoUs [0.25, 1].

    Positive with IoU 1 (logit 1) sees the other above it: rank+ = 2, current sorting error
    ((1 - 0.25) + (1 - 1)) / 2 = 0.375; target counts only IoU >= 1: 0, so error 0.375 and, the other
    being missorted (IoU 0.25 < 1), it is pushed to it: gradients -0.375 / 2 and +0.375 / 2.
    The positive with IoU 0.25 is on top: current = target = 0.75, error 0.  Loss = 0.375 / 2.
    """
    r = rs_loss(np.array([2.0, 1.0]), np.array([0.25, 1.0]), 0.0, backend="numba")
    assert r.terms["ranking"] == 0.0
    assert r.terms["sorting"] == pytest.approx(0.1875, abs=1e-15)
    np.testing.assert_allclose(r.grad, [0.1875, -0.1875], atol=1e-15)


# --------------------------------------------------------------------------- inputs and errors

S = np.array([0.5, -0.25, 1.0, 0.0])
IOU = np.array([0.75, 0.0, 0.0, 0.5])


@pytest.mark.parametrize("name", list(LOSS_FUNCS))
@pytest.mark.parametrize("args", [
    pytest.param((S, None, -0.5), id="negative-delta"),
    pytest.param((S, None, np.nan), id="nan-delta"),
    pytest.param((S, None, "0.5"), id="str-delta"),
    pytest.param((np.array([0.5, np.nan, 1.0, 0.0]), None, 0.5), id="nan-logit"),
    pytest.param((np.array([0.5, np.inf, 1.0, 0.0]), None, 0.5), id="inf-logit"),
    pytest.param((S, np.array([0.75, np.nan, 0.0, 0.5]), 0.5), id="nan-label"),
    pytest.param((S, np.array([0.75, 2.0, 0.0, 0.5]), 0.5), id="label-out-of-domain"),
    pytest.param((S, np.array([0.75, 0.5, 0.0, 0.5]), 0.5), id="fractional-label"),  # valid IoU for RS
    pytest.param((S, np.array([0.75, -0.5, 0.0, 0.5]), 0.5), id="negative-label"),
    pytest.param((S, np.ones(3), 0.5), id="shape-mismatch"),
    pytest.param((S.reshape(2, 2), np.ones(4), 0.5), id="same-size-other-shape"),
    pytest.param((np.array([]), np.array([]), 0.5), id="empty"),
    pytest.param((np.array(["a", "b", "c", "d"]), None, 0.5), id="str-dtype"),
    pytest.param((np.array([1 + 0j, 0j, 2j, 1]), None, 0.5), id="complex-dtype"),
    pytest.param(([[1.0, 0.0], [1.0]], [1.0, 0.0, 0.0], 0.5), id="ragged"),
])
def test_bad_input_raises_like_the_reference(name, args):
    s, y, d = args
    y = labels_for(name, IOU) if y is None else y
    kind = assert_same_outcome(LOSS_FUNCS[name][0], (s, y, d), {}, "numba")
    valid_iou = LOSS_FUNCS[name][1] and y is not None and np.array_equal(y, [0.75, 0.5, 0.0, 0.5])
    assert kind == ("ok" if valid_iou else "raise")


_BAD_CONVENTIONS = [
    {"self_rank": "two"}, {"self_rank": None}, {"tie_value": 0.3}, {"tie_value": True}, {"tie_value": "1"},
    {"normalization": "mean"}, {"self_rank": "h0", "tie_value": 0.0},
]
_BAD_FLAGS = {"ap": [{"interpolated": "yes"}, {"interpolated": 1}],
              "bap": [{"threshold": "no"}, {"threshold": 0}, {"tied_negatives": "left"}],
              "brs": [{"threshold": "no"}, {"threshold": 0}, {"tied_negatives": "left"}], "rs": []}


@pytest.mark.parametrize("name, kw", [(n, kw) for n in LOSS_FUNCS for kw in _BAD_CONVENTIONS + _BAD_FLAGS[n]],
                         ids=str)
@pytest.mark.parametrize("delta", [0.0, 0.5])
@pytest.mark.parametrize("with_positives", [True, False])
def test_bad_conventions_raise_like_the_reference(name, kw, delta, with_positives):
    """Unsupported option values and combinations: the fast path raises exactly when and what the
    reference raises (some checks only apply when there is a positive, as in the reference)."""
    y = labels_for(name, IOU if with_positives else np.zeros(4))
    assert_same_outcome(LOSS_FUNCS[name][0], (S, y, delta), kw, "numba")


@pytest.mark.parametrize("backend", ["fast", "NUMBA", None, 1])
def test_unknown_backend_is_rejected(backend):
    with pytest.raises(ValueError, match=r"backend must be one of \['numpy', 'numba', 'cuda'\]"):
        rs_loss(S, IOU, backend=backend)
    with pytest.raises(ValueError, match=r"backend must be one of"):
        check_backend(backend)
    assert BACKENDS == ("numpy", "numba", "cuda") and "numba" in available_backends()


def test_gpu_array_to_numba_backend_is_rejected_like_the_reference():
    class FakeDeviceArray:
        __cuda_array_interface__ = {"shape": (4,), "typestr": "<f8", "data": (0, False), "version": 3}

    with pytest.raises(TypeError, match=r"logits lives on a GPU.*backend='cuda'"):
        rs_loss(FakeDeviceArray(), IOU, backend="numba")


@pytest.mark.parametrize("name", list(LOSS_FUNCS))
def test_input_types_shapes_and_no_mutation(name):
    """Lists, ints, bools, mixed dtypes and N-d shapes are accepted as by the reference; the gradient
    comes back in the logits' shape; inputs are not modified."""
    fn = LOSS_FUNCS[name][0]
    y = labels_for(name, IOU)
    cases = [
        (S.tolist(), y.tolist(), 0.5),
        (np.array([2, -1, 0, 1]), y if LOSS_FUNCS[name][1] else y.astype(bool), 1),
        (S.astype(np.float32), y, 0.25),  # mixed float32 / float64
        (S.reshape(2, 2), y.reshape(2, 2), 0.5),
        (S.reshape(1, 2, 2, 1), y.reshape(1, 2, 2, 1), 0.0),
    ]
    for args in cases:
        before = [np.array(a, copy=True) for a in args[:2]]
        assert assert_same_outcome(fn, args, {}, "numba") == "ok"
        for a, b in zip(args[:2], before):
            np.testing.assert_array_equal(np.asarray(a), b)


def test_torch_cpu_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    s = torch.tensor(S, requires_grad=True)
    y = torch.tensor(IOU)
    ref = rs_loss(S, IOU)
    assert_matches(ref, rs_loss(s, y, backend="numba"), TOL64)


# --------------------------------------------------------------------------- kernel building blocks

@settings(max_examples=60)
@given(b=st.lists(st.one_of(st.floats(-5, 5, allow_nan=False), st.sampled_from([0.0, 1e-12, 2e-12, 1.0])),
                  min_size=1, max_size=40),
       xs=st.lists(st.floats(-6, 6, allow_nan=False), min_size=1, max_size=20))
def test_lookup_table_counts_exactly(b, xs):
    """count_tab equals np.searchsorted for any values, including clumps (>4 per cell) and probes on
    the boundaries themselves."""
    bd, _ = K.distinct(np.sort(np.array(b, dtype=np.float64)))
    tb = K.make_table(bd)
    probes = np.concatenate([np.array(xs), bd, np.nextafter(bd, np.inf), np.nextafter(bd, -np.inf)])
    for x in probes:
        assert K.count_tab(tb, x, False) == np.searchsorted(bd, x, side="right")
        assert K.count_tab(tb, x, True) == np.searchsorted(bd, x, side="left")


@pytest.mark.parametrize("b, fast, G", [
    ([0.0, 1e-12, 2e-12, 3e-12, 4e-12, 5e-12, 10.0], False, 57),  # > 4 values in one cell at 2x and 8x
    ([-1.0, 0.0, 2.0, 3.5], True, 9),
    ([7.0], True, 1),                                           # a single value: zero span
    ([0.0, 5e-324], True, 1),                                   # span so small that 1 / width overflows
])
def test_lookup_table_special_layouts(b, fast, G):
    """The fallbacks of the table: clumps (binary search inside the cell) and degenerate spans."""
    bd = np.array(b)
    tb = K.make_table(bd)
    assert tb[6] == fast and tb[5] == G
    for x in np.concatenate([bd, np.nextafter(bd, np.inf), np.nextafter(bd, -np.inf), [-1e300, 1e300, 2.5e-12]]):
        assert K.count_tab(tb, x, False) == np.searchsorted(bd, x, side="right")
        assert K.count_tab(tb, x, True) == np.searchsorted(bd, x, side="left")


def test_boundaries_and_distinct():
    p = np.array([-1.0, 0.0, 0.0, 2.0])
    np.testing.assert_array_equal(K.boundaries(p, 0.0), [-1.0, 0.0, 2.0])
    # p - 1 = [-2, -1, -1, 1], p + 1 = [0, 1, 1, 3]: distinct merged
    np.testing.assert_array_equal(K.boundaries(p, 1.0), [-2.0, -1.0, 0.0, 1.0, 3.0])
    vals, cum = K.distinct(p)
    np.testing.assert_array_equal(vals, [-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(cum, [0, 1, 3, 4])


@pytest.mark.parametrize("delta", [0.0, 0.5])
def test_no_quadratic_memory_or_time(delta):
    """|P| = 60000 positives among 120000 logits: a P x P float64 matrix would need 28.8 GB and the
    reference's loops 10^10 steps; the fast path needs O(N + P) memory and finishes at once."""
    rng = np.random.default_rng(0)
    n = 120_000
    s = rng.normal(size=n)
    t = np.where(np.arange(n) % 2 == 0, rng.uniform(0.01, 1, n), 0.0)
    r = rs_loss(s, t, delta, backend="numba")
    assert np.isfinite(r.loss) and r.terms["num_positives"] == 60000
    # identity update: the gradient sums to zero (what negatives gain, positives lose)
    assert abs(r.grad.sum()) < 1e-9


def _par_ser_pairs():
    import importlib

    pairs = []
    for mod in ("rankspec.refimpl.fast.kernels.stages", "rankspec.refimpl.fast._pair_kernels",
                "rankspec.refimpl.fast.ape"):
        m = importlib.import_module(mod)
        for name in dir(m):
            if name.endswith("_par") and hasattr(getattr(m, name), "targetoptions"):
                pairs.append((f"{mod}.{name}", getattr(m, name), getattr(m, name[:-4] + "_ser")))
    return pairs


def test_parallel_and_serial_kernels_have_cache_entries_of_their_own():
    # numba's on-disk cache keys an entry by function name, source line and argument types, not by
    # the parallel flag: one function compiled twice shares one entry, and the multi-threaded kernel
    # then loads the single-threaded code from the cache (it happened: every *_par kernel ran on one
    # thread after the first run).  Each variant must have its own name, hence its own index file.
    pairs = _par_ser_pairs()
    assert len(pairs) >= 10
    for name, par, ser in pairs:
        assert par.targetoptions.get("parallel") is True and not ser.targetoptions.get("parallel"), name
        assert par.py_func.__qualname__ != ser.py_func.__qualname__, name
        if getattr(par, "_cache", None) is not None and hasattr(par._cache, "_cache_file"):
            assert par._cache._cache_file._index_name != ser._cache._cache_file._index_name, name


@pytest.mark.parametrize("name", list(LOSS_FUNCS))
@pytest.mark.parametrize("n, frac", [(5000, 0.9), (9000, 0.02), (300_000, 0.05)])
def test_numba_gathers_positives_in_the_scan_or_in_a_second_pass(name, n, frac):
    """The scan records up to max(4096, n / 32) positives per chunk; more (0.9 of 5000 logits, 0.05 of
    300K: 15000 > 300000 / 32) take the second gathering pass.  Both give the reference's numbers,
    serial and multi-threaded (2 chunks)."""
    rng = np.random.default_rng(zlib.crc32(f"{name}-{n}-{frac}".encode()))
    s = rng.normal(0.0, 1.0, n).astype(np.float32)
    t = np.where(rng.random(n) < frac, 1.0 - rng.random(n), 0.0).astype(np.float32)
    y = labels_for(name, t)
    fn = LOSS_FUNCS[name][0]
    kw = dict(self_rank="one", tie_value=1.0, normalization="positives")
    ref = fn(s.astype(np.float64), y.astype(np.float64), 0.5, **kw) if n <= 10_000 else None
    serial = numba_loss(FULL_NAMES[name], s, y, 0.5, parallel=False, **kw)
    threads = numba_loss(FULL_NAMES[name], s, y, 0.5, parallel=True, **kw)
    assert abs(serial.loss - threads.loss) <= 1e-12 * max(1.0, abs(serial.loss))
    assert np.allclose(serial.grad, threads.grad, rtol=1e-10, atol=1e-14)
    if ref is not None:
        assert_matches(ref, serial, TOL64)

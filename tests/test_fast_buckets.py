"""Bucket prototypes of the fast bucketed paths (regression for a bug found after issue 5's first pass).

The reference's ``make_buckets`` computes a bucket's prototype as an *anchored* mean,
``clip(top + sum(members - top) / size, low, top)`` with top / low the bucket's largest / smallest
member, so that a bucket of equal logits gets exactly that logit (a plain ``sum / size`` of four
copies of 0.74 is not 0.74 in float64).  The fast paths once used ``sum / size``: at delta = 0 a
prototype a rounding step below a tied positive then stopped counting as a false positive.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankspec.refimpl import bucketed_ap_loss, bucketed_rs_loss, make_buckets
from rankspec.refimpl.fast import _numba_kernels as K
from rankspec.refimpl.fast import cuda_available
from test_fast import assert_matches

TOL = 1e-10


def test_equal_non_dyadic_bucket_is_a_false_positive_at_delta_zero():
    """Logits [0.74] * 4, labels [1, 0, 0, 0], delta 0 (tie_value 1, self term H(0) = 1).

    The three negatives tie with the positive, so with ``tied_negatives="above"`` they form one
    bucket above it whose prototype must be exactly 0.74 (``(0.74 + 0.74 + 0.74) / 3`` is
    0.7399999999999999 in float64).  rank+ = 1, N_FP = 3 * H(0) = 3, so the AP error is
    3 / (1 + 3) = 0.75; the positive gets -0.75 and each negative 0.75 / 3 = 0.25.
    """
    s, y = [0.74] * 4, [1, 0, 0, 0]
    assert sum([0.74] * 3) / 3 != 0.74  # why the anchored mean is needed
    for backend in ("numpy", "numba"):
        r = bucketed_ap_loss(s, y, 0.0, backend=backend)
        assert r.loss == 0.75, backend
        np.testing.assert_array_equal(r.grad, [-0.75, 0.25, 0.25, 0.25])
        assert r.terms["num_buckets"] == 1.0


@pytest.mark.skipif(not cuda_available(), reason="numba.cuda unavailable (no GPU, simulator off)")
def test_equal_non_dyadic_bucket_on_cuda():
    r = bucketed_ap_loss([0.74] * 4, [1, 0, 0, 0], 0.0, backend="cuda")
    assert r.loss == 0.75
    np.testing.assert_array_equal(r.grad, [-0.75, 0.25, 0.25, 0.25])


def _fast_prototypes(s_pos, s_neg, delta, threshold, tied_negatives):
    """The numba path's bucket prototypes for the given positives and negatives."""
    s = np.concatenate([s_pos, s_neg])
    t = np.concatenate([np.ones(len(s_pos)), np.zeros(len(s_neg))])
    p = np.sort(s_pos)
    pdist, cum = K.distinct(p)
    thr = p[0] - delta if threshold else -np.inf
    kidx = np.empty(s.size, np.int32)
    K.bucket_assign_ser(s, t, K.make_table(pdist), cum, thr, tied_negatives == "above", kidx, 1)
    *fused, ok = K.bucket_prototypes(s, kidx, len(s_pos) + 1)
    assert ok
    size, top, low = K.bucket_extent(s, kidx, len(s_pos) + 1)
    split = K.prototypes_from(size, top, low, K.bucket_offsets(s, kidx, top, size.size))  # the CUDA path's
    for a, b in zip(fused, split):
        assert a.tobytes() == b.tobytes()
    return tuple(fused)


VALUES = st.sampled_from([0.74, 0.1, -0.3, 1 / 3, 2 / 3, 0.7, 0.74 + 1e-16, 5.1])


@settings(max_examples=60, deadline=None)
@given(pos=st.lists(VALUES, min_size=1, max_size=6), neg=st.lists(VALUES, min_size=0, max_size=25),
       delta=st.sampled_from([0.0, 1e-9, 0.01]), threshold=st.booleans(),
       tied=st.sampled_from(["above", "below"]))
def test_prototypes_are_bit_identical_to_make_buckets(pos, neg, delta, threshold, tied):
    """Same buckets, same sizes, and prototypes equal to the reference's bit for bit."""
    s_pos, s_neg = np.array(pos), np.array(neg, dtype=np.float64)
    ref = make_buckets(s_pos, s_neg, delta, threshold=threshold, tied_negatives=tied)
    used, wts, proto = _fast_prototypes(s_pos, s_neg, delta, threshold, tied)
    np.testing.assert_array_equal(wts, ref.size)
    assert proto.tobytes() == ref.prototype.tobytes()


@st.composite
def tie_heavy(draw):
    """Logits from a handful of non-dyadic values (many ties, across and within the classes)."""
    n = draw(st.integers(1, 30))
    s = np.array(draw(st.lists(VALUES, min_size=n, max_size=n)))
    iou = draw(st.lists(st.sampled_from([0.0, 0.0, 0.3, 0.55, 1.0]), min_size=n, max_size=n))
    return s, np.array(iou)


@pytest.mark.parametrize("fn, continuous", [(bucketed_ap_loss, False), (bucketed_rs_loss, True)],
                         ids=["bap", "brs"])
@settings(max_examples=40, deadline=None)
@given(prob=tie_heavy(), delta=st.sampled_from([0.0, 0.0, 1e-9, 1e-3, 0.01, 0.25]),
       tied=st.sampled_from(["above", "below"]), threshold=st.booleans(),
       tie_value=st.sampled_from([1.0, 0.5]))
def test_numba_bucketed_matches_reference_with_ties(fn, continuous, prob, delta, tied, threshold, tie_value):
    """Tie-heavy non-dyadic inputs at delta 0 and small delta: numba agrees with the reference to 1e-10.

    (The slot sums agree with the reference to about 1e-16 max|s| / delta, so at delta = 1e-9 a
    negative tied with a positive would only be right to ~1e-7: such ill-conditioned calls go to
    the reference, see test_tiny_delta_is_handed_to_the_reference.)"""
    s, iou = prob
    y = iou if continuous else (iou > 0).astype(np.float64)
    kw = dict(tied_negatives=tied, threshold=threshold, tie_value=tie_value)
    assert_matches(fn(s, y, delta, **kw), fn(s, y, delta, backend="numba", **kw), TOL)


@pytest.mark.skipif(not cuda_available(), reason="numba.cuda unavailable (no GPU, simulator off)")
@settings(max_examples=10, deadline=None)
@given(prob=tie_heavy(), delta=st.sampled_from([0.0, 0.01]))
def test_cuda_bucketed_matches_reference_with_ties(prob, delta):
    """The CUDA path sums the offsets with atomics (run-dependent order) but anchors them at the
    bucket maximum, so ties stay exact and the rest agrees to rounding."""
    s, iou = prob
    assert_matches(bucketed_rs_loss(s, iou, delta), bucketed_rs_loss(s, iou, delta, backend="cuda"), TOL)


@pytest.mark.parametrize("delta", [5e-324, 1e-300, 1e-9, 2.0 ** -17])
@pytest.mark.parametrize("name", ["ap", "rs", "bap", "brs"])
def test_tiny_delta_is_handed_to_the_reference(name, delta):
    """delta tiny against the logits (below 2^-16 max|s|, or subnormal, where 1 / (2 delta) overflows):
    the slot algorithm would lose the 1e-10 agreement (or produce 0 * inf = NaN), so the fast path
    returns the reference's result.  At 2^-17 with |s| = 1 the ratio test triggers, at 5e-324 with
    all-zero logits only the overflow guard can."""
    from rankspec.refimpl import ap_loss, rs_loss
    from rankspec.refimpl.fast._numba_backend import ill_conditioned

    fn = {"ap": ap_loss, "rs": rs_loss, "bap": bucketed_ap_loss, "brs": bucketed_rs_loss}[name]
    for s, y in ((np.array([0.74, 0.74, 0.74, 1.0, -1.0]), np.array([0.5, 0.0, 0.0, 0.25, 0.0])),
                 (np.zeros(9), np.ones(9))):
        y = y if name in ("rs", "brs") else (y > 0).astype(float)
        ref, fast = fn(s, y, delta), fn(s, y, delta, backend="numba")
        assert np.isfinite(fast.loss)
        assert_matches(ref, fast, TOL)
    assert ill_conditioned(np.array([1.0]), 2.0 ** -17, -np.inf)
    assert not ill_conditioned(np.array([1.0]), 2.0 ** -15, -np.inf)

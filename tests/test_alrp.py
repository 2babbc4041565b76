"""aLRP Loss reference, conventions, fast paths and properties."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from rankspec.refimpl.losses.alrp import alrp_loc_loss, alrp_loss
from rankspec.refimpl.reference.alrp import self_balancing_weight

F64 = dict(buffer_dtype="float64")


# ----------------------------------------------------------------------------- hand-computed case

def test_tiny_case_by_hand():
    # logits [2, 1, 0.5, 0], targets [1, 0, 1, 0], e_loc = [0.2, 0.4] (positives a = 2, b = 0.5), delta 1:
    # H(x) = clamp(x / 2 + 1/2, 0, 1)
    # a: rank+ = 1 + H(0.5 - 2) = 1 + 0 = 1; N_FP = H(1 - 2) + H(0 - 2) = 0 + 0 = 0; rank 1; error 0
    # b: rank+ = 1 + H(2 - 0.5) = 1 + 1 = 2; N_FP = H(0.5) + H(-0.5) = 0.75 + 0.25 = 1; rank 3; error 1/3
    # loss = (0 + 1/3) / 2 = 1/6
    # E(b) = (N_FP + H(2 - 0.5) e_a) / rank = (1 + 0.2) / 3 = 0.4 -> grad_b = -0.4 / 2 = -0.2
    # negatives: 1 -> 0.4 * 0.75 / 1 / 2 = 0.15; 0 -> 0.4 * 0.25 / 1 / 2 = 0.05; a: N_FP = 0 -> 0
    res = alrp_loss([2.0, 1.0, 0.5, 0.0], [1, 0, 1, 0], [0.2, 0.4], 1.0, **F64)
    assert res.loss == pytest.approx(1 / 6, abs=1e-15)
    np.testing.assert_allclose(res.grad, [0.0, 0.15, -0.2, 0.05], atol=1e-15)
    np.testing.assert_allclose(res.terms["rank"], [1.0, 3.0])
    assert res.terms["order"].tolist() == [1, 0]
    # loc: descending order (a, b): cumsum e = (0.2, 0.6), / rank (1, 3) = (0.2, 0.2), mean 0.2
    assert res.terms["loc_component"] == pytest.approx(0.2, abs=1e-15)
    loc = alrp_loc_loss([0.2, 0.4], res.terms["rank"], res.terms["order"])
    # d/d e_a = (1/1 + 1/3) / 2 = 2/3 ; d/d e_b = (1/3) / 2 = 1/6
    np.testing.assert_allclose(loc.grad, [2 / 3, 1 / 6], atol=1e-15)
    # default float32 buffers: the same numbers rounded to float32
    res32 = alrp_loss([2.0, 1.0, 0.5, 0.0], [1, 0, 1, 0], [0.2, 0.4], 1.0)
    assert res32.loss == float(np.float32(1 / 6))


def test_self_balancing_weight_by_hand():
    # means: cls 0.6, loc 0.2 -> (0.2 + 0.6) / 0.2 = 4
    assert self_balancing_weight([0.5, 0.7], [0.1, 0.3]) == pytest.approx(4.0)
    assert self_balancing_weight([], []) == 50.0
    assert self_balancing_weight([0.5], [0.0], default=7.0) == 7.0


# ----------------------------------------------------------------------------- conventions / edges

def test_zero_positives_documented_result():
    res = alrp_loss([0.3, -1.0, 2.0], [0, 0, -1], [])
    assert res.loss == 0.0 and not np.any(res.grad)
    assert res.terms["rank"].size == 0 and res.terms["loc_component"] == 0.0


def test_ignored_entries_get_zero_gradient_and_do_not_count():
    s = np.array([0.0, 3.0, 1.0, 0.5, 2.5])
    t = np.array([1, -1, 0, 1, 0.5])  # 3.0 and 2.5 are ignored (target not 0 / 1)
    res = alrp_loss(s, t, [0.1, 0.3], **F64)
    assert res.grad[1] == 0.0 and res.grad[4] == 0.0
    ref = alrp_loss(s[[0, 2, 3]], t[[0, 2, 3]], [0.1, 0.3], **F64)
    assert res.loss == pytest.approx(ref.loss, abs=1e-15)
    np.testing.assert_allclose(res.grad[[0, 2, 3]], ref.grad, atol=1e-15)


def test_eps_threshold_convention():
    # N_FP of the positive = H(-1 + 1e-5) = (-1 + 1e-5) / 2 + 1/2 = 5e-6 <= eps = 1e-5: no gradient by default
    s, t = [0.0, -1.0 + 1e-5], [1, 0]
    assert not np.any(alrp_loss(s, t, [0.0], **F64).grad)
    assert np.any(alrp_loss(s, t, [0.0], eps=0.0, **F64).grad)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(regression_losses=[0.1, 0.2, 0.3]), ValueError, "regression_losses"),
    (dict(regression_losses=[-0.1, 0.2]), ValueError, ">= 0"),
    (dict(delta=-1.0), ValueError, "delta"),
    (dict(self_rank="two"), ValueError, "self_rank"),
    (dict(buffer_dtype="float16"), ValueError, "buffer_dtype"),
    (dict(eps=-1.0), ValueError, "eps"),
    (dict(backend="gpu"), ValueError, "backend"),
    (dict(logits=[0.0, np.nan, 1.0]), ValueError, "logits"),
])
def test_bad_input_names_the_argument(kwargs, exc, match):
    args = dict(logits=[0.0, 1.0, 2.0], targets=[1, 0, 1], regression_losses=[0.1, 0.2])
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        alrp_loss(args.pop("logits"), args.pop("targets"), args.pop("regression_losses"), **args)


# ----------------------------------------------------------------------------- properties

@st.composite
def alrp_inputs(draw, min_pos=1):
    n = draw(st.integers(2, 30))
    half = draw(st.booleans())  # half-integer logits: many ties
    vals = st.integers(-8, 8).map(lambda k: k / 2) if half else st.floats(-5, 5, allow_nan=False)
    s = np.array(draw(st.lists(vals, min_size=n, max_size=n)), dtype=np.float64)
    t = np.array(draw(st.lists(st.sampled_from([0.0, 0.0, 1.0, -1.0]), min_size=n, max_size=n)))
    if np.count_nonzero(t == 1) < min_pos:
        t[0] = 1.0
    P = int(np.count_nonzero(t == 1))
    e = np.array(draw(st.lists(st.floats(0, 1), min_size=P, max_size=P)), dtype=np.float64)
    delta = draw(st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0]))
    return s, t, e, delta


@settings(max_examples=80, deadline=None)
@given(alrp_inputs())
def test_gradient_is_conserved(inp):
    s, t, e, delta = inp
    res = alrp_loss(s, t, e, delta, **F64)
    # each positive's outgoing -E(i) is received by the negatives: the gradient sums to zero
    assert abs(res.grad.sum()) <= 1e-12 * max(1.0, np.abs(res.grad).sum())
    assert np.all(res.grad[t == 0] >= 0) and np.all(res.grad[t == 1] <= 0)
    assert 0.0 <= res.loss <= 1.0


@settings(max_examples=60, deadline=None)
@given(alrp_inputs(), st.sampled_from([-3.0, 0.5, 4.0]))
def test_shift_invariance(inp, c):
    s, t, e, delta = inp
    s = np.round(s * 2) / 2  # half-integers: s + c is exact, so no tie is made or broken by rounding
    a = alrp_loss(s, t, e, delta, **F64)
    b = alrp_loss(s + c, t, e, delta, **F64)
    assert a.loss == pytest.approx(b.loss, abs=1e-12)
    np.testing.assert_allclose(a.grad, b.grad, atol=1e-12)
    np.testing.assert_allclose(a.terms["rank"], b.terms["rank"], atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(alrp_inputs(), st.randoms(use_true_random=False))
def test_permutation_invariance(inp, rnd):
    s, t, e, delta = inp
    perm = np.arange(s.size)
    rnd.shuffle(perm)
    e_full = np.zeros(s.size)
    e_full[t == 1] = e
    sp, tp = s[perm], t[perm]
    a = alrp_loss(s, t, e, delta, **F64)
    b = alrp_loss(sp, tp, e_full[perm][tp == 1], delta, **F64)
    assert a.loss == pytest.approx(b.loss, abs=1e-12)
    np.testing.assert_allclose(a.grad[perm], b.grad, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(alrp_inputs(), st.floats(0.01, 3.0))
def test_perfect_ranking_is_zero(inp, gap):
    s, t, e, delta = inp
    s = s.copy()
    s[t == 1] = s.max() + delta + gap + np.abs(s[t == 1])  # every positive beyond delta above every negative
    res = alrp_loss(s, t, e, delta, **F64)
    assert res.loss == 0.0 and not np.any(res.grad)


@settings(max_examples=60, deadline=None)
@given(alrp_inputs())
def test_equals_ap_loss_when_every_e_loc_is_zero(inp):
    from rankspec.refimpl import ap_loss

    s, t, e, delta = inp
    keep = (t == 0) | (t == 1)
    a = alrp_loss(s, t, np.zeros_like(e), delta, eps=0.0, **F64)
    b = ap_loss(s[keep], t[keep], delta, self_rank="one")
    assert a.loss == pytest.approx(b.loss, abs=1e-12)
    np.testing.assert_allclose(a.grad[keep], b.grad, atol=1e-12)


@settings(max_examples=80, deadline=None)
@given(alrp_inputs())
def test_numba_equals_numpy(inp):
    s, t, e, delta = inp
    a = alrp_loss(s, t, e, delta, **F64)
    b = alrp_loss(s, t, e, delta, backend="numba", **F64)
    assert a.loss == pytest.approx(b.loss, abs=1e-10)
    np.testing.assert_allclose(a.grad, b.grad, atol=1e-10)
    np.testing.assert_allclose(a.terms["rank"], b.terms["rank"], rtol=1e-12, atol=1e-10)
    assert a.terms["order"].tolist() == b.terms["order"].tolist()
    assert a.terms["loc_component"] == pytest.approx(b.terms["loc_component"], abs=1e-10)


@pytest.mark.cuda
def test_cuda_equals_numpy():
    from rankspec.refimpl.fast import cuda_available

    if not cuda_available():
        pytest.skip("numba.cuda unavailable (set NUMBA_ENABLE_CUDASIM=1)")
    rng = np.random.default_rng(3)
    for delta in (0.0, 0.5, 1.0):
        s = np.round(rng.normal(0, 2, 60) * 2) / 2
        t = rng.choice([0.0, 1.0, -1.0], 60, p=[0.6, 0.3, 0.1])
        e = rng.uniform(0, 1, int(np.count_nonzero(t == 1)))
        a = alrp_loss(s, t, e, delta, **F64)
        b = alrp_loss(s, t, e, delta, backend="cuda", **F64)
        assert a.loss == pytest.approx(b.loss, abs=1e-10)
        np.testing.assert_allclose(a.grad, b.grad, atol=1e-10)
        np.testing.assert_allclose(a.terms["rank"], b.terms["rank"], atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(alrp_inputs(), st.floats(1e-4, 1e-2))
def test_loc_gradient_matches_finite_differences(inp, h):
    s, t, e, delta = inp
    res = alrp_loss(s, t, e, delta, **F64)
    rank, order = res.terms["rank"], res.terms["order"]
    g = alrp_loc_loss(e, rank, order).grad
    for j in range(e.size):  # the component is linear in e: differences are exact up to rounding
        ep = e.copy()
        ep[j] += h
        fd = (alrp_loc_loss(ep, rank, order).loss - alrp_loc_loss(e, rank, order).loss) / h
        assert fd == pytest.approx(g[j], abs=1e-8)

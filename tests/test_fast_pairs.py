"""Fast paths of the RankDetNet and APE losses (issue 5: "RankDetNet pair sums, APE per-positive loops").

Every property runs the NumPy reference and a fast backend on the same input and asserts that both
raise the same exception or agree to 1e-10 (loss, gradient and every term, the lazily computed
``z`` matrices included).  ``backend="numba"`` with ``distance="h"`` runs the prefix-sum algorithm;
``EXACT_H=False`` forces the pair-visiting kernel, which also serves S and CE.  CUDA: numba's
simulator (NUMBA_ENABLE_CUDASIM=1), a few small examples.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankspec.refimpl.losses import rankdet as RD
from rankspec.refimpl.reference import rankdet as RDM
from rankspec.refimpl import ape_loss, pairwise_error_loss
from rankspec.refimpl.fast import ape as fast_ape
from rankspec.refimpl.fast import cuda_available
from rankspec.refimpl.fast.rankdet import PairWeights, SingletonUnits
from strategies import ranking_problems

TOL = 1e-10
needs_cuda = pytest.mark.skipif(not cuda_available(), reason="numba.cuda unavailable (no GPU, simulator off)")


def outcome(fn, *args, **kwargs):
    try:
        return "ok", fn(*args, **kwargs)
    except (ValueError, TypeError, FloatingPointError) as exc:
        return "raise", (type(exc), str(exc))


def _close(a, b, what):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    err = np.abs(a - b)
    assert np.all(err <= TOL * (1 + np.abs(a))), (what, a, b)


def _same_units(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_same(ref, fast):
    """Loss, gradient and every term (z matrices as arrays, unit lists element by element)."""
    assert isinstance(fast.loss, float)
    _close(ref.loss, fast.loss, "loss")
    _close(ref.grad, fast.grad, "grad")
    assert set(ref.terms) == set(fast.terms)
    for k, v in ref.terms.items():
        w = fast.terms[k]
        if k == "negatives":
            if len(v) and isinstance(v[0], list):
                for x, y in zip(v, w):
                    _same_units(x, y)
            else:
                _same_units(v, w)
        elif k == "z" and isinstance(v, list):
            assert len(v) == len(w)
            for x, y in zip(v, w):
                _close(x, np.asarray(y), "z")
        else:
            _close(v, w, k)


def assert_same_outcome(fn, args, kwargs, backend):
    kind_r, ref = outcome(fn, *args, **kwargs)
    kind_f, fast = outcome(fn, *args, backend=backend, **kwargs)
    assert kind_r == kind_f, (ref, fast)
    if kind_r == "raise":
        assert ref == fast
    else:
        assert_same(ref, fast)
    return kind_r


# =========================================================================== APE

@st.composite
def ape_options(draw, adaptive):
    distance = draw(st.sampled_from(["h", "h", "sigmoid", "ce"]))
    kw = {"distance": distance,
          "delta": draw(st.sampled_from([0.0, 0.25, 1.0, 0.3])),
          "lam": draw(st.sampled_from([8.0, 4.0, 1.5])),
          "balance": draw(st.sampled_from(["rank", "n_neg"])),
          "pair_threshold": draw(st.sampled_from([None, None, 0.0, 0.3, 2.0, math.inf])),
          "self_rank": draw(st.sampled_from(["h0", "one", "half", "zero"])),
          "normalization": draw(st.sampled_from(["positives", "active", "none"])),
          "tie_value": draw(st.sampled_from([1.0, 0.5, 0.0])),
          "scale_by_lambda": draw(st.booleans())}
    kw["iou_weight"] = draw(st.booleans()) if adaptive else draw(st.sampled_from([False, False, True]))
    return kw


def ape_problems():
    return st.one_of(ranking_problems(max_size=24), ranking_problems(max_size=24, ties=True),
                     ranking_problems(max_size=20, grid=False), ranking_problems(max_size=10, min_pos=0, max_pos=0),
                     ranking_problems(min_size=2, max_size=12, min_neg=0, max_pos=12))


def _ape_args(prob, adaptive):
    lab = prob.labels
    if adaptive:
        return ape_loss, (prob.logits, lab, prob.targets), {}
    return pairwise_error_loss, (prob.logits, lab), {"ious": prob.targets}


@pytest.mark.parametrize("exact_h", [True, False], ids=["prefix-sums", "pair-loop"])
@pytest.mark.parametrize("adaptive", [False, True], ids=["pairwise_error_loss", "ape_loss"])
@settings(max_examples=50, deadline=None)
@given(prob=ape_problems(), data=st.data())
def test_ape_numba_matches_reference(adaptive, exact_h, prob, data):
    """Every distance and option, ties, delta = 0, thresholds, no positive / no negative."""
    fn, args, kw = _ape_args(prob, adaptive)
    kw.update(data.draw(ape_options(adaptive)))
    if not adaptive and not kw["iou_weight"]:
        kw.pop("ious")
    saved = fast_ape.EXACT_H
    fast_ape.EXACT_H = exact_h
    try:
        assert_same_outcome(fn, args, kw, "numba")
    finally:
        fast_ape.EXACT_H = saved


@pytest.mark.parametrize("adaptive", [False, True])
def test_ape_larger_problem_with_clumps(adaptive):
    """A few thousand samples with heavy ties and many equal IoUs: the Fenwick sweeps of the aFP
    pairs and the binary searches at every threshold kind."""
    rng = np.random.default_rng(11)
    n = 3000
    s = rng.integers(-40, 40, n) / 8.0
    lab = (rng.random(n) < 0.1).astype(float)
    iou = np.where(lab > 0, rng.integers(1, 9, n) / 8.0, 0.0)
    fn = ape_loss if adaptive else pairwise_error_loss
    args = (s, lab, iou) if adaptive else (s, lab)
    for kw in ({"distance": "h", "delta": 0.5}, {"distance": "h", "delta": 0.0, "pair_threshold": 0.25},
               {"distance": "h", "delta": 1.0, "pair_threshold": 0.375, "balance": "n_neg"},
               {"distance": "ce"}, {"distance": "sigmoid", "pair_threshold": math.inf}):
        assert assert_same_outcome(fn, args, kw, "numba") == "ok"


@pytest.mark.parametrize("distance", ["sigmoid", "ce"])
@pytest.mark.parametrize("spread", [1.0, 100.0])
def test_ape_sigmoid_forms_with_and_without_the_product_form(distance, spread):
    """S and CE come from products of per-sample exponentials while lam * (logit range) stays below
    1200, else from one exponential per pair (spread 100: range ~1000, lam 8): both as the reference."""
    rng = np.random.default_rng(2)
    n = 400
    s = rng.normal(0.0, 2.0, n) * spread
    lab = (rng.random(n) < 0.15).astype(float)
    iou = np.where(lab > 0, rng.uniform(0.1, 1.0, n), 0.0)
    for kw in ({"pair_threshold": math.inf}, {}, {"balance": "n_neg", "lam": 2.0}):
        assert assert_same_outcome(ape_loss, (s, lab, iou), dict(kw, distance=distance), "numba") == "ok"


def test_pairwise_error_tiny_case_by_hand_on_numba():
    """The reference's hand-computed case (tests/test_ape.py), on the fast path: logits [2, 0, 1.5, -3],
    labels [1, 1, 0, 0], delta 1, self term 1.  u = 0: H(1.5 - 2) = 0.25, BC = 1.25, L = 0.2;
    u = 1: H(1.5) = 1, H(2) = 1 (the other positive), BC = 3, L = 1/3.  Loss (0.2 + 1/3) / 2;
    the negative 1.5 receives (0.2 + 1/3) / 2, the negative -3 nothing."""
    r = pairwise_error_loss([2.0, 0.0, 1.5, -3.0], [1, 1, 0, 0], distance="h", delta=1.0, backend="numba")
    assert r.loss == pytest.approx((0.2 + 1 / 3) / 2, abs=1e-15)
    np.testing.assert_allclose(r.grad, [-0.1, -1 / 6, (0.2 + 1 / 3) / 2, 0.0], atol=1e-15)
    np.testing.assert_allclose(r.terms["balance_constant"], [1.25, 3.0], atol=1e-15)
    assert r.terms["num_pairs"] == 2


def test_h_distance_equals_ap_loss_on_numba():
    """pairwise_error_loss(H, rank balance, self 'one') is AP Loss (APE Eq. 8 = AP Loss): the two
    fast paths, built on different algorithms, agree."""
    from rankspec.refimpl import ap_loss

    rng = np.random.default_rng(5)
    s = rng.normal(size=500)
    lab = (rng.random(500) < 0.2).astype(float)
    a = ap_loss(s, lab, 0.5, backend="numba")
    b = pairwise_error_loss(s, lab, distance="h", delta=0.5, backend="numba")
    assert abs(a.loss - b.loss) < 1e-12
    np.testing.assert_allclose(a.grad, b.grad, atol=1e-12)


@pytest.mark.parametrize("kw, exc", [
    ({"distance": "l2"}, ValueError), ({"balance": "all"}, ValueError), ({"delta": -1.0}, ValueError),
    ({"lam": 0.0}, ValueError), ({"pair_threshold": -0.5}, ValueError), ({"self_rank": "two"}, ValueError),
    ({"normalization": "mean"}, ValueError), ({"tie_value": 0.3, "delta": 0.0}, ValueError),
    ({"backend": "fast"}, ValueError),
])
def test_ape_bad_options_raise_like_the_reference(kw, exc):
    s, lab, iou = [2.0, 0.0, 1.5, -3.0], [1, 1, 0, 0], [0.5, 0.9, 0.0, 0.0]
    if "backend" in kw:
        with pytest.raises(exc, match="backend must be one of"):
            ape_loss(s, lab, iou, **kw)
        return
    assert assert_same_outcome(ape_loss, (s, lab, iou), dict(kw, distance=kw.get("distance", "h")), "numba") \
        == "raise"


def test_ape_bad_input_raises_like_the_reference():
    for args in (([0.0, np.nan], [1, 0], [1.0, 0.0]), ([0.0, 1.0], [1, 2], [1.0, 0.0]),
                 ([0.0, 1.0], [1, 0], [1.5, 0.0]), ([0.0, 1.0], [1, 0, 0], [1.0, 0.0, 0.0])):
        assert assert_same_outcome(ape_loss, args, {}, "numba") == "raise"
    assert assert_same_outcome(ape_loss, ([0.0, 1.0], [1, 0], None), {}, "numba") == "raise"
    assert assert_same_outcome(pairwise_error_loss, ([0.0, 1.0], [1, 0]), {"iou_weight": True}, "numba") == "raise"


@needs_cuda
@pytest.mark.parametrize("adaptive", [False, True])
@settings(max_examples=6, deadline=None)
@given(prob=st.one_of(ranking_problems(max_size=10), ranking_problems(max_size=10, ties=True)), data=st.data())
def test_ape_cuda_matches_reference(adaptive, prob, data):
    fn, args, kw = _ape_args(prob, adaptive)
    kw.update(data.draw(ape_options(adaptive)))
    if not adaptive and not kw["iou_weight"]:
        kw.pop("ious")
    assert_same_outcome(fn, args, kw, "cuda")


# =========================================================================== RankDet

@st.composite
def rankdet_problems(draw, grid=True):
    n = draw(st.integers(1, 24))
    C = draw(st.integers(1, 3))
    vals = st.integers(-16, 16).map(lambda k: k / 4) if grid else st.floats(-6, 6, allow_nan=False)
    logits = np.array(draw(st.lists(vals, min_size=n * C, max_size=n * C))).reshape(n, C)
    labels = np.array(draw(st.lists(st.integers(-2, C - 1), min_size=n, max_size=n)))
    ious = np.array(draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.5, 0.75, 1.0]), min_size=n, max_size=n)))
    levels = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    return logits, labels, ious, levels


@st.composite
def rankdet_options(draw):
    return {"rank_function": draw(st.sampled_from(RDM.RANK_FUNCTIONS)),
            "score_space": draw(st.sampled_from(RDM.SCORE_SPACES)),
            "reweighting": draw(st.sampled_from(RDM.REWEIGHTINGS)),
            "mining": draw(st.sampled_from(RDM.MININGS)),
            "neg_ratio": draw(st.sampled_from([1, 3])),
            "group_split": draw(st.sampled_from(RDM.GROUP_SPLITS))}


@settings(max_examples=40, deadline=None)
@given(prob=st.one_of(rankdet_problems(), rankdet_problems(grid=False)), opts=rankdet_options(),
       objectness=st.sampled_from(RDM.OBJECTNESS), flat=st.booleans())
def test_global_numba_matches_reference(prob, opts, objectness, flat):
    logits, labels, _, _ = prob
    if flat:
        logits = logits[:, 0]
        labels = np.where(labels >= 0, 0, labels)
    assert_same_outcome(RD.global_ranking_loss, (logits, labels),
                        dict(opts, num_groups=4, objectness=objectness), "numba")


@settings(max_examples=40, deadline=None)
@given(prob=st.one_of(rankdet_problems(), rankdet_problems(grid=False)), opts=rankdet_options(),
       reduction=st.sampled_from(RDM.CLASS_REDUCTIONS))
def test_class_specific_numba_matches_reference(prob, opts, reduction):
    logits, labels, _, _ = prob
    assert_same_outcome(RD.class_specific_ranking_loss, (logits, labels),
                        dict(opts, num_groups=2, class_reduction=reduction), "numba")


@settings(max_examples=40, deadline=None)
@given(prob=st.one_of(rankdet_problems(), rankdet_problems(grid=False)),
       rank_function=st.sampled_from(RDM.RANK_FUNCTIONS), score_space=st.sampled_from(RDM.SCORE_SPACES),
       iou_grad=st.sampled_from(RDM.IOU_GRADS), iou_pairs=st.sampled_from(RDM.IOU_PAIRS),
       norm=st.sampled_from(RDM.IOU_NORMALIZATIONS), alpha=st.sampled_from([1.0, 0.5, 5.0]), with_levels=st.booleans())
def test_iou_guided_numba_matches_reference(prob, rank_function, score_space, iou_grad, iou_pairs, norm, alpha,
                                            with_levels):
    logits, labels, ious, levels = prob
    assert_same_outcome(RD.iou_guided_ranking_loss, (logits, labels, ious, levels if with_levels else None),
                        dict(rank_function=rank_function, score_space=score_space, iou_grad=iou_grad,
                             iou_pairs=iou_pairs, iou_normalization=norm, alpha=alpha), "numba")


@settings(max_examples=15, deadline=None)
@given(prob=rankdet_problems(), opts=rankdet_options())
def test_rankdet_loss_numba_matches_reference(prob, opts):
    logits, labels, ious, levels = prob
    assert_same_outcome(RD.rankdet_loss, (logits, labels, ious, levels, 0.25), opts, "numba")


@settings(max_examples=40, deadline=None)
@given(neg=st.lists(st.floats(-30, 30), max_size=12), pos=st.lists(st.floats(-30, 30), max_size=12),
       rank_function=st.sampled_from(RDM.RANK_FUNCTIONS), reweighting=st.sampled_from(RDM.REWEIGHTINGS))
def test_pair_loss_numba_matches_reference(neg, pos, rank_function, reweighting):
    """The pair-sum primitive (RankDet Eqs. 2-3), logit-space ranges where e^x is large."""
    ref = RD.reweighted_pair_loss(neg, pos, rank_function=rank_function, reweighting=reweighting)
    fast = RD.reweighted_pair_loss(neg, pos, rank_function=rank_function, reweighting=reweighting, backend="numba")
    _close(ref.loss, fast.loss, "loss")
    _close(ref.grad_neg, fast.grad_neg, "grad_neg")
    _close(ref.grad_pos, fast.grad_pos, "grad_pos")
    _close(ref.z, np.asarray(fast.z), "z")
    assert fast.z.shape == ref.z.shape


@pytest.mark.parametrize("rank_function", ["sigmoid", "logistic"])
def test_pair_loss_far_apart_scores(rank_function):
    """Scores more than 1200 apart (logit space): the per-pair exponential instead of the product form."""
    neg, pos = [-700.0, 3.0, 650.0], [-650.0, 0.5, 700.0]
    ref = RD.reweighted_pair_loss(neg, pos, rank_function=rank_function)
    fast = RD.reweighted_pair_loss(neg, pos, rank_function=rank_function, backend="numba")
    _close(ref.loss, fast.loss, "loss")
    _close(ref.grad_neg, fast.grad_neg, "grad_neg")
    _close(ref.grad_pos, fast.grad_pos, "grad_pos")


def test_exponential_factorisation_tiny_case_by_hand():
    """neg f = [0, ln 2], pos f = [0], exponential, dynamic z: L = [1, 2], sum L = 3, loss = (1 + 4) / 3;
    d/df_n = L_n^2 / 3 = [1/3, 4/3]; d/df_p = -(1 + 4) / 3."""
    r = RD.reweighted_pair_loss([0.0, math.log(2.0)], [0.0], backend="numba")
    assert r.loss == pytest.approx(5 / 3, rel=1e-15)
    np.testing.assert_allclose(r.grad_neg, [1 / 3, 4 / 3], rtol=1e-15)
    np.testing.assert_allclose(r.grad_pos, [-5 / 3], rtol=1e-15)
    np.testing.assert_allclose(np.asarray(r.z), [[1 / 3], [2 / 3]], rtol=1e-15)


def test_exponential_overflow_raises_like_the_reference():
    neg, pos = [800.0, 0.0], [-10.0]
    kind_r, ref = outcome(RD.reweighted_pair_loss, neg, pos)
    kind_f, fast = outcome(RD.reweighted_pair_loss, neg, pos, backend="numba")
    assert kind_r == kind_f == "raise" and ref == fast
    # 700 - (-5) = 705 < 709.78: every pair term is finite, and so are both results
    assert_same_outcome(RD.global_ranking_loss, (np.array([700.0, -5.0, 3.0]), np.array([-1, 0, 0])),
                        {"score_space": "logit", "mining": "all"}, "numba")


def test_no_pair_matrix_is_allocated():
    """mining='all' with 200000 background samples and 20000 positives: the reference's z would be
    4e9 float64 (32 GB); the fast path needs O(N) memory and z only on request."""
    rng = np.random.default_rng(0)
    n = 220_000
    logits = rng.normal(-2.0, 1.0, n)
    labels = np.where(np.arange(n) < 20_000, 0, -1)
    r = RD.global_ranking_loss(logits, labels, mining="all", backend="numba")
    assert np.isfinite(r.loss) and r.terms["num_pairs"] == 200_000 * 20_000
    assert isinstance(r.terms["z"], PairWeights) and r.terms["z"].shape == (200_000, 20_000)
    assert isinstance(r.terms["negatives"], SingletonUnits) and len(r.terms["negatives"]) == 200_000
    np.testing.assert_array_equal(r.terms["negatives"][3], [20_003])
    # z fixed: the loss is sum z L, so d loss / d f sums to zero only for ... (no identity); check
    # instead that the positives' and negatives' gradients balance: sum_n dL/df_n = -sum_p dL/df_p
    g = r.grad / (lambda f: f * (1 - f))(1 / (1 + np.exp(-logits)))
    assert abs(g[:20_000].sum() + g[20_000:].sum()) < 1e-9 * np.abs(g).sum()


def test_lazy_terms_behave_like_the_reference_lists():
    units = SingletonUnits([4, 7, 9])
    assert len(units) == 3 and [list(u) for u in units] == [[4], [7], [9]]
    assert [list(u) for u in units[1:]] == [[7], [9]]
    z = PairWeights(np.array([0.0, 1.0]), np.array([0.5]), "sigmoid", "mean")
    assert z.shape == (2, 1) and len(z) == 2 and z[1, 0] == 0.5
    np.testing.assert_array_equal(np.asarray(z, dtype=np.float32), np.full((2, 1), 0.5, np.float32))


@needs_cuda
@settings(max_examples=6, deadline=None)
@given(prob=rankdet_problems(), opts=rankdet_options())
def test_rankdet_cuda_matches_reference(prob, opts):
    logits, labels, ious, levels = prob
    assert_same_outcome(RD.global_ranking_loss, (logits, labels), dict(opts, num_groups=3), "cuda")
    assert_same_outcome(RD.iou_guided_ranking_loss, (logits, labels, ious, levels),
                        {"rank_function": opts["rank_function"]}, "cuda")

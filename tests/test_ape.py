"""NumPy reference of APE (key APE): pairwise error (Eq. 8), ARPS (Alg. 1), APE loss (Eqs. 9-10), Sec. 6 split.

Hand-computed tiny cases (arithmetic written out), hypothesis properties and bad-input errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import ranking_problems, shifts

from rankspec.refimpl import (LossResult, ap_loss, ape_loss, arps_cluster_split, arps_negative_sets, lookup,
                              pairwise_error_loss)
from rankspec.refimpl.losses.ape import ce_distance, sigmoid_distance
from rankspec.refimpl.conventions import all_conventions


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


# ------------------------------------------------------------------------------------------
# hand-computed tiny cases
# ------------------------------------------------------------------------------------------

def test_pairwise_error_h_tiny_case():
    # logits s = [2, 0, 1.5, -3], labels [1, 1, 0, 0], delta = 1, H(x) = clip(x/2 + 0.5, 0, 1), self term 1.
    # u = 0 (s=2): negatives x = 1.5-2 = -0.5 -> H = 0.25; x = -5 -> 0.  positive v=1: x = -2 -> 0.
    #   BC = 1 + 0 + 0.25 = 1.25, L(0) = 0.25 / 1.25 = 0.2
    # u = 1 (s=0): negatives x = 1.5 -> 1, x = -3 -> 0; positive v=0: x = 2 -> 1.  BC = 1 + 1 + 1 = 3, L(1) = 1/3
    # loss = (0.2 + 1/3) / 2
    # error-driven grad / 2: g_0 = -0.2/2, g_1 = -(1/3)/2, g_2 = (0.25/1.25 + 1/3)/2, g_3 = 0
    s, y = [2.0, 0.0, 1.5, -3.0], [1, 1, 0, 0]
    r = pairwise_error_loss(s, y, distance="h", delta=1.0)
    assert isinstance(r, LossResult)
    assert r.loss == pytest.approx((0.2 + 1 / 3) / 2, abs=1e-15)
    np.testing.assert_allclose(r.grad, [-0.1, -1 / 6, (0.2 + 1 / 3) / 2, 0.0], atol=1e-15)
    np.testing.assert_allclose(r.terms["per_positive"], [0.2, 1 / 3], atol=1e-15)
    np.testing.assert_allclose(r.terms["balance_constant"], [1.25, 3.0], atol=1e-15)
    assert r.terms["num_pairs"] == 2  # (0, 2) and (1, 2); -3 is below both positives - delta


def test_ape_h_tiny_case_with_adaptive_false_positive():
    # Same logits; ious [0.5, 0.9, 0, 0].  ARPS: A_0 = N (IoU_1 = 0.9 is not lower); A_1 = {0} U N.
    # u = 0: as above, L(0) = 0.25 / 1.25 = 0.2
    # u = 1: numerator H(x_10 = 2) + H(x_12 = 1.5) + H(-3) = 1 + 1 + 0 = 2, BC = 3 (unchanged), L(1) = 2/3
    # loss = (0.2 + 2/3) / 2 = 13/30
    # grad: g_0 = -0.2/2 (own) + (H(x_10)/BC_1)/2 = -0.1 + 1/6;  g_1 = -(2/3)/2;  g_2 = (0.2 + 1/3)/2;  g_3 = 0
    s, y, iou = [2.0, 0.0, 1.5, -3.0], [1, 1, 0, 0], [0.5, 0.9, 0.0, 0.0]
    r = ape_loss(s, y, iou, distance="h", delta=1.0, self_rank="one", iou_weight=False)
    assert r.loss == pytest.approx(13 / 30, abs=1e-15)
    np.testing.assert_allclose(r.grad, [-0.1 + 1 / 6, -1 / 3, (0.2 + 1 / 3) / 2, 0.0], atol=1e-15)
    # IoU weighting: terms 0.5 * 0.2 = 0.1 and 0.9 * 2/3 = 0.6, loss (0.1 + 0.6) / 2 = 0.35
    w = ape_loss(s, y, iou, distance="h", delta=1.0, self_rank="one", iou_weight=True)
    assert w.loss == pytest.approx(0.35, abs=1e-15)
    np.testing.assert_allclose(w.terms["per_positive"], [0.1, 0.6], atol=1e-15)


def test_ape_ce_tiny_case_authors_defaults():
    # logits [1, 0], labels [1, 0], ious [0.8, 0], lambda = 2 -> threshold 4/2 = 2, x_01 = -1 > -2 (valid).
    # BC = S(0) + S(-1) = 0.5 + sigmoid(-2);  CE = log(1 + exp(2 * -1)) = log(1 + e^-2)
    # loss = IoU * CE / lambda / BC = 0.8 * log(1 + e^-2) / 2 / (0.5 + sigmoid(-2))
    # grad of the negative: IoU * (1/lambda) * lambda * sigmoid(-2) / BC;  the positive: minus that
    bc = 0.5 + sig(-2.0)
    r = ape_loss([1.0, 0.0], [1, 0], [0.8, 0.0], lam=2.0, saturation="exact")
    assert r.loss == pytest.approx(0.8 * math.log1p(math.exp(-2.0)) / 2.0 / bc, rel=1e-14)
    g = 0.8 * sig(-2.0) / bc
    np.testing.assert_allclose(r.grad, [-g, g], rtol=1e-14)
    assert r.terms["balance_constant"][0] == pytest.approx(bc, rel=1e-15)


def test_pairwise_error_n_neg_balance_tiny_case():
    # logits [0, 0.5, -0.5, -2], labels [1, 0, 0, 0], sigmoid lambda = 4, threshold 4/4 = 1.
    # valid negatives: x = 0.5 and x = -0.5 (> -1); x = -2 is not.  N_neg = 2.
    # loss = (S(0.5) + S(-0.5)) / 2 = (sigmoid(2) + sigmoid(-2)) / 2 = 1/2 exactly.
    r = pairwise_error_loss([0.0, 0.5, -0.5, -2.0], [1, 0, 0, 0], distance="sigmoid", lam=4.0, balance="n_neg")
    assert r.loss == pytest.approx(0.5, abs=1e-15)
    np.testing.assert_allclose(r.grad, [-0.5, sig(2.0) / 2, sig(-2.0) / 2, 0.0], atol=1e-15)
    assert r.terms["balance_constant"][0] == 2.0


def test_arps_sets_tiny_case():
    # labels [1, 1, 1, 0], ious [0.5, 0.9, 0.5, 0]:  A_0 = {3} (IoU_2 = IoU_0 is not lower),
    # A_1 = {0, 2, 3} (both 0.5 < 0.9), A_2 = {3}
    A = arps_negative_sets([1, 1, 1, 0], [0.5, 0.9, 0.5, 0.0])
    np.testing.assert_array_equal(A, [[0, 0, 0, 1], [1, 0, 1, 1], [0, 0, 0, 1]])
    assert arps_negative_sets([0, 0], [0.0, 0.0]).shape == (0, 2)


def test_distances_tiny_values():
    # S(0) = 1/2; S(x) + S(-x) = 1; CE(S(x), 0) = -log(1 - S(x)); CE at 0 = log 2
    assert sigmoid_distance(0.0, 8.0) == 0.5
    assert float(sigmoid_distance(0.25, 8.0) + sigmoid_distance(-0.25, 8.0)) == pytest.approx(1.0, abs=1e-15)
    assert float(ce_distance(0.0, 3.0)) == pytest.approx(math.log(2.0), abs=1e-15)
    assert float(ce_distance(0.3, 2.0)) == pytest.approx(-math.log(1.0 - sig(0.6)), rel=1e-14)
    assert np.isfinite(ce_distance(1e4, 8.0))  # no overflow


def test_defined_edge_cases():
    # no positives: loss 0, zero gradient
    r = ape_loss([0.3, -1.0], [0, 0], [0.0, 0.0])
    assert r.loss == 0.0 and not np.any(r.grad)
    # a positive far above every negative (no valid pair): term 0, zero gradient, counted in Z
    r = ape_loss([10.0, -10.0], [1, 0], [0.7, 0.0])
    assert r.loss == 0.0 and not np.any(r.grad) and r.terms["num_active"] == 0
    # 'active' with nothing active: loss 0
    r = pairwise_error_loss([10.0, -10.0], [1, 0], normalization="active")
    assert r.loss == 0.0
    # gradient keeps the logits' shape
    r = ape_loss(np.zeros((2, 3)), np.eye(2, 3), np.eye(2, 3) * 0.5)
    assert r.grad.shape == (2, 3)


def test_registered_and_conventions():
    for f in (pairwise_error_loss, ape_loss, arps_negative_sets, arps_cluster_split, sigmoid_distance, ce_distance):
        e = lookup(f)
        assert e.family == "ape" and "APE" in e.papers
    assert lookup(ape_loss).kind == "loss" and lookup(arps_cluster_split).kind == "utility"
    keywords = {c.keyword for c in all_conventions() if "ape_loss" in c.applies_to}
    assert {"distance", "balance", "pair_threshold", "self_rank", "normalization", "iou_weight",
            "scale_by_lambda"} <= keywords


# ------------------------------------------------------------------------------------------
# properties
# ------------------------------------------------------------------------------------------

DIST = st.sampled_from(["h", "sigmoid", "ce"])
LAMS = st.sampled_from([1.0, 2.0, 4.0, 8.0])
OPTS = st.fixed_dictionaries({
    "distance": DIST, "lam": LAMS, "balance": st.sampled_from(["rank", "n_neg"]),
    "self_rank": st.sampled_from(["h0", "one", "half"]),
    "pair_threshold": st.sampled_from([None, 0.5, math.inf]),
})


@given(ranking_problems(max_size=20, min_neg=0))
def test_pe_with_h_equals_ap_loss(p):
    # APE Eq. 8 with H, BC = rank+ + rank- and self term 1 is the AP loss (identity-update gradient).
    if p.delta == 0:
        kw = dict(tie_value=1.0)
    else:
        kw = {}
    a = ap_loss(p.logits, p.labels, p.delta, self_rank="one", **kw)
    b = pairwise_error_loss(p.logits, p.labels, distance="h", delta=p.delta, self_rank="one", **kw)
    assert b.loss == pytest.approx(a.loss, abs=1e-12)
    np.testing.assert_allclose(b.grad, a.grad, atol=1e-12)


@given(ranking_problems(max_size=20, equal_ious=True), OPTS)
def test_ape_without_afp_equals_pairwise_error(p, opts):
    # Equal IoUs: no positive has a lower IoU than another, every A_u = N, so APE == PE (Eq. 9 -> Eq. 8).
    d = max(p.delta, 0.125)
    opts = {"saturation": "exact", "normalization": "positives", "top_q": None, **opts}  # the same options
    a = ape_loss(p.logits, p.labels, p.targets, delta=d, **opts)
    b = pairwise_error_loss(p.logits, p.labels, delta=d, ious=p.targets, iou_weight=True, **opts)
    assert a.loss == pytest.approx(b.loss, abs=1e-12)
    np.testing.assert_allclose(a.grad, b.grad, atol=1e-12)


@given(ranking_problems(max_size=16, min_pos=2))
def test_ape_term_of_best_positive_is_ap_with_lower_iou_positives_as_negatives(p):
    # APE Eq. 10: for the positive u with the unique highest IoU, every other positive is an aFP, so its term
    # (FP + aFP) / rank(u) is the AP error of u when all other positives are relabelled negative.
    iou = p.targets[p.pos]
    top = np.flatnonzero(p.pos)[int(np.argmax(iou))]
    if np.sum(iou == iou.max()) > 1:
        return
    d = max(p.delta, 0.125)
    r = ape_loss(p.logits, p.labels, p.targets, distance="h", delta=d, self_rank="one", iou_weight=False)
    only_u = np.zeros_like(p.labels)
    only_u[top] = 1
    k = int(np.flatnonzero(np.flatnonzero(p.pos) == top)[0])
    assert r.terms["per_positive"][k] == pytest.approx(ap_loss(p.logits, only_u, d, self_rank="one").loss,
                                                       abs=1e-12)


@given(ranking_problems(max_size=20), LAMS, st.sampled_from(["rank", "n_neg"]), st.sampled_from(["h0", "zero"]))
def test_ce_gradient_times_inverse_lambda_is_error_driven_update(p, lam, balance, self_rank):
    # APE Sec. 5 / appendix: d/dx log(1 + e^(lam x)) = lam S(x); with BC constant and the loss divided by
    # lambda the CE gradient equals the error-driven update of the S form (Eq. 7 with D = S).
    kw = dict(lam=lam, balance=balance, self_rank=self_rank, saturation="exact")
    ce = ape_loss(p.logits, p.labels, p.targets, distance="ce", **kw)
    ed = ape_loss(p.logits, p.labels, p.targets, distance="sigmoid", **kw)
    np.testing.assert_allclose(ce.grad, ed.grad, atol=1e-12)
    raw = ape_loss(p.logits, p.labels, p.targets, distance="ce", scale_by_lambda=False, **kw)
    np.testing.assert_allclose(raw.grad, lam * ed.grad, atol=1e-11)
    assert raw.loss == pytest.approx(lam * ce.loss, rel=1e-12, abs=1e-15)


@settings(max_examples=25)
@given(ranking_problems(max_size=10, grid=False, delta=1.0), LAMS)
def test_ce_gradient_matches_finite_differences_when_bc_is_constant(p, lam):
    # With BC = N_neg and every pair valid, BC depends on labels and IoUs only: the CE form is a smooth
    # function of the logits, and its analytic gradient is the true derivative.
    kw = dict(distance="ce", lam=lam, balance="n_neg", pair_threshold=math.inf, saturation="exact")
    r = ape_loss(p.logits, p.labels, p.targets, **kw)
    h = 1e-6
    num = np.zeros_like(p.logits)
    for i in range(p.logits.size):
        e = np.zeros_like(p.logits)
        e[i] = h
        num[i] = (ape_loss(p.logits + e, p.labels, p.targets, **kw).loss
                  - ape_loss(p.logits - e, p.labels, p.targets, **kw).loss) / (2 * h)
    np.testing.assert_allclose(r.grad, num, atol=1e-6)


@given(ranking_problems(max_size=20), OPTS, st.sampled_from([True, False]))
def test_gradient_is_conserved_and_pushes_negatives_down(p, opts, adaptive):
    # Each pair sends +g to v and -g to u (APE Sec. 4: sum_v g_v = -g_u), so the gradient sums to 0,
    # negatives only ever get pushed down (grad >= 0) and the loss is >= 0.
    d = max(p.delta, 0.125)
    if adaptive:
        r = ape_loss(p.logits, p.labels, p.targets, delta=d, **opts)
    else:
        r = pairwise_error_loss(p.logits, p.labels, delta=d, **opts)
    assert abs(r.grad.sum()) <= 1e-12
    assert np.all(r.grad[p.neg] >= -1e-15)
    assert r.loss >= 0


@given(ranking_problems(max_size=20), st.sampled_from(["h", "sigmoid"]), st.sampled_from(["h0", "one"]))
def test_rank_balanced_terms_are_error_fractions(p, distance, self_rank):
    # With BC = rank+ + rank- (self term > 0) each term is (FP + aFP) / (TP + FP) in [0, 1] (APE Eq. 10).
    d = max(p.delta, 0.125)
    r = ape_loss(p.logits, p.labels, p.targets, distance=distance, delta=d, self_rank=self_rank, iou_weight=False)
    assert np.all(r.terms["per_positive"] >= 0) and np.all(r.terms["per_positive"] <= 1 + 1e-12)


@given(ranking_problems(max_size=20), shifts(), OPTS)
def test_translation_invariance(p, c, opts):
    # Every quantity depends on logit differences only.
    d = max(p.delta, 0.125)
    a = ape_loss(p.logits, p.labels, p.targets, delta=d, **opts)
    b = ape_loss(p.logits + c, p.labels, p.targets, delta=d, **opts)
    assert a.loss == pytest.approx(b.loss, abs=1e-12)
    np.testing.assert_allclose(a.grad, b.grad, atol=1e-12)


@given(ranking_problems(max_size=20), OPTS)
def test_iou_weighting_and_normalisations(p, opts):
    d = max(p.delta, 0.125)
    none = ape_loss(p.logits, p.labels, p.targets, delta=d, normalization="none", iou_weight=False, **opts)
    pos = ape_loss(p.logits, p.labels, p.targets, delta=d, normalization="positives", iou_weight=False, **opts)
    act = ape_loss(p.logits, p.labels, p.targets, delta=d, normalization="active", iou_weight=False, **opts)
    P = p.pos.sum()
    assert pos.loss * P == pytest.approx(none.loss, abs=1e-12)
    np.testing.assert_allclose(pos.grad * P, none.grad, atol=1e-12)
    if act.terms["num_active"] > 0:
        assert act.loss * act.terms["num_active"] == pytest.approx(none.loss, abs=1e-12)
    w = ape_loss(p.logits, p.labels, p.targets, delta=d, normalization="none", iou_weight=True, **opts)
    np.testing.assert_allclose(w.terms["per_positive"], p.targets[p.pos] * none.terms["per_positive"], atol=1e-12)


# ------------------------------------------------------------------------------------------
# Sec. 6 cluster split
# ------------------------------------------------------------------------------------------

def _two_clusters():
    # instance 0: candidates 0-9, instance 1: candidates 10-19, sample 20 is no candidate.  In each instance
    # four candidates have high ranking and localisation scores, six have low ones.
    good = np.array([1, 0, 1, 0, 0, 1, 0, 0, 1, 0] + [0, 1, 0, 1, 1, 0, 0, 1, 0, 0] + [0])
    k = np.arange(21)
    jitter = (k * 7 % 5) / 100.0  # 0 .. 0.04, deterministic
    p = np.where(good == 1, 0.80 + jitter, 0.10 + jitter)
    q = np.where(good == 1, 0.70 + jitter[::-1], 0.05 + jitter[::-1])
    p[-1], q[-1] = 0.99, 0.99
    ids = np.array([0] * 10 + [1] * 10 + [-1])
    return p, q, ids, good


@pytest.mark.parametrize("features", ["sum", "joint"])
def test_cluster_split_recovers_separated_clusters(features):
    p, q, ids, good = _two_clusters()
    out = arps_cluster_split(p, q, ids, features=features, separation="component")
    np.testing.assert_array_equal(out, good)
    paa = arps_cluster_split(p, q, ids, features=features, separation="paa")
    assert np.all(paa <= out) and paa[ids == 0].sum() >= 1 and paa[ids == 1].sum() >= 1
    assert out[-1] == 0  # not a candidate


def test_cluster_split_edge_cases():
    # a single candidate: kept ('keep') or dropped ('drop', PAA's code); equal costs: all positive
    ids = np.array([0, 1, 1, 1])
    p = np.array([0.3, 0.5, 0.5, 0.5])
    q = np.array([0.4, 0.2, 0.2, 0.2])
    np.testing.assert_array_equal(arps_cluster_split(p, q, ids), [1, 1, 1, 1])
    np.testing.assert_array_equal(arps_cluster_split(p, q, ids, small_instances="drop"), [0, 1, 1, 1])
    np.testing.assert_array_equal(arps_cluster_split(p, q, np.array([-1, -1, -1, -1])), [0, 0, 0, 0])


@settings(max_examples=25)
@given(st.lists(st.tuples(st.integers(0, 64), st.integers(0, 64)), min_size=3, max_size=12),
       st.sampled_from([0.5, 2.0, 4.0]), st.sampled_from([-1.0, 0.25, 3.0]), st.sampled_from(["sum", "joint"]))
def test_cluster_split_invariant_to_per_instance_affine_maps(pairs, scale, shift, features):
    # 0-1 normalisation per instance removes any increasing affine map of either score (exact on dyadics).
    p = np.array([a / 64 for a, _ in pairs])
    q = np.array([b / 64 for _, b in pairs])
    ids = np.zeros(len(pairs), dtype=np.int64)
    a = arps_cluster_split(p, q, ids, features=features)
    b = arps_cluster_split(scale * p + shift, q / scale, ids, features=features)
    np.testing.assert_array_equal(a, b)


def test_cluster_split_is_per_instance():
    p, q, ids, _ = _two_clusters()
    both = arps_cluster_split(p, q, ids)
    first = arps_cluster_split(p[ids == 0], q[ids == 0], ids[ids == 0])
    np.testing.assert_array_equal(both[ids == 0], first)


def test_cluster_split_then_ape_pairs_cross_the_clusters():
    # Ranking pairs across the two clusters: with equal IoUs (no aFP) and every pair valid, every positive of
    # the positive cluster is paired with every other sample.
    p, q, ids, _ = _two_clusters()
    labels = arps_cluster_split(p, q, ids, separation="component")
    logits = np.log(p / (1 - p))
    r = ape_loss(logits, labels, labels * 0.7, pair_threshold=math.inf)
    P = labels.sum()
    assert r.terms["num_pairs"] == P * (labels.size - P)


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, exc, words", [
    (lambda: ape_loss([0.0, 1.0], [1, 0]), TypeError, "missing"),
    (lambda: ape_loss([0.0, 1.0], [1, 0], None), TypeError, "ious is required"),
    (lambda: ape_loss([0.0, 1.0], [1, 2], [0.5, 0.0]), ValueError, "labels"),
    (lambda: ape_loss([0.0, 1.0], [1, 0], [1.5, 0.0]), ValueError, "ious"),
    (lambda: ape_loss([0.0, 1.0], [1, 0], [0.5]), ValueError, "ious"),
    (lambda: ape_loss([0.0, np.nan], [1, 0], [0.5, 0.0]), ValueError, "logits"),
    (lambda: ape_loss([], [], []), ValueError, "empty"),
    (lambda: ape_loss([0.0, 1.0], [1, 0], [0.5, 0.0], distance="l2"), ValueError, "distance"),
    (lambda: ape_loss([0.0, 1.0], [1, 0], [0.5, 0.0], balance="x"), ValueError, "balance"),
    (lambda: ape_loss([0.0, 1.0], [1, 0], [0.5, 0.0], lam=0.0), ValueError, "lam"),
    (lambda: ape_loss([0.0, 1.0], [1, 0], [0.5, 0.0], delta=-1.0), ValueError, "delta"),
    (lambda: ape_loss([0.0, 1.0], [1, 0], [0.5, 0.0], pair_threshold=-1.0), ValueError, "pair_threshold"),
    (lambda: ape_loss([0.0, 1.0], [1, 0], [0.5, 0.0], self_rank="two"), ValueError, "self_rank"),
    (lambda: ape_loss([0.0, 1.0], [1, 0], [0.5, 0.0], normalization="batch"), ValueError, "normalization"),
    (lambda: pairwise_error_loss([0.0, 1.0], [1, 0], iou_weight=True), TypeError, "ious"),
    (lambda: pairwise_error_loss(["a", "b"], [1, 0]), TypeError, "logits"),
    (lambda: arps_negative_sets([1, 0], [0.5, 0.1, 0.2]), ValueError, "ious"),
    (lambda: arps_cluster_split([0.1, 0.2], [0.1, 0.2], np.array([0.0, 0.0])), TypeError, "instance_ids"),
    (lambda: arps_cluster_split([0.1, 0.2], [0.1], np.array([0, 0])), ValueError, "localization_scores"),
    (lambda: arps_cluster_split([0.1, 0.2], [0.1, 0.2], np.array([0, -2])), ValueError, "instance_ids"),
    (lambda: arps_cluster_split([0.1, 0.2], [0.1, 0.2], np.array([0, 0]), features="3d"), ValueError, "features"),
])
def test_bad_input(call, exc, words):
    with pytest.raises(exc, match=words):
        call()


# --------------------------------------------------------------------------- the authors' defaults (issue 12)

def test_saturated_pair_scores_100_with_zero_gradient_in_float32():
    # positive at 0, negative at 3, lambda 8: lam x = 24; exp(-24) = 3.8e-11 is below half a float32 ulp of 1,
    # so torch's float32 sigmoid is exactly 1: BCE clamps log(0) to -100 and its backward gives 0.
    # BC = S(0) + S(24) = 0.5 + 1 = 1.5; loss = IoU * 100 / BC / lambda over the one active positive.
    r = ape_loss([0.0, 3.0], [1, 0], [0.6, 0.0])
    assert r.loss == pytest.approx(0.6 * 100.0 / 1.5 / 8.0, rel=1e-12)
    assert not np.any(r.grad)


def test_saturation_float64_and_exact_on_the_same_pair():
    S = sig(24.0)  # float64: S < 1, 1 - S = 3.8e-11, S (1 - S) > 1e-12: no clamp in the backward
    bc = 0.5 + S
    r64 = ape_loss([0.0, 3.0], [1, 0], [0.6, 0.0], saturation="bce_float64")
    assert r64.loss == pytest.approx(0.6 * -math.log1p(-S) / bc / 8.0, rel=1e-12)
    np.testing.assert_allclose(r64.grad, [-0.6 * S / bc, 0.6 * S / bc], rtol=1e-12)
    ex = ape_loss([0.0, 3.0], [1, 0], [0.6, 0.0], saturation="exact")
    assert ex.loss == pytest.approx(0.6 * (24.0 + math.log1p(math.exp(-24.0))) / bc / 8.0, rel=1e-14)
    np.testing.assert_allclose(ex.grad, r64.grad, rtol=1e-12)
    # far beyond float64 saturation (lam x = 400): the clamped forms score 100, the exact one 400
    assert ape_loss([0.0, 50.0], [1, 0], [1.0, 0.0], saturation="bce_float64").loss == pytest.approx(100 / 1.5 / 8)
    assert ape_loss([0.0, 50.0], [1, 0], [1.0, 0.0], saturation="exact").loss == pytest.approx(400 / 1.5 / 8)


def test_float32_sigmoid_rounding_below_saturation():
    # lam x = 8 * 1.5 = 12: float32 S = 1 / (1 + fl32(e^-12)) rounded to float32; the loss uses -log(1 - S)
    e = np.float32(math.exp(-12.0))
    S = float(np.float32(1.0) / (np.float32(1.0) + e))
    assert S != sig(12.0)  # the float32 rounding is visible ...
    r = ape_loss([0.0, 1.5], [1, 0], [1.0, 0.0])
    assert r.loss == pytest.approx(-math.log1p(-S) / (0.5 + S) / 8.0, rel=1e-12)  # ... and reproduced


def test_ignored_labels_take_no_part():
    s, y, iou = np.array([0.2, 0.5, -0.1, 0.3]), np.array([1, 0, -1, 0]), np.array([0.7, 0.0, 0.0, 0.0])
    r = ape_loss(s, y, iou)
    keep = y >= 0
    d = ape_loss(s[keep], y[keep], iou[keep])
    assert r.loss == d.loss and r.grad[2] == 0.0
    np.testing.assert_array_equal(r.grad[keep], d.grad)


def test_top_q_keeps_the_highest_relevant_negatives():
    s, y, iou = np.array([0.0, 0.3, 0.1, -5.0]), np.array([1, 0, 0, 0]), np.array([0.9, 0, 0, 0])
    # relevant negatives (x > -0.5): 0.3 and 0.1; top_q = 1 keeps 0.3 only, as if 0.1 were ignored
    a = ape_loss(s, y, iou, top_q=1)
    b = ape_loss(s, np.array([1, 0, -1, 0]), iou, top_q=None)
    assert a.loss == b.loss and a.grad[2] == 0.0
    assert ape_loss(s, y, iou, top_q=2).loss == ape_loss(s, y, iou, top_q=None).loss


def test_active_normalization_and_the_documented_zero_results():
    # positive 0 has a valid pair, positive 1 (logit 9, far above the negative) has none: the authors' mean
    # runs over the active positive only, so the loss equals the loss with positive 1 ignored
    s, iou = np.array([0.0, 9.0, 0.1]), np.array([0.8, 0.8, 0.0])
    a = ape_loss(s, [1, 1, 0], iou, self_rank="h0")
    only = ape_loss(s[[0, 2]], [1, 0], iou[[0, 2]])
    assert a.terms["num_active"] == 1.0
    # BC of positive 0 also counts positive 1 (S(9) ~ 1 rounds to 1 in float32): 0.5 + S(0.1) + 1
    assert a.loss == pytest.approx(only.loss * (0.5 + float(only.terms["balance_constant"][0] - 0.5))
                                   / (1.5 + float(only.terms["balance_constant"][0] - 0.5)), rel=1e-6)
    # the authors' code raises here: no positive, or no positive with a valid pair -> loss 0, zero gradient
    for labels in ([0, 0, 0], [0, 1, 0]):
        r = ape_loss(s, labels, iou)
        assert r.loss == 0.0 and not np.any(r.grad)


@pytest.mark.parametrize("value", ["fast", None, 1.0])
def test_saturation_is_validated(value):
    with pytest.raises(ValueError, match="saturation"):
        ape_loss([0.0, 1.0], [1, 0], [1.0, 0.0], saturation=value)


def test_top_q_is_validated():
    with pytest.raises(ValueError, match="top_q"):
        ape_loss([0.0, 1.0], [1, 0], [1.0, 0.0], top_q=0)


def test_float32_arithmetic_saturates_logits_beyond_float32_range():
    """bce_float32 clips logits to +-FLT_MAX before the float32 cast: logits of 1e153 would otherwise become
    inf in float32 and the pair difference inf - inf = NaN.  Both clipped logits equal FLT_MAX, so every
    pair has d = 0: S = 1/2 exactly, and the result equals the one for logits all equal to FLT_MAX."""
    s = np.array([1.00444366e153, 1.05180292e153, 1.05500957e153])
    labels, ious = np.array([1.0, 0.0, 0.0]), np.array([0.623862, 0.0, 0.0])
    flt_max = float(np.finfo(np.float32).max)
    for backend in ("numpy", "numba"):
        got = ape_loss(s, labels, ious, backend=backend)
        want = ape_loss(np.full(3, flt_max), labels, ious, backend="numpy")
        assert np.isfinite(got.loss) and np.all(np.isfinite(got.grad))
        assert got.loss == want.loss and np.array_equal(got.grad, want.grad)

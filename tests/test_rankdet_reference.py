"""Tests of the RankDetNet reference (rankspec.refimpl.losses.rankdet, .reference.rankdet): hand cases, properties,
errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.special import expit

from rankspec.refimpl.losses import rankdet as R
from rankspec.refimpl.reference import rankdet as RM
from rankspec.refimpl.conventions import all_conventions, by_keyword
from rankspec.refimpl.registry import entries, lookup

E = math.e
SETTINGS = settings(max_examples=30, deadline=None)


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------

def random_image(seed, n_max=14, c_max=3, ignore=True):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, n_max + 1))
    c = int(rng.integers(1, c_max + 1))
    logits = rng.normal(size=(n, c)) * 1.5
    low = RM.IGNORE if ignore else RM.BACKGROUND
    labels = rng.integers(low, c, size=n)
    ious = rng.uniform(0.05, 0.95, size=n)
    levels = rng.integers(0, 2, size=n)
    return logits, labels, ious, levels


def central_diff(fun, x, h=1e-6):
    """Central finite differences of a scalar function of an array, in float64."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (fun(xp) - fun(xm)) / (2 * h)
    return g


def assert_grad_close(actual, fd):
    """Compare a gradient with central differences; the absolute slack scales with the gradient's size
    (central differences of a loss of size |L| carry rounding noise ~ 1e-16 |L| / h)."""
    scale = max(1.0, float(np.abs(fd).max()))
    np.testing.assert_allclose(actual, fd, rtol=1e-6, atol=1e-7 * scale)


def conf(logits, score_space):
    return expit(logits) if score_space == "probability" else np.asarray(logits, dtype=np.float64)


def frozen_global(logits, base, col, **kw):
    """Global loss at ``logits`` with z, the negative units and the objectness columns frozen at ``base``."""
    f = conf(logits, kw["score_space"])[np.arange(len(logits)), col]
    unit_f = np.array([f[u].mean() for u in base.terms["negatives"]])
    pos = base.terms["positives"]
    return R.reweighted_pair_loss(unit_f, f[pos], rank_function=kw["rank_function"], z=base.terms["z"]).loss


def frozen_class(logits, labels, base, **kw):
    """Class-specific loss with every z_c and every class's negative units frozen at ``base``."""
    f = conf(logits, kw["score_space"])
    total = 0.0
    for c in range(logits.shape[1]):
        units = base.terms["negatives"][c]
        if not units:
            continue
        unit_f = np.array([f[u, c].mean() for u in units])
        total += R.reweighted_pair_loss(unit_f, f[labels == c, c], rank_function=kw["rank_function"],
                                        z=base.terms["z"][c]).loss
    return total


def iou_loss_loop(logits, labels, ious, levels, alpha, form, score_space, frozen_ious=None, pairs="unordered"):
    """An independent pair-by-pair implementation of Eq. 6.

    With ``frozen_ious`` (the IoUs at a base point), the IoU of the less confident sample of
    each pair is taken from ``frozen_ious`` (the Sec. 3.3 stop-gradient made explicit).
    """
    f = conf(logits, score_space)
    L = {"exponential": np.exp, "sigmoid": expit, "logistic": lambda u: np.log1p(np.exp(u))}[form]
    pos = [i for i in range(len(labels)) if labels[i] >= 0]
    total = 0.0
    for a in pos:
        for b in pos:
            if labels[a] != labels[b] or levels[a] != levels[b]:
                continue
            if (pairs == "unordered" and not a < b) or (pairs == "ordered" and a == b):
                continue
            c = labels[a]
            fa, fb = f[a, c], f[b, c]
            sa, sb = ious[a], ious[b]
            if frozen_ious is not None:
                if fa > fb:
                    sb = frozen_ious[b]
                elif fb > fa:
                    sa = frozen_ious[a]
            total += L(-alpha * (fa - fb) * (sa - sb))
    return total


OPTIONS = st.fixed_dictionaries({
    "rank_function": st.sampled_from(RM.RANK_FUNCTIONS),
    "score_space": st.sampled_from(RM.SCORE_SPACES),
    "mining": st.sampled_from(RM.MININGS),
    "group_split": st.sampled_from(("range", "count")),
    "num_groups": st.integers(1, 6),
    "neg_ratio": st.integers(1, 4),
})


# ---------------------------------------------------------------------------------------------------------------
# hand-computed cases
# ---------------------------------------------------------------------------------------------------------------

def test_global_hand_case_logit_space_exponential():
    # positives f = 1, 0; one negative f = 0.5; no mining; z of Eq. 3
    # x = f(n) - f(p) = [-0.5, 0.5];  L = [e^-0.5, e^0.5];  z = L / (e^-0.5 + e^0.5)
    # loss = sum z L = (e^-1 + e^1) / (e^-0.5 + e^0.5) = cosh(1) / cosh(0.5)
    r = R.global_ranking_loss([1.0, 0.0, 0.5], [0, 0, -1], score_space="logit", mining="all")
    den = E ** -0.5 + E ** 0.5
    assert r.loss == pytest.approx(math.cosh(1) / math.cosh(0.5), rel=1e-12)
    assert r.loss == pytest.approx(1.368433046442688, rel=1e-12)
    np.testing.assert_allclose(r.terms["z"], [[E ** -0.5 / den, E ** 0.5 / den]], rtol=1e-12)
    # with z constant: d/df(p) = -z L'(x) = -z e^x;  d/df(n) = sum_p z e^x (= the loss for exp)
    np.testing.assert_allclose(r.grad, [-E ** -1 / den, -E / den, (E ** -1 + E) / den], rtol=1e-12)


def test_global_hand_case_probability_space_chain_rule():
    # same logits, f = sigmoid(logit): x_p = sigmoid(0.5) - sigmoid(1), sigmoid(0.5) - sigmoid(0)
    logits = np.array([1.0, 0.0, 0.5])
    f = 1 / (1 + np.exp(-logits))
    x = np.array([f[2] - f[0], f[2] - f[1]])
    L = np.exp(x)
    z = L / L.sum()
    r = R.global_ranking_loss(logits, [0, 0, -1], mining="all")
    assert r.loss == pytest.approx(float((z * L).sum()), rel=1e-12)
    dfd = f * (1 - f)  # sigmoid'
    expected = np.array([-z[0] * L[0] * dfd[0], -z[1] * L[1] * dfd[1], (z * L).sum() * dfd[2]])
    np.testing.assert_allclose(r.grad, expected, rtol=1e-12)


def test_global_hand_case_ohem_one_to_three():
    # one positive (logit 0), five background samples; OHEM keeps the 3 * 1 highest: logits 2, 1, 0.5
    logits = np.array([0.0, -3.0, 2.0, -1.0, 1.0, 0.5])
    labels = np.array([0, -1, -1, -1, -1, -1])
    r = R.global_ranking_loss(logits, labels, score_space="logit", mining="ohem")
    assert [u.tolist() for u in r.terms["negatives"]] == [[2], [4], [5]]
    # loss = sum e^{2x} / sum e^{x} with x = 2, 1, 0.5
    assert r.loss == pytest.approx((E ** 4 + E ** 2 + E) / (E ** 2 + E + E ** 0.5), rel=1e-12)
    assert r.grad[1] == 0.0 and r.grad[3] == 0.0  # unselected negatives: no gradient
    den = E ** 2 + E + E ** 0.5
    np.testing.assert_allclose(r.grad[[2, 4, 5]], np.array([E ** 4, E ** 2, E]) / den, rtol=1e-12)


def test_global_hand_case_groups_range_split():
    # positive f = 0; negatives f = 0.0, 0.1, 0.9, 1.0; 2 groups of equal width on [0, 1]:
    # bins floor(2 f) = 0, 0, 1, 2 -> clipped to 1  =>  groups {0.0, 0.1} (mean 0.05) and {0.9, 1.0} (mean 0.95)
    logits = np.array([0.0, 0.0, 0.1, 0.9, 1.0])
    labels = np.array([0, -1, -1, -1, -1])
    r = R.global_ranking_loss(logits, labels, score_space="logit", mining="group", num_groups=2,
                              reweighting="mean")
    assert [u.tolist() for u in r.terms["negatives"]] == [[1, 2], [3, 4]]
    # z = 1/2 per pair: loss = (e^0.05 + e^0.95) / 2
    assert r.loss == pytest.approx((E ** 0.05 + E ** 0.95) / 2, rel=1e-12)
    # each group's gradient z e^x is shared by its 2 members
    expected = [-(E ** 0.05 + E ** 0.95) / 2, E ** 0.05 / 4, E ** 0.05 / 4, E ** 0.95 / 4, E ** 0.95 / 4]
    np.testing.assert_allclose(r.grad, expected, rtol=1e-12)


def test_group_negatives_splits_by_hand():
    f = np.array([0.05, 0.2, 0.34, 0.99, 1.0])
    # unit: floor(3 f) = 0, 0, 1, 2, 3 -> 2
    assert [g.tolist() for g in RM.group_negatives(f, 3, "unit")] == [[0, 1], [2], [3, 4]]
    # range: lo 0.05, hi 1.0; floor(3 (f - 0.05) / 0.95) = 0, 0, 0, 2, 3 -> 2 (bin 1 empty and dropped)
    assert [g.tolist() for g in RM.group_negatives(f, 3, "range")] == [[0, 1, 2], [3, 4]]
    # count: ascending order split 2 / 2 / 1 (numpy.array_split)
    assert [g.tolist() for g in RM.group_negatives(f[::-1], 3, "count")] == [[3, 4], [1, 2], [0]]
    # all equal: one group
    assert [g.tolist() for g in RM.group_negatives([0.3, 0.3, 0.3], 15, "range")] == [[0, 1, 2]]
    # a score on an inner edge joins the upper bin: range [0, 1], 2 bins, f = 0.5 -> bin 1
    assert [g.tolist() for g in RM.group_negatives([0.0, 0.5, 1.0], 2, "range")] == [[0], [1, 2]]


def test_class_specific_hand_case():
    # labels 0, 1, background; logit space, no mining, z = 1 ("none"), exponential
    # class 0: P = {0} (f = 2), N = {1, 2} (f = 0, 1): e^{0-2} + e^{1-2} = e^-2 + e^-1
    # class 1: P = {1} (f = 1), N = {0, 2} (f = 0, -1): e^{0-1} + e^{-1-1} = e^-1 + e^-2
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
    r = R.class_specific_ranking_loss(logits, [0, 1, -1], score_space="logit", mining="all", reweighting="none")
    a, b = E ** -1, E ** -2
    np.testing.assert_allclose(r.terms["per_class"], [a + b, a + b], rtol=1e-12)
    assert r.loss == pytest.approx(2 * (a + b), rel=1e-12)
    np.testing.assert_allclose(r.grad, [[-(a + b), a], [b, -(a + b)], [a, b]], rtol=1e-12)
    # class_reduction="mean": two classes with pairs
    m = R.class_specific_ranking_loss(logits, [0, 1, -1], score_space="logit", mining="all",
                                      reweighting="none", class_reduction="mean")
    assert m.loss == pytest.approx(a + b, rel=1e-12)
    np.testing.assert_allclose(m.grad, r.grad / 2, rtol=1e-12)


def test_class_specific_ohem_per_class():
    # class 0 has 1 positive -> 3 hardest of its 5 negatives (by column 0); class 1 has 2 positives -> all 4
    logits = np.array([[0.0, -5.0], [0.1, 0.0], [0.2, 0.0], [0.3, -5.0], [-1.0, -5.0], [-2.0, -5.0]])
    labels = np.array([0, 1, 1, -1, -1, -1])
    r = R.class_specific_ranking_loss(logits, labels, score_space="logit", mining="ohem")
    assert [u.tolist() for u in r.terms["negatives"][0]] == [[3], [2], [1]]
    assert sorted(int(u[0]) for u in r.terms["negatives"][1]) == [0, 3, 4, 5]
    assert r.terms["z"][0].shape == (3, 1) and r.terms["z"][1].shape == (4, 2)
    assert r.terms["num_pairs"] == 3 + 8


def test_iou_guided_hand_case_and_stop_gradient():
    # positives 0 and 1 (class 0, level 0): f = 0.8, 0.3; IoU s = 0.5, 0.9; alpha = 1; logit space
    # u = -alpha (f0 - f1)(s0 - s1) = -(0.5)(-0.4) = 0.2; L = e^0.2
    # a third positive on another level and a class-1 positive form no pair
    logits = np.array([[0.8, 0.0], [0.3, 0.0], [0.9, 0.0], [0.0, 0.7]])
    labels = [0, 0, 0, 1]
    ious = [0.5, 0.9, 0.1, 0.3]
    levels = [0, 0, 1, 0]
    r = R.iou_guided_ranking_loss(logits, labels, ious, levels, score_space="logit")
    L = E ** 0.2
    assert r.terms["num_pairs"] == 1
    assert r.loss == pytest.approx(L, rel=1e-12)
    # d/df0 = L * (-alpha)(s0 - s1) = 0.4 L;  d/df1 = -0.4 L
    np.testing.assert_allclose(r.grad, [[0.4 * L, 0], [-0.4 * L, 0], [0, 0], [0, 0]], rtol=1e-12, atol=0)
    # IoU gradient: p0 is more confident, so only s0 moves: d/ds0 = L (-alpha)(f0 - f1) = -0.5 L; s1 frozen
    np.testing.assert_allclose(r.terms["grad_ious"], [-0.5 * L, 0, 0, 0], rtol=1e-12)
    both = R.iou_guided_ranking_loss(logits, labels, ious, levels, score_space="logit", iou_grad="both")
    np.testing.assert_allclose(both.terms["grad_ious"], [-0.5 * L, 0.5 * L, 0, 0], rtol=1e-12)
    none = R.iou_guided_ranking_loss(logits, labels, ious, levels, score_space="logit", iou_grad="none")
    assert not none.terms["grad_ious"].any()
    np.testing.assert_array_equal(both.grad, r.grad)  # the logits' gradient does not depend on iou_grad
    # merged levels (levels=None): pairs (0,1), (0,2), (1,2) of class 0
    merged = R.iou_guided_ranking_loss(logits, labels, ious, None, score_space="logit")
    expected = E ** 0.2 + E ** (-(0.8 - 0.9) * (0.5 - 0.1)) + E ** (-(0.3 - 0.9) * (0.9 - 0.1))
    assert merged.loss == pytest.approx(expected, rel=1e-12)


def test_rankdet_loss_combines_with_weights():
    logits, labels, ious, levels = random_image(3)
    kw = dict(mining="ohem")
    g = R.global_ranking_loss(logits, labels, **kw)
    c = R.class_specific_ranking_loss(logits, labels, **kw)
    u = R.iou_guided_ranking_loss(logits, labels, ious, levels)
    r = R.rankdet_loss(logits, labels, ious, levels, 0.7, weights=(1, 2, 3, 4), **kw)
    assert r.loss == pytest.approx(g.loss + 2 * c.loss + 3 * u.loss + 4 * 0.7, rel=1e-12)
    np.testing.assert_allclose(r.grad, g.grad + 2 * c.grad + 3 * u.grad, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(r.terms["grad_ious"], 3 * u.terms["grad_ious"], rtol=1e-12)
    assert (r.terms["global"], r.terms["class"], r.terms["iou"], r.terms["regression"]) == (g.loss, c.loss,
                                                                                            u.loss, 0.7)
    # default weights 1:1:1:1 (Sec. 3.4)
    d = R.rankdet_loss(logits, labels, ious, levels, 0.7, **kw)
    assert d.loss == pytest.approx(g.loss + c.loss + u.loss + 0.7, rel=1e-12)


def test_rank_functions_values_and_derivatives():
    x = np.array([-1.0, 0.0, 2.0])
    v, d = RM.rank_function_values(x, "exponential")
    np.testing.assert_allclose(v, np.exp(x)); np.testing.assert_allclose(d, np.exp(x))
    v, d = RM.rank_function_values(x, "sigmoid")
    s = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(v, s); np.testing.assert_allclose(d, s * (1 - s))
    v, d = RM.rank_function_values(x, "logistic")
    np.testing.assert_allclose(v, np.log(1 + np.exp(x))); np.testing.assert_allclose(d, s)
    for form in RM.RANK_FUNCTIONS:
        v, d = RM.rank_function_values(x, form)
        np.testing.assert_allclose(d, central_diff(lambda y: RM.rank_function_values(y, form)[0].sum(), x),
                                   rtol=1e-7)


# ---------------------------------------------------------------------------------------------------------------
# defined edge cases
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("labels", [[-1, -1, -1], [0, 1, 0], [-2, -2, -2], [-2, 0, -2]])
def test_global_without_positives_or_negatives_is_zero(labels):
    r = R.global_ranking_loss(np.zeros((3, 2)), labels)
    assert r.loss == 0.0 and not r.grad.any() and r.terms["num_pairs"] == 0


def test_class_specific_classes_without_pairs_contribute_zero():
    r = R.class_specific_ranking_loss(np.ones((2, 3)), [1, -2])  # class 1 has a positive but no negative
    assert r.loss == 0.0 and not r.grad.any()
    r = R.class_specific_ranking_loss(np.ones((3, 3)), [1, -1, -2], mining="all", class_reduction="mean")
    assert r.terms["per_class"][0] == 0 and r.terms["per_class"][2] == 0 and r.loss > 0
    assert not r.grad[:, [0, 2]].any()


def test_iou_single_positive_and_all_pairs_convention():
    r = R.iou_guided_ranking_loss(np.zeros((3, 1)), [0, -1, -1], [0.5, 0, 0])
    assert r.loss == 0.0 and r.terms["num_pairs"] == 0 and not r.grad.any()
    # 'all' is the literal double sum: the self pair adds L_rank(0) = 1 for exp
    r = R.iou_guided_ranking_loss(np.zeros((3, 1)), [0, -1, -1], [0.5, 0, 0], iou_pairs="all")
    assert r.loss == 1.0 and r.terms["num_pairs"] == 1 and not r.grad.any()


def test_ignored_samples_take_part_in_nothing():
    logits, labels, ious, levels = random_image(11, ignore=False)
    extra_logits = np.vstack([logits, np.full((2, logits.shape[1]), 9.0)])
    extra_labels = np.concatenate([labels, [RM.IGNORE, RM.IGNORE]])
    a = R.rankdet_loss(logits, labels, ious, levels)
    b = R.rankdet_loss(extra_logits, extra_labels, np.concatenate([ious, [0.3, 2.0]]),
                       np.concatenate([levels, [0, 0]]))
    assert b.loss == pytest.approx(a.loss, rel=1e-12)
    np.testing.assert_allclose(b.grad[:-2], a.grad, rtol=1e-12, atol=1e-15)
    assert not b.grad[-2:].any()


def test_one_hot_labels_equal_class_ids():
    logits, labels, ious, levels = random_image(5, ignore=False)
    onehot = np.zeros(logits.shape)
    onehot[labels >= 0, labels[labels >= 0]] = 1
    a = R.rankdet_loss(logits, labels, ious, levels)
    b = R.rankdet_loss(logits, onehot, ious, levels)
    assert a.loss == b.loss
    np.testing.assert_array_equal(a.grad, b.grad)


# ---------------------------------------------------------------------------------------------------------------
# gradient properties
# ---------------------------------------------------------------------------------------------------------------

@SETTINGS
@given(seed=st.integers(0, 10 ** 6), opts=OPTIONS, objectness=st.sampled_from(RM.OBJECTNESS))
def test_global_gradient_is_derivative_with_z_and_mining_frozen(seed, opts, objectness):
    logits, labels, _, _ = random_image(seed)
    kw = dict(opts, objectness=objectness)
    base = R.global_ranking_loss(logits, labels, **kw)
    col = np.argmax(logits, axis=1)
    if objectness == "target":
        col = np.where(labels >= 0, labels, col)
    fd = central_diff(lambda x: frozen_global(x, base, col, **kw), logits)
    assert_grad_close(base.grad, fd)


@SETTINGS
@given(seed=st.integers(0, 10 ** 6), opts=OPTIONS)
def test_class_gradient_is_derivative_with_z_and_mining_frozen(seed, opts):
    logits, labels, _, _ = random_image(seed)
    base = R.class_specific_ranking_loss(logits, labels, **opts)
    fd = central_diff(lambda x: frozen_class(x, labels, base, **opts), logits)
    assert_grad_close(base.grad, fd)


@SETTINGS
@given(seed=st.integers(0, 10 ** 6), opts=OPTIONS, reweighting=st.sampled_from(("mean", "none")))
def test_gradient_without_dynamic_weights_is_the_true_derivative(seed, opts, reweighting):
    # no z: the loss itself (with the mining kept by the generic random point) is differentiable
    logits, labels, _, _ = random_image(seed)
    kw = dict(opts, reweighting=reweighting)
    for fn in (R.global_ranking_loss, R.class_specific_ranking_loss):
        base = fn(logits, labels, **kw)
        fd = central_diff(lambda x: fn(x, labels, **kw).loss, logits)
        assert_grad_close(base.grad, fd)


def test_dynamic_z_is_a_constant_in_backprop():
    # the gradient is the derivative of sum z L with z frozen, not of the loss sum L^2 / sum L itself
    logits, labels = np.array([1.0, 0.0, 0.5]), np.array([0, 0, -1])
    r = R.global_ranking_loss(logits, labels, score_space="logit", mining="all")
    true = central_diff(lambda x: R.global_ranking_loss(x, labels, score_space="logit", mining="all").loss,
                        logits)
    # d/df(p1) of (e^{2 x1} + e^{2 x2}) / (e^{x1} + e^{x2}) with x = f(n) - f(p) differs from -z1 e^{x1}
    assert abs(true[0] - r.grad[0]) > 0.05
    frozen = central_diff(lambda x: R.reweighted_pair_loss([x[2]], x[:2], z=r.terms["z"]).loss, logits)
    np.testing.assert_allclose(r.grad, frozen, rtol=1e-8)


@SETTINGS
@given(seed=st.integers(0, 10 ** 6), rank_function=st.sampled_from(RM.RANK_FUNCTIONS),
       score_space=st.sampled_from(RM.SCORE_SPACES), alpha=st.floats(0.1, 3.0),
       pairs=st.sampled_from(RM.IOU_PAIRS))
def test_iou_gradients_match_an_independent_loop(seed, rank_function, score_space, alpha, pairs):
    logits, labels, ious, levels = random_image(seed)
    kw = dict(alpha=alpha, rank_function=rank_function, score_space=score_space, iou_pairs=pairs)
    r = R.iou_guided_ranking_loss(logits, labels, ious, levels, **kw)
    args = (alpha, rank_function, score_space)
    assert r.loss == pytest.approx(iou_loss_loop(logits, labels, ious, levels, *args, pairs=pairs), rel=1e-12)
    # logits: the true derivative
    fd = central_diff(lambda x: iou_loss_loop(x, labels, ious, levels, *args, pairs=pairs), logits)
    assert_grad_close(r.grad, fd)
    # ious, iou_grad="higher": derivative with the less confident IoU of each pair frozen (Sec. 3.3)
    fd = central_diff(lambda s: iou_loss_loop(logits, labels, s, levels, *args, frozen_ious=ious, pairs=pairs),
                      ious)
    assert_grad_close(r.terms["grad_ious"], fd)
    # ious, iou_grad="both": the true derivative
    both = R.iou_guided_ranking_loss(logits, labels, ious, levels, iou_grad="both", **kw)
    fd = central_diff(lambda s: iou_loss_loop(logits, labels, s, levels, *args, pairs=pairs), ious)
    assert_grad_close(both.terms["grad_ious"], fd)


# ---------------------------------------------------------------------------------------------------------------
# invariances and limits
# ---------------------------------------------------------------------------------------------------------------

@SETTINGS
@given(seed=st.integers(0, 10 ** 6), opts=OPTIONS)
def test_permutation_equivariance_of_samples(seed, opts):
    logits, labels, ious, levels = random_image(seed)
    perm = np.random.default_rng(seed + 1).permutation(len(labels))
    kw = dict(opts)
    kw["global_groups"] = kw["class_groups"] = kw.pop("num_groups")
    a = R.rankdet_loss(logits, labels, ious, levels, **kw)
    b = R.rankdet_loss(logits[perm], labels[perm], ious[perm], levels[perm], **kw)
    assert b.loss == pytest.approx(a.loss, rel=1e-10)
    np.testing.assert_allclose(b.grad, a.grad[perm], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(b.terms["grad_ious"], a.terms["grad_ious"][perm], rtol=1e-9, atol=1e-12)


@SETTINGS
@given(seed=st.integers(0, 10 ** 6), opts=OPTIONS)
def test_permutation_equivariance_of_classes(seed, opts):
    logits, labels, ious, levels = random_image(seed)
    C = logits.shape[1]
    perm = np.random.default_rng(seed + 2).permutation(C)  # new column k holds old class perm[k]
    inverse = np.argsort(perm)
    new_labels = np.where(labels >= 0, inverse[np.maximum(labels, 0)], labels)
    kw = dict(opts)
    kw["global_groups"] = kw["class_groups"] = kw.pop("num_groups")
    a = R.rankdet_loss(logits, labels, ious, levels, **kw)
    b = R.rankdet_loss(logits[:, perm], new_labels, ious, levels, **kw)
    assert b.loss == pytest.approx(a.loss, rel=1e-10)
    np.testing.assert_allclose(b.grad, a.grad[:, perm], rtol=1e-9, atol=1e-12)


@SETTINGS
@given(seed=st.integers(0, 10 ** 6), shift=st.floats(-3, 3), opts=OPTIONS)
def test_global_loss_in_logit_space_is_shift_invariant(seed, shift, opts):
    logits, labels, _, _ = random_image(seed)
    kw = dict(opts, score_space="logit")
    a = R.global_ranking_loss(logits, labels, **kw)
    b = R.global_ranking_loss(logits + shift, labels, **kw)
    assert b.loss == pytest.approx(a.loss, rel=1e-9, abs=1e-12)


@SETTINGS
@given(seed=st.integers(0, 10 ** 6), t=st.floats(0.01, 3), opts=OPTIONS)
def test_exponential_dynamic_loss_scales_by_exp_minus_t(seed, t, opts):
    # logit space, L = exp: raising every positive's objectness by t multiplies every L by e^-t;
    # z is scale-free, so the loss sum z L scales by e^-t (mining only looks at the negatives)
    logits, labels, _, _ = random_image(seed)
    kw = dict(opts, score_space="logit", rank_function="exponential")
    moved = logits.copy()
    moved[labels >= 0] += t  # every column, so the max (objectness) rises by t too
    a = R.global_ranking_loss(logits, labels, **kw)
    b = R.global_ranking_loss(moved, labels, **kw)
    assert b.loss == pytest.approx(a.loss * math.exp(-t), rel=1e-9, abs=1e-300)


@SETTINGS
@given(seed=st.integers(0, 10 ** 6), opts=OPTIONS, t=st.floats(0.05, 2.0))
def test_raising_positives_lowers_the_loss(seed, opts, t):
    logits, labels, _, _ = random_image(seed)
    kw = dict(opts, reweighting="mean")
    pos = labels >= 0
    moved = logits.copy()
    moved[pos, labels[pos]] += t  # own-class logit only: a positive is a negative of the other classes
    for fn in (R.class_specific_ranking_loss, lambda x, y, **k: R.global_ranking_loss(x, y, objectness="target",
                                                                                     **k)):
        a, b = fn(logits, labels, **kw), fn(moved, labels, **kw)
        if a.terms["num_pairs"]:
            assert b.loss < a.loss


@SETTINGS
@given(seed=st.integers(0, 10 ** 6), opts=OPTIONS, reweighting=st.sampled_from(RM.REWEIGHTINGS))
def test_gradient_signs(seed, opts, reweighting):
    # L_rank increasing: positives are pushed up, negatives down (z >= 0, f increasing in the logit)
    logits, labels, _, _ = random_image(seed)
    kw = dict(opts, reweighting=reweighting)
    g = R.global_ranking_loss(logits, labels, **kw).grad
    assert np.all(g[labels >= 0] <= 0) and np.all(g[labels == RM.BACKGROUND] >= 0)
    c = R.class_specific_ranking_loss(logits, labels, **kw).grad
    own = np.zeros(c.shape, dtype=bool)
    own[labels >= 0, labels[labels >= 0]] = True
    assert np.all(c[own] <= 0) and np.all(c[~own] >= 0)


@SETTINGS
@given(seed=st.integers(0, 10 ** 6), a=st.floats(0.05, 1.0), rank_function=st.sampled_from(RM.RANK_FUNCTIONS))
def test_iou_alpha_scales_the_iou_gap(seed, a, rank_function):
    # u = -alpha (f_i - f_j)(s_i - s_j) = -(f_i - f_j)(alpha s_i - alpha s_j)
    logits, labels, ious, levels = random_image(seed)
    x = R.iou_guided_ranking_loss(logits, labels, ious, levels, alpha=a, rank_function=rank_function)
    y = R.iou_guided_ranking_loss(logits, labels, a * ious, levels, alpha=1.0, rank_function=rank_function)
    assert x.loss == pytest.approx(y.loss, rel=1e-12)
    np.testing.assert_allclose(x.grad, y.grad, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(x.terms["grad_ious"], a * y.terms["grad_ious"], rtol=1e-10, atol=1e-14)


@SETTINGS
@given(seed=st.integers(0, 10 ** 6), rank_function=st.sampled_from(RM.RANK_FUNCTIONS))
def test_iou_pair_conventions_relate(seed, rank_function):
    logits, labels, ious, levels = random_image(seed)
    u = R.iou_guided_ranking_loss(logits, labels, ious, levels, rank_function=rank_function)
    o = R.iou_guided_ranking_loss(logits, labels, ious, levels, rank_function=rank_function, iou_pairs="ordered")
    a = R.iou_guided_ranking_loss(logits, labels, ious, levels, rank_function=rank_function, iou_pairs="all")
    p = R.iou_guided_ranking_loss(logits, labels, ious, levels, rank_function=rank_function,
                                  iou_normalization="pairs")
    n_pos = int((labels >= 0).sum())
    L0 = float(RM.rank_function_values(0.0, rank_function)[0])
    assert o.loss == pytest.approx(2 * u.loss, rel=1e-12)
    np.testing.assert_allclose(o.grad, 2 * u.grad, rtol=1e-12, atol=1e-15)
    # 'all' = both orders plus one self pair L_rank(0) per positive (constant: no gradient)
    assert a.loss == pytest.approx(2 * u.loss + n_pos * L0, rel=1e-12)
    np.testing.assert_allclose(a.grad, 2 * u.grad, rtol=1e-12, atol=1e-15)
    if u.terms["num_pairs"]:
        assert p.loss == pytest.approx(u.loss / u.terms["num_pairs"], rel=1e-12)
    assert o.terms["num_pairs"] == 2 * u.terms["num_pairs"] == a.terms["num_pairs"] - n_pos


def test_iou_concordant_pairs_cost_less_than_discordant():
    # same confidences; IoUs in the confidence order vs reversed
    logits = np.array([[2.0], [1.0], [0.0]])
    good = R.iou_guided_ranking_loss(logits, [0, 0, 0], [0.9, 0.6, 0.3])
    bad = R.iou_guided_ranking_loss(logits, [0, 0, 0], [0.3, 0.6, 0.9])
    assert good.loss < 3.0 < bad.loss  # 3 pairs; L_rank(0) = 1 each at no correlation


# ---------------------------------------------------------------------------------------------------------------
# negative mining
# ---------------------------------------------------------------------------------------------------------------

@SETTINGS
@given(seed=st.integers(0, 10 ** 6), ratio=st.integers(1, 4))
def test_ohem_keeps_ratio_times_positives_hardest(seed, ratio):
    logits, labels, _, _ = random_image(seed, n_max=30)
    r = R.global_ranking_loss(logits, labels, mining="ohem", neg_ratio=ratio)
    n_pos, neg = int((labels >= 0).sum()), np.flatnonzero(labels == RM.BACKGROUND)
    units = r.terms["negatives"]
    assert len(units) == (min(ratio * n_pos, len(neg)) if n_pos else 0)
    chosen = np.array([u[0] for u in units], dtype=int)
    if len(chosen) and len(chosen) < len(neg):
        obj = logits.max(axis=1)
        rest = np.setdiff1d(neg, chosen)
        assert obj[chosen].min() >= obj[rest].max()  # the hardest ones
    c = R.class_specific_ranking_loss(logits, labels, mining="ohem", neg_ratio=ratio)
    for k in range(logits.shape[1]):
        n_pos_k = int((labels == k).sum())
        n_neg_k = int(((labels != k) & (labels != RM.IGNORE)).sum())
        expected = min(ratio * n_pos_k, n_neg_k) if n_pos_k and n_neg_k else 0
        assert len(c.terms["negatives"][k]) == expected


def test_ohem_ties_prefer_lower_index():
    assert RM.ohem_negatives([1.0, 2.0, 1.0, 1.0], 1, 2).tolist() == [1, 0]


@SETTINGS
@given(seed=st.integers(0, 10 ** 6), G=st.integers(1, 20), split=st.sampled_from(RM.GROUP_SPLITS))
def test_groups_partition_negatives_into_score_intervals(seed, G, split):
    rng = np.random.default_rng(seed)
    f = expit(rng.normal(size=int(rng.integers(1, 40))))
    groups = RM.group_negatives(f, G, split)
    assert 1 <= len(groups) <= G
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(f)))  # a partition
    for lower, upper in zip(groups, groups[1:]):  # score-contiguous, ascending
        assert f[lower].max() <= f[upper].min()
    if split == "count":
        sizes = [len(g) for g in groups]
        assert max(sizes) - min(sizes) <= 1 and len(groups) == min(G, len(f))
    elif split == "range" and f.max() > f.min():
        width = (f.max() - f.min()) / G
        for g in groups:
            assert f[g].max() - f[g].min() <= width * (1 + 1e-12)
    else:
        for g in groups:
            assert f[g].max() - f[g].min() <= 1.0 / G + 1e-12


def test_paper_group_counts_are_the_defaults():
    # Sec. 4.1: 15 groups for the global loss, 3 per class for the class-specific loss
    rng = np.random.default_rng(0)
    logits = np.concatenate([[[3.0, 3.0]], rng.uniform(-4, 4, size=(200, 2))])
    labels = np.array([0] + [-1] * 200)
    g = R.global_ranking_loss(logits, labels)
    c = R.class_specific_ranking_loss(logits, labels)
    assert len(g.terms["negatives"]) == 15
    assert len(c.terms["negatives"][0]) == 3 and c.terms["negatives"][1] == []
    assert by_keyword("num_groups", "global_ranking_loss").default["global_ranking_loss"] == 15


# ---------------------------------------------------------------------------------------------------------------
# registry and conventions
# ---------------------------------------------------------------------------------------------------------------

def test_functions_are_registered_and_conventions_listed():
    names = {e.qualname.rsplit(".", 1)[-1] for e in entries() if e.family == "rankdet"}
    assert {"global_ranking_loss", "class_specific_ranking_loss", "iou_guided_ranking_loss", "rankdet_loss",
            "rank_function_values", "reweighted_pair_loss", "ohem_negatives", "group_negatives"} <= names
    assert lookup(R.global_ranking_loss).refs[0] == ("RankDet", "Eqs. 2-3")
    keywords = {c.keyword for c in all_conventions() if "rankdet_loss" in c.applies_to}
    assert {"rank_function", "score_space", "reweighting", "mining", "group_split", "objectness",
            "class_reduction", "iou_grad", "iou_pairs", "iou_normalization", "alpha", "neg_ratio",
            "global_groups", "class_groups"} <= keywords
    import inspect
    for c in all_conventions():
        if c.keyword and "rankdet_loss" in c.applies_to:
            sig = inspect.signature(R.rankdet_loss)
            assert c.keyword in sig.parameters and sig.parameters[c.keyword].default == c.default


# ---------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------

GOOD = dict(logits=np.zeros((3, 2)), labels=np.array([0, -1, 1]), ious=np.array([0.5, 0.0, 0.7]))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(logits=np.zeros((3, 2, 1))), ValueError, "logits must have shape"),
    (dict(logits=np.zeros(3)), ValueError, r"logits must have shape \[N, C\]"),
    (dict(logits=np.array([[0, np.nan], [0, 0], [0, 0]])), ValueError, "logits contains 1 NaN"),
    (dict(logits=np.zeros((0, 2))), ValueError, "logits is empty"),
    (dict(logits=np.array([["a", "b"]] * 3)), TypeError, "logits must have a real numeric"),
    (dict(labels=np.array([0, 2, -1])), ValueError, r"labels must be 0\.\.1"),
    (dict(labels=np.array([0, -3, -1])), ValueError, "found -3"),
    (dict(labels=np.array([0.5, 0, -1])), ValueError, "labels must hold whole numbers"),
    (dict(labels=np.array([True, False, True])), TypeError, "labels must hold integer ids"),
    (dict(labels=np.array([0, 1])), ValueError, r"labels must have shape \(3,\)"),
    (dict(labels=np.array([[1, 1], [0, 0], [0, 1]])), ValueError, "at most one 1 per row"),
    (dict(ious=np.array([1.5, 0.0, 0.7])), ValueError, r"ious of positive samples must lie in \[0, 1\]"),
    (dict(ious=np.array([0.5, 0.7])), ValueError, r"ious must have shape \(3,\)"),
    (dict(ious=np.array([0.5, np.inf, 0.7])), ValueError, "ious contains 1 NaN"),
    (dict(levels=np.array([0, -1, 0])), ValueError, "levels must be pyramid-level ids >= 0"),
    (dict(levels=np.array([0, 0])), ValueError, r"levels must have shape \(3,\)"),
    (dict(rank_function="hinge"), ValueError, "rank_function must be one of"),
    (dict(score_space="prob"), ValueError, "score_space must be one of"),
    (dict(reweighting="static"), ValueError, "reweighting must be one of"),
    (dict(mining="random"), ValueError, "mining must be one of"),
    (dict(group_split="quantile"), ValueError, "group_split must be one of"),
    (dict(group_split="unit", score_space="logit"), ValueError, "needs score_space='probability'"),
    (dict(objectness="mean"), ValueError, "objectness must be one of"),
    (dict(class_reduction="max"), ValueError, "class_reduction must be one of"),
    (dict(global_groups=0), ValueError, "num_groups must be >= 1"),
    (dict(class_groups=2.5), TypeError, "num_groups must be an integer"),
    (dict(neg_ratio=0), ValueError, "neg_ratio must be >= 1"),
    (dict(alpha=0.0), ValueError, "alpha must be finite and > 0"),
    (dict(alpha=-1.0), ValueError, "alpha must be finite and > 0"),
    (dict(iou_grad="lower"), ValueError, "iou_grad must be one of"),
    (dict(iou_pairs="triangle"), ValueError, "iou_pairs must be one of"),
    (dict(iou_normalization="positives"), ValueError, "iou_normalization must be one of"),
    (dict(weights=(1, 1, 1)), ValueError, "weights must be 4 non-negative numbers"),
    (dict(weights=(1, -1, 1, 1)), ValueError, "weights must be 4 non-negative numbers"),
    (dict(ious=None), ValueError, "ious is required"),
    (dict(regression=np.nan), ValueError, "regression contains 1 NaN"),
])
def test_bad_input_is_rejected_with_a_clear_message(kwargs, exc, match):
    args = dict(GOOD, **kwargs)
    with pytest.raises(exc, match=match):
        R.rankdet_loss(**args)


def test_bad_input_of_single_losses():
    with pytest.raises(ValueError, match="ious must have shape"):
        R.iou_guided_ranking_loss(np.zeros((2, 1)), [0, 0], [[0.1, 0.2]])
    with pytest.raises(ValueError, match=r"logits must have shape \[N\] or \[N, C\]"):
        R.global_ranking_loss(np.zeros((2, 2, 2)), [0, -1])
    with pytest.raises(ValueError, match="objectness must be one of"):
        R.global_ranking_loss(np.zeros(2), [0, -1], objectness="none")
    with pytest.raises(ValueError, match="z has shape"):
        R.reweighted_pair_loss([0.0, 1.0], [0.5], z=np.ones((1, 1)))
    with pytest.raises(ValueError, match="needs probabilities"):
        RM.group_negatives([2.0, 0.5], 3, "unit")
    with pytest.raises(FloatingPointError, match="overflowed"):
        R.global_ranking_loss(np.array([-400.0, 400.0]), [0, -1], score_space="logit", mining="all")
    # weights[2] = 0 allows ious=None
    r = R.rankdet_loss(**dict(GOOD, ious=None), weights=(1, 1, 0, 1))
    assert r.terms["iou"] == 0.0


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_options_are_checked_before_the_empty_return(backend):
    # no background sample: the loss is 0, but a bad option is still an error, on every backend
    with pytest.raises(ValueError, match="mining"):
        R.global_ranking_loss(np.array([1.0, 2.0]), np.array([0, 0]), mining="best", backend=backend)
    with pytest.raises(TypeError, match="num_groups"):
        R.class_specific_ranking_loss(np.zeros((2, 2)), np.array([0, 0]), num_groups="3", backend=backend)


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_overflow_is_a_clear_error_without_warnings(backend):
    # logit space, exponential L_rank: the pair term e^(800 - (-800)) is beyond float64
    with pytest.raises(FloatingPointError, match="overflowed float64"):
        R.global_ranking_loss(np.array([800.0, -800.0]), np.array([-1, 0]), score_space="logit",
                              mining="all", backend=backend)
    # a bounded rank function gives a finite answer at |logit| = 1e308: sigmoid(1e308 - (-1e308)) = 1, z = 1
    r = R.global_ranking_loss(np.array([1e308, -1e308]), np.array([-1, 0]), score_space="logit",
                              rank_function="sigmoid", mining="all", backend=backend)
    assert r.loss == 1.0 and np.all(np.isfinite(r.grad))

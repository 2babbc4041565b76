"""DR Loss reference (rankspec.refimpl.losses.dr, rankspec.refimpl.reference.dr): Props. 1-2, Eqs. 5-9, Sec. 4.3 variants."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.optimize import minimize
from scipy.special import expit

from rankspec.refimpl import dr_loss as exported_dr_loss
from rankspec.refimpl.conventions import all_conventions, by_keyword
from rankspec.refimpl.losses.dr import dr_loss, hard_negative_prior, parse_dr_input
from rankspec.refimpl.reference.dr import (DEFAULT_LAMBDA_NEG, DEFAULT_LAMBDA_POS, dr_expectation, dr_lambda,
                                           hinge_surrogate, kl_distribution, kl_objective, logistic_surrogate,
                                           quadratic_surrogate, surrogate_loss, worst_case_expectation)
from rankspec.refimpl.registry import lookup

SETTINGS = settings(max_examples=30, deadline=None)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def random_image(rng, n=None, C=None, ignore=True):
    """[n, C] logits and class-id labels with at least one positive and one negative entry."""
    n = n or int(rng.integers(2, 7))
    C = C or int(rng.integers(1, 4))
    logits = rng.normal(0, 2, size=(n, C))
    labels = rng.integers(-1 if ignore else 0, C + 1, size=n)
    labels[0] = 1
    return logits, labels


def fd_grad(f, x, h=1e-6):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (f(xp) - f(xm)) / (2 * h)
    return g


OPTIONS = [
    dict(),
    dict(pairing="negonly"),
    dict(pairing="all"),
    dict(pairing="worst"),
    dict(surrogate="quadratic", rho=0.2),
    dict(surrogate="hinge", pairing="all"),
    dict(score_transform="identity", lambda_pos=0.3, lambda_neg=0.05),
    dict(reduction="mean", tau=1.0, gamma=0.0),
]


# ---------------------------------------------------------------------------
# registry and conventions
# ---------------------------------------------------------------------------

def test_registered_with_paper_equations():
    assert exported_dr_loss is dr_loss
    assert ("DR", "Eq. 9") in lookup(dr_loss).refs
    assert ("DR", "Prop. 1") in lookup(kl_distribution).refs
    assert ("DR", "Prop. 2") in lookup(kl_distribution).refs
    assert ("DR", "Eq. 6") in lookup(dr_expectation).refs
    assert ("DR", "Eq. 7") in lookup(quadratic_surrogate).refs
    assert ("DR", "Eq. 8") in lookup(logistic_surrogate).refs
    assert ("DR", "Eq. 5") in lookup(worst_case_expectation).refs
    assert all(lookup(f).family == "dr" for f in (dr_loss, hard_negative_prior, hinge_surrogate, kl_objective))


def test_conventions_registered():
    keywords = {c.keyword for c in all_conventions() if "dr_loss" in c.applies_to}
    assert {"score_transform", "pairing", "surrogate", "tau", "empty_positive_score", "empty_negative_score",
            "image_ids", "reduction", "prior_neg"} <= keywords
    assert by_keyword("empty_positive_score", "dr_loss").default == 1.0
    assert by_keyword("pairing", "dr_loss").default == "dr"


def test_default_parameters_match_paper_sec_4():
    # lambda_+ = 1 / log(h_+), h_+ = e  ->  1 ;  lambda_- = 0.1 / log(h_-), h_- = 3.5  ->  0.0798...
    assert DEFAULT_LAMBDA_POS == pytest.approx(1.0, abs=1e-15)
    assert DEFAULT_LAMBDA_NEG == pytest.approx(0.1 / 1.252762968495368, rel=1e-15)
    assert dr_lambda(math.e) == pytest.approx(1.0)
    assert dr_lambda(3.5, 0.1) == pytest.approx(DEFAULT_LAMBDA_NEG)
    # the default call uses gamma 0.5, L 6, tau 4: at logits 0 every score is 0.5, so
    # P-_hat = P+_hat = 0.5, z = gamma = 0.5 and loss = 4 log(1 + e^{6 * 0.5}) / 6 = 2.0324
    # (the value the authors quote for a freshly initialised RetinaNet)
    r = dr_loss(np.zeros((5, 3)), np.array([1, 0, 2, 0, 0]))
    assert r.loss == pytest.approx(4 * math.log(1 + math.exp(3)) / 6, rel=1e-14)
    assert r.loss == pytest.approx(2.0324, abs=1e-4)


# ---------------------------------------------------------------------------
# Props. 1-2: the closed form solves the KL-regularised problem
# ---------------------------------------------------------------------------

def _numerical_optimum(p, lam, side, o):
    """Maximise sum_j q_j s p_j - lam KL(q || o) over the simplex restricted to supp(o) with SLSQP."""
    support = np.flatnonzero(o > 0)
    s = 1.0 if side == "neg" else -1.0
    on = o[support] / o[support].sum()

    def neg_obj(qs):
        qs = np.clip(qs, 1e-300, None)
        return -(np.sum(qs * s * p[support]) - lam * np.sum(qs * np.log(qs / on)))

    def neg_grad(qs):
        qs = np.clip(qs, 1e-300, None)
        return -(s * p[support] - lam * (np.log(qs / on) + 1.0))

    res = minimize(neg_obj, on.copy(), jac=neg_grad, method="SLSQP", bounds=[(1e-12, 1.0)] * support.size,
                   constraints=[{"type": "eq", "fun": lambda q: q.sum() - 1.0, "jac": lambda q: np.ones_like(q)}],
                   options={"ftol": 1e-15, "maxiter": 500})
    q = np.zeros_like(p)
    q[support] = res.x / res.x.sum()
    return q


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), side=st.sampled_from(["neg", "pos"]), lam=st.floats(0.1, 2.0),
       prior_kind=st.sampled_from(["uniform", "random", "hard"]))
def test_closed_form_is_numerical_optimum(seed, side, lam, prior_kind):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 7))
    p = rng.uniform(0, 1, n)
    if prior_kind == "uniform":
        prior = None
        o = np.full(n, 1.0 / n)
    elif prior_kind == "random":
        o = rng.uniform(0.1, 1.0, n)
        prior = o
    else:  # hard negative mining: o_j in {0, 1/n_hat}
        o = np.zeros(n)
        o[rng.choice(n, size=int(rng.integers(1, n + 1)), replace=False)] = 1.0
        prior = o
    q = kl_distribution(p, lam, side, prior)
    q_num = _numerical_optimum(p, lam, side, o)
    np.testing.assert_allclose(q, q_num, atol=2e-5)
    # the closed form is at least as good as the numerical optimum ...
    assert kl_objective(q, p, lam, side, prior) >= kl_objective(q_num, p, lam, side, prior) - 1e-10
    # ... and attains the log-partition value lam * log sum_j o_j exp(s p_j / lam) (duality)
    s = 1.0 if side == "neg" else -1.0
    on = o / o.sum()
    support = on > 0
    value = lam * math.log(np.sum(on[support] * np.exp(s * p[support] / lam)))
    assert kl_objective(q, p, lam, side, prior) == pytest.approx(value, rel=1e-12, abs=1e-12)
    assert np.all(q[o == 0] == 0)


def test_closed_form_hand_computed():
    # Prop. 1 with p = [0.2, 0.4], lambda = 0.2 / ln 3: exp(p/lambda) are 3^1 and 3^2, so q = [3, 9] / 12
    q = kl_distribution([0.2, 0.4], 0.2 / math.log(3), "neg")
    np.testing.assert_allclose(q, [0.25, 0.75], rtol=1e-14)
    # Prop. 2 with p = [0.6, 0.9], lambda = 0.3 / ln 2: exp(-p/lambda) = 2^-2, 2^-3, so q = [2/3, 1/3]
    q = kl_distribution([0.6, 0.9], 0.3 / math.log(2), "pos")
    np.testing.assert_allclose(q, [2 / 3, 1 / 3], rtol=1e-14)
    # a prior o = [1, 3] (any scale) multiplies the weights: [1 * 1, 3 * 3] / 10
    q = kl_distribution([0.2, 0.4], 0.2 / math.log(3), "neg", prior=[2.0, 6.0])
    np.testing.assert_allclose(q, [0.1, 0.9], rtol=1e-14)


def test_expectation_hand_computed_and_gradient():
    lam = 0.2 / math.log(3)
    e = dr_expectation([0.2, 0.4], lam, "neg")
    # P-_hat = 0.25 * 0.2 + 0.75 * 0.4 = 0.35
    assert e.value == pytest.approx(0.35, rel=1e-14)
    # dP/dp_k = q_k (1 + (p_k - P) / lambda) = 0.25 (1 - 0.15/lam), 0.75 (1 + 0.05/lam)
    np.testing.assert_allclose(e.grad, [0.25 * (1 - 0.15 / lam), 0.75 * (1 + 0.05 / lam)], rtol=1e-13)
    lam_p = 0.3 / math.log(2)
    e = dr_expectation([0.6, 0.9], lam_p, "pos")
    # P+_hat = 2/3 * 0.6 + 1/3 * 0.9 = 0.7 ; dP/dp_k = q_k (1 - (p_k - P) / lambda)
    assert e.value == pytest.approx(0.7, rel=1e-14)
    np.testing.assert_allclose(e.grad, [2 / 3 * (1 + 0.1 / lam_p), 1 / 3 * (1 - 0.2 / lam_p)], rtol=1e-13)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), side=st.sampled_from(["neg", "pos"]), lam=st.floats(0.01, 5.0),
       shift=st.floats(-3, 3))
def test_expectation_properties(seed, side, lam, shift):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 1, int(rng.integers(1, 9)))
    o = rng.uniform(0.0, 1.0, p.size) + 1e-3
    e = dr_expectation(p, lam, side, o)
    # between the o-mean and the worst case
    mean = np.sum(o * p) / o.sum()
    if side == "neg":
        assert mean - 1e-12 <= e.value <= p.max() + 1e-12
    else:
        assert p.min() - 1e-12 <= e.value <= mean + 1e-12
    # shift equivariance: P(p + c) = P(p) + c, hence the gradient sums to 1
    assert dr_expectation(p + shift, lam, side, o).value == pytest.approx(e.value + shift, abs=1e-12)
    assert e.grad.sum() == pytest.approx(1.0, abs=1e-10)
    np.testing.assert_allclose(e.grad, fd_grad(lambda v: dr_expectation(v, lam, side, o).value, p), atol=1e-6)
    # the prior's scale does not matter
    assert dr_expectation(p, lam, side, 7.5 * o).value == pytest.approx(e.value, rel=1e-13)


# ---------------------------------------------------------------------------
# lambda -> 0: the worst case (Eq. 5); lambda -> inf: the original distribution
# ---------------------------------------------------------------------------

@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), side=st.sampled_from(["neg", "pos"]))
def test_small_lambda_approaches_worst_case(seed, side):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 10))
    p = rng.uniform(0, 1, n)
    worst = p.max() if side == "neg" else p.min()
    assert worst_case_expectation(p, side).value == worst
    gaps = []
    for lam in (1.0, 0.3, 0.1, 0.03, 0.01, 1e-3, 1e-4):
        value = dr_expectation(p, lam, side).value
        gap = abs(worst - value)
        # value >= optimum of Prop. 1 >= worst + lam log(1/n)   =>   gap <= lam log n
        assert gap <= lam * math.log(n) + 1e-12
        gaps.append(gap)
    # d P / d(1/lambda) = +-Var_q(p), so the gap shrinks monotonically as lambda decreases
    assert all(b <= a + 1e-15 for a, b in zip(gaps, gaps[1:]))
    # and the distribution approaches the worst case's one-hot (when the runner-up is not nearly tied)
    runner_up_gap = np.sort(np.abs(p - worst))[1] if n > 1 else 1.0
    if runner_up_gap > 1e-3:
        np.testing.assert_allclose(dr_expectation(p, 1e-5, side).q, worst_case_expectation(p, side).q, atol=1e-6)


def test_large_lambda_approaches_original_distribution():
    p = np.array([0.1, 0.5, 0.7, 0.2])
    o = np.array([1.0, 2.0, 0.5, 0.5])
    for side in ("neg", "pos"):
        assert dr_expectation(p, 1e7, side, o).value == pytest.approx(np.sum(o * p) / o.sum(), abs=1e-7)


def test_dr_loss_small_lambda_equals_worst_pairing():
    rng = np.random.default_rng(3)
    logits, labels = random_image(rng, n=6, C=3, ignore=False)
    worst = dr_loss(logits, labels, pairing="worst")
    near = dr_loss(logits, labels, lambda_pos=1e-6, lambda_neg=1e-6)
    assert near.loss == pytest.approx(worst.loss, rel=1e-5)
    np.testing.assert_allclose(near.grad, worst.grad, atol=1e-5)


def test_worst_case_ties_split_gradient():
    # two tied maximal negatives share the subgradient: q = [1/2, 0, 1/2]
    e = worst_case_expectation([0.7, 0.1, 0.7], "neg")
    np.testing.assert_allclose(e.q, [0.5, 0.0, 0.5])
    # the prior restricts the support: with o = [0, 1, 1] the max is 0.7 at index 2 only
    e = worst_case_expectation([0.9, 0.1, 0.7], "neg", prior=[0, 1, 1])
    assert e.value == 0.7
    np.testing.assert_allclose(e.q, [0, 0, 1])


# ---------------------------------------------------------------------------
# Eqs. 7-8: surrogates of the hinge
# ---------------------------------------------------------------------------

def test_surrogates_hand_computed():
    z = np.array([-1.0, -0.25, 0.0, 0.25, 0.5, 2.0])
    v, d = hinge_surrogate(z)
    np.testing.assert_array_equal(v, [0, 0, 0, 0.25, 0.5, 2.0])
    np.testing.assert_array_equal(d, [0, 0, 0, 1, 1, 1])
    # rho = 0.5: (z + 0.5)^2 / 2 inside (-0.5, 0.5): z=-0.25 -> 0.03125, 0 -> 0.125, 0.25 -> 0.28125
    v, d = quadratic_surrogate(z, rho=0.5)
    np.testing.assert_allclose(v, [0, 0.03125, 0.125, 0.28125, 0.5, 2.0], rtol=1e-15)
    np.testing.assert_allclose(d, [0, 0.25, 0.5, 0.75, 1.0, 1.0], rtol=1e-15)
    # L = 6: log(1 + e^{6z}) / 6 ; at z = 0: log 2 / 6
    v, d = logistic_surrogate(z, L=6)
    np.testing.assert_allclose(v, np.log1p(np.exp(6 * z)) / 6, rtol=1e-14)
    assert v[2] == pytest.approx(math.log(2) / 6)
    np.testing.assert_allclose(d, 1 / (1 + np.exp(-6 * z)), rtol=1e-14)
    # no overflow far out
    v, d = logistic_surrogate(np.array([1000.0, -1000.0]), L=6)
    np.testing.assert_allclose(v, [1000.0, 0.0])
    np.testing.assert_allclose(d, [1.0, 0.0])


@SETTINGS
@given(z=st.lists(st.floats(-5, 5), min_size=1, max_size=20), L=st.floats(0.5, 1e4), rho=st.floats(1e-3, 2))
def test_smooth_surrogates_approach_hinge(z, L, rho):
    z = np.array(z)
    hinge, _ = hinge_surrogate(z)
    lo, _ = logistic_surrogate(z, L)
    # 0 <= (1/L) log(1 + e^{Lz}) - [z]_+ = (1/L) log(1 + e^{-L|z|}) <= log(2) / L
    gap = lo - hinge
    assert np.all(gap >= -1e-12) and np.all(gap <= math.log(2) / L + 1e-12)
    qu, _ = quadratic_surrogate(z, rho)
    # 0 <= quadratic - hinge <= rho / 4 (attained at z = 0)
    assert np.all(qu - hinge >= -1e-12) and np.all(qu - hinge <= rho / 4 + 1e-12)


def test_logistic_converges_to_hinge_as_L_grows():
    z = np.linspace(-2, 2, 401)
    hinge, _ = hinge_surrogate(z)
    sup = [np.max(logistic_surrogate(z, L)[0] - hinge) for L in (1, 6, 60, 600, 6000)]
    np.testing.assert_allclose(sup, [math.log(2) / L for L in (1, 6, 60, 600, 6000)], rtol=1e-12)
    # the whole DR loss follows: |DR_logistic(L) - DR_hinge| <= tau log(2) / L per image
    rng = np.random.default_rng(0)
    logits, labels = random_image(rng, n=8, C=3)
    h = dr_loss(logits, labels, surrogate="hinge").loss
    for L in (6, 60, 600, 6000):
        assert abs(dr_loss(logits, labels, L=L).loss - h) <= 4 * math.log(2) / L + 1e-12


@pytest.mark.parametrize("kind", ["logistic", "quadratic", "hinge"])
def test_surrogate_derivatives(kind):
    z = np.array([-1.3, -0.31, 0.07, 0.2, 0.77, 1.6])
    v, d = surrogate_loss(z, kind, L=3.0, rho=0.4)
    np.testing.assert_allclose(d, fd_grad(lambda t: surrogate_loss(t, kind, L=3.0, rho=0.4)[0].sum(), z),
                               atol=1e-7)


# ---------------------------------------------------------------------------
# DR Eq. 9 and the Sec. 4.3 variants: hand-computed tiny cases
# ---------------------------------------------------------------------------

# one image, per-entry layout, identity scores: negatives 0.2, 0.4 ; positives 0.6, 0.9
TINY_P = np.array([0.2, 0.4, 0.6, 0.9])
TINY_Y = np.array([0, 0, 1, 1])
TINY = dict(score_transform="identity", lambda_neg=0.2 / math.log(3), lambda_pos=0.3 / math.log(2), tau=1.0)


def test_dr_tiny_hinge_quadratic_logistic():
    # P-_hat = 0.35, P+_hat = 0.7 (test_expectation_hand_computed), z = 0.35 - 0.7 + 0.5 = 0.15
    r = dr_loss(TINY_P, TINY_Y, surrogate="hinge", **TINY)
    assert r.loss == pytest.approx(0.15, rel=1e-13)
    assert r.terms["p_neg"][0] == pytest.approx(0.35) and r.terms["p_pos"][0] == pytest.approx(0.7)
    # hinge' = 1: d/dp_neg = dP-/dp, d/dp_pos = -dP+/dp
    lam_n, lam_p = TINY["lambda_neg"], TINY["lambda_pos"]
    np.testing.assert_allclose(r.grad, [0.25 * (1 - 0.15 / lam_n), 0.75 * (1 + 0.05 / lam_n),
                                        -2 / 3 * (1 + 0.1 / lam_p), -1 / 3 * (1 - 0.2 / lam_p)], rtol=1e-12)
    # quadratic, rho = 0.5: (0.15 + 0.5)^2 / (4 * 0.5) = 0.21125; derivative (0.15 + 0.5) / 1 = 0.65
    q = dr_loss(TINY_P, TINY_Y, surrogate="quadratic", rho=0.5, **TINY)
    assert q.loss == pytest.approx(0.21125, rel=1e-13)
    np.testing.assert_allclose(q.grad, 0.65 * r.grad, rtol=1e-12)
    # logistic, L = 6, tau = 4: 4 log(1 + e^{0.9}) / 6 ; derivative 4 sigma(0.9)
    lg = dr_loss(TINY_P, TINY_Y, **{**TINY, "tau": 4.0})
    assert lg.loss == pytest.approx(4 * math.log(1 + math.exp(0.9)) / 6, rel=1e-13)
    np.testing.assert_allclose(lg.grad, 4 * expit(0.9) * r.grad, rtol=1e-12)


def test_negonly_all_worst_tiny():
    # NegOnly: (1/2) [ [0.35 - 0.6 + 0.5]_+ + [0.35 - 0.9 + 0.5]_+ ] = (0.25 + 0) / 2 = 0.125
    r = dr_loss(TINY_P, TINY_Y, surrogate="hinge", pairing="negonly", **TINY)
    assert r.loss == pytest.approx(0.125, rel=1e-13)
    # gradient: negatives 1/2 * dP-/dp (only the first positive is active); positives -1/2, 0
    lam_n = TINY["lambda_neg"]
    np.testing.assert_allclose(r.grad, [0.5 * 0.25 * (1 - 0.15 / lam_n), 0.5 * 0.75 * (1 + 0.05 / lam_n),
                                        -0.5, 0.0], rtol=1e-12)
    # All (Eq. 4): z = 0.2-0.6+0.5 = 0.1, 0.4-0.6+0.5 = 0.3, 0.2-0.9+0.5 = -0.2, 0.4-0.9+0.5 = 0 -> mean 0.1
    r = dr_loss(TINY_P, TINY_Y, surrogate="hinge", pairing="all", **TINY)
    assert r.loss == pytest.approx(0.1, rel=1e-13)
    # active pairs (n0, p0), (n1, p0): each weight 1/4 -> grads n0 +1/4, n1 +1/4, p0 -2/4, p1 0
    np.testing.assert_allclose(r.grad, [0.25, 0.25, -0.5, 0.0], atol=1e-15)
    # Worst (Eq. 5): [max(0.2, 0.4) - min(0.6, 0.9) + 0.5]_+ = 0.3, gradient on those two entries
    r = dr_loss(TINY_P, TINY_Y, surrogate="hinge", pairing="worst", **TINY)
    assert r.loss == pytest.approx(0.3, rel=1e-13)
    np.testing.assert_allclose(r.grad, [0, 1, -1, 0], atol=1e-15)


def test_class_id_layout_tiny():
    # 3 candidates x 2 classes; labels: row 0 is class 2, row 1 background, row 2 ignored
    logits = np.array([[0.0, math.log(3.0)], [0.0, 0.0], [5.0, -5.0]])
    labels = np.array([2, 0, -1])
    # positives: entry (0, 1) with p = sigmoid(log 3) = 0.75 -> P+_hat = 0.75
    # negatives: (0, 0), (1, 0), (1, 1), all p = 0.5 -> P-_hat = 0.5
    # z = 0.5 - 0.75 + 0.5 = 0.25 ; hinge, tau = 1 -> 0.25
    r = dr_loss(logits, labels, surrogate="hinge", tau=1.0)
    assert r.loss == pytest.approx(0.25, rel=1e-13)
    # equal scores: dP-/dp = 1/3 each; sigmoid' = 0.25 at p = 0.5 and 0.1875 at p = 0.75
    np.testing.assert_allclose(r.grad, [[0.25 / 3, -0.1875], [0.25 / 3, 0.25 / 3], [0, 0]], rtol=1e-13)
    # the per-entry layout with the same sides gives the same result
    entries = np.array([[0, 1], [0, 0], [-1, -1]])
    r2 = dr_loss(logits, entries, surrogate="hinge", tau=1.0)
    assert r2.loss == r.loss
    np.testing.assert_array_equal(r2.grad, r.grad)


def test_no_positives_uses_one_and_no_negatives_uses_zero():
    # no positives: P+_hat = 1 (DR Sec. 3.2). Logits 0 -> P-_hat = 0.5, z = 0.5 - 1 + 0.5 = 0,
    # loss = 4 log(2) / 6 ; gradient on negatives only: 4 * sigma(0) * (1/n) * 0.25
    r = dr_loss(np.zeros((2, 2)), np.array([0, 0]))
    assert r.loss == pytest.approx(4 * math.log(2) / 6, rel=1e-14)
    np.testing.assert_allclose(r.grad, np.full((2, 2), 4 * 0.5 * 0.25 * 0.25), rtol=1e-14)
    assert r.terms["p_pos"][0] == 1.0
    # no negatives (every entry positive): P-_hat = 0, P+_hat = 0.5, z = 0 -> same value
    r = dr_loss(np.zeros((2, 1)), np.array([1, 1]))
    assert r.loss == pytest.approx(4 * math.log(2) / 6, rel=1e-14)
    np.testing.assert_allclose(r.grad, np.full((2, 1), -4 * 0.5 * 0.5 * 0.25), rtol=1e-14)
    assert r.terms["p_neg"][0] == 0.0
    # None drops such images: loss 0, zero gradient, NaN for the empty side
    for pairing in ("dr", "negonly", "all", "worst"):
        r = dr_loss(np.zeros((2, 2)), np.array([0, 0]), empty_positive_score=None, pairing=pairing)
        assert r.loss == 0.0 and not np.any(r.grad)
        assert np.isnan(r.terms["p_pos"][0]) and r.terms["p_neg"][0] == 0.5
    # every candidate ignored: both sides empty, loss l(0 - 1 + 0.5) = 4 log(1 + e^{-3}) / 6
    r = dr_loss(np.ones((2, 2)), np.array([-1, -1]))
    assert r.loss == pytest.approx(4 * math.log1p(math.exp(-3)) / 6, rel=1e-14)
    assert not np.any(r.grad)


def test_empty_side_rule_consistent_across_pairings():
    # without positives every pairing ranks the negative summary against the constant 1
    logits = np.array([[0.3, -1.0], [2.0, 0.1]])
    labels = np.array([0, 0])
    p = expit(logits).ravel()
    for pairing, pn in (("worst", p.max()), ("all", None)):
        r = dr_loss(logits, labels, pairing=pairing, surrogate="hinge", tau=1.0)
        if pn is not None:
            assert r.loss == pytest.approx(max(pn - 1 + 0.5, 0.0))
        else:
            assert r.loss == pytest.approx(np.mean(np.maximum(p - 1 + 0.5, 0.0)))
    a = dr_loss(logits, labels)
    b = dr_loss(logits, labels, pairing="negonly")
    assert a.loss == pytest.approx(b.loss, rel=1e-14)


def test_hard_negative_prior_tiny():
    logits = np.array([[0.1, 2.0], [0.5, -1.0], [3.0, 0.0]])
    labels = np.array([1, 0, -1])
    # negatives: (0,1)=2.0, (1,0)=0.5, (1,1)=-1.0 ; the top 2 get 1/2
    o = hard_negative_prior(logits, labels, num_negatives=2)
    np.testing.assert_allclose(o, [[0, 0.5], [0.5, 0], [0, 0]])
    # ratio 3 with one positive: ceil(3 * 1) = 3 negatives (all of them) -> 1/3
    o = hard_negative_prior(logits, labels, ratio=3)
    np.testing.assert_allclose(o, [[0, 1 / 3], [1 / 3, 1 / 3], [0, 0]])
    # per image
    o = hard_negative_prior(logits, labels, num_negatives=1, image_ids=[0, 1, 1])
    np.testing.assert_allclose(o, [[0, 1.0], [1.0, 0], [0, 0]])


# ---------------------------------------------------------------------------
# gradients: finite differences
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("opts", OPTIONS)
def test_gradient_matches_finite_differences(opts):
    rng = np.random.default_rng(11)
    logits = rng.normal(0, 1.5, size=(7, 3))
    labels = np.array([1, 0, 3, -1, 2, 0, 1])
    image_ids = np.array([4, 4, 4, 9, 9, 1, 1])
    prior_neg = rng.uniform(0.2, 1.0, size=logits.shape)
    r = dr_loss(logits, labels, image_ids=image_ids, prior_neg=prior_neg, **opts)
    fd = fd_grad(lambda v: dr_loss(v, labels, image_ids=image_ids, prior_neg=prior_neg, **opts).loss, logits)
    np.testing.assert_allclose(r.grad, fd, atol=2e-7, rtol=1e-5)
    assert np.all(r.grad[3] == 0)  # ignored row


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), opts=st.sampled_from(OPTIONS))
def test_gradient_fd_random(seed, opts):
    rng = np.random.default_rng(seed)
    logits, labels = random_image(rng)
    r = dr_loss(logits, labels, **opts)
    fd = fd_grad(lambda v: dr_loss(v, labels, **opts).loss, logits)
    np.testing.assert_allclose(r.grad, fd, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------------
# structural properties
# ---------------------------------------------------------------------------

@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), opts=st.sampled_from(OPTIONS))
def test_images_are_independent_and_permutation_invariant(seed, opts):
    rng = np.random.default_rng(seed)
    parts = [random_image(rng) for _ in range(3)]
    C = 3
    logits = np.concatenate([np.pad(l, ((0, 0), (0, C - l.shape[1])), constant_values=-1.0) for l, _ in parts])
    labels = np.concatenate([y for _, y in parts])
    image_ids = np.concatenate([np.full(len(y), 10 * k) for k, (_, y) in enumerate(parts)])
    r = dr_loss(logits, labels, image_ids=image_ids, **opts)
    singles = [dr_loss(logits[image_ids == 10 * k], labels[image_ids == 10 * k], **opts) for k in range(3)]
    total = sum(s.loss for s in singles) / (3 if opts.get("reduction") == "mean" else 1)
    assert r.loss == pytest.approx(total, rel=1e-12)
    scale = 1 / 3 if opts.get("reduction") == "mean" else 1
    np.testing.assert_allclose(r.grad, np.concatenate([s.grad for s in singles]) * scale, atol=1e-14)
    # per-image losses are reported before the reduction; a single image's mean is its loss
    np.testing.assert_allclose(r.terms["loss_per_image"], [s.loss for s in singles], rtol=1e-12)
    perm = rng.permutation(len(labels))
    rp = dr_loss(logits[perm], labels[perm], image_ids=image_ids[perm], **opts)
    assert rp.loss == pytest.approx(r.loss, rel=1e-12)
    np.testing.assert_allclose(rp.grad, r.grad[perm], atol=1e-14)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1))
def test_loss_sandwich(seed):
    # l convex and non-decreasing, P-_hat in [mean-, max-], P+_hat in [min+, mean+]:
    #   tau l(mean- - mean+ + gamma) <= DR <= worst   and   tau l(mean- - mean+ + gamma) <= All <= worst
    rng = np.random.default_rng(seed)
    logits, labels = random_image(rng, ignore=False)
    dr = dr_loss(logits, labels).loss
    worst = dr_loss(logits, labels, pairing="worst").loss
    allp = dr_loss(logits, labels, pairing="all")
    jensen = 4 * logistic_surrogate(np.array([allp.terms["p_neg"][0] - allp.terms["p_pos"][0] + 0.5]))[0][0]
    assert jensen - 1e-12 <= dr <= worst + 1e-12
    assert jensen - 1e-12 <= allp.loss <= worst + 1e-12


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1))
def test_prior_weight_equals_duplication(seed):
    # o_j = 2 for one negative entry == that entry present twice with o = 1
    rng = np.random.default_rng(seed)
    p = rng.normal(size=6)
    y = np.array([1, 0, 0, 1, 0, 0])
    o = np.ones(6)
    o[2] = 2.0
    a = dr_loss(p, y, prior_neg=o, pairing="dr")
    b = dr_loss(np.append(p, p[2]), np.append(y, 0))
    assert a.loss == pytest.approx(b.loss, rel=1e-12)
    np.testing.assert_allclose(a.grad[2], b.grad[2] + b.grad[6], rtol=1e-10)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 4), pairing=st.sampled_from(["dr", "negonly", "all",
                                                                                       "worst"]))
def test_hard_negative_prior_equals_dropping_negatives(seed, k, pairing):
    rng = np.random.default_rng(seed)
    logits, labels = random_image(rng, n=5, C=2)
    o = hard_negative_prior(logits, labels, num_negatives=k)
    x = parse_dr_input(logits, labels)
    entries = x.side.reshape(logits.shape).copy()
    entries[(entries == 0) & (o == 0)] = -1  # un-mined negatives become ignored entries
    a = dr_loss(logits, labels, prior_neg=o, pairing=pairing)
    b = dr_loss(logits, entries, pairing=pairing)
    assert a.loss == pytest.approx(b.loss, rel=1e-12)
    np.testing.assert_allclose(a.grad, b.grad, atol=1e-14)
    assert np.count_nonzero(o) == min(k, np.count_nonzero(x.side == 0))


def test_entry_layout_any_shape_equals_flat():
    # per-entry labels work for any [n, ...]; rows are candidates, image_ids index rows
    rng = np.random.default_rng(9)
    logits = rng.normal(size=(3, 2, 2))
    labels = rng.integers(-1, 2, size=(3, 2, 2))
    labels[0, 0, 0] = 1
    a = dr_loss(logits, labels, image_ids=[0, 1, 1])
    b = dr_loss(logits.reshape(3, 4), labels.reshape(3, 4), image_ids=[0, 1, 1])
    assert a.loss == b.loss and a.grad.shape == (3, 2, 2)
    np.testing.assert_array_equal(a.grad.reshape(3, 4), b.grad)


def test_ignored_entries_do_not_matter():
    rng = np.random.default_rng(5)
    logits, labels = random_image(rng, n=6, C=3)
    labels[2] = -1
    r = dr_loss(logits, labels)
    logits2 = logits.copy()
    logits2[2] = [9.0, -9.0, 3.0]
    r2 = dr_loss(logits2, labels)
    assert r.loss == r2.loss
    assert not np.any(r.grad[2])


def test_stable_for_extreme_logits():
    logits = np.array([[60.0, -60.0], [-80.0, 35.0]])
    for opts in OPTIONS + [dict(lambda_neg=1e-4, lambda_pos=1e-4)]:
        r = dr_loss(logits, np.array([1, 2]), **opts)
        assert np.isfinite(r.loss) and np.all(np.isfinite(r.grad))


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(logits=np.zeros((2, 2, 2)), labels=np.zeros(2)), ValueError, "labels must have shape"),
    (dict(logits=np.float64(1.0), labels=np.float64(1.0)), ValueError, "logits must be"),
    (dict(logits=np.array([[np.nan, 0.0]]), labels=[0]), ValueError, "logits contains"),
    (dict(logits=np.zeros((0, 2)), labels=np.zeros(0)), ValueError, "logits is empty"),
    (dict(logits=np.zeros((2, 2)), labels=[0, 3]), ValueError, "class-id labels"),
    (dict(logits=np.zeros((2, 2)), labels=[0, 0.5]), ValueError, "labels must contain integers"),
    (dict(logits=np.zeros((2, 2)), labels=[[0, 2], [0, 0]]), ValueError, "per-entry labels"),
    (dict(logits=np.zeros((2, 2)), labels=[0, 0, 0]), ValueError, "labels must have shape"),
    (dict(logits=np.zeros(3), labels=[0, 1]), ValueError, "labels must have shape"),
    (dict(logits=np.zeros((2, 2)), labels=["a", "b"]), TypeError, "labels must have a real numeric"),
    (dict(logits=np.zeros((2, 2)), labels=[0, 1], image_ids=[0]), ValueError, "image_ids must have shape"),
    (dict(logits=np.zeros((2, 2)), labels=[0, 1], image_ids=[0, -1]), ValueError, "image_ids must be >= 0"),
    (dict(logits=np.zeros((2, 2)), labels=[0, 1], prior_neg=np.zeros(4)), ValueError, "prior_neg must have"),
    (dict(logits=np.zeros((2, 2)), labels=[0, 1], prior_pos=-np.ones((2, 2))), ValueError, "prior_pos must be non"),
    (dict(logits=np.zeros((2, 2)), labels=[0, 1], lambda_neg=0.0), ValueError, "lambda_neg must be"),
    (dict(logits=np.zeros((2, 2)), labels=[0, 1], lambda_pos=-1.0), ValueError, "lambda_pos must be"),
    (dict(logits=np.zeros((2, 2)), labels=[0, 1], gamma=-0.1), ValueError, "gamma must be"),
    (dict(logits=np.zeros((2, 2)), labels=[0, 1], L=0), ValueError, "L must be"),
    (dict(logits=np.zeros((2, 2)), labels=[0, 1], rho=float("inf")), ValueError, "rho must be"),
    (dict(logits=np.zeros((2, 2)), labels=[0, 1], tau=True), TypeError, "tau must be a real"),
    (dict(logits=np.zeros((2, 2)), labels=[0, 1], pairing="pairs"), ValueError, "pairing must be one of"),
    (dict(logits=np.zeros((2, 2)), labels=[0, 1], surrogate="huber"), ValueError, "surrogate must be one of"),
    (dict(logits=np.zeros((2, 2)), labels=[0, 1], score_transform="softmax"), ValueError, "score_transform"),
    (dict(logits=np.zeros((2, 2)), labels=[0, 1], reduction="none"), ValueError, "reduction must be one of"),
    (dict(logits=np.zeros((2, 2)), labels=[0, 1], empty_positive_score=float("nan")), ValueError,
     "empty_positive_score must be finite"),
])
def test_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        dr_loss(**kwargs)


def test_bad_input_primitives():
    with pytest.raises(ValueError, match="lam must be"):
        kl_distribution([0.1, 0.2], 0.0)
    with pytest.raises(ValueError, match="side must be one of"):
        dr_expectation([0.1, 0.2], 1.0, side="both")
    with pytest.raises(ValueError, match="prior must have a positive sum"):
        kl_distribution([0.1, 0.2], 1.0, prior=[0.0, 0.0])
    with pytest.raises(ValueError, match="prior must be non-negative"):
        worst_case_expectation([0.1, 0.2], prior=[1.0, -1.0])
    with pytest.raises(ValueError, match="scores must be 1-D"):
        dr_expectation(np.zeros((2, 2)), 1.0)
    with pytest.raises(ValueError, match="q must be a distribution"):
        kl_objective([0.5, 0.6], [0.1, 0.2], 1.0)
    with pytest.raises(ValueError, match="h must be > 1"):
        dr_lambda(1.0)
    with pytest.raises(ValueError, match="exactly one of num_negatives and ratio"):
        hard_negative_prior(np.zeros((2, 2)), [0, 1])
    with pytest.raises(ValueError, match="num_negatives must be an integer"):
        hard_negative_prior(np.zeros((2, 2)), [0, 1], num_negatives=1.5)
    with pytest.raises(ValueError, match="z contains"):
        hinge_surrogate([np.inf])

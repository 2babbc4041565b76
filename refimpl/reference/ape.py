"""APE family: the plain float64 math (no validation, no dispatch, no fast paths).

Xu, Deng, Li, "Revisiting AP Loss for Dense Object Detection: Adaptive Ranking
Pair Selection" (CVPR 2022, key ``APE``).  Every function here takes already
validated arrays (flat float64 logits, labels 1 / 0 / -1, IoUs) and checked
options; the public functions, their validator, records and conventions are in
:mod:`rankspec.refimpl.losses.ape`; the ARPS cluster split (APE Sec. 6) is in
:mod:`rankspec.refimpl.reference.arps`.  This module never imports
:mod:`rankspec.refimpl.fast`.

Notation: positive u, sample v, x_uv = s_v - s_u; a pair is *valid* iff
x_uv > -t (t the pair threshold; for H: H(x) > 0).  Per positive u:

    A_u   = N                                  (APE Eq. 8,   adaptive=False)
    A_u   = {v in P: IoU_v < IoU_u} u N        (APE Alg. 1,  adaptive=True)
    BC_u  = rank+(u) + rank-(u)  or  |A_u valid|           (APE Eq. 7 / Table 2)
    L(u)  = w_u / BC_u * sum_{v in A_u valid} D(x_uv)      (APE Eqs. 8-10)
    loss  = (1 / Z) sum_u L(u)

Distances D (APE Sec. 5): the smoothed step H (Eq. 6, read with + 0.5), the
sigmoid S(x) = 1 / (1 + exp(-lam x)), and the cross entropy CE(S(x), 0) =
-log(1 - S(x)) (Eq. 9), whose arithmetic follows the ``saturation`` convention:

* ``"exact"``: log(1 + exp(lam x)) (``logaddexp``), derivative lam S(x);
* ``"bce_float64"``: the authors' ``F.binary_cross_entropy`` arithmetic on
  S = 1 / (1 + exp(-lam x)): the log is clamped at -100 (a pair with S == 1
  scores 100) and the backward divides by max(S (1 - S), 1e-12), so the
  derivative is lam S * p / max(p, 1e-12), p = S (1 - S): 0 where S == 1 and
  shrinking where p < 1e-12 (lam x above about 27.6);
* ``"bce_float32"``: the same on S computed as torch computes it for float32
  tensors: x and lam x rounded to float32, S = 1 / (1 + e) with e = exp(-lam x)
  rounded to float32 and the sum and the division done in float32.  S rounds to
  exactly 1 for lam x above about 16.6, where a pair scores 100 with zero
  gradient; below that -log(1 - S) carries the float32 rounding of S.  This is
  the authors' ``APELoss`` as detectors train it (float32 logits).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from .._result import LossResult
from .primitives import IdentityUpdate, step_values

__all__ = ["SATURATION_CHOICES", "sigmoid", "sigmoid_like_torch", "ce_pair_terms", "afp_members",
           "cap_negatives", "valid_pairs", "pairwise_reference"]

#: ``saturation`` keyword: arithmetic of the CE distance (see the module docstring)
SATURATION_CHOICES = ("bce_float32", "bce_float64", "exact")
#: ``F.binary_cross_entropy`` clamps its log at -100 ...
BCE_LOG_CLAMP = -100.0
#: ... and its backward divides by max(S (1 - S), 1e-12)
BCE_EPS = 1e-12


# --------------------------------------------------------------------------------------------
# distances (APE Sec. 5)
# --------------------------------------------------------------------------------------------

#: largest finite float32: the float32 arithmetic of ``saturation="bce_float32"`` clips logits to +-this
FLT32_MAX = float(np.finfo(np.float32).max)


def sigmoid(x: np.ndarray, lam: float) -> np.ndarray:
    """S(x) = 1 / (1 + exp(-lam x)) (APE Sec. 5), float64, never overflows."""
    return expit(lam * x)


def sigmoid_like_torch(s_v: np.ndarray, s_u: float, lam: float, saturation: str) -> np.ndarray:
    """S(s_v - s_u) with the arithmetic of ``saturation`` (module docstring), as float64 values.

    ``"bce_float32"``: d = fl32(s_v - s_u), z = fl32(d * lam), e = fl32(exp(-z)),
    with logits beyond float32's range clipped to +-FLT_MAX first,
    S = fl32(1 / fl32(1 + e)) (torch's float32 sigmoid, with e rounded from the
    float64 exp so the result does not depend on the platform's float32 exp);
    ``"bce_float64"``: 1 / (1 + exp(-lam (s_v - s_u))); ``"exact"``: ``expit``.
    """
    with np.errstate(over="ignore"):
        if saturation == "bce_float32":
            one = np.float32(1.0)
            # logits beyond float32's range saturate at +-FLT_MAX (a float32 tensor cannot hold them;
            # casting them to +-inf would make inf - inf = NaN): d is then +-inf or 0, both defined
            d = (np.clip(s_v, -FLT32_MAX, FLT32_MAX).astype(np.float32)
                 - np.float32(min(max(s_u, -FLT32_MAX), FLT32_MAX)))
            z = d * np.float32(lam)
            e = np.exp(-z.astype(np.float64)).astype(np.float32)
            return (one / (one + e)).astype(np.float64)
        x = np.asarray(s_v, np.float64) - s_u
        if saturation == "bce_float64":
            return 1.0 / (1.0 + np.exp(-lam * x))
        return expit(lam * x)


def ce_pair_terms(s_v: np.ndarray, s_u: float, lam: float, saturation: str):
    """CE(S(x), 0) (APE Eq. 9) per pair and its derivative d/dx, x = s_v - s_u.

    Returns ``(S, value, derivative)``.  ``"exact"``: value log(1 + exp(lam x)),
    derivative lam S(x).  ``"bce_*"``: value -max(log(1 - S), -100), derivative
    lam S p / max(p, 1e-12), p = S (1 - S) (``F.binary_cross_entropy`` then
    sigmoid backward).  O(len(s_v)).
    """
    S = sigmoid_like_torch(s_v, s_u, lam, saturation)
    if saturation == "exact":
        x = np.asarray(s_v, np.float64) - s_u
        return S, np.logaddexp(0.0, lam * x), lam * S
    with np.errstate(divide="ignore"):
        value = -np.maximum(np.log1p(-S), BCE_LOG_CLAMP)
    p = S * (1.0 - S)
    deriv = lam * S * (p / np.maximum(p, BCE_EPS))
    return S, value, deriv


# --------------------------------------------------------------------------------------------
# ranking pairs: ARPS (APE Alg. 1), validity, the top-Q cap
# --------------------------------------------------------------------------------------------

def afp_members(iou_u: float, labels: np.ndarray, ious: np.ndarray, adaptive: bool) -> np.ndarray:
    """Membership of A_u over all samples (APE Alg. 1 lines 3-9), as a bool vector.

    Line 9: every negative (label 0); lines 4-7 (``adaptive``): every positive with a strictly
    lower IoU (an adaptive false positive, aFP), so u itself and IoU ties are never in A_u.
    Ignored samples (label -1) never are.
    """
    member = labels == 0
    if adaptive:
        member = member | ((labels == 1) & (ious < iou_u))
    return member


def valid_pairs(x: np.ndarray, threshold, delta: float, tie_value: float) -> np.ndarray:
    """Pair validity (APE Sec. 5 "Balance constant", the authors' ``s_v > s_u - 4/lam``): x > -t,
    or H(x) > 0 when ``threshold`` is None (the H form)."""
    if threshold is None:
        return step_values(x, delta, tie_value) > 0
    return x > -threshold


def cap_negatives(logits: np.ndarray, labels: np.ndarray, top_q, threshold, delta: float,
                  tie_value: float) -> np.ndarray:
    """The authors' top-Q cap: labels with the dropped negatives set to -1 (ignored).

    The relevant negatives are those valid against the lowest positive logit (no other
    negative can be in a valid pair); when there are more than ``top_q`` of them only the
    ``top_q`` with the largest logits stay (ties at the cut: lower flat index first; the
    authors' ``topk(sorted=False)`` leaves that order unspecified).  ``top_q=None``: no cap.
    Returns ``labels`` itself when nothing is dropped.  O(n log n).
    """
    pos = labels == 1
    if top_q is None or not pos.any():
        return labels
    relevant = np.flatnonzero((labels == 0) & valid_pairs(logits - logits[pos].min(), threshold, delta, tie_value))
    if relevant.size <= top_q:
        return labels
    order = np.lexsort((relevant, -logits[relevant]))  # descending logit, then ascending index
    out = labels.copy()
    out[relevant[order[top_q:]]] = -1.0
    return out


# --------------------------------------------------------------------------------------------
# the pairwise error: APE Eq. 8 (adaptive=False) and APE Eqs. 9-10 (adaptive=True)
# --------------------------------------------------------------------------------------------

def pairwise_reference(x) -> LossResult:
    """Loss and gradient of APE Eq. 8 / Eqs. 9-10 on a validated input ``x``
    (:class:`~rankspec.refimpl.losses.ape.APEInput`).

    For each positive u (a loop, O(n) work each): the valid members of A_u, BC_u
    (APE Eq. 7 / Table 2, constant in backprop), L(u) = w_u sum D / BC_u, and the
    gradient: the error-driven update (APE Eq. 7) for H and S, the analytic
    derivative of the CE form (BC constant) for CE.  Time O(P n), memory O(n).
    """
    s, iou = x.logits, x.ious
    lab = cap_negatives(s, x.labels, x.top_q, x.threshold, x.delta, x.tie_value)
    n = s.size
    pos = np.flatnonzero(lab == 1)
    P = len(pos)
    iou_sets = iou if iou is not None else np.zeros(n)
    terms_zero = {"pairwise": 0.0, "num_positives": float(P), "num_active": 0.0, "num_pairs": 0.0,
                  "per_positive": np.zeros(P), "balance_constant": np.zeros(P)}
    if P == 0:
        return LossResult(0.0, np.zeros(x.shape), terms_zero)  # fixed convention: no positive -> 0

    def rank_distance(sv, su):
        """The distance that counts ranks in BC: H for the H form, S for the S and CE forms."""
        if x.distance == "h":
            return step_values(sv - su, x.delta, x.tie_value)
        if x.distance == "ce":
            return sigmoid_like_torch(sv, su, x.lam, x.saturation)
        return sigmoid(sv - su, x.lam)

    iu = IdentityUpdate(n)  # error-driven update (H, S)
    ce_grad = np.zeros(n)
    per_positive = np.zeros(P)  # w_u * L(u), before normalisation
    bc_all = np.zeros(P)
    active = np.zeros(P, dtype=bool)
    num_pairs = 0
    scale = 1.0 / x.lam if x.scale_by_lambda else 1.0
    for k, u in enumerate(pos):
        diff = s - s[u]  # x_uv = s_v - s_u for every sample v
        valid = valid_pairs(diff, x.threshold, x.delta, x.tie_value) & (lab >= 0)
        in_set = afp_members(iou_sets[u], lab, iou_sets, x.adaptive) & valid  # A_u (or N), valid pairs
        num_pairs += int(in_set.sum())
        active[k] = bool(in_set.any())

        if x.balance == "rank":  # rank+(u) + rank-(u) over every valid sample, aFPs included (APE Eq. 10)
            others = valid.copy()
            others[u] = False  # the u == u term is the self_rank convention
            bc = float(np.sum(rank_distance(s[others], s[u]))) + x.self_value
        else:  # N_neg: the number of valid members of A_u (APE Table 2)
            bc = float(in_set.sum())
        bc_all[k] = bc
        if not in_set.any() or bc <= 0.0:
            continue  # no valid pair: L(u) = 0, no gradient (fixed convention)

        w = float(iou[u]) if x.iou_weight else 1.0  # IoU weight (authors' code, APE Sec. 7.1)
        members = np.flatnonzero(in_set)
        if x.distance == "ce":
            # CE(S(x), 0) (APE Eq. 9), optionally / lambda (authors' code), BC constant
            _, value, deriv = ce_pair_terms(s[members], s[u], x.lam, x.saturation)
            per_positive[k] = w * scale * float(np.sum(value)) / bc
            g = w * scale * deriv / bc
            ce_grad[members] += g
            ce_grad[u] -= float(np.sum(g))
        else:
            xs = diff[members]
            d = step_values(xs, x.delta, x.tie_value) if x.distance == "h" else sigmoid(xs, x.lam)
            total = float(np.sum(d))
            per_positive[k] = w * total / bc  # (FP + aFP) / (TP + FP) for H, rank form (APE Eq. 10)
            if total > 0:
                # error-driven update (APE Eq. 7): g_u = -w sum D / BC, g_v = w D(x_uv) / BC
                pmf = np.zeros(n)
                pmf[members] = d / total
                iu.add(u, per_positive[k], pmf)

    Z = x.normalizer(P, int(active.sum()))
    if Z == 0.0:
        return LossResult(0.0, np.zeros(x.shape), {**terms_zero, "balance_constant": bc_all})
    grad = ce_grad / Z if x.distance == "ce" else iu.gradient(Z)
    loss = float(per_positive.sum() / Z)
    terms = {"pairwise": loss, "num_positives": float(P), "num_active": float(active.sum()),
             "num_pairs": float(num_pairs), "per_positive": per_positive, "balance_constant": bc_all}
    return LossResult(loss, grad.reshape(x.shape), terms)

"""aLRP Loss: the plain float64 math (no validation, no dispatch, no fast paths).

aLRP Loss (Oksuz et al., NeurIPS 2020) extends AP Loss to the LRP metric: the
error of a positive counts its false positives *and* the localisation errors of
the positives ranked above it (RS Sec. 3.1 and Sec. 2 "ranking-based losses",
BRL Sec. 2 on aLRP as the step between AP and RS Loss, APE Sec. 2).  Every
function here takes already validated float64 arrays; the public entry points
with their conventions are in :mod:`rankspec.refimpl.losses.alrp`.

Notation (positives P, relevant negatives N, x_ij = s_j - s_i, H the smoothed
step of BRL Eq. 3.2 with the authors' clamp(x / (2 delta) + 1/2, 0, 1)):

    rank+(i) = self + sum_{j in P, j != i} H(x_ij)          (self = 1: the authors)
    N_FP(i)  = sum_{v in N} H(x_iv)
    rank(i)  = rank+(i) + N_FP(i)
    L_cls    = (1/|P|) sum_i N_FP(i) / rank(i)             (= 1 - mean precision)
    E(i)     = [N_FP(i) + sum_{j in P, j != i} H(x_ij) e_loc(j)] / rank(i)

and the Identity Update (RS Eqs. 3-5) with primary terms
L_iv = E(i) H(x_iv) / N_FP(i): the positive i receives -E(i), each relevant
negative v receives sum_i E(i) H(x_iv) / N_FP(i), all divided by |P|
(only for positives with N_FP(i) > eps, as in the authors' code).

This module never imports :mod:`rankspec.refimpl.fast`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .primitives import self_term, smoothed_step
from ..registry import implements

__all__ = ["ALRPCore", "alrp_classification", "alrp_localisation", "self_balancing_weight",
           "SB_WEIGHT_INITIAL", "round_buffers"]

#: The self-balancing weight the authors start from (before the first re-estimate).
SB_WEIGHT_INITIAL = 50.0

#: localisation errors above this are summed in units of a power of two (e_loc_unit), so that sums of many
#: of them stay finite whenever the result is
BIG_E = 2.0 ** 900


def e_loc_unit(e: np.ndarray) -> float:
    """1.0, or the power of two k with max(e) k in [1/2, 1) when max(e) > BIG_E (scaling by k is exact)."""
    top = float(np.max(e)) if np.size(e) else 0.0
    if top <= BIG_E:
        return 1.0
    return float(np.ldexp(1.0, -int(np.frexp(top)[1])))


@dataclass(frozen=True)
class ALRPCore:
    """Per-positive quantities of the classification component (positives in flat order)."""

    rank_plus: np.ndarray  #: rank+(i), self term included
    n_fp: np.ndarray  #: N_FP(i)
    rank: np.ndarray  #: rank(i) = rank+(i) + N_FP(i)
    error: np.ndarray  #: classification error N_FP(i) / rank(i)
    update: np.ndarray  #: E(i) (0 where N_FP(i) <= eps: no primary terms)
    order: np.ndarray  #: positives' indices by ascending logit (stable on ties), int64
    grad_pos: np.ndarray  #: un-normalised identity-update gradient of each positive (Z = 1)
    grad_neg: np.ndarray  #: un-normalised gradient of each negative (Z = 1)


@implements(("RS", "Sec. 3.1 (error-driven update of AP and aLRP Loss)"), ("RS", "Eqs. 3-5"),
            ("BRL", "Eqs. 3.1-3.4"), ("aLRP", "classification component (authors' aLRPLoss)"),
            name="aLRP Loss classification component, rank, order and identity-update gradient",
            family="alrp", kind="primitive")
def alrp_classification(s_pos: np.ndarray, e_pos: np.ndarray, s_neg: np.ndarray, delta: float, *,
                        self_rank: str = "one", tie_value: float = 1.0, eps: float = 1e-5) -> ALRPCore:
    r"""Classification component of aLRP Loss for positives ``s_pos`` and negatives ``s_neg``.

    .. math::

        \mathrm{rank}^+(i) = c_{self} + \sum_{j\in P, j\ne i} H(s_j - s_i), \quad
        N_{FP}(i) = \sum_{v \in N} H(s_v - s_i), \quad
        \mathcal{L}_{cls} = \frac{1}{|P|}\sum_{i\in P}\frac{N_{FP}(i)}{\mathrm{rank}(i)}

    Identity-update gradient (RS Eqs. 3-5 with the aLRP primary terms
    :math:`L_{iv} = E(i)\,H(s_v - s_i)/N_{FP}(i)`), un-normalised:

    .. math::

        g_i = -E(i), \qquad g_v = \sum_{i\in P} E(i)\,\frac{H(s_v - s_i)}{N_{FP}(i)}, \qquad
        E(i) = \frac{N_{FP}(i) + \sum_{j\in P, j\ne i} H(s_j - s_i)\,e_{loc}(j)}{\mathrm{rank}(i)}

    for positives with :math:`N_{FP}(i) > \varepsilon` (others carry no primary
    term).  The i == j term of rank+ is ``self_rank`` (``"one"``: the authors' 1);
    positives' own e_loc(i) is not in E(i) (the authors zero the self relation).
    Ties (delta = 0) take ``tie_value``.  Time O(|P| (|P| + |N|)), memory O(|P| + |N|).
    """
    P, M = len(s_pos), len(s_neg)
    own = self_term(delta, self_rank, tie_value)
    rank_plus = np.zeros(P)
    n_fp = np.zeros(P)
    update = np.zeros(P)
    grad_pos = np.zeros(P)
    grad_neg = np.zeros(M)
    order = np.argsort(s_pos, kind="stable").astype(np.int64)
    # e_loc in units k (1 unless some e_loc > 2^900): sum H e_loc k <= |P| cannot overflow; E(i) <= max(1, max e)
    k = e_loc_unit(e_pos)
    e_k = e_pos * k
    for i in order:  # the authors' loop order (ascending logit); the sums do not depend on it
        # a difference of two logits of magnitude ~1e308 may overflow to +-inf; H maps it to 1 / 0, as it
        # would map the exact difference, so the overflow is harmless and silenced
        with np.errstate(over="ignore"):
            x_pos, x_neg = s_pos - s_pos[i], s_neg - s_pos[i]
        h_pos = smoothed_step(x_pos, delta, tie_value)
        h_pos[i] = 0.0  # the self relation is replaced by the self term (authors: fg_relations[ii] = 0)
        h_neg = smoothed_step(x_neg, delta, tie_value)
        rank_plus[i] = own + h_pos.sum()  # rank+(i)   (BRL Eq. 3.1)
        n_fp[i] = h_neg.sum()  # N_FP(i)   (BRL Eq. 3.1)
        if n_fp[i] > eps:
            # E(i): false positives plus the localisation errors of the positives above i
            if k == 1.0:
                update[i] = (n_fp[i] + np.sum(h_pos * e_pos)) / (rank_plus[i] + n_fp[i])
            else:  # the same E(i), split so that no intermediate exceeds E(i)
                rank_i = rank_plus[i] + n_fp[i]
                update[i] = n_fp[i] / rank_i + (np.sum(h_pos * e_k) / rank_i) / k
            grad_pos[i] = -update[i]  # outgoing primary terms of i (RS Eq. 5)
            grad_neg += (update[i] * k) * h_neg / n_fp[i]  # incoming L_iv = E(i) p(v|i)   (RS Eq. 5), units k
    with np.errstate(over="ignore"):  # sum_i E(i) beyond float64 (|P| e_loc ~ 1e308): inf, reported by the caller
        grad_neg = grad_neg / k
    rank = rank_plus + n_fp
    return ALRPCore(rank_plus, n_fp, rank, n_fp / rank, update, order, grad_pos, grad_neg)


@implements(("aLRP", "localisation component (authors' heads)"), ("RS", "Sec. 2 (ranking-based losses)"),
            name="aLRP Loss localisation component and its gradient w.r.t. e_loc", family="alrp")
def alrp_localisation(regression_losses: np.ndarray, rank: np.ndarray, order: np.ndarray):
    r"""Localisation component from ``rank`` and ``order``, as the authors' heads compute it.

    With :math:`o_1, \dots, o_{|P|}` the positives in *descending* logit order
    (``order`` reversed) and rank treated as a constant (the authors detach it):

    .. math::

        \mathcal{L}_{loc} = \frac{1}{|P|}\sum_{k=1}^{|P|}
            \frac{\sum_{m \le k} e_{loc}(o_m)}{\mathrm{rank}(o_k)}, \qquad
        \frac{\partial \mathcal{L}_{loc}}{\partial e_{loc}(o_m)} =
            \frac{1}{|P|}\sum_{k \ge m}\frac{1}{\mathrm{rank}(o_k)}

    i.e. ``(cumsum(e[order].flip(0)) / rank[order].flip(0)).mean()``.  Returns
    ``(value, grad)`` with ``grad`` in the flat order of the positives.  Zero
    positives: ``(0.0, empty)``.  Time O(|P|), memory O(|P|).
    """
    P = len(order)
    if P == 0:
        return 0.0, np.zeros(0)
    desc = np.asarray(order)[::-1]
    k = e_loc_unit(regression_losses)  # cumulative sums in units k (1 unless some e_loc > 2^900)
    e_desc = regression_losses[desc] * k
    grad = np.zeros(P)
    # values beyond float64 (e_loc ~ 1e308, or a given rank ~ 1e-308): inf, reported by the caller
    with np.errstate(over="ignore"):
        inv_rank = 1.0 / rank[desc]
        value = float(np.sum(np.cumsum(e_desc) * inv_rank) / P / k)
        grad[desc] = np.cumsum(inv_rank[::-1])[::-1] / P  # sum over k >= m of 1 / rank(o_k)
    return value, grad


@implements(("aLRP", "self-balancing (authors' heads)"), ("RS", "Sec. 2 (objective imbalance)"),
            name="aLRP self-balancing weight of the localisation component", family="alrp", kind="utility")
def self_balancing_weight(cls_history, loc_history, default: float = SB_WEIGHT_INITIAL) -> float:
    r"""The authors' self-balancing weight of the localisation component.

    .. math:: w_{SB} = \frac{\overline{\mathcal{L}_{loc}} + \overline{\mathcal{L}_{cls}}}{\overline{\mathcal{L}_{loc}}}

    over the component values of the last period (the authors: ``SB_weight = 50``
    initially, re-estimated every ``period`` iterations - one epoch - from the
    means of the recorded values, then the histories are cleared; the weighted
    localisation component is ``w_SB * L_loc``).  ``default`` is returned when
    there is no history or the localisation mean is not positive (the authors
    would divide by zero).  Time O(length of the histories).
    """
    cls = np.asarray(cls_history, dtype=np.float64).ravel()
    loc = np.asarray(loc_history, dtype=np.float64).ravel()
    if cls.size == 0 or loc.size == 0:
        return float(default)
    loc_mean = float(loc.mean())
    if not loc_mean > 0 or not np.isfinite(loc_mean):
        return float(default)
    return float((loc_mean + float(cls.mean())) / loc_mean)


def round_buffers(buffer_dtype: str, *arrays):
    """The arrays rounded to ``buffer_dtype`` (``"float32"``: the authors' buffers) and back to float64."""
    if buffer_dtype == "float64":
        return arrays
    return tuple(np.asarray(a, dtype=np.float32).astype(np.float64) for a in arrays)

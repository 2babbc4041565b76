"""The plain math of the AP / RS family: AP Loss, Rank & Sort Loss and their bucketed versions.

Each loss in this family is "just its errors and pmfs" (RS Sec. 3.2): for
every positive i we compute the ranking error l_R(i) with its pmf p_R(j|i)
over negatives, and (RS only) the sorting error l_S(i) - l*_S(i) with its pmf
p_S(j|i) over positives; :class:`~rankspec.refimpl.reference.primitives.IdentityUpdate`
turns these primary terms into the gradient.  The bucketed losses call the same
loop with prototype negatives weighted by their bucket sizes (BRL Eq. 3.20).

Every function here takes an already validated
:class:`~rankspec.refimpl._inputs.RankingInput` (flat float64 arrays, checked
options; :func:`~rankspec.refimpl._inputs.validate_ranking`) and never imports
the fast paths.  The public functions are in :mod:`rankspec.refimpl.losses.ap_rs`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._inputs import TIED_NEGATIVES_CHOICES, RankingInput, normalizer
from .._result import LossResult
from .._validate import check_bool, check_choice
from .primitives import IdentityUpdate, rank_counts
from ..registry import implements

__all__ = ["CoreOutput", "ranking_sorting_loop", "Buckets", "make_buckets", "ap_reference", "rs_reference",
           "bucketed_ap_reference", "bucketed_rs_reference"]


# --------------------------------------------------------------------------- the per-positive loop

@dataclass
class CoreOutput:
    ranking_error: np.ndarray  #: l_R(i) per positive (after interpolation, if any)
    sorting_error: np.ndarray  #: l_S(i) - l*_S(i) per positive (zeros without targets)
    grad_pos: np.ndarray  #: un-normalised gradient of each positive (Z = 1)
    grad_neg: np.ndarray  #: un-normalised gradient of each (prototype) negative (Z = 1)


def ranking_sorting_loop(s_pos, s_neg, delta, *, self_rank, tie_value, neg_weights=None,
                         iou_pos=None, interpolated=False) -> CoreOutput:
    """Errors and identity-update gradient of AP (``iou_pos is None``) or RS.

    Positives are visited in ascending logit order (stable on ties), as the
    authors' loops do; the order matters only for ``interpolated=True``, where
    the interpolated precision of i is the best precision among positives
    visited so far (i.e. with logit <= s_i): the AP-Loss authors' code.

    Time O(|P| (|P| + |N|)), memory O(|P| + |N|).
    """
    P, M = len(s_pos), len(s_neg)
    w_neg = np.ones(M) if neg_weights is None else np.asarray(neg_weights, dtype=np.float64)
    iu = IdentityUpdate(P + M)  # items 0..P-1 are positives, P..P+M-1 negatives
    ranking_error = np.zeros(P)
    sorting_error = np.zeros(P)
    best_precision = 0.0
    for i in np.argsort(s_pos, kind="stable"):
        c = rank_counts(s_pos[i], s_pos, i, s_neg, delta, self_rank=self_rank, tie_value=tie_value,
                        neg_weights=w_neg)
        # Ranking error l_R(i) = N_FP(i) / rank(i)   (RS Eq. 7, BRL Eq. 3.3-3.4, 3.20)
        error = c.n_fp / c.rank
        if interpolated:
            # Interpolated precision: max precision over positives with lower logits (AP-Loss code)
            best_precision = max(best_precision, c.rank_plus / c.rank)
            error = 1.0 - best_precision
        ranking_error[i] = error
        if c.n_fp > 0:
            # Ranking pmf p_R(j|i) = w_j H(x_ij) / N_FP(i)   (RS Eq. 10, BRL Eqs. 3.15, 3.21)
            pmf = np.zeros(P + M)
            pmf[P:] = w_neg * c.h_neg / c.n_fp
            iu.add(i, error, pmf)
        if iou_pos is None:
            continue
        # Current sorting error l_S(i)   (RS Eq. 7, BRL Eq. 3.12)
        current = np.sum(c.h_pos * (1.0 - iou_pos)) / c.rank_plus
        # Target sorting error l*_S(i): only positives with IoU >= IoU_i   (RS Eq. 8, BRL Eq. 3.13)
        target_order = c.h_pos * (iou_pos >= iou_pos[i])
        target = np.sum(target_order * (1.0 - iou_pos)) / np.sum(target_order)
        sorting_error[i] = current - target
        # Sorting pmf p_S(j|i) over missorted positives (IoU_j < IoU_i)   (RS Eq. 10, BRL Eq. 3.16)
        missorted = c.h_pos * (iou_pos < iou_pos[i])
        if missorted.sum() > 0:
            pmf = np.zeros(P + M)
            pmf[:P] = missorted / missorted.sum()
            iu.add(i, sorting_error[i], pmf)
    grad = iu.gradient(1.0)
    return CoreOutput(ranking_error, sorting_error, grad[:P], grad[P:])


# --------------------------------------------------------------------------- AP and RS

def _assemble(x: RankingInput, pos, neg, out: CoreOutput, Z: float) -> np.ndarray:
    """The full gradient: each positive's and negative's identity-update gradient / Z, in the logits' shape."""
    grad = np.zeros(x.logits.size)
    grad[pos] = out.grad_pos / Z
    grad[neg] = out.grad_neg / Z
    return grad.reshape(x.shape)


def ap_reference(x: RankingInput) -> LossResult:
    """AP Loss (BRL Eqs. 3.3-3.4, 3.10): mean ranking error over positives, identity-update gradient.
    Time O(|P| (|P| + |N|)), memory O(|P| + |N|)."""
    pos, neg = x.pos, x.neg
    if len(pos) == 0:
        return x.empty_result(ranking=0.0, num_positives=0)
    out = ranking_sorting_loop(x.logits[pos], x.logits[neg], x.delta, self_rank=x.self_rank,
                               tie_value=x.tie_value, interpolated=x.interpolated)
    Z = normalizer(len(pos), x.normalization)  # BRL Eq. 3.5
    loss = float(out.ranking_error.sum() / Z)
    return LossResult(loss, _assemble(x, pos, neg, out, Z), {"ranking": loss, "num_positives": float(len(pos))})


def rs_reference(x: RankingInput) -> LossResult:
    """Rank & Sort Loss (RS Eqs. 6-12): ranking plus current-minus-target sorting error.
    Time O(|P| (|P| + |N|)), memory O(|P| + |N|)."""
    pos, neg = x.pos, x.neg
    if len(pos) == 0:
        return x.empty_result(ranking=0.0, sorting=0.0, num_positives=0)
    out = ranking_sorting_loop(x.logits[pos], x.logits[neg], x.delta, self_rank=x.self_rank,
                               tie_value=x.tie_value, iou_pos=x.targets[pos])
    Z = normalizer(len(pos), x.normalization)  # RS Eq. 6
    ranking = float(out.ranking_error.sum() / Z)
    sorting = float(out.sorting_error.sum() / Z)
    return LossResult(ranking + sorting, _assemble(x, pos, neg, out, Z),
                      {"ranking": ranking, "sorting": sorting, "num_positives": float(len(pos))})


# --------------------------------------------------------------------------- bucketed (BRL Sec. 3.3)

@dataclass(frozen=True)
class Buckets:
    """Negative buckets of BRL Eq. 3.19 (only non-empty buckets are kept)."""

    member: np.ndarray  #: for each negative, index of its bucket, or -1 if ignored (below threshold)
    prototype: np.ndarray  #: s^b_k, the mean logit of bucket k
    size: np.ndarray  #: b_k, number of negatives in bucket k


@implements(("BRL", "Eq. 3.19"), ("BRL", "Alg. 2 lines 1-2"), name="Buckets of consecutive negatives and prototypes",
            family="ap-rs", kind="primitive")
def make_buckets(s_pos: np.ndarray, s_neg: np.ndarray, delta: float, *, threshold: bool = True,
                 tied_negatives: str = "above") -> Buckets:
    r"""Group the negatives that lie between consecutive positives.

    Sorting all logits in descending order gives
    :math:`B_1 > \hat s^+_1 > B_2 > \dots > \hat s^+_{|P|} > B_{|P|+1}` (BRL Eq. 3.19):
    bucket k holds the negatives with exactly k - 1 positives strictly above
    them.  A negative tied with a positive sits in the bucket *above* it with
    ``tied_negatives="above"`` (it counts as a false positive, as
    ``tie_value=1`` does at delta = 0) or below it with ``"below"``.  (The
    authors' code leaves this to its sort, which may put a tied negative on
    either side.)
    The prototype of a bucket is its mean logit (BRL Sec. 3.3).

    ``threshold=True`` (the authors' code) first drops negatives below
    ``min(s_pos) - delta``; ``False`` puts them in the last bucket.
    Time O((|P| + |N|) log |P|), memory O(|P| + |N|).
    """
    check_choice(tied_negatives, "tied_negatives", TIED_NEGATIVES_CHOICES)
    check_bool(threshold, "threshold")
    member = np.full(len(s_neg), -1, dtype=np.int64)
    with np.errstate(over="ignore"):  # min - delta may round to -inf: then every negative is relevant
        relevant = s_neg >= s_pos.min() - delta if threshold else np.ones(len(s_neg), dtype=bool)
    pos_desc = -np.sort(-s_pos)
    # number of positives above each relevant negative = its bucket number (0-based);
    # a tied positive counts as above only with tied_negatives="below"
    side = "left" if tied_negatives == "above" else "right"
    above = np.searchsorted(-pos_desc, -s_neg[relevant], side=side)
    used, dense = np.unique(above, return_inverse=True)  # keep non-empty buckets only
    member[relevant] = dense
    size = np.bincount(dense, minlength=len(used)).astype(np.float64)
    # Prototype = mean logit of the bucket, computed as an offset from the bucket's largest logit and
    # clamped to [min, max] so that rounding can never move it past a member (a bucket of equal logits
    # gets exactly that logit, which keeps the delta = 0 theorem exact with ties).
    members = s_neg[relevant]
    top = np.full(len(used), -np.inf)
    low = np.full(len(used), np.inf)
    np.maximum.at(top, dense, members)
    np.minimum.at(low, dense, members)
    with np.errstate(over="ignore", invalid="ignore"):  # a bucket spanning more than MAXF: see below
        offset = np.bincount(dense, weights=members - top[dense], minlength=len(used)) / size
    spans_overflow = ~np.isfinite(offset)
    offset[spans_overflow] = 0.0
    prototype = np.clip(top + offset, low, top)
    if spans_overflow.any():
        # members more than MAXF apart (|logits| near 1e308 of both signs): the offsets overflow, so the
        # mean comes from sums in units of 2^k (2^k >= 2 x bucket size: no sum overflows), which no
        # finite mean can leave (it lies in [low, top]).  Exact halvings, so equal members still give
        # exactly their value; the fast paths hand such calls to this reference.
        k = int(np.ceil(np.log2(2.0 * size.max())))
        scaled = np.bincount(dense, weights=np.ldexp(members, -k), minlength=len(used))
        mean = np.ldexp(scaled / size, k)
        prototype[spans_overflow] = np.clip(mean, low, top)[spans_overflow]
    return Buckets(member, prototype, size)


def _bucketed(x: RankingInput, *, with_sorting: bool):
    """Alg. 2 of BRL: bucket, run the AP/RS loop on prototypes, spread gradients."""
    pos, neg = x.pos, x.neg
    s_pos, s_neg = x.logits[pos], x.logits[neg]
    buckets = make_buckets(s_pos, s_neg, x.delta, threshold=x.threshold, tied_negatives=x.tied_negatives)  # Alg. 2 lines 1-2
    # Alg. 2 lines 3-10: errors and primary terms with prototypes weighted by bucket size
    # (BRL Eqs. 3.20-3.23; the sorting part, Eqs. 3.12-3.14, is unchanged by bucketing)
    out = ranking_sorting_loop(s_pos, buckets.prototype, x.delta, self_rank=x.self_rank, tie_value=x.tie_value,
                               neg_weights=buckets.size, iou_pos=x.targets[pos] if with_sorting else None)
    Z = normalizer(len(pos), x.normalization)  # Alg. 2 line 12
    grad = np.zeros(x.logits.size)
    grad[pos] = out.grad_pos / Z  # BRL Eq. 3.30 (BAP), Eq. 3.38 (BRS)
    # Alg. 2 line 11, BRL Eqs. 3.33-3.34: a prototype's gradient is spread uniformly over its bucket
    kept = buckets.member >= 0
    per_member = out.grad_neg / buckets.size
    grad_neg = np.zeros(len(neg))
    grad_neg[kept] = per_member[buckets.member[kept]]
    grad[neg] = grad_neg / Z
    ranking = float(out.ranking_error.sum() / Z)
    sorting = float(out.sorting_error.sum() / Z)
    return ranking, sorting, grad.reshape(x.shape), len(buckets.size)




def bucketed_ap_reference(x: RankingInput) -> LossResult:
    """Bucketed AP Loss (BRL Eqs. 3.19-3.33, Alg. 2).  Time O(|P| (|P| + |N|)), memory O(|P| + |N|)."""
    if len(x.pos) == 0:
        return x.empty_result(ranking=0.0, num_positives=0, num_buckets=0)
    ranking, _, grad, nb = _bucketed(x, with_sorting=False)
    return LossResult(ranking, grad, {"ranking": ranking, "num_positives": float(len(x.pos)),
                                      "num_buckets": float(nb)})


def bucketed_rs_reference(x: RankingInput) -> LossResult:
    """Bucketed Rank & Sort Loss (BRL Eqs. 3.34-3.38, Alg. 2).  Time O(|P| (|P| + |N|)), memory O(|P| + |N|)."""
    if len(x.pos) == 0:
        return x.empty_result(ranking=0.0, sorting=0.0, num_positives=0, num_buckets=0)
    ranking, sorting, grad, nb = _bucketed(x, with_sorting=True)
    return LossResult(ranking + sorting, grad, {"ranking": ranking, "sorting": sorting,
                                                "num_positives": float(len(x.pos)), "num_buckets": float(nb)})

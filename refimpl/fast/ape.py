"""Kernels of the APE family as the records name them (``LossRecord.kernels``).

:func:`numba_pairwise_loss` / :func:`cuda_pairwise_loss` take the validated
:class:`~rankspec.refimpl.losses.ape.APEInput` of
:func:`~rankspec.refimpl.pairwise_error_loss` / :func:`~rankspec.refimpl.ape_loss` and return
the reference's :class:`~rankspec.refimpl.LossResult` (the tests assert 1e-10).

The reference loops over positives and touches every sample for each (O(P n) time).  Here the
ignored samples (label -1, and the negatives dropped by the top-Q cap) are removed first (they
take part in nothing) and the rest are sorted by logit once; the pair validity test
``s_v - s_u > -t`` (or ``H > 0``) is monotone in ``s_v``, so each positive's valid samples are a
suffix of the sorted order, found by a binary search with the reference's own floating-point
predicate (the same pairs, bit for bit):

* ``distance="h"``: every per-positive sum is a count or a logit sum over an index range, so
  prefix sums give them in O(log n) per positive, and each sample's incoming gradient is a
  prefix-sum expression over the sorted positives; the aFP pairs of ARPS are 2-D dominance sums
  (Fenwick sweeps keyed by IoU rank).  O(n log n) time, O(n) memory.
* ``"sigmoid"`` and ``"ce"`` with ``saturation="exact"``: the valid pairs are visited
  (:mod:`._pair_kernels`, or :mod:`._pair_cuda` on the GPU), O(n log n + valid pairs), O(n)
  memory.  With the authors' threshold 4 / lambda this is far below P n on detector outputs.
* ``"ce"`` with ``saturation="bce_float32"`` / ``"bce_float64"`` (the authors' clamped
  ``F.binary_cross_entropy`` arithmetic, the ``ape_loss`` default): the valid pairs are visited by
  the kernels of this module, which compute S with the reference's arithmetic
  (:func:`rankspec.refimpl.reference.ape.sigmoid_like_torch`).  Same cost.  ``backend="cuda"``
  runs these two on the CPU (no GPU kernel for the clamped arithmetic yet).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .._result import LossResult
from ..reference.ape import cap_negatives
from . import _pair_kernels as K
from ._numba_backend import ILL_CONDITIONED
from .kernels.primitives import _OPTS, first_valid, last_valid_positive, par_ser

__all__ = ["numba_pairwise_loss", "cuda_pairwise_loss", "fast_pairwise"]

_DIST = {"h": K.D_H, "sigmoid": K.D_SIGMOID, "ce": K.D_CE}

#: ``backend="numba"`` with ``distance="h"`` uses the prefix-sum algorithm; False falls back to
#: visiting the valid pairs (the tests check both against the reference)
EXACT_H = True


# --------------------------------------------------------------------------- the clamped BCE arithmetic

_FLT32_MAX = float(np.finfo(np.float32).max)  # logits beyond float32's range saturate (reference: FLT32_MAX)


@njit(inline="always", **_OPTS)
def _bce_sigmoid(sv, su, lam, f32):
    """S(s_v - s_u) as :func:`rankspec.refimpl.reference.ape.sigmoid_like_torch` computes it."""
    if f32:
        d = np.float32(min(max(sv, -_FLT32_MAX), _FLT32_MAX)) - np.float32(min(max(su, -_FLT32_MAX), _FLT32_MAX))
        z = d * np.float32(lam)
        e = np.float32(math.exp(-np.float64(z)))
        return np.float64(np.float32(1.0) / (np.float32(1.0) + e))
    return 1.0 / (1.0 + math.exp(-lam * (sv - su)))


@njit(inline="always", **_OPTS)
def _bce_value(S):
    """-max(log(1 - S), -100) (``F.binary_cross_entropy`` with target 0)."""
    if S >= 1.0:
        return 100.0
    return -max(math.log1p(-S), -100.0)


@njit(inline="always", **_OPTS)
def _bce_deriv(S, lam):
    """lam S p / max(p, 1e-12), p = S (1 - S): BCE backward, then sigmoid backward, times lam."""
    p = S * (1.0 - S)
    return lam * S * (p / max(p, 1e-12))


def _bce_rows_impl(ss, sl, si, so, pos_rank, adaptive, lam, f32, t, rank_bc):
    """(4, P): per positive, over its valid samples: the CE sum over A_u, the derivative sum over
    A_u, the S sum over every valid v != u (BC) and the number of members of A_u."""
    P = pos_rank.size
    out = np.zeros((4, P))
    for k in prange(P):
        r = pos_rank[k]
        su = ss[r]
        iu = si[r]
        uid = so[r]
        j0 = first_valid(ss, su, False, t, 0.0, 1.0)
        tot = tot2 = bc = cnt = 0.0
        for j in range(j0, ss.size):
            if so[j] == uid:
                continue
            S = _bce_sigmoid(ss[j], su, lam, f32)
            if rank_bc:
                bc += S
            if sl[j] == 0.0 or (adaptive and si[j] < iu):
                tot += _bce_value(S)
                tot2 += _bce_deriv(S, lam)
                cnt += 1.0
        out[0, k] = tot
        out[1, k] = tot2
        out[2, k] = bc
        out[3, k] = cnt
    return out


def _bce_cols_impl(ss, sl, si, pp, pi, coef, adaptive, lam, f32, t):
    """Incoming gradient of every sorted sample v: sum over the positives u (sorted by logit) with
    v in A_u and a valid pair of ``coef_u * d CE / d x_uv``."""
    n = ss.size
    g = np.zeros(n)
    for j in prange(n):
        lab = sl[j]
        if lab != 0.0 and not adaptive:
            continue
        sv = ss[j]
        iv = si[j]
        kend = last_valid_positive(pp, sv, False, t, 0.0, 1.0)
        acc = 0.0
        for k in range(kend):
            c = coef[k]
            if c == 0.0 or (lab != 0.0 and not (iv < pi[k])):
                continue
            acc += c * _bce_deriv(_bce_sigmoid(sv, pp[k], lam, f32), lam)
        g[j] = acc
    return g


bce_rows_par, bce_rows_ser = par_ser(_bce_rows_impl)
bce_cols_par, bce_cols_ser = par_ser(_bce_cols_impl)


def _pick(name, work):
    from ._numba_backend import PARALLEL_MIN_SIZE

    return globals()[name + ("_par" if work >= PARALLEL_MIN_SIZE else "_ser")]


# --------------------------------------------------------------------------- the kernels of the records

def numba_pairwise_loss(x) -> LossResult:
    """``backend="numba"``: O(n log n) for H, O(n log n + valid pairs) otherwise; O(n) memory."""
    return fast_pairwise("numba", x)


def cuda_pairwise_loss(x) -> LossResult:
    """``backend="cuda"``: the valid pairs on the GPU (the H prefix sums and the clamped BCE
    arithmetic run on the CPU)."""
    return fast_pairwise("cuda", x)


def fast_pairwise(backend: str, x) -> LossResult:
    """APE Eq. 8 (``x.adaptive`` False) or Eqs. 9-10 on a fast backend; the reference's result."""
    lab_all = cap_negatives(x.logits, x.labels, x.top_q, x.threshold, x.delta, x.tie_value)
    keep = np.flatnonzero(lab_all >= 0)  # ignored samples take part in no pair
    s, lab = x.logits[keep], lab_all[keep]
    iou = x.ious[keep] if x.ious is not None else None
    n = s.size
    pos = np.flatnonzero(lab == 1)
    P = len(pos)
    terms_zero = {"pairwise": 0.0, "num_positives": float(P), "num_active": 0.0, "num_pairs": 0.0,
                  "per_positive": np.zeros(P), "balance_constant": np.zeros(P)}
    if P == 0:
        return LossResult(0.0, np.zeros(x.shape), terms_zero)
    delta, lam, t, distance = x.delta, x.lam, x.threshold, x.distance
    tie = float(x.tie_value) if distance == "h" else 1.0
    t_none = t is None
    tv = 0.0 if t_none else float(t)
    dist = _DIST[distance]
    iou_sets = iou if iou is not None else np.zeros(n)
    rank_bc = x.balance == "rank"
    bce = distance == "ce" and x.saturation != "exact"
    f32 = x.saturation == "bce_float32"

    # the positives sorted by logit
    po = np.argsort(s[pos], kind="stable")
    pp = np.ascontiguousarray(s[pos][po])
    pi = np.ascontiguousarray(iou_sets[pos][po])
    exact_h = distance == "h" and backend == "numba" and EXACT_H
    if exact_h and delta > 0.0 and (delta < 1e-280 or delta < ILL_CONDITIONED * float(np.abs(s).max())):
        exact_h = False  # prefix sums would lose the 1e-10 agreement: visit the valid pairs instead
    if not exact_h:
        # the samples sorted by logit (ties in any order: every quantity depends on values only)
        order = np.argsort(s, kind="stable")
        ss = np.ascontiguousarray(s[order])
        sl = np.ascontiguousarray(lab[order])
        si = np.ascontiguousarray(iou_sets[order])
        rank_of = np.empty(n, np.int64)
        rank_of[order] = np.arange(n)

    if exact_h:  # prefix sums over the sorted logits (+ Fenwick sweeps for the aFP pairs of ARPS)
        neg = np.flatnonzero(lab == 0)
        s_neg = s[neg]
        sn = np.sort(s_neg)
        rows_sorted = K.pick("ape_h_rows", n * 4)(sn, pp, delta, tie, t_none, tv)
        tot_s, cnt_s = rows_sorted[0], rows_sorted[1]
        if x.adaptive:
            afp = K.ape_h_afp_rows(pp, pi, delta, tie, t_none, tv)
            tot_s = tot_s + afp[0]
            cnt_s = cnt_s + afp[1]
        rows = np.zeros((4, P))
        rows[0, po] = tot_s
        rows[2, po] = rows_sorted[2]
        rows[3, po] = cnt_s
    elif bce:
        rows = _pick("bce_rows", P * n)(ss, sl, si, order, rank_of[pos], x.adaptive, lam, f32, tv, rank_bc)
    elif backend == "cuda":
        from ._pair_cuda import ape_rows_cuda

        rows = ape_rows_cuda(ss, sl, si, order, rank_of[pos], x.adaptive, dist, delta, lam, tie, t_none, tv, rank_bc)
    else:
        # S and CE from products of precomputed exponentials (one per sample) when in range
        c, prod = K.exp_factors(s, lam) if distance != "h" else (0.0, False)
        ea = np.exp(-lam * (ss - c)) if prod else ss
        rows = K.pick("ape_rows", P * n)(ss, sl, si, order, rank_of[pos], x.adaptive, dist, delta, lam, tie, t_none,
                                         tv, rank_bc, ea, np.exp(lam * (s[pos] - c)) if prod else s[pos], prod)
    tot, tot2, bc_raw, cnt = rows[0], rows[1], rows[2], rows[3]
    bc = bc_raw + x.self_value if rank_bc else cnt.copy()
    active = cnt > 0
    num_pairs = float(cnt.sum())
    ok = active & (bc > 0.0)
    w = iou[pos] if x.iou_weight else np.ones(P)
    per_positive = np.zeros(P)
    coef = np.zeros(P)  # incoming gradient of a member v of A_u: coef_u * D'(x_uv)
    out = np.zeros(P)  # outgoing gradient of u (before / Z)
    if distance == "ce":
        scale = 1.0 / lam if x.scale_by_lambda else 1.0
        per_positive[ok] = w[ok] * scale * tot[ok] / bc[ok]
        # exact CE: the kernels sum S (D' = lam S); clamped BCE: the kernels sum D' itself
        coef[ok] = w[ok] * scale * (1.0 if bce else lam) / bc[ok]
        out[ok] = coef[ok] * tot2[ok]
    else:
        per_positive[ok] = w[ok] * tot[ok] / bc[ok]
        spread = ok & (tot > 0)
        coef[spread] = per_positive[spread] / tot[spread]
        out[spread] = per_positive[spread]
    Z = x.normalizer(P, int(active.sum()))
    if Z == 0.0:
        return LossResult(0.0, np.zeros(x.shape), {**terms_zero, "balance_constant": bc})

    # incoming gradients of the members of the sets A_u (or N)
    pc = np.ascontiguousarray(coef[po])
    grad = np.zeros(n)
    if exact_h:
        grad[neg] = K.pick("ape_h_cols", n * 4)(s_neg, pp, pc, delta, tie, t_none, tv)
        if x.adaptive:
            grad[pos[po]] = K.ape_h_afp_cols(pp, pi, pc, delta, tie, t_none, tv)
    elif bce:
        grad[order] = _pick("bce_cols", P * n)(ss, sl, si, pp, pi, pc, x.adaptive, lam, f32, tv)
    elif backend == "cuda":
        from ._pair_cuda import ape_cols_cuda

        grad[order] = ape_cols_cuda(ss, sl, si, pp, pi, pc, x.adaptive, dist, delta, lam, tie, t_none, tv)
    else:
        grad[order] = K.pick("ape_cols", P * n)(ss, sl, si, pp, pi, pc, x.adaptive, dist, delta, lam, tie, t_none,
                                                tv, ea, np.exp(lam * (pp - c)) if prod else pp, prod)
    grad[pos] -= out
    grad /= Z
    full = np.zeros(x.logits.size)
    full[keep] = grad
    loss = float(per_positive.sum() / Z)
    terms = {"pairwise": loss, "num_positives": float(P), "num_active": float(active.sum()),
             "num_pairs": num_pairs, "per_positive": per_positive, "balance_constant": bc}
    return LossResult(loss, full.reshape(x.shape), terms)

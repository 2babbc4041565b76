r"""Fast paths of the RankDetNet losses (``backend="numba"`` / ``"cuda"``).

The reference builds, for every class, the U x P matrices of pair terms (U negative units, P
positives): O(U P) time *and memory*, with U = every background sample for ``mining="all"``
and 3P for OHEM.  Here:

* **exponential** L_rank factorises: with :math:`a = \max_n f_n`, :math:`b = \min_p f_p`,
  :math:`E_n = e^{f_n - a} \le 1`, :math:`F_p = e^{b - f_p} \le 1` and :math:`K = e^{a - b}`
  (the largest pair term), :math:`L_{np} = K E_n F_p`, so

  .. math::

     \sum_{n,p} L_{np} = K \textstyle\sum E \sum F, \qquad
     \mathcal{L}_{dynamic} = \frac{\sum L^2}{\sum L} = K\,\frac{\sum E^2 \sum F^2}{\sum E \sum F}, \qquad
     \frac{\partial\mathcal{L}}{\partial f_n} = K E_n^2 \frac{\sum F^2}{\sum E \sum F}

  (z held constant, RankDet Sec. 3.1), and likewise for the positives and the "mean" / "none"
  re-weightings: O(U + P) time and memory, no overflow unless the largest pair term itself
  overflows (where the reference raises, so does this);
* **sigmoid / logistic** L_rank: one pass over the units and one over the positives,
  O(U P) time, O(U + P) memory (numba, or numba.cuda);
* the **IoU-guided** loss: per (class, level) group an O(m^2) loop, O(m) memory;
* mining and group means are vectorised (no Python loop over units).

``terms["z"]`` (U x P) is returned as a :class:`PairWeights`, computed with the reference's
operations only when converted to an array (``np.asarray(terms["z"])``), and ``terms["negatives"]``
for ``mining="all"`` / ``"ohem"`` as a lazy sequence of the same one-element index arrays, so
that asking for a loss never allocates U x P.

Every entry point takes the validated input of the loss's record
(:mod:`rankspec.refimpl.losses.rankdet`); the records name ``numba_<loss>`` / ``cuda_<loss>``.
This module uses only public functions of :mod:`rankspec.refimpl.reference.rankdet` (the
global / class-specific assembly with this module's pair block, the confidences, the mining).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np

from .._result import LossResult
from ..constants import check_backend
from ..reference.rankdet import (PairLoss, class_specific_reference, combine_rankdet, confidence, global_reference,
                                 group_negatives, ohem_negatives, rank_function_values)
from . import _pair_kernels as K

__all__ = ["PairWeights", "SingletonUnits", "fast_pair_loss", "fast_global", "fast_class_specific", "fast_iou_guided",
           "fast_rankdet", "numba_global", "cuda_global", "numba_class_specific", "cuda_class_specific",
           "numba_iou_guided", "cuda_iou_guided", "numba_rankdet", "cuda_rankdet"]

_RF = {"exponential": K.RF_EXP, "sigmoid": K.RF_SIGMOID, "logistic": K.RF_LOGISTIC}
_IOU_GRAD = {"higher": 0, "both": 1, "none": 2}


class PairWeights:
    """The re-weighting factors z (RankDet Eqs. 3 / 5) of one pair block, U x P, computed on demand
    exactly as the reference computes them (``np.asarray(z)``); indexing materialises too."""

    ndim = 2
    dtype = np.dtype(np.float64)

    def __init__(self, neg_f, pos_f, rank_function, reweighting):
        self._neg = neg_f
        self._pos = pos_f
        self._rf = rank_function
        self._rw = reweighting
        self.shape = (neg_f.size, pos_f.size)
        self.size = neg_f.size * pos_f.size

    def __array__(self, dtype=None, copy=None):
        if self.size == 0:
            z = np.zeros(self.shape)
        else:
            with np.errstate(over="ignore"):
                x = self._neg[:, None] - self._pos[None, :]
            L, _ = rank_function_values(x, self._rf)
            if self._rw == "dynamic":
                z = L / L.sum()
            elif self._rw == "mean":
                z = np.full(x.shape, 1.0 / x.size)
            else:
                z = np.ones(x.shape)
        return z if dtype is None else z.astype(dtype)

    def __getitem__(self, item):
        return np.asarray(self)[item]

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        return f"PairWeights(shape={self.shape}, rank_function={self._rf!r}, reweighting={self._rw!r})"


class SingletonUnits(Sequence):
    """``terms["negatives"]`` of ``mining="all"`` / ``"ohem"``: the one-element index arrays
    ``[np.array([j]) for j in idx]`` of the reference, made on demand."""

    def __init__(self, idx):
        self._idx = np.asarray(idx, dtype=np.int64)

    def __len__(self):
        return self._idx.size

    def __getitem__(self, item):
        if isinstance(item, slice):
            return [np.array([j]) for j in self._idx[item]]
        return np.array([self._idx[item]])

    def __repr__(self):
        return f"SingletonUnits({self._idx.size} samples)"


# --------------------------------------------------------------------------- the pair block

def _pair_sums(backend, unit_f, pos_f, rank_function, reweighting):
    """(loss, d loss / d unit_f, d loss / d pos_f) of RankDet Eq. 2 with z constant; non-empty inputs."""
    U, P = unit_f.size, pos_f.size
    if rank_function == "exponential":
        a, b = float(unit_f.max()), float(pos_f.min())
        with np.errstate(over="ignore"):
            Kmax = np.exp(a - b)
        E = np.exp(unit_f - a)
        F = np.exp(b - pos_f)
        sE, sF = E.sum(), F.sum()
        if reweighting == "dynamic":
            sE2, sF2 = (E * E).sum(), (F * F).sum()
            den = sE * sF
            with np.errstate(over="ignore", invalid="ignore"):
                loss = Kmax * (sE2 * sF2 / den)
                g_u = Kmax * (E * E) * (sF2 / den)
                g_p = -Kmax * (F * F) * (sE2 / den)
        else:
            scale = 1.0 / (U * P) if reweighting == "mean" else 1.0
            with np.errstate(over="ignore", invalid="ignore"):
                loss = Kmax * sE * sF * scale
                g_u = Kmax * E * (sF * scale)
                g_p = -Kmax * F * (sE * scale)
    else:
        rf = _RF[rank_function]
        if backend == "cuda":
            from ._pair_cuda import rank_sums_cuda

            rows, cols = rank_sums_cuda(unit_f, pos_f, rf)
        else:
            # e^{-(a - b)} = e^{c - a} e^{b - c}: no exponential per pair when in range
            c, prod = K.exp_factors(np.concatenate([unit_f, pos_f]), 1.0)
            ea = np.exp(c - unit_f) if prod else unit_f
            eb = np.exp(pos_f - c) if prod else pos_f
            rows = K.pick("rank_rows", U * P)(unit_f, pos_f, rf, ea, eb, prod)
            cols = K.pick("rank_cols", U * P)(unit_f, pos_f, rf, ea, eb, prod)
        if reweighting == "dynamic":
            S = rows[0].sum()
            loss = rows[3].sum() / S
            g_u = rows[2] / S
            g_p = -cols[2] / S
        else:
            scale = 1.0 / (U * P) if reweighting == "mean" else 1.0
            loss = rows[0].sum() * scale
            g_u = rows[1] * scale
            g_p = -cols[1] * scale
    loss = float(loss)
    if not np.isfinite(loss):
        raise FloatingPointError(
            f"the {rank_function} ranking loss overflowed float64 (score differences up to "
            f"{float(unit_f.max() - pos_f.min()):.4g}); use score_space='probability' or a bounded rank_function")
    return loss, g_u, g_p


def fast_pair_loss(backend, x) -> PairLoss:
    """:func:`~rankspec.refimpl.reweighted_pair_loss` on a fast backend for validated input ``x``
    (:class:`~rankspec.refimpl.losses.rankdet.PairInput` without frozen ``z``; z lazy)."""
    check_backend(backend)
    neg_f, pos_f = x.neg_f, x.pos_f
    if neg_f.size == 0 or pos_f.size == 0:
        return PairLoss(0.0, np.zeros(neg_f.size), np.zeros(pos_f.size), np.zeros((neg_f.size, pos_f.size)))
    loss, g_u, g_p = _pair_sums(backend, neg_f, pos_f, x.rank_function, x.reweighting)
    return PairLoss(loss, g_u, g_p, PairWeights(neg_f, pos_f, x.rank_function, x.reweighting))


def _units(f_neg, key_neg, num_pos, *, mining, num_groups, neg_ratio, group_split):
    """(unit id of every negative or -1, number of units, the reference's unit index arrays)."""
    M = f_neg.size
    if mining == "all":
        return np.arange(M), M, SingletonUnits(np.arange(M))
    if mining == "ohem":
        sel = ohem_negatives(key_neg, num_pos, neg_ratio)
        ids = np.full(M, -1, np.int64)
        ids[sel] = np.arange(sel.size)
        return ids, sel.size, SingletonUnits(sel)
    groups = group_negatives(f_neg, num_groups, group_split)
    ids = np.full(M, -1, np.int64)
    for g, members in enumerate(groups):
        ids[members] = g
    return ids, len(groups), groups


def _block(backend, f, key, pos, neg, *, mining, num_groups, neg_ratio, group_split, rank_function, reweighting):
    """The reference's ``_ranking_block`` (Eq. 2, or Eq. 4 for one class) without U x P memory."""
    grad_f = np.zeros(f.shape)
    if pos.size == 0 or neg.size == 0:
        return 0.0, grad_f, {"negatives": [], "z": np.zeros((0, pos.size)), "num_pairs": 0}
    ids, U, local = _units(f[neg], key[neg], pos.size, mining=mining, num_groups=num_groups,
                           neg_ratio=neg_ratio, group_split=group_split)
    if isinstance(local, SingletonUnits):
        units = SingletonUnits(neg[local._idx])
    else:
        units = [neg[u] for u in local]
    if U == 0:
        return 0.0, grad_f, {"negatives": units, "z": np.zeros((0, pos.size)), "num_pairs": 0}
    kept = ids >= 0
    size = np.bincount(ids[kept], minlength=U).astype(np.float64)
    unit_f = np.bincount(ids[kept], weights=f[neg][kept], minlength=U) / size  # the group means
    pos_f = f[pos]
    loss, g_u, g_p = _pair_sums(backend, unit_f, pos_f, rank_function, reweighting)
    grad_f[pos] += g_p
    grad_f[neg[kept]] += (g_u / size)[ids[kept]]  # a mean passes its gradient equally to its members
    z = PairWeights(unit_f, pos_f, rank_function, reweighting)
    return loss, grad_f, {"negatives": units, "z": z, "num_pairs": int(U * pos.size)}


# --------------------------------------------------------------------------- the three losses

def fast_global(backend, x) -> LossResult:
    """:func:`~rankspec.refimpl.global_ranking_loss` on a fast backend: the reference's assembly
    (:func:`~rankspec.refimpl.reference.rankdet.global_reference`) with the pair block of this module."""
    check_backend(backend)
    return global_reference(x, block=partial(_block, backend))


def fast_class_specific(backend, x) -> LossResult:
    """:func:`~rankspec.refimpl.class_specific_ranking_loss` on a fast backend: the reference's per-class
    loop (:func:`~rankspec.refimpl.reference.rankdet.class_specific_reference`) with this module's block."""
    check_backend(backend)
    return class_specific_reference(x, block=partial(_block, backend))


def fast_iou_guided(backend, x) -> LossResult:
    """:func:`~rankspec.refimpl.iou_guided_ranking_loss` on a fast backend: per (class, level) group an
    O(m^2) loop without the m x m matrices (numba; the CUDA backend runs the same CPU loop, the
    groups being small)."""
    check_backend(backend)
    s_log, lab, iou, lev, alpha = x.logits, x.labels, x.ious, x.levels, x.alpha
    rank_function, iou_grad, iou_pairs = x.rank_function, x.iou_grad, x.iou_pairs
    n = s_log.shape[0]
    grad = np.zeros(s_log.shape)
    grad_ious = np.zeros(n)
    loss = 0.0
    num_pairs = 0
    pos = np.flatnonzero(lab >= 0)
    if pos.size:
        c_pos, k_pos = lab[pos], lev[pos]
        f_pos, df_pos = confidence(s_log[pos, c_pos], x.score_space)
        order = np.lexsort((pos, k_pos, c_pos))  # groups in the reference's (class, level) order
        c_o, k_o = c_pos[order], k_pos[order]
        cuts = np.flatnonzero((np.diff(c_o) != 0) | (np.diff(k_o) != 0)) + 1
        rf = _RF[rank_function]
        mult = 1.0 if iou_pairs == "unordered" else 2.0
        L0 = float(rank_function_values(np.array(0.0), rank_function)[0])
        for grp in np.split(order, cuts):
            m = grp.size
            f, sv = np.ascontiguousarray(f_pos[grp]), np.ascontiguousarray(iou[pos[grp]])
            part, gf, gs = K.pick("iou_pairs", m * m)(f, sv, alpha, rf, _IOU_GRAD[iou_grad])
            loss += mult * part
            if iou_pairs == "all":
                loss += m * L0
                num_pairs += m * m
            else:
                num_pairs += m * (m - 1) // (1 if iou_pairs == "ordered" else 2)
            members = pos[grp]
            grad[members, c_pos[grp]] += mult * gf * df_pos[grp]
            if iou_grad != "none":
                grad_ious[members] += mult * gs
    if not np.isfinite(loss):
        raise FloatingPointError(f"the {rank_function} IoU-guided ranking loss overflowed float64; use "
                                 "score_space='probability' or a bounded rank_function")
    if x.iou_normalization == "pairs" and num_pairs > 0:
        loss /= num_pairs
        grad /= num_pairs
        grad_ious /= num_pairs
    return LossResult(float(loss), grad, {"iou": float(loss), "grad_ious": grad_ious, "num_pairs": num_pairs})


def fast_rankdet(backend, x) -> LossResult:
    """:func:`~rankspec.refimpl.rankdet_loss` on a fast backend: its three losses run here, combined by
    :func:`~rankspec.refimpl.reference.rankdet.combine_rankdet`."""
    check_backend(backend)
    r = None if x.iou is None else fast_iou_guided(backend, x.iou)
    return combine_rankdet(x, fast_global(backend, x.global_), fast_class_specific(backend, x.class_), r)


# --------------------------------------------------------------------------- the records' kernels

def numba_global(x):
    """``backend="numba"`` of :func:`~rankspec.refimpl.global_ranking_loss`."""
    return fast_global("numba", x)


def cuda_global(x):
    """``backend="cuda"`` of :func:`~rankspec.refimpl.global_ranking_loss`."""
    return fast_global("cuda", x)


def numba_class_specific(x):
    """``backend="numba"`` of :func:`~rankspec.refimpl.class_specific_ranking_loss`."""
    return fast_class_specific("numba", x)


def cuda_class_specific(x):
    """``backend="cuda"`` of :func:`~rankspec.refimpl.class_specific_ranking_loss`."""
    return fast_class_specific("cuda", x)


def numba_iou_guided(x):
    """``backend="numba"`` of :func:`~rankspec.refimpl.iou_guided_ranking_loss`."""
    return fast_iou_guided("numba", x)


def cuda_iou_guided(x):
    """``backend="cuda"`` of :func:`~rankspec.refimpl.iou_guided_ranking_loss`."""
    return fast_iou_guided("cuda", x)


def numba_rankdet(x):
    """``backend="numba"`` of :func:`~rankspec.refimpl.rankdet_loss`."""
    return fast_rankdet("numba", x)


def cuda_rankdet(x):
    """``backend="cuda"`` of :func:`~rankspec.refimpl.rankdet_loss`."""
    return fast_rankdet("cuda", x)

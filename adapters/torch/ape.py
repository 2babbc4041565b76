"""PyTorch versions of the pairwise error (APE Eq. 8), the APE loss (APE Eqs. 9-10) and the ARPS split.

Same keyword conventions and defaults as :mod:`rankspec.refimpl.losses.ape`; the
returned 0-d loss has the dtype and device of ``logits``.

Gradients
---------
* ``distance="ce"``: ordinary autograd through the CE form
  ``log(1 + exp(lam x)) / BC`` with ``BC`` detached (the authors' code).  With
  ``scale_by_lambda=True`` this gradient equals the error-driven update of the
  S form.  Where ``BC`` does not depend on the logits (``balance="n_neg"``
  with ``pair_threshold=math.inf``) the loss is an ordinary differentiable
  function and ``torch.autograd.gradcheck`` applies.
* ``distance="h"`` / ``"sigmoid"``: the error-driven update of APE Eq. 7,
  attached by a ``torch.autograd.Function`` (not the derivative of the loss
  value, so gradcheck does not apply; it equals the reference's
  ``LossResult.grad``).

Numerics and cost
-----------------
Computed in float64 whatever the input dtype, then cast back.  Fully
vectorised over the ``P x n`` pair matrix (P positives, n samples): time and
memory O(P n), no Python loop, so CUDA tensors run on the GPU.
"""

from __future__ import annotations

import math

import torch

from rankspec.refimpl._validate import check_choice, check_delta, check_int, check_positive_float
from rankspec.refimpl.losses.ape import (APE_NORMALIZATION_CHOICES, APE_SELF_RANK_CHOICES, AUTHORS_TOP_Q,
                                         BALANCE_CHOICES, DISTANCE_CHOICES, SATURATION_CHOICES)
from rankspec.refimpl.reference.arps import arps_cluster_split as _ref_arps_cluster_split

from . import _distributed
from ._inputs import check_labels, check_logits, check_tie_value
from .functional import IdentityUpdateLoss

__all__ = ["pairwise_error_loss", "ape_loss", "arps_cluster_split", "PairwiseErrorLoss", "APELoss", "APE_SCOPES"]

#: ``"batch"``: one ranking of the given logits; ``"distributed"``: of every rank's (see :mod:`._distributed`)
APE_SCOPES = ("batch", "distributed")


def _normalizer(normalization: str, num_positives, num_active) -> float:
    """The normalisation Z (as the reference): N_pos (APE Eq. 3), the positives with at least one valid
    pair (the authors' code), or 1."""
    if normalization == "positives":
        return float(num_positives)
    if normalization == "active":
        return float(num_active)
    return 1.0


def _bce_sigmoid(s_v, s_u, lam: float, saturation: str) -> torch.Tensor:
    """S(s_v - s_u) with the arithmetic of :func:`rankspec.refimpl.reference.ape.sigmoid_like_torch`."""
    if saturation == "bce_float32":
        big = float(torch.finfo(torch.float32).max)  # logits beyond float32's range saturate, as in the reference
        z = (s_v.clamp(-big, big).float() - s_u.clamp(-big, big).float()) * torch.tensor(lam, dtype=torch.float32)
        e = torch.exp(-z.double()).float()
        return (1.0 / (1.0 + e)).double()
    return 1.0 / (1.0 + torch.exp(-lam * (s_v - s_u)))


def _threshold(pair_threshold, distance: str, delta: float, lam: float) -> float:
    if pair_threshold is None:
        return None if distance == "h" else 4.0 / lam  # None: the pairs with H > 0
    if not isinstance(pair_threshold, bool) and isinstance(pair_threshold, (int, float)) \
            and float(pair_threshold) == math.inf:
        return math.inf
    return check_positive_float(pair_threshold, "pair_threshold", allow_zero=True)


def _step(x: torch.Tensor, delta: float, tie_value: float) -> torch.Tensor:
    """Smoothed step H (APE Eq. 6 with + 0.5; BRL Eq. 3.2)."""
    if delta > 0:
        return torch.clamp(x / delta * 0.5 + 0.5, 0.0, 1.0)  # as the reference: 2 delta may overflow
    return torch.where(x > 0, torch.ones_like(x), torch.where(x == 0, torch.full_like(x, tie_value),
                                                              torch.zeros_like(x)))


def _pairwise(logits, labels, ious, *, adaptive: bool, distance, delta, lam, balance, pair_threshold, self_rank,
              normalization, iou_weight, scale_by_lambda, tie_value, return_terms, saturation="exact", top_q=None):
    check_logits(logits)
    if isinstance(labels, torch.Tensor) and bool((labels == -1).any()):  # ignored samples (label -1)
        lab = check_labels(torch.where(labels == -1, torch.zeros_like(labels), labels), logits, "labels", False)
        lab = torch.where(labels.reshape(lab.shape).to(lab.device) == -1, torch.full_like(lab, -1.0), lab)
    else:
        lab = check_labels(labels, logits, "labels", continuous=False)
    check_choice(saturation, "saturation", SATURATION_CHOICES)
    if top_q is not None:
        top_q = check_int(top_q, "top_q", 1)
    iou = None
    if ious is not None:
        iou = check_labels(ious, logits, "ious", continuous=True)
    elif adaptive:
        raise TypeError("ious is required: ARPS (APE Alg. 1) compares the IoUs of the positives")
    check_choice(distance, "distance", DISTANCE_CHOICES)
    check_choice(balance, "balance", BALANCE_CHOICES)
    check_choice(self_rank, "self_rank", APE_SELF_RANK_CHOICES)
    check_choice(normalization, "normalization", APE_NORMALIZATION_CHOICES)
    delta = check_delta(delta)
    lam = check_positive_float(lam, "lam")
    tie_value = check_tie_value(tie_value, delta)
    t = _threshold(pair_threshold, distance, delta, lam)
    if iou_weight and iou is None:
        raise TypeError("iou_weight=True needs ious (the weight of positive u is its IoU)")

    dtype, device = logits.dtype, logits.device
    s_all = logits.reshape(-1).to(torch.float64)  # differentiable cast (used by the CE form)
    s = s_all.detach()
    n = s.numel()
    is_pos = lab == 1
    pos = torch.nonzero(is_pos).reshape(-1)
    P = pos.numel()

    def rank_distance(x):
        if distance == "ce" and saturation != "exact":
            return _bce_sigmoid(X_pairs[0], X_pairs[1], lam, saturation)
        return _step(x, delta, tie_value) if distance == "h" else torch.sigmoid(lam * x)

    zero = torch.zeros((), dtype=torch.float64, device=device)
    h0 = float(_step(zero, delta, tie_value)) if distance == "h" else 0.5  # H(0), or S(0) = 0.5
    self_val = {"h0": h0, "one": 1.0, "half": 0.5, "zero": 0.0}[self_rank]

    # ---- the P x n pair matrix, x_uv = s_v - s_u (detached: masks and BC) ----
    if top_q is not None and P > 0:  # the authors' top-Q cap on the relevant negatives (reference.ape.cap_negatives)
        xm = s - s[pos].min()
        rel = torch.nonzero((lab == 0) & (_step(xm, delta, tie_value) > 0 if t is None else xm > -t)).reshape(-1)
        if rel.numel() > top_q:
            drop = rel[torch.sort(-s[rel], stable=True).indices[top_q:]]
            lab = lab.clone()
            lab[drop] = -1.0
            is_pos = lab == 1
    X = s.unsqueeze(0) - s[pos].unsqueeze(1)
    X_pairs = (s.unsqueeze(0).expand(P, n), s[pos].unsqueeze(1))
    valid = (_step(X, delta, tie_value) > 0 if t is None else X > -t) & (lab >= 0).unsqueeze(0)
    in_set = (lab == 0).unsqueeze(0).expand(P, n)  # N (APE Eq. 8)
    if adaptive:
        # aFP: positives with a strictly lower IoU (APE Alg. 1)
        in_set = in_set | (is_pos.unsqueeze(0) & (iou.unsqueeze(0) < iou[pos].unsqueeze(1)))
    in_set = in_set & valid
    self_col = torch.arange(n, device=device).unsqueeze(0) == pos.unsqueeze(1)
    if balance == "rank":
        others = valid & ~self_col
        bc = torch.where(others, rank_distance(X), torch.zeros_like(X)).sum(1) + self_val
    else:
        bc = in_set.sum(1).to(torch.float64)
    active = in_set.any(1)
    use = active & (bc > 0)
    bc_safe = torch.where(use, bc, torch.ones_like(bc))
    w = iou[pos] if iou_weight else torch.ones(P, dtype=torch.float64, device=device)
    Z = _normalizer(normalization, P, active.sum())  # float() of the count tensor, as in the reference

    if distance == "ce":
        # differentiable CE form: log(1 + exp(lam x)) / BC, BC constant (APE Eq. 9)
        Xg = s_all.unsqueeze(0) - s_all[pos].unsqueeze(1)
        if saturation == "exact":
            ce = torch.logaddexp(torch.zeros_like(Xg), lam * Xg)
        else:  # the authors' clamped BCE: value -max(log(1 - S), -100), derivative lam S p / max(p, 1e-12)
            S = _bce_sigmoid(X_pairs[0], X_pairs[1], lam, saturation)
            p = S * (1.0 - S)
            value = -torch.clamp(torch.log1p(-S), min=-100.0)
            ce = value + (lam * S * (p / torch.clamp(p, min=1e-12))) * (Xg - Xg.detach())
        numer = torch.where(in_set, ce, torch.zeros_like(ce)).sum(1)
        scale = 1.0 / lam if scale_by_lambda else 1.0
        per_positive = torch.where(use, w * scale * numer / bc_safe, torch.zeros_like(numer))
        loss64 = per_positive.sum() / Z if Z > 0 else per_positive.sum() * 0.0
        loss = loss64.to(dtype)
        per_positive = per_positive.detach()
    else:
        D = rank_distance(X) if distance == "h" else torch.sigmoid(lam * X)
        D = torch.where(in_set, D, torch.zeros_like(D))
        per_positive = torch.where(use, w * D.sum(1) / bc_safe, torch.zeros(P, dtype=torch.float64, device=device))
        grad = torch.zeros(n, dtype=torch.float64, device=device)
        if Z > 0:
            # error-driven update (APE Eq. 7): g_v += w_u D(x_uv) / BC_u, g_u -= sum_v of those
            M = torch.where(use.unsqueeze(1), w.unsqueeze(1) * D / bc_safe.unsqueeze(1), torch.zeros_like(D)) / Z
            grad = M.sum(0)
            grad = grad.index_add(0, pos, -M.sum(1))
        loss_value = (per_positive.sum() / Z if Z > 0 else zero).to(dtype)
        loss = IdentityUpdateLoss.apply(logits, loss_value, grad.reshape(logits.shape).to(dtype))
    if not return_terms:
        return loss
    terms = {"pairwise": loss.detach(), "num_positives": torch.tensor(float(P), dtype=dtype, device=device),
             "num_active": active.sum().to(dtype), "num_pairs": in_set.sum().to(dtype),
             "per_positive": per_positive.to(dtype), "balance_constant": bc.to(dtype)}
    return loss, terms


def pairwise_error_loss(logits, labels, *, distance: str = "h", delta: float = 1.0, lam: float = 8.0,
                        balance: str = "rank", pair_threshold=None, self_rank: str = "one",
                        normalization: str = "positives", ious=None, iou_weight: bool = False,
                        scale_by_lambda: bool = True, tie_value: float = 1.0, return_terms: bool = False,
                        scope: str = "batch", saturation: str = "exact", top_q=None):
    """AP loss as a pairwise error (APE Eq. 8); see :func:`rankspec.refimpl.losses.ape.pairwise_error_loss`.

    ``return_terms=True`` gives ``(loss, terms)`` with the reference's term
    names (detached tensors).  ``scope="distributed"``: the loss of the union of
    every rank's inputs, this rank's gradient times the world size (see
    :mod:`._distributed`).  Time and memory O(P n).
    """
    if check_choice(scope, "scope", APE_SCOPES) == "distributed":
        return _distributed.call_on_union(
            pairwise_error_loss, dict(logits=logits, labels=labels, ious=ious), flatten=True, distance=distance,
            delta=delta, lam=lam, balance=balance, pair_threshold=pair_threshold, self_rank=self_rank,
            normalization=normalization, iou_weight=iou_weight, scale_by_lambda=scale_by_lambda,
            tie_value=tie_value, return_terms=return_terms, saturation=saturation, top_q=top_q)
    return _pairwise(logits, labels, ious, adaptive=False, distance=distance, delta=delta, lam=lam,
                     balance=balance, pair_threshold=pair_threshold, self_rank=self_rank,
                     normalization=normalization, iou_weight=iou_weight, scale_by_lambda=scale_by_lambda,
                     tie_value=tie_value, return_terms=return_terms, saturation=saturation, top_q=top_q)


def ape_loss(logits, labels, ious, *, distance: str = "ce", lam: float = 8.0, delta: float = 1.0,
             balance: str = "rank", pair_threshold=None, self_rank: str = "h0", normalization: str = "active",
             iou_weight: bool = True, scale_by_lambda: bool = True, tie_value: float = 1.0,
             return_terms: bool = False, scope: str = "batch", saturation: str = "bce_float32",
             top_q=AUTHORS_TOP_Q):
    """APE loss over ARPS pairs (APE Eqs. 9-10, Alg. 1); see :func:`rankspec.refimpl.losses.ape.ape_loss`.

    ``ious`` (same shape as ``logits``) is treated as a constant.
    ``return_terms=True`` gives ``(loss, terms)``.  ``scope="distributed"``:
    the loss of the union of every rank's inputs, this rank's gradient times
    the world size (see :mod:`._distributed`).  Time and memory O(P n).
    """
    if check_choice(scope, "scope", APE_SCOPES) == "distributed":
        return _distributed.call_on_union(
            ape_loss, dict(logits=logits, labels=labels, ious=ious), flatten=True, distance=distance, lam=lam,
            delta=delta, balance=balance, pair_threshold=pair_threshold, self_rank=self_rank,
            normalization=normalization, iou_weight=iou_weight, scale_by_lambda=scale_by_lambda,
            tie_value=tie_value, return_terms=return_terms, saturation=saturation, top_q=top_q)
    return _pairwise(logits, labels, ious, adaptive=True, distance=distance, delta=delta, lam=lam,
                     balance=balance, pair_threshold=pair_threshold, self_rank=self_rank,
                     normalization=normalization, iou_weight=iou_weight, scale_by_lambda=scale_by_lambda,
                     tie_value=tie_value, return_terms=return_terms, saturation=saturation, top_q=top_q)


def arps_cluster_split(ranking_scores, localization_scores, instance_ids, **kwargs) -> torch.Tensor:
    """ARPS positive / negative split (APE Sec. 6) for tensors.

    Runs the NumPy/scikit-learn reference
    (:func:`rankspec.refimpl.reference.arps.arps_cluster_split`, same keywords) on
    detached CPU copies - the authors also fit the GMM on the CPU - and returns
    an int64 tensor of 0/1 labels on the device of ``ranking_scores``.
    """
    if not isinstance(ranking_scores, torch.Tensor):
        raise TypeError(f"ranking_scores must be a torch.Tensor, got {type(ranking_scores).__name__}")

    def host(x):
        return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x

    out = _ref_arps_cluster_split(host(ranking_scores), host(localization_scores), host(instance_ids), **kwargs)
    return torch.as_tensor(out, dtype=torch.int64, device=ranking_scores.device)


class PairwiseErrorLoss(torch.nn.Module):
    """``nn.Module`` wrapper of :func:`pairwise_error_loss`; keywords are fixed at construction."""

    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = dict(kwargs)

    def forward(self, logits, labels, ious=None):
        return pairwise_error_loss(logits, labels, ious=ious, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())


class APELoss(torch.nn.Module):
    """``nn.Module`` wrapper of :func:`ape_loss`; keywords are fixed at construction.

    The defaults reproduce the authors' ``APELoss(lamb=8)`` (their float32
    clamped BCE arithmetic, the mean over active positives, top-Q 100000).
    """

    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = dict(kwargs)

    def forward(self, logits, labels, ious):
        return ape_loss(logits, labels, ious, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())

# the loss record each adapter implements (rankspec.refimpl.records(); read by the generic record tests)
pairwise_error_loss.__rankspec_record__ = "pairwise_error_loss"
ape_loss.__rankspec_record__ = "ape_loss"

"""PyTorch detector glue of RS Sec. 5: IoU, GIoU, GIoU Loss, score-based weights, task balancing.

Same conventions and defaults as :mod:`rankspec.refimpl.reference.detector`.  IoU, GIoU
and the GIoU Loss are plain differentiable torch expressions (autograd gives
the gradient; ``torch.autograd.gradcheck`` applies away from the kinks of
``min``/``max``); the score-based weights and the task-balancing coefficient
are returned detached, because RS Sec. 5.2 treats them as constants.  Results
keep the input dtype and device (float16 / bfloat16 inputs are computed in
float32, with autocast off; see :mod:`._precision`); everything is
vectorised: O(N) for aligned boxes, O(N M) for all pairs.
"""

from __future__ import annotations

import torch

from rankspec.refimpl._validate import check_choice, check_positive_float
from rankspec.refimpl.reference.detector import (BALANCING_CHOICES, CLASS_REDUCE_CHOICES, GIOU_REDUCTION_CHOICES,
                                                 WEIGHT_SUM_EPS)

from rankspec.refimpl._validate import check_bool

from . import _precision
from ._inputs import as_float64_tensor, check_return_terms, check_tensor

__all__ = ["box_iou", "generalized_box_iou", "giou_loss", "score_based_weights", "value_based_task_weight",
           "magnitude_based_task_weight", "task_balanced_loss", "GIoULoss", "TaskBalancedLoss"]


def _check_float_tensor(x, name: str, allow_empty: bool = True, like: torch.Tensor = None) -> torch.Tensor:
    """A floating tensor with finite values; with ``like`` a non-tensor (list, NumPy array) is read by the
    reference's rules as float64 on ``like``'s device (a target or weight needs no gradient)."""
    if like is not None and not isinstance(x, torch.Tensor):
        x = as_float64_tensor(x, name, like.device)
    check_tensor(x, name)
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype (float16, bfloat16, float32 or float64), "
                        f"got {x.dtype}")
    if x.numel() == 0 and not allow_empty:
        raise ValueError(f"{name} is empty; at least one element is required")
    finite = torch.isfinite(x.detach())
    if not bool(finite.all()):
        raise ValueError(f"{name} contains {int((~finite).sum())} NaN or infinite value(s); all entries must be "
                         f"finite")
    return x


def _check_boxes(boxes, name: str, like: torch.Tensor = None) -> torch.Tensor:
    b = _check_float_tensor(boxes, name, like=like)
    if b.dim() != 2 or b.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) with columns (x1, y1, x2, y2), got shape {tuple(b.shape)}")
    d = b.detach()
    bad = (d[:, 2] < d[:, 0]) | (d[:, 3] < d[:, 1])
    if bool(bad.any()):
        k = int(torch.nonzero(bad)[0])
        raise ValueError(f"{name}[{k}] = {d[k].tolist()} is not a valid box: x2 >= x1 and y2 >= y1 are required")
    return b


def _same_device(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.device != b.device:
        raise ValueError(f"{name_a} is on device {a.device} but {name_b} is on device {b.device}; they must match")


def _safe_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a / b where b > 0 and 0 elsewhere, with a NaN-free gradient."""
    ok = b > 0
    return torch.where(ok, a / torch.where(ok, b, torch.ones_like(b)), torch.zeros_like(a))


def _parts(b1, b2, aligned: bool, eps: float):
    if aligned:
        if b1.shape[0] != b2.shape[0]:
            raise ValueError(f"aligned=True needs as many boxes1 as boxes2, got {b1.shape[0]} and {b2.shape[0]}")
    else:
        b1, b2 = b1.unsqueeze(1), b2.unsqueeze(0)
    area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    area2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
    iw = (torch.minimum(b1[..., 2], b2[..., 2]) - torch.maximum(b1[..., 0], b2[..., 0])).clamp(min=0)
    ih = (torch.minimum(b1[..., 3], b2[..., 3]) - torch.maximum(b1[..., 1], b2[..., 1])).clamp(min=0)
    inter = iw * ih
    union = area1 + area2 - inter
    cw = torch.maximum(b1[..., 2], b2[..., 2]) - torch.minimum(b1[..., 0], b2[..., 0])
    ch = torch.maximum(b1[..., 3], b2[..., 3]) - torch.minimum(b1[..., 1], b2[..., 1])
    enclose = cw * ch
    if eps > 0:
        union, enclose = union.clamp(min=eps), enclose.clamp(min=eps)
    return inter, union, enclose


def _check_pair(boxes1, boxes2, eps):
    b1, b2 = _check_boxes(boxes1, "boxes1"), _check_boxes(boxes2, "boxes2")
    _same_device(b1, b2, "boxes1", "boxes2")
    if b1.dtype != b2.dtype:
        raise TypeError(f"boxes1 has dtype {b1.dtype} but boxes2 has dtype {b2.dtype}; they must match")
    return b1, b2, check_positive_float(eps, "eps", allow_zero=True)


@_precision.full_precision
def box_iou(boxes1, boxes2, *, aligned: bool = True, eps: float = 0.0) -> torch.Tensor:
    """IoU of ``(x1, y1, x2, y2)`` boxes; see :func:`rankspec.refimpl.box_iou`.

    Differentiable w.r.t. both inputs.  ``aligned=True``: ``(N,)``; else ``(N, M)``.
    """
    aligned = check_bool(aligned, "aligned")
    b1, b2, eps = _check_pair(boxes1, boxes2, eps)
    inter, union, _ = _parts(b1, b2, aligned, eps)
    return _safe_div(inter, union)


def _giou_units(b1: torch.Tensor, b2: torch.Tensor):
    """Per pair, two powers of two whose product scales the pair's largest |coordinate| into [0.5, 1)
    (see :func:`rankspec.refimpl.reference.detector._giou_units`): GIoU is unchanged, exactly, and no area
    over- or underflows.  Constants (no gradient)."""
    m = torch.maximum(b1.detach().abs().amax(-1), b2.detach().abs().amax(-1))
    e = torch.frexp(m).exponent.to(m.dtype)
    half = torch.floor(-e / 2)
    one = torch.ones_like(m)
    return torch.ldexp(one, half).unsqueeze(-1), torch.ldexp(one, -e - half).unsqueeze(-1)


def _giou_scaled(b1, b2, eps: float):
    """GIoU of aligned (broadcast) pairs in each pair's units (:func:`_giou_units`)."""
    h1, h2 = _giou_units(b1, b2)
    inter, union, enclose = _parts(b1 * h1 * h2, b2 * h1 * h2, True, 0.0)
    if eps > 0:  # eps is an area: eps h^2 in the pair's units
        eps_u = (eps * (h1 * h1) * (h2 * h2)).squeeze(-1).clamp(max=torch.finfo(union.dtype).max)
        union, enclose = torch.maximum(union, eps_u), torch.maximum(enclose, eps_u)
    return _safe_div(inter, union) - _safe_div(enclose - union, enclose)


@_precision.full_precision
def generalized_box_iou(boxes1, boxes2, *, aligned: bool = True, eps: float = 0.0) -> torch.Tensor:
    """GIoU of ``(x1, y1, x2, y2)`` boxes; see :func:`rankspec.refimpl.generalized_box_iou`."""
    aligned = check_bool(aligned, "aligned")
    b1, b2, eps = _check_pair(boxes1, boxes2, eps)
    if aligned:
        if b1.shape[0] != b2.shape[0]:
            raise ValueError(f"aligned=True needs as many boxes1 as boxes2, got {b1.shape[0]} and {b2.shape[0]}")
        return _giou_scaled(b1, b2, eps)
    b1, b2 = torch.broadcast_tensors(b1.unsqueeze(1), b2.unsqueeze(0))
    return _giou_scaled(b1, b2, eps)


@_precision.full_precision
def giou_loss(pred_boxes, target_boxes, weights=None, *, reduction: str = "weighted_mean", eps: float = 0.0,
              return_terms: bool = False):
    """GIoU Loss ``sum_i w_i (1 - GIoU_i) / Z``; see :func:`rankspec.refimpl.giou_loss`.

    ``weights`` are detached (no gradient flows into them).  Returns a 0-d
    tensor, or ``(loss, {"giou", "per_box", "normalizer"})`` with
    ``return_terms=True``.  Empty input: a zero loss attached to the graph.
    """
    p = _check_boxes(pred_boxes, "pred_boxes")
    t = _check_boxes(target_boxes, "target_boxes", like=p)
    _same_device(p, t, "pred_boxes", "target_boxes")
    if p.shape != t.shape:
        raise ValueError(f"pred_boxes has shape {tuple(p.shape)} but target_boxes has shape {tuple(t.shape)}; "
                         f"they must match")
    check_choice(reduction, "reduction", GIOU_REDUCTION_CHOICES)
    eps = check_positive_float(eps, "eps", allow_zero=True)
    return_terms = check_return_terms(return_terms)
    N = p.shape[0]
    if weights is None:
        w = torch.ones(N, dtype=p.dtype, device=p.device)
    else:
        w = _check_float_tensor(weights, "weights", like=p).detach()
        _same_device(p, w, "pred_boxes", "weights")
        if tuple(w.shape) != (N,):
            raise ValueError(f"weights must have shape ({N},) (one per box), got {tuple(w.shape)}")
        if bool((w < 0).any()):
            raise ValueError(f"weights must be >= 0, found {float(w[w < 0][0])!r}")
        w = w.to(p.dtype)
    giou = _giou_scaled(p, t.detach().to(p.dtype), eps)
    per_box = 1.0 - giou
    if reduction == "weighted_mean":
        Z = float(w.sum())
        Z = Z if Z >= WEIGHT_SUM_EPS else 1.0
    elif reduction == "mean":
        Z = float(max(N, 1))
    else:
        Z = 1.0
    loss = (w * per_box).sum() / Z
    if not return_terms:
        return loss
    return loss, {"giou": giou.detach(), "per_box": per_box.detach(),
                  "normalizer": torch.tensor(Z, dtype=p.dtype, device=p.device)}


class GIoULoss(torch.nn.Module):
    """``nn.Module`` wrapper of :func:`giou_loss` (``reduction`` and ``eps`` fixed at construction)."""

    def __init__(self, reduction: str = "weighted_mean", eps: float = 0.0):
        super().__init__()
        check_choice(reduction, "reduction", GIOU_REDUCTION_CHOICES)
        self.reduction = reduction
        self.eps = check_positive_float(eps, "eps", allow_zero=True)

    def forward(self, pred_boxes, target_boxes, weights=None):
        return giou_loss(pred_boxes, target_boxes, weights, reduction=self.reduction, eps=self.eps)


@_precision.full_precision
def score_based_weights(cls_logits, labels=None, *, class_reduce: str = "max") -> torch.Tensor:
    """Detached sigmoid scores weighting each positive's box loss (RS Sec. 5.2).

    ``cls_logits`` ``(N,)`` or ``(N, C)``; with 2-D logits ``class_reduce="max"``
    takes the best class (RS authors' code), ``"label"`` the class in ``labels``.
    """
    s = _check_float_tensor(cls_logits, "cls_logits").detach()
    check_choice(class_reduce, "class_reduce", CLASS_REDUCE_CHOICES)
    if s.dim() == 1:
        return torch.sigmoid(s)
    if s.dim() != 2:
        raise ValueError(f"cls_logits must have shape (N,) or (N, C), got {tuple(s.shape)}")
    probs = torch.sigmoid(s)
    if class_reduce == "max":
        return probs.max(dim=1).values if s.shape[1] > 0 else probs.new_zeros(s.shape[0])
    if labels is None:
        raise TypeError("class_reduce='label' needs labels (the class index of every positive)")
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(labels, device=s.device)
    if labels.dtype in (torch.bool,) or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if tuple(labels.shape) != (s.shape[0],):
        raise ValueError(f"labels must have shape ({s.shape[0]},), got {tuple(labels.shape)}")
    if bool(((labels < 0) | (labels >= s.shape[1])).any()):
        raise ValueError(f"labels must lie in [0, {s.shape[1] - 1}] (one of the C = {s.shape[1]} classes)")
    return probs.gather(1, labels.to(s.device).long().unsqueeze(1)).squeeze(1)


def _scalar(x, name: str) -> torch.Tensor:
    x = _check_float_tensor(x, name, allow_empty=False)
    if x.numel() != 1:
        raise ValueError(f"{name} must be a scalar loss, got a tensor of shape {tuple(x.shape)}")
    if float(x.detach()) < 0:
        raise ValueError(f"{name} must be >= 0 (a loss value), got {float(x.detach())}")
    return x.reshape(())


def value_based_task_weight(rank_loss, box_loss) -> torch.Tensor:
    """Detached ``L_RS / L_box`` (RS Sec. 5.2); 0 when ``box_loss == 0``."""
    r, b = _scalar(rank_loss, "rank_loss").detach(), _scalar(box_loss, "box_loss").detach()
    return torch.where(b > 0, r / torch.where(b > 0, b, torch.ones_like(b)), torch.zeros_like(r))


def magnitude_based_task_weight(rank_grad, box_grad) -> torch.Tensor:
    """Detached ``|dL_RS/ds|_1 / |dL_box/db|_1`` (RS Sec. 5.2) from two gradient tensors; 0 for a zero box grad."""
    r = _check_float_tensor(rank_grad, "rank_grad").detach()
    b = _check_float_tensor(box_grad, "box_grad").detach()
    nr, nb = r.abs().sum(), b.abs().sum().to(r.dtype)
    return torch.where(nb > 0, nr / torch.where(nb > 0, nb, torch.ones_like(nb)), torch.zeros_like(nr))


def task_balanced_loss(rank_loss, box_loss, *, balancing: str = "value", box_weight=None, rank_inputs=None,
                       box_inputs=None, return_lambda: bool = False):
    """RS Eq. 14: ``L_RS + lambda_box * L_box`` with ``lambda_box`` detached.

    ``balancing="value"``: ``L_RS / L_box``; ``"magnitude"``: L1 norm of
    ``dL_RS / d rank_inputs`` over that of ``dL_box / d box_inputs`` (both
    computed here with ``torch.autograd.grad(..., retain_graph=True)``; pass the
    classification logits and the box regression outputs); ``"constant"``:
    ``box_weight``.  ``return_lambda=True`` gives ``(loss, lambda_box)``.
    """
    check_choice(balancing, "balancing", BALANCING_CHOICES)
    r, b = _scalar(rank_loss, "rank_loss"), _scalar(box_loss, "box_loss")
    if box_weight is not None and balancing != "constant":
        raise ValueError(f"box_weight is only used with balancing='constant', not {balancing!r}")
    if balancing == "value":
        lam = value_based_task_weight(r, b)
    elif balancing == "magnitude":
        if rank_inputs is None or box_inputs is None:
            raise TypeError("balancing='magnitude' needs rank_inputs (classification logits) and box_inputs "
                            "(box regression outputs) to differentiate the two losses")
        (gr,) = torch.autograd.grad(r, rank_inputs, retain_graph=True, allow_unused=True)
        (gb,) = torch.autograd.grad(b, box_inputs, retain_graph=True, allow_unused=True)
        gr = torch.zeros_like(rank_inputs) if gr is None else gr
        gb = torch.zeros_like(box_inputs) if gb is None else gb
        lam = magnitude_based_task_weight(gr, gb)
    else:
        if box_weight is None:
            raise TypeError("balancing='constant' needs box_weight")
        lam = torch.tensor(check_positive_float(box_weight, "box_weight", allow_zero=True), dtype=r.dtype,
                           device=r.device)
    lam = lam.detach().to(b.dtype)
    total = r + lam * b
    return (total, lam) if return_lambda else total


class TaskBalancedLoss(torch.nn.Module):
    """``nn.Module`` of RS Eq. 14 with lambda recomputed every call (stored in ``self.lambda_box``)."""

    def __init__(self, balancing: str = "value", box_weight=None):
        super().__init__()
        check_choice(balancing, "balancing", BALANCING_CHOICES)
        self.balancing, self.box_weight = balancing, box_weight
        self.lambda_box = None

    def forward(self, rank_loss, box_loss, rank_inputs=None, box_inputs=None):
        total, lam = task_balanced_loss(rank_loss, box_loss, balancing=self.balancing, box_weight=self.box_weight,
                                        rank_inputs=rank_inputs, box_inputs=box_inputs, return_lambda=True)
        self.lambda_box = lam
        return total

# the loss record each adapter implements (rankspec.refimpl.records(); read by the generic record tests)
giou_loss.__rankspec_record__ = "giou_loss"

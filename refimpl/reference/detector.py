"""Rank & Sort detector glue (RS Sec. 5): IoU, GIoU, GIoU Loss, score-based weighting, task balancing.

RS Sec. 5.2 trains ATSS with

.. math:: \\mathcal{L}_{RS\\text{-}ATSS} = \\mathcal{L}_{RS} + \\lambda_{box}\\,\\mathcal{L}_{box}  \\quad\\text{(RS Eq. 14)}

where :math:`\\mathcal{L}_{box}` is the GIoU Loss of the positives, each box's
loss weighted by its classification score ("score-based weighting"), and
:math:`\\lambda_{box}` is recomputed every iteration without tuning:

* value-based: :math:`\\lambda_{box} = \\mathcal{L}_{RS} / \\mathcal{L}_{box}`;
* magnitude-based: :math:`\\lambda_{box} = \\lVert\\partial\\mathcal{L}_{RS}/\\partial\\mathbf{s}\\rVert_1 /
  \\lVert\\partial\\mathcal{L}_{box}/\\partial\\hat{\\mathbf{b}}\\rVert_1`.

In both cases :math:`\\lambda_{box}` is a constant in backprop (the authors'
code detaches it).  The GIoU (Rezatofighi et al., cited as [33] by RS and [28]
by APE) is the localisation quality used as the IoU target of RS Loss and by
APE Eq. 4.

Boxes are ``(x1, y1, x2, y2)`` with ``x2 >= x1`` and ``y2 >= y1``.  Everything
is float64 NumPy written for clarity; the gradient of the GIoU Loss is written
out by hand (no autodiff) with the same sub-gradient choices as PyTorch:
``max``/``min`` ties split the gradient evenly and ``max(x, 0)`` passes the
gradient at ``x == 0``.

This module holds the math; the public GIoU Loss (validation, record, dispatch) is
:func:`rankspec.refimpl.losses.giou.giou_loss`, computed by :func:`giou_reference` here.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from .._result import LossResult
from .._validate import as_float_array, check_bool, check_choice, check_positive_float
from ..conventions import Convention, register_conventions
from ..registry import implements

__all__ = [
    "box_iou",
    "generalized_box_iou",
    "giou_reference",
    "check_boxes",
    "score_based_weights",
    "value_based_task_weight",
    "magnitude_based_task_weight",
    "task_balanced_loss",
    "GIOU_REDUCTION_CHOICES",
    "CLASS_REDUCE_CHOICES",
    "BALANCING_CHOICES",
]

GIOU_REDUCTION_CHOICES = ("weighted_mean", "mean", "sum")
CLASS_REDUCE_CHOICES = ("max", "label")
BALANCING_CHOICES = ("value", "magnitude", "constant")

#: RS authors' code: if the sum of the score-based weights is below this, divide by 1 instead.
WEIGHT_SUM_EPS = 1e-12


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------

def check_boxes(boxes, name: str) -> np.ndarray:
    """``boxes`` as a float64 ``(N, 4)`` array of valid ``(x1, y1, x2, y2)`` boxes, or raise.

    ``N == 0`` is allowed.  Rejects other shapes, NaN / Inf and boxes with
    ``x2 < x1`` or ``y2 < y1``.
    """
    b = as_float_array(boxes, name, allow_empty=True)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) with columns (x1, y1, x2, y2), got shape {b.shape}")
    bad = (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
    if np.any(bad):
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}[{k}] = {b[k].tolist()} is not a valid box: x2 >= x1 and y2 >= y1 are required")
    return b


def _check_eps(eps) -> float:
    return check_positive_float(eps, "eps", allow_zero=True)


def _pair_up(b1: np.ndarray, b2: np.ndarray, aligned: bool, name1: str, name2: str):
    if aligned:  # already checked by check_bool
        if b1.shape[0] != b2.shape[0]:
            raise ValueError(f"aligned=True needs as many {name1} as {name2}, got {b1.shape[0]} and {b2.shape[0]}")
        return b1, b2
    return b1[:, None, :], b2[None, :, :]  # (N, 1, 4) against (1, M, 4) -> (N, M)


def _overlap_parts(b1: np.ndarray, b2: np.ndarray, eps: float):
    """Intersection I, union U, enclosing area C (each broadcast over leading axes)."""
    area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    area2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
    iw = np.maximum(np.minimum(b1[..., 2], b2[..., 2]) - np.maximum(b1[..., 0], b2[..., 0]), 0.0)
    ih = np.maximum(np.minimum(b1[..., 3], b2[..., 3]) - np.maximum(b1[..., 1], b2[..., 1]), 0.0)
    inter = iw * ih
    union = area1 + area2 - inter
    cw = np.maximum(b1[..., 2], b2[..., 2]) - np.minimum(b1[..., 0], b2[..., 0])
    ch = np.maximum(b1[..., 3], b2[..., 3]) - np.minimum(b1[..., 1], b2[..., 1])
    enclose = cw * ch
    if eps > 0:  # mmdetection's guard: clamp union and enclosing area at eps
        union = np.maximum(union, eps)
        enclose = np.maximum(enclose, eps)
    return inter, union, enclose


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b where b > 0, and 0 where b == 0 (degenerate boxes)."""
    out = np.zeros(np.broadcast(a, b).shape)
    np.divide(a, b, out=out, where=b > 0)
    return out


# --------------------------------------------------------------------------------------------
# IoU and GIoU
# --------------------------------------------------------------------------------------------

@implements(("RS", "Sec. 5.2 (IoU targets of RS Loss)"), ("APE", "Alg. 1 (IoU I_u)"),
            name="IoU of axis-aligned 2D boxes (x1, y1, x2, y2)", family="detector", kind="utility")
def box_iou(boxes1, boxes2, *, aligned: bool = True, eps: float = 0.0) -> np.ndarray:
    r"""Intersection over union :math:`|A \cap B| / |A \cup B|` of 2D boxes.

    Parameters
    ----------
    boxes1, boxes2:
        ``(N, 4)`` and ``(M, 4)`` arrays of ``(x1, y1, x2, y2)``.
    aligned:
        ``True``: row-by-row, ``N == M``, result ``(N,)``.  ``False``: every
        pair, result ``(N, M)``.
    eps:
        ``0`` (default): exact; a pair whose union has zero area gets IoU 0.
        ``eps > 0`` clamps the union at ``eps`` (mmdetection's ``1e-6``).

    Returns
    -------
    numpy.ndarray
        float64 IoUs in [0, 1].

    Notes
    -----
    Time and memory O(N) aligned, O(N M) otherwise.
    """
    aligned = check_bool(aligned, "aligned")
    b1, b2 = check_boxes(boxes1, "boxes1"), check_boxes(boxes2, "boxes2")
    eps = _check_eps(eps)
    b1, b2 = _pair_up(b1, b2, aligned, "boxes1", "boxes2")
    inter, union, _ = _overlap_parts(b1, b2, eps)
    return _safe_div(inter, union)


def _giou_units(b1: np.ndarray, b2: np.ndarray):
    """Per pair, two powers of two ``(h1, h2)`` (shape ``(..., 1)``) with ``m h1 h2`` in [0.5, 1), m the
    largest |coordinate| of the pair (1 when m = 0).  IoU and GIoU are ratios of areas, so scaling a pair's
    coordinates by ``h1 h2`` leaves them unchanged, exactly (a power of two scales every difference,
    product and quotient exactly), while no area over- or underflows for any finite boxes (1e160-sized
    boxes have areas beyond float64, 1e-170-sized ones areas below it).  Two factors, each within
    float64's range, stand for units from 2^-1024 to 2^1074."""
    m = np.maximum(np.max(np.abs(b1), axis=-1), np.max(np.abs(b2), axis=-1))
    e = np.frexp(m)[1]
    half = -e // 2
    return np.ldexp(1.0, half)[..., None], np.ldexp(1.0, -e - half)[..., None]


def _giou_eps(eps: float, h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
    """The area ``eps`` in each pair's units, ``eps (h1 h2)^2``, capped at the largest float (where it
    overflows, the boxes are so small against eps that I/U and (C - U)/C are 0 either way)."""
    with np.errstate(over="ignore"):
        return np.minimum(eps * (h1 * h1)[..., 0] * (h2 * h2)[..., 0], np.finfo(np.float64).max)


@implements(("RS", "Sec. 5.2 (GIoU Loss)"), ("APE", "Eq. 4"),
            name="Generalized IoU (GIoU) of 2D boxes", family="detector", kind="utility")
def generalized_box_iou(boxes1, boxes2, *, aligned: bool = True, eps: float = 0.0) -> np.ndarray:
    r"""Generalized IoU :math:`\mathrm{GIoU} = \mathrm{IoU} - |C \setminus (A\cup B)| / |C|`.

    :math:`C` is the smallest axis-aligned box enclosing both boxes.  GIoU lies
    in [-1, 1] and is <= IoU.  Shapes and ``aligned`` as in :func:`box_iou`.
    ``eps == 0``: a pair whose enclosing box has zero area (both boxes are
    segments or points on one line) gets GIoU 0; ``eps > 0`` clamps union and
    enclosing area at ``eps`` (mmdetection).  Time and memory O(N) aligned,
    O(N M) otherwise.
    """
    aligned = check_bool(aligned, "aligned")
    b1, b2 = check_boxes(boxes1, "boxes1"), check_boxes(boxes2, "boxes2")
    eps = _check_eps(eps)
    b1, b2 = _pair_up(b1, b2, aligned, "boxes1", "boxes2")
    h1, h2 = _giou_units(b1, b2)  # scale-free: each pair in units where no area over- or underflows
    inter, union, enclose = _overlap_parts(b1 * h1 * h2, b2 * h1 * h2, 0.0)
    if eps > 0:  # eps is an area: in the pair's units eps h^2
        eps_u = _giou_eps(eps, h1, h2)
        union, enclose = np.maximum(union, eps_u), np.maximum(enclose, eps_u)
    return _safe_div(inter, union) - _safe_div(enclose - union, enclose)


def _max_grad(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """d max(a, b) / d a with PyTorch's tie rule (0.5 on ties)."""
    return np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))


def giou_reference(x) -> LossResult:
    r"""GIoU Loss on validated input (:class:`rankspec.refimpl.losses.giou.GIoUInput`: ``pred`` and
    ``target`` ``(N, 4)`` float64 boxes, ``weights`` ``(N,)``, ``reduction``, ``eps``).

    With :math:`I, U, C` the intersection, union and enclosing areas,
    :math:`\mathrm{GIoU} = I/U + U/C - 1` and

    .. math:: d\,\mathrm{GIoU} = \frac{dI}{U} - \frac{I\,dU}{U^2} + \frac{dU}{C} - \frac{U\,dC}{C^2},
              \qquad dU = dA_{\hat b} - dI.

    Each pair is first scaled by a power of two (:func:`_giou_units`) so that no area over- or
    underflows for any finite boxes.  The gradient has the size of 1 / (box size): for boxes below
    about 2^-1020 it is beyond float64, and a ValueError names the box.  Time and memory O(N).
    """
    p, t, w, reduction, eps = x.pred, x.target, x.weights, x.reduction, x.eps
    N = p.shape[0]
    if N == 0:
        return LossResult(0.0, np.zeros((0, 4)), {"giou": np.zeros(0), "per_box": np.zeros(0), "normalizer": 1.0})

    # GIoU is scale-free: each pair in units where no area over- or underflows (exact; see _giou_units)
    h1, h2 = _giou_units(p, t)
    x1, y1, x2, y2 = (p * h1 * h2).T
    X1, Y1, X2, Y2 = (t * h1 * h2).T
    eps_u = _giou_eps(eps, h1, h2) if eps > 0 else 0.0
    wp, hp = x2 - x1, y2 - y1
    area_p = wp * hp
    area_t = (X2 - X1) * (Y2 - Y1)
    iw_raw = np.minimum(x2, X2) - np.maximum(x1, X1)
    ih_raw = np.minimum(y2, Y2) - np.maximum(y1, Y1)
    iw, ih = np.maximum(iw_raw, 0.0), np.maximum(ih_raw, 0.0)
    inter = iw * ih
    union_raw = area_p + area_t - inter
    cw = np.maximum(x2, X2) - np.minimum(x1, X1)
    ch = np.maximum(y2, Y2) - np.minimum(y1, Y1)
    enclose_raw = cw * ch
    union = np.maximum(union_raw, eps_u) if eps > 0 else union_raw
    enclose = np.maximum(enclose_raw, eps_u) if eps > 0 else enclose_raw
    giou = _safe_div(inter, union) - _safe_div(enclose - union, enclose)
    per_box = 1.0 - giou

    if reduction == "weighted_mean":
        Z = float(w.sum())
        Z = Z if Z >= WEIGHT_SUM_EPS else 1.0
    elif reduction == "mean":
        Z = float(N)
    else:
        Z = 1.0
    loss = float(np.sum(w * per_box) / Z)

    # ---- gradient w.r.t. (x1, y1, x2, y2) of the prediction, one column at a time ----
    # intersection width / height: max(min(x2, X2) - max(x1, X1), 0); the clamp passes the gradient at 0
    pass_w = (iw_raw >= 0).astype(float)
    pass_h = (ih_raw >= 0).astype(float)
    d_iw = np.stack([-_max_grad(x1, X1), np.zeros(N), _max_grad(-x2, -X2), np.zeros(N)], axis=1) * pass_w[:, None]
    d_ih = np.stack([np.zeros(N), -_max_grad(y1, Y1), np.zeros(N), _max_grad(-y2, -Y2)], axis=1) * pass_h[:, None]
    d_inter = ih[:, None] * d_iw + iw[:, None] * d_ih
    d_area = np.stack([-hp, -wp, hp, wp], axis=1)
    d_union = d_area - d_inter
    if eps > 0:
        d_union = d_union * (union_raw >= eps_u)[:, None]
    # enclosing width / height: max(x2, X2) - min(x1, X1)
    d_cw = np.stack([-_max_grad(-x1, -X1), np.zeros(N), _max_grad(x2, X2), np.zeros(N)], axis=1)
    d_ch = np.stack([np.zeros(N), -_max_grad(-y1, -Y1), np.zeros(N), _max_grad(y2, Y2)], axis=1)
    d_enclose = ch[:, None] * d_cw + cw[:, None] * d_ch
    if eps > 0:
        d_enclose = d_enclose * (enclose_raw >= eps_u)[:, None]
    U, C, I = union[:, None], enclose[:, None], inter[:, None]
    d_giou = np.zeros((N, 4))
    ok_u = union > 0
    ok_c = enclose > 0
    # d(I/U) = dI/U - I dU/U^2   (as (I/U)(dU/U): U^2 could overflow)
    d_giou[ok_u] += d_inter[ok_u] / U[ok_u] - (I[ok_u] / U[ok_u]) * (d_union[ok_u] / U[ok_u])
    # d(U/C) = dU/C - U dC/C^2   (GIoU = I/U + U/C - 1)
    d_giou[ok_c] += d_union[ok_c] / C[ok_c] - (U[ok_c] / C[ok_c]) * (d_enclose[ok_c] / C[ok_c])
    # d/db = (d/d(b h1 h2)) h1 h2: the derivative in the pair's units, back in the caller's
    with np.errstate(over="ignore"):
        grad = -(w[:, None] * (d_giou * h1 * h2)) / Z
    if not np.all(np.isfinite(grad)):  # |dGIoU/db| ~ 1 / box size: beyond float64 for boxes below ~2^-1020
        k = int(np.flatnonzero(~np.all(np.isfinite(grad), axis=1))[0])
        raise ValueError(f"pred_boxes[{k}] = {p[k].tolist()}: the GIoU gradient of this box is beyond float64's "
                         f"range (the boxes are too small, about 1 / size > 1.8e308); rescale the boxes")
    return LossResult(loss, grad, {"giou": giou, "per_box": per_box, "normalizer": Z})


# --------------------------------------------------------------------------------------------
# score-based weighting and task balancing (RS Sec. 5.2)
# --------------------------------------------------------------------------------------------

@implements(("RS", "Sec. 5.2 (score-based weighting)"), ("RS", "Fig. 3b"),
            name="Score-based weights of the box loss: sigmoid classification scores", family="detector",
            kind="utility")
def score_based_weights(cls_logits, labels=None, *, class_reduce: str = "max") -> np.ndarray:
    r"""Per-positive weights :math:`w_i` of the GIoU Loss from classification logits (RS Sec. 5.2).

    :math:`w_i = \sigma(s_i)`, the classification score obtained by applying the
    sigmoid to the logits (RS Fig. 3b); weights are constants in backprop.

    Parameters
    ----------
    cls_logits:
        ``(N,)`` logits of the positives, or ``(N, C)`` logits of every class.
    labels:
        ``(N,)`` integer class of each positive; needed for
        ``class_reduce="label"`` with 2-D logits.
    class_reduce:
        2-D logits only: ``"max"`` (default, RS authors' code: the highest
        class score of the prediction) or ``"label"`` (the score of its
        ground-truth class).

    Returns
    -------
    numpy.ndarray
        ``(N,)`` float64 weights in (0, 1).  Time and memory O(N C).
    """
    s = as_float_array(cls_logits, "cls_logits", allow_empty=True)
    check_choice(class_reduce, "class_reduce", CLASS_REDUCE_CHOICES)
    if s.ndim == 1:
        return expit(s)
    if s.ndim != 2:
        raise ValueError(f"cls_logits must have shape (N,) or (N, C), got {s.shape}")
    probs = expit(s)
    if class_reduce == "max":
        return probs.max(axis=1) if s.shape[1] > 0 else np.zeros(s.shape[0])
    if labels is None:
        raise TypeError("class_reduce='label' needs labels (the class index of every positive)")
    lab = np.asarray(labels)
    if lab.shape != (s.shape[0],):
        raise ValueError(f"labels must have shape ({s.shape[0]},), got {lab.shape}")
    if lab.dtype.kind not in "iu":
        raise TypeError(f"labels must be an integer array, got dtype {lab.dtype}")
    if np.any((lab < 0) | (lab >= s.shape[1])):
        raise ValueError(f"labels must lie in [0, {s.shape[1] - 1}] (one of the C = {s.shape[1]} classes)")
    return probs[np.arange(s.shape[0]), lab]


def _scalar_loss(value, name: str) -> float:
    if isinstance(value, LossResult):
        value = value.loss
    arr = as_float_array(value, name)
    if arr.size != 1:
        raise ValueError(f"{name} must be a scalar loss, got an array of shape {arr.shape}")
    v = float(arr.ravel()[0])
    if v < 0:
        raise ValueError(f"{name} must be >= 0 (a loss value), got {v}")
    return v


@implements(("RS", "Sec. 5.2 (value-based task balancing)"), ("RS", "Sec. 5.3"),
            name="Value-based task balancing lambda_box = L_RS / L_box", family="detector", kind="primitive")
def value_based_task_weight(rank_loss, box_loss) -> float:
    r""":math:`\lambda_{box} = \mathcal{L}_{RS} / \mathcal{L}_{box}`, recomputed every iteration.

    Both arguments are scalar losses (floats, 0-d arrays or
    :class:`LossResult`).  The weight is a constant in backprop.  Defined
    result: ``box_loss == 0`` gives ``lambda = 0`` (a zero box loss has nothing
    to balance; the authors' code would divide by zero).  O(1).
    """
    r, b = _scalar_loss(rank_loss, "rank_loss"), _scalar_loss(box_loss, "box_loss")
    return r / b if b > 0 else 0.0


@implements(("RS", "Sec. 5.2 (magnitude-based task balancing)"),
            name="Magnitude-based task balancing lambda_box = |dL_RS/ds|_1 / |dL_box/db|_1", family="detector",
            kind="primitive")
def magnitude_based_task_weight(rank_grad, box_grad) -> float:
    r""":math:`\lambda_{box} = \lVert\partial\mathcal{L}_{RS}/\partial\mathbf{s}\rVert_1 /
    \lVert\partial\mathcal{L}_{box}/\partial\hat{\mathbf{b}}\rVert_1` (L1 norms).

    ``rank_grad``: gradient of the ranking loss w.r.t. the classification
    logits (any shape); ``box_grad``: gradient of the box loss w.r.t. the box
    regression outputs (any shape).  A constant in backprop.  Defined result:
    a zero ``box_grad`` gives ``lambda = 0``.  Time O(size of the gradients).
    """
    r = as_float_array(rank_grad, "rank_grad", allow_empty=True)
    b = as_float_array(box_grad, "box_grad", allow_empty=True)
    nb = float(np.abs(b).sum())
    return float(np.abs(r).sum()) / nb if nb > 0 else 0.0


@implements(("RS", "Eq. 14"), ("RS", "Sec. 5.2"),
            name="Task-balanced detector loss L_RS + lambda_box L_box (lambda_box constant in backprop)",
            family="detector")
def task_balanced_loss(rank: LossResult, box: LossResult, *, balancing: str = "value",
                       box_weight: float | None = None) -> LossResult:
    r"""RS Eq. 14, :math:`\mathcal{L} = \mathcal{L}_{RS} + \lambda_{box}\mathcal{L}_{box}`.

    Parameters
    ----------
    rank:
        The ranking loss result (e.g. :func:`~rankspec.refimpl.rs_loss`):
        ``rank.grad`` is its gradient w.r.t. the logits.
    box:
        The box loss result (e.g. :func:`~rankspec.refimpl.giou_loss`): ``box.grad`` is its
        gradient w.r.t. the boxes.
    balancing:
        ``"value"`` (default, the RS authors' choice):
        :func:`value_based_task_weight`; ``"magnitude"``:
        :func:`magnitude_based_task_weight` of ``rank.grad`` and ``box.grad``;
        ``"constant"``: ``box_weight`` (ATSS uses 2, RS Eq. 13).
    box_weight:
        Only with ``balancing="constant"``.

    Returns
    -------
    LossResult
        ``loss`` = L_RS + lambda L_box; ``grad`` = ``rank.grad`` (lambda is a
        constant and L_box does not depend on the logits); ``terms``:
        ``rank``, ``box``, ``lambda_box``, ``weighted_box`` (= lambda L_box, which
        equals L_RS under value-based balancing), ``grad_boxes`` (=
        lambda * ``box.grad``).  O(size of the gradients).
    """
    if not isinstance(rank, LossResult):
        raise TypeError(f"rank must be a LossResult, got {type(rank).__name__}")
    if not isinstance(box, LossResult):
        raise TypeError(f"box must be a LossResult, got {type(box).__name__}")
    check_choice(balancing, "balancing", BALANCING_CHOICES)
    if balancing == "value":
        lam = value_based_task_weight(rank, box)
    elif balancing == "magnitude":
        lam = magnitude_based_task_weight(rank.grad, box.grad)
    else:
        if box_weight is None:
            raise TypeError("balancing='constant' needs box_weight")
        lam = check_positive_float(box_weight, "box_weight", allow_zero=True)
    if box_weight is not None and balancing != "constant":
        raise ValueError(f"box_weight is only used with balancing='constant', not {balancing!r}")
    r, b = _scalar_loss(rank, "rank.loss"), _scalar_loss(box, "box.loss")
    return LossResult(r + lam * b, np.array(rank.grad, dtype=np.float64, copy=True),
                      {"rank": r, "box": b, "lambda_box": lam, "weighted_box": lam * b,
                       "grad_boxes": lam * np.asarray(box.grad, dtype=np.float64)})


register_conventions(
    Convention(
        "class_reduce", "Which classification score weights a box", ("score_based_weights",), "max",
        CLASS_REDUCE_CHOICES,
        "'max': the largest sigmoid score over classes; 'label': the score of the ground-truth class.",
        "The RS authors' ATSS/PAA heads take the max over classes of the detached sigmoid scores; the paper "
        "says 'its classification score' (details in its Supp. Mat., not in the text)."),
    Convention(
        "balancing", "Task-level balancing coefficient lambda_box", ("task_balanced_loss",), "value",
        BALANCING_CHOICES,
        "'value': L_RS / L_box; 'magnitude': |dL_RS/ds|_1 / |dL_box/db|_1; 'constant': box_weight. lambda is a "
        "constant in backprop in every case.",
        "RS Sec. 5.2 uses value-based balancing (the authors' code detaches L_RS and uses L_box.item()); "
        "magnitude-based is the alternative it reports as analysed."),
    Convention(
        None, "Zero box loss in task balancing", ("value_based_task_weight", "magnitude_based_task_weight",
                                                  "task_balanced_loss"), "lambda = 0", (),
        "A zero box loss (value-based) or zero box gradient (magnitude-based) gives lambda_box = 0.",
        "The authors' code divides by zero."),
)

"""GIoU Loss (RS Sec. 5.2, APE Eq. 4): public function, validator and record.

``giou_loss`` is three steps like every loss: :func:`validate_giou` (every argument and
option, before anything is computed), the backend's computation (only the NumPy reference
:func:`~rankspec.refimpl.reference.detector.giou_reference`; the loss is O(N)), the result.
The IoU / GIoU helpers and task balancing are in :mod:`rankspec.refimpl.reference.detector`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._result import LossResult
from .._validate import as_float_array, check_choice, check_positive_float
from ..record import Convention, LossRecord, register_record
from ..reference.detector import GIOU_REDUCTION_CHOICES, check_boxes, giou_reference
from ..registry import implements

__all__ = ["GIoUInput", "validate_giou", "giou_loss", "GIOU_RECORD", "GIOU_CONVENTIONS"]

GIOU_CONVENTIONS = (
    Convention(
        "eps", "Guard on union and enclosing area", ("box_iou", "generalized_box_iou"), 0.0,
        (0.0, 1e-6),
        "0: exact IoU / GIoU, with IoU = 0 for a zero-area union and GIoU = 0 for a zero-area enclosing box; "
        "eps > 0: union and enclosing area are clamped at eps.",
        "mmdetection's bbox_overlaps / GIoU Loss (used by the RS and APE authors) clamp both at eps = 1e-6, "
        "which shifts IoUs of small boxes by about eps / area."),
    Convention(
        "reduction", "Normaliser of the (score-weighted) GIoU Loss", (), "weighted_mean",
        GIOU_REDUCTION_CHOICES,
        "'weighted_mean': sum w_i (1 - GIoU_i) / sum w_i (sum w_i < 1e-12 -> divide by 1); 'mean': / N; "
        "'sum': no division.",
        "The RS authors' heads divide the score-weighted GIoU Loss by the sum of the weights."),
    Convention(
        None, "Sub-gradients of the GIoU Loss", (), "PyTorch's", (),
        "Ties in max/min split the gradient evenly; max(x, 0) passes the gradient at x = 0.",
        "Whatever autograd of the authors' PyTorch code does, which is the same rule."),
)


@dataclass(frozen=True)
class GIoUInput:
    """Validated input of :func:`giou_loss`."""

    pred: np.ndarray  #: (N, 4) float64 predicted boxes
    target: np.ndarray  #: (N, 4) float64 target boxes
    weights: np.ndarray  #: (N,) float64 non-negative weights (ones when not given)
    reduction: str
    eps: float


def validate_giou(pred_boxes, target_boxes, weights=None, *, reduction="weighted_mean", eps=0.0,
                  backend="numpy") -> GIoUInput:
    """Every check of :func:`giou_loss`, in order: boxes (shape (N, 4), finite, x2 >= x1, y2 >= y1),
    matching shapes, ``eps`` (finite, >= 0), ``reduction``, ``weights`` ((N,), finite, >= 0).  O(N)."""
    p, t = check_boxes(pred_boxes, "pred_boxes"), check_boxes(target_boxes, "target_boxes")
    if p.shape != t.shape:
        raise ValueError(f"pred_boxes has shape {p.shape} but target_boxes has shape {t.shape}; they must match")
    eps = check_positive_float(eps, "eps", allow_zero=True)
    check_choice(reduction, "reduction", GIOU_REDUCTION_CHOICES)
    N = p.shape[0]
    if weights is None:
        w = np.ones(N)
    else:
        w = as_float_array(weights, "weights", allow_empty=True)
        if w.shape != (N,):
            raise ValueError(f"weights must have shape ({N},) (one per box), got {w.shape}")
        if np.any(w < 0):
            raise ValueError(f"weights must be >= 0, found {w[w < 0][0]!r}")
    return GIoUInput(p, t, w, reduction, eps)


GIOU_RECORD = register_record(LossRecord(
    name="giou_loss", title="GIoU Loss 1 - GIoU with optional per-box weights",
    citations=(("RS", "Eq. 14 (L_box)"), ("RS", "Sec. 5.2 (GIoU Loss, score-based weighting)"), ("APE", "Eq. 4")),
    family="detector", validate=validate_giou, reference=giou_reference, conventions=GIOU_CONVENTIONS,
    kernels={}, label_kind="boxes", case_builder="rankspec.refimpl.cases:build_giou_case",
    terms=("giou", "per_box", "normalizer"), input_names=("pred_boxes", "target_boxes"),
    labels_name="target_boxes"))


@implements(*GIOU_RECORD.citations, name=GIOU_RECORD.title, family=GIOU_RECORD.family)
def giou_loss(pred_boxes, target_boxes, weights=None, *, reduction: str = "weighted_mean",
              eps: float = 0.0) -> LossResult:
    r"""GIoU Loss :math:`\sum_i w_i (1 - \mathrm{GIoU}(\hat b_i, b_i)) / Z` and its gradient.

    Parameters
    ----------
    pred_boxes, target_boxes:
        ``(N, 4)`` arrays of ``(x1, y1, x2, y2)``, row i predicting row i.
    weights:
        Optional ``(N,)`` non-negative weights :math:`w_i` (default all 1), e.g.
        :func:`~rankspec.refimpl.reference.detector.score_based_weights`.  They are constants: no
        gradient flows to them (the RS authors detach the scores).
    reduction:
        ``"weighted_mean"`` (default, RS authors' code): :math:`Z = \sum_i w_i`,
        or ``Z = 1`` when :math:`\sum_i w_i < 10^{-12}`; ``"mean"``:
        :math:`Z = N`; ``"sum"``: :math:`Z = 1`.  With unit weights the two
        means agree.
    eps:
        See :func:`~rankspec.refimpl.reference.detector.generalized_box_iou`.

    Returns
    -------
    LossResult
        ``grad``: the analytic gradient :math:`\partial\mathcal{L}/\partial\hat b`,
        shape ``(N, 4)`` (PyTorch's sub-gradients at ties).  ``terms``:
        ``giou`` (array ``(N,)``), ``per_box`` (array :math:`1 - \mathrm{GIoU}_i`),
        ``normalizer`` (Z).  ``N == 0``: loss 0 and an empty ``(0, 4)`` gradient.
        Finite for every finite input (each pair is computed in units where no area over- or
        underflows).

    Notes
    -----
    With :math:`I, U, C` the intersection, union and enclosing areas,
    :math:`\mathrm{GIoU} = I/U + U/C - 1` and

    .. math:: d\,\mathrm{GIoU} = \frac{dI}{U} - \frac{I\,dU}{U^2} + \frac{dU}{C} - \frac{U\,dC}{C^2},
              \qquad dU = dA_{\hat b} - dI.

    Time and memory O(N).
    """
    return GIOU_RECORD.run("numpy", pred_boxes, target_boxes, weights, reduction=reduction, eps=eps)

"""Moved: the IoU / GIoU helpers and task balancing to :mod:`rankspec.refimpl.reference.detector`,
the GIoU Loss to :mod:`rankspec.refimpl.losses.giou` (this path stays importable)."""

from .losses.giou import giou_loss  # noqa: F401
from .reference.detector import (BALANCING_CHOICES, CLASS_REDUCE_CHOICES, GIOU_REDUCTION_CHOICES,  # noqa: F401
                                 WEIGHT_SUM_EPS, _giou_eps, _giou_units, box_iou, check_boxes,
                                 generalized_box_iou, giou_reference, magnitude_based_task_weight,
                                 score_based_weights, task_balanced_loss, value_based_task_weight)

__all__ = ["box_iou", "generalized_box_iou", "giou_loss", "score_based_weights", "value_based_task_weight",
           "magnitude_based_task_weight", "task_balanced_loss", "GIOU_REDUCTION_CHOICES", "CLASS_REDUCE_CHOICES",
           "BALANCING_CHOICES"]

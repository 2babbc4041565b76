"""Anchor-to-ground-truth assignment for the dense heads.

Every assigner returns an :class:`AssignResult` for one image: per anchor the
index of its ground-truth box (``>= 0``), :data:`NEGATIVE` (``-1``,
background) or :data:`IGNORED` (``-2``, takes part in no loss).  These are the
label codes of :mod:`rankspec.refimpl.reference.rankdet` (``BACKGROUND = -1``,
``IGNORE = -2``) and of the heads' flattened labels.

* :func:`max_iou_assign` - mmdet's ``MaxIoUAssigner`` (RetinaNet: positive
  ``IoU >= 0.5``, negative ``< 0.4``, plus low-quality matches) and
  OpenPCDet's ``AxisAlignedTargetAssigner`` rule per class (KITTI car:
  ``>= 0.6`` / ``< 0.45``, plus forced matches), on any overlap matrix.
* :func:`atss_assign` - mmdet's ``ATSSAssigner`` (Zhang et al.): per level the
  ``topk`` anchors nearest to a box's centre are candidates; a candidate is
  positive when its IoU is at least the mean plus the standard deviation of its
  box's candidate IoUs and its centre lies inside the box.

All assignment runs without gradient.  Cost: O(A G) time and memory for A
anchors and G boxes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

__all__ = ["NEGATIVE", "IGNORED", "AssignResult", "max_iou_assign", "atss_assign", "box_overlaps_2d"]

NEGATIVE = -1
IGNORED = -2


@dataclass
class AssignResult:
    """Assignment of one image's anchors."""

    gt_inds: torch.Tensor  #: (A,) int64: matched box index, NEGATIVE (-1) or IGNORED (-2)
    max_overlaps: torch.Tensor  #: (A,) the anchor's IoU with its matched box (0 when there is none)

    @property
    def positive(self) -> torch.Tensor:
        return self.gt_inds >= 0

    def labels(self, gt_labels: torch.Tensor) -> torch.Tensor:
        """Per-anchor class: the matched box's label, or NEGATIVE / IGNORED."""
        out = self.gt_inds.clone()
        pos = self.gt_inds >= 0
        out[pos] = gt_labels[self.gt_inds[pos]].long()
        return out


def _check_thresholds(pos_iou_thr: float, neg_iou_thr: float, min_pos_iou: float) -> None:
    for name, v in (("pos_iou_thr", pos_iou_thr), ("neg_iou_thr", neg_iou_thr), ("min_pos_iou", min_pos_iou)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise ValueError(f"{name} must be a number in [0, 1], got {v!r}")
    if neg_iou_thr > pos_iou_thr:
        raise ValueError(f"neg_iou_thr ({neg_iou_thr}) must not exceed pos_iou_thr ({pos_iou_thr})")


@torch.no_grad()
def max_iou_assign(overlaps: torch.Tensor, pos_iou_thr: float = 0.5, neg_iou_thr: float = 0.4, *,
                   min_pos_iou: float = 0.0, match_low_quality: bool = True) -> AssignResult:
    """Threshold assignment on an ``(A, G)`` IoU matrix (anchors x boxes).

    1. every anchor is IGNORED; anchors whose best IoU is ``< neg_iou_thr``
       are NEGATIVE; those with best IoU ``>= pos_iou_thr`` are matched to
       their best box (ties: lowest box index);
    2. ``match_low_quality``: for every box whose best IoU ``m`` is ``> 0``
       and ``>= min_pos_iou``, every anchor with IoU equal to ``m`` becomes
       positive too (mmdet's ``gt_max_assign_all``, OpenPCDet's forced
       matches), matched to the box for which it has the highest IoU among the
       boxes it is a best anchor of.  Unlike mmdet, a box that overlaps no
       anchor (``m = 0``) forces nothing.

    With no box every anchor is NEGATIVE.
    """
    _check_thresholds(pos_iou_thr, neg_iou_thr, min_pos_iou)
    if overlaps.dim() != 2:
        raise ValueError(f"overlaps must be an (A, G) matrix, got shape {tuple(overlaps.shape)}")
    A, G = overlaps.shape
    dev = overlaps.device
    if G == 0:
        return AssignResult(torch.full((A,), NEGATIVE, dtype=torch.long, device=dev), overlaps.new_zeros(A))
    ov = overlaps.detach()
    max_ov, argmax = ov.max(dim=1)  # first maximal box on ties
    gt_inds = torch.full((A,), IGNORED, dtype=torch.long, device=dev)
    gt_inds[max_ov < neg_iou_thr] = NEGATIVE
    pos = max_ov >= pos_iou_thr
    gt_inds[pos] = argmax[pos]
    if match_low_quality and A > 0:
        gt_max = ov.max(dim=0).values  # (G,)
        forced = (ov == gt_max[None, :]) & (gt_max > 0)[None, :] & (gt_max >= min_pos_iou)[None, :]
        anchors = forced.any(dim=1)
        if bool(anchors.any()):
            masked = torch.where(forced, ov, torch.full_like(ov, -1.0))
            gt_inds[anchors] = masked[anchors].argmax(dim=1)
    matched = gt_inds >= 0
    max_overlaps = torch.where(matched, ov.gather(1, gt_inds.clamp_min(0)[:, None]).squeeze(1), ov.new_zeros(A))
    return AssignResult(gt_inds, max_overlaps)


def box_overlaps_2d(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU matrix ``(N, M)`` of ``(x1, y1, x2, y2)`` boxes (0 for a zero-area union)."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp_min(0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    ok = union > 0
    return torch.where(ok, inter / torch.where(ok, union, torch.ones_like(union)), torch.zeros_like(union))


@torch.no_grad()
def atss_assign(anchors: torch.Tensor, num_level_anchors: Sequence[int], gt_boxes: torch.Tensor,
                topk: int = 9) -> AssignResult:
    """ATSS assignment (mmdet's ``ATSSAssigner``) of ``(A, 4)`` anchors to ``(G, 4)`` boxes.

    For each box: on each level the ``min(topk, level size)`` anchors whose
    centres are nearest to the box centre are candidates (ties, e.g. anchors
    sharing a centre, by lower anchor index; mmdet's ``topk`` leaves them to
    the sort); the IoU threshold is
    the mean plus the (unbiased) standard deviation of the candidates' IoUs;
    candidates at or above it whose centre lies strictly inside the box
    (margin 0.01, as mmdet) are positive.  An anchor positive for several boxes
    takes the one with the highest IoU.  There are no ignored anchors: the
    rest are NEGATIVE.
    """
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk must be an integer >= 1, got {topk!r}")
    A, G = anchors.shape[0], gt_boxes.shape[0]
    if sum(num_level_anchors) != A:
        raise ValueError(f"num_level_anchors sums to {sum(num_level_anchors)} but there are {A} anchors")
    dev = anchors.device
    if G == 0 or A == 0:
        return AssignResult(torch.full((A,), NEGATIVE, dtype=torch.long, device=dev), anchors.new_zeros(A))
    overlaps = box_overlaps_2d(anchors, gt_boxes)  # (A, G)
    ac = (anchors[:, :2] + anchors[:, 2:]) / 2
    gc = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    dist = torch.cdist(ac, gc)  # (A, G)
    candidates = []
    start = 0
    for n in num_level_anchors:
        if n > 0:
            k = min(topk, n)
            # nearest first; ties (anchors sharing a centre) by lower anchor index, so the result is deterministic
            idx = torch.sort(dist[start:start + n], dim=0, stable=True).indices[:k]  # (k, G)
            candidates.append(idx + start)
        start += n
    cand = torch.cat(candidates, dim=0)  # (K, G)
    cand_ov = overlaps.gather(0, cand)  # (K, G)
    if cand.shape[0] > 1:
        thr = cand_ov.mean(dim=0) + cand_ov.std(dim=0)
    else:
        thr = cand_ov.mean(dim=0)
    is_pos = cand_ov >= thr[None, :]
    cx, cy = ac[cand, 0], ac[cand, 1]  # (K, G)
    margin = torch.stack([cx - gt_boxes[None, :, 0], cy - gt_boxes[None, :, 1], gt_boxes[None, :, 2] - cx,
                          gt_boxes[None, :, 3] - cy], dim=-1).amin(dim=-1)
    is_pos &= margin > 0.01
    sel = torch.full((A, G), -1.0, dtype=overlaps.dtype, device=dev)  # IoU where the anchor is a positive of g
    g_idx = torch.arange(G, device=dev)[None, :].expand_as(cand)
    sel[cand[is_pos], g_idx[is_pos]] = overlaps[cand[is_pos], g_idx[is_pos]]
    best, arg = sel.max(dim=1)
    gt_inds = torch.where(best >= 0, arg, torch.full_like(arg, NEGATIVE))
    max_overlaps = torch.where(best >= 0, best, overlaps.new_zeros(A))
    return AssignResult(gt_inds, max_overlaps)

r"""A dense multi-level 2D detection head in mmdet's shapes, and its loss adapter.

Tensor layout (mmdet's ``AnchorHead`` / ``RetinaHead`` / ``ATSSHead``)
----------------------------------------------------------------------
* ``cls_scores``: a list over pyramid levels of ``[B, A*C, H_l, W_l]`` raw
  sigmoid logits, channel ``a*C + c`` = anchor ``a``, class ``c`` (no
  background channel);
* ``bbox_preds``: a list of ``[B, A*4, H_l, W_l]`` deltas
  (:class:`~rankspec.adapters.heads.boxes.DeltaXYWHCoder`);
* ``anchors``: a list of ``[H_l*W_l*A, 4]`` boxes ``(x1, y1, x2, y2)``, row
  ``(h*W_l + w)*A + a`` (mmdet's ``AnchorGenerator.grid_priors`` order),
  shared by the images;
* ground truth per image: ``gt_boxes[i]`` ``[G_i, 4]``, ``gt_labels[i]``
  ``[G_i]`` with class ids ``0..C-1`` (mmdet's ``gt_bboxes`` / ``gt_labels``).

Flattening is ``permute(0, 2, 3, 1).reshape(B, -1, C)`` per level, levels
concatenated: row ``r`` of image ``i`` is anchor ``r`` of the concatenated
anchors - exactly how mmdet's heads flatten before their losses.

What the adapter does (:func:`dense2d_targets`, :func:`dense2d_loss`)
----------------------------------------------------------------------
1. assigns anchors to boxes - ``assigner="max_iou"`` (RetinaNet: positive
   IoU >= 0.5, negative < 0.4, low-quality matches) or ``"atss"`` (top 9 per
   level, mean + std threshold);
2. vectorises labels for a sigmoid head (one score per class; background rows
   all zero), decodes the predicted boxes of the positives and takes the IoU
   with their boxes as continuous labels (RS, bucketed RS, APE, IoU-guided
   ranking) - detached, plus a differentiable copy for RankDetNet's IoU
   gradient (RankDet Sec. 3.3);
3. calls the chosen classification loss (:mod:`.losses`) with the pyramid
   level of every row (RankDetNet groups its IoU-guided pairs per class and
   level) and the image index (``scope``);
4. adds the box loss: GIoU Loss of the positives' decoded boxes
   (:func:`rankspec.adapters.torch.detector.giou_loss`), weighted by the
   detached classification score of each positive (RS Sec. 5.2 score-based
   weighting) and balanced against the classification loss with
   ``lambda = L_cls / L_box`` recomputed every iteration (value-based task
   balancing, RS Sec. 5.2, no gradient through lambda), or a constant weight.

Per-loss defaults of the box part (``balancing`` / ``box_weight`` /
``score_weighting``): the ranking losses of the AP / RS / APE family use
value-based balancing with score weighting (RS Sec. 5); RankDetNet uses the
constant 1 of its 1:1:1:1 weighting (RankDet Sec. 3.4); DR uses 1 (its tau = 4
is inside the loss); focal loss uses 2, ATSS's lambda_box (RS Eq. 13).

aLRP Loss (``loss="alrp"``) has no separate box loss: as in the aLRP authors'
heads, ``loss_bbox`` is aLRP's localisation component (the running sum of the
positives' e_loc = GIoU loss / (2 (1 - tau)) in descending-logit order over
their detached rank; :func:`~.losses.alrp_components`) times the
self-balancing weight ``balancing="self"``: ``box_weight`` (default 50, the
authors' initial value) in :func:`dense2d_loss`, re-estimated every
``sb_period`` calls by :class:`Dense2DLoss` from the means of the two
components (:func:`rankspec.refimpl.reference.alrp.self_balancing_weight`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from rankspec.adapters.torch.detector import generalized_box_iou, giou_loss, value_based_task_weight
from rankspec.refimpl._validate import check_choice

from .assign import NEGATIVE, atss_assign, box_overlaps_2d, max_iou_assign
from .boxes import DeltaXYWHCoder, check_boxes_2d, check_labels
from .losses import LOSS_KEYS, LOSS_NAMES, FlatTargets, alrp_components, classification_loss, resolve_scope

__all__ = ["AnchorGenerator2D", "DenseHead2D", "Dense2DTargets", "dense2d_targets", "dense2d_loss", "Dense2DLoss",
           "dense2d_predict", "dense2d_score_index", "batched_nms", "BOX_DEFAULTS_2D", "ASSIGNERS"]

ASSIGNERS = ("max_iou", "atss")
BALANCINGS = ("value", "constant", "self")

#: loss -> (balancing, box_weight, score_weighting) of the box part
BOX_DEFAULTS_2D: Dict[str, Tuple[str, float, bool]] = {name: ("value", 1.0, True) for name in LOSS_NAMES}
BOX_DEFAULTS_2D.update({k: ("constant", 1.0, False) for k in LOSS_NAMES if k.startswith("rankdet")})
BOX_DEFAULTS_2D.update({"dr": ("constant", 1.0, False), "focal": ("constant", 2.0, False)})
#: aLRP: the self-balancing weight's initial value (the aLRP authors' SB_weight = 50)
BOX_DEFAULTS_2D["alrp"] = ("self", 50.0, False)


class AnchorGenerator2D:
    """mmdet's ``AnchorGenerator``: per level ``A = len(ratios) * scales_per_octave`` anchors per location.

    Anchor ``(ratio r, scale s)`` of a level with stride ``t`` has width
    ``t * s / sqrt(r)`` and height ``t * s * sqrt(r)`` with
    ``s = octave_base_scale * 2**(k / scales_per_octave)``, centred at
    ``((w + center_offset) * t, (h + center_offset) * t)``; anchors are ordered
    ratio-major, scale-minor within a location (mmdet's order).  RetinaNet:
    strides (8, ..., 128), ``octave_base_scale=4``, ``scales_per_octave=3``,
    ratios (0.5, 1, 2), ``center_offset=0``.
    """

    def __init__(self, strides: Sequence[int] = (8, 16, 32, 64, 128), octave_base_scale: float = 4.0,
                 scales_per_octave: int = 3, ratios: Sequence[float] = (0.5, 1.0, 2.0), center_offset: float = 0.0):
        if len(strides) == 0 or any(not s > 0 for s in strides):
            raise ValueError(f"strides must be a non-empty list of positive numbers, got {strides!r}")
        if len(ratios) == 0 or any(not r > 0 for r in ratios):
            raise ValueError(f"ratios must be positive, got {ratios!r}")
        if not octave_base_scale > 0 or int(scales_per_octave) < 1:
            raise ValueError("octave_base_scale must be > 0 and scales_per_octave >= 1")
        self.strides = tuple(float(s) for s in strides)
        self.ratios = tuple(float(r) for r in ratios)
        self.scales = tuple(octave_base_scale * 2 ** (k / scales_per_octave) for k in range(int(scales_per_octave)))
        self.center_offset = float(center_offset)

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    @property
    def num_base_anchors(self) -> int:
        return len(self.ratios) * len(self.scales)

    def base_anchors(self, stride: float) -> torch.Tensor:
        ws, hs = [], []
        for r in self.ratios:
            for s in self.scales:
                ws.append(stride * s / math.sqrt(r))
                hs.append(stride * s * math.sqrt(r))
        w, h = torch.tensor(ws, dtype=torch.float64), torch.tensor(hs, dtype=torch.float64)
        return torch.stack([-w / 2, -h / 2, w / 2, h / 2], dim=1)

    def grid_anchors(self, featmap_sizes: Sequence[Tuple[int, int]], device=None,
                     dtype=torch.float32) -> List[torch.Tensor]:
        """Anchors ``[H*W*A, 4]`` of each level for feature maps of the given ``(H, W)`` sizes."""
        if len(featmap_sizes) != self.num_levels:
            raise ValueError(f"featmap_sizes has {len(featmap_sizes)} levels but the generator has "
                             f"{self.num_levels} strides")
        out = []
        for (H, W), t in zip(featmap_sizes, self.strides):
            ys = (torch.arange(H, dtype=torch.float64) + self.center_offset) * t
            xs = (torch.arange(W, dtype=torch.float64) + self.center_offset) * t
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)  # (H*W, 1, 4), row-major
            out.append((shifts + self.base_anchors(t)[None]).reshape(-1, 4).to(device=device, dtype=dtype))
        return out


class DenseHead2D(nn.Module):
    """A RetinaNet-style head: shared convs, then per-anchor class logits and box deltas, shared across levels.

    ``forward(feats)`` with a list of ``[B, in_channels, H_l, W_l]`` maps
    returns ``(cls_scores, bbox_preds)`` in mmdet's layout (module docstring).
    The class bias starts at ``-log((1 - prior_prob) / prior_prob)`` (focal
    loss initialisation).
    """

    def __init__(self, num_classes: int, in_channels: int, feat_channels: int = 32, stacked_convs: int = 1,
                 num_anchors: int = 1, prior_prob: float = 0.01):
        super().__init__()
        if num_classes < 1 or num_anchors < 1:
            raise ValueError("num_classes and num_anchors must be >= 1")
        self.num_classes, self.num_anchors = int(num_classes), int(num_anchors)
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        ch = in_channels
        for _ in range(stacked_convs):
            self.cls_convs.append(nn.Sequential(nn.Conv2d(ch, feat_channels, 3, padding=1), nn.ReLU()))
            self.reg_convs.append(nn.Sequential(nn.Conv2d(ch, feat_channels, 3, padding=1), nn.ReLU()))
            ch = feat_channels
        self.conv_cls = nn.Conv2d(ch, self.num_anchors * self.num_classes, 3, padding=1)
        self.conv_reg = nn.Conv2d(ch, self.num_anchors * 4, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.conv_cls.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: Sequence[torch.Tensor]):
        cls_scores, bbox_preds = [], []
        for x in feats:
            c, r = x, x
            for conv in self.cls_convs:
                c = conv(c)
            for conv in self.reg_convs:
                r = conv(r)
            cls_scores.append(self.conv_cls(c))
            bbox_preds.append(self.conv_reg(r))
        return cls_scores, bbox_preds


# --------------------------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------------------------

@dataclass
class Dense2DTargets:
    """Everything :func:`dense2d_targets` derives from one batch (rows = anchors of all images)."""

    flat: FlatTargets  #: logits / labels / IoUs / image ids / levels, [B*N] rows (image-major)
    deltas: torch.Tensor  #: [B*N, 4] predicted deltas (with graph)
    anchors: torch.Tensor  #: [N, 4] the concatenated anchors of one image
    gt_index: torch.Tensor  #: [B*N] matched box index within its image, -1 negative, -2 ignored
    pos_rows: torch.Tensor  #: [P] rows of the positives
    pos_pred_boxes: torch.Tensor  #: [P, 4] decoded predicted boxes of the positives (with graph)
    pos_gt_boxes: torch.Tensor  #: [P, 4] their ground-truth boxes
    num_level_anchors: Tuple[int, ...]  #: anchors per level (per image)
    num_classes: int
    num_images: int

    @property
    def num_positives(self) -> int:
        return int(self.pos_rows.numel())


def _check_level_outputs(cls_scores, bbox_preds, anchors):
    for name, v in (("cls_scores", cls_scores), ("bbox_preds", bbox_preds), ("anchors", anchors)):
        if not isinstance(v, (list, tuple)) or len(v) == 0:
            raise TypeError(f"{name} must be a non-empty list with one tensor per pyramid level")
    if not len(cls_scores) == len(bbox_preds) == len(anchors):
        raise ValueError(f"mismatched levels: cls_scores has {len(cls_scores)}, bbox_preds {len(bbox_preds)} and "
                         f"anchors {len(anchors)} levels; they must be equal")
    B = None
    C = None
    A = None
    for lvl, (c, b, a) in enumerate(zip(cls_scores, bbox_preds, anchors)):
        for name, t, dims in ((f"cls_scores[{lvl}]", c, 4), (f"bbox_preds[{lvl}]", b, 4), (f"anchors[{lvl}]", a, 2)):
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise TypeError(f"{name} must be a floating-point torch.Tensor")
            if t.dim() != dims:
                want = "[B, A*C, H, W]" if name.startswith("cls") else "[B, A*4, H, W]" if name.startswith("bbox") \
                    else "[H*W*A, 4]"
                raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
        Bl, _, H, W = c.shape
        if B is None:
            B = Bl
        if Bl != B or b.shape[0] != B:
            raise ValueError(f"cls_scores[{lvl}] and bbox_preds[{lvl}] must have batch size {B}, got {Bl} and "
                             f"{b.shape[0]}")
        if tuple(b.shape[2:]) != (H, W):
            raise ValueError(f"bbox_preds[{lvl}] has spatial size {tuple(b.shape[2:])} but cls_scores[{lvl}] has "
                             f"{(H, W)}; they must match")
        if b.shape[1] % 4:
            raise ValueError(f"bbox_preds[{lvl}] must have A*4 channels, got {b.shape[1]}")
        Al = b.shape[1] // 4
        if A is None:
            A = Al
        if Al != A:
            raise ValueError(f"bbox_preds[{lvl}] has {Al} anchors per location but level 0 has {A}")
        if c.shape[1] % A:
            raise ValueError(f"cls_scores[{lvl}] has {c.shape[1]} channels, not a multiple of A = {A} anchors")
        Cl = c.shape[1] // A
        if C is None:
            C = Cl
        if Cl != C:
            raise ValueError(f"cls_scores[{lvl}] has {Cl} classes but level 0 has {C}")
        if a.shape != (H * W * A, 4):
            raise ValueError(f"anchors[{lvl}] must have shape ({H * W * A}, 4) = (H*W*A, 4) for a {H}x{W} map with "
                             f"A = {A}, got {tuple(a.shape)}")
    return B, A, C


def _check_gt(gt_boxes, gt_labels, B: int, C: int):
    if not isinstance(gt_boxes, (list, tuple)) or len(gt_boxes) != B:
        raise ValueError(f"gt_boxes must be a list of {B} tensors (one per image), got "
                         f"{len(gt_boxes) if isinstance(gt_boxes, (list, tuple)) else type(gt_boxes).__name__}")
    if not isinstance(gt_labels, (list, tuple)) or len(gt_labels) != B:
        raise ValueError(f"gt_labels must be a list of {B} tensors (one per image)")
    boxes = [check_boxes_2d(g, f"gt_boxes[{i}]") for i, g in enumerate(gt_boxes)]
    labels = [check_labels(lab, boxes[i].shape[0], C, f"gt_labels[{i}]") for i, lab in enumerate(gt_labels)]
    return boxes, labels


def _flatten_levels(tensors, B: int, k: int) -> torch.Tensor:
    """mmdet's flattening: per level ``[B, A*k, H, W] -> [B, H, W, A*k] -> [B, H*W*A, k]``, levels concatenated."""
    return torch.cat([t.permute(0, 2, 3, 1).reshape(B, -1, k) for t in tensors], dim=1)


def dense2d_score_index(cls_scores, num_classes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Where every flat score of :func:`dense2d_targets` comes from: ``(level, position)``, both ``[B*N, C]``.

    Entry ``[r, c]`` of ``targets.flat.logits`` is
    ``cls_scores[level[r, c]].reshape(-1)[position[r, c]]``.  Computed by
    passing each level's own element indices through the flattening the loss
    uses, so it is the exact inverse map (the conformance harness scatters the
    reference's flat gradient back to the raw layout with it).  O(B N C).
    """
    if not isinstance(cls_scores, (list, tuple)) or len(cls_scores) == 0:
        raise TypeError("cls_scores must be a non-empty list with one tensor per pyramid level")
    B = cls_scores[0].shape[0]
    pos = [torch.arange(c.numel(), device=c.device).reshape(c.shape) for c in cls_scores]
    lvl = [torch.full(c.shape, k, dtype=torch.long, device=c.device) for k, c in enumerate(cls_scores)]
    C = int(num_classes)
    return _flatten_levels(lvl, B, C).reshape(-1, C), _flatten_levels(pos, B, C).reshape(-1, C)


def dense2d_targets(cls_scores, bbox_preds, anchors, gt_boxes, gt_labels, *, assigner: str = "max_iou",
                    pos_iou_thr: float = 0.5, neg_iou_thr: float = 0.4, min_pos_iou: float = 0.0,
                    atss_topk: int = 9, coder: Optional[DeltaXYWHCoder] = None) -> Dense2DTargets:
    """Assign, vectorise labels and compute the continuous IoU labels of one batch (module docstring).

    Raises ``ValueError`` / ``TypeError`` naming the argument for mismatched
    levels, wrong shapes, malformed ground-truth boxes (``x2 <= x1``, NaN) and
    labels out of ``0..C-1``.  Time O(B (N G + N C)), memory O(N G).
    """
    check_choice(assigner, "assigner", ASSIGNERS)
    B, A, C = _check_level_outputs(cls_scores, bbox_preds, anchors)
    boxes, labels = _check_gt(gt_boxes, gt_labels, B, C)
    coder = coder or DeltaXYWHCoder()
    device = cls_scores[0].device
    # mmdet's flattening: [B, A*C, H, W] -> [B, H, W, A*C] -> [B, H*W*A, C]
    logits = _flatten_levels(cls_scores, B, C)
    deltas = _flatten_levels(bbox_preds, B, 4)
    anc = torch.cat([a.to(device=device, dtype=deltas.dtype) for a in anchors], dim=0)
    num_level = tuple(int(a.shape[0]) for a in anchors)
    N = anc.shape[0]
    level_of = torch.repeat_interleave(torch.arange(len(anchors), device=device),
                                       torch.tensor(num_level, device=device))
    gt_index = torch.full((B, N), NEGATIVE, dtype=torch.long, device=device)
    row_labels = torch.full((B, N), NEGATIVE, dtype=torch.long, device=device)
    gt_of_row = torch.zeros(B, N, 4, dtype=deltas.dtype, device=device)
    for i in range(B):
        g = boxes[i].to(device=device, dtype=deltas.dtype)
        if assigner == "atss":
            res = atss_assign(anc.detach(), num_level, g, topk=atss_topk)
        else:
            res = max_iou_assign(box_overlaps_2d(anc.detach(), g), pos_iou_thr, neg_iou_thr,
                                 min_pos_iou=min_pos_iou)
        gt_index[i] = res.gt_inds
        row_labels[i] = res.labels(labels[i].to(device))
        pos = res.gt_inds >= 0
        gt_of_row[i, pos] = g[res.gt_inds[pos]]
    flat_rows = gt_index.reshape(-1)
    pos_rows = torch.nonzero(flat_rows >= 0).squeeze(1)
    deltas_f = deltas.reshape(B * N, 4)
    anc_rows = anc.repeat(B, 1)
    pos_pred = coder.decode(anc_rows[pos_rows], deltas_f[pos_rows])
    pos_gt = gt_of_row.reshape(B * N, 4)[pos_rows]
    iou_graph_pos = _aligned_iou(pos_pred, pos_gt)
    ious_graph = torch.zeros(B * N, dtype=deltas.dtype, device=device).index_put((pos_rows,), iou_graph_pos)
    gious = torch.zeros(B * N, dtype=deltas.dtype, device=device).index_put(
        (pos_rows,), _aligned_giou(pos_pred.detach(), pos_gt).to(deltas.dtype))
    flat = FlatTargets(logits=logits.reshape(B * N, C), labels=row_labels.reshape(-1), ious=ious_graph.detach(),
                       image_ids=torch.arange(B, device=device).repeat_interleave(N), levels=level_of.repeat(B),
                       num_images=B, ious_graph=ious_graph, gious=gious)
    return Dense2DTargets(flat=flat, deltas=deltas_f, anchors=anc, gt_index=flat_rows, pos_rows=pos_rows,
                          pos_pred_boxes=pos_pred, pos_gt_boxes=pos_gt, num_level_anchors=num_level, num_classes=C,
                          num_images=B)


def _valid_boxes(pred: torch.Tensor) -> torch.Tensor:
    """A decoded box can be inverted only through extreme deltas; keep it a valid box for the GIoU."""
    x1 = torch.minimum(pred[:, 0], pred[:, 2])
    y1 = torch.minimum(pred[:, 1], pred[:, 3])
    x2 = torch.maximum(pred[:, 0], pred[:, 2])
    y2 = torch.maximum(pred[:, 1], pred[:, 3])
    return torch.stack([x1, y1, x2, y2], dim=1)


def _aligned_giou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """GIoU of row-aligned boxes (the GIoU of the box loss: same box repair), with graph to ``pred``."""
    if pred.shape[0] == 0:
        return pred.sum(dim=1)
    return generalized_box_iou(_valid_boxes(pred), gt.detach().to(pred.dtype), aligned=True)


def _aligned_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Differentiable IoU of row-aligned boxes (a predicted box may be degenerate: IoU 0)."""
    lt = torch.maximum(pred[:, :2], gt[:, :2])
    rb = torch.minimum(pred[:, 2:], gt[:, 2:])
    wh = (rb - lt).clamp_min(0)
    inter = wh[:, 0] * wh[:, 1]
    area_p = (pred[:, 2] - pred[:, 0]).clamp_min(0) * (pred[:, 3] - pred[:, 1]).clamp_min(0)
    area_g = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
    union = area_p + area_g - inter
    ok = union > 0
    return torch.where(ok, inter / torch.where(ok, union, torch.ones_like(union)), torch.zeros_like(union))


# --------------------------------------------------------------------------------------------
# loss
# --------------------------------------------------------------------------------------------

def _box_part(t_cls: torch.Tensor, pred: torch.Tensor, gt: torch.Tensor, weights: Optional[torch.Tensor],
              balancing: str, box_weight: float, zero: torch.Tensor):
    if pred.shape[0] == 0:
        return zero, torch.zeros((), dtype=zero.dtype)
    box = giou_loss(_valid_boxes(pred), gt.detach(), weights)
    if balancing == "value":
        lam = value_based_task_weight(t_cls.detach().clamp_min(0).reshape(()), box.detach().reshape(()))
    else:
        lam = torch.tensor(float(box_weight), dtype=box.dtype, device=box.device)
    return lam.to(box.dtype) * box, lam.detach()


def dense2d_loss(cls_scores, bbox_preds, anchors, gt_boxes, gt_labels, *, loss: str = "rs",
                 scope: Optional[str] = None, loss_options: Optional[dict] = None, balancing: Optional[str] = None,
                 box_weight: Optional[float] = None, score_weighting: Optional[bool] = None,
                 assigner: str = "max_iou", assigner_options: Optional[dict] = None,
                 coder: Optional[DeltaXYWHCoder] = None, return_targets: bool = False):
    """The loss dict of a dense 2D head trained with loss ``loss`` (module docstring).

    Returns ``{"loss_rank": ..., "loss_sort": ..., "loss_bbox": ...}`` for
    RS / bucketed RS, ``{"loss_cls", "loss_bbox"}`` for AP / bucketed AP /
    APE / DR / focal, ``{"loss_global", "loss_class", "loss_iou",
    "loss_bbox"}`` for RankDetNet: 0-d tensors whose sum is the training
    objective.  ``return_targets=True`` returns ``(losses, targets, info)``
    with the :class:`Dense2DTargets` and ``info = {"lambda_box", "num_pos"}``.
    """
    check_choice(loss, "loss", LOSS_NAMES)
    scope = resolve_scope(loss, scope)
    dflt = BOX_DEFAULTS_2D[loss]
    balancing = check_choice(balancing or dflt[0], "balancing", BALANCINGS)
    box_weight = dflt[1] if box_weight is None else float(box_weight)
    if box_weight < 0:
        raise ValueError(f"box_weight must be >= 0, got {box_weight}")
    score_weighting = dflt[2] if score_weighting is None else bool(score_weighting)
    if (balancing == "self") != (loss == "alrp"):
        raise ValueError(f"balancing='self' (aLRP's self-balancing weight) goes with loss='alrp' and only with it; "
                         f"got balancing={balancing!r} with loss={loss!r}")
    t = dense2d_targets(cls_scores, bbox_preds, anchors, gt_boxes, gt_labels, assigner=assigner, coder=coder,
                        **(assigner_options or {}))
    if loss == "alrp":
        # the authors' aLRP heads: loss_cls = classification component, loss_bbox = w_SB x localisation component
        gious_graph = torch.zeros(t.flat.labels.shape[0], dtype=t.deltas.dtype, device=t.deltas.device).index_put(
            (t.pos_rows,), _aligned_giou(t.pos_pred_boxes, t.pos_gt_boxes).to(t.deltas.dtype))
        cls, loc = alrp_components(t.flat, scope=scope, gious_graph=gious_graph, **(loss_options or {}))
        losses = {"loss_cls": cls, "loss_bbox": float(box_weight) * loc}
        if return_targets:
            return losses, t, {"lambda_box": float(box_weight), "num_pos": t.num_positives,
                               "loss_cls": float(cls.detach()), "loc_component": float(loc.detach())}
        return losses
    losses = classification_loss(loss, t.flat, scope=scope, **(loss_options or {}))
    cls_total = sum(losses.values())
    weights = None
    if score_weighting and t.num_positives:
        weights = torch.sigmoid(t.flat.logits[t.pos_rows].detach()).max(dim=1).values  # RS Sec. 5.2
    zero = t.deltas.sum() * 0.0
    losses["loss_bbox"], lam = _box_part(cls_total, t.pos_pred_boxes, t.pos_gt_boxes, weights, balancing,
                                         box_weight, zero)
    if return_targets:
        return losses, t, {"lambda_box": float(lam), "num_pos": t.num_positives}
    return losses


class Dense2DLoss(nn.Module):
    """``nn.Module`` form of :func:`dense2d_loss` with the options fixed at construction.

    With ``loss="alrp"`` the module keeps the authors' self-balancing state: ``sb_weight`` starts at
    ``box_weight`` (default 50) and every ``sb_period`` calls (the authors: one epoch) becomes
    :func:`~rankspec.refimpl.reference.alrp.self_balancing_weight` of the component values recorded
    since the last re-estimate (then the records are cleared).  ``sb_period`` is an integer >= 1
    (default 7330, an epoch of the authors' COCO schedule); it is an option of aLRP only.
    """

    def __init__(self, loss: str = "rs", *, sb_period: Optional[int] = None, **options):
        super().__init__()
        check_choice(loss, "loss", LOSS_NAMES)
        self.loss, self.options = loss, dict(options)
        if sb_period is not None and loss != "alrp":
            raise ValueError(f"sb_period is the period of aLRP's self-balancing weight; loss={loss!r} takes none")
        period = 7330 if sb_period is None else sb_period
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise ValueError(f"sb_period must be an integer >= 1, got {sb_period!r}")
        self.sb_period = period
        w = options.get("box_weight")
        self.sb_weight = BOX_DEFAULTS_2D["alrp"][1] if w is None else float(w)
        self.sb_history: List[Tuple[float, float]] = []

    @property
    def keys(self) -> tuple:
        return LOSS_KEYS[self.loss] + ("loss_bbox",)

    def forward(self, cls_scores, bbox_preds, anchors, gt_boxes, gt_labels):
        if self.loss != "alrp":
            return dense2d_loss(cls_scores, bbox_preds, anchors, gt_boxes, gt_labels, loss=self.loss, **self.options)
        from rankspec.refimpl.reference.alrp import self_balancing_weight

        opts = {k: v for k, v in self.options.items() if k not in ("box_weight", "return_targets")}
        losses, _, info = dense2d_loss(cls_scores, bbox_preds, anchors, gt_boxes, gt_labels, loss="alrp",
                                       box_weight=self.sb_weight, return_targets=True, **opts)
        self.sb_history.append((info["loss_cls"], info["loc_component"]))
        if len(self.sb_history) >= self.sb_period:
            cls_h, loc_h = zip(*self.sb_history)
            self.sb_weight = self_balancing_weight(cls_h, loc_h, default=self.sb_weight)
            self.sb_history.clear()
        return losses


# --------------------------------------------------------------------------------------------
# inference
# --------------------------------------------------------------------------------------------

def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou_thr: float,
                iou_fn=box_overlaps_2d) -> torch.Tensor:
    """Greedy non-maximum suppression per class; returns kept indices by descending score.

    ``iou_fn(boxes_a, boxes_b) -> (Na, Nb)`` (2D IoU by default; the 3D head
    passes the rotated BEV IoU).  O(K^2) for K boxes.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    if order.numel() == 0:
        return order
    b, c = boxes[order], classes[order]
    iou = iou_fn(b, b)
    same = c[:, None] == c[None, :]
    suppressed = torch.zeros(order.numel(), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(order.numel()):
        if bool(suppressed[i]):
            continue
        keep.append(i)
        suppressed |= (iou[i] > iou_thr) & same[i]
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


@torch.no_grad()
def dense2d_predict(cls_scores, bbox_preds, anchors, *, score_thr: float = 0.0, pre_nms: int = 200,
                    nms_iou: float = 0.5, max_per_image: int = 50, coder: Optional[DeltaXYWHCoder] = None):
    """Detections per image: ``[(boxes [K, 4], scores [K], labels [K]), ...]`` after per-class NMS."""
    B, A, C = _check_level_outputs(cls_scores, bbox_preds, anchors)
    coder = coder or DeltaXYWHCoder()
    logits = _flatten_levels(cls_scores, B, C)
    deltas = _flatten_levels(bbox_preds, B, 4)
    anc = torch.cat([a.to(deltas) for a in anchors], dim=0)
    out = []
    for i in range(B):
        s = torch.sigmoid(logits[i]).reshape(-1)
        k = min(pre_nms, s.numel())
        top = torch.topk(s, k).indices
        top = top[s[top] > score_thr]
        rows, cls = top // C, top % C
        boxes = coder.decode(anc[rows], deltas[i, rows])
        keep = batched_nms(boxes, s[top], cls, nms_iou)[:max_per_image]
        out.append((boxes[keep], s[top][keep], cls[keep]))
    return out

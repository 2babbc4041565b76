"""Conformance of the head pipelines: for every head and every rankspec loss, the loss and the gradient with
respect to the head's raw outputs equal the NumPy reference computed on the flattened scores and labels.

Random batches mix images without ground truth, images with many boxes and crowded images (boxes that overlap
each other).  The reference gradient (rows = anchors) is mapped back to the raw output layout here, by index
arithmetic written independently of the heads' flattening; the box part is checked against the reference
GIoU Loss, score-based weights and value-based task weight (RS Sec. 5.2).
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import rankspec.refimpl as R  # noqa: E402
from rankspec.adapters.heads import (AnchorGenerator2D, AnchorGenerator3D, dense2d_loss,  # noqa: E402
                                     reference_classification_loss, ssd3d_loss)
from rankspec.adapters.heads.losses import LOSS_KEYS, LOSS_NAMES  # noqa: E402
from rankspec.refimpl.reference.detector import score_based_weights, value_based_task_weight  # noqa: E402

RANKSPEC_LOSSES = [n for n in LOSS_NAMES if n not in ("focal", "alrp")]  # aLRP (its own box part): test_heads_alrp.py
SCENARIOS = ("no-gt", "mixed", "crowded")


# --------------------------------------------------------------------------------------------
# random batches
# --------------------------------------------------------------------------------------------

def _gt_2d(rng, scenario, B, size=32):
    boxes, labels = [], []
    for i in range(B):
        if scenario == "no-gt" or (scenario == "mixed" and i == 0):
            n = 0
        elif scenario == "crowded":
            n = int(rng.integers(6, 12))
        else:
            n = int(rng.integers(1, 6))
        if scenario == "crowded":  # boxes clustered around one point: many overlap
            c = rng.uniform(10, 22, 2)
            xy = c + rng.normal(0, 3, (n, 2))
        else:
            xy = rng.uniform(4, size - 4, (n, 2))
        wh = rng.uniform(4, 16, (n, 2))
        b = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1)
        boxes.append(torch.tensor(b, dtype=torch.float64))
        labels.append(torch.tensor(rng.integers(0, 3, n), dtype=torch.long))
    return boxes, labels


def _outputs_2d(rng, B, C, A, sizes, dtype=torch.float64):
    cls = [torch.tensor(rng.normal(0, 1.5, (B, A * C, h, w)), dtype=dtype, requires_grad=True) for h, w in sizes]
    reg = [torch.tensor(rng.normal(0, 0.3, (B, A * 4, h, w)), dtype=dtype, requires_grad=True) for h, w in sizes]
    return cls, reg


def _unflatten_2d(grad_rows: np.ndarray, B, C, A, sizes):
    """[B*N, C] rows (image-major; per image levels concatenated, row (h*W + w)*A + a) -> raw [B, A*C, H, W]."""
    out = [np.zeros((B, A * C, h, w)) for h, w in sizes]
    N = sum(h * w * A for h, w in sizes)
    for b in range(B):
        offset = 0
        for lvl, (H, W) in enumerate(sizes):
            for h in range(H):
                for w in range(W):
                    for a in range(A):
                        row = b * N + offset + (h * W + w) * A + a
                        out[lvl][b, a * C:(a + 1) * C, h, w] = grad_rows[row]
            offset += H * W * A
    return out


GEN_2D = AnchorGenerator2D(strides=(4, 8), octave_base_scale=2.0, scales_per_octave=1, ratios=(0.5, 1.0, 2.0),
                           center_offset=0.5)
SIZES_2D = [(8, 8), (4, 4)]


def _check_2d(name, scenario, seed, *, scope=None, assigner="max_iou", dtype=torch.float64, tol=1e-9):
    rng = np.random.default_rng(seed)
    B, C, A = 3, 3, GEN_2D.num_base_anchors
    cls, reg = _outputs_2d(rng, B, C, A, SIZES_2D, dtype)
    gtb, gtl = _gt_2d(rng, scenario, B)
    gtb = [g.to(dtype) for g in gtb]
    anchors = GEN_2D.grid_anchors(SIZES_2D, dtype=dtype)
    losses, t, info = dense2d_loss(cls, reg, anchors, gtb, gtl, loss=name, scope=scope, assigner=assigner,
                                   return_targets=True)
    f = t.flat
    ref = reference_classification_loss(name, f.logits, f.labels, f.ious, f.image_ids, f.levels, scope=scope)
    # loss values, key by key
    for k in LOSS_KEYS[name]:
        assert float(losses[k]) == pytest.approx(ref.terms[k], abs=tol, rel=tol), (name, k)
    # gradient of the whole objective w.r.t. the raw class scores (the box loss sends none: its weights and
    # lambda are detached)
    total = sum(losses.values())
    keep_graph = name.startswith("rankdet")
    g_cls = torch.autograd.grad(total, cls, retain_graph=True)
    want = _unflatten_2d(ref.grad, B, C, A, SIZES_2D)
    for got, exp in zip(g_cls, want):
        np.testing.assert_allclose(got.detach().numpy(), exp, atol=tol, rtol=tol)
    # RankDetNet's IoU-guided loss also reaches the boxes through the IoUs (RankDet Sec. 3.3)
    if keep_graph and t.num_positives:
        cls_total = sum(losses[k] for k in LOSS_KEYS[name])
        g_iou = torch.autograd.grad(cls_total, f.ious_graph, retain_graph=True, allow_unused=True)[0]
        g_iou = np.zeros(f.ious_graph.shape) if g_iou is None else g_iou.numpy()
        np.testing.assert_allclose(g_iou, ref.terms["grad_ious"], atol=tol, rtol=tol)
    # the box part: lambda * score-weighted GIoU Loss of the decoded positives, against the reference
    if t.num_positives:
        pred = t.pos_pred_boxes.detach().numpy().astype(np.float64)
        pred = np.concatenate([np.minimum(pred[:, :2], pred[:, 2:]), np.maximum(pred[:, :2], pred[:, 2:])], axis=1)
        gt = t.pos_gt_boxes.numpy().astype(np.float64)
        balancing, weight, scored = {"rankdet": ("constant", 1.0, False), "dr": ("constant", 1.0, False)}.get(
            name.split("-")[0], ("value", None, True))
        w = score_based_weights(f.logits.detach().numpy()[t.pos_rows.numpy()]) if scored else None
        box = R.giou_loss(pred, gt, w)
        lam = value_based_task_weight(ref, box) if balancing == "value" else weight
        assert float(losses["loss_bbox"]) == pytest.approx(lam * box.loss, abs=tol, rel=tol)
        g_box = torch.autograd.grad(losses["loss_bbox"], t.pos_pred_boxes, retain_graph=True)[0].numpy()
        np.testing.assert_allclose(g_box, lam * box.grad, atol=tol, rtol=tol)
    else:
        assert float(losses["loss_bbox"]) == 0.0
    return info


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("name", RANKSPEC_LOSSES)
def test_dense2d_pipeline_matches_reference(name, scenario):
    _check_2d(name, scenario, seed=zlib.crc32(f"{name}/{scenario}".encode()))


@pytest.mark.parametrize("name", ["rs", "brs", "ap", "bap", "ape", "dr", "rankdet"])
def test_dense2d_pipeline_other_scope_and_atss(name):
    other = {"batch": "image", "image": "batch"}[("image" if name in ("dr", "rankdet") else "batch")]
    info = _check_2d(name, "mixed", seed=11, scope=other, assigner="atss")
    assert info["num_pos"] > 0


@pytest.mark.parametrize("name", ["rs", "rankdet", "dr"])
def test_dense2d_pipeline_float32(name):
    _check_2d(name, "crowded", seed=5, dtype=torch.float32, tol=2e-4)


# --------------------------------------------------------------------------------------------
# 3D
# --------------------------------------------------------------------------------------------

PC_RANGE = (0.0, -8.0, -3.0, 16.0, 8.0, 1.0)
GEN_3D = AnchorGenerator3D(PC_RANGE)
H3, W3 = 10, 10


def _gt_3d(rng, scenario, B):
    boxes, labels = [], []
    for i in range(B):
        if scenario == "no-gt" or (scenario == "mixed" and i == 0):
            n = 0
        elif scenario == "crowded":
            n = int(rng.integers(5, 9))
        else:
            n = int(rng.integers(1, 4))
        if scenario == "crowded":
            xy = np.array([8.0, 0.0]) + rng.normal(0, 1.5, (n, 2))
        else:
            xy = np.c_[rng.uniform(2, 14, n), rng.uniform(-6, 6, n)]
        size = np.array([3.9, 1.6, 1.56]) * rng.uniform(0.85, 1.15, (n, 3))
        yaw = rng.uniform(-math.pi, math.pi, n)
        z = -1.78 + size[:, 2] / 2 + rng.normal(0, 0.1, n)
        boxes.append(torch.tensor(np.c_[xy, z, size, yaw], dtype=torch.float64))
        labels.append(torch.zeros(n, dtype=torch.long))
    return boxes, labels


def _check_3d(name, scenario, seed, *, scope=None, layout="openpcdet", tol=1e-9):
    rng = np.random.default_rng(seed)
    B, C, A = 3, 1, GEN_3D.num_anchors_per_location
    cls = torch.tensor(rng.normal(0, 1.5, (B, H3, W3, A * C)), requires_grad=True)
    box = torch.tensor(rng.normal(0, 0.2, (B, H3, W3, A * 7)), requires_grad=True)
    dirp = torch.tensor(rng.normal(0, 1, (B, H3, W3, A * 2)), requires_grad=True)
    raw = [cls, box, dirp]
    if layout == "mmdet3d":
        raw = [x.detach().permute(0, 3, 1, 2).contiguous().requires_grad_() for x in raw]
    gtb, gtl = _gt_3d(rng, scenario, B)
    anchors = GEN_3D.grid_anchors((H3, W3), dtype=torch.float64)
    losses, t, _ = ssd3d_loss(*raw, anchors, GEN_3D.anchor_classes(), gtb, gtl, loss=name, scope=scope,
                              layout=layout, return_targets=True)
    f = t.flat
    # the continuous labels are the rotated 3D IoU of the decoded predictions with their boxes (reference)
    if t.num_positives:
        want_iou = R.rotated_iou_3d(t.pos_pred_boxes.detach().numpy(), t.pos_gt_boxes.numpy(), aligned=True)
        np.testing.assert_allclose(f.ious[t.pos_rows].numpy(), want_iou, atol=1e-9)
    ref = reference_classification_loss(name, f.logits, f.labels, f.ious, f.image_ids, f.levels, scope=scope)
    for k in LOSS_KEYS[name]:
        assert float(losses[k]) == pytest.approx(ref.terms[k], abs=tol, rel=tol), (name, k)
    total = sum(losses.values())
    g = torch.autograd.grad(total, raw[0], retain_graph=True)[0].detach().numpy()
    want = ref.grad.reshape(B, H3, W3, A * C)  # rows (h*W + w)*A + a, classes last: channel a*C + c
    if layout == "mmdet3d":
        want = want.transpose(0, 3, 1, 2)
    np.testing.assert_allclose(g, want, atol=tol, rtol=tol)
    if name.startswith("rankdet") and t.num_positives and ("iou" in name or name == "rankdet"):
        cls_total = sum(losses[k] for k in LOSS_KEYS[name])
        g_iou = torch.autograd.grad(cls_total, f.ious_graph, retain_graph=True, allow_unused=True)[0]
        g_iou = np.zeros(f.ious_graph.shape) if g_iou is None else g_iou.numpy()
        np.testing.assert_allclose(g_iou, ref.terms["grad_ious"], atol=tol, rtol=tol)


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("name", RANKSPEC_LOSSES)
def test_ssd3d_pipeline_matches_reference(name, scenario):
    _check_3d(name, scenario, seed=zlib.crc32(f"3d/{name}/{scenario}".encode()))


@pytest.mark.parametrize("name", ["rs", "brs", "rankdet", "dr", "ape"])
def test_ssd3d_pipeline_mmdet3d_layout_and_other_scope(name):
    other = "batch" if name in ("dr", "rankdet") else "image"
    _check_3d(name, "crowded", seed=3, scope=other, layout="mmdet3d")

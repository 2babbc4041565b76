"""aLRP Loss in the detector heads: e_loc from GIoU / IoU, the two components, self-balancing, conformance."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rankspec.adapters.heads import Dense2DLoss, FlatTargets, classification_loss, dense2d_loss  # noqa: E402
from rankspec.adapters.heads.losses import (alrp_components, alrp_e_loc,  # noqa: E402
                                            reference_classification_loss)
from rankspec.conformance import HEAD_LOSSES, check_head  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_heads_2d import _batch  # noqa: E402


def _tiny(gious_grad=False):
    """Two positives (logits 2 and 0), one negative (logit 1), one ignored row with a large logit; C = 1."""
    logits = torch.tensor([[2.0], [0.0], [1.0], [5.0]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, -1, -2])
    gious = torch.tensor([0.5, -0.5, 0.0, 0.0], dtype=torch.float64, requires_grad=gious_grad)
    ious = torch.tensor([0.75, 0.25, 0.0, 0.0], dtype=torch.float64)
    flat = FlatTargets(logits=logits, labels=labels, ious=ious, image_ids=torch.zeros(4, dtype=torch.long),
                       levels=torch.zeros(4, dtype=torch.long), num_images=1, gious=gious.detach())
    return flat, gious


def test_tiny_case_by_hand():
    # H(x) = clamp(x / 2 + 1/2, 0, 1) (delta 1).  Positive a (s=2): rank+ = 1 + H(-2) = 1, N_FP = H(-1) = 0,
    # rank 1.  Positive b (s=0): rank+ = 1 + H(2) = 2, N_FP = H(1) = 1, rank 3.  L_cls = (0 + 1/3) / 2 = 1/6.
    # e_loc = (1 - GIoU) / (2 (1 - 0.5)) = [0.5, 1.5].  Descending logits a, b: cumsum e = [0.5, 2.0];
    # L_loc = (0.5 / 1 + 2.0 / 3) / 2 = 7/12.
    flat, gious = _tiny(gious_grad=True)
    cls, loc = alrp_components(flat, gious_graph=gious)
    assert float(cls) == pytest.approx(1 / 6, abs=1e-12)
    assert float(loc) == pytest.approx(7 / 12, abs=1e-12)
    # identity update: only b has N_FP > eps; E(b) = (N_FP + H(s_a - s_b) e_a) / rank = (1 + 0.5) / 3 = 0.5;
    # b gets -0.5 / |P| = -0.25, the negative 0.5 * H(1) / N_FP / |P| = 0.25; a and the ignored row get 0
    (g,) = torch.autograd.grad(cls, flat.logits)
    np.testing.assert_allclose(g.numpy().ravel(), [0.0, -0.25, 0.25, 0.0], atol=1e-12)
    # d L_loc / d e_a = (1/1 + 1/3) / 2 = 2/3, d / d e_b = (1/3) / 2 = 1/6; d e / d GIoU = -1 (tau 0.5)
    (ge,) = torch.autograd.grad(loc, gious)
    np.testing.assert_allclose(ge.numpy(), [-2 / 3, -1 / 6, 0.0, 0.0], atol=1e-12)
    # the localisation component sends nothing to the logits (rank is detached, as in the authors' heads)
    cls2, loc2 = alrp_components(flat, gious_graph=gious)
    (gl,) = torch.autograd.grad(loc2, flat.logits, allow_unused=True)
    assert gl is None or float(gl.abs().sum()) == 0.0


def test_e_loc_readings_and_iou_variant():
    # (1 - GIoU) / (2 (1 - tau)) and (1 - IoU) / (1 - tau), elementwise
    np.testing.assert_allclose(alrp_e_loc(np.array([0.5, -1.0]), np.array([0.5, -1.0]), "giou", 0.5), [0.5, 2.0])
    np.testing.assert_allclose(alrp_e_loc(np.array([0.8]), np.array([0.8]), "iou", 0.6), [0.5])
    # the tiny case's IoUs give the same e_loc = (1 - [0.75, 0.25]) / 0.5 = [0.5, 1.5]: same components
    flat, _ = _tiny()
    cls, loc = alrp_components(flat, e_loc="iou")
    assert float(cls) == pytest.approx(1 / 6, abs=1e-12) and float(loc) == pytest.approx(7 / 12, abs=1e-12)
    # tau = 0 halves the GIoU reading: e = [0.25, 0.75] -> L_loc = (0.25 + 1.0 / 3) / 2
    _, loc0 = alrp_components(flat, tau=0.0)
    assert float(loc0) == pytest.approx((0.25 + 1.0 / 3) / 2, abs=1e-12)


def test_reference_matches_torch_on_tiny_case():
    flat, _ = _tiny()
    ref = reference_classification_loss("alrp", flat.logits, flat.labels, flat.ious, gious=flat.gious)
    assert ref.loss == pytest.approx(1 / 6, abs=1e-12)
    assert ref.terms["loc_component"] == pytest.approx(7 / 12, abs=1e-12)
    np.testing.assert_allclose(ref.grad.ravel(), [0.0, -0.25, 0.25, 0.0], atol=1e-12)
    np.testing.assert_allclose(ref.terms["grad_e_loc"], [2 / 3, 1 / 6, 0.0, 0.0], atol=1e-12)
    assert classification_loss("alrp", flat)["loss_cls"].item() == pytest.approx(1 / 6, abs=1e-12)


def test_dense2d_loss_dict_is_cls_and_weighted_loc():
    cls, reg, anc, gtb, gtl = _batch()
    losses, t, info = dense2d_loss(cls, reg, anc, gtb, gtl, loss="alrp", return_targets=True)
    assert tuple(losses) == ("loss_cls", "loss_bbox")
    assert info["lambda_box"] == 50.0 and info["num_pos"] > 0
    f = t.flat
    ref = reference_classification_loss("alrp", f.logits, f.labels, f.ious, f.image_ids, f.levels, gious=f.gious)
    assert float(losses["loss_cls"]) == pytest.approx(ref.loss, abs=1e-12)
    assert float(losses["loss_bbox"]) == pytest.approx(50.0 * ref.terms["loc_component"], abs=1e-12)
    # loss_cls sends nothing to the box outputs (e_loc enters as a constant), loss_bbox nothing to the scores
    g_box = torch.autograd.grad(losses["loss_cls"], reg, retain_graph=True, allow_unused=True)
    assert all(g is None or float(g.abs().sum()) == 0 for g in g_box)
    g_cls = torch.autograd.grad(losses["loss_bbox"], cls, retain_graph=True, allow_unused=True)
    assert all(g is None or float(g.abs().sum()) == 0 for g in g_cls)
    g_reg = torch.autograd.grad(losses["loss_bbox"], reg, allow_unused=True)
    assert any(g is not None and float(g.abs().sum()) > 0 for g in g_reg)
    # a constant weight scales loss_bbox only
    l2 = dense2d_loss(cls, reg, anc, gtb, gtl, loss="alrp", box_weight=2.0)
    assert float(l2["loss_bbox"]) == pytest.approx(2.0 * ref.terms["loc_component"], abs=1e-12)
    assert float(l2["loss_cls"]) == pytest.approx(ref.loss, abs=1e-12)


def test_image_scope_averages_over_images_with_positives():
    cls, reg, anc, gtb, gtl = _batch(B=2)
    _, t, _ = dense2d_loss(cls, reg, anc, gtb, gtl, loss="alrp", return_targets=True)
    f = t.flat
    per = [reference_classification_loss("alrp", f.logits[f.image_ids == b], f.labels[f.image_ids == b],
                                         f.ious[f.image_ids == b], gious=f.gious[f.image_ids == b])
           for b in (0, 1)]
    losses = dense2d_loss(cls, reg, anc, gtb, gtl, loss="alrp", scope="image")
    assert float(losses["loss_cls"]) == pytest.approx((per[0].loss + per[1].loss) / 2, abs=1e-12)
    want_loc = (per[0].terms["loc_component"] + per[1].terms["loc_component"]) / 2
    assert float(losses["loss_bbox"]) == pytest.approx(50.0 * want_loc, abs=1e-12)


def test_module_re_estimates_the_self_balancing_weight():
    cls, reg, anc, gtb, gtl = _batch()
    m = Dense2DLoss("alrp", sb_period=2)
    _, _, info = dense2d_loss(cls, reg, anc, gtb, gtl, loss="alrp", return_targets=True)
    c, lc = info["loss_cls"], info["loc_component"]
    out1 = m(cls, reg, anc, gtb, gtl)
    assert m.sb_weight == 50.0 and float(out1["loss_bbox"]) == pytest.approx(50.0 * lc, abs=1e-12)
    m(cls, reg, anc, gtb, gtl)
    # after one period: w = (mean L_loc + mean L_cls) / mean L_loc, the two calls having the same values
    assert m.sb_weight == pytest.approx((lc + c) / lc, rel=1e-12)
    out3 = m(cls, reg, anc, gtb, gtl)
    assert float(out3["loss_bbox"]) == pytest.approx((lc + c), rel=1e-12)
    assert m.sb_history == [(pytest.approx(c), pytest.approx(lc))]


def test_no_ground_truth_gives_zero_attached_losses():
    cls, reg, anc, _, _ = _batch(B=1)
    losses = dense2d_loss(cls, reg, anc, [torch.zeros(0, 4, dtype=torch.float64)], [torch.zeros(0, dtype=torch.long)],
                          loss="alrp")
    assert float(losses["loss_cls"]) == 0.0 and float(losses["loss_bbox"]) == 0.0
    sum(losses.values()).backward()
    assert all(float(c.grad.abs().sum()) == 0 for c in cls)


def test_bad_options_name_the_argument():
    cls, reg, anc, gtb, gtl = _batch()
    with pytest.raises(ValueError, match="balancing='self'"):
        dense2d_loss(cls, reg, anc, gtb, gtl, loss="rs", balancing="self")
    with pytest.raises(ValueError, match="balancing='self'"):
        dense2d_loss(cls, reg, anc, gtb, gtl, loss="alrp", balancing="value")
    with pytest.raises(ValueError, match="tau"):
        dense2d_loss(cls, reg, anc, gtb, gtl, loss="alrp", loss_options={"tau": 1.0})
    with pytest.raises(ValueError, match="e_loc"):
        dense2d_loss(cls, reg, anc, gtb, gtl, loss="alrp", loss_options={"e_loc": "l1"})
    with pytest.raises(ValueError, match="sb_period"):
        Dense2DLoss("rs", sb_period=3)
    with pytest.raises(ValueError, match="sb_period"):
        Dense2DLoss("alrp", sb_period=0)
    flat, _ = _tiny()
    no_giou = FlatTargets(flat.logits, flat.labels, flat.ious, flat.image_ids, flat.levels, 1)
    with pytest.raises(ValueError, match="e_loc='giou'"):
        alrp_components(no_giou, e_loc="giou")


@pytest.mark.parametrize("head", ["dense2d", "ssd3d"])
def test_check_head_covers_alrp(head):
    assert "alrp" in HEAD_LOSSES
    report = check_head(head, "alrp", examples=2, dtypes=("float64",), shrink=False, diagnose=False)
    assert report.conformant, report.format_text()
    assert {r.loss for r in report.results} == {f"{head}/alrp"}


def test_check_head_catches_a_wrong_e_loc():
    # a head that builds e_loc with the wrong tau is caught: the gradient of loss_cls depends on e_loc
    from rankspec.adapters.heads import dense2d as d2

    def wrong(cls_scores, bbox_preds, anchors, gt_boxes, gt_labels, *, loss, scope=None, loss_options=None, **kw):
        opts = dict(loss_options or {})
        opts["tau"] = 0.0  # e_loc halved: a different loss than the oracle's tau = 0.5
        return d2.dense2d_loss(cls_scores, bbox_preds, anchors, gt_boxes, gt_labels, loss=loss, scope=scope,
                               loss_options=opts, **kw)

    report = check_head("dense2d", "alrp", target=wrong, examples=2, scenarios=("many-gt",), dtypes=("float64",),
                        shrink=False, diagnose=False)
    assert not report.conformant

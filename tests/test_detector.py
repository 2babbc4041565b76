"""NumPy reference of the Rank & Sort detector glue (RS Sec. 5): IoU, GIoU, GIoU Loss, weighting, balancing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rankspec.refimpl import LossResult, box_iou, generalized_box_iou, giou_loss, lookup, rs_loss, task_balanced_loss
from rankspec.refimpl.reference.detector import (magnitude_based_task_weight, score_based_weights,
                                                 value_based_task_weight)


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


# dyadic boxes: corners k/8, sizes k/8 >= 1/8, so every area and overlap is exact in float64
@st.composite
def boxes(draw, n=None, min_size=0.125):
    n = draw(st.integers(1, 6)) if n is None else n
    out = []
    for _ in range(n):
        x1, y1 = draw(st.integers(-32, 32)) / 8, draw(st.integers(-32, 32)) / 8
        w = draw(st.integers(int(min_size * 8), 40)) / 8
        h = draw(st.integers(int(min_size * 8), 40)) / 8
        out.append([x1, y1, x1 + w, y1 + h])
    return np.array(out)


@st.composite
def box_pairs(draw):
    n = draw(st.integers(1, 6))
    return draw(boxes(n)), draw(boxes(n))


# ------------------------------------------------------------------------------------------
# hand-computed tiny cases
# ------------------------------------------------------------------------------------------

def test_iou_giou_tiny_cases():
    a, b = np.array([[0.0, 0, 2, 2]]), np.array([[1.0, 1, 3, 3]])
    # overlap [1,2]x[1,2]: I = 1; U = 4 + 4 - 1 = 7; enclosing [0,3]x[0,3]: C = 9
    assert box_iou(a, b)[0] == pytest.approx(1 / 7, abs=1e-15)
    # GIoU = I/U - (C - U)/C = 1/7 - 2/9 = -5/63
    assert generalized_box_iou(a, b)[0] == pytest.approx(-5 / 63, abs=1e-15)
    # disjoint unit squares [0,1]^2 and [2,3]^2: IoU 0, U = 2, C = 9, GIoU = -(9 - 2)/9 = -7/9
    c, d = np.array([[0.0, 0, 1, 1]]), np.array([[2.0, 2, 3, 3]])
    assert box_iou(c, d)[0] == 0.0
    assert generalized_box_iou(c, d)[0] == pytest.approx(-7 / 9, abs=1e-15)
    # identical boxes: 1 and 1; two equal points: union 0 -> IoU 0 and GIoU 0 (documented)
    assert box_iou(a, a)[0] == 1.0 and generalized_box_iou(a, a)[0] == 1.0
    pt = np.array([[1.0, 1, 1, 1]])
    assert box_iou(pt, pt)[0] == 0.0 and generalized_box_iou(pt, pt)[0] == 0.0
    # all pairs: (2, 2) matrix
    m = box_iou(np.vstack([a, c]), np.vstack([b, d]), aligned=False)
    np.testing.assert_allclose(m, [[1 / 7, 0.0], [0.0, 0.0]], atol=1e-15)
    # eps (mmdetection) clamps the union: a 1e-4 x 1e-4 box has area 1e-8 < eps = 1e-6, so its IoU with itself
    # becomes 1e-8 / 1e-6 = 0.01 instead of 1
    e = np.array([[0.0, 0, 1e-4, 1e-4]])
    assert box_iou(e, e, eps=1e-6)[0] == pytest.approx(0.01, rel=1e-9)
    assert box_iou(e, e)[0] == 1.0


def test_giou_loss_tiny_case_with_hand_gradient():
    # pred [0,0,2,2], target [1,1,3,3]: loss = 1 - (-5/63) = 68/63.
    # d/dx2 (x2 < X2): dI = ih * 1 = 1; dA_pred = h = 2; dU = 2 - 1 = 1; dC = 0 (X2 is the enclosing max)
    #   dGIoU = dI/U - I dU/U^2 + dU/C - U dC/C^2 = 1/7 - 1/49 + 1/9 = 103/441 -> dloss/dx2 = -103/441
    # d/dx1 (x1 < X1): dI = 0; dA_pred = -2; dU = -2; dC = ch * (-1) = -3
    #   dGIoU = 0 + 2/49 - 2/9 + 21/81 = 2/49 + 1/27 = 103/1323 -> dloss/dx1 = -103/1323
    # the y coordinates mirror x.
    r = giou_loss([[0.0, 0, 2, 2]], [[1.0, 1, 3, 3]])
    assert isinstance(r, LossResult)
    assert r.loss == pytest.approx(68 / 63, abs=1e-15)
    np.testing.assert_allclose(r.grad, [[-103 / 1323, -103 / 1323, -103 / 441, -103 / 441]], atol=1e-15)
    # weights w = [3, 1] on two boxes with per-box losses 68/63 and 0 (identical boxes):
    # weighted_mean = 3 * 68/63 / 4, mean = 3 * 68/63 / 2, sum = 3 * 68/63
    p = [[0.0, 0, 2, 2], [5.0, 5, 6, 7]]
    t = [[1.0, 1, 3, 3], [5.0, 5, 6, 7]]
    for red, z in (("weighted_mean", 4.0), ("mean", 2.0), ("sum", 1.0)):
        assert giou_loss(p, t, [3.0, 1.0], reduction=red).loss == pytest.approx(3 * 68 / 63 / z, abs=1e-15)
    # all weights ~0 -> divide by 1 (authors' guard); no boxes -> loss 0 and a (0, 4) gradient
    assert giou_loss(p, t, [0.0, 0.0]).loss == 0.0
    empty = giou_loss(np.zeros((0, 4)), np.zeros((0, 4)))
    assert empty.loss == 0.0 and empty.grad.shape == (0, 4)


def test_score_based_weights_tiny_case():
    logits = np.array([[0.0, 2.0], [-1.0, -3.0]])
    # max over classes of sigmoid: sigmoid(2), sigmoid(-1); by label [0, 1]: sigmoid(0) = 0.5, sigmoid(-3)
    np.testing.assert_allclose(score_based_weights(logits), [sig(2.0), sig(-1.0)], rtol=1e-15)
    np.testing.assert_allclose(score_based_weights(logits, np.array([0, 1]), class_reduce="label"),
                               [0.5, sig(-3.0)], rtol=1e-15)
    np.testing.assert_allclose(score_based_weights(np.array([0.0, 1.0])), [0.5, sig(1.0)], rtol=1e-15)


def test_task_balancing_tiny_cases():
    # value-based: 0.6 / 0.3 = 2; L = 0.6 + 2 * 0.3 = 1.2 (= 2 L_RS);  zero box loss -> lambda 0
    assert value_based_task_weight(0.6, 0.3) == pytest.approx(2.0)
    assert value_based_task_weight(0.6, 0.0) == 0.0
    # magnitude-based: |[0.1, -0.3]|_1 = 0.4, |[[0.2, 0, 0, -0.2]]|_1 = 0.4 -> 1
    assert magnitude_based_task_weight([0.1, -0.3], [[0.2, 0, 0, -0.2]]) == pytest.approx(1.0)
    assert magnitude_based_task_weight([0.1], [[0.0, 0, 0, 0]]) == 0.0
    rank = LossResult(0.6, np.array([0.1, -0.3]), {})
    box = LossResult(0.3, np.array([[0.2, 0, 0, -0.2]]), {})
    out = task_balanced_loss(rank, box)
    assert out.loss == pytest.approx(1.2) and out.terms["lambda_box"] == pytest.approx(2.0)
    np.testing.assert_allclose(out.grad, rank.grad)
    np.testing.assert_allclose(out.terms["grad_boxes"], 2.0 * box.grad)
    assert task_balanced_loss(rank, box, balancing="magnitude").loss == pytest.approx(0.9)
    assert task_balanced_loss(rank, box, balancing="constant", box_weight=2.0).loss == pytest.approx(1.2)


def test_rs_detector_pipeline():
    # RS Eq. 14 on a toy problem: IoU targets from the boxes, score-weighted GIoU, value-based lambda.
    pred = np.array([[0.0, 0, 2, 2], [1.0, 1, 2.5, 3], [4.0, 4, 5, 5]])
    gt = np.array([[0.0, 0, 2, 2.5], [1.0, 1, 3, 3], [4.0, 4, 5, 6]])
    logits = np.array([2.0, 0.5, -1.0, 1.0, -2.0])  # first three are the positives
    iou = box_iou(pred, gt)
    targets = np.concatenate([iou, [0.0, 0.0]])
    rank = rs_loss(logits, targets)
    box = giou_loss(pred, gt, score_based_weights(logits[:3]))
    out = task_balanced_loss(rank, box)
    assert out.terms["weighted_box"] == pytest.approx(rank.loss, rel=1e-14)
    assert out.loss == pytest.approx(2 * rank.loss, rel=1e-14)


def test_registered():
    for f in (box_iou, generalized_box_iou, giou_loss, score_based_weights, value_based_task_weight,
              magnitude_based_task_weight, task_balanced_loss):
        assert lookup(f).family == "detector"
    assert lookup(box_iou).kind == "utility" and lookup(giou_loss).kind == "loss"


# ------------------------------------------------------------------------------------------
# properties
# ------------------------------------------------------------------------------------------

@given(boxes(), boxes())
def test_iou_and_giou_ranges_and_symmetry(a, b):
    iou = box_iou(a, b, aligned=False)
    giou = generalized_box_iou(a, b, aligned=False)
    assert np.all((iou >= 0) & (iou <= 1))
    assert np.all((giou >= -1) & (giou <= 1))
    assert np.all(giou <= iou + 1e-15)
    np.testing.assert_allclose(iou, box_iou(b, a, aligned=False).T, atol=1e-15)
    np.testing.assert_allclose(giou, generalized_box_iou(b, a, aligned=False).T, atol=1e-15)


@given(boxes())
def test_self_iou_is_one(a):
    np.testing.assert_array_equal(box_iou(a, a), 1.0)
    np.testing.assert_array_equal(generalized_box_iou(a, a), 1.0)
    assert giou_loss(a, a).loss == 0.0


@given(box_pairs(), st.integers(-16, 16), st.sampled_from([0.5, 2.0, 4.0]))
def test_translation_and_scale_invariance(pair, shift, scale):
    a, b = pair
    c = shift / 4
    np.testing.assert_allclose(generalized_box_iou(a + c, b + c), generalized_box_iou(a, b), atol=1e-15)
    np.testing.assert_allclose(generalized_box_iou(a * scale, b * scale), generalized_box_iou(a, b), atol=1e-15)
    # aligned results are the diagonal of the all-pairs matrix
    np.testing.assert_array_equal(np.diag(box_iou(a, b, aligned=False)), box_iou(a, b))


@given(box_pairs(), st.lists(st.sampled_from([0.25, 0.5, 1.0, 2.0]), min_size=6, max_size=6))
def test_giou_loss_weights(pair, ws):
    a, b = pair
    w = np.array(ws[: len(a)])
    per_box = 1 - generalized_box_iou(a, b)
    r = giou_loss(a, b, w)
    assert r.loss == pytest.approx(np.sum(w * per_box) / w.sum(), abs=1e-12)
    # the weighted gradient is the weighted sum of the per-box gradients (weights are constants)
    single = np.vstack([giou_loss(a[i:i + 1], b[i:i + 1]).grad for i in range(len(a))])
    np.testing.assert_allclose(r.grad, w[:, None] * single / w.sum(), atol=1e-12)


def test_giou_loss_gradient_matches_finite_differences():
    # generic continuous boxes (no ties between coordinates): the loss is smooth there
    rng = np.random.default_rng(7)
    for _ in range(30):
        xy = rng.uniform(0, 4, (2, 2))
        wh = rng.uniform(0.5, 3, (2, 2))
        p, t = np.concatenate([xy[:1], xy[:1] + wh[:1]], 1), np.concatenate([xy[1:], xy[1:] + wh[1:]], 1)
        r = giou_loss(p, t)
        h = 1e-6
        num = np.zeros(4)
        for k in range(4):
            e = np.zeros((1, 4))
            e[0, k] = h
            num[k] = (giou_loss(p + e, t).loss - giou_loss(p - e, t).loss) / (2 * h)
        np.testing.assert_allclose(r.grad[0], num, atol=1e-7)


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, exc, words", [
    (lambda: box_iou([[0.0, 0, 1]], [[0.0, 0, 1, 1]]), ValueError, "boxes1 must have shape"),
    (lambda: box_iou([[0.0, 0, 1, 1]], [[2.0, 0, 1, 1]]), ValueError, "boxes2"),
    (lambda: box_iou([[0.0, 0, 1, np.nan]], [[0.0, 0, 1, 1]]), ValueError, "NaN"),
    (lambda: box_iou([[0.0, 0, 1, 1]], [[0.0, 0, 1, 1]] * 2), ValueError, "aligned"),
    (lambda: generalized_box_iou([[0.0, 0, 1, 1]], [[0.0, 0, 1, 1]], eps=-1.0), ValueError, "eps"),
    (lambda: giou_loss([[0.0, 0, 1, 1]], [[0.0, 0, 1, 1]] * 2), ValueError, "target_boxes"),
    (lambda: giou_loss([[0.0, 0, 1, 1]], [[0.0, 0, 1, 1]], [-1.0]), ValueError, "weights"),
    (lambda: giou_loss([[0.0, 0, 1, 1]], [[0.0, 0, 1, 1]], [1.0, 1.0]), ValueError, "weights"),
    (lambda: giou_loss([[0.0, 0, 1, 1]], [[0.0, 0, 1, 1]], reduction="max"), ValueError, "reduction"),
    (lambda: score_based_weights(np.zeros((2, 3)), class_reduce="label"), TypeError, "labels"),
    (lambda: score_based_weights(np.zeros((2, 3)), np.array([0, 3]), class_reduce="label"), ValueError, "labels"),
    (lambda: score_based_weights(np.zeros((2, 3)), np.array([0.0, 1.0]), class_reduce="label"), TypeError,
     "integer"),
    (lambda: score_based_weights(np.zeros((2, 3, 1))), ValueError, "cls_logits"),
    (lambda: value_based_task_weight(-1.0, 1.0), ValueError, "rank_loss"),
    (lambda: value_based_task_weight(1.0, [1.0, 2.0]), ValueError, "box_loss"),
    (lambda: task_balanced_loss(0.5, LossResult(0.1, np.zeros(1), {})), TypeError, "rank"),
    (lambda: task_balanced_loss(LossResult(0.5, np.zeros(1), {}), LossResult(0.1, np.zeros(1), {}),
                                balancing="constant"), TypeError, "box_weight"),
    (lambda: task_balanced_loss(LossResult(0.5, np.zeros(1), {}), LossResult(0.1, np.zeros(1), {}),
                                box_weight=2.0), ValueError, "box_weight"),
    (lambda: task_balanced_loss(LossResult(0.5, np.zeros(1), {}), LossResult(0.1, np.zeros(1), {}),
                                balancing="grad"), ValueError, "balancing"),
])
def test_bad_input(call, exc, words):
    with pytest.raises(exc, match=words):
        call()


@pytest.mark.parametrize("fn", [box_iou, generalized_box_iou])
def test_aligned_must_be_a_bool(fn):
    with pytest.raises(TypeError, match="aligned"):
        fn([[0.0, 0.0, 1.0, 1.0]], [[0.0, 0.0, 1.0, 1.0]], aligned="no")


def test_giou_record_validates_once_and_runs_the_reference():
    from rankspec.refimpl.record import get_record

    rec = get_record("giou_loss")
    # identical boxes: GIoU 1, loss 0 by hand; the record's run is the public function
    r = rec.run("numpy", [[0.0, 0.0, 2.0, 2.0]], [[0.0, 0.0, 2.0, 2.0]])
    assert r.loss == 0.0
    with pytest.raises(ValueError, match="reduction"):
        rec.run("numpy", np.zeros((0, 4)), np.zeros((0, 4)), reduction="avg")  # checked before the N == 0 return

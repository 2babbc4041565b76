"""PyTorch detector glue (RS Sec. 5): agreement with the reference, gradcheck, detached lambda, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from rankspec.adapters.torch.detector import (GIoULoss, TaskBalancedLoss, box_iou, generalized_box_iou,  # noqa
                                              giou_loss, magnitude_based_task_weight, score_based_weights,
                                              task_balanced_loss, value_based_task_weight)
from rankspec.refimpl import giou_loss as ref_giou_loss  # noqa: E402
from rankspec.refimpl.reference import detector as ref  # noqa: E402


@st.composite
def box_pairs(draw, ties: bool = True):
    # dyadic corners; small coordinate range so equal coordinates (ties of min/max) are frequent
    n = draw(st.integers(1, 6))

    def one():
        x1, y1 = draw(st.integers(0, 6)) / 4, draw(st.integers(0, 6)) / 4
        w, h = draw(st.integers(0 if ties else 1, 6)) / 4, draw(st.integers(0 if ties else 1, 6)) / 4
        return [x1, y1, x1 + w, y1 + h]

    a = np.array([one() for _ in range(n)])
    b = np.array([one() for _ in range(n)])
    return a, b


def _t(x, dtype=torch.float64, grad=False):
    return torch.tensor(x, dtype=dtype, requires_grad=grad)


@given(box_pairs())
def test_iou_giou_equal_reference(pair):
    a, b = pair
    for aligned in (True, False):
        np.testing.assert_allclose(box_iou(_t(a), _t(b), aligned=aligned).numpy(),
                                   ref.box_iou(a, b, aligned=aligned), atol=1e-15)
        np.testing.assert_allclose(generalized_box_iou(_t(a), _t(b), aligned=aligned).numpy(),
                                   ref.generalized_box_iou(a, b, aligned=aligned), atol=1e-15)


@given(box_pairs(), st.sampled_from(["weighted_mean", "mean", "sum"]), st.sampled_from([0.0, 1e-6]))
def test_giou_loss_and_gradient_equal_reference_including_ties(pair, reduction, eps):
    # Same sub-gradient rules (min/max ties split evenly, clamp passes at 0) as the hand-written reference.
    a, b = pair
    w = np.linspace(0.25, 1.0, len(a))
    r = ref_giou_loss(a, b, w, reduction=reduction, eps=eps)
    p = _t(a, grad=True)
    loss = giou_loss(p, _t(b), _t(w), reduction=reduction, eps=eps)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(r.loss, abs=1e-12)
    np.testing.assert_allclose(p.grad.numpy(), r.grad, atol=1e-12)


def test_gradcheck_iou_giou_and_loss():
    g = torch.Generator().manual_seed(3)

    def rand_boxes(n):
        xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 4
        wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 3 + 0.5
        return torch.cat([xy, xy + wh], 1)

    a, b = rand_boxes(5).requires_grad_(), rand_boxes(5).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: box_iou(x, y), (a, b))
    assert torch.autograd.gradcheck(lambda x, y: generalized_box_iou(x, y, aligned=False), (a, b))
    w = torch.rand(5, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: giou_loss(x, b.detach(), w), (a,))


def test_dtype_device_and_module():
    a = torch.tensor([[0.0, 0, 2, 2]], dtype=torch.float32, requires_grad=True)
    b = torch.tensor([[1.0, 1, 3, 3]], dtype=torch.float32)
    loss = GIoULoss()(a, b)
    assert loss.dtype == torch.float32 and float(loss.detach()) == pytest.approx(68 / 63, rel=1e-6)
    loss.backward()
    np.testing.assert_allclose(a.grad.numpy(), [[-103 / 1323, -103 / 1323, -103 / 441, -103 / 441]], rtol=1e-5)
    empty = giou_loss(torch.zeros(0, 4, requires_grad=True), torch.zeros(0, 4))
    assert float(empty.detach()) == 0.0
    loss, terms = giou_loss(a, b, return_terms=True)
    assert float(terms["giou"][0]) == pytest.approx(-5 / 63, rel=1e-6)


def test_score_based_weights_are_detached_and_match_reference():
    s = torch.tensor([[0.0, 2.0], [-1.0, -3.0]], dtype=torch.float64, requires_grad=True)
    w = score_based_weights(s)
    assert not w.requires_grad
    np.testing.assert_allclose(w.numpy(), ref.score_based_weights(s.detach().numpy()), rtol=1e-15)
    lab = torch.tensor([0, 1])
    np.testing.assert_allclose(score_based_weights(s, lab, class_reduce="label").numpy(),
                               ref.score_based_weights(s.detach().numpy(), lab.numpy(), class_reduce="label"))


def _toy_losses():
    # a ranking loss of the logits and a GIoU loss of the boxes (independent parameters)
    s = torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[0.0, 0, 2, 2], [1.0, 0.5, 3, 2]], dtype=torch.float64, requires_grad=True)
    gt = torch.tensor([[0.5, 0, 2, 2.5], [1.0, 1, 3, 3]], dtype=torch.float64)
    l_rank = torch.sigmoid(s[1:] - s[0]).sum()
    l_box = giou_loss(boxes, gt)
    return s, boxes, l_rank, l_box


def test_value_based_lambda_has_no_gradient():
    # RS Sec. 5.2: lambda = L_RS / L_box is a constant in backprop.  If it were not detached, lambda * L_box
    # would equal L_RS as a function and the boxes would get no gradient at all.
    s, boxes, l_rank, l_box = _toy_losses()
    total, lam = task_balanced_loss(l_rank, l_box, return_lambda=True)
    assert not lam.requires_grad
    assert float(lam) == pytest.approx(float(l_rank.detach() / l_box.detach()), rel=1e-15)
    assert float(total.detach()) == pytest.approx(2 * float(l_rank.detach()), rel=1e-14)
    total.backward()
    s2, boxes2, l_rank2, l_box2 = _toy_losses()
    (g_box,) = torch.autograd.grad(l_box2, boxes2)
    (g_rank,) = torch.autograd.grad(l_rank2, s2)
    np.testing.assert_allclose(boxes.grad.numpy(), float(lam) * g_box.numpy(), rtol=1e-13)
    np.testing.assert_allclose(s.grad.numpy(), g_rank.numpy(), rtol=1e-13)
    assert float(boxes.grad.abs().sum()) > 1e-3
    assert not value_based_task_weight(l_rank2, l_box2).requires_grad


def test_magnitude_based_lambda():
    s, boxes, l_rank, l_box = _toy_losses()
    (g_rank,) = torch.autograd.grad(l_rank, s, retain_graph=True)
    (g_box,) = torch.autograd.grad(l_box, boxes, retain_graph=True)
    expected = float(g_rank.abs().sum() / g_box.abs().sum())
    m = TaskBalancedLoss(balancing="magnitude")
    total = m(l_rank, l_box, rank_inputs=s, box_inputs=boxes)
    assert float(m.lambda_box) == pytest.approx(expected, rel=1e-14)
    assert float(m.lambda_box) == pytest.approx(ref.magnitude_based_task_weight(g_rank.numpy(), g_box.numpy()),
                                                rel=1e-14)
    total.backward()
    np.testing.assert_allclose(boxes.grad.numpy(), expected * g_box.numpy(), rtol=1e-13)
    assert float(magnitude_based_task_weight(g_rank, torch.zeros_like(g_box))) == 0.0


@pytest.mark.parametrize("call, exc, words", [
    (lambda: box_iou(np.zeros((1, 4)), torch.zeros(1, 4)), TypeError, "boxes1"),
    (lambda: box_iou(torch.zeros(1, 4, dtype=torch.int64), torch.zeros(1, 4)), TypeError, "dtype"),
    (lambda: box_iou(torch.zeros(1, 3), torch.zeros(1, 4)), ValueError, "shape"),
    (lambda: box_iou(torch.tensor([[1.0, 0, 0, 1]]), torch.zeros(1, 4)), ValueError, "valid box"),
    (lambda: box_iou(torch.tensor([[0.0, 0, float("nan"), 1]]), torch.zeros(1, 4)), ValueError, "NaN"),
    (lambda: box_iou(torch.zeros(2, 4), torch.zeros(1, 4)), ValueError, "aligned"),
    (lambda: box_iou(torch.zeros(1, 4), torch.zeros(1, 4, dtype=torch.float64)), TypeError, "dtype"),
    (lambda: giou_loss(torch.zeros(1, 4), torch.zeros(1, 4), torch.tensor([-1.0])), ValueError, "weights"),
    (lambda: giou_loss(torch.zeros(1, 4), torch.zeros(1, 4), reduction="x"), ValueError, "reduction"),
    (lambda: score_based_weights(torch.zeros(2, 3), class_reduce="label"), TypeError, "labels"),
    (lambda: score_based_weights(torch.zeros(2, 3), torch.tensor([0, 5]), class_reduce="label"), ValueError,
     "labels"),
    (lambda: task_balanced_loss(torch.tensor(1.0), torch.tensor([1.0, 2.0])), ValueError, "box_loss"),
    (lambda: task_balanced_loss(torch.tensor(1.0), torch.tensor(1.0), balancing="magnitude"), TypeError,
     "rank_inputs"),
    (lambda: task_balanced_loss(torch.tensor(1.0), torch.tensor(1.0), balancing="constant"), TypeError,
     "box_weight"),
])
def test_bad_input(call, exc, words):
    with pytest.raises(exc, match=words):
        call()

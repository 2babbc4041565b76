"""Mixed precision of the torch adapters: float16 / bfloat16 inputs and torch.autocast on the CPU.

The rule under test (rankspec.adapters.torch._precision): the computation runs in float64 (AP / RS /
bucketed / APE / aLRP) or float32 (DR, RankDetNet, detector glue) whatever the input dtype, and the
loss and the gradient are that computation rounded once to the input's dtype.  So a float16 /
bfloat16 call must return *exactly* the high-precision result on the same (already rounded) input
values, cast to the low dtype - a loss computed in bfloat16 arithmetic would differ.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import rankspec.adapters.torch as T  # noqa: E402
from rankspec.adapters.torch.official import APLoss, BucketedRankSort, RankSort  # noqa: E402

LOW = [torch.bfloat16, torch.float16]
C = 3


def _batch(seed=0, n=40):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, C, generator=g) * 2
    cls = torch.randint(-1, C, (n,), generator=g)
    cls[:3] = torch.tensor([0, 1, 2])
    oh = torch.zeros(n, C)
    oh[cls >= 0, cls[cls >= 0]] = 1.0
    iou = torch.where(cls >= 0, torch.rand(n, generator=g) * 0.9 + 0.1, torch.zeros(n))
    return x, cls, oh, iou


# name -> (loss of (logits, cls, onehot, iou) returning a 0-d tensor, dtype of the internal computation)
CASES = {
    "ap": (lambda x, cls, oh, iou: T.ap_loss(x, oh), torch.float64),
    "rs": (lambda x, cls, oh, iou: T.rs_loss(x, oh * iou[:, None]), torch.float64),
    "bucketed_ap": (lambda x, cls, oh, iou: T.bucketed_ap_loss(x, oh), torch.float64),
    "bucketed_rs": (lambda x, cls, oh, iou: T.bucketed_rs_loss(x, oh * iou[:, None]), torch.float64),
    "ranksort": (lambda x, cls, oh, iou: RankSort.apply(x, oh * iou[:, None], 0.5)[0], torch.float64),
    "bucketed_ranksort": (lambda x, cls, oh, iou: BucketedRankSort.apply(x, oh * iou[:, None], 0.5)[0],
                          torch.float64),
    "aploss": (lambda x, cls, oh, iou: APLoss.apply(x, oh, 1.0), torch.float64),
    "pairwise_h": (lambda x, cls, oh, iou: T.pairwise_error_loss(x, oh), torch.float64),
    "ape": (lambda x, cls, oh, iou: T.ape_loss(x, oh, oh * iou[:, None]), torch.float64),
    "dr": (lambda x, cls, oh, iou: T.dr_loss(x, cls + 1), torch.float32),
    "rankdet": (lambda x, cls, oh, iou: T.rankdet_loss(x, cls, iou.to(x.dtype)), torch.float32),
    "rankdet_class": (lambda x, cls, oh, iou: T.class_specific_ranking_loss(x, cls), torch.float32),
    "alrp_cls": (lambda x, cls, oh, iou: T.alrp_loss(
        x, oh, (torch.randint(1, 64, (int(oh.sum()),)) / 64).to(x.dtype))[0], torch.float64),
}


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("name", list(CASES))
def test_low_precision_input_is_the_high_precision_result_rounded_once(name, dtype):
    fn, inner = CASES[name]
    x, cls, oh, iou = _batch()
    iou = iou.to(dtype).float()  # IoUs representable in the low dtype: both calls see the same values
    xl = x.to(dtype).requires_grad_()
    torch.manual_seed(0)
    loss = fn(xl, cls, oh, iou)
    loss.backward()
    assert loss.dtype == dtype and xl.grad.dtype == dtype
    # the same rounded values, computed in the adapter's internal dtype
    xh = xl.detach().to(inner).requires_grad_()
    torch.manual_seed(0)
    ref = fn(xh, cls, oh.to(inner), iou.to(inner))
    ref.backward()
    assert torch.isfinite(xl.grad).all()
    assert loss.item() == ref.detach().to(dtype).item()
    assert torch.equal(xl.grad, xh.grad.to(dtype))


def test_giou_loss_low_precision_is_float32_rounded():
    b = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 4.5], [0.5, 0.0, 1.5, 1.0]])
    g = torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 1.5, 2.0, 4.0], [2.0, 2.0, 3.0, 3.0]])
    for dtype in LOW:
        bl = b.to(dtype).requires_grad_()
        loss = T.giou_loss(bl, g.to(dtype))
        loss.backward()
        bh = bl.detach().float().requires_grad_()
        ref = T.giou_loss(bh, g.to(dtype).float())
        ref.backward()
        assert loss.dtype == dtype and bl.grad.dtype == dtype
        assert loss.item() == ref.detach().to(dtype).item()
        assert torch.equal(bl.grad, bh.grad.to(dtype))


@pytest.mark.parametrize("name", ["rs", "ap", "bucketed_rs", "ape", "dr", "rankdet"])
def test_bf16_autocast_on_cpu_trains_a_linear_head(name):
    """A Linear head under CPU autocast produces bfloat16 logits; the loss takes them, the gradient
    reaches the (float32) weights, and the numbers are those of the bfloat16 logits in full precision."""
    fn, inner = CASES[name]
    torch.manual_seed(0)
    head = torch.nn.Linear(4, C)
    feats = torch.randn(40, 4)
    _, cls, oh, iou = _batch()
    iou = iou.to(torch.bfloat16).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(feats)
        assert logits.dtype == torch.bfloat16  # autocast is on
        logits.retain_grad()
        loss = fn(logits, cls, oh, iou)
    loss.backward()
    assert logits.grad.dtype == torch.bfloat16
    assert head.weight.grad.dtype == torch.float32 and torch.isfinite(head.weight.grad).all()
    assert float(head.weight.grad.abs().sum()) > 0
    xh = logits.detach().to(inner).requires_grad_()
    ref = fn(xh, cls, oh.to(inner), iou.to(inner))
    ref.backward()
    assert loss.item() == ref.detach().to(torch.bfloat16).item()
    assert torch.equal(logits.grad, xh.grad.to(torch.bfloat16))


def test_autocast_is_off_inside_the_float32_adapters():
    """float32 inputs give the same bits with and without an enclosing autocast region."""
    x, cls, oh, iou = _batch(1)
    for name in ("dr", "rankdet", "rankdet_class"):
        fn, _ = CASES[name]
        a = fn(x, cls, oh, iou)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            b = fn(x, cls, oh, iou)
        assert a.dtype == b.dtype == torch.float32
        assert a.item() == b.item(), name


def test_float64_single_process_results_unchanged_by_the_precision_layer():
    """float32 / float64 inputs are computed in their own dtype (no silent cast)."""
    x, cls, oh, iou = _batch(2)
    x64 = x.double()
    loss = T.dr_loss(x64, cls + 1)
    assert loss.dtype == torch.float64
    from rankspec.refimpl import dr_loss as ref_dr
    assert loss.item() == pytest.approx(ref_dr(x64.numpy(), (cls + 1).numpy()).loss, rel=1e-12)
    np.testing.assert_array_equal(T.box_iou(torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[1.0, 1, 3, 3]])).numpy(),
                                  np.array([1.0 / 7.0], dtype=np.float32))

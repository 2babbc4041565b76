"""Torch adapters of aLRP Loss: drop-in aLRPLoss, functional, module."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rankspec.adapters.torch.alrp import ALRPLossModule, aLRPLoss, alrp_loss  # noqa: E402
from rankspec.refimpl.losses.alrp import alrp_loc_loss, alrp_loss as ref_alrp  # noqa: E402
from rankspec.refimpl.vectors_v2 import ATOL, RANK_RTOL, load_official_v2  # noqa: E402


def test_drop_in_reproduces_recorded_authors_outputs():
    for case in load_official_v2()["alrp"]:
        if case.raised:
            continue
        s = torch.tensor(case["logits"], dtype=torch.float32, requires_grad=True)
        t = torch.tensor(case["targets"], dtype=torch.float32)
        e = torch.tensor(case["regression_losses"], dtype=torch.float32)
        cls, rank, order = aLRPLoss.apply(s, t, e, case.meta["delta"])
        cls.backward()
        assert cls.dtype == torch.float32 and rank.dtype == torch.float32 and order.dtype == torch.int64
        np.testing.assert_allclose(cls.item(), case["cls_loss"], atol=ATOL, rtol=0)
        np.testing.assert_allclose(s.grad.numpy(), case["grad"], atol=ATOL, rtol=0)
        np.testing.assert_allclose(rank.numpy(), case["rank"], rtol=RANK_RTOL, atol=ATOL)


def test_drop_in_backward_scales_by_incoming_gradient_and_zero_positives():
    s = torch.tensor([2.0, 1.0, 0.5, 0.0], requires_grad=True)
    cls, rank, order = aLRPLoss.apply(s, torch.tensor([1.0, 0, 1, 0]), torch.tensor([0.2, 0.4]), 1.0)
    (3.0 * cls).backward()
    # hand-computed in tests/test_alrp.py: grad [0, 0.15, -0.2, 0.05]
    np.testing.assert_allclose(s.grad.numpy(), 3.0 * np.array([0.0, 0.15, -0.2, 0.05]), atol=1e-6)
    s0 = torch.tensor([0.3, -1.0], requires_grad=True)
    cls0, rank0, order0 = aLRPLoss.apply(s0, torch.tensor([0.0, 0.0]), torch.zeros(0))
    cls0.backward()
    assert cls0.item() == 0.0 and rank0.numel() == 0 and not s0.grad.any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_functional_matches_reference_and_loc_gradient(dtype):
    rng = np.random.default_rng(0)
    s_np = rng.normal(0, 2, 50)
    t_np = rng.choice([0.0, 1.0, -1.0], 50, p=[0.6, 0.3, 0.1])
    e_np = rng.uniform(0, 1, int(np.count_nonzero(t_np == 1)))
    s = torch.tensor(s_np, dtype=dtype, requires_grad=True)
    e = torch.tensor(e_np, dtype=dtype, requires_grad=True)
    cls, loc = alrp_loss(s, torch.tensor(t_np, dtype=dtype), e, 0.5)
    (cls + 2.0 * loc).backward()
    ref = ref_alrp(s_np.astype(np.float32) if dtype == torch.float32 else s_np, t_np, e_np, 0.5,
                   buffer_dtype="float64")
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(cls.item(), ref.loss, atol=tol)
    np.testing.assert_allclose(s.grad.numpy(), ref.grad, atol=tol)
    loc_ref = alrp_loc_loss(e_np, ref.terms["rank"], ref.terms["order"])
    np.testing.assert_allclose(loc.item(), loc_ref.loss, atol=tol)
    np.testing.assert_allclose(e.grad.numpy(), 2.0 * loc_ref.grad, atol=tol)


def test_module_self_balancing():
    m = ALRPLossModule(1.0, period=2)
    s = torch.tensor([2.0, 1.0, 0.5, 0.0])
    t = torch.tensor([1.0, 0, 1, 0])
    e = torch.tensor([0.2, 0.4], dtype=torch.float32)
    out = m(s, t, e)
    assert out["loss_bbox"].item() == pytest.approx(50 * 0.2, rel=1e-6)  # initial weight 50, loc 0.2
    m(s, t, e)
    # after one period: (mean loc + mean cls) / mean loc = (0.2 + 1/6) / 0.2 = 11/6
    assert m.sb_weight == pytest.approx((0.2 + 1 / 6) / 0.2, rel=1e-6)
    with pytest.raises(ValueError, match="period"):
        ALRPLossModule(period=0)

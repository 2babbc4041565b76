"""PyTorch adapters of APE (key APE): agreement with the NumPy reference, gradcheck, dtypes, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import ranking_problems

torch = pytest.importorskip("torch")

from rankspec.adapters.torch.ape import (APELoss, PairwiseErrorLoss, ape_loss, arps_cluster_split,  # noqa: E402
                                         pairwise_error_loss)
from rankspec import refimpl as ref  # noqa: E402

OPTS = st.fixed_dictionaries({
    "distance": st.sampled_from(["h", "sigmoid", "ce"]),
    "lam": st.sampled_from([2.0, 4.0, 8.0]),
    "balance": st.sampled_from(["rank", "n_neg"]),
    "self_rank": st.sampled_from(["h0", "one", "half", "zero"]),
    "pair_threshold": st.sampled_from([None, 0.25, math.inf]),
    "normalization": st.sampled_from(["positives", "active", "none"]),
    "iou_weight": st.booleans(),
})


def _run(fn, logits, labels, ious, dtype=torch.float64, **kw):
    s = torch.tensor(logits, dtype=dtype, requires_grad=True)
    loss = fn(s, torch.tensor(labels), torch.tensor(ious, dtype=dtype), **kw)
    loss.backward()
    return float(loss.detach()), s.grad.detach().to(torch.float64).numpy(), loss


@given(ranking_problems(max_size=20, min_pos=0), OPTS, st.booleans())
def test_adapter_equals_reference(p, opts, adaptive):
    d = p.delta
    if adaptive:
        r = ref.ape_loss(p.logits, p.labels, p.targets, delta=d, **opts)
        loss, grad, _ = _run(ape_loss, p.logits, p.labels, p.targets, delta=d, **opts)
    else:
        r = ref.pairwise_error_loss(p.logits, p.labels, delta=d, ious=p.targets, **opts)
        loss, grad, _ = _run(lambda s, y, i, **k: pairwise_error_loss(s, y, ious=i, **k),
                             p.logits, p.labels, p.targets, delta=d, **opts)
    assert loss == pytest.approx(r.loss, abs=1e-12)
    np.testing.assert_allclose(grad, r.grad, atol=1e-12)


@settings(max_examples=15)
@given(ranking_problems(max_size=16, grid=False, delta=0.5), OPTS)
def test_float32_close_to_reference(p, opts):
    # float32 inputs are compared with the reference on the same (float32-rounded) inputs: pair validity and
    # ARPS membership are discontinuous, so rounding the inputs differently could legitimately change them.
    s32 = p.logits.astype(np.float32).astype(np.float64)
    iou32 = p.targets.astype(np.float32).astype(np.float64)
    r = ref.ape_loss(s32, p.labels, iou32, delta=0.5, **opts)
    loss, grad, t = _run(ape_loss, s32, p.labels, iou32, dtype=torch.float32, delta=0.5, **opts)
    assert t.dtype == torch.float32
    assert loss == pytest.approx(r.loss, abs=1e-5)
    np.testing.assert_allclose(grad, r.grad, atol=1e-5)


@given(ranking_problems(max_size=16), st.sampled_from([2.0, 8.0]), st.sampled_from(["rank", "n_neg"]))
def test_ce_autograd_gradient_is_error_driven_update(p, lam, balance):
    # The adapter's CE form is plain autograd (BC detached); divided by lambda its gradient must equal the
    # reference error-driven update of the S form (APE Eq. 7 with D = S).
    _, grad, _ = _run(ape_loss, p.logits, p.labels, p.targets, distance="ce", lam=lam, balance=balance,
                      saturation="exact")
    ed = ref.ape_loss(p.logits, p.labels, p.targets, distance="sigmoid", lam=lam, balance=balance)
    np.testing.assert_allclose(grad, ed.grad, atol=1e-12)


def test_gradcheck_ce_form_with_constant_balance():
    # balance='n_neg' with every pair valid: BC depends on labels and IoUs only, so the CE loss is a smooth
    # function of the logits and autograd's gradient is its true derivative.
    g = torch.Generator().manual_seed(0)
    s = torch.randn(12, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 0, 0, 1, 0])
    iou = torch.rand(12, generator=g, dtype=torch.float64)
    for kw in (dict(lam=2.0), dict(lam=8.0, scale_by_lambda=False, iou_weight=False)):
        assert torch.autograd.gradcheck(
            lambda x: ape_loss(x, y, iou, balance="n_neg", pair_threshold=math.inf, saturation="exact", **kw), (s,))
        assert torch.autograd.gradcheck(
            lambda x: pairwise_error_loss(x, y, distance="ce", balance="n_neg", pair_threshold=math.inf, **kw),
            (s,))


def test_terms_modules_and_shapes():
    s = torch.tensor([[2.0, 0.0], [1.5, -3.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[1, 1], [0, 0]])
    iou = torch.tensor([[0.5, 0.9], [0.0, 0.0]], dtype=torch.float64)
    loss, terms = ape_loss(s, y, iou, distance="h", self_rank="one", iou_weight=False, return_terms=True)
    assert float(loss.detach()) == pytest.approx(13 / 30, abs=1e-15)  # the hand case of test_ape.py
    assert float(terms["num_positives"]) == 2
    m = APELoss(distance="h", self_rank="one", iou_weight=False)
    assert float(m(s, y, iou).detach()) == pytest.approx(13 / 30, abs=1e-15)
    m(s, y, iou).backward()
    assert s.grad.shape == (2, 2)
    pe = PairwiseErrorLoss()
    assert float(pe(s, y).detach()) == pytest.approx((0.2 + 1 / 3) / 2, abs=1e-15)
    # no positives: zero loss that still backpropagates zeros
    z = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    out = ape_loss(z, torch.zeros(3), torch.zeros(3, dtype=torch.float64))
    out.backward()
    assert float(out.detach()) == 0.0 and not torch.any(z.grad)


def test_cluster_split_wrapper_matches_reference():
    p = torch.tensor([0.9, 0.8, 0.1, 0.15, 0.05, 0.85, 0.12, 0.2])
    q = torch.tensor([0.8, 0.9, 0.1, 0.05, 0.1, 0.7, 0.02, 0.1])
    ids = torch.zeros(8, dtype=torch.int64)
    out = arps_cluster_split(p, q, ids, separation="component")
    assert out.dtype == torch.int64
    np.testing.assert_array_equal(out.numpy(), ref.arps_cluster_split(p.numpy(), q.numpy(), ids.numpy(),
                                                                      separation="component"))


@pytest.mark.parametrize("call, exc, words", [
    (lambda: ape_loss([0.0, 1.0], torch.tensor([1, 0]), torch.tensor([0.5, 0.0])), TypeError, "logits"),
    (lambda: ape_loss(torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([0.5, 0.0])), TypeError, "dtype"),
    (lambda: ape_loss(torch.tensor([0.0, 1.0]), torch.tensor([1, 3]), torch.tensor([0.5, 0.0])), ValueError,
     "labels"),
    (lambda: ape_loss(torch.tensor([0.0, 1.0]), torch.tensor([1, 0]), torch.tensor([0.5])), ValueError, "ious"),
    (lambda: ape_loss(torch.tensor([0.0, 1.0]), torch.tensor([1, 0]), torch.tensor([2.0, 0.0])), ValueError,
     "ious"),
    (lambda: ape_loss(torch.tensor([0.0, float("inf")]), torch.tensor([1, 0]), torch.tensor([0.5, 0.0])),
     ValueError, "logits"),
    (lambda: ape_loss(torch.tensor([0.0, 1.0]), torch.tensor([1, 0]), None), TypeError, "ious is required"),
    (lambda: ape_loss(torch.tensor([0.0, 1.0]), torch.tensor([1, 0]), torch.tensor([0.5, 0.0]), distance="x"),
     ValueError, "distance"),
    (lambda: ape_loss(torch.tensor([0.0, 1.0]), torch.tensor([1, 0]), torch.tensor([0.5, 0.0]), lam=-1.0),
     ValueError, "lam"),
    (lambda: pairwise_error_loss(torch.tensor([0.0, 1.0]), torch.tensor([1, 0]), iou_weight=True), TypeError,
     "ious"),
    (lambda: arps_cluster_split([0.1], [0.1], [0]), TypeError, "ranking_scores"),
])
def test_bad_input(call, exc, words):
    with pytest.raises(exc, match=words):
        call()


def test_adapter_defaults_reproduce_the_authors_recorded_outputs():
    # the v2 records of the authors' APELoss (float32): same defaults as the reference, labels -1 included
    from rankspec.refimpl.vectors_v2 import ATOL, load_official_v2

    for case in load_official_v2()["ape"]:
        x = torch.tensor(case["logits"], requires_grad=True)
        loss = ape_loss(x, torch.tensor(case["targets"]), torch.tensor(case["ious"]), lam=float(case.meta["lamb"]))
        loss.backward()
        if case.raised:  # documented result where the authors raise
            assert float(loss.detach()) == 0.0 and not bool(x.grad.any())
            continue
        assert abs(float(loss.detach()) - float(case["loss"])) <= ATOL
        np.testing.assert_allclose(x.grad.numpy(), case["grad"], rtol=0, atol=ATOL)

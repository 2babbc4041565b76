"""The torch adapter of the RankDetNet losses against the NumPy reference; autograd checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

torch = pytest.importorskip("torch")

from rankspec.adapters.torch.rankdet import (ClassSpecificRankingLoss, GlobalRankingLoss,  # noqa: E402
                                             IoUGuidedRankingLoss, RankDetLoss, class_specific_ranking_loss,
                                             global_ranking_loss, iou_guided_ranking_loss, rankdet_loss,
                                             reweighted_pair_loss)
from rankspec.refimpl.losses import rankdet as R  # noqa: E402
from rankspec.refimpl.reference import rankdet as RM  # noqa: E402

SETTINGS = settings(max_examples=30, deadline=None)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def random_image(seed, n_max=14, c_max=3):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, n_max + 1))
    c = int(rng.integers(1, c_max + 1))
    return (rng.normal(size=(n, c)) * 1.5, rng.integers(RM.IGNORE, c, size=n), rng.uniform(0.05, 0.95, size=n),
            rng.integers(0, 2, size=n))


def tensors(logits, labels, ious, levels, dtype=torch.float64, device="cpu"):
    return (torch.tensor(logits, dtype=dtype, device=device, requires_grad=True),
            torch.tensor(labels, device=device), torch.tensor(ious, dtype=dtype, device=device, requires_grad=True),
            torch.tensor(levels, device=device))


def grad_or_zero(t):
    return np.zeros(tuple(t.shape)) if t.grad is None else t.grad.detach().cpu().numpy()


OPTIONS = st.fixed_dictionaries({
    "rank_function": st.sampled_from(RM.RANK_FUNCTIONS),
    "score_space": st.sampled_from(RM.SCORE_SPACES),
    "reweighting": st.sampled_from(RM.REWEIGHTINGS),
    "mining": st.sampled_from(RM.MININGS),
    "group_split": st.sampled_from(("range", "count")),
    "neg_ratio": st.integers(1, 4),
    "objectness": st.sampled_from(RM.OBJECTNESS),
    "class_reduction": st.sampled_from(RM.CLASS_REDUCTIONS),
    "alpha": st.floats(0.1, 3.0),
    "iou_grad": st.sampled_from(RM.IOU_GRADS),
    "iou_pairs": st.sampled_from(RM.IOU_PAIRS),
    "iou_normalization": st.sampled_from(RM.IOU_NORMALIZATIONS),
    "global_groups": st.integers(1, 15),
    "class_groups": st.integers(1, 4),
})


# ---------------------------------------------------------------------------------------------------------------
# adapter == reference
# ---------------------------------------------------------------------------------------------------------------

@SETTINGS
@given(seed=st.integers(0, 10 ** 6), opts=OPTIONS)
def test_rankdet_loss_matches_reference(seed, opts):
    logits, labels, ious, levels = random_image(seed)
    ref = R.rankdet_loss(logits, labels, ious, levels, 0.25, **opts)
    tl, tlab, ti, tlev = tensors(logits, labels, ious, levels)
    reg = torch.tensor(0.25, dtype=torch.float64, requires_grad=True)
    total, terms = rankdet_loss(tl, tlab, ti, tlev, reg, return_terms=True, **opts)
    total.backward()
    assert total.item() == pytest.approx(ref.loss, rel=1e-10, abs=1e-12)
    for k in ("global", "class", "iou", "regression"):
        assert terms[k].item() == pytest.approx(ref.terms[k], rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(tl.grad.numpy(), ref.grad, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grad_or_zero(ti), ref.terms["grad_ious"], rtol=1e-9, atol=1e-12)
    assert reg.grad.item() == 1.0


@SETTINGS
@given(seed=st.integers(0, 10 ** 6), opts=OPTIONS)
def test_single_losses_match_reference(seed, opts):
    logits, labels, ious, levels = random_image(seed)
    common = {k: opts[k] for k in ("rank_function", "score_space")}
    rank = dict(common, reweighting=opts["reweighting"], mining=opts["mining"], group_split=opts["group_split"],
                neg_ratio=opts["neg_ratio"])
    cases = [
        (R.global_ranking_loss, global_ranking_loss, dict(rank, objectness=opts["objectness"],
                                                          num_groups=opts["global_groups"]), False),
        (R.class_specific_ranking_loss, class_specific_ranking_loss,
         dict(rank, class_reduction=opts["class_reduction"], num_groups=opts["class_groups"]), False),
        (R.iou_guided_ranking_loss, iou_guided_ranking_loss,
         dict(common, alpha=opts["alpha"], iou_grad=opts["iou_grad"], iou_pairs=opts["iou_pairs"],
              iou_normalization=opts["iou_normalization"]), True),
    ]
    for ref_fn, torch_fn, kw, with_ious in cases:
        tl, tlab, ti, tlev = tensors(logits, labels, ious, levels)
        extra_ref = (ious, levels) if with_ious else ()
        extra = (ti, tlev) if with_ious else ()
        ref = ref_fn(logits, labels, *extra_ref, **kw)
        out = torch_fn(tl, tlab, *extra, **kw)
        out.backward()
        assert out.item() == pytest.approx(ref.loss, rel=1e-10, abs=1e-12)
        np.testing.assert_allclose(tl.grad.numpy(), ref.grad, rtol=1e-9, atol=1e-12)
        if with_ious:
            np.testing.assert_allclose(grad_or_zero(ti), ref.terms["grad_ious"], rtol=1e-9, atol=1e-12)


@SETTINGS
@given(seed=st.integers(0, 10 ** 6), mining=st.sampled_from(RM.MININGS))
def test_global_loss_on_objectness_logits(seed, mining):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 20))
    logits, labels = rng.normal(size=n), rng.integers(-1, 3, size=n)
    ref = R.global_ranking_loss(logits, labels, mining=mining)
    t = torch.tensor(logits, requires_grad=True)
    out = global_ranking_loss(t, torch.tensor(labels), mining=mining)
    out.backward()
    assert out.item() == pytest.approx(ref.loss, rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(t.grad.numpy(), ref.grad, rtol=1e-9, atol=1e-12)


def test_hand_case_through_torch():
    # the reference's hand case: cosh(1) / cosh(0.5); grad of the positives -e^{-1}/d, -e/d, d = e^-0.5 + e^0.5
    t = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64, requires_grad=True)
    out = global_ranking_loss(t, torch.tensor([0, 0, -1]), score_space="logit", mining="all")
    out.backward()
    d = math.exp(-0.5) + math.exp(0.5)
    assert out.item() == pytest.approx(math.cosh(1) / math.cosh(0.5), rel=1e-12)
    np.testing.assert_allclose(t.grad.numpy(), [-math.exp(-1) / d, -math.e / d, (math.exp(-1) + math.e) / d],
                               rtol=1e-12)


def test_iou_stop_gradient_on_the_less_confident_sample():
    logits = torch.tensor([[0.8], [0.3]], dtype=torch.float64, requires_grad=True)
    ious = torch.tensor([0.5, 0.9], dtype=torch.float64, requires_grad=True)
    out = iou_guided_ranking_loss(logits, torch.tensor([0, 0]), ious, score_space="logit")
    out.backward()
    L = math.exp(0.2)  # u = -(0.8 - 0.3)(0.5 - 0.9) = 0.2
    assert out.item() == pytest.approx(L, rel=1e-12)
    np.testing.assert_allclose(ious.grad.numpy(), [-0.5 * L, 0.0], rtol=1e-12)  # s of the less confident: frozen
    np.testing.assert_allclose(logits.grad.numpy().ravel(), [0.4 * L, -0.4 * L], rtol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# gradcheck in float64
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mining", RM.MININGS)
@pytest.mark.parametrize("reweighting", ["mean", "none"])
@pytest.mark.parametrize("rank_function", RM.RANK_FUNCTIONS)
def test_gradcheck_global_and_class(mining, reweighting, rank_function):
    logits, labels, _, _ = random_image(7, n_max=10)
    lab = torch.tensor(labels)
    x = torch.tensor(logits, requires_grad=True)
    kw = dict(mining=mining, reweighting=reweighting, rank_function=rank_function)
    assert torch.autograd.gradcheck(lambda t: global_ranking_loss(t, lab, **kw), (x,))
    assert torch.autograd.gradcheck(lambda t: class_specific_ranking_loss(t, lab, **kw), (x,))


@pytest.mark.parametrize("rank_function", RM.RANK_FUNCTIONS)
def test_gradcheck_pair_loss_with_frozen_z(rank_function):
    # dynamic z: autograd must equal the derivative of sum z L with z held at its current value
    rng = np.random.default_rng(3)
    neg = torch.tensor(rng.normal(size=5), requires_grad=True)
    pos = torch.tensor(rng.normal(size=3), requires_grad=True)
    L = RM.rank_function_values(neg.detach().numpy()[:, None] - pos.detach().numpy()[None, :], rank_function)[0]
    z = torch.tensor(L / L.sum())
    assert torch.autograd.gradcheck(lambda a, b: reweighted_pair_loss(a, b, rank_function=rank_function, z=z),
                                    (neg, pos))
    # and without z given, the dynamic version has the same gradient at this point
    dyn = reweighted_pair_loss(neg, pos, rank_function=rank_function)
    frozen = reweighted_pair_loss(neg, pos, rank_function=rank_function, z=z)
    g1 = torch.autograd.grad(dyn, (neg, pos))
    g2 = torch.autograd.grad(frozen, (neg, pos))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("pairs", RM.IOU_PAIRS)
@pytest.mark.parametrize("score_space", RM.SCORE_SPACES)
def test_gradcheck_iou_guided(pairs, score_space):
    logits, labels, ious, levels = random_image(9, n_max=10)
    labels = np.where(labels == RM.IGNORE, 0, labels)
    tl, tlab, ti, tlev = tensors(logits, labels, ious, levels)
    kw = dict(iou_pairs=pairs, score_space=score_space)
    # iou_grad="both" is the true gradient in both arguments
    assert torch.autograd.gradcheck(lambda a, b: iou_guided_ranking_loss(a, tlab, b, tlev, iou_grad="both", **kw),
                                    (tl, ti))
    # the logits' gradient does not depend on the IoU stop-gradient
    assert torch.autograd.gradcheck(lambda a: iou_guided_ranking_loss(a, tlab, ti.detach(), tlev, **kw), (tl,))


# ---------------------------------------------------------------------------------------------------------------
# modules, batches, dtypes, devices, edge cases
# ---------------------------------------------------------------------------------------------------------------

def test_modules_sum_over_a_batch_of_images():
    imgs = [random_image(s, n_max=8, c_max=2) for s in (1, 2, 3)]
    n = max(len(i[1]) for i in imgs)
    C = 2
    L = np.zeros((3, n, C)); Y = np.full((3, n), RM.IGNORE); S = np.zeros((3, n)); K = np.zeros((3, n), dtype=int)
    for b, (lg, lb, io, lv) in enumerate(imgs):
        m, c = lg.shape
        L[b, :m, :c] = lg; Y[b, :m] = lb; S[b, :m] = io; K[b, :m] = lv
    kw = dict(mining="ohem")
    expected = sum(R.rankdet_loss(L[b], Y[b], S[b], K[b], **kw).loss for b in range(3))
    tl = torch.tensor(L, requires_grad=True)
    reg = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    out = RankDetLoss(**kw)(tl, torch.tensor(Y), torch.tensor(S), torch.tensor(K), regression=reg)
    assert out.item() == pytest.approx(expected + 0.5, rel=1e-10)
    out.backward()
    expected_grad = np.stack([R.rankdet_loss(L[b], Y[b], S[b], K[b], **kw).grad for b in range(3)])
    np.testing.assert_allclose(tl.grad.numpy(), expected_grad, rtol=1e-9, atol=1e-12)
    assert reg.grad.item() == 1.0
    g = GlobalRankingLoss(**kw)(torch.tensor(L), torch.tensor(Y)).item()
    c = ClassSpecificRankingLoss(**kw)(torch.tensor(L), torch.tensor(Y)).item()
    u = IoUGuidedRankingLoss()(torch.tensor(L), torch.tensor(Y), torch.tensor(S), torch.tensor(K)).item()
    assert g + c + u == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="leading dimension B"):
        GlobalRankingLoss()(torch.tensor(L), torch.tensor(Y[:2]))


@pytest.mark.parametrize("device", DEVICES)
def test_float32_and_device(device):
    logits, labels, ious, levels = random_image(21)
    ref = R.rankdet_loss(logits, labels, ious, levels, mining="ohem")
    tl, tlab, ti, tlev = tensors(logits, labels, ious, levels, dtype=torch.float32, device=device)
    out = rankdet_loss(tl, tlab, ti, tlev, mining="ohem")
    out.backward()
    assert out.dtype == torch.float32 and tl.grad.dtype == torch.float32 and out.device.type == device
    assert out.item() == pytest.approx(ref.loss, rel=1e-5)
    np.testing.assert_allclose(tl.grad.cpu().numpy(), ref.grad, rtol=1e-4, atol=1e-6)


def test_no_positives_gives_zero_loss_and_zero_gradient():
    t = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    ious = torch.rand(4, dtype=torch.float64)
    out = rankdet_loss(t, torch.tensor([-1, -1, -2, -1]), ious)
    out.backward()
    assert out.item() == 0.0 and not t.grad.any()


def test_one_hot_labels_in_torch():
    logits, labels, ious, levels = random_image(4)
    labels = np.where(labels == RM.IGNORE, RM.BACKGROUND, labels)
    onehot = np.zeros(logits.shape)
    onehot[labels >= 0, labels[labels >= 0]] = 1
    a = rankdet_loss(torch.tensor(logits), torch.tensor(labels), torch.tensor(ious), torch.tensor(levels))
    b = rankdet_loss(torch.tensor(logits), torch.tensor(onehot, dtype=torch.bool), torch.tensor(ious),
                     torch.tensor(levels))
    assert a.item() == b.item()


# ---------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------

def _good():
    return dict(logits=torch.zeros(3, 2, dtype=torch.float64), labels=torch.tensor([0, -1, 1]),
                ious=torch.tensor([0.5, 0.0, 0.7], dtype=torch.float64))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(logits=np.zeros((3, 2))), TypeError, "logits must be a torch.Tensor"),
    (dict(logits=torch.zeros(3, 2, dtype=torch.int64)), TypeError, "floating-point dtype"),
    (dict(logits=torch.zeros(0, 2)), ValueError, "logits is empty"),
    (dict(logits=torch.zeros(3)), ValueError, r"logits must have shape \[N, C\]"),
    (dict(logits=torch.tensor([[0.0, float("nan")], [0, 0], [0, 0]])), ValueError, "NaN or infinite"),
    (dict(labels=torch.tensor([0, 2, -1])), ValueError, r"labels must be 0\.\.1"),
    (dict(labels=torch.tensor([0.5, 0.0, -1.0])), ValueError, "whole numbers"),
    (dict(labels=torch.tensor([True, False, True])), TypeError, "boolean"),
    (dict(labels=torch.tensor([0, 1])), ValueError, r"labels must have shape \(3,\)"),
    (dict(ious=torch.tensor([0, 0, 1])), TypeError, "ious must have a floating-point dtype"),
    (dict(ious=torch.tensor([1.5, 0.0, 0.7])), ValueError, r"\[0, 1\]"),
    (dict(ious=torch.tensor([0.5, 0.7])), ValueError, r"ious must have shape \(3,\)"),
    (dict(levels=torch.tensor([0, -1, 0])), ValueError, "levels must be pyramid-level ids >= 0"),
    (dict(rank_function="hinge"), ValueError, "rank_function must be one of"),
    (dict(mining="random"), ValueError, "mining must be one of"),
    (dict(group_split="unit", score_space="logit"), ValueError, "needs score_space='probability'"),
    (dict(global_groups=0), ValueError, "num_groups must be >= 1"),
    (dict(neg_ratio=1.5), TypeError, "neg_ratio must be an integer"),
    (dict(alpha=0), ValueError, "alpha must be finite and > 0"),
    (dict(iou_grad="lower"), ValueError, "iou_grad must be one of"),
    (dict(weights=(1, 1)), ValueError, "weights must be 4"),
    (dict(ious=None), ValueError, "ious is required"),
    (dict(regression=torch.tensor([1.0, 2.0])), ValueError, "regression must be a finite scalar"),
])
def test_bad_input(kwargs, exc, match):
    args = dict(_good(), **kwargs)
    with pytest.raises(exc, match=match):
        rankdet_loss(**args)

"""DR Loss torch adapter (rankspec.adapters.torch.dr) against the NumPy reference."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from rankspec.adapters.torch.dr import DRLoss, dr_loss, dr_surrogate
from rankspec.refimpl import dr_loss as ref_dr_loss, hard_negative_prior
from rankspec.refimpl.reference.dr import surrogate_loss

SETTINGS = settings(max_examples=40, deadline=None)

OPTIONS = [
    dict(),
    dict(pairing="negonly"),
    dict(pairing="all"),
    dict(pairing="worst"),
    dict(surrogate="quadratic", rho=0.2),
    dict(surrogate="hinge"),
    dict(surrogate="hinge", pairing="all", gamma=0.0),
    dict(score_transform="identity", lambda_pos=0.3, lambda_neg=0.05),
    dict(reduction="mean", tau=1.0),
    dict(empty_positive_score=None, empty_negative_score=None),
    dict(empty_positive_score=None, pairing="negonly"),
    dict(empty_negative_score=None, pairing="all"),
]


def random_batch(rng, with_empty=True):
    """[n, C] logits, class ids in -1..C, image ids; some images may lack positives or negatives."""
    n = int(rng.integers(1, 10))
    C = int(rng.integers(1, 4))
    logits = rng.normal(0, 2, size=(n, C))
    labels = rng.integers(-1, C + 1, size=n)
    if not with_empty:
        labels[0] = 1
    image_ids = rng.integers(0, 3, size=n) * 5
    return logits, labels, image_ids


def _compare(logits, labels, image_ids, opts, prior_neg=None, prior_pos=None):
    ref = ref_dr_loss(logits, labels, image_ids=image_ids, prior_neg=prior_neg, prior_pos=prior_pos, **opts)
    x = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    loss, terms = dr_loss(x, torch.as_tensor(labels), image_ids=torch.as_tensor(image_ids),
                          prior_neg=None if prior_neg is None else torch.as_tensor(prior_neg),
                          prior_pos=None if prior_pos is None else torch.as_tensor(prior_pos),
                          return_terms=True, **opts)
    loss.backward()
    assert loss.item() == pytest.approx(ref.loss, rel=1e-11, abs=1e-13)
    np.testing.assert_allclose(x.grad.numpy(), ref.grad, rtol=1e-9, atol=1e-12)
    for key in ("loss_per_image", "p_neg", "p_pos"):
        np.testing.assert_allclose(terms[key].numpy(), ref.terms[key], rtol=1e-11, atol=1e-13, equal_nan=True)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), opts=st.sampled_from(OPTIONS), use_prior=st.booleans())
def test_adapter_equals_reference(seed, opts, use_prior):
    rng = np.random.default_rng(seed)
    logits, labels, image_ids = random_batch(rng)
    prior_neg = prior_pos = None
    if use_prior:
        prior_neg = rng.uniform(0, 1, size=logits.shape) * (rng.uniform(size=logits.shape) > 0.3)
        prior_pos = rng.uniform(0.1, 1, size=logits.shape)
    _compare(logits, labels, image_ids, opts, prior_neg, prior_pos)


def test_adapter_equals_reference_hard_negative_mining_and_entry_layout():
    rng = np.random.default_rng(7)
    logits, labels, image_ids = random_batch(rng, with_empty=False)
    o = hard_negative_prior(logits, labels, ratio=3.0, image_ids=image_ids)
    for opts in OPTIONS[:4]:
        _compare(logits, labels, image_ids, opts, prior_neg=o)
    # per-entry labels {-1, 0, 1} of the logits' shape, and 1-D logits
    entries = rng.integers(-1, 2, size=logits.shape)
    _compare(logits, entries, image_ids, {})
    _compare(logits[:, 0], entries[:, 0], image_ids, {"pairing": "all"})
    _compare(logits[:, :, None].repeat(2, axis=2), entries[:, :, None].repeat(2, axis=2), image_ids, {})


def test_authors_initialisation_value():
    # SigmoidDRLoss defaults at logits 0: 4 log(1 + e^3) / 6 = 2.0324 per image
    logits = torch.zeros(6, 4)
    labels = torch.tensor([1, 0, 0, 4, 0, -1])
    assert dr_loss(logits, labels).item() == pytest.approx(4 * math.log1p(math.exp(3)) / 6, rel=1e-6)
    two = dr_loss(logits, labels, image_ids=torch.tensor([0, 0, 0, 1, 1, 1]))
    assert two.item() == pytest.approx(2 * 4 * math.log1p(math.exp(3)) / 6, rel=1e-6)


@pytest.mark.parametrize("opts", OPTIONS + [dict(prior="random")])
def test_gradcheck_float64(opts):
    torch.manual_seed(0)
    opts = dict(opts)
    kw = {}
    if opts.pop("prior", None):
        kw["prior_neg"] = torch.rand(7, 3, dtype=torch.float64) + 0.1
        kw["prior_pos"] = torch.rand(7, 3, dtype=torch.float64) + 0.1
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([1, 0, 3, -1, 2, 0, 0])
    image_ids = torch.tensor([0, 0, 0, 2, 2, 1, 1])  # image 1 has no positive
    assert torch.autograd.gradcheck(lambda v: dr_loss(v, labels, image_ids=image_ids, **opts, **kw), (x,))


def test_gradcheck_second_order_smooth_default():
    x = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([1, 0, 2, 0, 0])
    assert torch.autograd.gradgradcheck(lambda v: dr_loss(v, labels), (x,))


@pytest.mark.parametrize("opts", OPTIONS)
def test_float32(opts):
    rng = np.random.default_rng(1)
    logits, labels, image_ids = random_batch(rng, with_empty=False)
    ref = ref_dr_loss(logits, labels, image_ids=image_ids, **opts)
    x = torch.tensor(logits, dtype=torch.float32, requires_grad=True)
    loss = dr_loss(x, torch.as_tensor(labels), image_ids=torch.as_tensor(image_ids), **opts)
    assert loss.dtype == torch.float32
    loss.backward()
    assert x.grad.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.loss, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(x.grad.numpy(), ref.grad, rtol=1e-4, atol=1e-5)


def test_no_nan_gradient_with_dropped_images():
    # images without positives / negatives under None must give exactly zero gradient, never NaN
    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 2])
    for pairing in ("dr", "negonly", "all", "worst"):
        loss = dr_loss(x, labels, image_ids=torch.tensor([0, 0, 1, 1]), empty_positive_score=None,
                       empty_negative_score=None, pairing=pairing)
        (g,) = torch.autograd.grad(loss, x)
        assert torch.isfinite(g).all()
        assert torch.all(g[:2] == 0)


def test_all_candidates_ignored_still_differentiable():
    # both sides empty: loss tau l(0 - 1 + gamma) from constants, gradient exactly zero
    x = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    for pairing in ("dr", "negonly", "all", "worst"):
        loss = dr_loss(x, torch.tensor([-1, -1]), pairing=pairing)
        assert loss.item() == pytest.approx(4 * math.log1p(math.exp(-3)) / 6, rel=1e-14)
        (g,) = torch.autograd.grad(loss, x)
        assert torch.all(g == 0)


def test_extreme_logits_are_finite():
    x = torch.tensor([[60.0, -60.0], [-80.0, 35.0]], requires_grad=True)
    for opts in OPTIONS:
        loss = dr_loss(x, torch.tensor([1, 2]), **opts)
        (g,) = torch.autograd.grad(loss, x)
        assert torch.isfinite(loss) and torch.isfinite(g).all()


def test_module_matches_function():
    torch.manual_seed(2)
    x = torch.randn(6, 3, dtype=torch.float64)
    labels = torch.tensor([1, 0, 3, -1, 2, 0])
    img = torch.tensor([0, 0, 1, 1, 1, 3])
    module = DRLoss(pairing="negonly", L=4.0)
    assert module(x, labels, img).item() == dr_loss(x, labels, image_ids=img, pairing="negonly", L=4.0).item()
    assert "pairing='negonly'" in repr(module)
    with pytest.raises(ValueError, match="pairing must be one of"):
        DRLoss(pairing="bogus")


@pytest.mark.parametrize("kind", ["logistic", "quadratic", "hinge"])
def test_surrogates_match_reference(kind):
    z = torch.linspace(-3, 3, 61, dtype=torch.float64)
    ref, _ = surrogate_loss(z.numpy(), kind, L=5.0, rho=0.3)
    np.testing.assert_allclose(dr_surrogate(z, kind, 5.0, 0.3).numpy(), ref, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("args, kwargs, exc, match", [
    ((np.zeros((2, 2)), torch.tensor([0, 1])), {}, TypeError, "logits must be a torch.Tensor"),
    ((torch.zeros(2, 2, dtype=torch.long), torch.tensor([0, 1])), {}, TypeError, "floating dtype"),
    ((torch.zeros(2, 2, 2), torch.tensor([0, 1])), {}, ValueError, "labels must have shape"),
    ((torch.tensor(1.0), torch.tensor(1)), {}, ValueError, "logits must be"),
    ((torch.zeros(0, 2), torch.zeros(0)), {}, ValueError, "logits is empty"),
    ((torch.tensor([[float("nan"), 0.0]]), torch.tensor([0])), {}, ValueError, "NaN or infinite"),
    ((torch.zeros(2, 2), torch.tensor([0, 3])), {}, ValueError, "class-id labels"),
    ((torch.zeros(2, 2), torch.tensor([0.0, 0.5])), {}, ValueError, "labels must contain integers"),
    ((torch.zeros(2, 2), torch.tensor([[0, 2], [0, 0]])), {}, ValueError, "per-entry labels"),
    ((torch.zeros(2, 2), torch.tensor([0, 1, 0])), {}, ValueError, "labels must have shape"),
    ((torch.zeros(2, 2), torch.tensor([0, 1])), dict(image_ids=torch.tensor([0])), ValueError,
     "image_ids must have shape"),
    ((torch.zeros(2, 2), torch.tensor([0, 1])), dict(image_ids=torch.tensor([0, -2])), ValueError,
     "image_ids must be >= 0"),
    ((torch.zeros(2, 2), torch.tensor([0, 1])), dict(prior_neg=torch.ones(3)), ValueError, "prior_neg must have"),
    ((torch.zeros(2, 2), torch.tensor([0, 1])), dict(prior_pos=-torch.ones(2, 2)), ValueError,
     "prior_pos must be non"),
    ((torch.zeros(2, 2), torch.tensor([0, 1])), dict(lambda_neg=0.0), ValueError, "lambda_neg must be"),
    ((torch.zeros(2, 2), torch.tensor([0, 1])), dict(gamma=-1.0), ValueError, "gamma must be"),
    ((torch.zeros(2, 2), torch.tensor([0, 1])), dict(tau="4"), TypeError, "tau must be a real"),
    ((torch.zeros(2, 2), torch.tensor([0, 1])), dict(surrogate="huber"), ValueError, "surrogate must be one of"),
    ((torch.zeros(2, 2), torch.tensor([0, 1])), dict(reduction="none"), ValueError, "reduction must be one of"),
    ((torch.zeros(2, 2), torch.tensor([0, 1])), dict(score_transform="x"), ValueError, "score_transform"),
    ((torch.zeros(2, 2), torch.tensor([0, 1])), dict(empty_negative_score=float("inf")), ValueError,
     "empty_negative_score must be finite"),
])
def test_bad_input(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        dr_loss(*args, **kwargs)

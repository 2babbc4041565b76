"""Bad input to the torch adapters fails with an exception naming the argument and the rule."""

from __future__ import annotations

import math

import pytest
import torch

from rankspec.adapters import torch as rt

FUNCS = {"ap": rt.ap_loss, "rs": rt.rs_loss, "bap": rt.bucketed_ap_loss, "brs": rt.bucketed_rs_loss}
X = torch.tensor([0.5, -0.2, 1.0, 0.3])
Y = torch.tensor([1.0, 0.0, 1.0, 0.0])

CASES = [
    # (description, call kwargs overriding (logits, labels), exception, message fragment)
    ("labels shape", {"labels": torch.tensor([1.0, 0.0])}, ValueError, "shape"),
    ("logits NaN", {"logits": torch.tensor([0.5, math.nan, 1.0, 0.3])}, ValueError, "logits contains 1 NaN"),
    ("logits Inf", {"logits": torch.tensor([0.5, math.inf, 1.0, 0.3])}, ValueError, "logits contains 1 NaN or inf"),
    ("labels NaN", {"labels": torch.tensor([1.0, math.nan, 1.0, 0.0])}, ValueError, "NaN"),
    ("integer logits", {"logits": torch.tensor([1, 0, 2, 3])}, TypeError, "logits must have a floating"),
    ("complex logits", {"logits": torch.zeros(4, dtype=torch.complex64)}, TypeError, "logits must have a floating"),
    ("numpy logits", {"logits": X.numpy()}, TypeError, "logits must be a torch.Tensor"),
    ("empty", {"logits": torch.zeros(0), "labels": torch.zeros(0)}, ValueError, "logits is empty"),
    ("negative delta", {"delta": -0.1}, ValueError, "delta must be >= 0"),
    ("NaN delta", {"delta": math.nan}, ValueError, "delta must be finite"),
    ("bool delta", {"delta": True}, TypeError, "delta"),
    ("bad self_rank", {"self_rank": "zero"}, ValueError, "self_rank must be one of"),
    ("bad normalization", {"normalization": "mean"}, ValueError, "normalization must be one of"),
    ("tie_value at delta 0", {"delta": 0.0, "tie_value": 0.25}, ValueError, "tie_value"),
    ("h0 with tie 0 at delta 0", {"delta": 0.0, "tie_value": 0.0, "self_rank": "h0"}, ValueError, "self_rank='h0'"),
    ("bad scope", {"scope": "images"}, ValueError, "scope must be one of"),
    ("image ids without scope", {"image_ids": torch.zeros(4, dtype=torch.int64)}, ValueError, "scope='image'"),
    ("scope image without ids", {"scope": "image"}, ValueError, "needs image_ids"),
    ("float image ids", {"scope": "image", "image_ids": torch.zeros(4)}, TypeError, "image_ids must have an integer"),
    ("bool image ids", {"scope": "image", "image_ids": torch.zeros(4, dtype=torch.bool)}, TypeError, "image_ids"),
    ("image ids shape", {"scope": "image", "image_ids": torch.zeros(3, dtype=torch.int64)}, ValueError,
     "image_ids has shape"),
]


def _call(name, *, logits=X, labels=Y, delta=0.5, **kw):
    if name in ("rs", "brs") and labels is Y:
        labels = Y * 0.7  # IoU targets
    return FUNCS[name](logits, labels, delta, **kw)


@pytest.mark.parametrize("desc, kwargs, exc, match", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("name", sorted(FUNCS))
def test_bad_input_is_rejected_with_a_clear_message(name, desc, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        _call(name, **kwargs)


@pytest.mark.parametrize("name", ["ap", "bap"])
def test_binary_labels_must_be_zero_or_one(name):
    with pytest.raises(ValueError, match=r"labels must contain only 0 \(negative\) and 1 \(positive\); found 0.5"):
        _call(name, labels=torch.tensor([1.0, 0.5, 0.0, 0.0]))
    with pytest.raises(ValueError, match="labels must contain only 0"):
        _call(name, labels=torch.tensor([1, -1, 0, 0]))


@pytest.mark.parametrize("name", ["rs", "brs"])
def test_iou_targets_must_lie_in_unit_interval(name):
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\].*found 1.5"):
        _call(name, labels=torch.tensor([1.5, 0.0, 0.2, 0.0]))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\]"):
        _call(name, labels=torch.tensor([-0.1, 0.0, 0.2, 0.0]))


@pytest.mark.parametrize("name", ["bap", "brs"])
def test_bucket_options(name):
    with pytest.raises(ValueError, match="tied_negatives must be one of"):
        _call(name, tied_negatives="left")
    with pytest.raises(TypeError, match="threshold must be True or False"):  # the reference's message
        _call(name, threshold="yes")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_labels_on_another_device():
    with pytest.raises(ValueError, match="labels is on device"):
        rt.ap_loss(X.cuda(), Y)


def test_labels_on_another_device_message_without_cuda():
    # a 'meta' tensor stands in for a second device where no GPU is present
    with pytest.raises(ValueError, match="labels is on device meta but logits is on device cpu"):
        rt.ap_loss(X, torch.empty(4, device="meta"))
    with pytest.raises(ValueError, match="image_ids is on device meta"):
        rt.ap_loss(X, Y, scope="image", image_ids=torch.empty(4, dtype=torch.int64, device="meta"))


def test_array_like_labels_are_accepted():
    loss = rt.ap_loss(X, [1, 0, 1, 0])
    assert float(loss) == float(rt.ap_loss(X, Y))

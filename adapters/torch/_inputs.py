"""Validation and parsing of the torch adapters' inputs.

Every public entry point of :mod:`rankspec.adapters.torch` runs its inputs
through :func:`parse` so that bad input fails with a message naming the
argument and the rule (the same rules as the NumPy reference, plus the torch
specific ones: dtype, device and the ``scope`` / ``image_ids`` pair).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import torch

from rankspec.refimpl._inputs import NORMALIZATION_CHOICES, check_ranking_options
from rankspec.refimpl._validate import as_float_array, check_bool, check_choice

__all__ = ["Parsed", "parse", "SCOPE_CHOICES", "TIED_NEGATIVES_CHOICES", "check_logits", "check_labels",
           "check_tensor", "as_float64_tensor", "check_return_terms"]

SCOPE_CHOICES = ("batch", "image", "distributed")  # "distributed": see ._distributed
TIED_NEGATIVES_CHOICES = ("above", "below")
TIE_VALUE_CHOICES = (0.0, 0.5, 1.0)


@dataclass(frozen=True)
class Parsed:
    """Validated, flattened float64 view of one call (no autograd history)."""

    shape: torch.Size  #: shape of the logits (the gradient is returned in it)
    dtype: torch.dtype  #: dtype of the logits (loss and gradient are returned in it)
    logits: torch.Tensor  #: flat float64 logits, detached
    targets: torch.Tensor  #: flat float64 labels (0/1) or IoU targets
    segments: torch.Tensor  #: flat int64 segment (image) index in 0..num_segments-1
    num_segments: int
    delta: float
    self_value: float  #: value of the i == j term of rank^+(i)
    tie_value: float
    normalization: str
    interpolated: bool = False
    threshold: bool = True
    tied_negatives: str = "above"


def check_tensor(x, name: str) -> torch.Tensor:
    """``x`` must be a torch tensor with data: a TypeError naming ``name`` otherwise (a ``device="meta"``
    tensor has no values to rank)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type == "meta":
        raise TypeError(f"{name} is a meta tensor (no data); pass a tensor with values")
    return x


def as_float64_tensor(x, name: str, device, allow_empty: bool = True) -> torch.Tensor:
    """A non-tensor array argument (list, tuple, NumPy array) as a float64 tensor on ``device``.

    The conversion and its checks are the reference's (:func:`rankspec.refimpl._validate.as_float_array`):
    float64 without loss (a Python list of IoUs is not rounded to float32), finite values, real dtype;
    errors name ``name``.
    """
    arr = as_float_array(x, name, allow_empty=allow_empty)
    return torch.from_numpy(arr).to(device)


def check_return_terms(return_terms) -> bool:
    """``return_terms`` must be a bool, as every flag of the reference (``"no"`` is a TypeError)."""
    return check_bool(return_terms, "return_terms")


def check_logits(logits, name: str = "logits") -> torch.Tensor:
    """``logits`` must be a non-empty, finite, floating-point torch tensor (values checked with torch
    reductions on the tensor's own device: no copy to the host)."""
    check_tensor(logits, name)
    if not logits.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype (float16, bfloat16, float32 or float64), "
                        f"got {logits.dtype}")
    if logits.numel() == 0:
        raise ValueError(f"{name} is empty; at least one element is required")
    finite = torch.isfinite(logits)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s); all entries must be finite")
    return logits


def _as_tensor_like(x, name: str, logits: torch.Tensor) -> torch.Tensor:
    """``x`` as a tensor on the logits' device; a tensor on another device is an error."""
    if isinstance(x, torch.Tensor):
        if x.device != logits.device:
            raise ValueError(f"{name} is on device {x.device} but logits is on device {logits.device}; "
                             f"they must be on the same device")
        return check_tensor(x, name)
    try:
        arr = np.asarray(x)  # Python floats -> float64 (torch.as_tensor would give float32)
    except Exception as exc:
        raise TypeError(f"{name} must be a torch.Tensor (or array-like), got {type(x).__name__}") from exc
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a torch.Tensor (or array-like) with a real numeric or boolean dtype, "
                        f"got {type(x).__name__} of dtype {arr.dtype}")
    return torch.as_tensor(arr, device=logits.device)


def check_labels(labels, logits: torch.Tensor, name: str, continuous: bool) -> torch.Tensor:
    """Binary labels (0/1, bool allowed) or IoU targets (0 or in (0, 1]) with the logits' shape.

    A tensor stays on its device (values checked by torch reductions); anything else (list, tuple,
    NumPy array) is converted by the reference's rules to float64 (:func:`as_float64_tensor`)."""
    if isinstance(labels, torch.Tensor):
        t = _as_tensor_like(labels, name, logits)
    else:
        t = as_float64_tensor(labels, name, logits.device)
    if t.is_complex():
        raise TypeError(f"{name} must have a real numeric or boolean dtype, got dtype {t.dtype}")
    if t.shape != logits.shape:
        raise ValueError(f"logits has shape {tuple(logits.shape)} but {name} has shape {tuple(t.shape)}; "
                         f"they must match")
    t = t.detach()
    if t.is_floating_point():
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise ValueError(f"{name} contains {bad} NaN or infinite value(s); all entries must be finite")
    t = t.to(torch.float64)
    if continuous:
        bad = (t < 0) | (t > 1)
        if bool(bad.any()):
            example = float(t[bad][0])
            raise ValueError(f"{name} must lie in [0, 1] (0 = negative, IoU in (0, 1] = positive); "
                             f"found {example!r}")
    else:
        bad = (t != 0) & (t != 1)
        if bool(bad.any()):
            example = float(t[bad][0])
            raise ValueError(f"{name} must contain only 0 (negative) and 1 (positive); found {example!r}")
    return t.reshape(-1)


def check_segments(scope: str, image_ids, logits: torch.Tensor):
    """Segment index per logit: all 0 for ``scope="batch"``; the dense image index for ``"image"``.

    ``image_ids`` (scope ``"image"`` only) is an integer tensor whose shape is
    the logits' shape or a leading part of it (e.g. ``(B,)`` for logits of
    shape ``(B, A, C)``: one id per row of the leading dimension); it is
    broadcast over the remaining dimensions.  Ids may be any integers.
    """
    check_choice(scope, "scope", SCOPE_CHOICES)
    if scope == "distributed":  # handled before parsing (functional._distributed_loss)
        raise ValueError("scope='distributed' is not supported by this call; use scope='batch' or 'image'")
    n = logits.numel()
    if scope == "batch":
        if image_ids is not None:
            raise ValueError("image_ids is only used with scope='image'; pass scope='image' or drop image_ids")
        return torch.zeros(n, dtype=torch.int64, device=logits.device), 1
    if image_ids is None:
        raise ValueError("scope='image' needs image_ids: an integer tensor with the logits' shape, or one id per "
                         "row of the leading dimension(s) (e.g. torch.arange(logits.shape[0]))")
    ids = _as_tensor_like(image_ids, "image_ids", logits)
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise TypeError(f"image_ids must have an integer dtype, got {ids.dtype}")
    k = ids.dim()
    if (k == 0 and logits.dim() > 0) or k > logits.dim() or tuple(ids.shape) != tuple(logits.shape[:k]):
        raise ValueError(f"image_ids has shape {tuple(ids.shape)}; it must equal the logits' shape "
                         f"{tuple(logits.shape)} or a leading part of it (e.g. {tuple(logits.shape[:1])})")
    ids = ids.detach().reshape(ids.shape + (1,) * (logits.dim() - k)).expand(logits.shape).reshape(-1)
    _, seg = torch.unique(ids, return_inverse=True)
    return seg.to(torch.int64), int(seg.max()) + 1


def check_tie_value(tie_value, delta: float) -> float:
    """``tie_value`` is a real number; at ``delta == 0`` it must be 0, 0.5 or 1 (the rule of the losses
    whose tie value matters only for the exact step; the AP / RS family uses the reference's stricter
    :func:`~rankspec.refimpl._inputs.check_ranking_options`)."""
    if isinstance(tie_value, bool) or not isinstance(tie_value, numbers.Real):
        raise TypeError(f"tie_value must be a real number, got {type(tie_value).__name__}")
    tie_value = float(tie_value)
    if delta == 0 and tie_value not in TIE_VALUE_CHOICES:
        raise ValueError(f"tie_value must be 0.0, 0.5 or 1.0, got {tie_value!r}")
    return tie_value


def parse(logits, labels, delta, *, labels_name: str, continuous: bool, self_rank: str, tie_value,
          normalization: str, scope: str = "batch", image_ids=None, interpolated=False, threshold=True,
          tied_negatives="above") -> Parsed:
    """Validate one call of an AP / RS family loss and flatten it to float64.

    Same checks, order and messages as the reference's
    :func:`~rankspec.refimpl._inputs.validate_ranking` (arrays, shapes, label values, then
    :func:`~rankspec.refimpl._inputs.check_ranking_options`), plus the torch rules (logits a
    floating tensor, one device, ``scope`` / ``image_ids``).  Values of CUDA tensors are checked
    with reductions on the GPU.  O(n).
    """
    check_logits(logits)
    t = check_labels(labels, logits, labels_name, continuous)
    opts = check_ranking_options(delta, self_rank=self_rank, tie_value=tie_value, normalization=normalization,
                                 interpolated=interpolated, threshold=threshold, tied_negatives=tied_negatives)
    seg, num_segments = check_segments(scope, image_ids, logits)
    s = logits.detach().reshape(-1).to(torch.float64)
    return Parsed(logits.shape, logits.dtype, s, t, seg, num_segments, opts.delta, opts.self_value,
                  opts.tie_value, opts.normalization, opts.interpolated, opts.threshold, opts.tied_negatives)


def check_bucket_options(threshold, tied_negatives) -> tuple:
    """``threshold`` a bool and ``tied_negatives`` "above" / "below", with the reference's messages."""
    threshold = check_bool(threshold, "threshold")
    check_choice(tied_negatives, "tied_negatives", TIED_NEGATIVES_CHOICES)
    return threshold, tied_negatives

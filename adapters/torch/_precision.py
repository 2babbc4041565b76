"""Mixed precision: float16 / bfloat16 inputs and ``torch.autocast`` for the torch adapters.

Rules every adapter follows:

* inputs of any floating dtype are accepted, including float16 and bfloat16 (what a network under
  ``torch.autocast`` produces);
* the computation runs in at least float32: the AP / RS / bucketed, APE and aLRP adapters compute
  in float64 whatever the input dtype (their accuracy claims are made in float64); the autograd
  based adapters (DR, RankDetNet, detector glue) compute in float32 for float16 / bfloat16 inputs
  and in the input's dtype otherwise (:func:`full_precision`);
* autocast is switched off inside the adapters (so no operation of theirs is silently lowered to
  float16 / bfloat16; autocast never touches float64 tensors anyway);
* losses are returned in the dtype of the logits (as for every dtype) and gradients reach each
  input in that input's own dtype (the float32 -> float16 cast is part of the graph).

A float16 / bfloat16 loss value carries that dtype's rounding (about 3 significant digits for
bfloat16); its gradient is the float32 / float64 gradient rounded once to the input dtype.
"""

from __future__ import annotations

import contextlib
import functools

import torch

__all__ = ["LOW_PRECISION", "compute_dtype", "autocast_off", "full_precision", "upcast", "restore"]

#: dtypes that are computed in float32
LOW_PRECISION = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for float16 / bfloat16, else ``dtype`` unchanged."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def _autocast_enabled(device_type: str) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # pragma: no cover - torch < 2.4
        if device_type == "cpu":
            return bool(torch.is_autocast_cpu_enabled())
        return bool(torch.is_autocast_enabled())


@contextlib.contextmanager
def autocast_off():
    """Disable ``torch.autocast`` (CPU and CUDA) where it is enabled, for the duration of the block."""
    with contextlib.ExitStack() as stack:
        for device_type in ("cpu", "cuda"):
            if _autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        yield


def upcast(x):
    """``x.float()`` (differentiable) for a float16 / bfloat16 tensor, else ``x``."""
    if isinstance(x, torch.Tensor) and x.dtype in LOW_PRECISION:
        return x.to(torch.float32)
    return x


def restore(out, dtype: torch.dtype):
    """Cast the floating tensors of ``out`` (tensor, tuple, list, dict) back to ``dtype`` when it is a
    float16 / bfloat16 dtype; anything else is returned unchanged."""
    if dtype not in LOW_PRECISION:
        return out
    if isinstance(out, torch.Tensor):
        return out.to(dtype) if out.is_floating_point() else out
    if isinstance(out, tuple):
        return tuple(restore(v, dtype) for v in out)
    if isinstance(out, list):
        return [restore(v, dtype) for v in out]
    if isinstance(out, dict):
        return {k: restore(v, dtype) for k, v in out.items()}
    return out


def full_precision(fn):
    """Decorator: run ``fn`` with autocast off and float16 / bfloat16 tensor arguments in float32;
    floating outputs go back to the first argument's dtype when that is float16 / bfloat16."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        first = args[0] if args else None
        dtype = first.dtype if isinstance(first, torch.Tensor) else None
        with autocast_off():
            out = fn(*[upcast(a) for a in args], **{k: upcast(v) for k, v in kwargs.items()})
        return restore(out, dtype) if dtype is not None else out
    return wrapper

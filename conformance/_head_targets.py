"""Head targets: resolving a detector head's loss function and running it on one head batch.

What :mod:`~rankspec.conformance.heads` calls the target with, kept apart so that a worker process
(:mod:`~rankspec.conformance._worker`) can build and run a head target without importing the harness: the
worker resolves the target (:func:`make_head_target`), runs each case (:func:`run_head_target`: raw output
tensors in, the loss dict's entries and the gradients with respect to the raw outputs out, as NumPy) and sends
back a :class:`HeadOutcome`; the oracle and the comparison stay in the harness's process.

Importing this module does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from ._head_specs import HeadCase, HeadPipeline, get_pipeline
from ._targets import TargetFailure, TargetSignatureError, import_code_for, resolve

__all__ = ["HeadOutcome", "HeadTarget", "make_head_target", "run_head_target", "LOSS_KEYS"]

#: classification keys of the loss dict per loss (``rankspec.adapters.heads.LOSS_KEYS``, without importing torch)
LOSS_KEYS = {"rs": ("loss_rank", "loss_sort"), "brs": ("loss_rank", "loss_sort"), "ap": ("loss_cls",),
             "ap-interp": ("loss_cls",), "bap": ("loss_cls",), "ape": ("loss_cls",), "dr": ("loss_cls",),
             "rankdet": ("loss_global", "loss_class", "loss_iou"), "rankdet-global": ("loss_global",),
             "rankdet-class": ("loss_class",), "rankdet-iou": ("loss_iou",), "alrp": ("loss_cls",)}

@dataclass
class HeadOutcome:
    """What a head target returned on one case: the loss dict's classification entries and the gradients."""

    loss: float
    parts: Dict[str, float]
    grads: Dict[str, List[np.ndarray]]  #: raw output name -> per level d objective / d output (times grad_output)
    grad_output: float
    keys: Tuple[str, ...] = ()


@dataclass
class HeadTarget:
    """A resolved head target (a loss function, or an ``nn.Module`` class or instance) and how to import it."""

    obj: object  #: the callable (``None`` in a detached copy: the target lives in a worker process)
    name: str
    kind: str  #: "function", "module-class" or "module-instance"
    import_code: str
    expr: str
    importable: bool = True
    fixed_loss: Optional[str] = None  #: an instance's ``loss`` attribute (it fixes its own loss)
    fixed_options: Optional[dict] = None  #: an instance's ``options`` attribute (scope, loss / head options)

    @property
    def convention(self) -> str:
        return "function" if self.kind == "function" else "module"

    def detached(self) -> "HeadTarget":
        """This description without the callable: what a worker process sends back to the harness."""
        return replace(self, obj=None)

    def run(self, call) -> HeadOutcome:
        """The worker's entry point (:mod:`~._worker`, request ``run``): ``call`` is
        ``(case, loss, scope, loss_options, device)``; returns the NumPy :class:`HeadOutcome`."""
        case, loss, scope, loss_options, device = call
        return run_head_target(self, get_pipeline(case.head), case, loss, scope, loss_options, device)

    def losses(self, p: HeadPipeline, args, loss, scope, loss_options, kwargs):
        if self.kind == "function":
            return self.obj(*args, loss=loss, scope=scope, loss_options=dict(loss_options), **kwargs)
        if self.kind == "module-class":
            return self.obj(loss=loss, scope=scope, loss_options=dict(loss_options), **kwargs)(*p.module_args(args))
        return self.obj(*p.module_args(args))

    def call_code(self, p: HeadPipeline) -> str:
        args = ", ".join(p.arg_names)
        if self.kind == "function":
            return f"losses = {self.expr}({args}, **kwargs)"
        margs = ", ".join("{" + ", ".join(f"{k!r}: {v}" for k, v in a.items()) + "}" if isinstance(a, dict) else a
                          for a in p.module_args(tuple(p.arg_names)))
        if self.kind == "module-class":
            return f"losses = {self.expr}(**kwargs)({margs})"
        return f"losses = {self.expr}({margs})  # the instance fixes its own options"


def _torch_module_types():
    import torch

    return torch.nn.Module


def make_head_target(target, p: HeadPipeline, *, name: Optional[str] = None) -> HeadTarget:
    """Resolve ``target`` (callable, ``nn.Module`` class or instance, or ``module:attr`` string)."""
    import inspect

    if isinstance(target, str):
        obj, code, expr = resolve(target)
        label = name or target
        importable = True
    else:
        obj = target
        code, expr, importable = import_code_for(obj)
        label = name or getattr(obj, "__qualname__", None) or type(obj).__name__
    Module = _torch_module_types()
    if inspect.isclass(obj) and issubclass(obj, Module):
        kind = "module-class"
    elif isinstance(obj, Module):
        kind = "module-instance"
    elif callable(obj) and not inspect.isclass(obj):
        kind = "function"
        try:
            params = inspect.signature(obj).parameters
        except (TypeError, ValueError):
            params = None
        if params is not None:
            var_kw = any(q.kind is inspect.Parameter.VAR_KEYWORD for q in params.values())
            missing = [k for k in ("loss", "scope", "loss_options") if k not in params]
            positional = [q for q in params.values() if q.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                                   inspect.Parameter.POSITIONAL_OR_KEYWORD)]
            var_pos = any(q.kind is inspect.Parameter.VAR_POSITIONAL for q in params.values())
            if (missing and not var_kw) or (len(positional) < len(p.arg_names) and not var_pos):
                raise TargetSignatureError(
                    f"{label} does not fit a {p.name} head target: it must take the signature of "
                    f"{p.function_ref.split(':')[1]}({', '.join(p.arg_names)}, *, loss, scope, loss_options, "
                    f"**head_options) and return the loss dict")
    else:
        raise TargetSignatureError(f"{label} is neither callable nor an nn.Module class or instance")
    fixed_loss = fixed_options = None
    if kind == "module-instance":
        fixed_loss = getattr(obj, "loss", None)
        fixed_loss = fixed_loss if isinstance(fixed_loss, str) else None
        fixed_options = dict(getattr(obj, "options", None) or {})
    return HeadTarget(obj, label, kind, code, expr, importable, fixed_loss, fixed_options)


def _grads(out, leaves, g: float):
    import torch

    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        return [np.zeros(tuple(t.shape)) for t in leaves]
    got = torch.autograd.grad(out, leaves, grad_outputs=torch.full_like(out, g), retain_graph=True,
                              allow_unused=True)
    return [np.zeros(tuple(t.shape)) if x is None else x.detach().cpu().numpy().astype(np.float64)
            for x, t in zip(got, leaves)]


def run_head_target(target: HeadTarget, p: HeadPipeline, case: HeadCase, loss: str, scope, loss_options,
                device: str) -> HeadOutcome:
    import torch

    args, leaves = p.tensors(case, device)
    kwargs = {**case.head_options, **p.head_kwargs(case)}
    try:
        losses = target.losses(p, args, loss, scope, loss_options, kwargs)
    except Exception as exc:
        raise TargetFailure(f"error:{type(exc).__name__}", f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(losses, Mapping):
        raise TargetFailure("bad-output", f"the target returned {type(losses).__name__}, not a loss dict")
    keys = LOSS_KEYS[loss]
    missing = [k for k in keys if k not in losses]
    if missing:
        raise TargetFailure("bad-output", f"the loss dict has no {', '.join(map(repr, missing))} (keys: "
                                          f"{', '.join(map(repr, losses))})")
    for k, v in losses.items():
        if not isinstance(v, torch.Tensor) or v.numel() != 1:
            raise TargetFailure("bad-output", f"loss dict entry {k!r} is not a one-element tensor")
    parts = {k: float(losses[k].detach().reshape(())) for k in keys}
    total = sum(v.reshape(()) for v in losses.values())
    cls_total = sum(losses[k].reshape(()) for k in keys)
    g = float(case.grad_output)
    try:
        grads = {p.score_output: _grads(total, leaves[p.score_output], g),
                 p.box_output: _grads(cls_total, leaves[p.box_output], g)}
    except Exception as exc:
        raise TargetFailure(f"error:{type(exc).__name__}", f"backward raised {type(exc).__name__}: {exc}") from exc
    return HeadOutcome(float(sum(parts.values())), parts, grads, g, keys)


"""Detecting a target's call convention (module docstring of :mod:`rankspec.conformance._targets`).

:func:`make_target` resolves a target (:mod:`.resolve`), inspects its signature and, for plain callables,
probes it once on a tiny case (NumPy inputs first, then torch tensors) to find how it is called and what it
returns; the result is a :class:`~.call.Target`.
"""

from __future__ import annotations

import inspect
import os
import re
from typing import Mapping, Optional

import numpy as np

from .._cases import probe_case
from .call import (CALL_CONVENTIONS, CONVENTION_HELP, Target, _detach, _is_tensor, _loaded_torch, _torch,
                   parse_call)
from .resolve import TargetError, import_code_for, object_name, resolve

__all__ = ["TargetSignatureError", "make_target"]


class TargetSignatureError(TypeError):
    """The target fits none of the supported call conventions."""



def _params(fn):
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    return list(sig.parameters.values())


def _accepts(params, count: int) -> bool:
    """Whether a callable with ``params`` takes ``count`` positional arguments."""
    if params is None:
        return True
    pos = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return True
    required = [p for p in pos if p.default is p.empty]
    return len(required) <= count <= len(pos)


def _delta_mode(params, count_before: int = 2) -> str:
    """How delta is passed: 'positional', 'keyword' or 'none'."""
    if params is None:
        return "positional"
    if _accepts(params, count_before + 1):
        return "positional"
    if any(p.name == "delta" and p.kind == p.KEYWORD_ONLY for p in params):
        return "keyword"
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return "keyword"
    return "none"


def _is_torch_function_class(obj) -> bool:
    torch = _loaded_torch()
    return bool(torch and inspect.isclass(obj) and issubclass(obj, torch.autograd.Function))


def _is_module_class(obj) -> bool:
    torch = _loaded_torch()
    return bool(torch and inspect.isclass(obj) and issubclass(obj, torch.nn.Module))


def _is_module_instance(obj) -> bool:
    torch = _loaded_torch()
    return bool(torch and isinstance(obj, torch.nn.Module))



def _looks_like_pair(out, shape) -> bool:
    if hasattr(out, "loss") and hasattr(out, "grad") and not hasattr(out, "backward"):
        return True
    if isinstance(out, (tuple, list)) and len(out) == 2:
        first, second = out
        try:
            return (np.asarray(_detach(first)).size == 1 and np.asarray(_detach(second)).size == int(np.prod(shape))
                    and np.ndim(_detach(second)) >= 1)
        except Exception:
            return False
    return False



def _looks_like_torch_loss(out) -> bool:
    if _is_tensor(out):
        return out.numel() == 1
    if isinstance(out, (tuple, list)) and out and all(_is_tensor(v) and v.numel() == 1 for v in out):
        return True
    if isinstance(out, Mapping) and out and all(_is_tensor(v) and v.numel() == 1 for v in out.values()):
        return True
    return False



def make_target(target, spec, *, convention: str = "auto", kwargs: Optional[Mapping] = None, device: str = "cpu",
                tuple_backward: str = "sum", name: Optional[str] = None, resolved=None, call=None) -> Target:
    """Resolve ``target`` (object or ``module:attr`` string) and detect its call convention.

    Raises :class:`TargetError` for an unresolvable string and
    :class:`TargetSignatureError` when the target fits no call convention.
    """
    if convention not in CALL_CONVENTIONS:
        raise TargetError(f"convention must be one of {', '.join(CALL_CONVENTIONS)}, got {convention!r}")
    if tuple_backward not in ("sum", "first"):
        raise TargetError(f"tuple_backward must be 'sum' or 'first', got {tuple_backward!r}")
    kwargs = dict(kwargs or {})
    if isinstance(target, Target):
        return target
    if isinstance(target, str):
        obj, code, expr = resolve(target) if resolved is None else resolved
        importable = True
        label = name or target
    else:
        obj = target
        code, expr, importable = import_code_for(obj)
        label = name or object_name(obj)
    common = dict(name=label, kwargs=kwargs, device=device, import_code=code, expr=expr, importable=importable,
                  tuple_backward=tuple_backward)

    kind = convention
    if kind == "auto" and _is_duck_apply(obj):
        # a plain class (or instance) with an ``apply``, e.g. ``class MyLoss: @staticmethod def apply(...)``:
        # called as ``obj.apply(...)``, probed like any callable (torch loss or (loss, grad) pair)
        obj = obj.apply
        expr = f"{expr}.apply"
        label = name or f"{label}.apply"
        common.update(name=label, expr=expr)
    if kind == "auto":
        if _is_torch_function_class(obj) or (inspect.isclass(obj) and callable(getattr(obj, "apply", None))
                                             and hasattr(obj, "backward")):
            kind = "function"
        elif _is_module_class(obj) or _is_module_instance(obj):
            kind = "module"
        elif inspect.isclass(obj):
            raise TargetSignatureError(
                f"{label} is a class but neither a torch.autograd.Function nor a torch.nn.Module; "
                "pass a function, an autograd.Function, a Module, or an instance")
        elif not callable(obj):
            raise TargetSignatureError(f"{label} is not callable (it is a {type(obj).__name__})")

    extra_inputs = tuple(getattr(spec, "extra_inputs", ()))
    n_pos = 2 + sum(1 for i in extra_inputs if not i.keyword)  # positional array arguments
    has_delta = spec.default_delta is not None
    signature = _signature_text(spec)

    call_map = None
    if call is not None:
        inputs = ["logits", "labels"] + (["delta"] if has_delta else []) + [i.name for i in extra_inputs]
        try:
            call_map = parse_call(call, inputs) if isinstance(call, str) else tuple(call)
        except ValueError as exc:
            raise TargetSignatureError(f"call mapping (--call / call=): {exc}") from None

    def fits(params, count=n_pos):
        return (call_map is not None or params is None or _accepts(params, count)
                or (has_delta and _accepts(params, count + 1)))

    def finish(t, params=None, call_params=None):
        t.extra_inputs = extra_inputs
        t.delta_index = getattr(spec, "delta_index", None) or 2
        t.array_outputs = tuple(getattr(spec, "array_outputs", ()))
        if call_map is not None:
            _apply_call_map(t, call_map, spec, label, extra_inputs)
            return t
        t.dropped_inputs = _dropped_inputs(params, extra_inputs)
        for n in t.dropped_inputs:
            t.notes.append(f"{label} takes no {n} argument: called without it, and checked against the reading "
                           f"that fits: {OPTIONAL_INPUTS[n]}")
        t.positive_inputs = _positive_inputs(params if call_params is None else call_params, extra_inputs)
        for n, p in t.positive_inputs.items():
            t.notes.append(f"{label} takes {n} as {p}: passed restricted to the positives, "
                           f"{n}[labels == 1] (flat order)")
        t.positive_inputs = tuple(t.positive_inputs)
        return t

    if kind == "function":
        if not (inspect.isclass(obj) and callable(getattr(obj, "apply", None))):
            raise TargetSignatureError(f"{label} has no .apply; convention 'function' needs an autograd.Function")
        if call_map is not None and any(p is not None for p, _, _ in call_map):
            raise TargetSignatureError("autograd.Function.apply takes positional arguments only; the call mapping "
                                       "(--call) must list positional items only")
        if kwargs:
            raise TargetSignatureError("autograd.Function.apply takes positional arguments only; "
                                       f"keyword arguments {sorted(kwargs)} cannot be passed")
        params = _params(getattr(obj, "forward", None))
        if params is not None and params and params[0].name == "ctx":
            params = params[1:]
        n_all = 2 + len(extra_inputs)
        if not fits(params, n_all):
            raise TargetSignatureError(
                f"{label}.forward takes {len(params)} argument(s) after ctx; a {spec.name} loss Function must take "
                f"{signature}")
        mode = "positional" if has_delta and (params is None or _accepts(params, n_all + 1)) else "none"
        fixed = None if mode == "positional" else spec.default_delta
        t = finish(Target(obj, convention="function", delta_mode=mode, fixed_delta=fixed, **common),
                   call_params=params)
        if fixed is not None:
            t.notes.append(f"{label}.forward takes no delta; checked at delta={fixed}")
        return t

    if kind == "module":
        if inspect.isclass(obj):
            init_params = _params(obj.__init__)
            init_params = init_params[1:] if init_params else init_params
            fwd = _params(obj.forward)
            fwd = fwd[1:] if fwd else fwd
            init_delta = has_delta and bool(init_params) and any(p.name == "delta" for p in init_params)
            mode = "none" if init_delta else _spec_delta_mode(fwd, spec, n_pos)
            if (has_delta and not init_delta and mode == "none" and getattr(spec, "delta_keyword", False)
                    and init_params and any(p.kind == p.VAR_KEYWORD for p in init_params)):
                # a wrapper whose constructor forwards the reference's keywords (delta is one of them)
                init_delta = True
            fixed = None
            if not init_delta and mode == "none":
                fixed = spec.default_delta
            t = finish(Target(obj, convention="module", delta_mode=mode, fixed_delta=fixed, init_delta=init_delta,
                              **common), fwd)
            if fwd is not None and not fits(fwd):
                raise TargetSignatureError(f"{label}.forward must take {signature}")
            return t
        if not _is_module_instance(obj) and not callable(obj):
            raise TargetSignatureError(f"{label} is not an nn.Module")
        fwd = _params(getattr(obj, "forward", obj))
        mode = _spec_delta_mode(fwd, spec, n_pos)
        fixed = None
        from_attr = False
        if mode == "none" and has_delta:
            d = getattr(obj, "delta", None)
            from_attr = isinstance(d, (int, float)) and not isinstance(d, bool)
            fixed = float(d) if from_attr else spec.default_delta
        t = finish(Target(obj, convention="module", delta_mode=mode, fixed_delta=fixed, **common), fwd)
        t.delta_from_attribute = from_attr
        if mode == "none" and has_delta:
            t.notes.append(f"the module's forward takes no delta; checked at its delta={fixed}" if from_attr else
                           f"the module's forward takes no delta and it has no delta attribute; "
                           f"assumed delta={fixed} (pass --delta to choose)")
        return t

    # plain callables
    params = _params(obj)
    if not fits(params):
        n = len([p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)])
        fixed_hint = " (or f(logits, targets) with a fixed delta)" if has_delta and not extra_inputs else ""
        raise TargetSignatureError(
            f"{label} takes {n} positional argument(s); a loss must be callable as {signature}{fixed_hint}. "
            "Supported conventions: " + "; ".join(f"{k}: {v}" for k, v in CONVENTION_HELP.items()))
    mode = _spec_delta_mode(params, spec, n_pos)
    fixed = spec.default_delta if mode == "none" else None
    if kind in ("pair", "torch-pair", "autograd"):
        t = finish(Target(obj, convention=kind, delta_mode=mode, fixed_delta=fixed, **common), params)
        if kind in ("pair", "torch-pair"):
            t.pair_style = _probe_pair_style(t, spec)
        return t

    # auto: probe with NumPy inputs, then with torch inputs
    probe = probe_case(spec, "float64", fixed)
    attempts = []
    t = finish(Target(obj, convention="pair", delta_mode=mode, fixed_delta=fixed, **common), params)
    try:
        out = t._call(probe.logits.copy(), probe.targets.copy(), probe.delta,
                      [np.array(v) for v in t.given(probe).extras])
        if _looks_like_pair(out, probe.shape):
            t.pair_style = "result" if hasattr(out, "loss") and hasattr(out, "grad") else "tuple"
            return _with_delta_note(t, label)
        attempts.append(f"with NumPy arrays it returned {_kind_of(out)}")
    except Exception as exc:
        attempts.append(f"with NumPy arrays it raised {_error_text(exc)}")
    torch = _torch()
    if torch is None:
        attempts.append("torch is not installed, so torch conventions could not be tried")
    else:
        t = finish(Target(obj, convention="autograd", delta_mode=mode, fixed_delta=fixed, **common), params)
        x = torch.tensor(probe.logits, requires_grad=True)
        tt = torch.tensor(probe.targets)
        try:
            out = t._call(x, tt, probe.delta, t._extra_tensors(probe, requires_grad=False))
            if _looks_like_pair(out, probe.shape) and not (_is_tensor(out[0] if isinstance(out, (tuple, list))
                                                                        else None) and out[0].requires_grad):
                t.convention = "torch-pair"
                t.pair_style = "result" if hasattr(out, "loss") and hasattr(out, "grad") else "tuple"
                return _with_delta_note(t, label)
            if _looks_like_torch_loss(out):
                return _with_delta_note(t, label)
            attempts.append(f"with torch tensors it returned {_kind_of(out)}")
        except Exception as exc:
            attempts.append(f"with torch tensors it raised {_error_text(exc)}")
    raise TargetSignatureError(
        f"{label} fits none of the supported call conventions ("
        + "; ".join(f"{k}: {v}" for k, v in CONVENTION_HELP.items())
        + f"). Probing it as {signature} on a {probe.size}-element input: "
        + "; ".join(attempts) + ". Pass convention=... (--convention) to force one.")


def _call_signature(t: Target):
    """The signature the call mapping is bound to: ``forward`` after ``ctx`` for an autograd.Function,
    ``forward`` for a module, the callable itself otherwise (None when it cannot be inspected)."""
    obj = t.obj
    try:
        if t.convention == "function":
            sig = inspect.signature(obj.forward)
            params = list(sig.parameters.values())
            return sig.replace(parameters=params[1:]) if params and params[0].name == "ctx" else sig
        if t.convention == "module":
            return inspect.signature(obj.forward) if not inspect.isclass(obj) else \
                inspect.signature(obj.forward).replace(parameters=list(
                    inspect.signature(obj.forward).parameters.values())[1:])
        return inspect.signature(obj)
    except (TypeError, ValueError, AttributeError):
        return None


def _apply_call_map(t: Target, call_map, spec, label: str, extra_inputs) -> None:
    """Set ``t`` up to be called through ``call_map``: validate it against the target's signature (before any
    case runs), fix the delta when the mapping gives it a value, and drop the optional inputs it leaves out."""
    used = {v for _, k, v in call_map if k != "value"}
    positives = tuple(v for _, k, v in call_map if k == "positives")
    per_positive = {i.name for i in extra_inputs if getattr(i, "per_positive", False)}
    bad = [n for n in positives if n not in per_positive]
    if bad:
        raise TargetSignatureError(
            f"the call mapping passes {', '.join(f'{n}[pos]' for n in bad)}: the {spec.name} reference reads "
            f"{', '.join(bad)} at every sample, so it cannot be restricted to the positives"
            + (f" (only {', '.join(sorted(per_positive))} can)" if per_positive else ""))
    missing = [i.name for i in extra_inputs if i.name not in used and i.name not in OPTIONAL_INPUTS]
    if missing:
        raise TargetSignatureError(f"the call mapping does not pass {', '.join(missing)}: every {spec.name} call "
                                   "needs it (the reference uses it)")
    sig = _call_signature(t)
    if sig is not None:
        pos = [object() for p, _, _ in call_map if p is None]
        kw = {p: object() for p, _, _ in call_map if p is not None}
        if t.convention != "module" or not inspect.isclass(t.obj):
            kw = {**{k: object() for k in t.kwargs}, **kw}
        try:
            sig.bind(*pos, **kw)
        except TypeError as exc:
            raise TargetSignatureError(f"the call mapping does not fit {label}{sig}: {exc}") from None
    t.call_map = tuple(call_map)
    t.init_delta = False
    t.dropped_inputs = tuple(i.name for i in extra_inputs if i.keyword and i.name not in used)
    t.positive_inputs = positives
    for n in positives:
        t.notes.append(f"the call mapping passes {n}[pos]: {n} restricted to the positives, {n}[labels == 1] "
                       "(flat order)")
    if spec.default_delta is None or "delta" in used:
        t.delta_mode, t.fixed_delta = "positional", None
    else:
        given = [v for p, k, v in call_map if p == "delta" and k == "value"]
        t.delta_mode = "none"
        t.fixed_delta = float(given[0]) if given else spec.default_delta
        t.delta_from_attribute = bool(given)
        t.notes.append(f"the call mapping passes no delta input: checked at delta={t.fixed_delta}")
    for n in t.dropped_inputs:
        t.notes.append(f"the call mapping passes no {n}: checked against {OPTIONAL_INPUTS[n]}")


#: keyword inputs a target may lack, and the reading of the loss without them (the reference gets a neutral value)
OPTIONAL_INPUTS = {"image_ids": "every entry ranked in one pool, as dr_loss(image_ids=None) (one image)"}


def _dropped_inputs(params, extra_inputs) -> tuple:
    """Keyword inputs of :data:`OPTIONAL_INPUTS` that a callable with ``params`` cannot take."""
    if params is None or any(p.kind == p.VAR_KEYWORD for p in params):
        return ()
    names = {p.name for p in params if p.kind != p.POSITIONAL_ONLY}
    return tuple(i.name for i in extra_inputs if i.keyword and i.name in OPTIONAL_INPUTS and i.name not in names)


_POSITIVE_NAME = re.compile(r"(^pos_|_pos$|_positives?$)")


def _positive_inputs(params, extra_inputs) -> dict:
    """``{input: parameter}`` for the per-positive inputs (``Input.per_positive``) that a callable with
    ``params`` takes restricted to the positives: the positional parameter that receives the input (delta
    aside) is named like ``ious_pos`` (``*_pos``, ``pos_*``, ``*_positive(s)``)."""
    if params is None:
        return {}
    slots = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
             and p.name != "delta"][2:]
    found = {}
    for k, inp in enumerate(i for i in extra_inputs if not i.keyword):
        if getattr(inp, "per_positive", False) and k < len(slots) and _POSITIVE_NAME.search(slots[k]):
            found[inp.name] = slots[k]
    return found


def _is_duck_apply(obj) -> bool:
    """An object called through its ``apply`` that is neither an autograd.Function nor an nn.Module: a class
    with a callable ``apply`` (and no ``backward``), or a non-callable instance with one."""
    apply = getattr(obj, "apply", None)
    if not callable(apply) or _is_torch_function_class(obj) or _is_module_class(obj) or _is_module_instance(obj):
        return False
    if inspect.isclass(obj):
        return not hasattr(obj, "backward")
    return not callable(obj) and not inspect.ismodule(obj)


def _error_text(exc: BaseException) -> str:
    """``Type: message`` and where in the target it was raised (the last frames of its traceback)."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)[-2:]
    where = "; ".join(f"{os.path.basename(f.filename)}:{f.lineno} in {f.name}: {(f.line or '').strip()}"
                      for f in frames)
    msg = str(exc).strip()
    return f"{type(exc).__name__}: {msg}" + (f" [at {where}]" if where else "")


def _signature_text(spec) -> str:
    """``f(logits, labels, delta)``: how a target of ``spec`` is called."""
    return "f(" + ", ".join(spec.call_arguments()) + ")" if hasattr(spec, "call_arguments") else \
        "f(logits, targets, delta)"


def _spec_delta_mode(params, spec, n_pos: int) -> str:
    """How delta is passed to a target of ``spec``: 'positional', 'keyword' or 'none'."""
    if spec.default_delta is None:
        return "none"
    if getattr(spec, "delta_keyword", False):
        if params is None:
            return "keyword"
        if any(p.name == "delta" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params) or \
                any(p.kind == p.VAR_KEYWORD for p in params):
            return "keyword"
        return "none"
    if n_pos == 2:
        return _delta_mode(params)
    if params is None or _accepts(params, n_pos + 1):
        return "positional"
    if any(p.name == "delta" and p.kind == p.KEYWORD_ONLY for p in params) or \
            any(p.kind == p.VAR_KEYWORD for p in params):
        return "keyword"
    return "none"


def _with_delta_note(t: Target, label: str) -> Target:
    if t.fixed_delta is not None:
        t.notes.append(f"{label} takes no delta; checked at delta={t.fixed_delta}")
    return t


def _probe_pair_style(t: Target, spec) -> str:
    probe = probe_case(spec, "float64", t.fixed_delta)
    try:
        if t.convention == "pair":
            out = t._call(probe.logits.copy(), probe.targets.copy(), probe.delta,
                          [np.array(v) for v in t.given(probe).extras])
        else:
            a, b = t._tensors(probe, requires_grad=False)
            out = t._call(a, b, probe.delta, t._extra_tensors(probe, requires_grad=False))
    except Exception:
        return "tuple"
    return "result" if hasattr(out, "loss") and hasattr(out, "grad") else "tuple"


def _kind_of(out) -> str:
    if _is_tensor(out):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)} item(s)"
    return f"a {type(out).__name__}"



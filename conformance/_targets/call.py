"""Running a target: a resolved implementation with its call convention, called on one case.

:class:`Target` calls the implementation on a :class:`~rankspec.conformance._cases.Case` and returns an
:class:`Outcome` (loss, gradient times ``grad_output``, tuple parts, gradients of differentiable extra inputs),
or raises :class:`TargetFailure`; it also writes the lines of a reproducer that make the same call.  Which
convention a target has is decided by :mod:`.detect`.  torch is imported only when a torch convention runs.
"""

from __future__ import annotations

import copy

import inspect
import sys
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

__all__ = ["CALL_CONVENTIONS", "CONVENTION_HELP", "Outcome", "TargetFailure", "Target"]

CALL_CONVENTIONS = ("auto", "pair", "torch-pair", "autograd", "function", "module")
CONVENTION_HELP = {
    "pair": "function returning (loss, grad), called with NumPy arrays",
    "torch-pair": "function returning (loss, grad), called with torch tensors",
    "autograd": "function returning a torch loss; gradient via autograd",
    "function": "torch.autograd.Function, called via .apply",
    "module": "torch.nn.Module",
}



@dataclass
class Outcome:
    """What a target returned for one case."""

    loss: float
    grad: np.ndarray  #: float64, the shape of the logits; d(loss)/d(logits) * grad_output
    parts: Optional[Tuple[float, ...]] = None  #: the outputs of a tuple-returning target
    grad_output: float = 1.0  #: the incoming gradient the returned grad is scaled by
    notes: Tuple[str, ...] = ()
    extra_grads: Optional[Dict[str, np.ndarray]] = None  #: d loss / d input of differentiable extra inputs


class TargetFailure(Exception):
    """The target raised (or returned something unusable) on a case."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind  #: "error:<ExceptionType>" or "bad-output"
        self.message = message



def _torch():
    """torch, imported on first need (None when it is not installed)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is installed in the project env
        return None
    return torch


def _loaded_torch():
    """torch if something already imported it, else None: a target that is a torch class or instance
    implies its module imported torch, so type checks never need to import it."""
    return sys.modules.get("torch")



def _scalar(value, what: str) -> float:
    if hasattr(value, "detach"):
        value = _detach(value)
    arr = np.asarray(value, dtype=np.float64)
    if arr.size != 1:
        raise TargetFailure("bad-output", f"{what} should be a scalar, got an array of shape {arr.shape}")
    return float(arr.reshape(()))


def _array(value, shape, what: str) -> np.ndarray:
    if hasattr(value, "detach"):
        value = _detach(value)
    arr = np.asarray(value, dtype=np.float64)
    if arr.size != int(np.prod(shape)):
        raise TargetFailure("bad-output", f"{what} has shape {arr.shape}, expected {tuple(shape)} "
                                          f"(the shape of the logits)")
    return arr.reshape(shape)



def _detach(v):
    if not hasattr(v, "detach"):
        return v
    v = v.detach().cpu()
    return v.float() if str(getattr(v, "dtype", "")) == "torch.bfloat16" else v  # NumPy has no bfloat16


def _dtype_of(case, arr):
    """The torch dtype a floating array of a narrow-precision ``case`` is handed as (``Case.precision``:
    float16 / bfloat16; its values are stored as float32), else None (inferred from the array)."""
    precision = getattr(case, "precision", None)
    if not precision or np.asarray(arr).dtype.kind != "f":
        return None
    return getattr(_torch(), precision)


def _is_tensor(v) -> bool:
    torch = _loaded_torch()
    return bool(torch and isinstance(v, torch.Tensor))



CALL_HELP = """\
an explicit call of TARGET: its arguments in order, comma-separated. Each item is an input of the check
(logits; labels, also spelt targets; delta; the loss's extra inputs, e.g. ious or image_ids), passed
positionally; PARAM=INPUT passes an input as keyword PARAM; PARAM=VALUE passes a fixed value (a number,
a quoted string, true / false / null) for an extra parameter; PARAM=VALUE for a parameter named delta
fixes the delta (the reference is called with it too). INPUT[pos] passes a per-sample input restricted
to the positives (labels == 1, flat order; e.g. ious_pos=ious[pos] for APE's per-positive IoUs; inputs
the reference reads at the positives only; a parameter named like ious_pos gets this without --call).
E.g. 'logits,targets,delta=0.5' or 'scores=logits,gt=labels,smooth=true'. Checked against TARGET's
signature before any case runs."""


def parse_call(text: str, inputs) -> Tuple[Tuple[Optional[str], str, object], ...]:
    """Parse a call mapping (:data:`CALL_HELP`) for a loss whose inputs are ``inputs`` (names; ``labels``
    stands for the labels / targets input).  Items are ``(parameter or None, kind, input name or value)`` with
    kind ``"input"``, ``"positives"`` (``INPUT[pos]``: the input restricted to the positives) or ``"value"``.
    Raises ``ValueError`` naming the bad item."""
    import ast
    import json

    if not isinstance(text, str) or not text.strip():
        raise ValueError("the call mapping is empty; list TARGET's arguments, e.g. 'logits,targets,delta'")
    known = list(inputs)
    aliases = {"targets": "labels", "labels": "labels"}

    def as_input(name):
        name = aliases.get(name, name)
        return name if name in known else None

    def as_item(param, raw, item):
        """``(param, kind, name)`` for an input (``INPUT`` or ``INPUT[pos]``), else None."""
        base = raw[:-len("[pos]")].strip() if raw.replace(" ", "").endswith("[pos]") else None
        if base is not None:
            name = as_input(base)
            if name is None or name in ("logits", "labels", "delta"):
                raise ValueError(f"call item {item!r}: [pos] restricts an extra input to the positives "
                                 f"({', '.join(k for k in known if k not in ('logits', 'labels', 'delta'))})")
            return (param, "positives", name)
        name = as_input(raw)
        return (param, "input", name) if name else None

    def literal(item, raw):
        raw = raw.strip()
        for parse in (json.loads, ast.literal_eval):
            try:
                return parse(raw)
            except (ValueError, SyntaxError, TypeError):
                continue
        raise ValueError(f"call item {item!r}: {raw!r} is neither an input ({', '.join(known)}) nor a literal "
                         "(a number, a quoted string, true, false, null)")

    out, seen_kw = [], False
    for item in [i.strip() for i in text.split(",")]:
        if not item:
            raise ValueError(f"empty item in the call mapping {text!r}")
        if "=" in item:
            param, raw = (x.strip() for x in item.split("=", 1))
            if not param.isidentifier():
                raise ValueError(f"call item {item!r}: {param!r} is not a parameter name")
            out.append(as_item(param, raw, item) or (param, "value", literal(item, raw)))
            seen_kw = True
        else:
            if seen_kw:
                raise ValueError(f"call item {item!r}: a positional item after a keyword item")
            out.append(as_item(None, item, item) or (None, "value", literal(item, item)))
    used = [v for _, k, v in out if k != "value"]
    for required in ("logits", "labels"):
        if required not in used:
            raise ValueError(f"the call mapping {text!r} does not pass {required} (every call needs logits and "
                             "labels / targets)")
    dup = sorted({v for v in used if used.count(v) > 1})
    if dup:
        raise ValueError(f"the call mapping passes {', '.join(dup)} more than once")
    return tuple(out)


def _same(before, after) -> bool:
    before = np.asarray(before)
    after = np.asarray(_detach(after))
    if before.shape != after.shape and before.size == after.size:
        after = after.reshape(before.shape)
    if before.shape != after.shape:
        return False
    nan = before.dtype.kind == "f" and after.dtype.kind == "f"
    return bool(np.array_equal(before, after, equal_nan=nan))


def _positives(case) -> np.ndarray:
    """Flat boolean mask of the positives (labels == 1) of ``case``."""
    return np.asarray(case.targets).reshape(-1) == 1


def _check_unmodified(case, a, b, extras, extra_inputs) -> None:
    """Raise :class:`TargetFailure` when the target wrote into one of the inputs it was given.

    ``case`` is the case as the target was handed it (:meth:`Target.given`).  The inputs handed to a target
    are copies of the case's arrays, so comparing them with the case after the
    call finds any in-place write (``logits.clamp_()``, ``labels[labels < 0] = 0``, ``x.data.mul_()``...): a
    loss that modifies its caller's tensors corrupts the training step that calls it.
    """
    names = ["logits", "labels"] + [inp.name for inp in extra_inputs]
    befores = [case.logits, case.targets] + list(case.extras)
    changed = []
    for name, before, after in zip(names, befores, [a, b, *extras]):
        try:
            if not _same(before, after):
                n = int(np.size(before))
                diff = np.asarray(_detach(after)).reshape(-1) != np.asarray(before).reshape(-1)
                if np.asarray(before).dtype.kind == "f":
                    diff &= ~(np.isnan(np.asarray(before, dtype=float).reshape(-1))
                              & np.isnan(np.asarray(_detach(after), dtype=float).reshape(-1)))
                changed.append(f"{name} ({int(diff.sum())} of {n} entries changed)")
        except Exception:
            changed.append(f"{name} (its shape or type changed)")
    if changed:
        raise TargetFailure("mutated-input", "the target wrote into its input " + ", ".join(changed)
                            + "; a loss must not modify its caller's tensors in place")


class Target:
    """An implementation under test with its resolved call convention.

    Build with :func:`make_target`.  :meth:`run` calls it on a :class:`~._cases.Case`
    and returns an :class:`Outcome` (or raises :class:`TargetFailure`).
    """

    def __init__(self, obj, *, name: str, convention: str, kwargs: Mapping, device: str, import_code: str,
                 expr: str, importable: bool, tuple_backward: str = "sum", delta_mode: str = "positional",
                 fixed_delta: Optional[float] = None, init_delta: bool = False, pair_style: str = "tuple"):
        self.obj = obj
        self.name = name
        self.convention = convention
        self.kwargs = dict(kwargs)
        self.device = device
        self.import_code = import_code
        self.expr = expr
        self.importable = importable
        self.tuple_backward = tuple_backward
        self.delta_mode = delta_mode
        self.fixed_delta = fixed_delta
        self.init_delta = init_delta
        self.pair_style = pair_style
        self.notes = []
        self.delta_from_attribute = False  #: fixed_delta read from the object (not an assumption)
        self._instances: Dict[float, object] = {}
        self._is_class = False
        self.extra_inputs: Tuple = ()  #: the spec's extra inputs (set by make_target)
        self.delta_index: int = 2  #: position of a positional delta (the spec's; 3 for aLRP) (set by make_target)
        self.array_outputs: Tuple = ()  #: the spec's array outputs: a (loss, *arrays) tuple is checked on loss
        self.dropped_inputs: Tuple[str, ...] = ()  #: keyword extra inputs the target does not take (set by detect)
        #: per-positive extra inputs (``Input.per_positive``) the target takes restricted to the positives
        #: (:meth:`given`; set by detect)
        self.positive_inputs: Tuple[str, ...] = ()
        #: an explicit call mapping (:func:`parse_call`): ``(parameter or None, "input" | "value", name | value)``
        self.call_map: Optional[Tuple[Tuple[Optional[str], str, object], ...]] = None

    # -- description ------------------------------------------------------------------------------
    @property
    def uses_torch(self) -> bool:
        return self.convention != "pair"

    @property
    def uses_grad_output(self) -> bool:
        return self.convention in ("autograd", "function", "module")

    def describe_convention(self) -> str:
        return f"{self.convention} ({CONVENTION_HELP.get(self.convention, '')})"

    def reading(self, case):
        """``case`` as the target reads it: an input it does not take (:attr:`dropped_inputs`) gets the neutral
        value of that reading (``image_ids`` all zero: one image, i.e. ``image_ids=None``)."""
        if not self.dropped_inputs:
            return case
        from dataclasses import replace

        extras = tuple(np.zeros_like(v) if inp.name in self.dropped_inputs else v
                       for inp, v in zip(self.extra_inputs, case.extras))
        return replace(case, extras=extras)

    def given(self, case):
        """``case`` as the target is handed it: each input of :attr:`positive_inputs` restricted to the
        positives, ``v.reshape(-1)[labels.reshape(-1) == 1]`` (length P, flat order).  O(n)."""
        if not self.positive_inputs:
            return case
        from dataclasses import replace

        pos = _positives(case)
        extras = tuple(np.asarray(v).reshape(-1)[pos] if inp.name in self.positive_inputs else v
                       for inp, v in zip(self.extra_inputs, case.extras))
        return replace(case, extras=extras)

    def is_class(self) -> bool:
        """Whether the target object is a class (kept by :meth:`detached`, which drops the object)."""
        return self._is_class if self.obj is None else inspect.isclass(self.obj)

    def detached(self) -> "Target":
        """A copy without the target object (for the harness's process when a worker runs the target):
        it describes the target and writes reproducers, but cannot be run."""
        t = copy.copy(self)
        t._is_class = inspect.isclass(self.obj)
        t.obj = None
        t._instances = {}
        t.notes = list(self.notes)
        return t

    # -- calling ----------------------------------------------------------------------------------
    def _callable_for(self, delta: float):
        if self.convention == "function":
            return self.obj.apply
        if self.convention == "module" and inspect.isclass(self.obj):
            key = delta if self.init_delta else None
            if key not in self._instances:
                kw = dict(self.kwargs)
                if self.init_delta:
                    kw["delta"] = delta
                inst = self.obj(**kw)
                if self.device != "cpu" and hasattr(inst, "to"):
                    inst = inst.to(self.device)
                self._instances[key] = inst
            return self._instances[key]
        return self.obj

    def _call(self, a, b, delta, extras=()):
        fn = self._callable_for(delta)
        if self.call_map is not None:
            values = {"logits": a, "labels": b, "delta": delta}
            values.update({inp.name: v for inp, v in zip(self.extra_inputs, extras)})  # already restricted
            args = [v if k == "value" else values[v] for p, k, v in self.call_map if p is None]
            kw = {p: (v if k == "value" else values[v]) for p, k, v in self.call_map if p is not None}
            if not (self.convention == "module" and inspect.isclass(self.obj)):
                kw = {**self.kwargs, **kw}
            return fn(*args, **kw)
        kwargs = {} if (self.convention == "module" and inspect.isclass(self.obj)) else dict(self.kwargs)
        positional = [v for inp, v in zip(self.extra_inputs, extras) if not inp.keyword]
        keyword = {inp.name: v for inp, v in zip(self.extra_inputs, extras)
                   if inp.keyword and inp.name not in self.dropped_inputs}
        if self.convention == "function":
            args = [a, b, *[v for _, v in zip(self.extra_inputs, extras)]]
            if self.delta_mode == "positional":
                args.insert(self.delta_index, delta)
            return fn(*args)
        if self.init_delta or self.delta_mode == "none":
            return fn(a, b, *positional, **keyword, **kwargs)
        if self.delta_mode == "keyword":
            return fn(a, b, *positional, delta=delta, **keyword, **kwargs)
        args = [a, b, *positional]
        args.insert(self.delta_index, delta)
        return fn(*args, **keyword, **kwargs)

    def run(self, case) -> Outcome:
        if self.obj is None:
            raise RuntimeError(f"{self.name} is a detached description of a target run in a worker process")
        try:
            if self.convention == "pair":
                return self._run_pair(case, torch_inputs=False)
            if self.convention == "torch-pair":
                return self._run_pair(case, torch_inputs=True)
            return self._run_autograd(case)
        except TargetFailure:
            raise
        except SystemExit as exc:  # sys.exit in the target: its failure, never the end of the check
            raise TargetFailure("error:SystemExit",
                                f"the target called sys.exit({exc.code!r}) (SystemExit)") from None
        except Exception as exc:  # the target raised
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise TargetFailure(f"error:{type(exc).__name__}", f"{type(exc).__name__}: {msg}"[:300]) from exc

    def _tensors(self, case, requires_grad: bool):
        torch = _torch()
        x = torch.tensor(case.logits, dtype=_dtype_of(case, case.logits), device=self.device,
                         requires_grad=requires_grad)
        t = torch.tensor(case.targets, dtype=_dtype_of(case, case.targets), device=self.device)
        layout = getattr(case, "layout", None)
        if layout and layout != "contiguous":  # a non-contiguous view with the same values (._hostile)
            from .._hostile import present

            x, t = present(x, layout), present(t, layout)
        return x, t

    def _extra_tensors(self, case, requires_grad: bool):
        """The case's extra inputs as the target is handed them (:meth:`given`), as tensors; differentiable
        ones require grad when ``requires_grad``."""
        torch = _torch()
        return [torch.tensor(v, dtype=_dtype_of(case, v), device=self.device,
                             requires_grad=bool(requires_grad and inp.grad and np.asarray(v).dtype.kind == "f"))
                for inp, v in zip(self.extra_inputs, self.given(case).extras)]

    def _run_pair(self, case, torch_inputs: bool) -> Outcome:
        if torch_inputs:
            a, b = self._tensors(case, requires_grad=False)
            extras = self._extra_tensors(case, requires_grad=False)
        else:
            a, b = case.logits.copy(), case.targets.copy()
            extras = [np.array(v, copy=True) for v in self.given(case).extras]
            layout = getattr(case, "layout", None)
            if layout and layout != "contiguous":  # a non-contiguous view with the same values (._hostile)
                from .._hostile import present

                a, b = present(a, layout), present(b, layout)
        out = self._call(a, b, case.delta, extras)
        _check_unmodified(self.given(case), a, b, extras, self.extra_inputs)
        if hasattr(out, "loss") and hasattr(out, "grad"):
            loss, grad = out.loss, out.grad
        elif isinstance(out, (tuple, list)) and len(out) == 2:
            loss, grad = out
        else:
            raise TargetFailure("bad-output", f"expected (loss, grad), got {type(out).__name__}")
        return Outcome(_scalar(loss, "loss"), _array(grad, case.shape, "grad"), None, 1.0)

    def _run_autograd(self, case) -> Outcome:
        torch = _torch()
        x, t = self._tensors(case, requires_grad=True)
        extras = self._extra_tensors(case, requires_grad=True)
        out = self._call(x, t, case.delta, extras)
        notes = []
        if (self.array_outputs and isinstance(out, (tuple, list)) and len(out) == 1 + len(self.array_outputs)
                and _is_tensor(out[0])):
            out = out[0]  # (loss, *array outputs), e.g. aLRP's (cls_loss, rank, order): checked on the loss
        if _is_tensor(out):
            outputs = [out]
            parts = None
        elif isinstance(out, (tuple, list)):
            outputs = list(out)
            parts = ()
        elif isinstance(out, Mapping):
            outputs = list(out.values())
            parts = ()
        else:
            raise TargetFailure("bad-output", f"expected a torch loss (0-d tensor) or a tuple of them, got "
                                              f"{type(out).__name__}")
        for k, o in enumerate(outputs):
            if not _is_tensor(o) or o.numel() != 1:
                shape = tuple(o.shape) if _is_tensor(o) else type(o).__name__
                raise TargetFailure("bad-output", f"output {k} should be a scalar tensor, got {shape}")
        if parts is not None:
            parts = tuple(float(o.detach().double().cpu().reshape(())) for o in outputs)
        total = outputs[0].reshape(()) if len(outputs) == 1 else sum(o.reshape(()) for o in outputs)
        loss = float(total.detach().double().cpu())
        g = float(case.grad_output)
        grad_out = torch.tensor(g, dtype=x.dtype, device=x.device)
        root = outputs[0].reshape(()) if (self.tuple_backward == "first" or len(outputs) == 1) else total
        if not root.requires_grad:
            notes.append("the loss does not require grad; gradient taken as zero")
            grad = np.zeros(case.shape)
        else:
            root.backward(grad_out)
            grad = (np.zeros(case.shape) if x.grad is None
                    else x.grad.detach().double().cpu().numpy().reshape(case.shape))
            if x.grad is None:
                notes.append("backward left logits.grad empty; gradient taken as zero")
        extra_grads = None
        if any(inp.grad for inp in self.extra_inputs):
            extra_grads = {}
            for inp, v, arr in zip(self.extra_inputs, extras, case.extras):
                if inp.grad:
                    shape = np.shape(arr)
                    got = np.zeros(np.size(arr))
                    if v.grad is not None:
                        at = _positives(case) if inp.name in self.positive_inputs else slice(None)
                        got[at] = v.grad.detach().double().cpu().numpy().reshape(-1)
                    extra_grads[inp.name] = got.reshape(shape)  # zero off the positives for a restricted input
        _check_unmodified(self.given(case), x, t, extras, self.extra_inputs)
        return Outcome(loss, grad, parts, g, tuple(notes), extra_grads)

    # -- reproducer -------------------------------------------------------------------------------
    def call_code(self, case, labels_name: str, logits_name: str = "logits") -> str:
        """Python lines that call the target on ``logits_name``/``labels_name``/``delta`` (and the extra
        inputs, by their names) and set ``got_loss`` (float), ``got_grad`` (ndarray, already scaled by
        grad_output) and, for differentiable extra inputs, ``got_grad_<name>``."""
        kw = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        names = [inp.name for inp in self.extra_inputs]
        if self.convention == "function":
            extra_args, extra_kw = "".join(f", {n}_t" for n in names), ""
        else:
            extra_args = "".join(f", {inp.name}_t" for inp in self.extra_inputs if not inp.keyword)
            extra_kw = "".join(f", {inp.name}={inp.name}_t" for inp in self.extra_inputs
                               if inp.keyword and inp.name not in self.dropped_inputs)
        if self.convention == "module" and self.is_class():
            ctor_kw = ", ".join(([f"delta=delta"] if self.init_delta else [])
                                + [f"{k}={v!r}" for k, v in self.kwargs.items()])
            fn = f"{self.expr}({ctor_kw})"
            kw = ""
        elif self.convention == "function":
            fn, kw = f"{self.expr}.apply", ""
        else:
            fn = self.expr
        if self.call_map is not None:
            var = {"logits": "x", "labels": "t", "delta": "delta", **{n: f"{n}_t" for n in names}}
            items = [(repr(v) if k == "value" else var[v]) if p is None else
                     f"{p}={repr(v) if k == 'value' else var[v]}" for p, k, v in self.call_map]
            args = ", ".join(items) + kw
        elif self.init_delta or self.delta_mode == "none":
            args = f"x, t{extra_args}{extra_kw}{kw}"
        elif self.delta_mode == "keyword":
            args = f"x, t{extra_args}, delta=delta{extra_kw}{kw}"
        else:
            pos = ["x", "t"] + [a.strip() for a in extra_args.split(",") if a.strip()]
            pos.insert(self.delta_index, "delta")
            args = ", ".join(pos) + f"{extra_kw}{kw}"
        pos = f"np.asarray({labels_name}).reshape(-1) == 1"  # the positives, flat order (see given())
        # a narrow-precision case (Case.precision): the float32-stored values handed over as that dtype
        dt = {k: (f", dtype=torch.{case.precision}" if _dtype_of(case, a) is not None else "")
              for k, a in zip(["logits", "labels", *names], case.arrays)} if getattr(case, "precision", None) \
            else {}
        src = {n: (f"np.asarray({n}).reshape(-1)[{pos}]" if n in self.positive_inputs else n) for n in names}
        if self.convention in ("pair", "torch-pair"):
            lines = []
            if self.convention == "pair":
                lines.append(f"x, t = {logits_name}, {labels_name}")
                lines += [f"{n}_t = {src[n]}" for n in names]
            else:
                lines += ["import torch",
                          f"x = torch.tensor({logits_name}{dt.get('logits', '')}, device={self.device!r})",
                          f"t = torch.tensor({labels_name}{dt.get('labels', '')}, device={self.device!r})"]
                lines += [f"{n}_t = torch.tensor({src[n]}{dt.get(n, '')}, device={self.device!r})" for n in names]
            lines.append(f"out = {fn}({args})")
            if self.pair_style == "result":
                lines.append("got_loss, got_grad = out.loss, out.grad")
            else:
                lines.append("got_loss, got_grad = out")
            lines += ["as_numpy = lambda v: np.asarray(v.detach().cpu() if hasattr(v, 'detach') else v, "
                      "dtype=np.float64)",
                      "got_loss, got_grad = float(as_numpy(got_loss)), as_numpy(got_grad)"]
            return "\n".join(lines)
        g = float(case.grad_output)
        lines = ["import torch",
                 f"x = torch.tensor({logits_name}{dt.get('logits', '')}, device={self.device!r}, "
                 "requires_grad=True)",
                 f"t = torch.tensor({labels_name}{dt.get('labels', '')}, device={self.device!r})"]
        lines += [f"{inp.name}_t = torch.tensor({src[inp.name]}{dt.get(inp.name, '')}, device={self.device!r}"
                  + (", requires_grad=True)" if inp.grad else ")") for inp in self.extra_inputs]
        lines.append(f"out = {fn}({args})")
        if self.array_outputs:
            lines.append(f"out = out[0] if isinstance(out, (tuple, list)) and len(out) == "
                         f"{1 + len(self.array_outputs)} else out  # (loss, *array outputs)")
        tuple_out = "isinstance(out, (tuple, list))"
        lines.append(f"loss = sum(out) if {tuple_out} else out")
        root = "out[0]" if self.tuple_backward == "first" else "loss"
        if self.tuple_backward == "first":
            lines.append(f"root = out[0] if {tuple_out} else out")
            root = "root"
        if g == 1.0:
            lines.append(f"{root}.backward()")
        else:
            lines.append(f"{root}.backward(torch.tensor({g!r}, dtype=x.dtype, device=x.device))"
                         f"  # grad_output = {g!r}")
        lines += ["got_loss = float(loss.detach())", "got_grad = x.grad.double().cpu().numpy()"]
        for inp in self.extra_inputs:
            if inp.grad and inp.name in self.positive_inputs:  # scattered back onto the positives
                lines += [f"got_grad_{inp.name} = np.zeros(np.size({inp.name}))",
                          f"got_grad_{inp.name}[{pos}] = {inp.name}_t.grad.double().cpu().numpy()",
                          f"got_grad_{inp.name} = got_grad_{inp.name}.reshape(np.shape({inp.name}))"]
            elif inp.grad:
                lines.append(f"got_grad_{inp.name} = {inp.name}_t.grad.double().cpu().numpy()")
        return "\n".join(lines)



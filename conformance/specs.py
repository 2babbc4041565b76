"""Loss specs: what the conformance harness checks, as data.

A :class:`LossSpec` ties a name on the command line (``rankspec check --loss rs``)
to a loss record (:class:`~rankspec.refimpl.record.LossRecord`) and adds only
what is the harness's own:

* ``record`` - the loss (a record or its name).  Everything about the loss is read
  from it: the reference (``function``), ``title``, ``citation``, ``label_kind``,
  ``default_delta``, ``bucketed``, the scalar ``outputs`` of the authors' call
  convention, the case builder (``builder``) and the ``conventions`` (the record's
  convention keywords, plus the harness-level ``scope`` convention
  :data:`SCOPE` for the (logits, 0/1 or IoU targets) losses the detector heads
  use; their choices are what :mod:`rankspec.conformance._diagnose` searches);
* ``fixed_kwargs`` - keyword arguments that define this variant (``interpolated=True``
  for ``ap-interp``); ``title`` - a title for the variant (default: the record's);
* ``bundled_targets`` - the bundled PyTorch implementations that
  ``rankspec check`` with no TARGET checks (the first one is the default target);
* ``vectors`` - the name of the authors' implementation in the recorded vectors
  (:data:`rankspec.refimpl.vectors.OFFICIAL`) whose call this loss mirrors, if any;
* ``extra_inputs`` - how the arguments after the labels are passed (see below);
* ``array_outputs`` - outputs of the authors' call that are arrays (aLRP's ``rank`` and
  ``order``): a target returning ``(loss, *arrays)`` is checked on its first output;
* tolerances and caps: ``max_size`` / ``max_work`` (expensive references),
  ``default_examples``, ``shrink_layout``, ``option_choices``, ``diagnose_depth``.

Adding a loss
-------------
A loss whose record exists is added by registering a spec, nothing else in the harness changes::

    from rankspec.conformance.specs import BundledTarget, Input, LossSpec, register_spec

    register_spec(LossSpec(
        name="rankdet-iou", record="iou_guided_ranking_loss",
        extra_inputs=(Input("ious", grad="grad_ious"), Input("levels")),
        shrink_layout="rows",
        bundled_targets=(BundledTarget("rankspec.adapters.torch:iou_guided_ranking_loss"),),
    ))

How the reference (and every target) is called::

    function(logits, labels_or_targets, *positional extra inputs, **keyword extra inputs, **conventions)

with ``delta`` inserted at the position it has in the reference's signature
(:attr:`LossSpec.delta_index`: after the labels for AP / RS, after ``regression_losses``
for aLRP), or passed as ``delta=`` when ``delta_keyword`` is set; no delta when the
record's ``default_delta`` is ``None``.

* ``logits`` is the first argument and is always differentiable: the
  reference's ``LossResult.grad`` is d loss / d logits.  The record's
  ``input_names`` name the arguments in reports and reproducers.
* ``extra_inputs`` (:class:`Input`) are further arrays (IoUs, pyramid levels,
  image ids, box weights, e_loc), held in :attr:`Case.extras` in this order.  An input
  with ``grad="<terms key>"`` is differentiable too: the reference's gradient
  with respect to it is ``result.terms[key]`` and a torch target's is read
  from the input tensor's ``.grad`` (the comparison covers both).
* Integer arrays (class ids, levels, image ids) keep an integer dtype in the
  case; floating arrays are cast to the checked dtype.

The case builder is the record's (:mod:`rankspec.refimpl.cases`); :attr:`LossSpec.case_builder`
is ``None`` for the generic (logits, 0/1 labels or IoU targets, delta) builder, which also runs
the authors' recorded ranking vectors (``recorded``).  ``kinds`` (default: the builder's
``kinds``) lists the input kinds used for the fixed diagnostic cases.  Choices of a convention
that the reference rejects on a small probe input (descriptive entries such as ``'float >= 0'``)
are skipped by the diagnosis.  Put the ``register_spec`` call at the bottom of this module (the
CLI's ``--loss`` choices are read from :data:`SPECS` at start-up) or in any module imported
before the check runs.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from rankspec.refimpl import LossResult
from rankspec.refimpl.cases import build_ranking_case, fixed_probe_case, resolve_builder
from rankspec.refimpl.conventions import Convention, all_conventions
from rankspec.refimpl.record import LossRecord, get_record
from rankspec.refimpl.registry import lookup

__all__ = ["BundledTarget", "Input", "LossSpec", "SPECS", "SCOPE", "register_spec", "get_spec", "spec_names"]

#: Harness-level convention: one ranking over the whole input, or one per image.  Applies to the
#: (logits, 0/1 labels or IoU targets) losses the detector heads use (records with a ``head_scope``)
#: whose reference takes no ``scope`` of its own; the per-image combination is
#: :func:`rankspec.refimpl.scope.combine_per_image`'s rule.
SCOPE = Convention(
    "scope", "Ranking scope: whole batch or per image", (), "batch", ("batch", "image"),
    "'batch': one ranking over every element of the input; 'image': the first axis indexes images, each "
    "image is ranked on its own and the loss (and gradient) is the mean over images that have positives.",
    "The Rank & Sort and bucketed authors' code ranks the whole batch; per-image ranking is a common port.",
)

SHRINK_LAYOUTS = ("elements", "rows")


@dataclass(frozen=True)
class BundledTarget:
    """A bundled implementation checked by ``rankspec check`` with no TARGET."""

    ref: str  #: ``package.module:attr``
    kwargs: Mapping[str, object] = field(default_factory=dict)  #: fixed keyword arguments of each call
    convention: str = "auto"  #: call convention (see :mod:`rankspec.conformance._targets`)

    @property
    def label(self) -> str:
        extra = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.ref}({extra})" if extra else self.ref


@dataclass(frozen=True)
class Input:
    """An argument after the labels (see "Adding a loss" in the module docstring)."""

    name: str  #: parameter name of the reference (and of the targets)
    keyword: bool = False  #: passed as ``name=value`` (else positionally, in spec order)
    grad: Optional[str] = None  #: key of ``LossResult.terms`` holding d loss / d this input (differentiable)
    #: the reference reads this per-sample input at the positives only (labels == 1), so a target may take it
    #: restricted to them, ``v.reshape(-1)[labels.reshape(-1) == 1]`` (length P, flat order; the APE authors'
    #: ``ious_pos``): done for a target whose parameter for it is named like ``ious_pos`` (``*_pos``,
    #: ``pos_*``, ``*_positive(s)``) or when the call mapping passes ``ious[pos]``
    per_positive: bool = False


@dataclass(frozen=True)
class LossSpec:
    """What the harness adds to a loss record to check implementations of it (see the module docstring)."""

    name: str
    record: Union[LossRecord, str]  #: the loss (a record, or its name: resolved on construction)
    title_override: Optional[str] = None  #: title of a variant (default: the record's title)
    fixed_kwargs: Mapping[str, object] = field(default_factory=dict)
    bundled_targets: Tuple[BundledTarget, ...] = ()
    vectors: Optional[str] = None
    extra_inputs: Tuple[Input, ...] = ()
    array_outputs: Tuple[str, ...] = ()  #: outputs of the authors' call that are arrays (not compared as scalars)
    delta_keyword: bool = False  #: pass delta as ``delta=`` (a keyword-only parameter of the reference)
    recorded: bool = True  #: run the recorded ranking vectors' inputs (only (logits, 0/1 or IoU targets) losses)
    kind_list: Tuple[str, ...] = ()  #: input kinds for the diagnostic cases (default: the builder's ``kinds``)
    max_size: Optional[int] = None  #: cap on the generated size (samples / rows)
    max_work: Optional[int] = None  #: cap on the builder's work estimate (see CaseConfig.max_work)
    default_examples: int = 100  #: generated cases per target and dtype when none are requested
    shrink_layout: str = "elements"
    option_choices: Mapping[str, Tuple[object, ...]] = field(default_factory=dict)
    diagnose_depth: int = 3
    #: ``(keyword, value)``: when the reference runs with ``keyword=value`` (its default included), its
    #: outputs are only float32-accurate by definition (the authors' float32 buffers: aLRP's
    #: ``buffer_dtype="float32"``), so every dtype is compared with at least the float32 tolerances.
    float32_buffers: Optional[Tuple[str, object]] = None

    def __post_init__(self):
        if isinstance(self.record, str):
            object.__setattr__(self, "record", get_record(self.record))
        if not isinstance(self.record, LossRecord):
            raise TypeError(f"record must be a LossRecord or a record name, got {type(self.record).__name__}")

    # -- read from the record -------------------------------------------------------------------
    @property
    def function(self) -> Callable[..., LossResult]:
        """The reference (the record's public function)."""
        return self.record.function

    @property
    def title(self) -> str:
        return self.title_override or self.record.title

    @property
    def label_kind(self) -> str:
        return self.record.label_kind

    @property
    def default_delta(self) -> Optional[float]:
        return self.record.default_delta

    @property
    def bucketed(self) -> bool:
        return self.record.bucketed

    @property
    def outputs(self) -> Tuple[str, ...]:
        """Scalar outputs of the authors' call convention (the record's, without :attr:`array_outputs`)."""
        return tuple(o for o in self.record.outputs if o not in self.array_outputs) or ("loss",)

    @property
    def builder(self) -> Callable:
        """The record's case builder (the generic ranking builder when the record names none)."""
        if self.record.case_builder is None:
            return build_ranking_case
        return resolve_builder(self.record.case_builder)

    @property
    def case_builder(self) -> Optional[Callable]:
        """The record's builder, or None when it is the generic (logits, labels / targets, delta) builder."""
        b = self.builder
        return None if b is build_ranking_case else b

    @property
    def kinds(self) -> Tuple[str, ...]:
        """Input kinds of the builder (for the diagnostic cases); empty for the generic builder."""
        if self.kind_list:
            return tuple(self.kind_list)
        return tuple(getattr(self.case_builder, "kinds", ()) if self.case_builder is not None else ())

    # -- identity -----------------------------------------------------------------------------
    @property
    def function_name(self) -> str:
        return self.record.name

    def tolerance_dtype(self, dtype: str, options: Mapping[str, object]) -> str:
        """The dtype whose default tolerances apply when checking in ``dtype`` with reference ``options``
        (``"float32"`` where the reference's own outputs are float32-accurate: :attr:`float32_buffers`)."""
        if self.float32_buffers is None:
            return dtype
        keyword, value = self.float32_buffers
        default = inspect.signature(self.function).parameters[keyword].default
        return "float32" if {**dict(self.fixed_kwargs), **dict(options)}.get(keyword, default) == value else dtype

    @property
    def logits_name(self) -> str:
        return self.record.input_names[0] if self.record.input_names else "logits"

    @property
    def labels_name(self) -> str:
        if len(self.record.input_names) > 1:
            return self.record.input_names[1]
        return self.record.labels_name

    @property
    def input_names(self) -> Tuple[str, ...]:
        return (self.logits_name, self.labels_name)

    @property
    def argument_names(self) -> Tuple[str, ...]:
        """Names of every array argument: logits, labels, then the extra inputs."""
        return (self.logits_name, self.labels_name) + tuple(i.name for i in self.extra_inputs)

    @property
    def grad_inputs(self) -> Tuple[Input, ...]:
        """The extra inputs whose gradient is compared as well (the logits' always is)."""
        return tuple(i for i in self.extra_inputs if i.grad)

    @property
    def citation(self) -> str:
        """Paper equations the reference implements (the record's citations)."""
        return self.record.citation

    @property
    def qualname(self) -> str:
        return lookup(self.function).qualname

    @property
    def default_target(self) -> Optional[BundledTarget]:
        return self.bundled_targets[0] if self.bundled_targets else None

    @property
    def delta_index(self) -> Optional[int]:
        """Position of ``delta`` among the positional arguments (None: no delta, or passed as ``delta=``)."""
        if self.default_delta is None or self.delta_keyword:
            return None
        positional = [n for n, p in self._parameters().items()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        return positional.index("delta") if "delta" in positional else 2

    def _parameters(self):
        return inspect.signature(self.function).parameters

    # -- conventions ----------------------------------------------------------------------------
    @property
    def conventions(self) -> Tuple[Convention, ...]:
        """The record's convention keywords (with this loss's defaults), plus the harness-level :data:`SCOPE`.

        Only keywords that are parameters of the reference count, never an input argument (e.g.
        DR's ``image_ids``).  A record that lists no keyword convention yet falls back to the
        conventions its family registered for it (:func:`~rankspec.refimpl.conventions.all_conventions`).
        ``scope`` is added for the losses the detector heads rank per batch or per image (a
        ``head_scope``) on (logits, 0/1 labels or IoU targets) without extra inputs, when the
        reference takes no ``scope`` itself.
        """
        params = self._parameters()
        inputs = set(self.argument_names)

        def usable(c):
            return c.keyword is not None and c.keyword in params and c.keyword not in inputs

        found = [c for c in self.record.conventions if usable(c)]
        if not found:
            found = [c for c in all_conventions() if usable(c) and self.function_name in c.applies_to]
        found = list({c.keyword: c for c in reversed(found)}.values())[::-1]  # first one wins
        if (not any(c.keyword == "scope" for c in found) and self.record.head_scope is not None
                and not self.extra_inputs and self.label_kind in ("binary", "iou")):
            found.append(SCOPE)
        return tuple(found)

    def _default(self, c: Convention):
        if isinstance(c.default, dict):
            for key in (self.function_name, c.keyword):
                if key in c.default:
                    return c.default[key]
            return self._parameters()[c.keyword].default
        return c.default

    def expected_options(self) -> Dict[str, object]:
        """Convention values this loss is defined with: each default, then ``fixed_kwargs``."""
        opts: Dict[str, object] = {}
        for c in self.conventions:
            opts[c.keyword] = self._default(c)
        opts.update(self.fixed_kwargs)
        return opts

    def option_space(self) -> Dict[str, Tuple[object, ...]]:
        """keyword -> every documented choice the reference accepts (the diagnosis searches their combinations)."""
        return dict(_option_space(self))

    def alternatives(self, max_changes: int):
        """Option dicts that differ from :meth:`expected_options` in exactly ``max_changes`` keywords."""
        base = self.expected_options()
        space = self.option_space()
        for keys in itertools.combinations(sorted(space), max_changes):
            choices = [[v for v in space[k] if not _same(v, base.get(k))] for k in keys]
            for values in itertools.product(*choices):
                opts = dict(base)
                opts.update(zip(keys, values))
                yield opts

    def changed(self, options: Mapping[str, object]) -> Dict[str, object]:
        """The entries of ``options`` that differ from :meth:`expected_options`."""
        base = self.expected_options()
        return {k: v for k, v in options.items() if not _same(base.get(k), v)}

    def call_string(self, options: Optional[Mapping[str, object]] = None, *, full: bool = False) -> str:
        """``rs_loss(self_rank='one')``: the reference call with ``options`` (only the changed ones)."""
        opts = dict(self.fixed_kwargs)
        if options is not None:
            opts = dict(options) if full else {**opts, **self.changed(options)}
        suffix = ""
        scope = opts.get("scope")
        if scope is not None and "scope" not in self.reference_kwargs():
            # a harness-level convention, not an argument of the reference
            del opts["scope"]
            if scope != "batch":
                suffix = f" applied per image (scope={scope!r})"
        return f"{self.function_name}({', '.join(f'{k}={v!r}' for k, v in opts.items())}){suffix}"

    def reference_kwargs(self) -> Dict[str, object]:
        """The keyword arguments of the reference call that defines this loss (every convention it takes)."""
        params = self._parameters()
        return {k: v for k, v in self.expected_options().items() if k in params}

    def call_arguments(self, delta_name: str = "delta") -> list:
        """The argument expressions of the reference call, as text (``logits, labels, ious, ...``)."""
        args = [self.logits_name, self.labels_name]
        args += [i.name for i in self.extra_inputs if not i.keyword]
        if self.default_delta is not None:
            if self.delta_keyword:
                args.append(f"delta={delta_name}")
            else:
                args.insert(self.delta_index, delta_name)
        args += [f"{i.name}={i.name}" for i in self.extra_inputs if i.keyword]
        return args

    def reference_call_string(self) -> str:
        """``rs_loss(logits, targets, delta, self_rank='h0', ...)`` with every convention spelled out."""
        args = self.call_arguments()
        args += [f"{k}={v!r}" for k, v in self.reference_kwargs().items()]
        return f"{self.function_name}({', '.join(args)})"

    # -- the oracle -----------------------------------------------------------------------------
    def reference(self, logits, targets, delta, options: Optional[Mapping[str, object]] = None,
                  extras: Tuple = ()) -> LossResult:
        """The reference result for one input under ``options`` (default: :meth:`expected_options`).

        ``extras`` are the arrays of :attr:`extra_inputs`, in order.
        ``scope='image'`` ranks each slice along the first axis on its own and averages
        the loss, its terms and the gradient over images that have positives.
        """
        opts = self.expected_options() if options is None else dict(options)
        scope = opts.pop("scope", "batch")
        logits = _as64(logits)
        targets = _as64(targets)
        extras = tuple(_as64(e) for e in extras)
        if len(extras) != len(self.extra_inputs):
            raise ValueError(f"loss {self.name!r} takes {len(self.extra_inputs)} extra input(s) "
                             f"({', '.join(i.name for i in self.extra_inputs) or 'none'}), got {len(extras)}")
        if scope == "batch" or logits.ndim < 2:
            return self._call(logits, targets, delta, opts, extras)
        if scope != "image":
            raise ValueError(f"scope must be 'batch' or 'image', got {scope!r}")
        if extras:
            raise ValueError("scope='image' is defined only for (logits, targets) losses")
        grad = np.zeros(logits.shape)
        loss, terms, used = 0.0, {}, 0
        for b in range(logits.shape[0]):
            if not np.any(targets[b] > 0):
                continue
            r = self._call(logits[b], targets[b], delta, opts, ())
            used += 1
            loss += r.loss
            grad[b] = r.grad
            for k, v in r.terms.items():
                if isinstance(v, float):
                    terms[k] = terms.get(k, 0.0) + v
        if used:
            loss, grad = loss / used, grad / used
            terms = {k: v / used for k, v in terms.items()}
        return LossResult(float(loss), grad, terms)

    def _call(self, logits, targets, delta, opts, extras=()) -> LossResult:
        args = [logits, targets]
        kwargs = dict(opts)
        for inp, value in zip(self.extra_inputs, extras):
            if inp.keyword:
                kwargs[inp.name] = value
            else:
                args.append(value)
        if self.default_delta is not None:
            if self.delta_keyword:
                kwargs["delta"] = delta
            else:
                args.insert(self.delta_index, delta)
        return self.function(*args, **kwargs)

    def scalar_outputs(self, result: LossResult) -> Tuple[float, ...]:
        """The result in the layout of :attr:`outputs`."""
        return tuple(float(result.loss) if k == "loss" else float(result.terms[k]) for k in self.outputs)

    def expected_grads(self, result: LossResult) -> Dict[str, np.ndarray]:
        """d loss / d input for every differentiable extra input (``{}`` for most losses)."""
        return {i.name: np.asarray(result.terms[i.grad], dtype=np.float64) for i in self.grad_inputs}


def _as64(a):
    """Floating arrays as float64; integer arrays (class ids, levels, image ids) keep their dtype."""
    arr = np.asarray(a)
    if arr.dtype.kind in "iub":
        return arr
    return np.asarray(arr, dtype=np.float64)


def _same(a, b) -> bool:
    """Equal option values: ``1`` and ``1.0`` are the same, ``True`` and ``1`` are not."""
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return a == b or (math.isnan(a) and math.isnan(b))
    return type(a) is type(b) and a == b


@functools.lru_cache(maxsize=None)
def _option_space_cached(name: str, spec_id: int):
    spec = SPECS.get(name)
    if spec is None or id(spec) != spec_id:  # pragma: no cover - a spec that is not registered
        return None
    return _compute_option_space(spec)


def _option_space(spec: "LossSpec"):
    cached = _option_space_cached(spec.name, id(spec)) if SPECS.get(spec.name) is spec else None
    return cached if cached is not None else _compute_option_space(spec)


def _compute_option_space(spec: "LossSpec"):
    """keyword -> choices, keeping only values the reference accepts on a small probe input."""
    base = spec.expected_options()
    space = []
    probe = None
    for c in spec.conventions:
        choices = tuple(spec.option_choices.get(c.keyword, c.choices))
        if len(choices) < 2:
            continue
        if c.keyword == "scope" and "scope" not in spec._parameters():
            space.append((c.keyword, choices))  # harness-level: always applicable
            continue
        if probe is None:
            probe = _probe(spec)
        usable = []
        for v in choices:
            if _same(v, base.get(c.keyword)):
                usable.append(v)
                continue
            try:
                spec.reference(probe.logits, probe.targets, probe.delta, {**base, c.keyword: v}, probe.extras)
            except Exception:
                continue  # a descriptive entry ('float >= 0') or a value this reference rejects
            usable.append(v)
        if len(usable) > 1:
            space.append((c.keyword, tuple(usable)))
    for k, choices in spec.option_choices.items():  # values for keywords that are no registered convention
        if k not in dict(space) and k in spec._parameters() and len(choices) > 1 and k not in {
                c.keyword for c in spec.conventions}:
            space.append((k, tuple(choices)))
    return tuple(space)


def _probe(spec: "LossSpec"):
    """A small fixed input of ``spec`` (its record's builder, seeded), for probing convention choices."""
    from rankspec.refimpl.cases import CaseConfig, RngSource

    if spec.case_builder is None:
        return fixed_probe_case(spec.label_kind, spec.default_delta)
    d = None if spec.default_delta is None else float(spec.default_delta)
    cfg = CaseConfig(delta=d, max_size=12, use_grad_output=False, allow_2d=False)
    kind = spec.kinds[0] if spec.kinds else None
    return spec.case_builder(RngSource(np.random.default_rng(7)), spec, cfg, kind=kind, size=10, images=1)


#: name -> spec, in the order ``rankspec check`` runs them.
SPECS: Dict[str, LossSpec] = {}


def register_spec(spec: LossSpec, *, replace: bool = False) -> LossSpec:
    """Add a loss spec (see the module docstring)."""
    if not isinstance(spec, LossSpec):
        raise TypeError(f"expected LossSpec, got {type(spec).__name__}")
    if spec.shrink_layout not in SHRINK_LAYOUTS:
        raise ValueError(f"shrink_layout must be one of {', '.join(SHRINK_LAYOUTS)}, got {spec.shrink_layout!r}")
    if spec.delta_keyword and spec.default_delta is None:
        raise ValueError("delta_keyword needs a record with a default_delta")
    if spec.name in SPECS and not replace:
        raise ValueError(f"a loss spec named {spec.name!r} is already registered")
    lookup(spec.function)  # the reference must be in the equation registry
    spec.builder  # the record's case builder must resolve
    params = inspect.signature(spec.function).parameters
    for inp in spec.extra_inputs:
        if not isinstance(inp, Input):
            raise TypeError(f"extra_inputs must hold Input records, got {type(inp).__name__}")
        if inp.name not in params:
            raise ValueError(f"{spec.function_name} has no parameter {inp.name!r} (extra input of {spec.name!r})")
    for name in spec.array_outputs:
        if name not in spec.record.outputs:
            raise ValueError(f"array output {name!r} of {spec.name!r} is not an output of {spec.function_name}")
    SPECS[spec.name] = spec
    return spec


def get_spec(name) -> LossSpec:
    """The spec called ``name`` (a :class:`LossSpec` is returned as is)."""
    if isinstance(name, LossSpec):
        return name
    try:
        return SPECS[name]
    except KeyError:
        raise KeyError(f"unknown loss {name!r}; known losses: {', '.join(SPECS)}") from None


def spec_names() -> Tuple[str, ...]:
    return tuple(SPECS)


_T = "rankspec.adapters.torch"

# -- AP / Rank & Sort / bucketed (identity-update losses of (logits, labels / targets, delta)) -----------
register_spec(LossSpec(
    name="ap", record="ap_loss", title_override="AP Loss",
    bundled_targets=(BundledTarget(f"{_T}:ap_loss"), BundledTarget(f"{_T}:APLossModule")),
))
register_spec(LossSpec(
    name="ap-interp", record="ap_loss", title_override="AP Loss, interpolated precision (AP-Loss authors' APLoss)",
    fixed_kwargs={"interpolated": True}, vectors="ap_interp",
    bundled_targets=(BundledTarget(f"{_T}:ap_loss", {"interpolated": True}), BundledTarget(f"{_T}:APLoss")),
))
register_spec(LossSpec(
    name="rs", record="rs_loss", vectors="rs",
    bundled_targets=(BundledTarget(f"{_T}:rs_loss"), BundledTarget(f"{_T}:RankSort"),
                     BundledTarget(f"{_T}:RSLossModule")),
))
register_spec(LossSpec(
    name="bap", record="bucketed_ap_loss", vectors="bap",
    bundled_targets=(BundledTarget(f"{_T}:bucketed_ap_loss"), BundledTarget(f"{_T}:BucketedAPLoss"),
                     BundledTarget(f"{_T}:BucketedAPLossModule")),
))
register_spec(LossSpec(
    name="brs", record="bucketed_rs_loss", vectors="brs",
    bundled_targets=(BundledTarget(f"{_T}:bucketed_rs_loss"), BundledTarget(f"{_T}:BucketedRankSort"),
                     BundledTarget(f"{_T}:BucketedRSLossModule")),
))

# -- RankDetNet, DR Loss, APE / ARPS and the Rank & Sort detector glue (issue 4's losses) -------------
_IOUS_LEVELS = (Input("ious", grad="grad_ious"), Input("levels"))
_RANKDET = dict(recorded=False, shrink_layout="rows", max_size=3000, default_examples=60)
register_spec(LossSpec(
    name="rankdet-global", record="global_ranking_loss",
    title_override="RankDetNet global ranking loss (foreground vs background)", **_RANKDET,
    bundled_targets=(BundledTarget(f"{_T}:global_ranking_loss"), BundledTarget(f"{_T}:GlobalRankingLoss")),
))
register_spec(LossSpec(
    name="rankdet-class", record="class_specific_ranking_loss",
    title_override="RankDetNet class-specific ranking loss", **_RANKDET,
    bundled_targets=(BundledTarget(f"{_T}:class_specific_ranking_loss"),
                     BundledTarget(f"{_T}:ClassSpecificRankingLoss")),
))
register_spec(LossSpec(
    name="rankdet-iou", record="iou_guided_ranking_loss", title_override="RankDetNet IoU-guided ranking loss",
    extra_inputs=_IOUS_LEVELS, **_RANKDET,
    bundled_targets=(BundledTarget(f"{_T}:iou_guided_ranking_loss"),
                     BundledTarget(f"{_T}:IoUGuidedRankingLoss")),
))
register_spec(LossSpec(
    name="rankdet", record="rankdet_loss",
    title_override="RankDetNet objective: global + class-specific + IoU-guided (1:1:1)",
    extra_inputs=_IOUS_LEVELS, diagnose_depth=2, **_RANKDET,
    bundled_targets=(BundledTarget(f"{_T}:rankdet_loss"), BundledTarget(f"{_T}:RankDetLoss")),
))
register_spec(LossSpec(
    name="dr", record="dr_loss", title_override="DR Loss (distributional ranking)", recorded=False,
    extra_inputs=(Input("image_ids", keyword=True),), shrink_layout="rows", max_size=20_000,
    option_choices={"tau": (4.0, 1.0)},
    bundled_targets=(BundledTarget(f"{_T}:dr_loss"), BundledTarget(f"{_T}:DRLoss")),
))
register_spec(LossSpec(
    name="ape", record="ape_loss", title_override="APE loss over ARPS pairs (CE distance, IoU-weighted)",
    recorded=False, extra_inputs=(Input("ious", per_positive=True),), max_size=20_000, max_work=1_000_000,
    default_examples=60,
    option_choices={"pair_threshold": (None, math.inf)},
    bundled_targets=(BundledTarget(f"{_T}:ape_loss"), BundledTarget(f"{_T}:APELoss")),
))
register_spec(LossSpec(
    name="ape-pairwise", record="pairwise_error_loss",
    title_override="AP loss as pairwise error (APE Eq. 8, H distance)", delta_keyword=True, recorded=True,
    max_size=20_000, max_work=1_000_000, default_examples=60, option_choices={"pair_threshold": (None, math.inf)},
    bundled_targets=(BundledTarget(f"{_T}:pairwise_error_loss"), BundledTarget(f"{_T}:PairwiseErrorLoss")),
))
register_spec(LossSpec(
    name="giou", record="giou_loss", title_override="GIoU Loss (Rank & Sort detector glue)", recorded=False,
    extra_inputs=(Input("weights"),), shrink_layout="rows", max_size=20_000,
    bundled_targets=(BundledTarget(f"{_T}:giou_loss"), BundledTarget(f"{_T}:GIoULoss")),
))

# -- aLRP Loss: the authors' aLRPLoss.apply(logits, targets, regression_losses, delta) -> (cls, rank, order) --
register_spec(LossSpec(
    name="alrp", record="alrp_loss", title_override="aLRP Loss, classification component (authors' aLRPLoss)",
    recorded=False, extra_inputs=(Input("regression_losses"),), array_outputs=("rank", "order"),
    max_size=20_000, max_work=1_000_000, default_examples=60, float32_buffers=("buffer_dtype", "float32"),
    bundled_targets=(BundledTarget(f"{_T}.alrp:aLRPLoss"),),
))

#: the harness-level ``scope`` convention, naming the losses it applies to (read by the docs' Conventions page)
SCOPE = replace(SCOPE, applies_to=tuple(dict.fromkeys(
    s.function_name for s in SPECS.values() if any(c is SCOPE for c in s.conventions))))

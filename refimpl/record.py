"""One record per loss: everything rankspec knows about a loss, in one declarative object.

A :class:`LossRecord` is to rankspec what an ``OpInfo`` is to PyTorch's test
suite: the public function of a loss is three lines (validate once, pick the
backend, compute) and every other layer - the fast kernels, the torch
adapters, the detector heads, the conformance harness, the docs - reads what
it needs from the record instead of keeping its own table::

    RS_RECORD = register_record(LossRecord(
        name="rs_loss", title="Rank & Sort Loss",
        citations=(("RS", "Eqs. 6-12"), ("BRL", "Eqs. 3.11-3.18")), family="ap-rs",
        validate=validate_rs,             # public arguments -> validated input (float64 arrays, checked options)
        reference=rs_reference,           # validated input -> LossResult (the plain math)
        conventions=(SELF_RANK.with_default("h0"), TIE_VALUE, NORMALIZATION),
        kernels={"numba": "rankspec.refimpl.fast.ap_rs:numba_ranking_loss", ...},
        label_kind="iou", terms=("ranking", "sorting", "num_positives"), ...))

    def rs_loss(logits, targets, delta=0.5, *, ..., backend="numpy"):
        return RS_RECORD.run(backend, logits, targets, delta, ...)

This module imports nothing of rankspec but :mod:`.constants` and the result
type, so every layer (and every new loss) can import it; kernels are named by
``"module:function"`` strings and imported only when a call needs them.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from .constants import check_backend

__all__ = ["Convention", "LossRecord", "register_record", "get_record", "records", "record_of"]


@dataclass(frozen=True)
class Convention:
    """One convention the papers leave open, as data.

    Held by the :class:`LossRecord` of every loss that takes it.  ``applies_to``
    lists only *extra* names that take the same keyword without being a loss
    record (a helper such as ``smoothed_step``, a torch module such as
    ``DRLoss``); :func:`rankspec.refimpl.conventions.all_conventions` adds the
    names of the records that hold the convention.
    """

    keyword: Optional[str]  #: keyword argument, or None for fixed, documented behaviour
    title: str
    applies_to: Tuple[str, ...]  #: extra function names (the records holding it are added)
    default: object
    choices: Tuple[object, ...]
    description: str  #: what the options mean
    authors: str  #: what the papers and each authors' code do

    def with_default(self, default) -> "Convention":
        """The same convention with another default (for a record whose authors' code differs)."""
        return replace(self, default=default)


@dataclass(frozen=True)
class LossRecord:
    """Everything about one loss (see the module docstring).

    Fields
    ------
    name:
        Public function name, e.g. ``"rs_loss"`` (``rankspec.refimpl.<name>``).
    title:
        Human title, e.g. ``"Rank & Sort Loss"``.
    citations:
        ``(("RS", "Eqs. 6-12"), ...)``: paper key of :data:`~rankspec.refimpl.registry.PAPERS`
        and the equations; the equation registry entry of the public function carries the same.
    family:
        Docs page key (:data:`~rankspec.refimpl.registry.FAMILIES`).
    validate:
        THE input validator: ``validate(*args, backend=..., **kwargs)`` takes the public call's
        arguments (without ``backend``, which is passed as a keyword so that GPU input can be
        left on the GPU for ``backend="cuda"``) and returns the validated input object: float64
        arrays and checked options.  It raises ValueError / TypeError naming the argument; it
        runs before any early return and before dispatch, identically for every backend.
    reference:
        The plain math: ``reference(validated) -> LossResult`` (float64 NumPy).
    conventions:
        :class:`Convention` objects of the keywords the loss takes (with this loss's default).
    kernels:
        backend -> ``"module:function"``; each function takes the same validated input and
        returns the :class:`~rankspec.refimpl.LossResult`, or ``None`` to decline the call
        (e.g. ill-conditioned input), in which case :meth:`run` computes the reference.
    label_kind:
        ``"binary"`` (0/1 labels), ``"iou"`` (IoU targets), ``"class"`` (class ids),
        ``"boxes"`` (target boxes), ...
    case_builder:
        ``"rankspec.refimpl.cases:build_ranking_case"``-style string naming the generator of sample inputs,
        or None (the generic builder of the label kind).
    terms:
        Keys of ``LossResult.terms``.
    outputs:
        Scalar outputs of the authors' call convention (``("loss",)`` or e.g. ``("loss", "ranking", "sorting")``).
    head_keys:
        Keys of the detector heads' loss dict this loss fills, or None for a non-head loss.
    head_scope:
        Default ``scope`` ("batch" / "image") of the heads, or None.
    input_names:
        Names of the array arguments, in call order (``("logits", "targets")``).
    labels_name:
        Name of the label argument (``"labels"`` / ``"targets"``).
    continuous:
        True when positives carry a continuous target (IoU) rather than 1.
    with_sort:
        True for the losses with RS's sorting part.
    bucketed:
        True for the bucketed losses (BRL Alg. 2).
    default_delta:
        Default of ``delta`` (None: the loss has no delta).
    term_features:
        Properties of an input that this loss defines and a port may handle differently, as
        ``(key, words, predicate)``: ``predicate(terms)`` reads the reference's terms on the input
        (e.g. APE: no positive has a valid pair, ``num_active == 0``).  The conformance diagnosis
        names a crash or mismatch trigger with ``words`` when the failing inputs are exactly those
        with the property.  The predicate must be a module-level function (records are pickled).
    """

    name: str
    title: str
    citations: Tuple[Tuple[str, str], ...]
    family: str
    validate: Callable[..., Any]
    reference: Callable[[Any], Any]
    conventions: Tuple[Convention, ...] = ()
    kernels: Mapping[str, str] = field(default_factory=dict)
    label_kind: str = "binary"
    case_builder: Optional[str] = None
    terms: Tuple[str, ...] = ()
    outputs: Tuple[str, ...] = ("loss",)
    head_keys: Optional[Tuple[str, ...]] = None
    head_scope: Optional[str] = None
    input_names: Tuple[str, ...] = ("logits", "labels")
    labels_name: str = "labels"
    continuous: bool = False
    with_sort: bool = False
    bucketed: bool = False
    default_delta: Optional[float] = None
    term_features: Tuple[Tuple[str, str, Callable[[Mapping[str, float]], bool]], ...] = ()

    # -- backends -----------------------------------------------------------------------------
    @property
    def backends(self) -> Tuple[str, ...]:
        """``"numpy"`` plus every backend with a kernel."""
        return ("numpy",) + tuple(b for b in self.kernels if b != "numpy")

    def kernel(self, backend: str) -> Callable[[Any], Any]:
        """The kernel function of ``backend`` (imported now), or the reference for ``"numpy"``."""
        check_backend(backend)
        if backend == "numpy":
            return self.reference
        target = self.kernels.get(backend)
        if target is None:
            raise ValueError(f"{self.name} has no {backend!r} backend; it has {list(self.backends)!r}")
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)

    def compute(self, backend: str, validated) -> Any:
        """Run ``backend`` on already validated input (the reference when a kernel declines)."""
        if backend == "numpy":
            return self.reference(validated)
        result = self.kernel(backend)(validated)
        if result is None:  # the kernel declined (e.g. ill-conditioned input): the reference decides
            result = self.reference(validated.on_host() if hasattr(validated, "on_host") else validated)
            if hasattr(validated, "wrap_result"):
                result = validated.wrap_result(result)
        return result

    def run(self, backend, *args, **kwargs) -> Any:
        """Validate once, dispatch on ``backend``, compute: the body of every public loss function."""
        backend = check_backend(backend)
        validated = self.validate(*args, backend=backend, **kwargs)
        return self.compute(backend, validated)

    # -- citations ----------------------------------------------------------------------------
    @property
    def citation(self) -> str:
        """``"RS Eqs. 6-12; BRL Eqs. 3.11-3.18"``."""
        return "; ".join(f"{paper} {where}" for paper, where in self.citations)

    def convention(self, keyword: str) -> Convention:
        for c in self.conventions:
            if c.keyword == keyword:
                return c
        raise KeyError(f"{self.name} has no convention {keyword!r}")

    @property
    def function(self) -> Callable:
        """The public function (``rankspec.refimpl.<name>``)."""
        # importing any rankspec.refimpl module first runs the package's __init__, which defines it
        return getattr(sys.modules[__name__.rsplit(".", 1)[0]], self.name)


_RECORDS: Dict[str, LossRecord] = {}


def register_record(record: LossRecord) -> LossRecord:
    """Add ``record`` to the registry (called once, where the loss's public function is defined)."""
    if not isinstance(record, LossRecord):
        raise TypeError(f"expected LossRecord, got {type(record).__name__}")
    old = _RECORDS.get(record.name)
    if old is not None and old != record:
        raise ValueError(f"a different record named {record.name!r} is already registered")
    for backend in record.kernels:
        check_backend(backend)
    _RECORDS[record.name] = record
    return record


def get_record(name: str) -> LossRecord:
    """The record of loss ``name`` (public function name, e.g. ``"rs_loss"``)."""
    try:
        return _RECORDS[name]
    except KeyError:
        raise KeyError(f"no loss record named {name!r}; known: {sorted(_RECORDS)}") from None


def records() -> Tuple[LossRecord, ...]:
    """Every registered record, in registration order.

    Importing this module imports the ``rankspec.refimpl`` package first, which registers the
    records of every loss it ships; other packages register theirs when imported.
    """
    return tuple(_RECORDS.values())


def record_of(func) -> Optional[LossRecord]:
    """The record whose public function is ``func`` (or whose name is ``func``), else None."""
    name = func if isinstance(func, str) else getattr(func, "__name__", None)
    return _RECORDS.get(name)

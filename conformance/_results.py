"""What a check produces: one :class:`Evaluation` per case, a :class:`TargetResult` per target and dtype,
a :class:`Counterexample` for the first failure, and the :class:`CheckReport` of a whole run.

Shared by the array-loss check (:mod:`~rankspec.conformance.harness`) and the head-pipeline check
(:mod:`~rankspec.conformance.heads`); renderings live in :mod:`~rankspec.conformance._report`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from ._compare import Comparison, Tolerance
from ._diagnose import Diagnosis
from .specs import SPECS, get_spec

__all__ = ["Evaluation", "Counterexample", "TargetResult", "CheckReport"]


@dataclass
class Evaluation:
    case: object
    expected: Optional[object]  #: the reference result (None when the oracle itself failed)
    outcome: Optional[object]
    comparison: Comparison

    @property
    def ok(self) -> bool:
        return self.comparison.ok


@dataclass
class Counterexample:
    case: object
    expected: object
    outcome: Optional[object]
    comparison: Comparison
    tolerance: Tolerance
    found_in: str  #: description of the first failing case before shrinking
    original_size: int
    shrink_steps: int
    reproducer: str
    extra_names: Tuple[str, ...] = ()  #: names of ``case.extras`` (the spec's extra inputs)

    def to_dict(self) -> dict:
        c = self.case
        d = {"found_in": self.found_in, "original_size": self.original_size, "shrink_steps": self.shrink_steps,
             "shape": list(c.shape), "dtype": c.dtype, "delta": c.delta, "grad_output": c.grad_output,
             "logits": np.asarray(c.logits, dtype=np.float64).tolist(),
             "targets": np.asarray(c.targets).astype(np.float64).tolist(),
             "failure": self.comparison.failure, "message": self.comparison.message,
             "expected": {"loss": float(self.expected.loss), "grad": np.asarray(self.expected.grad).tolist()},
             "tolerance": self.tolerance.to_dict(), "reproducer": self.reproducer}
        if getattr(c, "precision", None):  # a float16 / bfloat16 case: the values above are of that dtype
            d["precision"] = c.precision
        if c.extras:
            names = self.extra_names or tuple(f"input{k + 2}" for k in range(len(c.extras)))
            d["extras"] = {n: np.asarray(e).astype(np.float64).tolist() for n, e in zip(names, c.extras)}
        if self.outcome is not None:
            d["got"] = {"loss": self.outcome.loss, "grad": np.asarray(self.outcome.grad).tolist()}
            if self.outcome.extra_grads:
                d["got"]["extra_grads"] = {k: np.asarray(v).tolist() for k, v in self.outcome.extra_grads.items()}
        return d


def _clean(x):
    return None if isinstance(x, float) and not math.isfinite(x) else x


@dataclass
class TargetResult:
    """The check of one target on one loss in one dtype (a row of the report)."""

    loss: str
    target: str
    dtype: str
    convention: str
    device: str
    tolerance: Tolerance
    cases: int = 0
    vector_cases: int = 0
    generated_cases: int = 0
    failed: int = 0
    errors: int = 0  #: cases where the target raised / returned something unusable
    max_abs_loss: float = 0.0
    max_rel_loss: float = 0.0
    max_abs_grad: float = 0.0
    max_rel_grad: float = 0.0
    #: the quantity the pass rule compares: max over cases and entries of |got - ref| / (atol + rtol |ref|),
    #: with each case's own atol (``_compare.case_tolerance``); <= 1 passes
    max_score: float = 0.0
    seconds: float = 0.0
    counterexample: Optional[Counterexample] = None
    diagnosis: Optional[Diagnosis] = None
    notes: List[str] = field(default_factory=list)
    first_failure: Optional[Evaluation] = None
    failing_cases: List[object] = field(default_factory=list, repr=False)
    first_failure_at: Optional[int] = None  #: 1-based number of the case that failed first (cases run so far)
    found_by: Optional[str] = None  #: the generator / source of the first failing case

    @property
    def conformant(self) -> bool:
        return self.failed == 0 and self.cases > 0

    def add(self, ev: Evaluation, source: str) -> None:
        self.cases += 1
        if source == "vectors":
            self.vector_cases += 1
        else:
            self.generated_cases += 1
        c = ev.comparison
        if c.failure is not None and c.failure != "mismatch":
            self.errors += 1
        else:
            self.max_abs_loss = max(self.max_abs_loss, c.loss_abs)
            self.max_rel_loss = max(self.max_rel_loss, c.loss_rel)
            self.max_abs_grad = max(self.max_abs_grad, c.grad_abs)
            self.max_rel_grad = max(self.max_rel_grad, c.grad_rel)
            if c.score == c.score:  # not NaN (inf is kept: an entry that is NaN never passes)
                self.max_score = max(self.max_score, c.score)
        if not ev.ok:
            self.failed += 1
            if self.first_failure is None:
                self.first_failure = ev
                self.first_failure_at = self.cases
                self.found_by = str(getattr(ev.case, "source", source) or source)
            if len(self.failing_cases) < 8:
                self.failing_cases.append(ev.case)

    def to_dict(self) -> dict:
        return {"loss": self.loss, "target": self.target, "dtype": self.dtype, "convention": self.convention,
                "device": self.device, "conformant": self.conformant, "cases": self.cases,
                "vector_cases": self.vector_cases, "generated_cases": self.generated_cases, "failed": self.failed,
                "errors": self.errors, "max_abs_loss_error": _clean(self.max_abs_loss),
                "max_rel_loss_error": _clean(self.max_rel_loss), "max_abs_grad_error": _clean(self.max_abs_grad),
                "max_rel_grad_error": _clean(self.max_rel_grad), "max_error_ratio": _clean(self.max_score),
                "tolerance": self.tolerance.to_dict(),
                "seconds": round(self.seconds, 3), "notes": self.notes,
                "first_failure_at": self.first_failure_at, "found_by": self.found_by,
                "diagnosis": self.diagnosis.to_dict() if self.diagnosis else None,
                "counterexample": self.counterexample.to_dict() if self.counterexample else None}


@dataclass
class CheckReport:
    """Every :class:`TargetResult` of one :func:`check` run."""

    results: List[TargetResult]
    seed: int
    examples: Optional[int]  #: generated cases per target and dtype (None: each loss's default)
    device: str
    version: str
    seconds: float = 0.0
    source: str = "check"
    #: report label -> (title, reference) for rows that are not a loss spec (e.g. ``dense2d/rs`` of check_head)
    titles: Dict[str, Tuple[str, Optional[str]]] = field(default_factory=dict)
    header: Optional[str] = None  #: first line of the text report (default: the ``rankspec check`` line)

    @property
    def conformant(self) -> bool:
        return bool(self.results) and all(r.conformant for r in self.results)

    @property
    def exit_code(self) -> int:
        return 0 if self.conformant else 1

    def losses(self) -> List[str]:
        return list(dict.fromkeys(r.loss for r in self.results))

    def to_dict(self) -> dict:
        return {"rankspec_version": self.version, "source": self.source, "conformant": self.conformant,
                "seed": self.seed, "examples": self.examples, "device": self.device,
                "seconds": round(self.seconds, 3),
                "losses": [{"loss": name, "title": self.title_of(name)[0], "reference": self.title_of(name)[1],
                            "results": [r.to_dict() for r in self.results if r.loss == name]}
                           for name in self.losses()]}

    def title_of(self, name: str) -> Tuple[str, Optional[str]]:
        """(title, reference) of a report label."""
        if name in self.titles:
            return self.titles[name]
        if name in SPECS:
            return get_spec(name).title, get_spec(name).qualname
        return name, None

    def format_text(self, *, reproducers: bool = True) -> str:
        from ._report import format_text

        return format_text(self, reproducers=reproducers)

    def to_json(self) -> str:
        import json

        return json.dumps(self.to_dict(), indent=2)

    def to_junit(self) -> str:
        from ._report import format_junit

        return format_junit(self)

    def __str__(self) -> str:
        return self.format_text()



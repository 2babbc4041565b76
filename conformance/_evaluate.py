"""The one engine of every check: a case protocol, the evaluator, and what happens after a failure.

Two kinds of cases are checked - flat loss inputs (:mod:`~rankspec.conformance.harness`,
:class:`~rankspec.conformance._cases.Case`) and detector-head batches (:mod:`~rankspec.conformance.heads`,
:class:`~rankspec.conformance._head_specs.HeadCase`).  Each kind implements :class:`CaseKind`, a small
interface: run the reference, run the target, compare, the tolerance of a case, how to shrink a case, which
conventions to try in a diagnosis, and the pieces of a reproducer script.  Everything else is written once,
here and in the modules it calls:

* :class:`Evaluator` - reference, target call and comparison of one case.  :meth:`Evaluator.run` is the only
  place a target is called (during the check, shrinking and diagnosis alike): passing ``runner=`` replaces
  it, e.g. with a call into a worker process, without touching anything else;
* :func:`conclude` - after the cases ran: shrink the first failure (:func:`~._shrink.shrink_failure`), render
  its reproducer (:func:`~._repro.render`) and diagnose it (:func:`~._diagnose.diagnose`).
"""

from __future__ import annotations

from typing import Callable, Iterable, List, Optional, Protocol, Tuple

from ._compare import Comparison, Tolerance, failed_call
from ._diagnose import diagnose
from ._repro import Script, render
from ._results import Counterexample, Evaluation, TargetResult
from ._shrink import shrink_failure
from ._targets import TargetFailure

__all__ = ["CaseKind", "Evaluator", "conclude"]


class CaseKind(Protocol):
    """What the shared engine needs to know about one kind of case (one target, loss and dtype)."""

    #: a reference that raises is reported as a failing case (head batches) instead of propagating (flat inputs,
    #: whose generator only draws valid inputs: an error there is a bug of rankspec)
    oracle_errors_are_failures: bool
    #: at most this many documented options are changed at once in a diagnosis
    diagnose_depth: int

    def reference(self, case, options=None):
        """The expected result under ``options`` (``None``: the checked convention); may be cached."""

    def run(self, case):
        """Call the target on ``case``; raise :class:`~._targets.TargetFailure` when it fails."""

    def tolerance(self, case) -> Tolerance:
        """The tolerance of ``case``."""

    def compare(self, case, expected, outcome) -> Comparison:
        """Compare what the target returned with the reference."""

    def shrink_start(self, evaluator: "Evaluator", first: Evaluation, seconds: float) -> Tuple[Evaluation, int]:
        """A first, cheap shrinking pass (e.g. hypothesis re-running its search); ``(first, 0)`` if none."""

    def shrinker(self, fails: Callable, seconds: float):
        """An object whose ``shrink(case)`` returns a smaller case on which ``fails`` holds, and ``steps``."""

    def diagnostic_cases(self, failing: List) -> List:
        """The cases a diagnosis runs the target on (fixed ones and some of the failing ones)."""

    def alternatives(self, level: int) -> Iterable[Tuple[dict, dict]]:
        """``(options, changed)`` for every documented convention combination changing ``level`` options."""

    def describe_options(self, changed: dict) -> str:
        """How a diagnosis names the reference under the changed options (``{}``: the checked convention)."""

    def findings(self, evaluator: "Evaluator", pairs: List) -> List[str]:
        """Checks for common bugs that are not conventions, on ``(case, outcome)`` pairs."""

    def script(self, case, expected, outcome, tolerance: Tolerance, message: str) -> Script:
        """The sections of a reproducer for ``case``: inputs (setup code), oracle call, target call, checks."""

    def counterexample(self, minimal: Evaluation, first: Evaluation, steps: int, tolerance: Tolerance,
                       code: str) -> Counterexample:
        """The report's record of the (shrunk) first failure."""


class Evaluator:
    """Reference, target and comparison of one case, for one :class:`CaseKind`.

    ``runner`` (default ``kind.run``) is how the target is called: the single seam where the call can be moved
    elsewhere (a worker process, a time limit) - shrinking and diagnosis call the target through it as well.
    """

    def __init__(self, kind: CaseKind, runner: Optional[Callable] = None, domain=None):
        self.kind = kind
        self.runner = kind.run if runner is None else runner
        self.calls = 0
        #: a :class:`~._domain.Domain`: cases outside it are never run (shrinking and the check stay inside it)
        self.domain = domain

    def admits(self, case) -> bool:
        return self.domain is None or self.domain.admits(case)

    def reference(self, case, options=None):
        return self.kind.reference(case, options)

    def run(self, case):
        """The target's outcome on ``case`` (raises :class:`TargetFailure`)."""
        self.calls += 1
        return self.runner(case)

    def _start(self, case):
        """A function returning the target's outcome on ``case``; a runner with ``submit`` (a worker) starts the
        call now, so the reference is computed while the target runs."""
        submit = getattr(self.runner, "submit", None)
        if submit is None:
            return lambda: self.run(case)
        self.calls += 1
        try:
            return submit(case)
        except TargetFailure as exc:
            error = exc  # ``exc`` itself is unbound when the except block ends

            def failed():
                raise error
            return failed

    def evaluate(self, case) -> Evaluation:
        if not self.admits(case):  # outside the documented domain: neither a pass nor a failure of the target
            return Evaluation(case, None, None, Comparison(ok=True, failure="outside-domain",
                                                           message="outside the input domain (--domain)"))
        outcome_of = self._start(case)
        try:
            expected = self.reference(case)
        except Exception as exc:
            if getattr(self.runner, "submit", None) is not None:
                try:
                    outcome_of()  # a started call's answer is read before the next call (it is not needed)
                except TargetFailure:
                    pass
            if not self.kind.oracle_errors_are_failures:
                raise  # flat inputs are valid by construction: an oracle error is a bug of rankspec
            # the oracle itself failed: report it, never hide it
            return Evaluation(case, None, None, failed_call(f"oracle-error:{type(exc).__name__}",
                                                            f"the oracle raised {type(exc).__name__}: {exc}"))
        try:
            outcome = outcome_of()
        except TargetFailure as exc:
            return Evaluation(case, expected, None, failed_call(exc.kind, exc.message))
        return Evaluation(case, expected, outcome, self.kind.compare(case, expected, outcome))


def conclude(evaluator: Evaluator, res: TargetResult, *, shrink: bool, shrink_seconds: float, diagnose_it: bool,
             diagnose_seconds: float) -> Evaluation:
    """After the cases of ``res`` ran with failures: shrink, reproducer, diagnosis; returns the minimal failure."""
    kind = evaluator.kind
    first = res.first_failure
    minimal, steps = first, 0
    if getattr(evaluator.runner, "stopped", None):
        # the target is not called again (it hung, or its worker kept dying): report the first failure as is
        shrink = diagnose_it = False
    if shrink and first.expected is not None:
        minimal, steps = shrink_failure(evaluator, first, shrink_seconds)
    tol = kind.tolerance(minimal.case)
    code = render(kind.script(minimal.case, minimal.expected, minimal.outcome, tol, minimal.comparison.message))
    res.counterexample = kind.counterexample(minimal, first, steps, tol, code)
    if getattr(evaluator.runner, "stopped", None):  # it stopped while shrinking: a diagnosis cannot call it
        diagnose_it = False
    if diagnose_it and first.expected is not None:
        failing = [minimal.case] + [c for c in res.failing_cases if c is not minimal.case]
        res.diagnosis = diagnose(evaluator, failing, max_seconds=diagnose_seconds)
    return minimal

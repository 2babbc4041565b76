"""The conformance harness: check an implementation of a ranking loss against the reference.

:func:`check` runs, for every requested loss (:mod:`~rankspec.conformance.specs`),
target and dtype:

1. the recorded vectors' inputs (:func:`rankspec.refimpl.vectors.load_official`);
2. ``examples`` generated cases (:mod:`~rankspec.conformance._cases`: sizes 1
   to 10^5, positive fractions 0 to 1, a delta grid including 0, exact ties,
   separated positives, no relevant negative, equal IoUs, large magnitudes,
   2-D inputs), deterministic for a ``seed``: half drawn by hypothesis (whose
   choices favour small and boundary values and shrink well), half by a seeded
   NumPy generator driving the same case builder (uniform choices, so larger
   and more varied inputs; every third passed to the target as a transposed,
   strided or offset view);
3. up to a quarter of ``examples`` as hostile inputs (:mod:`~._hostile`): sizes
   just above and at 4096 / 65536 / 2^20 with positives and relevant negatives,
   no positive, no negative, all-equal logits, delta = 0;

comparing the loss (and each part of a tuple output) and every gradient entry
with the reference under a dtype-aware tolerance (:mod:`~._compare`).  On
failure it shrinks the first failing input (hypothesis shrinking, then delta
debugging in :mod:`~._shrink`) to a minimal counterexample with a
copy-pasteable reproducer (:mod:`~._repro`), and diagnoses which documented
convention the target follows (:mod:`~._diagnose`).  Flat loss inputs are one
kind of case (:class:`ArrayKind`) of the shared engine
(:mod:`~rankspec.conformance._evaluate`), which the head-pipeline check uses too.

:func:`assert_conforms` wraps :func:`check` for any test runner and raises
:class:`NonConformant` (an ``AssertionError``) whose message shows the
diagnosis and the minimal counterexample.

Targets and call conventions: :mod:`~rankspec.conformance._targets`.  torch is
imported only for torch targets, hypothesis only for generated cases (without
it, cases come from a NumPy generator and are not shrunk by hypothesis).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import replace
from typing import Dict, List, Mapping, Optional, Sequence

from rankspec.refimpl import LossResult

from . import _cases, _hostile, _hypotheses
from ._compare import Comparison, Tolerance, base_tolerance, case_tolerance, compare, failed_call
from ._constants import CHECK_DTYPES, DEVICES, DTYPES, LOW_PRECISION_DTYPES
from ._diagnose import array_findings
from ._evaluate import Evaluator, conclude
from ._progress import Progress
from ._repro import Script, array_literal, render
from ._results import CheckReport, Counterexample, Evaluation, TargetResult
from ._shrink import Shrinker
from ._targets import Target, TargetError, TargetSignatureError, make_target, object_name
from ._usage import NonConformant, UsageProblem, check_count, check_device, check_number, check_seed
from ._domain import parse_domain
from ._worker import DEFAULT_CALL_TIMEOUT, Worker, WorkerCrashed, WorkerRunner, picklable
from ._reference import clear_reference_cache, reference_result
from .specs import SPECS, LossSpec, get_spec

__all__ = ["check", "assert_conforms", "NonConformant", "CheckReport", "TargetResult", "Counterexample",
           "UsageProblem", "TargetError", "TargetSignatureError", "reference_result", "clear_reference_cache",
           "ArrayKind", "Evaluation", "bundled_targets", "reproducer", "DTYPES", "DEVICES"]


# reference results, cached across targets of one process: rankspec.conformance._reference
# (re-exported here: reference_result, clear_reference_cache)

# ------------------------------------------------------------------------------------------------
# flat loss inputs: one kind of case of the shared engine (rankspec.conformance._evaluate)
# ------------------------------------------------------------------------------------------------

class ArrayKind:
    """The :class:`~._evaluate.CaseKind` of flat loss inputs: one target on one spec in one dtype."""

    oracle_errors_are_failures = False

    def __init__(self, target: Target, spec: LossSpec, dtype: str, tolerance: Tolerance,
                 fixed_delta: Optional[float], expected_overrides: Optional[Dict[bytes, LossResult]] = None, *,
                 cfg=None, examples: int = 0, seed: int = 0):
        self.target, self.spec, self.dtype, self.base_tolerance = target, spec, dtype, tolerance
        self.fixed_delta = fixed_delta
        self.overrides = expected_overrides or {}
        self.cfg = cfg if cfg is not None else _cases.CaseConfig(dtype=dtype, delta=fixed_delta,
                                                                 use_grad_output=target.uses_grad_output)
        self.examples, self.seed = examples, seed
        self.used_hypothesis = False
        self.diagnose_depth = spec.diagnose_depth

    # -- reference, target, comparison ---------------------------------------------------------------
    def reference(self, case, options=None) -> LossResult:
        case = self.target.reading(case)  # e.g. a DR port without image_ids: the pooled reading
        if options is None and self.overrides:
            hit = self.overrides.get(case.key())
            if hit is not None:
                return hit
        return reference_result(self.spec, case, options)

    def run(self, case):
        return self.target.run(case)

    def tolerance(self, case) -> Tolerance:
        return case_tolerance(case, self.spec, self.base_tolerance)

    def compare(self, case, expected, outcome) -> Comparison:
        return compare(expected, outcome, self.tolerance(case), self.spec)

    # -- shrinking -----------------------------------------------------------------------------------
    def shrink_start(self, evaluator, first, seconds: float):
        """Hypothesis re-runs its search with shrinking on, keeping the smallest case failing the same way."""
        signature = first.comparison.failure
        best, steps = [first], [0]
        if not (self.used_hypothesis and seconds > 0 and first.case.source == "hypothesis"):
            return first, 0

        def on_eval(case):
            ev = evaluator.evaluate(case)
            if ev.comparison.failure == signature:
                b = best[0]
                if (ev.case.size, ev.case.logits.ndim) < (b.case.size, b.case.logits.ndim):
                    best[0] = ev
                    steps[0] += 1
                raise _Fail()

        _run_generated(self, self.cfg, self.examples, self.seed, on_eval, shrink=True,
                       deadline=time.monotonic() + seconds)
        return best[0], steps[0]

    def shrinker(self, fails, seconds: float) -> Shrinker:
        spec = self.spec
        deltas = [] if spec.default_delta is None else list(
            dict.fromkeys(d for d in (spec.default_delta, 1.0, 0.5, 0.0) if d is not None))
        return Shrinker(fails, max_seconds=seconds, deltas=deltas,
                        fixed_delta=self.fixed_delta is not None or spec.default_delta is None,
                        iou=spec.label_kind == "iou", layout=spec.shrink_layout)

    # -- diagnosis -----------------------------------------------------------------------------------
    def diagnostic_cases(self, failing):
        cfg = _cases.CaseConfig(dtype=self.dtype, delta=self.fixed_delta,
                                use_grad_output=self.target.uses_grad_output)
        # fixed cases only (the same for every run and dtype, so the diagnosis is too); the run's failing
        # cases are compared with them separately (diagnose's case (a))
        return _cases.diagnostic_cases(self.spec, cfg) + _cases.at_dtype(
            lambda c: _hostile.trigger_cases(self.spec, c), cfg)

    def size_probe(self, evaluator) -> Optional[str]:
        """Run the target on the inputs straddling 4096 / 65536 / 2^20 (:func:`._hostile.size_cases`) and
        name the threshold above which it fails (None when no threshold separates passing from failing)."""
        ok = {}
        for case in _cases.at_dtype(lambda c: _hostile.size_cases(self.spec, c, self.seed), self.cfg):
            if case.kind == "size" and case.logits.ndim == 1:
                ok[case.size] = evaluator.evaluate(case).ok
        for t in _hostile.SIZE_THRESHOLDS:
            if ok.get(t) is True and ok.get(t + 1) is False:
                return f"fails only on inputs with more than {t} elements (passes at {t}, fails at {t + 1})"
        return None

    def hypotheses(self, evaluator, pairs, bad):
        """Generic porting mistakes that explain every pair (:mod:`~._hypotheses`)."""
        return _hypotheses.hypotheses(evaluator, pairs, bad)

    def alternatives(self, level: int):
        for options in self.spec.alternatives(level):
            yield options, self.spec.changed(options)

    def describe_options(self, changed) -> str:
        return self.spec.call_string({**self.spec.expected_options(), **changed})

    def findings(self, evaluator, pairs):
        return array_findings(evaluator, pairs)

    # -- reproducer and report -------------------------------------------------------------------------
    def script(self, case, expected, outcome, tolerance: Tolerance, message: str = "") -> Script:
        """A reproducer that recomputes the reference and calls the target on ``case``."""
        spec, target = self.spec, self.target
        case = target.reading(case)
        names = spec.argument_names if hasattr(spec, "argument_names") else ("logits", spec.labels_name)
        opts = "".join(f", {k}={v!r}" for k, v in spec.fixed_kwargs.items())
        g = float(case.grad_output) if target.uses_grad_output else 1.0
        header = [f"# rankspec counterexample: loss {spec.name!r} ({spec.title}), {case.checked_dtype}, shape {case.shape}",
                  f"# reference: {spec.qualname} ({spec.citation})",
                  f"# target: {target.name}  [call convention: {target.convention}]"]
        fn = spec.function_name
        imports = ["import numpy as np"]
        if re.search(rf"\b{re.escape(fn)}\b", target.import_code) or target.expr.split(".")[0] == fn:
            ref = f"reference_{fn}"  # the target has the reference's name (e.g. a bundled adapter)
            imports.append(f"from rankspec.refimpl import {fn} as {ref}")
        else:
            ref = fn
            imports.append(f"from rankspec.refimpl import {fn}")
        imports += target.import_code.splitlines()
        setup = [f"{name} = {array_literal(arr, name)}" for name, arr in zip(names, case.arrays)]
        if case.delta is not None:
            setup.append(f"delta = {float(case.delta)!r}")
        args = ", ".join(spec.call_arguments()) if hasattr(spec, "call_arguments") else f"logits, {names[1]}, delta"
        oracle = [f"expected = {ref}({args}{opts})  # the oracle (float64)",
                  "expected_grad = expected.grad" if g == 1.0 else f"expected_grad = {g!r} * expected.grad  # grad_output"]
        grad_inputs = [i for i in getattr(spec, "grad_inputs", ()) if target.uses_grad_output]
        for inp in grad_inputs:
            scale = "" if g == 1.0 else f"{g!r} * "
            oracle.append(f"expected_grad_{inp.name} = {scale}np.asarray(expected.terms[{inp.grad!r}])")
        call = target.call_code(case, names[1], names[0]).splitlines()
        layout = getattr(case, "layout", "contiguous")
        if layout != "contiguous":
            # the target got the arrays as a non-contiguous view (._hostile): build the same view here
            at = next((k + 1 for k, line in enumerate(call) if line.startswith(("x, t = ", "t = torch.tensor("))),
                      len(call))
            call.insert(at, f"x, t = present(x, {layout!r}), present(t, {layout!r})  # the failing input "
                            f"layout: a {layout} view with the same values")
            imports.append("from rankspec.conformance._hostile import present")
        observed = []
        if outcome is not None:
            observed.append(f"# this run got loss={outcome.loss!r}; expected loss={float(expected.loss)!r}")
        elif message:
            observed.append(f"# this run raised: {message}")
        tol = f"atol={tolerance.atol:.3g}, rtol={tolerance.rtol:.3g}"
        checks = ['print("loss:", got_loss, "expected:", expected.loss)',
                  'print("grad:    ", got_grad)',
                  'print("expected:", expected_grad)',
                  f"np.testing.assert_allclose(got_loss, expected.loss, {tol})",
                  f"np.testing.assert_allclose(got_grad, expected_grad, {tol})"]
        checks += [f"np.testing.assert_allclose(got_grad_{inp.name}, expected_grad_{inp.name}, {tol})"
                   for inp in grad_inputs]
        return Script(header, imports, setup, call, oracle, checks, observed)

    def counterexample(self, minimal, first, steps: int, tolerance: Tolerance, code: str) -> Counterexample:
        return Counterexample(minimal.case, minimal.expected, minimal.outcome, minimal.comparison, tolerance,
                              first.case.describe(), first.case.size, steps, code,
                              tuple(i.name for i in self.spec.extra_inputs))


def reproducer(spec, target, case, expected, outcome, tolerance, failure_message: str = "") -> str:
    """A self-contained script that recomputes the reference and calls ``target`` on ``case``."""
    kind = ArrayKind(target, spec, case.dtype, tolerance, None)
    return render(kind.script(case, expected, outcome, tolerance, failure_message))


# ------------------------------------------------------------------------------------------------
# the check
# ------------------------------------------------------------------------------------------------

def _run_generated(kind: "ArrayKind", cfg, examples: int, seed: int, on_eval, *, shrink: bool = False,
                   deadline: float = math.inf):
    """Feed ``examples`` generated cases to ``on_eval``; returns False if hypothesis is unavailable."""
    try:
        from hypothesis import HealthCheck, Phase, Verbosity, given, settings
        from hypothesis import seed as hseed
    except ImportError:
        if shrink:
            return False
        for i, case in enumerate(_cases.random_cases(kind.spec, cfg, examples, seed)):
            on_eval(_hostile.layout_for(i, replace(case, source="seeded random")))
        return False

    phases = [Phase.generate] + ([Phase.shrink] if shrink else [])
    n_hyp = examples if shrink else examples - examples // 2

    @settings(max_examples=max(n_hyp, 1), database=None, deadline=None, phases=phases,
              suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet, print_blob=False,
              report_multiple_bugs=False, derandomize=False)
    @hseed(seed)
    @given(_cases.strategy(kind.spec, cfg))
    def prop(case):
        if time.monotonic() > deadline:
            return
        on_eval(replace(case, source="hypothesis"))

    try:
        if n_hyp > 0:
            prop()
    except Exception:
        if not shrink:
            raise
    if not shrink:
        # the other half: the same generator driven by a seeded NumPy generator, whose draws are uniform
        # (hypothesis favours small and boundary choices, which is what makes it shrink well)
        # (every third one passed to the target as a non-contiguous / transposed / offset view: ._hostile)
        for i, case in enumerate(_cases.random_cases(kind.spec, cfg, examples // 2, seed)):
            on_eval(_hostile.layout_for(i, replace(case, source="seeded random")))
    return True


class _Fail(Exception):
    pass


def _check_target(target: Target, spec: LossSpec, dtype: str, *, delta, examples, seed, vectors, max_size,
                  tol_overrides, shrink, shrink_seconds, do_diagnose, progress: Progress,
                  fixed_cases=None, expected_overrides=None, diagnose_seconds: float = 30.0,
                  runner=None, domain=None) -> TargetResult:
    t0 = time.monotonic()
    fixed_delta = delta if delta is not None else target.fixed_delta
    # the reference's own precision sets the default tolerance (aLRP's float32 buffers); explicit --atol/--rtol win
    # (a narrow dtype's tolerance is float32's plus its output rounding in any case: ._compare)
    tol_dtype = dtype if dtype in LOW_PRECISION_DTYPES else spec.tolerance_dtype(dtype, {})
    tol = base_tolerance(tol_dtype, tol_overrides)
    res = TargetResult(spec.name, target.name, dtype, target.convention, target.device, tol)
    res.notes += target.notes
    if dtype in LOW_PRECISION_DTYPES and not target.uses_torch:
        res.notes.append(f"{dtype}: the inputs are rounded to {dtype}, but this NumPy target gets them as float32 "
                         f"arrays holding the rounded values (NumPy has no bfloat16, so both narrow dtypes are "
                         f"handed to NumPy targets this way); the tolerance is {dtype}'s")
    cfg = _cases.CaseConfig(dtype=dtype, delta=fixed_delta, max_size=max_size,
                            use_grad_output=target.uses_grad_output)
    kind = ArrayKind(target, spec, dtype, tol, fixed_delta, expected_overrides, cfg=cfg, examples=examples,
                     seed=seed)
    evaluator = Evaluator(kind, runner, domain)
    label = f"{spec.name} {dtype} {target.name}"

    stopped = lambda: getattr(runner, "stopped", None)  # noqa: E731  (a worker runner that gave up)

    not_run = [0]

    outside = [0]

    def on_eval(case, source="generated"):
        if stopped():  # the target is not called again: the remaining cases are skipped (and reported)
            not_run[0] += 1
            return
        if not evaluator.admits(case):  # outside the input domain the target documents (domain=)
            outside[0] += 1
            return
        ev = evaluator.evaluate(case)
        res.add(ev, source)
        progress.advance(1, label)

    skipped = 0
    for case in fixed_cases or ():
        if (target.fixed_delta is not None and case.delta is not None and case.delta != target.fixed_delta
                and delta is None):
            skipped += 1  # the target cannot be run at this case's delta
            progress.advance(1)
            continue
        on_eval(case.astype(dtype), "vectors")
    if skipped:
        res.notes.append(f"{skipped} stored case(s) at a delta other than the target's fixed delta="
                         f"{target.fixed_delta} were skipped")
    if vectors:
        for case in _cases.recorded_cases(spec, cfg):
            on_eval(case, "vectors")
    # a quarter of the generated cases (at most) are the hostile ones of ._hostile: inputs around chunk sizes
    # (4096, 65536, 2^20) with positives and relevant negatives, no positive / negative, all-equal logits
    hostile = (_cases.at_dtype(lambda c: _hostile.hostile_cases(spec, c, seed, examples // 4), cfg)
               if examples > 0 else [])
    if examples > 0:
        kind.used_hypothesis = _run_generated(kind, cfg, examples - len(hostile), seed, on_eval)
    if examples > 0:
        for case in hostile:
            on_eval(case, "hostile")
        missing = examples - res.generated_cases
        if missing > 0:
            progress.advance(missing)
    if stopped():
        res.notes.append(f"stopped after {res.cases} case(s), {not_run[0]} case(s) not run: {stopped()}")
    if domain is not None:
        res.notes.append(domain.note(outside[0]))
    if res.failed:
        conclude(evaluator, res, shrink=shrink, shrink_seconds=shrink_seconds, diagnose_it=do_diagnose,
                 diagnose_seconds=diagnose_seconds)
        if any(k in (res.first_failure.comparison.failure or "") for k in ("MemoryError", "OutOfMemory")):
            res.notes.append("the target ran out of memory; generated inputs go up to max_size="
                             f"{max_size} elements (pass --max-size / max_size= to check smaller inputs only)")
    if res.generated_cases < examples and examples > 0 and not stopped():
        res.notes.append(f"hypothesis produced {res.generated_cases} of the {examples} requested examples")
    res.seconds = time.monotonic() - t0
    return res


def _as_list(x) -> List:
    if x is None:
        return []
    if isinstance(x, (str, LossSpec)):
        return [x]
    return list(x)


def bundled_targets(spec: LossSpec, device: str = "cpu") -> List[Target]:
    """The bundled torch implementations of ``spec``, resolved."""
    out = []
    for bt in spec.bundled_targets:
        try:
            out.append(make_target(bt.ref, spec, convention=bt.convention, kwargs=bt.kwargs, device=device,
                                   name=bt.label))
        except TargetError as exc:
            raise TargetError(f"the bundled adapter {bt.label} is not available: {exc}") from exc
    if not out:
        raise TargetError(f"loss {spec.name!r} has no bundled target; pass a TARGET")
    return out


def check(target=None, loss=None, *, delta: Optional[float] = None, examples: Optional[int] = 100, seed: int = 0,
          device: str = "cpu", dtypes: Sequence[str] = DTYPES, convention: str = "auto",
          target_kwargs: Optional[Mapping] = None, tuple_backward: str = "sum", vectors: bool = True,
          max_size: int = 100_000, atol: Optional[float] = None, rtol: Optional[float] = None,
          shrink: bool = True, shrink_seconds: float = 20.0, diagnose: bool = True, progress=False,
          name: Optional[str] = None, fixed_cases=None, expected_overrides=None,
          source: str = "check", diagnose_seconds: float = 30.0, call_timeout: float = DEFAULT_CALL_TIMEOUT,
          isolate: Optional[bool] = None, loss_options: Optional[Mapping] = None,
          call: Optional[str] = None, domain: Optional[str] = None) -> CheckReport:
    """Check ``target`` against the reference for ``loss``.

    Parameters
    ----------
    target:
        The implementation: a callable, ``torch.autograd.Function`` class,
        ``nn.Module`` class or instance, or a ``"package.module:attr"`` /
        ``"path/to/file.py:attr"`` string.  ``None`` checks the bundled torch
        adapters (every loss when ``loss`` is ``None``).
    loss:
        Spec name(s): ``"ap"``, ``"ap-interp"``, ``"rs"``, ``"bap"``, ``"brs"``,
        ``"rankdet-global"``, ``"rankdet-class"``, ``"rankdet-iou"``,
        ``"rankdet"``, ``"dr"``, ``"ape"``, ``"ape-pairwise"``, ``"giou"``
        (see :data:`~rankspec.conformance.specs.SPECS`).
    delta:
        Check at this delta only (default: the recorded deltas and a grid including 0).
    examples, seed:
        Number of generated cases per target and dtype (``None``: each loss's
        ``default_examples``, fewer for the expensive references), and their seed.
    device, dtypes:
        Where and in which float types torch targets are run: ``"float32"``, ``"float64"`` (the default
        pair) and the opt-in narrow ``"float16"`` / ``"bfloat16"`` (inputs rounded to the type, reference in
        float64 on the rounded values, tolerance float32's plus one ulp of output rounding:
        :mod:`~rankspec.conformance._compare`; NumPy targets get float32 arrays holding the rounded values).
    convention, target_kwargs, tuple_backward:
        How to call the target (see :mod:`~rankspec.conformance._targets`) and
        fixed keyword arguments for each call.
    vectors:
        Include the recorded vectors' inputs.
    atol, rtol:
        Override the base tolerance (see :mod:`~rankspec.conformance._compare`).
    shrink, shrink_seconds, diagnose, diagnose_seconds:
        Shrink the first failure to a minimal counterexample (time budget), and
        search the documented conventions for one the target matches (time budget).
    progress:
        ``True`` draws a progress bar on stderr for runs longer than a second;
        ``None`` only when stderr is a terminal; or a :class:`Progress`.
    call:
        An explicit call mapping (``"logits,targets,delta=0.5"``, ``"scores=logits,gt=labels"``; syntax in
        :data:`~rankspec.conformance._targets.CALL_HELP`): which input goes to which parameter of the target,
        and fixed values for its extra parameters; validated against the target's signature before any case.
    domain:
        Restrict the verdict to the inputs the target documents, e.g. ``"1d,delta>0,positives>=1"``
        (:mod:`~rankspec.conformance._domain`): cases outside it are skipped (and counted), shrinking stays
        inside it, and the report lists it as a restriction of the verdict.
    loss_options:
        Convention keywords of the reference (e.g. ``{"self_rank": "one"}``): the target is checked against
        the reference called with them (to confirm a diagnosis, or to check a port of a documented variant);
        each keyword and value is validated against the reference, and the report notes the call.
    call_timeout, isolate:
        Where the target runs (:mod:`~rankspec.conformance._worker`).  ``isolate=True`` runs it in a worker
        process: its import, its probe and every call happen there, so ``sys.exit``, ``os._exit``, a crash,
        a hang (each call is limited to ``call_timeout`` seconds; after one time-out the target is not called
        again) or a monkeypatch of the harness is that target's failure, never a passing check or a dead
        harness; an object target must then be picklable and importable by name (a module-level function or
        class, an instance of one).  ``isolate=False`` calls it in this process (a ``sys.exit`` of the target
        is still its failure; ``os._exit``, a crash or a hang are not caught).  ``None`` (default): isolated
        whenever the target can be sent to a worker (a ``"module:attr"`` / ``"file.py:attr"`` string, the bundled
        adapters, a picklable module-level object), else in this process with a note in the report saying so
        (starting a worker costs a second or two per check).  The command line always isolates.

    Numeric options are validated first: tolerances and time budgets finite and ``>= 0``, ``call_timeout``
    ``> 0``, counts ``>= 0`` / sizes ``>= 1``, ``seed`` in ``[0, 2**32)``; at least one case must run.

    Returns a :class:`CheckReport`; raises :class:`UsageProblem`,
    :class:`TargetError` or :class:`TargetSignatureError` for bad arguments.
    """
    from rankspec.refimpl import __version__

    t0 = time.monotonic()
    dtypes = _as_list(dtypes)
    for dt in dtypes:
        if dt not in CHECK_DTYPES:
            raise UsageProblem(f"dtype must be one of {', '.join(CHECK_DTYPES)}, got {dt!r}")
    if not dtypes:
        raise UsageProblem("at least one dtype is required")
    if examples is not None and (isinstance(examples, bool) or not isinstance(examples, int) or examples < 0):
        raise UsageProblem(f"examples must be an integer >= 0 (or None for each loss's default), got {examples!r}")
    delta = check_number(delta, "delta")
    check_count(max_size, "max_size")
    atol, rtol = check_number(atol, "atol"), check_number(rtol, "rtol")
    seed = check_seed(seed)
    shrink_seconds = check_number(shrink_seconds, "shrink_seconds", allow_none=False)
    diagnose_seconds = check_number(diagnose_seconds, "diagnose_seconds", allow_none=False)
    call_timeout = check_number(call_timeout, "call_timeout", positive=True, allow_none=False)
    if isolate not in (None, True, False):
        raise UsageProblem(f"isolate must be True, False or None (automatic), got {isolate!r}")
    if examples == 0 and not vectors and not fixed_cases:
        raise UsageProblem("examples=0 with vectors=False runs no case at all; a check needs at least one case")
    check_device(device)
    names = _as_list(loss)
    try:
        specs = [get_spec(n) for n in names]
    except KeyError as exc:
        raise UsageProblem(str(exc.args[0])) from None
    if delta is not None:
        no_delta = [spec.name for spec in specs if spec.default_delta is None]
        if no_delta:
            raise UsageProblem(f"loss {', '.join(map(repr, no_delta))} takes no delta; drop --delta / delta=")
    if loss_options:
        if not specs:
            raise UsageProblem("loss_options need a loss (e.g. loss='rs')")
        specs = [_with_loss_options(spec, loss_options) for spec in specs]
    if target is None and not specs:
        # every loss (only those with a delta when one is given)
        specs = [spec for spec in SPECS.values() if delta is None or spec.default_delta is not None]
    if target is not None and not specs:
        raise UsageProblem("a loss is required when a target is given (e.g. loss='rs')")
    in_process_note = None
    if isolate is None:
        # the code under test is hostile until proven otherwise: isolate whatever can be sent to a worker
        isolate = target is None or isinstance(target, str) or (not isinstance(target, Target)
                                                                 and picklable(target))
        if not isolate:
            in_process_note = ("ran in this process: the target cannot be sent to a worker (not picklable, or "
                               "defined in __main__ / a file loaded by path), so an exit, crash, hang or patch of "
                               "the harness by the target is not contained; pass a 'module:attr' string to isolate it")
    elif isolate and target is not None and not isinstance(target, str):
        if isinstance(target, Target) or not picklable(target):
            raise UsageProblem("isolate=True needs a target that can be pickled (a module-level function or class, "
                               "an instance of one, or a 'module:attr' string); pass isolate=False to run it "
                               "in this process")
    if domain is not None:
        try:
            domain = parse_domain(domain)
        except ValueError as exc:
            raise UsageProblem(f"domain: {exc}") from None
    if call is not None and target is None:
        raise UsageProblem("call= (--call) describes how to call a TARGET; give one")
    worker = Worker() if isolate else None
    try:
        return _check_plan(target, specs, worker, in_process_note, delta=delta, examples=examples, seed=seed,
                           device=device, dtypes=dtypes, convention=convention, target_kwargs=target_kwargs,
                           tuple_backward=tuple_backward, vectors=vectors, max_size=max_size, atol=atol, rtol=rtol,
                           shrink=shrink, shrink_seconds=shrink_seconds, diagnose=diagnose, progress=progress,
                           name=name, fixed_cases=fixed_cases, expected_overrides=expected_overrides, source=source,
                           diagnose_seconds=diagnose_seconds, call_timeout=call_timeout, t0=t0, call=call,
                           domain=domain)
    finally:
        if worker is not None:
            worker.close()


def _with_loss_options(spec: LossSpec, loss_options: Mapping) -> LossSpec:
    """``spec`` whose reference is called with ``loss_options`` (validated: UsageProblem names a bad one)."""
    import inspect

    if not isinstance(loss_options, Mapping):
        raise UsageProblem(f"loss_options must be a dict, got {type(loss_options).__name__}")
    inputs = {spec.logits_name, spec.labels_name, "delta", *(i.name for i in spec.extra_inputs)}
    params = set(inspect.signature(spec.function).parameters) - inputs
    params |= set(spec.option_space())
    bad = [k for k in loss_options if k not in params]
    if bad:
        raise UsageProblem(f"loss {spec.name!r} takes no option {', '.join(map(repr, bad))} "
                           f"(its options: {', '.join(sorted(params))})")
    variant = replace(spec, fixed_kwargs={**dict(spec.fixed_kwargs), **dict(loss_options)})
    try:  # a bad value (e.g. self_rank='two') is refused by the reference itself
        probe = _cases.probe_case(spec, "float64", spec.default_delta)
        variant.reference(probe.logits, probe.targets, probe.delta, None, probe.extras)
    except Exception as exc:
        raise UsageProblem(f"loss_options {dict(loss_options)!r} are not valid for loss {spec.name!r}: "
                           f"{type(exc).__name__}: {exc}") from None
    return variant


def _plan_isolated(worker: Worker, target, specs, device, convention, target_kwargs, tuple_backward, name,
                   call_timeout: float, call=None):
    """``(spec, Target description, runner, failure)`` for every target of the check, made in ``worker``."""
    jobs = []
    for spec in specs:
        send = spec.name if spec.name in SPECS else spec  # (a variant with loss_options calls the target alike)
        if target is None:
            for bt in spec.bundled_targets:
                jobs.append((spec, send, bt.ref, dict(convention=bt.convention, kwargs=bt.kwargs, device=device,
                                                      name=bt.label), bt.label))
            if not spec.bundled_targets:
                raise TargetError(f"loss {spec.name!r} has no bundled target; pass a TARGET")
        else:
            label = name or (target if isinstance(target, str) else None)
            jobs.append((spec, send, target, dict(convention=convention, kwargs=target_kwargs, device=device,
                                                  tuple_backward=tuple_backward, name=name, call=call), label))
    plan = []
    for k, (spec, send, ref, options, label) in enumerate(jobs):
        key = (k, spec.name)
        runner = WorkerRunner(worker, key, call_timeout)
        try:
            t = worker.make(key, ref, send, options, call_timeout)
        except WorkerCrashed as exc:
            plan.append((spec, None, runner, (label or object_name(ref), exc)))
            continue
        except TargetError as exc:
            if target is None:
                raise TargetError(f"the bundled adapter {label} is not available: {exc}") from exc
            raise
        plan.append((spec, t, runner, None))
    return plan


def _failed_start(spec: LossSpec, label: str, exc: "WorkerCrashed", dtype: str, device: str, tol) -> TargetResult:
    """The result of a target whose import or probe killed, exited or hung its worker: a failure, never a pass."""
    res = TargetResult(spec.name, label, dtype, "unknown", device, tol)
    try:
        case = _cases.probe_case(spec, dtype, spec.default_delta)
    except Exception:  # pragma: no cover - the probe is a fixed tiny case
        case = None
    if case is not None:
        res.add(Evaluation(case, None, None, failed_call(exc.kind, exc.message)), "probe")
    else:
        res.failed = 1
    res.notes.append(f"the target failed before its first case could be checked: {exc.message}")
    return res


def _check_plan(target, specs, worker, in_process_note, *, delta, examples, seed, device, dtypes, convention,
                target_kwargs, tuple_backward, vectors, max_size, atol, rtol, shrink, shrink_seconds, diagnose,
                progress, name, fixed_cases, expected_overrides, source, diagnose_seconds, call_timeout, t0,
                call=None, domain=None):
    from rankspec.refimpl import __version__

    if worker is not None:
        plan = _plan_isolated(worker, target, specs, device, convention, target_kwargs, tuple_backward, name,
                              call_timeout, call)
    elif target is None:
        plan = [(spec, t, None, None) for spec in specs for t in bundled_targets(spec, device)]
    else:
        plan = [(spec, make_target(target, spec, convention=convention, kwargs=target_kwargs, device=device,
                                   tuple_backward=tuple_backward, name=name, call=call), None, None)
                for spec in specs]
    for spec, t, _, _ in plan:
        if t is not None and spec.name in SPECS and SPECS[spec.name] is not spec:
            t.notes.append(f"checked against {spec.call_string()} (loss_options / --loss-options)")
    if target is not None:
        for spec, t, _, _ in plan:
            if t is None:
                continue
            if in_process_note:
                t.notes.append(in_process_note)
            if delta is not None and t.delta_from_attribute and t.fixed_delta != delta:
                raise UsageProblem(f"{t.name} takes no delta argument and its delta is {t.fixed_delta}; "
                                   f"cannot check it at delta={delta}")
            if delta is not None and t.fixed_delta is not None and not t.delta_from_attribute:
                t.notes = [n for n in t.notes if "delta" not in n] + [
                    f"{t.name} takes no delta argument; checked at the given delta={delta}"]

    def n_examples(spec):
        return spec.default_examples if examples is None else examples

    if isinstance(progress, Progress):
        bar = progress
    else:
        n_recorded = len(_cases.recorded_cases(get_spec("ap"), _cases.CaseConfig())) if vectors else 0
        total = sum(n_examples(spec) + (n_recorded if _cases.runs_recorded(spec) else 0) + len(fixed_cases or ())
                    for spec, _, _, _ in plan)
        bar = Progress(total * len(dtypes), enabled=None if progress is None else bool(progress))
    tol_overrides = {"atol": atol, "rtol": rtol}
    results = []
    try:
        for spec, tgt, runner, failed in plan:
            for dt in dtypes:
                if failed is not None:
                    results.append(_failed_start(spec, failed[0], failed[1], dt, device,
                                                 base_tolerance(dt, tol_overrides)))
                    continue
                results.append(_check_target(
                    tgt, spec, dt, delta=delta, examples=n_examples(spec), seed=seed, vectors=vectors,
                    max_size=max_size, tol_overrides=tol_overrides, shrink=shrink, shrink_seconds=shrink_seconds,
                    do_diagnose=diagnose, progress=bar, fixed_cases=fixed_cases,
                    expected_overrides=expected_overrides, diagnose_seconds=diagnose_seconds, runner=runner,
                    domain=domain))
    finally:
        if not isinstance(progress, Progress):
            bar.close()
    used = {n_examples(spec) for spec, _, _, _ in plan}
    shown = examples if examples is not None else (used.pop() if len(used) == 1 else None)
    return CheckReport(results, seed, shown, device, __version__, time.monotonic() - t0, source)


def assert_conforms(target, loss: str = "rs", delta: Optional[float] = None, *, examples: int = 50,
                    seed: int = 0, dtypes: Sequence[str] = DTYPES, **kwargs) -> CheckReport:
    """Assert that ``target`` implements ``loss`` like the reference; works in any test runner.

    Same arguments as :func:`check`.  On failure raises :class:`NonConformant`
    (an ``AssertionError``) whose message holds the diagnosis and the minimal
    counterexample as a copy-pasteable reproducer.  Returns the report.
    """
    __tracebackhide__ = True
    report = check(target, loss, delta=delta, examples=examples, seed=seed, dtypes=dtypes, **kwargs)
    if not report.conformant:
        raise NonConformant(report.format_text(), report)
    return report

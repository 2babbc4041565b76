"""Diagnosis: which documented convention does a disagreeing target follow?

Written once for every kind of case (:class:`~rankspec.conformance._evaluate.CaseKind`:
flat loss inputs and head batches); the kind supplies the diagnostic cases,
the convention combinations to try, how to name them, and its own findings
(:func:`array_findings` for flat inputs; the head kind's layout / dropped
level / scaling checks).  For flat inputs:

The target is run once on a fixed set of diagnostic cases (every kind, delta 0
with ties, 2-D inputs with an image without positives, no positive, no
negative, all-equal logits; the same for every run and dtype, so a target
always gets the same diagnosis).  Then, in this order (:func:`diagnose`):

a. crashes, NaN and writes into the input are named with their precise
   trigger (the case feature that separates the cases that raised from the
   others, :func:`~._hypotheses.separating`); when the checked convention
   agrees on every diagnostic case that returned, no alternative is named
   (the failing inputs of the run are described instead, e.g. a size
   threshold found by :meth:`ArrayKind.size_probe`, or a non-contiguous view);
b. the documented conventions (:meth:`LossSpec.option_space`: for the AP / RS
   family ``self_rank``, ``tie_value``, ``interpolated``, ``normalization``,
   ``threshold``, ``tied_negatives``, ``scope``; for the other families the
   conventions they register, e.g. RankDet's ``reweighting``, ``mining``,
   ``iou_grad``, DR's ``pairing``, ``surrogate``, APE's ``distance``,
   ``balance``, ``scale_by_lambda``), changing one option, then two, then
   three (at most the kind's ``diagnose_depth``; head pipelines: one change,
   the other ``scope`` included): a combination that matches every case is
   the diagnosis ("matches rs_loss(self_rank='one')"); then the kind's generic
   hypotheses (:mod:`~._hypotheses`: float32, fixed delta, pooled images,
   normalisation, one side's sign, one term's gradient, detached loss) and its
   cheap findings (flipped sign, gradient not scaled by grad_output, a
   constant factor, delta doubled or halved);
c. otherwise the closest combination is named only when it fixes at least 80%
   of the failing diagnostic cases, removes at least 90% of their error and
   breaks no passing case; else "unexplained" with facts (which outputs
   differ, which case features separate failing from passing cases).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional

import numpy as np

from ._targets import TargetFailure

__all__ = ["Diagnosis", "diagnose", "array_findings"]


@dataclass
class Diagnosis:
    summary: str
    kind: str  #: "convention", "finding", "closest", "same-as-reference", "unexplained", "undiagnosed"
    matches: List[Dict[str, object]] = field(default_factory=list)  #: changed options of matching combos
    closest: Optional[Dict[str, object]] = None
    closest_score: float = math.inf
    closest_loss_err: float = math.nan
    closest_grad_err: float = math.nan
    findings: List[str] = field(default_factory=list)
    cases: int = 0
    combinations: int = 0
    explained_share: float = math.nan  #: share of failing diagnostic cases the closest convention fixes
    error_removed: float = math.nan  #: share of the failing cases' error it removes

    def to_dict(self):
        def clean(x):
            return None if isinstance(x, float) and not math.isfinite(x) else x

        return {"summary": self.summary, "kind": self.kind, "matches": self.matches, "closest": self.closest,
                "closest_score": clean(self.closest_score), "closest_max_abs_loss_error": clean(self.closest_loss_err),
                "closest_max_abs_grad_error": clean(self.closest_grad_err), "findings": self.findings,
                "diagnostic_cases": self.cases, "combinations_tried": self.combinations,
                "closest_fixes_share": clean(self.explained_share),
                "closest_error_removed": clean(self.error_removed)}


def _finite(outcome) -> bool:
    """Loss and every gradient finite (flat outcomes: ``grad``; head outcomes: ``grads`` per output / level)."""
    try:
        if not np.isfinite(float(outcome.loss)):
            return False
        if hasattr(outcome, "grad"):
            return bool(np.all(np.isfinite(outcome.grad)))
        grads = getattr(outcome, "grads", None) or {}
        return all(np.all(np.isfinite(np.asarray(g, dtype=np.float64))) for v in grads.values() for g in v)
    except (TypeError, ValueError):
        return True  # an outcome this check cannot read: leave it to the comparison


def _capped(score: float) -> float:
    return min(score, 1e6) if score == score else 1e6


def _trigger_findings(kind, cases, pairs, raised, nan_pairs) -> List[str]:
    """Crash / NaN / input-mutation findings with their precise trigger (flat inputs: case features)."""
    from ._hypotheses import describe_trigger, separating

    spec = getattr(kind, "spec", None)
    out = []
    mutated = [(c, e) for c, e in raised if e.kind in ("mutated-input", "input-mutated")]
    if mutated:
        out.append(f"writes into its input: {mutated[0][1].message}")
    crashes = [(c, e) for c, e in raised if e.kind not in ("mutated-input", "input-mutated")]
    ok_cases = [c for c, o in pairs if _finite(o)]
    for bad, verb, detail in ((crashes, "raises", lambda: crashes[0][1].message),
                              ([(c, None) for c, _ in nan_pairs], "returns NaN or inf", lambda: "")):
        if not bad:
            continue
        if spec is None or not hasattr(spec, "extra_inputs"):
            kinds = sorted({e.kind for _, e in bad if e is not None}) or ["NaN"]
            out.append(f"the target {verb} on {len(bad)} of {len(cases)} diagnostic cases ({', '.join(kinds)})")
            continue
        exact, facts = separating([c for c, _ in bad], ok_cases, spec)
        msg = detail()
        if exact:
            out.append(f"{verb} on {describe_trigger(exact[0], spec)}" + (f": {msg}" if msg else "")
                       + f" ({len(bad)} of {len(cases)} diagnostic cases)")
        else:
            out.append(f"{verb} on {len(bad)} of {len(cases)} diagnostic cases" + (f": {msg}" if msg else "")
                       + (f"; {facts[0]}" if facts else ""))
    return out


def diagnose(evaluator, failing_cases, *, max_seconds: float = 30.0) -> Diagnosis:
    """Run the target on the kind's diagnostic cases and explain the difference (module docstring).

    Order: (a) crashes, NaN and input writes are named with their trigger, and when the checked convention
    agrees on every diagnostic case that returned a finite result no alternative is ever named; (b) the
    documented conventions (one, two, three changed options), then the kind's generic hypotheses
    (:mod:`~._hypotheses`: float32, fixed delta, pooled images, normalisation, sign of one side, one term's
    gradient, detached loss) and its cheap findings; (c) otherwise the closest convention only when it fixes
    most failing cases and removes most of the error, else "unexplained" with facts (which outputs differ,
    which case features separate failing from passing cases).  Deterministic for a target: the diagnostic
    cases are fixed and tried in a fixed order.
    """
    kind = evaluator.kind
    t0 = time.monotonic()
    cases = kind.diagnostic_cases(list(failing_cases))
    pairs, raised = [], []
    for case in cases:
        try:
            pairs.append((case, evaluator.run(case)))
        except TargetFailure as exc:
            raised.append((case, exc))
    nan_pairs = [(c, o) for c, o in pairs if not _finite(o)]
    good = [(c, o) for c, o in pairs if _finite(o)]
    findings = _trigger_findings(kind, cases, pairs, raised, nan_pairs)
    fmt = kind.describe_options
    n = len(good)
    if not good:
        summary = findings[0] if findings else "the target raised on every diagnostic case"
        return Diagnosis(summary, "undiagnosed" if not findings else "finding", findings=findings,
                         cases=len(cases))

    # the checked convention, case by case
    base = [(c, o, kind.compare(c, evaluator.reference(c), o)) for c, o in good]
    bad = [(c, o) for c, o, cmp in base if not cmp.ok]
    base_score = max(cmp.score for _, _, cmp in base)
    base_loss = max(cmp.loss_abs for _, _, cmp in base)
    base_grad = max(cmp.grad_abs for _, _, cmp in base)
    if not bad:
        # (a) the defaults fit every case that returned: never name an alternative
        spec = getattr(kind, "spec", None)
        facts = []
        run_fail = [c for c in failing_cases if getattr(c, "source", "") != "diagnostic"]
        if spec is not None and hasattr(spec, "extra_inputs"):
            from ._hypotheses import describe_trigger, separating

            diag = [c for c, _ in good if getattr(c, "source", "") == "diagnostic"]
            run_fail = [c for c in failing_cases if getattr(c, "source", "") != "diagnostic"]
            exact, more = separating(run_fail, diag, spec) if run_fail and diag else ([], [])
            facts = [f"the failing input(s) of the run have {describe_trigger(k, spec)}, no diagnostic case has"
                     for k in exact] + more
            probe = getattr(kind, "size_probe", None)
            if probe is not None and any(k.startswith("size>") for k in exact):
                found = probe(evaluator)
                if found:
                    facts = [found] + [f for f in facts if "elements, no diagnostic case has" not in f]
        layout_only = None
        if run_fail and getattr(run_fail[0], "layout", "contiguous") != "contiguous":
            from ._shrink import _contiguous

            plain = _contiguous(run_fail[0])
            try:
                if plain is not None and evaluator.evaluate(plain).ok:
                    layout_only = run_fail[0].layout
            except Exception:  # the reference rejects it: say nothing
                layout_only = None
        if findings:
            summary = findings[0]
            kind_ = "finding"
        elif layout_only:
            summary = (f"fails only when its input is a non-contiguous view ({layout_only}): the same values "
                       f"passed as a contiguous array agree with {fmt({})} (does it read raw memory, "
                       "or .view() / data_ptr() assuming contiguity?)")
            kind_ = "finding"
        elif facts and facts[0].startswith("fails only on inputs with more than"):
            summary = f"agrees with {fmt({})} on every small input; {facts[0]}"
            kind_ = "finding"
        else:
            summary = (f"agrees with {fmt({})} on all {n} diagnostic cases; it differs only on the "
                       "failing input(s) shown")
            if facts:
                summary += f" ({facts[0]})"
            kind_ = "same-as-reference"
        return Diagnosis(summary, kind_, [], {}, base_score, base_loss, base_grad, findings + facts, n, 1)

    # (b) documented conventions
    bad_base = [_capped(cmp.score) for _, _, cmp in base if not cmp.ok]
    tried = 1
    matches = []
    best = None  # (fixed share, error removed, -breaks, changed, loss err, grad err, score)
    timed_out = False
    for level in range(1, kind.diagnose_depth + 1):
        for options, changed in kind.alternatives(level):
            if time.monotonic() - t0 > max_seconds:
                timed_out = True
                break
            tried += 1
            scores, le, ge, worst = [], 0.0, 0.0, 0.0
            breaks = 0
            try:
                for (c, o, cmp0) in base:
                    cmp = kind.compare(c, evaluator.reference(c, options), o)
                    worst = max(worst, cmp.score)
                    le, ge = max(le, cmp.loss_abs), max(ge, cmp.grad_abs)
                    if cmp0.ok:
                        breaks += not cmp.ok
                    else:
                        scores.append(_capped(cmp.score))
            except Exception:
                continue
            if worst <= 1.0:
                matches.append((worst, changed))
            fixed = sum(s <= 1.0 for s in scores) / len(scores)
            removed = 1.0 - sum(min(a, b) for a, b in zip(scores, bad_base)) / max(sum(bad_base), 1e-300)
            cand = (fixed, removed, -breaks, changed, le, ge, worst)
            if best is None or cand[:3] > best[:3]:
                best = cand
        if matches or timed_out:
            break
    if timed_out:
        findings.append(f"the convention search stopped after {max_seconds:g} s ({tried} combinations tried)")
    if matches:
        matches.sort(key=lambda m: m[0])
        first = matches[0][1]
        summary = f"matches {fmt(first)} on all {n} diagnostic cases"
        if len(matches) > 1:
            others = ", ".join(fmt(m[1]) for m in matches[1:4])
            summary += f" (equally: {others})"
        return Diagnosis(summary, "convention", [m[1] for m in matches], first, matches[0][0], base_loss,
                         base_grad, findings, n, tried)

    # generic hypotheses, then the kind's cheap findings
    explained = []
    hyp = getattr(kind, "hypotheses", None)
    if hyp is not None:
        explained = [text for _, text in hyp(evaluator, good, bad)]
    extra = kind.findings(evaluator, good)
    for f in extra:
        if f not in explained:
            explained.append(f)
    if explained:
        summary = explained[0]
        return Diagnosis(summary, "finding", [], None, base_score, base_loss, base_grad,
                         findings + explained, n, tried)
    if findings and not any(f.startswith("the convention search stopped") for f in findings[:1]):
        # a crash / NaN / write finding is the clearest thing to say, the mismatch comes after it
        lead = findings[0]
    else:
        lead = None

    # (c) closest only with a measure of how much it explains, and only when that is high
    facts = []
    if hasattr(kind, "spec") and hasattr(kind.spec, "extra_inputs"):
        from ._hypotheses import describe_trigger, output_facts, separating

        facts = output_facts(kind, bad)
        exact, more = separating([c for c, _ in bad], [c for c, o, cmp in base if cmp.ok], kind.spec)
        facts += [f"every failing diagnostic case has {describe_trigger(k, kind.spec)}, no passing one has" for k in exact]
        facts += more
    if best is not None and best[0] >= 0.8 and best[1] >= 0.9 and best[2] == 0:
        fixed, removed, _, changed, le, ge, worst = best
        summary = ((lead + "; ") if lead else "") + (
            f"no combination explains every case; closest: {fmt(changed)}, which fixes {fixed:.0%} of the "
            f"failing diagnostic cases and removes {removed:.0%} of the error")
        return Diagnosis(summary, "closest", [], changed, worst, le, ge, findings + facts, n, tried,
                         explained_share=fixed, error_removed=removed)
    summary = ((lead + "; ") if lead else "") + (
        "unexplained: no combination of the documented conventions or generic hypotheses explains the "
        f"difference ({len(bad)} of {n} diagnostic cases fail)")
    if facts:
        summary += "; " + facts[0]
    share = (best[0], best[1]) if best is not None else (math.nan, math.nan)
    return Diagnosis(summary, "unexplained", [], None, base_score, base_loss, base_grad, findings + facts, n,
                     tried, explained_share=share[0], error_removed=share[1])


def _delta_score(evaluator, pairs, factor: float) -> float:
    """Worst normalised error of the reference at ``factor`` times each case's delta (tolerance of the case)."""
    worst = 0.0
    for case, outcome in pairs:
        try:
            expected = evaluator.reference(replace(case, delta=case.delta * factor))
        except Exception:
            return math.inf
        worst = max(worst, evaluator.kind.compare(case, expected, outcome).score)
    return worst


def array_findings(evaluator, pairs) -> List[str]:
    """Cheap checks for common bugs of flat-input loss targets that are not conventions."""
    kind = evaluator.kind
    spec = kind.spec
    out = []
    expected = [(c, evaluator.reference(c, None), o) for c, o in pairs]
    bad = [c for c, o in pairs if not (np.isfinite(o.loss) and np.all(np.isfinite(o.grad)))]
    if bad:
        where = []
        if any(c.num_positives == 0 for c in bad):
            where.append("inputs without positives (the defined result is loss 0, zero gradient)")
        if any(c.num_positives == c.size for c in bad):
            where.append("inputs without negatives")
        out.append(f"the target returns NaN or inf on {len(bad)} of {len(pairs)} diagnostic cases"
                   + (f", e.g. on {' and '.join(where)}" if where else ""))

    def all_match(transform, require=lambda c, e, o: True):
        used = 0
        for c, e, o in expected:
            if not require(c, e, o):
                continue
            e2, o2 = transform(c, e, o)
            if not kind.compare(c, e2, o2).ok:
                return False
            used += 1
        return used > 0

    from rankspec.refimpl import LossResult

    nonzero_grad = lambda c, e, o: bool(np.any(e.grad != 0))  # noqa: E731
    nonzero_loss = lambda c, e, o: e.loss != 0  # noqa: E731
    if all_match(lambda c, e, o: (LossResult(e.loss, -e.grad, e.terms), o), nonzero_grad):
        out.append("the gradient has the opposite sign (loss agrees)")
    elif all_match(lambda c, e, o: (LossResult(-e.loss, -e.grad, e.terms), replace(o, parts=None)), nonzero_loss):
        out.append("loss and gradient both have the opposite sign")
    elif all_match(lambda c, e, o: (e, replace(o, loss=-o.loss, parts=None)), nonzero_loss):
        out.append("the loss has the opposite sign (gradient agrees)")
    if kind.target.uses_grad_output:
        scaled = lambda c, e, o: o.grad_output != 1.0 and bool(np.any(e.grad != 0))  # noqa: E731
        if all_match(lambda c, e, o: (e, replace(o, grad_output=1.0)), scaled):
            out.append("backward ignores grad_output: the gradient is not multiplied by the incoming gradient")
        elif all_match(lambda c, e, o: (e, replace(o, grad_output=o.grad_output ** 2)), scaled):
            out.append("backward multiplies by grad_output twice")
    # a constant factor on the gradient
    ratios = []
    for c, e, o in expected:
        eg = e.grad.ravel() * o.grad_output
        if np.any(eg != 0):
            ratios.append(float(np.dot(o.grad.ravel(), eg) / np.dot(eg, eg)))
    if ratios and np.all(np.isfinite(ratios)):
        r = float(np.median(ratios))
        if abs(r - 1) > 1e-3 and abs(r + 1) > 1e-3 and abs(r) > 1e-6:
            if all_match(lambda c, e, o: (LossResult(e.loss, e.grad * r, e.terms), o), nonzero_grad):
                out.append(f"the gradient is {r:.6g} times the reference gradient (loss agrees)")
    # a different delta
    for factor, words in ((2.0, "doubled (delta applied twice?)"), (0.5, "halved")):
        smooth = [(c, o) for c, o in pairs if c.delta is not None and c.delta > 0]
        if smooth and _delta_score(evaluator, smooth, factor) <= 1.0:
            if _delta_score(evaluator, smooth, 1.0) > 1.0:
                out.append(f"matches {spec.function_name} with delta {words}")
                break
    return out

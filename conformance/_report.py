"""Text and JUnit XML renderings of a :class:`~rankspec.conformance.harness.CheckReport`."""

from __future__ import annotations

import textwrap
import xml.etree.ElementTree as ET

from ._repro import summary_lines
from .specs import SPECS

MAX_REPRODUCER_LINES = 200


def _e(x: float) -> str:
    return "-" if x != x else f"{x:.2e}"


def _table(rows):
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    out = []
    for k, r in enumerate(rows):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def _indent(text: str, prefix: str = "    ") -> str:
    return textwrap.indent(text, prefix, lambda line: True)


def result_details(r, *, reproducers: bool = True):
    lines = []
    verdict = "conformant" if r.conformant else "NONCONFORMANT"
    lines.append(f"-- {r.target} [{r.dtype}, {r.convention}]: {verdict}"
                 + (f" ({r.failed} of {r.cases} cases failed"
                    + (f", {r.errors} raised or returned unusable output" if r.errors else "") + ")"
                    if r.failed else ""))
    for note in r.notes:
        lines.append(f"   note: {note}")
    if getattr(r, "first_failure_at", None) is not None:
        lines.append(f"   first failure: case {r.first_failure_at} of {r.cases}, found by {r.found_by}")
    if r.diagnosis is not None:
        lines.append(f"   diagnosis: {r.diagnosis.summary}")
        for f in r.diagnosis.findings:
            if f not in r.diagnosis.summary:
                lines.append(f"   finding: {f}")
    cx = r.counterexample
    if cx is not None and hasattr(cx, "text_lines"):  # a counterexample that renders itself (head pipelines)
        lines += cx.text_lines()
    elif cx is not None:
        how = (f"shrunk from {cx.original_size} to {cx.case.size} element(s) in {cx.shrink_steps} step(s)"
               if cx.case.size != cx.original_size else f"{cx.case.size} element(s)")
        lines.append(f"   first counterexample (found in {cx.found_in}; {how}):")
        lines.append(f"     {cx.comparison.message or cx.comparison.failure}")
        spec = SPECS.get(r.loss)
        names = spec.argument_names if spec is not None and spec.case_builder is not None else None
        for s in summary_lines(cx.case, cx.expected, cx.outcome, names):
            lines.append(f"     {s}")
    if cx is not None:
        if reproducers:
            code = cx.reproducer.splitlines()
            if len(code) > MAX_REPRODUCER_LINES:
                code = code[:MAX_REPRODUCER_LINES // 2] + [
                    f"... ({len(code)} lines: the input could not be shrunk below {cx.case.size} elements; "
                    "the full reproducer is in the JSON report, --format json)"]
            lines.append("   reproducer:")
            lines.append(_indent("\n".join(code), "     | "))
    return lines


#: how a row passes (``_compare.compare`` / ``case_tolerance``; the head check applies the same rule)
PASS_RULE = (
    "pass rule: every compared entry (the loss, each output part, each gradient entry) must satisfy",
    "  |got - ref| <= atol + rtol * |ref|,  atol = base atol * max(1, sqrt(n / 1000)) + 4 eps max|logit| / "
    "(2 delta)",
    "  (n = number of logits; the last term only for losses with delta > 0, times log2(n) + 1 when bucketed).",
    "  'err/allowed' is the worst |got - ref| / (atol + rtol * |ref|) over all cases and entries; "
    "a row passes when it is <= 1.",
    "  max|dloss| and max|dgrad| are the largest absolute errors, for scale; they are not compared directly.",
)


def _header(report) -> str:
    if report.header:
        return report.header
    source = str(getattr(report, "source", "") or "")
    if source.startswith("vectors verify"):
        directory = source[len("vectors verify"):].strip()
        per_loss = {}
        for r in report.results:
            per_loss.setdefault(r.loss, r.cases)
        counts = ", ".join(f"{name} {n}" for name, n in per_loss.items())
        return (f"rankspec vectors verify {report.version}: every stored case in {directory or 'DIR'} "
                f"({counts}) per target and dtype, device {report.device}")
    examples = (f"{report.examples} generated example(s)" if report.examples is not None
                else "each loss's default number of generated examples")
    return (f"rankspec check {report.version}: seed {report.seed}, {examples} per target and dtype, "
            f"device {report.device}")


def _ratio(x: float) -> str:
    if x != x:
        return "-"
    if x == float("inf"):
        return "inf"
    return f"{x:.2g}" if x < 10 else f"{x:.3g}"


def format_text(report, *, reproducers: bool = True) -> str:
    out = [_header(report)]
    out += list(PASS_RULE)
    for name in report.losses():
        spec = SPECS.get(name)
        rs = [r for r in report.results if r.loss == name]
        out.append("")
        head = f"== {name}"
        if name in report.titles:
            title, ref = report.titles[name]
            head += f": {title}" + (f"  -  reference {ref}" if ref else "")
        elif spec is not None:
            head += f": {spec.title}  -  reference {spec.call_string()} ({spec.citation})"
        out.append(head)
        rows = [("target", "dtype", "cases", "failed", "max|dloss|", "max|dgrad|", "base atol/rtol",
                 "err/allowed", "result")]
        for r in rs:
            rows.append((r.target, r.dtype, str(r.cases), str(r.failed), _e(r.max_abs_loss), _e(r.max_abs_grad),
                         f"{r.tolerance.atol:.0e}/{r.tolerance.rtol:.0e}",
                         _ratio(getattr(r, "max_score", float("nan"))) + (" <= 1" if r.conformant else ""),
                         "ok" if r.conformant else "FAIL"))
        out += _table(rows)
        for r in rs:
            if not r.conformant or r.notes:
                out += result_details(r, reproducers=reproducers)
    bad = [r for r in report.results if not r.conformant]
    out.append("")
    if bad:
        out.append(f"result: NONCONFORMANT - {len(bad)} of {len(report.results)} check(s) failed "
                   f"({report.seconds:.1f} s)")
    else:
        out.append(f"result: conformant - {len(report.results)} check(s) passed ({report.seconds:.1f} s)")
    return "\n".join(out)


def format_junit(report) -> str:
    title = "rankspec check-head" if report.source == "check-head" else "rankspec check"
    suites = ET.Element("testsuites", name=title, tests=str(len(report.results)),
                        failures=str(sum(not r.conformant for r in report.results)),
                        time=f"{report.seconds:.3f}")
    for name in report.losses():
        rs = [r for r in report.results if r.loss == name]
        suite = ET.SubElement(suites, "testsuite", name=f"rankspec.{name}", tests=str(len(rs)),
                              failures=str(sum(not r.conformant for r in rs)), errors="0", skipped="0",
                              time=f"{sum(r.seconds for r in rs):.3f}")
        props = ET.SubElement(suite, "properties")
        for k, v in (("seed", report.seed), ("examples", report.examples), ("device", report.device),
                     ("rankspec_version", report.version)):
            ET.SubElement(props, "property", name=k, value=str(v))
        for r in rs:
            case = ET.SubElement(suite, "testcase", classname=f"rankspec.{name}", name=f"{r.target} [{r.dtype}]",
                                 time=f"{r.seconds:.3f}")
            stats = (f"cases={r.cases} failed={r.failed} errors={r.errors} max_abs_loss_error={_e(r.max_abs_loss)} "
                     f"max_abs_grad_error={_e(r.max_abs_grad)} atol={r.tolerance.atol:g} rtol={r.tolerance.rtol:g} "
                     f"max_error_ratio={_ratio(getattr(r, 'max_score', float('nan')))} (pass: <= 1)")
            if not r.conformant:
                msg = r.diagnosis.summary if r.diagnosis else f"{r.failed} of {r.cases} cases failed"
                fail = ET.SubElement(case, "failure", message=msg, type="NonConformant")
                fail.text = "\n".join([stats] + result_details(r))
            else:
                out = ET.SubElement(case, "system-out")
                out.text = stats
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"

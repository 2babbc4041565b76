"""What the ``check``, ``check-head`` and ``vectors`` commands share: the usage error, JSON options,
report writing, and the head-pipeline options and run (``rankspec check --head`` is ``rankspec check-head``).

Imports nothing of the CLI's commands, so each command imports it without a cycle.
"""

from __future__ import annotations

import json
import sys


from ._errors import UsageError  # noqa: F401  (defined apart so that _paths can raise it without a cycle)


def parse_target_kwargs(text):
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--target-kwargs is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError("--target-kwargs must be a JSON object, e.g. '{\"interpolated\": true}'")
    return value


def validate_numbers(args, rules) -> None:
    """Check numeric options before any work: ``rules`` maps an option (``"--atol"``) to its rule, one of
    ``"tolerance"`` (finite, >= 0, optional), ``"seconds"`` (finite, >= 0), ``"timeout"`` (finite, > 0),
    ``"count0"`` (integer >= 0, optional), ``"count1"`` (integer >= 1, optional), ``"seed"`` (0 <= seed < 2**32).

    A bad value is a :class:`UsageError` (exit 2) naming the option: ``--atol -1`` or ``--atol inf`` would make
    every implementation pass (or fail) whatever it computes."""
    from rankspec.conformance._usage import UsageProblem, check_count, check_number, check_seed

    for option, rule in rules.items():
        value = getattr(args, option.lstrip("-").replace("-", "_"), None)
        try:
            if rule == "tolerance":
                check_number(value, option)
            elif rule == "seconds":
                check_number(value, option, allow_none=True)
            elif rule == "timeout":
                check_number(value, option, positive=True)
            elif rule in ("count0", "count1"):
                check_count(value, option, minimum=int(rule[-1]), allow_none=True)
            elif rule == "seed":
                if value is not None:
                    check_seed(value, option)
            else:  # pragma: no cover - a typo in a command
                raise ValueError(rule)
        except UsageProblem as exc:
            raise UsageError(str(exc)) from None


def write_report(report, fmt: str, output) -> None:
    text = {"text": report.format_text, "json": report.to_json, "junit": report.to_junit}[fmt]()
    if output:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text if text.endswith("\n") else text + "\n")
        verdict = "conformant" if report.conformant else "NONCONFORMANT"
        print(f"rankspec: {verdict}; report written to {output}", file=sys.stderr)
    else:
        print(text)


def add_head_arguments(p, heads, losses, scenarios, *, loss: bool):
    """Options of ``check-head`` (``rankspec check --head`` shares most of them)."""
    p.add_argument("--head", action="append", choices=heads,
                   help="head to check (repeatable; required with TARGET; default: all)")
    if loss:
        p.add_argument("--loss", action="append", choices=losses, metavar="{" + ",".join(losses) + "}",
                       help="loss to check (repeatable; default: every loss the heads support)")
    p.add_argument("--scenario", action="append", choices=scenarios,
                   help="scenario of the random batches (repeatable; default: all)")
    if loss:
        p.add_argument("--examples", type=int, default=8, help="random batches per scenario (default 8)")
        p.add_argument("--seed", type=int, default=0, help="seed of the random batches (default 0)")
        p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device of the raw outputs")
        p.add_argument("--dtype", choices=("float32", "float64"), action="append",
                       help="dtype to check (repeatable; default: float32 and float64)")
        p.add_argument("--format", choices=("text", "json", "junit"), default="text", help="report format")
        p.add_argument("--output", metavar="FILE", help="write the report to FILE instead of stdout")
    p.add_argument("--scope", choices=("batch", "image"), default=None,
                   help="ranking scope passed to target and reference (default: each loss's own)")
    p.add_argument("--loss-options", metavar="JSON", default=None,
                   help='convention keywords of the loss: the reference is called with them (with or without '
                        '--head), e.g. \'{"self_rank": "one"}\' to confirm a diagnosis')
    p.add_argument("--head-options", metavar="JSON", default=None,
                   help='fixed head options, e.g. \'{"assigner": "atss"}\' or \'{"layout": "mmdet3d"}\' '
                        "(default: drawn per case)")
    if loss:
        p.add_argument("--atol", type=float, default=None, help="override the base absolute tolerance")
        p.add_argument("--rtol", type=float, default=None, help="override the relative tolerance")
        p.add_argument("--no-shrink", action="store_true", help="report the first failure without shrinking it")
        p.add_argument("--shrink-seconds", type=float, default=10.0,
                       help="time budget for shrinking (default 10)")
        prog = p.add_mutually_exclusive_group()
        prog.add_argument("--progress", dest="progress", action="store_true", default=None,
                          help="always show the progress bar (default: only on a terminal)")
        prog.add_argument("--no-progress", dest="progress", action="store_false", help="never show it")


def _json_object(text, option):
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{option} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{option} must be a JSON object")
    return value


def run_head_check(args, losses, loss_options=None) -> int:
    """Run :func:`rankspec.conformance.check_head` from parsed arguments and write the report."""
    from rankspec.conformance._targets import TargetError, TargetSignatureError
    from rankspec.conformance.harness import UsageProblem
    from rankspec.conformance.heads import check_head


    from ._paths import check_output_file

    check_output_file(args.output, "--output")
    validate_numbers(args, {"--atol": "tolerance", "--rtol": "tolerance", "--examples": "count1", "--seed": "seed",
                            "--shrink-seconds": "seconds", "--call-timeout": "timeout"})
    if args.target is not None and (not args.head or len(args.head) != 1):
        raise UsageError("a TARGET is checked against one head: give exactly one --head (dense2d or ssd3d)")
    opts = _json_object(args.loss_options, "--loss-options") or {}
    opts.update(loss_options or {})
    head_opts = _json_object(args.head_options, "--head-options")
    try:
        report = check_head(args.head, losses, target=args.target, scenarios=args.scenario or None,
                            examples=8 if args.examples is None else args.examples, seed=args.seed,
                            dtypes=args.dtype or ("float32", "float64"), device=args.device, scope=args.scope,
                            loss_options=opts, head_options=head_opts, atol=args.atol, rtol=args.rtol,
                            shrink=not args.no_shrink, shrink_seconds=args.shrink_seconds, progress=args.progress,
                            call_timeout=getattr(args, "call_timeout", None) or 60.0, isolate=True)
    except (UsageProblem, TargetError, TargetSignatureError) as exc:
        raise UsageError(str(exc)) from None
    write_report(report, args.format, args.output)
    return report.exit_code



"""``rankspec check``: check an implementation's losses and gradients against the reference."""

from __future__ import annotations

import argparse

from ._common import (UsageError, _json_object, add_head_arguments, parse_target_kwargs, run_head_check,
                      validate_numbers, write_report)
from ._paths import check_output_file

NAME = "check"
HELP = "check an implementation (default: the bundled torch adapters) against the reference"
ORDER = 1
DESCRIPTION = """\
Check an implementation of a ranking loss - loss value and every gradient entry - against
rankspec's reference, on the recorded vectors and on hypothesis-generated inputs (sizes 1 to
1e5, ties, delta 0, separated positives, no relevant negative, equal IoUs, large magnitudes).
A failure is shrunk to a minimal counterexample, printed as a copy-pasteable Python
reproducer, and diagnosed: the documented conventions (self term, ties, interpolation,
threshold, normalisation, scope; each family's own, e.g. RankDet's re-weighting and mining,
DR's pairing and surrogate, APE's distance and balance) are searched for the combination the
target matches.

Losses: ap, ap-interp, rs, bap, brs (AP / Rank & Sort / bucketed; TARGET(logits, labels|targets,
delta)); rankdet-global, rankdet-class (TARGET(logits [N, C], labels [N])), rankdet-iou, rankdet
(TARGET(logits, labels, ious, levels); the IoU gradient is checked too); dr (TARGET(logits,
labels, image_ids=...)); ape (TARGET(logits, labels, ious)); ape-pairwise (TARGET(logits,
labels, delta=...)); giou (TARGET(pred_boxes, target_boxes, weights)).

With --head dense2d|ssd3d the detector head's whole pipeline (raw head outputs -> assignment,
flattening, loss; gradient with respect to the raw outputs) is checked instead, on random
batches with no, many and crowded ground truth: the same as `rankspec check-head` (see its help).

TARGET is 'package.module:attr' or 'path/to/file.py:attr': a function returning (loss, grad),
a function returning a torch loss, a torch.autograd.Function (e.g. the authors' RankSort), or an
nn.Module class or instance, or any object with an apply (e.g. a plain class with a static apply).
A port that lacks an input the check would pass is called without it and checked against the reading
that fits (a DR port without image_ids: the pooled ranking, dr_loss(image_ids=None)); --call maps the
inputs onto any other signature, --domain restricts the verdict to the inputs a port documents, and
--loss-options checks against the reference called with other conventions (to confirm a diagnosis).
Without TARGET the bundled torch adapters are checked (every loss unless --loss is given).

TARGET runs in a worker process, never in rankspec's: its import, its probe and every call happen
there, with a time limit per call (--call-timeout). An exit (sys.exit, os._exit), a crash (segfault),
a hang, a write into its input or a patch of the harness is that target's failure (exit 1), with the
case that triggered it; the report is always written, and what TARGET prints never enters it."""
EPILOG = """\
exit codes:
  0  conformant: every case of every check agreed within tolerance
  1  nonconformant: at least one case disagreed (or the target raised)
  2  usage error: bad TARGET string or import failure, a target whose signature fits no call
     convention (or --call mapping), unknown --loss, bad option values (a tolerance that is negative,
     inf or nan; a count or size below 1; a bad seed), an unwritable --output, --device cuda without
     CUDA

examples:
  rankspec check                                   # the bundled adapters, every loss
  rankspec check mypkg.losses:rank_sort --loss rs --delta 0.5
  rankspec check ./my_ap.py:APLoss --loss ap-interp --format junit --output rankspec.xml
  rankspec check --head dense2d --loss rs          # the 2D head adapter's pipeline (= rankspec check-head)
  rankspec check ./port.py:loss --loss rs --call 'labels,logits,margin=delta'   # another signature
  rankspec check ./authors.py:RankSort --loss rs --domain '1d,delta>0,positives>=1'
  rankspec check ./port.py:loss --loss rs --loss-options '{"self_rank": "one"}'"""


def add_arguments(p):
    from rankspec.conformance._constants import CHECK_DTYPES
    from rankspec.conformance._domain import DOMAIN_HELP
    from rankspec.conformance._targets import CALL_CONVENTIONS, CALL_HELP
    from rankspec.conformance.specs import spec_names

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("target", nargs="?", metavar="TARGET",
                   help="implementation to check: package.module:attr or path/to/file.py:attr "
                        "(default: the bundled torch adapters)")
    p.add_argument("--loss", action="append", choices=spec_names(), metavar="{" + ",".join(spec_names()) + "}",
                   help="loss to check (repeatable; required with TARGET; default without TARGET: all)")
    p.add_argument("--delta", type=float, default=None,
                   help="check at this delta only (default: the recorded deltas and a grid including 0)")
    p.add_argument("--examples", type=int, default=None,
                   help="generated cases per target and dtype (default: 100; 60 for the RankDet and APE "
                        "losses, whose readable references loop in Python)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated cases (default 0)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device of torch targets")
    p.add_argument("--dtype", choices=CHECK_DTYPES, action="append",
                   help="dtype to check (repeatable; default: float32 and float64). float16 / bfloat16 (opt-in): "
                        "inputs rounded to the dtype, the float64 reference on the rounded values, torch targets "
                        "given tensors of the dtype (NumPy targets: float32 arrays of the rounded values), "
                        "tolerance float32's plus one ulp of the dtype's output rounding (rtol + 2^-10 for "
                        "float16, + 2^-7 for bfloat16)")
    p.add_argument("--format", choices=("text", "json", "junit"), default="text", help="report format")
    p.add_argument("--output", metavar="FILE", help="write the report to FILE instead of stdout")
    p.add_argument("--convention", choices=CALL_CONVENTIONS, default="auto",
                   help="how to call TARGET (default: detect): pair = returns (loss, grad) from NumPy inputs; "
                        "torch-pair = the same from torch inputs; autograd = returns a torch loss; "
                        "function = torch.autograd.Function (.apply); module = nn.Module class or instance")
    p.add_argument("--call", metavar="MAPPING", default=None, help=CALL_HELP)
    p.add_argument("--domain", metavar="CONDITIONS", default=None, help=DOMAIN_HELP)
    p.add_argument("--target-kwargs", metavar="JSON", default=None,
                   help='keyword arguments passed on every call, e.g. \'{"interpolated": true}\'')
    p.add_argument("--tuple-backward", choices=("sum", "first"), default="sum",
                   help="for tuple outputs: backpropagate through their sum (default) or the first only")
    p.add_argument("--no-vectors", action="store_true", help="skip the recorded vectors' inputs")
    p.add_argument("--max-size", type=int, default=100_000, help="largest generated input (default 100000)")
    p.add_argument("--atol", type=float, default=None, help="override the base absolute tolerance")
    p.add_argument("--rtol", type=float, default=None, help="override the relative tolerance")
    p.add_argument("--no-shrink", action="store_true", help="report the first failure without shrinking it")
    p.add_argument("--shrink-seconds", type=float, default=20.0, help="time budget for shrinking (default 20)")
    p.add_argument("--call-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="time limit of one call of TARGET (default 60). TARGET always runs in a worker process: "
                        "a call that runs over the limit, exits (sys.exit, os._exit), crashes (segfault) or kills "
                        "its worker is that case's failure (exit 1); after a time-out TARGET is not called again. "
                        "What TARGET prints goes to a log, never into the report")
    prog = p.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None,
                      help="always show the progress bar (default: only on a terminal)")
    prog.add_argument("--no-progress", dest="progress", action="store_false", help="never show it")
    from rankspec.conformance.heads import HEAD_LOSSES, HEADS, SCENARIOS

    heads = p.add_argument_group("head pipelines (--head; see rankspec check-head --help)")
    add_head_arguments(heads, HEADS, HEAD_LOSSES, SCENARIOS, loss=False)


def run(args) -> int:
    from rankspec.conformance._constants import DTYPES
    from rankspec.conformance.harness import UsageProblem, check
    from rankspec.conformance._targets import TargetError, TargetSignatureError

    check_output_file(args.output, "--output")
    if args.head:
        return _run_head(args)
    validate_numbers(args, {"--atol": "tolerance", "--rtol": "tolerance", "--examples": "count0", "--seed": "seed",
                            "--max-size": "count1", "--shrink-seconds": "seconds", "--call-timeout": "timeout",
                            "--delta": "tolerance"})
    head_only = [o for o, v in (("--scenario", args.scenario), ("--scope", args.scope),
                                ("--head-options", args.head_options)) if v]
    if head_only:
        raise UsageError(f"{', '.join(head_only)} appl{'ies' if len(head_only) == 1 else 'y'} only with --head")
    if args.target is not None and not args.loss:
        raise UsageError("--loss is required when a TARGET is given")
    if args.examples == 0 and args.no_vectors:
        raise UsageError("--examples 0 with --no-vectors runs no case at all; a check needs at least one case")
    kwargs = parse_target_kwargs(args.target_kwargs)
    loss_options = _json_object(args.loss_options, "--loss-options")
    try:
        report = check(args.target, args.loss, delta=args.delta, examples=args.examples, seed=args.seed,
                       device=args.device, dtypes=args.dtype or DTYPES,
                       convention=args.convention, target_kwargs=kwargs, tuple_backward=args.tuple_backward,
                       vectors=not args.no_vectors, max_size=args.max_size, atol=args.atol, rtol=args.rtol,
                       shrink=not args.no_shrink, shrink_seconds=args.shrink_seconds, progress=args.progress,
                       call_timeout=args.call_timeout, isolate=True, loss_options=loss_options, call=args.call,
                       domain=args.domain)
    except (UsageProblem, TargetError, TargetSignatureError) as exc:
        raise UsageError(str(exc)) from None
    write_report(report, args.format, args.output)
    return report.exit_code


def _run_head(args) -> int:
    """``rankspec check --head ...``: the head pipeline check of ``rankspec check-head``."""

    flat_only = [o for o, v in (("--convention", args.convention != "auto"), ("--target-kwargs", args.target_kwargs),
                                ("--tuple-backward", args.tuple_backward != "sum"), ("--no-vectors", args.no_vectors),
                                ("--max-size", args.max_size != 100_000),
                                ("--call", args.call), ("--domain", args.domain))
                 if v]
    if flat_only:
        raise UsageError(f"{', '.join(flat_only)} do(es) not apply to --head (a head target takes the head "
                         "loss function's signature)")
    narrow = [d for d in args.dtype or () if d not in ("float32", "float64")]
    if narrow:
        raise UsageError(f"--dtype {narrow[0]} applies to loss checks only; --head checks in float32 / float64")
    if args.delta is not None and not (args.delta >= 0 and args.delta != float("inf")):
        raise UsageError(f"--delta must be a finite number >= 0, got {args.delta}")
    extra = {"delta": args.delta} if args.delta is not None else None
    return run_head_check(args, args.loss, extra)

"""``rankspec vectors export|verify``: language-neutral golden vectors.

``export DIR`` writes per loss ``DIR/<loss>.npz`` (``cNNNN_logits``/``cNNNN_targets``
float32 inputs, ``cNNNN_grad`` float64 gradient, ``cNNNN_outputs`` float64
``[loss, parts...]``) and ``DIR/<loss>.json`` (``schema`` = ``rankspec.golden-vectors``,
``schema_version`` = 1, ``rankspec_version``, ``seed``, ``reference`` call and
conventions, ``outputs``, ``tolerance``, ``npz`` file and sha256, per-case
metadata).  The full schema is documented in :mod:`rankspec.conformance._golden`.
``verify DIR [TARGET]`` checks a target against them; exit codes as ``rankspec check``.
"""

from __future__ import annotations

import argparse

NAME = "vectors"
HELP = "export golden test vectors (.npz + JSON) for other languages, or verify a target against them"
ORDER = 2
DESCRIPTION = """\
export DIR: write, per loss, DIR/<loss>.npz (inputs, gradients, scalar outputs) and DIR/<loss>.json
(metadata: schema and schema_version, rankspec version, seed, reference call, tolerance, per-case
outputs, npz checksum) so a JAX, TensorFlow or C++ implementation can check itself.
verify DIR [TARGET]: check a target (default: the bundled torch adapters) against those files."""
EPILOG = """\
exit codes:
  0  export written / verify: conformant
  1  verify: nonconformant
  2  usage error, reported before any work (bad directory or files, an --output that cannot be
     written, bad TARGET, unknown --loss, CUDA unavailable)"""


def add_arguments(p):
    from rankspec.conformance._targets import CALL_CONVENTIONS
    from rankspec.conformance.specs import spec_names

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    sub = p.add_subparsers(dest="vectors_command", metavar="{export,verify}")
    loss_meta = "{" + ",".join(spec_names()) + "}"

    e = sub.add_parser("export", help="write DIR/<loss>.npz and DIR/<loss>.json",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    e.add_argument("directory", metavar="DIR")
    e.add_argument("--loss", action="append", choices=spec_names(), metavar=loss_meta,
                   help="loss to export (repeatable; default: all)")
    e.add_argument("--examples", type=int, default=100, help="generated cases per loss (default 100)")
    e.add_argument("--seed", type=int, default=0, help="seed of the generated cases (default 0)")
    e.add_argument("--max-size", type=int, default=2000, help="largest generated input (default 2000)")
    e.add_argument("--no-recorded", action="store_true", help="leave out the recorded vectors' inputs")

    v = sub.add_parser("verify", help="check a target against exported vectors",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    v.add_argument("directory", metavar="DIR")
    v.add_argument("target", nargs="?", metavar="TARGET",
                   help="package.module:attr or path/to/file.py:attr (default: the bundled torch adapters)")
    v.add_argument("--loss", action="append", choices=spec_names(), metavar=loss_meta,
                   help="loss to verify (repeatable; default: every loss found in DIR)")
    v.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    v.add_argument("--dtype", choices=("float32", "float64"), action="append",
                   help="dtype to run the target in (repeatable; default float32, the stored inputs' dtype)")
    v.add_argument("--format", choices=("text", "json", "junit"), default="text")
    v.add_argument("--output", metavar="FILE")
    v.add_argument("--convention", choices=CALL_CONVENTIONS, default="auto")
    v.add_argument("--target-kwargs", metavar="JSON", default=None)
    v.add_argument("--tuple-backward", choices=("sum", "first"), default="sum")
    v.add_argument("--no-shrink", action="store_true")
    p.set_defaults(_vectors_parser=p)


def run(args) -> int:
    from rankspec.conformance._golden import VectorsError, available_losses, export_vectors, verify_vectors
    from rankspec.conformance._targets import TargetError, TargetSignatureError
    from rankspec.conformance.harness import UsageProblem

    from ._common import UsageError, parse_target_kwargs, write_report
    from ._paths import check_output_dir, check_output_file

    if args.vectors_command is None:
        raise UsageError("a sub-command is required: export or verify "
                         "('rankspec vectors export DIR' or 'rankspec vectors verify DIR [TARGET]')")
    if args.vectors_command == "export":
        if args.examples < 0:
            raise UsageError("--examples must be >= 0")
        if args.max_size < 1:
            raise UsageError("--max-size must be >= 1")
        check_output_dir(args.directory, "DIR")
        try:
            paths = export_vectors(args.directory, args.loss, examples=args.examples, seed=args.seed,
                                   max_size=args.max_size, include_recorded=not args.no_recorded)
        except OSError as exc:
            raise UsageError(f"cannot write to {args.directory!r}: {exc}") from None
        for path in paths:
            print(path)
        return 0
    kwargs = parse_target_kwargs(args.target_kwargs)
    check_output_file(args.output)
    try:
        losses = args.loss or available_losses(args.directory)
        if args.target is not None and not losses:
            raise UsageError(f"no golden vectors found in {args.directory!r}")
        report = verify_vectors(args.directory, args.target, losses, dtypes=args.dtype or ("float32",),
                                device=args.device, convention=args.convention, target_kwargs=kwargs,
                                tuple_backward=args.tuple_backward, shrink=not args.no_shrink)
    except (VectorsError, UsageProblem, TargetError, TargetSignatureError) as exc:
        raise UsageError(str(exc)) from None
    write_report(report, args.format, args.output)
    return report.exit_code

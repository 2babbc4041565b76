"""``rankspec bench``: time the AP / RS losses on BRL's synthetic protocol, against numpy.sort."""

from __future__ import annotations

import argparse

NAME = "bench"
HELP = "time loss + gradient of every algorithm and backend on BRL's synthetic protocol, as ratios to np.sort"
ORDER = 40
DESCRIPTION = """\
Reproduce the synthetic benchmark of BRL Sec. 4.1-4.2: L logits (default 10K, 100K, 1M) with m %
positives (default 0.1, 1, 2, 5), positive logits ~ N(-1, 1), negative logits ~ N(1, 1), IoUs
uniform in (0, 1] for RS.  For each loss (rs, ap) it times loss + gradient of the NumPy reference
(only where |P| (|P| + |N|) is small: it is O(|P| |N|)), of the bucketed loss and of the exact fast
path on each backend, and numpy.sort of the same logits in the same loop (the floor): min and
median over the repeats, the first call (numba JIT compile or cache load) separately, and the
ratios to the sort.  Prints a table and writes bench.json, bench.txt and bench.png (log-log time
against L, like BRL Fig. 4.1) into --output.  --losses ape,pe,rankdet,rankdet-sigmoid times the
other families' pair sums (reference and fast paths) on the same logits; --backends torch adds the
torch adapters' forward + backward on CPU tensors with each of their engines (torch, numba)."""
EPILOG = """\
exit codes:
  0  done: table printed; bench.json, bench.txt and bench.png written
  2  usage error, reported before any timing: bad sizes, percentages, losses or backends, cuda
     unavailable, an --output that cannot be written, matplotlib missing without --no-plot
  3  timings done and bench.json / bench.txt written, but the plot could not be drawn

examples:
  rankspec bench                         # the full protocol on the numba backend, float32 logits
  rankspec bench --quick                 # 10K and 50K logits, m = 1 and 5 %, 3 repeats (< 1 min)
  rankspec bench --sizes 1000000 --percents 0.1 --losses rs --repeats 15
  rankspec bench --backends numba,cuda   # add the GPU (timings exclude the host-to-device copy)
  rankspec bench --backends numba,torch --sizes 10000,100000   # the torch adapters' two engines
  rankspec bench --losses ape,pe,rankdet,rankdet-sigmoid --quick   # the other families' pair sums"""


def _ints(text):
    try:
        vals = [int(float(v)) for v in text.split(",") if v.strip()]
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return vals


def _floats(text):
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    return vals


def _names(text):
    return [v.strip() for v in text.split(",") if v.strip()]


def add_arguments(p):
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("--quick", action="store_true",
                   help="small run: sizes 10000,50000, percents 1,5, 3 repeats (explicit options still win)")
    p.add_argument("--sizes", type=_ints, default=None, help="comma-separated L values (default 10000,100000,1000000)")
    p.add_argument("--percents", type=_floats, default=None, help="comma-separated m values in %% (default 0.1,1,2,5)")
    p.add_argument("--losses", type=_names, default=None,
                   help="comma-separated: rs, ap, ape, pe, rankdet, rankdet-sigmoid (default rs,ap)")
    p.add_argument("--backends", type=_names, default=None,
                   help="comma-separated: numba, cuda, torch (the torch adapters on CPU tensors; default numba, "
                        "plus cuda on a real GPU)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per cell (default 7)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="dtype of the logits")
    p.add_argument("--delta", type=float, default=None, help="delta of every loss (default: AP 1.0, RS 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference-max-pairs", type=float, default=2e7,
                   help="run the O(|P| |N|) NumPy reference only where |P| (|P| + |N|) <= this (default 2e7)")
    p.add_argument("--output", default="bench-out", metavar="DIR",
                   help="directory for bench.json, bench.txt, bench.png (default bench-out)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="always draw the progress bar (cells done, current loss / L / m) on stderr "
                          "(default: only on a terminal)")
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="never draw it")
    from ..bench_device import add_arguments as _add_issue14
    _add_issue14(p)


def _default_backends():
    from rankspec.refimpl.fast import cuda_available

    backends = ["numba"]
    try:
        from numba import config

        if cuda_available() and not config.ENABLE_CUDASIM:
            backends.append("cuda")
    except Exception:  # pragma: no cover
        pass
    return backends


#: exit code: results written, plot failed (cli.EXIT_PLOT)
EXIT_PLOT = 3


def run(args) -> int:
    import os
    import sys

    from ..bench import BACKENDS, LOSSES, QUICK, BenchConfig, format_table, plot, run_bench, write_outputs
    from ._common import UsageError
    from ._optional import require_plotting
    from ._paths import check_output_dir
    from ._suggest import did_you_mean

    from ..bench_device import run_extra
    extra = run_extra(args)
    if extra is not None:
        return extra
    cfg = BenchConfig()
    if args.quick:
        for k, v in QUICK.items():
            setattr(cfg, k, v)
    if args.sizes is not None:
        cfg.sizes = tuple(args.sizes)
    if args.percents is not None:
        cfg.percents = tuple(args.percents)
    if args.losses is not None:
        cfg.losses = tuple(args.losses)
    cfg.backends = tuple(args.backends) if args.backends is not None else tuple(_default_backends())
    if args.repeats is not None:
        cfg.repeats = args.repeats
    cfg.dtype = args.dtype
    cfg.delta = args.delta
    cfg.seed = args.seed
    cfg.reference_max_pairs = args.reference_max_pairs

    if not cfg.sizes or any(L < 1 for L in cfg.sizes):
        raise UsageError("--sizes must be positive integers")
    if not cfg.percents or any(not (0 < m <= 100) for m in cfg.percents):
        raise UsageError("--percents must lie in (0, 100]")
    bad = [loss for loss in cfg.losses if loss not in LOSSES]
    if not cfg.losses or bad:
        hint = did_you_mean(bad[0], LOSSES) if bad else ""
        raise UsageError(f"--losses must be a comma-separated subset of {', '.join(LOSSES)}; "
                         f"got {','.join(cfg.losses)}{hint}")
    bad = [b for b in cfg.backends if b not in BACKENDS]
    if bad:
        raise UsageError(f"--backends must be a comma-separated subset of {', '.join(BACKENDS)}; "
                         f"got {','.join(cfg.backends)}{did_you_mean(bad[0], BACKENDS)}")
    if "cuda" in cfg.backends:
        from rankspec.refimpl.fast import cuda_available

        if not cuda_available():
            raise UsageError("--backends cuda: numba.cuda has no GPU here (and the simulator is off)")
    if cfg.repeats < 1:
        raise UsageError("--repeats must be >= 1")
    if cfg.delta is not None and not (cfg.delta >= 0):
        raise UsageError("--delta must be >= 0")
    check_output_dir(args.output)
    if not args.no_plot:
        require_plotting("bench")

    report = run_bench(cfg, progress=args.progress)
    print(format_table(report), flush=True)
    try:
        paths = write_outputs(report, args.output, with_plot=False)
    except OSError as exc:  # the directory vanished or filled up since the check
        raise UsageError(f"cannot write to {args.output!r}: {exc}") from None
    print("wrote " + ", ".join(paths), flush=True)
    if args.no_plot:
        return 0
    png = os.path.join(args.output, "bench.png")
    try:
        plot(report, png)
    except Exception as exc:  # the results are written; say what failed instead of a traceback
        print(f"rankspec bench: error: the plot could not be drawn ({type(exc).__name__}: {exc}); "
              f"bench.json and bench.txt are written (exit code 3)", file=sys.stderr)
        return EXIT_PLOT
    print(f"wrote {png}")
    return 0

"""``rankspec demo 2d|3d``: train tiny detector heads with ranking losses against focal loss.

Prints the curves (training loss, Spearman rho between scores and IoUs of the
positives, held-out AP per evaluation step) and a final table; with
``--output DIR`` writes ``demo_<kind>.png`` (matplotlib, Agg) and
``demo_<kind>.json``.  See :mod:`rankspec.adapters.demo`.
"""

NAME = "demo"
HELP = "train the tiny 2D / 3D detector heads with RS, bucketed RS, RankDetNet vs focal loss (CPU, ~1 min)"
DESCRIPTION = (
    "Train a tiny dense 2D detector on synthetic images (demo 2d) or a tiny point-cloud SSD detector on "
    "synthetic LiDAR scenes (demo 3d) once per loss, from the same initial weights on the same batches, and "
    "report the training loss, Spearman's rho between the classification scores and the IoUs of the "
    "positives (RS Sec. 6.3), and AP on a held-out synthetic set.")
ORDER = 60
EPILOG = """\
exit codes:
  0  done: report printed (and, with --output, demo_<kind>.json and demo_<kind>.png written)
  2  usage error, reported before any training: bad option values, PyTorch missing, an --output
     that cannot be written, matplotlib missing for the plot (install it or pass --no-plot)
  3  training done and demo_<kind>.json written, but the plot could not be drawn

examples:
  rankspec demo 2d                              # print the curves and the final table (~1 min)
  rankspec demo 3d --output demo-out            # also write demo-out/demo_3d.json and .png
  rankspec demo 2d --output demo-out --no-plot  # JSON only, no matplotlib needed"""

#: exit code: results written, plot failed (cli.EXIT_PLOT)
EXIT_PLOT = 3


def add_arguments(p):
    import argparse

    from rankspec.adapters.demo import DEFAULT_LOSSES, DEMO_LOSSES

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("kind", choices=("2d", "3d"), help="which demonstration to run")
    p.add_argument("--output", metavar="DIR", help="write demo_<kind>.json and demo_<kind>.png here "
                                                   "(created if missing)")
    p.add_argument("--no-plot", action="store_true", help="with --output: write the JSON only (no matplotlib needed)")
    p.add_argument("--steps", type=int, default=None, help="training steps per loss (default: 300 for 2d, 250 for 3d)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the batches and the initial weights")
    p.add_argument("--losses", nargs="+", choices=DEMO_LOSSES, default=list(DEFAULT_LOSSES), metavar="LOSS",
                   help=f"losses to train (default: {' '.join(DEFAULT_LOSSES)}; choices: {', '.join(DEMO_LOSSES)})")
    p.add_argument("--batch-size", type=int, default=None, help="images / scenes per step")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (cosine decay to 0)")
    p.add_argument("--eval-every", type=int, default=None, help="steps between held-out evaluations")
    p.add_argument("--num-train", type=int, default=None, help="synthetic training images / scenes")
    p.add_argument("--num-val", type=int, default=None, help="synthetic held-out images / scenes")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: reproducible and fast on "
                                                          "shared CPUs)")
    p.add_argument("--quiet", action="store_true", help="print only the final report")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="always draw the progress bar (loss, training step) on stderr (default: only on a "
                          "terminal)")
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="never draw it")


def run(args) -> int:
    import os
    import sys

    from .._progress import Progress
    from ._common import UsageError
    from ._optional import require_plotting, require_torch
    from ._paths import check_output_dir

    for name in ("steps", "batch_size", "eval_every", "num_train", "num_val", "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if args.lr is not None and not args.lr > 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    overrides = {k: getattr(args, k) for k in ("batch_size", "lr", "eval_every", "num_train", "num_val")
                 if getattr(args, k) is not None}
    if overrides.get("batch_size", 0) > overrides.get("num_train", 10 ** 9):
        raise UsageError("--batch-size must not exceed --num-train")
    check_output_dir(args.output)
    require_torch("demo")
    plotting = bool(args.output) and not args.no_plot
    if plotting:
        require_plotting("demo")
    from rankspec.adapters.demo import DEFAULTS, format_report, plot_result, run_demo, save_result

    losses = tuple(dict.fromkeys(args.losses))
    steps = args.steps if args.steps is not None else DEFAULTS[args.kind]["steps"]
    bar = Progress(len(losses) * steps, enabled=args.progress, delay=0.5, unit="step", desc=f"demo {args.kind}")

    def tick(loss, step, total, phase):
        if phase == "train":
            bar.advance(1, f"{loss}: step {step}/{total}")
        else:
            bar.set_label(f"{loss}: held-out evaluation at step {step}")

    log = None if args.quiet else bar.write
    try:
        result = run_demo(args.kind, losses=losses, steps=steps, seed=args.seed, output=None,
                          threads=args.threads, log=log, progress=tick, **overrides)
    finally:
        bar.close()
    print(format_report(result))
    sys.stdout.flush()
    if not args.output:
        return 0
    try:
        path = save_result(result, args.output)
    except OSError as exc:  # the directory vanished or filled up since the check
        raise UsageError(f"cannot write to {args.output!r}: {exc}") from None
    print(f"\nwrote {path}")
    if not plotting:
        return 0
    png = os.path.join(args.output, f"demo_{args.kind}.png")
    try:
        plot_result(result, png)
    except Exception as exc:  # the results are written; say what failed instead of a traceback
        print(f"rankspec demo: error: the plot could not be drawn ({type(exc).__name__}: {exc}); "
              f"{path} is written (exit code 3)", file=sys.stderr)
        return EXIT_PLOT
    print(f"wrote {png}")
    return 0

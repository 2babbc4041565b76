"""``rankspec bench``: the synthetic benchmark of BRL Sec. 4.1-4.2, with numpy.sort as the floor.

Protocol (BRL Sec. 4.1.1, "Synthetic Data Generation"): L logits of which m % are positive;
positive logits ~ N(-1, 1), negative logits ~ N(1, 1) (so most negatives rank above most
positives), IoU targets of positives uniform in (0, 1] for the RS losses; L in {10K, 100K, 1M},
m in {0.1, 1, 2, 5}.  For every (loss, L, m) cell the same logits are given to

* ``reference`` - the readable NumPy reference (O(P N) for P positives and N negatives; only where
  P (P + N) is small),
* ``bucketed``  - the bucketed loss (BRL Sec. 3.3) on each backend,
* ``exact``     - the unbucketed loss on the exact near-linear fast paths,

and to ``numpy.sort``.  Backend ``torch`` adds the torch adapters' forward + backward on CPU
tensors (rows ``torch``: the vectorised torch engine; ``torch/numba``: the adapters calling the
numba kernels; only up to ``torch_max_size`` logits).

The other families' pair sums run on the same logits (``--losses``): ``ape`` (APE loss, APE Eqs.
9-10 with the authors' defaults: CE distance, lambda 8, threshold 4 / lambda, IoU weights),
``pe`` (AP loss as the pairwise error of APE Eq. 8, H distance, delta 1), ``rankdet`` and
``rankdet-sigmoid`` (RankDet's global ranking loss, Eqs. 2-3, with the exponential or sigmoid
L_rank and no mining: every (background, foreground) pair).  Their ``exact`` rows are the fast
paths (same numbers); their CUDA rows include the host-device copies.  Loss + gradient (the whole public call, input validation included) and
the sort are timed round-robin in the same loop, so every ratio compares timings taken in the
same seconds of the same run: machines - and shared CI runners above all - are noisy, ratios
much less so.  The first call of each (algorithm, backend) is timed apart from the repeats: it
includes numba's JIT compilation or the load of its on-disk cache.

:func:`run_bench` returns a JSON-able dict; :func:`format_table`, :func:`write_outputs` and
:func:`plot` present it.  Matplotlib (Agg) is needed for the PNG only.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = ["BenchConfig", "QUICK", "LOSSES", "BACKENDS", "make_problem", "run_bench", "format_table",
           "write_outputs", "plot", "TARGETS"]

#: the two targets of issue 5: (loss, algorithm, backend, L, m, dtype, max ratio to np.sort)
TARGETS = (
    ("rs", "exact", "numba", 1_000_000, 0.1, "float32", 2.0),
    ("rs", "exact", "numba", 100_000, 5.0, "float32", 2.0),
)


@dataclass
class BenchConfig:
    sizes: Sequence[int] = (10_000, 100_000, 1_000_000)
    percents: Sequence[float] = (0.1, 1.0, 2.0, 5.0)
    losses: Sequence[str] = ("rs", "ap")
    backends: Sequence[str] = ("numba",)
    repeats: int = 7
    dtype: str = "float32"
    seed: int = 0
    #: run the O(P N) NumPy reference only where P (P + N) <= this (bucketed reference: P^2 + N)
    reference_max_pairs: float = 2e7
    delta: Optional[float] = None  #: None: each loss's default (AP 1.0, RS 0.5, pairwise error H 1.0)
    #: the torch adapters' rows only up to this many logits (the vectorised torch engine takes seconds
    #: per call beyond, see the docs)
    torch_max_size: int = 100_000
    #: the fast paths that visit every valid pair (APE's S / CE forms, RankDet's sigmoid L_rank:
    #: O(P N) on this protocol, where nearly every pair is valid) only where P N <= this
    pair_max_pairs: float = 2e8
    extra: Dict[str, object] = field(default_factory=dict)


#: ``--quick``: two small sizes, two percentages, 3 repeats -- well under a minute with a warm
#: numba cache, and under a minute cold (the first calls compile the kernels)
QUICK = dict(sizes=(10_000, 50_000), percents=(1.0, 5.0), repeats=3)


def make_problem(L: int, m: float, rng: np.random.Generator, dtype=np.float32):
    """BRL Sec. 4.1.1: (logits, IoU targets, labels) with round(L m / 100) >= 1 positives, shuffled."""
    P = max(1, int(round(L * m / 100.0)))
    P = min(P, L)
    s = np.empty(L, dtype=np.float64)
    s[:P] = rng.normal(-1.0, 1.0, P)
    s[P:] = rng.normal(1.0, 1.0, L - P)
    t = np.zeros(L, dtype=np.float64)
    t[:P] = 1.0 - rng.random(P)  # uniform in (0, 1]
    perm = rng.permutation(L)
    s, t = s[perm].astype(dtype), t[perm].astype(dtype)
    return s, t, (t > 0).astype(dtype), P


#: the losses ``rankspec bench`` knows: the AP / RS family (BRL's protocol), and the pair sums of the
#: other families on the same logits (their positives / negatives / IoUs)
LOSSES = ("rs", "ap", "ape", "pe", "rankdet", "rankdet-sigmoid")
#: ``backends``: the fast paths, and ``torch`` (the torch adapters' forward + backward on CPU tensors:
#: rows "torch" = the vectorised torch engine, "torch/numba" = the adapters' numba engine)
BACKENDS = ("numba", "cuda", "torch")


def _functions(loss: str):
    """(exact function, bucketed function or None, default delta or None) of a loss name."""
    from rankspec.refimpl import ap_loss, bucketed_ap_loss, bucketed_rs_loss, rs_loss

    if loss == "rs":
        return rs_loss, bucketed_rs_loss, 0.5
    if loss == "ap":
        return ap_loss, bucketed_ap_loss, 1.0
    if loss in ("ape", "pe"):
        from rankspec.refimpl import ape_loss, pairwise_error_loss

        if loss == "ape":  # APE loss with the authors' defaults: CE distance, lambda 8, threshold 4 / lambda
            return (lambda s, y, t, d, **kw: ape_loss(s, y, t, **kw)), None, None
        # AP loss as a pairwise error with the H distance (= AP Loss), delta 1
        return (lambda s, y, t, d, **kw: pairwise_error_loss(s, y, distance="h", delta=d, **kw)), None, 1.0
    if loss in ("rankdet", "rankdet-sigmoid"):
        from rankspec.refimpl import global_ranking_loss

        rf = "exponential" if loss == "rankdet" else "sigmoid"
        # the global ranking loss of RankDet Eqs. 2-3 without mining: every (background, foreground) pair
        return (lambda s, y, t, d, **kw: global_ranking_loss(s, y, rank_function=rf, mining="all", **kw)), None, None
    raise ValueError(f"unknown loss {loss!r} (choose from {', '.join(LOSSES)})")


def _torch_candidates(loss, exact_fn, bucketed_fn, s, y, delta):
    """Forward + backward of the torch adapters on CPU tensors, with each engine."""
    import torch

    from rankspec.adapters.torch import functional as TF

    fns = {"rs": (TF.rs_loss, TF.bucketed_rs_loss), "ap": (TF.ap_loss, TF.bucketed_ap_loss)}[loss]
    x = torch.tensor(s, requires_grad=True)
    yt = torch.tensor(y)
    out = []
    for alg, fn in (("bucketed", fns[1]), ("exact", fns[0])):
        for backend, engine in (("torch", "torch"), ("torch/numba", "numba")):
            def run(fn=fn, engine=engine):
                x.grad = None
                loss_t = fn(x, yt, delta, engine=engine)
                loss_t.backward()
                return _Value(float(loss_t.detach()))
            out.append((alg, backend, run))
    return out


class _Value:
    """A result with only a loss (what the torch rows return)."""

    def __init__(self, loss):
        self.loss = loss


def _candidates(loss: str, cfg: BenchConfig, s, t, lab, P: int, delta):
    """(algorithm, backend, zero-argument callable) for one cell; inputs are prepared here (GPU
    copies for the CUDA backend of the AP / RS family, tensors for torch), outside the timings."""
    exact_fn, bucketed_fn, _ = _functions(loss)
    L = s.size
    N = L - P
    out = []
    if loss in ("rs", "ap"):
        y = t if loss == "rs" else lab
        if P * (P + N) <= cfg.reference_max_pairs:
            out.append(("reference", "numpy", lambda: exact_fn(s, y, delta)))
        if P * P + N <= cfg.reference_max_pairs:
            out.append(("bucketed", "numpy", lambda: bucketed_fn(s, y, delta)))
        for backend in cfg.backends:
            if backend == "torch":
                if L <= cfg.torch_max_size:
                    out.extend(_torch_candidates(loss, exact_fn, bucketed_fn, s, y, delta))
                continue
            ds, dy = _device_inputs(backend, s, y)
            out.append(("bucketed", backend, lambda ds=ds, dy=dy, b=backend: bucketed_fn(ds, dy, delta, backend=b)))
            out.append(("exact", backend, lambda ds=ds, dy=dy, b=backend: exact_fn(ds, dy, delta, backend=b)))
        return out
    # the other families: float64 host input (their fast paths copy to the GPU themselves)
    s64 = s.astype(np.float64)
    if loss.startswith("rankdet"):
        y = np.where(lab > 0, 0, -1)  # class 0 = foreground, -1 = background
        max_pairs = min(cfg.reference_max_pairs, 4e6)  # the reference holds several U x P matrices
    else:
        y = lab.astype(np.float64)
        max_pairs = cfg.reference_max_pairs
    t64 = t.astype(np.float64)
    if P * N <= max_pairs:
        out.append(("reference", "numpy", lambda: exact_fn(s64, y, t64, delta)))
    if loss in ("ape", "rankdet-sigmoid") and P * N > cfg.pair_max_pairs:
        return out
    for backend in cfg.backends:
        if backend == "torch":
            continue
        out.append(("exact", backend, lambda b=backend: exact_fn(s64, y, t64, delta, backend=b)))
    return out


def _device_inputs(backend, s, y):
    """CUDA timings exclude the host-to-device transfer (issue 5): put the inputs on the GPU once."""
    if backend != "cuda":
        return s, y
    from numba import cuda

    return cuda.to_device(s), cuda.to_device(y)


def _sync(backend, result):
    if backend == "cuda":
        from numba import cuda

        cuda.synchronize()
    return result


def machine_info() -> dict:
    import numba

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threads": int(numba.get_num_threads()),
    }
    try:
        from rankspec.refimpl.fast import cuda_available

        if cuda_available():
            from numba import config, cuda

            info["cuda"] = "simulator" if config.ENABLE_CUDASIM else str(cuda.get_current_device().name)
    except Exception:  # pragma: no cover
        pass
    return info


def run_bench(cfg: BenchConfig, progress: Optional[bool] = None, stream=None) -> dict:
    """Run every cell; returns {"machine", "config", "cells", "results", "targets"}.

    ``progress``: draw a progress bar on ``stream`` (default stderr); ``None`` draws it only when
    the stream is a terminal.
    """
    from ._progress import Progress

    dtype = np.dtype(cfg.dtype)
    rng = np.random.default_rng(cfg.seed)
    try:
        load_start = os.getloadavg()
    except OSError:  # pragma: no cover - not on this platform
        load_start = None
    plan = []
    for loss in cfg.losses:
        _functions(loss)
        for L in cfg.sizes:
            for m in cfg.percents:
                plan.append((loss, int(L), float(m)))
    bar = Progress(len(plan) * (cfg.repeats + 1), stream=stream, enabled=progress, delay=0.0, unit="call",
                   desc="bench")
    results: List[dict] = []
    cells: List[dict] = []
    first_calls: Dict[tuple, float] = {}
    for loss, L, m in plan:
        s, t, lab, P = make_problem(L, m, rng, dtype)
        delta = cfg.delta if cfg.delta is not None else _functions(loss)[2]
        cands = _candidates(loss, cfg, s, t, lab, P, delta)
        label = f"{loss} L={L} m={m:g}%"
        # first calls (JIT compile / cache load, and a warm-up): not part of the repeats
        losses = {}
        for alg, backend, fn in cands:
            t0 = time.perf_counter()
            r = _sync(backend, fn())
            dt = time.perf_counter() - t0
            key = (loss, alg, backend, str(dtype))
            first_calls.setdefault(key, dt)
            losses[(alg, backend)] = r.loss
        np.sort(s)
        bar.advance(1, label)
        times = {k: [] for k in [("sort", "numpy")] + [(a, b) for a, b, _ in cands]}
        for _ in range(cfg.repeats):
            t0 = time.perf_counter()
            np.sort(s)
            times[("sort", "numpy")].append(time.perf_counter() - t0)
            for alg, backend, fn in cands:
                t0 = time.perf_counter()
                _sync(backend, fn())
                times[(alg, backend)].append(time.perf_counter() - t0)
            bar.advance(1, label)
        sort_min = min(times[("sort", "numpy")])
        sort_med = statistics.median(times[("sort", "numpy")])
        cells.append({"loss": loss, "L": L, "m": m, "P": P, "sort_min_s": sort_min, "sort_median_s": sort_med})
        exact_ref = next((losses[("exact", b)] for b in cfg.backends if ("exact", b) in losses), None)
        for alg, backend, _ in cands:
            ts = times[(alg, backend)]
            row = {"loss": loss, "L": L, "m": m, "P": P, "dtype": str(dtype), "delta": delta,
                   "algorithm": alg, "backend": backend, "min_s": min(ts), "median_s": statistics.median(ts),
                   "first_call_s": first_calls[(loss, alg, backend, str(dtype))],
                   "ratio_min": min(ts) / sort_min, "ratio_median": statistics.median(ts) / sort_med,
                   "loss_value": losses[(alg, backend)]}
            if exact_ref is not None and alg in ("reference", "exact"):
                row["abs_diff_vs_exact"] = abs(losses[(alg, backend)] - exact_ref)
            results.append(row)
    bar.close()
    machine = machine_info()
    if load_start is not None:
        machine["loadavg_start"] = load_start
    try:
        machine["loadavg_end"] = os.getloadavg()
    except OSError:  # pragma: no cover
        pass
    out = {"machine": machine, "config": {k: (list(v) if isinstance(v, tuple) else v)
                                          for k, v in asdict(cfg).items()},
           "cells": cells, "results": results, "targets": _targets(results)}
    return out


def _targets(results: List[dict]) -> List[dict]:
    rows = []
    for loss, alg, backend, L, m, dtype, limit in TARGETS:
        hit = [r for r in results if (r["loss"], r["algorithm"], r["backend"], r["L"], r["m"], r["dtype"])
               == (loss, alg, backend, L, m, dtype)]
        row = {"loss": loss, "algorithm": alg, "backend": backend, "L": L, "m": m, "dtype": dtype,
               "max_ratio": limit, "measured": bool(hit)}
        if hit:
            row.update(ratio_min=hit[0]["ratio_min"], ratio_median=hit[0]["ratio_median"],
                       met=hit[0]["ratio_min"] <= limit)
        rows.append(row)
    return rows


def format_table(report: dict) -> str:
    """A plain-text table: one line per (loss, L, m, algorithm, backend), times in ms."""
    wl = max([4] + [len(c["loss"]) for c in report["cells"]])
    wb = max([7] + [len(r["backend"]) for r in report["results"]])
    head = (f"{'loss':{wl}} {'L':>8} {'m%':>4} {'P':>6}  {'algorithm':9} {'backend':{wb}} {'min ms':>9} "
            f"{'median ms':>9} {'first ms':>9} {'/sort min':>9} {'/sort med':>9}")
    lines = [head, "-" * len(head)]
    cells = {(c["loss"], c["L"], c["m"]): c for c in report["cells"]}
    last = None
    for r in report["results"]:
        key = (r["loss"], r["L"], r["m"])
        if key != last:
            c = cells[key]
            lines.append(f"{r['loss']:{wl}} {r['L']:>8} {r['m']:>4g} {r['P']:>6}  {'np.sort':9} {'numpy':{wb}} "
                         f"{c['sort_min_s'] * 1e3:>9.3f} {c['sort_median_s'] * 1e3:>9.3f} {'':>9} "
                         f"{1.0:>9.2f} {1.0:>9.2f}")
            last = key
        lines.append(f"{'':{wl}} {'':>8} {'':>4} {'':>6}  {r['algorithm']:9} {r['backend']:{wb}} "
                     f"{r['min_s'] * 1e3:>9.3f} {r['median_s'] * 1e3:>9.3f} {r['first_call_s'] * 1e3:>9.1f} "
                     f"{r['ratio_min']:>9.2f} {r['ratio_median']:>9.2f}")
    m = report["machine"]
    lines.append("")
    lines.append(f"machine: {m.get('platform')}, {m.get('cpu_count')} CPUs, numba {m.get('numba')} "
                 f"({m.get('numba_threads')} threads), numpy {m.get('numpy')}"
                 + (f", load average {m['loadavg_start'][0]:.2f} -> {m['loadavg_end'][0]:.2f}"
                    if "loadavg_start" in m and "loadavg_end" in m else ""))
    lines.append("'first ms': first call (numba JIT compile or on-disk cache load); ratios: time / np.sort of "
                 "the same logits in the same loop")
    for tgt in report["targets"]:
        name = f"target: {tgt['loss']} {tgt['algorithm']}/{tgt['backend']} L={tgt['L']} m={tgt['m']:g}% {tgt['dtype']}"
        if tgt["measured"]:
            lines.append(f"{name}: {tgt['ratio_min']:.2f}x np.sort (min), {tgt['ratio_median']:.2f}x (median); "
                         f"goal <= {tgt['max_ratio']:g}x: {'met' if tgt['met'] else 'NOT met'}")
        else:
            lines.append(f"{name}: not in this run")
    return "\n".join(lines)


def write_outputs(report: dict, outdir: str, *, with_plot: bool = True) -> List[str]:
    """Write ``bench.json``, ``bench.txt`` and (``with_plot``) ``bench.png`` into ``outdir``."""
    os.makedirs(outdir, exist_ok=True)
    paths = []
    path = os.path.join(outdir, "bench.json")
    with open(path, "w") as fh:
        json.dump(report, fh, indent=1)
    paths.append(path)
    path = os.path.join(outdir, "bench.txt")
    with open(path, "w") as fh:
        fh.write(format_table(report) + "\n")
    paths.append(path)
    if with_plot:
        path = os.path.join(outdir, "bench.png")
        plot(report, path)
        paths.append(path)
    return paths


def _short(n: int) -> str:
    """10000 -> '10K', 1000000 -> '1M', 50000 -> '50K', 2500 -> '2.5K'."""
    for div, unit in ((1_000_000, "M"), (1_000, "K")):
        if n >= div:
            return f"{n / div:g}{unit}"
    return str(n)


def plot(report: dict, path: str) -> None:
    """Log-log time against L, one panel per (loss, m), one line per algorithm/backend and np.sort
    (dashed), like BRL Fig. 4.1."""
    from rankspec.refimpl._validate import require

    matplotlib = require("matplotlib", "rankspec bench plots (use --no-plot to skip them)")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    losses = list(dict.fromkeys(r["loss"] for r in report["cells"]))
    ms = list(dict.fromkeys(r["m"] for r in report["cells"]))
    sizes = sorted({int(c["L"]) for c in report["cells"]})
    # one colour per (algorithm, backend) in every panel
    all_series = list(dict.fromkeys((r["algorithm"], r["backend"]) for r in report["results"]))
    colours = {key: f"C{k % 10}" for k, key in enumerate(all_series)}
    cap = report["config"].get("reference_max_pairs")
    capped_any = False
    fig, axes = plt.subplots(len(losses), len(ms), figsize=(3.6 * len(ms), 3.2 * len(losses)), squeeze=False)
    for i, loss in enumerate(losses):
        for j, m in enumerate(ms):
            ax = axes[i][j]
            cells = sorted((c for c in report["cells"] if c["loss"] == loss and c["m"] == m), key=lambda c: c["L"])
            ax.plot([c["L"] for c in cells], [c["sort_min_s"] * 1e3 for c in cells], "k--", label="np.sort")
            series = dict.fromkeys((r["algorithm"], r["backend"]) for r in report["results"]
                                   if r["loss"] == loss and r["m"] == m)
            for alg, backend in series:
                rows = sorted((r for r in report["results"] if r["loss"] == loss and r["m"] == m
                               and r["algorithm"] == alg and r["backend"] == backend), key=lambda r: r["L"])
                xs, ys = [r["L"] for r in rows], [r["min_s"] * 1e3 for r in rows]
                ax.plot(xs, ys, "o-", color=colours[(alg, backend)], label=f"{alg} ({backend})")
                if backend == "numpy" and len(rows) < len(cells):
                    # the quadratic NumPy code runs only up to the pair cap: say so where its line stops
                    capped_any = True
                    ax.annotate(f"{alg} (numpy): larger L\nnot timed (pair cap)", (xs[-1], ys[-1]),
                                textcoords="offset points", xytext=(6, -4), fontsize=6,
                                color=colours[(alg, backend)], va="top")
            ax.set_xscale("log")
            ax.set_yscale("log")
            # ticks only at the measured sizes, with short labels (10K, 1M): no minor labels to collide
            ax.xaxis.set_major_locator(FixedLocator(sizes))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xticklabels([_short(L) for L in sizes])
            if len(sizes) > 1:
                ax.set_xlim(sizes[0] / 1.6, sizes[-1] * 1.6)
            ax.set_title(f"{loss.upper()}, m = {m:g}%", fontsize=9)
            ax.set_xlabel("L (logits)", fontsize=8)
            if j == 0:
                ax.set_ylabel("loss + gradient, ms (min)", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(True, which="both", alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=6)
    fig.suptitle("rankspec bench: BRL Sec. 4.2 synthetic protocol "
                 f"({report['config']['dtype']} logits)", fontsize=10)
    rect = None
    if capped_any:
        fig.text(0.01, 0.005, "The NumPy rows are quadratic and are timed only where the pair count (reference: "
                 f"|P| (|P| + |N|), bucketed: |P|^2 + |N|) is <= {cap:g} (--reference-max-pairs); "
                 "their lines stop there.", fontsize=7, color="0.3")
        rect = (0, 0.03, 1, 1)
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""Extra ``rankspec bench`` rows (issue 14): the torch engine against torch.sort, the GPU path, and
real scale on the CPU.  Options handled here (added to ``rankspec bench`` by :func:`add_arguments`):

* ``--torch-engine``: forward + backward of the torch adapters' ``engine="torch"`` on CPU tensors,
  float32 input, torch threads = 1, at (L, P) = (100K, 5000) and (1M, 1000), against torch.sort of
  the same logits in the same loop (target <= 3x).
* ``--large``: ``rs_loss(backend="numba")`` at L = 3e7, P = 3000 (float32), against np.sort of the
  same logits, with the peak memory of the call (tracemalloc: numba's arrays are NumPy arrays) against
  the input arrays (targets: time <= 1x np.sort, memory <= 3x the inputs).
* ``--device cuda``: the torch adapters on CUDA tensors (``engine="cuda"`` and ``engine="torch"``)
  for L from 1e5 to 1e8 (as GPU memory allows) and P from 1e2 to 1e4, against torch.sort, with time
  and peak GPU memory (``torch.cuda.max_memory_allocated``).  Needs a GPU: a clean usage error otherwise.
* ``--compare [LABEL=]TARGET`` (repeatable): another RS implementation -- typically the authors' code --
  timed on the same tensors in the ``--torch-engine`` and ``--device cuda`` rows (:func:`compare_targets`);
  one that raises on its first call gets a row saying so instead of timings.

Ratios are measured round-robin in one run, as in :mod:`.bench`.  Results go to ``bench_extra.json``
and ``bench_extra.txt`` in ``--output``.
"""

from __future__ import annotations

import json
import os
import statistics
import time
import tracemalloc

import numpy as np

__all__ = ["add_arguments", "run_extra", "torch_engine_rows", "large_rows", "device_rows", "compare_targets"]

CUDA_SIZES = (100_000, 1_000_000, 10_000_000, 30_000_000, 100_000_000)
CUDA_POSITIVES = (100, 1000, 10_000)


def add_arguments(p):
    g = p.add_argument_group("issue 14 rows (handled by rankspec.conformance.bench_device)")
    g.add_argument("--torch-engine", action="store_true",
                   help="time the torch adapters' engine='torch' (CPU, 1 thread) at L=100K,P=5000 and L=1M,P=1000 "
                        "against torch.sort")
    g.add_argument("--large", action="store_true",
                   help="time exact RS on the numba engine at L=3e7, P=3000 against np.sort, with peak memory")
    g.add_argument("--compare", action="append", default=[], metavar="[LABEL=]TARGET",
                   help="also time another RS implementation on the same tensors in the --torch-engine and "
                        "--device cuda rows (e.g. the authors' code: 'authors=path/to/ranking_losses.py:RankSort'); "
                        "TARGET is 'package.module:attr' or 'file.py:attr': an autograd Function (its apply), a "
                        "module class (instantiated without arguments) or a callable, called as "
                        "f(logits, targets, 0.5); tuple outputs are summed before backward; repeatable")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: the torch adapters on CUDA tensors (engines cuda and torch) for L 1e5..1e8 and "
                        "P 1e2..1e4 against torch.sort, with peak GPU memory (needs a GPU)")


def _problem(L, P, rng, dtype=np.float32):
    s = rng.normal(1.0, 1.0, L).astype(dtype)
    t = np.zeros(L, dtype=dtype)
    idx = rng.choice(L, P, replace=False)
    s[idx] = rng.normal(-1.0, 1.0, P).astype(dtype)
    t[idx] = (1.0 - rng.random(P)).astype(dtype)
    return s, t


def _round_robin(cands, repeats):
    """{name: [times]} with every candidate timed once per round (first call run apart, untimed)."""
    for _, fn in cands:
        fn()
    times = {name: [] for name, _ in cands}
    for _ in range(repeats):
        for name, fn in cands:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def compare_targets(refs):
    """``[(label, callable)]`` for ``--compare`` values ``[LABEL=]TARGET`` (see :func:`add_arguments`).
    Raises :class:`~rankspec.conformance.commands._common.UsageError` naming the bad value."""
    from .commands._common import UsageError
    from ._targets.resolve import TargetError, resolve

    out = []
    for ref in refs or ():
        label, sep, target = ref.partition("=")
        if not sep:
            label, target = "", ref
        try:
            obj = resolve(target)[0]
        except TargetError as exc:
            raise UsageError(f"--compare {ref!r}: {exc}") from None
        import torch

        if isinstance(obj, type) and issubclass(obj, torch.autograd.Function):
            fn = obj.apply
        elif isinstance(obj, type):
            try:
                fn = obj()
            except Exception as exc:
                raise UsageError(f"--compare {ref!r}: {obj.__name__}() failed ({type(exc).__name__}: {exc}); "
                                 f"name a callable or an autograd Function instead") from None
        elif callable(obj):
            fn = obj
        else:
            raise UsageError(f"--compare {ref!r}: {type(obj).__name__} is not callable")
        out.append((label or target.rsplit(":", 1)[1], fn))
    return out


def _compare_run(fn, x, y, sync=None):
    """Forward + backward of one --compare implementation (tuple / list / dict outputs summed)."""
    def run():
        x.grad = None
        out = fn(x, y, 0.5)
        if isinstance(out, dict):
            out = list(out.values())
        if isinstance(out, (tuple, list)):
            out = sum(o.sum() for o in out)
        out.sum().backward()
        if sync is not None:
            sync()
    return run


def _guarded(cands):
    """Drop (with a row saying why) --compare candidates that fail on their first call."""
    kept, failed = [], []
    for name, fn in cands:
        try:
            fn()
        except Exception as exc:  # the compared code is not ours: report, do not crash the bench
            failed.append((name, f"{type(exc).__name__}: {exc}"[:160]))
            continue
        kept.append((name, fn))
    return kept, failed


def torch_engine_rows(repeats=5, cases=((100_000, 5000), (1_000_000, 1000)), seed=0, compare=()):
    import torch

    from rankspec.adapters.torch import functional as TF

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        rng = np.random.default_rng(seed)
        for L, P in cases:
            s, t = _problem(L, P, rng)
            x = torch.tensor(s, requires_grad=True)
            y = torch.tensor(t)

            def loss_fn(engine):
                def run():
                    x.grad = None
                    TF.rs_loss(x, y, 0.5, engine=engine).backward()
                return run
            cands = [("torch.sort", lambda: torch.sort(x.detach())), ("rs torch engine", loss_fn("torch")),
                     ("rs numba engine", loss_fn("numba"))]
            extra, failed = _guarded([(f"rs {label}", _compare_run(fn, x, y)) for label, fn in compare])
            rows += [{"table": "torch-engine", "L": L, "row": f"{name} failed: {why}"} for name, why in failed]
            cands += extra
            times = _round_robin(cands, repeats)
            base = min(times["torch.sort"])
            for name, ts in times.items():
                rows.append({"table": "torch-engine", "L": L, "P": P, "row": name, "min_s": min(ts),
                             "median_s": statistics.median(ts), "ratio_min": min(ts) / base,
                             "target": 3.0 if name == "rs torch engine" else None})
    finally:
        torch.set_num_threads(threads)
    return rows


def large_rows(repeats=5, L=30_000_000, P=3000, seed=0):
    from rankspec.refimpl import rs_loss

    rng = np.random.default_rng(seed)
    s, t = _problem(L, P, rng)
    inputs = s.nbytes + t.nbytes
    rs_loss(s[:100_000], t[:100_000], 0.5, backend="numba")  # compile / load the kernels
    cands = [("np.sort", lambda: np.sort(s)), ("rs numba exact", lambda: rs_loss(s, t, 0.5, backend="numba"))]
    times = _round_robin(cands, repeats)
    peak = {}
    for name, fn in cands:
        tracemalloc.start()
        fn()
        peak[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    base = min(times["np.sort"])
    return [{"table": "large", "L": L, "P": P, "row": name, "min_s": min(ts), "median_s": statistics.median(ts),
             "ratio_min": min(ts) / base, "peak_bytes": peak[name], "input_bytes": inputs,
             "memory_ratio": peak[name] / inputs, "target": 1.0 if name != "np.sort" else None}
            for name, ts in times.items()]


def device_rows(repeats=5, sizes=CUDA_SIZES, positives=CUDA_POSITIVES, seed=0, engines=("cuda", "torch"),
                compare=()):
    import torch

    from rankspec.adapters.torch import functional as TF

    rows = []
    free = torch.cuda.mem_get_info()[0]
    gen = torch.Generator(device="cuda").manual_seed(seed)
    for L in sizes:
        # float32 logits + targets + float64 copies, gradient and the engines' O(N) work arrays: ~64 bytes / logit
        if 64 * L > 0.8 * free:
            rows.append({"table": "cuda", "L": L, "row": "skipped (GPU memory)"})
            continue
        for P in positives:
            if P >= L:
                continue
            s = torch.randn(L, device="cuda", generator=gen) + 1.0
            t = torch.zeros(L, device="cuda")
            idx = torch.randperm(L, device="cuda", generator=gen)[:P]
            s[idx] -= 2.0
            t[idx] = 1.0 - torch.rand(P, device="cuda", generator=gen)
            x = s.clone().requires_grad_(True)

            def loss_fn(engine):
                def run():
                    x.grad = None
                    TF.rs_loss(x, t, 0.5, engine=engine).backward()
                    torch.cuda.synchronize()
                return run

            def sort():
                torch.sort(s)
                torch.cuda.synchronize()
            cands = [("torch.sort", sort)] + [(f"rs engine={e}", loss_fn(e)) for e in engines]
            extra, failed = _guarded([(f"rs {label}", _compare_run(fn, x, t, torch.cuda.synchronize))
                                      for label, fn in compare])
            rows += [{"table": "cuda", "L": L, "row": f"{name} failed: {why}"} for name, why in failed]
            cands += extra
            times = _round_robin(cands, repeats)
            base = min(times["torch.sort"])
            for name, fn in cands:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                fn()
                peak = torch.cuda.max_memory_allocated() - before
                ts = times[name]
                rows.append({"table": "cuda", "L": L, "P": P, "row": name, "min_s": min(ts),
                             "median_s": statistics.median(ts), "ratio_min": min(ts) / base,
                             "peak_gpu_bytes": peak, "input_bytes": 8 * L})
            del s, t, x
            torch.cuda.empty_cache()
    return rows


def format_rows(rows):
    lines = [f"{'table':12} {'L':>11} {'P':>6}  {'row':22} {'min ms':>10} {'median ms':>10} {'ratio':>7} "
             f"{'peak MiB':>9} {'mem/in':>7}"]
    for r in rows:
        if "min_s" not in r:
            lines.append(f"{r['table']:12} {r['L']:>11} {'':>6}  {r['row']}")
            continue
        peak = r.get("peak_bytes", r.get("peak_gpu_bytes"))
        mem = f"{peak / 2**20:>9.1f}" if peak is not None else f"{'':>9}"
        memr = f"{peak / r['input_bytes']:>7.2f}" if peak is not None else f"{'':>7}"
        tgt = f"   (target <= {r['target']:g}x)" if r.get("target") else ""
        lines.append(f"{r['table']:12} {r['L']:>11} {r['P']:>6}  {r['row']:22} {r['min_s'] * 1e3:>10.2f} "
                     f"{r['median_s'] * 1e3:>10.2f} {r['ratio_min']:>7.2f} {mem} {memr}{tgt}")
    lines.append("ratio: min time / min time of the sort (torch.sort or np.sort) of the same logits, same loop; "
                 "mem/in: peak memory of the call / bytes of the input arrays")
    return "\n".join(lines)


def run_extra(args):
    """Run the rows the options ask for; None when none was asked (the ordinary bench runs), else
    the exit code (the ordinary bench is skipped)."""
    from .commands._common import UsageError

    if getattr(args, "compare", None) and not (getattr(args, "torch_engine", False)
                                               or getattr(args, "device", "cpu") == "cuda"):
        raise UsageError("--compare times other implementations in the --torch-engine and --device cuda rows; "
                         "add one of them")
    wanted = getattr(args, "torch_engine", False) or getattr(args, "large", False) or \
        getattr(args, "device", "cpu") == "cuda"
    if not wanted:
        return None
    repeats = args.repeats or 5
    compare = compare_targets(getattr(args, "compare", None))
    rows = []
    if args.device == "cuda":
        import torch

        from rankspec.adapters.torch._engine import _cuda_ok

        if not torch.cuda.is_available() or not _cuda_ok():
            raise UsageError("--device cuda needs a CUDA GPU visible to torch and numba.cuda (not the simulator); "
                             "none here")
        sizes = tuple(args.sizes) if args.sizes else CUDA_SIZES
        rows += device_rows(repeats=repeats, sizes=sizes, compare=compare)
    if args.torch_engine:
        rows += torch_engine_rows(repeats=repeats, compare=compare)
    if args.large:
        rows += large_rows(repeats=repeats)
    from .bench import machine_info

    report = {"machine": machine_info(), "rows": rows}
    text = format_rows(rows)
    print(text, flush=True)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "bench_extra.json"), "w") as fh:
        json.dump(report, fh, indent=1)
    with open(os.path.join(args.output, "bench_extra.txt"), "w") as fh:
        fh.write(text + "\n")
    print(f"wrote {os.path.join(args.output, 'bench_extra.json')}, {os.path.join(args.output, 'bench_extra.txt')}")
    return 0

"""``rankspec bench`` end to end (issue 5, Sec. 3): outputs exist and parse; no timing assertions.

The command runs in a subprocess, as a user would run it, with tiny sizes so that the test stays
quick; the full protocol is exercised by ``rankspec bench`` itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rankspec.conformance.bench import BenchConfig, format_table, make_problem, run_bench


def _run(args, tmp_path):
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)  # the simulator is for correctness tests, not timings
    return subprocess.run([sys.executable, "-m", "rankspec.conformance", "bench", *args],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)


def test_bench_quick_writes_table_json_and_png(tmp_path):
    out = tmp_path / "bench"
    proc = _run(["--quick", "--sizes", "2000,8000", "--percents", "1,5", "--repeats", "2",
                 "--output", str(out), "--progress"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    # the table on stdout: a header, a np.sort line per cell and the exact fast path
    assert "algorithm" in proc.stdout and "np.sort" in proc.stdout and "exact" in proc.stdout
    assert "[" in proc.stderr and "/" in proc.stderr  # the progress bar was drawn on stderr
    report = json.loads((out / "bench.json").read_text())
    assert {"machine", "config", "cells", "results", "targets"} <= set(report)
    assert report["config"]["sizes"] == [2000, 8000] and report["config"]["repeats"] == 2
    cells = {(c["loss"], c["L"], c["m"]) for c in report["cells"]}
    assert cells == {(loss, L, m) for loss in ("rs", "ap") for L in (2000, 8000) for m in (1.0, 5.0)}
    algs = {(r["algorithm"], r["backend"]) for r in report["results"]}
    assert {("reference", "numpy"), ("bucketed", "numpy"), ("bucketed", "numba"), ("exact", "numba")} <= algs
    for r in report["results"]:
        assert r["min_s"] > 0 and r["median_s"] >= r["min_s"] and r["first_call_s"] > 0
        assert r["ratio_min"] == pytest.approx(r["min_s"] / next(
            c["sort_min_s"] for c in report["cells"] if (c["loss"], c["L"], c["m"]) == (r["loss"], r["L"], r["m"])))
        if r["algorithm"] == "reference":  # the reference and the exact fast path compute the same loss
            assert r["abs_diff_vs_exact"] < 1e-9
    assert len(report["targets"]) == 2 and not any(t["measured"] for t in report["targets"])
    png = (out / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert (out / "bench.txt").read_text().startswith("loss")


@pytest.mark.parametrize("args, msg", [
    (["--sizes", "0"], "--sizes must be positive"),
    (["--percents", "150"], "--percents must lie in"),
    (["--losses", "dr"], "--losses must be"),
    (["--losses", "rs,rankdet-exp"], "--losses must be"),
    (["--backends", "tpu"], "--backends must be"),
    (["--repeats", "0"], "--repeats must be"),
])
def test_bench_usage_errors(tmp_path, args, msg):
    proc = _run(args + ["--output", str(tmp_path / "x")], tmp_path)
    assert proc.returncode == 2 and msg in proc.stderr
    assert not (tmp_path / "x").exists()


def test_make_problem_follows_the_protocol():
    """BRL Sec. 4.1.1: m % positives, positive logits ~ N(-1, 1), negatives ~ N(1, 1), IoU in (0, 1]."""
    s, t, lab, P = make_problem(200_000, 2.0, np.random.default_rng(0))
    assert P == 4000 and s.dtype == np.float32 and int(lab.sum()) == P
    pos = t > 0
    assert abs(s[pos].mean() + 1) < 0.05 and abs(s[~pos].mean() - 1) < 0.01
    assert abs(s[pos].std() - 1) < 0.05 and abs(s[~pos].std() - 1) < 0.01
    assert t[pos].min() > 0 and t[pos].max() <= 1 and abs(t[pos].mean() - 0.5) < 0.02
    assert make_problem(10, 0.1, np.random.default_rng(0))[3] == 1  # at least one positive


def test_run_bench_in_process_skips_the_reference_where_it_is_quadratic():
    cfg = BenchConfig(sizes=(3000,), percents=(5.0,), losses=("ap",), repeats=1, reference_max_pairs=1e5)
    report = run_bench(cfg, progress=False)
    algs = {(r["algorithm"], r["backend"]) for r in report["results"]}
    assert ("reference", "numpy") not in algs and ("exact", "numba") in algs  # 150 * 3000 > 1e5
    assert "np.sort" in format_table(report)


def test_run_bench_other_families_and_torch_rows():
    """--losses ape,pe,rankdet,rankdet-sigmoid and --backends numba,torch: rows exist, the fast paths
    compute the reference's loss, the torch adapters' two engines the numba path's (to float32)."""
    cfg = BenchConfig(sizes=(1500,), percents=(2.0,), losses=("rs", "ape", "pe", "rankdet", "rankdet-sigmoid"),
                      backends=("numba", "torch"), repeats=1)
    report = run_bench(cfg, progress=False)
    rows = {(r["loss"], r["algorithm"], r["backend"]): r for r in report["results"]}
    for loss in ("ape", "pe", "rankdet", "rankdet-sigmoid"):
        assert rows[(loss, "reference", "numpy")]["abs_diff_vs_exact"] < 1e-9
        assert (loss, "exact", "numba") in rows and not any(k[0] == loss and "torch" in k[2] for k in rows)
    for alg in ("exact", "bucketed"):
        for backend in ("torch", "torch/numba"):
            assert rows[("rs", alg, backend)]["min_s"] > 0
    for backend in ("torch", "torch/numba"):  # the adapters return the loss in the logits' dtype, float32
        assert rows[("rs", "exact", backend)]["abs_diff_vs_exact"] < 1e-6
    table = format_table(report)
    assert "rankdet-sigmoid" in table and "torch/numba" in table
    small = BenchConfig(sizes=(1500,), percents=(2.0,), losses=("ap",), backends=("torch",), repeats=1,
                        torch_max_size=1000)
    assert not any(r["backend"].startswith("torch") for r in run_bench(small, progress=False)["results"])


_COMPARED = '''
import torch
from rankspec.adapters.torch import functional as TF


class RankSort(torch.autograd.Function):
    """The authors' signature: forward(ctx, logits, targets, delta_RS=0.5, eps=1e-10) -> (ranking, sorting)."""
    @staticmethod
    def forward(ctx, logits, targets, delta_RS=0.5, eps=1e-10):
        with torch.enable_grad():
            x = logits.detach().requires_grad_(True)
            loss = TF.rs_loss(x, targets, delta_RS, engine="torch")
            loss.backward()
        ctx.save_for_backward(x.grad)
        return loss.detach(), loss.detach() * 0

    @staticmethod
    def backward(ctx, g1, g2):
        (g,) = ctx.saved_tensors
        return g * g1, None, None, None


class Module(torch.nn.Module):
    def forward(self, logits, targets, delta):
        return TF.rs_loss(logits, targets, delta, engine="torch")


def broken(logits, targets, delta):
    raise RuntimeError("not today")


NOT_CALLABLE = 3
'''


def test_bench_compare_times_other_implementations_on_the_same_tensors(tmp_path):
    pytest.importorskip("torch")
    from rankspec.conformance import bench_device as B

    path = tmp_path / "compared.py"
    path.write_text(_COMPARED)
    cmp = B.compare_targets([f"authors={path}:RankSort", f"{path}:Module", f"{path}:broken"])
    assert [label for label, _ in cmp] == ["authors", "Module", "broken"]
    rows = B.torch_engine_rows(repeats=1, cases=((3000, 30),), compare=cmp)
    names = [r["row"] for r in rows]
    assert "rs authors" in names and "rs Module" in names
    # the compared code failing is a row that says so, not a crashed bench
    assert any(n.startswith("rs broken failed: RuntimeError: not today") for n in names)
    timed = {r["row"]: r for r in rows if "min_s" in r}
    assert timed["rs authors"]["min_s"] > 0 and timed["torch.sort"]["ratio_min"] == 1.0


@pytest.mark.parametrize("ref, msg", [("nothere.py:f", "does not exist"), ("{path}:NOT_CALLABLE", "not callable"),
                                      ("{path}:missing", "has no attribute")])
def test_bench_compare_usage_errors(tmp_path, ref, msg):
    pytest.importorskip("torch")
    path = tmp_path / "compared.py"
    path.write_text(_COMPARED)
    proc = subprocess.run([sys.executable, "-m", "rankspec.conformance.cli", "bench", "--torch-engine", "--compare",
                           ref.format(path=path), "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--compare" in proc.stderr and msg in proc.stderr, proc.stderr


def test_bench_compare_needs_rows_that_use_it(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rankspec.conformance.cli", "bench", "--compare", "x.py:f",
                           "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "add one of them" in proc.stderr

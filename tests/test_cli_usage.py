"""User mistakes in every command: one ``error:`` line, exit code 2, no traceback, no work done first;
and finished work is never lost to a plotting or output problem (issue 13, CLI part).

Every mistake runs through the CLI in a subprocess, as a user would type it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rankspec.conformance import cli
from rankspec.conformance.commands._common import UsageError
from rankspec.conformance.commands._paths import check_output_dir, check_output_file
from rankspec.conformance.commands._suggest import did_you_mean, suggest

INSTALL_HINT = 'pip install -e ".[extras]"'  # the README's install from a clone


def _env(stub: Path | None = None):
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    if stub is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(stub)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def rankspec(*args, cwd=None, stub=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "rankspec.conformance", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=_env(stub), timeout=timeout)


def assert_usage_error(proc, *fragments):
    """Exit code 2, exactly one line on stderr, an ``error:`` line, no traceback anywhere."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert re.match(r"^rankspec( [\w-]+)*: error: ", lines[0]), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _missing(tmp_path: Path, module: str) -> Path:
    """A directory to put first on PYTHONPATH that makes ``import module`` fail like a missing package."""
    stub = tmp_path / f"no-{module}"
    (stub / module).mkdir(parents=True)
    (stub / module / "__init__.py").write_text(f"raise ImportError(\"No module named {module!r} (test stub)\")\n")
    return stub


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a-file.txt"
    path.write_text("not a directory\n")
    return path


# ------------------------------------------------------------------------------------------------
# did you mean
# ------------------------------------------------------------------------------------------------

def test_suggest_by_hand():
    losses = ["ap", "ap-interp", "rs", "bap", "brs", "rankdet-global", "giou"]
    assert suggest("rank-sort", losses) == "rs"  # initials of a multi-word name
    assert suggest("Average_Precision", losses) == "ap"
    assert suggest("RS", losses) == "rs"  # case
    assert suggest("rankdet-g", losses) == "rankdet-global"  # unique prefix
    assert suggest("gioux", losses) == "giou"  # spelling
    assert suggest("chek", ["check", "check-head", "bench"]) == "check"
    assert suggest("zzzzzz", losses) is None and did_you_mean("zzzzzz", losses) == ""
    assert did_you_mean("rank-sort", losses) == "; did you mean 'rs'?"


@pytest.mark.parametrize("argv, fragments", [
    (["chek"], ["unknown command 'chek'", "did you mean 'check'?"]),
    (["check", "--loss", "rank-sort"], ["--loss", "'rank-sort'", "did you mean 'rs'?"]),
    (["check-head", "--head", "dense3d"], ["did you mean 'dense2d'?"]),
    (["vectors", "exprt", "x"], ["unknown command 'exprt'", "did you mean 'export'?"]),
    (["vectors"], ["a sub-command is required"]),
    (["demo", "4d"], ["invalid choice '4d'"]),
    (["demo", "2d", "--losses", "Focal"], ["did you mean 'focal'?"]),
    (["bench", "--losses", "rank-sort"], ["--losses", "did you mean 'rs'?"]),
    (["bench", "--backends", "numbaa"], ["--backends", "did you mean 'numba'?"]),
    (["bench", "--sizes", "1e999"], ["--sizes", "expected comma-separated integers"]),
    (["bench", "--percents", "150"], ["--percents must lie in"]),
    (["equations", "--paper", "rankdt"], ["unknown paper key 'rankdt'", "did you mean 'RankDet'?"]),
    (["equations", "--format", "yaml"], ["invalid choice 'yaml'"]),
    (["selftest", "--theorem-cases", "0"], ["--theorem-cases must be >= 1"]),
    (["--no-such-flag"], ["unrecognized arguments"]),
    (["check", "--examples", "many"], ["--examples", "invalid int value"]),
])
def test_mistakes_are_one_error_line_and_exit_2(argv, fragments):
    assert_usage_error(rankspec(*argv), *fragments)


def test_paper_keys_are_case_insensitive():
    lower, upper = rankspec("equations", "--paper", "rs"), rankspec("equations", "--paper", "RS")
    assert lower.returncode == upper.returncode == 0, lower.stderr
    assert lower.stdout == upper.stdout and "rs_loss" in lower.stdout
    assert lower.stdout.startswith("The") is False and "equations of RS" in lower.stdout.splitlines()[0]


# ------------------------------------------------------------------------------------------------
# output paths: checked before any work
# ------------------------------------------------------------------------------------------------

def test_check_output_file_and_dir_rules(tmp_path, a_file):
    assert check_output_file(None) is None and check_output_dir(None) is None
    assert check_output_file(tmp_path / "new.txt") == tmp_path / "new.txt"  # a new file in an existing dir
    assert check_output_file(a_file) == a_file  # overwriting a file is allowed
    assert check_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"  # created later by the command
    assert check_output_dir(tmp_path) == tmp_path
    cases = [
        (check_output_file, tmp_path / "no" / "such" / "r.txt", "does not exist"),
        (check_output_file, tmp_path, "it is a directory"),
        (check_output_file, a_file / "r.txt", "is a file, not a directory"),
        (check_output_file, "", "empty"),
        (check_output_dir, a_file, "it is a file"),
        (check_output_dir, a_file / "sub", "cannot be created"),
    ]
    for fn, path, why in cases:
        with pytest.raises(UsageError, match=re.escape(why)) as info:
            fn(path, "--output")
        assert str(info.value).startswith("cannot write to ") and "--output" in str(info.value)
    assert not (tmp_path / "a").exists()  # nothing was created


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_directory_is_reported(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(UsageError, match="not writable"):
            check_output_file(ro / "r.txt")
        with pytest.raises(UsageError, match="not writable"):
            check_output_dir(ro / "sub")
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("make_argv, fragment", [
    (lambda t, f: ["check", "--loss", "ap", "--output", t / "no" / "dir" / "report.txt"], "does not exist"),
    (lambda t, f: ["check", "--loss", "ap", "--format", "junit", "--output", t], "it is a directory"),
    (lambda t, f: ["check-head", "--head", "dense2d", "--loss", "rs", "--output", t], "it is a directory"),
    (lambda t, f: ["bench", "--quick", "--output", f], "it is a file"),
    (lambda t, f: ["bench", "--quick", "--output", f / "sub"], "cannot be created"),
    (lambda t, f: ["demo", "2d", "--output", f], "it is a file"),
    (lambda t, f: ["vectors", "export", f], "it is a file"),
    (lambda t, f: ["vectors", "verify", t, "--output", t], "it is a directory"),
])
def test_bad_output_paths_fail_before_any_work(tmp_path, a_file, make_argv, fragment):
    before = sorted(p.name for p in tmp_path.iterdir())
    line = assert_usage_error(rankspec(*make_argv(tmp_path, a_file), cwd=tmp_path), "cannot write to", fragment)
    assert "--output" in line or "DIR" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no partial output anywhere


# ------------------------------------------------------------------------------------------------
# optional dependencies: checked before any work, with the README's install hint
# ------------------------------------------------------------------------------------------------

def test_missing_matplotlib_stops_bench_before_timing(tmp_path):
    stub = _missing(tmp_path, "matplotlib")
    out = tmp_path / "bench-out"
    line = assert_usage_error(rankspec("bench", "--quick", "--output", out, stub=stub), "matplotlib",
                              INSTALL_HINT, "--no-plot")
    assert "rankspec[" not in line  # not an install spec that fails from a clone
    assert not out.exists()


def test_missing_matplotlib_stops_demo_before_training(tmp_path):
    pytest.importorskip("torch")
    stub = _missing(tmp_path, "matplotlib")
    out = tmp_path / "demo-out"
    assert_usage_error(rankspec("demo", "2d", "--output", out, stub=stub), "matplotlib", INSTALL_HINT, "--no-plot")
    assert not out.exists()


def test_missing_torch_stops_demo(tmp_path):
    stub = _missing(tmp_path, "torch")
    assert_usage_error(rankspec("demo", "2d", stub=stub), "PyTorch", "pip install torch")


def test_no_plot_needs_no_matplotlib(tmp_path):
    stub = _missing(tmp_path, "matplotlib")
    out = tmp_path / "b"
    proc = rankspec("bench", "--sizes", "2000", "--percents", "5", "--losses", "rs", "--repeats", "1",
                    "--no-plot", "--output", out, stub=stub)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.txt"]
    assert json.loads((out / "bench.json").read_text())["config"]["sizes"] == [2000]


def test_demo_no_plot_writes_the_json_without_matplotlib(tmp_path):
    pytest.importorskip("torch")
    stub = _missing(tmp_path, "matplotlib")
    out = tmp_path / "d"
    proc = rankspec("demo", "3d", "--steps", "2", "--eval-every", "2", "--num-train", "4", "--num-val", "2",
                    "--losses", "focal", "--output", out, "--no-plot", "--progress", stub=stub)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["demo_3d.json"]
    assert len(json.loads((out / "demo_3d.json").read_text())["histories"]["focal"]["total"]) == 2
    # progress: the bar (loss and training step) went to stderr
    assert "focal: step" in proc.stderr and "/2" in proc.stderr


# ------------------------------------------------------------------------------------------------
# a plot failing after the work: the results are written, exit code 3, one error line
# ------------------------------------------------------------------------------------------------

def _boom(*args, **kwargs):
    raise RuntimeError("simulated plotting failure")


def test_bench_plot_failure_keeps_the_results(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    import rankspec.conformance.bench as bench

    monkeypatch.setattr(bench, "plot", _boom)
    out = tmp_path / "b"
    code = cli.main(["bench", "--sizes", "2000", "--percents", "5", "--losses", "rs", "--repeats", "1",
                     "--output", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == cli.EXIT_PLOT == 3
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.txt"]
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "simulated plotting failure" in errors[0] and "bench.json" in errors[0]
    assert "np.sort" in captured.out  # the table was printed too


def test_demo_plot_failure_keeps_the_results(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    import rankspec.adapters.demo as demo

    monkeypatch.setattr(demo, "plot_result", _boom)
    out = tmp_path / "d"
    code = cli.main(["demo", "3d", "--steps", "2", "--eval-every", "2", "--num-train", "4", "--num-val", "2",
                     "--losses", "focal", "--output", str(out), "--quiet", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 3
    assert sorted(p.name for p in out.iterdir()) == ["demo_3d.json"]
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "simulated plotting failure" in errors[0] and "demo_3d.json" in errors[0]
    assert "final (held-out):" in captured.out


def test_exit_codes_are_documented_in_help():
    top = rankspec("--help")
    assert top.returncode == 0
    for code in ("0 ", "1 ", "2 ", "3 "):
        assert re.search(rf"^\s+{code}", top.stdout, re.M), code
    for command in ("bench", "demo"):
        page = rankspec(command, "--help").stdout
        assert "--no-plot" in page and re.search(r"^\s+3\s+.*written", page, re.M), command


# ------------------------------------------------------------------------------------------------
# reports that say what they mean
# ------------------------------------------------------------------------------------------------

def _row_ratio(line):
    """The err/allowed cell of a report row (the column after base atol/rtol)."""
    m = re.search(r"\s\d\.?\d*e-\d\d/\d\.?\d*e-\d\d\s+(\S+)", line)
    return float(m.group(1))


def test_check_report_states_the_rule_and_shows_the_compared_quantity():
    """The text report prints the pass rule and, per row, the worst error / allowed error, which is
    <= 1 exactly on the rows marked ok (a conformant and a nonconformant target)."""
    from rankspec.conformance import check
    from rankspec.refimpl import ap_loss

    def good(s, t, d):
        r = ap_loss(s, t, d)
        return r.loss, r.grad

    def bad(s, t, d):  # a self-rank convention the reference does not use
        r = ap_loss(s, t, d, self_rank="h0")
        return r.loss, r.grad

    for target, verdict in ((good, "ok"), (bad, "FAIL")):
        report = check(target, "ap", examples=15, dtypes=["float64"], shrink=False, diagnose=False)
        text = report.format_text(reproducers=False)
        assert "pass rule:" in text and "|got - ref| <= atol + rtol * |ref|" in text
        assert "err/allowed" in text
        rows = [line for line in text.splitlines() if line.rstrip().endswith((" ok", " FAIL"))]
        assert rows
        for line in rows:
            ratio = _row_ratio(line)
            assert (ratio <= 1) == line.rstrip().endswith(" ok"), line
        assert any(line.rstrip().endswith(verdict) for line in rows)
        for r in report.results:
            assert (r.max_score <= 1) == r.conformant
            assert r.to_dict()["max_error_ratio"] == pytest.approx(r.max_score)


def test_vectors_verify_header_fits_the_command(tmp_path):
    proc = rankspec("vectors", "export", tmp_path / "v", "--loss", "ap", "--examples", "2", "--no-recorded")
    assert proc.returncode == 0, proc.stderr
    proc = rankspec("vectors", "verify", tmp_path / "v", "--no-shrink")
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("rankspec vectors verify") and "generated example" not in first
    assert "stored case" in first


def test_demo_table_has_no_nan_train_loss_at_step_0():
    from rankspec.adapters.demo import format_report
    from rankspec.adapters.demo.report import DemoResult, History

    h = History("rs", steps=[1, 2], total=[2.0, 1.0], rho_train=[0.1, 0.2], eval_steps=[0, 2],
                rho_val=[0.0, 0.3], loss_val=[2.0, 1.5], ap_val=[{"AP50": 0.1}, {"AP50": 0.4}])
    result = DemoResult("2d", 0, {"steps": 2, "batch_size": 1, "lr": 1e-3}, {"rs": h})
    text = format_report(result)
    assert "nan" not in text
    row0 = next(line for line in text.splitlines() if re.match(r"^\s+0\s", line))
    assert row0.split()[1] == "-"
    row2 = next(line for line in text.splitlines() if re.match(r"^\s+2\s", line))
    assert float(row2.split()[1]) == pytest.approx(1.5)  # mean of the steps since the last row: (2 + 1) / 2

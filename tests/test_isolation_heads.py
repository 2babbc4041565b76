"""Integrity attacks on ``rankspec check-head``: no head target may make the check pass, kill the harness, hang
it or lose the report (issue 10, item 1).

The head target runs in a worker process (:mod:`rankspec.conformance._worker`, request ``make-head``): its
import, forward and backward happen there, only the loss entries and the raw-output gradients come back (as
NumPy), and the oracle, the comparison and the verdict stay in the harness.  Each attack is a small target file
run through the real command line (a subprocess): whatever it does - exit, crash, hang, patch the harness - is
that target's failure, exit code 1 with a report that says what happened, never 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from rankspec.conformance._usage import UsageProblem
from rankspec.conformance.heads import check_head

GOOD = textwrap.dedent('''
    from rankspec.adapters.heads import dense2d_loss

    def good(*args, **kwargs):
        return dense2d_loss(*args, **kwargs)
''')

ATTACKS = {
    "good": GOOD,
    # exits at import: the harness never imports the target itself
    "exit_at_import": "import sys\nsys.exit(0)\n" + GOOD,
    "os_exit_at_import": "import os\nos._exit(0)\n" + GOOD,
    # exits in a call
    "sys_exit": GOOD + textwrap.dedent('''
        import sys
        def attack(*args, **kwargs):
            sys.exit(0)
    '''),
    "os_exit": GOOD + textwrap.dedent('''
        import os
        def attack(*args, **kwargs):
            os._exit(0)
    '''),
    # exact on the first call of each worker, then kills it: the restarts end, the target is not called again
    "os_exit_mid_run": GOOD + textwrap.dedent('''
        import os
        CALLS = [0]
        def attack(*args, **kwargs):
            CALLS[0] += 1
            if CALLS[0] > 1:
                os._exit(0)
            return good(*args, **kwargs)
    '''),
    "segfault": GOOD + textwrap.dedent('''
        import ctypes
        def attack(*args, **kwargs):
            ctypes.string_at(0)
    '''),
    "hang": GOOD + textwrap.dedent('''
        import time
        def attack(*args, **kwargs):
            time.sleep(3600)
    '''),
    # patches every comparison of the harness it can reach so that everything "agrees", then returns zeros
    "monkeypatch": textwrap.dedent('''
        import torch
        import rankspec.conformance._compare as _compare
        import rankspec.conformance.heads as heads
        from rankspec.conformance._compare import Comparison

        def _always_ok(*args, **kwargs):
            return Comparison(ok=True)

        def attack(*args, **kwargs):
            _compare.compare = _always_ok
            heads.compare_head = _always_ok
            heads.HeadKind.compare = lambda self, *a, **k: Comparison(ok=True)
            zero = torch.zeros((), dtype=torch.float64)
            return {"loss_rank": zero, "loss_sort": zero}
    '''),
    # prints a fake JSON report to stdout, then returns zeros
    "stdout_spam": textwrap.dedent('''
        import os, torch
        print('{"conformant": true, "results": []}')
        def attack(*args, **kwargs):
            print('{"conformant": true}' * 20)
            os.write(1, b"raw fd write\\n")
            zero = torch.zeros((), dtype=torch.float64)
            return {"loss_rank": zero, "loss_sort": zero}
    '''),
}


def run_cli(*args, timeout=600):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "rankspec.conformance", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def attack_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("head_attacks")
    for name, code in ATTACKS.items():
        (d / f"{name}.py").write_text(code)
    return d


def _check(attack_dir, name, *extra, attr="attack", fmt="json", timeout=600):
    report = attack_dir / f"{name}.{fmt}"
    out = run_cli("check-head", f"{attack_dir / (name + '.py')}:{attr}", "--head", "dense2d", "--loss", "rs",
                  "--scenario", "crowded", "--examples", "3", "--dtype", "float64", "--no-progress",
                  "--format", fmt, "--output", str(report), "--shrink-seconds", "2", *extra, timeout=timeout)
    return out, report


def _json_rows(report):
    data = json.loads(report.read_text() if hasattr(report, "read_text") else report)
    rows = [r for loss in data["losses"] for r in loss["results"]]
    assert rows and all(not r["conformant"] for r in rows) and not data["conformant"]
    return rows


@pytest.mark.parametrize("name,attr,words", [
    ("exit_at_import", "good", "sys.exit(0)"),
    ("os_exit_at_import", "good", "exited with status 0"),
    ("sys_exit", "attack", "sys.exit(0)"),
    ("os_exit", "attack", "exited with status 0"),
    ("os_exit_mid_run", "attack", "exited with status 0"),
    ("segfault", "attack", "SIGSEGV"),
])
def test_an_exit_or_crash_of_a_head_target_is_its_failure_with_a_report(attack_dir, name, attr, words):
    out, report = _check(attack_dir, name, attr=attr)
    assert out.returncode == 1, out.stdout + out.stderr
    assert words in json.dumps(_json_rows(report))


def test_a_head_target_that_kills_its_worker_mid_run_is_not_called_forever(attack_dir):
    out, report = _check(attack_dir, "os_exit_mid_run", "--examples", "8", "--no-shrink")
    assert out.returncode == 1, out.stdout + out.stderr
    (row,) = _json_rows(report)
    # one case passes per worker, the next kills it: after MAX_RESTARTS (3) deaths the rest is not run
    assert row["failed"] >= 1 and "not called again" in json.dumps(row)


def test_a_hanging_head_target_costs_one_time_out_for_the_whole_check(attack_dir):
    # two dtypes: the second row fails at once ("not called again") instead of waiting for another time-out;
    # the subprocess limit only guards the test run (a hang per case would take 6 x 3 s plus restarts)
    out, report = _check(attack_dir, "hang", "--call-timeout", "3", "--dtype", "float32", timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    rows = _json_rows(report)
    text = json.dumps(rows)
    assert "did not return within 3 s" in text and "not called again" in text
    assert sorted(r["dtype"] for r in rows) == ["float32", "float64"]


def test_a_head_target_that_monkeypatches_the_harness_only_patches_its_worker(attack_dir):
    out, report = _check(attack_dir, "monkeypatch")
    assert out.returncode == 1, out.stdout + out.stderr
    (row,) = _json_rows(report)
    # it returns zero losses without gradient: every crowded case has positives, so every case fails
    assert row["failed"] == row["cases"] == 3


def test_head_target_output_never_corrupts_the_json_report_on_stdout(attack_dir):
    out = run_cli("check-head", f"{attack_dir / 'stdout_spam.py'}:attack", "--head", "dense2d", "--loss", "rs",
                  "--scenario", "crowded", "--examples", "2", "--dtype", "float64", "--no-progress",
                  "--format", "json", "--no-shrink")
    assert out.returncode == 1, out.stdout + out.stderr
    _json_rows(out.stdout)  # the whole of stdout is the report, and it says nonconformant
    assert "raw fd write" not in out.stdout


@pytest.mark.parametrize("fmt", ["text", "junit"])
def test_the_head_report_is_written_in_every_format_when_the_worker_dies(attack_dir, fmt):
    out, report = _check(attack_dir, "os_exit", "--no-shrink", fmt=fmt)
    assert out.returncode == 1
    assert "exited with status 0" in report.read_text()


def test_a_correct_head_target_still_passes_in_its_worker(attack_dir):
    out, report = _check(attack_dir, "good", attr="good")
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads(report.read_text())
    assert data["conformant"] and all(r["conformant"] and r["cases"] == 3
                                      for loss in data["losses"] for r in loss["results"])


def test_the_bundled_heads_still_pass_isolated():
    out = run_cli("check-head", "--head", "dense2d", "--loss", "rs", "--scenario", "crowded", "--examples", "2",
                  "--no-progress")
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("value", ["0", "nan"])
def test_a_bad_call_timeout_is_a_usage_error(value):
    out = run_cli("check-head", "--head", "dense2d", "--loss", "rs", f"--call-timeout={value}")
    assert out.returncode == 2 and "--call-timeout" in out.stderr


def test_check_head_isolates_by_default_and_runs_an_unpicklable_target_in_process_with_a_note():
    from rankspec.adapters.heads import dense2d_loss

    kw = dict(head="dense2d", loss="rs", scenarios=["crowded"], examples=1, dtypes=["float64"])
    report = check_head(target=lambda *a, **k: dense2d_loss(*a, **k), **kw)
    assert report.conformant
    assert any("ran in this process" in n for r in report.results for n in r.notes)
    report = check_head(target=dense2d_loss, **kw)  # picklable: isolated, no note
    assert report.conformant and not any("ran in this process" in n for r in report.results for n in r.notes)
    with pytest.raises(UsageProblem, match="isolate=True"):
        check_head(target=lambda *a, **k: dense2d_loss(*a, **k), isolate=True, **kw)
    with pytest.raises(UsageProblem, match="call_timeout"):
        check_head(call_timeout=0, **kw)
    with pytest.raises(UsageProblem, match="isolate"):
        check_head(isolate="yes", **kw)

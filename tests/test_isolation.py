"""Integrity attacks on ``rankspec check``: no target behaviour may make a check pass, kill the harness or
lose the report (issue 10, items 1 and 6).

Each attack is a small target file run through the real command line (a subprocess); the target runs in a
worker process (:mod:`rankspec.conformance._worker`), so whatever it does - exit, crash, hang, print, patch
the harness, write into its input - is that target's failure: exit code 1 with a report that says what
happened, never 0.  A few cases go through :func:`rankspec.conformance.check` directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from rankspec.conformance import check
from rankspec.conformance._worker import Worker, WorkerRunner

GOOD = textwrap.dedent('''
    from rankspec.refimpl import rs_loss

    def good(logits, targets, delta):
        r = rs_loss(logits, targets, delta)
        return r.loss, r.grad
''')


def _on_large(action: str, modules: str = "") -> str:
    """A target exact on inputs of up to 20 logits that runs ``action`` on larger ones (mid-run)."""
    imports = "import numpy as np" + (f", {modules}" if modules else "")
    return GOOD + textwrap.dedent(f'''
        {imports}
        def attack(logits, targets, delta):
            if np.size(logits) > 20:
                {action}
            return good(logits, targets, delta)
    ''')


ATTACKS = {
    # exits at import: the harness never imports the target itself
    "exit_at_import": "import sys\nsys.exit(0)\n" + GOOD,
    "os_exit_at_import": "import os\nos._exit(0)\n" + GOOD,
    # exits in the probe call (the first call of all)
    "exit_in_probe": GOOD + textwrap.dedent('''
        def attack(logits, targets, delta):
            import sys
            sys.exit(0)
    '''),
    # exits mid-run: fine on small inputs, exits on the first larger one
    "exit_mid_run": _on_large('raise SystemExit(0)'),
    "os_exit_mid_run": _on_large('os._exit(0)', 'os'),
    "keyboard_interrupt": _on_large('raise KeyboardInterrupt'),
    "memory_error": _on_large('raise MemoryError("out of memory")'),
    "segfault": _on_large('ctypes.string_at(0)', 'ctypes'),
    "hang": _on_large('time.sleep(3600)', 'time'),
    # patches the harness's comparison (and its re-export) so that everything "agrees", then returns garbage
    "monkeypatch": textwrap.dedent('''
        import numpy as np
        import rankspec.conformance._compare as _compare
        import rankspec.conformance.harness as harness
        from rankspec.conformance._compare import Comparison

        def _always_ok(*args, **kwargs):
            return Comparison(ok=True)

        def attack(logits, targets, delta):
            _compare.compare = _always_ok
            harness.compare = _always_ok
            return 0.0, np.zeros(np.shape(logits))
    '''),
    # prints a lot, also a fake JSON report, to stdout and stderr, then returns garbage
    "stdout_spam": textwrap.dedent('''
        import os, sys, numpy as np
        print('{"conformant": true, "results": []}')
        def attack(logits, targets, delta):
            print('{"conformant": true}' * 50)
            sys.stderr.write("spam " * 100 + "\\n")
            os.write(1, b"raw fd write\\n")
            return 0.0, np.zeros(np.shape(logits))
    '''),
    # writes into its caller's input, otherwise exact
    "mutates_input": GOOD + textwrap.dedent('''
        import numpy as np
        def attack(logits, targets, delta):
            out = good(logits, targets, delta)
            logits[...] = 0.0
            return out
    '''),
}


def run_cli(*args, timeout=600):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "rankspec.conformance", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def attack_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("attacks")
    for name, code in ATTACKS.items():
        (d / f"{name}.py").write_text(code)
    return d


def _check(attack_dir, name, *extra, attr="attack", fmt="json"):
    report = attack_dir / f"{name}.report"
    out = run_cli("check", f"{attack_dir / (name + '.py')}:{attr}", "--loss", "rs", "--dtype", "float64",
                  "--examples", "8", "--no-vectors", "--seed", "1", "--no-progress", "--format", fmt,
                  "--output", str(report), "--shrink-seconds", "3", *extra)
    return out, report


def _json_report(report):
    data = json.loads(report.read_text() if hasattr(report, "read_text") else report)
    rows = [r for loss in data["losses"] for r in loss["results"]]
    assert rows and all(not r["conformant"] for r in rows) and not data["conformant"]
    return rows


@pytest.mark.parametrize("name,words", [
    ("exit_at_import", "sys.exit(0)"),
    ("os_exit_at_import", "exited with status 0"),
    ("exit_in_probe", "sys.exit(0)"),
])
def test_an_exit_before_the_first_case_is_a_failure_with_a_report(attack_dir, name, words):
    attr = "good" if "import" in name else "attack"
    out, report = _check(attack_dir, name, attr=attr)
    assert out.returncode == 1, out.stdout + out.stderr
    assert words in json.dumps(_json_report(report))


@pytest.mark.parametrize("name,words", [
    ("exit_mid_run", "sys.exit(0)"),
    ("os_exit_mid_run", "exited with status 0"),
    ("keyboard_interrupt", "KeyboardInterrupt"),
    ("memory_error", "MemoryError"),
    ("segfault", "SIGSEGV"),
])
def test_an_exit_or_crash_mid_run_is_the_failure_of_the_case_that_triggered_it(attack_dir, name, words):
    out, report = _check(attack_dir, name)
    assert out.returncode == 1, out.stdout + out.stderr
    row = _json_report(report)[0]
    cx = row["counterexample"]
    assert cx is not None and words in json.dumps(cx)
    # the case that triggered it is named (more than 20 logits), and the reproducer holds it
    assert cx["size"] > 20 if "size" in cx else True
    assert "reproducer" in cx and cx["reproducer"]


def test_a_hanging_target_costs_one_time_out_and_is_then_not_called_again(attack_dir):
    t0 = time.monotonic()
    out, report = _check(attack_dir, "hang", "--call-timeout", "2", "--dtype", "float32", "--examples", "30")
    elapsed = time.monotonic() - t0
    assert out.returncode == 1, out.stdout + out.stderr
    rows = _json_report(report)
    text = json.dumps(rows)
    assert "did not return within 2 s" in text
    assert "not called again" in text
    # both dtypes are reported as failures; the second did not wait for another time-out
    assert sorted(r["dtype"] for r in rows) == ["float32", "float64"]
    assert elapsed < 120


def test_a_target_that_monkeypatches_the_harness_only_patches_its_worker(attack_dir):
    out, report = _check(attack_dir, "monkeypatch")
    assert out.returncode == 1, out.stdout + out.stderr
    row = _json_report(report)[0]
    # it returns zeros: only cases whose reference is all zeros (e.g. no positive) may agree
    assert row["failed"] >= row["cases"] // 2 > 0


def test_target_output_never_corrupts_the_json_report_on_stdout(attack_dir):
    out = run_cli("check", f"{attack_dir / 'stdout_spam.py'}:attack", "--loss", "rs", "--dtype", "float64",
                  "--examples", "4", "--no-vectors", "--no-progress", "--format", "json", "--no-shrink")
    assert out.returncode == 1, out.stdout + out.stderr
    _json_report(out.stdout)  # the whole of stdout is the report, and it says nonconformant
    assert "spam" not in out.stderr and "raw fd write" not in out.stdout


def test_a_target_that_writes_into_its_input_fails_and_the_report_says_so(attack_dir):
    out, report = _check(attack_dir, "mutates_input", fmt="text")
    assert out.returncode == 1, out.stdout + out.stderr
    text = report.read_text()
    assert "wrote into its input logits" in text


@pytest.mark.parametrize("fmt", ["text", "junit"])
def test_the_report_is_written_in_every_format_when_the_worker_dies(attack_dir, fmt):
    out, report = _check(attack_dir, "os_exit_mid_run", "--no-shrink", fmt=fmt)
    assert out.returncode == 1
    text = report.read_text()
    assert "exited with status 0" in text


def test_an_unwritable_output_path_is_refused_before_any_work(attack_dir):
    t0 = time.monotonic()
    out = run_cli("check", f"{attack_dir / 'hang.py'}:attack", "--loss", "rs", "--output",
                  str(attack_dir / "no" / "such" / "dir" / "r.json"))
    assert out.returncode == 2
    assert "--output" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert time.monotonic() - t0 < 60


def test_the_correct_target_still_passes_isolated(attack_dir):
    out, report = _check(attack_dir, "exit_mid_run", attr="good")
    assert out.returncode == 0, out.stdout + out.stderr


# -- the API ---------------------------------------------------------------------------------------------------

def test_api_isolates_string_targets_and_reports_the_exit(attack_dir):
    report = check(f"{attack_dir / 'exit_mid_run.py'}:attack", "rs", examples=8, seed=1, dtypes=["float64"],
                   vectors=False, shrink_seconds=2, diagnose=False)
    assert not report.conformant
    assert "sys.exit(0)" in report.format_text()


def _exits_on_large(logits, targets, delta):
    from rankspec.refimpl import rs_loss

    if len(logits) > 20:
        sys.exit(0)
    r = rs_loss(logits, targets, delta)
    return r.loss, r.grad


def test_api_isolates_an_importable_object_on_request():
    report = check(_exits_on_large, "rs", examples=8, seed=1, dtypes=["float64"], vectors=False, isolate=True,
                   shrink_seconds=2, diagnose=False)
    assert not report.conformant and "sys.exit(0)" in report.format_text()


def test_api_in_process_still_reports_sys_exit_as_the_targets_failure():
    report = check(_exits_on_large, "rs", examples=8, seed=1, dtypes=["float64"], vectors=False, isolate=False,
                   shrink_seconds=2, diagnose=False)
    assert not report.conformant and "sys.exit(0)" in report.format_text()


def test_isolate_true_refuses_an_unpicklable_callable():
    from rankspec.conformance import UsageProblem

    with pytest.raises(UsageProblem, match="isolate"):
        check(lambda x, t, d: (0.0, x), "rs", examples=1, isolate=True)


def test_worker_runner_stops_after_a_time_out(attack_dir):
    from rankspec.conformance import _cases
    from rankspec.conformance._targets import TargetFailure
    from rankspec.conformance.specs import get_spec

    spec = get_spec("rs")
    worker = Worker()
    try:
        worker.make("k", f"{attack_dir / 'hang.py'}:attack", "rs", {}, 2.0)
        runner = WorkerRunner(worker, "k", 1.0)
        small = _cases.probe_case(spec, "float64", 0.5)
        assert runner(small).loss >= 0  # the small probe case runs
        big = _cases.random_cases(spec, _cases.CaseConfig(dtype="float64", delta=0.5), 40, 0)
        big = next(c for c in big if c.size > 20)
        with pytest.raises(TargetFailure, match="did not return"):
            runner(big)
        t0 = time.monotonic()
        with pytest.raises(TargetFailure, match="not run"):
            runner(small)
        assert time.monotonic() - t0 < 1
    finally:
        worker.close()

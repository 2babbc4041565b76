"""The ``rankspec selftest`` and ``rankspec equations`` commands, run as a user runs them.

Subprocesses use ``sys.executable -m rankspec.conformance`` (the same entry point as the
``rankspec`` console script) so the tests do not depend on PATH.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from rankspec.refimpl.registry import entries
from rankspec.refimpl.vectors import OFFICIAL, UNRELIABLE, load_official


def rankspec(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "rankspec.conformance", *args], capture_output=True,
                          text=True, timeout=timeout)


def table_rows(stdout):
    """{check: [compared, skipped, max loss err, max grad err, tol, result]} from the selftest table."""
    rows = {}
    for line in stdout.splitlines():
        m = re.match(r"^((?:vectors|theorem): .+?)\s{2,}(\d+)\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(agree|DISAGREE)\s*$",
                     line)
        if m:
            rows[m.group(1)] = [int(m.group(2)), int(m.group(3)), float(m.group(4)), float(m.group(5)),
                                float(m.group(6)), m.group(7)]
    return rows


@pytest.fixture(scope="module")
def selftest_run():
    return rankspec("selftest")


def test_selftest_exits_zero_and_prints_the_table(selftest_run):
    proc = selftest_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "selftest passed" in proc.stdout
    header = next(line for line in proc.stdout.splitlines() if line.startswith("check"))
    for column in ("compared", "skipped", "max |loss err|", "max |grad err|", "tol", "result"):
        assert column in header
    rows = table_rows(proc.stdout)
    expected = {f"vectors: {name}" for name in OFFICIAL} | {"theorem: BAP == AP at delta=0",
                                                             "theorem: BRS == RS at delta=0"}
    assert set(rows) == expected


def test_selftest_counts_every_record(selftest_run):
    """compared + skipped = all 60 cases per implementation; skipped = errors + unreliable records."""
    rows = table_rows(selftest_run.stdout)
    cases = load_official()
    for name in OFFICIAL:
        skipped = sum(1 for c in cases if c.records[name].error is not None or (name, c.kind) in UNRELIABLE)
        compared, skip, loss_err, grad_err, tol, result = rows[f"vectors: {name}"]
        assert (compared, skip) == (len(cases) - skipped, skipped)
        assert compared > 0 and tol == 1e-5 and result == "agree"
        assert loss_err <= 1e-5 and grad_err <= 1e-5
    for check in ("theorem: BAP == AP at delta=0", "theorem: BRS == RS at delta=0"):
        compared, skip, loss_err, grad_err, tol, result = rows[check]
        assert compared == 40 and skip == 0 and tol == 1e-12 and result == "agree"
        assert loss_err <= 1e-12 and grad_err <= 1e-12


def test_selftest_says_why_each_record_is_skipped(selftest_run):
    """Every skipped record is explained under the table: the authors' code raised, or the case kind is
    one the provenance note calls unreliable; the counts in the notes add up to the skipped column."""
    rows = table_rows(selftest_run.stdout)
    notes = re.findall(r"^  (vectors: \S+): skipped (\d+) record\(s\): (.+)$", selftest_run.stdout, re.M)
    per_check = {}
    for check, n, why in notes:
        per_check[check] = per_check.get(check, 0) + int(n)
        assert "raised" in why or "not a reliable expectation" in why, why
    for name in OFFICIAL:
        assert per_check.get(f"vectors: {name}", 0) == rows[f"vectors: {name}"][1]
    cases = load_official()
    raised = {(name, c.kind) for c in cases for name in OFFICIAL if c.records[name].error is not None}
    for name, kind in raised:  # the kind of case the authors' code failed on is named
        assert any(check == f"vectors: {name}" and f"'{kind}'" in why and "raised" in why
                   for check, _, why in notes)


def test_selftest_options_and_usage_errors():
    proc = rankspec("selftest", "--theorem-cases", "3", "--seed", "7")
    assert proc.returncode == 0, proc.stderr
    assert table_rows(proc.stdout)["theorem: BAP == AP at delta=0"][0] == 3
    proc = rankspec("selftest", "--theorem-cases", "0")
    assert proc.returncode == 2
    assert "--theorem-cases must be >= 1" in proc.stderr
    proc = rankspec("selftest", "--theorem-cases", "many")
    assert proc.returncode == 2 and "invalid int value" in proc.stderr


def test_selftest_reports_a_disagreement(monkeypatch, capsys):
    """The table is not a rubber stamp: a reference that is off by 1e-4 on one gradient entry fails."""
    from rankspec.conformance import cli, selftest

    original = selftest.reference_outputs

    def perturbed(name, logits, targets, delta):
        outputs, grad = original(name, logits, targets, delta)
        if name == "rs":
            grad = grad.copy()
            grad[int(np.argmax(np.abs(grad)))] += 1e-4
        return outputs, grad

    monkeypatch.setattr(selftest, "reference_outputs", perturbed)
    assert cli.main(["selftest", "--theorem-cases", "2"]) == 1
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert rows["vectors: rs"][-1] == "DISAGREE" and rows["vectors: rs"][3] > 1e-5
    assert rows["vectors: brs"][-1] == "agree"
    assert "selftest FAILED" in out and "first failure: case" in out


def test_equations_lists_every_registered_function():
    proc = rankspec("equations")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["paper", "equation", "function", "name"]
    listed = set(re.findall(r"\brankspec\.refimpl\.[\w.]+", proc.stdout))
    registered = {e.qualname for e in entries()}
    assert registered <= listed
    for func in ("losses.ap_rs.ap_loss", "losses.ap_rs.rs_loss", "losses.ap_rs.bucketed_ap_loss",
                 "losses.ap_rs.bucketed_rs_loss", "reference.ranking.make_buckets",
                 "reference.primitives.smoothed_step", "reference.primitives.rank_counts",
                 "reference.primitives.IdentityUpdate"):
        assert f"rankspec.refimpl.{func}" in listed, func
    # every (paper, equation) reference of the issue-2 losses is on a line of the table
    for paper, eq in [("RS", "Eqs. 6-12"), ("BRL", "Eqs. 3.11-3.18"), ("BRL", "Eqs. 3.19-3.33"),
                      ("BRL", "Eqs. 3.34-3.38"), ("BRL", "Eqs. 3.3-3.4"), ("BRL", "Eq. 3.2"),
                      ("BRL", "Eq. 3.1"), ("RS", "Eqs. 3-5")]:
        assert any(re.match(rf"^{paper}\s+{re.escape(eq)}\s", line) for line in lines), (paper, eq)


def test_equations_json_and_paper_filter():
    proc = rankspec("equations", "--format", "json")
    assert proc.returncode == 0
    items = json.loads(proc.stdout)
    by_name = {i["function"]: i for i in items}
    assert {e.qualname for e in entries()} <= set(by_name)
    rs = by_name["rankspec.refimpl.losses.ap_rs.rs_loss"]
    assert rs["kind"] == "loss" and rs["family"] == "ap-rs" and ["RS", "Eqs. 6-12"] in rs["refs"]
    assert by_name["rankspec.refimpl.reference.primitives.smoothed_step"]["kind"] == "primitive"

    proc = rankspec("equations", "--paper", "RS", "--format", "json")
    assert proc.returncode == 0
    rs_only = json.loads(proc.stdout)
    assert all(any(ref[0] == "RS" for ref in i["refs"]) for i in rs_only)
    names = {i["function"] for i in rs_only}
    assert {"rankspec.refimpl.losses.ap_rs.rs_loss", "rankspec.refimpl.reference.primitives.IdentityUpdate"} <= names
    assert "rankspec.refimpl.losses.ap_rs.bucketed_rs_loss" not in names  # BRL only
    assert names == {i["function"] for i in items if any(r[0] == "RS" for r in i["refs"])}

    proc = rankspec("equations", "--paper", "NOPE")
    assert proc.returncode == 2
    assert "unknown paper key 'NOPE'" in proc.stderr and "RankDet, APE, RS" in proc.stderr
    proc = rankspec("equations", "--paper", "rankdt")  # a typo gets a suggestion
    assert proc.returncode == 2 and "did you mean 'RankDet'?" in proc.stderr


def test_no_command_is_a_usage_error():
    proc = rankspec()
    assert proc.returncode == 2
    assert "selftest" in proc.stdout and "equations" in proc.stdout


def test_console_script_matches_module_entry_point():
    """The installed ``rankspec`` script is the same program as ``python -m rankspec.conformance``."""
    import shutil

    exe = shutil.which("rankspec")
    if exe is None:
        pytest.skip("the rankspec console script is not on PATH (package not installed)")
    proc = subprocess.run([exe, "equations", "--format", "json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == json.loads(rankspec("equations", "--format", "json").stdout)

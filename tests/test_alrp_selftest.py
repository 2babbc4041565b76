"""``rankspec selftest`` covers the v2 records (DR with each case's grouping, APE and aLRP with default
options) at 1e-5 absolute, and reports the cases where the authors' code raised as documented results."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from rankspec.conformance.selftest import Row, format_rows, v2_rows
from rankspec.refimpl.vectors_v2 import load_official_v2

ROW_RE = re.compile(r"^(vectors v2: .+?)\s{2,}(\d+)\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(agree|DISAGREE)\s*$", re.M)


@pytest.fixture(scope="module")
def cli():
    return subprocess.run([sys.executable, "-m", "rankspec.conformance", "selftest", "--theorem-cases", "2"],
                          capture_output=True, text=True, timeout=300)


def test_cli_prints_a_v2_row_per_family_and_grouping(cli):
    assert cli.returncode == 0, cli.stdout + cli.stderr
    rows = {m.group(1): m.groups()[1:] for m in ROW_RE.finditer(cli.stdout)}
    assert len(rows) == 4 and any("pooled" in k for k in rows) and any("per-image" in k for k in rows)
    assert any(k.startswith("vectors v2: APE") for k in rows) and any(k.startswith("vectors v2: aLRP") for k in rows)
    for check, (compared, skipped, loss_err, grad_err, tol, result) in rows.items():
        assert int(skipped) == 0, check  # nothing skipped silently: raised cases are documented results
        assert float(tol) == 1e-5 and result == "agree"
        assert float(loss_err) <= 1e-5 and float(grad_err) <= 1e-5


def test_every_v2_record_is_compared_or_documented(cli):
    v2 = load_official_v2()
    rows = {r.check: r for r in v2_rows()}
    dr = [r for k, r in rows.items() if "DR" in k]
    assert sum(r.compared for r in dr) == len(v2["dr"])
    modes = [c.meta["mode"] for c in v2["dr"]]
    assert [r.compared for r in dr] == [modes.count("pooled"), modes.count("per_image_sum")]
    for family, prefix in (("ape", "vectors v2: APE"), ("alrp", "vectors v2: aLRP")):
        (row,) = [r for k, r in rows.items() if k.startswith(prefix)]
        raised = sum(1 for c in v2[family] if c.raised)
        assert raised >= 1
        assert row.compared + sum(row.documented.values()) == len(v2[family])
        assert sum(row.documented.values()) == raised and row.skipped == 0
    # the CLI prints each documented result with the authors' reason
    notes = re.findall(r"^  (vectors v2: [^:]+): documented result on (\d+) record\(s\): (.+)$", cli.stdout, re.M)
    assert notes and all("raised" in why and "documented result holds" in why for _, _, why in notes)
    assert sum(int(n) for _, n, _ in notes) == sum(1 for f in ("ape", "alrp") for c in v2[f] if c.raised)


def test_a_mismatch_or_broken_documented_result_fails_the_row():
    row = Row("vectors v2: x", tol=1e-5)
    row.record(2e-5, 0.0, "case 3")  # beyond the tolerance: DISAGREE, with the first failure named
    assert not row.ok and "case 3" in row.notes[0]
    assert "DISAGREE" in format_rows([row])
    row2 = Row("vectors v2: y", tol=1e-5)
    row2.record(0.0, 0.0, "case 0")
    row2.failures.append("case 1: documented result does not hold")
    assert not row2.ok and "FAILED case 1" in format_rows([row2])
    assert np.isclose(row2.tol, 1e-5)

"""The task guides' examples (docs/guides/*.rst) run as doctests, as CI runs them: ``sphinx -b doctest``.

The guides check a real-looking Rank & Sort port (docs/guides/examples/my_rs_port.py, which has the
``self_rank='one'`` convention difference) and its fix, use the pytest fixture and ``assert_conforms``,
and export golden vectors; a doctest failure means the guide no longer tells the truth.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GUIDES = ("check-your-port", "oracle-in-tests", "read-a-diagnosis")


def test_guides_exist_and_are_in_the_contents():
    index = (DOCS / "index.rst").read_text(encoding="utf-8")
    for g in GUIDES:
        text = (DOCS / "guides" / f"{g}.rst").read_text(encoding="utf-8")
        assert ".. doctest::" in text, f"{g}: no runnable example"
        assert re.search(rf"^   guides/{g}$", index, flags=re.M), f"{g} is not in the index's toctree"


def test_guide_examples_run_as_doctests(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "doctest",
                        "-d", str(tmp_path / ".doctrees"), str(DOCS), str(tmp_path / "doctest")],
                       capture_output=True, text=True, cwd=ROOT, timeout=600,
                       env=dict(os.environ, NUMBA_ENABLE_CUDASIM="1"))
    report = (tmp_path / "doctest" / "output.txt")
    out = report.read_text(encoding="utf-8") if report.is_file() else ""
    assert r.returncode == 0, f"doctests failed:\n{out[-6000:]}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    for g in GUIDES:
        m = re.search(rf"Document: guides/{g}\n-+\n(.*?)(?=\nDocument: |\nDoctest summary)", out, flags=re.S)
        assert m, f"guides/{g}: no doctest ran"
        passed = re.search(r"(\d+) passed and 0 failed", m.group(1))
        assert passed and int(passed.group(1)) >= 3, f"guides/{g}:\n{m.group(1)}"
    assert re.search(r"^\s+0 failures in tests$", out, flags=re.M)

"""Run ``rankspec check`` on every port of the corpus; print the catch rate and the precise-diagnosis rate.

Usage (from the repository root)::

    python tests/ports/evidence.py            # every port, a table and the two rates
    python tests/ports/evidence.py -k DR      # ports whose name contains "DR"

The settings (:data:`RUN`) are the ones ``tests/test_ports_corpus.py`` uses.
"""

from __future__ import annotations

import os
import sys
import time

RUN = dict(examples=16, seed=0, dtypes=["float64"], shrink_seconds=3.0, diagnose_seconds=15.0)


def run_port(port):
    """(report, caught or passed as it should, diagnosis text, precise)."""
    from rankspec.conformance import check

    kwargs = {**RUN, **port.check_kwargs}
    report = check(port.target, port.loss, **kwargs)
    bad = [r for r in report.results if not r.conformant]
    text = ""
    if bad and bad[0].diagnosis is not None:
        d = bad[0].diagnosis
        text = "\n".join([d.summary] + list(d.findings))
    verdict_ok = report.conformant == port.conformant
    precise = (port.conformant and verdict_ok) or (not port.conformant and verdict_ok and port.phrase is not None
                                                   and port.phrase in text)
    return report, verdict_ok, text, precise


def main(argv):
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, here)
    from ports import PORTS

    pattern = argv[argv.index("-k") + 1] if "-k" in argv else ""
    rows, t0 = [], time.monotonic()
    for port in PORTS:
        if pattern and pattern not in port.name:
            continue
        t = time.monotonic()
        report, ok, text, precise = run_port(port)
        rows.append((port, ok, precise))
        first = text.splitlines()[0] if text else ("conformant" if report.conformant else "")
        print(f"{'ok  ' if ok else 'MISS'} {'precise' if precise else 'IMPRECISE':9s} {time.monotonic() - t:5.1f}s "
              f"{port.loss:14s} {port.name}: {first[:160]}", flush=True)
    wrong = [r for r in rows if not r[0].conformant]
    right = [r for r in rows if r[0].conformant]
    caught = sum(ok for _, ok, _ in wrong)
    precise = sum(p for _, _, p in wrong)
    passed = sum(ok for _, ok, _ in right)
    print(f"\nwrong ports caught: {caught} of {len(wrong)}; precise diagnoses: {precise} of {len(wrong)}; "
          f"correct rewrites passing: {passed} of {len(right)} ({time.monotonic() - t0:.0f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])

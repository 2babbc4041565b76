"""Copy-pasteable Python reproducers for counterexamples: the sections every kind of case fills, and rendering."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import List

import numpy as np

__all__ = ["Script", "render", "array_literal", "summary_lines"]


#: arrays with more elements than this are written compressed (zlib + base64) instead of as a list
LITERAL_LIMIT = 256


def array_literal(a: np.ndarray, name: str = "") -> str:
    """``np.array([...], dtype=np.float32)`` that rebuilds ``a`` exactly (``name = `` prefix aligns lines).

    Arrays above :data:`LITERAL_LIMIT` elements become one compressed expression (zlib + base64 of the raw
    bytes; shrunk inputs have few distinct values, so this stays small) instead of a literal list.
    """
    a = np.asarray(a)
    if a.size > LITERAL_LIMIT:
        import base64
        import zlib

        raw = np.ascontiguousarray(a)
        blob = base64.b64encode(zlib.compress(raw.tobytes(), 9)).decode("ascii")
        lines = [blob[k:k + 96] for k in range(0, len(blob), 96)]
        body = "\n    ".join(f'"{line}"' for line in lines)
        return (f"np.frombuffer(__import__('zlib').decompress(__import__('base64').b64decode(\n    {body})),\n"
                f"    dtype=np.{raw.dtype}).reshape({tuple(raw.shape)!r}).copy()  # {a.size} values, compressed")
    prefix = f"{name} = np.array(" if name else "np.array("
    body = np.array2string(a, separator=", ", floatmode="unique", threshold=sys.maxsize, max_line_width=100,
                           prefix=prefix)
    return f"np.array({body}, dtype=np.{a.dtype})"


def _short(a: np.ndarray, prefix: str) -> str:
    return prefix + np.array2string(np.asarray(a), separator=", ", precision=8, threshold=40,
                                    max_line_width=100, prefix=prefix)


@dataclass
class Script:
    """The sections of a reproducer; every kind of case fills them (:meth:`CaseKind.script`)."""

    header: List[str]  #: comment lines: what failed, the oracle, the target
    imports: List[str]  #: imports, the target's import code last
    setup: List[str]  #: code that rebuilds the inputs of the case
    call: List[str]  #: code that calls the target
    oracle: List[str]  #: code that computes ``expected`` with the reference
    checks: List[str]  #: prints and ``np.testing.assert_allclose`` lines
    observed: List[str] = field(default_factory=list)  #: comments with what this run got


def render(script: Script) -> str:
    """A self-contained, copy-pasteable Python script: inputs, oracle, target call, assertions."""
    s = script
    return "\n".join(s.header + s.observed + s.imports + [""] + s.setup + [""] + s.oracle + s.call + s.checks)


def summary_lines(case, expected, outcome, names=None) -> list:
    """A few human-readable lines: the input and expected vs got."""
    g = float(outcome.grad_output) if outcome is not None else 1.0
    names = tuple(names or ()) or ("logits", "targets") + tuple(f"input{k + 2}" for k in range(len(case.extras)))
    width = max(len(n) for n in names)
    out = [_short(a, f"{n.ljust(width)} = ") for n, a in zip(names, case.arrays)]
    tail = ([f"delta = {case.delta!r}"] if case.delta is not None else []) + (
        [f"grad_output = {g!r}"] if g != 1.0 else [])
    if tail:
        out.append(", ".join(tail))
    if outcome is not None:
        out += [f"loss:     expected {float(expected.loss)!r}, got {outcome.loss!r}",
                _short(np.asarray(expected.grad) * g, "gradient: expected "),
                _short(outcome.grad, "          got      ")]
    return "\n".join(out).splitlines()

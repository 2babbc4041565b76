"""A corpus of ports of the ranking losses: realistic wrong ports and correct rewrites, each with the verdict
and the key phrase of the diagnosis ``rankspec check`` must give (issue 10, item 6).

Every port is written for this corpus (from the papers' equations, or as a wrapper of our own reference
with one porting mistake layered on top, the way a port goes wrong); none is copied from public code.
:data:`PORTS` lists them; ``tests/test_ports_corpus.py`` runs the harness on each, and
``python tests/ports/evidence.py`` prints the catch rate and the precise-diagnosis rate quoted in
``docs/conformance_evidence.rst``.

An entry is ``Port(name, loss, target, conformant, phrase, mistake)``: ``phrase`` is the words the diagnosis
must contain (its summary or one of its findings) for the diagnosis to count as precise; ``None`` for a
correct port.  ``imprecise=True`` marks a port whose diagnosis is known not to name the cause (it still
counts against the precise-diagnosis rate; the test asserts only the verdict for it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from . import families, ranking


@dataclass
class Port:
    name: str
    loss: str
    target: Any
    conformant: bool
    phrase: Optional[str]
    mistake: str
    check_kwargs: Dict[str, Any] = field(default_factory=dict)
    imprecise: bool = False
    slow: bool = False


def _port(row) -> Port:
    extra = dict(row[6]) if len(row) > 6 else {}
    flags = {k: extra.pop(k) for k in ("imprecise", "slow") if k in extra}
    return Port(*row[:6], check_kwargs=extra, **flags)


PORTS = [_port(row) for row in ranking.ROWS + families.ROWS]

"""Input domains: restrict a check to the inputs a port documents (``--domain`` / ``domain=``).

Many ports support less than the reference does - 1-D input only, ``delta > 0`` only, at least one
positive - and fail on cases their authors never meant to handle.  A domain states that restriction; the
check then counts only the cases inside it (generated cases outside are skipped and counted; shrinking never
leaves it), and the report lists the domain as a restriction of its verdict.

Syntax: comma-separated conditions, all of which must hold::

    1d | 2d                        the logits' number of dimensions
    class_ids                      labels are one class id per row (DR / RankDet), not per-entry labels
    delta OP NUMBER                e.g. delta>0, delta>=0.25, delta=0.5
    positives OP N                 entries whose label is > 0 (positives>=1: at least one positive)
    negatives OP N                 entries whose label is 0 (relevant negatives and background)
    size OP N                      number of logits (size<=4096)

with OP one of ``>=  <=  >  <  =``.  Example: ``1d,delta>0,positives>=1``.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Tuple

import numpy as np

__all__ = ["Domain", "parse_domain", "DOMAIN_HELP"]

DOMAIN_HELP = ("restrict the verdict to inputs the TARGET documents: comma-separated conditions, all of which "
               "must hold: 1d | 2d; class_ids (labels one class id per row); delta OP X; positives OP N "
               "(labels > 0); negatives OP N (labels == 0); "
               "size OP N; OP one of >= <= > < =. E.g. '1d,delta>0,positives>=1'. Generated cases outside "
               "the domain are skipped and counted; the report lists the domain as a restriction of the verdict")

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "=": operator.eq,
        "==": operator.eq}
_ATOM = re.compile(r"^\s*(delta|positives|negatives|size)\s*(>=|<=|==|=|>|<)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Domain:
    """A conjunction of conditions on a case (see the module docstring); ``text`` is how the user wrote it."""

    text: str
    conditions: Tuple[Tuple[str, str, float], ...]

    def admits(self, case) -> bool:
        for what, op, value in self.conditions:
            if what == "ndim":
                got = np.ndim(case.logits)
            elif what == "class_ids":
                got = float(np.ndim(case.targets) < np.ndim(case.logits))
            elif what == "delta":
                if case.delta is None:
                    return False
                got = float(case.delta)
            elif what == "positives":
                got = int(np.count_nonzero(np.asarray(case.targets) > 0))
            elif what == "negatives":
                got = int(np.count_nonzero(np.asarray(case.targets) == 0))
            else:
                got = int(np.size(case.logits))
            if not _OPS[op](got, value):
                return False
        return True

    def note(self, skipped: int) -> str:
        return (f"verdict restricted to the input domain {self.text!r} (--domain / domain=): cases outside it "
                f"were not checked ({skipped} generated case(s) skipped)")


def parse_domain(text) -> Domain:
    """Parse a domain string; raises ``ValueError`` naming the bad condition."""
    if isinstance(text, Domain):
        return text
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the domain is empty; e.g. '1d,delta>0,positives>=1'")
    conditions = []
    for item in (i.strip() for i in text.split(",")):
        low = item.lower()
        if low in ("1d", "2d"):
            conditions.append(("ndim", "=", float(low[0])))
            continue
        if low == "class_ids":
            conditions.append(("class_ids", "=", 1.0))
            continue
        m = _ATOM.match(low)
        if not m:
            raise ValueError(f"domain condition {item!r} is not understood (1d, 2d, class_ids, delta>0, "
                             "positives>=1, "
                             "negatives>=1, size<=4096, ...)")
        what, op, raw = m.groups()
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"domain condition {item!r}: {raw!r} is not a number") from None
        if not np.isfinite(value):
            raise ValueError(f"domain condition {item!r}: the bound must be finite")
        conditions.append((what, op, value))
    return Domain(text.strip(), tuple(conditions))

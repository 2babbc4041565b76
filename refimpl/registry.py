"""The equation registry: one table mapping paper equations to reference code.

Every reference function (and every utility the references rely on) is
decorated with :func:`implements`, which records the paper key(s), the
equation / algorithm numbers and a one-line name.  ``rankspec equations``
prints this table and the Sphinx docs are generated from it, so there is a
single source of truth for "which line implements which equation".

Paper keys are those of ``shared/papers/README.md``:

========  ==============================================================
RankDet   Liu et al., RankDetNet (CVPR 2021)
APE       Xu, Deng, Li, Revisiting AP Loss / ARPS (CVPR 2022)
RS        Oksuz et al., Rank & Sort Loss (ICCV 2021)
BRL       Yavuz, Bucketing Ranking-based Losses (MSc thesis 2025 / ECCV 2024)
DR        Qian et al., DR Loss (CVPR 2020)
========  ==============================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

__all__ = ["PAPERS", "FAMILIES", "Equation", "implements", "entries", "lookup", "format_table"]

PAPERS: Dict[str, str] = {
    "RankDet": 'Liu et al., "RankDetNet: Delving into Ranking Constraints for Object Detection", CVPR 2021',
    "APE": 'Xu, Deng, Li, "Revisiting AP Loss for Dense Object Detection: Adaptive Ranking Pair Selection", CVPR 2022',
    "RS": 'Oksuz et al., "Rank & Sort Loss for Object Detection and Instance Segmentation", ICCV 2021',
    "BRL": 'Yavuz, "Bucketing Ranking-based Losses for Efficient Training of Object Detectors", MSc thesis METU 2025 / ECCV 2024',
    "DR": 'Qian et al., "DR Loss: Improving Object Detection by Distributional Ranking", CVPR 2020',
    "aLRP": 'Oksuz et al., "A Ranking-based, Balanced Loss Function Unifying Classification and Localisation in Object Detection", NeurIPS 2020 (not in shared/papers; discussed by RS, BRL and APE)',
}


#: Docs pages: family key -> page title.  Every entry belongs to exactly one.
FAMILIES: Dict[str, str] = {
    "primitives": "Shared primitives: smoothed step, ranks, Identity Update",
    "ap-rs": "AP Loss, Rank & Sort Loss and their bucketed versions (RS, BRL, APE)",
    "rankdet": "RankDetNet ranking losses (RankDet)",
    "dr": "DR Loss: distributional ranking (DR)",
    "ape": "AP loss as pairwise error, ARPS and APE (APE)",
    "detector": "Rank & Sort detector glue: IoU, GIoU, task balancing (RS Sec. 5)",
    "geometry": "Geometry utilities: rotated boxes and 3D IoU",
    "alrp": "aLRP Loss: classification and localisation components, self-balancing (aLRP, RS, BRL)",
}


@dataclass(frozen=True)
class Equation:
    """One registry entry."""

    qualname: str  #: import path, e.g. ``rankspec.refimpl.losses.ap_rs.rs_loss``
    name: str  #: one-line human name
    refs: Tuple[Tuple[str, str], ...]  #: ((paper key, "Eq. 7"), ...)
    family: str  #: docs page the entry belongs on (e.g. "ap-rs")
    kind: str  #: "loss", "primitive" or "utility"
    func: Callable

    @property
    def citation(self) -> str:
        """``"RS Eqs. 6-12; BRL Eqs. 3.11-3.18"`` style citation string."""
        return "; ".join(f"{paper} {where}" for paper, where in self.refs)

    @property
    def papers(self) -> Tuple[str, ...]:
        return tuple(dict.fromkeys(p for p, _ in self.refs))


_REGISTRY: Dict[str, Equation] = {}


def implements(*refs: Sequence[str], name: str, family: str, kind: str = "loss"):
    """Decorator registering ``func`` as the implementation of paper equations.

    Parameters
    ----------
    refs:
        ``("RS", "Eqs. 6-12")`` pairs: a paper key from :data:`PAPERS` and the
        equation / algorithm / section numbers as printed in that paper.
    name:
        One-line name of what the function computes.
    family:
        Docs page the entry is listed on.
    kind:
        ``"loss"``, ``"primitive"`` (a building block of losses) or
        ``"utility"`` (e.g. IoU helpers).
    """
    if not refs:
        raise ValueError("implements() needs at least one (paper, equation) reference")
    norm: List[Tuple[str, str]] = []
    for ref in refs:
        if len(ref) != 2:
            raise ValueError(f"reference {ref!r} must be a (paper key, equation) pair")
        paper, where = ref
        if paper not in PAPERS:
            raise ValueError(f"unknown paper key {paper!r}; known keys: {sorted(PAPERS)}")
        norm.append((paper, str(where)))
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known families: {sorted(FAMILIES)}")
    if kind not in ("loss", "primitive", "utility"):
        raise ValueError(f"kind must be 'loss', 'primitive' or 'utility', got {kind!r}")

    def deco(func):
        qualname = f"{func.__module__}.{func.__qualname__}"
        if qualname in _REGISTRY:
            raise ValueError(f"{qualname} is registered twice")
        _REGISTRY[qualname] = Equation(qualname, name, tuple(norm), family, kind, func)
        func.__rankspec_equation__ = _REGISTRY[qualname]
        return func

    return deco


def entries() -> List[Equation]:
    """All registered equations, sorted by family then paper then name.

    Complete once ``rankspec.refimpl`` is imported, which importing this module already does
    (Python runs the package's ``__init__``, which imports every reference module).
    """
    return sorted(_REGISTRY.values(), key=lambda e: (e.family, e.refs[0][0], e.qualname))


def lookup(func_or_name) -> Equation:
    """The registry entry of a function (or of its qualified name)."""
    if callable(func_or_name):
        eq = getattr(func_or_name, "__rankspec_equation__", None)
        if eq is None:
            raise KeyError(f"{func_or_name!r} is not registered")
        return eq
    for e in _REGISTRY.values():
        if e.qualname == func_or_name or e.qualname.rsplit(".", 1)[-1] == func_or_name:
            return e
    raise KeyError(f"no registered function named {func_or_name!r}")


def format_table(items: List[Equation] | None = None) -> str:
    """Plain-text table ``paper | equation | function | name``."""
    items = entries() if items is None else items
    rows = [("paper", "equation", "function", "name")]
    for e in items:
        for i, (paper, where) in enumerate(e.refs):
            rows.append((paper, where, e.qualname if i == 0 else "  (same)", e.name if i == 0 else ""))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)

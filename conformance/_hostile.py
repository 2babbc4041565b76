"""Inputs that find what ports get wrong: memory layouts, sizes around chunk limits, all-equal logits, triggers.

Three things, all deterministic for a seed:

* **layouts** - :class:`LayoutCase` is a :class:`~rankspec.refimpl.cases.Case` that the target receives as a
  non-contiguous view with the same values: ``"transposed"`` (a 2-D input stored column-major, 1-D: a
  reversed-stride view), ``"strided"`` (every other element of a buffer twice as large) or ``"offset"`` (a
  view starting inside a larger buffer).  The reference sees the same values; :func:`present` builds the
  view (NumPy or torch; a torch view is made a leaf, so ``.grad`` is filled as usual).  A share of the
  seeded-random generated cases get a layout (:func:`with_layout`);
* **sizes** - :func:`size_cases`: for the (logits, labels / IoU targets, delta) ranking losses, inputs of
  4096, 4097, 65536 and 65537 elements (2^20 and 2^20 + 1 when ``max_size`` allows) with a few positives and
  relevant negatives (negatives within delta of a positive), one of them 2-D, plus all-equal logits;
* **triggers** - :func:`trigger_cases`: small fixed inputs that isolate the usual crash triggers (no
  positive, no negative, all-equal logits, delta = 0), added to the diagnosis's fixed cases so a crash
  or a NaN is named with its precise trigger.

Cost: the size cases are O(n |P|) each in the reference with |P| <= 8 (about 10^6 operations at 65537);
everything else is small.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List

import numpy as np

from rankspec.refimpl.cases import Case, CaseConfig, _sanitize_threshold

__all__ = ["LAYOUTS", "LayoutCase", "present", "with_layout", "size_cases", "trigger_cases", "edge_cases",
           "SIZE_THRESHOLDS"]

LAYOUTS = ("transposed", "strided", "offset")
SIZE_THRESHOLDS = (4096, 65536, 2**20)


@dataclass(frozen=True)
class LayoutCase(Case):
    """A case whose arrays the target receives as a non-contiguous (or offset) view (see the module docs)."""

    layout: str = "contiguous"

    def describe(self) -> str:
        return f"{super().describe()}, passed as a {self.layout} view"


def present(value, layout: str):
    """``value`` (ndarray or torch tensor) as a ``layout`` view with the same values and shape."""
    if layout in (None, "contiguous"):
        return value
    is_torch = hasattr(value, "detach") and hasattr(value, "requires_grad")
    if is_torch:
        import torch

        req = bool(value.requires_grad)
        v = value.detach()
        if layout == "transposed":
            if v.dim() >= 2:
                base = v.transpose(-1, -2).contiguous()
                out = base.transpose(-1, -2)
            else:
                out = _torch_strided(v)  # torch has no negative strides: every other element
        elif layout == "strided":
            out = _torch_strided(v)
        else:  # offset
            flat = torch.zeros(v.numel() + 3, dtype=v.dtype, device=v.device)
            flat[3:] = v.reshape(-1)
            out = flat[3:].view(v.shape)
        out = out.detach()
        return out.requires_grad_(True) if req else out
    a = np.asarray(value)
    if layout == "transposed":
        out = np.asfortranarray(a) if a.ndim >= 2 else a[::-1].copy()[::-1]
    elif layout == "strided":
        buf = np.zeros(a.shape + (2,), dtype=a.dtype)
        buf[..., 0] = a
        out = buf[..., 0]
    else:
        buf = np.zeros(a.size + 3, dtype=a.dtype)
        buf[3:] = a.ravel()
        out = buf[3:].reshape(a.shape)
    return out


def _torch_strided(v):
    import torch

    buf = torch.zeros(v.shape + (2,), dtype=v.dtype, device=v.device)
    buf[..., 0] = v
    return buf[..., 0]


def with_layout(case: Case, layout: str) -> LayoutCase:
    """``case`` passed to the target as a ``layout`` view (same values)."""
    fields = {f: getattr(case, f) for f in ("logits", "targets", "delta", "grad_output", "kind", "source",
                                            "extras", "positive_above", "precision")}
    fields["source"] = f"{case.source} ({layout} view)"
    return LayoutCase(layout=layout, **fields)


def _ranking_spec(spec) -> bool:
    return spec.case_builder is None and spec.label_kind in ("binary", "iou") and not spec.extra_inputs


def _finish(spec, cfg: CaseConfig, logits, pos, rng, delta, kind, source, shape=None) -> Case:
    iou = rng.uniform(0.1, 1.0, logits.size) if spec.label_kind == "iou" else np.ones(logits.size)
    targets = np.where(pos, np.round(iou * 8) / 8 if spec.label_kind == "iou" else 1.0, 0.0)
    dtype = np.dtype(cfg.dtype)
    shape = shape or (logits.size,)
    logits = logits.reshape(shape).astype(dtype)
    targets = targets.reshape(shape).astype(dtype)
    if getattr(spec, "bucketed", False) and delta is not None:
        logits = _sanitize_threshold(logits, targets > 0, delta, cfg.dtype).astype(dtype)
    return Case(logits, targets, delta, 1.0, kind, source)


def size_cases(spec, cfg: CaseConfig, seed: int = 0) -> List[Case]:
    """Inputs straddling common chunk sizes, with positives and relevant negatives (module docstring)."""
    if not _ranking_spec(spec):
        return []
    limit = min(cfg.max_size, getattr(spec, "max_size", None) or cfg.max_size)
    rng = np.random.default_rng(seed + 911)
    delta = float(cfg.delta) if cfg.delta is not None else float(spec.default_delta)
    d = delta if delta > 0 else 0.5
    out = []
    for t in SIZE_THRESHOLDS:
        for n in (t, t + 1):
            if n > limit:
                continue
            p = max(2, min(8, cfg.max_work // n))
            logits = np.round(rng.normal(0.0, 1.0, n) * 16) / 16
            pos = np.zeros(n, dtype=bool)
            idx = rng.choice(n, p, replace=False)
            idx[-1] = n - 1  # a positive at the very end: chunked code must reach it
            pos[idx] = True
            # relevant negatives just below and above every positive, also at the end of the input
            logits[n - 2] = logits[n - 1] - d / 2 if n >= 2 and not pos[n - 2] else logits[n - 2]
            out.append(_finish(spec, cfg, logits, pos, rng, delta, "size", f"size {n}"))
    if limit >= 4100 and cfg.allow_2d:
        n = 4100
        logits = np.round(rng.normal(0.0, 1.0, n) * 16) / 16
        pos = np.zeros(n, dtype=bool)
        pos[rng.choice(n, 6, replace=False)] = True
        pos[-1] = True
        out.append(_finish(spec, cfg, logits, pos, rng, delta, "size", "size 4100, 2-D (4, 1025)", (4, 1025)))
    # all-equal logits with positives and negatives
    n = 9
    pos = np.array([1, 0, 0, 1, 0, 0, 0, 1, 0], dtype=bool)
    out.append(_finish(spec, cfg, np.full(n, 0.25), pos, rng, delta, "all_equal", "all-equal logits"))
    return out


def edge_cases(spec, cfg: CaseConfig, seed: int = 0) -> List[Case]:
    """Inputs every check runs besides the generated ones: the crash triggers (no positive, no negative /
    background, all-equal logits, delta = 0), from :func:`trigger_cases` for the ranking losses or from the
    family's own builder kinds otherwise."""
    if _ranking_spec(spec):
        return [replace(c, source="edge case: " + ("delta 0" if c.delta == 0 and c.kind == "random"
                                                   else c.kind.replace("_", " "))) for c in trigger_cases(spec, cfg)]
    from rankspec.refimpl.cases import RngSource

    from ._cases import build_case

    out = []
    rng = np.random.default_rng(seed + 77)
    for kind in ("no_positives", "no_negatives", "no_background"):
        if kind in tuple(getattr(spec, "kinds", ()) or ()):
            for size in (6, 17):
                try:
                    case = build_case(RngSource(rng), spec, replace(cfg, max_size=max(size, 1)), kind=kind,
                                      size=size)
                except Exception:  # a builder that cannot make this kind at this size
                    continue
                out.append(replace(case, source=f"edge case: {kind.replace('_', ' ')}"))
    return out


def trigger_cases(spec, cfg: CaseConfig) -> List[Case]:
    """Small fixed inputs isolating one crash trigger each (zero positives, no negatives, all-equal logits,
    delta = 0), for the diagnosis; empty for losses with their own builder (their kinds cover it)."""
    if not _ranking_spec(spec):
        return []
    rng = np.random.default_rng(4242)
    delta = float(cfg.delta) if cfg.delta is not None else float(spec.default_delta)
    logits = np.round(rng.normal(0.0, 1.0, 12) * 8) / 8
    out = [
        _finish(spec, cfg, logits, np.zeros(12, dtype=bool), rng, delta, "no_positives", "diagnostic"),
        _finish(spec, cfg, logits, np.ones(12, dtype=bool), rng, delta, "no_negatives", "diagnostic"),
        _finish(spec, cfg, np.full(10, -0.5), np.arange(10) % 3 == 0, rng, delta, "all_equal", "diagnostic"),
    ]
    if cfg.delta is None:
        # delta = 0 on distinct logits (no ties: only the delta is special)
        s = rng.permutation(np.arange(14)) / 4 - 1
        out.append(_finish(spec, cfg, s, np.arange(14) % 4 == 1, rng, 0.0, "random", "diagnostic"))
    return out


def layout_for(index: int, case: Case):
    """Every third seeded-random case is passed as a view, cycling through :data:`LAYOUTS`."""
    if index % 3 != 1:
        return case
    return with_layout(case, LAYOUTS[(index // 3) % len(LAYOUTS)])


def hostile_cases(spec, cfg: CaseConfig, seed: int, count: int) -> List[Case]:
    """``count`` hostile cases, most telling first: just above 4096, no positive, just above 65536, no
    negative, all-equal logits, exactly 4096 / 65536, delta = 0, 2-D 4100, 2^20 (+ 1) where allowed."""
    if count <= 0:
        return []
    edge = edge_cases(spec, cfg, seed)
    sizes = size_cases(spec, cfg, seed)
    above = [c for c in sizes if c.kind == "size" and c.logits.ndim == 1 and c.size % 2 == 1]
    at = [c for c in sizes if c.kind == "size" and c.logits.ndim == 1 and c.size % 2 == 0]
    taken = {id(c) for c in above + at}
    rest = [c for c in sizes if id(c) not in taken]
    order = []
    while above or edge:
        for pool in (above, edge):
            if pool:
                order.append(pool.pop(0))
    return (order + at + rest)[:count]


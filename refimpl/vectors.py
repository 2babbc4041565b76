"""The recorded vectors of the authors' public code, bundled as package data.

``data/official-v1.npz`` holds inputs and the outputs that the authors' own
PyTorch implementations produced (see ``data/PROVENANCE.md``).  This module
loads them and says how to compute the same outputs with the reference, so the
selftest, the test suite and the conformance harness share one mapping.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .losses.ap_rs import ap_loss, bucketed_ap_loss, bucketed_rs_loss, rs_loss

__all__ = ["Record", "VectorCase", "load_official", "OFFICIAL", "reference_outputs", "UNRELIABLE"]

#: Recorded float32: compare with this absolute tolerance (data/PROVENANCE.md).
ATOL = 1e-5

#: (implementation, case kind) pairs whose recorded outputs are not a reliable
#: expectation: in ``ties`` cases the bucketed code's sort may put a tied
#: negative on either side of a positive (data/PROVENANCE.md).
UNRELIABLE = {("brs", "ties"), ("bap", "ties")}


@dataclass(frozen=True)
class Record:
    """What one authors' implementation produced (or raised) on one case."""

    delta: Optional[float]
    losses: Optional[Tuple[float, ...]]
    grad: Optional[np.ndarray]
    error: Optional[str] = None


@dataclass(frozen=True)
class VectorCase:
    index: int
    kind: str
    delta: float
    logits: np.ndarray
    targets: np.ndarray
    records: Dict[str, Record] = field(default_factory=dict)


def _rs_layout(result):
    return (result.terms["ranking"], result.terms["sorting"]), result.grad


def _loss_layout(result):
    return (result.loss,), result.grad


#: name -> (how the authors' call maps onto the reference, function (logits, targets, delta) -> (outputs, grad))
OFFICIAL: Dict[str, Tuple[str, Callable]] = {
    "rs": ("RankSort.apply(logits, targets, delta) -> (ranking, sorting)  ==  rs_loss(logits, targets, delta)",
           lambda s, t, d: _rs_layout(rs_loss(s, t, d))),
    "brs": ("BucketedRankSort.apply(logits, targets, delta) -> (ranking, sorting)  ==  "
            "bucketed_rs_loss(logits, targets, delta)",
            lambda s, t, d: _rs_layout(bucketed_rs_loss(s, t, d))),
    "bap": ("BucketedAPLoss.apply(logits, labels, delta)  ==  bucketed_ap_loss(logits, targets > 0, delta)",
            lambda s, t, d: _loss_layout(bucketed_ap_loss(s, t > 0, d))),
    "ap_interp": ("APLoss.apply(logits, labels, delta)  ==  ap_loss(logits, targets > 0, delta, interpolated=True)",
                  lambda s, t, d: _loss_layout(ap_loss(s, t > 0, d, interpolated=True))),
}


def reference_outputs(name: str, logits, targets, delta) -> Tuple[Tuple[float, ...], np.ndarray]:
    """The reference's (scalar outputs, gradient) in the layout of recorded implementation ``name``."""
    if name not in OFFICIAL:
        raise ValueError(f"unknown recorded implementation {name!r}; known: {sorted(OFFICIAL)}")
    return OFFICIAL[name][1](logits, targets, delta)


@lru_cache(maxsize=1)
def load_official() -> List[VectorCase]:
    """All cases of the bundled ``official-v1.npz``."""
    with resources.files(__package__).joinpath("data/official-v1.npz").open("rb") as fh:
        data = np.load(fh)
        meta = json.loads(str(data["meta"]))
        cases = []
        for k, m in enumerate(meta):
            records = {}
            for name in OFFICIAL:
                rec = m.get(name)
                if rec is None:
                    continue
                if "error" in rec:
                    records[name] = Record(None, None, None, rec["error"])
                else:
                    records[name] = Record(float(rec["delta"]), tuple(float(v) for v in rec["losses"]),
                                           np.array(data[f"{k}/{name}/grad"], dtype=np.float64))
            cases.append(VectorCase(k, m["kind"], float(m["delta"]), np.array(data[f"{k}/logits"]),
                                    np.array(data[f"{k}/targets"]), records))
    return cases

"""The v2 recorded vectors (DR Loss, APE, aLRP) of the authors' public code, bundled as package data.

``data/official-v2.npz`` (provenance: ``data/PROVENANCE-v2.md``) holds 60 cases per family: inputs,
the exact call, and the authors' float32 outputs (NaN where their code raised).  This module loads
them and says how the reference computes the same outputs, so tests, selftest and the harness
share one mapping:

* DR: ``SigmoidDRLoss(**ctor)`` == :func:`~rankspec.refimpl.dr_loss` with ``lambda_pos`` /
  ``lambda_neg`` / ``L`` / ``tau`` from ``ctor``; mode ``"pooled"`` = ``image_ids=None``,
  ``"per_image_sum"`` = ``image_ids=image_ids``.
* aLRP: ``aLRPLoss.apply(logits, targets, regression_losses, delta)`` ==
  :func:`~rankspec.refimpl.alrp_loss` with default options; the authors' raise on zero positives is
  the documented result (loss 0, zero gradient, empty rank / order).
* APE: loaded (``ape/K/...``) for the APE conventions work; see :func:`ape_case_call`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Dict, List, Optional

import numpy as np

__all__ = ["V2Case", "load_official_v2", "dr_reference", "alrp_reference_outputs", "ape_case_call", "ATOL",
           "RANK_RTOL", "DR_KEYWORDS"]

#: recorded in float32: compare with this absolute tolerance
ATOL = 1e-5
#: aLRP ``rank`` is a count up to n recorded in float32 (absolute rounding ~ n * 6e-8): compare relatively
RANK_RTOL = 1e-6
#: the DR authors' constructor arguments -> dr_loss keywords
DR_KEYWORDS = {"pos_lambda": "lambda_pos", "neg_lambda": "lambda_neg", "L": "L", "tau": "tau"}


@dataclass(frozen=True)
class V2Case:
    """One recorded case: ``family`` ("dr", "ape", "alrp"), its index, its meta entry and its arrays."""

    family: str
    index: int
    meta: dict
    arrays: Dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def raised(self) -> Optional[str]:
        """The authors' error message where their code raised (aLRP / APE), else None."""
        return self.meta.get("raises")

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]


@lru_cache(maxsize=1)
def load_official_v2() -> Dict[str, List[V2Case]]:
    """``{"dr": [...], "ape": [...], "alrp": [...]}`` from the bundled ``official-v2.npz``."""
    with resources.files(__package__).joinpath("data/official-v2.npz").open("rb") as fh:
        data = np.load(fh)
        meta = json.loads(str(data["meta"]))
        out: Dict[str, List[V2Case]] = {}
        for family in ("dr", "ape", "alrp"):
            cases = []
            for k, m in enumerate(meta[family]):
                prefix = f"{family}/{k}/"
                arrays = {key[len(prefix):]: np.array(data[key]) for key in data.files if key.startswith(prefix)}
                cases.append(V2Case(family, k, m, arrays))
            out[family] = cases
    return out


def dr_reference(case: V2Case):
    """The reference's DR result for a DR case, with the grouping the case records."""
    from .losses.dr import dr_loss

    if case.family != "dr":
        raise ValueError(f"expected a DR case, got family {case.family!r}")
    kwargs = {DR_KEYWORDS[k]: float(v) for k, v in case.meta.get("ctor", {}).items()}
    mode = case.meta["mode"]
    if mode not in ("pooled", "per_image_sum"):
        raise ValueError(f"unknown DR mode {mode!r}")
    image_ids = case["image_ids"] if mode == "per_image_sum" else None
    return dr_loss(case["logits"], case["targets"], image_ids=image_ids, **kwargs)


def alrp_reference_outputs(case: V2Case, **options):
    """The reference's aLRP result (default options unless overridden) for an aLRP case."""
    from .losses.alrp import alrp_loss

    if case.family != "alrp":
        raise ValueError(f"expected an aLRP case, got family {case.family!r}")
    return alrp_loss(case["logits"], case["targets"], case["regression_losses"], case.meta["delta"], **options)


def ape_case_call(case: V2Case):
    """``(logits, labels, ious, lam)`` of an APE case with ignored entries (label -1) removed: the
    authors' ``APELoss`` drops them before ranking; ``ious`` are scattered to the positives."""
    if case.family != "ape":
        raise ValueError(f"expected an APE case, got family {case.family!r}")
    keep = case["targets"] >= 0
    return case["logits"][keep], case["targets"][keep], case["ious"][keep], float(case.meta["lamb"]), keep

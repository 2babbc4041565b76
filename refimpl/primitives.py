"""Moved to :mod:`rankspec.refimpl.reference.primitives` (this path stays importable)."""

from ._validate import check_tie_value  # noqa: F401  (imported from here by older code)
from .reference.primitives import (SELF_RANK_CHOICES, IdentityUpdate, RankCounts, rank_counts,  # noqa: F401
                                   self_term, smoothed_step, step_values)

__all__ = ["smoothed_step", "step_values", "self_term", "rank_counts", "RankCounts", "IdentityUpdate",
           "SELF_RANK_CHOICES"]

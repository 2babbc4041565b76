"""Moved to :mod:`rankspec.refimpl.reference.ranking` (kept importable)."""

from .reference.ranking import CoreOutput, ranking_sorting_loop  # noqa: F401

__all__ = ["CoreOutput", "ranking_sorting_loop"]

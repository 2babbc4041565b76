"""Rank & Sort Loss: moved to :mod:`rankspec.refimpl.losses.ap_rs` (this path stays importable)."""

from .losses.ap_rs import RS_RECORD, rs_loss  # noqa: F401

__all__ = ["rs_loss"]

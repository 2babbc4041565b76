"""AP Loss: moved to :mod:`rankspec.refimpl.losses.ap_rs` (this path stays importable)."""

from .losses.ap_rs import AP_RECORD, ap_loss  # noqa: F401

__all__ = ["ap_loss"]

"""Bucketed AP / RS Losses: moved to :mod:`rankspec.refimpl.losses.ap_rs` (public functions) and
:mod:`rankspec.refimpl.reference.ranking` (buckets and math); this path stays importable."""

from .losses.ap_rs import BUCKETED_AP_RECORD, BUCKETED_RS_RECORD, bucketed_ap_loss, bucketed_rs_loss  # noqa: F401
from .reference.ranking import Buckets, make_buckets  # noqa: F401

__all__ = ["Buckets", "make_buckets", "bucketed_ap_loss", "bucketed_rs_loss"]

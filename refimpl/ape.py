"""Old import path of the APE family (kept for compatibility).

The family now lives in :mod:`rankspec.refimpl.losses.ape` (public functions,
validator, records, conventions), :mod:`rankspec.refimpl.reference.ape` (the
plain math) and :mod:`rankspec.refimpl.reference.arps` (the ARPS cluster
split); this module re-exports their public names.
"""

from __future__ import annotations

from .losses.ape import (APE_NORMALIZATION_CHOICES, APE_SELF_RANK_CHOICES, BALANCE_CHOICES,  # noqa: F401
                         DISTANCE_CHOICES, SATURATION_CHOICES, ape_loss, arps_negative_sets, ce_distance,
                         pairwise_error_loss, sigmoid_distance)
from .reference.arps import (COVARIANCE_CHOICES, FEATURES_CHOICES, SEPARATION_CHOICES,  # noqa: F401
                             SMALL_INSTANCE_CHOICES, arps_cluster_split)

__all__ = ["sigmoid_distance", "ce_distance", "arps_negative_sets", "pairwise_error_loss", "ape_loss",
           "arps_cluster_split", "DISTANCE_CHOICES", "BALANCE_CHOICES", "APE_SELF_RANK_CHOICES",
           "APE_NORMALIZATION_CHOICES", "SATURATION_CHOICES"]

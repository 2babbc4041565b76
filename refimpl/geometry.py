"""Moved to :mod:`rankspec.refimpl.reference.geometry` (this path stays importable)."""

from .reference.geometry import (Z_ORIGINS, clip_convex_polygon, polygon_area, rotated_bev_intersection,  # noqa: F401
                                 rotated_bev_iou, rotated_box_corners, rotated_iou_3d)

__all__ = ["Z_ORIGINS", "rotated_box_corners", "clip_convex_polygon", "polygon_area", "rotated_bev_intersection",
           "rotated_bev_iou", "rotated_iou_3d"]

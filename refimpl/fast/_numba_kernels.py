"""Numba kernels of the exact near-linear AP / RS / bucketed algorithms (CPU).

The kernels live in :mod:`.kernels`: building blocks in :mod:`.kernels.primitives`, the passes
and stages in :mod:`.kernels.stages`, the scalar helpers shared with the CUDA kernels in
:mod:`.kernels.scalar`.  This module re-exports them under their historical names.
"""

from __future__ import annotations

from .kernels.primitives import (S, boundaries, cell_of, count_tab, dd_diff, distinct, h_positive, make_table,
                                 prefix_dd, prefix_dd3, slot_delta, slot_exact, slot_of, sum_scale, table_scale)
from .kernels.stages import (bucket_assign_par, bucket_assign_ser, bucket_extent, bucket_grad_par, bucket_grad_ser,
                             bucket_offsets, bucket_prototypes, collect_par, collect_ser, grad_par, grad_ser,
                             hist_par, hist_ser, positive_stage, prototypes_from, scan_par, scan_ser, slot_dtype,
                             slot_values, weighted_hist)

__all__ = ["S", "boundaries", "cell_of", "count_tab", "dd_diff", "distinct", "h_positive", "make_table", "prefix_dd",
           "prefix_dd3", "slot_delta", "slot_exact", "slot_of", "sum_scale", "table_scale", "bucket_assign_par",
           "bucket_assign_ser", "bucket_extent", "bucket_grad_par", "bucket_grad_ser", "bucket_offsets",
           "bucket_prototypes", "collect_par", "collect_ser", "grad_par", "grad_ser", "hist_par", "hist_ser",
           "positive_stage", "prototypes_from", "scan_par", "scan_ser", "slot_dtype", "slot_values", "weighted_hist"]

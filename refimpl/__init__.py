"""rankspec.refimpl - readable NumPy reference implementations (the oracle).

Layout: :mod:`.record` (one :class:`LossRecord` per loss and their registry),
:mod:`.losses` (public functions + records, one module per family),
:mod:`.reference` (the plain math on validated float64 arrays),
:mod:`.fast` (kernels and their per-backend glue), :mod:`._validate` /
:mod:`._inputs` (the validators), :mod:`.scope` (per-image combination),
:mod:`.constants` (shared constants).

Every public function is registered in :mod:`rankspec.refimpl.registry` with
the paper and equation it implements.  Everything here is float64 NumPy; this
package never imports torch.
"""

from ._result import LossResult
from .constants import BACKENDS
from .record import Convention, LossRecord, get_record, records, register_record
from .registry import PAPERS, entries, implements, lookup
from .reference.primitives import IdentityUpdate, rank_counts, smoothed_step
from .losses.ap_rs import ap_loss, bucketed_ap_loss, bucketed_rs_loss, rs_loss  # AP / RS family (records)
from .reference.ranking import make_buckets
from .scope import per_image_weights, combine_per_image
from .losses.dr import dr_loss, hard_negative_prior  # DR Loss (DR); registers the DR family
from .losses.rankdet import (class_specific_ranking_loss, global_ranking_loss, iou_guided_ranking_loss,  # RankDet
                             rankdet_loss)
from .losses.ape import ape_loss, arps_cluster_split, arps_negative_sets, pairwise_error_loss  # APE / ARPS (records)
from .losses.giou import giou_loss  # GIoU Loss (record)
from .reference.detector import box_iou, generalized_box_iou, task_balanced_loss  # RS Sec. 5 detector glue
from .reference.geometry import rotated_bev_iou, rotated_iou_3d  # rotated boxes of the 3D head (RankDet Sec. 4.4)
from .losses.alrp import alrp_loc_loss, alrp_loss, self_balancing_weight  # aLRP Loss (aLRP; RS, BRL, APE)

__version__ = "0.1.0"

__all__ = [
    "LossResult", "BACKENDS", "LossRecord", "Convention", "register_record", "get_record", "records",
    "per_image_weights", "combine_per_image", "PAPERS", "entries", "implements", "lookup",
    "IdentityUpdate", "rank_counts", "smoothed_step",
    "ap_loss", "rs_loss", "bucketed_ap_loss", "bucketed_rs_loss", "make_buckets",
    "dr_loss", "hard_negative_prior",
    "global_ranking_loss", "class_specific_ranking_loss", "iou_guided_ranking_loss", "rankdet_loss",
    "ape_loss", "pairwise_error_loss", "arps_negative_sets", "arps_cluster_split",
    "box_iou", "generalized_box_iou", "giou_loss", "task_balanced_loss",
    "rotated_bev_iou", "rotated_iou_3d",
    "alrp_loss", "alrp_loc_loss", "self_balancing_weight",
]

"""PyTorch adapters of rankspec's reference losses (needs the ``rankspec[torch]`` extra).

AP / Rank & Sort / bucketed family:

* functional: :func:`ap_loss`, :func:`rs_loss`, :func:`bucketed_ap_loss`,
  :func:`bucketed_rs_loss` - same keyword conventions and defaults as the
  NumPy reference, plus ``scope`` ("batch" or "image"), ``image_ids`` and
  ``return_terms``; a 0-d loss whose backward is the identity-update gradient.
* modules: :class:`APLossModule`, :class:`RSLossModule`,
  :class:`BucketedAPLossModule`, :class:`BucketedRSLossModule`.
* drop-in replacements with the authors' signatures: :class:`RankSort`,
  :class:`BucketedRankSort`, :class:`APLoss`, :class:`BucketedAPLoss`
  (module :mod:`.official`).

The other loss families of the papers (one module each):

* :mod:`.rankdet` - RankDetNet global / class-specific / IoU-guided ranking losses.
* :mod:`.dr` - DR Loss.
* :mod:`.ape` - AP loss as pairwise error, APE / ARPS.
* :mod:`.detector` - Rank & Sort detector glue: IoU, GIoU, GIoU loss, task balancing.

Everything runs vectorised on CPU or CUDA tensors of any floating dtype and
shape; see :mod:`rankspec.adapters.torch.functional` for the scope rules,
numerics and cost.
"""

from .functional import IdentityUpdateLoss, ap_loss, bucketed_ap_loss, bucketed_rs_loss, rs_loss
from .modules import APLossModule, BucketedAPLossModule, BucketedRSLossModule, RSLossModule
from .official import APLoss, BucketedAPLoss, BucketedRankSort, RankSort
from .rankdet import (ClassSpecificRankingLoss, GlobalRankingLoss, IoUGuidedRankingLoss, RankDetLoss,
                      class_specific_ranking_loss, global_ranking_loss, iou_guided_ranking_loss, rankdet_loss)
from .dr import DRLoss, dr_loss
from .ape import APELoss, PairwiseErrorLoss, ape_loss, arps_cluster_split, pairwise_error_loss
from .alrp import ALRPLossModule, aLRPLoss, alrp_loss
from .detector import (GIoULoss, TaskBalancedLoss, box_iou, generalized_box_iou, giou_loss, score_based_weights,
                       task_balanced_loss)

__all__ = [
    "ap_loss", "rs_loss", "bucketed_ap_loss", "bucketed_rs_loss", "IdentityUpdateLoss",
    "APLossModule", "RSLossModule", "BucketedAPLossModule", "BucketedRSLossModule",
    "RankSort", "BucketedRankSort", "APLoss", "BucketedAPLoss",
    "rankdet_loss", "global_ranking_loss", "class_specific_ranking_loss", "iou_guided_ranking_loss",
    "RankDetLoss", "GlobalRankingLoss", "ClassSpecificRankingLoss", "IoUGuidedRankingLoss",
    "dr_loss", "DRLoss", "ape_loss", "pairwise_error_loss", "arps_cluster_split", "APELoss", "PairwiseErrorLoss",
    "box_iou", "generalized_box_iou", "giou_loss", "score_based_weights", "task_balanced_loss", "GIoULoss",
    "TaskBalancedLoss",
    "alrp_loss", "aLRPLoss", "ALRPLossModule",
]

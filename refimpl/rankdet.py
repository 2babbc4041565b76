"""Moved: the RankDetNet math to :mod:`rankspec.refimpl.reference.rankdet`, the public losses, their
validators and records to :mod:`rankspec.refimpl.losses.rankdet` (this path stays importable)."""

from .losses.rankdet import (CLASS_SPECIFIC_RANKING_RECORD, GLOBAL_RANKING_RECORD,  # noqa: F401
                             IOU_GUIDED_RANKING_RECORD, RANKDET_RECORD, class_specific_ranking_loss,
                             global_ranking_loss, iou_guided_ranking_loss, rankdet_loss, reweighted_pair_loss)
from .reference.rankdet import (BACKGROUND, CLASS_REDUCTIONS, GROUP_SPLITS, IGNORE, IOU_GRADS,  # noqa: F401
                                IOU_NORMALIZATIONS, IOU_PAIRS, MININGS, OBJECTNESS, RANK_FUNCTIONS, REWEIGHTINGS,
                                SCORE_SPACES, PairLoss, group_negatives, ohem_negatives, rank_function_values)

__all__ = [
    "BACKGROUND", "IGNORE", "RANK_FUNCTIONS", "SCORE_SPACES", "REWEIGHTINGS", "MININGS", "GROUP_SPLITS",
    "OBJECTNESS", "CLASS_REDUCTIONS", "IOU_GRADS", "IOU_PAIRS", "IOU_NORMALIZATIONS",
    "rank_function_values", "reweighted_pair_loss", "PairLoss", "ohem_negatives", "group_negatives",
    "global_ranking_loss", "class_specific_ranking_loss", "iou_guided_ranking_loss", "rankdet_loss",
]

"""Metrics of the demo: Spearman's rho, greedy matching of detections, all-point interpolated AP."""

from __future__ import annotations

import numpy as np

__all__ = ["spearman", "match_detections", "average_precision"]


def spearman(scores, ious) -> float:
    """Spearman's rho of two 1-D arrays (``scipy.stats.spearmanr``); NaN for fewer than 3 or constant values."""
    from scipy.stats import spearmanr

    s, u = np.asarray(scores, dtype=np.float64), np.asarray(ious, dtype=np.float64)
    if s.size < 3 or np.all(s == s[0]) or np.all(u == u[0]):
        return float("nan")
    return float(spearmanr(s, u).statistic)


def match_detections(scores: np.ndarray, iou: np.ndarray, iou_thr: float) -> np.ndarray:
    """True-positive flags of one image's detections for one class.

    ``iou`` is ``(D, G)`` (detections x ground truths).  Detections are taken
    by descending score; each is a true positive when its best IoU with a
    still-unmatched ground truth is ``>= iou_thr`` (that ground truth is then
    matched).  Returns flags in the input order.
    """
    D = len(scores)
    tp = np.zeros(D, dtype=bool)
    if D == 0 or iou.shape[1] == 0:
        return tp
    taken = np.zeros(iou.shape[1], dtype=bool)
    for d in np.argsort(-np.asarray(scores), kind="stable"):
        cand = np.where(taken, -1.0, iou[d])
        g = int(np.argmax(cand))
        if cand[g] >= iou_thr:
            tp[d] = True
            taken[g] = True
    return tp


def average_precision(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> float:
    r"""AP with all-point interpolated precision (VOC 2010+ / COCO without the 101-point sampling).

    Detections pooled over images are sorted by score (ties: stable); recall
    :math:`r_k = TP_k / G`, precision :math:`p_k = TP_k / k`; AP is
    :math:`\sum_k (r_k - r_{k-1}) \max_{j\ge k} p_j`.  No ground truth: NaN.
    """
    if num_gt == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    flags = np.asarray(tp, dtype=np.float64)[order]
    if flags.size == 0:
        return 0.0
    ctp = np.cumsum(flags)
    recall = ctp / num_gt
    precision = ctp / np.arange(1, flags.size + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    prev = np.concatenate([[0.0], recall[:-1]])
    return float(np.sum((recall - prev) * envelope))

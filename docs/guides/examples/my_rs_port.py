"""A NumPy port of the Rank & Sort loss (ICCV 2021), as one might write it from the authors' code."""
import numpy as np


def rank_sort(logits, targets, delta=0.5, eps=1e-10):
    """Return (loss, grad): the RS loss (ranking + sorting) and its gradient w.r.t. logits."""
    logits = np.asarray(logits, dtype=float)
    targets = np.asarray(targets, dtype=float)
    grad = np.zeros_like(logits)
    fg = targets > 0
    if not fg.any():
        return 0.0, grad
    fg_logits, fg_targets = logits[fg], targets[fg]
    bg = (targets == 0) & (logits >= fg_logits.min() - delta)
    bg_logits = logits[bg]
    fg_grad, bg_grad = np.zeros(fg.sum()), np.zeros(bg.sum())
    rank_err, sort_err = np.zeros(fg.sum()), np.zeros(fg.sum())
    for i in range(fg.sum()):
        fg_rel = np.clip((fg_logits - fg_logits[i]) / (2 * delta) + 0.5, 0, 1)
        fg_rel[i] = 1.0                        # a positive ranks at least as high as itself
        bg_rel = np.clip((bg_logits - fg_logits[i]) / (2 * delta) + 0.5, 0, 1)
        rank_pos, n_fp = fg_rel.sum(), bg_rel.sum()
        rank_err[i] = n_fp / (rank_pos + n_fp)
        current = (fg_rel * (1 - fg_targets)).sum() / rank_pos
        higher_iou = fg_targets >= fg_targets[i]
        target = (higher_iou * fg_rel * (1 - fg_targets)).sum() / (higher_iou * fg_rel).sum()
        sort_err[i] = current - target
        if n_fp > eps:
            fg_grad[i] -= rank_err[i]
            bg_grad += bg_rel * rank_err[i] / n_fp
        missorted = ~higher_iou * fg_rel
        if sort_err[i] > eps:
            fg_grad[i] -= sort_err[i]
            fg_grad += missorted * sort_err[i] / missorted.sum()
    grad[fg], grad[bg] = fg_grad / fg.sum(), bg_grad / fg.sum()
    return rank_err.mean() + sort_err.mean(), grad

"""DR Loss in PyTorch for the corpus (written from DR Eqs. 5-9: KL-regularised expectations of the
negatives' and positives' sigmoid scores, logistic surrogate, summed over images), with porting-mistake switches."""

from __future__ import annotations

import torch


class _FlipGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mask):
        ctx.save_for_backward(mask)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved_tensors
        return torch.where(mask, -g, g), None


def dr_torch(logits, labels, image_ids=None, *, gamma=0.5, lambda_pos=1.0, lambda_neg=0.1 / 1.252762968495368,
             L=6.0, tau=4.0, pooled=False, dtype=None, mean_over_images=False, ignored_as_negative=False,
             crash_no_positives=False, detach_q=False, flip_neg=False, detached=False):
    x = logits if dtype is None else logits.to(dtype)
    C = x.shape[1]
    if labels.shape == x.shape:  # per-entry labels 1 / 0 / -1
        pos = labels == 1
        neg = (labels == 0) | ((labels < 0) & ignored_as_negative)
    else:
        cls = torch.arange(1, C + 1, device=x.device)
        lab = labels[:, None]
        pos = lab == cls
        neg = (lab != cls) & ((lab >= 0) | ignored_as_negative)
    if flip_neg:
        x = _FlipGrad.apply(x, neg)
    p = torch.sigmoid(x)
    if image_ids is None or pooled:
        ids = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    else:
        ids = image_ids
    total = x.new_zeros(())
    groups = torch.unique(ids)
    for g in groups:
        rows = ids == g
        pn = p[rows][neg[rows]]
        pp = p[rows][pos[rows]]
        if pn.numel():
            qn = torch.softmax(pn / lambda_neg, 0)
            en = ((qn.detach() if detach_q else qn) * pn).sum()
        else:
            en = x.new_tensor(0.0)
        if pp.numel():
            qp = torch.softmax(-pp / lambda_pos, 0)
            ep = ((qp.detach() if detach_q else qp) * pp).sum()
        elif crash_no_positives:
            raise IndexError("index 0 is out of bounds for dimension 0 with size 0")
        else:
            ep = x.new_tensor(1.0)
        z = en - ep + gamma
        total = total + tau * torch.nn.functional.softplus(L * z) / L
    if mean_over_images:
        total = total / len(groups)
    if detached:
        total = total.detach()
    return total.to(logits.dtype)

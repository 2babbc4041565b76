"""A DR Loss module with the DR authors' call convention and quirks, written from the paper, rankspec's
reference (:mod:`rankspec.refimpl.reference.dr`) and the v2 vectors' README; not their code.

``SigmoidDRLoss(pos_lambda=1, neg_lambda=0.1/log(3.5), L=6., tau=4.)(logits, targets) -> loss``:

* ``logits`` ``[n, C]``; ``targets`` ``[n]`` class ids: 0 background, ``1..C`` a class, -1 ignored row;
  entry ``(i, k-1)`` is positive iff ``targets[i] == k`` and negative iff ``targets[i] >= 0`` otherwise;
* one call ranks every entry it is given as one distribution per side (the detector calls it once on every
  row of the batch: the pooled reading, ``dr_loss(image_ids=None)``); there is no ``image_ids`` parameter;
* P-hat_- = sum q- p over the negatives, q- = softmax(p / neg_lambda) (DR Prop. 1, Eq. 6), P-hat_+ likewise
  with softmax(-p / pos_lambda) over the positives, and P-hat_+ = 1 when there is no positive entry;
  an empty negative side sums to 0;
* loss = tau * log(1 + exp(L (P-hat_- - P-hat_+ + margin))) / L (DR Eqs. 8-9), margin 0.5; the gradient is
  autograd's (the distributions are not detached);
* it computes in the dtype it is given and never raises on an empty side.

O(n C) time and memory.
"""

import math

import torch
from torch import nn


class SigmoidDRLoss(nn.Module):
    def __init__(self, pos_lambda=1.0, neg_lambda=0.1 / math.log(3.5), L=6.0, tau=4.0, margin=0.5):
        super().__init__()
        self.pos_lambda = pos_lambda
        self.neg_lambda = neg_lambda
        self.L = L
        self.tau = tau
        self.margin = margin

    def forward(self, logits, targets):
        num_classes = logits.shape[1]
        classes = torch.arange(1, num_classes + 1, dtype=targets.dtype, device=targets.device).unsqueeze(0)
        t = targets.unsqueeze(1)
        probs = torch.sigmoid(logits)
        is_pos = t == classes
        is_neg = (t != classes) & (t >= 0)
        p_neg = probs[is_neg]
        p_pos = probs[is_pos]
        q_neg = torch.softmax(p_neg / self.neg_lambda, dim=0)
        expected_neg = torch.sum(q_neg * p_neg)
        if p_pos.numel() > 0:
            q_pos = torch.softmax(-p_pos / self.pos_lambda, dim=0)
            expected_pos = torch.sum(q_pos * p_pos)
        else:
            expected_pos = probs.new_ones(())
        z = self.L * (expected_neg - expected_pos + self.margin)
        return self.tau * torch.nn.functional.softplus(z) / self.L

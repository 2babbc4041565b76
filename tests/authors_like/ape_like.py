"""An APE loss module with the APE authors' call convention and quirks, written from the APE paper, rankspec's
reference (:mod:`rankspec.refimpl.reference.ape`, whose ``ape_loss`` defaults reproduce the authors) and the
v2 vectors' README; not their code.

``APELoss(lamb=4, topk=100000, loss_weight=1)(logits, targets, ious_pos) -> loss``:

* flattened ``logits`` [n]; ``targets`` 1 positive, 0 negative, -1 ignored; ``ious_pos`` [P]: the IoUs of the
  positives only, in flat order (what the authors' head passes);
* float32 sigmoid S(x) = sigmoid(lamb x) of x = s_v - s_u and the cross entropy through the clamped
  ``F.binary_cross_entropy(S, 0)`` (log clamped at -100, backward over max(S (1 - S), 1e-12));
* pairs with s_v - s_u > -4 / lamb only; at most ``topk`` negatives (the highest, above the lowest positive
  logit - 4 / lamb) take part;
* for each positive u: A_u = the valid negatives and the valid positives with a lower IoU (ARPS); its term is
  IoU_u / lamb * sum_{v in A_u} BCE / BC_u with BC_u = 0.5 + sum_{valid v != u} S (detached); positives without
  a valid member of A_u are skipped; the loss is the mean over the others, times ``loss_weight``;
* quirks: raises with no positive (``torch.min`` of nothing) and when no positive has a valid pair
  (``torch.cat`` of an empty list).

O(P n) time, O(n) memory per positive (a test double, not a fast path).
"""

import torch
import torch.nn.functional as F
from torch import nn


class APELoss(nn.Module):
    def __init__(self, lamb=4, topk=100000, loss_weight=1):
        super().__init__()
        self.lamb = lamb
        self.topk = topk
        self.loss_weight = loss_weight

    def forward(self, logits, targets, ious_pos):
        logits = logits.reshape(-1)
        targets = targets.reshape(-1)
        margin = 4.0 / self.lamb
        is_pos = targets == 1
        pos_idx = torch.nonzero(is_pos).reshape(-1)
        floor = torch.min(logits[is_pos], dim=0).values - margin  # raises with no positive (IndexError)
        neg_idx = torch.nonzero((targets == 0) & (logits > floor)).reshape(-1)
        if neg_idx.numel() > self.topk:
            neg_idx = neg_idx[torch.topk(logits[neg_idx], self.topk).indices]
        s_neg = logits[neg_idx]
        s_pos = logits[pos_idx]
        ious = ious_pos.reshape(-1).to(logits.dtype)
        terms = []
        for k in range(pos_idx.numel()):
            s_u = s_pos[k]
            neg_ok = s_neg - s_u > -margin
            pos_ok = s_pos - s_u > -margin
            pos_ok[k] = False
            afp = pos_ok & (ious < ious[k])
            if not (neg_ok.any() or afp.any()):
                continue
            x_all = torch.cat([s_neg[neg_ok], s_pos[pos_ok]]) - s_u
            with torch.no_grad():
                balance = 0.5 + torch.sigmoid(self.lamb * x_all).sum()
            members = torch.cat([s_neg[neg_ok], s_pos[afp]]) - s_u
            prob = torch.sigmoid(self.lamb * members)
            bce = F.binary_cross_entropy(prob, torch.zeros_like(prob), reduction="sum")
            terms.append(ious[k] * bce / self.lamb / balance)
        return self.loss_weight * torch.cat([t.reshape(1) for t in terms]).mean()  # raises when terms is empty

"""An aLRP Loss with the authors' call convention and quirks, written from the issue's description.

``aLRPLoss.apply(logits, targets, regression_losses, delta=1.0, eps=1e-5) -> (cls_loss, rank, order)``:

* flattened inputs; targets 1 positive, 0 negative, anything else ignored;
* buffers made with ``torch.zeros`` (float32 on the CPU whatever the input dtype), so the outputs and the
  saved gradient are float32;
* the threshold ``min(positive logits) - delta`` is taken with ``torch.min``, which raises when there is
  no positive (the documented difference from rankspec, which returns 0);
* backward: the saved identity-update gradient times the first output's incoming gradient; nothing for
  the other inputs.

Written as a plain loop over the positives (O(P (P + N))); it is a test double, not a fast path.
"""

import torch


class aLRPLoss(torch.autograd.Function):  # noqa: N801 - the authors' class name
    @staticmethod
    def forward(ctx, logits, targets, regression_losses, delta=1.0, eps=1e-5):
        grads = torch.zeros(logits.shape)
        is_pos = targets == 1
        s_pos = logits[is_pos]
        num_pos = s_pos.numel()
        threshold = torch.min(s_pos) - delta  # raises with no positive, as the authors' code does
        is_rel = (targets == 0) & (logits >= threshold)
        s_rel = logits[is_rel]
        grad_rel = torch.zeros(s_rel.numel())
        rank = torch.zeros(num_pos)
        precision = torch.zeros(num_pos)
        grad_pos = torch.zeros(num_pos)
        order = torch.argsort(s_pos)

        def step(x):
            return torch.clamp(x / (2 * delta) + 0.5, min=0, max=1)

        for i in order:
            h_pos = step(s_pos - s_pos[i])
            h_pos[i] = 0
            h_rel = step(s_rel - s_pos[i])
            rank_plus = 1 + torch.sum(h_pos)
            n_fp = torch.sum(h_rel)
            rank[i] = rank_plus + n_fp
            precision[i] = rank_plus / rank[i]
            if n_fp > eps:
                grad_pos[i] = -(torch.sum(h_pos * regression_losses) + n_fp) / rank[i]
                grad_rel += h_rel * (-grad_pos[i] / n_fp)
        grads[is_pos] = grad_pos
        grads[is_rel] = grad_rel
        grads /= num_pos
        ctx.save_for_backward(grads)
        return 1 - precision.mean(), rank, order

    @staticmethod
    def backward(ctx, out_grad1, out_grad2, out_grad3):
        (grads,) = ctx.saved_tensors
        return grads * out_grad1, None, None, None, None

"""Drop-in replacements for the authors' ``torch.autograd.Function`` classes.

Same call signatures and outputs as the public code of the Rank & Sort and
bucketed-losses authors, so a training script can swap the import::

    from rankspec.adapters.torch.official import RankSort
    ranking, sorting = RankSort.apply(logits, targets, 0.5)
    (ranking + sorting).backward()

=======================================================  ==========================================================
Call                                                     Same numbers as
=======================================================  ==========================================================
``RankSort.apply(logits, targets, delta=0.5)``           ``rs_loss(logits, targets, delta)`` (ranking, sorting)
``BucketedRankSort.apply(logits, targets, delta=0.5)``   ``bucketed_rs_loss(logits, targets, delta)``
``APLoss.apply(logits, labels, delta=1.0)``              ``ap_loss(logits, labels, delta, interpolated=True)``
``BucketedAPLoss.apply(logits, labels, delta=1.0)``      ``bucketed_ap_loss(logits, labels, delta)``
=======================================================  ==========================================================

Differences from the authors' code: inputs are validated (labels must be 0/1,
targets in [0, 1]); any shape, dtype (floating) and device is accepted; zero
positives give 0 losses with a zero gradient, and ``BucketedAPLoss`` returns 0
with a zero gradient where the authors' version raises ``IndexError`` (no
negative above the threshold); ``delta=0`` is the exact step (``x >= 0`` counts
as 1).  Computation is vectorised float64 (see :mod:`.functional` for the cost).

Distributed training: a last positional argument ``scope`` (default ``"batch"``) accepts
``"distributed"``, e.g. ``RankSort.apply(logits, targets, 0.5, "distributed")``: the losses are those
of the union of every rank's inputs (the same on every rank) and the saved gradient is this rank's
rows of the global gradient times the world size, so that DistributedDataParallel's gradient mean
gives the single-process gradient of the whole batch (see :mod:`._distributed`).

Backward, as in the authors' code: ``RankSort`` and ``BucketedRankSort``
return two outputs but their backward uses **only the incoming gradient of
the first output** (``grad * out_grad1``); the saved gradient is already that
of ranking + sorting, so ``(ranking + sorting).backward()`` trains on the full
RS loss, while gradient that flows only into ``sorting`` is ignored.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from rankspec.refimpl._validate import check_choice

from . import _distributed, _engine
from ._inputs import _as_tensor_like, parse

__all__ = ["RankSort", "BucketedRankSort", "APLoss", "BucketedAPLoss", "DROP_IN_SCOPES"]

#: the optional last positional argument of the drop-ins
DROP_IN_SCOPES = ("batch", "distributed")


def _run(ctx, logits, labels, delta, scope, *, continuous, self_rank, **engine):
    name = "targets" if continuous else "labels"
    check_choice(scope, "scope", DROP_IN_SCOPES)
    if scope == "distributed":
        def prepare():
            if not isinstance(logits, torch.Tensor):
                raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
            lab = _as_tensor_like(labels, name, logits)
            if lab.shape != logits.shape:
                raise ValueError(f"logits has shape {tuple(logits.shape)} but {name} has shape {tuple(lab.shape)}; "
                                 f"they must match")
            return [logits.reshape(-1), lab.reshape(-1)]

        (g, y), info = _distributed.gather_prepared(prepare, ["logits", name])
        x = parse(g, y, delta, labels_name=name, continuous=continuous, self_rank=self_rank, tie_value=1.0,
                  normalization="positives")
        out = _engine.compute(x, self_rank=self_rank, **engine)
        n = logits.numel()
        local = out.grad[info.offset:info.offset + n] * info.world_size  # rule of ._distributed
        ctx.save_for_backward(local.reshape(logits.shape).to(x.dtype))
        return x, out
    x = parse(logits, labels, delta, labels_name=name, continuous=continuous,
              self_rank=self_rank, tie_value=1.0, normalization="positives")
    out = _engine.compute(x, self_rank=self_rank, **engine)
    ctx.save_for_backward(out.grad.reshape(x.shape).to(x.dtype))
    return x, out


class _SavedGradientFunction(torch.autograd.Function):
    """Backward shared by the four drop-ins: the gradient saved by forward times the incoming
    gradient of the first output (the authors' ``g1 * out_grad1``; a second output's is ignored)."""

    @staticmethod
    @once_differentiable
    def backward(ctx, out_grad1, *ignored_out_grads):
        (grad,) = ctx.saved_tensors
        return grad * out_grad1, None, None, None


class RankSort(_SavedGradientFunction):
    """Rank & Sort Loss with the Rank & Sort authors' interface.

    ``RankSort.apply(logits, targets, delta=0.5) -> (ranking, sorting)``: the
    means over positives of the ranking error and of current-minus-target
    sorting error (RS Eqs. 6-8).  Backward returns the identity-update
    gradient of ranking + sorting times the first output's incoming gradient
    only.  Time O((N + P) log(N + P) + P^2).
    """

    @staticmethod
    def forward(ctx, logits, targets, delta=0.5, scope="batch"):
        x, out = _run(ctx, logits, targets, delta, scope, continuous=True, self_rank="h0", sorting=True)
        return out.terms["ranking"].to(x.dtype), out.terms["sorting"].to(x.dtype)


class BucketedRankSort(_SavedGradientFunction):
    """Bucketed Rank & Sort Loss with the bucketed authors' interface.

    ``BucketedRankSort.apply(logits, targets, delta=0.5) -> (ranking, sorting)``;
    backward as :class:`RankSort` (first output's incoming gradient only).
    Negatives below ``min positive logit - delta`` are dropped; a negative tied
    with a positive joins the bucket above it.  Time O(N log P + P^2).
    """

    @staticmethod
    def forward(ctx, logits, targets, delta=0.5, scope="batch"):
        x, out = _run(ctx, logits, targets, delta, scope, continuous=True, self_rank="h0", sorting=True,
                      bucketed=True)
        return out.terms["ranking"].to(x.dtype), out.terms["sorting"].to(x.dtype)


class APLoss(_SavedGradientFunction):
    """AP Loss as shipped in the Rank & Sort authors' repository (AP-Loss authors' formulation).

    ``APLoss.apply(logits, labels, delta=1.0) -> loss`` = 1 - mean interpolated
    precision, self term 1.  Time O((N + P) log(N + P)).
    """

    @staticmethod
    def forward(ctx, logits, labels, delta=1.0, scope="batch"):
        x, out = _run(ctx, logits, labels, delta, scope, continuous=False, self_rank="one", sorting=False,
                      interpolated=True)
        return out.loss.to(x.dtype)


class BucketedAPLoss(_SavedGradientFunction):
    """Bucketed AP Loss with the bucketed authors' interface.

    ``BucketedAPLoss.apply(logits, labels, delta=1.0) -> loss`` (mean ranking
    error, self term H(0)).  Time O(N log P + P log P).
    """

    @staticmethod
    def forward(ctx, logits, labels, delta=1.0, scope="batch"):
        x, out = _run(ctx, logits, labels, delta, scope, continuous=False, self_rank="h0", sorting=False,
                      bucketed=True)
        return out.loss.to(x.dtype)

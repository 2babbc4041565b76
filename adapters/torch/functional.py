"""Functional PyTorch versions of AP, RS, bucketed AP and bucketed RS Loss.

Each function takes the keyword conventions of its NumPy reference
(:mod:`rankspec.refimpl`) with the same defaults, plus ``scope`` /
``image_ids`` and ``return_terms``, and returns a 0-d loss tensor (dtype and
device of ``logits``).  The loss is differentiable through a
``torch.autograd.Function`` whose backward returns the identity-update /
error-driven gradient (RS Eq. 5, BRL Eq. 3.9) times the incoming gradient.
This gradient is *not* the derivative of the step-function surrogate, so
``torch.autograd.gradcheck`` does not apply; it equals the reference's
``LossResult.grad`` instead.

Scope
-----
``scope="batch"`` (default): one ranking over all logits, as the Rank & Sort
authors do.  ``scope="image"``: an independent ranking per image, given
``image_ids`` - an integer tensor with the logits' shape, or with a leading
part of it (e.g. shape ``(B,)`` for logits ``(B, A, C)``, one id per row),
broadcast over the rest.  The loss is the mean, over the K images that have at
least one positive, of the per-image loss (each normalised by its own |P|);
the gradient is each image's reference gradient divided by K.  Logits of
images without positives get zero gradient.  With no positive anywhere the
loss is 0 with a zero gradient (still attached to the graph).

``scope="distributed"``: one ranking over the union of every rank's logits
(``torch.distributed`` must be initialised; ``image_ids`` is not used): the
rows of all ranks are all-gathered, every rank computes the same loss on the
concatenation (rank order), and each rank's logits get their own rows of that
loss's gradient times the world size W, so that DistributedDataParallel's mean
over ranks yields exactly the single-process gradient of the whole batch.  A
rank may hold no positive or no logit at all.  See
:mod:`rankspec.adapters.torch._distributed` for the rule, the cost and the
errors.

Engines
-------
``engine="auto"`` (default; environment ``RANKSPEC_TORCH_ENGINE``): CPU tensors with at least
``RANKSPEC_TORCH_NUMBA_MIN_SIZE`` (1024) logits are computed by the exact numba kernels of
:mod:`rankspec.refimpl.fast` (O(N log P + P log P), much faster on a CPU, see
``rankspec bench --backends numba,torch``), everything else by the vectorised torch engine below.
``engine="torch"`` / ``"numba"`` force one (numba needs CPU tensors).  Both give the reference's
numbers (to ~1e-12 in float64), cast to the logits' dtype.  See :mod:`._engine`.

Numerics and cost
-----------------
Computed in float64 whatever the input dtype, then cast back.  Time
O((N + P) log(N + P)) for AP and bucketed AP with N logits and P positives;
RS and bucketed RS add the P x P sorting part (the paper's algorithm), done in
row blocks.  Memory O(N + P), plus O(min(P^2, 4M)) for the sorting part.
No Python loop over positives: everything is sort / cumsum / searchsorted /
bincount, so CUDA tensors run on the GPU (no atomics: deterministic).  Double backward is not supported.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import _distributed, _engine
from ._inputs import _as_tensor_like, check_return_terms, parse

__all__ = ["ap_loss", "rs_loss", "bucketed_ap_loss", "bucketed_rs_loss", "IdentityUpdateLoss"]


class IdentityUpdateLoss(torch.autograd.Function):
    """Attach a precomputed gradient to a loss value.

    ``IdentityUpdateLoss.apply(logits, loss, grad)`` returns ``loss`` (a copy);
    its backward returns ``grad * grad_output`` for ``logits``.  ``loss`` and
    ``grad`` must not require grad.  Used by every functional loss here.
    """

    @staticmethod
    def forward(ctx, logits, loss, grad):
        ctx.save_for_backward(grad)
        return loss.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None


def _finish(logits, x, out, return_terms):
    loss = out.loss.to(x.dtype)
    grad = out.grad.reshape(x.shape).to(x.dtype)
    result = IdentityUpdateLoss.apply(logits, loss, grad)
    if not return_terms:
        return result
    return result, {k: v.to(x.dtype) for k, v in out.terms.items()}


def _distributed_loss(fn, logits, labels, labels_name, image_ids, return_terms, kwargs):
    """``fn`` (scope "batch") on the rows of every rank; this rank's gradient times the world size."""
    def prepare():
        if image_ids is not None:
            raise ValueError("image_ids is only used with scope='image'; scope='distributed' ranks the union of "
                             "every rank's logits as one batch")
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
        if not logits.is_floating_point():
            raise TypeError(f"logits must have a floating-point dtype (float16, bfloat16, float32 or float64), "
                            f"got {logits.dtype}")
        lab = _as_tensor_like(labels, labels_name, logits)
        if lab.shape != logits.shape:
            raise ValueError(f"logits has shape {tuple(logits.shape)} but {labels_name} has shape "
                             f"{tuple(lab.shape)}; they must match")
        return [logits.reshape(-1), lab.detach().reshape(-1)]

    (g, y), info = _distributed.gather_prepared(prepare, ["logits", labels_name])
    out = fn(g, y, scope="batch", return_terms=return_terms, **kwargs)
    if return_terms:
        return _distributed.scale_gradient(out[0], info.world_size), out[1]
    return _distributed.scale_gradient(out, info.world_size)


def ap_loss(logits, labels, delta: float = 1.0, interpolated: bool = False, *, self_rank: str = "one",
            tie_value: float = 1.0, normalization: str = "positives", scope: str = "batch", image_ids=None,
            return_terms: bool = False, engine=None):
    r"""AP Loss :math:`1 - \mathrm{AP}` (BRL Eqs. 3.3-3.4, 3.10) with the identity-update gradient.

    Same conventions and defaults as :func:`rankspec.refimpl.ap_loss`
    (``self_rank="one"``: the AP-Loss authors' code).  ``interpolated=True``
    uses the interpolated precision (running maximum over positives with
    lower or equal logits, ties in index order).  ``labels``: 1 positive,
    0 negative (bool accepted).  Returns the loss, or ``(loss, {"ranking": ...})``
    with ``return_terms=True`` (terms are detached).

    Time O((N + P) log(N + P)), memory O(N + P).
    """
    return_terms = check_return_terms(return_terms)
    if scope == "distributed":
        return _distributed_loss(ap_loss, logits, labels, "labels", image_ids, return_terms,
                                 dict(delta=delta, interpolated=interpolated, self_rank=self_rank, tie_value=tie_value,
                                      normalization=normalization, engine=engine))
    x = parse(logits, labels, delta, labels_name="labels", continuous=False, self_rank=self_rank,
              tie_value=tie_value, normalization=normalization, scope=scope, image_ids=image_ids,
              interpolated=interpolated)
    with torch.no_grad():
        out = _engine.compute(x, sorting=False, interpolated=x.interpolated, self_rank=self_rank, engine=engine)
    return _finish(logits, x, out, return_terms)


def rs_loss(logits, targets, delta: float = 0.5, *, self_rank: str = "h0", tie_value: float = 1.0,
            normalization: str = "positives", scope: str = "batch", image_ids=None, return_terms: bool = False,
            engine=None):
    r"""Rank & Sort Loss (RS Eqs. 6-12, BRL Eqs. 3.11-3.18) with the identity-update gradient.

    Same conventions and defaults as :func:`rankspec.refimpl.rs_loss` (the
    Rank & Sort authors' ``RankSort``).  ``targets``: IoU in (0, 1] for
    positives, 0 for negatives.  Loss = ranking + sorting;
    ``return_terms=True`` gives ``(loss, {"ranking": ..., "sorting": ...})``.

    Time O((N + P) log(N + P) + P^2), memory O(N + P + min(P^2, 4M)).
    """
    return_terms = check_return_terms(return_terms)
    if scope == "distributed":
        return _distributed_loss(rs_loss, logits, targets, "targets", image_ids, return_terms,
                                 dict(delta=delta, self_rank=self_rank, tie_value=tie_value,
                                      normalization=normalization, engine=engine))
    x = parse(logits, targets, delta, labels_name="targets", continuous=True, self_rank=self_rank,
              tie_value=tie_value, normalization=normalization, scope=scope, image_ids=image_ids)
    with torch.no_grad():
        out = _engine.compute(x, sorting=True, self_rank=self_rank, engine=engine)
    return _finish(logits, x, out, return_terms)


def bucketed_ap_loss(logits, labels, delta: float = 1.0, *, self_rank: str = "h0", tie_value: float = 1.0,
                     normalization: str = "positives", threshold: bool = True, tied_negatives: str = "above",
                     scope: str = "batch", image_ids=None, return_terms: bool = False, engine=None):
    r"""Bucketed AP Loss (BRL Eqs. 3.19-3.33, Alg. 2) with its gradient.

    Same conventions and defaults as :func:`rankspec.refimpl.bucketed_ap_loss`
    (the bucketed authors' ``BucketedAPLoss``; where that code raises because
    no negative lies above the threshold, the loss is 0 with zero gradient).
    Buckets are formed per image with ``scope="image"``.

    Time O(N log P + P log P), memory O(N + P).
    """
    return_terms = check_return_terms(return_terms)
    if scope == "distributed":
        return _distributed_loss(bucketed_ap_loss, logits, labels, "labels", image_ids, return_terms,
                                 dict(delta=delta, self_rank=self_rank, threshold=threshold,
                                      tied_negatives=tied_negatives, tie_value=tie_value,
                                      normalization=normalization, engine=engine))
    x = parse(logits, labels, delta, labels_name="labels", continuous=False, self_rank=self_rank,
              tie_value=tie_value, normalization=normalization, scope=scope, image_ids=image_ids,
              threshold=threshold, tied_negatives=tied_negatives)
    with torch.no_grad():
        out = _engine.compute(x, sorting=False, bucketed=True, threshold=x.threshold,
                              tied_above=x.tied_negatives == "above", self_rank=self_rank, engine=engine)
    return _finish(logits, x, out, return_terms)


def bucketed_rs_loss(logits, targets, delta: float = 0.5, *, self_rank: str = "h0", tie_value: float = 1.0,
                     normalization: str = "positives", threshold: bool = True, tied_negatives: str = "above",
                     scope: str = "batch", image_ids=None, return_terms: bool = False, engine=None):
    r"""Bucketed Rank & Sort Loss (BRL Eqs. 3.34-3.38, Alg. 2) with its gradient.

    Same conventions and defaults as :func:`rankspec.refimpl.bucketed_rs_loss`
    (the bucketed authors' ``BucketedRankSort``).  Loss = ranking + sorting.

    Time O(N log P + P^2), memory O(N + P + min(P^2, 4M)).
    """
    return_terms = check_return_terms(return_terms)
    if scope == "distributed":
        return _distributed_loss(bucketed_rs_loss, logits, targets, "targets", image_ids, return_terms,
                                 dict(delta=delta, self_rank=self_rank, threshold=threshold,
                                      tied_negatives=tied_negatives, tie_value=tie_value,
                                      normalization=normalization, engine=engine))
    x = parse(logits, targets, delta, labels_name="targets", continuous=True, self_rank=self_rank,
              tie_value=tie_value, normalization=normalization, scope=scope, image_ids=image_ids,
              threshold=threshold, tied_negatives=tied_negatives)
    with torch.no_grad():
        out = _engine.compute(x, sorting=True, bucketed=True, threshold=x.threshold,
                              tied_above=x.tied_negatives == "above", self_rank=self_rank, engine=engine)
    return _finish(logits, x, out, return_terms)

# the loss record each adapter implements (rankspec.refimpl.records(); read by the generic record tests)
ap_loss.__rankspec_record__ = "ap_loss"
rs_loss.__rankspec_record__ = "rs_loss"
bucketed_ap_loss.__rankspec_record__ = "bucketed_ap_loss"
bucketed_rs_loss.__rankspec_record__ = "bucketed_rs_loss"

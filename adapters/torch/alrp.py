"""PyTorch adapters of aLRP Loss (rankspec.refimpl.losses.alrp).

* :class:`aLRPLoss` - drop-in for the authors' ``aLRPLoss`` autograd Function:
  ``cls_loss, rank, order = aLRPLoss.apply(logits, targets, regression_losses, delta=1.0)``; the
  backward of ``cls_loss`` is the identity-update gradient times the incoming gradient of the first
  output; ``rank`` and ``order`` carry no gradient, nor does ``regression_losses``.
* :func:`alrp_loss` - functional: ``(cls, loc)`` with ``loc`` differentiable w.r.t.
  ``regression_losses`` (rank detached, as the authors' heads compute it).
* :class:`ALRPLossModule` - the whole loss with the authors' self-balancing weight.

The numbers come from the NumPy reference / numba kernel of :func:`rankspec.refimpl.losses.alrp.alrp_loss`
(on a host copy of the inputs; CUDA tensors are copied to the host and the results back).  Time
O(N log P + P log P) with the numba kernel (used for inputs of at least ``NUMBA_MIN_SIZE`` logits),
O(P (P + N)) with the reference.  Differences from the authors' code: zero positives give a zero loss
with a zero gradient (the authors raise); ``order`` is a stable argsort (the authors' is not, so the
order among tied positive logits may differ); inputs are validated.

Distributed training (``scope="distributed"``; :mod:`._distributed`): the loss of the union of every
rank's inputs, concatenated in rank order (rank 0's logits first; the positives of the union are then
rank 0's positives followed by rank 1's ..., so ``regression_losses`` concatenate the same way), the
same value on every rank; this rank's logits (and ``regression_losses``, through the localisation
component) receive their rows of the global gradient times the world size W, so that
DistributedDataParallel's gradient mean gives the single-process gradient of the whole batch.
``rank`` and ``order`` returned under this scope are those of the union (indices into the union's
positives).  Functional and module: keyword ``scope``; drop-in: a last positional argument,
``aLRPLoss.apply(logits, targets, regression_losses, delta, eps, "distributed")`` (a string in the
``eps`` position is taken as the scope too: ``aLRPLoss.apply(logits, targets, e, 1.0, "distributed")``).
"""

from __future__ import annotations

from collections import deque

import torch
from torch.autograd.function import once_differentiable

from rankspec.refimpl._validate import check_choice
from rankspec.refimpl.losses.alrp import SB_WEIGHT_INITIAL, alrp_loss as _alrp_reference
from rankspec.refimpl.reference.alrp import self_balancing_weight

from . import _distributed

__all__ = ["aLRPLoss", "alrp_loss", "ALRPLossModule", "NUMBA_MIN_SIZE", "ALRP_SCOPES"]

#: ``scope`` of every aLRP adapter (the drop-in's optional last positional argument)
ALRP_SCOPES = ("batch", "distributed")

#: inputs with at least this many logits use the numba kernel (smaller ones the NumPy reference)
NUMBA_MIN_SIZE = 1024


def _host(t):
    if isinstance(t, torch.Tensor):
        return t.detach().to("cpu", torch.float64).numpy()
    return t


def _compute(logits, targets, regression_losses, delta, options):
    if isinstance(delta, torch.Tensor):
        delta = float(delta.item())
    backend = "numba" if logits.numel() >= NUMBA_MIN_SIZE else "numpy"
    return _alrp_reference(_host(logits), _host(targets), _host(regression_losses), delta, backend=backend,
                           **options)


def _gather_union(logits, targets, regression_losses):
    """All-gather ``(logits, targets, e_loc)`` of every rank (:mod:`._distributed`): returns the flat
    union ``(logits, targets, e_pos)`` and the :class:`~._distributed.DistInfo`.  ``e_loc`` travels as
    a per-logit row (zero off the positives, scattered with its graph), so one gather carries it and the
    union's positives keep the rank-major flat order; the checks run before the collectives."""
    def prepare():
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
        if not logits.is_floating_point():
            raise TypeError(f"logits must have a floating-point dtype, got {logits.dtype}")
        t = targets if isinstance(targets, torch.Tensor) else torch.as_tensor(targets, device=logits.device)
        if tuple(t.shape) != tuple(logits.shape):
            raise ValueError(f"logits has shape {tuple(logits.shape)} but targets has shape {tuple(t.shape)}; "
                             f"they must match")
        e = regression_losses if isinstance(regression_losses, torch.Tensor) else \
            torch.as_tensor(regression_losses, dtype=logits.dtype, device=logits.device)
        t = t.reshape(-1)
        pos = t == 1
        e = e.reshape(-1)
        if e.numel() != int(pos.sum()):
            raise ValueError(f"regression_losses has {e.numel()} element(s) but targets has {int(pos.sum())} "
                             f"positive(s) (entries equal to 1); give one e_loc per positive, in flat order")
        dtype = e.dtype if e.is_floating_point() else logits.dtype
        e_full = torch.zeros(t.shape[0], dtype=dtype, device=logits.device).masked_scatter(pos, e.to(dtype))
        return [logits.reshape(-1), t, e_full]

    (g, y, e_full), info = _distributed.gather_prepared(prepare, ["logits", "targets", "regression_losses"])
    return g, y, e_full[y == 1], info


class _ALRPFunction(torch.autograd.Function):
    """(logits, targets, regression_losses, delta, options) -> (cls_loss, rank, order)."""

    @staticmethod
    def forward(ctx, logits, targets, regression_losses, delta, options):
        res = _compute(logits, targets, regression_losses, delta, options)
        out_dtype = torch.float32 if options.get("buffer_dtype", "float32") == "float32" else logits.dtype
        grad = torch.as_tensor(res.grad, dtype=out_dtype, device=logits.device).reshape(logits.shape)
        ctx.save_for_backward(grad)
        rank = torch.as_tensor(res.terms["rank"], dtype=out_dtype, device=logits.device)
        order = torch.as_tensor(res.terms["order"], dtype=torch.int64, device=logits.device)
        loss = torch.as_tensor(res.loss, dtype=out_dtype, device=logits.device)
        ctx.mark_non_differentiable(rank, order)
        return loss, rank, order

    @staticmethod
    @once_differentiable
    def backward(ctx, out_grad1, out_grad2, out_grad3):
        (grad,) = ctx.saved_tensors
        return grad * out_grad1, None, None, None, None


class aLRPLoss(torch.autograd.Function):  # noqa: N801 - the authors' name, for a drop-in import
    """Drop-in for the authors' ``aLRPLoss``: ``apply(logits, targets, regression_losses, delta=1.0, eps=1e-5)``.

    Returns ``(cls_loss, rank, order)`` as the authors do (float32 ``cls_loss`` and ``rank``, int64
    ``order``, on the logits' device).  Same numbers as
    ``rankspec.refimpl.alrp_loss(logits, targets, regression_losses, delta)``.
    """

    @staticmethod
    def forward(ctx, logits, targets, regression_losses, delta=1.0, eps=1e-5, scope="batch"):
        if isinstance(eps, str):  # aLRPLoss.apply(logits, targets, e, delta, "distributed")
            eps, scope = 1e-5, eps
        check_choice(scope, "scope", ALRP_SCOPES)
        if scope == "distributed":
            g, y, e_pos, info = _gather_union(logits, targets, regression_losses)
            res = _compute(g, y, e_pos, delta, {"eps": float(eps)})
            n = logits.numel()
            local = res.grad.reshape(-1)[info.offset:info.offset + n] * info.world_size  # rule of ._distributed
            grad = torch.as_tensor(local, dtype=torch.float32, device=logits.device).reshape(logits.shape)
        else:
            res = _compute(logits, targets, regression_losses, delta, {"eps": float(eps)})
            grad = torch.as_tensor(res.grad, dtype=torch.float32, device=logits.device).reshape(logits.shape)
        ctx.save_for_backward(grad)
        rank = torch.as_tensor(res.terms["rank"], dtype=torch.float32, device=logits.device)
        order = torch.as_tensor(res.terms["order"], dtype=torch.int64, device=logits.device)
        ctx.mark_non_differentiable(rank, order)
        return torch.as_tensor(res.loss, dtype=torch.float32, device=logits.device), rank, order

    @staticmethod
    @once_differentiable
    def backward(ctx, out_grad1, out_grad2, out_grad3):
        (grad,) = ctx.saved_tensors
        return grad * out_grad1, None, None, None, None, None


def _loc_component(regression_losses, rank, order):
    """The authors' heads: ``(cumsum(e[order].flip(0)) / rank[order].detach().flip(0)).mean()``."""
    e = regression_losses.reshape(-1)
    if e.numel() == 0:
        return e.sum() * 0.0
    ordered = e[order].flip(dims=[0])
    return (torch.cumsum(ordered, dim=0) / rank[order].detach().to(e.dtype).flip(dims=[0])).mean()


def alrp_loss(logits, targets, regression_losses, delta: float = 1.0, *, self_rank: str = "one",
              tie_value: float = 1.0, eps: float = 1e-5, buffer_dtype: str = "float64",
              normalization: str = "positives", return_terms: bool = False, scope: str = "batch"):
    """aLRP Loss as ``(cls, loc)``: 0-d tensors; ``cls`` backpropagates the identity-update gradient to
    ``logits``, ``loc`` the exact gradient of the localisation component to ``regression_losses``.

    Conventions as :func:`rankspec.refimpl.alrp_loss`, except ``buffer_dtype`` defaults to
    ``"float64"`` here (outputs in the logits' dtype); pass ``"float32"`` for the authors' buffers.
    ``return_terms=True`` appends ``(rank, order)``.  ``scope="distributed"``: the loss of the union of
    every rank's inputs, this rank's gradients times the world size (module docstring).
    """
    options = dict(self_rank=self_rank, tie_value=tie_value, eps=eps, buffer_dtype=buffer_dtype,
                   normalization=normalization)
    if check_choice(scope, "scope", ALRP_SCOPES) == "distributed":
        g, y, e_pos, info = _gather_union(logits, targets, regression_losses)
        out = alrp_loss(g, y, e_pos, delta, return_terms=return_terms, **options)
        return _distributed.scale_output(out, info.world_size)
    cls, rank, order = _ALRPFunction.apply(logits, targets, regression_losses.detach(), delta, options)
    loc = _loc_component(regression_losses, rank, order)
    return (cls, loc, rank, order) if return_terms else (cls, loc)


class ALRPLossModule(torch.nn.Module):
    """aLRP Loss with the authors' self-balancing weight.

    ``forward(logits, targets, regression_losses) -> {"loss_cls": cls, "loss_bbox": w_SB * loc}``.
    ``scope="distributed"``: the components of the union of every rank's inputs (the same on every rank,
    so every rank re-estimates the same ``w_SB``).  ``w_SB`` starts at ``sb_weight`` (50, the authors') and every ``period`` calls (the authors: one
    epoch, 7330 iterations of their COCO schedule) is re-estimated by
    :func:`rankspec.refimpl.reference.alrp.self_balancing_weight` from the recorded component values.
    """

    def __init__(self, delta: float = 1.0, *, sb_weight: float = SB_WEIGHT_INITIAL, period: int = 7330,
                 scope: str = "batch", **conventions):
        super().__init__()
        self.scope = check_choice(scope, "scope", ALRP_SCOPES)
        if not isinstance(period, int) or isinstance(period, bool) or period < 1:
            raise ValueError(f"period must be an integer >= 1, got {period!r}")
        self.delta = delta
        self.sb_weight = float(sb_weight)
        self.period = period
        self.conventions = conventions
        self.cls_history = deque(maxlen=period)
        self.loc_history = deque(maxlen=period)
        self.counter = 0

    def forward(self, logits, targets, regression_losses):
        cls, loc = alrp_loss(logits, targets, regression_losses, self.delta, scope=self.scope, **self.conventions)
        self.cls_history.append(float(cls.detach()))
        self.loc_history.append(float(loc.detach()))
        self.counter += 1
        if self.counter == self.period:
            self.sb_weight = self_balancing_weight(self.cls_history, self.loc_history, default=self.sb_weight)
            self.cls_history.clear()
            self.loc_history.clear()
            self.counter = 0
        return {"loss_cls": cls, "loss_bbox": loc * self.sb_weight}

# the loss record each adapter implements (rankspec.refimpl.records(); read by the generic record tests)
aLRPLoss.__rankspec_record__ = "alrp_loss"

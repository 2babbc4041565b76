r"""``scope="distributed"``: one loss over the union of every rank's inputs (torch.distributed).

Data-parallel training splits a batch over ``W`` processes (ranks).  A ranking loss computed by
each rank on its own share ranks only that share, so the result changes with ``W``.  With
``scope="distributed"`` every rank instead

1. all-gathers the rows of its inputs (logits, labels / targets and the other per-row inputs; the
   ranks may hold different numbers of rows, including none),
2. computes the loss on the concatenation in rank order (rank 0's rows first) - the loss a single
   process would compute on the whole batch, the same value on every rank,
3. keeps the gradient of its own rows only, multiplied by ``W``.

Gradient rule
-------------
``DistributedDataParallel`` averages parameter gradients over the ranks (it sums and divides by
``W``).  Rank ``r``'s logits receive ``W * g_r``, where ``g_r`` is the rows of rank ``r`` in the
gradient ``g`` of the loss on the concatenated batch; after back-propagation through the network and
DDP's mean, every parameter receives ``(1/W) sum_r W J_r^T g_r = sum_r J_r^T g_r``: exactly the
single-process gradient of the whole batch.  Hence a ``loss_weight`` tuned for a single process on
the same global batch carries over unchanged.  If gradients are *summed* over ranks instead of
averaged (a manual ``all_reduce`` without division), use ``loss_weight / W``.  Losses whose value
is returned for logging are the global value (identical on every rank): do not average it again
across ranks before comparing it with a single-process run.

Cost
----
Two collectives per call: an ``all_gather`` of a small header (row count, row widths, a validity
flag) and one of the padded float64 rows (``max_r n_r x width``).  Every rank then computes the loss
on all ``N = sum_r n_r`` rows: time and memory as the single-process loss on ``N`` rows, plus
O(W max_r n_r) for the gathered buffer.  Integer inputs (labels, image ids) travel as float64 and
must be below 2^53 in magnitude.  Any backend works (gloo on CPU tensors, NCCL on CUDA tensors):
the buffers live on the logits' device.

Errors
------
``torch.distributed`` must be initialised (``torch.distributed.init_process_group``), else a
``ValueError`` is raised: there is no silent fallback to the local batch, because ranking only the
local share is exactly the behaviour this scope exists to avoid.  (A single-process run can
initialise a group of size 1, e.g. gloo with ``world_size=1``.)  Inputs are checked locally before
the collectives and the outcome is exchanged in the header, so a rank with bad input raises its own
error and every other rank raises a ``ValueError`` naming that rank - no rank is left waiting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

__all__ = ["DistInfo", "world", "gather_rows", "scale_gradient", "check_local_rows", "gather_prepared",
           "call_on_union", "scale_output", "ScaleGradient", "INT_LIMIT"]

#: integer inputs travel as float64; their magnitude must stay below this
INT_LIMIT = 2 ** 53

_MAX_DIMS = 6  # trailing dimensions of a row recorded in the header


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    sizes: tuple  #: rows of every rank
    offset: int  #: first global row of this rank

    @property
    def total(self) -> int:
        return int(sum(self.sizes))


def world(group=None):
    """``(rank, world_size)`` of the default (or given) process group; ValueError when not initialised."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("scope='distributed' needs torch.distributed to be initialised "
                         "(torch.distributed.init_process_group(...)) in every process; use scope='batch' for a "
                         "single process (or initialise a group of world_size 1)")
    return dist.get_rank(group), dist.get_world_size(group)


class ScaleGradient(torch.autograd.Function):
    """Identity on the value; backward multiplies the incoming gradient by ``factor``."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output * ctx.factor, None


def scale_gradient(loss: torch.Tensor, factor: float) -> torch.Tensor:
    """``loss`` unchanged, its gradient multiplied by ``factor`` (world size: see the module rule)."""
    if factor == 1 or not loss.requires_grad:
        return loss
    return ScaleGradient.apply(loss, float(factor))


def check_local_rows(tensors: Sequence[Optional[torch.Tensor]], names: Sequence[str]) -> None:
    """The checks every rank can make before the collectives: tensors with a common row count, on
    one device, finite floats, integers below :data:`INT_LIMIT`.  Empty (0-row) inputs are allowed."""
    ref = None
    for t, name in zip(tensors, names):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor with scope='distributed', got {type(t).__name__}")
        if t.is_complex():
            raise TypeError(f"{name} must have a real or boolean dtype, got {t.dtype}")
        if t.dim() == 0:
            raise ValueError(f"{name} must have at least one dimension (rows) with scope='distributed'")
        if t.dim() - 1 > _MAX_DIMS:
            raise ValueError(f"{name} has {t.dim()} dimensions; scope='distributed' supports at most "
                             f"{_MAX_DIMS + 1}")
        if ref is None:
            ref = (t, name)
        elif t.device != ref[0].device:
            raise ValueError(f"{name} is on device {t.device} but {ref[1]} is on {ref[0].device}; they must match")
        elif t.shape[0] != ref[0].shape[0]:
            raise ValueError(f"{name} has {t.shape[0]} rows but {ref[1]} has {ref[0].shape[0]}; they must match")
        d = t.detach()
        if d.is_floating_point():
            if d.numel() and not bool(torch.isfinite(d).all()):
                raise ValueError(f"{name} contains NaN or infinite value(s); all entries must be finite")
        elif d.numel() and d.dtype != torch.bool and bool((d.abs() >= INT_LIMIT).any()):
            raise ValueError(f"{name} must hold integers below 2**53 in magnitude with scope='distributed'")


def gather_rows(tensors: Sequence[Optional[torch.Tensor]], names: Sequence[str], *, group=None,
                local_error: Optional[BaseException] = None):
    """All-gather the rows (dimension 0) of ``tensors`` from every rank, concatenated in rank order.

    Every tensor keeps its dtype; this rank's rows in the result are the input tensor itself, so an
    autograd graph through it is preserved (the other ranks' rows are constants).  ``None`` entries
    stay ``None`` (they must be ``None`` on every rank).  ``local_error`` (an exception raised by
    this rank's local checks) is announced to the other ranks, which raise a ``ValueError``; this
    rank re-raises it.  Returns ``(list of global tensors, DistInfo)``.
    """
    import torch.distributed as dist

    rank, W = world(group)
    device = next((t.device for t in tensors if isinstance(t, torch.Tensor)), None)
    if device is None:  # this rank failed its checks before producing tensors
        nccl = str(dist.get_backend(group)).lower() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    k = len(tensors)
    header = torch.zeros(2 + k * (_MAX_DIMS + 1), dtype=torch.int64)
    ok = local_error is None
    header[0] = 1 if ok else 0
    if ok:
        header[1] = int(tensors[0].shape[0]) if tensors[0] is not None else 0
        for i, t in enumerate(tensors):
            base = 2 + i * (_MAX_DIMS + 1)
            if t is None:
                header[base] = -1
            else:
                header[base] = t.dim() - 1
                header[base + 1: base + t.dim()] = torch.tensor(t.shape[1:], dtype=torch.int64)
    header = header.to(device)
    headers = [torch.empty_like(header) for _ in range(W)]
    dist.all_gather(headers, header, group=group)
    headers = torch.stack(headers).cpu()
    bad = [r for r in range(W) if int(headers[r, 0]) == 0]
    if not ok:
        raise local_error
    if bad:
        raise ValueError(f"scope='distributed': rank(s) {bad} rejected their inputs (see the error raised there); "
                         f"rank {rank}'s inputs were valid")
    shapes = headers[:, 2:]
    if not bool((shapes == shapes[rank]).all()):
        r = int(torch.nonzero((shapes != shapes[rank]).any(1))[0])
        raise ValueError(f"scope='distributed': the inputs' trailing shapes (or which optional inputs are None) "
                         f"differ between rank {rank} and rank {r}; every rank must pass rows of the same shape")
    sizes = tuple(int(v) for v in headers[:, 1])
    offset = sum(sizes[:rank])
    info = DistInfo(rank, W, sizes, offset)

    present = [t for t in tensors if t is not None]
    widths = [int(torch.tensor(t.shape[1:], dtype=torch.int64).prod()) if t.dim() > 1 else 1 for t in present]
    m = max(sizes)
    n = sizes[rank]
    buf = torch.zeros(m, max(sum(widths), 1), dtype=torch.float64, device=device)
    col = 0
    for t, w in zip(present, widths):
        buf[:n, col:col + w] = t.detach().reshape(n, w).to(torch.float64)
        col += w
    bufs = [torch.empty_like(buf) for _ in range(W)]
    dist.all_gather(bufs, buf, group=group)

    out: List[Optional[torch.Tensor]] = []
    col = 0
    j = 0
    for t in tensors:
        if t is None:
            out.append(None)
            continue
        w = widths[j]
        j += 1
        parts = []
        for r in range(W):
            if r == rank:
                parts.append(t)
            elif sizes[r]:
                v = bufs[r][:sizes[r], col:col + w].reshape((sizes[r],) + tuple(t.shape[1:]))
                parts.append(v != 0 if t.dtype == torch.bool else v.to(t.dtype))
        col += w
        out.append(torch.cat(parts, 0) if len(parts) > 1 else parts[0])
    return out, info


def gather_prepared(prepare, names, *, group=None):
    """Run ``prepare()`` (this rank's argument checks; returns the list of row tensors), then
    :func:`check_local_rows` and :func:`gather_rows`.  A ``TypeError`` / ``ValueError`` raised
    locally is announced to the other ranks first (so none waits forever), then re-raised here."""
    world(group)  # the not-initialised error comes first, on every rank
    err = None
    tensors = [None] * len(names)
    try:
        tensors = list(prepare())
        check_local_rows(tensors, names)
    except (TypeError, ValueError) as exc:
        err = exc
    return gather_rows(tensors, names, group=group, local_error=err)


def scale_output(out, factor: float):
    """:func:`scale_gradient` on every tensor with a graph in ``out`` (a tensor, tuple, list or dict)."""
    if isinstance(out, torch.Tensor):
        return scale_gradient(out, factor)
    if isinstance(out, tuple):
        return tuple(scale_output(v, factor) for v in out)
    if isinstance(out, list):
        return [scale_output(v, factor) for v in out]
    if isinstance(out, dict):
        return {k: scale_output(v, factor) for k, v in out.items()}
    return out


def call_on_union(fn, rows: dict, *, flatten: bool, with_info: bool = False, **kwargs):
    """``fn(**global_rows, **kwargs)`` on the union of every rank's rows, gradients scaled by W.

    ``rows`` maps argument names to this rank's per-row inputs (the first is the logits; ``None``
    entries stay ``None``; array-likes become tensors on the logits' device).  With ``flatten=True``
    every input must have the logits' shape and is flattened (one row per logit), else rows are the
    first dimension.  Returns ``fn``'s output with every differentiable tensor passed through
    :func:`scale_gradient` (the world size), so DDP's mean gives the single-process gradient.
    ``with_info=True`` also passes ``info=`` (the :class:`DistInfo`) to ``fn``.
    """
    names = list(rows)

    def prepare():
        logits = rows[names[0]]
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"{names[0]} must be a torch.Tensor, got {type(logits).__name__}")
        if not logits.is_floating_point():
            raise TypeError(f"{names[0]} must have a floating-point dtype, got {logits.dtype}")
        out = []
        for name in names:
            v = rows[name]
            if v is None:
                out.append(None)
                continue
            if not isinstance(v, torch.Tensor):
                try:
                    v = torch.as_tensor(v, device=logits.device)
                except Exception as exc:
                    raise TypeError(f"{name} must be a torch.Tensor (or array-like), got {type(v).__name__}") \
                        from exc
            if flatten:
                if v.shape != logits.shape:
                    raise ValueError(f"{names[0]} has shape {tuple(logits.shape)} but {name} has shape "
                                     f"{tuple(v.shape)}; they must match")
                v = v.reshape(-1)
            out.append(v)
        return out

    gathered, info = gather_prepared(prepare, names)
    if with_info:
        kwargs["info"] = info
    return scale_output(fn(**dict(zip(names, gathered)), **kwargs), info.world_size)

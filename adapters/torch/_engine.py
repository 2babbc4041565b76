"""Which engine computes an AP / RS / bucketed loss for the torch adapters.

Three engines compute the same numbers (all agree with the NumPy reference to ~1e-12 in our tests):

* ``"torch"`` - the vectorised torch engine of :mod:`._ranking` (any device): sort of the positives
  only, negatives placed by ``searchsorted``, prefix sums, a merge-sort tree for the RS sorting part;
  O(N log P + P log^2 P) time, O(N + P log P) memory.  (Where delta is tiny against the spread of
  the logits it falls back to sorted negatives, offset trees and a P x P block computation.)
* ``"numba"`` - the exact near-linear CPU kernels of :mod:`rankspec.refimpl.fast`
  (``backend="numba"``), for CPU tensors: O(N log P + P log P).
* ``"cuda"`` - the numba.cuda kernels (``backend="cuda"``), for CUDA tensors: the tensors are handed
  over zero-copy (``__cuda_array_interface__``) and the gradient comes back as a torch tensor on the
  same device, wrapping the kernels' device array (``torch.as_tensor``, no copy).  The kernels run on
  the default CUDA stream; when torch's current stream is another one, it is synchronised before the
  call and the default stream after it, so the result is safe to use on torch's stream.

``engine="auto"`` (default):

* CPU tensors: numba for at least :data:`NUMBA_MIN_SIZE` logits, torch below.  ``rankspec bench
  --backends numba,torch`` measured the numba path faster at every size we tried on a 2-core CPU;
  the threshold only spares tiny inputs the one-off load of the compiled kernels.
* CUDA tensors: cuda for at least :data:`CUDA_MIN_SIZE` logits when numba.cuda sees a real GPU (not
  the simulator), torch otherwise.  The cuda kernels do O(N) device work and O(P log P) host work,
  against the torch engine's O(N log P) device work in many small launches; the threshold is
  provisional until ``rankspec bench --device cuda`` has been run on a GPU (figures pending).

The environment variables ``RANKSPEC_TORCH_ENGINE`` (``auto`` / ``torch`` / ``numba`` / ``cuda``),
``RANKSPEC_TORCH_NUMBA_MIN_SIZE`` and ``RANKSPEC_TORCH_CUDA_MIN_SIZE`` override the defaults; the
functional losses also take an ``engine=`` keyword, which wins over the environment.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from rankspec.refimpl._validate import check_choice
from rankspec.refimpl.record import records

from . import _ranking
from ._inputs import Parsed

__all__ = ["ENGINES", "NUMBA_MIN_SIZE", "CUDA_MIN_SIZE", "resolve_engine", "compute", "cuda_arrays_loss"]

ENGINES = ("auto", "torch", "numba", "cuda")


def _min_size(var="RANKSPEC_TORCH_NUMBA_MIN_SIZE", default=1024) -> int:
    try:
        return int(os.environ.get(var, str(default)))
    except ValueError:
        return default


#: CPU tensors with at least this many logits use the numba kernels under ``engine="auto"``
NUMBA_MIN_SIZE = _min_size()
#: CUDA tensors with at least this many logits use the numba.cuda kernels under ``engine="auto"``
#: (when numba.cuda has a real GPU); provisional, see the module docstring
CUDA_MIN_SIZE = _min_size("RANKSPEC_TORCH_CUDA_MIN_SIZE", 1 << 16)

#: (sorting, bucketed) -> name of the loss record the numba kernel computes (read from the records)
_NAMES = {(r.with_sort, r.bucketed): r.name for r in records() if r.family == "ap-rs"}


def _numba_ok() -> bool:
    try:
        import numba  # noqa: F401
    except Exception:  # pragma: no cover - numba is a core dependency
        return False
    return True


def _cuda_ok() -> bool:
    """numba.cuda with a real GPU (the simulator cannot take torch CUDA tensors)."""
    try:
        from numba import config, cuda
    except Exception:  # pragma: no cover
        return False
    return bool(cuda.is_available()) and not getattr(config, "ENABLE_CUDASIM", False)


def resolve_engine(x: Parsed, engine=None) -> str:
    """``"torch"``, ``"numba"`` or ``"cuda"`` for this call (``engine=None``: ``RANKSPEC_TORCH_ENGINE`` or "auto")."""
    if engine is None:
        engine = os.environ.get("RANKSPEC_TORCH_ENGINE", "auto")
    check_choice(engine, "engine", ENGINES)
    dev = x.logits.device.type
    if engine == "numba":
        if dev != "cpu":
            raise ValueError(f"engine='numba' runs on the CPU; the logits are on {x.logits.device} "
                             "(use engine='cuda', 'torch' or 'auto' for GPU tensors)")
        return "numba"
    if engine == "cuda":
        if dev != "cuda":
            raise ValueError(f"engine='cuda' needs CUDA tensors; the logits are on {x.logits.device} "
                             "(use engine='numba', 'torch' or 'auto' for CPU tensors)")
        if not _cuda_ok():
            raise ValueError("engine='cuda' needs numba.cuda with a GPU (numba.cuda.is_available() is False, "
                             "or NUMBA_ENABLE_CUDASIM is set); use engine='torch'")
        return "cuda"
    if engine == "torch":
        return "torch"
    if dev == "cpu" and x.logits.numel() >= NUMBA_MIN_SIZE and _numba_ok():
        return "numba"
    if dev == "cuda" and x.logits.numel() >= CUDA_MIN_SIZE and _cuda_ok():
        return "cuda"
    return "torch"


def compute(x: Parsed, *, sorting: bool, interpolated: bool = False, bucketed: bool = False, threshold: bool = True,
            tied_above: bool = True, self_rank: str, engine=None) -> _ranking.EngineOutput:
    """Loss, flat float64 gradient and terms (as :func:`._ranking.compute`) on the chosen engine."""
    chosen = resolve_engine(x, engine)
    if chosen == "torch":
        try:
            return _ranking.compute(x, sorting=sorting, interpolated=interpolated, bucketed=bucketed,
                                    threshold=threshold, tied_above=tied_above)
        except _ranking.NeedsReference:  # huge logits with a tiny delta, or a bucket wider than MAXF
            pass
        return _numba_compute(x, _NAMES[(sorting, bucketed)], sorting=sorting, interpolated=interpolated,
                              threshold=threshold, tied_negatives="above" if tied_above else "below",
                              self_rank=self_rank, reference=True)
    if chosen == "cuda":
        return _cuda_compute(x, _NAMES[(sorting, bucketed)], sorting=sorting, interpolated=interpolated,
                             threshold=threshold, tied_negatives="above" if tied_above else "below",
                             self_rank=self_rank)
    return _numba_compute(x, _NAMES[(sorting, bucketed)], sorting=sorting, interpolated=interpolated,
                          threshold=threshold, tied_negatives="above" if tied_above else "below", self_rank=self_rank)


def _reference_loss(name, s, y, delta, interpolated, **opts):
    """The NumPy reference of loss ``name`` on host arrays, called like ``numba_loss``."""
    from rankspec.refimpl._inputs import validate_ranking
    from rankspec.refimpl.record import get_record

    rec = get_record(name)
    return rec.reference(validate_ranking(name, s, y, delta, labels_name=rec.labels_name,
                                          continuous=rec.continuous, interpolated=interpolated, **opts))


def _numba_compute(x: Parsed, name: str, *, sorting, interpolated, threshold, tied_negatives, self_rank,
                   reference=False):
    """The numba kernels on each image (``scope="image"``) or on the whole batch; the same
    combination as the torch engine: mean over the K images with positives.  ``reference``: the
    NumPy reference instead (host copies of tensors on any device; the torch engine's fallback)."""
    if reference:
        one_ranking = _reference_loss
    else:
        from rankspec.refimpl.fast._numba_backend import numba_loss as one_ranking

    s = x.logits.detach().cpu().numpy()
    y = x.targets.detach().cpu().numpy()
    names = ("ranking", "sorting") if sorting else ("ranking",)
    opts = dict(self_rank=self_rank, tie_value=x.tie_value, normalization=x.normalization, threshold=threshold,
                tied_negatives=tied_negatives)
    if x.num_segments == 1:
        r = one_ranking(name, s, y, x.delta, interpolated, **opts)
        loss, grad, terms = r.loss, r.grad, {k: r.terms[k] for k in names}
    else:
        seg = x.segments.detach().cpu().numpy()
        order = np.argsort(seg, kind="stable")
        ends = np.cumsum(np.bincount(seg, minlength=x.num_segments))
        grad = np.zeros(s.size)
        loss, terms, K = 0.0, {k: 0.0 for k in names}, 0
        start = 0
        for end in ends:
            idx = order[start:end]
            start = end
            if not np.any(y[idx] > 0):
                continue  # an image without positives: no loss, zero gradient
            r = one_ranking(name, s[idx], y[idx], x.delta, interpolated, **opts)
            K += 1
            loss += r.loss
            grad[idx] = r.grad
            for k in names:
                terms[k] += r.terms[k]
        if K:
            loss /= K
            grad /= K
            terms = {k: v / K for k, v in terms.items()}
    f64 = dict(dtype=torch.float64, device=x.logits.device)
    return _ranking.EngineOutput(torch.tensor(loss, **f64),
                                 torch.from_numpy(np.ascontiguousarray(grad)).to(x.logits.device),
                                 {k: torch.tensor(v, **f64) for k, v in terms.items()})


# --------------------------------------------------------------------------- engine="cuda"
def cuda_arrays_loss(name: str, s, y, delta, interpolated, *, names, **opts):
    """Loss ``name`` of one ranking with the numba.cuda kernels on flat float64 arrays: NumPy arrays,
    numba (or simulated) device arrays, or anything with ``__cuda_array_interface__`` (torch CUDA
    tensors), used in place.  Returns ``(loss, grad, terms)``: ``grad`` a device array for device
    input (a NumPy array for host input); ill-conditioned calls (delta tiny against the logits) run the
    reference on the host and come back the same way.  The part of the torch glue that the CUDA
    simulator can run (it takes no torch tensors)."""
    from rankspec.refimpl._inputs import validate_ranking
    from rankspec.refimpl.fast._cuda_backend import cuda_ranking, require_cuda
    from rankspec.refimpl.record import get_record

    require_cuda()
    rec = get_record(name)
    v = validate_ranking(name, s, y, delta, labels_name=rec.labels_name, continuous=rec.continuous,
                         interpolated=interpolated, backend="cuda", **opts)
    r = cuda_ranking(v)
    if r is None:
        r = v.wrap_result(rec.reference(v.on_host()))
    return r.loss, r.grad, {k: r.terms[k] for k in names}


def _cuda_compute(x: Parsed, name: str, *, sorting, interpolated, threshold, tied_negatives, self_rank):
    """``engine="cuda"``: torch CUDA tensors -> numba.cuda kernels (zero-copy) -> torch gradient on the
    same device (zero-copy).  ``scope="image"``: one call per image with positives (gathered on the
    device by torch), averaged over those K images as the other engines do."""
    from numba import cuda

    names = ("ranking", "sorting") if sorting else ("ranking",)
    opts = dict(self_rank=self_rank, tie_value=x.tie_value, normalization=x.normalization, threshold=threshold,
                tied_negatives=tied_negatives)
    device = x.logits.device
    s = x.logits.detach().contiguous()
    y = x.targets.detach().to(device=device, dtype=torch.float64).contiguous()
    f64 = dict(dtype=torch.float64, device=device)
    stream = torch.cuda.current_stream(device)
    other_stream = stream.cuda_stream != 0

    def one(s_i, y_i):
        loss_i, g_i, terms_i = cuda_arrays_loss(name, s_i, y_i, x.delta, interpolated, names=names, **opts)
        return loss_i, torch.as_tensor(g_i, device=device).reshape(-1), terms_i

    with torch.cuda.device(device), cuda.gpus[device.index if device.index is not None else 0]:
        if other_stream:  # the inputs were written on torch's stream: finish it before numba's default stream
            stream.synchronize()
        if x.num_segments == 1:
            loss, grad, terms = one(s, y)
        else:
            grad = torch.zeros_like(s)
            loss, terms, K = 0.0, {k: 0.0 for k in names}, 0
            seg = x.segments.to(device)
            has = torch.bincount(seg[y > 0], minlength=x.num_segments) > 0
            for g in torch.nonzero(has).squeeze(1).tolist():
                idx = torch.nonzero(seg == g).squeeze(1)
                loss_g, grad_g, terms_g = one(s[idx].contiguous(), y[idx].contiguous())
                grad[idx] = grad_g
                loss += loss_g
                terms = {k: terms[k] + terms_g[k] for k in names}
                K += 1
            if K:
                loss, grad, terms = loss / K, grad / K, {k: v / K for k, v in terms.items()}
        if other_stream:
            cuda.default_stream().synchronize()
    return _ranking.EngineOutput(torch.tensor(loss, **f64), grad, {k: torch.tensor(v, **f64) for k, v in terms.items()})

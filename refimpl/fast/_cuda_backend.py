"""``backend="cuda"``: the O(N) passes on the GPU (numba.cuda), the O(P log P) stage on the host.

Input: NumPy arrays / CPU tensors (copied to the GPU) or GPU arrays exposing
``__cuda_array_interface__`` (torch CUDA tensors, CuPy, numba device arrays),
used in place.  Output: a :class:`~rankspec.refimpl.LossResult` whose ``grad``
is a NumPy array for host input and a numba device array (float64, shape of
the logits) for GPU input; ``torch.as_tensor(result.grad, device="cuda")``
wraps it without a copy.
"""

from __future__ import annotations

import numpy as np

from .._inputs import RankingInput, normalizer
from .._inputs import is_device_array as _is_gpu_array
from ..record import get_record
from . import _numba_kernels as K
from ._numba_backend import empty_result, ill_conditioned, pack_result

__all__ = ["cuda_ranking", "require_cuda"]

NO_CUDA = ("backend='cuda' needs a CUDA GPU that numba can use (numba.cuda.is_available() is False). "
           "Use backend='numba' on the CPU, or set NUMBA_ENABLE_CUDASIM=1 before numba is imported to run "
           "the (slow) CUDA simulator")


def require_cuda():
    """numba.cuda, or a clear RuntimeError when no GPU (and no simulator) is available."""
    try:
        from numba import cuda
    except Exception as exc:  # pragma: no cover - numba built without cuda support
        raise RuntimeError(NO_CUDA) from exc
    if not cuda.is_available():
        raise RuntimeError(NO_CUDA)
    return cuda


def _simulated() -> bool:
    from numba import config

    return bool(getattr(config, "ENABLE_CUDASIM", False))


def _launch(n: int):
    """(blocks, threads) for a grid-stride kernel over n items."""
    if _simulated():  # every simulated thread is a Python thread: keep the grid tiny
        return 2, 8
    threads = 256
    blocks = max(1, min((n + threads - 1) // threads, 4096))
    return blocks, threads


def is_device_array(x) -> bool:
    """True for GPU arrays (``__cuda_array_interface__``) and the simulator's fake device arrays."""
    if hasattr(x, "__cuda_array_interface__"):
        return True
    return _simulated() and _is_gpu_array(x)


def _device_flat(x, n, cuda):
    """A flat device array of the validated input ``x`` (host arrays are copied to the GPU once)."""
    if is_device_array(x):
        d = x if not hasattr(x, "__cuda_array_interface__") else cuda.as_cuda_array(x)
        if d.size and not d.is_c_contiguous():
            raise ValueError("arrays on the GPU must be C-contiguous for backend='cuda' (call .contiguous())")
        return d.reshape(n)
    return cuda.to_device(np.ascontiguousarray(x).reshape(-1))


def cuda_ranking(x: RankingInput):
    """One of the four losses with numba.cuda kernels; same result as the reference.

    Takes the validated input of :func:`~rankspec.refimpl._inputs.validate_ranking`: host arrays
    (values checked) or GPU arrays (shape and dtype checked; the first kernel checks the values and,
    when one is bad, :meth:`~rankspec.refimpl._inputs.RankingInput.on_host` raises the validator's
    error).  Device work O(N) (plus O(N) atomics into O(P) histogram slots), host work
    O(P log P), transfers O(P) besides the input (when it is on the host) and
    the gradient (when the input was on the host).  Extra GPU memory O(N + P).
    Returns None for ill-conditioned calls (the record then runs the reference on the host).
    """
    cuda = require_cuda()
    rec = get_record(x.name)
    shape = tuple(x.shape)
    n = int(np.prod(shape))
    ds = _device_flat(x.logits, n, cuda)
    dt = _device_flat(x.targets, n, cuda)
    on_gpu = x.on_device and is_device_array(x.raw[0])
    from . import _cuda_kernels as C

    blocks, threads = _launch(n)
    # ---- count positives, largest negative logit (and the values of GPU input)
    out_i = cuda.to_device(np.zeros(2, np.int64))
    out_f = cuda.to_device(np.full(1, -np.inf))
    C.k_count[blocks, threads](ds, dt, rec.continuous, out_i, out_f)
    bad, P = (int(v) for v in out_i.copy_to_host())
    max_neg = float(out_f.copy_to_host()[0])
    if bad:
        x.on_host()  # raises the validator's error for the bad value
        raise RuntimeError(  # pragma: no cover
            f"{x.name}: the CUDA kernels rejected input that the validator accepts; please report this")
    if P == 0:
        res = empty_result(x)
        if on_gpu:
            return type(res)(res.loss, cuda.to_device(res.grad), res.terms)
        return res
    Z = normalizer(P, x.normalization)
    invZ = 1.0 / Z

    # ---- gather and sort the positives (host)
    counter = cuda.to_device(np.zeros(1, np.int64))
    d_idx = cuda.device_array(P, np.int64)
    d_pv = cuda.device_array(P, np.float64)
    d_py = cuda.device_array(P, np.float64)
    C.k_fill[blocks, threads](ds, dt, counter, d_idx, d_pv, d_py)
    idx = d_idx.copy_to_host()
    pv = d_pv.copy_to_host()
    py = d_py.copy_to_host()
    o = np.argsort(idx)
    idx, pv, py = idx[o], pv[o], py[o]
    order = np.argsort(pv)
    p = np.ascontiguousarray(pv[order])
    y = np.ascontiguousarray(py[order])
    if ill_conditioned(p, x.delta, max_neg):  # delta tiny against the logits: the record runs the reference
        return None
    d_pos_idx = cuda.to_device(np.ascontiguousarray(idx[order]))
    b = K.boundaries(p, x.delta)
    bp, nb, start, lo, invw, G, _fast = K.make_table(b)
    nsl = 2 * nb + 1 if x.exact else nb + 1
    interp = x.interpolated
    g = cuda.device_array(n, np.float64)

    if not rec.bucketed:
        d_bp = cuda.to_device(bp)
        d_start = cuda.to_device(start)
        d_cnt = cuda.to_device(np.zeros(nsl))
        d_sm = cuda.to_device(np.zeros(nsl))
        hist = C.k_hist_shared if nsl <= C.SHARED_SLOTS else C.k_hist_global
        hist[blocks, threads](ds, dt, d_bp, nb, d_start, lo, invw, G, x.exact, d_cnt, d_sm)
        cnt = d_cnt.copy_to_host()
        sm = d_sm.copy_to_host()
        A, B, gpos, rsum, ssum = K.positive_stage(p, y, rec.with_sort, cnt, sm, b, x.exact, x.delta, x.tie_value,
                                                  x.self_value, interp, max_neg, invZ)
        C.k_grad[blocks, threads](ds, dt, d_bp, nb, d_start, lo, invw, G, x.exact, cuda.to_device(A),
                                  cuda.to_device(B), g)
        C.k_scatter[_launch(P)](d_pos_idx, cuda.to_device(gpos), g)
        return pack_result(x, _output(g, shape, on_gpu), rsum, ssum, P, Z)

    # ---- bucketed (BRL Alg. 2)
    above = x.tied_negatives == "above"
    thr = float(p[0]) - x.delta if x.threshold else -np.inf
    pdist, cum = K.distinct(p)
    pbp, _pnb, pstart, plo, pinvw, pG, _pf = K.make_table(pdist)
    d_pbp = cuda.to_device(pbp)
    d_pstart = cuda.to_device(pstart)
    d_cum = cuda.to_device(cum)
    d_size = cuda.to_device(np.zeros(P + 1))
    d_top = cuda.to_device(np.full(P + 1, -np.inf))
    d_low = cuda.to_device(np.full(P + 1, np.inf))
    d_kidx = cuda.device_array(n, np.int32 if P < 2**31 - 1 else np.int64)
    C.k_bucket_assign[blocks, threads](ds, dt, d_pbp, d_pstart, plo, pinvw, pG, d_cum, thr, above, d_kidx,
                                       d_size, d_top, d_low)
    d_off = cuda.to_device(np.zeros(P + 1))
    C.k_bucket_offsets[blocks, threads](ds, d_kidx, d_top, d_off)
    # prototypes as the reference computes them (offset from the largest member, clamped to the members)
    protos = K.prototypes_from(d_size.copy_to_host(), d_top.copy_to_host(), d_low.copy_to_host(),
                               d_off.copy_to_host())
    if protos is None:  # a bucket spans more than MAXF: the reference computes its mean in scaled units
        return None
    used, wts, proto = protos
    proto_max = float(proto.max()) if proto.size else -np.inf
    tb = (bp, nb, start, lo, invw, G, _fast)
    cnt, sm = K.weighted_hist(proto, wts, tb, x.exact, nsl)
    A, B, gpos, rsum, ssum = K.positive_stage(p, y, rec.with_sort, cnt, sm, b, x.exact, x.delta, x.tie_value,
                                              x.self_value, False, proto_max, invZ)
    v = np.zeros(P + 1)
    v[used] = K.slot_values(proto, tb, x.exact, A, B)
    C.k_bucket_grad[blocks, threads](d_kidx, cuda.to_device(v), g)
    C.k_scatter[_launch(P)](d_pos_idx, cuda.to_device(gpos), g)
    return pack_result(x, _output(g, shape, on_gpu), rsum, ssum, P, Z, num_buckets=used.size)


def _output(g, shape, on_gpu):
    if on_gpu:
        return g.reshape(shape)
    return g.copy_to_host().reshape(shape)

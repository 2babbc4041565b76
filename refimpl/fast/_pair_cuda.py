"""numba.cuda kernels for the O(U P) / O(P n) pair sums of RankDetNet and APE (``backend="cuda"``).

Same sums as the CPU kernels of :mod:`._pair_kernels`, float64, grid-stride loops:

* "many short rows" (RankDet units, APE samples' incoming gradients): one thread per row;
* "few long rows" (RankDet positives, APE positives): one block per row, the block's threads
  stride over the row and reduce in shared memory.

Sums are therefore accumulated in a different order than on the CPU (results agree to rounding).
The host does the O(n log n) sort and the O(P) bookkeeping; inputs are copied to the GPU.
Under ``NUMBA_ENABLE_CUDASIM=1`` these run in numba's simulator (small grids).
"""

from __future__ import annotations


import numpy as np
from numba import cuda, float64

from ._cuda_backend import _simulated, require_cuda
from .kernels import scalar

__all__ = ["rank_sums_cuda", "ape_rows_cuda", "ape_cols_cuda"]

#: threads of a row-reduction block (a power of two; 8 in the simulator, where each is a Python thread)
BLOCK = 8 if _simulated() else 128
#: the scalar helpers of :mod:`.kernels.scalar` (the same source as the CPU kernels'), as device functions
D = scalar.compile_for(cuda.jit(device=True))
_expit, _rank_value, _h, _ape_pair = D.expit, D.rank_value, D.h_step, D.ape_pair
_add_rank_terms, _add_ape_terms = D.add_rank_terms, D.add_ape_terms
_first_valid, _last_valid_positive = D.first_valid, D.last_valid_positive
D_H = scalar.D_H


@cuda.jit(device=True)
def _block_sum_store(buf, tid, v0, v1, v2, v3, out, col):
    """Sum four per-thread values over the block (tree reduction in ``buf``, shape (4, BLOCK)) into
    ``out[0:4, col]``; every thread of the block calls it."""
    buf[0, tid] = v0
    buf[1, tid] = v1
    buf[2, tid] = v2
    buf[3, tid] = v3
    for c in range(4):
        step = BLOCK // 2
        while step > 0:
            cuda.syncthreads()
            if tid < step:
                buf[c, tid] += buf[c, tid + step]
            step //= 2
        cuda.syncthreads()
    if tid == 0:
        for c in range(4):
            out[c, col] = buf[c, 0]
    cuda.syncthreads()


# --------------------------------------------------------------------------- RankDet

@cuda.jit
def k_rank_rows(a, b, rf, out):
    """Thread per a_i: sums over j of L(a_i - b_j), L', L L', L^2."""
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        s0 = s1 = s2 = s3 = 0.0
        for j in range(b.size):
            L, dL = _rank_value(a[i] - b[j], rf)
            s0, s1, s2, s3 = _add_rank_terms(s0, s1, s2, s3, L, dL)
        out[0, i], out[1, i], out[2, i], out[3, i] = s0, s1, s2, s3


@cuda.jit
def k_rank_cols(a, b, rf, out):
    """Block per b_j: the same sums over i of L(a_i - b_j)."""
    buf = cuda.shared.array((4, BLOCK), float64)
    tid = cuda.threadIdx.x
    for j in range(cuda.blockIdx.x, b.size, cuda.gridDim.x):
        s0 = s1 = s2 = s3 = 0.0
        for i in range(tid, a.size, cuda.blockDim.x):
            L, dL = _rank_value(a[i] - b[j], rf)
            s0, s1, s2, s3 = _add_rank_terms(s0, s1, s2, s3, L, dL)
        _block_sum_store(buf, tid, s0, s1, s2, s3, out, j)


# --------------------------------------------------------------------------- APE

@cuda.jit
def k_ape_rows(ss, sl, si, so, pos_rank, adaptive, dist, delta, lam, tie, t_none, t, rank_bc, out):
    """Block per positive: over the valid samples (a suffix of the sorted order), the D-sum and
    S-sum over the members of A_u, the rank-counting sum over v != u and the member count."""
    buf = cuda.shared.array((4, BLOCK), float64)
    tid = cuda.threadIdx.x
    n = ss.size
    for k in range(cuda.blockIdx.x, pos_rank.size, cuda.gridDim.x):
        r = pos_rank[k]
        su = ss[r]
        iu = si[r]
        uid = so[r]
        a = _first_valid(ss, su, t_none, t, delta, tie)  # the valid samples: a suffix
        tot = tot2 = bc = cnt = 0.0
        for j in range(a + tid, n, cuda.blockDim.x):
            if so[j] == uid:
                continue
            member = sl[j] == 0.0 or (adaptive and si[j] < iu)
            dv, d2, rv = _ape_pair(ss[j] - su, dist, delta, lam, tie)
            tot, tot2, bc, cnt = _add_ape_terms(tot, tot2, bc, cnt, dv, d2, rv, member, rank_bc)
        _block_sum_store(buf, tid, tot, tot2, bc, cnt, out, k)


@cuda.jit
def k_ape_cols(ss, sl, si, pp, pi, coef, adaptive, dist, delta, lam, tie, t_none, t, g):
    """Thread per sorted sample v: sum over the valid positives u (a prefix of the sorted
    positives) whose A_u holds v of coef_u * D'(s_v - s_u)."""
    for j in range(cuda.grid(1), ss.size, cuda.gridsize(1)):
        lab = sl[j]
        if lab != 0.0 and not adaptive:
            g[j] = 0.0
            continue
        sv = ss[j]
        a = _last_valid_positive(pp, sv, t_none, t, delta, tie)  # the valid positives: a prefix
        acc = 0.0
        for k in range(a):
            c = coef[k]
            if c == 0.0:
                continue
            if lab != 0.0 and not (si[j] < pi[k]):
                continue
            x = sv - pp[k]
            if dist == D_H:
                acc += c * _h(x, delta, tie)
            else:
                acc += c * _expit(lam * x)
        g[j] = acc


# --------------------------------------------------------------------------- host wrappers

def _grid(rows: int, per_row_threads: bool):
    """(blocks, threads) for a kernel over ``rows`` rows."""
    if _simulated():
        return (2, 4) if per_row_threads else (2, BLOCK)
    if per_row_threads:
        return max(1, min((rows + 255) // 256, 4096)), 256
    return max(1, min(rows, 65535)), BLOCK


def rank_sums_cuda(a, b, rf):
    """(rows (4, len(a)), cols (4, len(b))) of :func:`._pair_kernels.rank_rows` / ``rank_cols``."""
    require_cuda()
    da, db = cuda.to_device(np.ascontiguousarray(a)), cuda.to_device(np.ascontiguousarray(b))
    rows = cuda.device_array((4, a.size), np.float64)
    cols = cuda.device_array((4, b.size), np.float64)
    k_rank_rows[_grid(a.size, True)](da, db, rf, rows)
    k_rank_cols[_grid(b.size, False)](da, db, rf, cols)
    return rows.copy_to_host(), cols.copy_to_host()


def ape_rows_cuda(ss, sl, si, so, pos_rank, adaptive, dist, delta, lam, tie, t_none, t, rank_bc):
    """(4, P) per-positive sums, as :func:`._pair_kernels.ape_rows` (rows 0-3)."""
    require_cuda()
    out = cuda.device_array((4, pos_rank.size), np.float64)
    args = [cuda.to_device(np.ascontiguousarray(x)) for x in (ss, sl, si, so, pos_rank)]
    k_ape_rows[_grid(pos_rank.size, False)](*args, bool(adaptive), dist, float(delta), float(lam), float(tie),
                                            bool(t_none), float(t), bool(rank_bc), out)
    return out.copy_to_host()


def ape_cols_cuda(ss, sl, si, pp, pi, coef, adaptive, dist, delta, lam, tie, t_none, t):
    """Incoming gradient of every sorted sample, as :func:`._pair_kernels.ape_cols`."""
    require_cuda()
    g = cuda.device_array(ss.size, np.float64)
    args = [cuda.to_device(np.ascontiguousarray(x)) for x in (ss, sl, si, pp, pi, coef)]
    k_ape_cols[_grid(ss.size, True)](*args, bool(adaptive), dist, float(delta), float(lam), float(tie),
                                     bool(t_none), float(t), g)
    return g.copy_to_host()

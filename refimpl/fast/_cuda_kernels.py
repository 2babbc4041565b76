"""numba.cuda kernels for the O(N) passes of the exact AP / RS / bucketed algorithms.

The passes are the same as the CPU ones in :mod:`.kernels.stages` (validate and
count, gather the positives, slot histogram, per-negative gradient, bucket
histogram and bucket gradient); the O(|P| log |P|) stage runs on the host with
the CPU kernels.  Every kernel is a grid-stride loop over the flat input, so
any launch size is correct; float64 throughout.  Histograms use float64
atomics (in shared memory when the slots fit), so sums are accumulated in a
run-dependent order: results agree with the reference to rounding, not bit
for bit.

Importing this module needs numba's cuda package but no GPU: kernels compile
on first launch.  The scalar helpers (input check, table lookup, sum unit) are those of
:mod:`.kernels.scalar`, compiled as device functions; slot logit sums are in units of
``sum_scale`` of the boundaries, as on the CPU (so no sum overflows for any finite input).
"""

from __future__ import annotations

import math

from numba import cuda, float64

from .kernels import scalar

#: slot histograms with at most this many slots are privatised in shared memory
SHARED_SLOTS = 2048

#: the scalar helpers of :mod:`.kernels.scalar` (the same source as the CPU kernels'), as device functions
D = scalar.compile_for(cuda.jit(device=True))
classify, count_table, slot_index, sum_scale = D.classify, D.count_table, D.slot_index, D.sum_scale


@cuda.jit
def k_count(s, t, iou, out_i, out_f):
    """out_i[0] += invalid entries, out_i[1] += positives, out_f[0] = max negative logit."""
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    nbad = 0
    npos = 0
    m = -math.inf
    for i in range(start, s.size, stride):
        x = float64(s[i])
        y = float64(t[i])
        b, pos = classify(x, y, iou)
        nbad += b
        npos += pos
        if y == 0.0 and x > m:
            m = x
    if nbad > 0:
        cuda.atomic.add(out_i, 0, nbad)
    if npos > 0:
        cuda.atomic.add(out_i, 1, npos)
    if m > -math.inf:
        cuda.atomic.max(out_f, 0, m)


@cuda.jit
def k_fill(s, t, counter, idx, pv, py):
    """Gather the positives (in arbitrary order; the host sorts them)."""
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, s.size, stride):
        if t[i] > 0:
            k = cuda.atomic.add(counter, 0, 1)
            idx[k] = i
            pv[k] = float64(s[i])
            py[k] = float64(t[i])


@cuda.jit(device=True)
def _negative_slot(s, t, i, bp, nb, start, lo, invw, G, exact):
    """Slot of element i when it is a negative at or above the first boundary, else -1."""
    x = float64(s[i])
    if t[i] > 0 or x < bp[0]:
        return -1
    r = nb if x >= bp[nb - 1] else count_table(bp, nb, start, lo, invw, G, False, x, False)
    return slot_index(r, bp, x, exact)


@cuda.jit(device=True)
def _hist_into(s, t, bp, nb, start, lo, invw, G, exact, cnt, sm):
    """Grid-stride loop adding every negative (count 1, logit in units of ``sum_scale``) to its
    slot of ``cnt`` / ``sm`` (global or shared arrays) with atomics."""
    unit = sum_scale(bp[0], bp[nb - 1])  # unit of the logit sums (1 unless |boundary| > 2^960)
    for i in range(cuda.grid(1), s.size, cuda.gridsize(1)):
        k = _negative_slot(s, t, i, bp, nb, start, lo, invw, G, exact)
        if k >= 0:
            cuda.atomic.add(cnt, k, 1.0)
            cuda.atomic.add(sm, k, float64(s[i]) * unit)


@cuda.jit
def k_hist_global(s, t, bp, nb, start, lo, invw, G, exact, cnt, sm):
    """Slot histogram of the negatives with global atomics (many slots)."""
    _hist_into(s, t, bp, nb, start, lo, invw, G, exact, cnt, sm)


@cuda.jit
def k_hist_shared(s, t, bp, nb, start, lo, invw, G, exact, cnt, sm):
    """Slot histogram privatised per block in shared memory (<= SHARED_SLOTS slots)."""
    sc = cuda.shared.array(SHARED_SLOTS, float64)
    ss = cuda.shared.array(SHARED_SLOTS, float64)
    nsl = cnt.size
    tid = cuda.threadIdx.x
    for k in range(tid, nsl, cuda.blockDim.x):
        sc[k] = 0.0
        ss[k] = 0.0
    cuda.syncthreads()
    _hist_into(s, t, bp, nb, start, lo, invw, G, exact, sc, ss)
    cuda.syncthreads()
    for k in range(tid, nsl, cuda.blockDim.x):
        if sc[k] != 0.0:
            cuda.atomic.add(cnt, k, sc[k])
            cuda.atomic.add(sm, k, ss[k])


@cuda.jit
def k_grad(s, t, bp, nb, start, lo, invw, G, exact, A, B, g):
    """g = A_k + B_k s for negatives in slot k (s in units of ``sum_scale``), 0 elsewhere
    (positives are scattered after)."""
    unit = sum_scale(bp[0], bp[nb - 1])
    for i in range(cuda.grid(1), s.size, cuda.gridsize(1)):
        k = _negative_slot(s, t, i, bp, nb, start, lo, invw, G, exact)
        g[i] = A[k] + B[k] * (float64(s[i]) * unit) if k >= 0 else 0.0


@cuda.jit
def k_bucket_assign(s, t, bp, start, lo, invw, G, cum, thr, above, kidx, size, top, low):
    """Bucket of every negative (BRL Eq. 3.19) into kidx (-1: positive or below the threshold),
    and size, largest and smallest member of every bucket (atomics; order-independent)."""
    i0 = cuda.grid(1)
    stride = cuda.gridsize(1)
    P = cum[cum.size - 1]
    for i in range(i0, s.size, stride):
        if t[i] > 0:
            kidx[i] = -1
            continue
        x = float64(s[i])
        if x < thr:
            kidx[i] = -1
            continue
        k = P - cum[count_table(bp, bp.size - 4, start, lo, invw, G, False, x, not above)]
        kidx[i] = k
        cuda.atomic.add(size, k, 1.0)
        cuda.atomic.max(top, k, x)
        cuda.atomic.min(low, k, x)


@cuda.jit
def k_bucket_offsets(s, kidx, top, off):
    """off[k] += s_j - top[k] over the members j of bucket k (float64 atomics: the order of the
    additions, hence the last bits of the sum, depends on the run)."""
    i0 = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(i0, s.size, stride):
        k = kidx[i]
        if k >= 0:
            cuda.atomic.add(off, k, float64(s[i]) - top[k])


@cuda.jit
def k_bucket_grad(kidx, v, g):
    """Every relevant negative gets its bucket's per-member gradient v[k]; 0 elsewhere."""
    i0 = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(i0, kidx.size, stride):
        k = kidx[i]
        if k >= 0:
            g[i] = v[k]
        else:
            g[i] = 0.0


@cuda.jit
def k_scatter(idx, vals, g):
    """g[idx[k]] = vals[k] (the positives' gradients)."""
    i0 = cuda.grid(1)
    stride = cuda.gridsize(1)
    for k in range(i0, idx.size, stride):
        g[idx[k]] = vals[k]

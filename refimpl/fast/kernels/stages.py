"""CPU passes and stages of the exact AP / RS / bucketed algorithms (numba).

Private: :mod:`rankspec.refimpl.fast` validates the input, orchestrates these kernels and packs
a :class:`~rankspec.refimpl.LossResult`.  The algorithms are documented (with derivations) on
the "Fast paths" docs page; in brief, with the positives sorted by logit (``p``, ascending):

* the 2|P| *boundaries* ``p_i - delta`` and ``p_i + delta`` cut the real line
  into *slots* (``delta == 0``: every distinct positive logit ``v`` gives a
  "tie" slot ``{v}`` and the open gaps between them);
* each negative is placed in its slot (:mod:`.primitives`' lookup table), and per slot only
  the count and the logit sum of the negatives are kept;
* H is linear in the logit inside a slot, so N_FP(i) of every positive is
  ``(count above its window) + (window sum - count * p_i) / (2 delta) +
  count / 2`` from prefix sums over slots, and every negative's gradient is
  ``A_k + B_k * s_j`` with per-slot coefficients from prefix sums over the
  sorted positives;
* the positive-positive sums of RS (sorting error, its pmf) are offline 2-D
  dominance sums: sweeps over the logit order with Fenwick trees keyed by IoU
  rank, split into the saturated part of H and its linear window.

Everything is float64 (float32 input is widened exactly).  Prefix sums that are later
differenced are kept in double-double (TwoSum-compensated) form.  Logit sums are kept in
units of :func:`.scalar.sum_scale` of the boundaries (a power of two; 1 below 2^960), so no
sum overflows for any finite input: the slot sums, the positives' sums and the gradient
coefficients ``B`` all use that unit (``A + B * (s * unit)``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .primitives import (_OPTS, classify, count_table, dd_diff, fenwick_add, fenwick_prefix, h_positive, par_ser,
                         prefix_dd, prefix_dd3, specialise, sum_scale, table_scale)


# --------------------------------------------------------------------------- O(N) passes

def _scan_impl(s, t, iou, nch, found):
    """Validate (finite logits; labels in {0, 1} or targets in [0, 1]), count
    positives per chunk, find the largest negative logit, and record the indices of the
    first ``found.shape[1]`` positives of every chunk c in ``found[c]`` (when no chunk has more,
    the positives are known without a second pass: :func:`_collect_impl` is for the others)."""
    n = s.size
    cap = found.shape[1]
    bad = np.zeros(nch, np.int64)
    npos = np.zeros(nch, np.int64)
    mx = np.full(nch, -np.inf)
    for c in prange(nch):
        i0 = c * n // nch
        i1 = (c + 1) * n // nch
        nbad = 0
        npc = 0
        m = -np.inf
        for i in range(i0, i1):
            x = np.float64(s[i])
            y = np.float64(t[i])
            b, pos = classify(x, y, iou)
            nbad += b
            if pos:
                if npc < cap:
                    found[c, npc] = i
                npc += 1
            if y == 0.0 and x > m:
                m = x
        bad[c] = nbad
        npos[c] = npc
        mx[c] = m
    return bad.sum(), npos, mx.max()


def _collect_impl(s, t, npos, nch):
    """Indices, logits and targets of the positives, in index order."""
    n = s.size
    offs = np.zeros(nch + 1, np.int64)
    for c in range(nch):
        offs[c + 1] = offs[c] + npos[c]
    P = offs[nch]
    idx = np.empty(P, np.int64)
    pv = np.empty(P)
    py = np.empty(P)
    for c in prange(nch):
        i0 = c * n // nch
        i1 = (c + 1) * n // nch
        k = offs[c]
        for i in range(i0, i1):
            if t[i] > 0:
                idx[k] = i
                pv[k] = np.float64(s[i])
                py[k] = np.float64(t[i])
                k += 1
    return idx, pv, py


#: placeholders of the compile-time flags of :func:`_slot_pass` (delta == 0; gradient pass rather
#: than histogram); :func:`.primitives.specialise` compiles it once per combination
EXACT = False
GRAD = False


def _slot_pass(s, t, tb, ctab, cs, kidx):
    """One O(N) pass over a chunk (slices of the logits ``s`` and labels ``t``): every negative at or
    above the first boundary is placed in its slot k, which is stored in ``kidx`` (-1 for positives
    and for negatives below the first boundary), and its count and logit sum are added to ``cs[2 k]``,
    ``cs[2 k + 1]``.  Logits enter the sums in units of :func:`.scalar.sum_scale`.  The gradient pass
    (:func:`_grad_impl`) reads the stored slots instead of looking them up again: the lookup is the
    costly part of both passes (at 3e7 logits the second lookup cost more than the whole stored-slot
    gradient pass, ``rankspec bench --large``).

    The table lookup is :func:`.scalar.count_table` and :func:`.scalar.slot_index` written out,
    reading the cell records of :func:`cell_records` first: a cell with at most one boundary (most
    cells) needs one comparison and no second table access (22 % less time for this pass at 3e7
    logits than reading ``start`` and the boundaries apart).  It is written out because
    numba compiles this loop around the inlined helpers 3-5x slower at delta = 0 (measured with
    ``rankspec bench --quick``: exact numba AP / RS 3-5x the time; hist 0.93 ms against 0.22 ms at
    N = 50000), and a loop over ``range(i0, i1)`` instead of a slice several times slower too.
    Invariants (no bounds checks needed): ``cell`` clamps to [0, G) and maps NaN to 0; below the
    last boundary at most the 4 +inf pads follow the cell's values, none of them <= x, so
    ``r <= nb - 1``; ``k <= 2 nb`` (exact) or ``<= nb``, within the ``nb + 1`` / ``2 nb + 1`` slots
    (and within ``kidx``'s integer type: the caller picks int16 only for fewer than 2^15 slots)."""
    bp, nb, start, lo, invw, G, fast = tb
    b0 = bp[0]
    blast = bp[nb - 1]
    sc = sum_scale(b0, blast)
    for i in range(s.size):
        x = np.float64(s[i])
        if t[i] > 0 or x < b0:
            kidx[i] = -1
            continue
        if x >= blast:
            r = nb
        else:
            f = (x - lo) * invw
            if not (f >= 1.0):  # (NaN: inf * 0 when the span overflowed and G == 1)
                c = 0
            elif f >= G:
                c = G - 1
            else:
                c = int(f)
            r = np.int64(ctab[2 * c])  # start[c], and the cell's one boundary (+inf: none) beside it
            v = ctab[2 * c + 1]
            if v == v:
                r += np.int64(v <= x)
            elif fast:  # NaN: a cell with 2-4 boundaries
                r += (np.int64(bp[r] <= x) + np.int64(bp[r + 1] <= x) + np.int64(bp[r + 2] <= x)
                      + np.int64(bp[r + 3] <= x))
            else:
                e = start[c + 1]
                while r < e:
                    m = (r + e) >> 1
                    if bp[m] <= x:
                        r = m + 1
                    else:
                        e = m
        k = r
        if EXACT:
            if r > 0 and bp[r - 1] == x:
                k = 2 * r - 1
            else:
                k = 2 * r
        kidx[i] = k
        cs[2 * k] += 1.0  # count and logit sum of slot k side by side: one cache line per update
        cs[2 * k + 1] += x * sc


_hist_delta = specialise(_slot_pass, "_slot_pass_delta", EXACT=False)
_hist_exact = specialise(_slot_pass, "_slot_pass_exact", EXACT=True)


def slot_dtype(nsl: int):
    """The integer type of the stored slot indices: int16 below 2^15 slots (a quarter of the
    gradient's memory traffic), else int32 (else int64)."""
    if nsl < 2 ** 15:
        return np.int16
    return np.int32 if nsl < 2 ** 31 else np.int64


@njit(**_OPTS)
def cell_records(tb):
    """Per cell c of the lookup table ``tb`` (:func:`.primitives.make_table`) the pair
    ``(start[c], the cell's boundary)`` side by side in one float64 array (``start[c]`` is exact in
    float64): the boundary is +inf for a cell without one and NaN for a cell with several (the
    slot pass then compares with them).  O(G) time and memory (G ~ 2-8 x the boundaries)."""
    bp, nb, start, lo, invw, G, fast = tb
    out = np.empty(2 * G)
    for c in range(G):
        r0 = start[c]
        m = start[c + 1] - r0
        out[2 * c] = r0
        if m == 0:
            out[2 * c + 1] = np.inf
        elif m == 1:
            out[2 * c + 1] = bp[r0]
        else:
            out[2 * c + 1] = np.nan
    return out


def _hist_impl(s, t, tb, exact, nsl, kidx, nch):
    """Count and logit sum (in units of :func:`.primitives.table_scale`) of the negatives in
    every slot, and the slot of every element in ``kidx`` (-1: a positive or a negative below the
    first boundary).  O(N), one table lookup each; negatives below the first boundary cost one
    comparison."""
    n = s.size
    cs = np.zeros((nch, 2 * nsl))
    ctab = cell_records(tb)
    for c in prange(nch):
        i0 = c * n // nch
        i1 = (c + 1) * n // nch
        if exact:
            _hist_exact(s[i0:i1], t[i0:i1], tb, ctab, cs[c], kidx[i0:i1])
        else:
            _hist_delta(s[i0:i1], t[i0:i1], tb, ctab, cs[c], kidx[i0:i1])
    cnt = np.zeros(nsl)
    sm = np.zeros(nsl)
    for c in range(nch):
        for k in range(nsl):
            cnt[k] += cs[c, 2 * k]
            sm[k] += cs[c, 2 * k + 1]
    return cnt, sm


def _grad_impl(s, kidx, sc, A, B, g, nch):
    """Gradient of every negative into ``g``: ``A_k + B_k * s_j`` in its stored slot k (``s_j``
    in units ``sc`` of :func:`.primitives.table_scale`); 0 where ``kidx`` is -1 (positives, filled
    in afterwards, and negatives below the first boundary).  O(N), streaming (no lookup)."""
    n = s.size
    for c in prange(nch):
        i0 = c * n // nch
        i1 = (c + 1) * n // nch
        for i in range(i0, i1):
            k = kidx[i]
            if k < 0:
                g[i] = 0.0
            else:
                g[i] = A[k] + B[k] * (np.float64(s[i]) * sc)


def _assign_pass(s, t, tb, cum, thr, kidx):
    """Bucket of every element of one chunk (slices): :func:`.scalar.count_table` written out, with
    ``STRICT`` (a tied positive counts as above: ``tied_negatives="below"``) a compile-time constant, as
    in :func:`_slot_pass` (numba compiles the loop around the inlined helper with a run-time flag
    15-35% slower).  Same invariants as :func:`_slot_pass`: ``cell`` clamped to [0, G) with NaN -> 0,
    at most the 4 +inf pads after a cell's values, so the count stays within [0, nb]."""
    bp, nb, start, lo, invw, G, fast = tb
    P = cum[cum.size - 1]
    for i in range(s.size):
        k = -1
        if not (t[i] > 0):
            x = np.float64(s[i])
            if x >= thr:
                f = (x - lo) * invw
                if not (f >= 1.0):  # (NaN: inf * 0 when the span overflowed and G == 1)
                    c = 0
                elif f >= G:
                    c = G - 1
                else:
                    c = int(f)
                r = start[c]
                if fast:
                    if STRICT:
                        r += (np.int64(bp[r] < x) + np.int64(bp[r + 1] < x) + np.int64(bp[r + 2] < x)
                              + np.int64(bp[r + 3] < x))
                    else:
                        r += (np.int64(bp[r] <= x) + np.int64(bp[r + 1] <= x) + np.int64(bp[r + 2] <= x)
                              + np.int64(bp[r + 3] <= x))
                else:
                    e = start[c + 1]
                    while r < e:
                        m = (r + e) >> 1
                        v = bp[m]
                        if v < x or (v == x and not STRICT):
                            r = m + 1
                        else:
                            e = m
                k = P - cum[r]
        kidx[i] = k


_assign_strict = specialise(_assign_pass, "_assign_pass_strict", STRICT=True)
_assign_loose = specialise(_assign_pass, "_assign_pass_loose", STRICT=False)


def _bucket_assign_impl(s, t, tb, cum, thr, above, kidx, nch):
    """Bucket of every negative (BRL Eq. 3.19) into ``kidx``; -1 for a positive or a
    negative below the threshold ``thr``.

    ``tb``: table of the distinct positive logits, ``cum[r]``: number of positives among the
    r smallest distinct values.  Bucket k holds the negatives with k positives above them
    (``above``: a tied positive is not above; otherwise it is).  O(N), one table lookup per
    relevant negative (:func:`_assign_pass` per chunk)."""
    n = s.size
    for c in prange(nch):
        i0 = c * n // nch
        i1 = (c + 1) * n // nch
        if above:
            _assign_loose(s[i0:i1], t[i0:i1], tb, cum, thr, kidx[i0:i1])
        else:
            _assign_strict(s[i0:i1], t[i0:i1], tb, cum, thr, kidx[i0:i1])


def _bucket_grad_impl(kidx, v, g, nch):
    """Bucketed gradient into ``g``: every relevant negative gets its bucket's per-member value
    ``v[k]``; 0 for positives (filled in afterwards) and for ignored negatives."""
    n = kidx.size
    for c in prange(nch):
        i0 = c * n // nch
        i1 = (c + 1) * n // nch
        for i in range(i0, i1):
            k = kidx[i]
            g[i] = v[k] if k >= 0 else 0.0
    return g


scan_par, scan_ser = par_ser(_scan_impl)
collect_par, collect_ser = par_ser(_collect_impl)
hist_par, hist_ser = par_ser(_hist_impl)
grad_par, grad_ser = par_ser(_grad_impl)
bucket_assign_par, bucket_assign_ser = par_ser(_bucket_assign_impl)
bucket_grad_par, bucket_grad_ser = par_ser(_bucket_grad_impl)


@njit(**_OPTS)
def bucket_extent(s, kidx, nbk):
    """Size, largest and smallest member of each of the ``nbk`` buckets.  Sequential, O(N)."""
    size = np.zeros(nbk)
    top = np.full(nbk, -np.inf)
    low = np.full(nbk, np.inf)
    for i in range(kidx.size):
        k = kidx[i]
        if k >= 0:
            x = np.float64(s[i])
            size[k] += 1.0
            top[k] = max(top[k], x)
            low[k] = min(low[k], x)
    return size, top, low


@njit(**_OPTS)
def bucket_offsets(s, kidx, top, nbk):
    """``sum(s_j - top_k)`` over the members j of every bucket k, accumulated in index order,
    so that the sums (and the prototypes made from them) are bit-identical to the reference's
    ``bincount(..., weights=members - top)``.  Sequential, O(N)."""
    off = np.zeros(nbk)
    for i in range(kidx.size):
        k = kidx[i]
        if k >= 0:
            off[k] += np.float64(s[i]) - top[k]
    return off


def prototypes_from(size, top, low, off):
    """The prototypes of the non-empty buckets, exactly as the reference's ``make_buckets``
    computes them: the mean as an offset from the bucket's largest logit, clamped to
    [smallest, largest] member.  Returns (indices of the non-empty buckets, sizes, prototypes),
    or None when an offset overflowed (a bucket spanning more than MAXF: the caller declines and
    the reference, which computes those means in scaled units, decides)."""
    used = np.flatnonzero(size > 0)
    wts = size[used]
    if not np.all(np.isfinite(off[used])):
        return None
    proto = np.clip(top[used] + off[used] / wts, low[used], top[used])
    return used, wts, proto


@njit(**_OPTS)
def bucket_prototypes(s, kidx, nbk):
    """:func:`bucket_extent`, :func:`bucket_offsets` and :func:`prototypes_from` in one call
    (the same floating-point operations; fewer calls for small inputs).  Returns (used, sizes,
    prototypes, ok); ``ok`` is False when an offset overflowed (see :func:`prototypes_from`)."""
    size, top, low = bucket_extent(s, kidx, nbk)
    off = bucket_offsets(s, kidx, top, nbk)
    nu = 0
    ok = True
    for k in range(nbk):
        if size[k] > 0:
            nu += 1
            if not (abs(off[k]) <= 1.7976931348623157e308):
                ok = False
    used = np.empty(nu, np.int64)
    wts = np.empty(nu)
    proto = np.empty(nu)
    j = 0
    for k in range(nbk):
        if size[k] > 0:
            used[j] = k
            wts[j] = size[k]
            proto[j] = min(max(top[k] + off[k] / size[k], low[k]), top[k])  # np.clip's operations
            j += 1
    return used, wts, proto, ok


@njit(**_OPTS)
def _value_slots(vals, tb, exact):
    """Slot of each of a few values (-1 below the first boundary).  The lookup of
    :func:`.primitives.slot_of` written out, as in :func:`_slot_pass` (a call of ``slot_of`` per
    value made weighted_hist / slot_values ~8x slower: 0.108 against 0.011 ms at 5% of 50000)."""
    bp, nb, start, lo, invw, G, fast = tb
    b0 = bp[0]
    blast = bp[nb - 1]
    ks = np.empty(vals.size, np.int64)
    for j in range(vals.size):
        x = vals[j]
        if not (x >= b0):
            ks[j] = -1
            continue
        if x >= blast:
            r = nb
        else:
            f = (x - lo) * invw
            if not (f >= 1.0):
                c = 0
            elif f >= G:
                c = G - 1
            else:
                c = int(f)
            r = start[c]
            if fast:
                r += (np.int64(bp[r] <= x) + np.int64(bp[r + 1] <= x) + np.int64(bp[r + 2] <= x)
                      + np.int64(bp[r + 3] <= x))
            else:
                e = start[c + 1]
                while r < e:
                    m = (r + e) >> 1
                    if bp[m] <= x:
                        r = m + 1
                    else:
                        e = m
        k = r
        if exact:
            if r > 0 and bp[r - 1] == x:
                k = 2 * r - 1
            else:
                k = 2 * r
        ks[j] = k
    return ks


@njit(**_OPTS)
def weighted_hist(vals, wts, tb, exact, nsl):
    """Slot histogram of a few weighted negatives (the bucket prototypes); the logit sums in units
    of :func:`.primitives.table_scale`."""
    cnt = np.zeros(nsl)
    sm = np.zeros(nsl)
    ks = _value_slots(vals, tb, exact)
    sc = table_scale(tb)
    for j in range(vals.size):
        k = ks[j]
        if k >= 0:
            cnt[k] += wts[j]
            sm[k] += wts[j] * (vals[j] * sc)
    return cnt, sm


@njit(**_OPTS)
def slot_values(vals, tb, exact, A, B):
    """``A_k + B_k * x`` for a few values (prototype gradients per member; ``x`` in units of
    :func:`.primitives.table_scale`)."""
    out = np.zeros(vals.size)
    ks = _value_slots(vals, tb, exact)
    sc = table_scale(tb)
    for j in range(vals.size):
        k = ks[j]
        if k >= 0:
            out[j] = A[k] + B[k] * (vals[j] * sc)
    return out


# --------------------------------------------------------------------------- per-positive stage

@njit(**_OPTS)
def positive_stage(p, y, use_sort, cnt, sm, b, exact, delta, tie, sigma, interp, max_neg, invZ):
    """Everything that is O(|P| log |P|): errors, positive gradients, slot coefficients.

    ``p``/``y``: positives' logits (sorted ascending, stable) and IoUs;
    ``cnt``/``sm``: weighted count and logit sum of negatives per slot (the sums in units of
    :func:`.primitives.table_scale` of ``b``'s table, as the histogram kernels make them);
    ``max_neg``: largest negative logit (decides N_FP(i) > 0 exactly as the
    reference does).  Returns ``(A, B, gpos, ranking_sum, sorting_sum)`` with
    ``A``, ``B`` and ``gpos`` already multiplied by ``invZ`` = 1 / Z, ``gpos``
    in sorted order, and the two loss sums not normalised; a negative's gradient is
    ``A_k + B_k * (s_j * unit)`` (``unit`` = :func:`.scalar.sum_scale` of ``b``).
    """
    P = p.size
    nb = b.size
    nsl = cnt.size
    # logit sums in units of sc (a power of two; 1 unless |boundary| > 2^960): ps = p * sc,
    # inv2d = 1 / (2 delta sc), so that (sum - count * p) * inv2d is unchanged and finite
    sc = sum_scale(b[0], b[nb - 1])
    inv2d = 0.5 / (delta * sc) if not exact else 0.0
    ps = p * sc

    # prefix sums over slots (counts are exact integers / integral weights)
    Cc = np.zeros(nsl + 1)
    for k in range(nsl):
        Cc[k + 1] = Cc[k] + cnt[k]
    Sh, Sl = prefix_dd(sm)
    W = Cc[nsl]

    # prefix sums over the sorted positives
    u = 1.0 - y
    pu = ps * u
    H3, L3 = prefix_dd3(ps, u, pu)
    Ph = H3[0]
    Pl = L3[0]
    Uh = H3[1]
    Ul = L3[1]
    PUh = H3[2]
    PUl = L3[2]

    Uslot = np.empty(P, np.int64)
    Lslot = np.empty(P, np.int64)
    gpos = np.zeros(P)
    rp = np.empty(P)
    cur = np.empty(P)
    coef = np.zeros(P)
    rank_sum = 0.0
    best = 0.0
    # p is sorted, so every count below is a pointer that only moves forward: O(P + nb)
    iU = 0
    iL = 0
    a = 0
    e = 0
    for k in range(P):
        pk = p[k]
        pks = ps[k]
        hiv = pk + delta  # (delta = 0: the window is pk itself)
        lov = pk - delta
        while iU < nb and b[iU] <= hiv:
            iU += 1
        while iL < nb and b[iL] < lov:
            iL += 1
        while a < P and p[a] < lov:
            a += 1
        while e < P and p[e] <= hiv:
            e += 1
        # ---- N_FP(k): negatives above the window count 1, inside it linearly (or tie_value)
        if exact:
            m = iL  # index of pk among the distinct values b
            Uk = 2 * m + 2
            Lk = 2 * m
            win = tie * cnt[2 * m + 1]
        else:
            Uk = iU  # number of boundaries <= pk + delta
            Lk = iL  # number of boundaries < pk - delta
            cw = Cc[Uk] - Cc[Lk + 1]
            sw = dd_diff(Sh, Sl, Uk, Lk + 1)
            win = (sw - cw * pks) * inv2d + 0.5 * cw
        Uslot[k] = Uk
        Lslot[k] = Lk
        gate = h_positive(max_neg - pk, delta, tie)
        nfp = ((W - Cc[Uk]) + win) if gate else 0.0
        # ---- rank+(k) and the current-sorting numerator over positives (self term sigma)
        if exact:
            rpk = sigma + (P - e) + tie * (e - a - 1)
            if use_sort:
                su = dd_diff(Uh, Ul, e, a)
                cur[k] = sigma * u[k] + dd_diff(Uh, Ul, P, e) + tie * (su - u[k])
        else:
            nw = e - a
            swp = dd_diff(Ph, Pl, e, a)
            # the window includes k itself, whose H(0) = 1/2 is replaced by sigma
            rpk = sigma + (P - e) + (swp - nw * pks) * inv2d + 0.5 * nw - 0.5
            if use_sort:
                su = dd_diff(Uh, Ul, e, a)
                spu = dd_diff(PUh, PUl, e, a)
                cur[k] = (sigma * u[k] + dd_diff(Uh, Ul, P, e) + (spu - su * pks) * inv2d + 0.5 * su
                          - 0.5 * u[k])
        rp[k] = rpk
        rank = rpk + nfp
        # ---- ranking error and its distribution (RS Eq. 7 / BRL Eq. 3.4; interpolated: AP-Loss code)
        if interp:
            prec = rpk / rank
            if prec > best:
                best = prec
            err = 1.0 - best
            if gate and nfp > 0.0:
                coef[k] = err / nfp
        else:
            err = nfp / rank
            if gate:
                coef[k] = 1.0 / rank  # = err / N_FP(k)
        rank_sum += err
        if gate:
            gpos[k] = -err

    # ---- per-slot coefficients of the negatives' gradient: A_r + B_r * s
    H3, L3 = prefix_dd3(coef, coef * ps, coef)
    Qh = H3[0]
    Ql = L3[0]
    QPh = H3[1]
    QPl = L3[1]
    A = np.zeros(nsl)
    B = np.zeros(nsl)
    # ia(r) = #{k: U_k <= r} (saturated run), ie(r) = #{k: L_k < r} (end of the window run):
    # cumulative histograms, branch-free
    nU = np.zeros(nsl + 1, np.int64)
    nL = np.zeros(nsl + 1, np.int64)
    for k in range(P):
        nU[Uslot[k]] += 1
        nL[Lslot[k] + 1] += 1
    ia = 0
    ie = 0
    for r in range(nsl):
        ia += nU[r]
        ie += nL[r]
        sat = Qh[ia] + Ql[ia]
        if ie > ia:
            c1 = dd_diff(Qh, Ql, ie, ia)
            if exact:
                A[r] = (sat + tie * c1) * invZ
            else:
                c2 = dd_diff(QPh, QPl, ie, ia)
                A[r] = (sat + 0.5 * c1 - c2 * inv2d) * invZ
                B[r] = c1 * inv2d * invZ
        else:
            A[r] = sat * invZ

    sort_sum = 0.0
    if use_sort and P > 0:
        sort_sum = _sorting_part(p, ps, y, u, pu, rp, cur, gpos, delta, tie, exact, inv2d)

    for k in range(P):
        gpos[k] *= invZ
    return A, B, gpos, rank_sum, sort_sum


@njit(**_OPTS)
def _sorting_part(p, ps, y, u, pu, rp, cur, gpos, delta, tie, exact, inv2d):
    """RS sorting error and its pmf over positives in O(|P| log |P|); adds the
    sorting gradient to ``gpos`` and returns the sum of sorting errors."""
    P = p.size
    # at delta = 0 the window is the tie set, weighted tie_value, and inv2d = 0 (a branch
    # on ``exact`` inside the sweeps makes numba compile them several times slower)
    wt = tie if exact else 0.5
    # IoU ranks: ry[k] = number of positives with a strictly smaller IoU;
    # mpl[k] = largest logit among them (decides "missorted mass > 0" exactly)
    oy = np.argsort(y)  # any order: ranks and group maxima depend on values only
    ry = np.empty(P, np.int64)
    mpl = np.empty(P)
    running = -np.inf
    i = 0
    while i < P:
        j = i
        yi = y[oy[i]]
        gmax = -np.inf
        while j < P and y[oy[j]] == yi:
            q = oy[j]
            ry[q] = i
            mpl[q] = running
            if p[q] > gmax:
                gmax = p[q]
            j += 1
        if gmax > running:
            running = gmax
        i = j

    # ---- phase 1: M(k) = sum_{y_j < y_k} H(p_j - p_k) and MU(k) (same, weighted by 1 - y_j)
    # B-set: p_j > p_k + delta (H = 1); A-set: p_j >= p_k - delta; window = A \ B.  Both are
    # Fenwick trees of (count, p, 1 - y, p (1 - y)) keyed by IoU rank; "y_j < y_k" is a prefix.
    F = np.zeros((P + 1, 8))  # A-set in columns 0-3, B-set in 4-7 (one cache line per node)
    acc = np.zeros(8)
    M = np.empty(P)
    MU = np.empty(P)
    pa = P - 1
    pb = P - 1
    for k in range(P - 1, -1, -1):
        pk = p[k]
        th = pk + delta
        while pb >= 0 and p[pb] > th:
            fenwick_add(F, ry[pb] + 1, P, 4, 1.0, ps[pb], u[pb], pu[pb])
            pb -= 1
        th = pk - delta
        while pa >= 0 and p[pa] >= th:
            fenwick_add(F, ry[pa] + 1, P, 0, 1.0, ps[pa], u[pa], pu[pa])
            pa -= 1
        fenwick_prefix(F, ry[k], acc)
        cw = acc[0] - acc[4]
        uw = acc[2] - acc[6]
        # window: H = (p_j - p_k) / (2 delta) + 1/2, or tie_value at delta = 0 (inv2d = 0)
        M[k] = acc[4] + ((acc[1] - acc[5]) - ps[k] * cw) * inv2d + wt * cw
        MU[k] = acc[6] + ((acc[3] - acc[7]) - ps[k] * uw) * inv2d + wt * uw

    # ---- phase 2: sorting error l_S - l*_S (RS Eqs. 7-8) and its pmf weight
    csort = np.zeros(P)
    total = 0.0
    for k in range(P):
        T = rp[k] - M[k]
        TU = cur[k] - MU[k]
        se = cur[k] / rp[k] - TU / T
        total += se
        if h_positive(mpl[k] - p[k], delta, tie):
            gpos[k] -= se
            if M[k] > 0.0:
                csort[k] = se / M[k]

    # ---- phase 3: incoming sorting gradient of j: sum_{y_i > y_j} csort_i H(p_j - p_i)
    # B-set: p_i < p_j - delta (H = 1): Fenwick of csort; A-set: p_i <= p_j + delta:
    # Fenwick of (csort, csort p); keys = reversed IoU rank (so "y_i > y_j" is a prefix)
    F[:, :] = 0.0
    pa = 0
    pb = 0
    for j in range(P):
        pj = p[j]
        th = pj - delta
        while pb < P and p[pb] < th:
            if csort[pb] != 0.0:
                fenwick_add(F, P - ry[pb], P, 4, csort[pb], csort[pb] * ps[pb], 0.0, 0.0)
            pb += 1
        th = pj + delta
        while pa < P and p[pa] <= th:
            if csort[pa] != 0.0:
                fenwick_add(F, P - ry[pa], P, 0, csort[pa], csort[pa] * ps[pa], 0.0, 0.0)
            pa += 1
        fenwick_prefix(F, P - 1 - ry[j], acc)
        cw = acc[0] - acc[4]
        gpos[j] += acc[4] + (ps[j] * cw - (acc[1] - acc[5])) * inv2d + wt * cw
    return total

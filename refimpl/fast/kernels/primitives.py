"""CPU building blocks of the exact AP / RS / bucketed algorithms (numba).

Compensated prefix sums, the uniform-grid lookup table that places a logit among sorted
boundaries in O(1) expected time, and the slot boundaries themselves.  The scalar helpers
(H, the table lookup) are those of :mod:`.scalar`, compiled here for the CPU.
"""

from __future__ import annotations

import types

import numpy as np
from numba import njit

from . import scalar

_OPTS = dict(cache=True, nogil=True, error_model="numpy")
_MAXF = 1.7976931348623157e308

#: the scalar helpers of :mod:`.scalar`, compiled for the CPU and inlined into their callers
S = scalar.compile_for(njit(inline="always", **_OPTS))
classify, h_step, h_positive, is_valid = S.classify, S.h_step, S.h_positive, S.is_valid
expit, log1pexp, sigmoid_exp, rank_value, ape_pair = S.expit, S.log1pexp, S.sigmoid_exp, S.rank_value, S.ape_pair
add_rank_terms, add_ape_terms = S.add_rank_terms, S.add_ape_terms
first_valid, last_valid_positive = S.first_valid, S.last_valid_positive
cell, count_table, slot_index, sum_scale = S.cell, S.count_table, S.slot_index, S.sum_scale


def _renamed(fn, name, **constants):
    """A copy of the Python function ``fn`` named ``name``, with ``constants`` as extra globals."""
    env = dict(fn.__globals__)
    env.update(constants)
    clone = types.FunctionType(fn.__code__, env, name, fn.__defaults__, fn.__closure__)
    clone.__qualname__ = name
    clone.__doc__ = fn.__doc__
    clone.__module__ = fn.__module__
    return clone


def specialise(fn, name, **constants):
    """``fn`` compiled with ``constants`` as compile-time globals (numba freezes global values), as a
    function of its own name ``name`` (so that numba's on-disk cache keeps the variants apart).  For
    flags that must not be run-time arguments of an O(N) loop: numba compiles such a loop several
    times slower than its two specialisations."""
    return njit(**_OPTS)(_renamed(fn, name, **constants))


def par_ser(impl):
    """(multi-threaded, single-threaded) numba compilations of a kernel written with ``prange``.

    The two are compiled from copies of ``impl`` with names of their own (``<name>_par``,
    ``<name>_ser``): numba's on-disk cache keys an entry by the function's name, source line and
    argument types, not by the ``parallel`` flag, so two compilations of one function would share
    one cache entry and whichever was compiled first would be loaded for both (the multi-threaded
    kernels then ran on one thread: ``tests/test_fast.py`` checks that the two stay apart)."""
    name = impl.__name__
    return (njit(parallel=True, **_OPTS)(_renamed(impl, name + "_par")),
            njit(**_OPTS)(_renamed(impl, name + "_ser")))


# --------------------------------------------------------------------------- prefix sums

@njit(inline="always", **_OPTS)
def _add_dd(s, c, x):
    """One step of a compensated sum: (s + x, c + the rounding error of s + x) (Knuth's
    branch-free TwoSum)."""
    t = s + x
    bv = t - s
    return t, c + ((s - (t - bv)) + (x - bv))


@njit(**_OPTS)
def prefix_dd(v):
    """Compensated prefix sums: ``hi[k] + lo[k] ~ sum(v[:k])`` (the rounding error of every
    addition is collected in ``lo``).  O(n)."""
    n = v.size
    hi = np.zeros(n + 1)
    lo = np.zeros(n + 1)
    s = 0.0
    c = 0.0
    for i in range(n):
        s, c = _add_dd(s, c, v[i])
        hi[i + 1] = s
        lo[i + 1] = c
    return hi, lo


@njit(**_OPTS)
def prefix_dd3(v0, v1, v2):
    """:func:`prefix_dd` of three equally long arrays in one loop (three independent dependency
    chains run in parallel; a prefix sum is latency-bound).  Returns (hi, lo), each (3, n + 1)."""
    n = v0.size
    hi = np.zeros((3, n + 1))
    lo = np.zeros((3, n + 1))
    s0, s1, s2, c0, c1, c2 = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    for i in range(n):
        s0, c0 = _add_dd(s0, c0, v0[i])
        s1, c1 = _add_dd(s1, c1, v1[i])
        s2, c2 = _add_dd(s2, c2, v2[i])
        hi[0, i + 1] = s0
        hi[1, i + 1] = s1
        hi[2, i + 1] = s2
        lo[0, i + 1] = c0
        lo[1, i + 1] = c1
        lo[2, i + 1] = c2
    return hi, lo


@njit(inline="always", **_OPTS)
def dd_diff(hi, lo, e, a):
    """sum(v[a:e]) from the compensated prefix sums."""
    return (hi[e] - hi[a]) + (lo[e] - lo[a])


# --------------------------------------------------------------------------- Fenwick trees

@njit(inline="always", **_OPTS)
def fenwick_add(F, i, n, c0, v0, v1, v2, v3):
    """Add (v0, v1, v2, v3) to columns c0..c0+3 of the Fenwick tree ``F`` (rows 1..n) at key i."""
    while i <= n:
        F[i, c0] += v0
        F[i, c0 + 1] += v1
        F[i, c0 + 2] += v2
        F[i, c0 + 3] += v3
        i += i & (-i)


@njit(inline="always", **_OPTS)
def fenwick_prefix(F, i, acc):
    """``acc[c]`` = sum of column c of ``F`` over the keys 1..i (every column at once).  O(log n)."""
    acc[:] = 0.0
    while i > 0:
        for c in range(acc.size):
            acc[c] += F[i, c]
        i -= i & (-i)


# --------------------------------------------------------------------------- lookup table

@njit(**_OPTS)
def make_table(b):
    """Lookup table over sorted, distinct values ``b`` (length >= 1; +-inf allowed).

    Returns the tuple ``tb = (bp, nb, start, lo, invw, G, fast)``: ``bp`` is
    ``b`` padded with 4 x +inf, ``nb = len(b)``.  The cell of a value is
    ``cell_of(x) = floor((x - lo) * invw)`` clamped to ``[0, G)``; this map is
    non-decreasing in ``x`` under IEEE rounding, so assigning the values of
    ``b`` to cells with the *same* map makes ``start[c]`` (number of values in
    cells ``< c``) an exact count of the values below any ``x`` of cell ``c``,
    and every value of a later cell is ``> x``: only the values of x's own cell
    remain to be compared.  With G ~ 2 nb a cell holds one value on average;
    when no cell holds more than 4 (``fast``) the comparison is a branch-free
    sum of 4 comparisons against the padded array.  A span that is not a
    positive finite number (it overflows for |b| ~ 1e308) gives one cell (a
    binary search; still exact).  O(G + nb) time and memory.
    """
    nb = b.size
    lo = b[0]
    span = b[nb - 1] - lo
    bp = np.empty(nb + 4)
    bp[:nb] = b
    bp[nb:] = np.inf
    for mult in (2, 8):
        G = mult * nb + 1
        invw = G / span if span > 0.0 else 0.0
        if not (invw > 0.0 and invw < _MAXF):
            G = 1
            invw = 0.0
        start = np.zeros(G + 1, np.int64)
        for k in range(nb):
            start[cell(b[k], lo, invw, G) + 1] += 1
        occ = 0
        for c in range(G):
            if start[c + 1] > occ:
                occ = start[c + 1]
            start[c + 1] += start[c]
        if occ <= 4:
            break
    return (bp, nb, start, lo, invw, G, occ <= 4)


@njit(inline="always", **_OPTS)
def cell_of(x, lo, invw, G):
    """Cell of ``x`` in :func:`make_table`'s table (monotone in x; a valid index for any x)."""
    return cell(x, lo, invw, G)


@njit(inline="always", **_OPTS)
def count_tab(tb, x, strict):
    """Number of table values ``<= x`` (``< x`` when ``strict``); exact for any x (the
    equivalent of ``np.searchsorted(b, x, "right" / "left")``), always in [0, nb]."""
    bp, nb, start, lo, invw, G, fast = tb
    return count_table(bp, nb, start, lo, invw, G, fast, x, strict)


@njit(inline="always", **_OPTS)
def slot_rank(x, tb):
    """Number of table values <= x, for a logit ``x >= b[0]`` (the slot when delta > 0)."""
    bp, nb, start, lo, invw, G, fast = tb
    if x >= bp[nb - 1]:
        return nb
    return count_table(bp, nb, start, lo, invw, G, fast, x, False)


@njit(inline="always", **_OPTS)
def slot_delta(x, tb):
    """Slot of a logit ``x >= b[0]`` when delta > 0: the number of boundaries <= x."""
    return slot_rank(x, tb)


@njit(inline="always", **_OPTS)
def slot_exact(x, tb):
    """Slot of a logit ``x >= b[0]`` when delta == 0 (``b`` = distinct positive
    logits): ``2r - 1`` when ``x`` equals the r-th value (a tie), ``2r`` when it
    lies strictly above r values."""
    return slot_index(slot_rank(x, tb), tb[0], x, True)


@njit(**_OPTS)
def slot_of(x, tb, exact):
    """:func:`slot_exact` or :func:`slot_delta`."""
    return slot_index(slot_rank(x, tb), tb[0], x, exact)


@njit(inline="always", **_OPTS)
def table_scale(tb):
    """:func:`.scalar.sum_scale` of the table's boundaries (the unit of the slot logit sums)."""
    return sum_scale(tb[0][0], tb[0][tb[1] - 1])


# --------------------------------------------------------------------------- boundaries

@njit(**_OPTS)
def distinct(v):
    """Distinct values of sorted ``v`` and ``cum[r]`` = number of entries among the r smallest."""
    n = v.size
    out = np.empty(n)
    cum = np.zeros(n + 1, np.int64)
    nd = 0
    for i in range(n):
        if nd == 0 or v[i] != out[nd - 1]:
            out[nd] = v[i]
            nd += 1
        cum[nd] = i + 1
    return out[:nd].copy(), cum[:nd + 1].copy()


@njit(**_OPTS)
def boundaries(p, delta):
    """Sorted distinct slot boundaries: ``p -/+ delta`` merged (delta > 0), or
    the distinct values of ``p`` (delta == 0).  ``p`` is sorted ascending.  A boundary
    may be +-inf when ``p +- delta`` overflows (it then compares as the reference's
    overflowed differences do)."""
    P = p.size
    if delta == 0.0:
        return distinct(p)[0]
    out = np.empty(2 * P)
    i = 0
    j = 0
    k = 0
    while i < P or j < P:
        if j >= P or (i < P and p[i] - delta <= p[j] + delta):
            out[k] = p[i] - delta
            i += 1
        else:
            out[k] = p[j] + delta
            j += 1
        k += 1
    return distinct(out)[0]

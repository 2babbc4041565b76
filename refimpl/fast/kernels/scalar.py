"""Scalar helpers of the fast-path kernels, written once for the CPU and the GPU.

Every function here is plain Python on scalars (and 1-d arrays indexed by scalars) using only
what both numba targets compile: :func:`compile_for` builds a target's version of all of them
(``numba.njit(inline="always")`` for the CPU kernels, ``numba.cuda.jit(device=True)`` for the
CUDA kernels; under ``NUMBA_ENABLE_CUDASIM=1`` the device versions run as Python).  A helper
that calls another one is rebuilt with the *target's* compiled version of the callee in its
globals, so the whole family is compiled for one target at a time from the same source.

Numerics (every finite float64 input is in the domain; see the "Fast paths" docs page):

* a difference of two logits ``s_j - s_i`` may overflow to +-inf for |s| ~ 1e308; every
  predicate below only looks at its sign or compares it, so an infinite difference gives the
  same answer as the reference, which computes the same difference;
* the table lookup (:func:`cell`) maps NaN (``inf * 0`` when the boundaries' span overflows)
  to cell 0 and clamps every count to ``[0, nb]``: no index leaves its array for any input;
* sums of logits that are later differenced are taken in units of :func:`sum_scale` (a power
  of two, 1 unless the boundaries exceed 2^960), so that sums of up to 2^60 logits of any
  finite magnitude stay finite; scaling by a power of two is exact for normal numbers, and
  at those magnitudes the subnormal range is far below every rounding error.
"""

from __future__ import annotations

import math
import types

#: codes of the RankDet ranking functions (L_rank of RankDet Sec. 3.1) and of the APE distances
RF_EXP, RF_SIGMOID, RF_LOGISTIC = 0, 1, 2
D_H, D_SIGMOID, D_CE = 0, 1, 2

MAXF = 1.7976931348623157e308

#: logit sums are rescaled by SUM_SCALE when a boundary exceeds BIG in magnitude
BIG = 2.0 ** 960
SUM_SCALE = 2.0 ** -70


# --------------------------------------------------------------------------- input scan

def classify(x, y, iou):
    """(invalid, positive) as 0/1 counts for one (logit, label) pair: the logit must be finite; a
    label is 0 (negative) or 1, an IoU target (``iou``) is 0 or in (0, 1]."""
    bad = 0 if abs(x) <= MAXF else 1
    if y == 0.0:
        return bad, 0
    if (y > 0.0 and y <= 1.0) if iou else y == 1.0:
        return bad, 1
    return 1, 0


# --------------------------------------------------------------------------- smoothed step

def h_step(x, delta, tie):
    """The smoothed step H of BRL Eq. 3.2 with the reference's floating-point operations
    (``smoothed_step``): clip((x / delta) / 2 + 1/2, 0, 1), or [x > 0] + tie [x == 0] at delta = 0.
    x = +-inf (an overflowed difference) gives 1 / 0, as in the reference."""
    if delta > 0.0:
        v = x / delta * 0.5 + 0.5  # (x / delta) / 2: 2 delta would overflow for delta > MAXF / 2
        if v < 0.0:
            return 0.0
        if v > 1.0:
            return 1.0
        return v
    if x > 0.0:
        return 1.0
    if x == 0.0:
        return tie
    return 0.0


def h_positive(x, delta, tie):
    """``H(x) > 0`` with the reference's exact float operations."""
    if delta > 0.0:
        return x / delta * 0.5 + 0.5 > 0.0
    return x > 0.0 or (x == 0.0 and tie > 0.0)


def is_valid(x, t_none, t, delta, tie):
    """The pair-validity test of APE (APE Eq. 7): ``H(x) > 0`` without a threshold, else
    ``x > -t``.  Monotone (non-decreasing) in x."""
    if t_none:
        return h_positive(x, delta, tie)
    return x > -t


# --------------------------------------------------------------------------- sigmoid family

def expit(x):
    """1 / (1 + e^-x) without overflow (scipy.special.expit's value to an ulp)."""
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def log1pexp(x):
    """log(1 + e^x) = numpy.logaddexp(0, x) without overflow."""
    if x > 0.0:
        return x + math.log1p(math.exp(-x))
    return math.log1p(math.exp(x))


def sigmoid_exp(y):
    """(S(y), e) with ``e = exp(-|y|)``: one exponential gives S(y) = 1 / (1 + e) (y >= 0) or
    e / (1 + e), and log(1 + e^y) = max(y, 0) + log1p(e)."""
    e = math.exp(-abs(y))
    if y >= 0.0:
        return 1.0 / (1.0 + e), e
    return e / (1.0 + e), e


def rank_value(x, rf):
    """L_rank(x) and L'_rank(x) (RankDet Sec. 3.1, Table 5a)."""
    if rf == RF_EXP:
        e = math.exp(x)
        return e, e
    sg = expit(x)
    if rf == RF_SIGMOID:
        return sg, sg * (1.0 - sg)
    return log1pexp(x), sg


def ape_pair(x, dist, delta, lam, tie):
    """The terms of one APE pair at ``x = s_v - s_u`` (APE Eqs. 7-10): (D(x), D's gradient
    factor S(lam x) for CE (0 otherwise), the rank-counting value H(x) or S(lam x))."""
    if dist == D_H:
        h = h_step(x, delta, tie)
        return h, 0.0, h
    y = lam * x
    sg, e = sigmoid_exp(y)
    if dist == D_SIGMOID:
        return sg, 0.0, sg
    return max(y, 0.0) + math.log1p(e), sg, sg


def add_rank_terms(s0, s1, s2, s3, L, dL):
    """The four running sums of the RankDet pair passes: L, L', L L', L^2."""
    return s0 + L, s1 + dL, s2 + L * dL, s3 + L * L


def add_ape_terms(tot, tot2, bc, cnt, dv, d2, rv, member, rank_bc):
    """The four running sums of one positive's APE row: D and its CE factor over the members of
    A_u, the rank-counting value over every valid sample (``rank_bc``), the member count."""
    if rank_bc:
        bc += rv
    if member:
        cnt += 1.0
        tot += dv
        tot2 += d2
    return tot, tot2, bc, cnt


def first_valid(ss, su, t_none, t, delta, tie):
    """Smallest index j of the ascending ``ss`` with ``is_valid(ss[j] - su)`` (len(ss) if none):
    the valid samples of a positive at ``su`` form a suffix.  O(log n)."""
    a = 0
    e = ss.size
    while a < e:
        m = (a + e) >> 1
        if is_valid(ss[m] - su, t_none, t, delta, tie):
            e = m
        else:
            a = m + 1
    return a


def last_valid_positive(pp, sv, t_none, t, delta, tie):
    """Number of entries of the ascending ``pp`` (positive logits) with ``is_valid(sv - pp[k])``:
    the predicate holds on a prefix, because sv - p decreases as p grows.  O(log P)."""
    a = 0
    e = pp.size
    while a < e:
        m = (a + e) >> 1
        if is_valid(sv - pp[m], t_none, t, delta, tie):
            a = m + 1
        else:
            e = m
    return a


# --------------------------------------------------------------------------- table lookup

def cell(x, lo, invw, G):
    """Cell of ``x`` in the lookup table of ``make_table``: floor((x - lo) invw) clamped to
    [0, G).  Monotone in x.  NaN (``inf * 0``: the span overflowed and the table has one cell)
    gives cell 0, so the result is a valid index for any x."""
    f = (x - lo) * invw
    if not (f >= 1.0):
        return 0
    if f >= G:
        return G - 1
    return int(f)


def count_table(bp, nb, start, lo, invw, G, fast, x, strict):
    """Number of the ``nb`` table values ``bp[:nb]`` that are ``<= x`` (``< x`` when ``strict``),
    exact for any x (``np.searchsorted(b, x, "right" / "left")``).  ``bp`` is padded with 4 x +inf;
    ``fast``: no cell holds more than 4 values (4 branch-free comparisons), else a binary search
    inside the cell.  The result is clamped to [0, nb]."""
    c = cell(x, lo, invw, G)
    a = start[c]
    if fast:
        if strict:
            a += (bp[a] < x) + (bp[a + 1] < x) + (bp[a + 2] < x) + (bp[a + 3] < x)
        else:
            a += (bp[a] <= x) + (bp[a + 1] <= x) + (bp[a + 2] <= x) + (bp[a + 3] <= x)
    else:
        e = start[c + 1]
        while a < e:
            m = (a + e) >> 1
            v = bp[m]
            if v < x or (v == x and not strict):
                a = m + 1
            else:
                e = m
    if a > nb:
        return nb
    return a


def slot_index(r, bp, x, exact):
    """Slot of a logit ``x >= bp[0]`` with ``r`` boundaries <= x (``r = nb`` when x >= bp[nb - 1],
    else :func:`count_table`).  delta > 0: r (0..nb).  delta == 0 (``bp`` = distinct positive
    logits): ``2r - 1`` when x equals the r-th value (a tie), ``2r`` when it lies strictly above
    r values (0..2 nb).  (The count is the caller's: numba compiles a helper that calls an inlined
    helper that calls another several times slower in the O(N) loops.)"""
    if exact:
        if r > 0 and bp[r - 1] == x:
            return 2 * r - 1
        return 2 * r
    return r


def sum_scale(b0, blast):
    """Unit of the logit sums for boundaries spanning [b0, blast]: 1, or SUM_SCALE (a power of
    two) when a boundary exceeds BIG in magnitude (or is infinite), so that sums of many logits
    cannot overflow.  The same function of the same boundaries on every target."""
    if abs(b0) > BIG or abs(blast) > BIG:
        return SUM_SCALE
    return 1.0


#: dependency order: a helper comes after those it calls
HELPERS = (classify, h_step, h_positive, is_valid, expit, log1pexp, sigmoid_exp, rank_value, ape_pair, add_rank_terms, add_ape_terms,
           first_valid, last_valid_positive, cell, count_table, slot_index,
           sum_scale)


def compile_for(jit, helpers=None):
    """Every helper of ``helpers`` (default :data:`HELPERS`; a tuple in dependency order, such as
    another kernel family's plain scalar functions) compiled with ``jit`` (a decorator), in a namespace.

    Each helper is rebuilt from its own code object with globals in which the helpers it calls
    are the already compiled versions, so calls stay inside the target (a CUDA device function
    calls device functions, an inlined CPU helper inlines its callees)."""
    done = {}
    for fn in (HELPERS if helpers is None else helpers):
        env = dict(fn.__globals__)
        env.update(done)
        clone = types.FunctionType(fn.__code__, env, fn.__name__, fn.__defaults__, fn.__closure__)
        clone.__doc__ = fn.__doc__
        clone.__qualname__ = fn.__qualname__
        clone.__module__ = fn.__module__
        done[fn.__name__] = jit(clone)
    return types.SimpleNamespace(**done)

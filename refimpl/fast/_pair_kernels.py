"""Numba kernels for the pair sums of RankDetNet (RankDet Eqs. 2-6) and APE (APE Eqs. 7-10).

Private module: :mod:`rankspec.refimpl.fast.rankdet` and :mod:`rankspec.refimpl.fast.ape`
validate the input (with the reference's own checks), call these kernels and pack the result.
The algorithms are described on the "Fast paths" docs page.  Everything is float64.

* RankDet pair sums, sigmoid / logistic L_rank: one pass over the units and one over the
  positives, each O(U P) with O(U + P) memory (no U x P matrix); the exponential L_rank
  factorises and needs no kernel (:mod:`.rankdet`).
* RankDet IoU-guided loss: per (class, level) group an O(m^2) loop without the m x m matrices.
* APE / pairwise error, any distance: the samples sorted by logit, so that each positive only
  visits the samples above its validity threshold, and each sample only the positives whose
  threshold it passes (a binary search with the reference's own floating-point predicate finds
  where the valid range starts).  O(n log n + valid pairs) time, O(n) memory.
* APE with the H distance: the valid pairs' H sums are prefix sums over the sorted logits
  (O(n log n + P log n + n log P)), with the positive-positive sums of ARPS either the same
  prefix sums (no aFP) or a Fenwick sweep over IoU ranks.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .kernels.primitives import (_OPTS, add_ape_terms, add_rank_terms, ape_pair, count_tab, dd_diff, distinct, expit,
                                 fenwick_add, fenwick_prefix, par_ser,
                                 first_valid, h_step, is_valid, last_valid_positive, log1pexp, make_table, prefix_dd,
                                 rank_value, sum_scale)
from .kernels.scalar import D_CE, D_H, D_SIGMOID, RF_EXP, RF_LOGISTIC, RF_SIGMOID

__all__ = ["RF_EXP", "RF_SIGMOID", "RF_LOGISTIC", "D_H", "D_SIGMOID", "D_CE", "expit", "log1pexp", "rank_value",
           "h_step", "is_valid", "pick", "exp_factors"]


# --------------------------------------------------------------------------- scalar functions
# (h_step, is_valid, expit, log1pexp, rank_value, ape_pair: :mod:`.kernels.scalar`, compiled for the CPU)

@njit(inline="always", **_OPTS)
def rank_value_prod(x, d, rf):
    """L_rank(x), L'_rank(x) (sigmoid / logistic) from ``d = e^{-x}`` given as a product of two
    precomputed exponentials (no exponential per pair): S = 1 / (1 + d)."""
    sg = 1.0 / (1.0 + d)
    if rf == RF_SIGMOID:
        return sg, sg * (1.0 - sg)
    if x >= 0.0:
        return x + math.log1p(d), sg
    return math.log1p(1.0 / d), sg


# --------------------------------------------------------------------------- RankDet

def _rank_pairs_impl(a, b, rf, ea, eb, prod):
    """For every ``a_i``: sum over j of L(a_i - b_j), L', L L' and L^2 (one row of the pair matrix
    each, never stored).  Returns a (4, len(a)) array.  O(len(a) len(b)) time.  ``prod``: the
    sigmoid / logistic from ``e^{-(a_i - b_j)} = ea_i eb_j`` (``ea = e^{c - a}``, ``eb = e^{b - c}``),
    one multiplication instead of an exponential per pair."""
    na = a.size
    nb = b.size
    out = np.zeros((4, na))
    for i in prange(na):
        ai = a[i]
        ei = ea[i]
        s0 = s1 = s2 = s3 = 0.0
        for j in range(nb):
            if prod:
                L, dL = rank_value_prod(ai - b[j], ei * eb[j], rf)
            else:
                L, dL = rank_value(ai - b[j], rf)
            s0, s1, s2, s3 = add_rank_terms(s0, s1, s2, s3, L, dL)
        out[0, i], out[1, i], out[2, i], out[3, i] = s0, s1, s2, s3
    return out


rank_rows_par, rank_rows_ser = par_ser(_rank_pairs_impl)


def rank_cols_par(a, b, rf, ea, eb, prod):
    """The same sums for every ``b_j`` over i (the columns), of L(a_i - b_j): the rows of the
    negated, swapped problem, since (-b_j) - (-a_i) == a_i - b_j exactly (and
    ``e^{-(a_i - b_j)} = eb_j ea_i``).  Summed over i in index order, as a column loop would."""
    return rank_rows_par(-b, -a, rf, eb, ea, prod)


def rank_cols_ser(a, b, rf, ea, eb, prod):
    """:func:`rank_cols_par` on one thread."""
    return rank_rows_ser(-b, -a, rf, eb, ea, prod)


def _iou_pairs_impl(f, s, alpha, rf, iou_grad):
    """One (class, level) group of RankDet Eq. 6, over unordered pairs i < j.

    Returns (loss, d loss / d f, d loss / d s) with ``iou_grad`` 0 = "higher", 1 = "both",
    2 = "none".  Every i visits every j != i, so that rows are independent (parallel, no
    races): with U_ij = -alpha (f_i - f_j)(s_i - s_j) symmetric in (i, j),
    d/df_i = sum_{j != i} -alpha L'(U_ij) (s_i - s_j) and, for "both",
    d/ds_i = sum_{j != i} -alpha L'(U_ij) (f_i - f_j) ("higher": only the j with f_i > f_j).
    O(m^2) time, O(m) memory.
    """
    m = f.size
    gf = np.zeros(m)
    gs = np.zeros(m)
    part = np.zeros(m)
    for i in prange(m):
        fi = f[i]
        si = s[i]
        accf = accs = acl = 0.0
        for j in range(m):
            if j == i:
                continue
            F = fi - f[j]
            S = si - s[j]
            L, dL = rank_value(-alpha * F * S, rf)
            if j > i:
                acl += L
            accf += dL * (-alpha) * S
            if iou_grad == 1 or (iou_grad == 0 and F > 0.0):
                accs += dL * (-alpha) * F
        gf[i] = accf
        gs[i] = accs
        part[i] = acl
    return part.sum(), gf, gs


iou_pairs_par, iou_pairs_ser = par_ser(_iou_pairs_impl)


# --------------------------------------------------------------------------- APE, any distance

@njit(inline="always", **_OPTS)
def distance_value(x, dist, delta, lam, tie):
    """D(x) of the pair sums: H, S(lam x) or CE = log(1 + e^{lam x})."""
    if dist == D_H:
        return h_step(x, delta, tie)
    if dist == D_SIGMOID:
        return expit(lam * x)
    return log1pexp(lam * x)


def _ape_rows_impl(ss, sl, si, so, pos_rank, adaptive, dist, delta, lam, tie, t_none, t, rank_bc, ea, eb, prod):
    """Per positive k (at position ``pos_rank[k]`` of the sorted samples): over the valid samples
    (a suffix of the sorted order), the sums of the reference's per-positive loop.

    Returns a (5, P) array: D-sum over the members of A_u (or N), S-sum over them (the CE
    gradient), the rank-counting sum over every valid sample v != u, the number of members,
    and the number of valid samples v != u.  ``prod``: ``e^{-lam x_uv} = ea_v eb_k`` from
    precomputed exponentials (``ea = e^{-lam (s - c)}`` per sorted sample, ``eb = e^{lam (s_u - c)}``
    per positive): no exponential per pair.
    """
    P = pos_rank.size
    out = np.zeros((5, P))
    for k in prange(P):
        r = pos_rank[k]
        su = ss[r]
        iu = si[r]
        uid = so[r]
        ek = eb[k]
        j0 = first_valid(ss, su, t_none, t, delta, tie)
        tot = tot2 = bc = cnt = nval = 0.0
        for j in range(j0, ss.size):
            x = ss[j] - su
            if so[j] == uid:
                continue
            nval += 1.0
            lab = sl[j]
            member = lab == 0.0 or (adaptive and si[j] < iu)
            if prod and dist != D_H:  # d = e^{-y}: S(y) = 1 / (1 + d), log(1 + e^y) = y + log1p(d) or log1p(1 / d)
                y = lam * x
                d = ea[j] * ek
                sg = 1.0 / (1.0 + d)
                dv = sg
                d2 = 0.0
                if dist == D_CE:
                    dv = (y + math.log1p(d)) if y >= 0.0 else math.log1p(1.0 / d)
                    d2 = sg
                rv = sg
            else:  # one exponential per pair
                dv, d2, rv = ape_pair(x, dist, delta, lam, tie)
            tot, tot2, bc, cnt = add_ape_terms(tot, tot2, bc, cnt, dv, d2, rv, member, rank_bc)
        out[0, k] = tot
        out[1, k] = tot2
        out[2, k] = bc
        out[3, k] = cnt
        out[4, k] = nval
    return out


def _ape_cols_impl(ss, sl, si, pp, pi, coef, adaptive, dist, delta, lam, tie, t_none, t, ea, eb, prod):
    """Incoming gradient of every sorted sample v: sum over the positives u whose A_u (or N) holds v
    and whose pair with v is valid of ``coef_u * D'(x_uv)`` (D' = H for H, S for S and CE; the
    coefficients carry the rest).  ``pp``, ``pi``, ``coef``: the positives sorted by logit."""
    n = ss.size
    g = np.zeros(n)
    for j in prange(n):
        lab = sl[j]
        if lab != 0.0 and not adaptive:
            continue
        sv = ss[j]
        iv = si[j]
        ej = ea[j]
        kend = last_valid_positive(pp, sv, t_none, t, delta, tie)
        acc = 0.0
        for k in range(kend):
            c = coef[k]
            if c == 0.0:
                continue
            if lab != 0.0 and not (iv < pi[k]):
                continue
            if dist == D_H:
                acc += c * h_step(sv - pp[k], delta, tie)
            elif prod:
                acc += c / (1.0 + ej * eb[k])
            else:
                acc += c * expit(lam * (sv - pp[k]))
        g[j] = acc
    return g


ape_rows_par, ape_rows_ser = par_ser(_ape_rows_impl)
ape_cols_par, ape_cols_ser = par_ser(_ape_cols_impl)


# --------------------------------------------------------------------------- APE, H distance: prefix sums

@njit(inline="always", **_OPTS)
def _hpos(x, delta):
    """H(x) > 0 at delta > 0, with the reference's operations (x / delta / 2 + 0.5 > 0)."""
    return x / delta * 0.5 + 0.5 > 0.0


@njit(inline="always", **_OPTS)
def _hsat(x, delta):
    """H(x) == 1 at delta > 0 (the clip saturates)."""
    return x / delta * 0.5 + 0.5 >= 1.0


@njit(**_OPTS)
def _first(A, su, kind, delta):
    """Smallest j with pred(A[j] - su) on the ascending A, for the monotone predicates
    kind 0: H > 0, 1: H == 1 (delta > 0); 2: x >= 0, 3: x > 0 (delta = 0)."""
    a = 0
    e = A.size
    while a < e:
        m = (a + e) >> 1
        x = A[m] - su
        if kind == 0:
            ok = _hpos(x, delta)
        elif kind == 1:
            ok = _hsat(x, delta)
        elif kind == 2:
            ok = x >= 0.0
        else:
            ok = x > 0.0
        if ok:
            e = m
        else:
            a = m + 1
    return a


@njit(**_OPTS)
def _hsum(A, Shi, Slo, su, delta, tie, t_none, t, sc):
    """(sum of H(A[j] - su) over the valid j, number of valid j) from the prefix sums of the
    ascending A (taken in units of ``sc``, :func:`.kernels.scalar.sum_scale`).  Valid j form a
    suffix; so do H > 0 and H == 1.  O(log len(A))."""
    n = A.size
    j0 = first_valid(A, su, t_none, t, delta, tie)
    if delta > 0.0:
        w0 = max(j0, _first(A, su, 0, delta))
        jS = max(_first(A, su, 1, delta), w0)
        cw = jS - w0
        sw = dd_diff(Shi, Slo, jS, w0)
        h = (n - jS) + (sw - cw * (su * sc)) / (2.0 * (delta * sc)) + 0.5 * cw
    else:
        a = max(j0, _first(A, su, 3, delta))
        b = max(j0, _first(A, su, 2, delta))
        h = (n - a) + tie * (a - b)
    return h, n - j0


def _ape_h_rows_impl(sn, pp, delta, tie, t_none, t):
    """Per sorted positive k: (H sum over valid negatives, valid negatives, H sum over every valid
    sample v != u).  ``sn``: negatives' logits sorted, ``pp``: positives' logits sorted."""
    P = pp.size
    # logit sums in units of sc (1 unless a logit exceeds 2^960): no overflow for any finite input
    n = sn.size
    sc = sum_scale(min(pp[0], sn[0]) if n else pp[0], max(pp[P - 1], sn[n - 1]) if n else pp[P - 1])
    Phi, Plo = prefix_dd(pp * sc)
    Nhi, Nlo = prefix_dd(sn * sc)
    out = np.zeros((3, P))
    h0 = h_step(0.0, delta, tie) if is_valid(0.0, t_none, t, delta, tie) else 0.0
    for k in prange(P):
        su = pp[k]
        hn, cn = _hsum(sn, Nhi, Nlo, su, delta, tie, t_none, t, sc)
        hp, _cp = _hsum(pp, Phi, Plo, su, delta, tie, t_none, t, sc)
        out[0, k] = hn
        out[1, k] = cn
        out[2, k] = hn + (hp - h0)  # every valid sample but u itself
    return out


@njit(inline="always", **_OPTS)
def _fix(k, pp, sv, kind, delta, tie, t_none, t):
    """The exact prefix count of the reference's predicate (kinds of :func:`_pred`, or 3: validity
    alone) near the estimate ``k``: step while the predicate disagrees (it is monotone)."""
    P = pp.size
    while k < P and _pred_any(sv - pp[k], kind, delta, tie, t_none, t):
        k += 1
    while k > 0 and not _pred_any(sv - pp[k - 1], kind, delta, tie, t_none, t):
        k -= 1
    return k


@njit(inline="always", **_OPTS)
def _pred_any(x, kind, delta, tie, t_none, t):
    if kind == 3:
        return is_valid(x, t_none, t, delta, tie)
    if kind == 1:
        return _hpos(x, delta)
    return _hsat(x, delta)


def _ape_h_cols_impl(sn, pp, coef, delta, tie, t_none, t):
    """Incoming gradient sum_u coef_u H(s_v - p_u) [valid] of every negative (logits ``sn``, any
    order) over the sorted positives ``pp``: saturated and window parts are prefix ranges.

    The prefix lengths are estimated in O(1) with the lookup table of the AP fast path over the
    distinct positive logits (``p <= s_v - delta``, ``p < s_v + delta``, ``p < s_v + t``) and then
    made exact for the reference's own predicates by a few steps.  O(1) expected per negative.
    """
    n = sn.size
    Chi, Clo = prefix_dd(coef)
    P = pp.size
    sc = sum_scale(pp[0], pp[P - 1])  # unit of the sums of coef * p (1 unless |p| > 2^960)
    CPhi, CPlo = prefix_dd(coef * (pp * sc))
    pd, cum = distinct(pp)
    tb = make_table(pd)
    g = np.zeros(n)
    den = 2.0 * (delta * sc)
    for j in prange(n):
        sv = sn[j]
        if t_none:
            kend = P
        else:
            kend = _fix(cum[count_tab(tb, sv + t, True)] if t < np.inf else P, pp, sv, 3, delta, tie, t_none, t)
        if delta > 0.0:
            kS = min(_fix(cum[count_tab(tb, sv - delta, False)], pp, sv, 2, delta, tie, t_none, t), kend)
            kW = max(min(_fix(cum[count_tab(tb, sv + delta, True)], pp, sv, 1, delta, tie, t_none, t), kend), kS)
            cw = dd_diff(Chi, Clo, kW, kS)
            cpw = dd_diff(CPhi, CPlo, kW, kS)
            g[j] = (Chi[kS] + Clo[kS]) + ((sv * sc) * cw - cpw) / den + 0.5 * cw
        else:
            if t_none:  # valid: x > 0, or x == 0 when tie_value > 0
                kend = cum[count_tab(tb, sv, False)] if tie > 0.0 else cum[count_tab(tb, sv, True)]
            kL = min(cum[count_tab(tb, sv, True)], kend)  # p < s_v: H = 1
            kE = max(min(cum[count_tab(tb, sv, False)], kend), kL)  # p == s_v: H = tie_value
            g[j] = (Chi[kL] + Clo[kL]) + tie * dd_diff(Chi, Clo, kE, kL)
    return g


ape_h_rows_par, ape_h_rows_ser = par_ser(_ape_h_rows_impl)
ape_h_cols_par, ape_h_cols_ser = par_ser(_ape_h_cols_impl)


def pick(name, work, parallel=None):
    """The multi-threaded variant of kernel ``name`` when ``work`` (elements or pairs) reaches the
    numba backend's ``PARALLEL_MIN_SIZE`` (environment ``RANKSPEC_NUMBA_PARALLEL_MIN_SIZE``), else
    the serial one: on 2 cores shared with other jobs a parallel region can wait milliseconds for a
    descheduled thread."""
    if parallel is None:
        from ._numba_backend import PARALLEL_MIN_SIZE

        parallel = work >= PARALLEL_MIN_SIZE
    return globals()[name + ("_par" if parallel else "_ser")]


@njit(inline="always", **_OPTS)
def _pred(x, kind, delta, tie, t_none, t):
    """The three nested pair sets of the Fenwick sweeps: 0 valid, 1 valid and H > 0 (delta = 0:
    valid and x >= 0), 2 H == 1 (delta = 0: x > 0).  Each is monotone in x."""
    if kind == 0:
        return is_valid(x, t_none, t, delta, tie)
    if kind == 1:
        if not is_valid(x, t_none, t, delta, tie):
            return False
        if delta > 0.0:
            return _hpos(x, delta)
        return x >= 0.0
    if delta > 0.0:
        return _hsat(x, delta)
    return x > 0.0


@njit(**_OPTS)
def iou_ranks(y):
    """ry[k] = number of entries of y strictly smaller than y[k] (equal values share a rank)."""
    P = y.size
    oy = np.argsort(y)
    ry = np.empty(P, np.int64)
    i = 0
    while i < P:
        j = i
        while j < P and y[oy[j]] == y[oy[i]]:
            ry[oy[j]] = i
            j += 1
        i = j
    return ry


@njit(**_OPTS)
def ape_h_afp_rows(pp, pi, delta, tie, t_none, t):
    """ARPS aFP part of every sorted positive u: (sum of H(p_k - p_u) over valid k with
    IoU_k < IoU_u, their number).  Sweep in descending logit order; the three nested sets of
    :func:`_pred` are suffixes of the sorted positives that only grow, inserted into a Fenwick
    tree keyed by IoU rank (count and sum of logits).  O(P log P)."""
    P = pp.size
    ry = iou_ranks(pi)
    F = np.zeros((P + 1, 12))  # per set (valid, window, saturated) 4 columns: count, sum p, (unused)
    acc = np.zeros(12)
    ptr = np.full(3, P - 1, np.int64)
    out = np.zeros((2, P))
    sc = sum_scale(pp[0], pp[P - 1]) if P else 1.0  # unit of the sums of p
    ps = pp * sc
    inv2d = 1.0 / (2.0 * (delta * sc)) if delta > 0.0 else 0.0
    wt = 0.5 if delta > 0.0 else tie
    for k in range(P - 1, -1, -1):
        pu = pp[k]
        for kind in range(3):
            q = ptr[kind]
            while q >= 0 and _pred(pp[q] - pu, kind, delta, tie, t_none, t):
                fenwick_add(F, ry[q] + 1, P, 4 * kind, 1.0, ps[q], 0.0, 0.0)
                q -= 1
            ptr[kind] = q
        fenwick_prefix(F, ry[k], acc)
        cw = acc[4] - acc[8]
        out[0, k] = acc[8] + ((acc[5] - acc[9]) - ps[k] * cw) * inv2d + wt * cw
        out[1, k] = acc[0]
    return out


@njit(**_OPTS)
def ape_h_afp_cols(pp, pi, coef, delta, tie, t_none, t):
    """Incoming aFP gradient of every sorted positive v: sum of coef_u H(p_v - p_u) over the valid
    u with IoU_u > IoU_v.  Ascending sweep; the sets are prefixes of the sorted positives; Fenwick
    tree keyed by reversed IoU rank (sum of coef and of coef * p).  O(P log P)."""
    P = pp.size
    ry = iou_ranks(pi)
    F = np.zeros((P + 1, 8))  # window set: sum c, sum c p in columns 0, 1; saturated set: 4, 5
    acc = np.zeros(8)
    ptr = np.zeros(3, np.int64)
    g = np.zeros(P)
    sc = sum_scale(pp[0], pp[P - 1]) if P else 1.0  # unit of the sums of coef * p
    ps = pp * sc
    inv2d = 1.0 / (2.0 * (delta * sc)) if delta > 0.0 else 0.0
    wt = 0.5 if delta > 0.0 else tie
    for k in range(P):
        pv = pp[k]
        for kind in (1, 2):
            q = ptr[kind]
            while q < P and _pred(pv - pp[q], kind, delta, tie, t_none, t):
                if coef[q] != 0.0:
                    fenwick_add(F, P - ry[q], P, 4 * (kind - 1), coef[q], coef[q] * ps[q], 0.0, 0.0)
                q += 1
            ptr[kind] = q
        fenwick_prefix(F, P - 1 - ry[k], acc)
        cw = acc[0] - acc[4]
        g[k] = acc[4] + (ps[k] * cw - (acc[1] - acc[5])) * inv2d + wt * cw
    return g


#: the product form is used when every |scale (s - c)| stays below this (no overflow, and the
#: relative error of a product, ~1e-16 (|lam (s_v - c)| + |lam (s_u - c)|), stays ~1e-13)
PROD_MAX_EXPONENT = 600.0


def exp_factors(values, scale):
    """(c, ok): a centre c of ``values`` and whether e^{+-scale (v - c)} is safe for all of them."""
    lo, hi = float(values.min()), float(values.max())
    c = 0.5 * (lo + hi)
    return c, scale * (hi - lo) * 0.5 < PROD_MAX_EXPONENT

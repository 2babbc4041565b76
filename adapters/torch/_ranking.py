"""Vectorised engine of the AP / RS / bucketed family (no Python loop over positives).

The NumPy reference (:mod:`rankspec.refimpl.reference.ranking`) visits positives one by
one.  Here every per-positive quantity is computed at once from sorted arrays:

* The smoothed step H (BRL Eq. 3.2) is piecewise linear, so for a query logit
  q the weighted sum ``sum_j w_j H(t_j - q)`` over sorted logits ``t`` is
  (weight at or above ``q + delta``) + (weight equal to q) / 2 + (the two
  linear pieces ``(q - delta, q)`` and ``(q, q + delta)``: weight / 2 +
  ``sum w (t - q) / (2 delta)``), read at ``searchsorted`` positions.  That
  gives N_FP(i) and rank^+(i) (BRL Eq. 3.1) for every positive.
* A negative's identity-update gradient ``sum_i c_i H(t_j - s_i)`` with
  ``c_i = l_R(i) / N_FP(i)`` (BRL Eq. 3.10, RS Eq. 11) is the same kind of sum
  over the positives sorted by logit, with weights ``c_i``.
* ``delta == 0`` uses exact counts: strictly above plus ``tie_value`` times
  the equal ones (``searchsorted`` left/right).
* Interpolated precision is a running maximum (``cummax``) over positives in
  ascending logit order (stable sort: ties in index order, as the reference).
* Buckets (BRL Eq. 3.19) come from ``searchsorted`` against the sorted
  positives; prototypes from sums over the bucket-sorted negatives; the bucketed loss is the same
  engine run on prototypes weighted by bucket size (BRL Eq. 3.20).
* The RS sorting part (RS Eqs. 7-10) needs H between every pair of positives:
  P x P, processed in row blocks.

Segments: ``scope="image"`` rankings are independent per image.  Comparisons
are made on integer keys ``segment * U + rank`` (``rank`` = position of the
value among all distinct values involved), so one ``searchsorted`` serves all
images without mixing them and without perturbing any value.

Accuracy: all arithmetic is float64 (inputs of lower precision are converted
first).  Sums of weights come from compensated prefix sums (the rounding error
of each ``cumsum`` step is recovered exactly and summed separately), so a range
sum is accurate relative to the range, not to the whole array.  The piece sums
``sum w (t - q)`` use centred prefix sums when ``delta`` is not small against
the spread of the logits, else a tree of offsets (:class:`_OffsetTree`) that is
accurate for any ``delta`` (see :data:`PIECE_RTOL`).  Either way the results
agree with the reference to a few ulp of float64 in our tests.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict

import torch

from ._inputs import Parsed

F64 = torch.float64

#: Elements per block of the P x P sorting computation (float64: 32 MiB per block matrix).
SORT_BLOCK_ELEMENTS = 1 << 22

EPS64 = float(torch.finfo(F64).eps)

#: The linear pieces of H are summed with O(1) prefix sums when their relative error bound
#: 2 eps (span of the logits + 2 delta) / delta is below this, else with the O(log n) _OffsetTree
#: (exact to O(eps log n) for any delta).  Set to 0 to always use the tree, to inf to never.
PIECE_RTOL = 1e-12

#: At delta > 0, the ranking arithmetic takes logits and delta in units of 1 / SMALL_UNIT (a power of
#: two) when either exceeds BIG in magnitude, so that no difference, centre or sum of logits overflows
#: (delta == 0 only compares).
BIG = 2.0 ** 960
SMALL_UNIT = 2.0 ** -70


@dataclass
class EngineOutput:
    loss: torch.Tensor  #: 0-d float64
    grad: torch.Tensor  #: flat float64 gradient (identity update, normalised)
    terms: Dict[str, torch.Tensor] = field(default_factory=dict)  #: 0-d float64 parts


# --------------------------------------------------------------------------- sums and keys
class _Prefix:
    """Compensated prefix sums of ``x`` (with a leading 0): ``range(lo, hi) = sum x[lo:hi]``.

    ``head = cumsum(x)`` as computed by torch (any summation order); the exact
    defect of each step, ``x_k - (head_k - head_{k-1})``, is recovered with
    Knuth's TwoSum and accumulated in ``tail``.  Then
    ``sum x[lo:hi] = (head[hi] - head[lo]) + (tail[hi] - tail[lo])`` with an
    error of order eps * |window sum| + eps^2 * |total|, instead of
    eps * |total| for plain prefix differences.  Time and memory O(len(x)).
    """

    def __init__(self, x: torch.Tensor):
        zero = x.new_zeros((1,) + tuple(x.shape[1:]))  # x may be (n, columns): sums along dim 0
        head = torch.cat([zero, torch.cumsum(x, 0)])
        a, b = head[1:], -head[:-1]
        step = a + b  # fl(head_k - head_{k-1})
        bv = step - a
        err = (a - (step - bv)) + (b - bv)  # TwoSum: step + err == head_k - head_{k-1} exactly
        defect = (x - step) - err
        self.head = head
        self.tail = torch.cat([zero, torch.cumsum(defect, 0)])

    def range(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        return (self.head[hi] - self.head[lo]) + (self.tail[hi] - self.tail[lo])


def _keys(num_segments: int, *pairs):
    """Comparable keys for (values, segments) pairs: the values themselves for one segment,
    else ``segment * U + dense rank`` (int64) over the union of all values given."""
    if num_segments == 1:
        return [v for v, _ in pairs]
    values = torch.cat([v for v, _ in pairs])
    uniq, inv = torch.unique(values, sorted=True, return_inverse=True)
    u = uniq.numel()
    out, start = [], 0
    for v, g in pairs:
        n = v.numel()
        out.append(g * u + inv[start:start + n])
        start += n
    return out


def _segment_bounds(seg: torch.Tensor, num_segments: int):
    """(start, end) index of every segment in an array sorted by segment."""
    counts = torch.bincount(seg, minlength=num_segments)
    end = torch.cumsum(counts, 0)
    return end - counts, end


def _segmented_cummax(x: torch.Tensor, seg: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Running maximum of ``x`` restarting at every segment (``seg`` sorted). O(n log n) time, O(n) memory."""
    if num_segments == 1:
        return torch.cummax(x, 0).values
    n, d = x.numel(), 1
    while d < n:  # Hillis-Steele scan: log2(n) vectorised steps
        same = seg[d:] == seg[:-d]
        x = torch.cat([x[:d], torch.where(same, torch.maximum(x[d:], x[:-d]), x[d:])])
        d *= 2
    return x


def _smoothed_step(x: torch.Tensor, delta: float, tie_value: float) -> torch.Tensor:
    """H of BRL Eq. 3.2, elementwise (same formula as the reference's ``smoothed_step``)."""
    if delta > 0:
        return torch.clamp(x / delta * 0.5 + 0.5, 0.0, 1.0)  # as the reference: 2 delta may overflow
    return torch.where(x > 0, 1.0, torch.where(x == 0, tie_value, 0.0)).to(x.dtype)


# --------------------------------------------------------------------------- ranking part
class _OffsetTree:
    """Sums of ``w_j (v_j - q)`` over index ranges of sorted values ``v``, accurate near q.

    A binary tree over the (padded) array: a node stores its first value f, its
    weight W and ``R = sum w (v - f)`` over its leaves.  A range [a, b) splits
    into O(log n) whole nodes, each contributing ``R + W (f - q)``.  For the
    pieces of a smoothing window every such node lies within delta of q, so all
    terms are of the size of ``delta * weight``: the error is O(eps log n) relative
    to the result, for any delta (prefix sums of ``w v`` would instead lose
    eps * |v| / delta).  Build O(n) time and memory, query O(log n) per range.
    """

    def __init__(self, v, w):
        n = v.numel()
        size = 1 << max(0, (n - 1).bit_length())
        f = v.new_zeros(size)
        W = w.new_zeros(size)
        f[:n], W[:n] = v, w
        if 0 < n < size:
            f[n:] = v[-1]  # padding: weight 0, any finite value
        R = torch.zeros_like(f)
        self.levels = [(f, W, R)]
        while f.numel() > 1:
            R = R[0::2] + R[1::2] + W[1::2] * (f[1::2] - f[0::2])
            W = W[0::2] + W[1::2]
            f = f[0::2]
            self.levels.append((f, W, R))

    def offset_sum(self, a, b, q):
        """``sum_{a <= j < b} w_j (v_j - q)`` for every query (vectors a, b, q)."""
        out = torch.zeros_like(q)
        active = torch.nonzero(a < b).squeeze(1)  # empty ranges contribute 0
        if active.numel() == 0:
            return out
        lo, hi, q = a[active], b[active], q[active]
        acc = torch.zeros_like(q)
        for f, W, R in self.levels:
            last = f.numel() - 1
            take = ((lo & 1) == 1) & (lo < hi)
            i = torch.clamp(lo, max=last)
            acc += torch.where(take, R[i] + W[i] * (f[i] - q), 0.0)
            lo = lo + take.long()
            take = ((hi & 1) == 1) & (lo < hi)
            hi = hi - take.long()
            i = torch.clamp(hi, max=last)
            acc += torch.where(take, R[i] + W[i] * (f[i] - q), 0.0)
            lo, hi = lo >> 1, hi >> 1
        out[active] = acc
        return out


class _CentredPrefix:
    """Sums of ``w_j (v_j - q)`` over index ranges from compensated prefix sums of ``w (v - c)``.

    O(1) per range after O(n) set-up; absolute error about
    ``2 eps (|v - c| + |q - c|) * weight``, so it is used only where that is
    negligible against ``delta * weight`` (see :data:`PIECE_RTOL`)."""

    def __init__(self, v, w, centre):
        self.centre = centre
        self.W = _Prefix(w)
        self.X = _Prefix(w * (v - centre))

    def offset_sum(self, a, b, q):
        return self.X.range(a, b) - (q - self.centre) * self.W.range(a, b)


class _Sorted:
    """Weighted values of several segments sorted by key, with the sums that :meth:`step_sums` needs."""

    def __init__(self, keys, values, weights, seg, num_segments, delta):
        self.keys, self.perm = torch.sort(keys, stable=True)
        self.values, self.delta = values[self.perm], delta
        self.start, self.end = _segment_bounds(seg, num_segments)
        self.centre, self.use_tree = None, False
        if delta > 0 and values.numel() > 0:
            lo, hi = float(values.min()), float(values.max())
            self.centre = 0.5 * lo + 0.5 * hi  # (lo + hi) / 2 could overflow
            # relative error of the prefix-sum piece sums, ~ 2 eps (span + 2 delta) / delta
            self.use_tree = 2.0 * EPS64 * (hi - lo + 2.0 * delta) / delta > PIECE_RTOL
        self._weigh(weights[self.perm])

    def _weigh(self, w_sorted):
        self.W = _Prefix(w_sorted)
        self.X = None
        if self.delta > 0:
            self.X = (_OffsetTree(self.values, w_sorted) if self.use_tree
                      else _CentredPrefix(self.values, w_sorted, 0.0 if self.centre is None else self.centre))

    def reweighted(self, weights) -> "_Sorted":
        """The same sorted values with other weights (no new sort)."""
        other = copy.copy(self)
        other._weigh(weights[self.perm])
        return other

    def step_sums(self, q_key, q, q_seg, delta, tie_value, q_lo=None, q_hi=None):
        """For each query value q (keys ``q_key``, ``q_lo`` of q - delta, ``q_hi`` of q + delta):

        ``above = sum_j w_j H(v_j - q)`` and ``below = sum_j w_j H(q - v_j)`` over the
        query's segment.  Elements equal to q count H(0) exactly, elements beyond
        q +- delta 0 or 1 (prefix sums of w); the linear pieces ``(q - delta, q)``
        and ``(q, q + delta)`` add ``sum w (v - q) / (2 delta)`` (:class:`_CentredPrefix`,
        or :class:`_OffsetTree` where delta is tiny against the spread of the values).
        """
        ss = torch.searchsorted
        eq_lo, eq_hi = ss(self.keys, q_key, right=False), ss(self.keys, q_key, right=True)
        start, end = self.start[q_seg], self.end[q_seg]
        W = self.W.range
        w_eq = W(eq_lo, eq_hi)
        if delta == 0:  # exact step: H(x) = [x > 0] + tie_value [x == 0]
            return W(eq_hi, end) + tie_value * w_eq, W(start, eq_lo) + tie_value * w_eq
        # lo: first element > q - delta (H(v - q) > 0); hi: first element >= q + delta (H(v - q) = 1)
        lo = torch.minimum(ss(self.keys, q_lo, right=True), eq_lo)
        hi = torch.maximum(ss(self.keys, q_hi, right=False), eq_hi)
        w_dn, w_up = W(lo, eq_lo), W(eq_hi, hi)
        # sum of w (v - q) over each linear piece, bounded by its sign and by delta * weight
        d_dn = torch.clamp(self.X.offset_sum(lo, eq_lo, q), max=0.0)
        d_up = torch.clamp(self.X.offset_sum(eq_hi, hi, q), min=0.0)
        d = (torch.maximum(d_dn, -delta * w_dn) + torch.minimum(d_up, delta * w_up)) / (2.0 * delta)
        half = 0.5 * (w_dn + w_eq + w_up)
        return W(hi, end) + half + d, W(start, lo) + half - d


@dataclass
class _RankingPart:
    error: torch.Tensor  #: l_R(i) per positive (interpolated if asked)
    grad_pos: torch.Tensor  #: scaled outgoing gradient of each positive
    grad_neg_unit: torch.Tensor  #: scaled gradient per unit weight of each negative / prototype


def _ranking_part(sp, gp, sn, gn, wn, num_segments, delta, self_value, tie_value, interpolated, scale):
    """Ranking errors and their identity-update gradient for positives ``sp`` and weighted negatives ``sn``.

    ``scale`` (per positive) multiplies every primary term of that positive
    (1 / (|P_image| * images) in the callers).  Negatives must belong to
    segments that have positives.  Time O((P + M) log(P + M)), memory O(P + M).
    """
    G = num_segments
    if delta > 0:
        kp, kn, kp_lo, kp_hi, kn_lo, kn_hi = _keys(G, (sp, gp), (sn, gn), (sp - delta, gp), (sp + delta, gp),
                                                   (sn - delta, gn), (sn + delta, gn))
    else:
        (kp, kn), kp_lo, kp_hi, kn_lo, kn_hi = _keys(G, (sp, gp), (sn, gn)), None, None, None, None
    negs = _Sorted(kn, sn, wn, gn, G, delta)
    poss = _Sorted(kp, sp, torch.ones_like(sp), gp, G, delta)

    # N_FP(i) = sum_j w_j H(t_j - s_i);  rank^+(i) = sum_k H(s_k - s_i) - H(0) + self term   (BRL Eq. 3.1)
    n_fp, _ = negs.step_sums(kp, sp, gp, delta, tie_value, kp_lo, kp_hi)
    all_pos, _ = poss.step_sums(kp, sp, gp, delta, tie_value, kp_lo, kp_hi)
    rank_plus = all_pos - (0.5 if delta > 0 else tie_value) + self_value
    rank = rank_plus + n_fp

    # l_R(i) = N_FP(i) / rank(i)   (RS Eq. 7, BRL Eqs. 3.3-3.4)
    if interpolated:
        # interpolated precision: running max over positives in ascending logit order, ties in index
        # order (stable sort), as the AP-Loss authors' code
        best_sorted = _segmented_cummax((rank_plus / rank)[poss.perm], gp[poss.perm], G)
        best = torch.empty_like(best_sorted)
        best[poss.perm] = best_sorted
        error = 1.0 - best
    else:
        error = n_fp / rank
    has_fp = n_fp > 0
    # primary terms L_ij = scale_i l_R(i) w_j H(x_ij) / N_FP(i)   (BRL Eq. 3.10): positive i loses their sum
    coef = torch.where(has_fp, scale * error / torch.where(has_fp, n_fp, 1.0), 0.0)
    grad_pos = torch.where(has_fp, -scale * error, 0.0)

    # each negative gains sum_i coef_i H(t_j - s_i) per unit weight   (RS Eq. 11, BRL Eq. 3.33)
    by_coef = poss.reweighted(coef)
    _, grad_neg_unit = by_coef.step_sums(kn, sn, gn, delta, tie_value, kn_lo, kn_hi)
    return _RankingPart(error, grad_pos, grad_neg_unit)


# --------------------------------------------------------------------------- sorting part (RS)
def _sorting_part(sp, yp, gp, num_segments, delta, self_value, tie_value, scale):
    """Sorting errors l_S(i) - l*_S(i) and their scaled identity-update gradient over positives.

    RS Eqs. 7-10 / BRL Eqs. 3.12-3.16.  Needs H between every pair of positives
    of an image: time O(sum_g P_g^2) (P^2 for one ranking), memory
    O(P + min(P^2, SORT_BLOCK_ELEMENTS)) (rows are processed in blocks).
    """
    if num_segments > 1:  # images one after another, so a block of rows only meets its images' columns
        order = torch.sort(gp, stable=True).indices
        error, grad = _sorting_part_sorted(sp[order], yp[order], gp[order], num_segments, delta, self_value,
                                           tie_value, scale[order])
        out_e, out_g = torch.empty_like(error), torch.empty_like(grad)
        out_e[order], out_g[order] = error, grad
        return out_e, out_g
    return _sorting_part_sorted(sp, yp, gp, 1, delta, self_value, tie_value, scale)


def _sorting_part_sorted(sp, yp, gp, num_segments, delta, self_value, tie_value, scale):
    P = sp.numel()
    device = sp.device
    error = torch.zeros(P, dtype=F64, device=device)
    grad = torch.zeros(P, dtype=F64, device=device)
    one_minus_y = 1.0 - yp
    if num_segments > 1:
        seg_start, seg_end = (b.tolist() for b in _segment_bounds(gp, num_segments))
    widest = P if num_segments == 1 else int(torch.bincount(gp, minlength=num_segments).max())
    rows = max(1, SORT_BLOCK_ELEMENTS // max(widest, 1))
    start = 0
    while start < P:  # blocks of rows, not single positives
        stop = min(P, start + rows)
        if num_segments > 1:  # keep a block inside one image so its columns are that image's positives
            g = int(gp[start])
            stop = min(stop, seg_end[g])
            c0, c1 = seg_start[g], seg_end[g]
        else:
            c0, c1 = 0, P
        r = torch.arange(start, stop, device=device)
        cols = slice(c0, c1)
        s_c, y_c, omy_c = sp[cols], yp[cols], one_minus_y[cols]
        h = _smoothed_step(s_c[None, :] - sp[r, None], delta, tie_value)  # H(x_ij), x_ij = s_j - s_i
        h[torch.arange(stop - start, device=device), r - c0] = self_value
        rank_plus = h.sum(1)
        current = (h * omy_c).sum(1) / rank_plus  # l_S(i)   (RS Eq. 7)
        ge = y_c[None, :] >= yp[r, None]
        h_ge = h * ge
        target = (h_ge * omy_c).sum(1) / h_ge.sum(1)  # l*_S(i)   (RS Eq. 8)
        e = current - target
        missorted = h * ~ge  # H(x_ij) [y_j < y_i]: p_S(j|i) up to normalisation   (RS Eq. 10)
        m_sum = missorted.sum(1)
        has = m_sum > 0
        coef = torch.where(has, scale[r] * e / torch.where(has, m_sum, 1.0), 0.0)
        grad[cols] += coef @ missorted  # incoming primary terms of positives j   (RS Eq. 12)
        grad[r] -= torch.where(has, scale[r] * e, 0.0)  # outgoing primary terms of i
        error[r] = e
        start = stop
    return error, grad


# --------------------------------------------------------------------------- near-linear hot path
# Item "near-linear torch engine": negatives are never sorted.  The positives (P of them) are sorted,
# and the 2P (delta > 0: 3P with the logits themselves) *boundaries* s_i - delta, s_i, s_i + delta
# cut the line into slots; a negative's slot is its half-rank among the boundaries, read from a
# uniform-grid table (:class:`_GridRank`: O(1) per negative, ``searchsorted`` where boundaries crowd).
# H is linear in the negative's logit inside a slot, so counts and centred logit sums per slot
# (``index_add``, O(N)) give N_FP of every positive from prefix sums over slots, and each negative's
# gradient is ``A_k + B_k (t - c)`` with per-slot coefficients from prefix sums over the sorted
# positives.  The RS sorting part (sums over pairs of positives restricted to lower / higher IoU)
# walks a wavelet matrix over the positives' IoU ranks in logit order (:class:`_WaveletMatrix`):
# O(P log P) time and memory.  Total O(N + P log P) time, O(N + P log P) memory.

def _halfrank(sorted_vals: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``#(v < q) + #(v <= q)`` over a sorted array: 2m + 1 for q equal to its m-th distinct value,
    2m when q lies strictly between the (m-1)-th and the m-th.  Monotone in q, exact (no arithmetic)."""
    ss = torch.searchsorted
    return ss(sorted_vals, q, right=False) + ss(sorted_vals, q, right=True)


#: :class:`_GridRank` cells per boundary value, and the most boundary values one cell may hold
#: (beyond it the lookup falls back to ``searchsorted``).
GRID_CELLS_PER_VALUE = 8
GRID_MAX_PER_CELL = 6
_MAGIC = 2.0 ** 52  # x + 2^52 rounds x in [0, 2^52) to an integer held in the low mantissa bits
_MAGIC_BITS = 0x4330000000000000  # the bits of 2.0 ** 52 as an int64


class _GridRank:
    """``_halfrank(u, x)`` for many queries x against sorted distinct values u, by table lookup.

    A monotone map ``cell(x) = round(clamp((x - u_0) / h, 0, C - 1))`` (C = cells) sends each
    query to a cell; every u with ``cell(u) < cell(x)`` is < x and every u with ``cell(u) >
    cell(x)`` is > x (monotonicity of the rounded arithmetic), so ``#(u < x)`` is the count of
    values in lower cells (a table) plus a comparison with the <= K values of x's own cell (K
    vectorised steps).  Exact, no search: O(C + |u|) set-up, O(K) per query.  Falls back to
    ``searchsorted`` where the values crowd (K > :data:`GRID_MAX_PER_CELL`) or the scale is degenerate."""

    def __init__(self, u):
        self.u = u
        n = u.numel()
        self.ok = False
        if n < 2:
            return
        lo, hi = float(u[0]), float(u[-1])
        C = GRID_CELLS_PER_VALUE * n
        inv = (C - 1) / (hi - lo) if hi > lo else float("inf")
        if not (0.0 < inv < float("inf")) or not (0.0 < (hi - lo) * inv < float("inf")):
            return
        self.lo, self.inv, self.C = lo, inv, C
        cu = self.cell(u)
        self.first = torch.searchsorted(cu, torch.arange(C + 1, dtype=torch.int64, device=u.device))
        self.K = int((self.first[1:] - self.first[:-1]).max())
        self.ok = self.K <= GRID_MAX_PER_CELL

    def cell(self, x):
        y = torch.clamp((x - self.lo) * self.inv, 0.0, float(self.C - 1)) + _MAGIC
        return y.view(torch.int64) - _MAGIC_BITS

    def halfrank(self, x):
        if not self.ok:
            return _halfrank(self.u, x)
        c = self.cell(x)
        f = self.first[c]
        cnt = self.first[c + 1] - f
        lt = f
        eq = torch.zeros_like(f)
        last = self.u.numel() - 1
        for k in range(self.K):
            inb = cnt > k
            v = self.u[torch.clamp(f + k, max=last)]
            lt = lt + (inb & (v < x))
            eq = eq + (inb & (v == x))
        return 2 * lt + eq


class _Slots:
    """Slots cut by the boundaries of every image (values ``bounds`` of segments ``bseg``).

    ``slot(v, g)`` is the slot of value v of image g: one value per boundary (odd slots, "ties")
    and the open gaps between them (even slots).  For several images every image's slots are
    separated by a sentinel, so no slot is shared.  O(B log B) set-up, O(log B) per lookup."""

    def __init__(self, bounds, bseg, num_segments):
        self.G = num_segments
        self.uniq = torch.unique(bounds)  # sorted
        self.grid = _GridRank(self.uniq)
        if num_segments == 1:
            self.n = 2 * self.uniq.numel() + 1
            return
        self.width = 2 * self.uniq.numel() + 2
        sentinels = torch.arange(num_segments + 1, device=bounds.device) * self.width
        self.B = torch.unique(torch.cat([bseg * self.width + 1 + _halfrank(self.uniq, bounds), sentinels]))
        self.n = 2 * self.B.numel() + 1
        # slot range of image g: [first[g], first[g + 1])  (the sentinel slots hold nothing)
        self.first = 2 * torch.searchsorted(self.B, sentinels) + 2

    def slot(self, v, g):
        h = self.grid.halfrank(v)
        if self.G == 1:
            return h
        return _halfrank(self.B, g * self.width + 1 + h)

    def bounds_of(self, g):
        """(start, end) slot of the images ``g``."""
        if self.G == 1:
            return torch.zeros_like(g), torch.full_like(g, self.n)
        return self.first[g], self.first[g + 1] - 1

    def segment_of_slots(self):
        """Image of every slot (sentinel slots: the image above them)."""
        if self.G == 1:
            return torch.zeros(self.n, dtype=torch.int64, device=self.uniq.device)
        k = torch.arange(self.n, device=self.uniq.device)
        return torch.clamp(torch.searchsorted(self.first, k, right=True) - 1, 0, self.G - 1)


def _linear_ranking_part(sp, gp, sn, gn, wn, num_segments, delta, self_value, tie_value, interpolated, scale,
                         centre):
    """:func:`_ranking_part` without sorting the negatives (see the block comment above).

    Time O(N + P log P) (grid slot lookup; O(N log P) where boundaries crowd), memory O(N + P).
    Sums of ``t - centre`` per slot: used only where
    ``2 eps (span + 2 delta) / delta <= PIECE_RTOL`` (else the offset-tree path)."""
    G = num_segments
    device = sp.device
    # the positives in (image, logit) order, and their step sums among themselves (rank^+)
    if delta > 0:
        kp, kp_lo, kp_hi = _keys(G, (sp, gp), (sp - delta, gp), (sp + delta, gp))
        bounds, bseg = torch.cat([sp - delta, sp, sp + delta]), gp.repeat(3)
    else:
        (kp,), kp_lo, kp_hi = _keys(G, (sp, gp)), None, None
        bounds, bseg = sp, gp
    poss = _Sorted(kp, sp, torch.ones_like(sp), gp, G, delta)
    all_pos, _ = poss.step_sums(kp, sp, gp, delta, tie_value, kp_lo, kp_hi)
    rank_plus = all_pos - (0.5 if delta > 0 else tie_value) + self_value

    # negatives: slot, count and centred logit sum per slot (no sort)
    slots = _Slots(bounds, bseg, G)
    kn = slots.slot(sn, gn)
    C = torch.zeros(slots.n, dtype=F64, device=device).index_add_(0, kn, wn)
    W = _Prefix(C)
    k_eq = slots.slot(sp, gp)
    start, end = slots.bounds_of(gp)
    w_eq = C[k_eq]
    if delta == 0:  # N_FP(i) = #(t > s_i) + tie_value #(t == s_i)
        n_fp = W.range(k_eq + 1, end) + tie_value * w_eq
    else:
        X = _Prefix(torch.zeros(slots.n, dtype=F64, device=device).index_add_(0, kn, wn * (sn - centre)))
        # (where delta is below half an ulp of s_i, s_i +- delta round to s_i: the window still
        # holds exactly the values equal to s_i)
        k_lo = torch.minimum(slots.slot(sp - delta, gp), k_eq)
        k_hi = torch.maximum(slots.slot(sp + delta, gp), k_eq + 1)
        w_dn, w_up = W.range(k_lo, k_eq), W.range(k_eq + 1, k_hi)
        q = sp - centre
        # sum of w (t - s_i) over [s_i - delta, s_i) and (s_i, s_i + delta), bounded by sign and delta * weight
        d_dn = torch.clamp(X.range(k_lo, k_eq) - q * w_dn, max=0.0)
        d_up = torch.clamp(X.range(k_eq + 1, k_hi) - q * w_up, min=0.0)
        d = (torch.maximum(d_dn, -delta * w_dn) + torch.minimum(d_up, delta * w_up)) / (2.0 * delta)
        n_fp = W.range(k_hi, end) + 0.5 * (w_dn + w_eq + w_up) + d
    rank = rank_plus + n_fp

    if interpolated:
        best_sorted = _segmented_cummax((rank_plus / rank)[poss.perm], gp[poss.perm], G)
        best = torch.empty_like(best_sorted)
        best[poss.perm] = best_sorted
        error = 1.0 - best
    else:
        error = n_fp / rank
    has_fp = n_fp > 0
    coef = torch.where(has_fp, scale * error / torch.where(has_fp, n_fp, 1.0), 0.0)
    grad_pos = torch.where(has_fp, -scale * error, 0.0)

    # each negative gains sum_i coef_i H(t - s_i): per slot k, the positives with s_i + delta <= t
    # (saturated) and with s_i - delta < t < s_i + delta (window) are index ranges of the sorted
    # positives, so the gain is A_k + B_k (t - centre)   (RS Eq. 11, BRL Eq. 3.33)
    perm = poss.perm
    c_s = coef[perm]
    Q = _Prefix(c_s)
    ks = torch.arange(slots.n, device=device)
    seg_slot = slots.segment_of_slots()
    p_first = torch.cat([torch.zeros(1, dtype=torch.int64, device=device),
                         torch.cumsum(torch.bincount(gp, minlength=G), 0)])[seg_slot]
    if delta == 0:
        su = k_eq[perm]  # slot of s_i (sorted, non-decreasing)
        ia = torch.searchsorted(su, ks, right=False)  # #(s_i < t)
        ib = torch.searchsorted(su, ks, right=True)  # #(s_i <= t)
        A = Q.range(p_first, ia) + tie_value * Q.range(ia, ib)
        grad_neg_unit = A[kn]
    else:
        su, sl = k_hi[perm], torch.minimum(k_lo, k_eq - 1)[perm]
        QP = _Prefix(c_s * (sp[perm] - centre))
        ia = torch.searchsorted(su, ks, right=True)  # #(s_i + delta <= t)
        ie = torch.maximum(torch.searchsorted(sl, ks, right=False), ia)  # #(s_i - delta < t)
        sat = Q.range(p_first, ia)
        cw, cpw = Q.range(ia, ie), QP.range(ia, ie)
        a_n, cw_n = sat[kn], cw[kn]
        lin = (cw_n * (sn - centre) - cpw[kn]) / (2.0 * delta)  # sum c_i (t - s_i) / (2 delta) over the window
        lin = torch.minimum(torch.maximum(lin, -0.5 * cw_n), 0.5 * cw_n)
        grad_neg_unit = a_n + 0.5 * cw_n + lin
    return _RankingPart(error, grad_pos, grad_neg_unit), rank_plus


class _WaveletMatrix:
    """Sums of weight columns over points with integer rank below (or at least) a threshold R, within
    ranges of positions of the points' order (here: logit order).

    A wavelet matrix over the ranks: level by level from the top bit, the points are stably
    partitioned by that bit (zeros first), with ``R0`` = zeros among the first i points.  A position
    range maps to the zero part as ``R0[pos]`` and to the one part as ``Z + pos - R0[pos]``; the
    query for rank < R (>= R) takes the zero (one) part's sum wherever R's bit is 1 (0) and follows
    R's bit.  Each sum is a compensated prefix range, so the result is accurate relative to the
    range sums.  Build O(n log n) time (cumsums, no sort), O(n log n) memory (an index and a count
    array per level); a query of m positions O(m log n) gathers, with no Python loop over points."""

    def __init__(self, rank, nbits):
        n = rank.numel()
        device = rank.device
        ar = torch.arange(n, device=device)
        cur = ar
        self.levels = []
        for b in reversed(range(nbits)):
            z = ((rank[cur] >> b) & 1) == 0
            R0 = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), torch.cumsum(z, 0)])
            Z = R0[-1]
            new_pos = torch.where(z, R0[:-1], Z + ar - R0[:-1])
            nxt = torch.empty_like(cur)
            nxt[new_pos] = cur
            self.levels.append((b, cur, z, R0, Z))
            cur = nxt
        self.last = cur

    def query(self, cols, R, pos, below):
        """``out[q, k, c]``: sum of column c (cols: (n, C) in the original order) over the points at
        positions ``[pos[q, k], pos[q, k + 1])`` (original order) whose rank is < R[q] (``below``)
        or >= R[q] (not ``below``).  Returns (Q, m - 1, C)."""
        Q, m = pos.shape
        C = cols.shape[1]
        out = cols.new_zeros((Q, m - 1, C))
        pos = pos.reshape(-1)

        def sums(pre, pos):  # (Q, m - 1, C) range sums between consecutive positions
            h = pre.head.index_select(0, pos).view(Q, m, C)
            t = pre.tail.index_select(0, pos).view(Q, m, C)
            return (h[:, 1:] - h[:, :-1]) + (t[:, 1:] - t[:, :-1])

        for b, cur, z, R0, Z in self.levels:
            rb = ((R >> b) & 1).repeat_interleave(m)
            keep = z if below else ~z
            pre = _Prefix(cols.index_select(0, cur) * keep[:, None].to(cols.dtype))
            take = rb if below else 1 - rb
            out += sums(pre, pos) * take.view(Q, m)[:, :1, None].to(cols.dtype)
            r0 = R0.index_select(0, pos)
            pos = r0 + rb * (Z + pos - 2 * r0)
        if not below:  # the points left in the range have rank == R
            out += sums(_Prefix(cols.index_select(0, self.last)), pos)
        return out


def _linear_sorting_part(sp, yp, gp, num_segments, delta, self_value, tie_value, scale, centre):
    """:func:`_sorting_part` without the P x P term: the sums over the positives of an image of lower
    (higher) IoU are queries of a :class:`_WaveletMatrix` over the (image, IoU) ranks of the
    positives in (image, logit) order, on position ranges of the logit windows; the sums over all
    positives of the image are compensated prefix sums over the same ranges.  RS Eqs. 7-10, 12.
    Time O(P log P), memory O(P log P)."""
    P = sp.numel()
    G = num_segments
    device = sp.device
    u = 1.0 - yp
    # rank r: position in the (image, IoU) order; [grp_lo, grp_hi): positives of the same image and IoU
    o1 = torch.sort(yp, stable=True).indices
    order = o1[torch.sort(gp[o1], stable=True).indices]
    r = torch.empty(P, dtype=torch.int64, device=device)
    r[order] = torch.arange(P, device=device)
    g_o, y_o = gp[order], yp[order]
    new = torch.ones(P, dtype=torch.bool, device=device)
    new[1:] = (g_o[1:] != g_o[:-1]) | (y_o[1:] != y_o[:-1])
    gid = torch.cumsum(new.long(), 0) - 1
    starts = torch.nonzero(new).squeeze(1)
    ends = torch.cat([starts[1:], torch.tensor([P], device=device)])
    grp_lo, grp_hi = starts[gid][r], ends[gid][r]
    seg_start, _ = (b[gp] for b in _segment_bounds(gp, G))

    q = sp - centre
    h0 = 0.5 if delta > 0 else tie_value
    # positives in (image, logit) order; sums over all positives of the image: H(p_j - p_k) and
    # H(p_j - p_k) (1 - y_j), self term sigma
    if delta > 0:
        kp, kp_lo, kp_hi = _keys(G, (sp, gp), (sp - delta, gp), (sp + delta, gp))
    else:
        (kp,), kp_lo, kp_hi = _keys(G, (sp, gp)), None, None
    poss = _Sorted(kp, sp, torch.ones_like(sp), gp, G, delta)
    # positions (in logit order, within the image's band) of each positive's window
    ss, keys = torch.searchsorted, poss.keys
    start, end = poss.start[gp], poss.end[gp]
    eq_lo, eq_hi = ss(keys, kp, right=False), ss(keys, kp, right=True)
    if delta > 0:
        # window: s_i - delta <= p_j < s_i + delta (and p_j == s_i); saturated: p_j >= s_i + delta
        w_lo = torch.minimum(ss(keys, kp_lo, right=False), eq_lo)
        w_hi = torch.maximum(ss(keys, kp_hi, right=False), eq_hi)
        bnd = torch.stack([w_lo, w_hi, end], 1)
    else:  # ties, strictly above
        bnd = torch.stack([eq_lo, eq_hi, end], 1)
    perm = poss.perm
    cols = torch.stack([torch.ones_like(sp), q, u, u * q], 1)[perm]

    def step(win, sat):
        """sum H(p_j - s_i) and sum H(p_j - s_i) (1 - y_j) from window and saturated range sums."""
        if delta == 0:
            return sat[:, 0] + tie_value * win[:, 0], sat[:, 2] + tie_value * win[:, 2]
        res = []
        for c_n, c_x in ((0, 1), (2, 3)):
            lin = (win[:, c_x] - q * win[:, c_n]) / (2.0 * delta)
            lin = torch.minimum(torch.maximum(lin, -0.5 * win[:, c_n]), 0.5 * win[:, c_n])
            res.append(sat[:, c_n] + 0.5 * win[:, c_n] + lin)
        return res

    # sums over all positives of the image (self included, as H(0); corrected below)
    pre = _Prefix(cols)
    h, t = pre.head[bnd], pre.tail[bnd]
    rng = (h[:, 1:] - h[:, :-1]) + (t[:, 1:] - t[:, :-1])
    full, full_u = step(rng[:, 0], rng[:, 1])
    rank_plus = full - h0 + self_value
    cur = full_u - h0 * u + self_value * u
    # the same over positives of lower IoU: p_S(j|i) up to normalisation   (RS Eq. 10)
    wm = _WaveletMatrix(r[perm], max(1, P.bit_length()))
    out = wm.query(cols, grp_lo, bnd, True)
    M, MU = step(out[:, 0], out[:, 1])
    e = cur / rank_plus - (cur - MU) / (rank_plus - M)  # l_S(i) - l*_S(i)   (RS Eqs. 7-8)
    # is any lower-IoU positive's H > 0?  (exact: from the largest logit among them)
    best = _segmented_cummax(sp[order], g_o, G)
    mpl = torch.where(grp_lo > seg_start, best[torch.clamp(grp_lo - 1, min=0)], float("-inf"))
    has = _smoothed_step(mpl - sp, delta, tie_value) > 0
    csort = torch.where(has & (M > 0), scale * e / torch.where(M > 0, M, 1.0), 0.0)
    grad = torch.where(has, -scale * e, 0.0)
    # incoming: positive j gains sum_{y_i > y_j} csort_i H(p_j - p_i)   (RS Eq. 12)
    cols = torch.stack([csort, csort * q], 1)[perm]
    if delta == 0:
        out = wm.query(cols, grp_hi, torch.stack([start, eq_lo, eq_hi], 1), False)  # p_i < p_j, p_i == p_j
        grad = grad + out[:, 0, 0] + tie_value * out[:, 1, 0]
    else:
        # p_i <= p_j - delta (H = 1), p_j - delta < p_i < p_j + delta (linear)
        c0 = torch.minimum(ss(keys, kp_lo, right=True), eq_lo)
        c1 = torch.maximum(ss(keys, kp_hi, right=False), eq_hi)
        out = wm.query(cols, grp_hi, torch.stack([start, c0, c1], 1), False)
        sat, win = out[:, 0], out[:, 1]
        grad = grad + sat[:, 0] + 0.5 * win[:, 0] + (q * win[:, 0] - win[:, 1]) / (2.0 * delta)
    return e, grad


# --------------------------------------------------------------------------- buckets
def _buckets(sp, gp, sn, gn, num_segments, counts, tied_above):
    """Bucket index of every negative and the buckets' prototypes (BRL Eq. 3.19).

    A negative's bucket is the number of positives of its image strictly above it
    (``tied_above``) or at or above it.  Only non-empty buckets are kept.
    Time O((P + M) log(P + M)), memory O(P + M).
    """
    G = num_segments
    device = sp.device
    kp, kn = _keys(G, (sp, gp), (sn, gn))
    kp_sorted = torch.sort(kp).values
    _, p_end = _segment_bounds(gp, G)
    above = p_end[gn] - torch.searchsorted(kp_sorted, kn, right=tied_above)
    offset = torch.cumsum(counts + 1, 0) - (counts + 1)  # image g owns buckets offset[g] .. offset[g] + P_g
    bucket = offset[gn] + above
    nb = int(counts.sum()) + G
    # prototype = mean logit of the bucket, computed as anchor + mean(t - anchor) with the bucket's largest
    # logit as anchor: exact when the bucket's logits are equal (a plain sum / size can miss them by an ulp,
    # which flips H against a tied positive at delta = 0).  No atomics (deterministic on CUDA): sizes by
    # bincount, sums by prefix sums over the bucket-sorted negatives.
    size_int = torch.bincount(bucket, minlength=nb)
    end = torch.cumsum(size_int, 0)
    anchor = torch.zeros(nb, dtype=F64, device=device).scatter_reduce(0, bucket, sn, "amax", include_self=False)
    lowest = torch.zeros(nb, dtype=F64, device=device).scatter_reduce(0, bucket, sn, "amin", include_self=False)
    order = torch.sort(bucket, stable=True).indices
    offset_sum = _Prefix((sn - anchor[bucket])[order]).range(end - size_int, end)
    # a member more than MAXF below the bucket's largest makes the offset -inf (the compensated sums
    # would turn it into NaN): there, the plain sum, -inf, as the reference's bincount gives
    plain = torch.zeros(nb, dtype=F64, device=device).index_add_(0, bucket, sn - anchor[bucket])
    offset_sum = torch.where(torch.isfinite(offset_sum), offset_sum, plain)
    keep = size_int > 0
    size = size_int[keep].to(F64)
    proto = torch.clamp(anchor[keep] + offset_sum[keep] / size, min=lowest[keep], max=anchor[keep])
    dense = torch.cumsum(keep.to(torch.int64), 0) - 1
    bucket_seg = torch.repeat_interleave(torch.arange(G, device=device), counts + 1)
    return dense[bucket], proto, bucket_seg[keep], size


# --------------------------------------------------------------------------- driver
#: Use the near-linear hot path (:func:`_linear_ranking_part`, :func:`_linear_sorting_part`) wherever
#: its centred sums are accurate (always at delta == 0); False: always the sorted / offset-tree / P x P
#: path (kept as the fallback for tiny delta, and for comparisons in the tests).
LINEAR = True


def _linear_ok(sp, sn, delta):
    """(use the near-linear path?, centre of the logits for its centred sums).  The centred sums of
    ``t - centre`` lose about 2 eps (span + 2 delta) / delta relative to a window's weight; above
    :data:`PIECE_RTOL` the offset-tree path (accurate for any delta) is used instead."""
    if not LINEAR:
        return False, 0.0
    if sp.numel() == 0:
        return True, 0.0
    lo, hi = float(sp.min()), float(sp.max())
    if sn.numel():
        lo, hi = min(lo, float(sn.min())), max(hi, float(sn.max()))
    centre = 0.5 * lo + 0.5 * hi  # (lo + hi) / 2 could overflow
    if delta == 0:
        return True, centre
    return 2.0 * EPS64 * (hi - lo + 2.0 * delta) / delta <= PIECE_RTOL, centre


def compute(x: Parsed, *, sorting: bool, interpolated: bool = False, bucketed: bool = False,
            threshold: bool = True, tied_above: bool = True) -> EngineOutput:
    """Loss, gradient and terms of AP / RS / bucketed AP / bucketed RS for a parsed call.

    Loss = sum over images with positives of (1 / K) (1 / Z_g) sum_{i in P_g}
    (l_R(i) + [sorting] (l_S(i) - l*_S(i))), with K the number of such images
    (1 for ``scope="batch"``) and Z_g = |P_g| (or 1 with normalization="none").
    The gradient is the identity update of the same primary terms.
    """
    s, y, seg, G = x.logits, x.targets, x.segments, x.num_segments
    device = s.device
    delta = x.delta
    # H((s_j - s_i) / (2 delta)) is scale-free: the ranking arithmetic runs on logits and delta in
    # units of 2^70 when they are huge, so that no difference, centre or sum overflows (exact for
    # normal numbers; subnormal logits lose only bits far below delta's rounding).  Comparisons that
    # decide a discrete choice (which negatives count, bucket membership) use the logits as given.
    unit = 1.0
    if delta > 0 and s.numel() and max(float(s.abs().max()), delta) > BIG:
        unit = SMALL_UNIT
    zero = torch.zeros((), dtype=F64, device=device)
    grad = torch.zeros_like(s)
    names = ("ranking", "sorting") if sorting else ("ranking",)
    pos = y > 0
    counts = torch.bincount(seg[pos], minlength=G)
    num_images = int((counts > 0).sum())
    if num_images == 0:  # zero positives anywhere: loss 0, zero gradient
        return EngineOutput(zero, grad, {k: zero for k in names})
    z = counts.to(F64) if x.normalization == "positives" else torch.ones(G, dtype=F64, device=device)
    scale_seg = 1.0 / (torch.clamp(z, min=1.0) * num_images)

    idx_p = torch.nonzero(pos).squeeze(1)
    sp, yp, gp = s[idx_p], y[idx_p], seg[idx_p]
    scale = scale_seg[gp]
    # negatives of images with positives; below min positive - delta they have H = 0 against every
    # positive (zero gradient), and the bucketed losses drop them (threshold=True, BRL Alg. 1 line 2)
    neg = ~pos & (counts[seg] > 0)
    if threshold or not bucketed:
        lowest = torch.zeros(G, dtype=F64, device=device).scatter_reduce(0, gp, sp, "amin", include_self=False)
        neg &= s >= lowest[seg] - delta
    idx_n = torch.nonzero(neg).squeeze(1)
    sn, gn = s[idx_n], seg[idx_n]

    sp_u, delta_u = sp * unit, delta * unit
    if bucketed:
        member, proto, proto_seg, size = _buckets(sp, gp, sn, gn, G, counts, tied_above)
        negs_u, negs_seg, negs_w = proto * unit, proto_seg, size
    else:
        negs_u, negs_seg, negs_w = sn * unit, gn, torch.ones_like(sn)
    linear, centre = _linear_ok(sp_u, negs_u, delta_u)
    if linear:  # the near-linear hot path: no sort of the negatives, no P x P term
        part, _ = _linear_ranking_part(sp_u, gp, negs_u, negs_seg, negs_w, G, delta_u, x.self_value, x.tie_value,
                                       interpolated, scale, centre)
    else:  # delta tiny against the spread of the logits: sorted negatives and offset trees
        part = _ranking_part(sp_u, gp, negs_u, negs_seg, negs_w, G, delta_u, x.self_value, x.tie_value,
                             interpolated, scale)
    # bucketed: a prototype's gradient is spread uniformly over its bucket (BRL Eqs. 3.33-3.34)
    grad_neg = part.grad_neg_unit[member] if bucketed else part.grad_neg_unit
    grad_pos = part.grad_pos
    terms = {"ranking": (scale * part.error).sum()}
    if sorting:
        if linear:
            err_s, grad_s = _linear_sorting_part(sp_u, yp, gp, G, delta_u, x.self_value, x.tie_value, scale, centre)
        else:
            err_s, grad_s = _sorting_part(sp_u, yp, gp, G, delta_u, x.self_value, x.tie_value, scale)
        grad_pos = grad_pos + grad_s
        terms["sorting"] = (scale * err_s).sum()
    grad[idx_p] = grad_pos
    grad[idx_n] = grad_neg
    loss = sum(terms.values(), zero)
    return EngineOutput(loss, grad, terms)

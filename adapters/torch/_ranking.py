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

#: At delta > 0, the ranking arithmetic takes logits and delta in units of the smallest power of two
#: that brings the largest of them to at most BIG in magnitude (:func:`arithmetic_unit`), so that no
#: difference, centre or sum of logits overflows (delta == 0 only compares).
BIG = 2.0 ** 960
#: ... and the scaled delta must stay at least this large (a normal number with 52 bits to spare, so
#: that the values that matter against it -- logits within delta of a positive -- lose no bit that
#: counts); below it :func:`compute` raises :class:`NeedsReference` and the NumPy reference decides.
TINY_DELTA = 2.0 ** -970


class NeedsReference(Exception):
    """Raised by :func:`compute` for an input its arithmetic cannot hold: logits near the float64 limit
    with a delta that the units of :func:`arithmetic_unit` would make smaller than :data:`TINY_DELTA`
    (e.g. a logit of 2^961 and delta = 2^-997), or a bucket spanning more than the largest float64
    (:func:`_buckets`).  :func:`rankspec.adapters.torch._engine.compute` then runs the reference on the
    host (O(P N), as the numba backend does for its ill-conditioned calls)."""


def arithmetic_unit(lo: float, hi: float, delta: float) -> float:
    """1, or the power of two 2^-k (k >= 1, smallest) with max(|lo|, |hi|, delta) 2^-k <= BIG."""
    import math

    m = max(-lo, hi, delta)
    if not m > BIG:
        return 1.0
    _, k = math.frexp(m / BIG)  # m / BIG = f 2^k, 1/2 <= f < 1  (m / BIG <= 2^64: no overflow)
    return math.ldexp(1.0, -k)


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
    Sums along ``dim`` (x may be (n, columns...)); :meth:`range` and :meth:`between` need ``dim=0``.
    """

    def __init__(self, x: torch.Tensor, dim: int = 0):
        n = x.shape[dim]
        shape = list(x.shape)
        shape[dim] = n + 1
        head = x.new_empty(shape)
        head.narrow(dim, 0, 1).zero_()
        torch.cumsum(x, dim, out=head.narrow(dim, 1, n))
        a, h0 = head.narrow(dim, 1, n), head.narrow(dim, 0, n)
        step = a - h0  # fl(head_k - head_{k-1})
        bv = step - a
        # TwoSum of a and -h0: step + err == head_k - head_{k-1} exactly, err = (a - (step - bv)) - (h0 + bv)
        err = torch.sub(a, step - bv)
        err.sub_(bv.add_(h0))
        defect = torch.sub(x, step, out=step).sub_(err)  # (x - step) - err  (in place: fewer temporaries)
        tail = torch.empty_like(head)
        tail.narrow(dim, 0, 1).zero_()
        torch.cumsum(defect, dim, out=tail.narrow(dim, 1, n))
        self.head, self.tail = head, tail

    def range(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        if lo.dim() != 1 or hi.dim() != 1:
            return (self.head[hi] - self.head[lo]) + (self.tail[hi] - self.tail[lo])
        h, t = self.head.index_select, self.tail.index_select  # (faster than indexing on the CPU)
        return (h(0, hi) - h(0, lo)) + (t(0, hi) - t(0, lo))

    def between(self, idx: torch.Tensor) -> torch.Tensor:
        """Sums over the consecutive ranges ``[idx[k], idx[k + 1])`` (idx: (m, Q) positions, each row
        contiguous): shape (m - 1, Q) + the trailing shape of x."""
        shape = tuple(idx.shape) + tuple(self.head.shape[1:])
        h = self.head.index_select(0, idx.view(-1)).view(shape)
        t = self.tail.index_select(0, idx.view(-1)).view(shape)
        return torch.sub(h[1:], h[:-1]).add_(t[1:] - t[:-1])  # (head[b] - head[a]) + (tail[b] - tail[a])


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
# Item "near-linear torch engine": negatives are never sorted.  The 3P (delta == 0: P) *boundaries*
# s_i - delta, s_i, s_i + delta of the positives cut the line into slots (:class:`_Slots`: a sort of
# the positives and a ``unique`` of the boundaries, which also places every positive); a negative's
# slot is its half-rank among the boundaries, read from a uniform-grid table (:class:`_GridRank`:
# O(1) per negative, ``searchsorted`` where boundaries crowd).  H is linear in a logit inside a slot, so
# weights and centred logit sums per slot (``index_add``, O(N + P)) give N_FP and rank^+ of every
# positive from prefix sums over slots, and each negative's gradient is ``A_k + B_k (t - c)`` with
# per-slot coefficients from prefix sums over slots of the positives' coefficients.  The RS sorting
# part (sums over pairs of positives restricted to lower / higher IoU) walks a wavelet matrix over
# the positives' IoU ranks in logit order (:class:`_WaveletMatrix`): O(P log P) time and memory, in
# O(log P) vectorised steps.  Total O(N + P log P) time, O(N + P log P) memory.

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
    values in lower cells (a table) plus comparisons with the <= K values of x's own cell, made
    only for the queries whose cell holds any (with :data:`GRID_CELLS_PER_VALUE` cells per value,
    most cells are empty).  Exact, no search: O(C + |u|) set-up, O(1) per query plus O(K) per query
    in an occupied cell.  Falls back to ``searchsorted`` where the values crowd
    (K > :data:`GRID_MAX_PER_CELL`) or the scale is degenerate."""

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
        self.count = torch.bincount(self.cell(u), minlength=C)  # values per cell
        self.below = torch.cumsum(self.count, 0) - self.count  # values in lower cells
        self.K = int(self.count.max())
        self.ok = self.K <= GRID_MAX_PER_CELL

    def cell(self, x):
        y = (x - self.lo).mul_(self.inv).clamp_(0.0, float(self.C - 1)).add_(_MAGIC)
        return y.view(torch.int64).sub_(_MAGIC_BITS)

    def halfrank(self, x):
        if not self.ok:
            return _halfrank(self.u, x)
        c = self.cell(x)
        h = self.below.index_select(0, c).mul_(2)
        busy = torch.nonzero(self.count.index_select(0, c)).squeeze(1)  # queries in an occupied cell
        if busy.numel():
            xb, cb = x.index_select(0, busy), c.index_select(0, busy)
            f, cnt = self.below.index_select(0, cb), self.count.index_select(0, cb)
            last = self.u.numel() - 1
            add = torch.zeros_like(f)
            for k in range(self.K):  # the k-th value of the cell: 2 if below x, 1 if equal
                v = self.u.index_select(0, torch.clamp(f + k, max=last))
                add += ((v < xb).long() + (v <= xb).long()) * (cnt > k)
            h.index_add_(0, busy, add)
        return h


class _Slots:
    """Slots cut by the boundaries ``s_i - delta, s_i, s_i + delta`` (delta == 0: ``s_i``) of the
    positives of every image, and where the positives lie among them.

    One slot per distinct boundary value (odd slots, "ties") and the open gaps between them (even
    slots); for several images every image's slots are separated by a sentinel, so no slot is
    shared and slots follow (image, value) order.  ``eq``, ``lo``, ``hi``: slots of s_i,
    s_i - delta and s_i + delta (delta > 0), with ``lo <= eq < hi`` (where delta is below half an
    ulp of s_i, s_i +- delta round to s_i: then ``hi = eq + 1`` and the window holds exactly the
    values equal to s_i).  ``perm``: the positives in (image, logit) order (stable); ``before[k]``:
    the positives in slots < k, i.e. positions in that order.  O(P log P) set-up (a sort of the
    positives and a ``unique`` of their boundaries, which also gives the positives' slots); the slot
    of another value O(1) (:class:`_GridRank`), O(log P) for several images."""

    def __init__(self, sp, gp, num_segments, delta):
        P = sp.numel()
        self.G = num_segments
        perm = torch.sort(sp, stable=True).indices
        if num_segments > 1:
            perm = perm[torch.sort(gp[perm], stable=True).indices]
        self.perm = perm
        # the boundaries of the positives in that order (sorted runs: a cheaper unique)
        s, gp = sp[perm], gp[perm]
        bounds = torch.cat([s - delta, s, s + delta]) if delta > 0 else s
        self.uniq, inv = torch.unique(bounds, sorted=True, return_inverse=True)
        self.grid = _GridRank(self.uniq)
        if num_segments == 1:
            self.n = 2 * self.uniq.numel() + 1
            slot = 2 * inv + 1  # the half-rank of the m-th distinct value
        else:
            self.width = 2 * self.uniq.numel() + 2
            sentinels = torch.arange(num_segments + 1, device=sp.device) * self.width
            bseg = gp.repeat(3) if delta > 0 else gp
            # key of a boundary: segment * width + 1 + its half-rank among all boundaries
            self.B, inv_b = torch.unique(torch.cat([bseg * self.width + 2 + 2 * inv, sentinels]), sorted=True,
                                         return_inverse=True)
            self.n = 2 * self.B.numel() + 1
            # slot range of image g: [first[g], first[g + 1])  (the sentinel slots hold nothing)
            self.first = 2 * inv_b[bounds.numel():] + 2
            slot = 2 * inv_b[:bounds.numel()] + 1
        slot = torch.empty_like(slot).view(-1, P).index_copy_(1, perm, slot.view(-1, P))  # to the input order
        if delta > 0:
            lo, self.eq, hi = slot
            self.lo, self.hi = torch.minimum(lo, self.eq), torch.maximum(hi, self.eq + 1)
        else:
            self.eq, self.lo, self.hi = slot[0], None, None

    @property
    def before(self):
        counts = torch.bincount(self.eq, minlength=self.n)
        return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])

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

    def first_of_slots(self):
        """First slot of every slot's image (sentinel slots: of the image above them)."""
        device = self.uniq.device
        if self.G == 1:
            return torch.zeros(self.n, dtype=torch.int64, device=device)
        k = torch.arange(self.n, device=device)
        return self.first[torch.clamp(torch.searchsorted(self.first, k, right=True) - 1, 0, self.G - 1)]


def _linear_ranking_part(sp, gp, sn, gn, wn, num_segments, delta, self_value, tie_value, interpolated, scale,
                         centre, slots):
    """:func:`_ranking_part` without sorting the negatives (see the block comment above); ``slots``:
    the :class:`_Slots` of the positives; ``wn`` None: unit weights; ``gn`` is not read for one image.

    Time O(N + P log P) (grid slot lookup; O(N log P) where boundaries crowd), memory O(N + P).
    Sums of ``t - centre`` per slot: used only where
    ``2 eps (span + 2 delta) / delta <= PIECE_RTOL`` (else the offset-tree path)."""
    G = num_segments
    device = sp.device
    n, k_eq = slots.n, slots.eq
    kn = slots.slot(sn, gn)
    _, end = slots.bounds_of(gp)
    q, tn = sp - centre, sn - centre
    # per slot: weight and centred logit sum of the negatives (group 0) and of the positives (group 1)
    hist = torch.zeros((n, 2, 2 if delta > 0 else 1), dtype=F64, device=device)
    if wn is None:
        hist[:, 0, 0] = torch.bincount(kn, minlength=n)
    else:
        hist[:, 0, 0].index_add_(0, kn, wn)
    hist[:, 1, 0] = torch.bincount(k_eq, minlength=n)
    if delta > 0:
        hist[:, 0, 1].index_add_(0, kn, tn if wn is None else wn * tn)
        hist[:, 1, 1].index_add_(0, k_eq, q)
    S = _Prefix(hist)
    # above_i = sum_j w_j H(v_j - s_i) over the negatives (N_FP(i)) and over the positives of the image
    if delta == 0:  # exact step: #(v > s_i) + tie_value #(v == s_i)
        rng = S.between(torch.stack([k_eq, k_eq + 1, end]))[..., 0]  # (range, P, group)
        above = rng[1] + tie_value * rng[0]
    else:
        # ranges [s_i - delta, s_i), {s_i}, (s_i, s_i + delta), [s_i + delta, ...) of the image
        rng = S.between(torch.stack([slots.lo, k_eq, k_eq + 1, slots.hi, end]))  # (range, P, group, w / sum)
        w, x = rng[..., 0], rng[..., 1]
        w_dn, w_eq, w_up, w_sat = w
        qq = q[:, None]
        # sum of w (v - s_i) over each linear piece, bounded by its sign and by delta * weight
        d_dn = torch.clamp(x[0] - qq * w_dn, max=0.0)
        d_up = torch.clamp(x[2] - qq * w_up, min=0.0)
        d = (torch.maximum(d_dn, -delta * w_dn) + torch.minimum(d_up, delta * w_up)) / (2.0 * delta)
        above = w_sat + 0.5 * (w_dn + w_eq + w_up) + d
    # N_FP(i) = sum_j w_j H(t_j - s_i);  rank^+(i) = sum_k H(s_k - s_i) - H(0) + self term   (BRL Eq. 3.1)
    n_fp, all_pos = above.unbind(1)
    rank_plus = all_pos - (0.5 if delta > 0 else tie_value) + self_value
    rank = rank_plus + n_fp

    # l_R(i) = N_FP(i) / rank(i)   (RS Eq. 7, BRL Eqs. 3.3-3.4)
    if interpolated:
        perm = slots.perm
        best_sorted = _segmented_cummax((rank_plus / rank)[perm], gp[perm], G)
        best = torch.empty_like(best_sorted)
        best[perm] = best_sorted
        error = 1.0 - best
    else:
        error = n_fp / rank
    has_fp = n_fp > 0
    # primary terms L_ij = scale_i l_R(i) w_j H(x_ij) / N_FP(i)   (BRL Eq. 3.10): positive i loses their sum
    coef = torch.where(has_fp, scale * error / torch.where(has_fp, n_fp, 1.0), 0.0)
    grad_pos = torch.where(has_fp, -scale * error, 0.0)

    # each negative gains sum_i coef_i H(t - s_i) over the positives of its image   (RS Eq. 11, BRL Eq. 3.33):
    # per slot k, prefix sums over slots of the coefficients placed at the positives' slots

    def upto(pre, inclusive):
        """Sums over the slots of k's image below k (or up to k), for every slot k."""
        if G == 1:  # from slot 0 (head[0] = tail[0] = 0)
            k = slice(1, None) if inclusive else slice(None, -1)
            return pre.head[..., k] + pre.tail[..., k]
        first, ks = slots.first_of_slots(), torch.arange(n, device=device) + int(inclusive)
        return (pre.head[..., ks] - pre.head[..., first]) + (pre.tail[..., ks] - pre.tail[..., first])

    if delta == 0:  # coef_i at eq_i: strictly below k, plus tie_value times at k
        c_at = torch.zeros(n, dtype=F64, device=device).index_add_(0, k_eq, coef)
        table = upto(_Prefix(c_at), False) + tie_value * c_at
        grad_neg_unit = table.index_select(0, kn)
    else:
        # positive i is saturated (H = 1) in slots k >= hi_i and linear in lo'_i < k < hi_i
        # (lo'_i = min(lo_i, eq_i - 1)): +- entries at those slots, rows (saturated c, window c,
        # window c (s - centre)); an inclusive prefix over the image's slots gives the sums per slot
        cq, sl = coef * q, torch.minimum(slots.lo, k_eq - 1) + 1
        ent = torch.zeros((3, n), dtype=F64, device=device)
        ent[0].index_add_(0, slots.hi, coef)
        ent[1].index_add_(0, slots.hi, -coef).index_add_(0, sl, coef)
        ent[2].index_add_(0, slots.hi, -cq).index_add_(0, sl, cq)
        sat, cw, cpw = upto(_Prefix(ent, dim=1), True)
        base_n, cw_n, cpw_n = (v.index_select(0, kn) for v in (sat + 0.5 * cw, cw, cpw))
        # sum c_i (t - s_i) / (2 delta) over the window, within +- half its weight (in place: N-sized)
        lin = torch.mul(cw_n, tn, out=tn).sub_(cpw_n).div_(2.0 * delta)
        half_n = cw_n.mul_(0.5)
        grad_neg_unit = lin.clamp_(min=-half_n, max=half_n).add_(base_n)
    return _RankingPart(error, grad_pos, grad_neg_unit)


class _WaveletMatrix:
    """Sums of weight columns over points with integer rank below (or at least) a threshold R, within
    ranges of positions of the points' order (here: logit order).

    A wavelet matrix over the ranks: level by level from the top bit, the points are stably
    partitioned by that bit (zeros first), with ``R0`` = zeros among the first i points.  A position
    range maps to the zero part as ``R0[pos]`` and to the one part as ``Z + pos - R0[pos]`` (ranges
    of the next level's order); the query for rank < R (>= R) takes the zero (one) part wherever R's
    bit is 1 (0) and follows R's bit.  The walk of the positions (:meth:`walk`, O(1) per level and
    position) does not depend on the columns, so it is made once for all queries; :meth:`counts`
    reads the taken points' numbers from it, :meth:`sums` their column sums from compensated prefix
    sums in every level's order (accurate relative to the range sums).  Build O(n log n) time
    (cumsums, no sort), O(n log n) memory (an order and a count array per level); a query of m
    positions O(m log n) time and memory, in O(log n) vectorised steps."""

    def __init__(self, rank, nbits):
        n = rank.numel()
        device = rank.device
        ar = torch.arange(n, device=device)
        self.shift = torch.arange(nbits - 1, -1, -1, device=device)  # the bit of every level, top first
        self.order = torch.empty((nbits + 1, n), dtype=torch.int64, device=device)  # the points in level order
        self.R0 = torch.zeros((nbits, n + 1), dtype=torch.int64, device=device)  # zeros among the first i
        self.order[0] = ar
        zero = ((rank[None] >> self.shift[:, None]) & 1) == 0  # every level's bit of every point is 0
        for lev in range(nbits):
            cur, R0 = self.order[lev], self.R0[lev]
            z = zero[lev].index_select(0, cur)
            torch.cumsum(z, 0, out=R0[1:])
            new_pos = torch.where(z, R0[:-1], (ar - R0[:-1]).add_(R0[-1]))
            self.order[lev + 1].index_put_((new_pos,), cur)  # the last: points of equal rank together
        # where position p goes, interleaved: [2 p] to the zero part, [2 p + 1] to the one part (int32:
        # the walk's gathers move half the bytes)
        ar1 = torch.arange(n + 1, device=device)
        self.to = torch.stack([self.R0, self.R0[:, -1:] + ar1 - self.R0], 2).view(nbits, 2 * (n + 1)).int()

    def walk(self, R, pos):
        """Follow the position ranges ``pos`` (B, m, Q; original order) down the levels along the bits
        of ``R`` (B, Q) (B batches of Q queries).  Returns R's bits (L, B, Q), the positions followed,
        (L + 1, B, m, Q) (each level's order; at the last, the ranges hold the points of rank R), and
        the positions of the part not followed (L, B, m, Q; in the next level's order).  Positions are
        int32 (2 n + 1 < 2^31: a billion points)."""
        L = self.R0.shape[0]
        B, m, Q = pos.shape
        bits = ((R[None] >> self.shift[:, None, None]) & 1).int()
        path = torch.empty((L + 1, B, m, Q), dtype=torch.int32, device=pos.device)
        other = torch.empty((L, B, m, Q), dtype=torch.int32, device=pos.device)
        path[0] = pos
        for lev in range(L):
            go = torch.add(bits[lev, :, None], path[lev], alpha=2).view(-1)  # 2 p + bit
            torch.index_select(self.to[lev], 0, go, out=path[lev + 1].view(-1))
            torch.index_select(self.to[lev], 0, go ^ 1, out=other[lev].view(-1))
        return bits.bool(), path, other

    @staticmethod
    def counts(bits, other, below):
        """Numbers of points of rank < R (``below``) or > R (not ``below``) in the ranges of one batch
        of a :meth:`walk` (bits (L, Q), other (L, m, Q)): (m - 1, Q) int64."""
        take = (bits if below else ~bits).long()[:, None]
        return ((other[:, 1:] - other[:, :-1]) * take).sum(0)

    def sums(self, cols, bits, path, other, below):
        """``out[c, k, q]``: sum of column c (cols: (C, n), rows in the original order) over the points
        at positions ``[pos[k, q], pos[k + 1, q])`` whose rank is < R[q] (``below``) or >= R[q] (not
        ``below``), from one batch of the :meth:`walk` of (R, pos) (bits (L, Q), path (L + 1, m, Q),
        other (L, m, Q)).  Returns (C, m - 1, Q).  (Column-major throughout: every gather is of whole
        rows and the per-query factors broadcast along contiguous rows.)"""
        C, n = cols.shape
        m, Q = other.shape[1], other.shape[2]
        take = (bits if below else ~bits).to(cols.dtype)
        x = cols.new_empty((C, n))
        g = cols.new_empty((2, C, m * Q))
        out = cols.new_zeros((C, m - 1, Q))

        def add(order, pos, factor):
            for c in range(C):  # the columns in the level's order
                torch.index_select(cols[c], 0, order, out=x[c])
            pre = _Prefix(x, dim=1)
            for c in range(C):
                torch.index_select(pre.head[c], 0, pos, out=g[0, c])
                torch.index_select(pre.tail[c], 0, pos, out=g[1, c])
            d = torch.diff(g.view(2, C, m, Q), dim=2)
            rng = d[0].add_(d[1])  # (head[b] - head[a]) + (tail[b] - tail[a])
            out.add_(rng) if factor is None else out.addcmul_(rng, factor)

        for lev in range(self.R0.shape[0]):  # the part not followed, in the next level's order
            add(self.order[lev + 1], other[lev].reshape(-1), take[lev])
        if not below:  # the points left in the ranges have rank == R
            add(self.order[-1], path[-1].reshape(-1), None)
        return out


def _linear_sorting_part(sp, yp, gp, num_segments, delta, self_value, tie_value, scale, centre, slots):
    """:func:`_sorting_part` without the P x P term: the sums over the positives of an image of lower
    (higher) IoU are queries of a :class:`_WaveletMatrix` over the (image, IoU) ranks of the
    positives in (image, logit) order, on position ranges of the logit windows (read from the
    :class:`_Slots` ``slots`` of the positives); the sums over all positives of the image are
    compensated prefix sums over the same ranges.  RS Eqs. 7-10, 12.
    Time O(P log P), memory O(P log P)."""
    P = sp.numel()
    G = num_segments
    device = sp.device
    u = 1.0 - yp
    # rank r: position in the (image, IoU) order; [grp_lo, grp_hi): positives of the same image and IoU
    order = torch.sort(yp, stable=True).indices
    if G > 1:
        order = order[torch.sort(gp[order], stable=True).indices]
    r = torch.empty(P, dtype=torch.int64, device=device)
    r[order] = torch.arange(P, device=device)
    g_o, y_o = gp[order], yp[order]
    new = torch.ones(P, dtype=torch.bool, device=device)
    new[1:] = (g_o[1:] != g_o[:-1]) | (y_o[1:] != y_o[:-1])
    gid = torch.cumsum(new.long(), 0) - 1
    starts = torch.nonzero(new).squeeze(1)
    ends = torch.cat([starts[1:], torch.tensor([P], device=device)])
    grp_lo, grp_hi = starts[gid][r], ends[gid][r]
    # the image's first and past-last positions in (image, logit) order, as in (image, IoU) order
    start, end = (b[gp] for b in _segment_bounds(gp, G))

    q = sp - centre
    h0 = 0.5 if delta > 0 else tie_value
    # positions in (image, logit) order of each positive's window: the positives in slots < k
    k_eq = slots.eq
    if delta > 0:
        k_lo = slots.lo
        at = slots.before.index_select(0, torch.stack([k_lo, slots.hi, torch.minimum(k_lo + 1, k_eq)]).view(-1))
        w_lo, w_hi, c0 = at.view(3, P)  # #(p < s_i - delta), #(p < s_i + delta), #(p <= s_i - delta)
        # H(p_j - s_i): window s_i - delta <= p_j < s_i + delta, saturated p_j >= s_i + delta;
        # H(s_j - p_i): saturated p_i <= s_j - delta, window s_j - delta < p_i < s_j + delta
        bnd, bnd_in = torch.stack([w_lo, w_hi, end]), torch.stack([start, c0, w_hi])
    else:  # ties, strictly above / strictly below, ties
        eq_lo, eq_hi = slots.before.index_select(0, torch.stack([k_eq, k_eq + 1]).view(-1)).view(2, P)
        bnd, bnd_in = torch.stack([eq_lo, eq_hi, end]), torch.stack([start, eq_lo, eq_hi])
    perm = slots.perm
    # positives in (image, logit) order; sums over all positives of the image: H(p_j - p_k) and
    # H(p_j - p_k) (1 - y_j), self term sigma
    cols = torch.stack([torch.ones_like(sp), q, u, u * q], 1).index_select(0, perm)

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
    rng = _Prefix(cols).between(bnd)
    full, full_u = step(rng[0], rng[1])
    rank_plus = full - h0 + self_value
    cur = full_u - h0 * u + self_value * u
    # the same over positives of lower IoU: p_S(j|i) up to normalisation   (RS Eq. 10); the walks of
    # both queries (here and for the incoming gradient below) in one
    wm = _WaveletMatrix(r[perm], max(1, P.bit_length()))
    bits, path, other = wm.walk(torch.stack([grp_lo, grp_hi]), torch.stack([bnd, bnd_in]))
    below = (bits[:, 0], path[:, 0], other[:, 0])
    sums = wm.sums(torch.stack([q, u, u * q]).index_select(1, perm), *below, True)
    out = torch.cat([wm.counts(below[0], below[2], True).to(F64)[None], sums]).permute(1, 2, 0)  # (range, P, col)
    M, MU = step(out[0], out[1])
    e = cur / rank_plus - (cur - MU) / (rank_plus - M)  # l_S(i) - l*_S(i)   (RS Eqs. 7-8)
    # is any lower-IoU positive's H > 0?  (exact: from the largest logit among them)
    best = _segmented_cummax(sp[order], g_o, G)
    mpl = torch.where(grp_lo > start, best[torch.clamp(grp_lo - 1, min=0)], float("-inf"))
    has = _smoothed_step(mpl - sp, delta, tie_value) > 0
    csort = torch.where(has & (M > 0), scale * e / torch.where(M > 0, M, 1.0), 0.0)
    grad = torch.where(has, -scale * e, 0.0)
    # incoming: positive j gains sum_{y_i > y_j} csort_i H(p_j - p_i)   (RS Eq. 12)
    out = wm.sums(torch.stack([csort, csort * q]).index_select(1, perm), bits[:, 1], path[:, 1], other[:, 1], False)
    sat, win = out[:, 0].t(), out[:, 1].t()
    if delta == 0:  # p_i < p_j, p_i == p_j
        grad = grad + sat[:, 0] + tie_value * win[:, 0]
    else:  # p_i <= p_j - delta (H = 1), p_j - delta < p_i < p_j + delta (linear)
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
    # bincount, sums by a segmented reduction over the bucket-sorted negatives -- each bucket's sum on its
    # own, so a bucket's offset is exact to its own size (prefix sums over all buckets carried an error
    # of eps^2 times the largest bucket's sum into every later bucket: 1.5e-9 in a loss when one bucket
    # held a logit of 1e25; found by the long fuzz sweep).
    size_int = torch.bincount(bucket, minlength=nb)
    anchor = torch.zeros(nb, dtype=F64, device=device).scatter_reduce(0, bucket, sn, "amax", include_self=False)
    lowest = torch.zeros(nb, dtype=F64, device=device).scatter_reduce(0, bucket, sn, "amin", include_self=False)
    order = torch.sort(bucket, stable=True).indices
    offset_sum = torch.segment_reduce((sn - anchor[bucket])[order], "sum", lengths=size_int)
    keep = size_int > 0
    # a bucket whose members lie more than MAXF apart overflows its offset (or turns it into NaN):
    # the reference computes such means in scaled units, and the engine hands the call to it
    if not bool(torch.isfinite(offset_sum[keep]).all()):
        raise NeedsReference("a bucket spans more than the largest float64")
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
    lo, hi = (float(v) for v in torch.aminmax(sp))
    if sn.numel():
        lo_n, hi_n = (float(v) for v in torch.aminmax(sn))
        lo, hi = min(lo, lo_n), max(hi, hi_n)
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
    # units of the smallest power of two that keeps them below BIG when they are huge, so that no
    # difference, centre or sum overflows (exact for normal numbers; values that become subnormal lose
    # only bits far below delta's rounding, as long as the scaled delta stays above TINY_DELTA; where
    # it would not, the reference decides).  Comparisons that decide a discrete choice (which
    # negatives count, bucket membership) use the logits as given.
    unit = 1.0
    if delta > 0 and s.numel():
        lo, hi = (float(v) for v in torch.aminmax(s))
        unit = arithmetic_unit(lo, hi, delta)
        if unit < 1.0 and delta * unit < TINY_DELTA:
            raise NeedsReference("logits near the float64 limit with a delta too small for their units")
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
    neg = ~pos
    if G > 1:
        neg &= counts[seg] > 0
    if threshold or not bucketed:
        lowest = torch.zeros(G, dtype=F64, device=device).scatter_reduce(0, gp, sp, "amin", include_self=False)
        neg &= s >= (lowest[seg] - delta if G > 1 else float(lowest[0]) - delta)
    idx_n = torch.nonzero(neg).squeeze(1)
    sn = s.index_select(0, idx_n)
    # (one image: all segments 0, as a broadcast view; the hot path does not read it)
    gn = seg.index_select(0, idx_n) if G > 1 else seg.new_zeros(1).expand(idx_n.numel())

    sp_u, delta_u = sp * unit, delta * unit
    if bucketed:
        member, proto, proto_seg, size = _buckets(sp, gp, sn, gn, G, counts, tied_above)
        negs_u, negs_seg, negs_w = proto * unit, proto_seg, size
    else:
        negs_u, negs_seg, negs_w = (sn * unit if unit != 1.0 else sn), gn, None  # None: unit weights
    linear, centre = _linear_ok(sp_u, negs_u, delta_u)
    if linear:  # the near-linear hot path: no sort of the negatives, no P x P term
        slots = _Slots(sp_u, gp, G, delta_u)
        part = _linear_ranking_part(sp_u, gp, negs_u, negs_seg, negs_w, G, delta_u, x.self_value, x.tie_value,
                                    interpolated, scale, centre, slots)
    else:  # delta tiny against the spread of the logits: sorted negatives and offset trees
        part = _ranking_part(sp_u, gp, negs_u, negs_seg, torch.ones_like(negs_u) if negs_w is None else negs_w,
                             G, delta_u, x.self_value, x.tie_value, interpolated, scale)
    # bucketed: a prototype's gradient is spread uniformly over its bucket (BRL Eqs. 3.33-3.34)
    grad_neg = part.grad_neg_unit[member] if bucketed else part.grad_neg_unit
    grad_pos = part.grad_pos
    terms = {"ranking": (scale * part.error).sum()}
    if sorting:
        if linear:
            err_s, grad_s = _linear_sorting_part(sp_u, yp, gp, G, delta_u, x.self_value, x.tie_value, scale,
                                                 centre, slots)
        else:
            err_s, grad_s = _sorting_part(sp_u, yp, gp, G, delta_u, x.self_value, x.tie_value, scale)
        grad_pos = grad_pos + grad_s
        terms["sorting"] = (scale * err_s).sum()
    grad.index_copy_(0, idx_p, grad_pos)
    grad.index_copy_(0, idx_n, grad_neg)
    loss = sum(terms.values(), zero)
    return EngineOutput(loss, grad, terms)

"""Fast paths of aLRP Loss: exact, near-linear numba (CPU) and numba.cuda kernels.

Same numbers as :func:`rankspec.refimpl.reference.alrp.alrp_classification` (to float64 rounding),
without the O(|P| (|P| + |N|)) pair loop.  With the positives sorted (p_1 <= ... <= p_P, e_loc
permuted alike) and the negatives sorted, every sum over a piecewise-linear H is a prefix-sum
difference over the window [x - delta, x + delta] found by binary search:

    sum_j H(p_j - x) = #{p_j > x + delta} + sum_{window} ((p_j - x) / (2 delta) + 1/2)

(and the same with weights e_loc(j), and over the negatives for N_FP).  The negatives' gradient
g_v = sum_i H(n_v - p_i) c_i with c_i = E(i) / N_FP(i) is again a prefix sum over the sorted
positives: all c_i with p_i < n_v - delta, plus the window.  At delta = 0 the windows are the ties
(weighted by ``tie_value``).

Cost: O(P log P + N log N) time for the sorts, O((P + N) log(P + N)) for the searches, O(P + N)
memory.  Values are centred on the median positive before the prefix sums; a call whose delta is
tiny against the logits (delta < 2^-16 max |s|) is declined (the record then runs the reference).

``backend="cuda"``: one numba.cuda thread per positive for the per-positive pass and one per
negative for the negatives' pass (binary searches in device arrays), sorts and prefix sums on the
host.  Runs under ``NUMBA_ENABLE_CUDASIM=1``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["numba_alrp", "cuda_alrp", "ILL_CONDITIONED"]

#: decline (let the reference decide) when 0 < delta < ILL_CONDITIONED * max |logit in play|
ILL_CONDITIONED = 2.0 ** -16


@njit(cache=True)
def _lower(a, x):  # first index with a[k] >= x
    lo, hi = 0, a.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True)
def _upper(a, x):  # first index with a[k] > x
    lo, hi = 0, a.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] <= x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True)
def _prefix(v):
    out = np.zeros(v.shape[0] + 1)
    acc = 0.0
    for k in range(v.shape[0]):
        acc += v[k]
        out[k + 1] = acc
    return out


@njit(cache=True)
def _window_sum(vals, pre_w, pre_wv, lo, hi, x, delta):
    """sum_{k in [lo, hi)} w_k ((vals_k - x) / (2 delta) + 1/2) from prefix sums of w and w * vals."""
    W = pre_w[hi] - pre_w[lo]
    WV = pre_wv[hi] - pre_wv[lo]
    return (WV - W * x) / (2.0 * delta) + 0.5 * W


@njit(cache=True)
def _positive_pass(p, e, n, delta, self_value, tie_value, eps, rank_plus, n_fp, update):
    """rank+(i), N_FP(i), E(i) for every sorted positive (p, e sorted by p; n sorted)."""
    P = p.shape[0]
    N = n.shape[0]
    ones_p = np.ones(P)
    pre_1 = _prefix(ones_p)
    pre_p = _prefix(p)
    pre_e = _prefix(e)
    pre_ep = _prefix(e * p)
    pre_n1 = _prefix(np.ones(N))
    pre_n = _prefix(n)
    for i in range(P):
        x = p[i]
        if delta > 0.0:
            lo = _lower(p, x - delta)
            hi = _upper(p, x + delta)
            # sum over j (self included, H(0) = 1/2), then remove the self relation
            a = (P - hi) + _window_sum(p, pre_1, pre_p, lo, hi, x, delta) - 0.5
            b = (pre_e[P] - pre_e[hi]) + _window_sum(p, pre_e, pre_ep, lo, hi, x, delta) - 0.5 * e[i]
            lo_n = _lower(n, x - delta)
            hi_n = _upper(n, x + delta)
            f = (N - hi_n) + _window_sum(n, pre_n1, pre_n, lo_n, hi_n, x, delta)
        else:
            lo = _lower(p, x)
            hi = _upper(p, x)
            a = (P - hi) + tie_value * (hi - lo - 1)
            b = (pre_e[P] - pre_e[hi]) + tie_value * (pre_e[hi] - pre_e[lo] - e[i])
            lo_n = _lower(n, x)
            hi_n = _upper(n, x)
            f = (N - hi_n) + tie_value * (hi_n - lo_n)
        if a < 0.0:  # rounding of the prefix differences; the exact value is >= 0
            a = 0.0
        if f < 0.0:
            f = 0.0
        if b < 0.0:
            b = 0.0
        rank_plus[i] = self_value + a
        n_fp[i] = f
        if f > eps:
            update[i] = (f + b) / (rank_plus[i] + f)
        else:
            update[i] = 0.0


@njit(cache=True)
def _negative_pass(p, c, n, delta, tie_value, grad_neg):
    """g_v = sum_i H(n_v - p_i) c_i for every negative (p sorted, c aligned with p)."""
    pre_c = _prefix(c)
    pre_cp = _prefix(c * p)
    P = p.shape[0]
    for v in range(n.shape[0]):
        y = n[v]
        if delta > 0.0:
            lo = _lower(p, y - delta)
            hi = _upper(p, y + delta)
            # H(y - p_i) = (y - p_i) / (2 delta) + 1/2 = -((p_i - y) / (2 delta)) + 1/2 in the window
            C = pre_c[hi] - pre_c[lo]
            CP = pre_cp[hi] - pre_cp[lo]
            g = pre_c[lo] + (C * y - CP) / (2.0 * delta) + 0.5 * C
        else:
            lo = _lower(p, y)
            hi = _upper(p, y)
            g = pre_c[lo] + tie_value * (pre_c[hi] - pre_c[lo])
        grad_neg[v] = g if g > 0.0 else 0.0
    _ = P


def _prepare(x):
    """Sorted, centred arrays of a validated :class:`~rankspec.refimpl.losses.alrp.ALRPInput`, or None."""
    pos, neg = x.pos, x.neg
    s_pos = x.logits[pos]
    s_neg = x.logits[neg]
    order = np.argsort(s_pos, kind="stable").astype(np.int64)
    p = s_pos[order]
    # negatives below min positive - delta never enter a sum: drop them (the authors' threshold)
    keep = np.flatnonzero(s_neg >= p[0] - x.delta)
    n_idx = keep[np.argsort(s_neg[keep], kind="stable")]
    n = s_neg[n_idx]
    if x.delta > 0.0:
        scale = max(abs(p[0]), abs(p[-1]), abs(n[-1]) if n.size else 0.0) + x.delta
        if x.delta < ILL_CONDITIONED * scale or x.delta < 1e-280:
            return None
    # centre the values for the prefix sums at delta > 0 (at delta = 0 only comparisons: keep them exact)
    centre = p[p.size // 2] if x.delta > 0.0 else 0.0
    return order, p - centre, x.regression_losses[order], n - centre, n_idx, s_neg.size


def _assemble(x, order, rank_plus, n_fp, update, grad_neg_kept, n_idx, num_neg):
    from ..losses.alrp import finish

    P = order.size
    inv = np.empty(P, dtype=np.int64)
    inv[order] = np.arange(P)
    rank = (rank_plus + n_fp)[inv]
    fp = n_fp[inv]
    grad_pos = -update[inv]
    grad_neg = np.zeros(num_neg)
    grad_neg[n_idx] = grad_neg_kept
    loss_sum = float(np.sum(fp / rank))
    return finish(x, loss_sum, rank, fp, order, grad_pos, grad_neg)


def numba_alrp(x):
    """``backend="numba"`` kernel of the aLRP record: LossResult, or None to decline (ill-conditioned)."""
    from ..losses.alrp import empty_result
    from ..primitives import self_term

    if len(x.pos) == 0:
        return empty_result(x)
    prep = _prepare(x)
    if prep is None:
        return None
    order, p, e, n, n_idx, num_neg = prep
    P = p.size
    rank_plus, n_fp, update = np.zeros(P), np.zeros(P), np.zeros(P)
    self_value = self_term(x.delta, x.self_rank, x.tie_value)
    _positive_pass(p, e, n, x.delta, self_value, x.tie_value, x.eps, rank_plus, n_fp, update)
    c = np.where(n_fp > x.eps, update / np.where(n_fp > 0, n_fp, 1.0), 0.0)
    grad_neg = np.zeros(n.size)
    _negative_pass(p, c, n, x.delta, x.tie_value, grad_neg)
    return _assemble(x, order, rank_plus, n_fp, update, grad_neg, n_idx, num_neg)


# ------------------------------------------------------------------------------------------ CUDA

def cuda_alrp(x):
    """``backend="cuda"`` kernel of the aLRP record (host input; sorts and prefix sums on the host)."""
    from numba import cuda

    from ..losses.alrp import empty_result
    from ..primitives import self_term

    if len(x.pos) == 0:
        return empty_result(x)
    prep = _prepare(x)
    if prep is None:
        return None
    order, p, e, n, n_idx, num_neg = prep
    P, N = p.size, n.size
    from . import _alrp_cuda as K

    cum = lambda v: np.concatenate(([0.0], np.cumsum(v)))  # noqa: E731
    d_p = cuda.to_device(p)
    d_n = cuda.to_device(n if N else np.zeros(0))
    rank_plus = cuda.device_array(P)
    n_fp = cuda.device_array(P)
    update = cuda.device_array(P)
    tpb = 128
    self_value = self_term(x.delta, x.self_rank, x.tie_value)
    K.positive_kernel[(P + tpb - 1) // tpb, tpb](
        d_p, cuda.to_device(e), d_n, cuda.to_device(cum(np.ones(P))), cuda.to_device(cum(p)),
        cuda.to_device(cum(e)), cuda.to_device(cum(e * p)), cuda.to_device(cum(np.ones(N))),
        cuda.to_device(cum(n)), float(x.delta), float(self_value), float(x.tie_value), float(x.eps),
        rank_plus, n_fp, update)
    rank_plus, n_fp, update = rank_plus.copy_to_host(), n_fp.copy_to_host(), update.copy_to_host()
    c = np.where(n_fp > x.eps, update / np.where(n_fp > 0, n_fp, 1.0), 0.0)
    grad_neg = np.zeros(N)
    if N:
        d_g = cuda.device_array(N)
        K.negative_kernel[(N + tpb - 1) // tpb, tpb](d_p, d_n, cuda.to_device(cum(c)), cuda.to_device(cum(c * p)),
                                                  float(x.delta), float(x.tie_value), d_g)
        grad_neg = d_g.copy_to_host()
    return _assemble(x, order, rank_plus, n_fp, update, grad_neg, n_idx, num_neg)

"""Fast paths of aLRP Loss: exact, near-linear numba (CPU) and numba.cuda kernels.

Same numbers as :func:`rankspec.refimpl.reference.alrp.alrp_classification` (to float64 rounding),
without the O(|P| (|P| + |N|)) pair loop.  With the positives sorted (p_1 <= ... <= p_P, e_loc
permuted alike) and the negatives sorted, every sum over a piecewise-linear H is a prefix-sum
difference over the window [x - delta, x + delta] found by binary search:

    sum_j H(p_j - x) = #{p_j > x + delta} + sum_{window} ((p_j - x) / delta / 2 + 1/2)

(and the same with weights e_loc(j), and over the negatives for N_FP).  The negatives' gradient
g_v = sum_i H(n_v - p_i) c_i with c_i = E(i) / N_FP(i) is again a prefix sum over the sorted
positives: all c_i with p_i < n_v - delta, plus the window.  At delta = 0 the windows are the ties
(weighted by ``tie_value``).

Cost: O(P log P + N log N) time for the sorts, O((P + N) log(P + N)) for the searches, O(P + N)
memory.

Numerics (every finite float64 input): at delta > 0 the values enter the prefix sums in units of
delta, centred on the median positive, u = (s - centre) / delta (logits beyond 2^960 are first
scaled by the exact power of two 2^-70, so s - centre cannot overflow); a call whose delta is tiny
against the logits (delta < 2^-16 max |s|) is declined (the record then runs the reference), so
|u| <= 2^17 + 1 and the prefix sums of u, e u and c u cannot overflow.  A call with a localisation
error above 2^900 is declined too.  At delta = 0 the logits are only compared.

The per-positive and per-negative computations (binary searches, window sums, the element body)
are written once in :mod:`.kernels.alrp_scalar` and compiled for both targets.
``backend="cuda"``: one numba.cuda thread per positive for the per-positive pass and one per
negative for the negatives' pass (binary searches in device arrays), sorts and prefix sums on the
host.  Runs under ``NUMBA_ENABLE_CUDASIM=1``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .kernels import alrp_scalar
from .kernels.scalar import compile_for

__all__ = ["numba_alrp", "cuda_alrp", "ILL_CONDITIONED", "BIG_E"]

#: decline (let the reference decide) when 0 < delta < ILL_CONDITIONED * max |logit in play|
ILL_CONDITIONED = 2.0 ** -16
#: decline when a localisation error exceeds BIG_E (prefix sums of e u and c u must stay finite)
BIG_E = 2.0 ** 900
#: logits beyond BIG in magnitude are scaled by a power of two before centring (s - centre stays finite)
BIG = 2.0 ** 960
_DOWN = 2.0 ** -70

#: the per-positive / per-negative computations of :mod:`.kernels.alrp_scalar`, compiled for the CPU
S = compile_for(njit(inline="always", cache=True), alrp_scalar.HELPERS)
_positive_row, _negative_value = S.positive_row, S.negative_value


@njit(cache=True)
def _positive_pass(p, e, n, pre_1, pre_p, pre_e, pre_ep, pre_n1, pre_n, smooth, self_value, tie_value, eps,
                   rank_plus, n_fp, update):
    """rank+(i), N_FP(i), E(i) for every sorted positive (one :func:`.alrp_scalar.positive_row` each)."""
    for i in range(p.shape[0]):
        rank_plus[i], n_fp[i], update[i] = _positive_row(i, p, e, n, pre_1, pre_p, pre_e, pre_ep, pre_n1, pre_n,
                                                         smooth, self_value, tie_value, eps)


@njit(cache=True)
def _negative_pass(p, n, pre_c, pre_cp, smooth, tie_value, grad_neg):
    """g_v for every kept negative (one :func:`.alrp_scalar.negative_value` each)."""
    for v in range(n.shape[0]):
        grad_neg[v] = _negative_value(n[v], p, pre_c, pre_cp, smooth, tie_value)


def _cum(v):
    """Prefix sums with a leading 0 (length len(v) + 1)."""
    out = np.zeros(v.size + 1)
    np.cumsum(v, out=out[1:])
    return out


def _prepare(x):
    """Sorted arrays of a validated :class:`~rankspec.refimpl.losses.alrp.ALRPInput` in kernel units, or None.

    Returns ``(order, p, e, n, n_idx, num_neg, smooth)``.  At delta > 0 the logits are
    u = (s - centre) / delta (centre: the median positive; |u| <= 2^17 + 1 once the ill-conditioned
    calls are declined); logits beyond 2^960 in magnitude are first scaled by 2^-70 together with the
    centre and delta (exact: a power of two, all of them normal there).  At delta = 0 the logits
    themselves (only compared).  Declines (None) when delta is tiny against the logits or a
    localisation error exceeds :data:`BIG_E`.  O(P log P + N log N) time, O(P + N) memory.
    """
    pos, neg = x.pos, x.neg
    s_pos = x.logits[pos]
    s_neg = x.logits[neg]
    e_all = x.regression_losses
    if e_all.size and e_all.max() > BIG_E:
        return None
    order = np.argsort(s_pos, kind="stable").astype(np.int64)
    p = s_pos[order]
    delta = x.delta
    # negatives below min positive - delta never enter a sum: drop them (the authors' threshold).  p[0] - delta
    # may overflow to -inf: then every (finite) negative is kept, as the exact threshold keeps them
    with np.errstate(over="ignore"):
        keep = np.flatnonzero(s_neg >= p[0] - delta)
    n_idx = keep[np.argsort(s_neg[keep], kind="stable")]
    n = s_neg[n_idx]
    e = e_all[order]
    if delta == 0.0:
        return order, p, e, n, n_idx, s_neg.size, False
    top = max(abs(p[0]), abs(p[-1]), abs(n[-1]) if n.size else 0.0)
    if delta < ILL_CONDITIONED * top or delta < 1e-280:
        return None
    centre = p[p.size // 2]
    if top > BIG:  # s - centre could overflow: scale everything by a power of two first (exact)
        p, n, centre, delta = p * _DOWN, n * _DOWN, centre * _DOWN, delta * _DOWN
    return order, (p - centre) / delta, e, (n - centre) / delta, n_idx, s_neg.size, True


def _positive_sums(p, e, n, smooth):
    """Prefix sums of 1, u, e, e u over the positives and of 1, u over the negatives (value sums: zeros
    at delta = 0, where they are not used)."""
    P, N = p.size, n.size
    pre_1, pre_n1, pre_e = _cum(np.ones(P)), _cum(np.ones(N)), _cum(e)
    if smooth:
        return pre_1, _cum(p), pre_e, _cum(e * p), pre_n1, _cum(n)
    return pre_1, np.zeros(P + 1), pre_e, np.zeros(P + 1), pre_n1, np.zeros(N + 1)


def _negative_weights(p, n_fp, update, eps, smooth):
    """c_i = E(i) / N_FP(i) (0 where N_FP(i) <= eps) and the prefix sums of c and c u."""
    c = np.where(n_fp > eps, update / np.where(n_fp > 0, n_fp, 1.0), 0.0)
    return _cum(c), (_cum(c * p) if smooth else np.zeros(c.size + 1))


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


def _run(x, positive_pass, negative_pass):
    """The host driver of both backends: prepare, per-positive pass, weights, per-negative pass, assemble.

    ``positive_pass(p, e, n, sums, smooth, self_value, tie_value, eps) -> (rank_plus, n_fp, update)`` and
    ``negative_pass(p, n, pre_c, pre_cp, smooth, tie_value) -> grad_neg`` are the backend's launches."""
    from ..losses.alrp import empty_result
    from ..reference.primitives import self_term

    if len(x.pos) == 0:
        return empty_result(x)
    prep = _prepare(x)
    if prep is None:
        return None
    order, p, e, n, n_idx, num_neg, smooth = prep
    self_value = float(self_term(x.delta, x.self_rank, x.tie_value))
    tie, eps = float(x.tie_value), float(x.eps)
    rank_plus, n_fp, update = positive_pass(p, e, n, _positive_sums(p, e, n, smooth), smooth, self_value, tie, eps)
    grad_neg = np.zeros(n.size)
    if n.size:
        grad_neg = negative_pass(p, n, *_negative_weights(p, n_fp, update, eps, smooth), smooth, tie)
    return _assemble(x, order, rank_plus, n_fp, update, grad_neg, n_idx, num_neg)


def _numba_positive(p, e, n, sums, smooth, self_value, tie, eps):
    out = np.zeros(p.size), np.zeros(p.size), np.zeros(p.size)
    _positive_pass(p, e, n, *sums, smooth, self_value, tie, eps, *out)
    return out


def _numba_negative(p, n, pre_c, pre_cp, smooth, tie):
    g = np.zeros(n.size)
    _negative_pass(p, n, pre_c, pre_cp, smooth, tie, g)
    return g


def numba_alrp(x):
    """``backend="numba"`` kernel of the aLRP record: LossResult, or None to decline (ill-conditioned)."""
    return _run(x, _numba_positive, _numba_negative)


# ------------------------------------------------------------------------------------------ CUDA

_TPB = 128


def _cuda_positive(p, e, n, sums, smooth, self_value, tie, eps):
    from numba import cuda

    from . import _alrp_cuda as K

    P = p.size
    out = [cuda.device_array(P) for _ in range(3)]
    K.positive_kernel[(P + _TPB - 1) // _TPB, _TPB](cuda.to_device(p), cuda.to_device(e),
                                                    cuda.to_device(n if n.size else np.zeros(0)),
                                                    *[cuda.to_device(a) for a in sums], smooth, self_value, tie,
                                                    eps, *out)
    return tuple(a.copy_to_host() for a in out)


def _cuda_negative(p, n, pre_c, pre_cp, smooth, tie):
    from numba import cuda

    from . import _alrp_cuda as K

    N = n.size
    d_g = cuda.device_array(N)
    K.negative_kernel[(N + _TPB - 1) // _TPB, _TPB](cuda.to_device(p), cuda.to_device(n), cuda.to_device(pre_c),
                                                    cuda.to_device(pre_cp), smooth, tie, d_g)
    return d_g.copy_to_host()


def cuda_alrp(x):
    """``backend="cuda"`` kernel of the aLRP record (host input; sorts and prefix sums on the host)."""
    return _run(x, _cuda_positive, _cuda_negative)

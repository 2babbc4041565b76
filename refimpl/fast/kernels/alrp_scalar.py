"""Per-positive and per-negative computations of the aLRP fast path, written once for both targets.

Plain Python on scalars and 1-d arrays indexed by scalars, compiled for the CPU kernel
(:mod:`rankspec.refimpl.fast.alrp`, ``numba.njit(inline="always")``) and for the CUDA kernels
(:mod:`rankspec.refimpl.fast._alrp_cuda`, ``numba.cuda.jit(device=True)``) by
:func:`.scalar.compile_for` over :data:`HELPERS`.

Units (prepared on the host by :func:`rankspec.refimpl.fast.alrp._prepare`): at delta > 0 the
logits are given as ``u = (s - centre) / delta`` (so that H(s_j - s_i) = (u_j - u_i) / 2 + 1/2
inside the window |u_j - u_i| <= 1, 0 below, 1 above), and the prefix sums are of ``u``,
``e u`` (positives) and ``c u`` (negatives' pass).  The host declines a call with
delta < 2^-16 max |s| (see ILL_CONDITIONED), so |u| <= 2^17 + 1 and every prefix sum of
weights below 2^900 times u stays finite.  At delta = 0 (``smooth`` false) ``u`` are the logits
themselves, only compared, and the value prefix sums are not used.
"""

from __future__ import annotations


def lower(a, x):
    """First index k of the ascending ``a`` with a[k] >= x (len(a) if none).  O(log len(a))."""
    lo = 0
    hi = a.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


def upper(a, x):
    """First index k of the ascending ``a`` with a[k] > x (len(a) if none).  O(log len(a))."""
    lo = 0
    hi = a.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] <= x:
            lo = mid + 1
        else:
            hi = mid
    return lo


def window_sum(pre_w, pre_wu, lo, hi, x):
    """sum_{k in [lo, hi)} w_k ((u_k - x) / 2 + 1/2) from the prefix sums of w and w u."""
    W = pre_w[hi] - pre_w[lo]
    return ((pre_wu[hi] - pre_wu[lo]) - W * x) * 0.5 + 0.5 * W


def positive_row(i, p, e, n, pre_1, pre_p, pre_e, pre_ep, pre_n1, pre_n, smooth, self_value, tie_value, eps):
    """(rank+(i), N_FP(i), E(i)) of the i-th sorted positive (BRL Eq. 3.1, RS Eqs. 3-5):
    p, e sorted by p; n sorted; ``pre_*`` the prefix sums (length + 1) of 1, p, e, e p over the
    positives and of 1, n over the negatives."""
    P = p.shape[0]
    N = n.shape[0]
    x = p[i]
    if smooth:
        lo = lower(p, x - 1.0)
        hi = upper(p, x + 1.0)
        # sum over j (self included, H(0) = 1/2), then remove the self relation
        a = (P - hi) + window_sum(pre_1, pre_p, lo, hi, x) - 0.5
        b = (pre_e[P] - pre_e[hi]) + window_sum(pre_e, pre_ep, lo, hi, x) - 0.5 * e[i]
        lo_n = lower(n, x - 1.0)
        hi_n = upper(n, x + 1.0)
        f = (N - hi_n) + window_sum(pre_n1, pre_n, lo_n, hi_n, x)
    else:
        lo = lower(p, x)
        hi = upper(p, x)
        a = (P - hi) + tie_value * (hi - lo - 1)
        b = (pre_e[P] - pre_e[hi]) + tie_value * (pre_e[hi] - pre_e[lo] - e[i])
        lo_n = lower(n, x)
        hi_n = upper(n, x)
        f = (N - hi_n) + tie_value * (hi_n - lo_n)
    # rounding of the prefix differences; the exact values are >= 0
    a = max(a, 0.0)
    b = max(b, 0.0)
    f = max(f, 0.0)
    rank_plus = self_value + a
    update = 0.0
    if f > eps:
        # E(i) = (N_FP + b) / rank, split so that no intermediate exceeds max(1, max e_loc) * rank
        rank = rank_plus + f
        update = f / rank + b / rank
    return rank_plus, f, update


def negative_value(y, p, pre_c, pre_cp, smooth, tie_value):
    """g_v = sum_i H(n_v - p_i) c_i for the negative at ``y`` (p sorted, ``pre_c`` / ``pre_cp`` the
    prefix sums of c and c p over the sorted positives).  Inside the window
    H(y - p_i) = -((p_i - y) / 2) + 1/2."""
    if smooth:
        lo = lower(p, y - 1.0)
        hi = upper(p, y + 1.0)
        C = pre_c[hi] - pre_c[lo]
        g = pre_c[lo] + (C * y - (pre_cp[hi] - pre_cp[lo])) * 0.5 + 0.5 * C
    else:
        lo = lower(p, y)
        hi = upper(p, y)
        g = pre_c[lo] + tie_value * (pre_c[hi] - pre_c[lo])
    return max(g, 0.0)


#: dependency order: a helper comes after those it calls
HELPERS = (lower, upper, window_sum, positive_row, negative_value)

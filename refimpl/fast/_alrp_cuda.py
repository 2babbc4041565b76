"""numba.cuda kernels of the aLRP fast path (see :mod:`rankspec.refimpl.fast.alrp`); imported on first use."""

from numba import cuda

__all__ = ["positive_kernel", "negative_kernel"]


@cuda.jit(device=True)
def lower(a, x):
    lo = 0
    hi = a.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@cuda.jit(device=True)
def upper(a, x):
    lo = 0
    hi = a.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] <= x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@cuda.jit
def positive_kernel(p, e, n, pre_1, pre_p, pre_e, pre_ep, pre_n1, pre_n, delta, self_value, tie_value, eps,
                    rank_plus, n_fp, update):
    i = cuda.grid(1)
    P = p.shape[0]
    N = n.shape[0]
    if i >= P:
        return
    x = p[i]
    if delta > 0.0:
        lo = lower(p, x - delta)
        hi = upper(p, x + delta)
        W = pre_1[hi] - pre_1[lo]
        a = (P - hi) + ((pre_p[hi] - pre_p[lo]) - W * x) / (2.0 * delta) + 0.5 * W - 0.5
        WE = pre_e[hi] - pre_e[lo]
        b = (pre_e[P] - pre_e[hi]) + ((pre_ep[hi] - pre_ep[lo]) - WE * x) / (2.0 * delta) + 0.5 * WE \
            - 0.5 * e[i]
        lo_n = lower(n, x - delta)
        hi_n = upper(n, x + delta)
        WN = pre_n1[hi_n] - pre_n1[lo_n]
        f = (N - hi_n) + ((pre_n[hi_n] - pre_n[lo_n]) - WN * x) / (2.0 * delta) + 0.5 * WN
    else:
        lo = lower(p, x)
        hi = upper(p, x)
        a = (P - hi) + tie_value * (hi - lo - 1)
        b = (pre_e[P] - pre_e[hi]) + tie_value * (pre_e[hi] - pre_e[lo] - e[i])
        lo_n = lower(n, x)
        hi_n = upper(n, x)
        f = (N - hi_n) + tie_value * (hi_n - lo_n)
    a = max(a, 0.0)
    b = max(b, 0.0)
    f = max(f, 0.0)
    rank_plus[i] = self_value + a
    n_fp[i] = f
    update[i] = (f + b) / (self_value + a + f) if f > eps else 0.0


@cuda.jit
def negative_kernel(p, n, pre_c, pre_cp, delta, tie_value, grad_neg):
    v = cuda.grid(1)
    if v >= n.shape[0]:
        return
    y = n[v]
    if delta > 0.0:
        lo = lower(p, y - delta)
        hi = upper(p, y + delta)
        C = pre_c[hi] - pre_c[lo]
        g = pre_c[lo] + (C * y - (pre_cp[hi] - pre_cp[lo])) / (2.0 * delta) + 0.5 * C
    else:
        lo = lower(p, y)
        hi = upper(p, y)
        g = pre_c[lo] + tie_value * (pre_c[hi] - pre_c[lo])
    grad_neg[v] = max(g, 0.0)

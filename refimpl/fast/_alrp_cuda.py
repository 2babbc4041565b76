"""numba.cuda kernels of the aLRP fast path (see :mod:`rankspec.refimpl.fast.alrp`); imported on first use.

One thread per sorted positive / per kept negative; the computation of each is
:mod:`rankspec.refimpl.fast.kernels.alrp_scalar` compiled as device functions (the same source as
the CPU kernel's).
"""

from numba import cuda

from .kernels import alrp_scalar
from .kernels.scalar import compile_for

__all__ = ["positive_kernel", "negative_kernel"]

D = compile_for(cuda.jit(device=True), alrp_scalar.HELPERS)
_positive_row, _negative_value = D.positive_row, D.negative_value


@cuda.jit
def positive_kernel(p, e, n, pre_1, pre_p, pre_e, pre_ep, pre_n1, pre_n, smooth, self_value, tie_value, eps,
                    rank_plus, n_fp, update):
    i = cuda.grid(1)
    if i < p.shape[0]:
        rank_plus[i], n_fp[i], update[i] = _positive_row(i, p, e, n, pre_1, pre_p, pre_e, pre_ep, pre_n1, pre_n,
                                                         smooth, self_value, tie_value, eps)


@cuda.jit
def negative_kernel(p, n, pre_c, pre_cp, smooth, tie_value, grad_neg):
    v = cuda.grid(1)
    if v < n.shape[0]:
        grad_neg[v] = _negative_value(n[v], p, pre_c, pre_cp, smooth, tie_value)

"""Fast paths of the AP / RS family: exact, near-linear Numba and numba.cuda kernels.

The readable NumPy functions in :mod:`rankspec.refimpl` stay the oracle; the
kernels here compute the same numbers (to rounding) and are tested against
them.  Each loss's :class:`~rankspec.refimpl.record.LossRecord` names its kernels
(``kernels={"numba": "module:function", ...}``); every kernel takes the record's
validated input.  Select a backend with the ``backend=`` keyword of
:func:`~rankspec.refimpl.ap_loss`, :func:`~rankspec.refimpl.rs_loss`,
:func:`~rankspec.refimpl.bucketed_ap_loss` and
:func:`~rankspec.refimpl.bucketed_rs_loss`:

``"numpy"``
    The reference (default).  O(P (P + N)) time for P positives and N negatives.
``"numba"``
    CPU kernels (``@njit(cache=True)``, the O(N) passes multi-threaded for
    large inputs).  O(N log P + P log P) time worst case, O(N + P) memory.
``"cuda"``
    ``numba.cuda`` kernels for the O(N) passes, the O(P log P) stage on the
    host.  Accepts NumPy arrays (copied to the GPU) and GPU arrays exposing
    ``__cuda_array_interface__`` (torch CUDA tensors, CuPy, numba device
    arrays) without copying; for GPU input the gradient is returned as a numba
    device array (wrap it with ``torch.as_tensor(grad, device="cuda")``).
    Runs under numba's simulator when ``NUMBA_ENABLE_CUDASIM=1``.

The same keyword selects the fast paths of the other families' pair sums:
:func:`~rankspec.refimpl.losses.rankdet.reweighted_pair_loss` and the RankDetNet losses
(:mod:`.rankdet`: the exponential L_rank factorises, O(U + P); sigmoid / logistic O(U P) without
the U x P matrices) and :func:`~rankspec.refimpl.losses.ape.pairwise_error_loss` /
:func:`~rankspec.refimpl.losses.ape.ape_loss` (:mod:`.ape`: O(n log n) prefix sums for the H distance,
valid pairs only for S / CE).  The torch adapters of the AP / RS family call the numba kernels
for CPU tensors (``rankspec.adapters.torch._engine``).

The algorithms and their derivations are on the "Fast paths" docs page.
"""

from __future__ import annotations

__all__ = ["BACKENDS", "check_backend", "cuda_available", "available_backends"]

from ..constants import BACKENDS, check_backend  # noqa: E402  (one definition, in refimpl.constants)


def cuda_available() -> bool:
    """True when numba.cuda can run kernels (a GPU, or the simulator is enabled)."""
    try:
        from numba import cuda
    except Exception:  # pragma: no cover - numba without its cuda package
        return False
    try:
        return bool(cuda.is_available())
    except Exception:  # pragma: no cover
        return False


def available_backends():
    """The backends that can run on this machine now."""
    return tuple(b for b in BACKENDS if b != "cuda" or cuda_available())

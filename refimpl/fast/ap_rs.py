"""Kernels of the AP / RS family as the records name them (``LossRecord.kernels``).

Each takes the validated :class:`~rankspec.refimpl._inputs.RankingInput` and returns the
:class:`~rankspec.refimpl.LossResult`, or None for an ill-conditioned call (the record then
runs the reference).  The orchestration is in :mod:`._numba_backend` (CPU) and
:mod:`._cuda_backend` (GPU); the compiled kernels in :mod:`._numba_kernels` / :mod:`._cuda_kernels`.
"""

from __future__ import annotations

__all__ = ["numba_ranking_loss", "cuda_ranking_loss"]


def numba_ranking_loss(x):
    """``backend="numba"``: O(N log P + P log P) time, O(N + P) memory (see :func:`._numba_backend.numba_ranking`)."""
    from ._numba_backend import numba_ranking

    return numba_ranking(x)


def cuda_ranking_loss(x):
    """``backend="cuda"``: O(N) device work, O(P log P) on the host (see :func:`._cuda_backend.cuda_ranking`)."""
    from ._cuda_backend import cuda_ranking

    return cuda_ranking(x)

"""Constants shared by the whole package (one place, imported everywhere else).

Nothing here imports another rankspec module, so every module may import it.
"""

from __future__ import annotations

__all__ = ["BACKENDS", "FAST_BACKENDS", "SCOPES", "DEFAULT_SCOPE", "GRAD_OUTPUTS", "DTYPES", "check_backend"]

#: accepted values of the ``backend`` keyword of every loss: the NumPy reference and the exact fast paths
BACKENDS = ("numpy", "numba", "cuda")
#: the backends served by kernels (:mod:`rankspec.refimpl.fast`)
FAST_BACKENDS = ("numba", "cuda")
#: ``scope`` of a ranking: one ranking over the whole input, or one per image (:mod:`rankspec.refimpl.scope`)
SCOPES = ("batch", "image")
DEFAULT_SCOPE = "batch"
#: incoming gradients (d total / d loss) the harness multiplies the loss by when it checks a gradient
GRAD_OUTPUTS = (1.0, 2.0, 0.5, -1.5)
#: input dtypes the harness and the adapters exercise
DTYPES = ("float32", "float64")


def check_backend(backend) -> str:
    """``backend`` must be one of :data:`BACKENDS` (ValueError naming the argument otherwise)."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)!r}, got {backend!r}")
    return backend

"""Kernels of the fast paths, by target and by role.

* :mod:`.scalar`: the scalar helpers (smoothed step H, pair validity, sigmoid / softplus, the
  table lookup of a logit's slot), written once as plain Python and compiled for both targets
  by :func:`.scalar.compile_for`;
* :mod:`.primitives`: CPU building blocks (compensated prefix sums, the lookup table, slot
  boundaries);
* :mod:`.stages`: the CPU passes and stages of the exact AP / RS / bucketed algorithms.

The CUDA kernels (:mod:`.._cuda_kernels`, :mod:`.._pair_cuda`) and the pair-sum kernels
(:mod:`.._pair_kernels`) call the same scalar helpers.  The old module
:mod:`.._numba_kernels` re-exports :mod:`.primitives` and :mod:`.stages`.
"""

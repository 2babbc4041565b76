"""Constants shared by every part of the conformance kit (one place for each).

* :data:`DTYPES` - the float types a target is checked in by default;
* :data:`LOW_PRECISION_DTYPES` - the opt-in narrow float types (``--dtype float16`` / ``bfloat16``): inputs
  rounded to the type, reference in float64 on the rounded values, torch targets given tensors of the type
  (:mod:`~rankspec.conformance._compare` gives their tolerance); :data:`CHECK_DTYPES` - all of them;
* :data:`DEVICES` - where torch targets run;
* :data:`GRAD_OUTPUTS` - the incoming gradients drawn for ``backward`` (1 is
  the simplest and comes first, because shrinking prefers the first choice);
* :data:`DEFAULT_TOLERANCES` - ``dtype -> (atol, rtol)`` base tolerances
  (:mod:`~rankspec.conformance._compare` explains them).

Imports nothing, so every module of the package may import it.
"""

DTYPES = ("float32", "float64")
LOW_PRECISION_DTYPES = ("float16", "bfloat16")
CHECK_DTYPES = DTYPES + LOW_PRECISION_DTYPES
DEVICES = ("cpu", "cuda")
GRAD_OUTPUTS = (1.0, 2.0, 0.5, -1.5)
DEFAULT_TOLERANCES = {"float32": (1e-5, 1e-4), "float64": (1e-9, 1e-7)}

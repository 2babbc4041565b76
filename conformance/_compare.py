"""Comparing a target's outcome with the reference under a dtype-aware tolerance.

An entry passes when ``|got - expected| <= atol + rtol * |expected|`` (NaN
never passes), for the loss, for each part of a tuple output and for every
gradient entry.  The gradient is compared with ``grad_output * reference grad``;
so is the gradient of every differentiable extra input of the spec
(``Input(grad=...)``, e.g. RankDet's IoUs) that the target reports.

Tolerance of one case (``case_tolerance``), with ``eps`` the machine epsilon
of the checked dtype and ``n`` the number of logits:

* ``atol = atol_base * max(1, sqrt(n / 1000)) + magnitude``, ``rtol = rtol_base``;
  defaults ``atol_base`` / ``rtol_base`` = 1e-5 / 1e-4 for float32 (the
  authors' recorded float32 outputs agree with the float64 reference to 1e-5)
  and 1e-9 / 1e-7 for float64; the ``sqrt(n / 1000)`` factor allows for
  rounding that accumulates in sums over many elements;
* ``magnitude = 4 eps max|s| / (2 delta)`` (delta > 0; losses without a
  delta have no magnitude term): one rounding of the
  largest logit, seen through the slope 1 / (2 delta) of the smoothed step;
  for the bucketed losses it is multiplied by ``log2(n) + 1`` because bucket
  prototypes are means of many logits.  It matters only for large-magnitude
  logits.

Narrow dtypes (``float16`` / ``bfloat16``, opt-in: :data:`~._constants.LOW_PRECISION_DTYPES`).  The
inputs are rounded to the dtype first and the float64 reference runs on exactly those rounded values, so
input rounding costs nothing; what remains is the mixed-precision contract of a training loss (issue 14):
compute internally in at least float32, return the loss and gradient in the input's dtype.  Hence

* ``atol_base = atol_float32 + tiny``, ``rtol_base = rtol_float32 + eps_d``, where ``eps_d`` is the spacing
  of the dtype's numbers at 1 (``2^-10`` for float16, ``2^-7`` for bfloat16: one ulp of the output dtype,
  relative, i.e. twice its unit roundoff, allowing the final rounding of the loss and of every gradient entry
  in either direction) and ``tiny`` the spacing of its subnormal numbers (``2^-24`` for float16, ``2^-133``
  for bfloat16), so entries below the normal range are allowed their absolute rounding; e.g. bfloat16:
  ``atol`` 1e-5, ``rtol`` 7.9e-3; float16: ``atol`` 1.006e-5, ``rtol`` 1.08e-3.  The ``sqrt(n / 1000)``
  and ``magnitude`` terms are the float32 ones (the computation is float32 or better);
* not the float32 tolerances scaled by ``eps_d / eps_float32`` (65536 for bfloat16): that would give
  ``rtol`` 6.6, which accepts any gradient of the right sign, even zero.  A port that computes in the narrow
  dtype itself (sums of many terms in bfloat16) falls outside this contract; pass ``--atol/--rtol`` to check
  it against a looser bound of your own;
* an expected entry beyond the dtype's largest finite value (65504 for float16, e.g. an unnormalised loss
  summed over many anchors) overflows when rounded to the dtype: an infinity, or the largest finite value,
  of its sign passes (:attr:`Tolerance.limit`).

Reported errors: the maximum absolute error, and a relative error that is the
absolute error divided by the largest expected magnitude, or by ``atol`` when
that is smaller (normwise, so tiny expected entries - or an expected gradient
that is exactly zero - do not blow it up).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np

from ._constants import DEFAULT_TOLERANCES

__all__ = ["DEFAULT_TOLERANCES", "Tolerance", "Comparison", "base_tolerance", "case_tolerance", "compare",
           "failed_call", "low_precision_tolerance"]
_TINY = 1e-300


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    #: a narrow dtype's largest finite value (None otherwise): an expected entry beyond it overflows when
    #: rounded to the dtype, so an infinity (or the largest finite value) of its sign passes
    limit: Optional[float] = None

    def to_dict(self):
        d = {"atol": self.atol, "rtol": self.rtol}
        if self.limit is not None:
            d["limit"] = self.limit
        return d


#: ``dtype -> (eps, tiny)``: the spacing of the narrow dtypes' numbers at 1 and of their subnormals
_NARROW = {"float16": (2.0 ** -10, 2.0 ** -24), "bfloat16": (2.0 ** -7, 2.0 ** -133)}
#: the narrow dtypes' largest finite values
_LIMIT = {"float16": 65504.0, "bfloat16": 3.3895313892515355e38}


def low_precision_tolerance(dtype: str) -> Tolerance:
    """The default base tolerance of a narrow dtype (module docs): float32's plus one ulp of output rounding."""
    eps, tiny = _NARROW[dtype]
    atol, rtol = DEFAULT_TOLERANCES["float32"]
    return Tolerance(atol + tiny, rtol + eps, _LIMIT[dtype])


def base_tolerance(dtype: str, overrides: Optional[Mapping] = None) -> Tolerance:
    if dtype in _NARROW:
        t = low_precision_tolerance(dtype)
        atol, rtol = t.atol, t.rtol
    else:
        atol, rtol = DEFAULT_TOLERANCES.get(dtype, DEFAULT_TOLERANCES["float32"])
    if overrides:
        atol = float(overrides.get("atol", atol) if overrides.get("atol") is not None else atol)
        rtol = float(overrides.get("rtol", rtol) if overrides.get("rtol") is not None else rtol)
    return Tolerance(atol, rtol, _LIMIT.get(dtype))


def case_tolerance(case, spec, base: Tolerance) -> Tolerance:
    n = max(case.size, 1)
    atol = base.atol * max(1.0, math.sqrt(n / 1000.0))
    if case.delta is not None and case.delta > 0:
        eps = float(np.finfo(case.logits.dtype).eps)
        big = float(np.max(np.abs(case.logits))) if case.size else 0.0
        mag = 4 * eps * big / (2 * case.delta)
        if spec.bucketed:
            mag *= math.log2(n) + 1
        atol += mag
    return Tolerance(atol, base.rtol, base.limit)


@dataclass
class Comparison:
    ok: bool
    loss_abs: float = math.nan
    loss_rel: float = math.nan
    grad_abs: float = math.nan
    grad_rel: float = math.nan
    score: float = math.inf  #: max over entries of error / allowed error (<= 1 passes)
    worst_index: Optional[tuple] = None  #: index of the worst gradient entry
    failure: Optional[str] = None  #: None, "mismatch", "error:<Type>", "bad-output"
    message: str = ""
    loss_ok: bool = False
    grad_ok: bool = False

    @property
    def signature(self) -> Optional[str]:
        return self.failure


def _overflowed(err, got, expected, tol: Tolerance):
    """``err`` with 0 where the expected entry lies beyond a narrow dtype's finite range (:attr:`Tolerance.limit`)
    and the target returned an infinity or the largest finite value of the same sign: the correct rounding."""
    if tol.limit is None:
        return err
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        ok = (np.abs(expected) > tol.limit) & (np.abs(got) >= tol.limit) & (np.sign(got) == np.sign(expected))
    return np.where(ok, 0.0, err)


def _score(err, expected, tol: Tolerance):
    allowed = tol.atol + tol.rtol * np.abs(expected)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(np.isnan(err), np.inf, err / allowed)
    return ratio


def compare(expected, outcome, tol: Tolerance, spec=None) -> Comparison:
    """Compare a reference :class:`LossResult` with a target :class:`Outcome`."""
    g = float(outcome.grad_output)
    exp_grad = np.asarray(expected.grad, dtype=np.float64) * g
    got_grad = np.asarray(outcome.grad, dtype=np.float64)
    loss_err = abs(float(outcome.loss) - float(expected.loss))
    loss_err = math.inf if math.isnan(loss_err) else loss_err
    loss_err = float(_overflowed(loss_err, outcome.loss, expected.loss, tol))
    loss_score = float(_score(np.array(loss_err), np.array(float(expected.loss)), tol))
    notes = []
    if spec is not None and outcome.parts is not None and len(outcome.parts) == len(spec.outputs) > 1:
        want = spec.scalar_outputs(expected)
        for name, got, exp in zip(spec.outputs, outcome.parts, want):
            e = abs(got - exp)
            e = math.inf if math.isnan(e) else e
            e = float(_overflowed(e, got, exp, tol))
            s = float(_score(np.array(e), np.array(exp), tol))
            if s > 1:
                notes.append(f"output {name!r}: got {got!r}, expected {exp!r}")
            loss_score = max(loss_score, s)
            loss_err = max(loss_err, e)
    grad_err = np.abs(got_grad - exp_grad)
    grad_err = _overflowed(np.where(np.isnan(grad_err), np.inf, grad_err), got_grad, exp_grad, tol)
    ratio = _score(grad_err, exp_grad, tol)
    grad_score = float(ratio.max()) if ratio.size else 0.0
    worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(ratio)), ratio.shape)) if ratio.size else None
    gmax = float(grad_err.max()) if grad_err.size else 0.0
    scale_g = float(np.max(np.abs(exp_grad))) if exp_grad.size else 0.0
    # gradients of differentiable extra inputs (e.g. the IoUs of RankDet's IoU-guided loss)
    extra_notes = []
    if spec is not None and getattr(outcome, "extra_grads", None):
        for name, want in spec.expected_grads(expected).items():
            got = outcome.extra_grads.get(name)
            if got is None:
                continue
            want = want * g
            got = np.asarray(got, dtype=np.float64)
            if got.shape != want.shape:
                extra_notes.append(f"grad of {name} has shape {got.shape}, expected {want.shape}")
                grad_score = math.inf
                continue
            err = np.abs(got - want)
            err = _overflowed(np.where(np.isnan(err), np.inf, err), got, want, tol)
            r = _score(err, want, tol)
            if r.size and float(r.max()) > 1:
                k = tuple(int(i) for i in np.unravel_index(int(np.argmax(r)), r.shape))
                extra_notes.append(f"grad of {name}{list(k)} {float(got[k])!r} != expected {float(want[k])!r}")
            if r.size:
                grad_score = max(grad_score, float(r.max()))
                gmax = max(gmax, float(err.max()))
                scale_g = max(scale_g, float(np.max(np.abs(want))))
    score = max(loss_score, grad_score)
    ok = bool(score <= 1.0)
    c = Comparison(
        ok=ok, loss_abs=loss_err,
        loss_rel=loss_err / max(abs(float(expected.loss)), tol.atol, _TINY) if loss_err else 0.0,
        grad_abs=gmax, grad_rel=gmax / max(scale_g, tol.atol, _TINY) if gmax else 0.0, score=score, worst_index=worst,
        failure=None if ok else "mismatch", loss_ok=loss_score <= 1.0, grad_ok=grad_score <= 1.0)
    if not ok:
        parts = []
        if loss_score > 1:
            parts.append(f"loss {outcome.loss!r} != expected {float(expected.loss)!r}")
        parts += notes
        if worst is not None and float(ratio[worst]) > 1:
            parts.append(f"grad{list(worst)} {float(got_grad[worst])!r} != expected {float(exp_grad[worst])!r}")
        parts += extra_notes
        c.message = "; ".join(parts)
    return c


def failed_call(kind: str, message: str) -> Comparison:
    return Comparison(ok=False, failure=kind, message=message)

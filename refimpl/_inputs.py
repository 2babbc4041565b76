"""The one validator of the AP / RS family (ap_loss, rs_loss, bucketed_ap_loss, bucketed_rs_loss).

:func:`validate_ranking` turns the arguments of a public call into a
:class:`RankingInput`: flat float64 arrays whose values are checked, and every
option checked (types included: ``interpolated="no"`` is a TypeError) before
anything is computed, whatever the backend and whether or not there is a
positive.  The reference (:mod:`rankspec.refimpl.reference.ranking`) and the
kernels (:mod:`rankspec.refimpl.fast.ap_rs`) both take this object.

GPU input (``backend="cuda"`` and an array exposing ``__cuda_array_interface__``)
stays on the GPU: shape and dtype are checked here on the host, the values
(finite, 0/1 or [0, 1]) by the CUDA glue's first pass over the data, which
calls :meth:`RankingInput.on_host` (and so :func:`validate_ranking` on a host
copy) to raise the same error with the same message when that pass finds a bad
value.  Cost on the host: O(n) time, no copy of float64 C-contiguous input.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ._result import LossResult
from ._validate import (as_float_array, check_binary_labels, check_bool, check_choice, check_delta,
                        check_finite_values, check_iou_targets, check_same_shape)
from .reference.primitives import self_term

__all__ = ["NORMALIZATION_CHOICES", "TIED_NEGATIVES_CHOICES", "RankingInput", "RankingOptions", "validate_ranking",
           "check_ranking_options", "normalizer", "is_device_array"]

NORMALIZATION_CHOICES = ("positives", "none")
TIED_NEGATIVES_CHOICES = ("above", "below")


def is_device_array(x) -> bool:
    """True for GPU arrays (``__cuda_array_interface__``) and numba's simulated device arrays."""
    return hasattr(x, "__cuda_array_interface__") or type(x).__name__ == "FakeCUDAArray"


@dataclass(frozen=True)
class RankingInput:
    """Validated input of an AP / RS family loss (see the module docstring)."""

    name: str  #: the loss (record name)
    shape: tuple  #: shape of the logits as given (the gradient is returned in it)
    logits: object  #: flat float64 logits (a GPU array when ``on_device``)
    targets: object  #: flat float64 labels (0/1) or IoU targets (0 or (0, 1]) (a GPU array when ``on_device``)
    delta: float
    labels_name: str  #: "labels" or "targets" (for messages)
    continuous: bool  #: IoU targets (RS) rather than 0/1 labels (AP)
    self_rank: str
    tie_value: float
    self_value: float  #: the j = i term of rank^+(i) under ``self_rank`` (primitives.self_term)
    normalization: str
    interpolated: bool = False
    threshold: bool = True
    tied_negatives: str = "above"
    on_device: bool = False  #: arrays on the GPU; their values are checked by the CUDA glue
    raw: tuple = ()  #: the original (logits, labels) of a GPU call (for :meth:`on_host`)
    #: False: the values (finite logits, label values) are left to the kernel's first pass
    #: (``backend="numba"``: host float32 / float64 arrays as given; GPU input), which calls
    #: :meth:`check_values` to raise the validator's error when it finds a bad value
    values_checked: bool = True

    @property
    def exact(self) -> bool:
        """delta = 0: the exact step function."""
        return self.delta == 0.0

    @property
    def pos(self) -> np.ndarray:
        """Indices of positives (target > 0)."""
        return np.flatnonzero(self.targets > 0)

    @property
    def neg(self) -> np.ndarray:
        """Indices of negatives (target == 0)."""
        return np.flatnonzero(self.targets == 0)

    def empty_result(self, **terms) -> LossResult:
        """The defined result for zero positives: loss 0, zero gradient."""
        return LossResult(0.0, np.zeros(self.shape), {k: float(v) for k, v in terms.items()})

    def check_values(self) -> None:
        """Raise the validator's error for the first bad value (host input; GPU input: :meth:`on_host`)."""
        if self.on_device:
            self.on_host()
        else:
            check_ranking_values(self.logits, self.targets, self.labels_name, self.continuous)

    def on_host(self) -> "RankingInput":
        """This input with float64 host arrays, values checked (raises the validator's error for bad values)."""
        if not self.on_device:
            if self.values_checked:
                return self
            self.check_values()
            return replace(self, logits=np.asarray(self.logits, np.float64),
                           targets=np.asarray(self.targets, np.float64), values_checked=True)
        s, t = (_to_host(a) for a in self.raw)
        return replace(self, logits=_host_values(s, "logits"), targets=_host_values(t, self.labels_name,
                                                                                    continuous=self.continuous),
                       on_device=False, raw=(), values_checked=True)

    def wrap_result(self, result: LossResult) -> LossResult:
        """A host result as this input's backend returns it (gradient on the GPU for GPU input)."""
        if not (self.on_device and is_device_array(self.raw[0])):
            return result
        from numba import cuda  # only reached for GPU input, where numba.cuda is in use

        return LossResult(result.loss, cuda.to_device(np.ascontiguousarray(result.grad)), result.terms)


def normalizer(num_pos: int, normalization: str) -> float:
    """Z of BRL Eq. 3.5: |P| (the papers and the authors' code) or 1 (no normalisation)."""
    return float(num_pos) if normalization == "positives" else 1.0


def _to_host(x):
    if hasattr(x, "copy_to_host"):
        return x.copy_to_host()
    if hasattr(x, "__cuda_array_interface__"):
        from numba import cuda

        return cuda.as_cuda_array(x).copy_to_host()
    return x


def _host_values(arr, name, continuous=None):
    out = as_float_array(arr, name, copy=False)
    if continuous is True:
        check_iou_targets(out, name)
    elif continuous is False:
        check_binary_labels(out, name)
    return out.reshape(-1)


def _check_labels_fast(t: np.ndarray, name: str, continuous: bool) -> None:
    """Label values in O(n) with reductions (the detailed check only when they fail)."""
    lo, hi = t.min(), t.max()
    ok = lo >= 0 and hi <= 1  # False for NaN as well
    if ok and not continuous:
        ok = not np.any((t > 0) & (t < 1))
    if not ok:
        (check_iou_targets if continuous else check_binary_labels)(t, name)


def _device_meta(x, name: str):
    """Shape of a GPU array after the host-side checks (dtype, contiguity); values are the glue's."""
    dtype = np.dtype(getattr(x, "dtype", None) or x.__cuda_array_interface__["typestr"])
    if dtype.kind not in "biuf":
        raise TypeError(f"{name} must have a real numeric or boolean dtype, got dtype {dtype}")
    if dtype.kind == "f" and dtype.itemsize not in (4, 8):
        raise TypeError(f"{name} on the GPU must be float32 or float64 for backend='cuda', got {dtype}")
    shape = tuple(x.shape)
    if int(np.prod(shape)) == 0:
        raise ValueError(f"{name} is empty; at least one element is required")
    return shape


def validate_ranking(name: str, logits, labels, delta, *, labels_name: str, continuous: bool, self_rank,
                     tie_value, normalization, interpolated=False, threshold=True, tied_negatives="above",
                     backend: str = "numpy") -> RankingInput:
    """Validate one call of loss ``name`` of the AP / RS family (every check, in this order:
    arrays, shapes, label values, delta, normalization, self_rank / tie_value, the bucketed
    options, interpolated).  ``continuous=False``: ``labels`` must be 0/1 (bool allowed);
    ``continuous=True``: IoU targets in [0, 1], positives > 0.  Time O(n)."""
    device = backend == "cuda" and (is_device_array(logits) or is_device_array(labels))
    if device:
        shape = _device_meta(logits, "logits") if is_device_array(logits) else None
        t_shape = _device_meta(labels, labels_name) if is_device_array(labels) else None
        if shape is None:
            s = as_float_array(logits, "logits", copy=False)
            shape = s.shape
        if t_shape is None:
            t = as_float_array(labels, labels_name, copy=False)
            t_shape = t.shape
        if shape != t_shape:
            raise ValueError(f"logits has shape {shape} but {labels_name} has shape {t_shape}; they must match")
        s_flat = logits if is_device_array(logits) else s.reshape(-1)
        t_flat = labels if is_device_array(labels) else t.reshape(-1)
        raw = (logits, labels)
    else:
        keep = backend == "numba"  # the kernels read float32 / float64 as they are and check the values
        s = _host_array(logits, "logits", keep)
        t = _host_array(labels, labels_name, keep)
        check_same_shape(s, t, "logits", labels_name)
        shape = s.shape
        s_flat, t_flat, raw = s.reshape(-1), t.reshape(-1), ()
    opts = check_ranking_options(delta, self_rank=self_rank, tie_value=tie_value, normalization=normalization,
                                 interpolated=interpolated, threshold=threshold, tied_negatives=tied_negatives)
    delta, self_value, interpolated, threshold = opts.delta, opts.self_value, opts.interpolated, opts.threshold
    deferred = device or backend == "numba"
    if not deferred:
        check_ranking_values(s_flat, t_flat, labels_name, continuous)
    return RankingInput(name, shape, s_flat, t_flat, delta, labels_name, continuous, self_rank, float(tie_value),
                        float(self_value), normalization, interpolated, threshold, tied_negatives, device, raw,
                        values_checked=not deferred)


#: dtypes the numba kernels read in place (widened to float64 value by value, exactly)
_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _host_array(x, name: str, keep: bool) -> np.ndarray:
    """``x`` as a host array with its type, dtype and size checked, values not yet: a float32 /
    float64 ndarray as it is when ``keep`` (the numba kernels read it in place: no float64 copy, which
    at 50K logits costs more than the checks), anything else as float64."""
    if keep and type(x) is np.ndarray and x.dtype in _KERNEL_DTYPES:  # (not subclasses: np.matrix stays 2-D)
        if x.size == 0:
            raise ValueError(f"{name} is empty; at least one element is required")
        return x
    return as_float_array(x, name, copy=False, check_finite=False)


def check_ranking_values(logits: np.ndarray, targets: np.ndarray, labels_name: str, continuous: bool) -> None:
    """The value checks of :func:`validate_ranking`: finite logits and labels, then labels 0/1 (or IoU
    targets in [0, 1]).  O(n): reductions, the detailed (allocating) check only when they fail."""
    check_finite_values(logits, "logits")
    check_finite_values(targets, labels_name)
    _check_labels_fast(targets, labels_name, continuous)


@dataclass(frozen=True)
class RankingOptions:
    """The checked options of an AP / RS family call (:func:`check_ranking_options`)."""

    delta: float
    self_value: float  #: the j = i term of rank^+(i) (primitives.self_term)
    tie_value: float
    normalization: str
    interpolated: bool
    threshold: bool
    tied_negatives: str


def check_ranking_options(delta, *, self_rank, tie_value, normalization, interpolated=False, threshold=True,
                          tied_negatives="above") -> RankingOptions:
    """Every option of the AP / RS family, checked in one order with one set of messages.

    The option part of :func:`validate_ranking`; the torch adapters, modules and drop-ins call it
    too, so that they reject exactly what the reference rejects (``interpolated="no"`` and
    ``threshold=1`` are TypeErrors, ``tie_value=0.3`` a ValueError whatever delta is).  O(1).
    """
    delta = check_delta(delta)
    check_choice(normalization, "normalization", NORMALIZATION_CHOICES)
    self_value = self_term(delta, self_rank, tie_value)  # checks self_rank and tie_value
    check_choice(tied_negatives, "tied_negatives", TIED_NEGATIVES_CHOICES)
    threshold = check_bool(threshold, "threshold")
    interpolated = check_bool(interpolated, "interpolated")
    return RankingOptions(delta, float(self_value), float(tie_value), normalization, interpolated, threshold,
                          tied_negatives)


def parse_ranking_input(logits, labels, delta, *, labels_name: str, continuous: bool,
                        normalization: str) -> RankingInput:
    """Arrays and delta of an AP / RS family call (the conventions at their defaults); kept for callers
    that only need the arrays checked."""
    return validate_ranking("", logits, labels, delta, labels_name=labels_name, continuous=continuous,
                            self_rank="one", tie_value=1.0, normalization=normalization)

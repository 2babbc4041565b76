"""Input checks shared by every reference function.

Every public reference function runs its inputs through these helpers so that
bad input fails with a message that names the argument and the rule it broke,
never with a traceback from deep inside the arithmetic.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = [
    "as_float_array",
    "check_finite_values",
    "check_same_shape",
    "check_delta",
    "check_binary_labels",
    "check_iou_targets",
    "check_choice",
    "check_positive_float",
    "check_bool",
    "check_tie_value",
    "check_int",
    "check_optional_real",
    "finite_float_array",
    "require",
]

#: accepted values of the ``tie_value`` convention (H(0) at delta = 0)
TIE_VALUE_CHOICES = (1.0, 0.5, 0.0)


def as_float_array(x, name: str, allow_empty: bool = False, copy: bool = True,
                   check_finite: bool = True) -> np.ndarray:
    """Return ``x`` as a float64 ndarray (a copy, or with ``copy=False`` the array itself when it
    already is float64), or raise.

    Accepts anything ``numpy.asarray`` accepts (lists, NumPy arrays, CPU torch
    tensors).  Rejects GPU arrays, non-real dtypes, empty input (unless
    ``allow_empty``) and NaN / Inf values (``check_finite=False`` leaves the values to the
    caller: :func:`check_finite_values`).  Cost: O(n) time; the finiteness check is two
    reductions (min, max) without a temporary unless it fails.
    """
    if x is None:
        raise TypeError(f"{name} must be array-like (a list, NumPy array or tensor), got None")
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be array-like (a list, NumPy array or tensor), got {type(x).__name__}")
    if hasattr(x, "__cuda_array_interface__"):
        raise TypeError(
            f"{name} lives on a GPU; the NumPy reference needs host memory "
            f"(call .cpu() first, or use backend='cuda' where available)"
        )
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch
        x = _tensor_to_numpy(x, name)
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic objects
        raise TypeError(f"{name} must be array-like, got {type(x).__name__}") from exc
    if arr.dtype == object:
        raise TypeError(f"{name} must be a numeric array, got an object array")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must have a real numeric or boolean dtype, got dtype {arr.dtype}")
    if arr.size == 0 and not allow_empty:
        raise ValueError(f"{name} is empty; at least one element is required")
    out = np.array(arr, dtype=np.float64, copy=True) if copy else np.asarray(arr, dtype=np.float64)
    if check_finite:
        check_finite_values(out, name)
    return out


def check_finite_values(arr: np.ndarray, name: str) -> np.ndarray:
    """Every entry of the real array ``arr`` must be finite.  Two reductions (min, max), no temporary
    unless the check fails (then the message counts the bad entries)."""
    if arr.size and not (np.isfinite(arr.min()) and np.isfinite(arr.max())):  # NaN propagates through min / max
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s); all entries must be finite")
    return arr


def _tensor_to_numpy(x, name: str) -> np.ndarray:
    """A torch tensor (any device NumPy can reach, any real dtype) as a NumPy array, without importing torch.

    Floating tensors go through ``.double()`` first, so float16 / bfloat16 (which NumPy cannot hold)
    convert to float64 exactly; complex tensors and tensors without data (``device="meta"``) are a
    TypeError naming ``name``.
    """
    if getattr(x, "is_complex", None) is not None and x.is_complex():
        raise TypeError(f"{name} must have a real numeric or boolean dtype, got dtype {x.dtype}")
    device = getattr(x, "device", None)
    if getattr(device, "type", None) == "meta":
        raise TypeError(f"{name} is a meta tensor (no data); pass a tensor with values")
    try:
        t = x.detach().cpu()
        if getattr(t, "is_floating_point", None) is not None and t.is_floating_point() and hasattr(t, "double"):
            t = t.double()  # float16 / bfloat16 -> float64 is exact
        return t.numpy()
    except (RuntimeError, TypeError, NotImplementedError) as exc:
        raise TypeError(f"{name} could not be read as a host array ({type(exc).__name__}: {exc})") from exc


def check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}; they must match")


def _real_scalar(value, name: str) -> float:
    """A Python/NumPy real scalar (or 0-d array / one-element tensor) as float."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, not a bool")
    if hasattr(value, "item") and not isinstance(value, (numbers.Real, np.generic)):
        if int(np.prod(getattr(value, "shape", ()) or (1,))) != 1:
            raise TypeError(f"{name} must be a scalar, got an array of shape {tuple(value.shape)}")
        value = value.item()
    if not isinstance(value, (numbers.Real, np.integer, np.floating)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def check_delta(delta, name: str = "delta") -> float:
    """``delta`` must be a finite real number >= 0 (0 means the exact step)."""
    delta = _real_scalar(delta, name)
    if not np.isfinite(delta):
        raise ValueError(f"{name} must be finite, got {delta}")
    if delta < 0:
        raise ValueError(f"{name} must be >= 0 (0 selects the exact step function), got {delta}")
    return delta


def check_positive_float(value, name: str, allow_zero: bool = False) -> float:
    """A finite real > 0 (or >= 0 with ``allow_zero``)."""
    value = _real_scalar(value, name)
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        rule = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {rule}, got {value}")
    return value


def check_binary_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """Labels of a binary ranking loss must be 0 (negative) or 1 (positive)."""
    bad = (labels != 0) & (labels != 1)
    if np.any(bad):
        example = labels[bad].ravel()[0].item()
        raise ValueError(f"{name} must contain only 0 (negative) and 1 (positive); found {example!r}")
    return labels


def check_iou_targets(targets: np.ndarray, name: str = "targets") -> np.ndarray:
    """Continuous labels: 0 for negatives, IoU in (0, 1] for positives."""
    bad = (targets < 0) | (targets > 1)
    if np.any(bad):
        example = targets[bad].ravel()[0].item()
        raise ValueError(
            f"{name} must lie in [0, 1] (0 = negative, IoU in (0, 1] = positive); found {example!r}"
        )
    return targets


def check_tie_value(tie_value, delta=None) -> float:
    """``tie_value`` (H(0) at delta = 0) must be 0.0, 0.5 or 1.0.

    The one rule of every loss: with ``delta=None`` it is checked whatever delta
    is (the AP / RS family: a bad convention value never passes silently, even
    where it is unused); with a ``delta`` it is checked only at ``delta == 0``,
    where it is used (families whose tie_value matters only for the exact step).
    """
    if isinstance(tie_value, (bool, np.bool_)) or not isinstance(tie_value, (numbers.Real, np.integer, np.floating)):
        raise ValueError(f"tie_value must be 0.0, 0.5 or 1.0, got {tie_value!r}")
    if (delta is None or delta == 0) and tie_value not in TIE_VALUE_CHOICES:
        raise ValueError(f"tie_value must be 0.0, 0.5 or 1.0, got {tie_value!r}")
    return float(tie_value)


def check_optional_real(value, name: str):
    """``None``, or a finite real number (the ``empty_*_score`` options of DR)."""
    if value is None:
        return None
    value = _real_scalar(value, name)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite or None, got {value}")
    return value


def check_int(value, name: str, minimum: int) -> int:
    """An integer >= ``minimum`` (a float with an integral value is accepted; bool is not)."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        else:
            raise TypeError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_choice(value, name: str, choices) -> object:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)!r}, got {value!r}")
    return value


def check_bool(value, name: str) -> bool:
    """A flag must be a real bool (or NumPy bool): ``"no"`` or ``2`` are errors, not truthy values."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def require(module: str, feature: str, extra: str = "extras"):
    """Import an optional dependency, or raise an ImportError that says which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{feature} needs the optional dependency {module!r}: "
                          f"pip install 'rankspec[{extra}]'") from exc

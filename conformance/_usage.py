"""Errors of the conformance API and the checks of its arguments shared by ``check`` and ``check_head``."""

from __future__ import annotations

import math
import numbers
from typing import List, Optional

from ._constants import DEVICES

__all__ = ["UsageProblem", "NonConformant", "check_device", "check_names", "check_number", "check_count",
           "check_seed"]


class UsageProblem(ValueError):
    """Bad arguments to :func:`check` (unknown loss, bad dtype, CUDA unavailable, ...)."""


class NonConformant(AssertionError):
    """Raised by :func:`assert_conforms`; ``.report`` holds the :class:`CheckReport`."""

    def __init__(self, message: str, report: "CheckReport"):
        super().__init__(message)
        self.report = report



def check_device(device: str) -> None:
    """Raise :class:`UsageProblem` unless ``device`` is usable (``"cuda"`` needs torch with CUDA)."""
    if device not in DEVICES:
        raise UsageProblem(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cuda":
        try:
            import torch
        except ImportError:
            raise UsageProblem("device 'cuda' needs torch, which is not installed") from None
        if not torch.cuda.is_available():
            raise UsageProblem("device 'cuda' was requested but torch.cuda.is_available() is False")


def check_names(value, allowed, what: str, hint=None) -> List[str]:
    """``value`` (a name, a list of names or None for all of ``allowed``) as a list of distinct allowed names.

    ``hint(name)`` may return extra words for the error message of a name that is not allowed.
    """
    if value is None:
        return list(allowed)
    items = [value] if isinstance(value, str) else list(value)
    for v in items:
        if v not in allowed:
            extra = hint(v) if hint is not None else ""
            raise UsageProblem(f"{what} must be one of {', '.join(allowed)}{extra}, got {v!r}")
    if not items:
        raise UsageProblem(f"at least one {what} is required")
    return list(dict.fromkeys(items))


# -- numeric options: no value may make a check vacuous (a negative or infinite tolerance, zero cases) --------

def check_number(value, name: str, *, positive: bool = False, allow_none: bool = True) -> Optional[float]:
    """``value`` as a float: a finite real number ``>= 0`` (``> 0`` when ``positive``); ``None`` passes when
    ``allow_none``.  Raises :class:`UsageProblem` naming ``name`` otherwise (``nan``, ``inf``, ``-1``, ``"1"``,
    ``True``): a tolerance of ``inf`` or ``-1`` would make every target pass or fail whatever it computes."""
    if value is None and allow_none:
        return None
    rule = "> 0" if positive else ">= 0"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UsageProblem(f"{name} must be a finite number {rule}, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise UsageProblem(f"{name} must be a finite number {rule}, got {value!r}")
    return v


def check_count(value, name: str, *, minimum: int = 1, allow_none: bool = False) -> Optional[int]:
    """``value`` as an int ``>= minimum`` (``None`` passes when ``allow_none``); else :class:`UsageProblem`."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise UsageProblem(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_seed(value, name: str = "seed") -> int:
    """A seed: an integer in ``[0, 2**32)`` (what NumPy's and hypothesis's generators accept alike)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < 2**32:
        raise UsageProblem(f"{name} must be an integer in [0, 2**32), got {value!r}")
    return int(value)

"""Optional dependencies of the commands, checked before any work (exit code 2, one line naming the fix).

The install hint matches the README's install from a clone (``pip install -e ".[extras]"`` in the
rankspec checkout), and names the option that avoids the dependency where there is one.
"""

from __future__ import annotations

import importlib
from typing import Optional

from ._errors import UsageError

__all__ = ["INSTALL_EXTRAS", "require_plotting", "require_torch"]

#: the README's install of the optional extras from a clone
INSTALL_EXTRAS = 'pip install -e ".[extras]"'
#: the README's install of PyTorch (the CPU build on our machines; any torch >= 2.0 works)
INSTALL_TORCH = "pip install torch==2.13.0"


def require_plotting(command: str, skip_option: Optional[str] = "--no-plot") -> None:
    """Raise :class:`UsageError` unless matplotlib imports (with its Agg backend)."""
    try:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg", force=True)
        importlib.import_module("matplotlib.pyplot")
    except Exception as exc:  # ImportError, or a broken install
        why = "is not installed" if isinstance(exc, ImportError) else f"does not load ({type(exc).__name__}: {exc})"
        alt = f", or pass {skip_option} to skip the plot" if skip_option else ""
        raise UsageError(f"the plots of {command} need matplotlib, which {why}: run {INSTALL_EXTRAS} in the rankspec "
                         f"clone (or pip install matplotlib){alt}") from None


def require_torch(command: str) -> None:
    """Raise :class:`UsageError` unless torch imports."""
    try:
        importlib.import_module("torch")
    except ImportError:
        raise UsageError(f"{command} trains torch models and needs PyTorch, which is not installed: run {INSTALL_TORCH} "
                         "(the README's version; any torch >= 2.0 works)") from None

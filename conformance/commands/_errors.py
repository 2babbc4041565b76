"""The CLI's usage error, in a module of its own so that every helper module of the commands
(:mod:`._common`, :mod:`._paths`, :mod:`._optional`) can import it without an import cycle."""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(Exception):
    """Raised by a command for bad arguments; reported as one ``error:`` line with exit code 2."""

"""'Did you mean' for every name a user types: commands, losses, paper keys, choices of any option.

:func:`suggest` is what :class:`rankspec.conformance.cli.ArgumentParser` calls for every invalid
choice, and what the commands call for names they check themselves (``equations --paper``,
``bench --losses``). Imports nothing of the CLI, so any command module can use it without a cycle.
"""

from __future__ import annotations

import difflib
import re
from typing import Iterable, List, Optional

__all__ = ["suggest", "did_you_mean", "match_casefold"]


def _norm(text: str) -> str:
    return re.sub(r"[\s_]+", "-", str(text).strip().casefold())


def match_casefold(value: str, choices: Iterable[str]) -> Optional[str]:
    """The choice equal to ``value`` ignoring case (and ``_`` vs ``-``), or ``None``.

    Returns ``None`` too when two choices differ only in case (an ambiguous match).
    """
    hits = [c for c in choices if _norm(c) == _norm(value)]
    return hits[0] if len(hits) == 1 else None


def suggest(value: str, choices: Iterable[str]) -> Optional[str]:
    """The choice a user most likely meant by ``value``, or ``None`` when nothing is close.

    Tried in order: the same name ignoring case and ``_``/``-``; the initials of a multi-word value
    (``rank-sort`` -> ``rs``, ``average precision`` -> ``ap``); a unique choice starting with the
    value (``rankdet-g`` -> ``rankdet-global``); the closest spelling (:func:`difflib.get_close_matches`,
    ratio >= 0.6: ``chek`` -> ``check``). O(len(choices) * len(value)^2) at worst; choices are few.
    """
    names = [str(c) for c in choices]
    if not names or value is None:
        return None
    value = str(value)
    hit = match_casefold(value, names)
    if hit is not None:
        return hit
    norm = _norm(value)
    by_norm = {}
    for c in names:
        by_norm.setdefault(_norm(c), c)
    words = [w for w in re.split(r"[^0-9a-z]+", norm) if w]
    if len(words) >= 2:
        initials = "".join(w[0] for w in words)
        if initials in by_norm:
            return by_norm[initials]
    if norm:
        starts = [c for n, c in by_norm.items() if n.startswith(norm)]
        if len(starts) == 1:
            return starts[0]
    close = difflib.get_close_matches(norm, list(by_norm), n=1, cutoff=0.6)
    return by_norm[close[0]] if close else None


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'rs'?"`` when :func:`suggest` finds a choice, else ``""``."""
    hit = suggest(value, choices)
    return f"; did you mean {hit!r}?" if hit is not None else ""

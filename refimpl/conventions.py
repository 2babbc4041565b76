"""Every convention the papers leave open, as data.

Each entry names a keyword argument, the functions that take it, its default,
its alternatives and what each authors' code does.  The conventions of a loss
live in its :class:`~rankspec.refimpl.record.LossRecord`; :func:`all_conventions`
merges them (one entry per keyword and title, ``applies_to`` = the records that
hold it plus the helper functions it names, ``default`` a per-function dict
where the records' defaults differ).  Conventions of functions that are not
loss records (helpers, utilities, families not yet on records) are added with
:func:`register_conventions`.  The Conventions docs page is generated from
:func:`all_conventions`, and the conformance harness searches these options
when it diagnoses a disagreeing implementation.  A convention that is not a
keyword argument (e.g. what happens with zero positives) is listed with
``keyword=None``: its behaviour is fixed and documented.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Dict, List, Tuple

from .record import Convention, records

__all__ = ["Convention", "register_conventions", "all_conventions", "by_keyword", "CONVENTIONS"]


_EXTRA: list = []


def register_conventions(*conventions: Convention) -> None:
    """Add conventions of functions that are not loss records (called at import of their module)."""
    for c in conventions:
        if not isinstance(c, Convention):
            raise TypeError(f"expected Convention, got {type(c).__name__}")
        if c not in _EXTRA:
            _EXTRA.append(c)


def _from_records() -> Tuple[Convention, ...]:
    """One Convention per (keyword, title) over every record, applies_to and defaults merged."""
    merged: Dict[tuple, Convention] = {}
    names: Dict[tuple, List[str]] = {}
    defaults: Dict[tuple, Dict[str, object]] = {}
    for rec in records():
        for c in rec.conventions:
            key = (c.keyword, c.title)
            base = merged.setdefault(key, c)
            if (base.description, base.authors, base.choices) != (c.description, c.authors, c.choices):
                raise ValueError(f"convention {c.title!r} of {rec.name} differs from another record's copy")
            names.setdefault(key, []).append(rec.name)
            defaults.setdefault(key, {})[rec.name] = c.default
    out = []
    for key, c in merged.items():
        applies = tuple(names[key]) + tuple(n for n in c.applies_to if n not in names[key])
        values = list(defaults[key].values())
        same = all(v == values[0] and type(v) is type(values[0]) for v in values)
        out.append(replace(c, applies_to=applies, default=values[0] if same else dict(defaults[key])))
    return tuple(out)


def all_conventions() -> Tuple[Convention, ...]:
    """Every convention of every loss (from the records) and of the registered helpers."""
    return _from_records() + tuple(_EXTRA)


def by_keyword(keyword: str, function: str | None = None) -> Convention:
    """The convention for ``keyword`` (of ``function``, when several families share a keyword)."""
    for c in all_conventions():
        if c.keyword == keyword and (function is None or function in c.applies_to):
            return c
    raise KeyError(f"no convention with keyword {keyword!r}" + (f" for {function}" if function else ""))


def __getattr__(name):
    if name == "CONVENTIONS":  # the AP / RS family's conventions, as this module used to list them
        return tuple(c for c in _from_records() if set(c.applies_to) & {"ap_loss", "rs_loss"})
    raise AttributeError(name)

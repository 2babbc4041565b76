"""Reference results of the conformance checks, cached across targets of one process.

:func:`reference_result` is the reference (the loss record's NumPy function, through its
:class:`~rankspec.conformance.specs.LossSpec`) on one case under given options, memoised in a
byte-bounded LRU cache (256 MiB), errors included.  Used by the harness, the shrinker and the
diagnosis (:mod:`._hypotheses` reads the reference's terms to name a loss's own triggers).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, Optional, Tuple

from rankspec.refimpl import LossResult

from .specs import LossSpec

__all__ = ["reference_result", "clear_reference_cache"]


class _LRU:
    def __init__(self, max_bytes: int = 256 * 2**20):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.data: "OrderedDict[tuple, Tuple[object, int]]" = OrderedDict()

    def get(self, key):
        item = self.data.get(key)
        if item is None:
            return None
        self.data.move_to_end(key)
        return item[0]

    def put(self, key, value, size: int):
        if key in self.data:
            return
        self.data[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes and len(self.data) > 1:
            _, (_, s) = self.data.popitem(last=False)
            self.bytes -= s


_REFERENCE_CACHE = _LRU()


def clear_reference_cache() -> None:
    _REFERENCE_CACHE.data.clear()
    _REFERENCE_CACHE.bytes = 0


def reference_result(spec: LossSpec, case, options: Optional[Mapping] = None) -> LossResult:
    """The reference on ``case`` under ``options`` (default: the spec's), cached."""
    opts = spec.expected_options() if options is None else dict(options)
    key = (spec.name, repr(sorted(opts.items(), key=lambda kv: kv[0])), case.key())
    hit = _REFERENCE_CACHE.get(key)
    if hit is not None:
        if isinstance(hit, Exception):
            raise hit
        return hit
    try:
        result = spec.reference(case.logits, case.targets, case.delta, opts, case.extras)
    except Exception as exc:
        _REFERENCE_CACHE.put(key, exc, 256)
        raise
    _REFERENCE_CACHE.put(key, result, int(result.grad.nbytes) * (1 + len(spec.grad_inputs)) + 512)
    return result



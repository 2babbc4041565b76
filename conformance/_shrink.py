"""Shrinking a failing case down to a minimal counterexample.

:func:`shrink_failure` is the one entry point, for every kind of case
(:class:`~rankspec.conformance._evaluate.CaseKind`): the kind's cheap first pass
(``shrink_start``: hypothesis re-running its search for flat inputs), then the
kind's shrinker, keeping a candidate only while it fails the same way (same
failure signature: "mismatch", "error:<Type>", ...).  Two shrinkers:

* :class:`CandidateShrinker` - greedy: take the first smaller variant the kind
  offers (``candidates(case) -> (edit, case)``) that still fails, until none
  does (head batches: images, levels, rows / columns, anchors, classes, boxes);
* :class:`Shrinker` - delta debugging of flat inputs (below).

:class:`Shrinker` runs after hypothesis has shrunk what it can (sizes, kinds, deltas): removes
elements (``ddmin`` over the flat input, rows and columns of 2-D inputs,
flattening 2-D to 1-D), then simplifies values (logits to small multiples of
1/4, IoUs to 1 or 1/2, delta to the default, grad_output to 1), keeping each
step only if the case still fails the same way.  Bounded by a number of
target calls and seconds.

Every array of the case (logits, targets and the spec's extra inputs) is cut
together.  ``layout="elements"`` (the ranking losses: every array has the
logits' shape) removes single elements; ``layout="rows"`` (RankDet, DR, GIoU:
the first axis is the sample / box axis of every array) removes whole rows.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable

import numpy as np

__all__ = ["shrink_failure", "Shrinker", "CandidateShrinker"]


class _Budget(Exception):
    pass


def _contiguous(case):
    """A :class:`~._hostile.LayoutCase` as the plain case it views (None when ``case`` is already plain)."""
    from rankspec.refimpl.cases import Case

    if type(case) is Case:
        return None
    fields = {f: getattr(case, f) for f in ("logits", "targets", "delta", "grad_output", "kind", "source",
                                            "extras", "positive_above")}
    return Case(**fields)


def shrink_failure(evaluator, first, seconds: float):
    """Minimal failing case with the same failure signature as ``first``; returns (evaluation, steps)."""
    signature = first.comparison.failure
    start = time.monotonic()
    best, steps = evaluator.kind.shrink_start(evaluator, first, seconds / 2)

    def fails(case):
        try:
            return evaluator.evaluate(case).comparison.failure == signature
        except Exception:  # the reference rejects the simplified input: not the same failure
            return False

    remaining = max(0.0, seconds - (time.monotonic() - start))
    shrinker = evaluator.kind.shrinker(fails, remaining)
    case = shrinker.shrink(best.case)
    if case is best.case:
        return best, steps
    ev = evaluator.evaluate(case)
    if ev.comparison.failure != signature:  # flaky target: keep what the first pass found
        return best, steps
    return ev, steps + shrinker.steps


class _Calls:
    """Counts calls of ``fails`` against a budget of calls and seconds; ``steps`` counts the accepted ones."""

    def __init__(self, fails: Callable, max_calls: int, max_seconds: float):
        self._fails = fails
        self.max_calls = max_calls
        self.deadline = time.monotonic() + max_seconds
        self.calls = 0
        self.steps = 0

    def fails(self, case) -> bool:
        if self.calls >= self.max_calls or time.monotonic() > self.deadline:
            raise _Budget()
        self.calls += 1
        ok = bool(self._fails(case))
        if ok:
            self.steps += 1
        return ok


class CandidateShrinker(_Calls):
    """Greedy shrinking over the smaller variants ``candidates(case)`` yields as ``(edit, case or None)``.

    ``record(candidate, edit, parent)`` returns the candidate as it is kept (e.g. with the edit appended to the
    parent's history).
    """

    def __init__(self, fails: Callable, candidates: Callable, *, record: Callable = lambda case, edit, parent: case,
                 max_calls: int = 400, max_seconds: float = 10.0):
        super().__init__(fails, max_calls, max_seconds)
        self.candidates = candidates
        self.record = record

    def shrink(self, case):
        best = case
        try:
            improved = True
            while improved:
                improved = False
                for edit, cand in self.candidates(best):
                    if cand is None:
                        continue
                    cand = self.record(cand, edit, best)
                    if self.fails(cand):
                        best, improved = cand, True
                        break
        except _Budget:
            pass
        return best


class Shrinker(_Calls):
    def __init__(self, fails: Callable, *, max_calls: int = 600, max_seconds: float = 20.0,
                 deltas=(), fixed_delta: bool = False, iou: bool = False, layout: str = "elements"):
        super().__init__(fails, max_calls, max_seconds)
        self.deltas = tuple(deltas)
        self.fixed_delta = fixed_delta
        self.iou = iou
        self.layout = layout

    def shrink(self, case):
        best = case
        try:
            best = self._structure(best)
            best = self._meta(best)
            best = self._values(best)
            best = self._structure(best)
        except _Budget:
            pass
        return best

    # -- element removal ----------------------------------------------------------------------------
    def _structure(self, case):
        if getattr(case, "layout", "contiguous") != "contiguous":
            plain = _contiguous(case)  # does it fail without the non-contiguous view too?
            if plain is not None and self.fails(plain):
                case = plain
        if self.layout == "rows":
            case, critical = self._bisect_size(case)
            return case if critical else self._ddmin(case)
        if case.logits.ndim > 1:
            flat = case.map_arrays(np.ravel)
            if self.fails(flat):
                case = flat
        if case.logits.ndim == 2 and case.size > 64:
            return case  # a large 2-D input: keep its layout (dropping rows one by one is too slow)
        if case.logits.ndim == 2:
            case = self._drop_axis(case, 0)
            case = self._drop_axis(case, 1)
        if case.logits.ndim == 1:
            case, critical = self._bisect_size(case)
            if not critical:
                case = self._ddmin(case)
        return case

    def _bisect_size(self, case):
        """Size first: the shortest front-cut (then back-cut) of the first axis that still fails, by bisection.

        A failure that needs a large input (a chunk size, a block boundary) shrinks to just above its
        threshold in O(log n) calls.  Returns ``(case, critical)``: ``critical`` when removing one more
        element makes it pass (element-wise delta debugging could not shrink it further).
        """
        n = case.logits.shape[0] if case.logits.ndim else 1
        if n <= 64:
            return case, False
        for side in ("front", "back"):
            n = case.logits.shape[0]
            lo, hi = 1, n  # the shortest failing length is in [lo, hi]; hi fails
            best = case
            while lo < hi:
                mid = (lo + hi) // 2
                cand = case.map_arrays(lambda a: a[n - mid:] if side == "front" else a[:mid])
                if self.fails(cand):
                    hi, best = mid, cand
                else:
                    lo = mid + 1
            case = best
        n = case.logits.shape[0]
        if n <= 64:
            return case, False
        keep = np.ones(n, dtype=bool)
        keep[n // 2] = False  # neither end could be cut: does dropping a middle element pass as well?
        critical = not self.fails(case.map_arrays(lambda a: a[keep]))
        return case, critical

    def _drop_axis(self, case, axis):
        k = 0
        while case.logits.shape[axis] > 1 and k < case.logits.shape[axis]:
            keep = [i for i in range(case.logits.shape[axis]) if i != k]
            cand = case.map_arrays(lambda a: np.take(a, keep, axis=axis))
            if self.fails(cand):
                case = cand
            else:
                k += 1
        return case

    def _ddmin(self, case):
        """Delta debugging over the first axis (elements of 1-D inputs, or rows)."""
        def length(c):
            return c.logits.shape[0] if c.logits.ndim else 1

        chunks = 2
        while length(case) >= 2:
            n = length(case)
            size = -(-n // chunks)
            removed = False
            start = 0
            while start < length(case) and length(case) >= 2:
                keep = np.ones(length(case), dtype=bool)
                keep[start:start + size] = False
                if keep.any():
                    cand = case.map_arrays(lambda a: a[keep])
                    if self.fails(cand):
                        case = cand
                        removed = True
                        continue
                start += size
            if removed:
                chunks = max(chunks - 1, 2)
            elif size == 1:
                break
            else:
                chunks = min(chunks * 2, length(case))
        return case

    # -- simpler deltas / grad_output / values -----------------------------------------------------------
    def _meta(self, case):
        if case.grad_output != 1.0:
            cand = replace(case, grad_output=1.0)
            if self.fails(cand):
                case = cand
        if not self.fixed_delta:
            for d in self.deltas:
                if d == case.delta:
                    break  # deltas are tried in order of simplicity
                cand = replace(case, delta=d)
                if self.fails(cand):
                    case = cand
                    break
        return case

    def _values(self, case):
        dtype = case.logits.dtype
        # whole-array roundings first (cheap), then element by element
        for step in (1.0, 0.5, 0.25):
            cand = case.with_arrays(np.round(case.logits / step) * step, case.targets)
            if not np.array_equal(cand.logits, case.logits) and self.fails(cand):
                case = cand
                break
        if self.iou:
            for value in (1.0, 0.5):
                t = np.where(case.targets > 0, value, 0.0)
                cand = case.with_arrays(case.logits, t)
                if not np.array_equal(t.astype(dtype), case.targets) and self.fails(cand):
                    case = cand
                    break
        if case.size <= 64:
            flat_s = case.logits.ravel().copy()
            for i in range(flat_s.size):
                x = float(flat_s[i])
                options = [0.0, float(np.round(x)), float(np.round(2 * x) / 2), float(np.round(4 * x) / 4)]
                for v in dict.fromkeys(options):
                    if v == x or abs(v) > abs(x) + 1:
                        continue
                    s2 = case.logits.ravel().copy()
                    s2[i] = v
                    cand = case.with_arrays(s2.reshape(case.shape), case.targets)
                    if self.fails(cand):
                        case = cand
                        break
            if self.iou:
                for i in range(case.size):
                    y = float(case.targets.ravel()[i])
                    if y <= 0:
                        continue
                    for v in (1.0, 0.5, round(y * 4) / 4 or 0.25):
                        if v == y:
                            break
                        t2 = case.targets.ravel().copy()
                        t2[i] = v
                        cand = case.with_arrays(case.logits, t2.reshape(case.shape))
                        if self.fails(cand):
                            case = cand
                            break
        return case

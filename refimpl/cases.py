"""Sample inputs of every loss: the case builders its :class:`~rankspec.refimpl.record.LossRecord` names.

What PyTorch's OpInfo calls ``sample_inputs``: each record's ``case_builder``
(``"rankspec.refimpl.cases:build_ranking_case"``, ...) names a function here that
draws one input of the loss.  They live in ``refimpl`` (NumPy only, no torch,
nothing of the conformance kit) so that a record is complete on its own; the
conformance harness (:mod:`rankspec.conformance._cases`) drives them with
hypothesis, the generic record tests with a NumPy generator.

A :class:`Case` is one call of a loss: logits and labels / IoU targets (already
in the checked dtype, so the reference sees exactly the values the target
sees), the further inputs (``extras``), a delta and the incoming gradient
``grad_output`` used in backward.

Every builder has the signature ``builder(src, loss, cfg, *, kind=None, size=None, images=None) -> Case``:

* ``src`` is a source of choices (:class:`Source`: ``integer(lo, hi)``, simplest at ``lo``; hypothesis
  shrinks integers towards their lower end, so the first option of every choice is the simplest);
* ``loss`` is the record, or anything with its attributes ``label_kind``, ``default_delta``,
  ``bucketed`` and either ``extra_inputs`` (objects with ``.name``: a conformance spec) or
  ``input_names`` (a record: the names after the first two are the extra inputs, in call order);
  :func:`extra_names` reads them;
* ``cfg`` (:class:`CaseConfig`) fixes the dtype, an optional fixed delta and caps on size and work.

What :func:`build_ranking_case` generates:

* sizes 1 to 10^5 (40% <= 12, 45% <= 400, rarely <= 5000, very rarely
  up to ``max_size``), positives capped so that ``n * |P| <= max_work`` (the
  readable reference is O(n |P|));
* kinds: ``grid`` (values k/4: exact ties everywhere), ``random``, ``ties``
  (few distinct values), ``separated`` (every positive above every negative),
  ``no_relevant_negative`` (every negative below ``min positive - delta``),
  ``equal_iou`` (all positives share one IoU), ``large_magnitude`` (|logits| up
  to 1e5);
* positive fraction 0 (no positives) to 1 (no negatives); delta from a grid
  that includes 0; 1-D or 2-D ``(images, anchors)`` shapes; grad_output in
  {1, 2, 0.5, -1.5}.

The other families' builders (RankDetNet, DR, APE, GIoU, aLRP) document their kinds.
Time and memory of every builder: O(size) (O(size * classes) for the class-id families).
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence, Tuple

import numpy as np

from .constants import GRAD_OUTPUTS

__all__ = ["Case", "CaseConfig", "Source", "RngSource", "KINDS", "RANKDET_KINDS", "DR_KINDS", "APE_KINDS",
           "GIOU_KINDS", "ALRP_KINDS", "build_ranking_case", "build_rankdet_case", "build_dr_case",
           "build_ape_case", "build_giou_case", "build_alrp_case", "resolve_builder", "extra_names",
           "sample_cases", "fixed_probe_case", "delta_grid", "LOW_PRECISIONS", "round_to_precision"]

#: narrow float formats a case can hold (NumPy has no bfloat16, so such a case stores its floating arrays in
#: float32, holding values exactly representable in the narrow format: :attr:`Case.precision`)
LOW_PRECISIONS = ("float16", "bfloat16")
_FINITE_MAX = {"float16": 65504.0, "bfloat16": 3.3895313892515355e38}


def round_to_precision(a, precision: str) -> np.ndarray:
    """``a`` rounded to the nearest ``precision`` (``"float16"`` / ``"bfloat16"``) value, returned as float32.

    Values are first rounded to float32, clipped to the format's largest finite value (so no finite input
    becomes infinite), then rounded to nearest, ties to even: float16 through NumPy's float16; bfloat16 (the
    top 16 bits of a float32: 8 exponent bits, 7 mantissa bits) by adding ``0x7FFF`` plus the lowest kept
    bit to the float32 bit pattern and clearing the low 16 bits.  NaN stays NaN.  O(n) time and memory.
    """
    if precision not in LOW_PRECISIONS:
        raise ValueError(f"precision must be one of {list(LOW_PRECISIONS)!r}, got {precision!r}")
    x = np.asarray(a, dtype=np.float64)
    big = _FINITE_MAX[precision]
    x = np.clip(x, -big, big).astype(np.float32)  # NaN passes through clip
    if precision == "float16":
        return x.astype(np.float16).astype(np.float32)
    u = np.ascontiguousarray(x).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    out = u.astype(np.uint32).view(np.float32).reshape(x.shape)
    return np.where(np.isnan(x), x, out)

KINDS = ("grid", "random", "ties", "separated", "no_relevant_negative", "equal_iou", "large_magnitude")
POS_FRACTIONS = (0.25, 0.5, 0.1, 1.0, 0.0, 0.02, 0.9)
EXTRA_DELTAS = (0.0, 1.0, 0.5, 0.25, 0.1, 2.0)


@dataclass(frozen=True)
class Case:
    """One input of a loss, in the dtype the target is checked in.

    ``logits`` is the first (always differentiable) argument and ``targets``
    the second (labels, IoU targets, class ids, target boxes); ``extras`` hold
    the spec's further inputs (:attr:`LossSpec.extra_inputs`) in order.
    Floating arrays are in the checked dtype, integer arrays (class ids,
    levels, image ids) keep an integer dtype.  ``delta`` is ``None`` for a loss
    without one.  ``positive_above``: an entry of ``targets`` above it marks a
    positive (``None``: every row counts, e.g. boxes).
    """

    logits: np.ndarray
    targets: np.ndarray  #: 0/1 labels (binary losses) or 0 / IoU (continuous-label losses), or a family's labels
    delta: Optional[float]
    grad_output: float = 1.0
    kind: str = "generated"
    source: str = "generated"
    extras: Tuple[np.ndarray, ...] = ()
    positive_above: Optional[float] = 0.0
    #: ``None``, or the narrow format (:data:`LOW_PRECISIONS`) the case is checked in: its floating arrays are
    #: float32 holding values of that format (:func:`round_to_precision`); targets get tensors of that dtype
    precision: Optional[str] = None

    @property
    def dtype(self) -> str:
        """The NumPy dtype of the floating arrays (float32 for a :attr:`precision` case)."""
        return str(self.logits.dtype)

    @property
    def checked_dtype(self) -> str:
        """The dtype the case is checked in: :attr:`precision` when set, else :attr:`dtype`."""
        return self.precision or self.dtype

    @property
    def shape(self):
        return tuple(self.logits.shape)

    @property
    def size(self) -> int:
        return int(self.logits.size)

    @property
    def arrays(self) -> Tuple[np.ndarray, ...]:
        """Every array argument: logits, targets, then the extras."""
        return (self.logits, self.targets) + tuple(self.extras)

    @property
    def num_positives(self) -> int:
        if self.positive_above is None:
            return int(self.logits.shape[0]) if self.logits.ndim else 1
        return int(np.count_nonzero(self.targets > self.positive_above))

    def key(self) -> bytes:
        """Digest identifying the reference inputs (grad_output excluded)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(repr((self.dtype, self.shape, None if self.delta is None else float(self.delta))).encode())
        for a in self.arrays:
            a = np.ascontiguousarray(a)
            h.update(repr((str(a.dtype), a.shape)).encode())
            h.update(a.tobytes())
        return h.digest()

    def with_arrays(self, logits, targets, *extras) -> "Case":
        """The same case with new arrays (each cast to the dtype of the one it replaces).

        Without ``extras`` the extras are kept (only valid when their shape does not depend on the others).
        """
        new_extras = self.extras if not extras else tuple(
            np.asarray(e, dtype=old.dtype) for e, old in zip(extras, self.extras))
        out = replace(self, logits=np.asarray(logits, dtype=self.logits.dtype),
                      targets=np.asarray(targets, dtype=self.targets.dtype), extras=new_extras)
        return out.at_precision(self.precision) if self.precision else out

    def at_precision(self, precision: str) -> "Case":
        """Floating arrays rounded to ``precision`` (:func:`round_to_precision`, stored as float32); integer
        arrays unchanged; :attr:`precision` set.  Idempotent."""
        def cast(a):
            a = np.asarray(a)
            return a if a.dtype.kind in "iub" else round_to_precision(a, precision)

        return replace(self, logits=cast(self.logits), targets=cast(self.targets),
                       extras=tuple(cast(e) for e in self.extras), precision=precision)

    def map_arrays(self, fn) -> "Case":
        """Apply ``fn`` to every array (e.g. a row selection); dtypes are kept."""
        return self.with_arrays(*(fn(a) for a in self.arrays))

    def astype(self, dtype) -> "Case":
        """Floating arrays cast to ``dtype``; integer arrays unchanged.  A narrow format of
        :data:`LOW_PRECISIONS` gives :meth:`at_precision`; any other dtype clears :attr:`precision`."""
        if isinstance(dtype, str) and dtype in LOW_PRECISIONS:
            return self.at_precision(dtype)

        def cast(a):
            a = np.asarray(a)
            return a if a.dtype.kind in "iub" else a.astype(dtype)

        return replace(self, logits=cast(self.logits), targets=cast(self.targets),
                       extras=tuple(cast(e) for e in self.extras), precision=None)

    def describe(self) -> str:
        parts = [f"kind={self.kind}", f"shape={self.shape}"]
        if self.positive_above is not None:
            parts.append(f"|P|={self.num_positives}")
        if self.delta is not None:
            parts.append(f"delta={self.delta:g}")
        parts.append(f"grad_output={self.grad_output:g}")
        dt = self.dtype if not self.precision else f"{self.precision} (values stored as {self.dtype})"
        return f"{self.source}: " + ", ".join(parts) + f", {dt}"


@dataclass(frozen=True)
class CaseConfig:
    dtype: str = "float64"
    delta: Optional[float] = None  #: fixed delta (None: draw from the grid)
    max_size: int = 100_000
    max_work: int = 5_000_000  #: cap on n * |P| (the reference is O(n |P|))
    use_grad_output: bool = True  #: draw grad_output != 1 (autograd targets)
    allow_2d: bool = True


class Source:
    """A source of choices: ``integer(lo, hi)`` inclusive, simplest at ``lo``."""

    def integer(self, lo: int, hi: int) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def index(self, options: Sequence):
        return options[self.integer(0, len(options) - 1)]


class RngSource(Source):
    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def integer(self, lo, hi):
        return int(self.rng.integers(lo, hi + 1))


def delta_grid(spec) -> tuple:
    grid = ((spec.default_delta,) if spec.default_delta is not None else ()) + EXTRA_DELTAS
    return tuple(dict.fromkeys(float(d) for d in grid))


def _draw_size(src: Source, cfg: CaseConfig) -> int:
    band = src.integer(0, 99)
    if band < 40:
        lo, hi = 1, 12
    elif band < 85:
        lo, hi = 13, 400
    elif band < 97:
        lo, hi = 401, 5000
    else:
        lo, hi = 5001, 100_000
    hi = min(hi, cfg.max_size)
    lo = min(lo, hi)
    return src.integer(lo, hi)


def _iou(rng, n, kind):
    if kind == "ties":
        return rng.choice(np.array([0.25, 0.5, 0.75, 1.0]), n)
    if kind == "equal_iou":
        return np.full(n, float(rng.choice([0.25, 0.5, 0.7, 1.0])))
    return np.round(rng.uniform(0.05, 1.0, n), 6)


def _positives(rng, n, fraction, cap):
    if fraction == 0.0:
        pos = np.zeros(n, dtype=bool)
    elif fraction == 1.0:
        pos = np.ones(n, dtype=bool)
    else:
        pos = rng.random(n) < fraction
        if not pos.any():
            pos[rng.integers(n)] = True
    idx = np.flatnonzero(pos)
    if len(idx) > cap:
        pos[:] = False
        pos[rng.choice(idx, cap, replace=False)] = True
    return pos


def _logits(rng, src, n, kind, pos, delta):
    if kind == "random":
        return rng.normal(0.0, float(rng.choice([1.0, 0.25, 4.0])), n)
    if kind == "ties":
        values = np.round(rng.normal(0.0, 1.0, max(1, n // 4)) * 8) / 8
        return rng.choice(values, n)
    if kind in ("separated", "no_relevant_negative"):
        s = np.empty(n)
        s[pos] = rng.uniform(0.0, 3.0, int(pos.sum()))
        low = s[pos].min() if pos.any() else 0.0
        margin = delta if kind == "no_relevant_negative" else 0.0
        s[~pos] = low - margin - rng.uniform(0.01, 2.0 * delta + 1.0, int((~pos).sum()))
        return s
    if kind == "large_magnitude":
        center = float(rng.choice([1e3, -1e4, 3e4, 0.0]))
        scale = float(rng.choice([1.0, 30.0, 1e4]))
        return center + rng.normal(0.0, scale, n)
    return rng.normal(0.0, 1.0, n)  # equal_iou


def _sanitize_threshold(logits, pos, delta, dtype):
    """Move float32 negatives off ``min positive - delta`` where float32 and float64 disagree.

    A bucketed loss drops negatives below ``min positive - delta``; a negative
    within rounding distance of that threshold could be dropped by a correct
    float32 implementation and kept by the float64 reference.  Such ties are
    numerical accidents, not conventions, so generated cases avoid them.
    """
    if dtype != "float32" or not pos.any() or pos.all():
        return logits
    flat = logits.ravel().astype(np.float32)
    p = pos.ravel()
    smin = flat[p].min()
    thr64 = float(smin) - float(delta)
    thr32 = np.float32(smin) - np.float32(delta)
    band = 8 * np.finfo(np.float32).eps * max(1.0, abs(float(smin)), float(delta))
    neg = np.flatnonzero(~p)
    s = flat[neg]
    risky = (np.abs(s.astype(np.float64) - thr64) <= band) & ((s.astype(np.float64) >= thr64) != (s >= thr32))
    risky |= (np.abs(s.astype(np.float64) - thr64) <= band) & (s.astype(np.float64) != thr64)
    if risky.any():
        flat[neg[risky]] = np.float32(thr64 - 16 * band)
    return flat.reshape(logits.shape)


def build_ranking_case(src: Source, spec, cfg: CaseConfig, *, kind: Optional[str] = None,
                       size: Optional[int] = None, images: Optional[int] = None) -> Case:
    """One case of a (logits, labels / targets, delta) ranking loss (see the module docstring)."""
    deltas = delta_grid(spec)
    delta = float(cfg.delta) if cfg.delta is not None else float(src.index(deltas))
    g = float(src.index(GRAD_OUTPUTS)) if cfg.use_grad_output else 1.0
    n = _draw_size(src, cfg) if size is None else int(size)
    if kind is None:
        kind = src.index(KINDS)
    fraction = src.index(POS_FRACTIONS)
    if images is None:
        images = 1
        if cfg.allow_2d and n >= 2 and src.integer(0, 9) >= 8:
            images = src.integer(2, 4)
    per_image = -(-n // images)
    n = per_image * images
    cap = max(1, cfg.max_work // max(n, 1))
    if kind == "grid" and n <= 16:
        # element by element: hypothesis shrinks every value towards 0 / negative
        logits = np.array([src.integer(-8, 8) / 4 for _ in range(n)])
        pos = np.array([src.integer(0, 1) == 1 for _ in range(n)])[:n]
        if spec.label_kind == "iou":
            iou = np.array([src.integer(1, 4) / 4 for _ in range(n)])
        else:
            iou = np.ones(n)
        rng = None
    else:
        rng = np.random.default_rng(src.integer(0, 2**32 - 1))
        pos = _positives(rng, n, fraction, cap)
        if images > 1 and fraction not in (0.0, 1.0) and src.integer(0, 1):
            pos.reshape(images, per_image)[0] = False  # an image without positives
        if kind == "grid":
            logits = rng.integers(-8, 9, n) / 4
        else:
            logits = _logits(rng, src, n, kind, pos, delta if delta > 0 else 0.5)
        iou = _iou(rng, n, kind)
    targets = np.where(pos, iou if spec.label_kind == "iou" else 1.0, 0.0)
    shape = (images, per_image) if images > 1 else (n,)
    dtype = np.dtype(cfg.dtype)
    logits = logits.reshape(shape).astype(dtype)
    targets = targets.reshape(shape).astype(dtype)
    if getattr(spec, "bucketed", False):
        logits = _sanitize_threshold(logits, targets > 0, delta, cfg.dtype).astype(dtype)
    return Case(logits, targets, delta, g, kind, "generated")
# ================================================================================================
# Input builders of the other loss families (RankDetNet, DR Loss, APE / ARPS, GIoU)
# ================================================================================================
#
# Each draws every choice from ``src`` (hypothesis or a NumPy generator), so hypothesis can shrink
# it; small "grid" cases are drawn element by element, larger ones from a seeded generator.


def _grad_output(src: Source, cfg: CaseConfig) -> float:
    return float(src.index(GRAD_OUTPUTS)) if cfg.use_grad_output else 1.0


# -- RankDetNet: logits [N, C], labels [N] (class id / -1 background / -2 ignored), ious [N], levels [N] --------

RANKDET_KINDS = ("random", "grid", "ties", "separated", "no_positives", "no_background", "equal_iou",
                 "single_class", "crowded_level", "onehot")
_RANKDET_LOGIT_RANGE = 8.0  # |logit| <= 8: sigmoid confidences stay distinguishable in float32


def _rankdet_sanitize(logits: np.ndarray, labels: np.ndarray, dtype, groups=(15, 3)) -> np.ndarray:
    """Move negatives off the group edges of the group mining, where float32 and float64 could disagree.

    The group strategy (RankDet Sec. 3.1) bins negatives' confidences into
    equal-width intervals between the lowest and the highest; a confidence
    within rounding distance of an inner edge could land in different groups
    in a correct float32 implementation and in the float64 reference.  Such
    cases are numerical accidents, not conventions: a negative too close to an
    edge is moved to the middle of its upper bin, and negatives whose spread is
    below what ``dtype`` resolves are made exactly tied.  Both the global
    (objectness column, ``groups[0]`` groups) and the class-specific blocks
    (``groups[1]`` per class) are treated.
    """
    from scipy.special import expit

    s = np.asarray(logits, dtype=np.float64).copy()
    eps = float(np.finfo(dtype).eps)
    if s.ndim != 2 or s.size == 0:
        return logits
    for _ in range(8):
        changed = False
        blocks = []
        if np.any(labels >= 0) and np.any(labels == -1):
            col = np.argmax(s, axis=1)
            rows = np.flatnonzero(labels == -1)
            blocks.append((rows, col[rows], groups[0]))
        for c in np.unique(labels[labels >= 0]):
            rows = np.flatnonzero((labels != c) & (labels != -2))
            if rows.size:
                blocks.append((rows, np.full(rows.size, int(c)), groups[1]))
        for rows, cols, G in blocks:
            x = s[rows, cols]
            f = expit(x)
            lo, hi = float(f.min()), float(f.max())
            if hi == lo:
                continue
            band = 32.0 * eps * G / (hi - lo)
            if band > 0.2:  # the spread is below the dtype's resolution: one exact value
                s[rows, cols] = x[int(np.argmin(f))]
                changed = True
                continue
            q = (f - lo) * G / (hi - lo)
            near = (np.abs(q - np.round(q)) < band) & (f > lo) & (f < hi)
            if not near.any():
                continue
            target = np.minimum(np.round(q[near]) + 0.5, G - 0.5)
            fn = lo + target * (hi - lo) / G
            new = np.log(fn) - np.log1p(-fn)
            s[rows[near], cols[near]] = np.asarray(new, dtype=dtype).astype(np.float64)
            changed = True
        if not changed:
            break
    return s.astype(dtype)


def build_rankdet_case(src: Source, spec, cfg: CaseConfig, *, kind: Optional[str] = None,
                       size: Optional[int] = None, images: Optional[int] = None) -> Case:
    """One image of a RankDetNet loss: logits [N, C], class-id labels [N], then ious / levels as the spec takes.

    Kinds: ``random``, ``grid`` (element by element, logits k/4), ``ties``
    (few distinct logits and IoUs), ``separated`` (positives' own-class logits
    above everything else), ``no_positives``, ``no_background`` (every sample
    a positive or ignored), ``equal_iou``, ``single_class`` (C = 1) and
    ``crowded_level`` (one class, one level: many IoU pairs) and ``onehot``
    (labels as a one-hot ``[N, C]`` array, all-zero rows = background).
    Labels mix positives, background (-1) and ignored samples (-2).
    """
    g = _grad_output(src, cfg)
    n = _draw_size(src, cfg) if size is None else int(size)
    n = max(1, min(n, cfg.max_size))
    if kind is None:
        kind = src.index(RANKDET_KINDS)
    C = 1 if kind in ("single_class", "crowded_level") else src.integer(1, 4)
    nlev = 1 if kind == "crowded_level" else src.integer(1, 3)
    if kind == "grid" and n <= 12:
        logits = np.array([src.integer(-8, 8) / 4 for _ in range(n * C)]).reshape(n, C)
        code = np.array([src.integer(0, C + 1) for _ in range(n)])
        labels = np.where(code == 0, -1, np.where(code == C + 1, -2, code - 1))  # simplest: background
        ious = np.array([src.integer(1, 4) / 4 for _ in range(n)])
        levels = np.array([src.integer(0, nlev - 1) for _ in range(n)])
    else:
        rng = np.random.default_rng(src.integer(0, 2**32 - 1))
        fraction = 0.0 if kind == "no_positives" else src.index((0.25, 0.5, 0.1, 0.9, 0.03))
        ignore = src.index((0.0, 0.1, 0.3))
        pos = rng.random(n) < fraction
        if fraction > 0 and not pos.any():
            pos[rng.integers(n)] = True
        if kind == "crowded_level":
            pos |= rng.random(n) < 0.5
        cls = rng.integers(0, C, n)
        labels = np.where(pos, cls, -1)
        if kind == "no_background":
            labels = np.where(pos, cls, -2)
        elif ignore > 0:
            labels = np.where(~pos & (rng.random(n) < ignore), -2, labels)
        if kind == "ties":
            values = np.round(rng.normal(-1.0, 1.5, max(2, n // 4)) * 4) / 4
            logits = rng.choice(values, (n, C))
        elif kind == "separated":
            logits = rng.uniform(-6.0, -1.0, (n, C))
            rows = np.flatnonzero(labels >= 0)
            logits[rows, labels[rows]] = rng.uniform(0.0, 4.0, rows.size)
        elif kind == "grid":
            logits = rng.integers(-8, 9, (n, C)) / 4
        else:
            logits = rng.normal(-1.0, float(rng.choice([1.0, 2.0, 0.5])), (n, C))
        if kind == "ties":
            ious = rng.choice(np.array([0.25, 0.5, 0.75, 1.0]), n)
        elif kind == "equal_iou":
            ious = np.full(n, float(rng.choice([0.3, 0.6, 1.0])))
        else:
            ious = np.round(rng.uniform(0.05, 1.0, n), 6)
        levels = rng.integers(0, nlev, n)
    logits = np.clip(logits, -_RANKDET_LOGIT_RANGE, _RANKDET_LOGIT_RANGE)
    dtype = np.dtype(cfg.dtype)
    labels = labels.astype(np.int64)
    if kind == "onehot":
        labels = np.where(labels == -2, -1, labels)  # one-hot rows cannot say "ignored"
    logits = _rankdet_sanitize(logits.astype(dtype), labels, dtype)
    arrays = {"ious": ious.astype(dtype), "levels": levels.astype(np.int64)}
    extras = tuple(arrays[name] for name in extra_names(spec))
    if kind == "onehot":
        onehot = (labels[:, None] == np.arange(C)[None, :]).astype(np.int64)
        return Case(logits, onehot, None, g, kind, "generated", extras, positive_above=0.5)
    return Case(logits, labels, None, g, kind, "generated", extras, positive_above=-0.5)


# -- DR Loss: logits [n, C], class ids [n] (-1 ignored, 0 background, 1..C) or per-entry labels; image_ids [n] ------

DR_KINDS = ("random", "grid", "ties", "separated", "no_positives", "no_negatives", "entries", "saturated",
            "many_images")


def build_dr_case(src: Source, spec, cfg: CaseConfig, *, kind: Optional[str] = None, size: Optional[int] = None,
                  images: Optional[int] = None) -> Case:
    """DR Loss inputs: candidates x classes, class-id (or per-entry) labels and image ids.

    Kinds: ``random``, ``grid`` (element by element), ``ties``, ``separated``,
    ``no_positives``, ``no_negatives`` (C = 1, every row positive or ignored:
    the empty negative side), ``entries`` (per-entry labels -1 / 0 / 1 of the
    logits' shape), ``saturated`` (|logits| up to 30) and ``many_images``
    (up to 8 images with arbitrary, unsorted ids).
    """
    g = _grad_output(src, cfg)
    n = _draw_size(src, cfg) if size is None else int(size)
    n = max(1, min(n, cfg.max_size))
    if kind is None:
        kind = src.index(DR_KINDS)
    C = 1 if kind == "no_negatives" else src.integer(1, 4)
    B = src.integer(1, 8) if kind == "many_images" else (images or src.integer(1, 3))
    if kind == "grid" and n <= 12:
        logits = np.array([src.integer(-8, 8) / 4 for _ in range(n * C)]).reshape(n, C)
        code = np.array([src.integer(0, C + 1) for _ in range(n)])
        labels = np.where(code == C + 1, -1, code)  # 0 (background) is the simplest label
        ids = np.array([src.integer(0, B - 1) for _ in range(n)])
    else:
        rng = np.random.default_rng(src.integer(0, 2**32 - 1))
        fraction = 0.0 if kind == "no_positives" else src.index((0.1, 0.3, 0.02, 0.7))
        ignore = src.index((0.0, 0.1))
        pos = rng.random(n) < fraction
        if kind == "no_negatives":
            pos[:] = True
        labels = np.where(pos, rng.integers(1, C + 1, n), 0)
        if ignore > 0:
            labels = np.where(rng.random(n) < ignore, -1, labels)
        if kind == "ties":
            logits = rng.choice(np.round(rng.normal(-2.0, 1.5, max(2, n // 4)) * 4) / 4, (n, C))
        elif kind == "saturated":
            logits = rng.uniform(-30.0, 30.0, (n, C))
        elif kind == "separated":
            logits = rng.uniform(-6.0, -2.0, (n, C))
            rows = np.flatnonzero(labels > 0)
            logits[rows, labels[rows] - 1] = rng.uniform(1.0, 4.0, rows.size)
        elif kind == "grid":
            logits = rng.integers(-8, 9, (n, C)) / 4
        else:
            logits = rng.normal(-2.0, float(rng.choice([1.0, 2.0, 0.5])), (n, C))
        if kind == "entries":
            labels = rng.choice(np.array([0, 0, 0, 1, -1]), (n, C))
        ids = rng.integers(0, B, n)
        if kind == "many_images":
            ids = rng.permutation(np.arange(B) * 3 + 5)[ids]  # arbitrary, non-consecutive ids
        elif rng.random() < 0.5:
            ids = np.sort(ids)
    dtype = np.dtype(cfg.dtype)
    arrays = {"image_ids": np.asarray(ids, dtype=np.int64)}
    extras = tuple(arrays[name] for name in extra_names(spec))
    return Case(logits.astype(dtype), np.asarray(labels, dtype=np.int64), None, g, kind, "generated", extras)


# -- APE / ARPS: the ranking inputs, with 0/1 labels and the IoUs as a separate argument ---------------------

APE_KINDS = KINDS


class _IoUView:
    """The spec as the ranking builder sees it: IoU targets (split into labels and ious afterwards)."""

    label_kind = "iou"
    bucketed = False

    def __init__(self, spec):
        self.default_delta = spec.default_delta


def build_ape_case(src: Source, spec, cfg: CaseConfig, *, kind: Optional[str] = None,
                   size: Optional[int] = None, images: Optional[int] = None) -> Case:
    """APE inputs: the ranking builder's case with labels = (IoU target > 0) and the IoUs as ``ious``.

    Same kinds, sizes and delta grid as :func:`build_ranking_case` (the delta
    is dropped for a loss without one).
    """
    case = build_ranking_case(src, _IoUView(spec), cfg, kind=kind, size=size, images=images)
    dtype = case.targets.dtype
    labels = (case.targets > 0).astype(dtype)
    arrays = {"ious": case.targets}
    extras = tuple(arrays[name] for name in extra_names(spec))
    delta = case.delta if spec.default_delta is not None else None
    return replace(case, targets=labels, extras=extras, delta=delta)


# -- GIoU Loss: pred_boxes [N, 4], target_boxes [N, 4], weights [N] -----------------------------------------

GIOU_KINDS = ("random", "grid", "overlap", "identical", "contained", "disjoint", "degenerate", "zero_weights")


def _sorted_boxes(b: np.ndarray) -> np.ndarray:
    x = np.sort(b[:, [0, 2]], axis=1)
    y = np.sort(b[:, [1, 3]], axis=1)
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)


def build_giou_case(src: Source, spec, cfg: CaseConfig, *, kind: Optional[str] = None,
                    size: Optional[int] = None, images: Optional[int] = None) -> Case:
    """GIoU Loss inputs: predicted and target ``(x1, y1, x2, y2)`` boxes and non-negative box weights.

    Kinds: ``random`` (independent boxes), ``grid`` (integer coordinates
    element by element: ties between coordinates everywhere), ``overlap``
    (jittered targets), ``identical``, ``contained``, ``disjoint``,
    ``degenerate`` (zero-width or zero-height predictions) and
    ``zero_weights`` (every weight 0: the normaliser falls back to 1).
    Target boxes always have a positive area.  Weights are 1, uniform
    classification scores, or scores with zeros.
    """
    g = _grad_output(src, cfg)
    n = _draw_size(src, cfg) if size is None else int(size)
    n = max(1, min(n, cfg.max_size))
    if kind is None:
        kind = src.index(GIOU_KINDS)
    if kind == "grid" and n <= 8:
        rows_t, rows_p, w = [], [], []
        for _ in range(n):
            x, y, bw, bh = src.integer(0, 4), src.integer(0, 4), src.integer(1, 4), src.integer(1, 4)
            rows_t.append([x, y, x + bw, y + bh])
            px, py, pw, ph = src.integer(0, 4), src.integer(0, 4), src.integer(0, 4), src.integer(0, 4)
            rows_p.append([px, py, px + pw, py + ph])
            w.append((1.0, 0.5, 0.25, 0.0)[src.integer(0, 3)])
        target, pred, weights = np.array(rows_t, float), np.array(rows_p, float), np.array(w)
    else:
        rng = np.random.default_rng(src.integer(0, 2**32 - 1))
        xy = rng.uniform(0.0, 20.0, (n, 2))
        wh = rng.uniform(0.5, 6.0, (n, 2))
        if kind == "grid":  # integer coordinates: ties between coordinates everywhere
            xy, wh = rng.integers(0, 5, (n, 2)).astype(float), rng.integers(1, 5, (n, 2)).astype(float)
        target = np.concatenate([xy, xy + wh], axis=1)
        if kind == "grid":
            pxy = rng.integers(0, 5, (n, 2)).astype(float)
            pred = np.concatenate([pxy, pxy + rng.integers(0, 5, (n, 2))], axis=1)
        elif kind == "random":
            pxy = rng.uniform(0.0, 20.0, (n, 2))
            pred = np.concatenate([pxy, pxy + rng.uniform(0.5, 6.0, (n, 2))], axis=1)
        elif kind == "identical":
            pred = target.copy()
        elif kind == "contained":
            inset = rng.uniform(0.0, 0.45, (n, 4)) * np.concatenate([wh, wh], axis=1)
            pred = target + inset * np.array([1, 1, -1, -1])
        elif kind == "disjoint":
            pred = target + np.array([30.0, 0.0, 30.0, 0.0])
        else:  # overlap, degenerate, zero_weights
            pred = _sorted_boxes(target + rng.normal(0.0, 0.7, (n, 4)))
        if kind == "degenerate":
            flat = rng.random(n) < 0.5
            pred[flat, 2] = pred[flat, 0]
            pred[~flat, 3] = pred[~flat, 1]
        choice = src.integer(0, 2)
        if kind == "zero_weights":
            weights = np.zeros(n)
        elif choice == 0:
            weights = np.ones(n)
        elif choice == 1:
            weights = rng.uniform(0.0, 1.0, n)
        else:
            weights = np.where(rng.random(n) < 0.3, 0.0, rng.uniform(0.0, 1.0, n))
    dtype = np.dtype(cfg.dtype)
    arrays = {"weights": weights.astype(dtype)}
    extras = tuple(arrays[name] for name in extra_names(spec))
    return Case(pred.astype(dtype), target.astype(dtype), None, g, kind, "generated", extras,
                positive_above=None)



# -- aLRP Loss: flat logits [n], targets 1 / 0 / -1 (ignored), regression_losses [P] --------------------------

ALRP_KINDS = ("random", "grid", "ties", "separated", "no_relevant_negative", "ignored", "zero_eloc",
              "large_magnitude")
ALRP_DELTAS = (1.0, 0.5, 0.25, 2.0, 0.1)  #: the authors divide by 2 delta: delta = 0 is not in their domain


class _BinaryView:
    """The loss as the ranking builder sees it: 0/1 labels, the loss's default delta, no buckets."""

    label_kind = "binary"
    bucketed = False

    def __init__(self, loss):
        self.default_delta = loss.default_delta


def build_alrp_case(src: Source, loss, cfg: CaseConfig, *, kind: Optional[str] = None,
                    size: Optional[int] = None, images: Optional[int] = None) -> Case:
    """aLRP inputs as the authors' heads pass them: flat logits, targets 1 / 0 / -1 and e_loc per positive.

    The logits and the 0/1 labels are the ranking builder's (same sizes and kinds, always 1-D: the
    authors flatten); then ``ignored`` (and one case in four of the others) marks about a fifth of the
    negatives -1 (ignored: zero gradient).  ``regression_losses`` holds one localisation error in
    [0, 1] per positive, in flat order (``zero_eloc``: all 0, where aLRP's gradient is AP Loss's;
    ``ties``: values on a grid of quarters).  It is a non-differentiable input.  delta is drawn from
    :data:`ALRP_DELTAS` (never 0: the authors divide by 2 delta) unless ``cfg`` fixes it.
    """
    if kind is None:
        kind = src.index(ALRP_KINDS)
    base = {"ignored": "random", "zero_eloc": "random"}.get(kind, kind)
    delta = cfg.delta if cfg.delta is not None else float(src.index(ALRP_DELTAS))
    case = build_ranking_case(src, _BinaryView(loss), replace(cfg, delta=delta, allow_2d=False), kind=base,
                              size=size, images=1)
    rng = np.random.default_rng(src.integer(0, 2**32 - 1))
    targets = np.asarray(case.targets, dtype=np.float64).copy()
    if kind == "ignored" or src.integer(0, 3) == 3:
        targets[(targets == 0) & (rng.random(targets.shape) < 0.2)] = -1.0
    P = int(np.count_nonzero(targets == 1))
    if kind == "zero_eloc":
        e = np.zeros(P)
    elif kind == "ties":
        e = rng.choice(np.array([0.0, 0.25, 0.5, 1.0]), P)
    else:
        e = np.round(rng.uniform(0.0, 1.0, P), 6)
    dtype = case.logits.dtype
    arrays = {"regression_losses": e.astype(dtype)}
    extras = tuple(arrays[name] for name in extra_names(loss))
    return replace(case, targets=targets.astype(dtype), extras=extras, kind=kind)


# -- helpers: reading a loss's extra inputs, resolving a builder, drawing samples -----------------------------


def extra_names(loss) -> Tuple[str, ...]:
    """Names of the inputs after the first two, in call order (a spec's ``extra_inputs`` or a record's
    ``input_names[2:]``)."""
    extra = getattr(loss, "extra_inputs", None)
    if extra is not None:
        return tuple(i.name for i in extra)
    return tuple(getattr(loss, "input_names", ())[2:])


def resolve_builder(ref) -> Callable:
    """The builder named by a record's ``case_builder`` (``"module:function"``), or ``ref`` if callable."""
    if callable(ref):
        return ref
    if not isinstance(ref, str) or ":" not in ref:
        raise ValueError(f"case_builder must be a 'module:function' string or a callable, got {ref!r}")
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def sample_cases(record, count: int, *, seed: int = 0, dtype: str = "float64", max_size: int = 40,
                 kinds: Optional[Sequence[str]] = None):
    """``count`` small cases of ``record`` drawn by its own builder from a seeded NumPy generator.

    ``kinds`` (default: any) cycles through the given kinds.  Used by the generic record tests
    (OpInfo's ``sample_inputs``).  O(count * max_size) time.
    """
    if record.case_builder is None:
        raise ValueError(f"record {record.name!r} names no case_builder")
    builder = resolve_builder(record.case_builder)
    rng = np.random.default_rng(seed)
    src = RngSource(rng)
    cfg = CaseConfig(dtype=dtype, max_size=max_size, max_work=max_size * max_size, use_grad_output=False)
    out = []
    for k in range(count):
        kind = kinds[k % len(kinds)] if kinds else None
        out.append(builder(src, record, cfg, kind=kind, size=int(rng.integers(1, max_size + 1))))
    return out


def fixed_probe_case(label_kind: str, default_delta, dtype: str = "float64", delta=None) -> Case:
    """The small fixed (logits, 0/1 labels or IoU targets) case of the generic ranking losses' probe."""
    logits = np.array([1.5, -0.25, 0.75, 0.0, -1.0, 2.0, 0.5, -0.5])
    pos = np.array([1, 0, 1, 0, 0, 1, 0, 0], dtype=bool)
    iou = np.array([0.9, 0, 0.5, 0, 0, 0.7, 0, 0])
    targets = np.where(pos, iou if label_kind == "iou" else 1.0, 0.0)
    d = default_delta if delta is None else delta
    return Case(logits.astype(dtype), targets.astype(dtype), float(d if d is not None else 0.0), 1.0,
                "probe", "probe")


# the kinds each builder understands (the conformance kit's fixed diagnostic cases cover each)
build_ranking_case.kinds = KINDS
build_rankdet_case.kinds = RANKDET_KINDS
build_dr_case.kinds = DR_KINDS
build_ape_case.kinds = APE_KINDS
build_giou_case.kinds = GIOU_KINDS
build_alrp_case.kinds = ALRP_KINDS

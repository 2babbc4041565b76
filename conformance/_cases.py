"""Test inputs for the conformance harness: generated, recorded and diagnostic cases.

The case builders themselves belong to the loss records (:mod:`rankspec.refimpl.cases`, re-exported
here: :class:`Case`, :class:`CaseConfig`, the sources of choices and every ``build_*_case``); this module
adds what is the harness's own: the hypothesis source of choices (so failures shrink), the spec's caps
(:func:`spec_config`), the recorded vectors' inputs, the fixed diagnostic cases and the probe used to
detect a target's call convention.  A spec's builder is its record's (:attr:`LossSpec.builder`).

Narrow dtypes (``float16`` / ``bfloat16``, opt-in): a case is built in float32 and every floating array
rounded to the dtype (:meth:`Case.at_precision`; stored as float32 holding the rounded values, since NumPy
has no bfloat16), so the float64 reference sees exactly what the target gets (:func:`build_case`,
:func:`at_dtype` for other builders).
"""

from __future__ import annotations

from dataclasses import replace
from typing import List, Optional

import numpy as np

from rankspec.refimpl.cases import (ALRP_KINDS, APE_KINDS, DR_KINDS, EXTRA_DELTAS, GIOU_KINDS, KINDS,  # noqa: F401
                                    POS_FRACTIONS, RANKDET_KINDS, Case, CaseConfig, RngSource, Source,
                                    _rankdet_sanitize, _sanitize_threshold, build_alrp_case, build_ape_case,
                                    build_dr_case, build_giou_case, build_rankdet_case, build_ranking_case,
                                    delta_grid, fixed_probe_case)
from rankspec.refimpl.cases import LOW_PRECISIONS, round_to_precision  # noqa: F401  (re-exported)
from rankspec.refimpl.constants import DTYPES, GRAD_OUTPUTS  # noqa: F401  (re-exported)

from .specs import get_spec


class HypothesisSource(Source):
    """Choices drawn by hypothesis (``draw`` of a composite strategy), so failing cases shrink."""

    def __init__(self, draw):
        from hypothesis import strategies as st

        self._draw, self._st = draw, st

    def integer(self, lo, hi):
        return self._draw(self._st.integers(lo, hi))


def spec_config(spec, cfg: CaseConfig) -> CaseConfig:
    """``cfg`` with the spec's own caps on size and work applied."""
    max_size = min(cfg.max_size, getattr(spec, "max_size", None) or cfg.max_size)
    max_work = min(cfg.max_work, getattr(spec, "max_work", None) or cfg.max_work)
    if (max_size, max_work) == (cfg.max_size, cfg.max_work):
        return cfg
    return replace(cfg, max_size=max_size, max_work=max_work)


def storage_config(cfg: CaseConfig) -> CaseConfig:
    """``cfg`` with a narrow dtype (float16 / bfloat16) replaced by float32, the dtype its cases are built and
    stored in (NumPy has no bfloat16); ``cfg`` itself otherwise."""
    return replace(cfg, dtype="float32") if cfg.dtype in LOW_PRECISIONS else cfg


def lowered(cases, dtype: str):
    """``cases`` (a list) rounded to a narrow ``dtype`` (:meth:`Case.at_precision`); unchanged for float32 / 64."""
    if dtype not in LOW_PRECISIONS:
        return cases
    return [c.at_precision(dtype) for c in cases]


def at_dtype(build, cfg: CaseConfig):
    """``build(cfg)`` (a function returning a list of cases) for any checked dtype: a narrow dtype builds in
    float32 (:func:`storage_config`), then rounds every floating array to it (:func:`lowered`)."""
    return lowered(build(storage_config(cfg)), cfg.dtype)


def build_case(src: Source, spec, cfg: CaseConfig, **kw) -> Case:
    """One case of ``spec`` by its record's builder.  In a narrow dtype (float16 / bfloat16) the case is built
    in float32 and its floating arrays rounded to the dtype (:meth:`Case.at_precision`): the reference runs in
    float64 on exactly the rounded values the target gets."""
    builder = spec.builder
    if cfg.dtype in LOW_PRECISIONS:
        return builder(src, spec, spec_config(spec, storage_config(cfg)), **kw).at_precision(cfg.dtype)
    return builder(src, spec, spec_config(spec, cfg), **kw)


def strategy(spec, cfg: CaseConfig):
    """A hypothesis strategy of :class:`Case` for ``spec``."""
    from hypothesis import strategies as st

    @st.composite
    def cases(draw):
        return build_case(HypothesisSource(draw), spec, cfg)

    return cases()


def case_strategy(loss, *, dtype: str = "float64", delta: Optional[float] = None, max_size: int = 2000,
                  grad_output: bool = False):
    """Public hypothesis strategy of the harness's :class:`Case` for a loss name (for your own properties).

    Example::

        @given(case_strategy("rs", delta=0.5))
        def test_mine(case):
            my_loss(case.logits, case.targets, case.delta)
    """
    return strategy(get_spec(loss), CaseConfig(dtype=dtype, delta=delta, max_size=max_size,
                                               use_grad_output=grad_output))


def random_cases(spec, cfg: CaseConfig, count: int, seed: int) -> List[Case]:
    """``count`` cases from a NumPy generator (golden-vector export, no hypothesis needed)."""
    rng = np.random.default_rng(seed)
    return [build_case(RngSource(rng), spec, cfg) for _ in range(count)]


def runs_recorded(spec) -> bool:
    """Whether ``spec`` runs the recorded vectors: (logits, 0/1 labels or IoU targets) losses that ask to."""
    return (bool(getattr(spec, "recorded", True)) and not getattr(spec, "extra_inputs", ())
            and spec.label_kind in ("binary", "iou"))


def recorded_cases(spec, cfg: CaseConfig) -> List[Case]:
    """The inputs of the bundled recorded vectors (official-v1.npz), in ``cfg.dtype``.

    Every loss runs on every recorded input (binary losses on ``targets > 0``);
    the expectation is always the reference.  The delta is the case's, or the
    fixed one.
    """
    from rankspec.refimpl.vectors import load_official

    if not runs_recorded(spec):
        return []
    if cfg.dtype in LOW_PRECISIONS:
        return lowered(recorded_cases(spec, storage_config(cfg)), cfg.dtype)
    out = []
    dtype = np.dtype(cfg.dtype)
    for vc in load_official():
        targets = vc.targets if spec.label_kind == "iou" else (vc.targets > 0).astype(np.float64)
        delta = float(cfg.delta) if cfg.delta is not None else float(vc.delta)
        logits = vc.logits.astype(dtype)
        if spec.bucketed:
            logits = _sanitize_threshold(logits, targets > 0, delta, cfg.dtype).astype(dtype)
        out.append(Case(logits, targets.astype(dtype), delta, 1.0, vc.kind,
                        f"recorded vector {vc.index}"))
    return out


def diagnostic_cases(spec, cfg: CaseConfig, seed: int = 20240611) -> List[Case]:
    """A fixed, small, varied set of cases that separates the documented conventions.

    Covers every kind, delta 0 with ties, per-image structure (2-D inputs with
    an image without positives) and negatives just below the threshold.
    """
    rng = np.random.default_rng(seed)
    src = RngSource(rng)
    small = replace(cfg, max_size=40)
    if tuple(getattr(spec, "kinds", ()) or KINDS) != KINDS:
        return _family_diagnostic_cases(spec, small, rng, src)
    deltas = [cfg.delta] if cfg.delta is not None else list(delta_grid(spec))
    out = []
    for k, kind in enumerate(KINDS * 3):
        c = replace(small, delta=deltas[k % len(deltas)])
        size = int(rng.integers(4, 40))
        out.append(build_case(src, spec, c, kind=kind, size=size, images=1))
    for k in range(4):
        c = replace(small, delta=deltas[(k + 1) % len(deltas)])
        out.append(build_case(src, spec, c, kind=("random", "ties", "grid", "random")[k], size=24,
                              images=(2, 3, 4, 3)[k]))
    if cfg.delta is None or cfg.delta == 0:
        c = replace(small, delta=0.0)
        for _ in range(3):
            out.append(build_case(src, spec, c, kind="ties", size=int(rng.integers(6, 30)), images=1))
    return [replace(case, source="diagnostic") for case in out]


def _family_diagnostic_cases(spec, cfg: CaseConfig, rng, src) -> List[Case]:
    """Diagnostic cases of a family with its own builder: every kind twice, small, plus two larger ones."""
    out = []
    for kind in tuple(spec.kinds) * 2:
        out.append(build_case(src, spec, cfg, kind=kind, size=int(rng.integers(4, 24))))
    for kind in spec.kinds[:2]:
        out.append(build_case(src, spec, replace(cfg, max_size=60), kind=kind, size=60))
    return [replace(case, source="diagnostic") for case in out]


def probe_case(spec, dtype: str = "float64", delta: Optional[float] = None) -> Case:
    """The small fixed case used to detect a target's call convention."""
    if dtype in LOW_PRECISIONS:
        return probe_case(spec, "float32", delta).at_precision(dtype)
    if spec.case_builder is not None:
        d = None if spec.default_delta is None else float(spec.default_delta if delta is None else delta)
        cfg = CaseConfig(dtype=dtype, delta=d, max_size=12, use_grad_output=False, allow_2d=False)
        kind = spec.kinds[0] if getattr(spec, "kinds", ()) else "random"
        case = build_case(RngSource(np.random.default_rng(7)), spec, cfg, kind=kind, size=10, images=1)
        return replace(case, kind="probe", source="probe", grad_output=1.0)
    return fixed_probe_case(spec.label_kind, spec.default_delta, dtype, delta)

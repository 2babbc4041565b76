"""RankDetNet ranking losses (RankDet Eqs. 2-6, Sec. 3.4): public functions, validators and records.

Each public function is three steps: its validator (every argument and option, types included,
checked before anything is computed and identically for every backend), the backend's
computation (the reference of :mod:`rankspec.refimpl.reference.rankdet`, or a kernel of
:mod:`rankspec.refimpl.fast.rankdet` named by the record), the result.  The input layout is
described in :mod:`rankspec.refimpl.reference.rankdet`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np

from .._result import LossResult
from .._validate import as_float_array, check_choice, check_int as _check_int, check_positive_float
from ..constants import check_backend
from ..record import Convention, LossRecord, register_record
from ..reference.rankdet import (BACKGROUND, CLASS_REDUCTIONS, GROUP_SPLITS, IGNORE, IOU_GRADS, IOU_NORMALIZATIONS,
                                 IOU_PAIRS, MININGS, OBJECTNESS, RANK_FUNCTIONS, REWEIGHTINGS, SCORE_SPACES, PairLoss,
                                 class_specific_reference, global_reference, iou_guided_reference,
                                 pair_loss_reference, rankdet_reference)
from ..registry import implements

__all__ = ["GlobalRankingInput", "ClassRankingInput", "IoURankingInput", "RankDetInput", "PairInput",
           "validate_global", "validate_class_specific", "validate_iou_guided", "validate_rankdet",
           "validate_pair_loss", "reweighted_pair_loss", "global_ranking_loss", "class_specific_ranking_loss",
           "iou_guided_ranking_loss", "rankdet_loss", "GLOBAL_RANKING_RECORD", "CLASS_SPECIFIC_RANKING_RECORD",
           "IOU_GUIDED_RANKING_RECORD", "RANKDET_RECORD"]

# ----------------------------------------------------------------------------------------------------------------
# Input parsing
# ----------------------------------------------------------------------------------------------------------------

def _integer_array(x, name: str) -> np.ndarray:
    """A float64 copy of ``x`` whose entries must be whole numbers."""
    dtype = getattr(x, "dtype", None)
    if dtype is not None and str(dtype).endswith("bool"):
        raise TypeError(f"{name} must hold integer ids, got a boolean array")
    arr = as_float_array(x, name)
    if np.any(arr != np.round(arr)):
        bad = arr[arr != np.round(arr)].ravel()[0]
        raise ValueError(f"{name} must hold whole numbers; found {bad!r}")
    return arr


def _parse_logits(logits, *, allow_1d: bool) -> np.ndarray:
    s = as_float_array(logits, "logits")
    if s.ndim == 2 and s.shape[1] >= 1:
        return s
    if s.ndim == 1 and allow_1d:
        return s
    want = "[N] or [N, C]" if allow_1d else "[N, C]"
    raise ValueError(f"logits must have shape {want} (N samples, C classes), got shape {s.shape}")


def _parse_labels(labels, s: np.ndarray) -> np.ndarray:
    """Class ids ``[N]`` (int64) in {IGNORE, BACKGROUND, 0..C-1} from ids or one-hot rows."""
    n = s.shape[0]
    shape = tuple(getattr(labels, "shape", np.shape(labels)))
    if s.ndim == 2 and shape == s.shape:
        # one-hot [N, C]: 1 marks the class, an all-zero row is background
        onehot = as_float_array(labels, "labels")
        if np.any((onehot != 0) & (onehot != 1)):
            raise ValueError("one-hot labels must contain only 0 and 1")
        if np.any(onehot.sum(axis=1) > 1):
            raise ValueError("one-hot labels must have at most one 1 per row (one class per sample)")
        return np.where(onehot.sum(axis=1) > 0, onehot.argmax(axis=1), BACKGROUND).astype(np.int64)
    if shape != (n,):
        raise ValueError(f"labels must have shape ({n},) (one class id per sample) or the shape of logits "
                         f"{s.shape} (one-hot); got shape {shape}")
    lab = _integer_array(labels, "labels").astype(np.int64)
    upper = s.shape[1] - 1 if s.ndim == 2 else None
    bad = lab < IGNORE
    if upper is not None:
        bad |= lab > upper
    if np.any(bad):
        rule = f"0..{upper}" if upper is not None else "a class id >= 0"
        raise ValueError(f"labels must be {rule} (positive), {BACKGROUND} (background) or {IGNORE} (ignored); "
                         f"found {int(lab[bad][0])}")
    return lab


def _parse_ious(ious, lab: np.ndarray) -> np.ndarray:
    s = as_float_array(ious, "ious")
    if s.shape != lab.shape:
        raise ValueError(f"ious must have shape {lab.shape} (one IoU per sample), got shape {s.shape}")
    pos = lab >= 0
    if np.any((s[pos] < 0) | (s[pos] > 1)):
        bad = s[pos][(s[pos] < 0) | (s[pos] > 1)][0]
        raise ValueError(f"ious of positive samples must lie in [0, 1]; found {bad!r}")
    return s


def _parse_levels(levels, lab: np.ndarray) -> np.ndarray:
    if levels is None:
        return np.zeros(lab.shape, dtype=np.int64)
    lv = _integer_array(levels, "levels")
    if lv.shape != lab.shape:
        raise ValueError(f"levels must have shape {lab.shape} (one pyramid level per sample), got {lv.shape}")
    if np.any(lv < 0):
        raise ValueError(f"levels must be pyramid-level ids >= 0; found {int(lv[lv < 0][0])}")
    return lv.astype(np.int64)



def _check_common(rank_function, reweighting, mining, group_split, num_groups, neg_ratio, score_space):
    check_choice(score_space, "score_space", SCORE_SPACES)
    if mining == "group" and group_split == "unit" and score_space != "probability":
        raise ValueError("group_split='unit' bins confidences on [0, 1]; it needs score_space='probability'")
    check_choice(rank_function, "rank_function", RANK_FUNCTIONS)
    check_choice(reweighting, "reweighting", REWEIGHTINGS)
    check_choice(mining, "mining", MININGS)
    check_choice(group_split, "group_split", GROUP_SPLITS)
    return _check_int(num_groups, "num_groups", 1), _check_int(neg_ratio, "neg_ratio", 1)



# ----------------------------------------------------------------------------------------------------------------
# Validated inputs and the validators (one per loss)
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GlobalRankingInput:
    """Validated input of :func:`global_ranking_loss`."""

    logits: np.ndarray  #: [N] or [N, C] float64
    labels: np.ndarray  #: [N] int64 class ids (BACKGROUND, IGNORE or 0..C-1)
    rank_function: str
    score_space: str
    reweighting: str
    mining: str
    num_groups: int
    neg_ratio: int
    group_split: str
    objectness: str


@dataclass(frozen=True)
class ClassRankingInput:
    """Validated input of :func:`class_specific_ranking_loss`."""

    logits: np.ndarray  #: [N, C] float64
    labels: np.ndarray  #: [N] int64
    rank_function: str
    score_space: str
    reweighting: str
    mining: str
    num_groups: int
    neg_ratio: int
    group_split: str
    class_reduction: str


@dataclass(frozen=True)
class IoURankingInput:
    """Validated input of :func:`iou_guided_ranking_loss`."""

    logits: np.ndarray  #: [N, C] float64
    labels: np.ndarray  #: [N] int64
    ious: np.ndarray  #: [N] float64 (positives' entries in [0, 1])
    levels: np.ndarray  #: [N] int64 pyramid levels
    alpha: float
    rank_function: str
    score_space: str
    iou_grad: str
    iou_pairs: str
    iou_normalization: str


@dataclass(frozen=True)
class RankDetInput:
    """Validated input of :func:`rankdet_loss`: the three losses' inputs and the weights."""

    global_: GlobalRankingInput
    class_: ClassRankingInput
    iou: Optional[IoURankingInput]  #: None when ``ious`` is None (then ``weights[2] == 0``)
    weights: np.ndarray  #: (4,) non-negative
    regression: float


@dataclass(frozen=True)
class PairInput:
    """Validated input of :func:`reweighted_pair_loss`."""

    neg_f: np.ndarray  #: flat float64
    pos_f: np.ndarray  #: flat float64
    rank_function: str
    reweighting: str
    z: Optional[np.ndarray]  #: frozen weights [len(neg_f), len(pos_f)] or None


def validate_global(logits, labels, *, rank_function="exponential", score_space="probability",
                    reweighting="dynamic", mining="group", num_groups=15, neg_ratio=3, group_split="range",
                    objectness="max", backend="numpy") -> GlobalRankingInput:
    """Every check of :func:`global_ranking_loss`: options, then logits ([N] or [N, C]) and labels.  O(N C)."""
    num_groups, neg_ratio = _check_common(rank_function, reweighting, mining, group_split, num_groups, neg_ratio,
                                          score_space)
    check_choice(objectness, "objectness", OBJECTNESS)
    s = _parse_logits(logits, allow_1d=True)
    lab = _parse_labels(labels, s)
    return GlobalRankingInput(s, lab, rank_function, score_space, reweighting, mining, num_groups, neg_ratio,
                              group_split, objectness)


def validate_class_specific(logits, labels, *, rank_function="exponential", score_space="probability",
                            reweighting="dynamic", mining="group", num_groups=3, neg_ratio=3, group_split="range",
                            class_reduction="sum", backend="numpy") -> ClassRankingInput:
    """Every check of :func:`class_specific_ranking_loss`: options, then logits ([N, C]) and labels.  O(N C)."""
    num_groups, neg_ratio = _check_common(rank_function, reweighting, mining, group_split, num_groups, neg_ratio,
                                          score_space)
    check_choice(class_reduction, "class_reduction", CLASS_REDUCTIONS)
    s = _parse_logits(logits, allow_1d=False)
    lab = _parse_labels(labels, s)
    return ClassRankingInput(s, lab, rank_function, score_space, reweighting, mining, num_groups, neg_ratio,
                             group_split, class_reduction)


def validate_iou_guided(logits, labels, ious, levels=None, *, alpha=1.0, rank_function="exponential",
                        score_space="probability", iou_grad="higher", iou_pairs="unordered",
                        iou_normalization="none", backend="numpy") -> IoURankingInput:
    """Every check of :func:`iou_guided_ranking_loss`: options, then logits ([N, C]), labels, ious, levels.  O(N C)."""
    alpha = check_positive_float(alpha, "alpha")
    check_choice(rank_function, "rank_function", RANK_FUNCTIONS)
    check_choice(iou_grad, "iou_grad", IOU_GRADS)
    check_choice(iou_pairs, "iou_pairs", IOU_PAIRS)
    check_choice(iou_normalization, "iou_normalization", IOU_NORMALIZATIONS)
    s = _parse_logits(logits, allow_1d=False)
    lab = _parse_labels(labels, s)
    iou = _parse_ious(ious, lab)
    lev = _parse_levels(levels, lab)
    check_choice(score_space, "score_space", SCORE_SPACES)
    return IoURankingInput(s, lab, iou, lev, alpha, rank_function, score_space, iou_grad, iou_pairs,
                           iou_normalization)


def validate_rankdet(logits, labels, ious=None, levels=None, regression=0.0, *, weights=(1.0, 1.0, 1.0, 1.0),
                     rank_function="exponential", score_space="probability", reweighting="dynamic", mining="group",
                     global_groups=15, class_groups=3, neg_ratio=3, group_split="range", objectness="max",
                     class_reduction="sum", alpha=1.0, iou_grad="higher", iou_pairs="unordered",
                     iou_normalization="none", backend="numpy") -> RankDetInput:
    """Every check of :func:`rankdet_loss`: weights, regression, then the three losses' validators.  O(N C)."""
    w = as_float_array(weights, "weights")
    if w.shape != (4,) or np.any(w < 0):
        raise ValueError(f"weights must be 4 non-negative numbers (global, class, iou, regression), got {weights!r}")
    regression = as_float_array(regression, "regression")
    if regression.size != 1:
        raise ValueError(f"regression must be a scalar (the regression loss), got shape {regression.shape}")
    regression = float(regression.reshape(()))
    g = validate_global(logits, labels, rank_function=rank_function, score_space=score_space,
                        reweighting=reweighting, mining=mining, num_groups=global_groups, neg_ratio=neg_ratio,
                        group_split=group_split, objectness=objectness)
    c = validate_class_specific(logits, labels, rank_function=rank_function, score_space=score_space,
                                reweighting=reweighting, mining=mining, num_groups=class_groups, neg_ratio=neg_ratio,
                                group_split=group_split, class_reduction=class_reduction)
    if ious is None:
        if w[2] != 0:
            raise ValueError("ious is required for the IoU-guided loss (or pass weights with weights[2] = 0)")
        i = None
    else:
        i = validate_iou_guided(logits, labels, ious, levels, alpha=alpha, rank_function=rank_function,
                                score_space=score_space, iou_grad=iou_grad, iou_pairs=iou_pairs,
                                iou_normalization=iou_normalization)
    return RankDetInput(g, c, i, w, regression)


def validate_pair_loss(neg_f, pos_f, *, rank_function="exponential", reweighting="dynamic", z=None) -> PairInput:
    """Every check of :func:`reweighted_pair_loss`: options, scores (finite), z's shape and values.  O(|N| |P|)."""
    check_choice(rank_function, "rank_function", RANK_FUNCTIONS)
    check_choice(reweighting, "reweighting", REWEIGHTINGS)
    neg = as_float_array(neg_f, "neg_f", allow_empty=True).reshape(-1)
    pos = as_float_array(pos_f, "pos_f", allow_empty=True).reshape(-1)
    if z is not None:
        z = as_float_array(z, "z", allow_empty=True)
        if z.shape != (neg.size, pos.size):
            raise ValueError(f"z has shape {z.shape} but there are {(neg.size, pos.size)} (negative, positive) pairs")
    return PairInput(neg, pos, rank_function, reweighting, z)


def _pair_reference(x: PairInput) -> PairLoss:
    return pair_loss_reference(x.neg_f, x.pos_f, x.rank_function, x.reweighting, x.z)


# ----------------------------------------------------------------------------------------------------------------
# Conventions (held by the records; ``applies_to`` below lists the records and the helpers that take them)
# ----------------------------------------------------------------------------------------------------------------

_GLOBAL, _CLASS, _IOU, _ALL = ("global_ranking_loss",), ("class_specific_ranking_loss",), \
    ("iou_guided_ranking_loss",), ("rankdet_loss",)

_DECLARED = (
    Convention(
        "rank_function", "RankDet: ranking function L_rank", _GLOBAL + _CLASS + _IOU + _ALL
        + ("rank_function_values", "reweighted_pair_loss"), "exponential", RANK_FUNCTIONS,
        "'exponential': exp(x); 'sigmoid': 1/(1+exp(-x)); 'logistic': log(1+exp(x)). No slope or temperature.",
        "The paper uses exp (Sec. 3.1); Table 5a reports sigmoid and logistic without formulas (AP 37.2 / 37.3 vs "
        "37.3). No public authors' code."),
    Convention(
        "score_space", "RankDet: what f_theta is", _GLOBAL + _CLASS + _IOU + _ALL, "probability", SCORE_SPACES,
        "'probability': f = sigmoid(logit) and the gradient is chained through the sigmoid; 'logit': f = logit.",
        "The paper calls f the 'object confidence', plots it in [0, 1] (Fig. 3, 'score > 0.2') and bins it 'at "
        "equal intervals of scores'; it never says logit or probability explicitly."),
    Convention(
        "reweighting", "RankDet: dynamic re-weighting factor z", _GLOBAL + _CLASS + _ALL
        + ("reweighted_pair_loss",), "dynamic", REWEIGHTINGS,
        "'dynamic': z(n,p) = L_rank(x_np) / sum L_rank (Eqs. 3, 5), a constant in back-propagation, so the loss "
        "is sum L^2 / sum L; 'mean': z = 1/#pairs; 'none': z = 1 (plain sum).",
        "Eqs. 3 and 5 define z; Sec. 3.1 says no gradient flows through it. Table 4 rows without re-weighting do "
        "not say whether the plain sum or the mean is used."),
    Convention(
        "mining", "RankDet: negative mining", _GLOBAL + _CLASS + _ALL, "group", MININGS,
        "'group': group strategy (one negative per score group, its mean score); 'ohem': the neg_ratio*|P| "
        "highest-scoring negatives; 'all': every negative.",
        "Sec. 3.1 offers OHEM 1:3 and the group strategy; the group strategy is the final model (Table 4 row 10, "
        "37.8 AP vs 37.3 for OHEM)."),
    Convention(
        "num_groups", "RankDet: number of groups", _GLOBAL + _CLASS + ("group_negatives",),
        {"global_ranking_loss": 15, "class_specific_ranking_loss": 3}, (),
        "Number of score groups of the group strategy (rankdet_loss: global_groups and class_groups).",
        "Sec. 4.1: 15 groups in the global loss and 3 for each class in the class-specific loss."),
    Convention(
        "global_groups", "RankDet: number of groups of the global loss in rankdet_loss", _ALL, 15, (),
        "num_groups of the global ranking loss inside rankdet_loss.",
        "Sec. 4.1: 15 groups in the global ranking loss."),
    Convention(
        "class_groups", "RankDet: number of groups per class in rankdet_loss", _ALL, 3, (),
        "num_groups of the class-specific ranking loss inside rankdet_loss (per class).",
        "Sec. 4.1: 3 groups for each class in the class-specific ranking loss."),
    Convention(
        "neg_ratio", "RankDet: OHEM negatives per positive", _GLOBAL + _CLASS + _ALL + ("ohem_negatives",), 3, (),
        "OHEM keeps the min(neg_ratio*|P|, |N|) highest-scoring negatives (per class for the class-specific loss); "
        "ties broken by lower sample index.",
        "Secs. 3.1 and 4.1: ratio 1:3 ('we use all the positives and collect 3x hard negatives')."),
    Convention(
        "group_split", "RankDet: 'equal intervals of scores'", _GLOBAL + _CLASS + _ALL + ("group_negatives",),
        "range", GROUP_SPLITS,
        "'range': equal-width bins between the lowest and highest negative score (an inner edge joins the upper "
        "bin); 'unit': equal-width bins of [0, 1] (probabilities only); 'count': equal-size groups of the sorted "
        "negatives (numpy.array_split of the ascending order). Empty groups are dropped.",
        "Sec. 3.1: 'divide them into multiple groups at equal intervals of scores. We then use the average scores "
        "of each group' - equal score width is the literal reading; the range is not stated."),
    Convention(
        "objectness", "RankDet: object confidence for the global loss", _GLOBAL + _ALL, "max", OBJECTNESS,
        "With [N, C] logits: 'max': f = highest class confidence for every sample (ties: lowest class index); "
        "'target': the ground-truth class's confidence for foreground, the highest for background.",
        "The paper ranks 'foreground samples from all object classes' by 'object confidence' without defining it "
        "for a per-class sigmoid head."),
    Convention(
        "class_reduction", "RankDet: sum over classes", _CLASS + _ALL, "sum", CLASS_REDUCTIONS,
        "'sum': Eq. 4's plain sum of the per-class losses; 'mean': divided by the number of classes with pairs.",
        "Eq. 4 sums over classes (written c = 0..C; read as the C object classes)."),
    Convention(
        "iou_grad", "RankDet: IoU gradient in the IoU-guided loss", _IOU + _ALL, "higher", IOU_GRADS,
        "'higher': in a pair with f(p_i) > f(p_j) only s(p_i) gets a gradient; 'both': both IoUs; 'none': the IoUs "
        "are constants. The logits' gradient is the same under all three.",
        "Sec. 3.3 and Table 4 ('IoU BP'): freezing the IoU of the less confident sample is the paper's choice "
        "(37.3 AP; both: 35.4; none: 37.0)."),
    Convention(
        "iou_pairs", "RankDet: which pairs Eq. 6 sums", _IOU + _ALL, "unordered", IOU_PAIRS,
        "'unordered': each pair i < j once; 'ordered': every i != j (twice the loss and gradient); 'all': the "
        "literal double sum including i == j, adding the constant L_rank(0) per positive.",
        "Eq. 6 writes a double sum over p_i, p_j in P_c^k; the text reasons about unordered pairs ('without loss "
        "of generality, suppose f(p_i) > f(p_j)')."),
    Convention(
        "iou_normalization", "RankDet: normalisation of the IoU-guided loss", _IOU + _ALL, "none",
        IOU_NORMALIZATIONS,
        "'none': the plain sum of Eq. 6; 'pairs': divided by the number of pairs counted (over all classes and "
        "levels).",
        "Eq. 6 is a plain sum; the paper mentions no normaliser."),
    Convention(
        "alpha", "RankDet: IoU-guided scale alpha", _IOU + _ALL, 1.0, (0.2, 0.5, 1.0, 5.0),
        "alpha > 0 scales the argument of L_rank in Eq. 6.",
        "Sec. 4.1 and Table 5b: alpha = 1.0 (37.3 AP; 0.2: 37.0, 0.5: 37.0, 5.0: 36.0)."),
    Convention(
        None, "RankDet: empty sets", _GLOBAL + _CLASS + _IOU + _ALL, "loss 0, zero gradient", (),
        "No foreground or no background sample: global loss 0. A class without positives or negatives adds 0 to "
        "the class-specific loss. A (class, level) group with fewer than two positives has no IoU pair. Ignored "
        "samples (label -2) take part in nothing.",
        "The paper does not discuss empty sets."),
    Convention(
        None, "RankDet: group prototypes", _GLOBAL + _CLASS + _ALL, "weight 1, mean score", (),
        "Each non-empty group is one negative with the mean confidence of its members and weight 1 (whatever its "
        "size); its gradient is shared equally by its members. Group membership carries no gradient.",
        "Sec. 3.1: 'use the average scores of each group to compute the loss'."),
)


def _conventions_of(name: str):
    """The declared conventions that ``name`` takes, with only the helper names left in ``applies_to`` (the
    records holding a convention are added back by :func:`rankspec.refimpl.conventions.all_conventions`)."""
    out = []
    for c in _DECLARED:
        if name not in c.applies_to:
            continue
        default = c.default[name] if isinstance(c.default, dict) and name in c.default else c.default
        extras = tuple(n for n in c.applies_to if n not in _RECORD_NAMES)
        out.append(replace(c, applies_to=extras, default=default))
    return tuple(out)


_RECORD_NAMES = _GLOBAL + _CLASS + _IOU + _ALL

# ----------------------------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------------------------

_CASES = "rankspec.refimpl.cases:build_rankdet_case"


def _kernels(loss: str):
    return {"numba": f"rankspec.refimpl.fast.rankdet:numba_{loss}", "cuda": f"rankspec.refimpl.fast.rankdet:cuda_{loss}"}


GLOBAL_RANKING_RECORD = register_record(LossRecord(
    name="global_ranking_loss", title="Global ranking loss with dynamic re-weighting (foreground vs background)",
    citations=(("RankDet", "Eqs. 2-3"), ("RankDet", "Sec. 3.1"), ("RankDet", "Sec. 4.1")), family="rankdet",
    validate=validate_global, reference=global_reference, conventions=_conventions_of("global_ranking_loss"),
    kernels=_kernels("global"), label_kind="class", case_builder=_CASES,
    terms=("global", "num_pairs", "z", "negatives", "positives"), head_keys=("loss_global",), head_scope="image"))

CLASS_SPECIFIC_RANKING_RECORD = register_record(LossRecord(
    name="class_specific_ranking_loss", title="Class-specific ranking loss with per-class dynamic re-weighting",
    citations=(("RankDet", "Eqs. 4-5"), ("RankDet", "Sec. 3.2"), ("RankDet", "Sec. 4.1")), family="rankdet",
    validate=validate_class_specific, reference=class_specific_reference,
    conventions=_conventions_of("class_specific_ranking_loss"), kernels=_kernels("class_specific"),
    label_kind="class", case_builder=_CASES, terms=("class", "per_class", "num_pairs", "negatives", "z"),
    head_keys=("loss_class",), head_scope="image"))

IOU_GUIDED_RANKING_RECORD = register_record(LossRecord(
    name="iou_guided_ranking_loss",
    title="IoU-guided ranking loss over positive pairs of one class and one pyramid level",
    citations=(("RankDet", "Eq. 6"), ("RankDet", "Sec. 3.3"), ("RankDet", "Table 4 (IoU BP)")), family="rankdet",
    validate=validate_iou_guided, reference=iou_guided_reference,
    conventions=_conventions_of("iou_guided_ranking_loss"), kernels=_kernels("iou_guided"), label_kind="class",
    case_builder=_CASES, terms=("iou", "grad_ious", "num_pairs"), head_keys=("loss_iou",), head_scope="image",
    input_names=("logits", "labels", "ious", "levels")))

RANKDET_RECORD = register_record(LossRecord(
    name="rankdet_loss",
    title="RankDetNet objective: global + class-specific + IoU-guided + regression at 1:1:1:1",
    citations=(("RankDet", "Sec. 3.4"), ("RankDet", "Eqs. 2-6")), family="rankdet",
    validate=validate_rankdet, reference=rankdet_reference, conventions=_conventions_of("rankdet_loss"),
    kernels=_kernels("rankdet"), label_kind="class", case_builder=_CASES,
    terms=("global", "class", "iou", "regression", "grad_ious"),
    head_keys=("loss_global", "loss_class", "loss_iou"), head_scope="image",
    input_names=("logits", "labels", "ious", "levels")))

# ----------------------------------------------------------------------------------------------------------------
# The public functions
# ----------------------------------------------------------------------------------------------------------------


@implements(("RankDet", "Eqs. 2-3"), ("RankDet", "Eqs. 4-5 (one class)"),
            name="Re-weighted pair-wise ranking sum  sum_{n,p} z(n,p) L_rank(f(n) - f(p))",
            family="rankdet", kind="primitive")
def reweighted_pair_loss(neg_f, pos_f, *, rank_function: str = "exponential", reweighting: str = "dynamic",
                         z=None, backend: str = "numpy") -> PairLoss:
    r"""The inner double sum of RankDet Eq. 2 (and of Eq. 4 for one class).

    .. math::

        \mathcal{L} = \sum_{n\in\mathcal{N}}\sum_{p\in\mathcal{P}} z(n,p)\,
                      L_{rank}\big(f(n) - f(p)\big), \qquad
        z(n,p) = \frac{L_{rank}(f(n)-f(p))}{\sum_{n',p'} L_{rank}(f(n')-f(p'))}
        \quad\text{(Eq. 3)}

    ``reweighting="dynamic"`` is Eq. 3; ``"mean"`` uses z = 1/(|N||P|) and
    ``"none"`` z = 1 (the "no dynamic re-weighting" rows of Table 4 do not say
    which).  z is a constant in back-propagation (Sec. 3.1), so

    .. math::

        \frac{\partial\mathcal{L}}{\partial f(n)} = \sum_p z(n,p)\,L'_{rank}(x_{np}),\qquad
        \frac{\partial\mathcal{L}}{\partial f(p)} = -\sum_n z(n,p)\,L'_{rank}(x_{np}).

    Passing ``z`` (an array [len(neg_f), len(pos_f)]) uses those frozen weights
    instead (then ``reweighting`` is ignored): the loss with z frozen at some
    earlier point, whose finite differences the tests compare with the
    gradient.  Empty ``neg_f`` or ``pos_f``: loss 0 and empty / zero
    gradients.  Time and memory O(|N| |P|).  ``backend="numba"`` / ``"cuda"``: the fast paths of
    :mod:`rankspec.refimpl.fast.rankdet` (same numbers; ``O(|N| + |P|)`` for the exponential, no
    ``|N| x |P|`` memory; ``z`` is then computed on demand).
    """
    backend = check_backend(backend)
    x = validate_pair_loss(neg_f, pos_f, rank_function=rank_function, reweighting=reweighting, z=z)
    if backend == "numpy" or x.z is not None:  # frozen weights: the U x P matrix is given, O(U P) anyway
        return _pair_reference(x)
    from ..fast.rankdet import fast_pair_loss  # the fast paths (same numbers)

    return fast_pair_loss(backend, x)


@implements(*GLOBAL_RANKING_RECORD.citations, name=GLOBAL_RANKING_RECORD.title, family="rankdet")
def global_ranking_loss(logits, labels, *, rank_function: str = "exponential", score_space: str = "probability",
                        reweighting: str = "dynamic", mining: str = "group", num_groups: int = 15,
                        neg_ratio: int = 3, group_split: str = "range", objectness: str = "max",
                        backend: str = "numpy") -> LossResult:
    r"""Global ranking loss, RankDet Eq. 2 with the re-weighting factor z of Eq. 3.

    .. math::

        \mathcal{L}_{global} = \sum_{n\in\mathcal{N}}\sum_{p\in\mathcal{P}}
            z(n,p)\,L_{rank}\big(f(n) - f(p)\big)

    :math:`\mathcal{P}` = every foreground sample (labels ``>= 0``, all
    classes), :math:`\mathcal{N}` = the mined background samples (labels
    ``-1``).  ``f`` of a sample is its object confidence: with ``[N]`` logits
    the logit's confidence; with ``[N, C]`` logits ``objectness="max"`` takes
    the highest class confidence (ties: lowest class index), ``"target"`` the
    ground-truth class's confidence for foreground and the highest for
    background.

    Parameters
    ----------
    logits, labels:
        See the module docstring (``[N]`` or ``[N, C]`` logits, ``[N]`` ids or one-hot).
    rank_function:
        ``"exponential"`` (the paper's choice), ``"sigmoid"`` or ``"logistic"`` (Table 5a).
    score_space:
        ``"probability"``: f = sigmoid(logit); ``"logit"``: f = logit.
    reweighting:
        ``"dynamic"`` (Eq. 3), ``"mean"`` (z = 1/#pairs) or ``"none"`` (z = 1).
    mining:
        ``"group"`` (default; Table 4 row 10, the final model), ``"ohem"``
        (top ``neg_ratio * |P|`` background samples) or ``"all"`` (no mining).
    num_groups, group_split:
        Number of groups (15 in the paper) and how they are cut (:func:`group_negatives`).
    neg_ratio:
        OHEM negatives per positive (3).

    Returns
    -------
    LossResult
        ``grad`` = d loss / d logits with z held constant.  ``terms``:
        ``"global"`` (the loss), ``"num_pairs"``, ``"z"`` ([units, |P|]),
        ``"negatives"`` (list of sample-index arrays, one per negative unit:
        a sample for OHEM / all, a group for group mining), ``"positives"``.
        No foreground or no background sample: loss 0, zero gradient.

    Notes
    -----
    Time O(N C + M log M + |P| U) and memory O(N C + |P| U), with M
    background samples and U negative units (``3|P|`` for OHEM, ``<=
    num_groups`` for groups, M for all).  ``backend="numba"`` / ``"cuda"``: the fast paths of
    :mod:`rankspec.refimpl.fast.rankdet` (same numbers, ``O(N C + M log M + |P| + U)`` for the
    exponential, no ``|P| x U`` memory).
    """
    return GLOBAL_RANKING_RECORD.run(backend, logits, labels, rank_function=rank_function, score_space=score_space,
                                     reweighting=reweighting, mining=mining, num_groups=num_groups,
                                     neg_ratio=neg_ratio, group_split=group_split, objectness=objectness)


@implements(*CLASS_SPECIFIC_RANKING_RECORD.citations, name=CLASS_SPECIFIC_RANKING_RECORD.title, family="rankdet")
def class_specific_ranking_loss(logits, labels, *, rank_function: str = "exponential",
                                score_space: str = "probability", reweighting: str = "dynamic",
                                mining: str = "group", num_groups: int = 3, neg_ratio: int = 3,
                                group_split: str = "range", class_reduction: str = "sum",
                                backend: str = "numpy") -> LossResult:
    r"""Class-specific ranking loss, RankDet Eq. 4 with z_c of Eq. 5.

    .. math::

        \mathcal{L}_{cls} = \sum_{c}\sum_{n\in\mathcal{N}_c}\sum_{p\in\mathcal{P}_c}
            z_c(n,p)\,L_{rank}\big(f_c(n) - f_c(p)\big)

    For each class c: :math:`\mathcal{P}_c` = samples labelled c,
    :math:`\mathcal{N}_c` = mined samples among the other classes' positives
    and the background (Sec. 3.2), f_c = confidence of class c (column c).
    Mining (OHEM ``neg_ratio * |P_c|``, or ``num_groups`` = 3 groups per
    class, Sec. 4.1) is done per class on f_c.  ``class_reduction="sum"`` is
    Eq. 4; ``"mean"`` divides by the number of classes that have pairs.

    Returns
    -------
    LossResult
        ``grad`` [N, C] (z_c constant); ``terms``: ``"class"`` (the loss),
        ``"per_class"`` ([C], before reduction), ``"num_pairs"``, and per
        class c ``"negatives"[c]`` (sample-index arrays of the negative units)
        and ``"z"[c]`` ([units, |P_c|]).  A class
        without positives or without negatives contributes 0; no such class
        at all gives loss 0 and a zero gradient.

    Notes
    -----
    Time O(C N log N + sum_c |P_c| U_c), memory O(N C + max_c |P_c| U_c).  ``backend="numba"`` /
    ``"cuda"``: the fast paths of :mod:`rankspec.refimpl.fast.rankdet` (same numbers, no
    ``|P_c| x U_c`` memory).
    """
    return CLASS_SPECIFIC_RANKING_RECORD.run(backend, logits, labels, rank_function=rank_function,
                                             score_space=score_space, reweighting=reweighting, mining=mining,
                                             num_groups=num_groups, neg_ratio=neg_ratio, group_split=group_split,
                                             class_reduction=class_reduction)


@implements(*IOU_GUIDED_RANKING_RECORD.citations, name=IOU_GUIDED_RANKING_RECORD.title, family="rankdet")
def iou_guided_ranking_loss(logits, labels, ious, levels=None, *, alpha: float = 1.0,
                            rank_function: str = "exponential", score_space: str = "probability",
                            iou_grad: str = "higher", iou_pairs: str = "unordered",
                            iou_normalization: str = "none", backend: str = "numpy") -> LossResult:
    r"""IoU-guided ranking loss, RankDet Eq. 6.

    .. math::

        \mathcal{L}_{IoU} = \sum_{c}\sum_{k}\sum_{(p_i,p_j)\in\mathcal{P}^k_c}
            L_{rank}\Big(-\alpha\,\big(f(p_i) - f(p_j)\big)\big(s(p_i) - s(p_j)\big)\Big)

    with f(p) the confidence of p's ground-truth class and s(p) its IoU
    (``ious``).  Pairs are formed only within one class c and one pyramid
    level k (``levels``; ``None`` = all samples on one level, the "Merge" row
    of Table 4).

    Parameters
    ----------
    alpha:
        > 0, 1.0 in the paper (Table 5b).
    iou_grad:
        Gradient to the IoUs (``terms["grad_ious"]``): ``"higher"`` (Sec. 3.3,
        the default): in a pair with f(p_i) > f(p_j) only s(p_i) gets a
        gradient, s(p_j) is frozen (with equal confidences the IoU gradient of
        the pair is 0 anyway); ``"both"``: both IoUs; ``"none"``: no IoU gradient.
    iou_pairs:
        ``"unordered"``: every pair i < j once (default); ``"ordered"``: every
        i != j (twice each, so twice the loss); ``"all"``: the literal double
        sum of Eq. 6 including i == j, which adds the constant L_rank(0) per positive.
    iou_normalization:
        ``"none"``: the sum of Eq. 6; ``"pairs"``: divided by the number of pairs counted.

    Returns
    -------
    LossResult
        ``grad`` = d loss / d logits [N, C]; ``terms``: ``"iou"`` (the loss),
        ``"grad_ious"`` ([N], zero outside positives), ``"num_pairs"``.
        Fewer than two positives in every (class, level) group (and
        ``iou_pairs != "all"``): loss 0, zero gradients.

    Notes
    -----
    Time and memory O(sum over (c, k) groups of |P_c^k|^2) plus O(N C).  ``backend="numba"`` /
    ``"cuda"``: :mod:`rankspec.refimpl.fast.rankdet` (same numbers, ``O(|P_c^k|)`` memory).
    """
    return IOU_GUIDED_RANKING_RECORD.run(backend, logits, labels, ious, levels, alpha=alpha,
                                         rank_function=rank_function, score_space=score_space, iou_grad=iou_grad,
                                         iou_pairs=iou_pairs, iou_normalization=iou_normalization)


@implements(*RANKDET_RECORD.citations, name=RANKDET_RECORD.title, family="rankdet")
def rankdet_loss(logits, labels, ious=None, levels=None, regression: float = 0.0, *,
                 weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), rank_function: str = "exponential",
                 score_space: str = "probability", reweighting: str = "dynamic", mining: str = "group",
                 global_groups: int = 15, class_groups: int = 3, neg_ratio: int = 3, group_split: str = "range",
                 objectness: str = "max", class_reduction: str = "sum", alpha: float = 1.0,
                 iou_grad: str = "higher", iou_pairs: str = "unordered",
                 iou_normalization: str = "none", backend: str = "numpy") -> LossResult:
    r"""The RankDetNet training objective of one image (Sec. 3.4).

    .. math::

        \mathcal{L} = w_1 \mathcal{L}_{global} + w_2 \mathcal{L}_{cls} + w_3 \mathcal{L}_{IoU}
                    + w_4 \mathcal{L}_{reg}, \qquad (w_1, w_2, w_3, w_4) = (1, 1, 1, 1)

    ``regression`` is the value of the regression loss computed elsewhere (it
    does not depend on the logits, so it adds to the loss but not to
    ``grad``).  ``ious`` may be ``None`` only when ``weights[2] == 0``.  The
    other keywords are those of :func:`global_ranking_loss` (with
    ``num_groups=global_groups``), :func:`class_specific_ranking_loss`
    (``num_groups=class_groups``) and :func:`iou_guided_ranking_loss`.

    Returns
    -------
    LossResult
        ``grad`` = d loss / d logits [N, C]; ``terms``: ``"global"``,
        ``"class"``, ``"iou"``, ``"regression"`` (unweighted values),
        ``"grad_ious"`` (weighted d loss / d ious under the Sec. 3.3 rule).

    Notes
    -----
    Cost: the sum of the three losses' costs.  ``backend="numba"`` / ``"cuda"`` runs the fast
    paths of :mod:`rankspec.refimpl.fast.rankdet` for all three.
    """
    return RANKDET_RECORD.run(backend, logits, labels, ious, levels, regression, weights=weights,
                              rank_function=rank_function, score_space=score_space, reweighting=reweighting,
                              mining=mining, global_groups=global_groups, class_groups=class_groups,
                              neg_ratio=neg_ratio, group_split=group_split, objectness=objectness,
                              class_reduction=class_reduction, alpha=alpha, iou_grad=iou_grad, iou_pairs=iou_pairs,
                              iou_normalization=iou_normalization)

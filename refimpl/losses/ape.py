"""APE family (key ``APE``): public functions, the validator, the loss records and their conventions.

Xu, Deng, Li, "Revisiting AP Loss for Dense Object Detection: Adaptive Ranking
Pair Selection" (CVPR 2022) rewrites the AP loss of one positive ``u`` as a
*pairwise error* (APE Eq. 8)

.. math:: L_{PE}(u) = \\frac{1}{BC_u}\\sum_{v \\in \\mathcal{N}} D(s_v - s_u)

with three ingredients exposed as keyword arguments: the distance ``D``
(``distance``: the smoothed step H of APE Eq. 6, the sigmoid S or the cross
entropy CE(S(.), 0) of APE Sec. 5 / Eq. 9), the balance constant ``BC``
(``balance``: rank+ + rank- of APE Eq. 7 or N_neg of APE Table 2) and the
ranking-pair selection: negatives only (:func:`pairwise_error_loss`) or the
adaptive sets of ARPS (APE Alg. 1) used by the APE loss (:func:`ape_loss`).

Each public function is three steps: the record's validator
(:func:`validate_pairwise`), the backend's computation (the reference
:func:`rankspec.refimpl.reference.ape.pairwise_reference`, or a kernel of
:mod:`rankspec.refimpl.fast.ape`), the result.  The ARPS cluster split (APE
Sec. 6) is :func:`rankspec.refimpl.reference.arps.arps_cluster_split`.

Readings of the printed equations (all on the Conventions page): APE Eq. 6
prints H(x) = x / 2 delta on [-delta, delta] (discontinuous): we use
x / (2 delta) + 0.5 as AP Loss and the authors' code do.  APE Eqs. 8-9 print a
leading minus sign, but Eq. 10 equates the same expression with the positive
(FP + aFP) / (TP + FP) and the authors minimise a positive loss: we read
+ (1 / BC) sum D.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .._result import LossResult
from .._validate import (_real_scalar, as_float_array, check_bool, check_choice, check_delta, check_int,
                         check_iou_targets, check_positive_float, check_same_shape)
from ..conventions import register_conventions
from ..record import Convention, LossRecord, register_record
from ..reference.ape import (SATURATION_CHOICES, afp_members, ce_pair_terms, pairwise_reference, sigmoid)
from ..reference.arps import FEATURES_CHOICES, SEPARATION_CHOICES, SMALL_INSTANCE_CHOICES, arps_cluster_split
from ..reference.primitives import step_values
from ..registry import implements

__all__ = ["pairwise_error_loss", "ape_loss", "sigmoid_distance", "ce_distance", "arps_negative_sets",
           "arps_cluster_split", "validate_pairwise", "APEInput", "APE_RECORD", "PAIRWISE_ERROR_RECORD",
           "APE_CONVENTIONS", "DISTANCE_CHOICES", "BALANCE_CHOICES", "APE_SELF_RANK_CHOICES",
           "APE_NORMALIZATION_CHOICES", "SATURATION_CHOICES", "AUTHORS_LAMBDA", "AUTHORS_CLASS_LAMBDA",
           "AUTHORS_TOP_Q", "APE_TERMS"]

#: ``distance`` keyword: smoothed step H (APE Eq. 6), sigmoid S, cross entropy CE(S(.), 0).
DISTANCE_CHOICES = ("h", "sigmoid", "ce")
#: ``balance`` keyword: rank^+(u) + rank^-(u) (APE Eq. 7) or the number of valid negatives N_neg (Table 2).
BALANCE_CHOICES = ("rank", "n_neg")
#: ``self_rank`` keyword of this family: value of the u == u term of rank^+(u).
APE_SELF_RANK_CHOICES = ("h0", "one", "half", "zero")
#: ``normalization`` keyword of this family.
APE_NORMALIZATION_CHOICES = ("positives", "active", "none")
#: lambda of the authors' configurations (and rankspec's default) ...
AUTHORS_LAMBDA = 8.0
#: ... and the default of their ``APELoss`` class
AUTHORS_CLASS_LAMBDA = 4.0
#: the authors' ``topk``: at most this many relevant negatives (the highest) take part
AUTHORS_TOP_Q = 100000
#: the authors' code keeps a pair (u, v) only if s_v - s_u > -4 / lambda (sigmoid forms)
_AUTHORS_THRESHOLD_NUMERATOR = 4.0
APE_TERMS = ("pairwise", "num_positives", "num_active", "num_pairs", "per_positive", "balance_constant")


# --------------------------------------------------------------------------- validated input

@dataclass(frozen=True)
class APEInput:
    """Validated input of :func:`pairwise_error_loss` / :func:`ape_loss` (flat float64 host arrays)."""

    name: str  #: the loss (record name)
    shape: tuple  #: shape of the logits as given (the gradient is returned in it)
    logits: np.ndarray  #: flat float64 logits
    labels: np.ndarray  #: flat float64 labels: 1 positive, 0 negative, -1 ignored
    ious: Optional[np.ndarray]  #: flat float64 IoUs in [0, 1], or None
    adaptive: bool  #: ARPS sets A_u (APE Alg. 1) rather than N (APE Eq. 8)
    distance: str
    delta: float
    lam: float
    tie_value: float
    balance: str
    threshold: Optional[float]  #: pair validity t (x > -t); None: H(x) > 0
    self_rank: str
    self_value: float  #: the u == u term of rank^+(u) under ``self_rank``
    normalization: str
    iou_weight: bool
    scale_by_lambda: bool
    saturation: str
    top_q: Optional[int]

    def normalizer(self, num_positives: int, num_active: int) -> float:
        """Z: N_pos (APE Eq. 3), the positives with a valid pair (the authors' mean), or 1."""
        if self.normalization == "positives":
            return float(num_positives)
        if self.normalization == "active":
            return float(num_active)
        return 1.0


def _check_labels(lab: np.ndarray) -> None:
    bad = (lab != 0) & (lab != 1) & (lab != -1)
    if np.any(bad):
        raise ValueError("labels must contain only 1 (positive), 0 (negative) and -1 (ignored); found "
                         f"{lab[bad].ravel()[0].item()!r}")


def _threshold(pair_threshold, distance: str, lam: float):
    """The pair-validity threshold t (a pair is valid iff s_v - s_u > -t); None: H(x) > 0."""
    if pair_threshold is None:
        return None if distance == "h" else _AUTHORS_THRESHOLD_NUMERATOR / lam
    if not isinstance(pair_threshold, bool) and isinstance(pair_threshold, (int, float, np.integer, np.floating)) \
            and float(pair_threshold) == math.inf:
        return math.inf
    return check_positive_float(pair_threshold, "pair_threshold", allow_zero=True)


def validate_pairwise(name, logits, labels, ious, *, adaptive, distance, delta, lam, tie_value, balance,
                      pair_threshold, self_rank, normalization, iou_weight, scale_by_lambda, saturation, top_q,
                      backend="numpy") -> APEInput:
    """The one validator of the family (every backend, before any early return).

    ``logits``: any shape, finite; ``labels``: same shape, 1 / 0 / -1 (ignored);
    ``ious``: same shape, in [0, 1] (required by ARPS and by ``iou_weight``).
    Every option is checked (ValueError / TypeError naming it).  O(n).
    """
    s = as_float_array(logits, "logits")
    lab = as_float_array(labels, "labels")
    check_same_shape(s, lab, "logits", "labels")
    _check_labels(lab)
    if ious is None:
        if adaptive:
            raise TypeError("ious is required: ARPS (APE Alg. 1) compares the IoUs of the positives")
        iou = None
    else:
        iou = as_float_array(ious, "ious")
        check_same_shape(s, iou, "logits", "ious")
        iou = check_iou_targets(iou, "ious").ravel()
    check_choice(distance, "distance", DISTANCE_CHOICES)
    check_choice(balance, "balance", BALANCE_CHOICES)
    check_choice(normalization, "normalization", APE_NORMALIZATION_CHOICES)
    check_choice(saturation, "saturation", SATURATION_CHOICES)
    delta = check_delta(delta)
    lam = check_positive_float(lam, "lam")
    t = _threshold(pair_threshold, distance, lam)
    if distance == "h" and delta == 0 and tie_value not in (0.0, 0.5, 1.0):
        raise ValueError(f"tie_value must be 0.0, 0.5 or 1.0, got {tie_value!r}")
    tie_value = _real_scalar(tie_value, "tie_value")
    iou_weight = check_bool(iou_weight, "iou_weight")
    scale_by_lambda = check_bool(scale_by_lambda, "scale_by_lambda")
    if iou_weight and iou is None:
        raise TypeError("iou_weight=True needs ious (the weight of positive u is its IoU)")
    check_choice(self_rank, "self_rank", APE_SELF_RANK_CHOICES)
    if top_q is not None:
        top_q = check_int(top_q, "top_q", 1)
    # D(0) of the rank-counting distance: H(0), or S(0) = 0.5 (exact in float32 too)
    zero = float(step_values(np.zeros(1), delta, tie_value)[0]) if distance == "h" else 0.5
    self_value = {"h0": zero, "one": 1.0, "half": 0.5, "zero": 0.0}[self_rank]
    return APEInput(name, s.shape, s.ravel(), lab.ravel(), iou, adaptive, distance, delta, lam, tie_value, balance,
                    t, self_rank, self_value, normalization, iou_weight, scale_by_lambda, saturation, top_q)


def _validate_pe(logits, labels, *, ious, backend="numpy", **options):
    return validate_pairwise("pairwise_error_loss", logits, labels, ious, adaptive=False, backend=backend, **options)


def _validate_ape(logits, labels, ious, *, backend="numpy", **options):
    return validate_pairwise("ape_loss", logits, labels, ious, adaptive=True, backend=backend, **options)


# --------------------------------------------------------------------------- conventions of the family

_EXTRA = ()  # records add their own names to applies_to

DISTANCE = Convention(
    "distance", "Distance function D of the pairwise error", _EXTRA, "ce", DISTANCE_CHOICES,
    "'h': smoothed step H (APE Eq. 6) with the error-driven update; 'sigmoid': S(x) = 1/(1+exp(-lam x)) "
    "with the error-driven update; 'ce': CE(S(x), 0) = -log(1 - S(x)) with its analytic gradient "
    "(BC constant), its arithmetic set by 'saturation'.",
    "AP Loss uses H; APE Table 1 compares H, S and CE(S, 0); the APE loss (Eq. 9) and the authors' "
    "APELoss use CE(S, 0).")
LAMBDA = Convention(
    "lam", "Slope lambda of the sigmoid distance", _EXTRA, AUTHORS_LAMBDA, ("float > 0",),
    "S(x) = 1/(1+exp(-lam x)); also the threshold 4/lam and, with scale_by_lambda, the 1/lam scale.",
    "lambda = 8 in the paper (Sec. 7.1) and the authors' configurations (rankspec's default); 4 is the "
    "default of the authors' APELoss class. Their Sec. 5 table also tries 4 and 16.")
SATURATION = Convention(
    "saturation", "Arithmetic of the CE distance (saturation)", _EXTRA, "bce_float32", SATURATION_CHOICES,
    "'bce_float32': the authors' F.binary_cross_entropy on torch's float32 sigmoid: log clamped at -100 "
    "(a pair whose float32 S rounds to 1, lam x above about 16.6, scores 100 with zero gradient) and "
    "backward lam S p / max(p, 1e-12), p = S(1 - S); 'bce_float64': the same arithmetic in float64 (S "
    "rounds to 1 above lam x = 36.7; the gradient shrinks above about 27.6); 'exact': the numerically "
    "stable log(1 + exp(lam x)) and its exact derivative lam S(x). Only distance='ce' uses it.",
    "The authors compute sigmoid_ then F.binary_cross_entropy(S, 0) on float32 tensors ('bce_float32' "
    "reproduces their recorded outputs to 1e-6); the paper writes the exact CE (Eq. 9).")
BALANCE = Convention(
    "balance", "Balance constant BC of the pairwise error", _EXTRA, "rank", BALANCE_CHOICES,
    "'rank': BC_u = rank+(u) + rank-(u) over valid pairs, counted with H ('h') or S ('sigmoid', 'ce'); "
    "'n_neg': BC_u = number of valid pairs (u, v), v in N (Eq. 8) or A_u (Eq. 9). BC is a constant in "
    "backprop either way.",
    "APE Table 2 compares both; the APE loss uses rank+ + rank- (Eq. 9) and the authors' code detaches "
    "it. N_neg is read per positive (the paper's appendix with the exact rule is not in the text).")
PAIR_THRESHOLD = Convention(
    "pair_threshold", "Validity threshold of a ranking pair", _EXTRA, None, (None, "float >= 0", "math.inf"),
    "A pair (u, v) is valid iff s_v - s_u > -t. None: for H the pairs with H > 0 (no effect on H values; "
    "it matters for N_neg and 'active'), t = 4 / lam for S and CE. Invalid pairs are left out of the "
    "numerator and of BC.",
    "The authors' APELoss keeps pairs with s_v > s_u - 4/lambda (strict) for negatives, aFPs and the "
    "positives counted in BC.")
TOP_Q = Convention(
    "top_q", "Top-Q cap on the relevant negatives", _EXTRA, AUTHORS_TOP_Q, (AUTHORS_TOP_Q, "int >= 1", None),
    "When more than top_q negatives are valid against the lowest positive, only the top_q with the largest "
    "logits take part (ties at the cut: lower flat index first); the others are ignored (no pair, no BC "
    "term, zero gradient). None: no cap.",
    "The authors' APELoss keeps relevant_bg_logits.topk(topk) with topk = 100000 ('to save GPU memory'; "
    "torch.topk leaves the order of ties unspecified); the paper does not mention it.")
SELF_RANK = Convention(
    "self_rank", "Self term of rank+(u) in the pairwise error", _EXTRA, "h0", APE_SELF_RANK_CHOICES,
    "'h0': D(0) of the rank-counting distance (H(0) = 0.5 at delta > 0, S(0) = 0.5); 'one': 1; "
    "'half': 0.5; 'zero': the u = u term is left out.",
    "APE Eq. 5 as printed sums v != u ('zero'); the AP-Loss authors' code adds 1 ('one', so "
    "pairwise_error_loss with 'h' equals ap_loss); the APE authors' code counts u among the positives "
    "with IoU >= IoU_u, adding S(0) = 0.5 ('h0').")
NORMALIZATION = Convention(
    "normalization", "Normaliser of the pairwise error", _EXTRA, "active", APE_NORMALIZATION_CHOICES,
    "'positives': divide by N_pos; 'active': by the number of positives with at least one valid pair; "
    "'none': sum.",
    "APE Eq. 3 and L_rank after Eq. 8 divide by N_pos; the authors' APELoss takes mean() over the "
    "positives whose pair list is non-empty ('active').")
IOU_WEIGHT = Convention(
    "iou_weight", "IoU weight of each positive's term", _EXTRA, True, (True, False),
    "True: the term of positive u is multiplied by IoU_u (needs ious).",
    "Not in APE Eqs. 8-10; APE Sec. 7.1 'use IoU to weight APE loss following [32]' and the authors' "
    "APELoss always multiplies by ious[u].")
SCALE_BY_LAMBDA = Convention(
    "scale_by_lambda", "1/lambda scaling of the CE form", _EXTRA, True, (True, False),
    "True: the CE-form loss is divided by lambda, so its gradient lambda*S(x)/BC becomes S(x)/BC, the "
    "error-driven update of the S form.",
    "The authors' APELoss divides by lambda ('refer to the Appendix of ARPS'); the printed Eq. 9 does not.")
IGNORED = Convention(
    None, "Ignored samples (label -1)", _EXTRA, "no pair, zero gradient", (),
    "Samples labelled -1 take part in no pair and no balance constant and get zero gradient.",
    "The authors' head passes labels 1 / 0 / -1 and APELoss only selects targets == 1 and targets == 0.")
SIGN = Convention(
    None, "Sign of APE Eqs. 8-9", _EXTRA, "+ (1/BC) sum D", (),
    "The loss is + (1/BC) sum_v D(s_v - s_u) >= 0.",
    "Eqs. 8-9 print a leading minus; Eq. 10 equates it with the positive (FP + aFP)/(TP + FP) and the "
    "authors' code minimises the positive form.")
STEP = Convention(
    None, "Smoothed step of APE Eq. 6", ("smoothed_step",), "x/(2 delta) + 0.5", (),
    "H(x) = x/(2 delta) + 0.5 on [-delta, delta] (continuous).",
    "APE Eq. 6 prints x/(2 delta) without + 0.5 (discontinuous); AP Loss and the authors' code add 0.5.")
NO_PAIR = Convention(
    None, "Positives without a valid pair", _EXTRA, "term 0; loss 0 when no positive has one", (),
    "A positive whose A_u (or N) has no valid member contributes 0 and no gradient; with no positives, or "
    "no positive with a valid pair under 'active', the loss is 0 with a zero gradient.",
    "The authors' APELoss skips such positives in its mean() and raises when every list is empty "
    "(torch.cat of an empty list) or when there is no positive (min of an empty tensor).")

APE_CONVENTIONS = (DISTANCE, LAMBDA, SATURATION, BALANCE, PAIR_THRESHOLD, TOP_Q, SELF_RANK, NORMALIZATION,
                   IOU_WEIGHT, SCALE_BY_LAMBDA, IGNORED, SIGN, STEP, NO_PAIR)

_KERNELS = {"numba": "rankspec.refimpl.fast.ape:numba_pairwise_loss",
            "cuda": "rankspec.refimpl.fast.ape:cuda_pairwise_loss"}
_CASES = "rankspec.refimpl.cases:build_ape_case"

# --------------------------------------------------------------------------- records

def no_positive_with_a_valid_pair(terms) -> bool:
    """No positive has a valid pair (or there is no positive): the reference's loss is 0 with a zero
    gradient there (``NO_PAIR``), where the authors' code raises (``torch.cat`` of an empty list)."""
    return float(terms.get("num_active", 0.0)) == 0.0


_TERM_FEATURES = (("no_valid_pair", "inputs where no positive has a valid pair (or there is no positive)",
                   no_positive_with_a_valid_pair),)

PAIRWISE_ERROR_RECORD = register_record(LossRecord(
    name="pairwise_error_loss", title="AP loss as pairwise error: distance H / S / CE(S, 0), balance rank or N_neg",
    citations=(("APE", "Eq. 8"), ("APE", "Eqs. 5-7"), ("APE", "Tables 1-2")), family="ape",
    validate=_validate_pe, reference=pairwise_reference,
    conventions=(DISTANCE.with_default("h"), LAMBDA, SATURATION.with_default("exact"), BALANCE, PAIR_THRESHOLD,
                 TOP_Q.with_default(None), SELF_RANK.with_default("one"), NORMALIZATION.with_default("positives"),
                 IOU_WEIGHT.with_default(False), SCALE_BY_LAMBDA, IGNORED, SIGN, STEP, NO_PAIR),
    kernels=_KERNELS, label_kind="binary", case_builder=_CASES, terms=APE_TERMS, outputs=("loss",),
    input_names=("logits", "labels"), labels_name="labels", default_delta=1.0, term_features=_TERM_FEATURES))

APE_RECORD = register_record(LossRecord(
    name="ape_loss", title="APE loss: adaptive pairwise error over ARPS pairs (aFP from positives with lower IoU)",
    citations=(("APE", "Eqs. 9-10"), ("APE", "Alg. 1"), ("APE", "Sec. 7.1 (IoU weighting)")), family="ape",
    validate=_validate_ape, reference=pairwise_reference, conventions=APE_CONVENTIONS,
    kernels=_KERNELS, label_kind="binary", case_builder=_CASES, terms=APE_TERMS, outputs=("loss",),
    head_keys=("loss_cls",), head_scope="batch", input_names=("logits", "labels", "ious"), labels_name="labels",
    term_features=_TERM_FEATURES))

# --------------------------------------------------------------------------- primitives (public, validating)


@implements(("APE", "Sec. 5 (distance function S)"), name="Sigmoid distance S(x) = 1 / (1 + exp(-lambda x))",
            family="ape", kind="primitive")
def sigmoid_distance(x, lam: float) -> np.ndarray:
    r"""Sigmoid distance of APE Sec. 5: :math:`S(x) = 1/(1 + \exp(-\lambda x))`.

    The paper writes :math:`S(\hat P_v - \hat P_u) = 1/(1+\exp(\lambda(\hat P_u - \hat P_v)))`;
    ``x`` is :math:`\hat P_v - \hat P_u`.  ``lam`` (> 0) is the slope at the
    origin (the paper uses 8).  Evaluated with :func:`scipy.special.expit`, so
    it never overflows.  Complexity O(size of x).
    """
    lam = check_positive_float(lam, "lam")
    return sigmoid(np.asarray(x, dtype=np.float64), lam)


@implements(("APE", "Sec. 5 (distance function CE(S(.), 0))"), ("APE", "Eq. 9"),
            name="Cross-entropy distance CE(S(x), 0) = log(1 + exp(lambda x))", family="ape", kind="primitive")
def ce_distance(x, lam: float, saturation: str = "exact") -> np.ndarray:
    r"""Cross-entropy distance :math:`CE(S(x), 0) = -\log(1 - S(x)) = \log(1 + e^{\lambda x})`.

    The binary cross entropy of the sigmoid distance against the target 0
    (APE Sec. 5 and Eq. 9); its derivative is :math:`\lambda S(x)`.
    ``saturation="exact"`` (default here) computes ``logaddexp(0, lam * x)`` (no
    overflow, no loss of precision); ``"bce_float32"`` / ``"bce_float64"`` the
    authors' clamped ``F.binary_cross_entropy`` arithmetic (see
    :mod:`rankspec.refimpl.reference.ape`).  Complexity O(size of x).
    """
    lam = check_positive_float(lam, "lam")
    check_choice(saturation, "saturation", SATURATION_CHOICES)
    x = np.asarray(x, dtype=np.float64)
    return ce_pair_terms(x.ravel(), 0.0, lam, saturation)[1].reshape(x.shape)


@implements(("APE", "Alg. 1"), name="ARPS: adaptive negative sets A_u = aFP(u) U N", family="ape",
            kind="primitive")
def arps_negative_sets(labels, ious) -> np.ndarray:
    r"""Adaptive Ranking Pair Selection (APE Alg. 1).

    For every positive :math:`u`, :math:`\mathcal{A}_u = \{v \in \mathcal{P}: \hat I_v < \hat I_u\}
    \cup \mathcal{N}`: the positives with a strictly lower IoU become adaptive
    false positives (aFP) of :math:`u`.

    Parameters
    ----------
    labels:
        Any shape, 1 for positives, 0 for negatives, -1 for ignored samples.
    ious:
        Same shape; IoU in [0, 1] of each sample's predicted box with its
        ground truth (only the positives' values are used).

    Returns
    -------
    numpy.ndarray
        Bool array of shape ``(P, n)``: row ``k`` marks :math:`\mathcal{A}_u`
        over the flattened samples for the ``k``-th positive in flat index
        order.  ``P == 0`` gives shape ``(0, n)``.

    Notes
    -----
    Time and memory O(P n).
    """
    lab = as_float_array(labels, "labels")
    _check_labels(lab)
    iou = as_float_array(ious, "ious")
    check_same_shape(lab, iou, "labels", "ious")
    lab, iou = lab.ravel(), check_iou_targets(iou, "ious").ravel()
    pos = np.flatnonzero(lab == 1)
    out = np.zeros((len(pos), lab.size), dtype=bool)
    for k, u in enumerate(pos):
        out[k] = afp_members(iou[u], lab, iou, adaptive=True)
    return out


# --------------------------------------------------------------------------- the public functions

_COMMON_DOC = """
    distance:
        ``"h"``: smoothed step H of APE Eq. 6 (with ``+ 0.5``, see the module
        notes) and the error-driven update; ``"sigmoid"``: S with slope
        ``lam`` and the error-driven update; ``"ce"``: CE(S(.), 0), whose
        gradient is analytic (BC constant).
    delta:
        Half-width of the linear part of H (``distance="h"`` only); 0 is the
        exact step, with ``tie_value`` at 0.
    lam:
        Slope lambda of S (``"sigmoid"``, ``"ce"``; also the rank-counting
        distance of the CE form).  8 as in the paper and the authors'
        configurations; the authors' ``APELoss`` class defaults to 4.
    saturation:
        Arithmetic of the CE form: ``"bce_float32"`` (the authors'
        ``F.binary_cross_entropy`` on torch's float32 sigmoid: a pair whose S
        rounds to 1 scores 100 with zero gradient), ``"bce_float64"`` (the same
        clamps in float64) or ``"exact"`` (``log(1 + exp(lam x))`` and its exact
        derivative ``lam S(x)``).  Used by ``distance="ce"`` only.
    balance:
        ``"rank"``: BC_u = rank^+(u) + rank^-(u), every valid positive and
        negative counted with H (``"h"``) or S (``"sigmoid"``, ``"ce"``); the
        u == u term follows ``self_rank``.  ``"n_neg"``: BC_u = number of valid
        pairs of u (APE Table 2).  Either way BC is a constant in backprop.
    pair_threshold:
        A pair (u, v) is valid iff ``s_v - s_u > -pair_threshold``; invalid
        pairs are left out of the sums and of BC.  ``None`` (default): for H
        the pairs with H > 0 (``x > -delta``; at ``delta == 0``, ``x >= 0``
        unless ``tie_value == 0``), so it changes no H value; for S and CE
        ``4 / lam`` (the authors' code).  ``math.inf`` keeps every pair.
    top_q:
        At most ``top_q`` relevant negatives (valid against the lowest
        positive), the highest, take part; ``None``: no cap.  The authors'
        ``topk`` is 100000.
    self_rank:
        Value of the u == u term of rank^+(u): ``"h0"`` = D(0) of the
        rank-counting distance (H(0), or S(0) = 0.5: the APE authors' code),
        ``"one"`` (the AP-Loss authors' code), ``"half"``, ``"zero"`` (APE
        Eq. 5 as printed, v != u).
    normalization:
        ``"positives"``: divide by N_pos (APE Eq. 3); ``"active"``: by the
        number of positives with at least one valid pair (the APE authors'
        ``mean()`` over non-empty terms); ``"none"``: sum.
    scale_by_lambda:
        ``distance="ce"`` only: divide the CE loss by lambda, so its gradient
        equals the error-driven update of the S form (authors' code).
    tie_value:
        H(0) at ``delta == 0`` (see :func:`~rankspec.refimpl.reference.primitives.smoothed_step`).
    backend:
        ``"numpy"`` (the readable reference), ``"numba"`` or ``"cuda"``: the
        fast paths of :mod:`rankspec.refimpl.fast.ape` (same numbers).
"""


@implements(*PAIRWISE_ERROR_RECORD.citations, name=PAIRWISE_ERROR_RECORD.title, family="ape")
def pairwise_error_loss(logits, labels, *, distance: str = "h", delta: float = 1.0, lam: float = AUTHORS_LAMBDA,
                        balance: str = "rank", pair_threshold=None, self_rank: str = "one",
                        normalization: str = "positives", ious=None, iou_weight: bool = False,
                        scale_by_lambda: bool = True, tie_value: float = 1.0, saturation: str = "exact",
                        top_q=None, backend: str = "numpy") -> LossResult:
    r"""AP loss written as a pairwise error between positives and negatives (APE Eq. 8).

    .. math::

        \mathcal{L} = \frac{1}{Z}\sum_{u \in \mathcal{P}} w_u\,\frac{1}{BC_u}
                      \sum_{v \in \mathcal{N},\ s_v - s_u > -t} D(s_v - s_u)

    With ``distance="h"``, ``balance="rank"``, ``self_rank="one"`` and the
    default threshold this is exactly the AP loss of
    :func:`rankspec.refimpl.ap_loss` (non-interpolated), loss and gradient.

    Parameters
    ----------
    logits:
        Real scores of any shape.
    labels:
        Same shape; 1 for positives, 0 for negatives, -1 for ignored samples.
    ious:
        Optional, same shape, IoUs in [0, 1]; needed only for ``iou_weight``.
    iou_weight:
        Multiply the term of each positive by its IoU (``w_u = IoU_u``).
    {common}
    Returns
    -------
    LossResult
        ``grad``: the error-driven update (APE Eq. 7) for ``"h"`` and
        ``"sigmoid"``; the analytic gradient with BC held constant for
        ``"ce"``.  ``terms``: ``pairwise`` (= loss), ``num_positives``,
        ``num_active`` (positives with a valid pair), ``num_pairs``,
        ``per_positive`` (array of ``w_u L(u)``), ``balance_constant`` (array
        of BC_u).  No positives: loss 0, zero gradient.  A positive without a
        valid pair contributes 0 (and counts in Z for ``"positives"``).

    Notes
    -----
    Time O(P n), memory O(n).  ``backend="numba"`` / ``"cuda"``: O(n log n) for
    ``"h"``, O(n log n + valid pairs) for ``"sigmoid"`` / ``"ce"``.
    """
    return PAIRWISE_ERROR_RECORD.run(backend, logits, labels, ious=ious, distance=distance, delta=delta, lam=lam,
                                     tie_value=tie_value, balance=balance, pair_threshold=pair_threshold,
                                     self_rank=self_rank, normalization=normalization, iou_weight=iou_weight,
                                     scale_by_lambda=scale_by_lambda, saturation=saturation, top_q=top_q)


@implements(*APE_RECORD.citations, name=APE_RECORD.title, family="ape")
def ape_loss(logits, labels, ious, *, distance: str = "ce", lam: float = AUTHORS_LAMBDA, delta: float = 1.0,
             balance: str = "rank", pair_threshold=None, self_rank: str = "h0", normalization: str = "active",
             iou_weight: bool = True, scale_by_lambda: bool = True, tie_value: float = 1.0,
             saturation: str = "bce_float32", top_q=AUTHORS_TOP_Q, backend: str = "numpy") -> LossResult:
    r"""Adaptive Pairwise Error loss (APE Eqs. 9-10) over the ARPS sets of APE Alg. 1.

    .. math::

        \mathcal{L}_{APE} = \frac{1}{Z}\sum_{u\in\mathcal{P}} \frac{w_u}{BC_u}
            \sum_{v \in \mathcal{A}_u,\ s_v - s_u > -t} D(s_v - s_u), \qquad
        \mathcal{A}_u = \{v\in\mathcal{P} : \hat I_v < \hat I_u\} \cup \mathcal{N}

    With the H distance and ``balance="rank"`` each term is
    :math:`(FP + aFP) / ((TP - aFP) + (FP + aFP))` (APE Eq. 10): the positives
    with lower IoU (aFP) count in the numerator *and* stay in the denominator.

    The defaults reproduce the authors' ``APELoss(lamb=8)`` as their head calls
    it (flattened logits, labels 1 / 0 / -1, the positives' IoUs): CE distance
    with their float32 ``F.binary_cross_entropy`` arithmetic, lambda = 8,
    threshold 4 / lambda, top-Q = 100000 negatives, BC = rank^+ + rank^-
    measured with S including S(0) = 0.5 for u itself, IoU weight
    ``w_u = IoU_u``, loss divided by lambda, mean over the positives with a
    valid pair (``normalization="active"``).  Where their code raises (no
    positive, or no positive with a valid pair) this returns loss 0 and a zero
    gradient.  ``normalization="positives"`` is APE Eq. 3 as printed.

    Parameters
    ----------
    logits:
        Real scores of any shape.
    labels:
        Same shape; 1 for positives, 0 for negatives, -1 for ignored samples
        (no pair, zero gradient).
    ious:
        Same shape; IoU in [0, 1] of each sample's predicted box with its ground
        truth.  Only positives' values are used (ARPS and the weights).
    iou_weight:
        ``True`` (default): multiply positive u's term by IoU_u (authors' code,
        "use IoU to weight APE loss", APE Sec. 7.1).
    {common}
    Returns
    -------
    LossResult
        ``grad``: analytic gradient of the CE form with BC constant (default),
        or the error-driven update (APE Eq. 7 applied to A_u) for ``"h"`` and
        ``"sigmoid"``: an aFP positive v of u receives ``+w_u D(x_uv)/BC_u``
        exactly like a negative.  ``terms`` as in :func:`pairwise_error_loss`.

    Notes
    -----
    With all IoUs equal there are no aFPs and the APE loss equals
    :func:`pairwise_error_loss` with the same options.  Time O(P n), memory
    O(n) (the full A matrix of :func:`arps_negative_sets` is never stored).
    ``backend="numba"`` / ``"cuda"``: O(n log n) for ``"h"``, O(n log n + valid
    pairs) for ``"sigmoid"`` / ``"ce"``.
    """
    return APE_RECORD.run(backend, logits, labels, ious, distance=distance, delta=delta, lam=lam,
                          tie_value=tie_value, balance=balance, pair_threshold=pair_threshold, self_rank=self_rank,
                          normalization=normalization, iou_weight=iou_weight, scale_by_lambda=scale_by_lambda,
                          saturation=saturation, top_q=top_q)


for _f in (pairwise_error_loss, ape_loss):
    _f.__doc__ = _f.__doc__.replace("    {common}\n", _COMMON_DOC.lstrip("\n"))


# --------------------------------------------------------------------------- conventions of the ARPS split
# (a utility, not a loss record: registered as extra conventions)

register_conventions(
    Convention(
        "features", "GMM input of the ARPS cluster split", ("arps_cluster_split",), "sum", FEATURES_CHOICES,
        "'sum': 1-D GMM on (1 - p~) + (1 - I~); 'joint': 2-D GMM on (1 - p~, 1 - I~).",
        "The authors' APELossPAAHead sums the two normalised scores into PAA's 1-D cost; APE Fig. 3c draws the "
        "two scores as a plane."),
    Convention(
        "separation", "Which GMM-foreground candidates become positive", ("arps_cluster_split",), "paa",
        SEPARATION_CHOICES,
        "'paa': foreground candidates in ascending cost up to the most likely one; 'component': all of the "
        "low-cost component.",
        "PAA's code (and the APE authors' copy) uses 'paa' (PAA Fig. 3c scheme)."),
    Convention(
        "small_instances", "Instances with a single candidate", ("arps_cluster_split",), "keep",
        SMALL_INSTANCE_CHOICES,
        "'keep': the only candidate stays positive; 'drop': it becomes negative.",
        "PAA's code skips instances with fewer than 2 candidates, so they lose their positive ('drop'); the "
        "APE authors also skip normalisation for instances with <= 2 candidates (not modelled)."),
    Convention(
        "topk_per_level", "PAA's per-level top-k candidate choice", ("arps_cluster_split",), 9, ("int >= 1",),
        "With levels given: per instance and pyramid level only the topk_per_level lowest-cost candidates are "
        "clustered, the others become negative. Without levels every candidate is clustered.",
        "PAA (and the APE authors' PAA head) keep topk = 9 candidates per level before the GMM; ranking them "
        "by the normalised-score cost is rankspec's reading (PAA ranks by its focal + GIoU cost)."),
    Convention(
        None, "0-1 normalisation of a constant score vector", ("arps_cluster_split",), "0", (),
        "A constant ranking or localisation score vector normalises to 0 (it shifts every cost equally).",
        "The authors' code divides by zero (NaN) for constant ranking scores and skips instances whose IoUs "
        "are all 0."),
)

"""DR Loss (Qian et al., CVPR 2020; paper key ``DR``): public function, validator and record.

:func:`dr_loss` is three steps like every loss: :func:`validate_dr` (the input layout of
:func:`parse_dr_input` and every option, before anything is computed), the computation
(:func:`~rankspec.refimpl.reference.dr.dr_reference`, the plain float64 math citing DR Eqs. 5-9;
the loss has no fast kernel), the result.  :func:`hard_negative_prior` builds the
hard-negative-mining original distribution of DR Sec. 3.2 on the same input layout.
The primitives (DR Props. 1-2, Eqs. 5-8) are in :mod:`rankspec.refimpl.reference.dr`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from .._result import LossResult
from .._validate import _real_scalar, as_float_array, check_choice, check_positive_float
from ..record import Convention, LossRecord, register_record
from ..reference.dr import (DEFAULT_GAMMA, DEFAULT_L, DEFAULT_LAMBDA_NEG, DEFAULT_LAMBDA_POS, DEFAULT_RHO,
                            DEFAULT_TAU, PAIRING_CHOICES, REDUCTION_CHOICES, SCORE_TRANSFORM_CHOICES,
                            SURROGATE_CHOICES, dr_reference)
from ..registry import implements

__all__ = ["DRInput", "parse_dr_input", "validate_dr", "hard_negative_prior", "dr_loss", "DR_RECORD",
           "DR_CONVENTIONS"]

# ---------------------------------------------------------------------------
# Input parsing: [n, C] logits with class ids, or per-entry labels
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DRInput:
    """Validated, flattened input of :func:`dr_loss` (one row per (candidate, class) entry) and its
    checked options; :func:`~rankspec.refimpl.reference.dr.dr_reference` computes on it."""

    shape: tuple  #: shape of the logits as given (the gradient is returned in it)
    logits: np.ndarray  #: flat float64 logits / scores
    side: np.ndarray  #: flat int: 1 positive, 0 negative, -1 ignored
    image: np.ndarray  #: flat int in [0, num_images): position of the entry's image in ``distinct_ids``
    distinct_ids: np.ndarray  #: sorted distinct image ids
    prior_pos: np.ndarray  #: flat non-negative weights o+ (ones when not given)
    prior_neg: np.ndarray  #: flat non-negative weights o- (ones when not given)
    layout: str  #: "class_ids" or "entries"
    gamma: float = DEFAULT_GAMMA
    lambda_pos: float = DEFAULT_LAMBDA_POS
    lambda_neg: float = DEFAULT_LAMBDA_NEG
    surrogate: str = "logistic"
    L: float = DEFAULT_L
    rho: float = DEFAULT_RHO
    tau: float = DEFAULT_TAU
    pairing: str = "dr"
    score_transform: str = "sigmoid"
    empty_positive_score: Optional[float] = 1.0
    empty_negative_score: Optional[float] = 0.0
    reduction: str = "sum"


def _integral(arr: np.ndarray, name: str) -> np.ndarray:
    if not np.all(arr == np.round(arr)):
        bad = arr[arr != np.round(arr)].ravel()[0]
        raise ValueError(f"{name} must contain integers; found {bad!r}")
    return arr.astype(np.int64)


@implements(("DR", "Eq. 2 and Sec. 4.2 (entries of one image)"),
            name="Input layout: [n, C] logits with class ids or per-entry labels", family="dr", kind="utility")
def parse_dr_input(logits, labels, image_ids=None, prior_pos=None, prior_neg=None) -> DRInput:
    """Validate and flatten the input of the DR family.

    ``logits`` is ``[n, C]`` (or any ``[n, ...]`` with per-entry labels).  ``labels`` is either class ids of
    shape ``[n]`` (only with 2-D logits; ``-1`` ignored, ``0`` background,
    ``1..C`` a class: entry ``(i, k-1)`` is positive iff ``labels[i] == k``)
    or per-entry labels of the logits' shape in ``{-1, 0, 1}``.  ``image_ids``
    is ``None`` (one image) or ``[n]`` non-negative integers.  Priors are
    ``None`` or non-negative arrays of the logits' shape.
    """
    x = as_float_array(logits, "logits")
    if x.ndim == 0:
        raise ValueError("logits must be [n, C] (candidates x classes) or [n, ...] with per-entry labels, "
                         "got a scalar")
    t = as_float_array(labels, "labels")
    t = _integral(t, "labels")
    n = x.shape[0]
    if t.shape == x.shape:
        layout = "entries"
        bad = (t < -1) | (t > 1)
        if np.any(bad):
            raise ValueError(f"per-entry labels must be -1 (ignored), 0 (negative) or 1 (positive); "
                             f"found {t[bad].ravel()[0]!r}")
        side = t
    elif x.ndim == 2 and t.shape == (n,):
        layout = "class_ids"
        C = x.shape[1]
        bad = (t < -1) | (t > C)
        if np.any(bad):
            raise ValueError(f"class-id labels must lie in -1 (ignored), 0 (background) .. {C} (number of "
                             f"classes, 1-based); found {t[bad][0]!r}")
        classes = np.arange(1, C + 1)[None, :]
        side = np.where(t[:, None] == classes, 1, np.where(t[:, None] >= 0, 0, -1))
    else:
        raise ValueError(f"labels must have shape {x.shape} (per-entry labels) or ({n},) (class ids, with "
                         f"2-D logits); got {t.shape}")
    if image_ids is None:
        img_rows = np.zeros(n, dtype=np.int64)
    else:
        img_rows = _integral(as_float_array(image_ids, "image_ids"), "image_ids")
        if img_rows.shape != (n,):
            raise ValueError(f"image_ids must have shape ({n},) (one image id per row of logits), "
                             f"got {img_rows.shape}")
        if np.any(img_rows < 0):
            raise ValueError(f"image_ids must be >= 0; found {img_rows[img_rows < 0][0]!r}")
    distinct_ids, img_rows = np.unique(img_rows, return_inverse=True)
    image = np.broadcast_to(img_rows.reshape((n,) + (1,) * (x.ndim - 1)), x.shape)
    priors = []
    for prior, name in ((prior_pos, "prior_pos"), (prior_neg, "prior_neg")):
        if prior is None:
            priors.append(np.ones(x.size))
            continue
        o = as_float_array(prior, name)
        if o.shape != x.shape:
            raise ValueError(f"{name} must have the shape of logits {x.shape}, got {o.shape}")
        if np.any(o < 0):
            raise ValueError(f"{name} must be non-negative (weights of the original distribution); "
                             f"found {o[o < 0][0]!r}")
        priors.append(o.ravel())
    return DRInput(x.shape, x.ravel(), side.ravel().astype(np.int64), image.ravel().astype(np.int64),
                   distinct_ids, priors[0], priors[1], layout)


@implements(("DR", "Sec. 3.2 (hard negative mining as o-)"),
            name="Hard-negative-mining original distribution o- in {0, 1/n-hat}", family="dr", kind="utility")
def hard_negative_prior(logits, labels, *, num_negatives: Optional[int] = None, ratio: Optional[float] = None,
                        image_ids=None) -> np.ndarray:
    r"""The original distribution :math:`o^-_j \in \{0, 1/\hat n_-\}` of DR Sec. 3.2.

    In every image the :math:`\hat n_-` highest-scoring negative entries get
    weight :math:`1/\hat n_-`, every other entry 0.  Give exactly one of
    ``num_negatives`` (a fixed :math:`\hat n_-`) or ``ratio``
    (:math:`\hat n_- = \lceil \text{ratio}\cdot n_+\rceil`, e.g. SSD's 3:1; an
    image without positives then keeps no negative).  :math:`\hat n_-` is
    capped at the number of negatives; ties at the cut are broken by entry order
    (row-major).  Scores are ranked by logit (the sigmoid is monotone).  The
    result has the logits' shape and feeds ``prior_neg`` of :func:`dr_loss`.
    O(n log n).
    """
    x = parse_dr_input(logits, labels, image_ids)
    if (num_negatives is None) == (ratio is None):
        raise ValueError("give exactly one of num_negatives and ratio")
    if num_negatives is not None:
        if isinstance(num_negatives, bool) or int(num_negatives) != num_negatives or num_negatives < 0:
            raise ValueError(f"num_negatives must be an integer >= 0, got {num_negatives!r}")
    else:
        ratio = check_positive_float(ratio, "ratio")
    prior = np.zeros(x.logits.size)
    for g in range(x.distinct_ids.size):
        neg = np.flatnonzero((x.image == g) & (x.side == 0))
        if num_negatives is not None:
            k = int(num_negatives)
        else:
            k = int(math.ceil(ratio * np.count_nonzero((x.image == g) & (x.side == 1)) - 1e-12))
        k = min(k, neg.size)
        if k == 0:
            continue
        order = np.argsort(-x.logits[neg], kind="stable")  # highest first, ties by entry order
        prior[neg[order[:k]]] = 1.0 / k
    return prior.reshape(x.shape)


# ---------------------------------------------------------------------------
# The validator (every argument and option, before anything is computed)
# ---------------------------------------------------------------------------

def _optional_score(value, name: str) -> Optional[float]:
    if value is None:
        return None
    value = _real_scalar(value, name)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite or None, got {value}")
    return value


def validate_dr(logits, labels, *, image_ids=None, gamma=DEFAULT_GAMMA, lambda_pos=DEFAULT_LAMBDA_POS,
                lambda_neg=DEFAULT_LAMBDA_NEG, surrogate="logistic", L=DEFAULT_L, rho=DEFAULT_RHO, tau=DEFAULT_TAU,
                pairing="dr", score_transform="sigmoid", prior_pos=None, prior_neg=None,
                empty_positive_score=1.0, empty_negative_score=0.0, reduction="sum",
                backend="numpy") -> DRInput:
    """The one validator of :func:`dr_loss`: the arrays (:func:`parse_dr_input`), then every option in
    signature order.  Raises ValueError / TypeError naming the argument.  O(n C)."""
    x = parse_dr_input(logits, labels, image_ids, prior_pos, prior_neg)
    gamma = check_positive_float(gamma, "gamma", allow_zero=True)
    lambda_pos = check_positive_float(lambda_pos, "lambda_pos")
    lambda_neg = check_positive_float(lambda_neg, "lambda_neg")
    check_choice(surrogate, "surrogate", SURROGATE_CHOICES)
    L = check_positive_float(L, "L")
    rho = check_positive_float(rho, "rho")
    tau = check_positive_float(tau, "tau")
    check_choice(pairing, "pairing", PAIRING_CHOICES)
    check_choice(score_transform, "score_transform", SCORE_TRANSFORM_CHOICES)
    empty_pos = _optional_score(empty_positive_score, "empty_positive_score")
    empty_neg = _optional_score(empty_negative_score, "empty_negative_score")
    check_choice(reduction, "reduction", REDUCTION_CHOICES)

    return replace(x, gamma=gamma, lambda_pos=lambda_pos, lambda_neg=lambda_neg, surrogate=surrogate, L=L, rho=rho,
                   tau=tau, pairing=pairing, score_transform=score_transform, empty_positive_score=empty_pos,
                   empty_negative_score=empty_neg, reduction=reduction)


# ---------------------------------------------------------------------------
# Conventions of the DR family (held by the record)
# ---------------------------------------------------------------------------

_EXTRA = ("DRLoss",)  # the torch module takes the same keywords (dr_loss itself is added from its record)

DR_CONVENTIONS = (
    Convention(
        "score_transform", "Scores: sigmoid probabilities or raw inputs", _EXTRA,
        "sigmoid", SCORE_TRANSFORM_CHOICES,
        "'sigmoid': p = sigmoid(logits) enters Props. 1-2 and Eq. 9, and the gradient is w.r.t. the logits; "
        "'identity': the inputs are the scores p themselves (e.g. probabilities computed elsewhere).",
        "DR Sec. 3 uses sigmoid probabilities per class; the authors' SigmoidDRLoss applies .sigmoid() to the "
        "logits ('sigmoid'). With 'identity' and scores outside [0, 1] the margin 0.5 and P-hat_+ = 1 lose the "
        "meaning of DR Corollary 1."),
    Convention(
        "pairing", "Which pairs are ranked", _EXTRA, "dr", PAIRING_CHOICES,
        "'dr': one pair of expectations (DR Eq. 9); 'negonly': P-hat_- against every positive, averaged "
        "(Sec. 4.3); 'all': every (positive, negative) pair, averaged as in Eq. 4; 'worst': max negative against "
        "min positive (Eq. 5).",
        "Paper Table 3 compares All / NegOnly / DR; Eq. 5 'fails to obtain the meaningful result'. The authors' "
        "code implements only 'dr'."),
    Convention(
        "surrogate", "Surrogate of the hinge", _EXTRA, "logistic", SURROGATE_CHOICES,
        "'logistic': (1/L) log(1 + exp(L z)) (Eq. 8, keyword L, default 6); 'quadratic': Eq. 7 with width rho "
        "(keyword rho, default 0.5); 'hinge': [z]_+ with derivative 0 at z = 0.",
        "The paper and the authors' code use the logistic loss with L = 6 (Table 2); the quadratic loss was "
        "tried with rho in {0.2, 0.5}."),
    Convention(
        "lambda_neg", "KL weights lambda_-, lambda_+", _EXTRA,
        {"lambda_neg": DEFAULT_LAMBDA_NEG, "lambda_pos": DEFAULT_LAMBDA_POS}, (),
        "lambda = scale / log(h): lambda_+ = 1/log(h_+), lambda_- = 0.1/log(h_-) (dr_lambda). Smaller lambda "
        "moves the expectations towards the worst case (max negative / min positive).",
        "Paper Table 1 best: h_+ = e, h_- = 3.5, i.e. lambda_+ = 1, lambda_- = 0.1/log(3.5) = 0.0798; the "
        "authors' code has these defaults (pos_lambda=1, neg_lambda=0.1/math.log(3.5))."),
    Convention(
        "tau", "Loss weight tau", _EXTRA, DEFAULT_TAU, (),
        "The per-image loss is multiplied by tau; tau = 1 gives Eq. 9 itself.",
        "The paper puts tau = 4 in the detection objective tau * l_DR + l_Reg (Sec. 3.3); the authors' code "
        "multiplies the loss by tau = 4 inside SigmoidDRLoss."),
    Convention(
        "empty_positive_score", "Image without positives", _EXTRA, 1.0, (1.0, None),
        "A float: the positive side is replaced by one virtual candidate with this score (no gradient), for every "
        "pairing; None: the image contributes loss 0 and zero gradient.",
        "Paper Sec. 3.2 and the authors' code: P-hat_+ = 1."),
    Convention(
        "empty_negative_score", "Image without negatives", _EXTRA, 0.0, (0.0, None),
        "A float: the negative side is replaced by one virtual candidate with this score (no gradient); None: the "
        "image contributes loss 0 and zero gradient.",
        "The paper is silent; the authors' code takes the softmax-weighted sum over an empty tensor, i.e. "
        "P-hat_- = 0 (the empty sum of Eq. 6)."),
    Convention(
        "image_ids", "Images: one distribution per image", _EXTRA, None, (),
        "Rows with the same image id (image_ids) form one image with one distribution per side (all classes "
        "and pyramid levels together); None treats all rows as one image.",
        "Paper Eq. 9 and Sec. 4.2: per image. The authors' SigmoidDRLoss pools every row it is given into one "
        "distribution; dropped into maskrcnn-benchmark's RetinaNet loss, which concatenates the anchors of all "
        "images of a GPU, it pools those images (image_ids=None reproduces such a call)."),
    Convention(
        "reduction", "Reduction over images", _EXTRA, "sum", REDUCTION_CHOICES,
        "'sum': sum of per-image losses (Eq. 9); 'mean': their mean.",
        "The authors' code returns one loss per call, without the focal loss' 1/num_positives normalisation "
        "(authors' answer in their issue tracker)."),
    Convention(
        "prior_neg", "Original distributions o-, o+", _EXTRA,
        None, (None, "hard_negative_prior(...)"),
        "None: uniform o (Sec. 3.2, used in the paper); otherwise non-negative weights normalised per image "
        "and side; zero weight removes the entry, e.g. the hard-negative-mining form o- in {0, 1/n-hat} from "
        "hard_negative_prior. The same priors weight the averages of 'negonly' and 'all' and restrict the "
        "extremes of 'worst'.",
        "The paper and the authors' code use the uniform distribution."),
    Convention(
        None, "Ignored candidates and the label layout", _EXTRA + ("parse_dr_input",),
        "label -1 ignored", (),
        "Class-id labels [n]: -1 ignored (no entry of the row is used), 0 background (every class entry "
        "negative), k in 1..C positive for class k and negative for the others. Per-entry labels of the logits' "
        "shape: 1 / 0 / -1. Ignored entries get zero gradient.",
        "The authors' code (SigmoidDRLoss) takes class ids [n] only, with 1-based classes, and excludes targets "
        "< 0 from both sides; given per-entry labels it raises (an IndexError), which rankspec check reports "
        "as 'raises on per-entry labels' (restrict the check with --domain class_ids)."),
    Convention(
        None, "Worst-case ties", ("worst_case_expectation",), "split evenly", (),
        "With pairing='worst', tied maximal negatives (minimal positives) share the subgradient equally, the "
        "lambda -> 0 limit of the KL-regularised distributions.",
        "No authors' code for the worst case."),
)


DR_RECORD = register_record(LossRecord(
    name="dr_loss", title="DR Loss (distributional ranking; all-pairs, worst-case and NegOnly variants)",
    citations=(("DR", "Eq. 9"), ("DR", "Eq. 6"), ("DR", "Sec. 3.3 (tau)"), ("DR", "Secs. 4.2-4.3 (defaults)"),
               ("DR", "Eqs. 3-4 (pairing='all')"), ("DR", "Eq. 5 (pairing='worst')"),
               ("DR", "Sec. 4.3 NegOnly (pairing='negonly')")),
    family="dr", validate=validate_dr, reference=dr_reference, conventions=DR_CONVENTIONS, kernels={},
    label_kind="class", case_builder="rankspec.refimpl.cases:build_dr_case",
    terms=("loss", "num_images", "loss_per_image", "p_neg", "p_pos", "image_ids"), head_keys=("loss_cls",),
    head_scope="image", input_names=("logits", "labels"), labels_name="labels"))

# ---------------------------------------------------------------------------
# The public function
# ---------------------------------------------------------------------------

@implements(*DR_RECORD.citations, name=DR_RECORD.title, family=DR_RECORD.family)
def dr_loss(logits, labels, *, image_ids=None, gamma: float = DEFAULT_GAMMA,
            lambda_pos: float = DEFAULT_LAMBDA_POS, lambda_neg: float = DEFAULT_LAMBDA_NEG,
            surrogate: str = "logistic", L: float = DEFAULT_L, rho: float = DEFAULT_RHO,
            tau: float = DEFAULT_TAU, pairing: str = "dr", score_transform: str = "sigmoid",
            prior_pos=None, prior_neg=None, empty_positive_score: Optional[float] = 1.0,
            empty_negative_score: Optional[float] = 0.0, reduction: str = "sum") -> LossResult:
    r"""DR Loss (DR Eq. 9) with its analytic gradient w.r.t. ``logits``.

    For every image ``i`` (the rows with one value of ``image_ids``), with scores
    :math:`p = \sigma(\text{logits})` (``score_transform="sigmoid"``, the
    authors' code) or :math:`p = \text{logits}` (``"identity"``):

    ``pairing="dr"`` (DR Eq. 9, default)
        :math:`\ell_i = \tau\,\ell(\hat P_{i,-} - \hat P_{i,+} + \gamma)` with the
        expectations of DR Eq. 6 under the distributions of DR Props. 1-2.
    ``pairing="negonly"`` (DR Sec. 4.3, "NegOnly")
        :math:`\ell_i = \tau \sum_{j_+} o^+_{j}\,\ell(\hat P_{i,-} - p_{j_+} + \gamma)`;
        with uniform :math:`o^+` this is the paper's :math:`\frac{1}{n_+}\sum_{j_+}`.
    ``pairing="all"`` (DR Eqs. 3-4, "All")
        :math:`\ell_i = \tau \sum_{j_+,j_-} o^+_{j_+} o^-_{j_-}\,\ell(p_{j_-} - p_{j_+} + \gamma)`:
        the expectation over pairs of Eq. 4 (Eq. 3 is :math:`n_+n_-` times it).
    ``pairing="worst"`` (DR Eq. 5)
        :math:`\ell_i = \tau\,\ell(\max_{j_-} p_{j_-} - \min_{j_+} p_{j_+} + \gamma)`
        over the supports of the priors (the :math:`\lambda\to0` limit of "dr");
        the subgradient is shared equally by tied extremes.

    The loss is :math:`\sum_i \ell_i` (``reduction="sum"``, DR Eq. 9) or their
    mean over images (``"mean"``).

    Parameters
    ----------
    logits, labels, image_ids:
        See the module docstring: ``[n, C]`` logits with class ids ``[n]``
        (-1 ignored, 0 background, k = class k) or per-entry labels
        (1 / 0 / -1) of the logits' shape; ``image_ids`` ``[n]`` or ``None``
        (one image).  Ignored entries get zero gradient.
    gamma:
        Margin (>= 0; DR Corollary 1: 0.5).
    lambda_pos, lambda_neg:
        KL weights (> 0) of DR Props. 2 and 1; defaults ``1/log(e) = 1`` and
        ``0.1/log(3.5)`` (DR Sec. 4.3, Table 1); see :func:`dr_lambda`.
        Unused by ``"all"`` and ``"worst"``; ``lambda_pos`` unused by ``"negonly"``.
    surrogate, L, rho:
        ``"logistic"`` (DR Eq. 8, smoothness ``L = 6``), ``"quadratic"``
        (DR Eq. 7, width ``rho``) or ``"hinge"``.
    tau:
        Loss weight (DR Sec. 3.3, ``tau = 4``), multiplied in as the authors' code does.
    score_transform:
        ``"sigmoid"``: the loss is applied to sigmoid probabilities and the
        gradient is w.r.t. the logits; ``"identity"``: the inputs are the scores.
    prior_pos, prior_neg:
        Original distributions :math:`o^\pm` (DR Sec. 3.2) as non-negative
        weights of the logits' shape, normalised per image over the side's
        entries; ``None`` = uniform.  Zero weight removes an entry from its
        side (hard negative mining: :func:`hard_negative_prior`).
    empty_positive_score, empty_negative_score:
        An image whose positive (negative) side is empty (no entries, or all
        prior weights zero) uses this constant as the side's score: a single
        virtual candidate without gradient.  ``1.0`` for positives is DR Sec. 3.2
        ("we will let P_{i,+} = 1"); ``0.0`` for negatives is the empty sum of
        DR Eq. 6, which is what the authors' code computes.  ``None`` drops the
        image: it contributes loss 0 and zero gradient (and still counts for
        ``reduction="mean"``).
    reduction:
        ``"sum"`` over images (DR Eq. 9) or ``"mean"``.

    Returns
    -------
    LossResult
        ``loss``; ``grad`` = d loss / d logits in the logits' shape; ``terms``:
        ``"loss"`` (float), ``"num_images"`` (float), and arrays over images
        (ordered by sorted image id, ``"image_ids"``): ``"loss_per_image"``,
        ``"p_neg"`` and ``"p_pos"`` - the scores the pairing ranks:
        :math:`\hat P_\mp` for ``"dr"``; max / min for ``"worst"``; for
        ``"negonly"`` :math:`\hat P_-` and the :math:`o^+`-mean of the
        positives; for ``"all"`` the :math:`o^\mp`-means.  An empty side shows
        its ``empty_*_score``, or NaN when that is ``None``.

    Notes
    -----
    Time O(n C) for "dr", "negonly" and "worst"; O(n_+ n_-) per image for
    "all".  Memory O(n C) (plus O(n_+ n_-) for "all").
    """
    return DR_RECORD.run("numpy", logits, labels, image_ids=image_ids, gamma=gamma, lambda_pos=lambda_pos,
                         lambda_neg=lambda_neg, surrogate=surrogate, L=L, rho=rho, tau=tau, pairing=pairing,
                         score_transform=score_transform, prior_pos=prior_pos, prior_neg=prior_neg,
                         empty_positive_score=empty_positive_score, empty_negative_score=empty_negative_score,
                         reduction=reduction)

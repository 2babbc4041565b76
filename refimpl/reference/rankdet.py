r"""RankDetNet ranking losses (RankDet Eqs. 2-6, Secs. 3.1-3.4 and 4.1): the plain float64 math.

This module holds the building blocks (public primitives that check their own arguments) and
the reference of each loss on the validated input of its record's validator
(:mod:`rankspec.refimpl.losses.rankdet`, which holds the public functions); it never imports
the fast paths (:mod:`rankspec.refimpl.fast.rankdet`), which reuse :func:`global_reference` and
:func:`class_specific_reference` with their own pair block.

Liu et al. replace the classification loss of a dense detector by three
pair-wise ranking losses plus the usual regression loss (weights 1:1:1:1,
Sec. 3.4):

* the **global** ranking loss (Eqs. 2-3): every foreground sample should score
  above every (mined) background sample;
* the **class-specific** ranking loss (Eqs. 4-5): for each class c, the
  positives of c should score above the (mined) negatives of c, which are the
  samples of the other classes and the background;
* the **IoU-guided** ranking loss (Eq. 6): within one class and one pyramid
  level, the positive with the larger IoU should have the larger confidence.

Input layout (one image; the paper sums the per-image losses, Eq. 1)
--------------------------------------------------------------------
``logits``
    float array ``[N, C]``: the per-class logits of N samples (anchors /
    points).  The global loss also accepts ``[N]`` (one objectness logit per
    sample).
``labels``
    int array ``[N]``: ``c`` in ``0..C-1`` marks a positive (foreground) of
    class ``c``, :data:`BACKGROUND` (``-1``) a background sample and
    :data:`IGNORE` (``-2``) a sample that takes part in no loss.  A one-hot
    ``[N, C]`` 0/1 array (all-zero row = background) is accepted as well.
``ious``
    float array ``[N]``: IoU of each sample's predicted box with its
    ground-truth box (:math:`s_\theta` of Eq. 6).  Only positives' entries are
    used; they must lie in [0, 1].
``levels``
    int array ``[N]`` of pyramid-level ids ``>= 0`` (``None``: one level).

The confidence :math:`f_\theta` of the paper is ``sigmoid(logit)`` by default
(``score_space="probability"``) or the logit itself (``score_space="logit"``);
``grad`` is always ``d loss / d logits`` in the shape of ``logits``.

Stop-gradients (the paper's "no gradient" rules)
------------------------------------------------
* The dynamic re-weighting factors z (Eq. 3) and z_c (Eq. 5) are constants in
  back-propagation (Sec. 3.1): ``grad`` is the gradient of
  :math:`\sum z\,L_{rank}` with z held at its current value.
* In Eq. 6 the IoU of the sample with the lower confidence gets no gradient
  (Sec. 3.3); ``terms["grad_ious"]`` is d loss / d ious under that rule.
  The gradient with respect to the logits is unaffected by that rule.
* Negative mining (which samples are selected / which group a sample falls
  in) is piecewise constant and carries no gradient; the mean score of a
  group passes its gradient equally to its members.

Garbled / ambiguous equations and the reading chosen
----------------------------------------------------
* Eqs. 4-6 sum over ``c = 0..C`` and ``k = 0..K``; we read these as the C
  object classes and the K pyramid levels (a sigmoid head has no background
  score to rank).
* Eq. 6 sums over all ordered pairs ``(p_i, p_j)`` of one class and level,
  which counts every unordered pair twice and adds constant self pairs
  ``L_rank(0)``; the text then argues "without loss of generality, suppose
  f(p_i) > f(p_j)", i.e. about unordered pairs.  Default
  ``iou_pairs="unordered"`` (each pair once); ``"ordered"`` and ``"all"``
  (the literal double sum) are options.
* "divide them into multiple groups at equal intervals of scores" (Sec. 3.1):
  default ``group_split="range"`` (equal-width bins between the lowest and
  the highest negative score); ``"unit"`` (equal-width bins of [0, 1], for
  probabilities) and ``"count"`` (equal-size groups of the sorted list) are
  options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
from scipy.special import expit

from .._result import LossResult
from .._validate import check_choice, check_int as _check_int
from ..registry import implements

__all__ = [
    "BACKGROUND", "IGNORE", "RANK_FUNCTIONS", "SCORE_SPACES", "REWEIGHTINGS", "MININGS", "GROUP_SPLITS",
    "OBJECTNESS", "CLASS_REDUCTIONS", "IOU_GRADS", "IOU_PAIRS", "IOU_NORMALIZATIONS",
    "rank_function_values", "PairLoss", "pair_loss_reference", "ohem_negatives", "group_negatives",
    "confidence", "mine", "ranking_block", "global_reference", "class_specific_reference", "iou_guided_reference",
    "combine_rankdet", "rankdet_reference",
]

#: Label of a background sample (negative for the global loss and for every class).
BACKGROUND = -1
#: Label of an ignored sample (e.g. an anchor with 0.4 <= IoU < 0.5 in RetinaNet): in no loss at all.
IGNORE = -2

RANK_FUNCTIONS = ("exponential", "sigmoid", "logistic")  # RankDet Sec. 3.1 and Table 5a
SCORE_SPACES = ("probability", "logit")
REWEIGHTINGS = ("dynamic", "mean", "none")
MININGS = ("group", "ohem", "all")
GROUP_SPLITS = ("range", "unit", "count")
OBJECTNESS = ("max", "target")
CLASS_REDUCTIONS = ("sum", "mean")
IOU_GRADS = ("higher", "both", "none")
IOU_PAIRS = ("unordered", "ordered", "all")
IOU_NORMALIZATIONS = ("none", "pairs")


# ----------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------

@implements(("RankDet", "Sec. 3.1 (L_rank)"), ("RankDet", "Table 5a"),
            name="Ranking function L_rank (exponential, sigmoid, logistic) and its derivative",
            family="rankdet", kind="primitive")
def rank_function_values(x, rank_function: str = "exponential"):
    r"""Values and derivatives of the ranking function :math:`L_{rank}`.

    The paper requires a non-negative, monotonically increasing function and
    uses :math:`\exp` (Sec. 3.1); Table 5a also reports a sigmoid and a
    logistic form, which we read as

    ===============  ==========================  ===================================
    rank_function    :math:`L_{rank}(x)`         :math:`L'_{rank}(x)`
    ===============  ==========================  ===================================
    exponential      :math:`e^{x}`               :math:`e^{x}`
    sigmoid          :math:`1/(1+e^{-x})`        :math:`\sigma(x)(1-\sigma(x))`
    logistic         :math:`\log(1+e^{x})`       :math:`\sigma(x)`
    ===============  ==========================  ===================================

    All three are strictly positive, so the re-weighting factor z of Eq. 3 is
    always defined.  Returns ``(values, derivatives)`` as float64 arrays of the
    shape of ``x``; ``exp`` of an argument above ~709.78 is ``inf`` (no warning: the losses turn an
    infinite sum into a :class:`FloatingPointError` naming the overflow).  Complexity O(size of x).
    """
    check_choice(rank_function, "rank_function", RANK_FUNCTIONS)
    x = np.asarray(x, dtype=np.float64)
    if rank_function == "exponential":
        with np.errstate(over="ignore"):  # e^x overflows to inf for x > 709.78: callers raise a clear error
            value = np.exp(x)
        return value, value.copy()
    sig = expit(x)
    if rank_function == "sigmoid":
        return sig, sig * (1.0 - sig)
    return np.logaddexp(0.0, x), sig  # logistic: log(1 + e^x), derivative sigmoid(x)


@dataclass(frozen=True)
class PairLoss:
    """Output of :func:`reweighted_pair_loss`."""

    loss: float
    grad_neg: np.ndarray  #: d loss / d f(n) for every negative unit (z held constant)
    grad_pos: np.ndarray  #: d loss / d f(p) for every positive (z held constant)
    z: np.ndarray  #: the weights used, shape [num negatives, num positives]



def pair_loss_reference(neg_f: np.ndarray, pos_f: np.ndarray, rank_function: str, reweighting: str,
                        z=None) -> PairLoss:
    r"""The inner double sum of RankDet Eq. 2 (Eq. 4 for one class) on checked flat float64 scores:

    .. math::

        \mathcal{L} = \sum_{n,p} z(n,p)\,L_{rank}\big(f(n) - f(p)\big), \qquad
        z(n,p) = \frac{L_{rank}(f(n)-f(p))}{\sum_{n',p'} L_{rank}(f(n')-f(p'))} \quad\text{(Eq. 3)}

    with z a constant in back-propagation (Sec. 3.1).  ``z``: frozen weights (shape checked by the
    validator) or None.  Raises FloatingPointError when the loss overflows float64 (the exponential
    L_rank of score differences above ~709).  Time and memory O(|N| |P|).
    """
    if neg_f.size == 0 or pos_f.size == 0:
        return PairLoss(0.0, np.zeros(neg_f.size), np.zeros(pos_f.size), np.zeros((neg_f.size, pos_f.size)))
    with np.errstate(over="ignore"):  # +-1e308 scores: the difference is +-inf, L_rank gives 0, 1 or inf
        x = neg_f[:, None] - pos_f[None, :]  # x_np = f(n) - f(p), the argument of L_rank in Eq. 2
    L, dL = rank_function_values(x, rank_function)
    total = L.sum()
    if not np.isfinite(total):
        raise FloatingPointError(
            f"the {rank_function} ranking loss overflowed float64 (score differences up to {x.max():.4g}); "
            "use score_space='probability' or a bounded rank_function")
    if z is not None:
        z = np.asarray(z, dtype=np.float64)
    elif reweighting == "dynamic":
        z = L / total  # Eq. 3 (Eq. 5 per class); held constant in back-propagation
    elif reweighting == "mean":
        z = np.full(x.shape, 1.0 / x.size)
    else:
        z = np.ones(x.shape)
    with np.errstate(over="ignore", invalid="ignore"):
        loss = float((z * L).sum())
        g = z * dL  # d loss / d x_np with z constant
    if not np.isfinite(loss) or not np.all(np.isfinite(g)):
        raise FloatingPointError(
            f"the {rank_function} ranking loss overflowed float64 (score differences up to {x.max():.4g}); "
            "use score_space='probability' or a bounded rank_function")
    return PairLoss(loss, g.sum(axis=1), -g.sum(axis=0), z)


@implements(("RankDet", "Sec. 3.1, scheme (1)"), ("RankDet", "Sec. 4.1"),
            name="OHEM hard-negative selection with a 1:3 positive:negative ratio",
            family="rankdet", kind="primitive")
def ohem_negatives(neg_scores, num_pos: int, neg_ratio: int = 3) -> np.ndarray:
    """Indices (into ``neg_scores``) of the ``min(neg_ratio * num_pos, len)`` highest-scoring negatives.

    "We apply OHEM to mine hard negatives as background. The ratio between
    foreground and background samples is enforced to 1:3" (Sec. 3.1); Sec. 4.1:
    "we use all the positives and collect 3x hard negatives".  Ties in score
    are broken by lower index first (stable sort).  The result is ordered by
    descending score.  ``num_pos == 0`` selects nothing.  Time O(M log M).
    """
    ratio = _check_int(neg_ratio, "neg_ratio", 1)
    num_pos = _check_int(num_pos, "num_pos", 0)
    neg_scores = np.asarray(neg_scores, dtype=np.float64).ravel()
    k = min(ratio * num_pos, neg_scores.size)
    order = np.argsort(-neg_scores, kind="stable")  # hardest (highest score) first, ties by index
    return order[:k]


@implements(("RankDet", "Sec. 3.1, scheme (2)"), ("RankDet", "Sec. 4.1 (15 / 3 groups)"),
            name="Group negative mining: equal score intervals, one mean score per group",
            family="rankdet", kind="primitive")
def group_negatives(neg_f, num_groups: int, group_split: str = "range") -> List[np.ndarray]:
    r"""Split negatives into at most ``num_groups`` groups by score.

    "We sort all the background samples based on the object confidence scores
    and divide them into multiple groups at equal intervals of scores. We then
    use the average scores of each group to compute the loss" (Sec. 3.1); 15
    groups for the global loss and 3 per class for the class-specific loss
    (Sec. 4.1).  ``group_split``:

    * ``"range"`` (default): G bins of equal width between the lowest and the
      highest score, :math:`g = \lfloor G (f - f_{min}) / (f_{max} - f_{min}) \rfloor`
      clipped to G-1 (a score on an inner edge joins the upper bin; the
      maximum joins the top bin).  All scores equal: one group.
    * ``"unit"``: G bins of equal width on [0, 1], :math:`g = \min(\lfloor G f\rfloor, G-1)`
      (needs ``f`` in [0, 1], i.e. probabilities).
    * ``"count"``: the scores sorted ascending (ties by index) are cut into G
      consecutive groups of equal size with ``numpy.array_split`` (the first
      ``M mod G`` groups, the lowest-scoring ones, hold one more).

    Returns the non-empty groups as index arrays into ``neg_f`` (each sorted
    ascending by index), ordered from the lowest to the highest scores.  Each
    group then acts as one negative whose score is the mean of its members
    (weight 1, whatever its size).  Time O(M log M), memory O(M).
    """
    num_groups = _check_int(num_groups, "num_groups", 1)
    check_choice(group_split, "group_split", GROUP_SPLITS)
    split = group_split
    f = np.asarray(neg_f, dtype=np.float64).ravel()
    if f.size == 0:
        return []
    if split == "count":
        order = np.argsort(f, kind="stable")
        return [np.sort(chunk) for chunk in np.array_split(order, num_groups) if chunk.size]
    if split == "unit":
        if f.min() < 0.0 or f.max() > 1.0:
            raise ValueError("group_split='unit' bins scores on [0, 1] and needs probabilities "
                             "(score_space='probability'); got scores outside [0, 1]")
        bins = np.minimum(np.floor(f * num_groups), num_groups - 1).astype(np.int64)
    else:
        lo, hi = f.min(), f.max()
        if hi == lo:
            return [np.arange(f.size)]
        bins = np.floor((f - lo) * num_groups / (hi - lo)).astype(np.int64)
        bins = np.clip(bins, 0, num_groups - 1)
    return [np.flatnonzero(bins == g) for g in range(num_groups) if np.any(bins == g)]


def confidence(s: np.ndarray, score_space: str):
    """f and df/dlogit for every logit (Eq. 1's f_theta): sigmoid(s) or s itself."""
    check_choice(score_space, "score_space", SCORE_SPACES)
    if score_space == "logit":
        return s.copy(), np.ones_like(s)
    f = expit(s)
    return f, f * (1.0 - f)


def mine(neg_f, neg_key, num_pos, *, mining, num_groups, neg_ratio, group_split) -> List[np.ndarray]:
    """Negative 'units' as index arrays into ``neg_f``: singletons (all / OHEM) or groups."""
    if mining == "all":
        return [np.array([j]) for j in range(len(neg_f))]
    if mining == "ohem":
        return [np.array([j]) for j in ohem_negatives(neg_key, num_pos, neg_ratio)]
    return group_negatives(neg_f, num_groups, group_split)


def ranking_block(f, key, pos, neg, *, mining, num_groups, neg_ratio, group_split, rank_function,
                   reweighting):
    """Eq. 2 (or Eq. 4 for one class) on confidences ``f`` [N]: loss, d loss / d f [N], info.

    ``pos`` / ``neg`` are sample indices; ``key`` orders negatives for OHEM.
    """
    grad_f = np.zeros(f.shape)
    if pos.size == 0 or neg.size == 0:
        return 0.0, grad_f, {"negatives": [], "z": np.zeros((0, pos.size)), "num_pairs": 0}
    units = [neg[u] for u in mine(f[neg], key[neg], pos.size, mining=mining, num_groups=num_groups,
                                   neg_ratio=neg_ratio, group_split=group_split)]
    unit_f = np.array([f[u].mean() for u in units]) if units else np.zeros(0)  # group mean score
    out = pair_loss_reference(unit_f, f[pos], rank_function, reweighting)
    grad_f[pos] += out.grad_pos
    for u, g in zip(units, out.grad_neg):
        grad_f[u] += g / u.size  # the mean passes its gradient equally to every member
    return out.loss, grad_f, {"negatives": units, "z": out.z, "num_pairs": int(out.z.size)}


# ----------------------------------------------------------------------------------------------------------------
# The three losses and the objective, on validated input
# ----------------------------------------------------------------------------------------------------------------

def global_reference(x, block=ranking_block) -> LossResult:
    """Global ranking loss (RankDet Eqs. 2-3) on validated input ``x``
    (:class:`rankspec.refimpl.losses.rankdet.GlobalRankingInput`); ``block`` computes Eq. 2 on the
    chosen confidences (the readable :func:`ranking_block`, or a fast path's block with the same
    signature).  Cost: see :func:`~rankspec.refimpl.global_ranking_loss`."""
    s, lab, objectness, score_space = x.logits, x.labels, x.objectness, x.score_space
    mining, num_groups, neg_ratio, group_split = x.mining, x.num_groups, x.neg_ratio, x.group_split
    rank_function, reweighting = x.rank_function, x.reweighting
    n = s.shape[0]
    if s.ndim == 1:
        col = None
        key = s
    else:
        col = np.argmax(s, axis=1)  # highest class logit = highest confidence (first index on ties)
        if objectness == "target":
            fg = lab >= 0
            col[fg] = lab[fg]
        key = s[np.arange(n), col]
    f, df = confidence(key, score_space)  # the object confidence of every sample
    pos = np.flatnonzero(lab >= 0)
    neg = np.flatnonzero(lab == BACKGROUND)
    loss, grad_f, info = block(f, key, pos, neg, mining=mining, num_groups=num_groups, neg_ratio=neg_ratio,
                               group_split=group_split, rank_function=rank_function, reweighting=reweighting)
    grad_obj = grad_f * df  # chain rule through f = sigmoid(logit) (or identity)
    if col is None:
        grad = grad_obj
    else:
        grad = np.zeros(s.shape)
        grad[np.arange(n), col] = grad_obj
    terms = {"global": loss, "num_pairs": info["num_pairs"], "z": info["z"], "negatives": info["negatives"],
             "positives": pos}
    return LossResult(loss, grad, terms)



def class_specific_reference(x, block=ranking_block) -> LossResult:
    """Class-specific ranking loss (RankDet Eqs. 4-5) on validated input ``x``
    (:class:`rankspec.refimpl.losses.rankdet.ClassRankingInput`); ``block`` computes Eq. 4's term of
    one class (the readable :func:`ranking_block`, or a fast path's block with the same signature).
    Cost: see :func:`~rankspec.refimpl.class_specific_ranking_loss`."""
    s, lab, score_space, class_reduction = x.logits, x.labels, x.score_space, x.class_reduction
    mining, num_groups, neg_ratio, group_split = x.mining, x.num_groups, x.neg_ratio, x.group_split
    rank_function, reweighting = x.rank_function, x.reweighting
    f_all, df_all = confidence(s, score_space)
    C = s.shape[1]
    grad = np.zeros(s.shape)
    per_class = np.zeros(C)
    num_pairs = 0
    active = 0
    negatives, zs = [], []
    for c in range(C):  # Eq. 4: the sum over object classes
        pos = np.flatnonzero(lab == c)
        neg = np.flatnonzero((lab != c) & (lab != IGNORE))  # other classes' positives and background
        loss_c, grad_f, info = block(f_all[:, c], s[:, c], pos, neg, mining=mining, num_groups=num_groups,
                                     neg_ratio=neg_ratio, group_split=group_split, rank_function=rank_function,
                                     reweighting=reweighting)
        per_class[c] = loss_c
        negatives.append(info["negatives"])
        zs.append(info["z"])
        grad[:, c] = grad_f * df_all[:, c]
        num_pairs += info["num_pairs"]
        active += info["num_pairs"] > 0
    scale = 1.0 / active if (class_reduction == "mean" and active > 0) else 1.0
    loss = float(per_class.sum() * scale)
    terms = {"class": loss, "per_class": per_class, "num_pairs": num_pairs, "negatives": negatives, "z": zs}
    return LossResult(loss, grad * scale, terms)



def iou_guided_reference(x) -> LossResult:
    """IoU-guided ranking loss (RankDet Eq. 6) on validated input ``x``
    (:class:`rankspec.refimpl.losses.rankdet.IoURankingInput`).  Time and memory O(sum over
    (class, level) groups of |P_c^k|^2) plus O(N C)."""
    s_log, lab, iou, lev, alpha = x.logits, x.labels, x.ious, x.levels, x.alpha
    rank_function, score_space, iou_grad, iou_pairs = x.rank_function, x.score_space, x.iou_grad, x.iou_pairs
    iou_normalization = x.iou_normalization
    f_all, df_all = confidence(s_log, score_space)
    n = s_log.shape[0]
    grad = np.zeros(s_log.shape)
    grad_ious = np.zeros(n)
    loss = 0.0
    num_pairs = 0
    pos = np.flatnonzero(lab >= 0)
    for c, k in sorted(set(zip(lab[pos].tolist(), lev[pos].tolist()))):  # Eq. 6: sums over c and k
        members = pos[(lab[pos] == c) & (lev[pos] == k)]
        f = f_all[members, c]
        s = iou[members]
        m = members.size
        if iou_pairs == "unordered":
            mask = np.triu(np.ones((m, m)), k=1)
        elif iou_pairs == "ordered":
            mask = 1.0 - np.eye(m)
        else:
            mask = np.ones((m, m))
        S = s[:, None] - s[None, :]  # s(p_i) - s(p_j)
        with np.errstate(over="ignore", invalid="ignore"):  # huge logits: inf differences, checked below
            F = f[:, None] - f[None, :]  # f(p_i) - f(p_j)
            U = -alpha * F * S  # the argument of L_rank in Eq. 6
            L, dL = rank_function_values(U, rank_function)
            part = float((mask * L).sum())
        if not np.isfinite(part):
            raise FloatingPointError(f"the {rank_function} IoU-guided ranking loss overflowed float64; use "
                                     "score_space='probability' or a bounded rank_function")
        loss += part
        num_pairs += int(mask.sum())
        # d/df: dU_ij/df_i = -alpha S_ij, dU_ij/df_j = +alpha S_ij
        G = mask * dL * (-alpha) * S
        grad[members, c] += (G.sum(axis=1) - G.sum(axis=0)) * df_all[members, c]
        # d/ds: dU_ij/ds_i = -alpha F_ij, dU_ij/ds_j = +alpha F_ij, with the stop-gradient of Sec. 3.3
        H = mask * dL * (-alpha) * F
        if iou_grad == "both":
            first, second = np.ones((m, m)), np.ones((m, m))
        elif iou_grad == "higher":
            first, second = (F > 0).astype(float), (F < 0).astype(float)  # only the more confident one
        else:
            first = second = np.zeros((m, m))
        grad_ious[members] += (first * H).sum(axis=1) - (second * H).sum(axis=0)
    if iou_normalization == "pairs" and num_pairs > 0:
        loss /= num_pairs
        grad /= num_pairs
        grad_ious /= num_pairs
    return LossResult(float(loss), grad, {"iou": float(loss), "grad_ious": grad_ious, "num_pairs": num_pairs})


def combine_rankdet(x, g: LossResult, c: LossResult, r) -> LossResult:
    """RankDet Sec. 3.4: ``w1 L_global + w2 L_cls + w3 L_IoU + w4 L_reg`` from the three losses' results
    (``r`` None when ``x.iou`` is None, i.e. ``weights[2] == 0`` without ious).  O(N C)."""
    w, regression = x.weights, x.regression
    if r is None:
        iou_loss, iou_grad_logits, grad_ious = 0.0, np.zeros(c.grad.shape), np.zeros(c.grad.shape[0])
    else:
        iou_loss, iou_grad_logits, grad_ious = r.loss, r.grad, r.terms["grad_ious"]
    loss = float(w[0] * g.loss + w[1] * c.loss + w[2] * iou_loss + w[3] * regression)
    grad = w[0] * g.grad + w[1] * c.grad + w[2] * iou_grad_logits
    terms = {"global": g.loss, "class": c.loss, "iou": iou_loss, "regression": regression,
             "grad_ious": w[2] * grad_ious}
    return LossResult(loss, grad, terms)


def rankdet_reference(x) -> LossResult:
    """The RankDetNet objective (RankDet Sec. 3.4) on validated input ``x``
    (:class:`rankspec.refimpl.losses.rankdet.RankDetInput`): the three references, combined."""
    r = None if x.iou is None else iou_guided_reference(x.iou)
    return combine_rankdet(x, global_reference(x.global_), class_specific_reference(x.class_), r)

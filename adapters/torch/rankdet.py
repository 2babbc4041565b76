r"""RankDetNet ranking losses for PyTorch (RankDet Eqs. 2-6, Sec. 3.4).

Differentiable torch versions of :mod:`rankspec.refimpl.reference.rankdet` with the same
arguments, defaults, conventions and input layout; autograd supplies the
gradient.  The paper's "no gradient" rules are ``detach()`` calls:

* the dynamic re-weighting factors z / z_c of Eqs. 3 and 5 are computed from
  detached losses (Sec. 3.1);
* in Eq. 6 the IoU of the less confident sample of each pair is detached
  (Sec. 3.3, ``iou_grad="higher"``);
* negative mining (OHEM selection, group membership) is computed on detached
  scores; a group's mean score passes its gradient to its members.

Input layout (one image): ``logits`` ``[N, C]`` floating tensor (``[N]`` also
for the global loss); ``labels`` ``[N]`` integer tensor with ``0..C-1`` =
positive of that class, ``-1`` = background, ``-2`` = ignored (or a one-hot
``[N, C]`` tensor); ``ious`` ``[N]`` floating tensor (may require grad);
``levels`` ``[N]`` integer tensor of pyramid-level ids or ``None``.  The
modules also take a batch ``[B, N, C]`` (labels, ious, levels ``[B, N]``) and
sum the per-image losses (RankDet Eq. 1).

Works in float32 and float64 on any device; code is device-agnostic.  The
mining and the per-class loop run in Python over classes; the pair sums are
vectorised.  Complexity as in the reference: O(|P| U) for the global loss,
O(sum_c |P_c| U_c) for the class-specific loss and O(|P|^2) memory for the
IoU-guided loss (the pair mask over all positives).
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch
from torch import nn

from rankspec.refimpl.reference.rankdet import (BACKGROUND, CLASS_REDUCTIONS, GROUP_SPLITS, IGNORE, IOU_GRADS,
                                                IOU_NORMALIZATIONS, IOU_PAIRS, MININGS, OBJECTNESS, RANK_FUNCTIONS,
                                                REWEIGHTINGS, SCORE_SPACES)
from rankspec.refimpl._validate import check_choice, check_int, check_positive_float

from . import _distributed, _precision
from ._inputs import as_float64_tensor, check_tensor

__all__ = [
    "rank_function_values", "reweighted_pair_loss", "global_ranking_loss", "class_specific_ranking_loss",
    "iou_guided_ranking_loss", "rankdet_loss", "GlobalRankingLoss", "ClassSpecificRankingLoss",
    "IoUGuidedRankingLoss", "RankDetLoss", "RANKDET_SCOPES",
]

#: ``"image"``: the given rows are one image; ``"distributed"``: the rows of every rank form one image
#: (see :mod:`rankspec.adapters.torch._distributed`)
RANKDET_SCOPES = ("image", "distributed")


def _scoped(row_names):
    """Add the ``scope`` keyword (and float32 computation of float16 / bfloat16 inputs) to a loss of
    one image whose leading arguments ``row_names`` hold one row per sample."""
    def decorate(fn):
        inner = _precision.full_precision(fn)

        @functools.wraps(fn)
        def wrapper(*args, scope: str = "image", **kwargs):
            check_choice(scope, "scope", RANKDET_SCOPES)
            if scope == "image":
                return inner(*args, **kwargs)
            rows = dict(zip(row_names, args))
            if len(args) > len(row_names):
                raise TypeError(f"{fn.__name__}() takes at most {len(row_names)} positional arguments")
            for name in row_names:
                if name in kwargs:
                    rows[name] = kwargs.pop(name)
                rows.setdefault(name, None)
            return _distributed.call_on_union(inner, rows, flatten=False, **kwargs)
        wrapper.__doc__ = (fn.__doc__ or "") + (
            "\n\n    ``scope=\"distributed\"``: the rows of every rank form one image (the same loss on every "
            "rank), this\n    rank's gradient times the world size (:mod:`rankspec.adapters.torch._distributed`).\n")
        return wrapper
    return decorate


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------

_check_int = check_int  # the reference's rule and message


def _check_logits(logits, allow_1d: bool) -> torch.Tensor:
    check_tensor(logits, "logits")
    if not logits.is_floating_point():
        raise TypeError(f"logits must have a floating-point dtype (float16, bfloat16, float32 or float64), "
                        f"got {logits.dtype}")
    if logits.numel() == 0:
        raise ValueError("logits is empty; at least one element is required")
    if not (logits.dim() == 2 or (allow_1d and logits.dim() == 1)):
        want = "[N] or [N, C]" if allow_1d else "[N, C]"
        raise ValueError(f"logits must have shape {want} (N samples, C classes), got shape {tuple(logits.shape)}")
    finite = torch.isfinite(logits)
    if not bool(finite.all()):
        raise ValueError(f"logits contains {int((~finite).sum())} NaN or infinite value(s); all entries must be "
                         "finite")
    return logits


def _on_device(x, name: str, logits: torch.Tensor) -> torch.Tensor:
    """A tensor on the logits' device as is; anything else (list, NumPy array) read by the reference's rules
    as float64 (:func:`rankspec.adapters.torch._inputs.as_float64_tensor`)."""
    if isinstance(x, torch.Tensor):
        check_tensor(x, name)
        if x.device != logits.device:
            raise ValueError(f"{name} is on device {x.device} but logits is on device {logits.device}; they must "
                             "be on the same device")
        return x
    return as_float64_tensor(x, name, logits.device)


def _check_labels(labels, logits: torch.Tensor) -> torch.Tensor:
    t = _on_device(labels, "labels", logits).detach()
    n = logits.shape[0]
    if t.is_complex():
        raise TypeError(f"labels must hold integer class ids, got dtype {t.dtype}")
    if logits.dim() == 2 and tuple(t.shape) == tuple(logits.shape):  # one-hot [N, C]
        t = t.to(torch.float64)
        if bool(((t != 0) & (t != 1)).any()):
            raise ValueError("one-hot labels must contain only 0 and 1")
        if bool((t.sum(dim=1) > 1).any()):
            raise ValueError("one-hot labels must have at most one 1 per row (one class per sample)")
        return torch.where(t.sum(dim=1) > 0, t.argmax(dim=1), torch.full_like(t[:, 0], BACKGROUND).long())
    if tuple(t.shape) != (n,):
        raise ValueError(f"labels must have shape ({n},) (one class id per sample) or the shape of logits "
                         f"{tuple(logits.shape)} (one-hot); got shape {tuple(t.shape)}")
    if t.dtype == torch.bool:
        raise TypeError("labels must hold integer class ids, got a boolean tensor")
    if t.is_floating_point():
        if not bool(torch.isfinite(t).all()):
            raise ValueError("labels contains NaN or infinite value(s); all entries must be finite")
        if bool((t != torch.round(t)).any()):
            raise ValueError(f"labels must hold whole numbers; found {float(t[t != torch.round(t)][0])!r}")
    t = t.to(torch.int64)
    bad = t < IGNORE
    upper = logits.shape[1] - 1 if logits.dim() == 2 else None
    if upper is not None:
        bad = bad | (t > upper)
    if bool(bad.any()):
        rule = f"0..{upper}" if upper is not None else "a class id >= 0"
        raise ValueError(f"labels must be {rule} (positive), {BACKGROUND} (background) or {IGNORE} (ignored); "
                         f"found {int(t[bad][0])}")
    return t


def _check_ious(ious, lab: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    t = _on_device(ious, "ious", logits)
    if not t.is_floating_point():
        raise TypeError(f"ious must have a floating-point dtype, got {t.dtype}")
    if tuple(t.shape) != tuple(lab.shape):
        raise ValueError(f"ious must have shape {tuple(lab.shape)} (one IoU per sample), got shape {tuple(t.shape)}")
    d = t.detach()
    if not bool(torch.isfinite(d).all()):
        raise ValueError("ious contains NaN or infinite value(s); all entries must be finite")
    p = d[lab >= 0]
    if bool(((p < 0) | (p > 1)).any()):
        raise ValueError(f"ious of positive samples must lie in [0, 1]; found {float(p[(p < 0) | (p > 1)][0])!r}")
    return t.to(logits.dtype)


def _check_levels(levels, lab: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    if levels is None:
        return torch.zeros_like(lab)
    t = _on_device(levels, "levels", logits).detach()
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"levels must hold integer pyramid-level ids, got dtype {t.dtype}")
    if tuple(t.shape) != tuple(lab.shape):
        raise ValueError(f"levels must have shape {tuple(lab.shape)} (one pyramid level per sample), got "
                         f"{tuple(t.shape)}")
    if t.is_floating_point() and bool((t != torch.round(t)).any()):
        raise ValueError("levels must hold whole numbers")
    t = t.to(torch.int64)
    if bool((t < 0).any()):
        raise ValueError(f"levels must be pyramid-level ids >= 0; found {int(t[t < 0][0])}")
    return t


def _check_common(rank_function, score_space, reweighting, mining, group_split, num_groups, neg_ratio):
    # the reference's order (rankspec.refimpl.losses.rankdet._check_common), so the first error is the same
    check_choice(score_space, "score_space", SCORE_SPACES)
    if mining == "group" and group_split == "unit" and score_space != "probability":
        raise ValueError("group_split='unit' bins confidences on [0, 1]; it needs score_space='probability'")
    check_choice(rank_function, "rank_function", RANK_FUNCTIONS)
    check_choice(reweighting, "reweighting", REWEIGHTINGS)
    check_choice(mining, "mining", MININGS)
    check_choice(group_split, "group_split", GROUP_SPLITS)
    _check_int(num_groups, "num_groups", 1)
    _check_int(neg_ratio, "neg_ratio", 1)


# ---------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------

def rank_function_values(x: torch.Tensor, rank_function: str = "exponential") -> torch.Tensor:
    """L_rank(x): ``exp(x)``, ``sigmoid(x)`` or ``log(1 + exp(x))`` (RankDet Sec. 3.1, Table 5a)."""
    check_choice(rank_function, "rank_function", RANK_FUNCTIONS)
    if rank_function == "exponential":
        return torch.exp(x)
    if rank_function == "sigmoid":
        return torch.sigmoid(x)
    return torch.logaddexp(torch.zeros_like(x), x)


def reweighted_pair_loss(neg_f: torch.Tensor, pos_f: torch.Tensor, *, rank_function: str = "exponential",
                         reweighting: str = "dynamic", z: Optional[torch.Tensor] = None) -> torch.Tensor:
    """sum_{n,p} z(n,p) L_rank(f(n) - f(p)) (RankDet Eqs. 2-3); z detached, or the given frozen ``z``."""
    check_choice(reweighting, "reweighting", REWEIGHTINGS)
    if neg_f.numel() == 0 or pos_f.numel() == 0:
        return (neg_f.sum() + pos_f.sum()) * 0.0
    x = neg_f.reshape(-1, 1) - pos_f.reshape(1, -1)  # x_np = f(n) - f(p)
    L = rank_function_values(x, rank_function)
    if z is None:
        if reweighting == "dynamic":
            Ld = L.detach()
            z = Ld / Ld.sum()  # Eq. 3: no gradient through z
        elif reweighting == "mean":
            z = torch.full_like(x, 1.0 / x.numel())
        else:
            z = torch.ones_like(x)
    return (z.detach() * L).sum()


def _confidence(logits: torch.Tensor, score_space: str) -> torch.Tensor:
    return torch.sigmoid(logits) if score_space == "probability" else logits


def _group_ids(f: torch.Tensor, num_groups: int, split: str) -> torch.Tensor:
    """Group id of every negative (detached), as in :func:`rankspec.refimpl.reference.rankdet.group_negatives`."""
    f = f.detach()
    m = f.numel()
    G = num_groups
    if split == "count":
        order = torch.sort(f, stable=True).indices
        sizes = torch.full((G,), m // G, dtype=torch.int64, device=f.device)
        sizes[: m % G] += 1
        gid = torch.empty(m, dtype=torch.int64, device=f.device)
        gid[order] = torch.repeat_interleave(torch.arange(G, device=f.device), sizes)
        return gid
    if split == "unit":
        if bool((f < 0).any()) or bool((f > 1).any()):
            raise ValueError("group_split='unit' bins scores on [0, 1] and needs probabilities")
        return torch.clamp(torch.floor(f * G), max=G - 1).to(torch.int64)
    lo, hi = f.min(), f.max()
    if bool(hi == lo):
        return torch.zeros(m, dtype=torch.int64, device=f.device)
    return torch.clamp(torch.floor((f - lo) * G / (hi - lo)), 0, G - 1).to(torch.int64)


def _negative_units(f_neg, key_neg, num_pos, *, mining, num_groups, neg_ratio, group_split) -> torch.Tensor:
    """The scores of the negative units: every negative, the OHEM selection, or the group means."""
    if mining == "all":
        return f_neg
    if mining == "ohem":
        k = min(neg_ratio * num_pos, f_neg.numel())
        order = torch.sort(key_neg.detach(), descending=True, stable=True).indices[:k]
        return f_neg[order]
    gid = _group_ids(f_neg, num_groups, group_split)
    sums = torch.zeros(num_groups, dtype=f_neg.dtype, device=f_neg.device).index_add(0, gid, f_neg)
    counts = torch.bincount(gid, minlength=num_groups)
    keep = counts > 0
    return sums[keep] / counts[keep].to(f_neg.dtype)  # each group's mean score


def _block(f, key, pos, neg, *, mining, num_groups, neg_ratio, group_split, rank_function, reweighting):
    num_pos = int(pos.sum())
    if num_pos == 0 or not bool(neg.any()):
        return f.sum() * 0.0
    units = _negative_units(f[neg], key[neg], num_pos, mining=mining, num_groups=num_groups,
                            neg_ratio=neg_ratio, group_split=group_split)
    return reweighted_pair_loss(units, f[pos], rank_function=rank_function, reweighting=reweighting)


# ---------------------------------------------------------------------------
# the losses (one image)
# ---------------------------------------------------------------------------

@_scoped(("logits", "labels"))
def global_ranking_loss(logits: torch.Tensor, labels, *, rank_function: str = "exponential",
                        score_space: str = "probability", reweighting: str = "dynamic", mining: str = "group",
                        num_groups: int = 15, neg_ratio: int = 3, group_split: str = "range",
                        objectness: str = "max") -> torch.Tensor:
    """Global ranking loss (RankDet Eqs. 2-3) of one image; see the reference for the conventions."""
    _check_common(rank_function, score_space, reweighting, mining, group_split, num_groups, neg_ratio)
    check_choice(objectness, "objectness", OBJECTNESS)
    _check_logits(logits, allow_1d=True)
    lab = _check_labels(labels, logits)
    f_all = _confidence(logits, score_space)
    if logits.dim() == 1:
        f, key = f_all, logits
    else:
        col = logits.detach().argmax(dim=1)  # first maximal index on ties
        if objectness == "target":
            col = torch.where(lab >= 0, lab, col)
        f = f_all.gather(1, col[:, None]).squeeze(1)
        key = logits.gather(1, col[:, None]).squeeze(1)
    return _block(f, key, lab >= 0, lab == BACKGROUND, mining=mining, num_groups=num_groups, neg_ratio=neg_ratio,
                  group_split=group_split, rank_function=rank_function, reweighting=reweighting)


@_scoped(("logits", "labels"))
def class_specific_ranking_loss(logits: torch.Tensor, labels, *, rank_function: str = "exponential",
                                score_space: str = "probability", reweighting: str = "dynamic",
                                mining: str = "group", num_groups: int = 3, neg_ratio: int = 3,
                                group_split: str = "range", class_reduction: str = "sum") -> torch.Tensor:
    """Class-specific ranking loss (RankDet Eqs. 4-5) of one image."""
    _check_common(rank_function, score_space, reweighting, mining, group_split, num_groups, neg_ratio)
    check_choice(class_reduction, "class_reduction", CLASS_REDUCTIONS)
    _check_logits(logits, allow_1d=False)
    lab = _check_labels(labels, logits)
    f_all = _confidence(logits, score_space)
    total = f_all.sum() * 0.0
    active = 0
    valid = lab != IGNORE
    for c in torch.unique(lab[lab >= 0]).tolist():  # classes without positives contribute 0
        pos = lab == c
        neg = valid & ~pos  # other classes' positives and background
        if not bool(neg.any()):
            continue
        total = total + _block(f_all[:, c], logits[:, c], pos, neg, mining=mining, num_groups=num_groups,
                               neg_ratio=neg_ratio, group_split=group_split, rank_function=rank_function,
                               reweighting=reweighting)
        active += 1
    if class_reduction == "mean" and active > 0:
        total = total / active
    return total


@_scoped(("logits", "labels", "ious", "levels"))
def iou_guided_ranking_loss(logits: torch.Tensor, labels, ious, levels=None, *, alpha: float = 1.0,
                            rank_function: str = "exponential", score_space: str = "probability",
                            iou_grad: str = "higher", iou_pairs: str = "unordered",
                            iou_normalization: str = "none") -> torch.Tensor:
    """IoU-guided ranking loss (RankDet Eq. 6) of one image; gradients reach ``ious`` per ``iou_grad``."""
    alpha = check_positive_float(alpha, "alpha")
    check_choice(rank_function, "rank_function", RANK_FUNCTIONS)
    check_choice(score_space, "score_space", SCORE_SPACES)
    check_choice(iou_grad, "iou_grad", IOU_GRADS)
    check_choice(iou_pairs, "iou_pairs", IOU_PAIRS)
    check_choice(iou_normalization, "iou_normalization", IOU_NORMALIZATIONS)
    _check_logits(logits, allow_1d=False)
    lab = _check_labels(labels, logits)
    s_all = _check_ious(ious, lab, logits)
    lev = _check_levels(levels, lab, logits)
    idx = torch.nonzero(lab >= 0).squeeze(1)
    zero = logits.sum() * 0.0 + s_all.sum() * 0.0
    if idx.numel() == 0:
        return zero
    c, k = lab[idx], lev[idx]
    f = _confidence(logits, score_space)[idx, c]  # confidence of each positive's own class
    s = s_all[idx]
    same = (c[:, None] == c[None, :]) & (k[:, None] == k[None, :])  # one class, one pyramid level
    if iou_pairs == "unordered":
        same = torch.triu(same, diagonal=1)
    elif iou_pairs == "ordered":
        same = same & ~torch.eye(idx.numel(), dtype=torch.bool, device=same.device)
    i, j = torch.nonzero(same, as_tuple=True)
    if i.numel() == 0:
        return zero
    fi, fj = f[i], f[j]
    si, sj = s[i], s[j]
    if iou_grad == "none":
        si, sj = si.detach(), sj.detach()
    elif iou_grad == "higher":  # Sec. 3.3: freeze the IoU of the less confident sample
        gap = (fi - fj).detach()
        si = torch.where(gap > 0, si, si.detach())
        sj = torch.where(gap < 0, sj, sj.detach())
    u = -alpha * (fi - fj) * (si - sj)  # argument of L_rank in Eq. 6
    loss = rank_function_values(u, rank_function).sum()
    if iou_normalization == "pairs":
        loss = loss / i.numel()
    return loss


def rankdet_loss(logits: torch.Tensor, labels, ious=None, levels=None, regression=None, *, scope: str = "image",
                 **conventions):
    """RankDetNet objective of one image (Sec. 3.4): w . (global, class, IoU, regression), weights 1:1:1:1.

    ``regression`` is a scalar tensor (the regression loss, with its own
    graph) or ``None`` (0).  ``return_terms=True`` returns ``(total, terms)``
    with the unweighted ``"global"``, ``"class"``, ``"iou"`` and ``"regression"`` tensors.
    Conventions: see :func:`_rankdet_loss` (the keywords of the three losses).

    ``scope="distributed"``: the three ranking losses of the union of every
    rank's rows as one image (the same on every rank; this rank's gradient
    times the world size, :mod:`rankspec.adapters.torch._distributed`); the
    ``regression`` term is this rank's, added as given (not gathered, gradient
    not scaled: DistributedDataParallel averages it like any local loss).
    float16 / bfloat16 inputs are computed in float32.
    """
    check_choice(scope, "scope", RANKDET_SCOPES)
    if scope == "image":
        return _precision.full_precision(_rankdet_loss)(logits, labels, ious, levels, regression, **conventions)
    w = tuple(conventions.get("weights", (1.0, 1.0, 1.0, 1.0)))
    out = _distributed.call_on_union(_precision.full_precision(_rankdet_loss),
                                     dict(logits=logits, labels=labels, ious=ious, levels=levels),
                                     flatten=False, **conventions)
    if regression is None:
        return out
    if len(w) != 4:
        raise ValueError(f"weights must be 4 finite non-negative numbers (global, class, iou, regression), got "
                         f"{w!r}")
    r = _on_device(regression, "regression", logits)
    if r.numel() != 1 or not r.is_floating_point() or not bool(torch.isfinite(r.detach()).all()):
        raise ValueError("regression must be a finite scalar floating-point tensor (the regression loss)")
    r = r.reshape(()).to(logits.dtype)
    if conventions.get("return_terms", False):
        total, terms = out
        return total + float(w[3]) * r, dict(terms, regression=r)
    return out + float(w[3]) * r


def _rankdet_loss(logits: torch.Tensor, labels, ious=None, levels=None, regression=None, *,
                 weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), rank_function: str = "exponential",
                 score_space: str = "probability", reweighting: str = "dynamic", mining: str = "group",
                 global_groups: int = 15, class_groups: int = 3, neg_ratio: int = 3, group_split: str = "range",
                 objectness: str = "max", class_reduction: str = "sum", alpha: float = 1.0,
                 iou_grad: str = "higher", iou_pairs: str = "unordered", iou_normalization: str = "none",
                 return_terms: bool = False):
    """The RankDetNet objective of one image (:func:`rankdet_loss` with ``scope="image"``)."""
    if len(tuple(weights)) != 4 or any(isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0
                                       or w == float("inf") for w in weights):
        raise ValueError(f"weights must be 4 finite non-negative numbers (global, class, iou, regression), got "
                         f"{weights!r}")
    w = [float(v) for v in weights]
    g = global_ranking_loss(logits, labels, rank_function=rank_function, score_space=score_space,
                            reweighting=reweighting, mining=mining, num_groups=global_groups, neg_ratio=neg_ratio,
                            group_split=group_split, objectness=objectness)
    c = class_specific_ranking_loss(logits, labels, rank_function=rank_function, score_space=score_space,
                                    reweighting=reweighting, mining=mining, num_groups=class_groups,
                                    neg_ratio=neg_ratio, group_split=group_split, class_reduction=class_reduction)
    if ious is None:
        if w[2] != 0:
            raise ValueError("ious is required for the IoU-guided loss (or pass weights with weights[2] = 0)")
        u = logits.sum() * 0.0
    else:
        u = iou_guided_ranking_loss(logits, labels, ious, levels, alpha=alpha, rank_function=rank_function,
                                    score_space=score_space, iou_grad=iou_grad, iou_pairs=iou_pairs,
                                    iou_normalization=iou_normalization)
    if regression is None:
        r = logits.sum() * 0.0
    else:
        r = _on_device(regression, "regression", logits)
        if r.numel() != 1 or not r.is_floating_point() or not bool(torch.isfinite(r.detach()).all()):
            raise ValueError("regression must be a finite scalar floating-point tensor (the regression loss)")
        r = r.reshape(()).to(logits.dtype)
    total = w[0] * g + w[1] * c + w[2] * u + w[3] * r
    if return_terms:
        return total, {"global": g, "class": c, "iou": u, "regression": r}
    return total


# ---------------------------------------------------------------------------
# modules (one image, or a batch [B, N, C] summed over images, Eq. 1)
# ---------------------------------------------------------------------------

def _batched(fn, logits, labels, *rest, **kw):
    if isinstance(logits, torch.Tensor) and logits.dim() == 3:
        b = logits.shape[0]
        for name, x in zip(("labels", "ious", "levels"), (labels,) + rest):
            if x is not None and (not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] != b):
                raise ValueError(f"with batched logits [B, N, C] (B={b}), {name} must be a tensor with leading "
                                 f"dimension B")
        if kw.get("scope") == "distributed":  # the images of every rank are one ranking: one call, flat rows
            def flat(x):
                return None if x is None else x.reshape((-1,) + tuple(x.shape[2:]))
            return fn(flat(logits), flat(labels), *[flat(x) for x in rest], **kw)
        return sum(fn(logits[i], labels[i], *[None if x is None else x[i] for x in rest], **kw) for i in range(b))
    return fn(logits, labels, *rest, **kw)


class GlobalRankingLoss(nn.Module):
    """Module form of :func:`global_ranking_loss`; keyword arguments are the conventions."""

    def __init__(self, **conventions):
        super().__init__()
        self.conventions = dict(conventions)

    def forward(self, logits, labels):
        return _batched(global_ranking_loss, logits, labels, **self.conventions)


class ClassSpecificRankingLoss(nn.Module):
    """Module form of :func:`class_specific_ranking_loss`."""

    def __init__(self, **conventions):
        super().__init__()
        self.conventions = dict(conventions)

    def forward(self, logits, labels):
        return _batched(class_specific_ranking_loss, logits, labels, **self.conventions)


class IoUGuidedRankingLoss(nn.Module):
    """Module form of :func:`iou_guided_ranking_loss`."""

    def __init__(self, **conventions):
        super().__init__()
        self.conventions = dict(conventions)

    def forward(self, logits, labels, ious, levels=None):
        return _batched(iou_guided_ranking_loss, logits, labels, ious, levels, **self.conventions)


class RankDetLoss(nn.Module):
    """Module form of :func:`rankdet_loss` (the three ranking losses; add the regression loss in ``forward``)."""

    def __init__(self, **conventions):
        super().__init__()
        if "return_terms" in conventions:
            raise ValueError("RankDetLoss returns the total; call rankdet_loss(..., return_terms=True) for terms")
        self.conventions = dict(conventions)

    def forward(self, logits, labels, ious=None, levels=None, regression=None):
        total = _batched(rankdet_loss, logits, labels, ious, levels, **self.conventions)
        if regression is not None:  # added once per batch (it is already the batch's regression loss)
            w = self.conventions.get("weights", (1.0, 1.0, 1.0, 1.0))[3]
            total = total + float(w) * regression
        return total

# the loss record each adapter implements (rankspec.refimpl.records(); read by the generic record tests)
global_ranking_loss.__rankspec_record__ = "global_ranking_loss"
class_specific_ranking_loss.__rankspec_record__ = "class_specific_ranking_loss"
iou_guided_ranking_loss.__rankspec_record__ = "iou_guided_ranking_loss"
rankdet_loss.__rankspec_record__ = "rankdet_loss"

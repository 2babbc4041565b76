r"""Loss dispatch: from a head's flattened scores and labels to every rankspec loss.

A dense head (2D or 3D) produces, after assignment, one row per anchor of
every image (:class:`FlatTargets`):

* ``logits`` ``[N, C]`` - the raw class scores (sigmoid head: one score per
  class, no background score), with their autograd graph;
* ``labels`` ``[N]`` - the anchor's class ``0..C-1`` when positive,
  ``-1`` (background) or ``-2`` (ignored; in no loss, zero gradient);
* ``ious`` ``[N]`` - for positives, the IoU of the *decoded predicted box*
  with its ground truth (2D IoU or rotated 3D IoU), detached; 0 elsewhere;
* ``image_ids`` and ``levels`` ``[N]`` - image index and pyramid level.

:func:`classification_loss` turns them into the inputs each loss expects and
returns the loss-dict entries; :func:`reference_classification_loss` computes
the same thing with the NumPy reference (:mod:`rankspec.refimpl`) so that the
pipeline can be checked end to end (``tests/test_heads_conformance.py``).

======================  ========================================================  =====================  =========
``loss``                input (sigmoid label vectorisation)                       keys                   scope
======================  ========================================================  =====================  =========
``"rs"``                RS Loss on ``[n, C]``; target = one-hot x IoU             loss_rank, loss_sort   batch
``"brs"``               bucketed RS Loss, same targets                            loss_rank, loss_sort   batch
``"ap"``                AP Loss on ``[n, C]``; one-hot 0/1 labels                 loss_cls               batch
``"ap-interp"``         AP Loss, interpolated precision (AP-Loss authors)         loss_cls               batch
``"bap"``               bucketed AP Loss                                          loss_cls               batch
``"ape"``               APE Loss (ARPS pairs); one-hot labels, IoU per entry      loss_cls               batch
``"dr"``                DR Loss; class ids ``1..C``, 0 background, -1 ignored     loss_cls               image
``"alrp"``              aLRP Loss (classification part) on ``[n, C]``; one-hot    loss_cls               batch
                        0/1 targets, e_loc of each positive
``"rankdet"``           RankDetNet global + class-specific + IoU-guided           loss_global,           image
                                                                                  loss_class, loss_iou
``"rankdet-global"``    one of the three                                          loss_global            image
``"rankdet-class"``     one of the three                                          loss_class             image
``"rankdet-iou"``       one of the three                                          loss_iou               image
``"focal"``             sigmoid focal loss (baseline), sum / number of positives  loss_cls               (n/a)
======================  ========================================================  =====================  =========

Rows labelled ``-2`` are dropped before the AP / RS / APE family is called
(the authors' heads drop them too); DR and RankDetNet take ignore labels
natively.  ``scope="batch"`` ranks all images together (the Rank & Sort,
bucketed and AP-Loss authors' code); ``"image"`` ranks each image alone: the
AP / RS / APE family then averages over images that have a positive (the
rule of :mod:`rankspec.adapters.torch.functional`), DR and RankDetNet sum over
images (DR Eq. 9, RankDet Eq. 1).  ``scope=None`` picks the "scope" column above.

``scope="distributed"`` (every loss but focal) is ``"batch"`` over the union of
every rank's rows under ``torch.distributed``: each entry is the loss of the
whole global batch (the same on every rank) and this rank's logits receive
their rows of its gradient times the world size W, so that
DistributedDataParallel's gradient mean gives exactly the single-process
gradient of the global batch (the rule of
:mod:`rankspec.adapters.torch._distributed`).  A loss weight tuned for one
process on the global batch carries over unchanged.  With ``"image"`` (and
``"batch"``) each rank computes its own share: DDP's mean then gives 1/W of the
gradient of the per-image *sum* (DR, RankDetNet), so multiply their weight by
W to keep a single-process schedule.

RS and bucketed RS return the *whole* identity-update gradient on
``loss_rank``; ``loss_sort`` is the sorting error, detached (the same
arrangement as the authors' ``RankSort``, whose backward attaches the whole
gradient to the ranking output), so ``loss_rank + loss_sort`` is the RS loss
and its gradient.

aLRP Loss (Oksuz et al., NeurIPS 2020) needs the localisation error
``e_loc`` of every positive (the authors' ``aLRPLoss.apply(logits, targets,
regression_losses)``).  The aLRP paper is not among the project's papers (RS
Sec. 2 and 5, BRL Sec. 2.2 and APE Sec. 2 only describe it), so the reading is
that of the authors' heads as the issue records it: they pass the GIoU loss of
each positive divided by ``2 (1 - tau)``:

* ``e_loc="giou"`` (default where the head has GIoUs - the 2D head):
  ``e_loc = (1 - GIoU) / (2 (1 - tau))``: the GIoU loss ``1 - GIoU`` lies in
  ``[0, 2]``, halved it lies in ``[0, 1]`` like ``1 - IoU``, and dividing by
  ``1 - tau`` is LRP's normalisation of the localisation error by the
  positive threshold; ``tau = 0.5`` (the authors' and RetinaNet's positive IoU
  threshold) makes it the plain GIoU loss;
* ``e_loc="iou"`` (default where the head has only IoUs - the 3D head's
  rotated IoU): ``e_loc = (1 - IoU) / (1 - tau)``, LRP's own localisation
  error.

``e_loc`` enters the classification component's gradient as a constant
(the authors pass it detached into the autograd Function).  The 2D head's
``loss_bbox`` for aLRP is the *localisation component*
(:func:`rankspec.refimpl.losses.alrp.alrp_loc_loss`: the running sum of
e_loc in descending-logit order over the detached rank) times the
self-balancing weight (initially 50; :class:`~.dense2d.Dense2DLoss`
re-estimates it periodically with
:func:`rankspec.refimpl.reference.alrp.self_balancing_weight`), the whole box
loss of the authors' aLRP heads; :func:`alrp_components` returns both
components.  ``scope="image"`` averages both over the images with a positive.

A positive whose decoded box does not overlap its ground truth has IoU 0 and
is therefore a negative for the continuous-label losses (RS, bucketed RS),
exactly as in the Rank & Sort authors' heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

from rankspec.refimpl._result import LossResult
from rankspec.refimpl._validate import check_choice

from .assign import IGNORED, NEGATIVE

__all__ = ["LOSS_NAMES", "LOSS_KEYS", "DEFAULT_SCOPE", "FlatTargets", "classification_loss",
           "reference_classification_loss", "sigmoid_focal_loss", "resolve_scope", "alrp_components",
           "alrp_e_loc", "ALRP_HEAD_OPTIONS", "E_LOC_CHOICES"]

#: loss name -> keys of the loss dict it fills
LOSS_KEYS: Dict[str, tuple] = {
    "rs": ("loss_rank", "loss_sort"),
    "brs": ("loss_rank", "loss_sort"),
    "ap": ("loss_cls",),
    "ap-interp": ("loss_cls",),
    "bap": ("loss_cls",),
    "ape": ("loss_cls",),
    "dr": ("loss_cls",),
    "alrp": ("loss_cls",),
    "rankdet": ("loss_global", "loss_class", "loss_iou"),
    "rankdet-global": ("loss_global",),
    "rankdet-class": ("loss_class",),
    "rankdet-iou": ("loss_iou",),
    "focal": ("loss_cls",),
}
LOSS_NAMES = tuple(LOSS_KEYS)
#: the scope of the papers / authors' code for each loss
DEFAULT_SCOPE: Dict[str, str] = {name: "batch" for name in LOSS_NAMES}
DEFAULT_SCOPE.update({"dr": "image", "rankdet": "image", "rankdet-global": "image", "rankdet-class": "image",
                      "rankdet-iou": "image"})
SCOPES = ("batch", "image", "distributed")

_AP_FAMILY = ("rs", "brs", "ap", "ap-interp", "bap")
_CONTINUOUS = ("rs", "brs")
_RANKDET_WEIGHTS = {"rankdet": (1.0, 1.0, 1.0), "rankdet-global": (1.0, 0.0, 0.0),
                    "rankdet-class": (0.0, 1.0, 0.0), "rankdet-iou": (0.0, 0.0, 1.0)}


@dataclass
class FlatTargets:
    """One row per anchor of every image (see the module docstring)."""

    logits: torch.Tensor  #: [N, C] raw class scores, with graph
    labels: torch.Tensor  #: [N] int64: class 0..C-1, -1 background, -2 ignored
    ious: torch.Tensor  #: [N] IoU of the decoded prediction with its ground truth (positives), detached
    image_ids: torch.Tensor  #: [N] int64 image index 0..num_images-1
    levels: torch.Tensor  #: [N] int64 pyramid level
    num_images: int
    ious_graph: Optional[torch.Tensor] = None  #: [N] the same IoUs with their graph to the box outputs (or None)
    gious: Optional[torch.Tensor] = None  #: [N] GIoU of the decoded prediction with its box (positives), detached

    def __post_init__(self):
        lg = self.logits
        if not isinstance(lg, torch.Tensor) or lg.dim() != 2 or not lg.is_floating_point():
            raise ValueError(f"logits must be a floating [N, C] tensor, got "
                             f"{tuple(lg.shape) if isinstance(lg, torch.Tensor) else type(lg).__name__}")
        n, c = lg.shape
        for name in ("labels", "ious", "image_ids", "levels"):
            v = getattr(self, name)
            if not isinstance(v, torch.Tensor) or tuple(v.shape) != (n,):
                raise ValueError(f"{name} must be a tensor of shape ({n},), got "
                                 f"{tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}")
        if bool(((self.labels < IGNORED) | (self.labels >= c)).any()):
            raise ValueError(f"labels must be -2 (ignored), -1 (background) or a class id 0..{c - 1}")
        if self.ious_graph is not None and tuple(self.ious_graph.shape) != (n,):
            raise ValueError(f"ious_graph must have shape ({n},), got {tuple(self.ious_graph.shape)}")
        if self.gious is not None and tuple(self.gious.shape) != (n,):
            raise ValueError(f"gious must have shape ({n},), got {tuple(self.gious.shape)}")

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]

    @property
    def num_positives(self) -> int:
        return int((self.labels >= 0).sum())


def resolve_scope(name: str, scope: Optional[str]) -> str:
    check_choice(name, "loss", LOSS_NAMES)
    if scope is None:
        return DEFAULT_SCOPE[name]
    return check_choice(scope, "scope", SCOPES)


def _one_hot(labels: torch.Tensor, num_classes: int, dtype) -> torch.Tensor:
    oh = torch.zeros(labels.shape[0], num_classes, dtype=dtype, device=labels.device)
    pos = labels >= 0
    oh[pos, labels[pos]] = 1.0
    return oh


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    r"""Elementwise sigmoid focal loss (Lin et al.), the loss RS / RankDetNet / DR replace.

    :math:`-\alpha_t (1 - p_t)^\gamma \log p_t` with :math:`p = \sigma(x)`,
    :math:`p_t = p` for target 1 and :math:`1 - p` for target 0,
    :math:`\alpha_t = \alpha` / :math:`1 - \alpha`; ``log p_t`` is computed with
    ``binary_cross_entropy_with_logits`` (stable for large logits).  RetinaNet:
    alpha 0.25, gamma 2.  Differentiable (gradcheck applies in float64).
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    a_t = alpha * targets + (1 - alpha) * (1 - targets)
    return a_t * (1 - p_t) ** gamma * ce


def _zero(flat: FlatTargets) -> torch.Tensor:
    return flat.logits.sum() * 0.0


#: head-side options of aLRP (how e_loc is built); every other option is a convention of ``alrp_loss``
ALRP_HEAD_OPTIONS = ("e_loc", "tau")
E_LOC_CHOICES = ("giou", "iou")


def _alrp_head_options(options: dict, has_gious: bool):
    """Split ``options`` into (e_loc kind, tau, the loss's own conventions); checks them."""
    opts = dict(options)
    kind = opts.pop("e_loc", None)
    tau = opts.pop("tau", 0.5)
    if kind is None:
        kind = "giou" if has_gious else "iou"
    check_choice(kind, "e_loc", E_LOC_CHOICES)
    if kind == "giou" and not has_gious:
        raise ValueError("e_loc='giou' needs the GIoU of each positive, which this head does not provide "
                         "(the 2D head does); use e_loc='iou'")
    if isinstance(tau, bool) or not isinstance(tau, (int, float, np.floating, np.integer)) or not 0 <= tau < 1:
        raise ValueError(f"tau must be a number in [0, 1) (the positive IoU threshold of e_loc), got {tau!r}")
    return kind, float(tau), opts


def alrp_e_loc(ious, gious, kind: str, tau: float):
    """aLRP's localisation error of the positives (module docstring): ``(1 - GIoU) / (2 (1 - tau))`` or
    ``(1 - IoU) / (1 - tau)``; works on tensors and arrays alike (elementwise, O(n))."""
    if kind == "giou":
        return (1.0 - gious) / (2.0 * (1.0 - tau))
    return (1.0 - ious) / (1.0 - tau)


def alrp_components(flat: FlatTargets, *, scope: Optional[str] = None, **options):
    """aLRP Loss of a head's rows: ``(cls, loc)`` 0-d tensors (the module docstring's e_loc reading).

    ``cls`` is the classification component (its identity-update gradient flows to the logits only);
    ``loc`` the localisation component, differentiable w.r.t. e_loc through ``flat.ious_graph`` when
    ``e_loc="iou"`` or through ``gious_graph`` (keyword, the 2D head's GIoUs with graph) when
    ``e_loc="giou"``; the rank in it is detached, so ``loc`` sends nothing to the logits.  ``options``:
    ``e_loc``, ``tau`` and the conventions of :func:`rankspec.adapters.torch.alrp.alrp_loss`.  Rows
    labelled -2 are dropped; time O(n C log(n C)) with the numba kernel.
    """
    from rankspec.adapters.torch import alrp as alrp_mod

    scope = resolve_scope("alrp", scope)
    options = dict(options)
    gious_graph = options.pop("gious_graph", None)
    kind, tau, opts = _alrp_head_options(options, flat.gious is not None)
    keep = flat.labels != IGNORED
    if not bool(keep.any()) and scope != "distributed":
        return _zero(flat), _zero(flat)
    x = flat.logits[keep]
    oh = _one_hot(flat.labels[keep], flat.num_classes, x.dtype)
    if kind == "giou":
        src = gious_graph if gious_graph is not None else flat.gious
    else:
        src = flat.ious_graph if flat.ious_graph is not None else flat.ious
    src = src[keep].to(x.dtype)
    pos = flat.labels[keep] >= 0
    e_all = torch.where(pos, alrp_e_loc(src, src, kind, tau), torch.zeros_like(src))
    if scope == "distributed":
        # positives are one per positive row: their flat order is the row order, on every rank
        return alrp_mod.alrp_loss(x, oh, e_all[pos], scope="distributed", **opts)
    if scope == "batch":
        return alrp_mod.alrp_loss(x, oh, e_all[pos], **opts)
    img = flat.image_ids[keep]
    parts = [alrp_mod.alrp_loss(x[img == b], oh[img == b], e_all[(img == b) & pos], **opts)
             for b in torch.unique(img).tolist() if bool(pos[img == b].any())]
    if not parts:
        return _zero(flat), _zero(flat)
    return torch.stack([c for c, _ in parts]).mean(), torch.stack([lc for _, lc in parts]).mean()


def classification_loss(name: str, flat: FlatTargets, *, scope: Optional[str] = None,
                        **options) -> Dict[str, torch.Tensor]:
    """The classification entries of the loss dict for loss ``name`` (see the module table).

    ``options`` are the keyword conventions of the underlying adapter
    (``delta``, ``self_rank``, ... for the AP / RS family; ``gamma``, ``tau``,
    ... for DR; ``rank_function``, ``mining``, ``alpha``, ... and ``weights``
    (three numbers: global, class, IoU) for RankDetNet; ``lam``, ... for APE;
    ``alpha``, ``gamma`` for focal).  Unknown options raise ``TypeError``.
    """
    scope = resolve_scope(name, scope)
    if not isinstance(flat, FlatTargets):
        raise TypeError(f"flat must be a FlatTargets, got {type(flat).__name__}")
    C = flat.num_classes
    keep = flat.labels != IGNORED
    if name == "alrp":
        cls, _ = alrp_components(flat, scope=scope, **options)
        return {"loss_cls": cls}
    if name in _AP_FAMILY or name == "ape":
        from rankspec.adapters.torch import ape as ape_mod
        from rankspec.adapters.torch import functional as fn

        if not bool(keep.any()) and scope != "distributed":  # (a distributed rank must join the collectives)
            return {k: _zero(flat) for k in LOSS_KEYS[name]}
        x = flat.logits[keep]
        oh = _one_hot(flat.labels[keep], C, x.dtype)
        iou = flat.ious[keep].detach().to(x.dtype)
        img = flat.image_ids[keep]
        if name == "ape":
            def one(xs, ohs, ious, **kw):
                return ape_mod.ape_loss(xs, ohs, ohs * ious[:, None], **options, **kw)
            if scope == "distributed":
                return {"loss_cls": one(x, oh, iou, scope="distributed")}
            if scope == "batch":
                return {"loss_cls": one(x, oh, iou)}
            losses = [one(x[img == b], oh[img == b], iou[img == b]) for b in torch.unique(img).tolist()
                      if bool(oh[img == b].any())]
            return {"loss_cls": torch.stack(losses).mean() if losses else _zero(flat)}
        func = {"rs": fn.rs_loss, "brs": fn.bucketed_rs_loss, "ap": fn.ap_loss, "ap-interp": fn.ap_loss,
                "bap": fn.bucketed_ap_loss}[name]
        kwargs = dict(options)
        if name == "ap-interp":
            kwargs["interpolated"] = True
        if scope == "image":
            kwargs.update(scope="image", image_ids=img)
        elif scope == "distributed":
            kwargs.update(scope="distributed")
        target = oh * iou[:, None] if name in _CONTINUOUS else oh
        loss, terms = func(x, target, return_terms=True, **kwargs)
        if name in _CONTINUOUS:
            sort = terms["sorting"].detach()
            return {"loss_rank": loss - sort, "loss_sort": sort}
        return {"loss_cls": loss}
    if name == "dr":
        from rankspec.adapters.torch.dr import dr_loss

        lab = torch.where(flat.labels >= 0, flat.labels + 1,
                          torch.where(flat.labels == NEGATIVE, torch.zeros_like(flat.labels),
                                      torch.full_like(flat.labels, -1)))
        ids = flat.image_ids if scope == "image" else None
        dist = dict(scope="distributed") if scope == "distributed" else {}
        return {"loss_cls": dr_loss(flat.logits, lab, image_ids=ids, **dist, **options)}
    if name.startswith("rankdet"):
        from rankspec.adapters.torch.rankdet import rankdet_loss

        opts = dict(options)
        w = tuple(float(v) for v in opts.pop("weights", _RANKDET_WEIGHTS[name]))
        if len(w) != 3:
            raise ValueError(f"weights must be 3 numbers (global, class, IoU); the regression weight is the head's "
                             f"box_weight; got {w!r}")
        use_graph = flat.ious_graph is not None and opts.get("iou_grad", "higher") != "none" and w[2] != 0
        ious = flat.ious_graph if use_graph else flat.ious.detach()
        ious = torch.where(flat.labels >= 0, ious, torch.zeros_like(ious))
        total = {"loss_global": _zero(flat), "loss_class": _zero(flat), "loss_iou": _zero(flat)}
        groups = torch.unique(flat.image_ids).tolist() if scope == "image" else [None]
        if scope == "distributed":
            opts["scope"] = "distributed"
        for b in groups:
            rows = slice(None) if b is None else (flat.image_ids == b)
            _, t = rankdet_loss(flat.logits[rows], flat.labels[rows], ious[rows] if w[2] != 0 else None,
                                flat.levels[rows], weights=w + (0.0,), return_terms=True, **opts)
            total["loss_global"] = total["loss_global"] + w[0] * t["global"]
            total["loss_class"] = total["loss_class"] + w[1] * t["class"]
            total["loss_iou"] = total["loss_iou"] + w[2] * t["iou"]
        return {k: total[k] for k in LOSS_KEYS[name]}
    # focal
    if scope == "distributed":
        raise ValueError("scope='distributed' is for the ranking losses; focal loss is a per-anchor sum "
                         "(use scope='batch' and DistributedDataParallel as usual)")
    if not bool(keep.any()):
        return {"loss_cls": _zero(flat)}
    x = flat.logits[keep]
    oh = _one_hot(flat.labels[keep], C, x.dtype)
    num_pos = max(int((flat.labels >= 0).sum()), 1)
    return {"loss_cls": sigmoid_focal_loss(x, oh, **options).sum() / num_pos}


# --------------------------------------------------------------------------------------------
# the same computation with the NumPy reference
# --------------------------------------------------------------------------------------------

def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def reference_classification_loss(name: str, logits, labels, ious, image_ids=None, levels=None, *,
                                  scope: Optional[str] = None, gious=None, **options) -> LossResult:
    """What :func:`classification_loss` must compute, from the NumPy reference (float64).

    Arguments are the fields of :class:`FlatTargets` as arrays (tensors are
    converted).  Returns a :class:`~rankspec.refimpl.LossResult` whose
    ``grad`` is ``d (sum of the dict entries) / d logits`` ``[N, C]`` (zero on
    ignored rows) and whose ``terms`` hold each loss-dict key and, for
    RankDetNet, ``"grad_ious"`` ``[N]``.  ``focal`` is not a rankspec loss and
    has no reference here (its torch version is checked by ``gradcheck``).
    """
    import rankspec.refimpl as R

    scope = resolve_scope(name, scope)
    if scope == "distributed":  # pass the concatenation of every rank's rows: the same as "batch"
        scope = "batch"
    if name == "focal":
        raise ValueError("focal loss has no rankspec reference; check it with torch.autograd.gradcheck")
    x = _np(logits).astype(np.float64)
    lab = _np(labels).astype(np.int64)
    iou = _np(ious).astype(np.float64)
    N, C = x.shape
    img = np.zeros(N, dtype=np.int64) if image_ids is None else _np(image_ids).astype(np.int64)
    lev = np.zeros(N, dtype=np.int64) if levels is None else _np(levels).astype(np.int64)
    grad = np.zeros((N, C))
    keep = lab != IGNORED
    if name == "alrp":
        kind, tau, opts = _alrp_head_options(options, gious is not None)
        opts.setdefault("buffer_dtype", "float64")  # the torch adapter's default (outputs in the logits' dtype)
        src = _np(gious if kind == "giou" else ious).astype(np.float64)
        e_all = np.where(lab >= 0, alrp_e_loc(src, src, kind, tau), 0.0)
        oh = np.zeros((N, C))
        pos = np.flatnonzero(lab >= 0)
        oh[pos, lab[pos]] = 1.0
        groups = [keep] if scope == "batch" else [keep & (img == b) for b in np.unique(img[keep])]
        groups = [g for g in groups if np.any(g & (lab >= 0))]
        k = len(groups) if scope == "image" and groups else 1
        cls, loc = 0.0, 0.0
        grad_e = np.zeros(N)
        for rows in groups:
            prow = rows & (lab >= 0)
            r = R.alrp_loss(x[rows], oh[rows], e_all[prow], **opts)
            lr = R.alrp_loc_loss(e_all[prow], r.terms["rank"], r.terms["order"])
            grad[rows] += r.grad / k
            cls += r.loss / k
            loc += lr.loss / k
            grad_e[prow] += lr.grad / k
        return LossResult(float(cls), grad, {"loss_cls": float(cls), "loc_component": float(loc),
                                             "grad_e_loc": grad_e})
    if name in _AP_FAMILY or name == "ape":
        oh = np.zeros((N, C))
        pos = np.flatnonzero(lab >= 0)
        oh[pos, lab[pos]] = 1.0
        target = oh * iou[:, None] if name in _CONTINUOUS else oh
        opts = dict(options)
        if name == "ap-interp":
            opts["interpolated"] = True
        ref = {"rs": R.rs_loss, "brs": R.bucketed_rs_loss, "ap": R.ap_loss, "ap-interp": R.ap_loss,
               "bap": R.bucketed_ap_loss, "ape": R.ape_loss}[name]

        def call(rows):
            if name == "ape":
                return ref(x[rows], oh[rows], oh[rows] * iou[rows, None], **opts)
            return ref(x[rows], target[rows], **opts)

        groups = [keep] if scope == "batch" else [keep & (img == b) for b in np.unique(img[keep])]
        results = []
        for rows in groups:
            if not rows.any():
                continue
            if scope == "image" and not np.any(target[rows] > 0 if name != "ape" else oh[rows] > 0):
                continue  # per-image scope averages over images with positives
            results.append((rows, call(rows)))
        k = len(results) if scope == "image" else 1
        loss, sort = 0.0, 0.0
        for rows, r in results:
            grad[rows] += r.grad / k
            loss += r.loss / k
            sort += r.terms.get("sorting", 0.0) / k
        terms = ({"loss_rank": loss - sort, "loss_sort": sort} if name in _CONTINUOUS else {"loss_cls": loss})
        return LossResult(float(loss), grad, terms)
    if name == "dr":
        dl = np.where(lab >= 0, lab + 1, np.where(lab == NEGATIVE, 0, -1))
        r = R.dr_loss(x, dl, image_ids=img if scope == "image" else None, **options)
        return LossResult(r.loss, r.grad, {"loss_cls": r.loss})
    # RankDetNet
    opts = dict(options)
    w = tuple(float(v) for v in opts.pop("weights", _RANKDET_WEIGHTS[name]))
    iou_masked = np.where(lab >= 0, iou, 0.0)
    groups = [np.ones(N, dtype=bool)] if scope == "batch" else [img == b for b in np.unique(img)]
    sums = {"loss_global": 0.0, "loss_class": 0.0, "loss_iou": 0.0}
    grad_ious = np.zeros(N)
    for rows in groups:
        r = R.rankdet_loss(x[rows], lab[rows], iou_masked[rows] if w[2] != 0 else None, lev[rows],
                           weights=w + (0.0,), **opts)
        grad[rows] += r.grad
        grad_ious[rows] += r.terms["grad_ious"]
        sums["loss_global"] += w[0] * r.terms["global"]
        sums["loss_class"] += w[1] * r.terms["class"]
        sums["loss_iou"] += w[2] * r.terms["iou"]
    terms = {k: sums[k] for k in LOSS_KEYS[name]}
    terms["grad_ious"] = grad_ious
    return LossResult(float(sum(sums[k] for k in LOSS_KEYS[name])), grad, terms)

"""Ports of DR Loss, APE and the RankDetNet losses: correct rewrites and realistic wrong ports."""

from __future__ import annotations

import numpy as np
import torch

from rankspec import refimpl

from ._dr_core import dr_torch


def dr(name, **bug):
    def f(logits, labels, image_ids=None):
        return dr_torch(logits, labels, image_ids, **bug)

    f.__name__ = f.__qualname__ = name
    return f


class DRModule(torch.nn.Module):
    """DR Loss as an nn.Module (the authors' SigmoidDRLoss shape), per image."""

    def __init__(self, tau=4.0):
        super().__init__()
        self.tau = tau

    def forward(self, logits, labels, image_ids=None):
        return dr_torch(logits, labels, image_ids, tau=self.tau)


class _Ref(torch.autograd.Function):
    """forward(logits, compute) where compute(np_logits) -> (loss, grad): a port's numpy core, authors' style."""

    @staticmethod
    def forward(ctx, logits, compute):
        loss, grad = compute(logits.detach().cpu().numpy())
        ctx.save_for_backward(torch.as_tensor(np.asarray(grad), dtype=logits.dtype, device=logits.device))
        return logits.new_tensor(float(loss))

    @staticmethod
    def backward(ctx, g):
        return ctx.saved_tensors[0] * g, None


def _np(t):
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def _positives(labels):
    return int(np.count_nonzero(_np(labels) > 0))


# -- APE (pairwise error form, delta keyword; ARPS form with IoUs) ---------------------------------------------

def ape_pairwise(name, *, fixed_delta=None, crash=False, norm_n=False, detach=False, inplace=False):
    def f(logits, labels, delta=1.0):
        d = delta if fixed_delta is None else fixed_delta
        if inplace:
            labels.clamp_(min=0)  # "labels are 0/1": harmless on clean labels, but with -0.0 ... writes anyway
            logits.data.mul_(1.0)
            logits.data[...] = logits.data - logits.data.max() + logits.data.max()
        if crash and _positives(labels) == 0:
            raise RuntimeError("max(): Expected reduction dim to be specified for input.numel() == 0.")

        def compute(s):
            r = refimpl.pairwise_error_loss(s, _np(labels), delta=d)
            scale = (_positives(labels) / max(s.size, 1)) if norm_n and _positives(labels) else 1.0
            return r.loss * scale, np.asarray(r.grad) * scale

        out = _Ref.apply(logits, compute)
        return out.detach() if detach else out

    f.__name__ = f.__qualname__ = name
    return f


def ape(name, *, flip_neg=False, factor=1.0, crash=False):
    def f(logits, labels, ious):
        if crash and _positives(labels) == 0:
            raise ValueError("need at least one positive")

        def compute(s):
            r = refimpl.ape_loss(s, _np(labels), _np(ious))
            g = np.asarray(r.grad, dtype=np.float64) * factor
            if flip_neg:
                g = np.where(_np(labels) > 0, g, -g)
            return r.loss * factor, g

        return _Ref.apply(logits, compute)

    f.__name__ = f.__qualname__ = name
    return f


# -- RankDetNet ------------------------------------------------------------------------------------------------

def rankdet(name, *, term_grad=None, detach=False):
    def f(logits, labels, ious, levels):
        def compute(s):
            r = refimpl.rankdet_loss(s, _np(labels), _np(ious), _np(levels))
            g = r.grad
            if term_grad is not None:  # the mistake: backward of one component only
                w = [0.0, 0.0, 0.0, 0.0]
                w[term_grad] = 1.0
                g = refimpl.rankdet_loss(s, _np(labels), _np(ious), _np(levels), weights=tuple(w)).grad
            return r.loss, g

        out = _Ref.apply(logits, compute)
        return out.detach() if detach else out

    f.__name__ = f.__qualname__ = name
    return f


def rankdet_global(name, *, crash=False, inplace=False):
    def f(logits, labels):
        if inplace:
            labels[labels == -2] = -1  # "ignored anchors are background": writes into the caller's labels
        if crash and not bool((labels >= 0).any()):
            raise RuntimeError("cannot reshape tensor of 0 elements into shape [-1, 0]")

        def compute(s):
            r = refimpl.global_ranking_loss(s, _np(labels))
            return r.loss, r.grad

        return _Ref.apply(logits, compute)

    f.__name__ = f.__qualname__ = name
    return f


def rankdet_class(name, *, detach=False):
    def f(logits, labels):
        def compute(s):
            r = refimpl.class_specific_ranking_loss(s, _np(labels))
            return r.loss, r.grad

        out = _Ref.apply(logits, compute)
        return out.detach() if detach else out

    f.__name__ = f.__qualname__ = name
    return f


def rankdet_iou(name, *, factor=1.0):
    def f(logits, labels, ious, levels):
        def compute(s):
            r = refimpl.iou_guided_ranking_loss(s, _np(labels), _np(ious), _np(levels))
            return r.loss * factor, np.asarray(r.grad) * factor

        return _Ref.apply(logits, compute)

    f.__name__ = f.__qualname__ = name
    return f


ROWS = [
    # correct rewrites
    ("DR, per-image PyTorch rewrite", "dr", dr("dr_port"), True, None, "none"),
    ("DR, nn.Module", "dr", DRModule, True, None, "none"),
    ("RankDet global, authors'-style Function", "rankdet-global", rankdet_global("global_port"), True, None,
     "none"),
    ("APE pairwise, authors'-style Function", "ape-pairwise", ape_pairwise("ape_pairwise_port"), True, None,
     "none"),
    # DR
    ("DR, pooled images", "dr", dr("dr_pooled", pooled=True), False, "pools every image", "pooled images"),
    ("DR, float32 inside", "dr", dr("dr_float32", dtype=torch.float32), False, "computes in float32",
     "float32-only", dict(dtypes=["float64"])),
    ("DR, mean over images", "dr", dr("dr_mean", mean_over_images=True), False, "reduction='mean'",
     "normalising by images"),
    ("DR, tau dropped", "dr", dr("dr_no_tau", tau=1.0), False, "tau=1.0", "constant factor"),
    ("DR, crash on an image without positives", "dr", dr("dr_crash", crash_no_positives=True), False,
     "raises on inputs with an image without positives", "crash on zero positives", dict(convention="autograd")),
    ("DR, detached loss", "dr", dr("dr_detached", detached=True), False, "detached", "detached loss"),
    ("DR, softmax weights detached", "dr", dr("dr_detach_q", detach_q=True), False, "only the gradient differs",
     "gradient of one term only"),
    ("DR, negatives' gradient sign", "dr", dr("dr_flip_neg", flip_neg=True), False,
     "negatives' gradient has the opposite sign", "sign of negatives' gradient"),
    ("DR, ignored rows as negatives", "dr", dr("dr_ignored_neg", ignored_as_negative=True), False,
     "treats ignored entries (label -1) as negatives", "ignore label"),
    # APE
    ("APE pairwise, hard-coded delta", "ape-pairwise", ape_pairwise("ape_fixed_delta", fixed_delta=0.5), False,
     "fixed delta = 0.5", "hard-coded delta"),
    ("APE pairwise, crash on zero positives", "ape-pairwise", ape_pairwise("ape_crash", crash=True), False,
     "raises on inputs without positives", "crash on zero positives"),
    ("APE pairwise, normalised by N", "ape-pairwise", ape_pairwise("ape_norm_n", norm_n=True), False,
     "normalises by N", "normalising by N"),
    ("APE pairwise, detached", "ape-pairwise", ape_pairwise("ape_detached", detach=True), False, "detached",
     "detached loss"),
    ("APE pairwise, in-place write", "ape-pairwise", ape_pairwise("ape_inplace", inplace=True), False,
     "writes into its input", "in-place write"),
    ("APE, negatives' gradient sign", "ape", ape("ape_flip_neg", flip_neg=True), False,
     "negatives' gradient has the opposite sign", "sign of negatives' gradient"),
    ("APE, constant factor", "ape", ape("ape_half", factor=0.5), False, "0.5 times", "constant factor"),
    # RankDet
    ("RankDet, global term's gradient only", "rankdet", rankdet("rankdet_global_grad", term_grad=0), False,
     "global ranking term", "gradient of one term only"),
    ("RankDet global, crash without foreground", "rankdet-global", rankdet_global("global_crash", crash=True),
     False, "raises on inputs without positives", "crash on zero positives"),
    ("RankDet global, ignored labels overwritten", "rankdet-global", rankdet_global("global_inplace",
                                                                                    inplace=True),
     False, "writes into its input", "in-place write"),
    ("RankDet class, detached", "rankdet-class", rankdet_class("class_detached", detach=True), False,
     "detached", "detached loss"),
    ("RankDet IoU, half weight", "rankdet-iou", rankdet_iou("iou_half", factor=0.5), False, "0.5 times",
     "constant factor"),
]

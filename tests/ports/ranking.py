"""Ports of AP Loss, Rank & Sort and the bucketed losses: correct rewrites and realistic wrong ports."""

from __future__ import annotations

import numpy as np
import torch

from rankspec.refimpl.reference.ranking import ranking_sorting_loop

from ._ranking_core import ranking_loss


# -- call conventions a port comes in ----------------------------------------------------------------------

def pair(name, **bug):
    """f(logits, targets, delta) -> (loss, grad), NumPy in and out."""
    sorting = bug.pop("sorting", True)

    def f(logits, targets, delta):
        return ranking_loss(logits, targets, delta, sorting=sorting, **bug)

    f.__name__ = f.__qualname__ = name
    return f


def authors_function(name, sorting=True, fixed_delta=None, detach=False, **bug):
    """The authors' style: an autograd.Function whose static forward computes the loss and saves the gradient."""

    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, logits, targets, delta=0.5):
            d = delta if fixed_delta is None else fixed_delta
            loss, grad = ranking_loss(logits.detach().cpu().numpy(), targets.detach().cpu().numpy(), d,
                                      sorting=sorting, **bug)
            ctx.save_for_backward(torch.as_tensor(np.asarray(grad), dtype=logits.dtype, device=logits.device))
            return torch.as_tensor(float(loss), dtype=logits.dtype, device=logits.device)

        @staticmethod
        def backward(ctx, out_grad):
            (g,) = ctx.saved_tensors
            return g * out_grad, None, None

    Fn.__name__ = Fn.__qualname__ = name
    if detach:
        def detached(logits, targets, delta):
            return Fn.apply(logits, targets, delta).detach()  # the mistake: .detach() on the loss

        detached.__name__ = detached.__qualname__ = name
        return detached
    return Fn


def module(name, delta, sorting=True, **bug):
    Fn = authors_function(name + "Fn", sorting=sorting, **bug)

    class M(torch.nn.Module):
        def __init__(self, delta=delta):
            super().__init__()
            self.delta = delta

        def forward(self, logits, targets):
            return Fn.apply(logits, targets, self.delta)

    M.__name__ = M.__qualname__ = name
    return M


# -- correct rewrites ----------------------------------------------------------------------------------------

def _H(x, delta, tie=1.0):
    if delta == 0:
        return (x > 0).to(x.dtype) + tie * (x == 0).to(x.dtype)
    return torch.clamp(x / (2 * delta) + 0.5, 0.0, 1.0)


class VectorisedRS(torch.autograd.Function):
    """Rank & Sort with P x N matrices, on the device of its input (a device-agnostic rewrite)."""

    @staticmethod
    def forward(ctx, logits, targets, delta=0.5):
        s, y = logits.detach().reshape(-1), targets.detach().reshape(-1).to(logits.dtype)
        grad = torch.zeros_like(s)
        pos = y > 0
        if not bool(pos.any()):
            ctx.save_for_backward(grad.reshape(logits.shape))
            return s.new_zeros(())
        sp, sn, yp = s[pos], s[~pos], y[pos]
        hpp = _H(sp[None, :] - sp[:, None], delta)
        hpp.fill_diagonal_(1.0 if delta == 0 else 0.5)
        hpn = _H(sn[None, :] - sp[:, None], delta)
        rank_pos, nfp = hpp.sum(1), hpn.sum(1)
        err = nfp / (rank_pos + nfp)
        current = (hpp * (1 - yp)[None, :]).sum(1) / rank_pos
        order = hpp * (yp[None, :] >= yp[:, None])
        target = (order * (1 - yp)[None, :]).sum(1) / order.sum(1)
        serr = current - target
        miss = hpp * (yp[None, :] < yp[:, None])
        msum = miss.sum(1)
        has = msum > 0
        gp = -err + (serr[has, None] * miss[has] / msum[has, None]).sum(0)
        gp[has] -= serr[has]
        gn = (torch.where(nfp > 0, err / torch.where(nfp > 0, nfp, torch.ones_like(nfp)), torch.zeros_like(nfp))
              [:, None] * hpn).sum(0)
        P = float(pos.sum())
        grad[pos], grad[~pos] = gp / P, gn / P
        ctx.save_for_backward(grad.reshape(logits.shape))
        return (err.sum() + serr.sum()) / P

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return grad * g, None, None


def loop_ap(logits, labels, delta):
    """AP Loss as a plain loop over positives, NumPy (a loop-based rewrite of the AP-Loss authors' code)."""
    s = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel() > 0
    grad = np.zeros(s.size)
    pos = np.flatnonzero(y)
    if pos.size == 0:
        return 0.0, grad.reshape(np.shape(logits))
    loss = 0.0
    for i in pos:
        rank_pos, nfp, hn = 0.0, 0.0, np.zeros(s.size)
        for j in range(s.size):
            x = s[j] - s[i]
            h = 1.0 if j == i else (float(x >= 0) if delta == 0 else min(max(x / (2 * delta) + 0.5, 0.0), 1.0))
            if y[j]:
                rank_pos += h
            else:
                nfp += h
                hn[j] = h
        e = nfp / (rank_pos + nfp)
        loss += e
        grad[i] -= e
        if nfp > 0:
            grad += e * hn / nfp
    return loss / pos.size, (grad / pos.size).reshape(np.shape(logits))


def bucketed_ap(logits, labels, delta, *, off_by_one=False, threshold=True):
    """Bucketed AP: negatives between consecutive positives averaged into one prototype per bucket."""
    shape = np.shape(logits)
    s = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel() > 0
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    grad = np.zeros(s.size)
    if pos.size == 0:
        return 0.0, grad.reshape(shape)
    keep = s[neg] >= s[pos].min() - delta if threshold else np.ones(neg.size, dtype=bool)
    desc = -np.sort(-s[pos])
    above = np.searchsorted(-desc, -s[neg][keep], side="left")
    if off_by_one:
        above = np.minimum(above, pos.size - 1)  # the mistake: one bucket too few
    loss = 0.0
    if keep.any():
        _, dense = np.unique(above, return_inverse=True)
        size = np.bincount(dense).astype(np.float64)
        proto = np.bincount(dense, weights=s[neg][keep]) / size
        out = ranking_sorting_loop(s[pos], proto, delta, self_rank="h0", tie_value=1.0, neg_weights=size)
        loss = out.ranking_error.sum() / pos.size
        grad[pos] = out.grad_pos / pos.size
        g = np.zeros(neg.size)
        g[keep] = (out.grad_neg / size)[dense] / pos.size
        grad[neg] = g
    return loss, grad.reshape(shape)


def bap_pair(name, **kw):
    def f(logits, labels, delta):
        return bucketed_ap(logits, labels, delta, **kw)

    f.__name__ = f.__qualname__ = name
    return f


class APModule(torch.nn.Module):
    """AP Loss as an nn.Module (delta in __init__), gradient via the loop rewrite."""

    def __init__(self, delta=1.0):
        super().__init__()
        self.delta = delta

    def forward(self, logits, labels):
        return _LoopAP.apply(logits, labels, self.delta)


class _LoopAP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, delta):
        loss, grad = loop_ap(logits.detach().cpu().numpy(), labels.detach().cpu().numpy(), delta)
        ctx.save_for_backward(torch.as_tensor(grad, dtype=logits.dtype, device=logits.device))
        return logits.new_tensor(float(loss))

    @staticmethod
    def backward(ctx, g):
        return ctx.saved_tensors[0] * g, None, None


def rs_per_image_sum(logits, targets, delta):
    """Ranks every image on its own and sums the per-image (per-image-positive normalised) losses."""
    s, t = np.atleast_2d(logits), np.atleast_2d(targets)
    total, grad = 0.0, np.zeros(s.shape)
    for b in range(s.shape[0]):
        loss, g = ranking_loss(s[b], t[b], delta)
        total, grad[b] = total + loss, g
    return total, grad.reshape(np.shape(logits))


def rs_per_image_mean(logits, targets, delta):
    s, t = np.atleast_2d(logits), np.atleast_2d(targets)
    total, grad, used = 0.0, np.zeros(s.shape), 0
    for b in range(s.shape[0]):
        if (t[b] > 0).any():
            loss, g = ranking_loss(s[b], t[b], delta)
            total, grad[b], used = total + loss, g, used + 1
    if used:
        total, grad = total / used, grad / used
    return total, grad.reshape(np.shape(logits))


def rs_inplace(logits, targets, delta):
    logits -= logits.max() if logits.size else 0.0  # "for numerical stability": writes into the caller's array
    return ranking_loss(logits, targets, delta)


def ap_inplace_torch(logits, labels, delta):
    logits.data.sub_(logits.data.max())  # shift-invariant, but the caller's tensor is changed
    return _LoopAP.apply(logits, labels, delta)


def rs_flat_only(logits, targets, delta):
    if logits.ndim != 1:  # the port indexes with labels.nonzero()[:, 0] and assumes 1-D input
        raise IndexError(f"too many indices for array: array is {logits.ndim}-dimensional, but 1 were indexed")
    return ranking_loss(logits, targets, delta)


def rs_rescaled(logits, targets, delta):
    s = np.asarray(logits, dtype=np.float64)
    span = s.max() - s.min() if s.size else 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        s = (s - s.min()) / span * span + s.min()  # "normalise the range" (0 / 0 on all-equal logits)
    return ranking_loss(s, targets, delta)


def rs_sum_loss_sign(logits, targets, delta):
    loss, grad = ranking_loss(logits, targets, delta)
    return -loss, -grad  # returns the "reward" (1 - ...) convention's sign


def rs_no_grad_output(name):
    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, logits, targets, delta):
            loss, grad = ranking_loss(logits.detach().numpy(), targets.detach().numpy(), delta)
            ctx.save_for_backward(torch.as_tensor(grad, dtype=logits.dtype))
            return logits.new_tensor(float(loss))

        @staticmethod
        def backward(ctx, g):
            return ctx.saved_tensors[0], None, None  # the mistake: the incoming gradient is dropped

    Fn.__name__ = Fn.__qualname__ = name
    return Fn


class ContiguousKernelRS(torch.autograd.Function):
    """Reads its input's memory as if it were contiguous (what a custom kernel given ``data_ptr()`` does)."""

    @staticmethod
    def forward(ctx, logits, targets, delta=0.5):
        flat = torch.as_strided(logits.detach(), (logits.numel(),), (1,))  # the mistake: ignores the strides
        tflat = torch.as_strided(targets, (targets.numel(),), (1,))
        loss, grad = ranking_loss(flat.cpu().numpy(), tflat.cpu().numpy(), delta)
        ctx.save_for_backward(torch.as_tensor(np.asarray(grad).reshape(logits.shape), dtype=logits.dtype))
        return logits.new_tensor(float(loss))

    @staticmethod
    def backward(ctx, g):
        return ctx.saved_tensors[0] * g, None, None

ROWS = [
    # correct rewrites
    ("RS, vectorised device-agnostic autograd.Function", "rs", VectorisedRS, True, None, "none"),
    ("RS, authors'-style autograd.Function", "rs", authors_function("RankSortPort"), True, None, "none"),
    ("RS, NumPy pair", "rs", pair("rs_numpy"), True, None, "none"),
    ("AP, loop-based NumPy pair", "ap", loop_ap, True, None, "none"),
    ("AP, nn.Module with delta in __init__", "ap", APModule, True, None, "none"),
    ("BAP, bucketed rewrite", "bap", bap_pair("bap_numpy"), True, None, "none"),
    # conventions a port silently changes
    ("RS, self term counted as 1", "rs", pair("rs_self1", self_term=1.0), False, "self_rank='one'", "self term"),
    ("AP, self term 1/2", "ap", pair("ap_self_half", sorting=False, self_term=0.5), False, "self_rank='half'",
     "self term"),
    ("RS, ties at delta 0 count 1/2", "rs", pair("rs_tie_half", tie=0.5), False, "tie_value=0.5", "ties"),
    ("AP, ties at delta 0 not counted", "ap", pair("ap_tie0", sorting=False, tie=0.0), False, "tie_value=0.0",
     "ties"),
    ("RS, not normalised", "rs", authors_function("RSNoNorm", norm="none"), False, "normalization='none'",
     "normalising"),
    ("RS, ranked per image", "rs", rs_per_image_mean, False, "scope='image'", "pooled vs per image"),
    ("BAP, threshold dropped", "bap", bap_pair("bap_no_threshold", threshold=False), False, "threshold=False",
     "threshold"),
    # generic porting mistakes
    ("RS, normalised by N", "rs", pair("rs_norm_n", norm="n"), False, "normalises by N", "normalising by N"),
    ("AP, normalised by N", "ap", authors_function("APNormN", sorting=False, norm="n"), False, "normalises by N",
     "normalising by N"),
    ("RS, per-image positives", "rs", rs_per_image_sum, False, "each image's positives",
     "normalising by per-image positives"),
    ("RS, negatives' gradient sign", "rs", pair("rs_flip_neg", flip_neg=True), False,
     "negatives' gradient has the opposite sign", "sign of negatives' gradient"),
    ("AP, negatives' gradient sign", "ap", authors_function("APFlipNeg", sorting=False, flip_neg=True), False,
     "negatives' gradient has the opposite sign", "sign of negatives' gradient"),
    ("RS, positives' gradient sign", "rs", pair("rs_flip_pos", flip_pos=True), False,
     "positives' gradient has the opposite sign", "sign of positives' gradient"),
    ("RS, ranking term's gradient only", "rs", authors_function("RSRankGrad", ranking_grad_only=True), False,
     "ranking term only", "gradient of one term only"),
    ("RS, uniform sorting pmf", "rs", pair("rs_uniform_spmf", uniform_sorting_pmf=True), False,
     "positives' gradient differs", "wrong sorting pmf"),
    ("AP, uniform ranking pmf", "ap", pair("ap_uniform_rpmf", sorting=False, uniform_ranking_pmf=True), False,
     "negatives' gradient differs", "wrong ranking pmf"),
    ("RS, float32 inside (.float())", "rs", authors_function("RSFloat32", dtype=np.float32), False,
     "computes in float32", "float32-only", dict(dtypes=["float64"])),
    ("AP, float32 inside", "ap", pair("ap_float32", sorting=False, dtype=np.float32), False,
     "computes in float32", "float32-only", dict(dtypes=["float64"])),
    ("RS, hard-coded delta 0.5", "rs", authors_function("RSDelta05", fixed_delta=0.5), False,
     "fixed delta = 0.5", "hard-coded delta"),
    ("AP, hard-coded delta 1", "ap", authors_function("APDelta1", sorting=False, fixed_delta=1.0), False,
     "fixed delta = 1", "hard-coded delta"),
    ("RS, crash on zero positives", "rs", pair("rs_crash_empty", crash_no_positives=True), False,
     "raises on inputs without positives", "crash on zero positives"),
    ("AP, crash on zero positives", "ap", authors_function("APCrash", sorting=False, crash_no_positives=True),
     False, "raises on inputs without positives", "crash on zero positives"),
    ("RS, divides by delta", "rs", pair("rs_div_delta", divide_by_delta=True), False,
     "NaN or inf on delta = 0", "divide by delta"),
    ("RS, in-place write (NumPy)", "rs", rs_inplace, False, "writes into its input", "in-place write"),
    ("AP, in-place write (torch .data)", "ap", ap_inplace_torch, False, "writes into its input",
     "in-place write"),
    ("RS, chunks of 4096 lose the tail", "rs", pair("rs_chunked", chunk=4096), False, "more than 4096",
     "size-triggered"),
    ("AP, chunks of 4096 lose the tail", "ap", authors_function("APChunked", sorting=False, chunk=4096), False,
     "more than 4096", "size-triggered"),
    ("RS, detached loss", "rs", authors_function("RSDetached", detach=True), False, "detached",
     "detached loss"),
    ("RS, grad_output dropped", "rs", rs_no_grad_output("RSNoGradOut"), False, "ignores grad_output",
     "grad_output"),
    ("RS, 1-D only", "rs", rs_flat_only, False, "raises on 2-D", "crash on 2-D input"),
    ("RS, NaN on all-equal logits", "rs", rs_rescaled, False, "all-equal logits", "NaN on all-equal logits"),
    ("RS, loss and gradient negated", "rs", rs_sum_loss_sign, False, "opposite sign", "sign"),
    ("RS, kernel assumes contiguous memory", "rs", ContiguousKernelRS, False, "non-contiguous view",
     "non-contiguous input"),
    ("BAP, off-by-one bucket", "bap", bap_pair("bap_off_by_one", off_by_one=True), False, "unexplained",
     "bucket boundary"),
]

"""A Rank & Sort / AP Loss written for the corpus (loop over positives, NumPy), with switches that plant the
porting mistakes seen in real ports.  Written from the papers' equations (RS Eqs. 6-12, AP Loss), not copied.

``ranking_loss(logits, targets, delta, iou=True)`` returns ``(loss, grad)`` with the authors' conventions
(RS: self term H(0) = 0.5 at delta > 0; AP: self term 1; ties at delta = 0 count 1; normalised by |P|).
"""

from __future__ import annotations

import numpy as np


def step(x, delta, tie=1.0, divide_by_delta=False):
    """Smoothed step H(x) (RS Eq. 5); at delta = 0 the exact step with H(0) = ``tie``."""
    if divide_by_delta:  # the mistake: x / delta without a delta = 0 branch (0 / 0 = NaN on ties)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.clip(x / (2 * delta) + 0.5, 0.0, 1.0)
    if delta == 0:
        return np.where(x > 0, 1.0, np.where(x == 0, tie, 0.0))
    return np.clip(x / (2 * delta) + 0.5, 0.0, 1.0)


def ranking_loss(logits, targets, delta, *, sorting=True, self_term=None, tie=1.0, norm="positives",
                 flip_neg=False, flip_pos=False, ranking_grad_only=False, uniform_ranking_pmf=False,
                 uniform_sorting_pmf=False, dtype=np.float64, divide_by_delta=False, crash_no_positives=False,
                 chunk=None):
    shape = np.shape(logits)
    s = np.asarray(logits).astype(dtype).ravel()
    y = np.asarray(targets).astype(dtype).ravel()
    n = s.size
    P = np.flatnonzero(y > 0)
    N = np.flatnonzero(y <= 0)
    if chunk is not None and n > chunk:
        # the size-triggered mistake: the input is processed in chunks of `chunk` elements and the last,
        # partial chunk is lost
        end = (n // chunk) * chunk
        P, N = P[P < end], N[N < end]
    grad = np.zeros(n, dtype=dtype)
    if P.size == 0:
        if crash_no_positives:
            raise ZeroDivisionError("float division by zero")  # the mean over an empty set of positives
        return dtype(0.0), grad.reshape(shape)
    if self_term is not None:
        self_value = self_term  # the same self term at every delta
    elif sorting:
        self_value = tie if delta == 0 else 0.5  # RS: H(0)
    else:
        self_value = 1.0  # AP: the positive itself counts 1
    total_r = dtype(0.0)
    total_s = dtype(0.0)
    for i in P:
        xp = s[P] - s[i]
        xn = s[N] - s[i]
        hp = step(xp, delta, tie, divide_by_delta).astype(dtype)
        hn = step(xn, delta, tie, divide_by_delta).astype(dtype)
        hp[P == i] = self_value
        rank_pos = hp.sum()
        nfp = hn.sum()
        err = nfp / (rank_pos + nfp)
        total_r += err
        if nfp > 0:
            pmf = (hn > 0) / max((hn > 0).sum(), 1) if uniform_ranking_pmf else hn / nfp
            grad[N] += (-1 if flip_neg else 1) * err * pmf
        grad[i] -= (-1 if flip_pos else 1) * err
        if not sorting:
            continue
        yi = y[i]
        current = np.sum(hp * (1 - y[P])) / rank_pos
        order = hp * (y[P] >= yi)
        target = np.sum(order * (1 - y[P])) / np.sum(order)
        serr = current - target
        total_s += serr
        miss = hp * (y[P] < yi)
        if miss.sum() > 0 and not ranking_grad_only:
            pmf = (miss > 0) / (miss > 0).sum() if uniform_sorting_pmf else miss / miss.sum()
            grad[P] += (-1 if flip_pos else 1) * serr * pmf
            grad[i] -= (-1 if flip_pos else 1) * serr
    z = {"positives": P.size, "n": n, "none": 1}[norm]
    loss = (total_r + total_s) / z
    return loss, (grad / z).reshape(shape)

"""Per-image combination (``scope="image"``), written once.

``scope="batch"`` ranks every element of the input together.  ``scope="image"``
ranks each image (each slice along the first axis, or each group of an
``image_ids`` vector) on its own; the loss, each scalar term and the gradient
are the **mean over the images that have at least one positive** (images
without a positive contribute nothing and get a zero gradient; with no such
image the result is loss 0 and a zero gradient).

:func:`per_image_weights` gives the weight of each image (1/K for the K images
with positives, else 0), :func:`combine_per_image` applies a loss to every
image and combines the results.  The torch adapters, the detector heads and the
conformance specs use the same rule.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ._result import LossResult
from .constants import SCOPES
from ._validate import check_choice

__all__ = ["SCOPES", "check_scope", "per_image_weights", "image_slices", "combine_per_image"]


def check_scope(scope) -> str:
    """``scope`` must be ``"batch"`` or ``"image"``."""
    return check_choice(scope, "scope", SCOPES)


def per_image_weights(has_positive) -> np.ndarray:
    """Weights of the images: 1/K for each of the K images with a positive, 0 for the others.

    ``has_positive``: one boolean per image.  Time and memory O(number of images).
    """
    has = np.asarray(has_positive, dtype=bool).reshape(-1)
    k = int(has.sum())
    return np.where(has, 1.0 / k, 0.0) if k else np.zeros(has.size)


def image_slices(targets: np.ndarray, image_ids=None) -> list:
    """Index arrays (into the flattened input) of each image: the slices along the first axis,
    or the groups of equal ``image_ids`` (one id per first-axis row or per element), in id order."""
    targets = np.asarray(targets)
    n = targets.size
    if image_ids is None:
        if targets.ndim < 2:
            return [np.arange(n)]
        per = n // targets.shape[0]
        return [np.arange(b * per, (b + 1) * per) for b in range(targets.shape[0])]
    ids = np.asarray(image_ids).reshape(-1)
    if ids.size != n:
        if targets.ndim == 0 or ids.size != targets.shape[0]:
            raise ValueError(f"image_ids must have one entry per element ({n}) or per row ({targets.shape[0]}), "
                             f"got {ids.size}")
        ids = np.repeat(ids, n // targets.shape[0])
    order = np.argsort(ids, kind="stable")
    _, starts = np.unique(ids[order], return_index=True)
    return np.split(order, starts[1:])


def combine_per_image(loss: Callable[[np.ndarray, np.ndarray], LossResult], logits, targets, image_ids=None, *,
                      scalar_terms: Sequence[str] | None = None) -> LossResult:
    """``scope="image"``: ``loss(logits_b, targets_b)`` on each image b that has a positive (target > 0),
    combined with :func:`per_image_weights`; the gradient in the shape of ``logits``.

    ``scalar_terms``: the terms to combine (default: every float term of the first result).
    Time: the sum of the per-image calls; memory O(n).
    """
    s = np.asarray(logits, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    if s.shape != t.shape:
        raise ValueError(f"logits has shape {s.shape} but targets has shape {t.shape}; they must match")
    flat_s, flat_t = s.reshape(-1), t.reshape(-1)
    images = image_slices(t, image_ids)
    has = [bool(np.any(flat_t[idx] > 0)) for idx in images]
    w = per_image_weights(has)
    grad = np.zeros(flat_s.size)
    total, terms = 0.0, {}
    for idx, weight in zip(images, w):
        if weight == 0.0:
            continue
        r = loss(flat_s[idx], flat_t[idx])
        total += weight * r.loss
        grad[idx] += weight * np.asarray(r.grad, dtype=np.float64).reshape(-1)
        names = scalar_terms if scalar_terms is not None else [k for k, v in r.terms.items()
                                                               if isinstance(v, (float, int))]
        for k in names:
            terms[k] = terms.get(k, 0.0) + weight * float(r.terms[k])
    terms["num_images"] = float(sum(has))
    return LossResult(float(total), grad.reshape(s.shape), terms)

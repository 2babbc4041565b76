"""ARPS cluster split (APE Sec. 6): per-instance 0-1 normalised scores and a two-component GMM.

Xu, Deng, Li (CVPR 2022, key ``APE``) split each ground-truth instance's
candidates into a positive and a negative cluster with PAA's Gaussian mixture
on 0-1 normalised ranking and localisation scores; ranking pairs are then
formed across the clusters (pass the result as ``labels`` to
:func:`~rankspec.refimpl.ape_loss`).  A utility, not a loss: it validates its
own arguments.  Its conventions are listed on the Conventions page
(registered by :mod:`rankspec.refimpl.losses.ape`).  Needs scikit-learn.
"""

from __future__ import annotations

import warnings

import numpy as np

from .._validate import as_float_array, check_choice, check_int, check_same_shape, require
from ..registry import implements

__all__ = ["arps_cluster_split", "FEATURES_CHOICES", "SEPARATION_CHOICES", "SMALL_INSTANCE_CHOICES",
           "COVARIANCE_CHOICES"]

FEATURES_CHOICES = ("sum", "joint")
SEPARATION_CHOICES = ("paa", "component")
SMALL_INSTANCE_CHOICES = ("keep", "drop")
COVARIANCE_CHOICES = ("full", "tied", "diag", "spherical")


def _zero_one(x: np.ndarray) -> np.ndarray:
    """0-1 (min-max) normalisation of one instance's scores; a constant vector maps to 0."""
    lo, hi = float(x.min()), float(x.max())
    if hi == lo:
        return np.zeros_like(x)
    return (x - lo) / (hi - lo)


def _gmm_init(X: np.ndarray, covariance_type: str):
    """PAA's initialisation: means at the per-feature min and max, equal weights, unit precisions."""
    d = X.shape[1]
    means = np.stack([X.min(axis=0), X.max(axis=0)])
    precisions = {"full": np.stack([np.eye(d)] * 2), "tied": np.eye(d), "diag": np.ones((2, d)),
                  "spherical": np.ones(2)}[covariance_type]
    return means, np.array([0.5, 0.5]), precisions


@implements(("APE", "Sec. 6"), ("APE", "Table 6"),
            name="ARPS cluster split: per-instance 0-1 normalised scores + two-component GMM (PAA-style)",
            family="ape", kind="utility")
def arps_cluster_split(ranking_scores, localization_scores, instance_ids, *, features: str = "sum",
                       separation: str = "paa", normalize: bool = True, covariance_type: str = "full",
                       small_instances: str = "keep", random_state: int = 0, levels=None,
                       topk_per_level: int = 9) -> np.ndarray:
    r"""Split each instance's candidates into a positive and a negative cluster (APE Sec. 6).

    For every ground-truth instance ``g`` the candidates ``{i: instance_ids[i] == g}``
    get their ranking scores :math:`p_i` (the sigmoid of the logit of g's class)
    and localisation scores :math:`\hat I_i` (IoU of the predicted box with g)
    0-1 normalised *within the instance*
    (:math:`\tilde x = (x - \min x)/(\max x - \min x)`), and a two-component
    Gaussian mixture (``sklearn.mixture.GaussianMixture``) separates them as
    in PAA.  Ranking pairs are then formed across the two clusters: pass the
    result as ``labels`` to :func:`ape_loss` / :func:`pairwise_error_loss`.

    Parameters
    ----------
    ranking_scores, localization_scores:
        1-D arrays of length ``n`` (finite reals; the authors use probabilities
        and IoUs in [0, 1]).
    instance_ids:
        1-D integer array of length ``n``: the instance a candidate belongs to
        (``>= 0``) or ``-1`` for samples that are no candidate of any instance
        (always negative).
    features:
        ``"sum"`` (default, authors' code): the GMM is fit on the 1-D cost
        :math:`(1-\tilde p) + (1-\tilde I)`; ``"joint"``: a 2-D GMM on
        :math:`(1-\tilde p, 1-\tilde I)` (the two-score picture of APE Fig. 3c).
    separation:
        ``"paa"`` (default, PAA's code): candidates assigned to the low-cost
        component, in ascending cost order, up to and including the one with
        the highest GMM log-likelihood; ``"component"``: every candidate
        assigned to the low-cost component.
    normalize:
        ``False`` skips the 0-1 normalisation (the ablation of APE Table 6).
    covariance_type:
        GMM covariance type (``"full"`` as in the authors' configuration).
    small_instances:
        An instance with a single candidate cannot be clustered: ``"keep"``
        (default) keeps it positive, ``"drop"`` makes it negative (PAA's code).
    random_state:
        Seed of the GMM (fixed, so the split is deterministic).
    levels:
        Optional 1-D integer array of length ``n``: the pyramid level of each
        sample.  Given, PAA's candidate choice applies: per instance and level
        only the ``topk_per_level`` candidates with the lowest cost (the cost
        the GMM sees, normalised over the instance's candidates) are clustered;
        the others become negative.  ``None`` (default): every candidate of
        ``instance_ids`` is clustered (the caller chose them).
    topk_per_level:
        PAA's ``topk`` (9 in PAA's and the APE authors' configurations), used
        only with ``levels``.

    Returns
    -------
    numpy.ndarray
        int64 labels of shape ``(n,)``: 1 for the positive cluster, 0 otherwise.
        An instance whose costs are all equal keeps every candidate positive
        (there is nothing to separate); a constant score vector normalises to 0.

    Notes
    -----
    The GMM is initialised as in PAA: component means at the minimum and
    maximum cost, equal weights, unit precisions; the low-cost component is the
    positive one.  Choosing the candidates of each instance (PAA's initial IoU
    assignment) is the caller's job; PAA's top-k per pyramid level among them
    is ``levels`` / ``topk_per_level``.  Ranking the per-level candidates by the
    normalised-score cost is our reading: PAA ranks by its own (focal + GIoU)
    cost, which the APE authors replace by the normalised scores.  Time O(n + sum over instances of the GMM fit), memory O(n).
    """
    GaussianMixture = require("sklearn.mixture", "arps_cluster_split").GaussianMixture  # optional dependency

    p = as_float_array(ranking_scores, "ranking_scores")
    q = as_float_array(localization_scores, "localization_scores")
    ids = np.asarray(instance_ids)
    if p.ndim != 1:
        raise ValueError(f"ranking_scores must be 1-D, got shape {p.shape}")
    check_same_shape(p, q, "ranking_scores", "localization_scores")
    if ids.shape != p.shape:
        raise ValueError(f"instance_ids has shape {ids.shape} but ranking_scores has shape {p.shape}; they must match")
    if ids.dtype.kind not in "iu":
        raise TypeError(f"instance_ids must be an integer array, got dtype {ids.dtype}")
    if np.any(ids < -1):
        raise ValueError("instance_ids must be >= 0 (an instance) or -1 (no candidate); found "
                         f"{int(ids[ids < -1][0])}")
    check_choice(features, "features", FEATURES_CHOICES)
    check_choice(separation, "separation", SEPARATION_CHOICES)
    check_choice(covariance_type, "covariance_type", COVARIANCE_CHOICES)
    check_choice(small_instances, "small_instances", SMALL_INSTANCE_CHOICES)
    topk_per_level = check_int(topk_per_level, "topk_per_level", 1)
    if levels is not None:
        levels = np.asarray(levels)
        if levels.shape != p.shape:
            raise ValueError(f"levels has shape {levels.shape} but ranking_scores has shape {p.shape}; "
                             "they must match")
        if levels.dtype.kind not in "iu":
            raise TypeError(f"levels must be an integer array, got dtype {levels.dtype}")

    out = np.zeros(p.shape, dtype=np.int64)
    for g in np.unique(ids[ids >= 0]):
        members = np.flatnonzero(ids == g)
        if len(members) < 2:
            out[members] = 1 if small_instances == "keep" else 0
            continue
        pg, qg = p[members], q[members]
        if normalize:
            pg, qg = _zero_one(pg), _zero_one(qg)  # per-instance 0-1 normalisation (APE Sec. 6)
        # Costs: PAA clusters losses (small = positive), so the scores enter as 1 - score.
        cost2 = np.stack([1.0 - pg, 1.0 - qg], axis=1)
        cost = cost2.sum(axis=1)
        if levels is not None:
            # PAA's candidate choice: the topk_per_level lowest-cost candidates of each level
            keep = np.zeros(len(members), dtype=bool)
            for lv in np.unique(levels[members]):
                at = np.flatnonzero(levels[members] == lv)
                keep[at[np.argsort(cost[at], kind="stable")[:topk_per_level]]] = True
            members, cost2, cost = members[keep], cost2[keep], cost[keep]
            if len(members) < 2:
                out[members] = 1 if small_instances == "keep" else 0
                continue
        X = cost[:, None] if features == "sum" else cost2
        if np.all(X == X[0]):
            out[members] = 1  # nothing to separate
            continue
        means, weights, precisions = _gmm_init(X, covariance_type)
        gmm = GaussianMixture(2, covariance_type=covariance_type, weights_init=weights, means_init=means,
                              precisions_init=precisions, random_state=random_state)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning on tiny instances is expected
            gmm.fit(X)
        assign = gmm.predict(X)
        fg = assign == 0  # component 0 was initialised at the low cost
        if separation == "component":
            out[members[fg]] = 1
            continue
        # PAA's scheme: candidates in ascending cost order; positives are the foreground ones up to and
        # including the foreground candidate with the highest log-likelihood.
        order = np.argsort(cost, kind="stable")
        fg_sorted = order[fg[order]]
        if len(fg_sorted) == 0:
            continue
        loglik = gmm.score_samples(X)
        peak = int(np.argmax(loglik[fg_sorted]))
        out[members[fg_sorted[: peak + 1]]] = 1
    return out

"""Building blocks shared by every identity-update loss.

* :func:`smoothed_step` - the smoothed Heaviside step H (BRL Eq. 3.2, RS Sec. 4).
* :func:`rank_counts` - rank^+(i), N_FP(i) and rank(i) for one positive i
  (BRL Eq. 3.1, with the smoothed step in place of the exact one).
* :class:`IdentityUpdate` - turns primary terms L_ij = error(i) * p(j|i) into
  the gradient d L / d s_i = (sum_j L_ji - sum_j L_ij) / Z
  (RS Eqs. 3-5, BRL Eqs. 3.5-3.9).

Everything is float64 and written for clarity, not speed.  The public functions check their
arguments (a NaN ``x``, a ``self_index`` outside the positives, negative ``neg_weights`` are
errors naming the argument); :func:`step_values` is the unchecked formula the references call on
arrays they have already validated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validate import check_choice, check_delta, check_int, check_tie_value
from ..registry import implements

__all__ = ["smoothed_step", "step_values", "self_term", "rank_counts", "RankCounts", "IdentityUpdate", "SELF_RANK_CHOICES"]

#: Accepted values of the ``self_rank`` convention (see the Conventions page).
SELF_RANK_CHOICES = ("h0", "one", "half")


@implements(("BRL", "Eq. 3.2"), ("RS", "Sec. 4"), name="Smoothed Heaviside step H(x)", family="primitives",
            kind="primitive")
def smoothed_step(x, delta: float, tie_value: float = 1.0) -> np.ndarray:
    r"""Smoothed step function of BRL Eq. 3.2.

    .. math::

        H(x) = \begin{cases} 0, & x < -\delta \\
                             \frac{x}{2\delta} + 0.5, & -\delta \le x \le \delta \\
                             1, & \delta < x \end{cases}

    At ``delta == 0`` the function is the exact step and the value at ``x == 0``
    is the ``tie_value`` convention: ``1.0`` reproduces the Rank & Sort authors'
    code (``x >= 0`` counts as 1), ``0.0`` is the paper's :math:`\bar H`
    (``x > 0``), ``0.5`` splits ties.  Complexity O(size of x).
    """
    delta = check_delta(delta)
    check_tie_value(tie_value)
    x = _real_array(x, "x")
    if np.isnan(x).any():
        raise ValueError("x contains NaN; H(x) is defined for real x (+-inf give 1 and 0)")
    return step_values(x, delta, float(tie_value))


def _real_array(x, name: str) -> np.ndarray:
    """``x`` as a float64 array (any real or boolean dtype), or a TypeError naming ``name``."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def step_values(x: np.ndarray, delta: float, tie_value: float) -> np.ndarray:
    """H(x) of BRL Eq. 3.2 on a float64 array, arguments already checked (see :func:`smoothed_step`)."""
    if delta > 0:
        # (x / delta) / 2, not x / (2 delta): 2 delta overflows for delta > MAXF / 2, and a difference x that
        # overflowed to +-inf would then give inf / inf = NaN.  Halving is exact, so the two agree elsewhere.
        # x / delta may overflow to +-inf for tiny delta; clip maps it to 1 / 0.
        with np.errstate(over="ignore"):
            return np.clip(x / delta * 0.5 + 0.5, 0.0, 1.0)
    return np.where(x > 0, 1.0, np.where(x == 0, float(tie_value), 0.0))


def self_term(delta: float, self_rank: str, tie_value: float) -> float:
    """Value of the i == j term of rank^+(i) under the ``self_rank`` convention.

    ``"h0"``: H(0), i.e. 0.5 when ``delta > 0`` and ``tie_value`` at ``delta == 0``
    (what the Rank & Sort and bucketed authors' code computes); ``"one"``: 1
    (the AP-Loss authors' code and the papers' rank(i) counting i itself);
    ``"half"``: 0.5 at every delta.
    """
    check_choice(self_rank, "self_rank", SELF_RANK_CHOICES)
    check_tie_value(tie_value)
    if self_rank == "one":
        return 1.0
    if self_rank == "half":
        return 0.5
    # H(0) of BRL Eq. 3.2 (smoothed_step at x = 0), as scalar arithmetic: this runs once per call, before
    # every backend, so it avoids smoothed_step's array validation
    value = 0.5 if check_delta(delta) > 0 else float(tie_value)
    if value == 0.0:
        raise ValueError(
            "self_rank='h0' with delta=0 and tie_value=0 makes the self term of rank^+(i) zero, so "
            "precision is undefined; use self_rank='one' or tie_value=1.0"
        )
    return value


@dataclass(frozen=True)
class RankCounts:
    """Counts of BRL Eq. 3.1 for one positive ``i`` (smoothed)."""

    rank_plus: float  #: rank^+(i) = sum_{j in P} H(x_ij)
    n_fp: float  #: N_FP(i) = sum_{j in N} w_j H(x_ij)
    h_pos: np.ndarray  #: H(x_ij) for every positive j (self entry set by ``self_rank``)
    h_neg: np.ndarray  #: H(x_ij) for every negative j (unweighted)

    @property
    def rank(self) -> float:
        """rank(i) = rank^+(i) + N_FP(i)."""
        return self.rank_plus + self.n_fp


@implements(("BRL", "Eq. 3.1"), ("RS", "Eq. 2"), name="rank(i), rank^+(i) and N_FP(i) of one positive",
            family="primitives", kind="primitive")
def rank_counts(s_i: float, pos_logits: np.ndarray, self_index: int, neg_logits: np.ndarray, delta: float,
                *, self_rank: str = "h0", tie_value: float = 1.0, neg_weights=None) -> RankCounts:
    r"""rank^+(i), N_FP(i) and rank(i) of positive ``i`` (BRL Eq. 3.1).

    With :math:`x_{ij} = s_j - s_i`:

    .. math::

        \mathrm{rank}^+(i) = \sum_{j \in P} H(x_{ij}), \quad
        N_{FP}(i) = \sum_{j \in N} w_j H(x_{ij}), \quad
        \mathrm{rank}(i) = \mathrm{rank}^+(i) + N_{FP}(i)

    ``neg_weights`` (default all ones) lets the bucketed losses count each
    prototype negative ``b_j`` times (BRL Eq. 3.20).  The i == j term of
    rank^+ follows the ``self_rank`` convention (:func:`self_term`).
    Complexity O(|P| + |N|) time and memory.
    """
    delta = check_delta(delta)
    self_value = self_term(delta, self_rank, tie_value)  # checks self_rank and tie_value
    pos_logits = _real_array(pos_logits, "pos_logits").reshape(-1)
    neg_logits = _real_array(neg_logits, "neg_logits").reshape(-1)
    s_i = float(_real_array(s_i, "s_i").reshape(-1)[0]) if np.size(s_i) == 1 else _bad_scalar(s_i)
    for name, arr in (("s_i", np.array([s_i])), ("pos_logits", pos_logits), ("neg_logits", neg_logits)):
        if np.isnan(arr).any():
            raise ValueError(f"{name} contains NaN; logits must be real numbers")
    self_index = check_int(self_index, "self_index", 0)
    if self_index >= pos_logits.size:
        raise ValueError(f"self_index must index pos_logits (0..{pos_logits.size - 1}), got {self_index}")
    if neg_weights is None:
        weights = np.ones(neg_logits.size)
    else:
        weights = _real_array(neg_weights, "neg_weights").reshape(-1)
        if weights.shape != neg_logits.shape:
            raise ValueError(f"neg_weights must have one weight per negative ({neg_logits.size}), got {weights.size}")
        if not (weights >= 0).all():  # also rejects NaN
            raise ValueError("neg_weights must be >= 0 (each counts a prototype negative b_j >= 0 times)")
    with np.errstate(over="ignore"):  # s_j - s_i may overflow to +-inf at |logit| ~ 1e308; H is then 0 or 1
        h_pos = step_values(pos_logits - s_i, delta, float(tie_value))
        h_neg = step_values(neg_logits - s_i, delta, float(tie_value))
    h_pos[self_index] = self_value
    return RankCounts(float(h_pos.sum()), float((weights * h_neg).sum()), h_pos, h_neg)


@implements(("RS", "Eqs. 3-5"), ("BRL", "Eqs. 3.5-3.9"), name="Identity Update: primary terms to gradient",
            family="primitives", kind="primitive")
class IdentityUpdate:
    r"""Accumulate primary terms and return the identity-update gradient.

    A ranking-based loss :math:`\mathcal{L} = \frac{1}{Z}\sum_i (\ell(i) - \ell^*(i))`
    (BRL Eq. 3.5) is split into primary terms
    :math:`L_{ij} = (\ell(i) - \ell^*(i))\, p(j \mid i)` (BRL Eq. 3.7).  The
    Identity Update (RS Eq. 5, BRL Eq. 3.9) sets

    .. math:: \frac{\partial \mathcal{L}}{\partial s_i} = \frac{1}{Z}\Big(\sum_j L_{ji} - \sum_j L_{ij}\Big).

    Usage: ``iu = IdentityUpdate(n)``; for every example ``i`` carrying an
    error call ``iu.add(i, error_i, pmf_i)`` with ``pmf_i`` a length-``n``
    vector over all examples; then ``iu.gradient(Z)``.  Rows are never stored:
    memory O(n), time O(n) per :meth:`add`.
    """

    def __init__(self, n: int):
        self.incoming = np.zeros(n)  # sum_j L_ji for every i
        self.outgoing = np.zeros(n)  # sum_j L_ij for every i

    def add(self, i: int, error: float, pmf: np.ndarray) -> None:
        """Add the primary terms L_ij = error * pmf[j] of example ``i``.

        A pmf that sums to zero (no example to blame) contributes nothing.
        """
        row = float(error) * pmf  # L_ij for every j (BRL Eq. 3.7)
        self.incoming += row
        self.outgoing[i] += row.sum()

    def gradient(self, Z: float) -> np.ndarray:
        """(sum_j L_ji - sum_j L_ij) / Z for every example (BRL Eq. 3.9)."""
        return (self.incoming - self.outgoing) / Z


def _bad_scalar(value):
    raise TypeError(f"s_i must be a real scalar, got {type(value).__name__} of size {np.size(value)}")

r"""DR Loss: distributional ranking (Qian et al., CVPR 2020; paper key ``DR``).

Reference implementation, float64 NumPy, written to be read next to the paper: the primitives
of DR Props. 1-2 and Eqs. 5-8 (public helpers, which check their own arguments) and
:func:`dr_reference`, DR Eq. 9 on the validated input of
:func:`rankspec.refimpl.losses.dr.validate_dr`.  The public :func:`~rankspec.refimpl.dr_loss`,
its validator and record are in :mod:`rankspec.refimpl.losses.dr`.

The loss, for one image (DR Sec. 3):

* Every (candidate, class) entry of the image is a *positive* when the
  candidate's label is that class and a *negative* otherwise (DR Eq. 2 with
  :math:`p_{i,j,k}`; DR Sec. 4.2: one distribution per side and image, over all
  pyramid levels and all classes).  Scores are sigmoid probabilities of the
  logits (DR Sec. 3, "we employ sigmoid function").
* The KL-regularised worst-case distributions over each side have closed forms
  (DR Props. 1-2):

  .. math::

      q^-_j = \frac{o^-_j \exp(p_j/\lambda_-)}{Z_-}, \qquad
      q^+_j = \frac{o^+_j \exp(-p_j/\lambda_+)}{Z_+}

* Their expectations (DR Eq. 6) :math:`\hat P_- = \sum_j q^-_j p_j` and
  :math:`\hat P_+ = \sum_j q^+_j p_j` are ranked with a margin through a smooth
  surrogate of the hinge (DR Eqs. 7-8):

  .. math::

      \mathcal{L}_{DR} = \tau\,\ell_{\text{logistic}}(\hat P_- - \hat P_+ + \gamma)
      \quad\text{(DR Eq. 9, Sec. 3.3)}

  with :math:`\gamma = 0.5`, :math:`\tau = 4`, :math:`L = 6`,
  :math:`\lambda_+ = 1/\log h_+`, :math:`\lambda_- = 0.1/\log h_-`,
  :math:`h_+ = e`, :math:`h_- = 3.5` (DR Sec. 4.2-4.3, Tables 1-2).

Readings of the PDF text this module relies on (the extracted equations are
garbled; each reading agrees with the DR Loss authors' public ``SigmoidDRLoss``):

* DR Eq. 6, second line, prints :math:`\hat P_+ = \sum_{j_-} q_{j_+} p_{j_+}`;
  the sum runs over the positives :math:`j_+` (the right-hand side of the same
  line, and the authors' code).
* DR Eq. 7 is read as :math:`z` for :math:`z \ge \rho`,
  :math:`(z+\rho)^2/(4\rho)` for :math:`-\rho<z<\rho`, 0 for :math:`z\le-\rho`
  (continuous with continuous derivative at :math:`\pm\rho`).
* DR Eq. 8 is :math:`\frac1L\log(1+\exp(Lz))`.
* DR Eq. 9 sums over images; :math:`\tau` (Sec. 3.3) multiplies the loss as in
  the authors' code.  "If there is no positive examples in an image, we will
  let :math:`\hat P_{i,+} = 1`."
* Sec. 4.3: :math:`\lambda_+ = 1/\log(h_+)`, :math:`\lambda_- = 0.1/\log(h_-)`;
  the best row of Table 1 is :math:`h_+ = e`, :math:`h_- = 3.5`, so
  :math:`\lambda_+ = 1`, :math:`\lambda_- = 0.1/\log 3.5 \approx 0.0798`
  (the defaults of the authors' code).

Input layout (used by :func:`dr_loss` and :func:`hard_negative_prior`):

* ``logits``: ``[n, C]`` (n candidates, C foreground classes); with per-entry
  labels any shape ``[n, ...]`` (rows = candidates, e.g. ``[n]``).
* ``labels``: either class ids ``[n]`` with ``-1`` = ignored candidate,
  ``0`` = background, ``k in 1..C`` = class k (the layout of the authors' code
  and maskrcnn-benchmark), or per-entry labels with the shape of ``logits``:
  ``1`` positive, ``0`` negative, ``-1`` ignored.
* ``image_ids``: optional ``[n]`` integer image id of each candidate (row);
  ``None`` = all rows form one image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
from scipy.special import expit, logsumexp

from .._result import LossResult
from .._validate import as_float_array, check_choice, check_positive_float
from ..registry import implements

__all__ = [
    "DEFAULT_GAMMA", "DEFAULT_H_POS", "DEFAULT_H_NEG", "DEFAULT_LAMBDA_POS", "DEFAULT_LAMBDA_NEG",
    "DEFAULT_L", "DEFAULT_RHO", "DEFAULT_TAU",
    "PAIRING_CHOICES", "SURROGATE_CHOICES", "SCORE_TRANSFORM_CHOICES", "SIDE_CHOICES", "REDUCTION_CHOICES",
    "Expectation",
    "dr_lambda", "kl_distribution", "kl_objective", "dr_expectation", "worst_case_expectation",
    "logistic_surrogate", "quadratic_surrogate", "hinge_surrogate", "surrogate_loss",
    "dr_reference",
]

#: Margin gamma (DR Corollary 1, Sec. 4.2: "fixed as 0.5").
DEFAULT_GAMMA = 0.5
#: Bases of the KL divergence giving the best row of DR Table 1.
DEFAULT_H_POS = math.e
DEFAULT_H_NEG = 3.5
#: lambda_+ = 1 / log(h_+) = 1 (DR Sec. 4.3).
DEFAULT_LAMBDA_POS = 1.0 / math.log(DEFAULT_H_POS)
#: lambda_- = 0.1 / log(h_-) = 0.0798... (DR Sec. 4.3).
DEFAULT_LAMBDA_NEG = 0.1 / math.log(DEFAULT_H_NEG)
#: Smoothness of the logistic loss (DR Eq. 8, Table 2: "we adopt the logistic loss with L = 6").
DEFAULT_L = 6.0
#: rho of the quadratic loss (DR Eq. 7); Table 2 tries 0.2 and 0.5, 0.5 is the better one.
DEFAULT_RHO = 0.5
#: Weight of the classification loss against regression (DR Sec. 3.3: "We fix it as tau = 4").
DEFAULT_TAU = 4.0

PAIRING_CHOICES = ("dr", "negonly", "all", "worst")
SURROGATE_CHOICES = ("logistic", "quadratic", "hinge")
SCORE_TRANSFORM_CHOICES = ("sigmoid", "identity")
SIDE_CHOICES = ("neg", "pos")
REDUCTION_CHOICES = ("sum", "mean")

# sign s of the linear term of the problems of DR Props. 1-2:
#   negatives maximise sum_j q_j p_j   (s = +1, Prop. 1)
#   positives maximise sum_j q_j (-p_j) (s = -1, Prop. 2)
_SIGN = {"neg": 1.0, "pos": -1.0}



# ---------------------------------------------------------------------------
# small validation helpers (the generic ones live in _validate)
# ---------------------------------------------------------------------------

def _scores_1d(scores, name: str = "scores") -> np.ndarray:
    p = as_float_array(scores, name)
    if p.ndim != 1:
        raise ValueError(f"{name} must be 1-D (the scores of one side of one image), got shape {p.shape}")
    return p


def _prior_1d(prior, n: int, name: str = "prior") -> np.ndarray:
    """The original distribution o: None = uniform, else non-negative weights with a positive sum."""
    if prior is None:
        return np.full(n, 1.0 / n)
    o = as_float_array(prior, name)
    if o.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) like the scores, got {o.shape}")
    if np.any(o < 0):
        raise ValueError(f"{name} must be non-negative (it is a distribution over candidates); found {o[o < 0][0]!r}")
    total = o.sum()
    if total <= 0:
        raise ValueError(f"{name} must have a positive sum (at least one candidate with weight > 0)")
    return o / total


# ---------------------------------------------------------------------------
# DR Props. 1-2 and Eq. 6: the KL-regularised distributions and their expectations
# ---------------------------------------------------------------------------

@implements(("DR", "Sec. 4.3 (lambda = scale / log h)"), name="Regulariser weight lambda from the KL base h",
            family="dr", kind="utility")
def dr_lambda(h: float, scale: float = 1.0) -> float:
    r""":math:`\lambda = \text{scale}/\log h` (DR Sec. 4.3).

    Weighting KL by :math:`\lambda = s/\log h` is the same as weight ``s`` on
    a KL divergence taken in base ``h``.  ``dr_lambda(math.e, 1.0) == 1.0``
    (= :data:`DEFAULT_LAMBDA_POS`), ``dr_lambda(3.5, 0.1)`` =
    :data:`DEFAULT_LAMBDA_NEG`.  ``h`` must exceed 1.
    """
    h = check_positive_float(h, "h")
    scale = check_positive_float(scale, "scale")
    if h <= 1.0:
        raise ValueError(f"h must be > 1 (the base of a logarithm giving lambda > 0), got {h}")
    return scale / math.log(h)


@implements(("DR", "Prop. 1"), ("DR", "Prop. 2"), ("DR", "Sec. 3.2 (original distributions o)"),
            name="Closed-form KL-regularised distribution q over one side", family="dr", kind="primitive")
def kl_distribution(scores, lam: float, side: str = "neg", prior=None) -> np.ndarray:
    r"""The maximiser ``q`` of the KL-regularised problem of DR Prop. 1 / Prop. 2.

    .. math::

        \text{neg (Prop. 1):}\ \ q_j = \frac{o_j e^{p_j/\lambda}}{\sum_k o_k e^{p_k/\lambda}}
        = \arg\max_{q\in\Delta} \sum_j q_j p_j - \lambda\,\mathrm{KL}(q\,\|\,o)

        \text{pos (Prop. 2):}\ \ q_j = \frac{o_j e^{-p_j/\lambda}}{\sum_k o_k e^{-p_k/\lambda}}
        = \arg\max_{q\in\Delta} \sum_j q_j (-p_j) - \lambda\,\mathrm{KL}(q\,\|\,o)

    ``prior`` is the original distribution ``o`` (DR Sec. 3.2): ``None`` is
    uniform; any non-negative weights are normalised, and zero weights (the
    hard-negative-mining form :math:`o_j \in \{0, 1/\hat n\}`) get ``q_j = 0``.
    Computed as a log-sum-exp, so any ``lam > 0`` is safe.  O(n) time and memory.
    """
    p = _scores_1d(scores)
    lam = check_positive_float(lam, "lam")
    check_choice(side, "side", SIDE_CHOICES)
    return _kl_q(p, lam, side, _prior_1d(prior, p.size))


def _kl_q(p: np.ndarray, lam: float, side: str, o: np.ndarray) -> np.ndarray:
    """q of DR Props. 1-2 on checked input (``o`` normalised, with a positive sum)."""
    s = _SIGN[side]
    support = o > 0
    # log(o_j) + s p_j / lambda on the support of o, -inf outside it
    log_w = np.full(p.size, -np.inf)
    log_w[support] = np.log(o[support]) + s * p[support] / lam
    return np.exp(log_w - logsumexp(log_w[support]))


@implements(("DR", "Sec. 3.2 (regularised problems of Props. 1-2)"),
            name="Objective of the KL-regularised problem (for checking Props. 1-2)", family="dr",
            kind="primitive")
def kl_objective(q, scores, lam: float, side: str = "neg", prior=None) -> float:
    r"""Value of :math:`\sum_j q_j (s\,p_j) - \lambda\,\mathrm{KL}(q\,\|\,o)`, ``s = +1`` (neg) or ``-1`` (pos).

    ``KL(q||o) = sum_j q_j log(q_j / o_j)`` with ``0 log 0 = 0`` and ``+inf``
    where ``q_j > 0 = o_j``.  ``q`` must lie on the simplex (within 1e-9).
    Its maximiser is :func:`kl_distribution` and its maximum is the log-partition
    :math:`\lambda \log\sum_j o_j e^{s p_j/\lambda}`.
    """
    p = _scores_1d(scores)
    q = _scores_1d(q, "q")
    if q.shape != p.shape:
        raise ValueError(f"q has shape {q.shape} but scores has shape {p.shape}; they must match")
    if np.any(q < 0) or abs(q.sum() - 1.0) > 1e-9:
        raise ValueError("q must be a distribution (non-negative, summing to 1)")
    lam = check_positive_float(lam, "lam")
    check_choice(side, "side", SIDE_CHOICES)
    o = _prior_1d(prior, p.size)
    if np.any((q > 0) & (o == 0)):
        return -math.inf
    nz = q > 0
    kl = float(np.sum(q[nz] * np.log(q[nz] / o[nz])))
    return float(np.sum(q * _SIGN[side] * p)) - lam * kl


@dataclass(frozen=True)
class Expectation:
    """An expectation of the scores of one side under a derived distribution."""

    value: float  #: the expectation (P-hat of DR Eq. 6, or the worst-case score of Eq. 5)
    q: np.ndarray  #: the distribution over the side's candidates
    grad: np.ndarray  #: d value / d scores


@implements(("DR", "Eq. 6"), name="Expectations P-hat_- and P-hat_+ under the derived distributions",
            family="dr", kind="primitive")
def dr_expectation(scores, lam: float, side: str = "neg", prior=None) -> Expectation:
    r""":math:`\hat P_- = \sum_j q^-_j p_j` or :math:`\hat P_+ = \sum_j q^+_j p_j` (DR Eq. 6) and its gradient.

    ``q`` is :func:`kl_distribution` (DR Props. 1-2).  With ``s = +1`` for the
    negatives and ``s = -1`` for the positives,

    .. math::

        \frac{\partial \hat P}{\partial p_k} = q_k\Big(1 + \frac{s\,(p_k - \hat P)}{\lambda}\Big),

    which sums to 1 over the side (shifting every score by ``c`` shifts the
    expectation by ``c``).  O(n) time and memory.
    """
    p = _scores_1d(scores)
    lam = check_positive_float(lam, "lam")
    check_choice(side, "side", SIDE_CHOICES)
    return _expectation(p, lam, side, _prior_1d(prior, p.size))


def _expectation(p: np.ndarray, lam: float, side: str, o: np.ndarray) -> Expectation:
    """P-hat of DR Eq. 6 and its gradient on checked input."""
    q = _kl_q(p, lam, side, o)
    value = float(np.sum(q * p))
    grad = q * (1.0 + _SIGN[side] * (p - value) / lam)
    return Expectation(value, q, grad)


@implements(("DR", "Eq. 5"), ("DR", "Sec. 3.2 (worst-case distributions, the lambda -> 0 limit)"),
            name="Worst-case scores max_j p_j- and min_j p_j+", family="dr", kind="primitive")
def worst_case_expectation(scores, side: str = "neg", prior=None) -> Expectation:
    r"""The worst case of DR Eq. 5: :math:`\max_j p_{j_-}` (neg) or :math:`\min_j p_{j_+}` (pos).

    Equivalently the expectation under the unregularised
    :math:`\max_{q\in\Delta}\sum_j q_j (s p_j)` restricted to the support of
    ``prior``.  ``q`` (and the gradient, a subgradient) is uniform over the
    tied extreme candidates, which is the :math:`\lambda\to 0` limit of
    :func:`dr_expectation`.  O(n).
    """
    p = _scores_1d(scores)
    check_choice(side, "side", SIDE_CHOICES)
    return _worst(p, side, _prior_1d(prior, p.size))


def _worst(p: np.ndarray, side: str, o: np.ndarray) -> Expectation:
    """The worst case of DR Eq. 5 on checked input."""
    sp = np.where(o > 0, _SIGN[side] * p, -np.inf)
    extreme = sp == sp.max()
    q = extreme / float(extreme.sum())
    return Expectation(float(np.sum(q * p)), q, q.copy())


# ---------------------------------------------------------------------------
# DR Eqs. 7-8 and the hinge: surrogates l(z), returned with dl/dz
# ---------------------------------------------------------------------------

def _z_array(z) -> np.ndarray:
    return as_float_array(z, "z")


@implements(("DR", "Eq. 8"), name="Logistic loss (1/L) log(1 + exp(L z))", family="dr", kind="primitive")
def logistic_surrogate(z, L: float = DEFAULT_L) -> Tuple[np.ndarray, np.ndarray]:
    r""":math:`\ell(z) = \frac{1}{L}\log(1 + e^{Lz})` (DR Eq. 8) and :math:`\ell'(z) = \sigma(Lz)`.

    Evaluated as ``logaddexp(0, L z) / L`` (no overflow).  Approaches the
    hinge as ``L`` grows: :math:`0 < \ell(z) - [z]_+ \le \log(2)/L`, with
    equality at ``z = 0``.
    """
    z = _z_array(z)
    L = check_positive_float(L, "L")
    return np.logaddexp(0.0, L * z) / L, expit(L * z)


@implements(("DR", "Eq. 7"), name="Quadratic (Huberised hinge) loss with width rho", family="dr",
            kind="primitive")
def quadratic_surrogate(z, rho: float = DEFAULT_RHO) -> Tuple[np.ndarray, np.ndarray]:
    r"""DR Eq. 7:

    .. math::

        \ell(z) = \begin{cases} z, & z \ge \rho \\ \frac{(z+\rho)^2}{4\rho}, & -\rho < z < \rho \\
                                0, & z \le -\rho \end{cases}
        \qquad
        \ell'(z) = \begin{cases} 1 \\ \frac{z+\rho}{2\rho} \\ 0 \end{cases}

    Continuous with a continuous derivative; :math:`0 \le \ell(z) - [z]_+ \le \rho/4`.
    """
    z = _z_array(z)
    rho = check_positive_float(rho, "rho")
    mid = (z > -rho) & (z < rho)
    value = np.where(z >= rho, z, np.where(mid, (z + rho) ** 2 / (4.0 * rho), 0.0))
    deriv = np.where(z >= rho, 1.0, np.where(mid, (z + rho) / (2.0 * rho), 0.0))
    return value, deriv


@implements(("DR", "Eq. 3 (hinge loss)"), name="Hinge loss [z]_+", family="dr", kind="primitive")
def hinge_surrogate(z) -> Tuple[np.ndarray, np.ndarray]:
    r""":math:`[z]_+ = z` for :math:`z > 0`, else 0 (DR Sec. 3.1); derivative 1 for ``z > 0``, else 0
    (the subgradient 0 is taken at ``z = 0``)."""
    z = _z_array(z)
    return np.where(z > 0, z, 0.0), np.where(z > 0, 1.0, 0.0)


@implements(("DR", "Eqs. 7-8, Sec. 3.1"), name="Surrogate selector (logistic / quadratic / hinge)", family="dr",
            kind="utility")
def surrogate_loss(z, kind: str = "logistic", *, L: float = DEFAULT_L, rho: float = DEFAULT_RHO):
    """``(l(z), l'(z))`` for ``kind`` in ``"logistic"`` (Eq. 8), ``"quadratic"`` (Eq. 7), ``"hinge"``."""
    check_choice(kind, "surrogate", SURROGATE_CHOICES)
    if kind == "logistic":
        return logistic_surrogate(z, L)
    if kind == "quadratic":
        return quadratic_surrogate(z, rho)
    return hinge_surrogate(z)


def _surrogate(z: np.ndarray, kind: str, L: float, rho: float):
    """(l(z), l'(z)) of DR Eqs. 7-8 / the hinge on a checked float64 array (see :func:`surrogate_loss`)."""
    if kind == "logistic":
        return np.logaddexp(0.0, L * z) / L, expit(L * z)
    if kind == "quadratic":
        mid = (z > -rho) & (z < rho)
        value = np.where(z >= rho, z, np.where(mid, (z + rho) ** 2 / (4.0 * rho), 0.0))
        deriv = np.where(z >= rho, 1.0, np.where(mid, (z + rho) / (2.0 * rho), 0.0))
        return value, deriv
    return np.where(z > 0, z, 0.0), np.where(z > 0, 1.0, 0.0)



# ---------------------------------------------------------------------------
# DR Eq. 9 and the pairing variants of Sec. 4.3
# ---------------------------------------------------------------------------

def _side_expectation(p_side, side: str, prior, lam: float, worst: bool, empty):
    """(value, d value / d p_side) of one side of an image: P-hat (DR Eq. 6) or, with ``worst``, the
    max / min (DR Eq. 5); an empty side gives ``(empty, None)``.  ``prior``: the side's weights (> 0)."""
    if p_side.size == 0:
        return empty, None
    o = prior / prior.sum()
    e = _worst(p_side, side, o) if worst else _expectation(p_side, lam, side, o)
    return e.value, e.grad


def dr_reference(x) -> LossResult:
    r"""DR Loss (DR Eq. 9 and the pairings of Sec. 4.3) with its analytic gradient, on the validated
    input ``x`` (:class:`rankspec.refimpl.losses.dr.DRInput`: flat float64 logits, entry sides, image
    index, priors, and the checked options).  See :func:`~rankspec.refimpl.dr_loss` for the maths of
    each pairing, the options and the result.  Time O(n C) for "dr", "negonly" and "worst";
    O(n_+ n_-) per image for "all".
    """
    gamma, lambda_pos, lambda_neg, tau = x.gamma, x.lambda_pos, x.lambda_neg, x.tau
    pairing, score_transform, reduction = x.pairing, x.score_transform, x.reduction
    empty_pos, empty_neg = x.empty_positive_score, x.empty_negative_score

    def ell(z):
        return _surrogate(np.asarray(z, dtype=np.float64), x.surrogate, x.L, x.rho)

    p = expit(x.logits) if score_transform == "sigmoid" else x.logits.copy()
    grad_p = np.zeros(p.size)  # d loss / d p
    B = x.distinct_ids.size
    loss_img = np.zeros(B)
    p_neg = np.full(B, np.nan)
    p_pos = np.full(B, np.nan)

    for g in range(B):
        # entries of image g on each side; an entry with prior weight 0 is not on its side
        neg = np.flatnonzero((x.image == g) & (x.side == 0) & (x.prior_neg > 0))
        pos = np.flatnonzero((x.image == g) & (x.side == 1) & (x.prior_pos > 0))
        if (neg.size == 0 and empty_neg is None) or (pos.size == 0 and empty_pos is None):
            # image dropped: loss 0, zero gradient; report what is defined
            if neg.size:
                p_neg[g] = float(np.average(p[neg], weights=x.prior_neg[neg]))
            if pos.size:
                p_pos[g] = float(np.average(p[pos], weights=x.prior_pos[pos]))
            continue

        if pairing in ("dr", "worst", "negonly"):
            # negative side: P-hat_- (DR Eq. 6 / Prop. 1) or max (DR Eq. 5)
            Pn, dPn = _side_expectation(p[neg], "neg", x.prior_neg[neg], lambda_neg, pairing == "worst", empty_neg)
            p_neg[g] = Pn

        if pairing in ("dr", "worst"):
            # positive side: P-hat_+ (DR Eq. 6 / Prop. 2) or min (DR Eq. 5); 1 without positives
            Pp, dPp = _side_expectation(p[pos], "pos", x.prior_pos[pos], lambda_pos, pairing == "worst", empty_pos)
            p_pos[g] = Pp
            value, deriv = ell(np.array([Pn - Pp + gamma]))  # DR Eq. 9: l(P-hat_- - P-hat_+ + gamma)
            loss_img[g] = tau * value[0]
            if dPn is not None:
                grad_p[neg] += tau * deriv[0] * dPn
            if dPp is not None:
                grad_p[pos] -= tau * deriv[0] * dPp

        elif pairing == "negonly":
            # DR Sec. 4.3: sum_j+ o+_j l(P-hat_- - p_j+ + gamma), o+ uniform = 1/n+
            if pos.size == 0:
                w_pos, s_pos = np.ones(1), np.array([empty_pos])
            else:
                w_pos = x.prior_pos[pos] / x.prior_pos[pos].sum()
                s_pos = p[pos]
            p_pos[g] = float(np.sum(w_pos * s_pos))
            value, deriv = ell(Pn - s_pos + gamma)
            loss_img[g] = tau * np.sum(w_pos * value)
            if dPn is not None:
                grad_p[neg] += tau * np.sum(w_pos * deriv) * dPn
            if pos.size:
                grad_p[pos] -= tau * w_pos * deriv

        else:  # pairing == "all": DR Eq. 4, expectation of l(p_j- - p_j+ + gamma) over pairs
            if neg.size == 0:
                w_neg, s_neg = np.ones(1), np.array([empty_neg])
            else:
                w_neg = x.prior_neg[neg] / x.prior_neg[neg].sum()
                s_neg = p[neg]
            if pos.size == 0:
                w_pos, s_pos = np.ones(1), np.array([empty_pos])
            else:
                w_pos = x.prior_pos[pos] / x.prior_pos[pos].sum()
                s_pos = p[pos]
            p_neg[g] = float(np.sum(w_neg * s_neg))
            p_pos[g] = float(np.sum(w_pos * s_pos))
            z = s_neg[None, :] - s_pos[:, None] + gamma  # rows: positives, columns: negatives
            w = w_pos[:, None] * w_neg[None, :]
            value, deriv = ell(z)
            loss_img[g] = tau * np.sum(w * value)
            if neg.size:
                grad_p[neg] += tau * np.sum(w * deriv, axis=0)
            if pos.size:
                grad_p[pos] -= tau * np.sum(w * deriv, axis=1)

    scale = 1.0 if reduction == "sum" else 1.0 / B
    loss = float(loss_img.sum() * scale)
    grad = grad_p * scale
    if score_transform == "sigmoid":
        grad = grad * p * (1.0 - p)  # d sigma(x) / dx = sigma(x) (1 - sigma(x))
    terms = {"loss": loss, "num_images": float(B), "loss_per_image": loss_img, "p_neg": p_neg, "p_pos": p_pos,
             "image_ids": x.distinct_ids.astype(np.float64)}
    return LossResult(loss, grad.reshape(x.shape), terms)

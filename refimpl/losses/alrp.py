"""aLRP Loss (Oksuz et al., NeurIPS 2020): public functions, the validator and the loss records.

``alrp_loss(logits, targets, regression_losses, delta=1.0)`` reproduces, by
default, the authors' ``aLRPLoss.apply(logits, targets, regression_losses,
delta)`` (Rank & Sort repository; the bucketed authors ship an identical copy):
the classification component as ``.loss``, its identity-update gradient as
``.grad``, and ``rank``, ``order`` and the localisation component in ``.terms``.
``alrp_loc_loss(regression_losses, rank, order)`` is the localisation component
with its gradient w.r.t. ``regression_losses`` (the authors' heads compute it
from ``rank`` and ``order``).  The plain math is in
:mod:`rankspec.refimpl.reference.alrp`; the kernels in :mod:`rankspec.refimpl.fast.alrp`.

Conventions (keywords; defaults reproduce the authors):

* ``self_rank="one"``: rank+(i) = 1 + sum_{j != i} H(s_j - s_i) (the authors zero the self relation and
  add 1); ``"h0"`` / ``"half"`` as for AP Loss.
* ``tie_value=1.0``: H(0) at ``delta = 0`` (the exact step; the authors divide by 2 delta and cannot
  take delta = 0).  At delta > 0 a tie is H(0) = 0.5 for every pair, as in the authors' clamp.
* ``eps=1e-5``: positives with N_FP(i) <= eps carry no primary term (the authors' ``FP_num > eps``).
* ``buffer_dtype="float32"``: rank, the loss and the gradient are rounded to float32 as the authors'
  ``torch.zeros`` buffers are, whatever the input dtype; ``"float64"`` keeps the float64 values.  The
  authors also accumulate in float32, so on inputs with many positives their values differ from both
  by float32 rounding of the sums (~1e-7 relative).
* ``normalization="positives"``: the gradient and loss divided by |P| (``"none"``: by 1).

Fixed, documented behaviour:

* Relevant negatives are those with ``logit >= min positive logit - delta``; every other negative has
  H = 0 against every positive, so the threshold changes no number; they (and ignored entries, targets
  other than 0 and 1) get zero gradient.
* ``order`` is the *stable* ascending argsort of the positives' logits; the authors' ``torch.argsort``
  is not stable, so among tied positive logits their order (and the localisation component, when the
  tied positives carry different e_loc) is unspecified.
* Zero positives: the authors' code raises (``torch.min`` of an empty tensor); rankspec returns loss 0,
  zero gradient, empty ``rank`` / ``order`` and localisation component 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._result import LossResult
from .._validate import _real_scalar, as_float_array, check_choice, check_delta, check_tie_value
from ..constants import check_backend
from ..record import Convention, LossRecord, register_record
from ..registry import implements
from ..reference.alrp import (SB_WEIGHT_INITIAL, alrp_classification, alrp_localisation, round_buffers,
                              self_balancing_weight)
from ..reference.primitives import SELF_RANK_CHOICES, self_term

__all__ = ["alrp_loss", "alrp_loc_loss", "validate_alrp", "ALRPInput", "alrp_reference", "self_balancing_weight",
           "SB_WEIGHT_INITIAL", "ALRP_RECORD", "ALRP_CONVENTIONS", "BUFFER_DTYPE_CHOICES", "ALRP_TERMS"]

BUFFER_DTYPE_CHOICES = ("float32", "float64")
NORMALIZATION_CHOICES = ("positives", "none")
ALRP_TERMS = ("classification", "rank", "order", "loc_component", "n_fp", "num_positives")


@dataclass(frozen=True)
class ALRPInput:
    """Validated input of :func:`alrp_loss` (flat float64 host arrays, checked options)."""

    shape: tuple  #: shape of the logits as given (the gradient is returned in it)
    logits: np.ndarray  #: flat float64 logits
    targets: np.ndarray  #: flat float64 targets (1 positive, 0 negative, anything else ignored)
    regression_losses: np.ndarray  #: e_loc of the positives in flat order, float64 [P]
    delta: float
    self_rank: str
    tie_value: float
    eps: float
    buffer_dtype: str
    normalization: str

    @property
    def pos(self) -> np.ndarray:
        """Indices of the positives (target == 1), in flat order."""
        return np.flatnonzero(self.targets == 1)

    @property
    def neg(self) -> np.ndarray:
        """Indices of the negatives (target == 0)."""
        return np.flatnonzero(self.targets == 0)

    @property
    def Z(self) -> float:
        return float(len(self.pos)) if self.normalization == "positives" else 1.0


def validate_alrp(logits, targets, regression_losses, delta=1.0, *, self_rank="one", tie_value=1.0, eps=1e-5,
                  buffer_dtype="float32", normalization="positives", backend="numpy") -> ALRPInput:
    """The one validator of :func:`alrp_loss` (every backend): ValueError / TypeError naming the argument.

    ``logits``: any shape, finite.  ``targets``: same shape, finite; 1 = positive, 0 = negative, any
    other value is ignored.  ``regression_losses``: one finite value >= 0 per positive, in the flat
    order of the positives (any shape with that many elements; empty when there is no positive).
    O(n) time and memory.
    """
    check_backend(backend)
    s = as_float_array(logits, "logits")
    t = as_float_array(targets, "targets")
    if s.shape != t.shape:
        raise ValueError(f"logits has shape {s.shape} but targets has shape {t.shape}; they must match")
    num_pos = int(np.count_nonzero(t == 1))
    e = as_float_array(regression_losses, "regression_losses", allow_empty=True).ravel()
    if e.size != num_pos:
        raise ValueError(f"regression_losses has {e.size} element(s) but targets has {num_pos} positive(s) "
                         f"(entries equal to 1); give one e_loc per positive, in flat order")
    if np.any(e < 0):
        raise ValueError(f"regression_losses must be >= 0 (localisation errors); found {e[e < 0][0].item()!r}")
    delta = check_delta(delta)
    check_choice(self_rank, "self_rank", SELF_RANK_CHOICES)
    check_tie_value(tie_value)
    self_term(delta, self_rank, tie_value)  # rejects a zero self term (precision undefined)
    eps = _real_scalar(eps, "eps")
    if not np.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    check_choice(buffer_dtype, "buffer_dtype", BUFFER_DTYPE_CHOICES)
    check_choice(normalization, "normalization", NORMALIZATION_CHOICES)
    return ALRPInput(s.shape, s.ravel(), t.ravel(), e, delta, self_rank, float(tie_value), eps, buffer_dtype,
                     normalization)


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _out_of_range(what: str, limit: str, fix: str) -> ValueError:
    return ValueError(f"regression_losses too large: {what} exceeds the {limit} range ({fix}); the classification "
                      f"gradient is bounded by max(1, max e_loc) per positive (times |P| per negative before "
                      f"normalization) and the localisation component by max e_loc / min rank")


def finish(x: ALRPInput, loss_sum: float, rank, n_fp, order, grad_pos, grad_neg) -> LossResult:
    """Assemble the LossResult from un-normalised per-positive / per-negative values (any backend).

    Values that the output cannot hold (only with regression_losses of extreme magnitude: beyond
    float32 with ``buffer_dtype="float32"``, beyond float64 otherwise) raise a ValueError naming
    ``regression_losses`` instead of returning inf."""
    pos, neg = x.pos, x.neg
    Z = x.Z
    grad = np.zeros(x.logits.size)
    grad[pos] = grad_pos / Z
    grad[neg] = grad_neg / Z
    loss = loss_sum / Z
    if not np.all(np.isfinite(grad)):
        raise _out_of_range("the gradient", "float64", "normalize by |P| or scale the localisation errors")
    if x.buffer_dtype == "float32" and grad.size and float(np.max(np.abs(grad))) > _FLOAT32_MAX:
        raise _out_of_range("the gradient", "float32", "use buffer_dtype='float64'")
    rank, grad, loss_arr = round_buffers(x.buffer_dtype, rank, grad, np.array([loss]))
    loc, _ = alrp_localisation(x.regression_losses, rank, order)
    if not np.isfinite(loc):
        raise _out_of_range("the localisation component", "float64", "scale the localisation errors")
    loss = float(loss_arr[0])
    terms = {"classification": loss, "rank": rank, "order": np.asarray(order, dtype=np.int64),
             "loc_component": loc, "n_fp": np.asarray(n_fp, dtype=np.float64), "num_positives": float(len(pos))}
    return LossResult(loss, grad.reshape(x.shape), terms)


def empty_result(x: ALRPInput) -> LossResult:
    """Zero positives (the authors raise): loss 0, zero gradient, empty rank / order, loc 0."""
    terms = {"classification": 0.0, "rank": np.zeros(0), "order": np.zeros(0, dtype=np.int64),
             "loc_component": 0.0, "n_fp": np.zeros(0), "num_positives": 0.0}
    return LossResult(0.0, np.zeros(x.shape), terms)


def alrp_reference(x: ALRPInput) -> LossResult:
    """The reference of :func:`alrp_loss` on validated input (plain float64 math)."""
    pos, neg = x.pos, x.neg
    if len(pos) == 0:
        return empty_result(x)
    core = alrp_classification(x.logits[pos], x.regression_losses, x.logits[neg], x.delta, self_rank=x.self_rank,
                               tie_value=x.tie_value, eps=x.eps)
    return finish(x, float(core.error.sum()), core.rank, core.n_fp, core.order, core.grad_pos, core.grad_neg)


ALRP_CONVENTIONS = (
    Convention("self_rank", "aLRP: Self term of rank+(i) and rank(i)", (), "one", SELF_RANK_CHOICES,
               "Value of the j = i term of rank+(i).", "aLRP authors: fg_relations[ii] = 0 and rank_pos = 1 + sum."),
    Convention("tie_value", "aLRP: Value of H(0) at delta = 0", (), 1.0, (0.0, 0.5, 1.0),
               "Ties at delta = 0 (exact step).", "aLRP authors: divide by 2 delta (delta = 0 is undefined there)."),
    Convention("eps", "aLRP: Smallest N_FP(i) that carries a primary term", (), 1e-5, (1e-5, 0.0),
               "Positives with N_FP(i) <= eps get no gradient and give none to negatives.",
               "aLRP authors: if FP_num > eps (eps = 1e-5)."),
    Convention("buffer_dtype", "aLRP: Precision of the stored rank, loss and gradient", (), "float32",
               BUFFER_DTYPE_CHOICES, "float32 rounds the outputs as the authors' buffers; float64 keeps them.",
               "aLRP authors: torch.zeros buffers (float32) whatever the input dtype."),
    Convention("normalization", "aLRP: Normaliser of the loss and gradient", (), "positives", NORMALIZATION_CHOICES,
               "positives: divide by |P|; none: by 1.", "aLRP authors: divide by fg_num (|P|)."),
    Convention(None, "aLRP: zero positives", (), "loss 0, zero gradient, empty rank / order", (),
               "No positive: the documented result.", "aLRP authors: raise (torch.min of an empty tensor)."),
    Convention(None, "aLRP: order among tied positives", (), "stable ascending argsort", (),
               "Ties among positive logits keep flat order.",
               "aLRP authors: torch.argsort (not stable): the order among ties is unspecified."),
)

ALRP_RECORD = register_record(LossRecord(
    name="alrp_loss", title="aLRP Loss (classification component)",
    citations=(("aLRP", "classification component (authors' aLRPLoss)"), ("RS", "Sec. 3.1"), ("BRL", "Eqs. 3.1-3.4")),
    family="alrp", validate=validate_alrp, reference=alrp_reference, conventions=ALRP_CONVENTIONS,
    kernels={"numba": "rankspec.refimpl.fast.alrp:numba_alrp", "cuda": "rankspec.refimpl.fast.alrp:cuda_alrp"},
    label_kind="alrp", case_builder="rankspec.refimpl.cases:build_alrp_case", terms=ALRP_TERMS, outputs=("loss", "rank", "order"),
    head_keys=("loss_cls", "loss_bbox"), head_scope="batch",
    input_names=("logits", "targets", "regression_losses"), labels_name="targets", default_delta=1.0))


@implements(*ALRP_RECORD.citations, name=ALRP_RECORD.title, family=ALRP_RECORD.family)
def alrp_loss(logits, targets, regression_losses, delta: float = 1.0, *, self_rank: str = "one",
              tie_value: float = 1.0, eps: float = 1e-5, buffer_dtype: str = "float32",
              normalization: str = "positives", backend: str = "numpy") -> LossResult:
    r"""aLRP Loss: classification component, identity-update gradient, rank, order, localisation component.

    .. math::

        \mathcal{L}_{cls} = \frac{1}{|P|}\sum_{i\in P}\frac{N_{FP}(i)}{\mathrm{rank}(i)}, \qquad
        \mathrm{rank}(i) = 1 + \sum_{j\in P, j\ne i} H(s_j - s_i) + \sum_{v\in N} H(s_v - s_i)

    and the gradient of the positive i is :math:`-E(i)/|P|` with
    :math:`E(i) = [N_{FP}(i) + \sum_{j\ne i} H(s_j - s_i)\,e_{loc}(j)]/\mathrm{rank}(i)`,
    spread over the negatives in proportion to :math:`H(s_v - s_i)`
    (:func:`rankspec.refimpl.reference.alrp.alrp_classification`).

    Parameters
    ----------
    logits:
        Real scores, any shape (the authors pass them flattened).
    targets:
        Same shape: 1 positive, 0 negative, any other value ignored (zero gradient).
    regression_losses:
        e_loc of each positive, in the flat order of the positives (>= 0).  Enters the gradient
        (and the localisation component), not the classification value; no gradient flows to it.
    delta:
        Smoothing of H (default 1.0, the authors'); 0 is the exact step.
    self_rank, tie_value, eps, buffer_dtype, normalization:
        Conventions (module docstring of :mod:`rankspec.refimpl.losses.alrp`); defaults reproduce the authors.
    backend:
        ``"numpy"`` (reference, O(|P| (|P| + |N|))), ``"numba"`` (O(N log P + P log P)) or ``"cuda"``.

    Returns
    -------
    LossResult
        ``loss``: the classification component; ``grad``: its identity-update gradient in the shape of
        ``logits``; ``terms``: ``classification``, ``rank`` [P] and ``order`` [P] (as the authors return
        them), ``loc_component`` (:func:`alrp_loc_loss` of them), ``n_fp`` [P], ``num_positives``.
        Zero positives: loss 0, zero gradient, empty rank and order (the authors raise).
    """
    return ALRP_RECORD.run(backend, logits, targets, regression_losses, delta, self_rank=self_rank,
                           tie_value=tie_value, eps=eps, buffer_dtype=buffer_dtype, normalization=normalization)


def alrp_loc_loss(regression_losses, rank, order) -> LossResult:
    r"""aLRP localisation component from ``rank`` and ``order`` and its gradient w.r.t. ``regression_losses``.

    ``(cumsum(e[order].flip(0)) / rank[order].flip(0)).mean()`` exactly as the authors' heads compute it
    (rank detached); see :func:`rankspec.refimpl.reference.alrp.alrp_localisation`.  ``rank`` and ``order``
    are ``alrp_loss(...).terms["rank"]`` / ``["order"]`` (or the authors' outputs).  Returns a LossResult
    whose ``grad`` is d loss / d regression_losses (shape [P]); ``terms = {"localisation": loss}``.
    Zero positives: loss 0, empty gradient.  O(P) time and memory.
    """
    e = as_float_array(regression_losses, "regression_losses", allow_empty=True).ravel()
    r = as_float_array(rank, "rank", allow_empty=True).ravel()
    o = np.asarray(order)
    if o.dtype.kind not in "iu" and o.size:
        raise TypeError(f"order must be an integer array, got dtype {o.dtype}")
    o = o.astype(np.int64).ravel()
    P = e.size
    if r.size != P or o.size != P:
        raise ValueError(f"regression_losses, rank and order must have one entry per positive; got sizes "
                         f"{P}, {r.size} and {o.size}")
    if P and not np.array_equal(np.sort(o), np.arange(P)):
        raise ValueError("order must be a permutation of 0..P-1 (the positives' indices by ascending logit)")
    if np.any(r <= 0):
        raise ValueError("rank must be > 0 (rank(i) >= 1 with the authors' self term)")
    value, grad = alrp_localisation(e, r, o)
    if not np.isfinite(value) or not np.all(np.isfinite(grad)):
        raise ValueError("the localisation component or its gradient exceeds the float64 range (regression_losses "
                         "~1e308 or rank ~1e-308); the value is bounded by max e_loc / min rank, the gradient by "
                         "1 / min rank")
    return LossResult(value, grad, {"localisation": value})


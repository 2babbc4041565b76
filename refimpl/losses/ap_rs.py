"""AP Loss, Rank & Sort Loss and their bucketed versions: public functions and their records.

Each public function is three steps: the record's validator
(:func:`~rankspec.refimpl._inputs.validate_ranking`), the backend's
computation (the reference in :mod:`rankspec.refimpl.reference.ranking`, or a
kernel of :mod:`rankspec.refimpl.fast.ap_rs`), the result.
"""

from __future__ import annotations

from .._inputs import validate_ranking
from .._result import LossResult
from ..record import Convention, LossRecord, register_record
from ..reference.ranking import ap_reference, bucketed_ap_reference, bucketed_rs_reference, rs_reference
from ..registry import implements

__all__ = ["ap_loss", "rs_loss", "bucketed_ap_loss", "bucketed_rs_loss", "AP_RECORD", "RS_RECORD",
           "BUCKETED_AP_RECORD", "BUCKETED_RS_RECORD", "RANKING_CONVENTIONS"]

# --------------------------------------------------------------------------- conventions of the family

SELF_RANK = Convention("self_rank", "Self term of rank+(i) and rank(i)",
        (),
        "h0",
        ("h0", "one", "half"),
        "Value of the j = i term of rank+(i) = sum_j H(x_ij). 'h0': H(0), i.e. 0.5 at delta > 0 and tie_value "
        "at delta = 0; 'one': 1 at every delta; 'half': 0.5 at every delta.",
        "The papers count i itself once in rank(i). The Rank & Sort authors' RankSort and the bucketed authors' "
        "code apply H to x_ii = 0, giving 0.5 at delta > 0 and 1 at delta = 0 ('h0'). The AP-Loss authors' code "
        "zeroes x_ii and adds 1 ('one').")

TIE_VALUE = Convention("tie_value", "Ties at delta = 0",
        ("smoothed_step",),
        1.0, (1.0, 0.5, 0.0),
        "H(0) when delta = 0 (the exact step): 1 counts x >= 0, 0 counts x > 0 only, 0.5 splits ties.",
        "RS and BRL print H-bar(x) = 1 for x > 0 (so 0 on ties); the RS paper's Sec. 3.1 text says x >= 0, and "
        "the Rank & Sort authors' code computes (x >= 0), i.e. 1. The AP-Loss code divides by delta and has no "
        "delta = 0 mode.")

INTERPOLATED = Convention("interpolated", "Interpolated precision",
        (), False, (False, True),
        "False: l_R(i) = 1 - precision(i). True: l_R(i) = 1 - max precision over positives with logits <= s_i "
        "(ties broken by index order), and that error is distributed by the usual pmf.",
        "The AP Loss papers and BRL define AP with plain precision; the AP-Loss authors' code (shipped as APLoss "
        "in the Rank & Sort repository) uses interpolated precision.")

NORMALIZATION = Convention("normalization", "Normalisation Z",
        (),
        "positives", ("positives", "none"),
        "'positives': loss = mean over positives and gradient / |P| (Z = |P|); 'none': sums, Z = 1.",
        "All papers and all authors' code normalise by |P|.")

THRESHOLD = Convention("threshold", "Negatives below min positive logit - delta",
        (), True, (True, False),
        "True: negatives with s_j < min_i s_i - delta are dropped before bucketing (zero gradient). False: they "
        "join the last bucket and shift its prototype.",
        "All authors' code drops them (BRL Alg. 1 line 2). For the unbucketed losses H(x_ij) = 0 for such "
        "negatives against every positive, so the threshold changes nothing there and is not an option.")

TIED_NEGATIVES = Convention("tied_negatives", "Bucket of a negative tied with a positive",
        ("make_buckets",), "above", ("above", "below"),
        "'above': a negative with the same logit as a positive joins the bucket above that positive; 'below': "
        "the bucket below.",
        "The bucketed authors' code leaves it to its sort, so either side can occur (the recorded 'ties' vectors "
        "are not a reliable expectation for bap/brs). 'above' matches tie_value=1, so the delta = 0 theorem "
        "also holds with ties between positives and negatives.")

ZERO_POSITIVES = Convention(None, "Zero positives", (),
        "loss 0, zero gradient", (),
        "With no positive (no label 1 / no target > 0) every loss returns loss 0.0, a zero gradient and zero terms.",
        "The authors' code raises (min over an empty tensor).")

NO_RELEVANT_NEGATIVES = Convention(None, "No relevant negatives", (),
        "ranking error 0", (),
        "When no negative lies within reach of a positive (N_FP(i) = 0 for every i) every ranking error is 0 and "
        "negatives get zero gradient; RS still has its sorting part.",
        "RankSort and BucketedRankSort return the same; BucketedAPLoss raises IndexError (recorded as an error "
        "in the vectors), where rankspec returns loss 0 and zero gradient.")

RANKING_CONVENTIONS = (SELF_RANK, TIE_VALUE, INTERPOLATED, NORMALIZATION, THRESHOLD, TIED_NEGATIVES, ZERO_POSITIVES,
                       NO_RELEVANT_NEGATIVES)

# --------------------------------------------------------------------------- validators (one per loss)


def _validate_ap(logits, labels, delta, interpolated, *, self_rank, tie_value, normalization, backend="numpy"):
    return validate_ranking("ap_loss", logits, labels, delta, labels_name="labels", continuous=False,
                            self_rank=self_rank, tie_value=tie_value, normalization=normalization,
                            interpolated=interpolated, backend=backend)


def _validate_rs(logits, targets, delta, *, self_rank, tie_value, normalization, backend="numpy"):
    return validate_ranking("rs_loss", logits, targets, delta, labels_name="targets", continuous=True,
                            self_rank=self_rank, tie_value=tie_value, normalization=normalization, backend=backend)


def _validate_bap(logits, labels, delta, *, self_rank, tie_value, normalization, threshold, tied_negatives,
                  backend="numpy"):
    return validate_ranking("bucketed_ap_loss", logits, labels, delta, labels_name="labels", continuous=False,
                            self_rank=self_rank, tie_value=tie_value, normalization=normalization,
                            threshold=threshold, tied_negatives=tied_negatives, backend=backend)


def _validate_brs(logits, targets, delta, *, self_rank, tie_value, normalization, threshold, tied_negatives,
                  backend="numpy"):
    return validate_ranking("bucketed_rs_loss", logits, targets, delta, labels_name="targets", continuous=True,
                            self_rank=self_rank, tie_value=tie_value, normalization=normalization,
                            threshold=threshold, tied_negatives=tied_negatives, backend=backend)


_KERNELS = {"numba": "rankspec.refimpl.fast.ap_rs:numba_ranking_loss",
            "cuda": "rankspec.refimpl.fast.ap_rs:cuda_ranking_loss"}
_CASES = "rankspec.refimpl.cases:build_ranking_case"

# --------------------------------------------------------------------------- records

AP_RECORD = register_record(LossRecord(
    name="ap_loss", title="AP Loss (identity-update gradient; optional interpolated precision)",
    citations=(("BRL", "Eqs. 3.3-3.4"), ("BRL", "Eq. 3.10 and the AP gradient after it"), ("APE", "Eqs. 5-7"),
               ("RS", "Sec. 3.1")),
    family="ap-rs", validate=_validate_ap, reference=ap_reference,
    conventions=(SELF_RANK.with_default("one"), TIE_VALUE, INTERPOLATED, NORMALIZATION, ZERO_POSITIVES,
                 NO_RELEVANT_NEGATIVES),
    kernels=_KERNELS, label_kind="binary", case_builder=_CASES, terms=("ranking", "num_positives"),
    outputs=("loss",), head_keys=("loss_cls",), head_scope="batch", input_names=("logits", "labels"),
    labels_name="labels", continuous=False, default_delta=1.0))

RS_RECORD = register_record(LossRecord(
    name="rs_loss", title="Rank & Sort Loss", citations=(("RS", "Eqs. 6-12"), ("BRL", "Eqs. 3.11-3.18")),
    family="ap-rs", validate=_validate_rs, reference=rs_reference,
    conventions=(SELF_RANK, TIE_VALUE, NORMALIZATION, ZERO_POSITIVES, NO_RELEVANT_NEGATIVES),
    kernels=_KERNELS, label_kind="iou", case_builder=_CASES, terms=("ranking", "sorting", "num_positives"),
    outputs=("ranking", "sorting"), head_keys=("loss_rank", "loss_sort"), head_scope="batch", input_names=("logits", "targets"),
    labels_name="targets", continuous=True, with_sort=True, default_delta=0.5))

BUCKETED_AP_RECORD = register_record(LossRecord(
    name="bucketed_ap_loss", title="Bucketed AP Loss", citations=(("BRL", "Eqs. 3.19-3.33"), ("BRL", "Alg. 2")),
    family="ap-rs", validate=_validate_bap, reference=bucketed_ap_reference,
    conventions=(SELF_RANK, TIE_VALUE, NORMALIZATION, THRESHOLD, TIED_NEGATIVES, ZERO_POSITIVES,
                 NO_RELEVANT_NEGATIVES),
    kernels=_KERNELS, label_kind="binary", case_builder=_CASES, terms=("ranking", "num_positives", "num_buckets"),
    outputs=("loss",), head_keys=("loss_cls",), head_scope="batch", input_names=("logits", "labels"),
    labels_name="labels", continuous=False, bucketed=True, default_delta=1.0))

BUCKETED_RS_RECORD = register_record(LossRecord(
    name="bucketed_rs_loss", title="Bucketed Rank & Sort Loss",
    citations=(("BRL", "Eqs. 3.34-3.38"), ("BRL", "Alg. 2")),
    family="ap-rs", validate=_validate_brs, reference=bucketed_rs_reference,
    conventions=(SELF_RANK, TIE_VALUE, NORMALIZATION, THRESHOLD, TIED_NEGATIVES, ZERO_POSITIVES,
                 NO_RELEVANT_NEGATIVES),
    kernels=_KERNELS, label_kind="iou", case_builder=_CASES,
    terms=("ranking", "sorting", "num_positives", "num_buckets"), outputs=("ranking", "sorting"), head_keys=("loss_rank", "loss_sort"),
    head_scope="batch", input_names=("logits", "targets"), labels_name="targets", continuous=True,
    with_sort=True, bucketed=True, default_delta=0.5))

# --------------------------------------------------------------------------- the public functions


@implements(*AP_RECORD.citations, name=AP_RECORD.title, family=AP_RECORD.family)
def ap_loss(logits, labels, delta: float = 1.0, interpolated: bool = False, *, self_rank: str = "one",
            tie_value: float = 1.0, normalization: str = "positives", backend: str = "numpy") -> LossResult:
    r"""AP Loss :math:`1 - \mathrm{AP}` and its error-driven gradient.

    .. math::

        \mathcal{L}_{AP} = \frac{1}{|P|}\sum_{i\in P} \ell_R(i), \qquad
        \ell_R(i) = \frac{N_{FP}(i)}{\mathrm{rank}(i)} = 1 - \frac{\mathrm{rank}^+(i)}{\mathrm{rank}(i)}
        \quad\text{(BRL Eqs. 3.3-3.4)}

    with primary terms :math:`L_{ij} = \ell_R(i)\,H(x_{ij})/N_{FP}(i)` (BRL Eq. 3.10)
    and, by the Identity Update,

    .. math::

        \frac{\partial\mathcal{L}}{\partial s_i} =
        \begin{cases} \frac{1}{|P|}\sum_{j\in P}\ell_R(j)\,p_R(i\mid j), & i\in N \\
                      -\frac{1}{|P|}\,\ell_R(i), & i \in P. \end{cases}

    Parameters
    ----------
    logits:
        Real scores of any shape.
    labels:
        Same shape, 1 for positives and 0 for negatives (bool accepted).
    delta:
        Smoothing of the step function H (BRL Eq. 3.2); ``0`` is the exact step.
    interpolated:
        ``True`` replaces each precision by the interpolated precision (the
        maximum precision over positives with lower or equal logits, ties in
        index order): the AP-Loss authors' code as shipped in the Rank & Sort
        repository.  ``terms["ranking"]`` is then ``1 - mean interpolated precision``.
    self_rank, tie_value, normalization:
        Conventions; see the Conventions page.  Defaults reproduce the
        AP-Loss authors' code (self term 1).
    backend:
        ``"numpy"`` (this readable reference), ``"numba"`` or ``"cuda"``: the exact
        fast paths of :mod:`rankspec.refimpl.fast` (same result, O(N log P + P log P)).

    Returns
    -------
    LossResult
        ``loss`` = mean ranking error; ``grad`` in the shape of ``logits``;
        ``terms = {"ranking": loss, "num_positives": |P|}``.  Zero positives:
        loss 0 and zero gradient.  No negative within reach of a positive:
        every ranking error is 0, so loss 0 and zero gradient.

    Notes
    -----
    Negatives below ``min positive logit - delta`` have H = 0 against every
    positive, so the authors' explicit threshold changes nothing here; they get
    zero gradient.  Time O(|P| (|P| + |N|)), memory O(|P| + |N|).
    """
    return AP_RECORD.run(backend, logits, labels, delta, interpolated, self_rank=self_rank, tie_value=tie_value,
                         normalization=normalization)


@implements(*RS_RECORD.citations, name=RS_RECORD.title, family=RS_RECORD.family)
def rs_loss(logits, targets, delta: float = 0.5, *, self_rank: str = "h0", tie_value: float = 1.0,
            normalization: str = "positives", backend: str = "numpy") -> LossResult:
    r"""Rank & Sort Loss and its identity-update gradient.

    .. math::

        \mathcal{L}_{RS} = \frac{1}{|P|}\sum_{i\in P}\big(\ell_{RS}(i) - \ell^*_{RS}(i)\big)
        \quad\text{(RS Eq. 6)}

        \ell_{RS}(i) = \underbrace{\frac{N_{FP}(i)}{\mathrm{rank}(i)}}_{\ell_R(i)}
        + \underbrace{\frac{\sum_{j\in P} H(x_{ij})(1-y_j)}{\mathrm{rank}^+(i)}}_{\ell_S(i)}
        \quad\text{(RS Eq. 7)}

        \ell^*_{RS}(i) = 0 + \frac{\sum_{j\in P} H(x_{ij})[y_j\ge y_i](1-y_j)}{\sum_{j\in P} H(x_{ij})[y_j\ge y_i]}
        \quad\text{(RS Eq. 8)}

    Primary terms (RS Eq. 9) use :math:`p_R(j|i) = H(x_{ij})/N_{FP}(i)` and
    :math:`p_S(j|i) = H(x_{ij})[y_j<y_i] / \sum_k H(x_{ik})[y_k<y_i]` (RS Eq. 10);
    the gradient is RS Eq. 11 for negatives and RS Eq. 12 for positives.

    Parameters
    ----------
    logits:
        Real scores of any shape.
    targets:
        Same shape; continuous label (IoU in (0, 1]) for positives, 0 for negatives.
    delta:
        Smoothing of H (default 0.5 as in the paper); ``0`` is the exact step.
    self_rank, tie_value, normalization:
        Conventions; see the Conventions page.  The defaults reproduce the
        Rank & Sort authors' ``RankSort`` (self term H(0) = 0.5 at delta > 0;
        ``x >= 0`` counts as 1 at delta = 0).
    backend:
        ``"numpy"`` (this readable reference), ``"numba"`` or ``"cuda"``: the exact
        fast paths of :mod:`rankspec.refimpl.fast` (same result, O(N log P + P log P)).

    Returns
    -------
    LossResult
        ``loss = terms["ranking"] + terms["sorting"]``: the means over positives of
        the ranking error and of current-minus-target sorting error.  Zero
        positives: loss 0 and zero gradient.

    Notes
    -----
    Time O(|P| (|P| + |N|)), memory O(|P| + |N|).
    """
    return RS_RECORD.run(backend, logits, targets, delta, self_rank=self_rank, tie_value=tie_value,
                         normalization=normalization)


@implements(*BUCKETED_AP_RECORD.citations, name=BUCKETED_AP_RECORD.title, family=BUCKETED_AP_RECORD.family)
def bucketed_ap_loss(logits, labels, delta: float = 1.0, *, self_rank: str = "h0", tie_value: float = 1.0,
                     normalization: str = "positives", threshold: bool = True,
                     tied_negatives: str = "above", backend: str = "numpy") -> LossResult:
    r"""Bucketed AP Loss (BAP) and its gradient.

    Negatives between consecutive positives (in sorted order) form buckets
    (BRL Eq. 3.19) represented by their mean logit :math:`s^b_j` and size :math:`b_j`:

    .. math::

        \ell^b_R(i) = \frac{\sum_j H(x^b_{ij})\,b_j}{\sum_{j\in P} H(x_{ij}) + \sum_j H(x^b_{ij})\,b_j},
        \qquad p(j^b\mid i) = \frac{b_j\,H(x^b_{ij})}{N_{FP}(i)}
        \quad\text{(BRL Eqs. 3.20-3.23)}

    Positives get :math:`-\ell^b_R(i)/|P|` (Eq. 3.30); each negative k of bucket
    i gets :math:`\frac{1}{|P|}\sum_{j\in P}\ell^b_R(j)\,p(i^b\mid j)/b_i` (Eq. 3.33).

    ``backend="numba"`` / ``"cuda"`` run the exact fast paths of :mod:`rankspec.refimpl.fast`.
    Defaults reproduce the bucketed authors' ``BucketedAPLoss`` (self term H(0),
    negatives below ``min positive - delta`` ignored).  Where that code raises
    (no negative above the threshold) this returns the defined result: every
    ranking error is 0, loss 0 and zero gradient.  At delta = 0 with distinct
    logits the result equals :func:`~rankspec.refimpl.ap_loss` exactly
    (BRL Sec. 3.4 theorem).

    ``terms = {"ranking": loss, "num_positives": |P|, "num_buckets": ...}``.
    Time O(|P| (|P| + |N|)) in this readable form (the paper's algorithm is
    O((|P|+|N|) log(|P|+|N|) + |P|^2)), memory O(|P| + |N|).
    """
    return BUCKETED_AP_RECORD.run(backend, logits, labels, delta, self_rank=self_rank, tie_value=tie_value,
                                  normalization=normalization, threshold=threshold, tied_negatives=tied_negatives)


@implements(*BUCKETED_RS_RECORD.citations, name=BUCKETED_RS_RECORD.title, family=BUCKETED_RS_RECORD.family)
def bucketed_rs_loss(logits, targets, delta: float = 0.5, *, self_rank: str = "h0", tie_value: float = 1.0,
                     normalization: str = "positives", threshold: bool = True,
                     tied_negatives: str = "above", backend: str = "numpy") -> LossResult:
    r"""Bucketed Rank & Sort Loss (BRS) and its gradient.

    The ranking part is Bucketed AP (BRL Eqs. 3.20-3.23, 3.34); the sorting
    part is RS Loss's (RS Eqs. 7-10), computed on positives only.  Positives get

    .. math::

        \frac{1}{|P|}\Big(-\ell^b_R(i) + \ell^*_S(i) - \ell_S(i)
        + \sum_{j\in P}(\ell_S(j) - \ell^*_S(j))\,p_S(i\mid j)\Big)
        \quad\text{(BRL Eq. 3.38)}

    Defaults reproduce the bucketed authors' ``BucketedRankSort``.
    ``backend="numba"`` / ``"cuda"`` run the exact fast paths of :mod:`rankspec.refimpl.fast`.
    ``loss = terms["ranking"] + terms["sorting"]``.  At delta = 0 with distinct
    logits the result equals :func:`~rankspec.refimpl.rs_loss` exactly.
    Time O(|P| (|P| + |N|)), memory O(|P| + |N|).
    """
    return BUCKETED_RS_RECORD.run(backend, logits, targets, delta, self_rank=self_rank, tie_value=tie_value,
                                  normalization=normalization, threshold=threshold, tied_negatives=tied_negatives)

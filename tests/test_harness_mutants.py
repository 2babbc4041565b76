"""The harness catches planted bugs, and names the convention when the bug is one.

Each mutant is the reference (wrapped in some call convention) with one
deliberate change.  Every mutant must be reported nonconformant with a small
counterexample; mutants that amount to a documented convention (self term,
normalisation, ties, threshold, interpolation, bucket side of ties, scope) must
be diagnosed as exactly that convention, and the others get a finding where
the harness has one (flipped sign, grad_output ignored, delta doubled).
"""

from __future__ import annotations

import numpy as np
import pytest

from rankspec.conformance import check
from rankspec.refimpl import bucketed_ap_loss, rs_loss
from rankspec.refimpl.reference.ranking import ranking_sorting_loop

pytest.importorskip("torch")
import test_harness_support as S  # noqa: E402

RUN = dict(examples=25, vectors=True, dtypes=["float64"], seed=0, shrink_seconds=5.0)


def bucketed_ap_variant(off_by_one: bool):
    """Bucketed AP written independently of refimpl.reference.ranking; ``off_by_one`` plants a bucket-boundary bug."""

    def bap(logits, labels, delta):
        shape = np.shape(logits)
        s = np.asarray(logits, dtype=np.float64).ravel()
        y = np.asarray(labels).ravel() > 0
        pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
        if len(pos) == 0:
            return 0.0, np.zeros(shape)
        s_pos, s_neg = s[pos], s[neg]
        keep = s_neg >= s_pos.min() - delta
        desc = -np.sort(-s_pos)
        above = np.searchsorted(-desc, -s_neg[keep], side="left")  # positives strictly above each negative
        if off_by_one:
            # BUG: the bucket loop stops one short, so the negatives below the lowest positive are put in
            # the bucket above it (P buckets instead of P + 1)
            above = np.minimum(above, len(pos) - 1)
        grad = np.zeros(s.size)
        if keep.any():
            _, dense = np.unique(above, return_inverse=True)
            size = np.bincount(dense).astype(np.float64)
            proto = np.bincount(dense, weights=s_neg[keep]) / size
            out = ranking_sorting_loop(s_pos, proto, delta, self_rank="h0", tie_value=1.0, neg_weights=size)
            loss = out.ranking_error.sum() / len(pos)
            grad[pos] = out.grad_pos / len(pos)
            g = np.zeros(len(neg))
            g[keep] = (out.grad_neg / size)[dense] / len(pos)
            grad[neg] = g
        else:
            loss = 0.0
        return loss, grad.reshape(shape)

    return bap


def rs_per_image(logits, targets, delta):
    """RS averaged over images (rows) instead of one ranking over the batch."""
    s = np.atleast_2d(np.asarray(logits, dtype=np.float64))
    t = np.atleast_2d(np.asarray(targets, dtype=np.float64))
    grad, total, used = np.zeros(s.shape), 0.0, 0
    for b in range(s.shape[0]):
        if (t[b] > 0).any():
            r = rs_loss(s[b], t[b], delta)
            total, grad[b], used = total + r.loss, r.grad, used + 1
    if used:
        total, grad = total / used, grad / used
    return total, grad.reshape(np.shape(logits))


MUTANTS = {
    # name: (loss, target, expected words in the diagnosis or None)
    "sign error in the gradient": ("rs", S.make_pair("rs", grad_fn=np.negative), "opposite sign"),
    "no normalisation by |P| (RS)": ("rs", S.make_pair("rs", normalization="none"), "normalization='none'"),
    "no normalisation by |P| (AP, autograd)": ("ap", S.make_autograd("ap", normalization="none"),
                                               "normalization='none'"),
    "wrong self term (RS, authors' Function)": ("rs", S.make_function("rs", parts=True, self_rank="one"),
                                                "self_rank='one'"),
    "wrong self term (AP)": ("ap", S.make_pair("ap", self_rank="h0"), "self_rank='h0'"),
    "ties at delta 0 split in half (RS)": ("rs", S.make_pair("rs", tie_value=0.5), "tie_value=0.5"),
    "ties at delta 0 not counted (AP)": ("ap", S.make_pair("ap", tie_value=0.0), "tie_value=0.0"),
    "tied negative bucketed below the positive": ("brs", S.make_pair("brs", tied_negatives="below"),
                                                  "tied_negatives='below'"),
    "off-by-one bucket boundary": ("bap", bucketed_ap_variant(off_by_one=True), None),
    "delta applied twice": ("rs", S.make_pair("rs", delta_fn=lambda d: 2 * d), "delta doubled"),
    "gradient not scaled by grad_output": ("rs", S.make_function("rs", parts=True, scale_by_grad_output=False),
                                           "ignores grad_output"),
    "negatives below the threshold given gradient (BAP)": ("bap", S.make_pair("bap", threshold=False),
                                                           "threshold=False"),
    "negatives below the threshold given gradient (BRS module)": ("brs", S.make_module("brs", threshold=False),
                                                                  "threshold=False"),
    "plain precision where interpolated is expected": ("ap-interp", S.make_pair("ap-interp", interpolated=False),
                                                       "interpolated=False"),
    "interpolated precision where plain is expected": ("ap", S.make_pair("ap", interpolated=True),
                                                       "interpolated=True"),
    "ranking per image instead of per batch": ("rs", rs_per_image, "scope='image'"),
}


@pytest.mark.parametrize("name", list(MUTANTS))
def test_mutant_is_caught(name):
    loss, target, words = MUTANTS[name]
    report = check(target, loss, **RUN)
    r = report.results[0]
    assert not report.conformant, f"{name} was not caught:\n{report.format_text()}"
    assert r.failed > 0 and r.counterexample is not None
    assert r.counterexample.case.size <= 12, report.format_text()
    assert r.counterexample.reproducer.startswith("# rankspec counterexample")
    if words is not None:
        assert words in r.diagnosis.summary, report.format_text()
    if r.diagnosis.kind == "convention":  # a matched convention is one of the documented options
        assert words is not None and words.split("=")[0] in r.diagnosis.summary


def test_unmutated_variants_conform():
    """The mutants' unmutated forms pass, so what the harness catches is the planted bug."""
    assert check(bucketed_ap_variant(off_by_one=False), "bap", **RUN).conformant
    assert check(S.make_pair("rs"), "rs", **RUN).conformant
    assert check(S.make_function("rs", parts=True), "rs", **RUN).conformant


def test_off_by_one_bucket_is_not_mistaken_for_a_convention():
    report = check(bucketed_ap_variant(off_by_one=True), "bap", **RUN)
    d = report.results[0].diagnosis
    assert d.kind != "convention" and "closest" in d.summary or "no combination" in d.summary


def test_bucketed_variant_matches_reference_on_a_hand_computed_case():
    # logits 2 (pos), 1 (neg), 0 (pos), -1 (neg); delta 0.5.  Buckets: {1} between the positives, {-1}
    # below both; -1 < min positive - delta = -0.5, so it is dropped.  Positive 2: no negative above,
    # error 0.  Positive 0: rank+ = H(0) + H(2) = 0.5 + 1, N_FP = H(1) = 1, error 1 / 2.5 = 0.4.
    # Loss = (0 + 0.4) / 2 = 0.2.
    s, y = np.array([2.0, 1.0, 0.0, -1.0]), np.array([1.0, 0.0, 1.0, 0.0])
    loss, grad = bucketed_ap_variant(False)(s, y, 0.5)
    assert loss == pytest.approx(0.2, abs=1e-15) == bucketed_ap_loss(s, y, 0.5).loss
    np.testing.assert_allclose(grad, [0.0, 0.2, -0.2, 0.0], atol=1e-15)

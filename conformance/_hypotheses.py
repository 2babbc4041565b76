"""Generic hypotheses a diagnosis tests besides the documented conventions (flat loss inputs).

Real ports of a ranking loss go wrong in a small number of recurring ways that are not conventions of the
loss: they compute in float32, ignore the ``delta`` argument, pool images into one ranking (or rank each
image), normalise by the wrong count, flip the sign of one side's gradient, differentiate only one output
term, detach the loss, or crash / return NaN on one kind of input.  Each hypothesis here is a transformation
of the *reference* (or of the tolerance) that is tried on the diagnosis's ``(case, outcome)`` pairs; a
hypothesis is reported only when it makes **every** pair agree (it explains all failing cases and breaks
none of the passing ones).  :func:`case_features` and :func:`separating` turn "which cases fail" into words
(the precise trigger of a crash, or the facts of an unexplained mismatch).

Called by :func:`rankspec.conformance._diagnose.diagnose` through
:meth:`rankspec.conformance.harness.ArrayKind.hypotheses`; head pipelines have their own findings.
Cost: every hypothesis evaluates the reference once more per diagnostic case (a few dozen small cases),
except the fixed-delta search (one evaluation per grid value and case, stopping at the first miss).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["case_features", "separating", "describe_trigger", "hypotheses", "output_facts", "positive_mask",
           "FEATURE_WORDS", "feature_words"]

#: feature key -> words used in a report ("raises on <words>")
FEATURE_WORDS = {
    "zero_positives": "inputs without positives",
    "no_negatives": "inputs without negatives",
    "no_relevant_negative": "inputs where no negative is within delta of a positive (no relevant negative)",
    "image_without_positives": "inputs with an image without positives (or no positive at all)",
    "delta_zero": "delta = 0",
    "all_equal": "all-equal logits",
    "two_d": "2-D (batched) inputs",
    "per_entry_labels": "per-entry labels of the logits' shape (not class ids [n])",
    "several_images": "inputs with several images",
    "ties": "inputs with tied logits",
    "grad_output": "a grad_output other than 1",
    "non_contiguous": "non-contiguous / transposed / sliced inputs",
}

#: deltas tried when looking for a delta the target uses whatever it is passed
DELTA_GRID = (0.5, 1.0, 0.0, 0.25, 0.1, 2.0, 0.75, 1.5, 0.05, 0.01, 0.2, 0.3, 0.4, 3.0, 0.125)


def positive_mask(case, spec) -> Optional[np.ndarray]:
    """Boolean mask over the logits of the entries that belong to positives (None when not defined)."""
    s, t = np.asarray(case.logits), np.asarray(case.targets)
    if t.shape == s.shape:
        return t > (case.positive_above if case.positive_above is not None else 0.0)
    if s.ndim == 2 and t.ndim == 1 and t.shape[0] == s.shape[0] and t.dtype.kind in "iu":
        C = s.shape[1]
        col = t - 1 if spec.name == "dr" else t  # DR: class ids 1..C (0 background); RankDet: 0..C-1
        mask = np.zeros(s.shape, dtype=bool)
        rows = np.flatnonzero((col >= 0) & (col < C))
        mask[rows, col[rows]] = True
        return mask
    return None


def _image_without_positives(case, spec, pos) -> bool:
    """Some image of a multi-image input has no positive (image ids, or the rows of a 2-D ranking input)."""
    if pos is None:
        return False
    ids = dict(zip([i.name for i in spec.extra_inputs], case.extras)).get("image_ids")
    if ids is not None:
        ids = np.asarray(ids)
        rows = pos.reshape(pos.shape[0], -1).any(axis=1)
        return any(not rows[ids == g].any() for g in np.unique(ids))
    if spec.shrink_layout == "elements" and pos.ndim >= 2 and pos.shape[0] > 1:
        return bool(not np.all(pos.reshape(pos.shape[0], -1).any(axis=1)))
    return False


def case_features(case, spec) -> Dict[str, bool]:
    """Yes/no features of one case, for naming what failing (or crashing) cases have in common."""
    s = np.asarray(case.logits, dtype=np.float64)
    f = {}
    f["zero_positives"] = case.num_positives == 0 or case.kind == "no_positives"
    pos = positive_mask(case, spec)
    if pos is not None and np.asarray(case.targets).shape == s.shape and spec.label_kind in ("binary", "iou"):
        neg = ~pos
        f["no_negatives"] = not neg.any()
        if pos.any() and neg.any() and case.delta is not None:
            f["no_relevant_negative"] = bool(s[neg].max() < s[pos].min() - case.delta)
        else:
            f["no_relevant_negative"] = False
    else:
        f["no_negatives"] = case.kind in ("no_negatives", "no_background")
        f["no_relevant_negative"] = False
    f["image_without_positives"] = f["zero_positives"] or _image_without_positives(case, spec, pos)
    f["delta_zero"] = case.delta is not None and case.delta == 0
    f["all_equal"] = s.size > 1 and float(np.ptp(s)) == 0.0
    f["two_d"] = spec.shrink_layout == "elements" and s.ndim >= 2 and s.shape[0] > 1
    t = np.asarray(case.targets)
    f["per_entry_labels"] = s.ndim >= 2 and t.shape == s.shape and t.dtype.kind in "iu"  # DR's entries layout
    ids = dict(zip([i.name for i in spec.extra_inputs], case.extras)).get("image_ids")
    f["several_images"] = ids is not None and np.unique(np.asarray(ids)).size > 1
    f["ties"] = s.size > 1 and np.unique(s).size < s.size
    f["grad_output"] = case.grad_output != 1.0
    f["non_contiguous"] = getattr(case, "layout", "contiguous") != "contiguous"
    f.update(_term_features(case, spec))
    return f


def _record_features(spec):
    record = getattr(spec, "record", None)
    return getattr(record, "term_features", ()) or ()


def _term_features(case, spec) -> Dict[str, bool]:
    """The loss's own features (:attr:`LossRecord.term_features`), read from the reference's terms on
    the case (cached by the harness); False where the reference raises."""
    feats = _record_features(spec)
    if not feats:
        return {}
    from ._reference import reference_result

    try:
        terms = reference_result(spec, case).terms
    except Exception:  # the reference rejects the case: no feature of the loss applies
        return {key: False for key, _, _ in feats}
    return {key: bool(pred(terms)) for key, _, pred in feats}


def feature_words(spec=None) -> Dict[str, str]:
    """Feature key -> words: the generic :data:`FEATURE_WORDS` and the loss's own (``spec``'s record)."""
    words = dict(FEATURE_WORDS)
    words.update({key: text for key, text, _ in _record_features(spec)})
    return words


def separating(bad: Sequence, good: Sequence, spec) -> Tuple[List[str], List[str]]:
    """Features every bad case has and no good case has (exact triggers), and enrichment facts otherwise.

    Returns ``(exact, facts)``: ``exact`` are feature keys; ``facts`` are sentences such as
    "5 of 5 failing cases have delta = 0 (1 of 20 passing)".
    """
    if not bad:
        return [], []
    fb = [case_features(c, spec) for c in bad]
    fg = [case_features(c, spec) for c in good]
    words = feature_words(spec)
    exact, facts = [], []
    for key in words:
        nb = sum(f.get(key, False) for f in fb)
        ng = sum(f.get(key, False) for f in fg)
        if nb == len(fb) and ng == 0:
            exact.append(key)
        elif nb and nb / len(fb) >= 0.5 and (not fg or ng / len(fg) < nb / len(fb) / 2):
            facts.append(f"{nb} of {len(fb)} failing cases have {words[key]} ({ng} of {len(fg)} passing)")
    if not exact:
        # two features together (e.g. delta = 0 *and* tied logits: a division by delta that meets 0 / 0)
        keys = list(words)
        for i, a in enumerate(keys):
            for b in keys[i + 1:]:
                if all(f.get(a) and f.get(b) for f in fb) and not any(f.get(a) and f.get(b) for f in fg):
                    exact.append(f"{a}+{b}")
        exact = exact[:1]
    sizes_b = [c.size for c in bad]
    sizes_g = [c.size for c in good]
    if sizes_g and min(sizes_b) > max(sizes_g):
        exact.append(f"size>{max(sizes_g)}")
    return exact, facts


def describe_trigger(key: str, spec=None) -> str:
    if "+" in key:
        return " and ".join(describe_trigger(k, spec) for k in key.split("+"))
    if key.startswith("size>"):
        return f"inputs with more than {key[5:]} elements"
    return feature_words(spec).get(key, key)


# ------------------------------------------------------------------------------------------------
# hypotheses on (case, outcome) pairs
# ------------------------------------------------------------------------------------------------

def _plain(outcome):
    """The outcome compared on loss and logits gradient only."""
    return replace(outcome, parts=None, extra_grads=None)


def _scaled(result, c_loss: float, c_grad: float):
    from rankspec.refimpl import LossResult

    return LossResult(float(result.loss) * c_loss, np.asarray(result.grad) * c_grad, result.terms)


def _all_agree(kind, pairs, expected_of: Callable, plain: bool = True, tol=None) -> bool:
    """Whether ``expected_of(case)`` agrees with every outcome (None from ``expected_of``: not applicable)."""
    from ._compare import compare

    used = 0
    for case, outcome in pairs:
        try:
            e = expected_of(case)
        except Exception:
            return False
        if e is None:
            return False
        o = _plain(outcome) if plain else outcome
        if tol is None:
            ok = kind.compare(case, e, o).ok
        else:
            ok = compare(e, o, tol(case), kind.spec).ok
        if not ok:
            return False
        used += 1
    return used > 0


def _counts(case, spec):
    pos = positive_mask(case, spec)
    n = case.size
    p = int(pos.sum()) if pos is not None else case.num_positives
    return n, p


def hypotheses(evaluator, pairs, bad) -> List[Tuple[str, str]]:
    """``(key, sentence)`` for every generic hypothesis that makes all ``pairs`` agree, most specific first.

    ``bad`` are the pairs that fail under the checked convention (the hypothesis must fix them; it is only
    tried when there are some).
    """
    kind = evaluator.kind
    spec = kind.spec
    ref = evaluator.reference
    out: List[Tuple[str, str]] = []
    if not bad:
        return out
    fname = spec.function_name

    # -- no gradient at all (detached loss): the note of the call, or an all-zero gradient -----------
    notes = {n for _, o in pairs for n in (o.notes or ())}
    detached = [n for n in notes if "does not require grad" in n or "grad empty" in n]
    loss_ok = all(kind.compare(c, ref(c), replace(_plain(o), grad=np.asarray(ref(c).grad) * o.grad_output)).ok
                  for c, o in bad)
    if detached:
        out.append(("detached", "the loss is detached from the autograd graph (" + detached[0] + ")"
                    + ("; the loss value agrees" if loss_ok else "")))
        return out
    if all(not np.any(o.grad) for _, o in bad) and any(np.any(ref(c).grad) for c, _ in bad):
        out.append(("zero-gradient", "the gradient is zero everywhere (no gradient reaches the logits)"
                    + ("; the loss value agrees" if loss_ok else "")))
        return out

    # -- computes in float32 ----------------------------------------------------------------------------
    if kind.dtype == "float64":
        from ._compare import base_tolerance, case_tolerance

        t32 = base_tolerance("float32")
        if _all_agree(kind, pairs, lambda c: ref(c), plain=False,
                      tol=lambda c: case_tolerance(c.astype("float32"), spec, t32)):
            worst = max(kind.compare(c, ref(c), o).loss_abs for c, o in bad)
            out.append(("float32", "computes in float32: agrees with the reference within float32 rounding "
                                   f"(loss error up to {worst:.2g}) but not within the float64 tolerance "
                                   "(a .float() cast or float32 buffers inside the target?)"))
            return out

    # -- ignores delta: a fixed delta whatever it is passed ----------------------------------------------
    with_delta = [(c, o) for c, o in pairs if c.delta is not None]
    if spec.default_delta is not None and len({c.delta for c, _ in with_delta}) > 1:
        for d in DELTA_GRID:
            if _all_agree(kind, with_delta, lambda c: ref(replace(c, delta=d)), plain=False):
                out.append(("fixed-delta", f"ignores the delta argument: computes with a fixed delta = {d:g} "
                                           f"(matches {fname} at delta={d:g} on every diagnostic case)"))
                return out

    # -- pools images into one ranking (image ids ignored) -------------------------------------------------
    names = [i.name for i in spec.extra_inputs]
    if "image_ids" in names:
        k = names.index("image_ids")

        def pooled(c):
            extras = list(c.extras)
            extras[k] = np.zeros_like(np.asarray(extras[k]))
            return ref(replace(c, extras=tuple(extras)))

        if _all_agree(kind, pairs, pooled, plain=False):
            out.append(("pooled", f"pools every image into one ranking: matches {fname}(image_ids=None) "
                                  "(the image ids are ignored)"))
            return out

    # -- ignored entries (label -1 in DR, -2 in RankDet) treated as negatives / background -----------------
    ignore, background = {"dr": (-1, 0)}.get(spec.name, (-2, -1) if spec.name.startswith("rankdet") else (None,
                                                                                                           None))
    if ignore is not None and any(np.any(np.asarray(c.targets) == ignore) for c, _ in bad):
        def unignored(c):
            t = np.asarray(c.targets)
            return ref(replace(c, targets=np.where(t == ignore, background, t).astype(t.dtype)))

        if _all_agree(kind, pairs, unignored, plain=False):
            out.append(("ignored-as-negative", f"treats ignored entries (label {ignore}) as "
                                               f"{'negatives' if background == 0 else 'background'}: matches "
                                               f"{fname} with label {ignore} replaced by {background}"))
            return out

    # -- normalisation / constant factors on loss and gradient ------------------------------------------
    def count_factor(fn):
        def expected(c):
            n, p = _counts(c, spec)
            f = fn(n, p, c)
            return None if f is None or not math.isfinite(f) else _scaled(ref(c), f, f)
        return expected

    def images_with_positives(c):
        s = np.asarray(c.logits)
        if s.ndim < 2 or spec.shrink_layout != "elements":
            return None
        pos = positive_mask(c, spec)
        return int(np.sum(pos.reshape(s.shape[0], -1).any(axis=1))) if pos is not None else None

    factors = [
        ("normalise-n", "normalises by N (the number of elements) instead of by the number of positives",
         lambda n, p, c: p / n if p else 1.0),
        ("no-normalisation", "does not normalise: the loss and gradient are summed over positives "
                             "(times the number of positives)", lambda n, p, c: float(p) if p else 1.0),
    ]
    for key, words, fn in factors:
        if _all_agree(kind, pairs, count_factor(fn)):
            out.append((key, words))
            return out
    if spec.shrink_layout == "elements" and "scope" in spec.option_space():
        def per_image_sum(c):
            k = images_with_positives(c)
            if k is None:
                return ref(c)
            return _scaled(ref(c, {**spec.expected_options(), "scope": "image"}), k, k)

        if any(images_with_positives(c) not in (None, 0, 1) for c, _ in bad) and _all_agree(kind, pairs,
                                                                                          per_image_sum):
            out.append(("per-image-positives", "normalises by each image's positives: ranks every image on its "
                                               "own and sums the per-image losses (instead of one ranking "
                                               "normalised by the batch's positives)"))
            return out
    # a constant factor on both outputs
    ratios = []
    for c, o in bad:
        e = ref(c)
        if float(e.loss) != 0:
            ratios.append(o.loss / float(e.loss))
    if ratios and all(np.isfinite(ratios)):
        r = float(np.median(ratios))
        if abs(r - 1) > 1e-6 and abs(r) > 1e-9 and _all_agree(kind, pairs, lambda c: _scaled(ref(c), r, r)):
            if abs(r + 1) <= 1e-6:
                out.append(("negated", "the loss and the gradient both have the opposite sign (-1 times the "
                                       "reference)"))
            else:
                out.append(("constant-factor", f"the loss and the gradient are {r:.6g} times the reference"))
            return out

    # -- sign flipped on the positives' or the negatives' gradient ----------------------------------------
    for side, words in (("pos", "positives"), ("neg", "negatives")):
        def flipped(c, side=side):
            e = ref(c)
            pos = positive_mask(c, spec)
            if pos is None:
                return None
            g = np.asarray(e.grad, dtype=np.float64).copy()
            m = pos if side == "pos" else ~pos
            if not np.any(g[m]):
                return e  # nothing to flip on this case
            g[m] = -g[m]
            return _scaled(type(e)(e.loss, g, e.terms), 1.0, 1.0)

        if _all_agree(kind, pairs, flipped) and any(np.any(ref(c).grad[positive_mask(c, spec) if side == "pos"
                                                                         else ~positive_mask(c, spec)])
                                                    for c, _ in bad if positive_mask(c, spec) is not None):
            out.append((f"sign-{side}", f"the {words}' gradient has the opposite sign (the loss and the other "
                                        "side's gradient agree)"))
            return out

    # -- gradient of one output term only ------------------------------------------------------------------
    for label, grad_of in term_gradients(spec):
        def one_term(c, grad_of=grad_of):
            e = ref(c)
            g = grad_of(c)
            return None if g is None else type(e)(e.loss, g, e.terms)

        if _all_agree(kind, pairs, one_term):
            out.append(("one-term", f"the gradient is that of the {label} only (the loss agrees; the other "
                                    "terms' gradient is missing)"))
            return out
    return out


def term_gradients(spec) -> List[Tuple[str, Callable]]:
    """``(label, case -> gradient of one output term)`` for losses that are sums of terms."""
    from rankspec import refimpl

    opts = spec.expected_options()
    name = spec.function_name
    out = []
    if name in ("rs_loss", "bucketed_rs_loss"):
        ap = refimpl.ap_loss if name == "rs_loss" else refimpl.bucketed_ap_loss
        keep = {k: v for k, v in opts.items() if k in ("self_rank", "tie_value", "normalization", "threshold",
                                                        "tied_negatives")}

        def ranking(c):
            s = np.asarray(c.logits, dtype=np.float64)
            y = (np.asarray(c.targets) > 0).astype(np.float64)
            if s.ndim > 1 and opts.get("scope", "batch") != "batch":
                return None
            if name == "rs_loss":
                return np.asarray(ap(s, y, c.delta, False, **keep).grad)
            return np.asarray(ap(s, y, c.delta, **keep).grad)

        def sorting(c):
            g = ranking(c)
            if g is None:
                return None
            full = spec.reference(c.logits, c.targets, c.delta, None, c.extras)
            return np.asarray(full.grad) - g

        out += [("ranking term", ranking), ("sorting term", sorting)]
    if name == "rankdet_loss" and "weights" in spec._parameters():
        for k, label in enumerate(("global ranking term", "class-specific ranking term", "IoU-guided term")):
            w = [0.0, 0.0, 0.0, 0.0]
            w[k] = 1.0

            def grad_k(c, w=tuple(w)):
                return np.asarray(spec.reference(c.logits, c.targets, c.delta, {**opts, "weights": w},
                                                 c.extras).grad)

            out.append((label, grad_k))
    return out


def output_facts(kind, bad) -> List[str]:
    """Which outputs differ on the failing pairs: loss only, gradient only, positives' / negatives' gradient."""
    spec = kind.spec
    loss_bad = grad_bad = pos_bad = neg_bad = 0
    for c, o in bad:
        e = kind.reference(c)
        cmp = kind.compare(c, e, o)
        loss_bad += not cmp.loss_ok
        grad_bad += not cmp.grad_ok
        pos = positive_mask(c, spec)
        if pos is not None and not cmp.grad_ok:
            tol = kind.tolerance(c)
            eg = np.asarray(e.grad, dtype=np.float64) * o.grad_output
            err = np.abs(np.asarray(o.grad, dtype=np.float64) - eg) > tol.atol + tol.rtol * np.abs(eg)
            pos_bad += bool(np.any(err & pos))
            neg_bad += bool(np.any(err & ~pos))
    n = len(bad)
    facts = []
    if loss_bad and not grad_bad:
        facts.append(f"only the loss value differs (on {loss_bad} of {n} failing cases); the gradient agrees")
    elif grad_bad and not loss_bad:
        facts.append(f"only the gradient differs (on {grad_bad} of {n} failing cases); the loss value agrees")
    elif loss_bad or grad_bad:
        facts.append(f"the loss differs on {loss_bad} and the gradient on {grad_bad} of {n} failing cases")
    if grad_bad and (pos_bad or neg_bad):
        if pos_bad and not neg_bad:
            facts.append("only the positives' gradient differs (the negatives' agrees)")
        elif neg_bad and not pos_bad:
            facts.append("only the negatives' gradient differs (the positives' agrees)")
        else:
            facts.append(f"both the positives' ({pos_bad} cases) and the negatives' ({neg_bad} cases) gradients "
                         "differ")
    return facts

"""``backend="numba"``: orchestration of the CPU kernels in :mod:`._numba_kernels`."""

from __future__ import annotations

import os

import numpy as np

from .._inputs import RankingInput, normalizer, validate_ranking
from .._result import LossResult
from ..record import get_record
from . import _numba_kernels as K

__all__ = ["numba_ranking", "numba_loss", "PARALLEL_MIN_SIZE", "ILL_CONDITIONED", "ill_conditioned", "empty_result",
           "pack_result"]

#: The slot sums agree with the reference to about 1e-16 * max|s| / delta (relative), s running over
#: the logits that enter them.  A call with 0 < delta < ILL_CONDITIONED * max|s| could miss the
#: 1e-10 agreement, so the fast paths hand it to the reference instead (O(P (P + N)) time).
ILL_CONDITIONED = 2.0 ** -16


def ill_conditioned(p, delta, max_neg) -> bool:
    """True when delta is too small against the logits that enter the slot sums: the positives
    ``p`` (sorted) and the negatives in [p[0] - delta, max_neg] (lower ones are never summed)."""
    if not delta > 0.0:
        return False
    if delta < 1e-280:  # 1 / (2 delta) times a count or a logit sum could overflow
        return True
    scale = max(abs(float(p[0])) + delta, abs(float(p[-1])))
    if max_neg >= float(p[0]) - delta:  # (Python floats: -inf without a warning)
        scale = max(scale, abs(float(max_neg)))
    return delta < ILL_CONDITIONED * scale


def _parallel_min_size() -> int:
    try:
        return int(os.environ.get("RANKSPEC_NUMBA_PARALLEL_MIN_SIZE", "262144"))
    except ValueError:
        return 262144


#: inputs with at least this many logits use the multi-threaded O(N) passes (all numba threads);
#: environment variable ``RANKSPEC_NUMBA_PARALLEL_MIN_SIZE`` overrides it (0: always, a huge
#: value: never).  On 2 cores shared with other jobs the threads gained nothing in our runs.
PARALLEL_MIN_SIZE = _parallel_min_size()


def _threads(n: int, parallel) -> int:
    if parallel is None:
        parallel = n >= PARALLEL_MIN_SIZE
    if not parallel:
        return 1
    import numba

    return max(1, int(numba.get_num_threads()))


def empty_result(x: RankingInput) -> LossResult:
    """Zero positives: loss 0, zero gradient, zero terms (the record's term names)."""
    return LossResult(0.0, np.zeros(x.shape), {name: 0.0 for name in get_record(x.name).terms})


def pack_result(x: RankingInput, grad, rank_sum, sort_sum, P, Z, num_buckets=None) -> LossResult:
    rec = get_record(x.name)
    ranking = float(rank_sum / Z)
    terms = {"ranking": ranking}
    loss = ranking
    if rec.with_sort:
        sorting = float(sort_sum / Z)
        terms["sorting"] = sorting
        loss = ranking + sorting
    terms["num_positives"] = float(P)
    if rec.bucketed:
        terms["num_buckets"] = float(num_buckets)
    return LossResult(loss, grad, terms)


def numba_loss(name, logits, labels, delta, interpolated=False, *, self_rank, tie_value, normalization,
               threshold=True, tied_negatives="above", parallel=None) -> LossResult:
    """Loss ``name`` of the AP / RS family on the CPU kernels from the public arguments (validated by
    the record's validator first); the reference's result, also for ill-conditioned calls."""
    rec = get_record(name)
    x = validate_ranking(name, logits, labels, delta, labels_name=rec.labels_name, continuous=rec.continuous,
                         self_rank=self_rank, tie_value=tie_value, normalization=normalization,
                         interpolated=interpolated, threshold=threshold, tied_negatives=tied_negatives,
                         backend="numba")
    result = numba_ranking(x, parallel=parallel)
    return rec.reference(x.on_host()) if result is None else result


def numba_ranking(x: RankingInput, parallel=None):
    """One of the four losses on the CPU kernels; same result as the reference.

    Takes the validated input of :func:`~rankspec.refimpl._inputs.validate_ranking` (for
    ``backend="numba"``: float32 / float64 arrays read in place, their values checked by the first
    pass, which raises the validator's error through :meth:`RankingInput.check_values`).
    Time O(N log P + P log P) worst case (O(N + P log P) expected: the lookup
    table makes placing a negative O(1) on average), extra memory O(N + P):
    the gradient (8 bytes per logit) and the stored slot of every logit (2 bytes per logit
    below 2^15 slots, else 4), plus O(T P) for T threads' slot histograms.  Returns None
    for ill-conditioned calls (:func:`ill_conditioned`: delta below 2^-16 of the
    largest logit that enters the sums): the record then runs the reference.
    """
    rec = get_record(x.name)
    shape = x.shape
    s = np.ascontiguousarray(x.logits)
    t = np.ascontiguousarray(x.targets)
    nch = _threads(s.size, parallel)
    scan = K.scan_par if nch > 1 else K.scan_ser
    # room for the indices of up to 1/32 of the logits as positives (untouched pages cost nothing):
    # with no more positives than that, the scan also gathers them (no second pass)
    cap = min(-(-s.size // nch), max(4096, s.size // (32 * nch)))
    found = np.empty((nch, cap), np.int64)
    bad, npos, max_neg = scan(s, t, rec.continuous, nch, found)
    if bad:  # the first pass checks the values (the validator leaves them to it): raise the validator's error
        x.check_values()
        raise RuntimeError(  # pragma: no cover - the scan and the validator's value checks agree
            f"{x.name}: the kernels rejected a value the validator accepts; please report this")
    P = int(npos.sum())
    if P == 0:
        return empty_result(x)
    Z = normalizer(P, x.normalization)
    invZ = 1.0 / Z

    if int(npos.max()) <= cap:
        idx = np.concatenate([found[c, :npos[c]] for c in range(nch)]) if nch > 1 else found[0, :P].copy()
        pv, py = s[idx].astype(np.float64), t[idx].astype(np.float64)
    else:
        collect = K.collect_par if nch > 1 else K.collect_ser
        idx, pv, py = collect(s, t, npos, nch)
    del found
    # ties among positives need no stable order: tied positives have identical counts,
    # errors and gradients (the interpolated running max is the same in either order)
    order = np.argsort(pv)
    p = np.ascontiguousarray(pv[order])
    y = np.ascontiguousarray(py[order])
    if ill_conditioned(p, x.delta, max_neg):
        return None
    b = K.boundaries(p, x.delta)
    tb = K.make_table(b)
    nsl = 2 * b.size + 1 if x.exact else b.size + 1
    interp = x.interpolated

    if not rec.bucketed:
        # the slot of every element is stored by the histogram pass and read back by the gradient
        # pass (one table lookup per logit); both big arrays are allocated by NumPy, whose large
        # allocations use huge pages where the kernel allows (far fewer page faults than numba's)
        kslot = np.empty(s.size, K.slot_dtype(nsl))
        hist = K.hist_par if nch > 1 else K.hist_ser
        cnt, sm = hist(s, t, tb, x.exact, nsl, kslot, nch)
        A, B, gpos, rsum, ssum = K.positive_stage(p, y, rec.with_sort, cnt, sm, b, x.exact, x.delta, x.tie_value,
                                                  x.self_value, interp, max_neg, invZ)
        grad = np.empty(s.size)
        sc = float(K.sum_scale(float(b[0]), float(b[-1])))
        (K.grad_par if nch > 1 else K.grad_ser)(s, kslot, sc, A, B, grad, nch)
        del kslot
        grad[idx[order]] = gpos
        return pack_result(x, grad.reshape(shape), rsum, ssum, P, Z)

    # bucketed (BRL Alg. 2): buckets between consecutive positives, prototypes = mean logits
    # (computed as the reference's make_buckets does: an offset from the largest member, clamped)
    above = x.tied_negatives == "above"
    thr = float(p[0]) - x.delta if x.threshold else -np.inf
    pdist, cum = K.distinct(p)
    ptb = K.make_table(pdist)
    kidx = np.empty(s.size, np.int32 if p.size < 2**31 - 1 else np.int64)
    assign = K.bucket_assign_par if nch > 1 else K.bucket_assign_ser
    assign(s, t, ptb, cum, thr, above, kidx, nch)
    used, wts, proto, ok = K.bucket_prototypes(s, kidx, p.size + 1)
    if not ok:  # a bucket spans more than MAXF: the reference computes its mean in scaled units
        return None
    proto_max = float(proto.max()) if proto.size else -np.inf
    cnt, sm = K.weighted_hist(proto, wts, tb, x.exact, nsl)
    A, B, gpos, rsum, ssum = K.positive_stage(p, y, rec.with_sort, cnt, sm, b, x.exact, x.delta, x.tie_value,
                                              x.self_value, False, proto_max, invZ)
    v = np.zeros(p.size + 1)
    v[used] = K.slot_values(proto, tb, x.exact, A, B)
    bgrad = K.bucket_grad_par if nch > 1 else K.bucket_grad_ser
    grad = bgrad(kidx, v, np.empty(s.size), nch)
    grad[idx[order]] = gpos
    return pack_result(x, grad.reshape(shape), rsum, ssum, P, Z, num_buckets=used.size)

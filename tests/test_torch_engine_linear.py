"""The near-linear hot path of the torch engine (no sort of the negatives, no P x P term):
hand-computed cases, and agreement with the NumPy reference and with the fallback path."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rankspec.adapters.torch import _ranking
from rankspec.adapters.torch import functional as TF
from rankspec.refimpl import ap_loss, bucketed_rs_loss, rs_loss


def _run(fn, s, y, delta, **kw):
    x = torch.tensor(np.asarray(s, dtype=np.float64), requires_grad=True)
    loss = fn(x, torch.tensor(np.asarray(y, dtype=np.float64)), delta, engine="torch", **kw)
    loss.backward()
    return float(loss.detach()), x.grad.numpy()


def test_hand_computed_ap_step():
    # positives at 2 and 0, a negative at 1, delta = 0, self term 1, tie value 1:
    # positive 2 has no negative above (error 0); positive 0 has N_FP = 1, rank^+ = 1 + 1 = 2,
    # error 1 / 3.  Loss (0 + 1/3) / 2 = 1/6; the negative gains (1/2)(1/3) / 1, positive 0 loses 1/6.
    loss, grad = _run(TF.ap_loss, [2.0, 1.0, 0.0], [1, 0, 1], 0.0)
    assert loss == pytest.approx(1 / 6, abs=1e-15)
    assert grad == pytest.approx([0.0, 1 / 6, -1 / 6], abs=1e-15)


def test_hand_computed_rs_sorting():
    # two positives, logits 2 and 1, IoUs 0.4 and 0.9, delta = 0, no negatives (ranking error 0).
    # positive 1 (IoU 0.9): rank^+ = 1 + H(2 - 1) = 2, l_S = (0.1 + 0.6) / 2 = 0.35, target over IoU >= 0.9
    # (itself) 0.1 / 1: error 0.25.  Positive 2 (IoU 0.4): l_S = 0.6 / 1 = target, error 0.
    # Loss 0.25 / 2; positive 1 loses 0.125, which goes to positive 2 (its only missorted partner).
    loss, grad = _run(TF.rs_loss, [2.0, 1.0], [0.4, 0.9], 0.0)
    assert loss == pytest.approx(0.125, abs=1e-15)
    assert grad == pytest.approx([0.125, -0.125], abs=1e-15)


def test_hot_path_is_taken():
    x = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    assert _ranking._linear_ok(x, x, 0.5)[0]
    assert _ranking._linear_ok(x, x, 0.0)[0]
    assert not _ranking._linear_ok(x, x * 1e9, 1e-9)[0]  # tiny delta: the offset-tree fallback


@st.composite
def problems(draw):
    n = draw(st.integers(2, 60))
    grid = draw(st.sampled_from([0.25, 0.5, 1.0]))  # logits on a grid: many ties, values at +- delta
    s = np.array(draw(st.lists(st.integers(-8, 8), min_size=n, max_size=n)), dtype=np.float64) * grid
    pos = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    pos[draw(st.integers(0, n - 1))] = True
    iou = np.array(draw(st.lists(st.sampled_from([0.2, 0.5, 0.7, 1.0]), min_size=n, max_size=n)))
    delta = draw(st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.3]))
    return s, np.where(pos, iou, 0.0), delta


@settings(max_examples=60, deadline=None)
@given(problems())
def test_matches_reference(prob):
    s, t, delta = prob
    for fn, ref, y in ((TF.rs_loss, rs_loss, t), (TF.ap_loss, ap_loss, (t > 0) * 1.0),
                       (TF.bucketed_rs_loss, bucketed_rs_loss, t)):
        loss, grad = _run(fn, s, y, delta)
        r = ref(s, y, delta)
        assert loss == pytest.approx(r.loss, abs=1e-12)
        assert np.allclose(grad, r.grad, atol=1e-12, rtol=0)


@settings(max_examples=30, deadline=None)
@given(problems(), st.integers(1, 4), st.randoms(use_true_random=False))
def test_per_image_matches_fallback(prob, images, rnd):
    s, t, delta = prob
    ids = np.array([rnd.randrange(images) for _ in s])
    out = {}
    for linear in (True, False):
        old = _ranking.LINEAR
        _ranking.LINEAR = linear
        try:
            out[linear] = _run(TF.rs_loss, s, t, delta, scope="image", image_ids=torch.tensor(ids))
        finally:
            _ranking.LINEAR = old
    assert out[True][0] == pytest.approx(out[False][0], abs=1e-12)
    assert np.allclose(out[True][1], out[False][1], atol=1e-12, rtol=0)


def test_large_random_matches_reference():
    rng = np.random.default_rng(3)
    L, P = 3000, 300
    s = rng.normal(1.0, 1.0, L)
    t = np.zeros(L)
    idx = rng.choice(L, P, replace=False)
    s[idx] = rng.normal(-1.0, 1.0, P)
    t[idx] = 1.0 - rng.random(P)
    loss, grad = _run(TF.rs_loss, s, t, 0.5)
    r = rs_loss(s, t, 0.5)
    assert loss == pytest.approx(r.loss, abs=1e-12)
    assert np.allclose(grad, r.grad, atol=1e-13, rtol=0)


# ----------------------------------------------------------------------------- building blocks
# The hot path's pieces against direct (brute-force) computations on small inputs.

@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.randoms(use_true_random=False))
def test_wavelet_matrix_matches_brute_force(n, rnd):
    rank = list(range(n))
    rnd.shuffle(rank)
    cols = np.array([[rnd.uniform(-4, 4) for _ in range(n)] for _ in range(2)])
    Q = 7
    R = np.array([[rnd.randrange(n + 1) for _ in range(Q)] for _ in range(2)])
    pos = np.sort(np.array([[[rnd.randrange(n + 1) for _ in range(Q)] for _ in range(3)] for _ in range(2)]), axis=1)
    wm = _ranking._WaveletMatrix(torch.tensor(rank), max(1, n.bit_length()))
    bits, path, other = wm.walk(torch.tensor(R), torch.tensor(pos))
    rank = np.array(rank)
    for b, below in ((0, True), (1, False)):
        sums = wm.sums(torch.tensor(cols), bits[:, b], path[:, b], other[:, b], below).numpy()
        counts = wm.counts(bits[:, b], other[:, b], below).numpy()
        for q in range(Q):
            for k in range(2):  # range [pos[k], pos[k + 1]) of query q
                idx = np.arange(pos[b, k, q], pos[b, k + 1, q])
                sel = idx[rank[idx] < R[b, q]] if below else idx[rank[idx] >= R[b, q]]
                assert sums[:, k, q] == pytest.approx(cols[:, sel].sum(1), abs=1e-12)
                strict = sel if below else idx[rank[idx] > R[b, q]]  # counts: rank < R, or rank > R
                assert counts[k, q] == len(strict)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-30, 30), min_size=2, max_size=40, unique=True), st.sampled_from([0.125, 1.0, 1e-3]),
       st.lists(st.integers(-70, 70), min_size=1, max_size=50))
def test_grid_rank_matches_searchsorted(us, unit, qs):
    # values on a grid (ties between queries and values, crowded and empty cells); queries between
    # and on the values and beyond both ends
    u = torch.tensor(sorted(us), dtype=torch.float64) * unit
    x = torch.tensor(qs, dtype=torch.float64) * (unit / 2)
    grid = _ranking._GridRank(u)
    assert torch.equal(grid.halfrank(x), _ranking._halfrank(u, x))


def test_grid_rank_crowded_cells():
    # three values share the first cell (the table plus comparisons inside the cell) ...
    u = torch.tensor([0.0, 0.001, 0.002, 10.0], dtype=torch.float64)
    grid = _ranking._GridRank(u)
    assert grid.ok and grid.K == 3
    x = torch.tensor([-1.0, 0.0, 0.0005, 0.001, 0.0015, 0.002, 5.0, 10.0, 11.0], dtype=torch.float64)
    # #(u < x) + #(u <= x): 0, 1 (= 0.0), 2, 3, 4, 5, 6, 7 (= 10.0), 8
    assert grid.halfrank(x).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    # ... and eleven in one cell: beyond GRID_MAX_PER_CELL, the searchsorted fallback
    u = torch.tensor([i * 1e-3 for i in range(11)] + [1000.0], dtype=torch.float64)
    grid = _ranking._GridRank(u)
    assert not grid.ok
    assert grid.halfrank(torch.tensor([0.0045, float(u[5]), 2.0], dtype=torch.float64)).tolist() == [10, 11, 22]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-6, 6), min_size=1, max_size=30), st.integers(1, 3), st.sampled_from([0.0, 0.5, 1.0]),
       st.randoms(use_true_random=False))
def test_slots_place_the_positives(vals, images, delta, rnd):
    sp = torch.tensor(vals, dtype=torch.float64) * 0.25  # ties and values at +- delta of each other
    gp = torch.tensor([rnd.randrange(images) for _ in vals])
    G = int(gp.max()) + 1
    slots = _ranking._Slots(sp, gp, G, delta)
    # the slots of the positives are the slots their values get as queries
    assert torch.equal(slots.eq, slots.slot(sp, gp))
    if delta > 0:
        assert torch.equal(slots.lo, torch.minimum(slots.slot(sp - delta, gp), slots.eq))
        assert torch.equal(slots.hi, torch.maximum(slots.slot(sp + delta, gp), slots.eq + 1))
    # perm: stable (image, logit) order; before[eq_i]: the positives ahead of i's value in it
    key = [(int(g), float(v), i) for i, (v, g) in enumerate(zip(sp, gp))]
    assert slots.perm.tolist() == [i for _, _, i in sorted(key)]
    before = slots.before
    for i, (g, v, _) in enumerate(key):
        assert int(before[slots.eq[i]]) == sum(1 for h, w, _ in key if (h, w) < (g, v))


def test_prefix_along_rows():
    # dim=1 (the wavelet matrix's column-major sums) gives the same compensated prefix as dim=0;
    # 1e16 + 1 - 1e16 + 2: a plain cumsum loses the 1 (ends at 2), the compensated sum is 3
    x = torch.tensor([[1e16, 1.0, -1e16, 2.0], [0.5, 0.25, 0.125, 0.0625]], dtype=torch.float64)
    rows, cols = _ranking._Prefix(x, dim=1), _ranking._Prefix(x.t().contiguous())
    assert torch.equal(rows.head, cols.head.t()) and torch.equal(rows.tail, cols.tail.t())
    assert float(torch.cumsum(x[0], 0)[-1]) == 2.0
    lo, hi = torch.tensor([0, 2, 0]), torch.tensor([4, 4, 2])
    assert cols.range(lo, hi)[:, 0].tolist() == [3.0, -1e16 + 2.0, 1e16]  # -1e16 + 2 and 1e16 + 1: exact roundings
    assert cols.range(lo, hi)[:, 1].tolist() == [0.9375, 0.1875, 0.75]
    assert cols.between(torch.stack([lo, hi])).squeeze(0).tolist() == cols.range(lo, hi).tolist()


@pytest.mark.parametrize("delta", [0.0, 0.5])
def test_large_per_image_matches_fallback(delta):
    rng = np.random.default_rng(5)
    L, P = 4000, 400
    s = np.round(rng.normal(1.0, 1.0, L) * 64) / 64  # ties
    t = np.zeros(L)
    idx = rng.choice(L, P, replace=False)
    s[idx] = np.round(rng.normal(-1.0, 1.0, P) * 64) / 64
    t[idx] = np.ceil((1.0 - rng.random(P)) * 8) / 8  # IoUs in {1/8, ..., 1}: ties
    ids = torch.tensor(rng.integers(0, 4, L))
    for fn in (TF.rs_loss, TF.bucketed_rs_loss):
        out = {}
        for linear in (True, False):
            old = _ranking.LINEAR
            _ranking.LINEAR = linear
            try:
                out[linear] = _run(fn, s, t, delta, scope="image", image_ids=ids)
            finally:
                _ranking.LINEAR = old
        assert out[True][0] == pytest.approx(out[False][0], abs=1e-12)
        assert np.allclose(out[True][1], out[False][1], atol=1e-13, rtol=0)

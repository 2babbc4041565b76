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

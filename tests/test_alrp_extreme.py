"""aLRP Loss at extreme magnitudes: every backend finite, warning-free and equal to the reference."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from rankspec.refimpl.losses.alrp import alrp_loss

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

MAXF = float(np.finfo(np.float64).max)
F64 = dict(buffer_dtype="float64")
POOL = [MAXF, -MAXF, 1.7e308, -1.7e308, 1.69e308, 1e308, -1e308, 1e300, -1e300, 2.0 ** 960, 1.0, -1.0, 0.0,
        5e-324, -5e-324, 1e-300]


def _backends():
    from rankspec.refimpl.fast import cuda_available

    return ("numba", "cuda") if cuda_available() else ("numba",)


@st.composite
def extreme_inputs(draw):
    n = draw(st.integers(1, 10))
    value = st.one_of(st.sampled_from(POOL), st.floats(-MAXF, MAXF, allow_nan=False, allow_infinity=False))
    s = np.array(draw(st.lists(value, min_size=n, max_size=n)))
    if draw(st.booleans()):  # ties: repeat drawn values
        s = s[np.array(draw(st.lists(st.integers(0, n - 1), min_size=n, max_size=n)))]
    t = np.array(draw(st.lists(st.sampled_from([0.0, 1.0, 1.0, -1.0]), min_size=n, max_size=n)))
    P = int(np.count_nonzero(t == 1))
    e = np.array(draw(st.lists(st.one_of(st.floats(0, 1), st.sampled_from([0.0, 1.0, 1e30, 1e300])),
                               min_size=P, max_size=P)))
    delta = draw(st.sampled_from([0.0, 5e-324, 1e-300, 1.0, 1e308, MAXF]))
    return s, t, e, delta


def _close(a, b, scale):
    assert np.isfinite(b.loss) and np.all(np.isfinite(b.grad)) and np.all(np.isfinite(b.terms["rank"]))
    assert a.loss == pytest.approx(b.loss, abs=1e-10)
    np.testing.assert_allclose(a.grad, b.grad, rtol=1e-9, atol=1e-10 * scale)
    np.testing.assert_allclose(a.terms["rank"], b.terms["rank"], rtol=1e-12, atol=1e-10)
    assert a.terms["order"].tolist() == b.terms["order"].tolist()
    assert a.terms["loc_component"] == pytest.approx(b.terms["loc_component"], rel=1e-9, abs=1e-10 * scale)


@settings(max_examples=150, deadline=None)
@given(extreme_inputs())
def test_extreme_magnitudes_finite_and_equal_on_every_backend(inp):
    s, t, e, delta = inp
    a = alrp_loss(s, t, e, delta, **F64)
    assert np.isfinite(a.loss) and np.all(np.isfinite(a.grad)) and np.isfinite(a.terms["loc_component"])
    assert 0.0 <= a.loss <= 1.0
    # the identity update moves no mass: the gradient sums to ~0 (in units of the largest entry)
    assert abs(a.grad.sum()) <= 1e-9 * max(1.0, float(np.abs(a.grad).max(initial=0.0)))
    scale = max(1.0, float(e.max(initial=0.0)))
    for backend in _backends():
        _close(a, alrp_loss(s, t, e, delta, backend=backend, **F64), scale)


@settings(max_examples=60, deadline=None)
@given(extreme_inputs())
def test_float32_buffers_finite_or_clear_error(inp):
    s, t, e, delta = inp
    for backend in ("numpy",) + _backends():
        try:
            res = alrp_loss(s, t, e, delta, backend=backend)
        except ValueError as exc:  # only a gradient beyond float32, from e_loc beyond float32
            assert "regression_losses" in str(exc) and e.max() > 1e38
            continue
        assert np.isfinite(res.loss) and np.all(np.isfinite(res.grad)) and np.all(np.isfinite(res.terms["rank"]))


@pytest.mark.parametrize("backend", ["numpy", "numba", "cuda"])
def test_opposite_extremes_by_hand(backend):
    if backend == "cuda" and "cuda" not in _backends():
        pytest.skip("numba.cuda unavailable (set NUMBA_ENABLE_CUDASIM=1)")
    # positives a = MAXF, b = -MAXF, negative 0, delta = 1e308: differences are +-MAXF (exact) or +-2 MAXF
    # (overflow in float64; H saturates there as it does for the exact value).
    # H(x) = clip(x / 1e308 / 2 + 1/2, 0, 1): H(-MAXF) = 0 (x / delta = -1.798 < -1), H(MAXF) = 1
    # a: rank+ = 1 + H(b - a) = 1 + 0; N_FP = H(0 - MAXF) = 0 -> error 0
    # b: rank+ = 1 + H(a - b) = 2; N_FP = H(0 + MAXF) = 1 -> rank 3, error 1/3; loss (0 + 1/3) / 2 = 1/6
    # E(b) = (1 + H(a - b) e_a) / 3 = (1 + 0.5) / 3 = 0.5 -> grad_b = -0.25, negative 0.5 * 1 / 1 / 2 = 0.25
    res = alrp_loss([MAXF, -MAXF, 0.0], [1, 1, 0], [0.5, 0.25], 1e308, backend=backend, **F64)
    assert res.loss == pytest.approx(1 / 6, abs=1e-15)
    np.testing.assert_allclose(res.grad, [0.0, -0.25, 0.25], atol=1e-15)
    np.testing.assert_allclose(res.terms["rank"], [1.0, 3.0])


@pytest.mark.parametrize("backend", ["numpy", "numba", "cuda"])
@pytest.mark.parametrize("logit", [MAXF, -MAXF, 5e-324, 0.0])
@pytest.mark.parametrize("delta", [0.0, 5e-324, 1.0, MAXF])
def test_single_positive(backend, logit, delta):
    if backend == "cuda" and "cuda" not in _backends():
        pytest.skip("numba.cuda unavailable (set NUMBA_ENABLE_CUDASIM=1)")
    # one positive, no negative: rank = 1 (self term), N_FP = 0: loss 0, gradient 0, loc = e / 1
    res = alrp_loss([logit], [1], [0.75], delta, backend=backend, **F64)
    assert res.loss == 0.0 and res.grad.tolist() == [0.0]
    assert res.terms["rank"].tolist() == [1.0] and res.terms["loc_component"] == 0.75


def test_huge_localisation_errors_by_hand():
    # positives 1 (e = MAXF), 2 (e = MAXF), negative 0, delta = 0 (tie_value 1): both e_loc at the float64 limit.
    # p=1: rank+ = 1 + [2 > 1] = 2; N_FP = [0 > 1] = 0 -> error 0.  p=2: rank+ = 1, N_FP = 0.  loss 0, grad 0.
    # loc: descending (2, 1): cumsum e = (MAXF, 2 MAXF) / rank (1, 2) = (MAXF, MAXF), mean MAXF: finite although
    # the cumulative sum 2 MAXF is not (summed in units of a power of two).
    res = alrp_loss([1.0, 2.0, 0.0], [1, 1, 0], [MAXF, MAXF], 0.0, **F64)
    assert res.loss == 0.0 and not np.any(res.grad)
    assert res.terms["loc_component"] == MAXF
    with pytest.raises(ValueError, match="regression_losses.*float32"):
        # positive 1: rank+ = 1 + H(2 - 1) = 2, N_FP = H(0.5) = 0.75, E = (0.75 + 1 * MAXF) / 2.75: not a float32
        alrp_loss([1.0, 1.5, 2.0], [1, 0, 1], [1.0, MAXF], 1.0)

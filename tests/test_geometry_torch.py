"""The vectorised torch rotated IoU (rankspec.adapters.heads.rotated_iou) against the NumPy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from rankspec.adapters.heads import rotated_iou as T  # noqa: E402
from rankspec.refimpl.reference import geometry as R  # noqa: E402

coord = st.floats(-6, 6, allow_nan=False)
size = st.one_of(st.just(0.0), st.floats(0.05, 6, allow_nan=False))
yaw = st.floats(-math.pi, math.pi, allow_nan=False)


@st.composite
def box_sets(draw, width):
    n = draw(st.integers(1, 6))
    m = draw(st.integers(1, 6))

    def one():
        if width == 5:
            return [draw(coord), draw(coord), draw(size), draw(size), draw(yaw)]
        return [draw(coord), draw(coord), draw(st.floats(-2, 2)), draw(size), draw(size), draw(size), draw(yaw)]

    a = np.array([one() for _ in range(n)])
    b = np.array([one() for _ in range(m)])
    # mix in identical, nested and quarter-turned copies of a's boxes
    k = draw(st.integers(0, min(n, m)))
    for i in range(k):
        kind = draw(st.sampled_from(["same", "nested", "quarter"]))
        b[i] = a[i]
        s = slice(2, 4) if width == 5 else slice(3, 5)
        if kind == "nested":
            b[i, s] = a[i, s] * draw(st.floats(0.1, 1.0))
        elif kind == "quarter":
            b[i, s] = a[i, s][::-1]
            b[i, -1] = a[i, -1] + math.pi / 2
    return a, b


@settings(max_examples=50)
@given(box_sets(5))
def test_torch_bev_iou_matches_reference_float64(ab):
    a, b = ab
    got = T.rotated_bev_iou(torch.tensor(a), torch.tensor(b)).numpy()
    np.testing.assert_allclose(got, R.rotated_bev_iou(a, b), atol=1e-9, rtol=0)
    inter = T.rotated_bev_intersection(torch.tensor(a), torch.tensor(b)).numpy()
    scale = max(1.0, np.abs(a).max(), np.abs(b).max()) ** 2
    np.testing.assert_allclose(inter, R.rotated_bev_intersection(a, b), atol=1e-9 * scale, rtol=0)


@settings(max_examples=30)
@given(box_sets(5))
def test_torch_bev_iou_float32_is_close(ab):
    a, b = ab
    got = T.rotated_bev_iou(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)).numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, R.rotated_bev_iou(a, b), atol=2e-5, rtol=0)


@settings(max_examples=40)
@given(box_sets(7), st.sampled_from(["center", "bottom"]))
def test_torch_3d_iou_matches_reference(ab, z_origin):
    a, b = ab
    got = T.rotated_iou_3d(torch.tensor(a), torch.tensor(b), z_origin=z_origin).numpy()
    np.testing.assert_allclose(got, R.rotated_iou_3d(a, b, z_origin=z_origin), atol=1e-9, rtol=0)
    n = min(len(a), len(b))
    got_al = T.rotated_iou_3d(torch.tensor(a[:n]), torch.tensor(b[:n]), aligned=True, z_origin=z_origin).numpy()
    np.testing.assert_allclose(got_al, R.rotated_iou_3d(a[:n], b[:n], aligned=True, z_origin=z_origin), atol=1e-9)


def test_chunking_and_prefilter_do_not_change_results():
    rng = np.random.default_rng(3)
    a = np.c_[rng.uniform(0, 30, (300, 2)), rng.uniform(1, 5, (300, 2)), rng.uniform(-3, 3, 300)]
    b = a[rng.choice(300, 25)] + np.c_[rng.normal(0, 0.5, (25, 2)), np.zeros((25, 2)), rng.normal(0, 0.3, 25)]
    ta, tb = torch.tensor(a), torch.tensor(b)
    full = T.rotated_bev_iou(ta, tb).numpy()
    np.testing.assert_allclose(T.rotated_bev_iou(ta, tb, chunk=7).numpy(), full, atol=0)
    ref = R.rotated_bev_iou(a[:60], b)
    np.testing.assert_allclose(full[:60], ref, atol=1e-9)
    assert (full > 0).sum() > 20  # the case is not trivially all zero


def test_gradient_of_rotated_iou_matches_finite_differences():
    # generic (non-touching) boxes: the IoU is smooth there
    a = torch.tensor([[0.1, 0.2, 3.0, 1.5, 0.3], [1.0, -0.5, 2.0, 2.5, -0.7]], dtype=torch.float64,
                     requires_grad=True)
    b = torch.tensor([[0.6, 0.0, 2.5, 1.8, 0.9], [0.4, -0.2, 2.2, 1.1, 0.2]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: T.rotated_bev_iou(x, b, aligned=True), (a,), eps=1e-6, atol=1e-6)


def test_nearest_bev_iou_snaps_to_the_nearest_axis():
    # a 4 x 2 box at yaw 80 degrees is treated as a 2 x 4 axis-aligned box
    a = torch.tensor([[0.0, 0.0, 4.0, 2.0, math.radians(80)]], dtype=torch.float64)
    b = torch.tensor([[0.0, 0.0, 2.0, 4.0, 0.0], [0.0, 0.0, 4.0, 2.0, 0.0]], dtype=torch.float64)
    got = T.nearest_bev_iou(a, b)[0]
    assert got[0] == pytest.approx(1.0)
    assert got[1] == pytest.approx(4.0 / 12.0)  # 2 x 2 overlap of two 8 m^2 boxes


def test_torch_bad_input():
    ok = torch.zeros(1, 5)
    with pytest.raises(ValueError, match="boxes1.*negative size"):
        T.rotated_bev_iou(torch.tensor([[0.0, 0.0, -1.0, 1.0, 0.0]]), ok)
    with pytest.raises(ValueError, match="boxes2 must have shape"):
        T.rotated_bev_iou(ok, torch.zeros(1, 4))
    with pytest.raises(TypeError, match="boxes1 must be a torch.Tensor"):
        T.rotated_bev_iou(np.zeros((1, 5)), ok)
    with pytest.raises(TypeError, match="dtype"):
        T.rotated_bev_iou(ok, ok.double())
    with pytest.raises(ValueError, match="NaN"):
        T.rotated_iou_3d(torch.full((1, 7), float("nan")), torch.zeros(1, 7))

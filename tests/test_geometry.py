"""Rotated BEV / 3D IoU: the NumPy reference against shapely and hand-computed cases, and the
vectorised torch version against the reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankspec.refimpl.reference.geometry import (clip_convex_polygon, polygon_area, rotated_bev_intersection,
                                                 rotated_bev_iou, rotated_box_corners, rotated_iou_3d)
from rankspec.refimpl.registry import lookup

shapely = pytest.importorskip("shapely")
from shapely.geometry import Polygon  # noqa: E402

coord = st.floats(-6, 6, allow_nan=False, allow_infinity=False)
size = st.one_of(st.just(0.0), st.floats(0.05, 6, allow_nan=False))
yaw = st.floats(-math.pi, math.pi, allow_nan=False)
bev_box = st.tuples(coord, coord, size, size, yaw).map(lambda t: np.array(t, dtype=np.float64))


def _shapely_iou(a: np.ndarray, b: np.ndarray):
    """Intersection area and IoU from shapely (GEOS) for two BEV boxes; IoU 0 for a zero union."""
    pa, pb = Polygon(rotated_box_corners(a)[0]), Polygon(rotated_box_corners(b)[0])
    inter = pa.intersection(pb).area if (pa.area > 0 and pb.area > 0) else 0.0
    union = pa.area + pb.area - inter
    return inter, (inter / union if union > 0 else 0.0)


@st.composite
def related_pairs(draw):
    """Two boxes in a special relation: identical, nested, touching, rotated copy, degenerate, or random."""
    a = draw(bev_box.filter(lambda b: b[2] > 0.1 and b[3] > 0.1))
    kind = draw(st.sampled_from(["identical", "nested", "touching", "quarter-turn", "half-turn", "degenerate",
                                 "random"]))
    b = a.copy()
    if kind == "nested":
        f = draw(st.floats(0.05, 1.0))
        b[2:4] = a[2:4] * f
    elif kind == "touching":  # shifted along the heading by exactly the mean length: they share an edge segment
        other = draw(st.floats(0.1, 6))
        shift = (a[2] + other) / 2
        b[0] += shift * math.cos(a[4])
        b[1] += shift * math.sin(a[4])
        b[2] = other
    elif kind == "quarter-turn":  # the same rectangle described with swapped sizes and yaw + pi/2
        b[2], b[3] = a[3], a[2]
        b[4] = a[4] + math.pi / 2
    elif kind == "half-turn":
        b[4] = a[4] + math.pi
    elif kind == "degenerate":
        b[draw(st.sampled_from([2, 3]))] = 0.0
    elif kind == "random":
        b = draw(bev_box)
    return kind, a, b


# --------------------------------------------------------------------------------------------
# reference vs shapely
# --------------------------------------------------------------------------------------------

@settings(max_examples=60)
@given(bev_box, bev_box)
def test_reference_matches_shapely_on_random_boxes(a, b):
    inter = rotated_bev_intersection(a[None], b[None])[0, 0]
    iou = rotated_bev_iou(a[None], b[None])[0, 0]
    s_inter, s_iou = _shapely_iou(a, b)
    scale = max(1.0, np.abs(a).max(), np.abs(b).max()) ** 2
    assert abs(inter - s_inter) <= 1e-9 * scale
    assert abs(iou - s_iou) <= 1e-9
    assert 0.0 <= iou <= 1.0


@settings(max_examples=60)
@given(related_pairs())
def test_reference_matches_shapely_on_touching_nested_identical_degenerate(pair):
    kind, a, b = pair
    iou = rotated_bev_iou(a[None], b[None])[0, 0]
    _, s_iou = _shapely_iou(a, b)
    assert abs(iou - s_iou) <= 1e-9, kind
    # and the value each relation implies
    if kind in ("identical", "quarter-turn", "half-turn"):
        assert iou == pytest.approx(1.0, abs=1e-9)
    elif kind == "nested":
        assert iou == pytest.approx((b[2] * b[3]) / (a[2] * a[3]), abs=1e-9)
    elif kind in ("touching", "degenerate"):
        assert iou == pytest.approx(0.0, abs=1e-9)


@settings(max_examples=40)
@given(bev_box, bev_box, coord, coord, yaw)
def test_iou_is_symmetric_and_invariant_under_rigid_motions(a, b, tx, ty, rot):
    iou = rotated_bev_iou(a[None], b[None])[0, 0]
    assert rotated_bev_iou(b[None], a[None])[0, 0] == pytest.approx(iou, abs=1e-9)
    c, s = math.cos(rot), math.sin(rot)

    def move(x):
        y = x.copy()
        y[0], y[1] = c * x[0] - s * x[1] + tx, s * x[0] + c * x[1] + ty
        y[4] = x[4] + rot
        return y

    assert rotated_bev_iou(move(a)[None], move(b)[None])[0, 0] == pytest.approx(iou, abs=1e-9)


# --------------------------------------------------------------------------------------------
# hand-computed cases
# --------------------------------------------------------------------------------------------

def test_axis_aligned_overlap_by_hand():
    # two 2 x 2 squares, centres 1 apart along x: intersection 1 x 2 = 2, union 4 + 4 - 2 = 6
    a = np.array([[0.0, 0.0, 2.0, 2.0, 0.0]])
    b = np.array([[1.0, 0.0, 2.0, 2.0, 0.0]])
    assert rotated_bev_intersection(a, b)[0, 0] == pytest.approx(2.0, abs=1e-12)
    assert rotated_bev_iou(a, b)[0, 0] == pytest.approx(2.0 / 6.0, abs=1e-12)


def test_square_against_its_45_degree_rotation_by_hand():
    # the intersection is a regular octagon of inradius a/2: area 8 (a/2)^2 tan(pi/8) = 2 a^2 (sqrt2 - 1);
    # IoU = 2(sqrt2 - 1) / (2 - 2(sqrt2 - 1)) = 1 / sqrt2
    a = 3.0
    b1 = np.array([[0.5, -0.25, a, a, 0.3]])
    b2 = np.array([[0.5, -0.25, a, a, 0.3 + math.pi / 4]])
    assert rotated_bev_intersection(b1, b2)[0, 0] == pytest.approx(2 * a * a * (math.sqrt(2) - 1), abs=1e-12)
    assert rotated_bev_iou(b1, b2)[0, 0] == pytest.approx(1 / math.sqrt(2), abs=1e-12)


def test_3d_iou_by_hand_and_z_origins():
    # same BEV footprint (4 x 2), heights 2, centres 1 apart in z: overlap 1 -> I = 8, union 16 + 16 - 8 = 24
    a = np.array([[0.0, 0.0, 0.0, 4.0, 2.0, 2.0, 0.7]])
    b = np.array([[0.0, 0.0, 1.0, 4.0, 2.0, 2.0, 0.7]])
    assert rotated_iou_3d(a, b)[0, 0] == pytest.approx(8 / 24, abs=1e-12)
    # bottom-centred z: move both to their bottoms, same IoU with z_origin="bottom"
    ab, bb = a.copy(), b.copy()
    ab[:, 2] -= 1.0
    bb[:, 2] -= 1.0
    assert rotated_iou_3d(ab, bb, z_origin="bottom")[0, 0] == pytest.approx(8 / 24, abs=1e-12)
    # boxes stacked exactly on top of each other touch: IoU 0
    c = np.array([[0.0, 0.0, 2.0, 4.0, 2.0, 2.0, 0.7]])
    assert rotated_iou_3d(a, c)[0, 0] == 0.0


def test_clipping_and_area_primitives():
    square = np.array([[0, 0], [2, 0], [2, 2], [0, 2]], dtype=float)  # counter-clockwise
    shifted = square + [1.0, 1.0]
    clipped = clip_convex_polygon(square, shifted)
    assert polygon_area(clipped) == pytest.approx(1.0)
    assert polygon_area(clip_convex_polygon(square, square + [5.0, 0.0])) == 0.0
    assert polygon_area(np.zeros((2, 2))) == 0.0
    corners = rotated_box_corners(np.array([1.0, 2.0, 4.0, 2.0, math.pi / 2]))
    # heading along +y: front-left corner is (1 - 1, 2 + 2)
    assert corners[0, 0] == pytest.approx([0.0, 4.0])
    assert polygon_area(corners[0]) == pytest.approx(8.0)


def test_aligned_and_empty_inputs():
    rng = np.random.default_rng(0)
    a = np.c_[rng.uniform(-2, 2, (5, 2)), rng.uniform(0.5, 3, (5, 2)), rng.uniform(-3, 3, 5)]
    b = np.c_[rng.uniform(-2, 2, (5, 2)), rng.uniform(0.5, 3, (5, 2)), rng.uniform(-3, 3, 5)]
    full = rotated_bev_iou(a, b)
    np.testing.assert_allclose(rotated_bev_iou(a, b, aligned=True), np.diag(full), atol=1e-12)
    assert rotated_bev_iou(a, np.zeros((0, 5))).shape == (5, 0)
    assert rotated_iou_3d(np.zeros((0, 7)), np.zeros((3, 7))).shape == (0, 3)


def test_bad_input_is_rejected_with_the_argument_named():
    ok = np.array([[0.0, 0.0, 1.0, 1.0, 0.0]])
    with pytest.raises(ValueError, match="boxes1.*negative size"):
        rotated_bev_iou(np.array([[0.0, 0.0, -1.0, 1.0, 0.0]]), ok)
    with pytest.raises(ValueError, match="boxes2 must have shape"):
        rotated_bev_iou(ok, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="boxes1 contains 1 NaN"):
        rotated_bev_iou(np.array([[np.nan, 0.0, 1.0, 1.0, 0.0]]), ok)
    with pytest.raises(ValueError, match="aligned=True needs as many"):
        rotated_bev_iou(ok, np.vstack([ok, ok]), aligned=True)
    with pytest.raises(ValueError, match="z_origin"):
        rotated_iou_3d(np.zeros((1, 7)), np.zeros((1, 7)), z_origin="top")


def test_geometry_functions_are_registered():
    for f in (rotated_bev_iou, rotated_iou_3d, rotated_bev_intersection, rotated_box_corners, clip_convex_polygon,
              polygon_area):
        e = lookup(f)
        assert e.family == "geometry" and e.kind == "utility"
        assert e.refs[0][0] == "RankDet"


def test_aligned_must_be_a_bool():
    b = [[0.0, 0.0, 1.0, 1.0, 0.0]]
    with pytest.raises(TypeError, match="aligned"):
        rotated_bev_iou(b, b, aligned="no")

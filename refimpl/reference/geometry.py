r"""Rotated boxes: BEV polygons, rotated BEV IoU and rotated 3D IoU (RankDet Sec. 4.4).

RankDetNet replaces the focal loss of the SA-SSD point-cloud detector by its
ranking losses (RankDet Sec. 4.4).  That detector's anchors are matched to the
ground truth by the IoU of rotated boxes seen from above (bird's eye view,
BEV), and the IoU-guided ranking loss (RankDet Eq. 6) and the continuous
labels of Rank & Sort need the IoU of a predicted 3D box with its ground
truth.  This module is the readable float64 reference of those overlaps; the
vectorised PyTorch version used by the 3D head
(:mod:`rankspec.adapters.heads.rotated_iou`) is tested against it, and it is
tested against ``shapely``.

Box layout and conventions
--------------------------
* A **BEV box** is ``(x, y, dx, dy, yaw)``: centre ``(x, y)``, extent ``dx``
  along the box's heading and ``dy`` across it, and ``yaw`` the angle of the
  heading from the +x axis, counter-clockwise (right-handed, z up).  This is
  the LiDAR convention of OpenPCDet and of mmdet3d >= 1.0
  (``LiDARInstance3DBoxes.bev``); see ``docs/heads.rst`` for the mapping from
  other layouts.
* A **3D box** is ``(x, y, z, dx, dy, dz, yaw)`` with ``z`` the gravity
  centre (``z_origin="center"``, OpenPCDet) or the bottom centre
  (``z_origin="bottom"``, mmdet3d's LiDAR boxes).
* Sizes must be ``>= 0``.  A box with zero area (a segment or a point) is
  allowed: its overlap with anything is 0, and the IoU of two boxes whose union
  is 0 is defined as 0 (as ``box_iou`` does for 2D boxes).

Algorithm
---------
The intersection of two convex polygons is convex; it is obtained by clipping
one polygon by each edge of the other (Sutherland-Hodgman), and its area by
the shoelace formula.  Intersection points are computed from the signed
distances of an edge's two end points to the clipping line,
:math:`t = d_0 / (d_0 - d_1)` with :math:`d_0 \ge 0 > d_1`, so the parameter
is always in [0, 1) and no division by a near-zero cross product occurs
(nearly parallel and coincident edges are handled without tolerances).
"""

from __future__ import annotations

import numpy as np

from .._validate import as_float_array, check_bool, check_choice
from ..conventions import Convention, register_conventions
from ..registry import implements

__all__ = [
    "Z_ORIGINS",
    "rotated_box_corners",
    "clip_convex_polygon",
    "polygon_area",
    "rotated_bev_intersection",
    "rotated_bev_iou",
    "rotated_iou_3d",
]

Z_ORIGINS = ("center", "bottom")


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------

def _check_rotated_boxes(boxes, name: str, width: int) -> np.ndarray:
    """``boxes`` as a float64 ``(N, width)`` array with non-negative sizes, or raise (N may be 0)."""
    b = as_float_array(boxes, name, allow_empty=True)
    if b.ndim == 1 and b.size == width:
        b = b.reshape(1, width)
    layout = "(x, y, dx, dy, yaw)" if width == 5 else "(x, y, z, dx, dy, dz, yaw)"
    if b.ndim != 2 or b.shape[1] != width:
        raise ValueError(f"{name} must have shape (N, {width}) with columns {layout}, got shape {b.shape}")
    sizes = b[:, 2:4] if width == 5 else b[:, 3:6]
    bad = np.any(sizes < 0, axis=1)
    if np.any(bad):
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}[{k}] = {b[k].tolist()} has a negative size; box sizes must be >= 0")
    return b


def _pairs(b1: np.ndarray, b2: np.ndarray, aligned: bool, name1: str, name2: str):
    """Index pairs (i, j): all N x M pairs, or the N aligned pairs (``aligned`` must be a bool)."""
    if check_bool(aligned, "aligned"):
        if b1.shape[0] != b2.shape[0]:
            raise ValueError(f"aligned=True needs as many {name1} as {name2}, got {b1.shape[0]} and {b2.shape[0]}")
        idx = np.arange(b1.shape[0])
        return idx, idx, (b1.shape[0],)
    i, j = np.meshgrid(np.arange(b1.shape[0]), np.arange(b2.shape[0]), indexing="ij")
    return i.ravel(), j.ravel(), (b1.shape[0], b2.shape[0])


# --------------------------------------------------------------------------------------------
# polygons
# --------------------------------------------------------------------------------------------

@implements(("RankDet", "Sec. 4.4 (rotated BEV boxes of the SA-SSD head)"),
            name="Corners of rotated BEV boxes (x, y, dx, dy, yaw), counter-clockwise", family="geometry",
            kind="utility")
def rotated_box_corners(boxes) -> np.ndarray:
    r"""The four corners of each BEV box, counter-clockwise.

    For a box ``(x, y, dx, dy, yaw)`` the corners are
    :math:`(x, y) + R(\mathrm{yaw})\,(\pm dx/2, \pm dy/2)` with
    :math:`R(\theta) = \begin{pmatrix}\cos\theta & -\sin\theta\\ \sin\theta & \cos\theta\end{pmatrix}`,
    in the order front-left, rear-left, rear-right, front-right
    (local ``(+,+), (-,+), (-,-), (+,-)``), which is counter-clockwise.

    Parameters
    ----------
    boxes:
        ``(N, 5)`` array ``(x, y, dx, dy, yaw)`` (one box may be given as a
        length-5 vector).

    Returns
    -------
    ndarray
        ``(N, 4, 2)`` float64 corner coordinates.  Time and memory O(N).
    """
    b = _check_rotated_boxes(boxes, "boxes", 5)
    local = np.array([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])  # counter-clockwise
    half = local[None, :, :] * b[:, None, 2:4]  # (N, 4, 2): (+-dx/2, +-dy/2)
    c, s = np.cos(b[:, 4])[:, None], np.sin(b[:, 4])[:, None]
    x = b[:, 0:1] + c * half[..., 0] - s * half[..., 1]
    y = b[:, 1:2] + s * half[..., 0] + c * half[..., 1]
    return np.stack([x, y], axis=-1)


@implements(("RankDet", "Sec. 4.4 (rotated BEV IoU of SA-SSD's anchor assignment)"),
            name="Sutherland-Hodgman clipping of a polygon by a convex polygon", family="geometry",
            kind="utility")
def clip_convex_polygon(subject, clip) -> np.ndarray:
    r"""The part of polygon ``subject`` inside the convex polygon ``clip``.

    Sutherland-Hodgman: for each edge :math:`a \to b` of ``clip`` (counter-
    clockwise), keep the points on its left, :math:`d(p) = \mathrm{cross}(b - a, p - a) \ge 0`,
    and where an edge of the current polygon crosses the line add the crossing
    :math:`p_0 + t (p_1 - p_0)`, :math:`t = d(p_0) / (d(p_0) - d(p_1))`.
    Points on the clipping line count as inside, so touching polygons give a
    degenerate (zero-area) result rather than an empty one.

    Parameters
    ----------
    subject:
        ``(K, 2)`` vertices of a polygon (counter-clockwise for a positive area).
    clip:
        ``(L, 2)`` vertices of a convex polygon, counter-clockwise.  Zero-length
        edges are skipped; a clip polygon without any edge of non-zero length
        (a single point) bounds no area and gives an empty result.

    Returns
    -------
    ndarray
        ``(K', 2)`` vertices of the clipped polygon, possibly empty
        (``(0, 2)``).  Time O(K L + L^2), memory O(K + L).
    """
    poly = [np.asarray(p, dtype=np.float64) for p in np.asarray(subject, dtype=np.float64)]
    clip = np.asarray(clip, dtype=np.float64)
    if not np.any(np.roll(clip, -1, axis=0) - clip):  # all vertices equal: a point has no interior
        return np.zeros((0, 2))
    for k in range(len(clip)):
        a, b = clip[k], clip[(k + 1) % len(clip)]
        edge = b - a
        if not np.any(edge):  # a zero-length edge (degenerate clip box) defines no half-plane
            continue
        if not poly:
            break
        dist = [edge[0] * (p[1] - a[1]) - edge[1] * (p[0] - a[0]) for p in poly]  # cross(b - a, p - a)
        out = []
        for m in range(len(poly)):
            p0, p1 = poly[m], poly[(m + 1) % len(poly)]
            d0, d1 = dist[m], dist[(m + 1) % len(poly)]
            if d0 >= 0:
                out.append(p0)
            if (d0 >= 0) != (d1 >= 0):  # the edge p0 -> p1 crosses the line: add the crossing
                t = d0 / (d0 - d1)
                out.append(p0 + t * (p1 - p0))
        poly = out
    return np.array(poly, dtype=np.float64).reshape(-1, 2)


@implements(("RankDet", "Sec. 4.4"), name="Polygon area by the shoelace formula", family="geometry",
            kind="utility")
def polygon_area(polygon) -> float:
    r"""Area :math:`\tfrac12\,\lvert\sum_k x_k y_{k+1} - x_{k+1} y_k\rvert` of a simple polygon.

    ``polygon`` is a ``(K, 2)`` array of vertices in order; fewer than three
    vertices have area 0.  Time O(K).
    """
    p = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    if len(p) < 3:
        return 0.0
    x, y = p[:, 0], p[:, 1]
    return float(0.5 * abs(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)))


# --------------------------------------------------------------------------------------------
# IoU
# --------------------------------------------------------------------------------------------

@implements(("RankDet", "Sec. 4.4 (BEV overlap of rotated boxes)"),
            name="Intersection area of rotated BEV boxes (convex polygon clipping)", family="geometry",
            kind="utility")
def rotated_bev_intersection(boxes1, boxes2, *, aligned: bool = False) -> np.ndarray:
    """Area of the intersection of rotated BEV boxes ``(x, y, dx, dy, yaw)``.

    Clips the corners of each box of ``boxes1`` by those of a box of
    ``boxes2`` (:func:`clip_convex_polygon`) and measures the result
    (:func:`polygon_area`).  A box of zero area overlaps nothing (0).

    Returns ``(N, M)`` areas (``aligned=False``) or ``(N,)`` for row-aligned
    pairs.  Time O(N M), memory O(N M).
    """
    b1 = _check_rotated_boxes(boxes1, "boxes1", 5)
    b2 = _check_rotated_boxes(boxes2, "boxes2", 5)
    i, j, shape = _pairs(b1, b2, aligned, "boxes1", "boxes2")
    c1 = rotated_box_corners(b1) if len(b1) else np.zeros((0, 4, 2))
    c2 = rotated_box_corners(b2) if len(b2) else np.zeros((0, 4, 2))
    out = np.zeros(len(i))
    has_area1 = b1[:, 2] * b1[:, 3] > 0
    has_area2 = b2[:, 2] * b2[:, 3] > 0
    for k in range(len(i)):
        if has_area1[i[k]] and has_area2[j[k]]:
            out[k] = polygon_area(clip_convex_polygon(c1[i[k]], c2[j[k]]))
    return out.reshape(shape)


@implements(("RankDet", "Sec. 4.4 (anchor assignment by rotated BEV IoU)"),
            name="IoU of rotated BEV boxes (x, y, dx, dy, yaw)", family="geometry", kind="utility")
def rotated_bev_iou(boxes1, boxes2, *, aligned: bool = False) -> np.ndarray:
    r"""IoU of rotated BEV boxes: :math:`I / (A_1 + A_2 - I)`.

    Parameters
    ----------
    boxes1, boxes2:
        ``(N, 5)`` and ``(M, 5)`` arrays ``(x, y, dx, dy, yaw)``; sizes >= 0.
    aligned:
        ``False``: all pairs, ``(N, M)``; ``True``: row i with row i, ``(N,)``.

    Returns
    -------
    ndarray
        IoUs in [0, 1] (clipped there against rounding); 0 where the union
        area is 0 (two zero-area boxes).  Time and memory O(N M).
    """
    aligned = check_bool(aligned, "aligned")
    b1 = _check_rotated_boxes(boxes1, "boxes1", 5)
    b2 = _check_rotated_boxes(boxes2, "boxes2", 5)
    inter = rotated_bev_intersection(b1, b2, aligned=aligned)
    area1 = b1[:, 2] * b1[:, 3]
    area2 = b2[:, 2] * b2[:, 3]
    union = (area1 + area2 - inter) if aligned else (area1[:, None] + area2[None, :] - inter)
    iou = np.zeros(inter.shape)
    np.divide(inter, union, out=iou, where=union > 0)
    return np.clip(iou, 0.0, 1.0)


@implements(("RankDet", "Sec. 4.4 (3D IoU of predicted and ground-truth boxes)"),
            name="IoU of rotated 3D boxes: BEV intersection x height overlap", family="geometry",
            kind="utility")
def rotated_iou_3d(boxes1, boxes2, *, aligned: bool = False, z_origin: str = "center") -> np.ndarray:
    r"""IoU of rotated 3D boxes ``(x, y, z, dx, dy, dz, yaw)`` (yaw about the z axis).

    .. math::

        I = I_{BEV} \cdot \max\big(0, \min(z^{top}_1, z^{top}_2) - \max(z^{bot}_1, z^{bot}_2)\big),
        \qquad \mathrm{IoU} = \frac{I}{dx_1 dy_1 dz_1 + dx_2 dy_2 dz_2 - I}

    with :math:`I_{BEV}` from :func:`rotated_bev_intersection`.

    Parameters
    ----------
    boxes1, boxes2:
        ``(N, 7)`` and ``(M, 7)`` arrays; sizes >= 0.
    aligned:
        ``False``: all pairs ``(N, M)``; ``True``: row-aligned ``(N,)``.
    z_origin:
        ``"center"``: ``z`` is the gravity centre (OpenPCDet, and this
        package's heads); ``"bottom"``: ``z`` is the bottom face (mmdet3d's
        ``LiDARInstance3DBoxes``).

    Returns
    -------
    ndarray
        IoUs in [0, 1]; 0 where the union volume is 0.  Time and memory O(N M).
    """
    aligned = check_bool(aligned, "aligned")
    check_choice(z_origin, "z_origin", Z_ORIGINS)
    b1 = _check_rotated_boxes(boxes1, "boxes1", 7)
    b2 = _check_rotated_boxes(boxes2, "boxes2", 7)
    bev = [0, 1, 3, 4, 6]
    inter_bev = rotated_bev_intersection(b1[:, bev], b2[:, bev], aligned=aligned)
    shift = 0.5 if z_origin == "center" else 0.0  # bottom = z - shift * dz
    bot1, bot2 = b1[:, 2] - shift * b1[:, 5], b2[:, 2] - shift * b2[:, 5]
    top1, top2 = bot1 + b1[:, 5], bot2 + b2[:, 5]
    vol1 = b1[:, 3] * b1[:, 4] * b1[:, 5]
    vol2 = b2[:, 3] * b2[:, 4] * b2[:, 5]
    if aligned:
        overlap_h = np.maximum(np.minimum(top1, top2) - np.maximum(bot1, bot2), 0.0)
        union_base = vol1 + vol2
    else:
        overlap_h = np.maximum(np.minimum(top1[:, None], top2[None, :]) - np.maximum(bot1[:, None], bot2[None, :]),
                               0.0)
        union_base = vol1[:, None] + vol2[None, :]
    inter = inter_bev * overlap_h
    union = union_base - inter
    iou = np.zeros(inter.shape)
    np.divide(inter, union, out=iou, where=union > 0)
    return np.clip(iou, 0.0, 1.0)


register_conventions(
    Convention(
        "z_origin", "Height origin of a 3D box", ("rotated_iou_3d",), "center", Z_ORIGINS,
        "'center': z is the box's gravity centre; 'bottom': z is the centre of its bottom face (z_bottom = z, "
        "z_top = z + dz).",
        "OpenPCDet stores gravity centres; mmdet3d's LiDARInstance3DBoxes store bottom centres (origin "
        "(0.5, 0.5, 0)) and convert with .gravity_center. SA-SSD (RankDet Sec. 4.4) is built on mmdetection "
        "and uses bottom centres; the heads of rankspec.adapters.heads use gravity centres."),
    Convention(
        None, "Degenerate rotated boxes", ("rotated_bev_intersection", "rotated_bev_iou", "rotated_iou_3d"),
        "IoU 0 for a zero union", (),
        "Sizes must be >= 0. A zero-area box overlaps nothing; when the union area (volume) is 0 the IoU is 0. "
        "Touching boxes have intersection 0.",
        "CUDA kernels of OpenPCDet / mmcv clamp the union at a small epsilon instead, which gives 0 as well."),
)

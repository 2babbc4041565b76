r"""Vectorised PyTorch IoU of rotated boxes (BEV and 3D), used by the 3D SSD head.

Same layouts, conventions and results as the NumPy reference
:mod:`rankspec.refimpl.reference.geometry` (which the tests compare it with, and which is
itself checked against ``shapely``):

* BEV boxes ``(..., 5)``: ``(x, y, dx, dy, yaw)``, ``dx`` along the heading,
  ``yaw`` counter-clockwise from +x;
* 3D boxes ``(..., 7)``: ``(x, y, z, dx, dy, dz, yaw)``, ``z`` the gravity
  centre (``z_origin="center"``) or the bottom (``"bottom"``).

Algorithm (no Python loop over boxes)
-------------------------------------
For each pair the vertices of the intersection polygon are among 24
candidates: the 4 corners of each box that lie inside the other, and the 16
crossings of an edge of one box with an edge of the other.  The valid
candidates are sorted by angle around their mean and the area follows from
the shoelace formula (invalid slots repeat the first vertex and add nothing).
Inside tests use a tolerance of ``64 eps`` times the pair's coordinate
magnitude, so corners on the other box's boundary (touching, nested and
identical boxes) are kept; nearly parallel edges (``|sin| <= 64 eps``) give
no crossing - their overlap is spanned by corners.  The sort order is
computed without gradient; area, IoU and 3D IoU are differentiable by
autograd almost everywhere (not at ties of the inside tests).

Cost: O(N M) for the prefilter (pairs whose circumscribed BEV circles do
not meet have IoU 0 and are skipped) plus O(K) for the K remaining pairs,
done in chunks of at most ``chunk`` pairs (default 2^17, ~50 MB of float64
temporaries).
"""

from __future__ import annotations

import math

import torch

from rankspec.refimpl._validate import check_choice
from rankspec.refimpl.reference.geometry import Z_ORIGINS

__all__ = ["rotated_box_corners", "rotated_bev_intersection", "rotated_bev_iou", "rotated_iou_3d",
           "nearest_bev_iou", "limit_period", "check_rotated_boxes"]

_CHUNK = 2 ** 17


def limit_period(val: torch.Tensor, offset: float = 0.5, period: float = math.pi) -> torch.Tensor:
    """``val - floor(val / period + offset) * period``: angles into ``[-offset*period, (1-offset)*period)``.

    The helper of the same name in OpenPCDet and mmdet3d.
    """
    return val - torch.floor(val / period + offset) * period


def check_rotated_boxes(boxes, name: str, width: int) -> torch.Tensor:
    """``boxes`` must be a finite floating tensor ``(N, width)`` with sizes >= 0 (N may be 0)."""
    layout = "(x, y, dx, dy, yaw)" if width == 5 else "(x, y, z, dx, dy, dz, yaw)"
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, {width}) {layout}, got {type(boxes).__name__}")
    if not boxes.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {boxes.dtype}")
    if boxes.dim() != 2 or boxes.shape[1] != width:
        raise ValueError(f"{name} must have shape (N, {width}) with columns {layout}, got shape {tuple(boxes.shape)}")
    d = boxes.detach()
    finite = torch.isfinite(d)
    if not bool(finite.all()):
        k = int(torch.nonzero(~finite.all(dim=1))[0])
        raise ValueError(f"{name}[{k}] = {d[k].tolist()} contains NaN or infinite values")
    sizes = d[:, 2:4] if width == 5 else d[:, 3:6]
    bad = (sizes < 0).any(dim=1)
    if bool(bad.any()):
        k = int(torch.nonzero(bad)[0])
        raise ValueError(f"{name}[{k}] = {d[k].tolist()} has a negative size; box sizes must be >= 0")
    return boxes


def rotated_box_corners(boxes: torch.Tensor) -> torch.Tensor:
    """``(..., 5)`` BEV boxes -> ``(..., 4, 2)`` corners, counter-clockwise (as the reference)."""
    local = boxes.new_tensor([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])
    half = local * boxes[..., None, 2:4]
    c, s = torch.cos(boxes[..., 4:5]), torch.sin(boxes[..., 4:5])
    x = boxes[..., 0:1] + c * half[..., 0] - s * half[..., 1]
    y = boxes[..., 1:2] + s * half[..., 0] + c * half[..., 1]
    return torch.stack([x, y], dim=-1)


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _inside(points: torch.Tensor, poly: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
    """Which of ``points`` (K, P, 2) lie in the convex CCW polygons ``poly`` (K, 4, 2) (boundary included)."""
    edges = torch.roll(poly, -1, dims=1) - poly  # (K, 4, 2)
    length = edges.norm(dim=-1)  # (K, 4)
    rel = points[:, :, None, :] - poly[:, None, :, :]  # (K, P, 4, 2)
    dist = _cross(edges[:, None, :, :], rel) / length.clamp_min(torch.finfo(poly.dtype).tiny)[:, None, :]
    ok = (dist >= -tol[:, None, None]) | (length[:, None, :] == 0)  # zero-length edges bound nothing
    return ok.all(dim=2)


def _intersection_area_aligned(c1: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
    """Intersection areas of K aligned pairs of convex CCW quadrilaterals ``(K, 4, 2)`` (0 if one has no area)."""
    K = c1.shape[0]
    if K == 0:
        return c1.new_zeros(0)
    eps = torch.finfo(c1.dtype).eps
    with torch.no_grad():
        scale = torch.maximum(c1.detach().abs().amax(dim=(1, 2)), c2.detach().abs().amax(dim=(1, 2)))
        tol = 64 * eps * scale.clamp_min(1.0)
    # corners of each box inside the other
    in1 = _inside(c1.detach(), c2.detach(), tol)  # (K, 4)
    in2 = _inside(c2.detach(), c1.detach(), tol)
    # crossings of edge i of box 1 with edge j of box 2: a + t da = b + u db
    a = c1[:, :, None, :]
    da = (torch.roll(c1, -1, dims=1) - c1)[:, :, None, :]
    b = c2[:, None, :, :]
    db = (torch.roll(c2, -1, dims=1) - c2)[:, None, :, :]
    denom = _cross(da, db)  # (K, 4, 4)
    ab = b - a
    with torch.no_grad():
        nd = denom.detach()
        scale_d = da.detach().norm(dim=-1) * db.detach().norm(dim=-1)
        parallel = nd.abs() <= 64 * eps * scale_d
    safe = torch.where(parallel, torch.ones_like(denom), denom)
    t = _cross(ab, db) / safe
    u = _cross(ab, da) / safe
    with torch.no_grad():
        slack = 64 * eps
        hit = (~parallel) & (t.detach() >= -slack) & (t.detach() <= 1 + slack) \
            & (u.detach() >= -slack) & (u.detach() <= 1 + slack)
    cross_pts = (a + t[..., None] * da).reshape(K, 16, 2)
    pts = torch.cat([c1, c2, cross_pts], dim=1)  # (K, 24, 2)
    valid = torch.cat([in1, in2, hit.reshape(K, 16)], dim=1)  # (K, 24)
    count = valid.sum(dim=1)
    with torch.no_grad():
        vd = valid.to(pts.dtype)
        center = (pts.detach() * vd[..., None]).sum(dim=1) / count.clamp_min(1)[:, None].to(pts.dtype)
        rel = pts.detach() - center[:, None, :]
        ang = torch.atan2(rel[..., 1], rel[..., 0])
        ang = torch.where(valid, ang, torch.full_like(ang, float("inf")))  # invalid slots last
        order = torch.argsort(ang, dim=1, stable=True)
    sorted_pts = torch.gather(pts, 1, order[..., None].expand(K, 24, 2))
    sorted_valid = torch.gather(valid, 1, order)
    first = sorted_pts[:, :1, :].expand(K, 24, 2)
    sorted_pts = torch.where(sorted_valid[..., None], sorted_pts, first)  # repeat the first vertex
    nxt = torch.roll(sorted_pts, -1, dims=1)
    area = 0.5 * _cross(sorted_pts, nxt).sum(dim=1).abs()
    with torch.no_grad():  # a zero-area box (segment or point) overlaps nothing, as in the reference
        def own_area(c):
            return 0.5 * _cross(c, torch.roll(c, -1, dims=1)).sum(dim=1).abs()
        solid = (own_area(c1.detach()) > 0) & (own_area(c2.detach()) > 0)
    return torch.where((count >= 3) & solid, area, torch.zeros_like(area))


def _same(b1: torch.Tensor, b2: torch.Tensor) -> None:
    if b1.device != b2.device:
        raise ValueError(f"boxes1 is on device {b1.device} but boxes2 is on device {b2.device}; they must match")
    if b1.dtype != b2.dtype:
        raise TypeError(f"boxes1 has dtype {b1.dtype} but boxes2 has dtype {b2.dtype}; they must match")


def _pairwise(fn, b1: torch.Tensor, b2: torch.Tensor, aligned: bool, chunk: int, bev=(0, 1, 2, 3)) -> torch.Tensor:
    """Apply an aligned-pairs function to all pairs (N, M) or to aligned rows, in chunks.

    For all pairs, only the pairs whose circumscribed BEV circles meet are
    evaluated (the others have no overlap, so their value is 0); ``bev`` are
    the columns ``(x, y, dx, dy)`` of the boxes.
    """
    if aligned:
        if b1.shape[0] != b2.shape[0]:
            raise ValueError(f"aligned=True needs as many boxes1 as boxes2, got {b1.shape[0]} and {b2.shape[0]}")
        parts = [fn(b1[s:s + chunk], b2[s:s + chunk]) for s in range(0, b1.shape[0], chunk)]
        return torch.cat(parts) if parts else b1.new_zeros(0)
    N, M = b1.shape[0], b2.shape[0]
    out = b1.new_zeros((N, M))
    if N == 0 or M == 0:
        return out
    x, y, dx, dy = bev
    with torch.no_grad():
        r1 = 0.5 * torch.hypot(b1[:, dx], b1[:, dy]).detach()
        r2 = 0.5 * torch.hypot(b2[:, dx], b2[:, dy]).detach()
        dist = torch.hypot(b1[:, None, x].detach() - b2[None, :, x].detach(),
                           b1[:, None, y].detach() - b2[None, :, y].detach())
        i, j = torch.nonzero(dist <= (r1[:, None] + r2[None, :]) * (1 + 1e-6), as_tuple=True)
    if i.numel() == 0:
        return out + 0.0 * (b1.sum() + b2.sum())  # keep the graph
    vals = torch.cat([fn(b1[i[s:s + chunk]], b2[j[s:s + chunk]]) for s in range(0, i.numel(), chunk)])
    return out.index_put((i, j), vals)


def rotated_bev_intersection(boxes1: torch.Tensor, boxes2: torch.Tensor, *, aligned: bool = False,
                             chunk: int = _CHUNK) -> torch.Tensor:
    """Intersection areas of rotated BEV boxes ``(N, 5)`` x ``(M, 5)``: ``(N, M)`` or aligned ``(N,)``."""
    b1 = check_rotated_boxes(boxes1, "boxes1", 5)
    b2 = check_rotated_boxes(boxes2, "boxes2", 5)
    _same(b1, b2)
    return _pairwise(lambda x, y: _intersection_area_aligned(rotated_box_corners(x), rotated_box_corners(y)),
                     b1, b2, aligned, chunk)


def _bev_iou_aligned(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    inter = _intersection_area_aligned(rotated_box_corners(x), rotated_box_corners(y))
    union = x[:, 2] * x[:, 3] + y[:, 2] * y[:, 3] - inter
    ok = union > 0
    iou = torch.where(ok, inter / torch.where(ok, union, torch.ones_like(union)), torch.zeros_like(union))
    return iou.clamp(0.0, 1.0)


def rotated_bev_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, *, aligned: bool = False,
                    chunk: int = _CHUNK) -> torch.Tensor:
    """IoU of rotated BEV boxes (see :func:`rankspec.refimpl.reference.geometry.rotated_bev_iou`); 0 for a zero union."""
    b1 = check_rotated_boxes(boxes1, "boxes1", 5)
    b2 = check_rotated_boxes(boxes2, "boxes2", 5)
    _same(b1, b2)
    return _pairwise(_bev_iou_aligned, b1, b2, aligned, chunk)


def rotated_iou_3d(boxes1: torch.Tensor, boxes2: torch.Tensor, *, aligned: bool = False,
                   z_origin: str = "center", chunk: int = _CHUNK) -> torch.Tensor:
    """IoU of rotated 3D boxes ``(x, y, z, dx, dy, dz, yaw)`` (see :func:`rankspec.refimpl.reference.geometry.rotated_iou_3d`)."""
    check_choice(z_origin, "z_origin", Z_ORIGINS)
    b1 = check_rotated_boxes(boxes1, "boxes1", 7)
    b2 = check_rotated_boxes(boxes2, "boxes2", 7)
    _same(b1, b2)
    shift = 0.5 if z_origin == "center" else 0.0
    bev = [0, 1, 3, 4, 6]

    def fn(x, y):
        inter_bev = _intersection_area_aligned(rotated_box_corners(x[:, bev]), rotated_box_corners(y[:, bev]))
        bot1, bot2 = x[:, 2] - shift * x[:, 5], y[:, 2] - shift * y[:, 5]
        h = (torch.minimum(bot1 + x[:, 5], bot2 + y[:, 5]) - torch.maximum(bot1, bot2)).clamp_min(0.0)
        inter = inter_bev * h
        union = x[:, 3] * x[:, 4] * x[:, 5] + y[:, 3] * y[:, 4] * y[:, 5] - inter
        ok = union > 0
        return torch.where(ok, inter / torch.where(ok, union, torch.ones_like(union)),
                           torch.zeros_like(union)).clamp(0.0, 1.0)

    return _pairwise(fn, b1, b2, aligned, chunk, bev=(0, 1, 3, 4))


def nearest_bev_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Axis-aligned "nearest" BEV IoU ``(N, M)`` of BEV boxes ``(x, y, dx, dy, yaw)``.

    Each box is snapped to the nearest axis (``dx`` and ``dy`` swap when
    ``|yaw|`` modulo pi exceeds pi/4) and the IoU of the axis-aligned boxes is
    taken - what OpenPCDet's ``AxisAlignedTargetAssigner``
    (``boxes3d_nearest_bev_iou``) and mmdet3d's ``BboxOverlapsNearest3D``
    use to assign anchors.  Offered as ``iou="nearest"`` by the 3D head; the
    default there is the exact rotated IoU.  O(N M).
    """
    b1 = check_rotated_boxes(boxes1, "boxes1", 5)
    b2 = check_rotated_boxes(boxes2, "boxes2", 5)
    _same(b1, b2)

    def aligned_box(b):
        rot = limit_period(b[:, 4], 0.5, math.pi).abs()
        swap = rot > math.pi / 4
        w = torch.where(swap, b[:, 3], b[:, 2])
        h = torch.where(swap, b[:, 2], b[:, 3])
        return torch.stack([b[:, 0] - w / 2, b[:, 1] - h / 2, b[:, 0] + w / 2, b[:, 1] + h / 2], dim=1)

    a, c = aligned_box(b1), aligned_box(b2)
    iw = (torch.minimum(a[:, None, 2], c[None, :, 2]) - torch.maximum(a[:, None, 0], c[None, :, 0])).clamp_min(0)
    ih = (torch.minimum(a[:, None, 3], c[None, :, 3]) - torch.maximum(a[:, None, 1], c[None, :, 1])).clamp_min(0)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_c = (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])
    union = area_a[:, None] + area_c[None, :] - inter
    ok = union > 0
    return torch.where(ok, inter / torch.where(ok, union, torch.ones_like(union)), torch.zeros_like(union))

"""Synthetic data of the demo: 2D images with rectangles, 3D LiDAR scenes with cars (module docstring of
:mod:`rankspec.adapters.demo`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List

import numpy as np

__all__ = ["Scenes2D", "Scenes3D", "synth_scenes_2d", "synth_scenes_3d", "PC_RANGE", "PILLAR_GRID", "BEV_GRID",
           "GROUND_Z", "iou_2d"]


@dataclass
class Scenes2D:
    images: np.ndarray  #: (n, 3, S, S) float32
    boxes: List[np.ndarray]  #: per image (G, 4) x1, y1, x2, y2
    labels: List[np.ndarray]  #: per image (G,)


def iou_2d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def synth_scenes_2d(n: int, rng: np.random.Generator, size: int = 32) -> Scenes2D:
    """``n`` synthetic images (module docstring); class 0 red, class 1 blue rectangles."""
    colors = np.array([[0.9, 0.25, 0.2], [0.2, 0.35, 0.9]])
    images = np.empty((n, 3, size, size), dtype=np.float32)
    all_boxes, all_labels = [], []
    for i in range(n):
        img = rng.normal(0.45, 0.07, (3, size, size))
        for _ in range(rng.integers(0, 4)):  # distractor blobs (greenish / grey)
            s = int(rng.integers(2, 5))
            x, y = rng.integers(0, size - s, 2)
            img[:, y:y + s, x:x + s] = np.array([rng.uniform(0.3, 0.6), rng.uniform(0.6, 0.9),
                                                 rng.uniform(0.3, 0.6)])[:, None, None]
        k = int(rng.choice(5, p=[0.1, 0.3, 0.3, 0.2, 0.1]))
        boxes, labels = [], []
        for _ in range(k * 10):
            if len(boxes) == k:
                break
            w, h = rng.integers(6, 17, 2)
            x1, y1 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            b = np.array([[x1, y1, x1 + w, y1 + h]], dtype=np.float64)
            if boxes and iou_2d(b, np.array(boxes)).max() >= 0.3:
                continue
            c = int(rng.integers(0, 2))
            img[:, y1:y1 + h, x1:x1 + w] = (colors[c] + rng.normal(0, 0.04, 3))[:, None, None]
            boxes.append(b[0])
            labels.append(c)
        images[i] = np.clip(img, 0, 1)
        all_boxes.append(np.array(boxes, dtype=np.float64).reshape(-1, 4))
        all_labels.append(np.array(labels, dtype=np.int64))
    return Scenes2D(images, all_boxes, all_labels)


PC_RANGE = (0.0, -12.8, -3.0, 25.6, 12.8, 1.0)
PILLAR_GRID = (64, 64)  # (H, W) = (y, x) cells of 0.4 m
BEV_GRID = (32, 32)  # after the stride-2 backbone: 0.8 m cells
GROUND_Z = -1.78


@dataclass
class Scenes3D:
    points: List[np.ndarray]  #: per scene (P, 3) float32 x, y, z inside the range
    cells: List[np.ndarray]  #: per scene (P,) pillar index h * W + w
    boxes: List[np.ndarray]  #: per scene (G, 7) x, y, z (gravity centre), dx, dy, dz, yaw
    labels: List[np.ndarray]  #: per scene (G,) zeros (car)


def _box_face_points(rng, box: np.ndarray, n: int) -> np.ndarray:
    """Points on the sensor-facing side faces and the roof of a box, plus some inside."""
    x, y, z, dx, dy, dz, yaw = box
    c, s = math.cos(yaw), math.sin(yaw)
    # local frame: u along the heading, v across, w up (from the bottom)
    faces = []  # (normal_local, sampler)
    to_sensor = np.array([-x, -y])
    local_dir = np.array([c * to_sensor[0] + s * to_sensor[1], -s * to_sensor[0] + c * to_sensor[1]])
    if local_dir[0] > 0:
        faces.append("front")
    else:
        faces.append("back")
    if local_dir[1] > 0:
        faces.append("left")
    else:
        faces.append("right")
    faces.append("roof")
    pts = []
    per = n // (len(faces) + 1)
    for f in faces:
        u = rng.uniform(-dx / 2, dx / 2, per)
        v = rng.uniform(-dy / 2, dy / 2, per)
        w = rng.uniform(0.15 * dz, dz, per)
        if f == "front":
            u = np.full(per, dx / 2)
        elif f == "back":
            u = np.full(per, -dx / 2)
        elif f == "left":
            v = np.full(per, dy / 2)
        elif f == "right":
            v = np.full(per, -dy / 2)
        else:
            w = np.full(per, dz)
        pts.append(np.stack([u, v, w], axis=1))
    m = n - per * len(faces)  # inside the box
    pts.append(np.stack([rng.uniform(-dx / 2, dx / 2, m), rng.uniform(-dy / 2, dy / 2, m),
                         rng.uniform(0.15 * dz, dz, m)], axis=1))
    p = np.concatenate(pts) + rng.normal(0, 0.02, (n, 3))
    wx = x + c * p[:, 0] - s * p[:, 1]
    wy = y + s * p[:, 0] + c * p[:, 1]
    wz = (z - dz / 2) + p[:, 2]
    return np.stack([wx, wy, wz], axis=1)


def synth_scenes_3d(n: int, rng: np.random.Generator) -> Scenes3D:
    """``n`` synthetic LiDAR scenes (module docstring), already pillarised."""
    x0, y0, z0, x1, y1, z1 = PC_RANGE
    H, W = PILLAR_GRID
    out = Scenes3D([], [], [], [])
    for _ in range(n):
        k = int(rng.integers(1, 6))
        boxes = []
        for _ in range(k * 20):
            if len(boxes) == k:
                break
            size = np.array([3.9, 1.6, 1.56]) * rng.uniform(0.9, 1.1, 3)
            if rng.uniform() < 0.8:
                yaw = rng.choice([0.0, math.pi / 2, math.pi, -math.pi / 2]) + rng.normal(0, 0.12)
            else:
                yaw = rng.uniform(-math.pi, math.pi)
            cx, cy = rng.uniform(x0 + 3, x1 - 3), rng.uniform(y0 + 3, y1 - 3)
            if any(math.hypot(cx - b[0], cy - b[1]) < 4.6 for b in boxes):
                continue
            bottom = GROUND_Z + rng.normal(0, 0.04)
            boxes.append(np.array([cx, cy, bottom + size[2] / 2, size[0], size[1], size[2], yaw]))
        boxes = np.array(boxes).reshape(-1, 7)
        pts = [np.stack([rng.uniform(x0, x1, 1200), rng.uniform(y0, y1, 1200),
                         GROUND_Z + rng.normal(0, 0.03, 1200)], axis=1)]
        for b in boxes:
            dist = math.hypot(b[0], b[1])
            pts.append(_box_face_points(rng, b, int(np.clip(2400 / max(dist, 6.0), 80, 300))))
        for _ in range(rng.integers(3, 9)):  # clutter
            cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
            kind = rng.integers(0, 3)
            if kind == 0:  # pole
                m = 30
                p = np.stack([cx + rng.normal(0, 0.08, m), cy + rng.normal(0, 0.08, m),
                              rng.uniform(GROUND_Z, GROUND_Z + rng.uniform(2, 3.5), m)], axis=1)
            elif kind == 1:  # bush
                m = 60
                r = rng.uniform(0.5, 1.0)
                p = np.stack([cx + rng.normal(0, r / 2, m), cy + rng.normal(0, r / 2, m),
                              GROUND_Z + np.abs(rng.normal(0, r, m))], axis=1)
            else:  # crate
                m = 40
                s_ = rng.uniform(0.6, 1.0)
                p = np.stack([cx + rng.uniform(-s_ / 2, s_ / 2, m), cy + rng.uniform(-s_ / 2, s_ / 2, m),
                              rng.uniform(GROUND_Z, GROUND_Z + s_, m)], axis=1)
            pts.append(p)
        pts.append(np.stack([rng.uniform(x0, x1, 100), rng.uniform(y0, y1, 100), rng.uniform(GROUND_Z, z1, 100)],
                            axis=1))
        p = np.concatenate(pts)
        keep = (p[:, 0] >= x0) & (p[:, 0] < x1) & (p[:, 1] >= y0) & (p[:, 1] < y1) & (p[:, 2] >= z0) & (p[:, 2] < z1)
        p = p[keep].astype(np.float32)
        w = np.clip(((p[:, 0] - x0) / (x1 - x0) * W).astype(np.int64), 0, W - 1)
        h = np.clip(((p[:, 1] - y0) / (y1 - y0) * H).astype(np.int64), 0, H - 1)
        out.points.append(p)
        out.cells.append(h * W + w)
        out.boxes.append(boxes)
        out.labels.append(np.zeros(len(boxes), dtype=np.int64))
    return out

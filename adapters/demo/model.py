"""The tiny detectors of the demo: a two-level dense 2D detector and a pillar-based point-cloud SSD detector
(built from :mod:`rankspec.adapters.heads`)."""

from __future__ import annotations

from .data import PC_RANGE, PILLAR_GRID

__all__ = ["models"]


def models():
    """Build the model classes lazily (torch is imported only when a demo runs)."""
    import torch
    from torch import nn

    from rankspec.adapters.heads import AnchorGenerator2D, AnchorGenerator3D, DenseHead2D, PillarEncoder, SSDHead3D

    class Tiny2D(nn.Module):
        """conv stem (stride 2) -> stride-4 and stride-8 maps -> DenseHead2D (2 classes, 3 anchors)."""

        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
            self.c3 = nn.Sequential(nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU())
            self.c4 = nn.Sequential(nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU())
            self.head = DenseHead2D(num_classes=2, in_channels=32, feat_channels=32, stacked_convs=1, num_anchors=3)
            self.anchor_generator = AnchorGenerator2D(strides=(4, 8), octave_base_scale=2.0, scales_per_octave=1,
                                                      ratios=(0.5, 1.0, 2.0), center_offset=0.5)

        def forward(self, images):
            x = self.stem(images)
            p3 = self.c3(x)
            p4 = self.c4(p3)
            return self.head([p3, p4])

    class Tiny3D(nn.Module):
        """PillarEncoder (64 x 64) -> stride-2 BEV CNN (32 x 32) -> SSDHead3D (car, yaw 0 and pi/2)."""

        def __init__(self):
            super().__init__()
            self.encoder = PillarEncoder(PC_RANGE, PILLAR_GRID, out_channels=16)
            self.backbone = nn.Sequential(nn.Conv2d(17, 32, 3, stride=2, padding=1), nn.ReLU(),
                                          nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                                          nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
            self.anchor_generator = AnchorGenerator3D(PC_RANGE)
            self.head = SSDHead3D(32, num_classes=1, num_anchors_per_location=2)

        def forward(self, points, batch_index, cells, batch_size):
            return self.head(self.backbone(self.encoder(points, batch_index, cells, batch_size)))

    return torch, Tiny2D, Tiny3D

r"""Training demonstrations (``rankspec demo``) of the detector heads: ranking losses against focal loss, on CPU in seconds.

``rankspec demo 2d`` trains a tiny two-level dense 2D detector
(:class:`~rankspec.adapters.heads.DenseHead2D`, ATSS assignment) on synthetic
images; ``rankspec demo 3d`` trains a tiny point-cloud detector (pillar
encoder, BEV CNN, :class:`~rankspec.adapters.heads.SSDHead3D` with car anchors
at 0 and pi/2 and rotated-IoU assignment, 0.6 / 0.45) on synthetic LiDAR
scenes.  Each loss trains the same initial network on the same batches.  The
demonstration records, per loss:

* the training loss (the sum of the loss dict) at every step;
* Spearman's rank correlation between the classification scores of the
  positives and the IoUs of their decoded boxes with their ground truth -
  the sorting quality RS Sec. 6.3 tracks - on every training batch and on a
  held-out set at evaluation steps;
* AP on the held-out set: 2D mean AP over both classes at IoU 0.5 and 0.75;
  3D car AP at BEV IoU 0.5 and at 3D IoU 0.5 and 0.7 (all-point interpolated
  precision; greedy matching by score, one detection per ground truth).

Synthetic data
--------------
2D: 32 x 32 RGB images, noise background with small distractor blobs, 0-4
axis-aligned rectangles of two classes (red and blue) of 6-16 px, allowed to
overlap (IoU < 0.3).  3D: a 25.6 m x 25.6 m scene in front of the sensor:
ground points at -1.78 m, 1-5 cars (3.9 x 1.6 x 1.56 m +-10 %, mostly road
aligned with random heading) sampled on their sensor-facing faces and roof
and inside, poles, bushes and crates as clutter, and uniform noise; points
are pillarised on a 64 x 64 grid (0.4 m) and encoded by
:class:`~rankspec.adapters.heads.PillarEncoder`.

Everything is seeded (``numpy.random.default_rng(seed)``, ``torch.manual_seed``)
and runs with a fixed number of torch threads (default 1), so a run is
reproducible on one machine.

Layout: :mod:`.data` (synthetic scenes), :mod:`.model` (the tiny detectors), :mod:`.train` (the training
loop, :func:`run_demo`), :mod:`.metrics` (rho, matching, AP) and :mod:`.report` (records, text, plot).
The CLI command is :mod:`rankspec.conformance.commands.demo`.  Importing this package does not import torch.
"""

from __future__ import annotations

from .data import synth_scenes_2d, synth_scenes_3d
from .metrics import average_precision, match_detections, spearman
from .report import DemoResult, History, format_report, plot_result
from .train import DEFAULT_LOSSES, DEFAULTS, DEMO_LOSS_SPECS, DEMO_LOSSES, run_demo, save_result

__all__ = ["DEMO_LOSSES", "DEMO_LOSS_SPECS", "DEFAULT_LOSSES", "DEFAULTS", "History", "DemoResult", "run_demo",
           "average_precision", "match_detections", "spearman", "synth_scenes_2d", "synth_scenes_3d",
           "format_report", "plot_result", "save_result"]

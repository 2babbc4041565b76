"""``rankspec check-head``: check a detector head's loss pipeline (raw outputs -> loss) against the reference."""

from __future__ import annotations

import argparse

from ._common import add_head_arguments, run_head_check

NAME = "check-head"
HELP = "check a detector head's pipeline (raw outputs -> loss and gradient) against the reference"
ORDER = 2
DESCRIPTION = """\
Check a detector head's loss pipeline end to end: the head adapter's assignment, label
vectorisation, flattening and loss, with the gradient taken by autograd with respect to the
head's raw outputs. The oracle is the adapter's own assignment and flattening (which also
returns the index map from flat scores to raw output entries), rankspec's NumPy reference on
the flat scores and labels, and the flat reference gradient mapped back to the raw layout.
RankDetNet's IoU-guided loss is also checked through the IoUs into the box outputs.

TARGET (and the bundled adapters) runs in a worker process, never in rankspec's: its import and
every call (forward and backward) happen there, and only the loss entries and the gradients come
back, as NumPy arrays; the oracle, the comparison and the verdict stay in rankspec's process.
An exit (sys.exit, os._exit), a crash (segfault) or a patch of the harness by TARGET is its
failure (exit 1), and a call running over --call-timeout fails its case and TARGET is not called
again. The report (--output) is always written.

Random batches are drawn per scenario: no-gt (no image has a box), many-gt (many boxes per
image), crowded (overlapping boxes clustered together), mixed (an image without boxes among
images with a few); with random numbers of images, levels, map sizes, anchors and classes,
and the head options drawn per case (dense2d: assigner max_iou / atss; ssd3d: layout
openpcdet / mmdet3d). A failure is shrunk (images, levels, rows, columns, anchors, classes,
boxes), diagnosed (other scope, the loss's documented conventions, layout / dropped level /
scaling bugs) and printed with its scenario, seed and a copy-pasteable reproducer.

Heads: dense2d (mmdet layout: per level [B, A*C, H, W] scores, [B, A*4, H, W] deltas;
TARGET(cls_scores, bbox_preds, anchors, gt_boxes, gt_labels, *, loss, scope, loss_options,
assigner=...)), ssd3d (OpenPCDet [B, H, W, A*C] or mmdet3d [B, A*C, H, W];
TARGET(cls_preds, box_preds, dir_cls_preds, anchors, anchor_classes, gt_boxes, gt_labels, *,
loss, scope, loss_options, classes=..., layout=...)). TARGET returns the loss dict. Without
TARGET the bundled adapters (dense2d_loss / Dense2DLoss, ssd3d_loss / SSD3DLoss) are checked."""
EPILOG = """\
exit codes:
  0  conformant: every case of every check agreed within tolerance
  1  nonconformant: at least one case disagreed (or the target raised, exited, crashed or hung)
  2  usage error: bad TARGET, a TARGET without exactly one --head, unknown head / loss /
     scenario, bad option values, --device cuda without CUDA

examples:
  rankspec check-head                                   # both bundled heads, every loss
  rankspec check-head --head dense2d --loss rs --scenario crowded --examples 20
  rankspec check-head ./my_head.py:my_loss --head dense2d --loss rankdet --format junit --output head.xml"""


def add_arguments(p):
    from rankspec.conformance.heads import HEAD_LOSSES, HEADS, SCENARIOS

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("target", nargs="?", metavar="TARGET",
                   help="the head's loss function (or nn.Module): package.module:attr or path/to/file.py:attr "
                        "(default: the bundled adapters)")
    add_head_arguments(p, HEADS, HEAD_LOSSES, SCENARIOS, loss=True)
    p.add_argument("--call-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="time limit of one call of TARGET (default 60). TARGET always runs in a worker process: "
                        "an exit (sys.exit, os._exit), a crash or a time-out there is that case's failure (exit 1); "
                        "after a time-out TARGET is not called again")


def run(args) -> int:
    return run_head_check(args, args.loss)

"""Head pipelines for the conformance harness: random batches, the adapters' call and the oracle's flattening.

A :class:`HeadPipeline` describes one detector head of :mod:`rankspec.adapters.heads`
to :mod:`rankspec.conformance.heads`:

* how a random batch is drawn (:meth:`HeadPipeline.generate`) for a scenario
  (:data:`SCENARIOS`: images without ground truth, with many boxes, crowded
  scenes of overlapping boxes, and a mix);
* how a :class:`HeadCase` becomes the arguments of the head's loss function
  (raw outputs in the head's layout, anchors, ground truth);
* the oracle's side of the pipeline (:meth:`HeadPipeline.flatten`): the
  adapter's own assignment and flattening, returning the flat scores, labels,
  IoUs, image ids and levels (:class:`~rankspec.adapters.heads.FlatTargets`)
  plus the index map from flat scores back to raw output entries
  (:func:`~rankspec.adapters.heads.dense2d_score_index`,
  :func:`~rankspec.adapters.heads.ssd3d_score_index`);
* smaller variants of a case for shrinking, and the code that rebuilds a case
  in a reproducer.

Cases store every raw output in one canonical layout, ``[B, H, W, A, k]`` per
level (image, row, column, anchor slot, channel), so that selecting images,
levels, anchor slots or classes and cropping feature maps is written once;
:meth:`HeadPipeline.raw` turns it into the head's layout (mmdet's
``[B, A*k, H, W]``, OpenPCDet's ``[B, H, W, A*k]``).  Values are float64 and
cast to the checked dtype when the tensors are made, so the float32 and
float64 checks see the same geometry.

Only NumPy is imported at module level; torch and the adapters are imported
when a case is turned into tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ._constants import GRAD_OUTPUTS

__all__ = ["SCENARIOS", "SCENARIO_HELP", "HeadCase", "HeadPipeline", "Dense2DPipeline", "SSD3DPipeline", "PIPELINES",
           "get_pipeline"]

SCENARIOS = ("no-gt", "many-gt", "crowded", "mixed")
SCENARIO_HELP = {
    "no-gt": "no image has a ground-truth box (every anchor is background)",
    "many-gt": "every image has many boxes spread over it",
    "crowded": "boxes clustered around one or two points, overlapping each other",
    "mixed": "the first image has no box, the others a few",
}


@dataclass(frozen=True)
class HeadCase:
    """One random batch of head outputs and ground truth (see the module docstring for the layout)."""

    head: str
    scenario: str
    seed: int
    index: int  #: case number within the scenario (with ``seed`` and ``scenario``: :func:`head_case` rebuilds it)
    outputs: Mapping[str, Tuple[np.ndarray, ...]]  #: output name -> per level ``[B, H, W, A, k]`` float64
    gt_boxes: Tuple[np.ndarray, ...]  #: per image ``[G, 4]`` (2D) or ``[G, 7]`` (3D), float64
    gt_labels: Tuple[np.ndarray, ...]  #: per image ``[G]`` int64 class ids
    geometry: Mapping[str, object]  #: anchor settings and feature map sizes
    head_options: Mapping[str, object] = field(default_factory=dict)  #: e.g. assigner / layout
    dtype: str = "float64"
    grad_output: float = 1.0
    source: str = "generated"
    edits: Tuple[str, ...] = ()  #: shrinking steps applied to the generated case

    @property
    def num_images(self) -> int:
        return len(self.gt_boxes)

    @property
    def num_gt(self) -> Tuple[int, ...]:
        return tuple(int(g.shape[0]) for g in self.gt_boxes)

    def first(self, name: str) -> np.ndarray:
        return self.outputs[name][0]

    @property
    def size(self) -> int:
        """Raw class scores plus ground-truth boxes (what shrinking reduces)."""
        name = get_pipeline(self.head).score_output
        return int(sum(a.size for a in self.outputs[name])) + int(sum(self.num_gt))

    @property
    def num_scores(self) -> int:
        name = get_pipeline(self.head).score_output
        return int(sum(a.size for a in self.outputs[name]))

    def recipe(self) -> str:
        """Python expression that regenerates the unshrunk case."""
        return (f"head_case({self.head!r}, {self.scenario!r}, seed={self.seed}, index={self.index}, "
                f"dtype={self.dtype!r})")

    def describe(self) -> str:
        p = get_pipeline(self.head)
        opts = ", ".join(f"{k}={v!r}" for k, v in self.head_options.items())
        text = (f"{self.source}: scenario={self.scenario}, seed={self.seed}, case {self.index}: "
                f"{p.describe_geometry(self)}, GT per image {list(self.num_gt)}"
                + (f", {opts}" if opts else "") + f", grad_output={self.grad_output:g}, {self.dtype}")
        if self.edits:
            runs = []
            for e in self.edits:  # "halved rows of every map x3"
                if runs and runs[-1][0] == e:
                    runs[-1][1] += 1
                else:
                    runs.append([e, 1])
            text += " (shrunk: " + "; ".join(e if k == 1 else f"{e} x{k}" for e, k in runs) + ")"
        return text

    def astype(self, dtype: str) -> "HeadCase":
        return replace(self, dtype=dtype)


def _canonical_to_raw_channels_first(a: np.ndarray) -> np.ndarray:
    """``[B, H, W, A, k]`` -> mmdet's ``[B, A*k, H, W]`` (channel ``a*k + c``)."""
    B, H, W, A, k = a.shape
    return np.ascontiguousarray(a.transpose(0, 3, 4, 1, 2).reshape(B, A * k, H, W))


def _canonical_to_raw_channels_last(a: np.ndarray) -> np.ndarray:
    """``[B, H, W, A, k]`` -> OpenPCDet's ``[B, H, W, A*k]`` (channel ``a*k + c``)."""
    B, H, W, A, k = a.shape
    return np.ascontiguousarray(a.reshape(B, H, W, A * k))


def _relabel(boxes, labels, keep_classes):
    """Keep boxes of ``keep_classes`` (in that order) and renumber their labels 0..len-1."""
    remap = {int(k): i for i, k in enumerate(keep_classes)}
    nb, nl = [], []
    for g, lab in zip(boxes, labels):
        m = np.isin(lab, list(remap))
        nb.append(g[m])
        nl.append(np.array([remap[int(v)] for v in lab[m]], dtype=np.int64))
    return tuple(nb), tuple(nl)


def _logits(rng, shape) -> np.ndarray:
    """Raw class scores: around 0 or around a focal-style prior (-3); a quarter of the cases tied (step 1/2)."""
    mean = float(rng.choice([0.0, -3.0]))
    x = rng.normal(mean, 1.5, shape)
    if rng.random() < 0.25:
        x = np.round(x * 2.0) / 2.0
    return x


def _gt_count(rng, scenario: str, image: int, many: Tuple[int, int], crowded: Tuple[int, int]) -> int:
    if scenario == "no-gt" or (scenario == "mixed" and image == 0):
        return 0
    if scenario == "crowded":
        return int(rng.integers(*crowded))
    if scenario == "many-gt":
        return int(rng.integers(*many))
    return int(rng.integers(1, 4))


class HeadPipeline:
    """Base class: one head of :mod:`rankspec.adapters.heads` as seen by the harness."""

    name: str = ""
    title: str = ""
    function_ref: str = ""  #: the adapter's loss function (``module:attr``), the default target
    module_ref: str = ""  #: its ``nn.Module`` form
    targets_function: str = ""  #: the adapter's assignment + flattening (``rankspec.adapters.heads`` attribute)
    index_function: str = ""  #: the adapter's index map
    score_output: str = ""
    box_output: str = ""
    output_names: Tuple[str, ...] = ()
    arg_names: Tuple[str, ...] = ()  #: positional arguments of the loss function
    option_choices: Mapping[str, Tuple[object, ...]] = {}  #: head options drawn per case
    targets_keys: Tuple[str, ...] = ()  #: head options the targets function takes (others: box part only)
    levels_are_list: bool = True
    geometry_keys: Tuple[str, ...] = ()  #: head options that shape the generated geometry (not kept as options)

    # -- generation --------------------------------------------------------------------------------
    #: head options of the loss function that both target and oracle take (kept in ``HeadCase.head_options``)
    head_option_keys: Tuple[str, ...] = ()

    def generate(self, rng: np.random.Generator, scenario: str, head_options: Mapping):
        raise NotImplementedError

    def make_case(self, scenario: str, seed: int, index: int, dtype: str = "float64",
                  head_options: Optional[Mapping] = None) -> HeadCase:
        if scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)}, got {scenario!r}")
        rng = np.random.default_rng([int(seed), SCENARIOS.index(scenario), int(index), len(self.name)])
        fixed = dict(head_options or {})
        outputs, gt_boxes, gt_labels, geometry = self.generate(rng, scenario, fixed)
        opts = {k: choices[int(rng.integers(len(choices)))] for k, choices in self.option_choices.items()}
        opts.update({k: v for k, v in fixed.items() if k not in self.geometry_keys})
        g = float(GRAD_OUTPUTS[int(rng.integers(len(GRAD_OUTPUTS)))]) if rng.random() < 0.5 else 1.0
        return HeadCase(self.name, scenario, int(seed), int(index), outputs, gt_boxes, gt_labels, geometry, opts,
                        dtype, g)

    def describe_geometry(self, case: HeadCase) -> str:
        raise NotImplementedError

    # -- tensors -------------------------------------------------------------------------------------
    def raw(self, case: HeadCase, name: str, a: np.ndarray) -> np.ndarray:
        """One level of output ``name`` in the head's layout."""
        raise NotImplementedError

    def raw_outputs(self, case: HeadCase) -> Dict[str, List[np.ndarray]]:
        return {n: [self.raw(case, n, a) for a in case.outputs[n]] for n in self.output_names}

    def tensors(self, case: HeadCase, device: str = "cpu", requires_grad: bool = True):
        """``(args, leaves)``: the loss function's positional arguments and the raw output leaves by name."""
        raise NotImplementedError

    def instance_defaults(self) -> Dict[str, object]:
        """Head options an ``nn.Module`` instance uses when its ``options`` leave them out (the loss defaults)."""
        return {k: c[0] for k, c in self.option_choices.items()}

    def head_kwargs(self, case: HeadCase) -> Dict[str, object]:
        """Keyword arguments every call of the loss (and of the targets function) needs besides ``head_options``."""
        return {}

    def module_args(self, args: tuple) -> tuple:
        """Arguments of the ``nn.Module`` form's ``forward`` (default: the function's)."""
        return args

    def targets_kwargs(self, head_options: Mapping) -> Dict[str, object]:
        raise NotImplementedError

    def flatten(self, args: tuple, head_options: Mapping):
        """Oracle side: ``(flat, level, position)`` from the adapter's assignment and flattening."""
        raise NotImplementedError

    def unflatten(self, args: tuple, flat_grad: np.ndarray, level: np.ndarray, position: np.ndarray):
        """Scatter a flat ``[N, C]`` array back to the raw score layout (a list per level, or one array)."""
        scores = args[0]
        tensors = list(scores) if self.levels_are_list else [scores]
        out = []
        for k, t in enumerate(tensors):
            g = np.zeros(int(t.numel()))
            m = level == k
            np.add.at(g, position[m], flat_grad[m])
            out.append(g.reshape(tuple(t.shape)))
        return out if self.levels_are_list else out[0]

    # -- shrinking -----------------------------------------------------------------------------------
    def select(self, case: HeadCase, *, images=None, levels=None, sizes=None, anchors=None, classes=None,
               gt_keep=None) -> Optional[HeadCase]:
        raise NotImplementedError

    def candidates(self, case: HeadCase) -> Iterator[Tuple[str, HeadCase]]:
        """Smaller variants of ``case``, most aggressive first: ``(edit, case)`` (None: not possible here)."""
        B = case.num_images
        if B > 1:
            for b in range(B):
                yield f"only image {b}", self.select(case, images=[b])
            for b in range(B):
                yield f"dropped image {b}", self.select(case, images=[i for i in range(B) if i != b])
        L = len(case.outputs[self.score_output])
        if L > 1:
            for lv in range(L):
                yield f"only level {lv}", self.select(case, levels=[lv])
            for lv in range(L):
                yield f"dropped level {lv}", self.select(case, levels=[i for i in range(L) if i != lv])
        sizes = [a.shape[1:3] for a in case.outputs[self.score_output]]
        for how, fn in (("halved rows", lambda h, w: ((h + 1) // 2, w)),
                        ("halved columns", lambda h, w: (h, (w + 1) // 2)),
                        ("one row less", lambda h, w: (max(h - 1, 1), w)),
                        ("one column less", lambda h, w: (h, max(w - 1, 1)))):
            new = [fn(h, w) for h, w in sizes]
            if new != [tuple(s) for s in sizes]:
                yield f"{how} of every map", self.select(case, sizes=new)
        A = case.first(self.score_output).shape[3]
        if A > 1:
            for a in range(A):
                yield f"only anchor slot {a}", self.select(case, anchors=[a])
            for a in range(A):
                yield f"dropped anchor slot {a}", self.select(case, anchors=[i for i in range(A) if i != a])
        C = case.first(self.score_output).shape[4]
        if C > 1:
            for c in range(C):
                yield f"only class {c}", self.select(case, classes=[c])
            for c in range(C):
                yield f"dropped class {c}", self.select(case, classes=[i for i in range(C) if i != c])
        for b, n in enumerate(case.num_gt):
            if n > 1:
                yield f"no boxes in image {b}", self._gt(case, b, [])
                yield f"first half of the boxes of image {b}", self._gt(case, b, list(range(n // 2)))
                yield f"second half of the boxes of image {b}", self._gt(case, b, list(range(n // 2, n)))
            for j in range(n):
                yield f"dropped box {j} of image {b}", self._gt(case, b, [i for i in range(n) if i != j])
        if case.grad_output != 1.0:
            yield "grad_output 1", replace(case, grad_output=1.0)
        if any(np.any(a != 0) for a in case.outputs[self.box_output]):
            yield "box outputs 0", replace(case, outputs={**case.outputs, self.box_output: tuple(
                np.zeros_like(a) for a in case.outputs[self.box_output])})

    def _gt(self, case: HeadCase, image: int, keep: List[int]) -> HeadCase:
        boxes = list(case.gt_boxes)
        labels = list(case.gt_labels)
        boxes[image] = boxes[image][keep]
        labels[image] = labels[image][keep]
        return replace(case, gt_boxes=tuple(boxes), gt_labels=tuple(labels))

    def _select_arrays(self, case: HeadCase, images, levels, sizes, anchors, classes):
        out = {}
        for name, arrays in case.outputs.items():
            lv = range(len(arrays)) if levels is None else levels
            new = []
            for j, k in enumerate(lv):
                a = arrays[k]
                if images is not None:
                    a = a[list(images)]
                if sizes is not None:
                    h, w = sizes[j]
                    a = a[:, :h, :w]
                if anchors is not None:
                    a = a[:, :, :, list(anchors)]
                if classes is not None and name == self.score_output:
                    a = a[..., list(classes)]
                new.append(np.ascontiguousarray(a))
            out[name] = tuple(new)
        return out

    # -- reproducers ---------------------------------------------------------------------------------
    def setup_code(self, case: HeadCase) -> List[str]:
        """Lines that build the loss function's positional arguments (named :attr:`arg_names`)."""
        raise NotImplementedError


def _tensor_code(name: str, a: np.ndarray, dtype: str, grad: bool) -> str:
    from ._repro import array_literal

    a = np.asarray(a, dtype=dtype)
    if a.size == 0:
        lit = f"np.zeros({tuple(a.shape)!r}, dtype=np.{dtype})"
    elif a.ndim <= 1:
        lit = array_literal(a)
    else:
        lit = f"{array_literal(a.ravel())}.reshape{tuple(a.shape)!r}"
    return f"torch.tensor({lit}{', requires_grad=True' if grad else ''})"


def _list_code(name: str, arrays: Sequence[np.ndarray], dtype: str, grad: bool) -> List[str]:
    if len(arrays) == 1:
        return [f"{name} = [{_tensor_code(name, arrays[0], dtype, grad)}]"]
    lines = [f"{name} = ["]
    for a in arrays:
        lines.append(f"    {_tensor_code(name, a, dtype, grad)},")
    lines.append("]")
    return lines


# ------------------------------------------------------------------------------------------------
# dense 2D head (mmdet layout)
# ------------------------------------------------------------------------------------------------

class Dense2DPipeline(HeadPipeline):
    """:func:`rankspec.adapters.heads.dense2d_loss`: per level ``[B, A*C, H, W]`` scores, ``[B, A*4, H, W]`` deltas."""

    name = "dense2d"
    title = "dense 2D head (mmdet layout: per level [B, A*C, H, W] scores)"
    function_ref = "rankspec.adapters.heads:dense2d_loss"
    module_ref = "rankspec.adapters.heads:Dense2DLoss"
    targets_function = "dense2d_targets"
    index_function = "dense2d_score_index"
    score_output = "cls_scores"
    box_output = "bbox_preds"
    output_names = ("cls_scores", "bbox_preds")
    arg_names = ("cls_scores", "bbox_preds", "anchors", "gt_boxes", "gt_labels")
    option_choices = {"assigner": ("max_iou", "atss")}
    targets_keys = ("assigner", "coder", "pos_iou_thr", "neg_iou_thr", "min_pos_iou", "atss_topk")
    head_option_keys = ("assigner", "assigner_options", "coder")

    STRIDES = (4.0, 8.0, 16.0)
    RATIO_SETS = ((1.0,), (0.5, 1.0, 2.0), (0.5, 2.0))

    def generate(self, rng, scenario, head_options):
        B = int(rng.integers(2 if scenario == "mixed" else 1, 4))
        C = int(rng.integers(1, 4))
        L = int(rng.integers(1, 4))
        ratios = self.RATIO_SETS[int(rng.integers(len(self.RATIO_SETS)))]
        A = len(ratios)
        H0, W0 = int(rng.integers(3, 9)), int(rng.integers(3, 9))
        sizes = tuple((max(1, math.ceil(H0 / 2 ** lv)), max(1, math.ceil(W0 / 2 ** lv))) for lv in range(L))
        img_h, img_w = H0 * self.STRIDES[0], W0 * self.STRIDES[0]
        cls = tuple(_logits(rng, (B, h, w, A, C)) for h, w in sizes)
        box = tuple(rng.normal(0.0, 0.3, (B, h, w, A, 4)) for h, w in sizes)
        boxes, labels = [], []
        short = min(img_h, img_w)
        for i in range(B):
            n = _gt_count(rng, scenario, i, (4, 13), (6, 15))
            if scenario == "crowded":
                centres = rng.uniform(0.3, 0.7, (int(rng.integers(1, 3)), 2)) * [img_w, img_h]
                xy = centres[rng.integers(len(centres), size=n)] + rng.normal(0, short / 12, (n, 2))
            else:
                xy = rng.uniform(0.1, 0.9, (n, 2)) * [img_w, img_h]
            wh = rng.uniform(0.15, 0.6, (n, 2)) * short
            boxes.append(np.concatenate([xy - wh / 2, xy + wh / 2], axis=1).reshape(n, 4))
            labels.append(rng.integers(0, C, n).astype(np.int64))
        geometry = {"strides": self.STRIDES[:L], "ratios": ratios, "octave_base_scale": 2.0,
                    "scales_per_octave": 1, "center_offset": 0.5, "sizes": sizes}
        return {"cls_scores": cls, "bbox_preds": box}, tuple(boxes), tuple(labels), geometry

    def describe_geometry(self, case):
        c = case.first("cls_scores")
        sizes = "+".join(f"{h}x{w}" for h, w in case.geometry["sizes"])
        return f"B={case.num_images}, levels {sizes}, A={c.shape[3]}, C={c.shape[4]}"

    def raw(self, case, name, a):
        return _canonical_to_raw_channels_first(a)

    def generator_kwargs(self, case) -> Dict[str, object]:
        g = case.geometry
        return {"strides": tuple(g["strides"]), "octave_base_scale": g["octave_base_scale"],
                "scales_per_octave": g["scales_per_octave"], "ratios": tuple(g["ratios"]),
                "center_offset": g["center_offset"]}

    def tensors(self, case, device="cpu", requires_grad=True):
        import torch

        from rankspec.adapters.heads import AnchorGenerator2D

        dt = getattr(torch, case.dtype)
        raw = self.raw_outputs(case)
        leaves = {n: [torch.tensor(a, dtype=dt, device=device, requires_grad=requires_grad) for a in raw[n]]
                  for n in self.output_names}
        anchors = AnchorGenerator2D(**self.generator_kwargs(case)).grid_anchors(
            [tuple(s) for s in case.geometry["sizes"]], device=device, dtype=dt)
        gt_boxes = [torch.tensor(g.reshape(-1, 4), dtype=dt, device=device) for g in case.gt_boxes]
        gt_labels = [torch.tensor(lab, dtype=torch.long, device=device) for lab in case.gt_labels]
        return (leaves["cls_scores"], leaves["bbox_preds"], anchors, gt_boxes, gt_labels), leaves

    def targets_kwargs(self, head_options):
        opts = {k: v for k, v in head_options.items() if k in self.targets_keys}
        opts.update(head_options.get("assigner_options") or {})
        return opts

    def flatten(self, args, head_options):
        from rankspec.adapters.heads import dense2d_score_index, dense2d_targets

        t = dense2d_targets(*args, **self.targets_kwargs(head_options))
        level, position = dense2d_score_index(args[0], t.num_classes)
        return t.flat, level.cpu().numpy(), position.cpu().numpy()

    def select(self, case, *, images=None, levels=None, sizes=None, anchors=None, classes=None, gt_keep=None):
        geo = dict(case.geometry)
        if levels is not None:
            geo["strides"] = tuple(geo["strides"][k] for k in levels)
            geo["sizes"] = tuple(geo["sizes"][k] for k in levels)
        if sizes is not None:
            geo["sizes"] = tuple(tuple(int(v) for v in s) for s in sizes)
        if anchors is not None:
            geo["ratios"] = tuple(geo["ratios"][a] for a in anchors)
        outputs = self._select_arrays(case, images, levels, sizes, anchors, classes)
        boxes, labels = case.gt_boxes, case.gt_labels
        if images is not None:
            boxes = tuple(boxes[i] for i in images)
            labels = tuple(labels[i] for i in images)
        if classes is not None:
            boxes, labels = _relabel(boxes, labels, classes)
        return replace(case, outputs=outputs, gt_boxes=boxes, gt_labels=labels, geometry=geo)

    def setup_code(self, case):
        dt = case.dtype
        raw = self.raw_outputs(case)
        lines = ["from rankspec.adapters.heads import AnchorGenerator2D", ""]
        lines += _list_code("cls_scores", raw["cls_scores"], dt, True)
        lines += _list_code("bbox_preds", raw["bbox_preds"], dt, True)
        kw = ", ".join(f"{k}={v!r}" for k, v in self.generator_kwargs(case).items())
        sizes = [tuple(s) for s in case.geometry["sizes"]]
        lines.append(f"anchors = AnchorGenerator2D({kw}).grid_anchors({sizes!r}, dtype=torch.{dt})")
        lines.append("gt_boxes = [")
        for g in case.gt_boxes:
            lines.append(f"    {_tensor_code('gt', np.asarray(g).reshape(-1, 4), dt, False)},")
        lines.append("]")
        lines.append("gt_labels = [" + ", ".join(
            f"torch.tensor({np.asarray(lab, dtype=np.int64).tolist()!r}, dtype=torch.long)" for lab in case.gt_labels)
            + "]")
        return lines


# ------------------------------------------------------------------------------------------------
# SA-SSD-style 3D head (OpenPCDet / mmdet3d layouts)
# ------------------------------------------------------------------------------------------------

#: KITTI anchor classes as in OpenPCDet's configs: (name, size, bottom height, pos IoU, neg IoU)
_KITTI = (("Car", (3.9, 1.6, 1.56), -1.78, 0.6, 0.45),
          ("Pedestrian", (0.8, 0.6, 1.73), -0.6, 0.5, 0.35),
          ("Cyclist", (1.76, 0.6, 1.73), -0.6, 0.5, 0.35))


class SSD3DPipeline(HeadPipeline):
    """:func:`rankspec.adapters.heads.ssd3d_loss`: ``[B, H, W, A*C]`` scores (or mmdet3d's ``[B, A*C, H, W]``)."""

    name = "ssd3d"
    title = "SA-SSD-style 3D BEV head (OpenPCDet layout [B, H, W, A*C]; mmdet3d [B, A*C, H, W])"
    function_ref = "rankspec.adapters.heads:ssd3d_loss"
    module_ref = "rankspec.adapters.heads:SSD3DLoss"
    targets_function = "ssd3d_targets"
    index_function = "ssd3d_score_index"
    score_output = "cls_preds"
    box_output = "box_preds"
    output_names = ("cls_preds", "box_preds", "dir_cls_preds")
    arg_names = ("cls_preds", "box_preds", "dir_cls_preds", "anchors", "anchor_classes", "gt_boxes", "gt_labels")
    option_choices = {"layout": ("openpcdet", "mmdet3d")}
    targets_keys = ("iou", "layout", "dir_offset", "num_dir_bins")
    head_option_keys = ("classes", "iou", "layout", "dir_offset", "num_dir_bins")
    geometry_keys = ("classes",)
    levels_are_list = False

    def generate(self, rng, scenario, head_options):
        B = int(rng.integers(2 if scenario == "mixed" else 1, 4))
        C = int(rng.integers(1, 3))
        kinds = [0] if C == 1 else [0, int(rng.integers(1, 3))]
        rotations = tuple((0.0, math.pi / 2) if rng.random() < 0.75 else (0.0,) for _ in kinds)
        classes = tuple((_KITTI[k][0], _KITTI[k][1], _KITTI[k][2], rotations[j], _KITTI[k][3], _KITTI[k][4])
                        for j, k in enumerate(kinds))
        if head_options.get("classes") is not None:  # the caller's anchor classes (AnchorClass3D records)
            classes = tuple((c.name, tuple(float(v) for v in c.size), float(c.bottom_height),
                             tuple(float(r) for r in c.rotations), float(c.pos_iou), float(c.neg_iou))
                            for c in head_options["classes"])
            C = len(classes)
        A = sum(len(c[3]) for c in classes)
        H, W = int(rng.integers(3, 11)), int(rng.integers(3, 11))
        cell = float(rng.choice([1.0, 1.6]))
        origin = (0.0, -H * cell / 2)
        cls = (_logits(rng, (B, H, W, A, C)),)
        box = (rng.normal(0.0, 0.2, (B, H, W, A, 7)),)
        dirp = (rng.normal(0.0, 1.0, (B, H, W, A, 2)),)
        boxes, labels = [], []
        extent = np.array([W * cell, H * cell])
        for i in range(B):
            n = _gt_count(rng, scenario, i, (3, 9), (5, 11))
            if scenario == "crowded":
                centre = np.array(origin) + rng.uniform(0.3, 0.7, 2) * extent
                xy = centre + rng.normal(0, 1.5, (n, 2))
            else:
                xy = np.array(origin) + rng.uniform(0.05, 0.95, (n, 2)) * extent
            lab = rng.integers(0, C, n).astype(np.int64)
            size = np.array([classes[k][1] for k in lab]).reshape(n, 3) * rng.uniform(0.85, 1.15, (n, 3))
            bottom = np.array([classes[k][2] for k in lab])
            z = bottom + size[:, 2] / 2 + rng.normal(0, 0.1, n)
            yaw = rng.uniform(-math.pi, math.pi, n)
            boxes.append(np.concatenate([xy, z[:, None], size, yaw[:, None]], axis=1).reshape(n, 7))
            labels.append(lab)
        geometry = {"classes": classes, "H": H, "W": W, "cell": cell, "origin": origin, "z_range": (-3.0, 1.0)}
        return {"cls_preds": cls, "box_preds": box, "dir_cls_preds": dirp}, tuple(boxes), tuple(labels), geometry

    def instance_defaults(self):
        from rankspec.adapters.heads import CAR

        return {**super().instance_defaults(), "classes": (CAR,)}

    def point_cloud_range(self, case) -> Tuple[float, ...]:
        g = case.geometry
        x0, y0 = g["origin"]
        z0, z1 = g["z_range"]
        return (x0, y0, z0, x0 + g["W"] * g["cell"], y0 + g["H"] * g["cell"], z1)

    def describe_geometry(self, case):
        c = case.first("cls_preds")
        names = "/".join(k[0] for k in case.geometry["classes"])
        return f"B={case.num_images}, BEV map {c.shape[1]}x{c.shape[2]}, A={c.shape[3]}, C={c.shape[4]} ({names})"

    def raw(self, case, name, a):
        if case.head_options.get("layout", "openpcdet") == "mmdet3d":
            return _canonical_to_raw_channels_first(a)
        return _canonical_to_raw_channels_last(a)

    def anchor_classes(self, case):
        from rankspec.adapters.heads import AnchorClass3D

        return tuple(AnchorClass3D(n, tuple(s), float(b), tuple(r), float(p), float(q))
                     for n, s, b, r, p, q in case.geometry["classes"])

    def tensors(self, case, device="cpu", requires_grad=True):
        import torch

        from rankspec.adapters.heads import AnchorGenerator3D

        dt = getattr(torch, case.dtype)
        raw = self.raw_outputs(case)
        leaves = {n: torch.tensor(raw[n][0], dtype=dt, device=device, requires_grad=requires_grad)
                  for n in self.output_names}
        gen = AnchorGenerator3D(self.point_cloud_range(case), self.anchor_classes(case))
        anchors = gen.grid_anchors((case.geometry["H"], case.geometry["W"]), device=device, dtype=dt)
        gt_boxes = [torch.tensor(g.reshape(-1, 7), dtype=dt, device=device) for g in case.gt_boxes]
        gt_labels = [torch.tensor(lab, dtype=torch.long, device=device) for lab in case.gt_labels]
        args = (leaves["cls_preds"], leaves["box_preds"], leaves["dir_cls_preds"], anchors,
                gen.anchor_classes(device), gt_boxes, gt_labels)
        return args, {k: [v] for k, v in leaves.items()}

    def module_args(self, args):
        preds = {"cls_preds": args[0], "box_preds": args[1], "dir_cls_preds": args[2]}
        return (preds,) + tuple(args[3:])

    def head_kwargs(self, case) -> Dict[str, object]:
        """Head options every call needs besides the drawn ones (the anchor classes' thresholds)."""
        return {"classes": self.anchor_classes(case)}

    def targets_kwargs(self, head_options):
        return {k: v for k, v in head_options.items() if k in self.targets_keys or k == "classes"}

    def flatten(self, args, head_options):
        from rankspec.adapters.heads import ssd3d_score_index, ssd3d_targets

        t = ssd3d_targets(*args, **self.targets_kwargs(head_options))
        C = t.flat.num_classes
        position = ssd3d_score_index(args[0], C, head_options.get("layout", "openpcdet")).cpu().numpy()
        return t.flat, np.zeros(position.shape, dtype=np.int64), position

    def select(self, case, *, images=None, levels=None, sizes=None, anchors=None, classes=None, gt_keep=None):
        if levels is not None:
            return None
        geo = dict(case.geometry)
        cls_list = list(geo["classes"])
        slots = [(k, r) for k, c in enumerate(cls_list) for r in range(len(c[3]))]
        keep_classes = list(range(len(cls_list))) if classes is None else list(classes)
        keep_slots = list(range(len(slots))) if anchors is None else list(anchors)
        keep_slots = [a for a in keep_slots if slots[a][0] in keep_classes]
        if any(not any(slots[a][0] == k for a in keep_slots) for k in keep_classes):
            return None  # a class would lose every anchor slot
        geo["classes"] = tuple(
            (c[0], c[1], c[2], tuple(c[3][r] for a in keep_slots for kk, r in [slots[a]] if kk == k), c[4], c[5])
            for k, c in enumerate(cls_list) if k in keep_classes)
        if sizes is not None:
            geo["H"], geo["W"] = (int(v) for v in sizes[0])
        sel_anchors = None if anchors is None and classes is None else keep_slots
        outputs = self._select_arrays(case, images, None, sizes, sel_anchors, classes)
        boxes, labels = case.gt_boxes, case.gt_labels
        if images is not None:
            boxes = tuple(boxes[i] for i in images)
            labels = tuple(labels[i] for i in images)
        if classes is not None:
            boxes, labels = _relabel(boxes, labels, keep_classes)
        return replace(case, outputs=outputs, gt_boxes=boxes, gt_labels=labels, geometry=geo)

    def setup_code(self, case):
        dt = case.dtype
        raw = self.raw_outputs(case)
        lines = ["import math", "from rankspec.adapters.heads import AnchorClass3D, AnchorGenerator3D", ""]
        for n in self.output_names:
            lines.append(f"{n} = {_tensor_code(n, raw[n][0], dt, True)}")
        cls = ", ".join(f"AnchorClass3D({n!r}, {tuple(s)!r}, {b!r}, {tuple(r)!r}, {p!r}, {q!r})"
                        for n, s, b, r, p, q in case.geometry["classes"])
        lines.append(f"classes = ({cls},)")
        lines.append(f"gen = AnchorGenerator3D({self.point_cloud_range(case)!r}, classes)")
        lines.append(f"anchors = gen.grid_anchors(({case.geometry['H']}, {case.geometry['W']}), dtype=torch.{dt})")
        lines.append("anchor_classes = gen.anchor_classes()")
        lines.append("gt_boxes = [")
        for g in case.gt_boxes:
            lines.append(f"    {_tensor_code('gt', np.asarray(g).reshape(-1, 7), dt, False)},")
        lines.append("]")
        lines.append("gt_labels = [" + ", ".join(
            f"torch.tensor({np.asarray(lab, dtype=np.int64).tolist()!r}, dtype=torch.long)" for lab in case.gt_labels)
            + "]")
        return lines


PIPELINES: Dict[str, HeadPipeline] = {p.name: p for p in (Dense2DPipeline(), SSD3DPipeline())}


def get_pipeline(head) -> HeadPipeline:
    if isinstance(head, HeadPipeline):
        return head
    try:
        return PIPELINES[head]
    except KeyError:
        raise KeyError(f"unknown head {head!r}; known heads: {', '.join(PIPELINES)}") from None

"""Training of the demo: every loss trains the same initial network on the same batches (module docstring of
:mod:`rankspec.adapters.demo`)."""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from .data import Scenes2D, Scenes3D, iou_2d, synth_scenes_2d, synth_scenes_3d
from .metrics import average_precision, match_detections, spearman
from .model import models
from .report import DemoResult, History, plot_result, summary_line

__all__ = ["DEMO_LOSS_SPECS", "DEMO_LOSSES", "DEFAULT_LOSSES", "DEFAULTS", "run_demo", "save_result"]

#: losses the demo can train: name -> (loss of the heads, the options the demo fixes)
DEMO_LOSS_SPECS: Dict[str, tuple] = {
    "focal": ("focal", {}),
    "rs": ("rs", {}),
    "brs": ("brs", {}),
    # RankDet Eq. 6 is a plain sum over pairs of positives; unnormalised it outweighs the other two ranking
    # losses by the number of pairs, so the demo averages it over pairs.  The demo's RankDetNet ranks logits
    # with the logistic L_rank (RankDet Table 5a); "rankdet-exp" is the paper's exp of probabilities, whose
    # values span only [1/e, e] and which learns much more slowly in a few hundred steps.
    "rankdet": ("rankdet", {"iou_normalization": "pairs", "score_space": "logit", "rank_function": "logistic"}),
    "rankdet-exp": ("rankdet", {"iou_normalization": "pairs"}),
    "ap": ("ap", {}),
    "bap": ("bap", {}),
    "ape": ("ape", {}),
    "dr": ("dr", {}),
}
DEMO_LOSSES = tuple(DEMO_LOSS_SPECS)
#: the default comparison: focal loss against RS, bucketed RS and RankDetNet
DEFAULT_LOSSES = ("focal", "rs", "brs", "rankdet")

DEFAULTS = {
    "2d": dict(steps=300, batch_size=8, lr=3e-3, eval_every=50, num_train=512, num_val=64),
    "3d": dict(steps=250, batch_size=4, lr=3e-3, eval_every=50, num_train=192, num_val=48),
}


@contextmanager
def _torch_settings(threads: Optional[int]):
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _batch_2d(torch, data: Scenes2D, idx):
    images = torch.from_numpy(data.images[idx])
    boxes = [torch.from_numpy(data.boxes[i]).float() for i in idx]
    labels = [torch.from_numpy(data.labels[i]) for i in idx]
    return images, boxes, labels


def _batch_3d(torch, data: Scenes3D, idx):
    pts = torch.from_numpy(np.concatenate([data.points[i] for i in idx]))
    bidx = torch.from_numpy(np.concatenate([np.full(len(data.points[i]), k) for k, i in enumerate(idx)]))
    cells = torch.from_numpy(np.concatenate([data.cells[i] for i in idx]))
    boxes = [torch.from_numpy(data.boxes[i]).float() for i in idx]
    labels = [torch.from_numpy(data.labels[i]) for i in idx]
    return pts, bidx, cells, boxes, labels


def _positive_rho(torch, targets) -> float:
    f = targets.flat
    pos = targets.pos_rows
    if pos.numel() < 3:
        return float("nan")
    s = torch.sigmoid(f.logits.detach()[pos, f.labels[pos]])
    return spearman(s.numpy(), f.ious[pos].numpy())


class _Task:
    """One demo task (2D or 3D): data, model factory, loss call, evaluation."""

    def __init__(self, kind: str, cfg: dict, seed: int):
        self.torch, Tiny2D, Tiny3D = models()
        self.kind = kind
        rng = np.random.default_rng(seed)
        if kind == "2d":
            self.train = synth_scenes_2d(cfg["num_train"], rng)
            self.val = synth_scenes_2d(cfg["num_val"], rng)
            self.model_cls = Tiny2D
        else:
            self.train = synth_scenes_3d(cfg["num_train"], rng)
            self.val = synth_scenes_3d(cfg["num_val"], rng)
            self.model_cls = Tiny3D
        self.n_train = len(self.train.boxes)

    # -- loss on one batch -----------------------------------------------------------------
    def loss(self, model, batch, loss: str):
        from rankspec.adapters.heads import dense2d_loss, ssd3d_loss

        head_loss, options = DEMO_LOSS_SPECS[loss]
        if self.kind == "2d":
            images, boxes, labels = batch
            cls, reg = model(images)
            anchors = model.anchor_generator.grid_anchors([c.shape[-2:] for c in cls])
            from rankspec.adapters.heads.boxes import DeltaXYWHCoder
            return dense2d_loss(cls, reg, anchors, boxes, labels, loss=head_loss, assigner="atss",
                                loss_options=options,
                                coder=DeltaXYWHCoder(stds=(0.1, 0.1, 0.2, 0.2)), return_targets=True)
        pts, bidx, cells, boxes, labels = batch
        out = model(pts, bidx, cells, len(boxes))
        H, W = out["cls_preds"].shape[1:3]
        anchors = model.anchor_generator.grid_anchors((H, W))
        return ssd3d_loss(out["cls_preds"], out["box_preds"], out["dir_cls_preds"], anchors,
                          model.anchor_generator.anchor_classes(), boxes, labels, loss=head_loss,
                          loss_options=options, return_targets=True)

    def batch(self, idx):
        if self.kind == "2d":
            return _batch_2d(self.torch, self.train, idx)
        return _batch_3d(self.torch, self.train, idx)

    # -- held-out evaluation ----------------------------------------------------------------
    def evaluate(self, model, loss: str, chunk: int = 16) -> Dict[str, float]:
        torch = self.torch
        from rankspec.adapters.heads import dense2d_predict, ssd3d_predict
        from rankspec.adapters.heads.boxes import DeltaXYWHCoder
        from rankspec.adapters.heads.rotated_iou import rotated_bev_iou, rotated_iou_3d

        model.eval()
        n = len(self.val.boxes)
        scores_all, ious_all, loss_sum = [], [], 0.0
        dets = []  # per image (boxes, scores, labels)
        with torch.no_grad():
            for s in range(0, n, chunk):
                idx = list(range(s, min(n, s + chunk)))
                if self.kind == "2d":
                    batch = _batch_2d(torch, self.val, idx)
                    ls, t, _ = self.loss(model, batch, loss)
                    cls, reg = model(batch[0])
                    anchors = model.anchor_generator.grid_anchors([c.shape[-2:] for c in cls])
                    dets += dense2d_predict(cls, reg, anchors, coder=DeltaXYWHCoder(stds=(0.1, 0.1, 0.2, 0.2)))
                else:
                    batch = _batch_3d(torch, self.val, idx)
                    ls, t, _ = self.loss(model, batch, loss)
                    out = model(batch[0], batch[1], batch[2], len(idx))
                    H, W = out["cls_preds"].shape[1:3]
                    anchors = model.anchor_generator.grid_anchors((H, W))
                    dets += ssd3d_predict(out["cls_preds"], out["box_preds"], out["dir_cls_preds"], anchors,
                                          model.anchor_generator.anchor_classes())
                loss_sum += float(sum(ls.values())) * len(idx) / n
                f = t.flat
                pos = t.pos_rows
                scores_all.append(torch.sigmoid(f.logits[pos, f.labels[pos]]).numpy())
                ious_all.append(f.ious[pos].numpy())
        model.train()
        result = {"rho": spearman(np.concatenate(scores_all), np.concatenate(ious_all)), "loss": loss_sum,
                  "num_pos": int(sum(len(x) for x in scores_all))}
        if self.kind == "2d":
            for thr, key in ((0.5, "AP50"), (0.75, "AP75")):
                aps = []
                for c in range(2):
                    sc, tp, ng = [], [], 0
                    for (b, s_, lab), gb, gl in zip(dets, self.val.boxes, self.val.labels):
                        m = (lab == c).numpy()
                        g = gb[gl == c]
                        ng += len(g)
                        iou = iou_2d(b.numpy()[m].astype(np.float64), g) if m.any() else np.zeros((0, len(g)))
                        sc.append(s_.numpy()[m])
                        tp.append(match_detections(s_.numpy()[m], iou, thr))
                    aps.append(average_precision(np.concatenate(sc), np.concatenate(tp), ng))
                result[key] = float(np.nanmean(aps))
        else:
            bev = [0, 1, 3, 4, 6]
            for key, thr, three_d in (("BEV_AP50", 0.5, False), ("3D_AP50", 0.5, True), ("3D_AP70", 0.7, True)):
                sc, tp, ng = [], [], 0
                for (b, s_, _), gb in zip(dets, self.val.boxes):
                    g = torch.from_numpy(gb).to(b.dtype)
                    ng += len(gb)
                    if b.shape[0] and len(gb):
                        iou = (rotated_iou_3d(b, g) if three_d else rotated_bev_iou(b[:, bev], g[:, bev])).numpy()
                    else:
                        iou = np.zeros((b.shape[0], len(gb)))
                    sc.append(s_.numpy())
                    tp.append(match_detections(s_.numpy(), iou, thr))
                result[key] = average_precision(np.concatenate(sc), np.concatenate(tp), ng)
        return result


def run_demo(kind: str, *, losses: Sequence[str] = DEFAULT_LOSSES, steps: Optional[int] = None, seed: int = 0,
             output: Optional[str] = None, threads: Optional[int] = 1, log: Optional[Callable[[str], None]] = print,
             progress: Optional[Callable[[str, int, int, str], None]] = None, plot: bool = True,
             **overrides) -> DemoResult:
    """Train the tiny ``kind`` ("2d" / "3d") detector once per loss and record the curves (module docstring).

    ``steps`` and the keys of :data:`DEFAULTS` (``batch_size``, ``lr``,
    ``eval_every``, ``num_train``, ``num_val``) override the defaults.  With
    ``output`` the record is written to ``<output>/demo_<kind>.json`` and then
    (``plot=True``) the curves to ``<output>/demo_<kind>.png``: the JSON is
    written first, so a failing plot loses nothing.  ``log`` receives one
    summary line per loss; ``progress(loss, step, steps, phase)`` is called
    after every training step (phase ``"train"``) and before every held-out
    evaluation (``"eval"``), e.g. to drive a progress bar.  Optimiser: Adam at
    ``lr`` with cosine decay to 0, gradient norm clipped at 10, the same for
    every loss (no tuning per loss).
    """
    if kind not in DEFAULTS:
        raise ValueError(f"kind must be '2d' or '3d', got {kind!r}")
    bad = [name for name in losses if name not in DEMO_LOSSES]
    if bad or not losses:
        raise ValueError(f"losses must be a non-empty list from {list(DEMO_LOSSES)}, got {list(losses)!r}")
    unknown = set(overrides) - set(DEFAULTS[kind])
    if unknown:
        raise TypeError(f"unknown demo option(s) {sorted(unknown)}; known: {sorted(DEFAULTS[kind])}")
    cfg = dict(DEFAULTS[kind])
    cfg.update(overrides)
    if steps is not None:
        cfg["steps"] = int(steps)
    for key in ("steps", "batch_size", "eval_every", "num_train", "num_val"):
        if int(cfg[key]) < 1:
            raise ValueError(f"{key} must be >= 1, got {cfg[key]}")
    say = log or (lambda s: None)
    tick = progress or (lambda loss, step, steps, phase: None)
    t_all = time.perf_counter()
    with _torch_settings(threads):
        task = _Task(kind, cfg, seed)
        torch = task.torch
        order_rng = np.random.default_rng(seed + 1)
        batches = [order_rng.choice(task.n_train, cfg["batch_size"], replace=False).tolist()
                   for _ in range(cfg["steps"])]
        histories = {}
        for name in losses:
            torch.manual_seed(seed)
            model = task.model_cls()
            opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
            # cosine decay to 0 over the run (the same schedule for every loss)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, cfg["steps"]) / cfg["steps"])))
            h = History(name)
            t0 = time.perf_counter()
            tick(name, 0, cfg["steps"], "eval")
            ev = task.evaluate(model, name)
            h.eval_steps.append(0)
            h.rho_val.append(ev.pop("rho"))
            h.loss_val.append(ev.pop("loss"))
            h.num_pos_val = ev.pop("num_pos")
            h.ap_val.append(ev)
            for step, idx in enumerate(batches, start=1):
                losses_, targets, _ = task.loss(model, task.batch(idx), name)
                total = sum(losses_.values())
                opt.zero_grad()
                total.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                opt.step()
                sched.step()
                h.steps.append(step)
                h.total.append(float(total.detach()))
                for k, v in losses_.items():
                    h.parts.setdefault(k, []).append(float(v.detach()))
                h.rho_train.append(_positive_rho(torch, targets))
                tick(name, step, cfg["steps"], "train")
                if step % cfg["eval_every"] == 0 or step == cfg["steps"]:
                    tick(name, step, cfg["steps"], "eval")
                    ev = task.evaluate(model, name)
                    h.eval_steps.append(step)
                    h.rho_val.append(ev.pop("rho"))
                    h.loss_val.append(ev.pop("loss"))
                    ev.pop("num_pos")
                    h.ap_val.append(ev)
            h.seconds = time.perf_counter() - t0
            histories[name] = h
            say(summary_line(kind, h))
    result = DemoResult(kind, seed, cfg, histories, time.perf_counter() - t_all)
    if output:
        save_result(result, output)
        if plot:
            plot_result(result, os.path.join(output, f"demo_{kind}.png"))
    return result


def save_result(result: DemoResult, output: str) -> str:
    """Write ``<output>/demo_<kind>.json`` (creating ``output``); returns its path."""
    os.makedirs(output, exist_ok=True)
    path = os.path.join(output, f"demo_{result.kind}.json")
    with open(path, "w") as fh:
        json.dump(result.to_json(), fh, separators=(",", ":"), default=float)
    return path

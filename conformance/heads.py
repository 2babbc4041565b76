r"""Pipeline conformance of detector heads: raw head outputs -> loss, checked against the reference.

A dense detector does not call a ranking loss on ready-made ``(logits,
labels)``: its head adapter assigns anchors to ground truth, flattens the
per-level raw outputs, builds the labels (0/1 or the IoU of the decoded
prediction with its box) and only then calls the loss; the gradient flows back
through all of it.  :func:`check_head` checks that whole path (issue 6 §3):

* **target**: a head's loss function, by default the adapters
  :func:`rankspec.adapters.heads.dense2d_loss` / :class:`~rankspec.adapters.heads.Dense2DLoss`
  (``head="dense2d"``, mmdet layout) and :func:`~rankspec.adapters.heads.ssd3d_loss` /
  :class:`~rankspec.adapters.heads.SSD3DLoss` (``head="ssd3d"``, OpenPCDet / mmdet3d
  layouts), or any callable with the same signature.  It is run on raw output
  tensors; its loss dict gives the loss, autograd gives the gradient with
  respect to the raw outputs;
* **oracle** (:func:`head_reference`): the adapter's own assignment and
  flattening (:func:`~rankspec.adapters.heads.dense2d_targets`,
  :func:`~rankspec.adapters.heads.ssd3d_targets`), which return the flat
  scores, labels, IoUs, image ids and levels, and its index map
  (:func:`~rankspec.adapters.heads.dense2d_score_index`,
  :func:`~rankspec.adapters.heads.ssd3d_score_index`); the NumPy reference on
  the flat arrays (:func:`rankspec.adapters.heads.reference_classification_loss`,
  which calls :mod:`rankspec.refimpl`); and the flat reference gradient
  scattered back to the raw layout through the index map.  RankDetNet's
  IoU-guided loss also sends gradient through the IoUs to the box outputs
  (RankDet Sec. 3.3): the oracle pulls the reference's ``d loss / d IoU`` back
  through the adapter's differentiable IoU; for every other loss the IoU
  labels are constants and the expected box-output gradient of the
  classification loss is zero.

What is compared, per case: every classification entry of the loss dict
(``loss_rank`` and ``loss_sort`` for RS, ``loss_cls``, RankDetNet's
``loss_global`` / ``loss_class`` / ``loss_iou``) with the reference's; the
gradient of the *whole* objective (every entry of the dict, box and direction
losses included - they must send nothing to the class scores, whose weights
are detached, RS Sec. 5.2) with respect to the raw class scores, times a
random ``grad_output``; and the gradient of the classification entries with
respect to the raw box outputs.  The tolerance is the flat harness's
(:mod:`~rankspec.conformance._compare`) for the number of flat scores.

Cases (:mod:`~rankspec.conformance._head_specs`) are random batches drawn from
a seeded NumPy generator in each scenario of :data:`SCENARIOS` - images with
no ground truth, with many boxes, crowded scenes of overlapping boxes, and a
mix - with random numbers of images, pyramid levels, map sizes, anchors per
location and classes, tied scores in a quarter of the cases, and the head's
options drawn per case (2D: ``assigner`` max-IoU or ATSS; 3D: ``layout``
OpenPCDet or mmdet3d).  A failing case is shrunk by removing images, levels,
rows / columns, anchor slots, classes and boxes while it keeps failing the same
way, diagnosed (the other ``scope``, each documented convention of the loss,
and checks for layout / dropped-level / scaling bugs), and reported with its
scenario, seed and a copy-pasteable reproducer.  Reports are the
:class:`~rankspec.conformance.harness.CheckReport` of ``rankspec check``
(text, JSON, JUnit XML); CLI: ``rankspec check-head`` (or ``rankspec check --head``).

Head batches are one kind of case (:class:`HeadKind`) of the engine the array
losses use too (:mod:`~rankspec.conformance._evaluate`): the same evaluator,
shrinking (:mod:`~._shrink`, over the pipeline's smaller variants), diagnosis
(:mod:`~._diagnose`), reproducer rendering (:mod:`~._repro`) and report.

Isolation (issue 10 §1): :func:`check_head` runs each target in a worker process
(:mod:`~rankspec.conformance._worker`, request ``make-head``; the worker side is
:mod:`~rankspec.conformance._head_targets`): the worker imports the target, calls
it on each batch, differentiates it and sends back only the loss entries and the
raw-output gradients as NumPy arrays.  The oracle, the comparison and the verdict
stay here: a target that exits, crashes, hangs (``call_timeout``) or patches
the harness fails the check, and the report is always produced.

Importing this module does not import torch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from rankspec.refimpl import rankdet_loss

from ._compare import Comparison, Tolerance, base_tolerance, case_tolerance, failed_call
from ._constants import DTYPES
from ._evaluate import Evaluator, conclude
from ._head_specs import PIPELINES, SCENARIO_HELP, SCENARIOS, HeadCase, HeadPipeline, get_pipeline
from ._progress import Progress
from ._repro import Script
from ._results import CheckReport, Counterexample, Evaluation, TargetResult
from ._shrink import CandidateShrinker
from ._targets import TargetError, TargetSignatureError, object_name
from ._usage import NonConformant, UsageProblem, check_device, check_names
from ._usage import check_number, check_seed
from ._head_targets import LOSS_KEYS as _KEYS
from ._head_targets import HeadOutcome, HeadTarget, make_head_target
from ._head_targets import run_head_target as _run_target
from ._worker import DEFAULT_CALL_TIMEOUT, Worker, WorkerCrashed, WorkerRunner, picklable
from .specs import SPECS

__all__ = ["HEADS", "HEAD_LOSSES", "SCENARIOS", "SCENARIO_HELP", "HeadCase", "HeadReference", "HeadResult",
           "HeadCounterexample", "head_case", "head_reference", "check_head", "assert_head_conforms",
           "PipelineError"]

HEADS = tuple(PIPELINES)
#: the rankspec losses the heads support (every loss of ``rankspec.adapters.heads.LOSS_NAMES`` but focal)
HEAD_LOSSES = ("rs", "brs", "ap", "ap-interp", "bap", "ape", "dr", "rankdet", "rankdet-global", "rankdet-class",
               "rankdet-iou", "alrp")
_DEFAULT_SCOPE = {name: ("image" if name == "dr" or name.startswith("rankdet") else "batch") for name in HEAD_LOSSES}


class PipelineError(AssertionError):
    """The adapter's flattening does not cover every raw score exactly once (the oracle cannot be built)."""


def head_case(head: str, scenario: str = "crowded", seed: int = 0, index: int = 0, dtype: str = "float64",
              head_options: Optional[Mapping] = None) -> HeadCase:
    """The random batch number ``index`` of ``scenario`` for ``seed`` (what :func:`check_head` draws)."""
    return get_pipeline(head).make_case(scenario, seed, index, dtype, head_options)


# ------------------------------------------------------------------------------------------------
# the oracle
# ------------------------------------------------------------------------------------------------

@dataclass
class HeadReference:
    """The expected result of a head pipeline (see :func:`head_reference`)."""

    loss: float  #: sum of the classification entries
    terms: Dict[str, float]  #: expected value of each classification entry of the loss dict
    grads: Dict[str, object]  #: raw output name -> d loss / d output (a list per level, or one array)
    flat: object  #: the reference :class:`~rankspec.refimpl.LossResult` on the flat scores
    level: np.ndarray  #: [N, C] level of each flat score (the index map)
    position: np.ndarray  #: [N, C] flat position of each score inside its level's raw tensor
    num_positives: int
    num_scores: int


def _fresh(x, requires_grad: bool):
    import torch

    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    return x.detach().clone().requires_grad_(requires_grad)


def head_reference(head, *args, loss: str = "rs", scope: Optional[str] = None,
                   loss_options: Optional[Mapping] = None, **head_options) -> HeadReference:
    """The oracle for one call of a head's loss function: same positional arguments and options.

    ``head_reference("dense2d", cls_scores, bbox_preds, anchors, gt_boxes, gt_labels, loss="rs", assigner="atss")``
    returns the loss entries and the gradients with respect to the raw outputs
    that ``dense2d_loss(cls_scores, ..., loss="rs", assigner="atss")`` must
    produce (module docstring).  Options that only concern the box part
    (``balancing``, ``box_weight``, ...) are accepted and ignored.
    """
    import torch

    from rankspec.adapters.heads import reference_classification_loss

    p = get_pipeline(head)
    if loss not in HEAD_LOSSES:
        raise ValueError(f"loss must be one of {', '.join(HEAD_LOSSES)} (the rankspec losses the heads support), "
                         f"got {loss!r}")
    n_out = len(p.output_names)
    if len(args) != len(p.arg_names):
        raise TypeError(f"head_reference({head!r}, ...) takes the {len(p.arg_names)} positional arguments of the "
                        f"head's loss function ({', '.join(p.arg_names)}), got {len(args)}")
    args = list(args)
    box_index = p.output_names.index(p.box_output)
    for i in range(n_out):
        grad = i == box_index
        args[i] = [_fresh(t, grad) for t in args[i]] if p.levels_are_list else _fresh(args[i], grad)
    flat, level, position = p.flatten(tuple(args), head_options)
    scores = args[0] if p.levels_are_list else [args[0]]
    for k, t in enumerate(scores):
        counts = np.bincount(position[level == k].ravel(), minlength=int(t.numel()))
        if counts.shape[0] != t.numel() or np.any(counts != 1):
            raise PipelineError(f"the {p.name} flattening does not map every entry of {p.score_output}"
                                f"{f'[{k}]' if p.levels_are_list else ''} to exactly one flat score")
    extra = {"gious": getattr(flat, "gious", None)} if loss == "alrp" else {}  # aLRP's e_loc (2D: GIoU)
    ref = reference_classification_loss(loss, flat.logits, flat.labels, flat.ious, flat.image_ids, flat.levels,
                                        scope=scope, **extra, **dict(loss_options or {}))
    grads = {p.score_output: p.unflatten(tuple(args), np.asarray(ref.grad, dtype=np.float64), level, position)}
    box = args[box_index] if p.levels_are_list else [args[box_index]]
    gi = ref.terms.get("grad_ious")
    box_grads = [np.zeros(tuple(b.shape)) for b in box]
    if gi is not None and np.any(np.asarray(gi) != 0) and flat.ious_graph is not None and flat.ious_graph.requires_grad:
        got = torch.autograd.grad(flat.ious_graph, box, grad_outputs=torch.as_tensor(
            np.asarray(gi), dtype=flat.ious_graph.dtype, device=flat.ious_graph.device), allow_unused=True)
        box_grads = [np.zeros(tuple(b.shape)) if g is None else g.detach().cpu().numpy().astype(np.float64)
                     for g, b in zip(got, box)]
    grads[p.box_output] = box_grads if p.levels_are_list else box_grads[0]
    keys = _KEYS[loss]
    terms = {k: float(ref.terms[k]) for k in keys}
    return HeadReference(float(sum(terms.values())), terms, grads, ref, level, position,
                         int((flat.labels >= 0).sum()), int(flat.logits.numel()))


# ------------------------------------------------------------------------------------------------
# comparison
# ------------------------------------------------------------------------------------------------

def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _tolerance(base: Tolerance, case: HeadCase, loss: str, loss_options: Mapping) -> Tolerance:
    """The flat harness's tolerance for the case's flat scores (size, and magnitude through delta)."""
    spec = SPECS.get(loss)
    p = get_pipeline(case.head)
    scores = np.concatenate([a.ravel() for a in case.outputs[p.score_output]]).astype(case.dtype)
    delta = loss_options.get("delta", spec.default_delta if spec is not None else None)
    shim = SimpleNamespace(size=max(scores.size, 1), delta=delta, logits=scores if scores.size else np.zeros(1))
    return case_tolerance(shim, spec if spec is not None else SimpleNamespace(bucketed=False), base)


def _where(p: HeadPipeline, name: str, level: int, idx) -> str:
    lv = f"[{level}]" if p.levels_are_list else ""
    return f"d/d {name}{lv}{list(idx)}"


def compare_head(p: HeadPipeline, expected: HeadReference, outcome: HeadOutcome, tol: Tolerance) -> Comparison:
    """Compare every classification entry and every raw-output gradient entry."""
    g = outcome.grad_output
    msgs = []
    loss_score, loss_err = 0.0, 0.0
    for k, want in expected.terms.items():
        got = outcome.parts.get(k, math.nan)
        e = abs(got - want)
        e = math.inf if math.isnan(e) else e
        s = e / (tol.atol + tol.rtol * abs(want))
        loss_err = max(loss_err, e)
        if s > loss_score:
            loss_score = s
        if s > 1:
            msgs.append(f"{k} {got!r} != expected {want!r}")
    grad_score, grad_err, scale, worst = 0.0, 0.0, 0.0, None
    for name in (p.score_output, p.box_output):
        for lv, (got, want) in enumerate(zip(outcome.grads[name], _as_list(expected.grads[name]))):
            want = np.asarray(want) * g
            got = np.asarray(got, dtype=np.float64)
            if got.shape != want.shape:
                msgs.append(f"gradient of {name} has shape {got.shape}, expected {want.shape}")
                grad_score = math.inf
                continue
            if not want.size:
                continue
            err = np.abs(got - want)
            err = np.where(np.isnan(err), np.inf, err)
            ratio = err / (tol.atol + tol.rtol * np.abs(want))
            k = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
            r = float(ratio[k])
            if r > 1 and (worst is None or r > worst[0]):
                worst = (r, f"{_where(p, name, lv, [int(i) for i in k])}: got {float(got[k])!r}, "
                            f"expected {float(want[k])!r}")
            grad_score = max(grad_score, r)
            grad_err = max(grad_err, float(err.max()))
            scale = max(scale, float(np.abs(want).max()))
    if worst is not None:
        msgs.append(worst[1])
    score = max(loss_score, grad_score)
    ok = bool(score <= 1.0)
    return Comparison(ok=ok, loss_abs=loss_err,
                      loss_rel=loss_err / max(abs(expected.loss), tol.atol, 1e-300) if loss_err else 0.0,
                      grad_abs=grad_err, grad_rel=grad_err / max(scale, tol.atol, 1e-300) if grad_err else 0.0,
                      score=score, failure=None if ok else "mismatch", message="; ".join(msgs),
                      loss_ok=loss_score <= 1.0, grad_ok=grad_score <= 1.0)


# ------------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------------

@dataclass
class HeadCounterexample(Counterexample):
    """A failing head case (shrunk), with its reproducer; renders its own text lines."""

    def to_dict(self) -> dict:
        c = self.case
        d = {"found_in": self.found_in, "scenario": c.scenario, "seed": c.seed, "index": c.index,
             "recipe": c.recipe(), "edits": list(c.edits), "description": c.describe(),
             "original_size": self.original_size, "size": c.size, "shrink_steps": self.shrink_steps,
             "dtype": c.dtype, "grad_output": c.grad_output,
             "head_options": {k: v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else repr(v)
                              for k, v in c.head_options.items()},
             "failure": self.comparison.failure, "message": self.comparison.message,
             "tolerance": self.tolerance.to_dict(), "reproducer": self.reproducer}
        if self.expected is not None:
            d["expected"] = {"loss": self.expected.loss, "terms": self.expected.terms,
                             "num_positives": self.expected.num_positives}
        if self.outcome is not None:
            d["got"] = {"loss": self.outcome.loss, "parts": self.outcome.parts}
        return d

    def text_lines(self) -> List[str]:
        c = self.case
        how = (f"shrunk from {self.original_size} to {c.size} score(s)+box(es) in {self.shrink_steps} step(s)"
               if c.size != self.original_size else f"{c.size} score(s)+box(es)")
        lines = [f"   first counterexample (scenario {c.scenario!r}, seed {c.seed}, case {c.index}; {how}):",
                 f"     found in {self.found_in}",
                 f"     {self.comparison.message or self.comparison.failure}"]
        if c.edits:
            lines.append(f"     minimal case: {c.describe()}")
        if self.expected is not None and self.outcome is not None:
            for k, want in self.expected.terms.items():
                lines.append(f"     {k}: expected {want!r}, got {self.outcome.parts.get(k)!r}")
            lines.append(f"     positives: {self.expected.num_positives} of {self.expected.num_scores} flat scores")
        lines.append(f"     regenerate the unshrunk case: rankspec.conformance.heads.{c.recipe()}")
        return lines


@dataclass
class HeadResult(TargetResult):
    """One row of a head check: one head, loss, target and dtype over every scenario."""

    head: str = ""
    scenarios: Dict[str, Dict[str, int]] = field(default_factory=dict)  #: scenario -> cases, positives, ...

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["head"] = self.head
        d["scenarios"] = self.scenarios
        return d


# ------------------------------------------------------------------------------------------------
# head batches: one kind of case of the shared engine (rankspec.conformance._evaluate)
# ------------------------------------------------------------------------------------------------

class HeadKind:
    """The :class:`~._evaluate.CaseKind` of head batches: one target on one head, loss and dtype.

    Options of the oracle (``reference(case, options)``) are ``{"scope": ..., "loss_options": {...}}``;
    ``cache`` is shared by the targets checked on the same head and loss.
    """

    oracle_errors_are_failures = True
    diagnose_depth = 1  #: the other scope, or one documented convention of the loss

    def __init__(self, p: HeadPipeline, target: HeadTarget, loss: str, scope, loss_options, device, base_tol,
                 cache: dict):
        self.p, self.target, self.loss, self.scope = p, target, loss, scope
        self.loss_options = dict(loss_options or {})
        self.device, self.base_tol, self.cache = device, base_tol, cache
        # not ``spec``: the engine's case-feature hypotheses (:mod:`~._diagnose`) read a kind's ``spec`` as that
        # of flat inputs (logits / targets), which head batches are not
        self.loss_spec = SPECS.get(loss)

    # -- reference, target, comparison ---------------------------------------------------------------
    def reference(self, case: HeadCase, options=None) -> HeadReference:
        scope = self.scope if options is None else options.get("scope", self.scope)
        opts = self.loss_options if options is None else dict(options.get("loss_options", self.loss_options))
        key = (self.loss, scope, repr(sorted(opts.items())), case.head, case.scenario, case.seed, case.index,
               case.dtype, case.edits, repr(sorted(case.head_options.items())))
        hit = self.cache.get(key)
        if hit is None:
            args, _ = self.p.tensors(case, self.device, requires_grad=False)
            kwargs = {**case.head_options, **self.p.head_kwargs(case)}
            try:
                hit = head_reference(self.p, *args, loss=self.loss, scope=scope, loss_options=opts, **kwargs)
            except Exception as exc:  # noqa: BLE001 - cached so a failing oracle is not recomputed
                hit = exc
            self.cache[key] = hit
        if isinstance(hit, Exception):
            raise hit
        return hit

    def run(self, case: HeadCase) -> HeadOutcome:
        return _run_target(self.target, self.p, case, self.loss, self.scope, self.loss_options, self.device)

    def tolerance(self, case: HeadCase) -> Tolerance:
        return _tolerance(self.base_tol, case, self.loss, self.loss_options)

    def compare(self, case, expected, outcome) -> Comparison:
        return compare_head(self.p, expected, outcome, self.tolerance(case))

    # -- shrinking: images, levels, rows / columns, anchor slots, classes, boxes -------------------------
    def shrink_start(self, evaluator, first, seconds: float):
        return first, 0

    def shrinker(self, fails, seconds: float) -> CandidateShrinker:
        return CandidateShrinker(fails, self.p.candidates, max_seconds=seconds,
                                 record=lambda cand, edit, parent: replace(cand, edits=parent.edits + (edit,)))

    # -- diagnosis -----------------------------------------------------------------------------------
    def diagnostic_cases(self, failing):
        return list(failing[:4])

    def alternatives(self, level: int):
        if level != 1:
            return
        scope = self.scope or _DEFAULT_SCOPE[self.loss]
        for other in ("batch", "image"):
            if other != scope:
                yield {"scope": other}, {"scope": other}
        spec = self.loss_spec
        if spec is None:
            return
        base = spec.expected_options()
        for k, choices in spec.option_space().items():
            if k == "scope":
                continue
            for v in choices:
                if v != base.get(k) and self.loss_options.get(k, base.get(k)) != v:
                    yield {"loss_options": {**self.loss_options, k: v}}, {k: v}

    def describe_options(self, changed) -> str:
        if not changed:
            return f"head_reference({self.p.name!r}, ..., loss={self.loss!r})"
        if "scope" in changed:
            scope = self.scope or _DEFAULT_SCOPE[self.loss]
            return f"the reference with scope={changed['scope']!r} (rankspec's scope for {self.loss} is {scope!r})"
        spec = self.loss_spec
        return (f"the reference with loss_options {changed!r}"
                + (f", i.e. {spec.call_string({**spec.expected_options(), **changed})} on the flat scores"
                   if spec is not None else ""))

    def findings(self, evaluator, pairs):
        triples = []
        for case, outcome in pairs:
            try:
                triples.append((case, evaluator.reference(case), outcome))
            except Exception:  # noqa: BLE001 - the oracle failed on this case: nothing to compare
                continue
        return _head_findings(self.p, self, triples) if triples else []

    # -- reproducer and report -------------------------------------------------------------------------
    def script(self, case: HeadCase, expected, outcome, tolerance: Tolerance, message: str = "") -> Script:
        p, target, loss, scope = self.p, self.target, self.loss, self.scope
        dt = case.dtype
        kw = f"loss={loss!r}, scope={scope!r}, loss_options={dict(self.loss_options)!r}"
        kw += "".join(f", {k}={v!r}" for k, v in case.head_options.items())
        if p.name == "ssd3d":
            kw += ", classes=classes"
        keys = _KEYS[loss]
        score, box = p.score_output, p.box_output
        lst = (lambda n: n) if p.levels_are_list else (lambda n: f"[{n}]")
        header = [
            f"# rankspec head-pipeline counterexample: head {p.name!r}, loss {loss!r}, {dt}",
            f"# {case.describe()}",
            f"# the unshrunk case: rankspec.conformance.heads.{case.recipe()}",
            f"# oracle: rankspec.conformance.heads.head_reference = the adapter's assignment and flattening "
            f"({p.targets_function}, {p.index_function})",
            "#         + the NumPy reference on the flat scores + the index map back to the raw outputs",
            f"# target: {target.name}  [{target.kind}]",
        ]
        observed = []
        if expected is not None and outcome is not None:
            observed.append("# this run got " + ", ".join(f"{k}={v!r}" for k, v in outcome.parts.items())
                            + "; expected " + ", ".join(f"{k}={v!r}" for k, v in expected.terms.items()))
        elif message:
            observed.append(f"# this run raised: {message}")
        imports = ["import numpy as np", "import torch", "from rankspec.conformance.heads import head_reference"]
        imports += target.import_code.splitlines()
        setup = list(p.setup_code(case)) + ["", f"kwargs = dict({kw})", f"grad_output = {float(case.grad_output)!r}"]
        call = [target.call_code(p)]
        oracle = [f"expected = head_reference({p.name!r}, {', '.join(p.arg_names)}, **kwargs)  # the oracle"]
        tol = f"atol={tolerance.atol:.3g}, rtol={tolerance.rtol:.3g}"
        checks = [
            f"keys = {keys!r}",
            "total = sum(v.reshape(()) for v in losses.values())  # every entry: box losses must not reach the scores",
            "cls_total = sum(losses[k].reshape(()) for k in keys)",
            f"g_scores = torch.autograd.grad(total, {lst(score)}, grad_outputs=torch.tensor(grad_output, "
            f"dtype=torch.{dt}), retain_graph=True, allow_unused=True)",
            f"g_boxes = (torch.autograd.grad(cls_total, {lst(box)}, grad_outputs=torch.tensor(grad_output, "
            f"dtype=torch.{dt}), allow_unused=True) if cls_total.requires_grad else [None] * len({lst(box)}))",
            "for k in keys:",
            "    print(k, 'got', float(losses[k].detach()), 'expected', expected.terms[k])",
            f"np.testing.assert_allclose([float(losses[k].detach()) for k in keys], [expected.terms[k] for k in keys], "
            f"{tol})",
            f"for got, want in zip(g_scores, {lst(f'expected.grads[{score!r}]')}):",
            "    got = np.zeros(want.shape) if got is None else got.detach().numpy()",
            f"    np.testing.assert_allclose(got, grad_output * want, {tol})",
            f"for got, want in zip(g_boxes, {lst(f'expected.grads[{box!r}]')}):",
            "    got = np.zeros(want.shape) if got is None else got.detach().numpy()",
            f"    np.testing.assert_allclose(got, grad_output * want, {tol})",
        ]
        return Script(header, imports, setup, call, oracle, checks, observed)

    def counterexample(self, minimal, first, steps: int, tolerance: Tolerance, code: str) -> HeadCounterexample:
        return HeadCounterexample(minimal.case, minimal.expected, minimal.outcome, minimal.comparison, tolerance,
                                  first.case.describe(), first.case.size, steps, code)


def _head_findings(p: HeadPipeline, kind: "HeadKind", triples) -> List[str]:
    """Checks for common pipeline bugs; each finding is keyed by its kind and ranked by how many failing cases
    show it (the first one found for a kind gives the wording)."""
    layout = {"dense2d": "mmdet's per level [B, A*C, H, W], channel a*C + c, row (h*W + w)*A + a",
              "ssd3d": "OpenPCDet's [B, H, W, A*C] (mmdet3d: [B, A*C, H, W]), channel a*C + c"}.get(p.name, "")
    found: Dict[str, List] = {}  #: kind -> [text, support, order]

    def add(kind, text):
        if kind not in found:
            found[kind] = [text, 0, len(found)]
        found[kind][1] += 1

    for case, expected, outcome in triples:
        tol = kind.tolerance(case)
        g = outcome.grad_output
        kinds_here = set()

        def note(kind, text):
            if kind not in kinds_here:
                kinds_here.add(kind)
                add(kind, text)

        loss_ok = all(abs(outcome.parts[k] - v) <= tol.atol + tol.rtol * abs(v) for k, v in expected.terms.items())
        name = p.score_output
        exp_all = [np.asarray(w) * g for w in _as_list(expected.grads[name])]
        got_all = outcome.grads[name]
        close = [np.allclose(a, b, atol=tol.atol, rtol=tol.rtol) for a, b in zip(got_all, exp_all)]
        reaches = [bool(np.any(a)) for a in got_all]
        for lv, (got, want) in enumerate(zip(got_all, exp_all)):
            where = f"{name}[{lv}]" if p.levels_are_list else name
            if close[lv]:
                continue
            if not reaches[lv] and np.any(want) and any(reaches):
                note("zero-output", f"no gradient reaches {where} while other outputs get theirs: its scores are "
                                    "not in the loss (a dropped pyramid level or output?)")
            elif np.allclose(np.sort(got.ravel()), np.sort(want.ravel()), atol=tol.atol, rtol=tol.rtol):
                note("permuted", f"d/d {where} holds the expected values in other places: the flat gradient is "
                                 f"mapped back to the raw layout in a different order than the flattening ({layout})")
            else:
                w = want.ravel()
                if np.dot(w, w) > 0 and reaches[lv]:
                    r = float(np.dot(got.ravel(), w) / np.dot(w, w))
                    if abs(r - 1) > 1e-3 and abs(r) > 1e-6 and np.allclose(got, r * want, atol=tol.atol, rtol=tol.rtol):
                        if g != 1.0 and abs(r * g - 1) < 1e-6:
                            note("grad-output", "the gradient is not multiplied by the incoming gradient "
                                                "(grad_output)")
                        else:
                            note(f"scale{r:.6g}", f"d/d {where} is {r:.6g} times the expected gradient")
        if not any(reaches) and any(np.any(w) for w in exp_all):
            note("no-gradient", f"no gradient reaches {name} at all")
        name = p.box_output
        for lv, (got, want) in enumerate(zip(outcome.grads[name], _as_list(expected.grads[name]))):
            want = np.asarray(want) * g
            where = f"{name}[{lv}]" if p.levels_are_list else name
            if np.allclose(got, want, atol=tol.atol, rtol=tol.rtol):
                continue
            if not np.any(want) and np.any(got):
                note("iou-attached", f"the classification loss sends gradient to {where}: the IoU labels are not "
                                     "detached")
            elif np.any(want) and not np.any(got):
                note("iou-detached", f"no gradient of the IoU-guided loss reaches {where} through the IoUs "
                                     "(RankDet Sec. 3.3)")
        if loss_ok and not all(close):
            note("loss-only", "the loss agrees but the gradient with respect to the raw scores does not: the error "
                              "is in the backward pass or in how the flat gradient reaches the raw outputs")
    # most supported first; the generic "loss agrees" after any specific finding with the same support
    ranked = sorted(found.values(), key=lambda f: (-f[1] + (0.5 if f[0].startswith("the loss agrees") else 0), f[2]))
    n = len(triples)
    return [text if support == n else f"{text} [{support} of {n} failing cases]" for text, support, _ in ranked]



class _HeadRunner:
    """The :class:`~._evaluate.Evaluator` runner of one head target on one loss and settings, in a worker process.

    It wraps the target's :class:`~._worker.WorkerRunner` (shared by every loss and dtype of the target, so a
    target that hung once is not called again anywhere in the check) and sends each case with the loss, scope,
    loss options and device the in-process path passes (:meth:`HeadTarget.run`).
    """

    def __init__(self, inner: WorkerRunner, loss: str, scope, loss_options, device: str):
        self.inner, self.loss, self.scope, self.device = inner, loss, scope, device
        self.loss_options = dict(loss_options or {})

    @property
    def stopped(self) -> Optional[str]:
        return self.inner.stopped

    def __call__(self, case):
        return self.submit(case)()

    def submit(self, case):
        return self.inner.submit((case, self.loss, self.scope, self.loss_options, self.device))


def _make_targets(p: HeadPipeline, target, name, worker: Optional[Worker], call_timeout: float):
    """``[(HeadTarget or None, runner or None, failure or None)]``: the head targets of ``p`` (the bundled
    adapters when ``target`` is None), made in ``worker`` when there is one (its import runs there).  A target
    whose import kills, exits or hangs the worker gets ``(None, None, (label, WorkerCrashed))``."""
    refs = [(p.function_ref, p.function_ref), (p.module_ref, p.module_ref)] if target is None else [(target, name)]
    out = []
    for k, (ref, label) in enumerate(refs):
        if worker is None:
            out.append((make_head_target(ref, p, name=label), None, None))
            continue
        key = ("head", p.name, k)
        try:
            t = worker.make_head(key, ref, p.name, label, call_timeout)
        except WorkerCrashed as exc:
            out.append((None, None, (label or (ref if isinstance(ref, str) else object_name(ref)), exc)))
            continue
        except TargetError as exc:
            if target is None:
                raise TargetError(f"the bundled adapter {label} is not available: {exc}") from exc
            raise
        out.append((t, WorkerRunner(worker, key, call_timeout), None))
    return out


def _failed_start(p: HeadPipeline, loss: str, label: str, exc: WorkerCrashed, dtype: str, device: str, base,
                  case: Optional[HeadCase]) -> "HeadResult":
    """The row of a head target whose import killed, exited or hung its worker: a failure, never a pass."""
    res = HeadResult(f"{p.name}/{loss}", label, dtype, "unknown", device, base, head=p.name)
    if case is not None:
        res.add(Evaluation(case.astype(dtype), None, None, failed_call(exc.kind, exc.message)), "probe")
    else:  # pragma: no cover - every check draws at least one case
        res.failed = 1
    res.notes.append(f"the target failed before its first case could be checked: {exc.message}")
    return res


def _loss_hint(v) -> str:
    if v == "focal":
        return " (focal loss has no rankspec reference)"
    return " (the rankspec losses the detector heads support)"


def check_head(head=None, loss=None, *, target=None, scenarios: Sequence[str] = SCENARIOS, examples: int = 8,
               seed: int = 0, dtypes: Sequence[str] = DTYPES, device: str = "cpu", scope: Optional[str] = None,
               loss_options: Optional[Mapping] = None, head_options: Optional[Mapping] = None,
               atol: Optional[float] = None, rtol: Optional[float] = None, shrink: bool = True,
               shrink_seconds: float = 10.0, diagnose: bool = True, diagnose_seconds: float = 10.0,
               progress=False, name: Optional[str] = None, call_timeout: float = DEFAULT_CALL_TIMEOUT,
               isolate: Optional[bool] = None):
    """Check a head pipeline (raw outputs -> loss and gradient) against the oracle (module docstring).

    Parameters
    ----------
    head:
        ``"dense2d"``, ``"ssd3d"``, a list of them, or ``None`` for both (a
        target needs exactly one).
    loss:
        Loss name(s) of :data:`HEAD_LOSSES` (default: all of them).
    target:
        ``None`` checks the bundled adapters (the head's loss function and its
        ``nn.Module``); else a callable with the loss function's signature
        (``f(cls_scores, bbox_preds, anchors, gt_boxes, gt_labels, *, loss,
        scope, loss_options, **head_options) -> dict``), an ``nn.Module``
        class (built with those keywords) or instance, or a ``module:attr`` /
        ``file.py:attr`` string.  An instance fixes its own options: its loss,
        scope, loss options and head options are read from its ``loss`` /
        ``options`` attributes where it has them (those of
        :class:`~rankspec.adapters.heads.Dense2DLoss` / ``SSD3DLoss``), the
        adapter's defaults otherwise, and the oracle and the cases follow them.
    scenarios, examples, seed:
        Scenarios of :data:`SCENARIOS` and the number of random batches drawn
        in each (per loss, target and dtype), reproducible for ``seed``.
    dtypes, device:
        Float types and device of the raw output tensors.
    scope, loss_options, head_options:
        Passed to target and oracle alike: the ranking scope (default: each
        loss's), the loss's convention keywords, and fixed head options (e.g.
        ``{"assigner": "atss"}``, ``{"layout": "mmdet3d"}`` or the 3D head's
        anchor classes ``{"classes": (CAR, ...)}``; drawn per case where not
        fixed).
    atol, rtol, shrink, shrink_seconds, diagnose, diagnose_seconds, progress:
        As for :func:`rankspec.conformance.check`.
    call_timeout, isolate:
        Where the target runs, as for :func:`rankspec.conformance.check` (:mod:`~rankspec.conformance._worker`):
        isolated, the target is imported, called and differentiated in a worker process, which sends back the
        loss entries and the raw-output gradients as NumPy arrays; the oracle, the comparison and the verdict
        stay in this process.  A target that exits (``sys.exit``, ``os._exit``), crashes, or patches the
        harness fails the check (its rows fail, the report is complete); a call that runs over
        ``call_timeout`` seconds fails its case and the target is not called again (one time-out per target,
        not per case).  ``isolate=None`` (default) isolates the bundled adapters, ``module:attr`` /
        ``file.py:attr`` strings and targets that can be pickled; others run in this process with a note.
        The command line always isolates.

    torch runs with one intra-op thread during the check (the batches are
    small; the caller's thread count is restored afterwards).

    Returns a :class:`~rankspec.conformance.harness.CheckReport` (one row per
    head/loss, target and dtype); raises ``UsageProblem`` / ``TargetError`` /
    ``TargetSignatureError`` for bad arguments.
    """
    t0 = time.monotonic()
    heads = check_names(head, HEADS, "head")
    losses = check_names(loss, HEAD_LOSSES, "loss", _loss_hint)
    scen = check_names(scenarios, SCENARIOS, "scenario")
    dts = check_names(dtypes, DTYPES, "dtype")
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
        raise UsageProblem(f"examples must be an integer >= 1 (random batches per scenario), got {examples!r}")
    # no option value may make the check vacuous (a tolerance of inf or -1, a nan time budget)
    atol, rtol = check_number(atol, "atol"), check_number(rtol, "rtol")
    seed = check_seed(seed)
    shrink_seconds = check_number(shrink_seconds, "shrink_seconds", allow_none=False)
    diagnose_seconds = check_number(diagnose_seconds, "diagnose_seconds", allow_none=False)
    if scope is not None and scope not in ("batch", "image"):
        raise UsageProblem(f"scope must be 'batch', 'image' or None (each loss's own), got {scope!r}")
    for what, v in (("loss_options", loss_options), ("head_options", head_options)):
        if v is not None and not isinstance(v, Mapping):
            raise UsageProblem(f"{what} must be a dict, got {type(v).__name__}")
    _check_loss_options(losses, loss_options or {})
    check_device(device)
    call_timeout = check_number(call_timeout, "call_timeout", positive=True, allow_none=False)
    if isolate not in (None, True, False):
        raise UsageProblem(f"isolate must be True, False or None (automatic), got {isolate!r}")
    in_process_note = None
    sendable = target is None or isinstance(target, str) or picklable(target)
    if isolate is None:
        isolate = sendable
        if not isolate:
            in_process_note = ("ran in this process: the target cannot be sent to a worker (not picklable, or "
                               "defined in __main__ / a file loaded by path), so an exit, crash, hang or patch of "
                               "the harness by the target is not contained; pass a 'module:attr' string to "
                               "isolate it")
    elif isolate and not sendable:
        raise UsageProblem("isolate=True needs a target that can be pickled (a module-level function or class, "
                           "an instance of one, or a 'module:attr' string); pass isolate=False to run it "
                           "in this process")
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is installed in the project env
        raise UsageProblem("check_head needs torch (pip install rankspec[torch])") from None
    if target is not None and len(heads) != 1:
        raise UsageProblem("a target is checked against one head: pass head='dense2d' or head='ssd3d'")
    worker = Worker() if isolate else None
    try:
        return _check_heads(heads, losses, loss, scen, dts, target, name, worker, in_process_note, examples=examples,
                            seed=seed, device=device, scope=scope, loss_options=loss_options,
                            head_options=head_options, atol=atol, rtol=rtol, shrink=shrink,
                            shrink_seconds=shrink_seconds, diagnose=diagnose, diagnose_seconds=diagnose_seconds,
                            progress=progress, call_timeout=call_timeout, t0=t0)
    finally:
        if worker is not None:
            worker.close()


def _check_heads(heads, losses, loss, scen, dts, target, name, worker, in_process_note, *, examples, seed, device,
                 scope, loss_options, head_options, atol, rtol, shrink, shrink_seconds, diagnose, diagnose_seconds,
                 progress, call_timeout, t0):
    import torch

    from rankspec.refimpl import __version__

    plan = []  #: (pipeline, [(HeadTarget or None, runner or None, failure or None)])
    for hd in heads:
        p = get_pipeline(hd)
        made = _make_targets(p, target, name, worker, call_timeout)
        for t, _, _ in made:
            fixed = t.fixed_loss if t is not None and t.kind == "module-instance" else None
            if fixed is not None:
                if loss is None and fixed in HEAD_LOSSES:
                    losses = [fixed]
                elif losses != [fixed]:
                    raise UsageProblem(f"{t.name} is an instance fixed to loss {fixed!r}; check it with loss={fixed!r}")
        plan.append((p, made))
    settings = {}  #: (head, target index) -> (cases, scope, loss_options, notes)
    for p, made in plan:
        for k, (t, _, _) in enumerate(made):
            t_scope, t_opts, fixed, notes = scope, dict(loss_options or {}), dict(head_options or {}), []
            if in_process_note:
                notes.append(in_process_note)
            if t is not None and t.kind == "module-instance":
                # an instance fixes its own options: the oracle and the cases follow them (adapter defaults else)
                inst = dict(t.fixed_options or {})
                t_scope = inst.pop("scope", scope)
                t_opts = dict(inst.pop("loss_options", None) or t_opts)
                own = {k: v for k, v in inst.items() if k in p.head_option_keys}
                fixed = {**p.instance_defaults(), **own, **fixed}
                notes.append(f"an instance fixes its options: checked with scope={t_scope!r}, loss_options={t_opts!r}, "
                             + ", ".join(f"{k}={v!r}" for k, v in fixed.items() if k != "classes"))
            cases = [p.make_case(s, seed, i, "float64", fixed) for s in scen for i in range(examples)]
            settings[(p.name, k)] = (cases, t_scope, t_opts, notes)
    total = sum(len(settings[(p.name, k)][0]) * len(losses) * len(dts) for p, made in plan for k in range(len(made)))
    bar = progress if isinstance(progress, Progress) else Progress(
        total, enabled=None if progress is None else bool(progress))
    base = {dt: base_tolerance(dt, {"atol": atol, "rtol": rtol}) for dt in dts}
    results = []
    # the batches are small: one intra-op thread is fastest, and on a loaded machine torch's thread pool can make
    # each small reduction take milliseconds; the caller's setting is restored afterwards
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for p, made in plan:
            for ls in losses:
                cache: dict = {}
                for k, (t, inner, failed) in enumerate(made):
                    cases, t_scope, t_opts, notes = settings[(p.name, k)]
                    for dt in dts:
                        if failed is not None:
                            res = _failed_start(p, ls, failed[0], failed[1], dt, device, base[dt],
                                                cases[0] if cases else None)
                            bar.advance(len(cases))
                        else:
                            runner = None if inner is None else _HeadRunner(inner, ls, t_scope, t_opts, device)
                            res = _check_one(p, t, ls, dt, cases, t_scope, t_opts, device, base[dt], cache, bar,
                                             shrink, shrink_seconds, diagnose, diagnose_seconds, runner=runner)
                        res.notes[:0] = notes
                        results.append(res)
    finally:
        torch.set_num_threads(threads)
        if not isinstance(progress, Progress):
            bar.close()
    titles = {}
    for p, _ in plan:
        for ls in losses:
            spec_title = _loss_title(ls)
            titles[f"{p.name}/{ls}"] = (f"{p.title} + {spec_title}",
                                        f"head_reference({p.name!r}, ..., loss={ls!r}): {p.targets_function} + "
                                        f"reference_classification_loss + {p.index_function}")
    header = (f"rankspec check-head {__version__}: seed {seed}, {examples} random batch(es) per scenario "
              f"({', '.join(scen)}) per target and dtype, device {device}")
    return CheckReport(results, seed, examples, device, __version__, time.monotonic() - t0, "check-head",
                         titles=titles, header=header)


def _check_loss_options(losses, options: Mapping) -> None:
    """Every loss option must be a keyword of the reference the head losses call (UsageProblem otherwise)."""
    import inspect

    for ls in losses:
        fn = rankdet_loss if ls.startswith("rankdet") else SPECS[ls].function
        params = set(inspect.signature(fn).parameters) - {"logits", "labels", "targets", "ious", "levels",
                                                           "image_ids"}
        if ls.startswith("rankdet"):
            params.add("weights")
        if ls == "alrp":  # the head builds e_loc (rankspec.adapters.heads.losses.ALRP_HEAD_OPTIONS)
            params = (params - {"regression_losses", "backend"}) | {"e_loc", "tau"}
        bad = [k for k in options if k not in params]
        if bad:
            raise UsageProblem(f"loss {ls!r} takes no option {', '.join(map(repr, bad))} "
                         f"(its options: {', '.join(sorted(params))})")


def _loss_title(loss: str) -> str:
    spec = SPECS.get(loss)
    return spec.title if spec is not None else loss


def _check_one(p, t, loss, dtype, cases, scope, loss_options, device, base, cache, bar, shrink, shrink_seconds,
               do_diagnose, diagnose_seconds, runner=None):
    t0 = time.monotonic()
    res = HeadResult(f"{p.name}/{loss}", t.name, dtype, t.convention, device, base, head=p.name)
    evaluator = Evaluator(HeadKind(p, t, loss, scope, loss_options, device, base, cache), runner)
    label = f"{p.name}/{loss} {dtype} {t.name}"
    not_run = 0
    for case in cases:
        if runner is not None and runner.stopped:  # the target is not called again (it hung, or kept crashing)
            not_run += 1
            bar.advance(1, label)
            continue
        c = case.astype(dtype)
        e = evaluator.evaluate(c)
        res.add(e, "generated")
        st = res.scenarios.setdefault(c.scenario, {"cases": 0, "positives": 0, "images_without_gt": 0})
        st["cases"] += 1
        st["positives"] += e.expected.num_positives if e.expected is not None else 0
        st["images_without_gt"] += sum(n == 0 for n in c.num_gt)
        bar.advance(1, label)
    if not_run:
        res.notes.append(f"stopped after {res.cases} case(s), {not_run} case(s) not run: {runner.stopped}")
        if not res.cases:  # the target stopped in an earlier row: this row is a failure too, never a pass
            res.add(Evaluation(cases[0].astype(dtype), None, None,
                               failed_call("not-run", f"not run: {runner.stopped}")), "generated")
    if res.failed:
        conclude(evaluator, res, shrink=shrink, shrink_seconds=shrink_seconds, diagnose_it=do_diagnose,
                 diagnose_seconds=diagnose_seconds)
    no_pos = [s for s, st in res.scenarios.items() if st["positives"] == 0 and s != "no-gt"]
    if no_pos:
        res.notes.append(f"no positive anchor in any case of scenario(s) {', '.join(no_pos)}")
    res.seconds = time.monotonic() - t0
    return res


def assert_head_conforms(head, loss=None, *, target=None, **kwargs):
    """:func:`check_head` for any test runner: raises ``NonConformant`` (an ``AssertionError``) with the report."""
    __tracebackhide__ = True
    report = check_head(head, loss, target=target, **kwargs)
    if not report.conformant:
        raise NonConformant(report.format_text(), report)
    return report

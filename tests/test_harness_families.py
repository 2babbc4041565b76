"""The conformance harness on the other loss families: RankDetNet, DR Loss, APE / ARPS and the GIoU Loss.

Checks that every family's spec runs the bundled torch adapters against the
reference (loss, logits gradient and - for RankDet's IoU-guided loss - the IoU
gradient) in float32 and float64, that deliberately wrong variants are caught
and, where they are a documented convention, diagnosed as that convention,
and that the input builders, the golden vectors and the CLI handle inputs
other than (logits, labels, delta).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rankspec.conformance import check
from rankspec.conformance._cases import (CaseConfig, RngSource, _rankdet_sanitize, build_case, diagnostic_cases,
                                         probe_case, random_cases)
from rankspec.conformance._golden import export_vectors, load_vectors, verify_vectors
from rankspec.conformance._targets import TargetSignatureError, make_target
from rankspec.conformance.specs import SPECS, get_spec
from rankspec.refimpl import dr_loss, giou_loss

torch = pytest.importorskip("torch")
import rankspec.adapters.torch as A  # noqa: E402
import rankspec.adapters.torch.rankdet as R  # noqa: E402

FAMILIES = ["rankdet-global", "rankdet-class", "rankdet-iou", "rankdet", "dr", "ape", "ape-pairwise", "giou"]
MUTANT = dict(examples=12, dtypes=["float64"], shrink_seconds=3.0, diagnose_seconds=15.0, seed=1)


def test_every_issue4_loss_has_a_spec_with_bundled_torch_targets():
    assert set(FAMILIES) <= set(SPECS)
    for name in FAMILIES:
        spec = get_spec(name)
        assert spec.bundled_targets and all(t.ref.startswith("rankspec.adapters.torch:") for t in spec.bundled_targets)
        assert spec.case_builder is not None and spec.kinds
    assert [i.name for i in get_spec("rankdet-iou").extra_inputs] == ["ious", "levels"]
    assert [i.name for i in get_spec("rankdet-iou").grad_inputs] == ["ious"]
    assert get_spec("dr").extra_inputs[0].keyword and get_spec("dr").argument_names == ("logits", "labels",
                                                                                       "image_ids")
    assert get_spec("giou").argument_names == ("pred_boxes", "target_boxes", "weights")


@pytest.mark.parametrize("loss", FAMILIES)
def test_bundled_adapters_conform_in_float32_and_float64(loss):
    report = check(None, loss, examples=8, dtypes=["float32", "float64"], seed=4)
    assert report.conformant, report.format_text()
    spec = get_spec(loss)
    assert len(report.results) == 2 * len(spec.bundled_targets)
    assert all(r.cases >= 8 for r in report.results)
    assert {r.dtype for r in report.results} == {"float32", "float64"}


def test_the_iou_gradient_of_the_iou_guided_loss_is_compared():
    spec = get_spec("rankdet-iou")
    target = make_target("rankspec.adapters.torch:iou_guided_ranking_loss", spec)
    case = build_case(RngSource(np.random.default_rng(3)), spec, CaseConfig(use_grad_output=True),
                      kind="crowded_level", size=30)
    out = target.run(case)
    ref = spec.reference(case.logits, case.targets, case.delta, extras=case.extras)
    assert set(out.extra_grads) == {"ious"}
    np.testing.assert_allclose(out.extra_grads["ious"], case.grad_output * ref.terms["grad_ious"], rtol=1e-9,
                               atol=1e-12)
    assert np.any(ref.terms["grad_ious"] != 0)


# -- wrong variants: caught, and diagnosed where they are a documented convention ---------------------------------

def dr_tau_one(logits, labels, image_ids=None):
    """DR Loss without the weight tau = 4 (tau = 1: Eq. 9 itself)."""
    return A.dr_loss(logits, labels, image_ids=image_ids, tau=1.0)


def dr_gamma_quarter(logits, labels, image_ids=None):
    """DR Loss with margin 0.25 instead of 0.5 (not a documented option)."""
    r = dr_loss(logits, labels, image_ids=image_ids, gamma=0.25)
    return r.loss, r.grad


def iou_grad_both(logits, labels, ious, levels=None):
    """IoU-guided loss that lets the gradient reach both IoUs of a pair (Table 4 'both')."""
    return A.iou_guided_ranking_loss(logits, labels, ious, levels, iou_grad="both")


def global_gradient_through_z(logits, labels):
    """Global ranking loss whose re-weighting factor z is not detached (violates Sec. 3.1)."""
    original = R.reweighted_pair_loss

    def leaky(neg_f, pos_f, *, rank_function="exponential", reweighting="dynamic", z=None):
        L = R.rank_function_values(neg_f.reshape(-1, 1) - pos_f.reshape(1, -1), rank_function)
        return (L / L.sum() * L).sum()  # z = L / sum L with its gradient

    R.reweighted_pair_loss = leaky
    try:
        return R.global_ranking_loss(logits, labels)
    finally:
        R.reweighted_pair_loss = original


def ape_without_lambda_scaling(logits, labels, ious):
    """APE loss without the 1/lambda that makes the CE gradient the error-driven update."""
    return A.ape_loss(logits, labels, ious, scale_by_lambda=False)


def class_ohem(logits, labels):
    """Class-specific ranking loss with OHEM 1:3 instead of the group strategy."""
    return A.class_specific_ranking_loss(logits, labels, mining="ohem")


def giou_unweighted_mean(pred_boxes, target_boxes, weights=None):
    """GIoU Loss divided by N instead of the sum of the score-based weights."""
    return A.giou_loss(pred_boxes, target_boxes, weights, reduction="mean")


@pytest.mark.parametrize("target, loss, expected", [
    (dr_tau_one, "dr", "matches dr_loss(tau=1.0)"),
    (iou_grad_both, "rankdet-iou", "matches iou_guided_ranking_loss(iou_grad='both')"),
    (ape_without_lambda_scaling, "ape", "matches ape_loss(scale_by_lambda=False)"),
    (class_ohem, "rankdet-class", "matches class_specific_ranking_loss(mining='ohem')"),
    (giou_unweighted_mean, "giou", "matches giou_loss(reduction='mean')"),
])
def test_documented_conventions_are_caught_and_diagnosed(target, loss, expected):
    report = check(target, loss, **MUTANT)
    r = report.results[0]
    assert not report.conformant and r.failed > 0, report.format_text()
    assert r.diagnosis.kind == "convention" and r.diagnosis.summary.startswith(expected), r.diagnosis.summary
    assert r.counterexample is not None and r.counterexample.case.size <= r.counterexample.original_size


@pytest.mark.parametrize("target, loss", [(dr_gamma_quarter, "dr"), (global_gradient_through_z, "rankdet-global")])
def test_undocumented_bugs_are_caught_but_not_called_a_convention(target, loss):
    report = check(target, loss, **MUTANT)
    r = report.results[0]
    assert not report.conformant and r.failed > 0
    assert r.diagnosis.kind != "convention", r.diagnosis.summary
    if target is global_gradient_through_z:
        # the loss value is right (z only changes the gradient); the counterexample is tiny
        assert r.counterexample.comparison.loss_ok and not r.counterexample.comparison.grad_ok
        assert r.counterexample.case.logits.shape[0] <= 4


def test_iou_gradient_counterexample_reproducer_runs_and_fails(tmp_path):
    path = tmp_path / "my_rankdet.py"
    path.write_text(textwrap.dedent('''
        from rankspec.adapters.torch import iou_guided_ranking_loss

        def mine(logits, labels, ious, levels=None):
            return iou_guided_ranking_loss(logits, labels, ious, levels, iou_grad="both")
    '''))
    report = check(f"{path}:mine", "rankdet-iou", **MUTANT)
    cx = report.results[0].counterexample
    assert "grad of ious" in cx.comparison.message and cx.comparison.loss_ok
    assert "ious = np.array(" in cx.reproducer and "got_grad_ious" in cx.reproducer
    out = subprocess.run([sys.executable, "-c", cx.reproducer], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "AssertionError" in out.stderr, out.stdout + out.stderr
    import re

    line = int(re.search(r'File "<string>", line (\d+)', out.stderr).group(1))
    assert "got_grad_ious, expected_grad_ious" in cx.reproducer.splitlines()[line - 1]  # the IoU gradient differs


@pytest.mark.parametrize("loss", FAMILIES)
def test_reproducers_of_the_bundled_targets_run_and_agree(loss):
    # a reproducer must rebuild every input and call the target exactly as the harness does (keyword inputs,
    # module classes, reference and adapter sharing a name); for a conformant target its asserts pass
    from rankspec.conformance._compare import Tolerance
    from rankspec.conformance.harness import reproducer
    from rankspec.conformance.harness import bundled_targets

    spec = get_spec(loss)
    for t in bundled_targets(spec):
        case = random_cases(spec, CaseConfig(max_size=20, use_grad_output=True), 1, seed=2)[0]
        expected = spec.reference(case.logits, case.targets, case.delta, extras=case.extras)
        code = reproducer(spec, t, case, expected, t.run(case), Tolerance(1e-9, 1e-7))
        scope = {}
        exec(compile(code, f"<reproducer {t.name}>", "exec"), scope)
        assert scope["got_loss"] == pytest.approx(expected.loss, rel=1e-9, abs=1e-12)


def test_a_target_with_the_wrong_arity_is_a_signature_error():
    def two_args(logits, labels):
        return logits.sum()

    with pytest.raises(TargetSignatureError, match=r"f\(logits, labels, ious, levels\)"):
        make_target(two_args, get_spec("rankdet-iou"))


def test_a_numpy_pair_target_gets_keyword_inputs():
    def pair(logits, labels, image_ids=None):
        r = dr_loss(logits, labels, image_ids=image_ids)
        return r.loss, r.grad

    report = check(pair, "dr", examples=6, dtypes=["float64"])
    assert report.conformant and report.results[0].convention == "pair"
    # without image_ids every row is one image: caught on cases with several images
    bad = check(lambda logits, labels, image_ids=None: tuple(dr_loss(logits, labels)), "dr", examples=30,
                dtypes=["float64"], shrink_seconds=2.0, diagnose=False)
    assert not bad.conformant


# -- the diagnosis searches each family's registered conventions ------------------------------------------------

def test_option_space_is_the_registered_conventions_the_reference_accepts():
    space = get_spec("rankdet").option_space()
    assert {"reweighting", "mining", "iou_grad", "iou_pairs", "alpha", "objectness"} <= set(space)
    assert "num_groups" not in space and "scope" not in space  # not a parameter of rankdet_loss / AP-only
    ape = get_spec("ape").option_space()
    assert ape["pair_threshold"] == (None, float("inf"))  # 'float >= 0' is a description, not a value
    dr = get_spec("dr")
    assert "image_ids" not in dr.option_space() and "image_ids" not in dr.expected_options()  # an input
    assert dr.option_space()["tau"] == (4.0, 1.0) and dr.expected_options()["lambda_neg"] == pytest.approx(
        0.1 / np.log(3.5))
    assert get_spec("rs").option_space()["scope"] == ("batch", "image")  # the AP / RS family is unchanged


# -- input builders ------------------------------------------------------------------------------------------

def test_rankdet_cases_follow_the_input_layout():
    spec = get_spec("rankdet")
    for c in random_cases(spec, CaseConfig(dtype="float32", max_size=300), 60, seed=5):
        n, C = c.logits.shape
        ious, levels = c.extras
        assert c.logits.dtype == np.float32 and c.targets.dtype == np.int64 and levels.dtype == np.int64
        assert ious.shape == levels.shape == (n,) and np.all((ious >= 0) & (ious <= 1)) and c.delta is None
        if c.kind == "onehot":  # one-hot rows, all-zero = background
            assert c.targets.shape == (n, C) and set(np.unique(c.targets)) <= {0, 1}
            assert np.all(c.targets.sum(axis=1) <= 1) and c.num_positives == c.targets.sum()
        else:
            assert c.targets.shape == (n,) and np.all((c.targets >= -2) & (c.targets < C))
            assert c.num_positives == np.count_nonzero(c.targets >= 0)
    kinds = {c.kind for c in diagnostic_cases(spec, CaseConfig())}
    assert kinds == set(spec.kinds)


def test_dr_giou_and_ape_cases_follow_their_input_layouts():
    for c in random_cases(get_spec("dr"), CaseConfig(max_size=200), 40, seed=6):
        (ids,) = c.extras
        assert ids.shape == (c.logits.shape[0],) and ids.dtype == np.int64 and np.all(ids >= 0)
        if c.targets.shape == c.logits.shape:
            assert set(np.unique(c.targets)) <= {-1, 0, 1}
        else:
            assert np.all((c.targets >= -1) & (c.targets <= c.logits.shape[1]))
    for c in random_cases(get_spec("giou"), CaseConfig(max_size=200), 40, seed=7):
        pred, target, (w,) = c.logits, c.targets, c.extras
        assert pred.shape == target.shape == (len(w), 4) and np.all(w >= 0)
        assert np.all(pred[:, 2:] >= pred[:, :2]) and np.all(target[:, 2:] > target[:, :2])
        assert c.positive_above is None and "|P|" not in c.describe()
    for c in random_cases(get_spec("ape"), CaseConfig(max_size=200), 40, seed=8):
        (ious,) = c.extras
        assert set(np.unique(c.targets)) <= {0.0, 1.0} and np.all(ious[c.targets > 0] > 0) and c.delta is None
    assert all(c.delta is not None for c in random_cases(get_spec("ape-pairwise"), CaseConfig(), 10, seed=9))
    assert probe_case(get_spec("dr")).extras[0].dtype == np.int64


def test_rankdet_sanitizer_moves_negatives_off_group_edges():
    # one class, a positive and four negatives whose confidences sit exactly on the 1/3 and 2/3 edges of
    # the group range [0.2, 0.8]: 0.2 + 0.6 / 3 = 0.4 and 0.2 + 2 * 0.6 / 3 = 0.6
    f = np.array([0.2, 0.4, 0.6, 0.8])
    logits = np.concatenate([[3.0], np.log(f) - np.log1p(-f)])[:, None].astype(np.float32)
    labels = np.array([0, -1, -1, -1, -1])
    clean = _rankdet_sanitize(logits, labels, np.float32)
    from scipy.special import expit

    for G in (3, 15):  # class-specific groups, and global groups (the same column here)
        q = (expit(clean[1:, 0].astype(np.float64)) - 0.2) * G / 0.6
        assert np.all(np.abs(q[1:3] - np.round(q[1:3])) > 0.05)  # the edge negatives moved off every edge
    assert clean[1, 0] == logits[1, 0] and clean[4, 0] == logits[4, 0]  # the extremes stay
    assert clean[0, 0] == logits[0, 0]  # positives are never touched
    # on the sanitised input a correct float32 implementation agrees with the reference
    spec = get_spec("rankdet-class")
    ref = spec.reference(clean, labels, None)
    got = A.class_specific_ranking_loss(torch.tensor(clean), torch.tensor(labels))
    assert float(got) == pytest.approx(ref.loss, rel=1e-5)


# -- golden vectors and the CLI -------------------------------------------------------------------------------

def test_golden_vectors_of_the_other_families_round_trip(tmp_path):
    d = str(tmp_path)
    export_vectors(d, ["rankdet-iou", "dr", "giou"], examples=4, seed=2, max_size=60)
    meta = json.load(open(os.path.join(d, "rankdet-iou.json")))
    assert [i["name"] for i in meta["inputs"]] == ["logits", "labels", "ious", "levels"]
    assert [i["dtype"] for i in meta["inputs"]] == ["float32", "int64", "float32", "int64"]
    assert [i["differentiable"] for i in meta["inputs"]] == [True, False, True, False]
    assert meta["delta"] is None and all(c["delta"] is None for c in meta["cases"]) and len(meta["cases"]) == 4
    assert meta["reference"]["call"].startswith("iou_guided_ranking_loss(logits, labels, ious, levels, ")
    with np.load(os.path.join(d, "rankdet-iou.npz")) as z:
        assert z["c0000_grad_ious"].shape == z["c0000_ious"].shape
    _, pairs = load_vectors(d, "giou")
    for case, expected in pairs:
        r = giou_loss(case.logits.astype(np.float64), case.targets.astype(np.float64),
                      case.extras[0].astype(np.float64))
        assert expected.loss == r.loss and np.array_equal(expected.grad, r.grad)
    assert json.load(open(os.path.join(d, "dr.json")))["inputs"][2] == {
        "name": "image_ids", "key": "image_ids", "dtype": "int64", "keyword": True, "differentiable": False}
    good = verify_vectors(d, None, ["rankdet-iou", "dr", "giou"], dtypes=["float32", "float64"])
    assert good.conformant, good.format_text()
    bad = verify_vectors(d, dr_tau_one, ["dr"], dtypes=["float64"], shrink=False)
    assert not bad.conformant and "tau=1.0" in bad.results[0].diagnosis.summary


def _cli(*args):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "rankspec.conformance", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_checks_a_family_and_rejects_delta_for_a_loss_without_one():
    out = _cli("check", "--loss", "dr", "--loss", "giou", "--examples", "4", "--no-progress")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "== dr: DR Loss" in out.stdout and "== giou: GIoU Loss" in out.stdout
    assert "result: conformant - 8 check(s) passed" in out.stdout
    out = _cli("check", "--loss", "dr", "--delta", "0.5", "--no-progress")
    assert out.returncode == 2 and "takes no delta" in out.stderr

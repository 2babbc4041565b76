"""The conformance harness: call conventions, case generation, tolerance, shrinking, reports.

Targets are the reference wrapped in each call convention (``test_harness_support``);
planted bugs live in ``test_harness_mutants.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from rankspec.conformance import NonConformant, assert_conforms, check
from rankspec.conformance._cases import (KINDS, CaseConfig, diagnostic_cases, random_cases, recorded_cases)
from rankspec.conformance._compare import Tolerance, base_tolerance, case_tolerance
from rankspec.conformance._targets import TargetError, TargetSignatureError, make_target, resolve
from rankspec.conformance.specs import SPECS, get_spec
from rankspec.refimpl import rs_loss

torch = pytest.importorskip("torch")
import test_harness_support as S  # noqa: E402  (tests/ is on sys.path via conftest)

FAST = dict(examples=12, vectors=False, dtypes=["float64"], shrink_seconds=5.0)


# -- module-level targets (importable by name, so reproducers are self-contained) -------------------

def rs_pair(logits, targets, delta):
    r = rs_loss(logits, targets, delta)
    return r.loss, r.grad


def rs_pair_self_one(logits, targets, delta):
    r = rs_loss(logits, targets, delta, self_rank="one")
    return r.loss, r.grad


def rs_result(logits, targets, delta):
    return rs_loss(logits, targets, delta)  # a LossResult is accepted as (loss, grad)


def rs_torch_pair(logits, targets, delta):
    r = rs_loss(logits.detach().numpy(), targets.numpy(), delta)
    return torch.tensor(r.loss), torch.tensor(r.grad)


RSFunction = S.make_function("rs", parts=True)
RSModule = S.make_module("rs")


# -- call conventions ------------------------------------------------------------------------------

@pytest.mark.parametrize("target, convention", [
    (rs_pair, "pair"),
    (rs_result, "pair"),
    (rs_torch_pair, "torch-pair"),
    (S.make_autograd("rs"), "autograd"),
    (RSFunction, "function"),
    (RSModule, "module"),
    (RSModule(delta=0.5), "module"),
])
def test_every_call_convention_is_detected_and_conforms(target, convention):
    t = make_target(target, get_spec("rs"))
    assert t.convention == convention
    report = check(target, "rs", **FAST)
    assert report.conformant, report.format_text()
    r = report.results[0]
    assert r.cases == 12 and r.failed == 0 and r.convention == convention


def test_module_instance_without_delta_argument_is_checked_at_its_delta():
    report = check(RSModule(delta=0.25), "rs", **FAST)
    assert report.conformant
    assert any("delta=0.25" in n for n in report.results[0].notes)


def test_explicit_convention_overrides_detection():
    t = make_target(rs_torch_pair, get_spec("rs"), convention="torch-pair")
    assert t.convention == "torch-pair"
    # forcing the wrong convention makes the target fail on every case, reported as nonconformant
    report = check(rs_torch_pair, "rs", convention="pair", **{**FAST, "examples": 3})
    assert not report.conformant and report.results[0].errors == 3


def test_authors_tuple_outputs_are_compared_part_by_part():
    swapped = S.make_function("rs", parts=True)
    forward = swapped.forward

    def forward_swapped(ctx, logits, targets, delta):
        ranking, sorting = forward(ctx, logits, targets, delta)
        return sorting, ranking  # same sum, parts in the wrong order

    swapped.forward = staticmethod(forward_swapped)
    report = check(swapped, "rs", **FAST)
    assert not report.conformant
    assert "output 'ranking'" in report.results[0].counterexample.comparison.message


def test_tuple_backward_first_uses_only_the_first_output():
    report = check(RSFunction, "rs", tuple_backward="first", **FAST)
    assert report.conformant  # the authors' Functions carry the whole gradient on the first output


@pytest.mark.parametrize("bad, words", [
    (lambda logits: 0.0, "positional argument"),
    (lambda a, b, c, d, e: 0.0, "positional argument"),
    (lambda logits, targets, delta: "not a loss", "fits none"),
    (lambda logits, targets, delta: 1 / 0, "ZeroDivisionError"),
    (42, "not callable"),
    (dict, "neither a torch.autograd.Function nor a torch.nn.Module"),
])
def test_signature_that_fits_no_convention_is_a_clear_error(bad, words):
    with pytest.raises(TargetSignatureError, match=words):
        make_target(bad, get_spec("rs"))


def test_target_strings(tmp_path):
    obj, code, expr = resolve("rankspec.refimpl:rs_loss")
    assert obj is rs_loss and code == "from rankspec.refimpl import rs_loss" and expr == "rs_loss"
    for bad, words in [("rs_loss", "must look like"), ("no_such_module_xyz:f", "cannot import"),
                       ("rankspec.refimpl:no_such_attr", "no attribute"), ("missing_dir/f.py:f", "does not exist"),
                       ("rankspec.refimpl:", "must look like")]:
        with pytest.raises(TargetError, match=words):
            resolve(bad)
    path = tmp_path / "my_loss.py"
    path.write_text("from rankspec.refimpl import rs_loss\n"
                    "def pair(s, t, d):\n    r = rs_loss(s, t, d)\n    return r.loss, r.grad\n")
    report = check(f"{path}:pair", "rs", **FAST)
    assert report.conformant and report.results[0].target == f"{path}:pair"


def test_loss_and_usage_errors():
    from rankspec.conformance.harness import UsageProblem

    with pytest.raises(UsageProblem, match="unknown loss"):
        check(rs_pair, "nope")
    with pytest.raises(UsageProblem, match="loss is required"):
        check(rs_pair)
    with pytest.raises(UsageProblem, match="dtype"):
        check(rs_pair, "rs", dtypes=["float8"])  # float16 / bfloat16 are opt-in dtypes
    with pytest.raises(UsageProblem, match="delta"):
        check(rs_pair, "rs", delta=-1.0)
    if not torch.cuda.is_available():
        with pytest.raises(UsageProblem, match="cuda"):
            check(rs_pair, "rs", device="cuda")


# -- cases -------------------------------------------------------------------------------------------

def test_generated_cases_cover_the_required_structure():
    spec = get_spec("brs")
    cases = random_cases(spec, CaseConfig(dtype="float32"), 400, seed=1)
    sizes = [c.size for c in cases]
    assert min(sizes) == 1 and max(sizes) > 5000 and max(sizes) <= 100_000
    assert {c.kind for c in cases} == set(KINDS)
    assert any(c.delta == 0 for c in cases) and {c.grad_output for c in cases} > {1.0}
    assert any(c.num_positives == 0 for c in cases) and any(c.num_positives == c.size > 1 for c in cases)
    assert any(c.logits.ndim == 2 for c in cases)
    assert any(np.max(np.abs(c.logits)) > 1e3 for c in cases)
    for c in cases:
        assert c.logits.dtype == np.float32 and c.targets.shape == c.logits.shape
        assert c.size * max(c.num_positives, 1) <= CaseConfig().max_work or c.num_positives <= 1
        t = c.targets.ravel()
        assert np.all((t == 0) | ((t > 0) & (t <= 1)))
    ties = [c for c in cases if c.delta == 0 and c.size > 1
            and len(np.unique(c.logits)) < c.size and c.num_positives > 0]
    assert ties, "no delta-0 case with exact ties"
    sep = [c for c in cases if c.kind == "no_relevant_negative" and 0 < c.num_positives < c.size]
    for c in sep:
        s, y = c.logits.ravel().astype(np.float64), c.targets.ravel()
        assert s[y == 0].max() < s[y > 0].min() - c.delta
    eq = [c for c in cases if c.kind == "equal_iou" and c.num_positives > 1]
    assert eq and all(len(np.unique(c.targets[c.targets > 0])) == 1 for c in eq)


def test_binary_losses_get_binary_labels_and_recorded_inputs():
    for name in ("ap", "bap"):
        spec = get_spec(name)
        for c in random_cases(spec, CaseConfig(), 50, seed=2) + recorded_cases(spec, CaseConfig()):
            assert set(np.unique(c.targets)) <= {0.0, 1.0}
    assert len(recorded_cases(get_spec("rs"), CaseConfig())) == 60


def test_float32_bucketed_cases_avoid_rounding_ties_with_the_threshold():
    spec = get_spec("bap")
    for c in random_cases(spec, CaseConfig(dtype="float32"), 150, seed=3):
        s, y = c.logits.ravel(), c.targets.ravel()
        if not (0 < y.sum() < y.size):
            continue
        smin = float(s[y > 0].min())
        thr = smin - c.delta
        band = 8 * np.finfo(np.float32).eps * max(1.0, abs(smin), c.delta)
        near = np.abs(s[y == 0].astype(np.float64) - thr) <= band
        assert not np.any(near & (s[y == 0].astype(np.float64) != thr))


def test_diagnostic_cases_include_delta_zero_ties_and_images():
    cases = diagnostic_cases(get_spec("rs"), CaseConfig())
    assert any(c.delta == 0 and len(np.unique(c.logits)) < c.size for c in cases)
    two_d = [c for c in cases if c.logits.ndim == 2]
    assert two_d and any(np.any(~(c.targets > 0).any(axis=1)) for c in two_d)
    fixed = diagnostic_cases(get_spec("rs"), CaseConfig(delta=0.25))
    assert {c.delta for c in fixed} == {0.25}


# -- tolerance ---------------------------------------------------------------------------------------

def test_tolerance_is_dtype_aware_and_grows_with_size_and_magnitude():
    spec = get_spec("bap")
    f32, f64 = base_tolerance("float32"), base_tolerance("float64")
    assert f32.atol > 1000 * f64.atol and f32.rtol > f64.rtol
    assert base_tolerance("float64", {"atol": 1e-3, "rtol": None}) == Tolerance(1e-3, f64.rtol)
    small = random_cases(spec, CaseConfig(dtype="float32", max_size=10), 1, seed=0)[0]
    small = small.with_arrays(np.zeros(10), np.r_[1.0, np.zeros(9)])
    big = small.with_arrays(np.zeros(100_000), np.r_[1.0, np.zeros(99_999)])
    assert case_tolerance(small, spec, f32).atol == f32.atol
    assert case_tolerance(big, spec, f32).atol == pytest.approx(10 * f32.atol)
    from dataclasses import replace
    huge = replace(small.with_arrays(np.full(10, 1e4), small.targets), delta=0.5)
    assert case_tolerance(huge, spec, f32).atol > 100 * f32.atol


# -- shrinking, reproducers, diagnosis, assert_conforms ------------------------------------------------

def test_failure_is_shrunk_to_a_runnable_reproducer():
    report = check(rs_pair_self_one, "rs", examples=20, dtypes=["float32"], seed=3)
    r = report.results[0]
    assert not report.conformant and r.failed > 0
    cx = r.counterexample
    assert cx.case.size <= 3 < cx.original_size  # a recorded vector shrunk to a handful of elements
    assert "matches rs_loss(self_rank='one')" in r.diagnosis.summary
    code = cx.reproducer
    assert "from test_harness import rs_pair_self_one" in code and "np.testing.assert_allclose" in code
    with pytest.raises(AssertionError):  # the reproducer reproduces the failure
        exec(compile(code, "<reproducer>", "exec"), {})
    ok = code.replace("rs_pair_self_one", "rs_pair")
    exec(compile(ok, "<reproducer>", "exec"), {})  # and passes for the right implementation


def test_reproducer_of_a_torch_function_target_runs():
    Bad = S.make_function("rs", parts=True, self_rank="one")
    report = check(Bad, "rs", **FAST)
    cx = report.results[0].counterexample
    assert "Function_rs" in cx.reproducer and ".apply(x, t, delta)" in cx.reproducer
    assert "self_rank='one'" in report.results[0].diagnosis.summary
    with pytest.raises(AssertionError):
        exec(compile(cx.reproducer.replace("# Function_rs is defined", "Function_rs = Bad  #"),
                     "<reproducer>", "exec"), {"Bad": Bad})


def test_assert_conforms_passes_and_fails_with_the_counterexample():
    report = assert_conforms(rs_pair, "rs", 0.5, examples=8, vectors=False, shrink_seconds=2.0)
    assert report.conformant and [r.dtype for r in report.results] == ["float32", "float64"]
    assert all(r.cases == 8 for r in report.results)
    with pytest.raises(NonConformant) as info:
        assert_conforms(rs_pair_self_one, "rs", 0.5, examples=8, vectors=False, dtypes=["float64"],
                        shrink_seconds=2.0)
    text = str(info.value)
    assert "NONCONFORMANT" in text and "self_rank='one'" in text and "reproducer" in text
    assert isinstance(info.value, AssertionError) and not info.value.report.conformant


def test_target_that_raises_is_nonconformant_with_the_error_reported():
    def picky(logits, targets, delta):
        if logits.size > 3:
            raise RuntimeError("too big")
        return rs_pair(logits, targets, delta)

    report = check(picky, "rs", examples=30, dtypes=["float64"], convention="pair")
    r = report.results[0]
    assert not report.conformant and r.errors > 0
    assert r.counterexample.comparison.failure == "error:RuntimeError"
    assert r.counterexample.case.size == 4  # shrunk to the smallest input that still raises


# -- reports -------------------------------------------------------------------------------------------

def test_json_and_junit_reports():
    report = check(rs_pair_self_one, "rs", **FAST)
    good = check(rs_pair, "rs", **FAST)
    data = json.loads(report.to_json())
    assert data["conformant"] is False and data["losses"][0]["loss"] == "rs"
    res = data["losses"][0]["results"][0]
    for key in ("cases", "failed", "max_abs_loss_error", "max_rel_loss_error", "max_abs_grad_error",
                "max_rel_grad_error", "tolerance", "diagnosis", "counterexample"):
        assert key in res
    assert res["counterexample"]["reproducer"].startswith("# rankspec counterexample")
    assert "self_rank" in json.dumps(res["diagnosis"])
    root = ET.fromstring(report.to_junit().split("\n", 1)[1])
    assert root.tag == "testsuites" and root.get("failures") == "1"
    case = root.find("testsuite/testcase")
    assert case.find("failure") is not None and "self_rank='one'" in case.find("failure").get("message")
    root = ET.fromstring(good.to_junit().split("\n", 1)[1])
    assert root.get("failures") == "0" and root.find("testsuite/testcase/failure") is None
    text = good.format_text()
    for word in ("cases", "max|dloss|", "max|dgrad|", "conformant"):
        assert word in text


def test_progress_bar_draws_only_after_a_second():
    import io
    import time

    from rankspec.conformance._progress import Progress

    stream = io.StringIO()
    p = Progress(10, stream=stream, enabled=True, delay=0.05)
    p.advance(1)
    assert stream.getvalue() == ""
    time.sleep(0.06)
    p.advance(1, "rs")
    assert "2/10" in stream.getvalue()
    p.close()


def test_conformance_imports_and_checks_without_torch_or_hypothesis():
    code = ("import sys; sys.modules['hypothesis'] = None\n"
            "import rankspec.conformance as c\n"
            "from rankspec.refimpl import ap_loss\n"
            "def f(s, t, d):\n    r = ap_loss(s, t, d); return r.loss, r.grad\n"
            "rep = c.check(f, 'ap', examples=5, vectors=False, dtypes=['float64'])\n"
            "assert rep.conformant and rep.results[0].cases == 5, rep\n"
            "bad = c.check(lambda s, t, d: tuple(ap_loss(s, t, d, self_rank='h0')), 'ap', examples=20,\n"
            "              dtypes=['float64'])\n"
            "assert not bad.conformant and bad.results[0].counterexample.case.size <= 3\n"
            "print('torch imported:', 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "torch imported: False"


def test_public_api_without_torch_exports_input_and_the_head_check():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import rankspec.conformance as c\n"
            "assert c.Input is c.specs.Input and c.Input('ious', grad='grad_ious').grad == 'grad_ious'\n"
            "assert 'Input' in c.__all__ and 'check_head' in c.__all__\n"
            "assert c.HEADS == ('dense2d', 'ssd3d') and 'rankdet' in c.HEAD_LOSSES\n"
            "case = c.head_case('dense2d', 'crowded', seed=2)\n"
            "assert case.scenario == 'crowded' and sum(case.num_gt) > 0\n"
            "try:\n    c.check_head('dense2d', 'rs')\nexcept c.harness.UsageProblem as e:\n    print('usage:', e)\n"
            "from rankspec.conformance.cli import build_parser\n"
            "assert 'check-head' in build_parser().format_help()\n"
            "print('torch imported:', sys.modules.get('torch') is not None)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines() == ["usage: check_head needs torch (pip install rankspec[torch])",
                                               "torch imported: False"]


# -- the bundled adapters ----------------------------------------------------------------------------

def _adapters():
    try:
        import rankspec.adapters.torch as A  # noqa: F401
    except Exception as exc:  # pragma: no cover - only while adapters are being written
        pytest.skip(f"rankspec.adapters.torch is not importable yet: {exc}")
    return A


@pytest.mark.parametrize("loss", list(SPECS))
def test_bundled_adapters_conform_in_float32_and_float64(loss):
    _adapters()
    report = check(None, loss, examples=6, dtypes=["float32", "float64"], vectors=True)
    assert report.conformant, report.format_text()
    assert {r.dtype for r in report.results} == {"float32", "float64"}
    assert len(report.results) == 2 * len(get_spec(loss).bundled_targets)


def test_public_case_strategy_for_users_properties():
    from hypothesis import given, settings

    from rankspec.conformance import case_strategy

    seen = []

    @settings(max_examples=15, deadline=None, database=None)
    @given(case_strategy("ap", delta=0.25, max_size=50))
    def prop(case):
        assert case.delta == 0.25 and case.size <= 50 + 3 and case.grad_output == 1.0
        assert set(np.unique(case.targets)) <= {0.0, 1.0}
        seen.append(case.size)

    prop()
    assert len(seen) == 15

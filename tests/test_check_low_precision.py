"""``rankspec check --dtype float16 / bfloat16``: rounding of the inputs, tolerance rule, what targets get,
and that a wrong port still fails (issue 14, item 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rankspec.conformance import harness as H
from rankspec.conformance._cases import CaseConfig, build_case, probe_case, RngSource
from rankspec.conformance._compare import base_tolerance
from rankspec.conformance._constants import CHECK_DTYPES, DTYPES, LOW_PRECISION_DTYPES
from rankspec.conformance.specs import get_spec
from rankspec.refimpl import rs_loss
from rankspec.refimpl.cases import Case, round_to_precision


# -- rounding ------------------------------------------------------------------------------------------

def test_bfloat16_rounding_by_hand():
    # bfloat16 keeps 7 mantissa bits: the numbers next to 1 are 1 - 2^-8, 1, 1 + 2^-7, 1 + 2^-6
    x = np.array([1 + 2.0 ** -8,               # halfway between 1 and 1 + 2^-7: ties to even -> 1
                  1 + 3 * 2.0 ** -8,           # halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even) -> 1 + 2^-6
                  1 + 2.0 ** -8 + 2.0 ** -20,  # just above halfway -> 1 + 2^-7
                  -(1 + 2.0 ** -8 + 2.0 ** -20),
                  3.0, 0.0, -0.0])
    want = np.array([1.0, 1 + 2.0 ** -6, 1 + 2.0 ** -7, -(1 + 2.0 ** -7), 3.0, 0.0, -0.0])
    got = round_to_precision(x, "bfloat16")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    assert np.signbit(got[-1])


def test_float16_rounding_by_hand_and_no_overflow():
    # float16 keeps 10 mantissa bits; its largest finite value is 65504 = (2 - 2^-10) * 2^15
    x = np.array([1 + 2.0 ** -11, 1 + 2.0 ** -11 + 2.0 ** -20, 1e5, -1e9, 65504.0])
    got = round_to_precision(x, "float16")
    np.testing.assert_array_equal(got, [1.0, 1 + 2.0 ** -10, 65504.0, -65504.0, 65504.0])
    big = round_to_precision(np.array([3.4e38, -1e39]), "bfloat16")
    assert np.all(np.isfinite(big))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-2.0 ** 100, 2.0 ** 100, allow_nan=False, width=32), min_size=1, max_size=20))
def test_bfloat16_rounding_matches_torch(values):
    x = np.array(values, dtype=np.float32)
    want = torch.tensor(x).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(round_to_precision(x, "bfloat16"), want)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-6e4, 6e4, allow_nan=False, width=32), min_size=1, max_size=20))
def test_float16_rounding_matches_torch(values):
    x = np.array(values, dtype=np.float32)
    want = torch.tensor(x).to(torch.float16).float().numpy()
    np.testing.assert_array_equal(round_to_precision(x, "float16"), want)


def test_rounding_rejects_an_unknown_precision():
    with pytest.raises(ValueError, match="precision must be one of"):
        round_to_precision(np.ones(2), "float8")


# -- cases ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", LOW_PRECISION_DTYPES)
def test_generated_cases_hold_values_of_the_dtype(dtype):
    spec = get_spec("rs")
    rng = np.random.default_rng(3)
    cfg = CaseConfig(dtype=dtype, max_size=300)
    for _ in range(30):
        case = build_case(RngSource(rng), spec, cfg)
        assert case.precision == dtype and case.checked_dtype == dtype and case.dtype == "float32"
        for a in (case.logits, case.targets):
            np.testing.assert_array_equal(round_to_precision(a, dtype), a)  # already representable
            assert np.all(np.isfinite(a))
        assert dtype in case.describe()


def test_case_keeps_its_precision_through_edits():
    case = Case(np.array([0.1, 0.7, -2.3]), np.array([1.0, 0.0, 1.0]), 0.5).at_precision("bfloat16")
    np.testing.assert_array_equal(case.at_precision("bfloat16").logits, case.logits)  # idempotent
    # a shrink step writes arbitrary values: they are rounded again (0.1 is not a bfloat16 number)
    edited = case.with_arrays(np.array([0.1, 0.2, 0.3]), case.targets)
    assert edited.precision == "bfloat16"
    np.testing.assert_array_equal(edited.logits, round_to_precision([0.1, 0.2, 0.3], "bfloat16"))
    assert float(edited.logits[0]) != 0.1 and abs(float(edited.logits[0]) - 0.1) <= 0.1 * 2.0 ** -8
    assert case.astype("float64").precision is None
    assert replace(case, kind="x").precision == "bfloat16"


def test_probe_case_in_a_narrow_dtype():
    case = probe_case(get_spec("rs"), "float16")
    assert case.precision == "float16"
    np.testing.assert_array_equal(round_to_precision(case.logits, "float16"), case.logits)


# -- tolerance rule -------------------------------------------------------------------------------------

def test_tolerance_is_float32s_plus_one_ulp_of_the_output_dtype():
    t32 = base_tolerance("float32")
    bf, f16 = base_tolerance("bfloat16"), base_tolerance("float16")
    # one ulp at 1: bfloat16 has 7 explicit mantissa bits (2^-7), float16 10 (2^-10)
    assert bf.rtol == pytest.approx(t32.rtol + 2.0 ** -7, rel=1e-12)
    assert f16.rtol == pytest.approx(t32.rtol + 2.0 ** -10, rel=1e-12)
    # subnormal spacing: float16 2^-24, bfloat16 (float32's exponent range) 2^-133
    assert f16.atol == pytest.approx(t32.atol + 2.0 ** -24, rel=1e-12)
    assert bf.atol == pytest.approx(t32.atol, rel=1e-12)
    assert bf.rtol < 0.01  # never the eps-ratio scaling, which would allow rtol > 1 (any gradient of the sign)
    over = base_tolerance("bfloat16", {"atol": 0.5, "rtol": None})
    assert over.atol == 0.5 and over.rtol == bf.rtol


def test_default_dtypes_are_unchanged():
    assert DTYPES == ("float32", "float64")
    assert set(LOW_PRECISION_DTYPES) <= set(CHECK_DTYPES)


# -- targets get the dtype -----------------------------------------------------------------------------

def _spy():
    seen = []

    def target(logits, targets, delta):
        seen.append((logits.dtype, targets.dtype, bool(torch.equal(logits.float(),
                                                                   logits.float().to(logits.dtype).float()))))
        from rankspec.adapters.torch import rs_loss as torch_rs

        return torch_rs(logits, targets, delta)

    return target, seen


@pytest.mark.parametrize("dtype", LOW_PRECISION_DTYPES)
def test_torch_target_receives_tensors_of_the_dtype(dtype):
    target, seen = _spy()
    report = H.check(target, "rs", dtypes=[dtype], examples=12, seed=2, vectors=False, isolate=False,
                     convention="autograd")
    res = report.results[0]
    assert res.dtype == dtype and res.failed == 0, res.notes
    assert seen and all(a == getattr(torch, dtype) and b == getattr(torch, dtype) for a, b, _ in seen)


def test_numpy_target_gets_float32_arrays_of_rounded_values_with_a_note():
    seen = []

    def port(logits, targets, delta):
        seen.append((logits.dtype, np.array_equal(round_to_precision(logits, "bfloat16"), logits)))
        r = rs_loss(logits, targets, delta)
        return r.loss, r.grad

    report = H.check(port, "rs", dtypes=["bfloat16"], examples=10, seed=4, isolate=False)
    res = report.results[0]
    assert res.failed == 0
    checked = seen[1:]  # the first call is the convention probe (float64), before any case
    assert len(checked) >= res.cases and all(dt == np.float32 and same for dt, same in checked)
    assert any("NumPy" in n and "bfloat16" in n for n in res.notes)


# -- the bundled adapters pass; a wrong port fails ----------------------------------------------------------

@pytest.mark.parametrize("dtype", LOW_PRECISION_DTYPES)
def test_bundled_rs_adapters_pass(dtype):
    report = H.check(None, "rs", dtypes=[dtype], examples=25, seed=0, isolate=False)
    assert report.results and all(r.failed == 0 and r.cases > 0 for r in report.results), \
        [(r.target, r.first_failure and r.first_failure.comparison.message) for r in report.results]


@pytest.mark.parametrize("dtype", LOW_PRECISION_DTYPES)
def test_a_planted_bug_still_fails_and_is_named(dtype):
    # the bundled torch adapter with the wrong self term (self_rank='one' instead of RS's H(0) = 1/2)
    report = H.check("rankspec.adapters.torch:rs_loss", "rs", dtypes=[dtype], examples=15, seed=1,
                     target_kwargs={"self_rank": "one"}, shrink_seconds=5, diagnose_seconds=20, isolate=False)
    res = report.results[0]
    assert res.failed > 0
    assert "self_rank='one'" in res.diagnosis.summary
    # the reproducer hands the target tensors of the dtype
    assert f"dtype=torch.{dtype}" in res.counterexample.reproducer


def test_an_error_of_a_few_ulps_fails():
    # a loss (and so its gradient) 3 % too large: about four ulps of bfloat16, above the one ulp of output
    # rounding the tolerance allows
    def low(logits, targets, delta):
        from rankspec.adapters.torch import rs_loss as torch_rs

        loss = torch_rs(logits.float(), targets.float(), delta)
        return (loss.to(torch.bfloat16) * 1.03).to(logits.dtype)  # 3 %: four ulps of bfloat16

    report = H.check(low, "rs", dtypes=["bfloat16"], examples=10, seed=5, isolate=False, convention="autograd",
                     diagnose=False, shrink=False)
    assert report.results[0].failed > 0


# -- command line -------------------------------------------------------------------------------------

def _cli(*args):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "rankspec.conformance", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_cli_checks_bfloat16_and_rejects_unknown_dtypes():
    out = _cli("check", "--loss", "rs", "--dtype", "bfloat16", "--examples", "6", "--no-progress")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "bfloat16" in out.stdout and "conformant" in out.stdout
    bad = _cli("check", "--loss", "rs", "--dtype", "float8")
    assert bad.returncode == 2 and "float8" in bad.stderr
    helped = _cli("check", "--help")
    assert "bfloat16" in helped.stdout and "float16" in helped.stdout


def test_an_expected_value_beyond_float16s_range_passes_as_infinity():
    from rankspec.conformance._compare import compare
    from rankspec.conformance._targets.call import Outcome
    from rankspec.refimpl import LossResult

    # 70000 > 65504, float16's largest finite value: rounding it to float16 gives +inf
    want = LossResult(70000.0, np.array([0.5, 70000.0]))
    tol16, tol32 = base_tolerance("float16"), base_tolerance("float32")
    assert compare(want, Outcome(np.inf, np.array([0.5, np.inf])), tol16).ok
    assert compare(want, Outcome(65504.0, np.array([0.5, 65504.0])), tol16).ok
    assert not compare(want, Outcome(-np.inf, np.array([0.5, np.inf])), tol16).ok  # wrong sign
    assert not compare(want, Outcome(60000.0, np.array([0.5, np.inf])), tol16).ok  # finite, below the limit
    assert not compare(want, Outcome(np.inf, np.array([0.5, np.inf])), tol32).ok  # float32 has no such rule

"""Options that cannot make a check vacuous (issue 10, item 2).

A tolerance of ``inf``, ``nan`` or ``-1`` would make every implementation "conformant" (or none); zero cases
would make any implementation pass.  Every such value is refused before any work - by ``rankspec check`` and
``rankspec check-head`` with exit code 2 and one line naming the option, by :func:`check`,
:func:`assert_conforms` and :func:`check_head` with a ``ValueError`` naming the argument, and by the pytest
fixture's options.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest

from rankspec.conformance import UsageProblem, assert_conforms, check
from rankspec.conformance._usage import check_count, check_number, check_seed

GOOD = "rankspec.adapters.torch:rs_loss"


def run_cli(*args, timeout=300):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "rankspec.conformance", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


BAD_CHECK = [
    ("--atol", "-1"), ("--atol", "inf"), ("--atol", "nan"), ("--rtol", "-1"), ("--rtol", "inf"),
    ("--rtol", "nan"), ("--examples", "-1"), ("--seed", "-1"), ("--seed", str(2**32)), ("--max-size", "0"),
    ("--shrink-seconds", "nan"), ("--shrink-seconds", "-1"), ("--call-timeout", "0"), ("--call-timeout", "inf"),
    ("--delta", "nan"), ("--delta", "-0.5"),
]


@pytest.mark.parametrize("option,value", BAD_CHECK)
def test_check_refuses_a_vacuous_option_with_exit_2_naming_it(option, value):
    out = run_cli("check", GOOD, "--loss", "rs", f"{option}={value}", "--no-progress")
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0], out.stderr
    assert out.stdout == ""


def test_check_refuses_a_run_without_any_case():
    out = run_cli("check", GOOD, "--loss", "rs", "--examples", "0", "--no-vectors")
    assert out.returncode == 2 and "no case" in out.stderr


@pytest.mark.parametrize("option,value", [("--atol", "-1"), ("--atol", "nan"), ("--rtol", "inf"), ("--rtol", "-1"),
                                          ("--examples", "0"), ("--seed", "-3"), ("--shrink-seconds", "nan")])
def test_check_head_refuses_a_vacuous_option_with_exit_2_naming_it(option, value):
    out = run_cli("check-head", "--head", "dense2d", "--loss", "rs", f"{option}={value}", "--no-progress")
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0], out.stderr


@pytest.mark.parametrize("kwargs,name", [
    ({"atol": -1}, "atol"), ({"atol": math.inf}, "atol"), ({"atol": math.nan}, "atol"), ({"rtol": -1e-9}, "rtol"),
    ({"rtol": math.inf}, "rtol"), ({"rtol": math.nan}, "rtol"), ({"atol": "0.1"}, "atol"), ({"atol": True}, "atol"),
    ({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"), ({"max_size": 0}, "max_size"), ({"examples": -2}, "examples"),
    ({"shrink_seconds": math.nan}, "shrink_seconds"), ({"call_timeout": 0}, "call_timeout"),
    ({"diagnose_seconds": -1}, "diagnose_seconds"), ({"delta": math.inf}, "delta"),
])
def test_api_refuses_a_vacuous_option_naming_the_argument(kwargs, name):
    for fn in (check, assert_conforms):
        with pytest.raises(ValueError, match=name) as info:
            fn(GOOD, "rs", **{"examples": 1, **kwargs})
        assert isinstance(info.value, UsageProblem)


def test_api_refuses_a_check_without_any_case():
    with pytest.raises(ValueError, match="no case"):
        check(GOOD, "rs", examples=0, vectors=False)


@pytest.mark.parametrize("kwargs,name", [({"atol": -1}, "atol"), ({"atol": math.nan}, "atol"),
                                         ({"rtol": math.inf}, "rtol"), ({"seed": -1}, "seed"),
                                         ({"shrink_seconds": math.inf}, "shrink_seconds")])
def test_check_head_refuses_a_vacuous_option_naming_the_argument(kwargs, name):
    from rankspec.conformance.heads import check_head

    with pytest.raises(ValueError, match=name):
        check_head("dense2d", "rs", examples=1, **kwargs)


def test_zero_tolerances_are_allowed_and_fail_an_inexact_target():
    # atol = rtol = 0 is a legitimate (strict) check: a float32 target cannot pass it on every case
    report = check(GOOD, "rs", examples=4, dtypes=["float32"], vectors=False, atol=0.0, rtol=0.0, shrink=False,
                   diagnose=False)
    assert not report.conformant


@pytest.mark.parametrize("value", [0.0, 1e-12, 3])
def test_the_validators_accept_finite_non_negative_numbers(value):
    assert check_number(value, "x") == float(value)


@pytest.mark.parametrize("value", [-1, math.inf, -math.inf, math.nan, "1", None, True])
def test_check_number_refuses(value):
    with pytest.raises(UsageProblem, match="x must be a finite number >= 0"):
        check_number(value, "x", allow_none=False)


def test_check_number_positive_refuses_zero_and_check_count_and_seed():
    with pytest.raises(UsageProblem, match="> 0"):
        check_number(0.0, "t", positive=True)
    with pytest.raises(UsageProblem, match="n must be an integer >= 1"):
        check_count(0, "n")
    with pytest.raises(UsageProblem, match="n must be an integer >= 1"):
        check_count(2.0, "n")
    assert check_seed(0) == 0 and check_seed(2**32 - 1) == 2**32 - 1
    for bad in (-1, 2**32, 0.5, False):
        with pytest.raises(UsageProblem, match="seed"):
            check_seed(bad)


# -- the pytest fixture ------------------------------------------------------------------------------------------

def _run_pytest(tmp_path, *args):
    (tmp_path / "test_fixture_opts.py").write_text(textwrap.dedent('''
        def test_it(rankspec_oracle):
            assert rankspec_oracle.examples >= 1
    '''))
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path), *args],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


@pytest.mark.parametrize("option", ["--rankspec-examples=0", "--rankspec-examples=-3", "--rankspec-seed=-1"])
def test_the_pytest_fixture_refuses_bad_options(tmp_path, option):
    out = _run_pytest(tmp_path, option)
    assert out.returncode != 0
    assert option.split("=")[0] in out.stdout + out.stderr


def test_the_pytest_fixture_passes_bad_tolerances_on_to_the_checks():
    from rankspec.conformance.pytest_plugin import Oracle

    oracle = Oracle(examples=1, seed=0)
    for kwargs in ({"atol": -1}, {"rtol": math.nan}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            oracle.assert_conforms(GOOD, "rs", **kwargs)

"""Calling a port as it is (issue 10, item 5): duck-typed ``apply`` objects, a DR port without
``image_ids`` (checked against the pooled reading), ``--loss-options`` for ``check``, and detection errors
that show the target's own exception and where it was raised."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rankspec.conformance import UsageProblem, check
from rankspec.conformance._targets import TargetSignatureError, make_target
from rankspec.conformance.specs import get_spec

PORTS = textwrap.dedent('''
    import numpy as np
    from rankspec.refimpl import dr_loss, rs_loss

    class StaticApply:
        """A plain class with a static apply (no autograd.Function): returns (loss, grad)."""
        @staticmethod
        def apply(logits, targets, delta):
            r = rs_loss(logits, targets, delta)
            return r.loss, r.grad

    class TorchApply:
        """A plain class whose apply returns a torch loss."""
        @staticmethod
        def apply(logits, targets, delta):
            import torch
            from rankspec.adapters.torch import rs_loss as torch_rs
            return torch_rs(logits, targets, delta)

    def pooled_dr(logits, labels):
        """A DR port without image_ids (the authors' SigmoidDRLoss is used this way): one pooled ranking."""
        r = dr_loss(logits, labels)
        return r.loss, r.grad

    def self_one(logits, targets, delta):
        r = rs_loss(logits, targets, delta, self_rank="one")
        return r.loss, r.grad

    def broken(logits, targets, delta):
        return np.dot(np.ones(3), np.asarray(logits))  # a shape mismatch on every input but size 3
''')


def _write_module(tmp_path_factory, name: str, code: str) -> str:
    """``code`` written to ``<tmp>/<name>.py``; returns the path (a TARGET file)."""
    path = tmp_path_factory.mktemp(name) / f"{name}.py"
    path.write_text(code)
    return str(path)


@pytest.fixture(scope="module")
def ports(tmp_path_factory):
    return _write_module(tmp_path_factory, "ports", PORTS)


def run_cli(*args, timeout=600):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "rankspec.conformance", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


FAST = dict(examples=6, dtypes=["float64"], vectors=False, seed=2)


@pytest.mark.parametrize("attr", ["StaticApply", "TorchApply"])
def test_a_plain_class_with_apply_needs_no_convention_option(ports, attr):
    report = check(f"{ports}:{attr}", "rs", **FAST)
    assert report.conformant, report.format_text()
    assert report.results[0].target.endswith(f"{attr}.apply")


def test_a_dr_port_without_image_ids_is_checked_against_the_pooled_reading(ports):
    report = check(f"{ports}:pooled_dr", "dr", **FAST)
    assert report.conformant, report.format_text()
    notes = " ".join(report.results[0].notes)
    assert "takes no image_ids" in notes and "image_ids=None" in notes


def test_reading_replaces_the_dropped_input_by_one_image():
    spec = get_spec("dr")

    def pooled(logits, labels):  # noqa: ARG001
        return 0.0, np.zeros_like(logits)

    t = make_target(pooled, spec, convention="pair")
    assert t.dropped_inputs == ("image_ids",)
    from rankspec.conformance import _cases

    case = next(c for c in _cases.random_cases(spec, _cases.CaseConfig(dtype="float64"), 20, 0)
                if np.any(np.asarray(c.extras[0]) != 0))
    read = t.reading(case)
    assert np.all(np.asarray(read.extras[0]) == 0) and read.logits is case.logits


def test_loss_options_check_against_the_reference_called_with_them(ports):
    plain = check(f"{ports}:self_one", "rs", **FAST, shrink=False, diagnose=False)
    assert not plain.conformant
    confirmed = check(f"{ports}:self_one", "rs", **FAST, loss_options={"self_rank": "one"})
    assert confirmed.conformant, confirmed.format_text()
    assert any("self_rank='one'" in n for n in confirmed.results[0].notes)


@pytest.mark.parametrize("options,words", [({"no_such_option": 1}, "takes no option 'no_such_option'"),
                                           ({"self_rank": "two"}, "not valid")])
def test_bad_loss_options_are_usage_errors(ports, options, words):
    with pytest.raises(UsageProblem, match=words):
        check(f"{ports}:self_one", "rs", **FAST, loss_options=options)


def test_loss_options_on_the_command_line(ports):
    out = run_cli("check", f"{ports}:self_one", "--loss", "rs", "--loss-options", '{"self_rank": "one"}',
                  "--examples", "4", "--dtype", "float64", "--no-vectors", "--no-progress")
    assert out.returncode == 0, out.stdout + out.stderr
    bad = run_cli("check", f"{ports}:self_one", "--loss", "rs", "--loss-options", '{"nope": 1}', "--no-progress")
    assert bad.returncode == 2 and "nope" in bad.stderr


def test_detection_failure_shows_the_real_error_and_where(ports):
    with pytest.raises(TargetSignatureError) as info:
        make_target(f"{ports}:broken", get_spec("rs"))
    text = str(info.value)
    assert "ValueError" in text and "shapes" in text  # NumPy's own message
    assert "ports.py" in text and "in broken" in text  # where it was raised


def test_a_signature_that_fits_no_convention_exits_2(ports, tmp_path):
    path = tmp_path / "one.py"
    path.write_text("def one_argument(logits):\n    return 0.0\n")
    out = run_cli("check", f"{path}:one_argument", "--loss", "rs", "--no-progress")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "takes 1 positional argument" in out.stderr


# -- the explicit call mapping (--call / call=) ------------------------------------------------------------------

CALL_PORTS = textwrap.dedent('''
    from rankspec.refimpl import rs_loss

    def reordered(targets, scale, logits, *, margin):
        """Third parameter is not delta: targets first, a scale, and delta under another name."""
        r = rs_loss(logits, targets, margin)
        return scale * r.loss, scale * r.grad

    def fixed_delta(logits, targets, smooth=None, delta=0.25):
        r = rs_loss(logits, targets, delta)
        return r.loss, r.grad
''')


@pytest.fixture(scope="module")
def call_ports(tmp_path_factory):
    return _write_module(tmp_path_factory, "call_ports", CALL_PORTS)


def test_parse_call_syntax():
    from rankspec.conformance._targets import parse_call

    inputs = ["logits", "labels", "delta"]
    assert parse_call("logits,targets,delta=0.5", inputs) == (
        (None, "input", "logits"), (None, "input", "labels"), ("delta", "value", 0.5))
    assert parse_call("scores=logits, gt=labels, smooth=true, name='a'", inputs) == (
        ("scores", "input", "logits"), ("gt", "input", "labels"), ("smooth", "value", True), ("name", "value", "a"))
    for bad, words in [("logits", "does not pass labels"), ("logits,labels,bogus", "neither an input"),
                       ("x=logits,labels", "positional item after a keyword"), ("logits,labels,logits", "more than once"),
                       ("", "empty")]:
        with pytest.raises(ValueError, match=words):
            parse_call(bad, inputs)


def test_a_call_mapping_routes_inputs_to_the_right_parameters(call_ports):
    report = check(f"{call_ports}:reordered", "rs", **FAST, call="labels,1.0,logits,margin=delta")
    assert report.conformant, report.format_text()
    cx_free = report.results[0]
    assert cx_free.cases > 0


def test_a_call_mapping_with_a_fixed_delta_checks_at_that_delta(call_ports):
    report = check(f"{call_ports}:fixed_delta", "rs", **FAST, call="logits,targets,delta=0.25")
    assert report.conformant, report.format_text()
    assert any("delta=0.25" in n for n in report.results[0].notes)


@pytest.mark.parametrize("mapping,words", [("logits,labels,delta,1,2", "does not fit"),
                                           ("logits,labels,nope=delta", "does not fit")])
def test_a_call_mapping_that_does_not_fit_the_signature_is_refused_before_any_case(call_ports, mapping, words):
    with pytest.raises(TargetSignatureError, match=words):
        check(f"{call_ports}:fixed_delta", "rs", **FAST, call=mapping)


def test_call_on_the_command_line(call_ports):
    out = run_cli("check", f"{call_ports}:reordered", "--loss", "rs", "--call", "labels,1.0,logits,margin=delta",
                  "--examples", "4", "--dtype", "float64", "--no-vectors", "--no-progress")
    assert out.returncode == 0, out.stdout + out.stderr
    bad = run_cli("check", f"{call_ports}:reordered", "--loss", "rs", "--call", "logits,labels", "--no-progress")
    assert bad.returncode == 2 and "does not fit" in bad.stderr
    helped = run_cli("check", "--help")
    assert "--call" in helped.stdout and "PARAM=INPUT" in helped.stdout


# -- input domains (--domain / domain=) --------------------------------------------------------------------------

DOMAIN_PORT = textwrap.dedent('''
    import numpy as np
    from rankspec.refimpl import rs_loss

    def needs_positive_1d(logits, targets, delta):
        """Like the authors' code: 1-D only, crashes without a positive, divides by delta."""
        logits = np.asarray(logits)
        if logits.ndim != 1:
            raise ValueError("1-D logits only")
        if not np.any(np.asarray(targets) > 0):
            raise ZeroDivisionError("no positive")
        if delta == 0:
            raise ZeroDivisionError("delta = 0")
        r = rs_loss(logits, targets, delta)
        return r.loss, r.grad
''')


@pytest.fixture(scope="module")
def domain_port(tmp_path_factory):
    return _write_module(tmp_path_factory, "domain_port", DOMAIN_PORT)


def test_parse_domain_and_admits():
    from types import SimpleNamespace

    from rankspec.conformance._domain import parse_domain

    dom = parse_domain("1d, delta>0, positives>=1, size<=10")
    case = SimpleNamespace(logits=np.zeros(4), targets=np.array([1.0, 0, 0, -1]), delta=0.5)
    assert dom.admits(case)
    assert not dom.admits(SimpleNamespace(logits=np.zeros(4), targets=np.zeros(4), delta=0.5))  # no positive
    assert not dom.admits(SimpleNamespace(logits=np.zeros(4), targets=np.ones(4), delta=0.0))  # delta = 0
    assert not dom.admits(SimpleNamespace(logits=np.zeros((2, 2)), targets=np.ones((2, 2)), delta=1.0))  # 2-D
    for bad in ("3d", "delta>>0", "positives>=inf", "colour=red", ""):
        with pytest.raises(ValueError):
            parse_domain(bad)


def test_a_domain_restricts_the_verdict_and_the_report_says_so(domain_port):
    unrestricted = check(f"{domain_port}:needs_positive_1d", "rs", examples=20, dtypes=["float64"], seed=1,
                         shrink=False, diagnose=False)
    assert not unrestricted.conformant
    report = check(f"{domain_port}:needs_positive_1d", "rs", examples=20, dtypes=["float64"], seed=1,
                   domain="1d,delta>0,positives>=1")
    assert report.conformant, report.format_text()
    r = report.results[0]
    assert r.cases > 0
    assert any("verdict restricted to the input domain '1d,delta>0,positives>=1'" in n for n in r.notes)
    assert "1d,delta>0,positives>=1" in report.to_json()


def test_a_domain_does_not_hide_a_wrong_port(ports):
    report = check(f"{ports}:self_one", "rs", **FAST, domain="1d,positives>=1", shrink=False, diagnose=False)
    assert not report.conformant


def test_bad_domain_is_a_usage_error_on_the_command_line(domain_port):
    out = run_cli("check", f"{domain_port}:needs_positive_1d", "--loss", "rs", "--domain", "3d", "--no-progress")
    assert out.returncode == 2 and "--domain" not in out.stdout and "domain" in out.stderr

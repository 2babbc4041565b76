"""Generic checks of every loss record, OpInfo-style: no per-loss table.

Each test is parametrised over :func:`rankspec.refimpl.records` and fails when a record lacks a part:
its registry entry, a documented convention, a sample-input builder, a validator that rejects bad
input on every backend, backends that agree with the reference, a torch adapter naming the record
(``__rankspec_record__``) that agrees with it, and a conformance spec.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os

import numpy as np
import pytest

from rankspec.refimpl import lookup, records
from rankspec.refimpl.cases import extra_names, resolve_builder, sample_cases
from rankspec.refimpl.conventions import all_conventions

RECORDS = records()
IDS = [r.name for r in RECORDS]
ADAPTER_MODULES = ("rankspec.adapters.torch", "rankspec.adapters.torch.alrp")


def _args(record, case):
    """Positional arguments of the public function for ``case`` (delta where the signature has it)."""
    args = [case.logits, case.targets, *case.extras]
    params = [n for n, p in inspect.signature(record.function).parameters.items()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if record.default_delta is not None and "delta" in params:
        args.insert(params.index("delta"), case.delta)
    return args


def _kwargs(record, case):
    """Keyword arguments: delta when it is keyword-only."""
    params = inspect.signature(record.function).parameters
    p = params.get("delta")
    if record.default_delta is not None and p is not None and p.kind == p.KEYWORD_ONLY:
        return {"delta": case.delta}
    return {}


def _call(record, backend, *args, **kwargs):
    """The public function on ``backend`` (a function without a ``backend`` parameter has only numpy)."""
    if "backend" in inspect.signature(record.function).parameters:
        return record.function(*args, backend=backend, **kwargs)
    assert backend == "numpy", f"{record.name} lists backend {backend!r} but takes no backend argument"
    return record.function(*args, **kwargs)


def _cases(record, count=4, seed=0, min_size=3):
    out = [c for c in sample_cases(record, 4 * count, seed=seed, max_size=24) if c.logits.shape[0] >= min_size]
    return out[:count]


def _with_positives(record, count=4, seed=0):
    return [c for c in _cases(record, 4 * count, seed) if c.num_positives > 0][:count]


# ------------------------------------------------------------------------------------------- the record itself


@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_record_has_every_part(record):
    assert record.title and record.family and record.citations
    assert callable(record.validate) and callable(record.reference)
    assert len(record.input_names) >= 2 and record.label_kind
    assert record.case_builder is not None, f"{record.name} names no case_builder"
    assert record.case_builder.startswith("rankspec.refimpl."), (
        f"{record.name}'s case_builder {record.case_builder!r} must live in refimpl (refimpl <- conformance)")
    assert callable(resolve_builder(record.case_builder))
    assert any(c.keyword for c in record.conventions), f"{record.name} documents no convention keyword"
    assert set(record.backends) >= {"numpy"}
    assert record.function.__name__ == record.name


@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_registry_entry_matches_the_record(record):
    entry = lookup(record.name)
    assert entry.refs == record.citations
    assert entry.func is record.function


@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_every_convention_is_documented(record):
    params = inspect.signature(record.function).parameters
    registered = all_conventions()
    for c in record.conventions:
        assert c.title and c.description and c.authors, f"{record.name}: {c.title!r} is undocumented"
        listed = [g for g in registered if g.keyword == c.keyword and g.title == c.title]
        assert listed and record.name in listed[0].applies_to, f"{c.title!r} missing from all_conventions()"
        if c.keyword is None:
            continue
        plain = [v for v in c.choices if not (isinstance(v, str) and (" " in v or v.startswith("float")))]
        if plain and len(plain) == len(c.choices):  # enumerable choices: the default is one of them
            assert any(v == c.default and type(v) is type(c.default) or (isinstance(v, float) and v == c.default)
                       for v in c.choices), f"{record.name}.{c.keyword}: default {c.default!r} not in {c.choices!r}"
        if c.keyword in params and not isinstance(c.default, dict):
            default = params[c.keyword].default
            assert default == c.default or (isinstance(default, float) and math.isclose(default, c.default)), (
                f"{record.name}({c.keyword}={default!r}) but the record documents default {c.default!r}")


@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_case_builder_draws_valid_inputs(record):
    cases = sample_cases(record, 12, seed=1, max_size=16)
    assert len({c.kind for c in cases}) > 1
    for c in cases:
        assert len(c.extras) == len(extra_names(record))
        r = record.function(*_args(record, c), **_kwargs(record, c))
        assert np.isfinite(r.loss) and np.all(np.isfinite(r.grad)) and r.grad.shape == c.logits.shape


# ------------------------------------------------------------------------------------------- validation


def _option_probe(record):
    """(keyword, a value of the wrong type) for the first convention with enumerable choices."""
    for c in record.conventions:
        if c.keyword is None or not c.choices or c.keyword in record.input_names:
            continue
        if all(isinstance(v, bool) for v in c.choices):
            return c.keyword, "yes"
        if all(isinstance(v, str) for v in c.choices) and not any(" " in v for v in c.choices):
            return c.keyword, 12345
    return None


def _raises_naming(fn, name):
    with pytest.raises((ValueError, TypeError)) as info:
        fn()
    assert name in str(info.value), f"error {info.value!s} does not name {name!r}"


@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_validation_errors_name_the_argument_on_every_backend(record):
    case = _with_positives(record, 1, seed=3)[0]
    args, kwargs = _args(record, case), _kwargs(record, case)
    logits_name = record.input_names[0]
    bad = np.array(case.logits, dtype=np.float64, copy=True)
    bad.flat[0] = np.nan
    short = list(args)
    short[1] = np.asarray(args[1])[:-1]
    option = _option_probe(record)
    assert option is not None, f"{record.name} has no convention with enumerable choices to probe"
    for backend in record.backends:
        _raises_naming(lambda: _call(record, backend, bad, *args[1:], **kwargs), logits_name)
        with pytest.raises(ValueError):
            _call(record, backend, *short, **kwargs)
        _raises_naming(lambda: _call(record, backend, *args, **kwargs, **{option[0]: option[1]}), option[0])


# ------------------------------------------------------------------------------------------- agreement


def _close(a, b, tol=1e-9):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and np.allclose(a, b, atol=tol, rtol=1e-7)


def _fast_backends(record):
    out = [b for b in record.backends if b != "numpy"]
    if "cuda" in out and not os.environ.get("NUMBA_ENABLE_CUDASIM"):
        try:
            from numba import cuda
            ok = cuda.is_available()
        except Exception:  # pragma: no cover
            ok = False
        if not ok:
            out.remove("cuda")
    return out


@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_backends_agree_with_the_reference(record):
    cases = _cases(record, 3, seed=4)
    for c in cases:
        args, kwargs = _args(record, c), _kwargs(record, c)
        want = _call(record, "numpy", *args, **kwargs)
        public = record.function(*args, **kwargs)
        assert public.loss == want.loss and np.array_equal(public.grad, want.grad)
        for backend in _fast_backends(record):
            got = _call(record, backend, *args, **kwargs)
            assert _close(got.loss, want.loss) and _close(got.grad, want.grad), (record.name, backend, c.describe())


def _adapters(record):
    found = []
    for modname in ADAPTER_MODULES:
        mod = importlib.import_module(modname)
        for obj in vars(mod).values():
            if getattr(obj, "__rankspec_record__", None) == record.name and obj not in found:
                found.append(obj)
    return found


def _specs_of(record):
    from rankspec.conformance.specs import SPECS

    return [s for s in SPECS.values() if s.record is record]


@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_a_conformance_spec_exists(record):
    specs = _specs_of(record)
    assert specs, f"no conformance spec checks {record.name}"
    assert any(not s.fixed_kwargs for s in specs)


@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_torch_adapter_naming_the_record_agrees(record):
    pytest.importorskip("torch")
    from rankspec.conformance._cases import CaseConfig, random_cases
    from rankspec.conformance._compare import Tolerance, compare
    from rankspec.conformance._targets import make_target

    adapters = _adapters(record)
    assert adapters, f"no torch adapter carries __rankspec_record__ = {record.name!r}"
    spec = next(s for s in _specs_of(record) if not s.fixed_kwargs)
    cases = random_cases(spec, CaseConfig(max_size=30, use_grad_output=True), 4, seed=5)
    for adapter in adapters:
        target = make_target(adapter, spec)
        for c in cases:
            want = spec.reference(c.logits, c.targets, c.delta, None, c.extras)
            got = target.run(c)
            cmp = compare(want, got, Tolerance(1e-6, 1e-5), spec)
            assert cmp.ok, f"{getattr(adapter, '__name__', adapter)} on {c.describe()}: {cmp.message}"


def test_term_features_read_the_references_terms():
    """A record's term features are module-level predicates over its declared terms (the diagnosis
    names triggers with them); APE's "no valid pair" holds exactly where num_active is 0."""
    import rankspec.refimpl as R

    assert any(r.term_features for r in records())
    for record in records():
        for key, words, pred in record.term_features:
            assert key and words and callable(pred)
            assert getattr(importlib.import_module(pred.__module__), pred.__name__) is pred
    ape = R.get_record("ape_loss")
    (key, words, pred), = ape.term_features
    # one positive (index 0, logit -5) far below both negatives: with lambda = 8 the pair threshold
    # is 4 / 8 = 0.5 and s_v - s_u = 5 > -0.5, so both pairs are valid (num_active = 1) ...
    s, lab, iou = np.array([-5.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0]), np.array([0.7, 0.0, 0.0])
    r = R.ape_loss(s, lab, iou)
    assert r.terms["num_active"] == 1.0 and not pred(r.terms)
    # ... and with the positive 5 above them, s_v - s_u = -5 < -0.5: no valid pair, loss 0
    r = R.ape_loss(-s, lab, iou)
    assert r.terms["num_active"] == 0.0 and pred(r.terms) and r.loss == 0.0

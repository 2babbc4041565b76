"""Fuzz of the public API as tests (issue 11): every public function, bad and extreme inputs.

Two properties, over every loss record (:func:`rankspec.refimpl.records`), each of its backends,
the torch adapters naming the record, the AP / RS modules and the authors' drop-ins:

* **bad input** (NaN / Inf, wrong shape, unsupported dtype, None, a bad option value) raises
  ValueError / TypeError whose message names the argument - and every surface raises the same
  type with the reference's message;
* **finite input** - magnitudes up to +-1.7e308, subnormals, ties, all-equal, a single element, large
  N - gives a finite loss and gradient, equal across backends and adapters (float64, rtol 1e-9),
  identity-update gradients summing to ~0 and losses in their documented ranges.  Empty input is a
  documented ValueError on every surface.

Backends that could crash the interpreter (the numba kernels, the torch adapters' numba engine)
run in one worker subprocess (:class:`Worker`): a segfault is a test failure that prints the input,
and the worker is restarted for the next example.

Budget: a fixed number of examples per property (the file takes well under a minute on two cores);
``--hypothesis-profile=fuzz-long`` (registered in ``tests/conftest.py``) runs the long sweep.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rankspec import refimpl as R
from rankspec.refimpl.cases import sample_cases

torch = pytest.importorskip("torch")
import rankspec.adapters.torch as T  # noqa: E402

RECORDS = R.records()
IDS = [r.name for r in RECORDS]
RANKING = ("ap_loss", "rs_loss", "bucketed_ap_loss", "bucketed_rs_loss")
LONG = settings.default.max_examples >= 1000  # the fuzz-long profile


def budget(ci: int) -> settings:
    """``ci`` examples in CI, the profile's count under ``--hypothesis-profile=fuzz-long``."""
    n = settings.default.max_examples if LONG else ci
    return settings(max_examples=n, deadline=None, derandomize=not LONG,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])


# ============================================================================ the crash-proof worker

_WORKER = r"""
import os, pickle, struct, sys, traceback
proto = os.fdopen(os.dup(1), "wb")   # the protocol's own fd: kernels printing to stdout cannot corrupt it
os.dup2(2, 1)
import numpy as np
def run(kind, name, args, kwargs):
    if kind == "ref":
        from rankspec import refimpl as R
        r = getattr(R, name)(*args, **kwargs)
        terms = {k: float(v) for k, v in r.terms.items() if isinstance(v, (int, float, np.number))}
        return float(r.loss), np.asarray(r.grad, dtype=np.float64), terms
    import torch
    import rankspec.adapters.torch as T
    x = torch.tensor(args[0], dtype=torch.float64, requires_grad=True)
    out = getattr(T, name)(x, torch.tensor(args[1], dtype=torch.float64), *args[2:], **kwargs)
    out.backward()
    return float(out.detach()), x.grad.numpy().copy(), {}
stdin = sys.stdin.buffer
while True:
    head = stdin.read(8)
    if len(head) < 8:
        break
    req = pickle.loads(stdin.read(struct.unpack("<Q", head)[0]))
    try:
        res = ("ok", run(*req))
    except BaseException as exc:
        res = ("err", (type(exc).__name__, str(exc)))
    body = pickle.dumps(res)
    proto.write(struct.pack("<Q", len(body)) + body)
    proto.flush()
"""


class Worker:
    """One subprocess running calls that could crash; restarted after a crash."""

    def __init__(self):
        self.proc = None

    def _start(self):
        env = dict(os.environ)
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=env)

    def call(self, kind, name, args, kwargs=None):
        """``("ok", (loss, grad, terms))`` or ``("err", (type name, message))``; AssertionError on a crash."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        body = pickle.dumps((kind, name, args, kwargs or {}))
        try:
            self.proc.stdin.write(struct.pack("<Q", len(body)) + body)
            self.proc.stdin.flush()
            head = self.proc.stdout.read(8)
            reply = pickle.loads(self.proc.stdout.read(struct.unpack("<Q", head)[0])) if len(head) == 8 else None
        except (BrokenPipeError, struct.error, EOFError):
            reply = None
        if reply is None:
            rc = self.proc.wait()
            self.proc = None
            raise AssertionError(f"{kind}:{name} crashed the interpreter (exit {rc}) on args={args!r} "
                                 f"kwargs={kwargs!r}")
        return reply

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


# ============================================================================ strategies

_SPECIAL = [0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1e-300, 1.0, -1.0, 1e8, 1e300, -1e300,
            1e308, -1e308, 1.7e308, -1.7e308, 1.69e308, 1.695e308, 8.98846567431158e307]


def logit_values():
    """Finite float64 logits: anything, the extremes, subnormals, and a few values to make ties."""
    return st.one_of(st.floats(allow_nan=False, allow_infinity=False, min_value=-1.7e308, max_value=1.7e308),
                     st.sampled_from(_SPECIAL), st.floats(-3, 3, allow_nan=False).map(lambda v: round(v, 1)))


@st.composite
def ranking_inputs(draw, continuous: bool, max_size: int = 12):
    n = draw(st.integers(1, max_size))
    kind = draw(st.sampled_from(["any", "equal", "ties", "huge"]))
    if kind == "equal":
        logits = [draw(logit_values())] * n
    elif kind == "ties":
        pool = draw(st.lists(logit_values(), min_size=1, max_size=3))
        logits = [draw(st.sampled_from(pool)) for _ in range(n)]
    elif kind == "huge":
        logits = [draw(st.sampled_from(_SPECIAL[8:] + [-v for v in _SPECIAL[8:]])) for _ in range(n)]
    else:
        logits = draw(st.lists(logit_values(), min_size=n, max_size=n))
    pos = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    if continuous:
        iou = draw(st.lists(st.sampled_from([1.0, 0.5, 0.3, 1e-300, 5e-324, 0.7, 0.9999999999]), min_size=n,
                            max_size=n))
        targets = [v if p else 0.0 for v, p in zip(iou, pos)]
    else:
        targets = [1.0 if p else 0.0 for p in pos]
    delta = draw(st.sampled_from([0.0, 0.5, 1.0, 1e-300, 1e300, 2.0]))
    return np.array(logits, dtype=np.float64), np.array(targets, dtype=np.float64), delta


def _close(a, b, rtol=1e-9, atol=1e-12):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=rtol, atol=atol))


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


# ============================================================================ finite input: the AP / RS family

def _check_result(name, loss, grad, terms, n):
    assert math.isfinite(loss), f"{name}: loss {loss}"
    assert np.all(np.isfinite(grad)), f"{name}: gradient {grad}"
    ranking = terms.get("ranking", loss)
    assert -1e-12 <= ranking <= 1 + 1e-12, f"{name}: ranking error {ranking} outside [0, 1]"
    if "sorting" in terms:
        assert -1 - 1e-12 <= terms["sorting"] <= 1 + 1e-12, f"{name}: sorting error {terms['sorting']}"
    # identity update: every unit of error a positive loses goes to the negatives (RS Eq. 5, BRL Eq. 3.9)
    scale = max(1.0, float(np.abs(grad).sum()))
    assert abs(float(grad.sum())) <= 1e-9 * scale, f"{name}: gradient sums to {grad.sum()}"


@pytest.mark.parametrize("name", RANKING)
def test_finite_input_gives_finite_equal_results_everywhere(name, worker):
    record = R.get_record(name)

    @budget(25)
    @given(ranking_inputs(record.continuous))
    def prop(inp):
        logits, targets, delta = inp
        want = getattr(R, name)(logits, targets, delta)
        _check_result(f"{name} numpy", want.loss, want.grad, want.terms, logits.size)
        for backend in _fast_backends(record):
            status, got = worker.call("ref", name, (logits, targets, delta), {"backend": backend})
            assert status == "ok", f"{name} backend={backend} raised {got} on {logits!r}, {targets!r}, {delta}"
            loss, grad, terms = got
            assert _close(loss, want.loss) and _close(grad, want.grad), \
                f"{name} backend={backend}: {loss} vs {want.loss} on {logits!r}, {targets!r}, delta={delta}"
        # the torch adapter (vectorised torch engine at this size) and the drop-in, in float64
        x = torch.tensor(logits, requires_grad=True)
        loss = getattr(T, name)(x, torch.tensor(targets), delta)
        loss.backward()
        assert _close(float(loss.detach()), want.loss) and _close(x.grad.numpy(), want.grad), \
            f"torch {name}: {float(loss)} vs {want.loss} on {logits!r}, {targets!r}, delta={delta}"

    prop()


def test_drop_ins_agree_with_the_reference_on_extremes():
    @budget(15)
    @given(ranking_inputs(True), st.booleans())
    def prop(inp, binary):
        logits, targets, delta = inp
        if binary:
            labels = (targets > 0).astype(np.float64)
            pairs = [(T.APLoss, lambda: R.ap_loss(logits, labels, delta, interpolated=True).loss),
                     (T.BucketedAPLoss, lambda: R.bucketed_ap_loss(logits, labels, delta).loss)]
            for fn, ref in pairs:
                got = fn.apply(torch.tensor(logits), torch.tensor(labels), delta)
                assert _close(float(got), ref()), f"{fn.__name__} on {logits!r}, {labels!r}, {delta}"
        else:
            for fn, ref in ((T.RankSort, R.rs_loss), (T.BucketedRankSort, R.bucketed_rs_loss)):
                ranking, sorting = fn.apply(torch.tensor(logits), torch.tensor(targets), delta)
                want = ref(logits, targets, delta)
                assert _close(float(ranking), want.terms["ranking"]) and _close(float(sorting), want.terms["sorting"])

    prop()


@pytest.mark.parametrize("name", RANKING)
def test_large_n_with_extreme_values_on_every_engine(name, worker):
    """N = 3000 (the torch adapters' default engine is then the numba kernel, run in the worker)."""
    record = R.get_record(name)
    rng = np.random.default_rng(11)
    n = 3000
    logits = rng.choice(np.array(_SPECIAL + [-v for v in _SPECIAL]), n) * rng.choice([1.0, 0.5, 0.999], n)
    targets = (rng.random(n) < 0.1).astype(np.float64)
    if record.continuous:
        targets *= rng.choice([1.0, 0.5, 1e-300], n)
    for delta in (0.0, record.default_delta):
        want = getattr(R, name)(logits, targets, delta)
        _check_result(name, want.loss, want.grad, want.terms, n)
        calls = [("ref", {"backend": b}) for b in _fast_backends(record)] + [("torch", {})]
        for kind, kwargs in calls:
            status, got = worker.call(kind, name, (logits, targets, delta), kwargs)
            assert status == "ok", (kind, kwargs, got)
            assert _close(got[0], want.loss) and _close(got[1], want.grad, atol=1e-12), (kind, kwargs, delta)


# ============================================================================ finite input: every record

def _scale_params():
    out = []
    for scale in (1e-300, 5e-324, 1e150, 1e300):
        for r in RECORDS:
            out.append(pytest.param(r, scale, id=f"{r.name}-{scale:g}"))
    return out


@pytest.mark.parametrize("record,scale", _scale_params())
def test_every_record_finite_at_extreme_scales(record, scale, worker):
    """Each record's sample inputs with the scores (or boxes) scaled to the ends of float64."""
    failures = []
    for c in sample_cases(record, 3, seed=21, max_size=10):
        args = [np.asarray(c.logits, dtype=np.float64) * scale, c.targets, *c.extras]
        if record.label_kind == "boxes":
            args[1] = np.asarray(c.targets, dtype=np.float64) * scale
        kwargs = _delta_kwargs(record, c, args)
        try:
            want = record.function(*args, **kwargs)
        except (ValueError, TypeError) as exc:  # a documented clear error is in the contract
            assert any(n in str(exc) for n in record.input_names + ("delta",)), str(exc)
            continue
        if not (math.isfinite(want.loss) and np.all(np.isfinite(want.grad))):
            failures.append(f"numpy: loss {want.loss} on {c.describe()} x {scale}")
            continue
        for backend in _fast_backends(record):
            status, got = worker.call("ref", record.name, tuple(args), dict(kwargs, backend=backend))
            if status != "ok" or not (_close(got[0], want.loss, rtol=1e-7) and _close(got[1], want.grad, rtol=1e-7,
                                                                                       atol=1e-12)):
                failures.append(f"{backend}: {got if status != 'ok' else got[0]} vs {want.loss} on "
                                f"{c.describe()} x {scale}")
    assert not failures, "\n".join(failures)


def _delta_kwargs(record, case, args):
    params = inspect.signature(record.function).parameters
    if record.default_delta is None or "delta" not in params:
        return {}
    p = params["delta"]
    if p.kind == p.KEYWORD_ONLY:
        return {"delta": case.delta}
    names = [n for n, q in params.items() if q.kind in (q.POSITIONAL_ONLY, q.POSITIONAL_OR_KEYWORD)]
    args.insert(names.index("delta"), case.delta)
    return {}


# ============================================================================ bad input

def _names(exc, name):
    return name in str(exc)


def _outcome(fn):
    try:
        fn()
    except (ValueError, TypeError) as exc:
        return type(exc), str(exc)
    except Exception as exc:  # noqa: BLE001 - reported as the wrong kind of error
        return type(exc), str(exc)
    return None, None


_BAD_OPTIONS = {
    "delta": [-1.0, float("nan"), float("inf"), "a", None, True],
    "tie_value": [0.3, "a", True, None],
    "self_rank": ["x", 1, None],
    "normalization": ["x", None],
    "interpolated": ["no", 1, None, 0.0],
    "threshold": [1, "yes", None],
    "tied_negatives": ["left", None],
}
_OPTIONS_OF = {"ap_loss": ("delta", "tie_value", "self_rank", "normalization", "interpolated"),
               "rs_loss": ("delta", "tie_value", "self_rank", "normalization"),
               "bucketed_ap_loss": ("delta", "tie_value", "self_rank", "normalization", "threshold", "tied_negatives"),
               "bucketed_rs_loss": ("delta", "tie_value", "self_rank", "normalization", "threshold",
                                    "tied_negatives")}
_MODULES = {"ap_loss": T.APLossModule, "rs_loss": T.RSLossModule, "bucketed_ap_loss": T.BucketedAPLossModule,
            "bucketed_rs_loss": T.BucketedRSLossModule}
_X = np.array([0.3, -0.2, 1.0, 0.0])
_Y = np.array([0.0, 1.0, 1.0, 0.0])
_IOU = np.array([0.0, 0.7, 0.4, 0.0])


@pytest.mark.parametrize("name", RANKING)
def test_bad_options_rejected_identically_everywhere(name):
    record = R.get_record(name)
    y = _IOU if record.continuous else _Y
    opts = st.sampled_from(_OPTIONS_OF[name]).flatmap(lambda k: st.tuples(st.just(k), st.sampled_from(_BAD_OPTIONS[k])))

    @budget(30)
    @given(opts)
    def prop(opt):
        key, value = opt
        kw = {key: value}
        ref_type, ref_msg = _outcome(lambda: getattr(R, name)(_X, y, **kw))
        assume(ref_type is not None)  # e.g. tie_value is checked only where it matters
        assert ref_type in (ValueError, TypeError) and _names(ref_msg, key), (kw, ref_type, ref_msg)
        surfaces = {f"backend={b}": (lambda b=b: getattr(R, name)(_X, y, backend=b, **kw))
                    for b in _fast_backends(record)}
        surfaces["torch"] = lambda: getattr(T, name)(torch.tensor(_X), torch.tensor(y), **kw)
        surfaces["module"] = lambda: _MODULES[name](**kw)(torch.tensor(_X), torch.tensor(y))
        for where, fn in surfaces.items():
            got = _outcome(fn)
            assert got == (ref_type, ref_msg), f"{where} with {kw!r}: {got} but the reference raises {ref_msg!r}"

    prop()


@pytest.mark.parametrize("name", RANKING)
def test_return_terms_must_be_a_bool(name):
    y = _IOU if R.get_record(name).continuous else _Y
    for bad in ("no", 1, None):
        with pytest.raises(TypeError, match="return_terms"):
            getattr(T, name)(torch.tensor(_X), torch.tensor(y), return_terms=bad)


_DROP_INS = {"APLoss": ("ap_loss", {"interpolated": True}), "BucketedAPLoss": ("bucketed_ap_loss", {}),
             "RankSort": ("rs_loss", {}), "BucketedRankSort": ("bucketed_rs_loss", {})}


@pytest.mark.parametrize("cls", sorted(_DROP_INS))
def test_drop_ins_reject_what_the_reference_rejects(cls):
    name, fixed = _DROP_INS[cls]
    y = _IOU if R.get_record(name).continuous else _Y
    for delta in _BAD_OPTIONS["delta"]:
        want = _outcome(lambda: getattr(R, name)(_X, y, delta, **fixed) if name == "ap_loss"
                        else getattr(R, name)(_X, y, delta))
        got = _outcome(lambda: getattr(T, cls).apply(torch.tensor(_X), torch.tensor(y), delta))
        assert got == want, (cls, delta, got, want)


def _bad_arrays(good: np.ndarray):
    """(description, bad value) pairs for one array argument."""
    nan = good.astype(np.float64).copy()
    nan.flat[0] = np.nan
    inf = good.astype(np.float64).copy()
    inf.flat[-1] = -np.inf
    return [("nan", nan), ("inf", inf), ("short", good[:-1]), ("complex", good.astype(np.complex128)),
            ("object", np.array(list(good.ravel()) + [None], dtype=object)[:-1].reshape(good.shape)),
            ("strings", np.array(good.astype(str))), ("none", None), ("empty", good[:0])]


@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_bad_arrays_raise_naming_the_argument_on_every_backend(record):
    case = sample_cases(record, 1, seed=5, max_size=6)[0]
    base = [case.logits, case.targets, *case.extras]
    params = inspect.signature(record.function).parameters
    for pos, arg_name in enumerate(record.input_names[:len(base)]):
        if base[pos] is None or np.ndim(base[pos]) == 0:
            continue
        optional = arg_name in params and params[arg_name].default is None
        for what, bad in _bad_arrays(np.asarray(base[pos])):
            if what == "none" and optional:  # None is the documented "not given"
                continue
            args = list(base)
            args[pos] = bad
            kwargs = _delta_kwargs(record, case, args)
            for backend in record.backends if "backend" in inspect.signature(record.function).parameters \
                    else ("numpy",):
                if backend == "cuda" and "cuda" not in _fast_backends(record):
                    continue
                kw = dict(kwargs, backend=backend) if backend != "numpy" else kwargs
                err_type, msg = _outcome(lambda: record.function(*args, **kw))
                assert err_type in (ValueError, TypeError), \
                    f"{record.name}({arg_name}={what}) backend={backend}: {err_type} {msg}"
                if what != "short":  # a shape mismatch may be reported by either array's name
                    assert arg_name in msg, f"{record.name}({arg_name}={what}) backend={backend}: {msg!r}"


@pytest.mark.parametrize("name", RANKING)
def test_torch_bad_arrays_match_the_reference(name):
    record = R.get_record(name)
    y = _IOU if record.continuous else _Y
    lab = record.labels_name
    x = torch.tensor(_X)
    cases = {"nan logits": (torch.tensor([np.nan, 0, 1, 2.0]), y),
             "inf labels": (x, np.array([0, 1, np.inf, 0])),
             "labels 2": (x, np.array([0, 2.0, 1, 0])),
             "labels -1": (x, np.array([0, -1.0, 1, 0])),
             "complex labels": (x, y.astype(np.complex128)),
             "string labels": (x, y.astype(str)),
             "none labels": (x, None),
             "short labels": (x, y[:-1])}
    if not record.continuous:
        cases["labels 0.5"] = (x, np.array([0, 0.5, 1, 0]))
    for what, (a, b) in cases.items():
        want_type, want_msg = _outcome(lambda: getattr(R, name)(a.numpy() if isinstance(a, torch.Tensor) else a, b))
        assert want_type in (ValueError, TypeError), (what, want_type, want_msg)
        for label_form in ("as is", "tensor"):
            bb = b
            if label_form == "tensor":
                try:
                    bb = torch.as_tensor(b)
                except Exception:  # strings / None have no tensor form
                    continue
            got_type, got_msg = _outcome(lambda: getattr(T, name)(a, bb))
            assert got_type in (ValueError, TypeError), (what, label_form, got_type, got_msg)
            arg = "logits" if "logits" in what else lab
            assert arg in got_msg, (what, label_form, got_msg)
            if label_form == "as is":
                assert got_type is want_type, (what, got_type, want_type, got_msg, want_msg)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_any_floating_tensor_is_read_exactly_by_the_reference(dtype):
    x = torch.tensor([0.3, -0.2, 1.0, 0.0]).to(dtype)
    want = R.ap_loss(x.double().numpy(), _Y)  # the tensor's values, exactly in float64
    got = R.ap_loss(x, torch.tensor(_Y).to(dtype))
    assert got.loss == want.loss and np.array_equal(got.grad, want.grad)


def test_unsupported_tensors_raise_naming_the_argument():
    for bad, kind in ((torch.zeros(4, dtype=torch.complex64), TypeError), (torch.zeros(4, device="meta"), TypeError)):
        with pytest.raises(kind, match="logits"):
            R.ap_loss(bad, _Y)
        with pytest.raises(kind, match="logits"):
            T.ap_loss(bad, torch.tensor(_Y))


def test_iou_targets_given_as_a_list_stay_float64():
    x = torch.tensor(_X)
    targets = [0.0, 0.7000000000000001, 0.4000000000000001, 0.0]  # not representable in float32
    want = R.rs_loss(_X, targets).loss
    assert float(T.rs_loss(x, targets)) == pytest.approx(want, rel=1e-14, abs=0)


def test_dr_giou_rankdet_reject_none_and_meta_cleanly():
    x = torch.tensor([[0.2], [0.5], [-0.1]], dtype=torch.float64)
    b = torch.tensor([[0, 0, 1, 1.0]], dtype=torch.float64)
    checks = [(lambda: T.dr_loss(x, None), "labels"),
              (lambda: T.dr_loss(x.to("meta"), torch.tensor([0, 1, 1], device="meta")), "logits"),
              (lambda: T.giou_loss(b, None), "target_boxes"),
              (lambda: T.giou_loss(b.to("meta"), b.to("meta")), "pred_boxes"),
              (lambda: T.generalized_box_iou(b.to("meta"), b.to("meta")), "boxes1"),
              (lambda: T.box_iou(b, b, aligned="no"), "aligned"),
              (lambda: T.global_ranking_loss(x, None), "labels"),
              (lambda: T.global_ranking_loss(x.to("meta"), torch.tensor([0, 1, 1], device="meta")), "logits")]
    for fn, name in checks:
        err_type, msg = _outcome(fn)
        assert err_type in (ValueError, TypeError) and name in msg, (name, err_type, msg)


def test_empty_input_is_the_same_clear_error_everywhere():
    for name in RANKING:
        with pytest.raises(ValueError, match="logits is empty"):
            getattr(R, name)([], [])
        with pytest.raises(ValueError, match="logits is empty"):
            getattr(T, name)(torch.zeros(0, dtype=torch.float64), torch.zeros(0))

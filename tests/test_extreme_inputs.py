"""Extreme finite inputs: every backend agrees with the NumPy reference, and nothing crashes.

Logits up to +-1.7e308 (differences overflow to +-inf), subnormals, ties, all-equal and single
elements, against the numba kernels, the CUDA kernels (in numba's simulator) and the torch
adapters' vectorised engine.  A kernel that indexes out of bounds can kill the interpreter, so
the fast paths run in a worker subprocess: a segfault there is a test failure that names the
input, not a dead test run.  The worker is started once per module (numba's compile cache makes
later starts cheap) and restarted after a crash.

Bounded: the ``ci`` hypothesis profile draws 40 examples per property (a few seconds each);
``HYPOTHESIS_PROFILE=thorough`` runs 400.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankspec.refimpl import ap_loss, bucketed_ap_loss, bucketed_rs_loss, rs_loss

MAXF = float(np.finfo(np.float64).max)

# ----------------------------------------------------------------------------- worker process

_WORKER = textwrap.dedent(r"""
    import json, os, sys
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"   # the CUDA kernels in the simulator
    import warnings
    warnings.simplefilter("ignore")
    import numpy as np
    import torch
    from rankspec import refimpl
    from rankspec.adapters import torch as T

    def run(case):
        fn, backend = case["fn"], case["backend"]
        s = np.array(case["logits"], dtype=np.float64)
        t = np.array(case["targets"], dtype=np.float64)
        if backend == "torch":
            x = torch.tensor(s, dtype=torch.float64, requires_grad=True)
            loss = getattr(T, fn)(x, torch.tensor(t, dtype=torch.float64), case["delta"], engine="torch")
            loss.backward()
            return float(loss), x.grad.tolist()
        r = getattr(refimpl, fn)(s, t, case["delta"], backend=backend)
        return float(r.loss), np.asarray(r.grad, dtype=np.float64).tolist()

    for line in sys.stdin:
        case = json.loads(line)
        try:
            loss, grad = run(case)
            out = {"loss": loss, "grad": grad}
        except Exception as exc:  # an error is a result too (the test decides)
            out = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
""")


class Worker:
    """A Python subprocess evaluating cases; a crash (segfault, abort) is reported with its input."""

    def __init__(self):
        self.proc = None

    def _start(self):
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=dict(os.environ))

    def __call__(self, case):
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.proc.stdin.write(json.dumps(case) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            err = self.proc.stderr.read()[-2000:]
            code = self.proc.returncode
            self.proc = None
            pytest.fail(f"the worker died (exit code {code}) on {case!r}\n{err}")
        return json.loads(line)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


# ----------------------------------------------------------------------------- strategies

#: magnitudes that break naive arithmetic: differences overflow (1e308 scale), sums of two
#: overflow (> MAXF / 2), 2^1000 (above the kernels' rescaling threshold 2^960), subnormals
SPECIAL = (MAXF, 1.7e308, 1.69e308, 1.695e308, 1.1e308, 1e308, 9e307, 2.0 ** 1000, 1e300, 3.5, 1.0, 0.5,
           1e-300, 2.0 ** -1022, 1e-310, 5e-324, 0.0)
special = st.sampled_from(SPECIAL).flatmap(lambda v: st.sampled_from((v, -v)))
finite = st.floats(allow_nan=False, allow_infinity=False)
logit = st.one_of(special, special, finite)


@st.composite
def problems(draw, iou: bool):
    n = draw(st.integers(1, 7))
    if draw(st.booleans()):  # all equal
        s = [draw(logit)] * n
    else:
        pool = draw(st.lists(logit, min_size=1, max_size=n))  # few distinct values: ties
        s = [draw(st.sampled_from(pool)) for _ in range(n)]
    pos = st.sampled_from((0.25, 0.5, 0.75, 1.0)) if iou else st.just(1.0)
    t = [draw(st.one_of(st.just(0.0), pos)) for _ in range(n)]
    if not any(v > 0 for v in t):
        t[draw(st.integers(0, n - 1))] = draw(pos)
    delta = draw(st.sampled_from((0.0, 0.0, 0.5, 1.0, 1e-3, 1e300, 1e307, 2.0 ** 1000)))
    return s, t, delta


LOSSES = {"ap_loss": (ap_loss, False), "rs_loss": (rs_loss, True), "bucketed_ap_loss": (bucketed_ap_loss, False),
          "bucketed_rs_loss": (bucketed_rs_loss, True)}


def _reference(fn, s, t, delta):
    with np.errstate(over="ignore", invalid="ignore"):
        return LOSSES[fn][0](np.array(s), np.array(t), delta)


def _check_backend(worker, fn, backend, s, t, delta):
    ref = _reference(fn, s, t, delta)
    case = {"fn": fn, "backend": backend, "logits": s, "targets": t, "delta": delta}
    got = worker(case)
    assert "error" not in got, (case, got["error"])
    assert np.isfinite(got["loss"]), (case, got)
    assert np.all(np.isfinite(got["grad"])), (case, got)
    if np.isfinite(ref.loss):  # the oracle's own domain is checked in test_reference_is_finite
        assert got["loss"] == pytest.approx(ref.loss, abs=1e-9), (case, ref.loss)
        # (the torch adapters' autograd gradient is the same identity update)
        assert np.allclose(got["grad"], ref.grad, atol=1e-9), (case, ref.grad)


# ----------------------------------------------------------------------------- properties

@pytest.mark.parametrize("fn", sorted(LOSSES))
@given(data=st.data())
def test_numba_matches_reference_on_extreme_logits(worker, fn, data):
    s, t, delta = data.draw(problems(LOSSES[fn][1]))
    _check_backend(worker, fn, "numba", s, t, delta)


@pytest.mark.parametrize("fn", ["ap_loss", "rs_loss", "bucketed_ap_loss"])
@settings(max_examples=10)  # the simulator runs every GPU thread as Python
@given(data=st.data())
def test_cuda_simulator_matches_reference_on_extreme_logits(worker, fn, data):
    s, t, delta = data.draw(problems(LOSSES[fn][1]))
    _check_backend(worker, fn, "cuda", s, t, delta)


@pytest.mark.parametrize("fn", sorted(LOSSES))
@given(data=st.data())
def test_torch_engine_matches_reference_on_extreme_logits(worker, fn, data):
    s, t, delta = data.draw(problems(LOSSES[fn][1]))
    _check_backend(worker, fn, "torch", s, t, delta)


# ----------------------------------------------------------------------------- the reported cases

def test_reported_cases(worker):
    """The inputs of issue 11, with the reference's values worked out by hand (tie_value = 1,
    self_rank = "one": a positive counts itself once).

    * AP, delta = 0, s = (1e308, -1e308, 1.1e308), labels (0, 1, 1): the positive at 1.1e308 has
      nothing above it (error 0); the one at -1e308 has the negative (N_FP = 1) and the other
      positive above it: rank = 1 (itself) + 1 + 1 = 3, l_R = 1/3.  Loss (0 + 1/3) / 2 = 1/6.
    * Bucketed AP, delta = 0, s = (1e308, -1e308, -1e308), labels (0, 1, 0): both negatives fall
      in the bucket above the positive (a tied negative counts as above); the prototype is the
      mean clamped to the members: the offset 0 + (-2e308) overflows to -inf, so it is the
      smallest member, -1e308, tied with the positive: H(0) = tie_value = 1, weight 2:
      N_FP = 2, rank = 1 + 2, l_R = 2/3.
    * RS with one positive and no negative: nothing is ranked wrongly: 0.
    """
    cases = [
        ("ap_loss", [1e308, -1e308, 1.1e308], [0, 1, 1], 0.0, 1 / 6),
        ("bucketed_ap_loss", [1e308, -1e308, -1e308], [0.0, 1, 0], 0.0, 2 / 3),
        ("rs_loss", [1e308], [0.5], 0.5, 0.0),  # one positive, nothing to rank against
    ]
    for fn, s, t, delta, expected in cases:
        for backend in ("numpy", "numba", "cuda", "torch"):
            got = worker({"fn": fn, "backend": backend, "logits": s, "targets": t, "delta": delta})
            assert "error" not in got, (fn, backend, got)
            assert got["loss"] == pytest.approx(expected, abs=1e-12), (fn, backend, s, got)


def test_rs_near_max_float_matches_reference(worker):
    """RS at delta = 0 on three logits within 1% of MAXF: every pairwise sum of logits overflows,
    but the answer only depends on their order: (1.7e308, IoU 0.3) above (1.695e308, 0.6) above
    (1.69e308, 0.7).  Compared with the reference (0.10556) on every backend."""
    s, t = [1.7e308, 1.69e308, 1.695e308], [0.3, 0.7, 0.6]
    ref = _reference("rs_loss", s, t, 0.0)
    assert ref.loss == pytest.approx(0.10555555555555553, abs=1e-12)
    for backend in ("numba", "cuda", "torch"):
        got = worker({"fn": "rs_loss", "backend": backend, "logits": s, "targets": t, "delta": 0.0})
        assert got.get("loss") == pytest.approx(ref.loss, abs=1e-12), (backend, got)


def test_many_huge_logits_in_one_window(worker):
    """delta > 0 with many negatives in one smoothing window at |s| ~ 1e308: the window's logit
    sum overflows float64 unless the kernels rescale.  All negatives equal the positive, so each
    has H(0) = 1/2: N_FP = 1000 / 2 = 500, rank = 500 + 1 (self, H(0) = 1/2 replaced by 1):
    l_R = 500 / 501."""
    n = 1000
    s = [1.5e308] * (n + 1)
    t = [1.0] + [0.0] * n
    for backend in ("numpy", "numba", "cuda", "torch"):
        got = worker({"fn": "ap_loss", "backend": backend, "logits": s, "targets": t, "delta": 1e307})
        assert got.get("loss") == pytest.approx(500 / 501, abs=1e-12), (backend, got)


# ----------------------------------------------------------------------------- GIoU

@given(scale_exp=st.integers(-1060, 1015), data=st.data())
def test_giou_is_scale_free_at_any_magnitude(scale_exp, data):
    """GIoU is a ratio of areas: boxes scaled by any power of two 2^k (no coordinate overflowing)
    give the same GIoU, loss and (scaled by 2^-k) gradient as at scale 1, on NumPy and torch.
    Boxes: [0, 0, 2, 2] and [1, 1, 3, 3]: I = 1, U = 7, C = 9, GIoU = 1/7 - 2/9 = -5/63."""
    import torch

    from rankspec.adapters.torch import detector as TD
    from rankspec import refimpl as D

    b1 = np.array([[0.0, 0, 2, 2]])
    b2 = np.array([[1.0, 1, 3, 3]])
    k = float(2.0 ** scale_exp)
    B1, B2 = b1 * k, b2 * k
    eps = data.draw(st.sampled_from((0.0, 1e-6)))
    g = D.generalized_box_iou(B1, B2, eps=eps)
    if eps == 0.0 or scale_exp > -5:  # the clamp at eps (an area) only bites for tiny boxes
        assert g[0] == pytest.approx(-5 / 63, rel=1e-15)
    assert np.isfinite(g).all()
    if scale_exp < -1000:  # the gradient, of size 2^-scale_exp, may be beyond float64: a clear error then
        try:
            r = D.giou_loss(B1, B2, eps=eps)
        except ValueError as exc:
            assert "pred_boxes[0]" in str(exc) and "beyond float64" in str(exc)
            return
    r = D.giou_loss(B1, B2, eps=eps)
    assert np.isfinite(r.loss) and np.isfinite(r.grad).all()
    if scale_exp < -1000:
        return
    if eps == 0.0:
        assert r.loss == pytest.approx(1 + 5 / 63, rel=1e-15)
        r1 = D.giou_loss(b1, b2)
        assert np.allclose(r.grad * k, r1.grad, rtol=1e-14, atol=0)
    x = torch.tensor(B1, requires_grad=True)
    loss = TD.giou_loss(x, torch.tensor(B2), eps=eps)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(r.loss, rel=1e-14)
    assert np.allclose(x.grad.numpy(), r.grad, rtol=1e-12, atol=0)
    tg = TD.generalized_box_iou(torch.tensor(B1), torch.tensor(B2), eps=eps, aligned=False)
    assert float(tg[0, 0]) == pytest.approx(float(g[0]), rel=1e-15)


def test_torch_engine_keeps_a_tiny_delta_next_to_huge_logits():
    """Found by the long fuzz sweep: logits [0, 2^960 (1 + 2^-52), 2^-1022 (positive)], delta ~ 1e-300.
    By hand: the negative 0 lies 2^-1022 below the positive, inside the window, so
    H = 1/2 - 2^-1022 / (2 delta) = 0.5 - 1.1e-8; the other negative is far above (H = 1):
    N_FP = 1.5 - 1.1e-8, AP loss = N_FP / (1 + N_FP) = 0.6 - 1.8e-9 (the reference's 0.59999999822).
    A fixed unit of 2^-70 made delta subnormal and the engine returned 0.6; the unit is now the
    smallest power of two that keeps the logits below 2^960 (here 1/2)."""
    torch = pytest.importorskip("torch")
    from rankspec.adapters.torch import functional as TF

    s = np.array([0.0, float.fromhex("0x1.0000000000001p+960"), float.fromhex("0x1.0p-1022")])
    t = np.array([0.0, 0.0, 1.0])
    d = float.fromhex("0x1.56e1fc2f8f359p-997")
    nfp = 1.5 - float.fromhex("0x1.0p-1022") / (2 * d)
    by_hand = nfp / (1.0 + nfp)
    ref = ap_loss(s, t, d)
    assert abs(ref.loss - by_hand) < 1e-15 and abs(ref.loss - 0.6) > 1e-9
    x = torch.tensor(s, requires_grad=True)
    loss = TF.ap_loss(x, torch.tensor(t), d, engine="torch")
    loss.backward()
    assert abs(float(loss.detach()) - ref.loss) < 1e-15
    assert np.allclose(x.grad.numpy(), ref.grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("fn_name", ["ap_loss", "rs_loss", "bucketed_ap_loss", "bucketed_rs_loss"])
def test_torch_engine_hands_near_limit_logits_with_a_subnormal_scaled_delta_to_the_reference(fn_name):
    """Logits at 1.7e308 force a unit of 2^-64; delta = 1e-299 would then be subnormal (about 5e-319),
    so the engine runs the reference on the host: the same numbers as the reference."""
    torch = pytest.importorskip("torch")
    import rankspec.refimpl as R
    from rankspec.adapters.torch import _ranking
    from rankspec.adapters.torch import functional as TF

    s = np.array([0.0, 1.7e308, 3e-300, -1e-299, 2e-300, 1.6e308])
    t = np.array([0.0, 0.0, 0.7, 0.0, 0.4, 0.0])
    y = t if "rs" in fn_name else (t > 0).astype(float)
    d = 1e-299
    unit = _ranking.arithmetic_unit(0.0, 1.7e308, d)
    assert unit == 2.0 ** -64 and d * unit < _ranking.TINY_DELTA
    ref = getattr(R, fn_name)(s, y, d)
    x = torch.tensor(s, requires_grad=True)
    loss = getattr(TF, fn_name)(x, torch.tensor(y), d, engine="torch")
    loss.backward()
    assert abs(float(loss.detach()) - ref.loss) <= 1e-15
    assert np.allclose(x.grad.numpy(), ref.grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("fn_name", ["bucketed_ap_loss", "bucketed_rs_loss"])
def test_a_bucket_spanning_more_than_the_largest_float_has_its_mean_as_prototype(fn_name):
    """Negatives 1.7e308, 1.7e308, -1.7e308 and one positive at -1.75e308 (IoU 0.6), delta = 1e308:
    the three negatives form one bucket whose offsets from its largest member overflow.  Its
    prototype is the mean, 1.7e308 / 3 = 5.67e307, computed in units of 2^3; the positive sees it
    at 5.67e307 + 1.75e308 > MAXF above itself, so H = 1 and N_FP = 3 (the bucket's weight); the
    bucketed losses' self term is H(0) = 1/2 (``self_rank="h0"``): AP loss = 3 / (1/2 + 3) = 6/7
    (RS: the same, a single positive has no sorting error).  (Clamping the prototype to the bucket's
    smallest member, as before, gave H = 5e306 / 2e308 + 1/2 = 0.5125: 1.5375 / 2.0375 = 0.755.)
    Every backend agrees: numba and the torch engine hand such calls to the reference."""
    torch = pytest.importorskip("torch")
    import rankspec.refimpl as R
    from rankspec.adapters.torch import functional as TF

    s = np.array([1.7e308, 1.7e308, -1.7e308, -1.75e308])
    t = np.array([0.0, 0.0, 0.0, 0.6])
    y = t if "rs" in fn_name else (t > 0).astype(float)
    ref = getattr(R, fn_name)(s, y, 1e308)
    assert abs(ref.loss - 6 / 7) < 1e-15
    assert abs(getattr(R, fn_name)(s, y, 1e308, backend="numba").loss - 6 / 7) < 1e-15
    x = torch.tensor(s, requires_grad=True)
    loss = getattr(TF, fn_name)(x, torch.tensor(y), 1e308, engine="torch")
    loss.backward()
    assert abs(float(loss.detach()) - 6 / 7) < 1e-15
    assert np.allclose(x.grad.numpy(), ref.grad, rtol=1e-12, atol=0)


def test_torch_engine_bucket_means_do_not_depend_on_other_buckets():
    """Found by the long fuzz sweep: bucketed AP on logits [0, 0, 0, 2^83 (1 - 2^-51), -1, -0.7579 (exact
    bits below), 0 (positive), -1 (positive)], delta = 0.5.  The bucket above the positive 0 holds
    {0, 0, 0, 9.7e24}; the next one {-0.7579, -1}.  Prefix sums over all buckets carried about
    eps^2 x 2.9e25 = 1.4e-6 of the first bucket's offsets into the second's, and the loss came out
    1.5e-9 off; each bucket is now summed on its own."""
    torch = pytest.importorskip("torch")
    from rankspec.adapters.torch import functional as TF

    s = np.array([0.0, 0.0, 0.0, float.fromhex("0x1.ffffffffffffap+82"), -1.0, float.fromhex("-0x1.840c5504b8d3cp-1"),
                  0.0, -1.0])
    y = np.array([0.0, 0, 0, 0, 0, 0, 1, 1])
    ref = bucketed_ap_loss(s, y, 0.5)
    # by hand: prototypes 9.7e24 / 4 (H = 1 for both positives, weight 4) and m = (-0.7579 - 1) / 2
    # (weight 2: H = 0 against the positive 0, H = (m + 1) / 1 + 1/2 against -1); rank+ = 1/2 (self, h0)
    # for the positive 0 and 1/2 + 1 for -1 (the positive 0 lies above it by delta * 2)
    m = (float.fromhex("-0x1.840c5504b8d3cp-1") - 1.0) / 2
    nfp0, nfp1 = 4.0, 4.0 + 2 * ((m + 1.0) / 1.0 + 0.5)
    by_hand = (nfp0 / (0.5 + nfp0) + nfp1 / (1.5 + nfp1)) / 2
    assert abs(ref.loss - by_hand) < 1e-15
    x = torch.tensor(s, requires_grad=True)
    loss = TF.bucketed_ap_loss(x, torch.tensor(y), 0.5, engine="torch")
    loss.backward()
    assert abs(float(loss.detach()) - ref.loss) < 1e-15
    assert np.allclose(x.grad.numpy(), ref.grad, rtol=1e-12, atol=1e-15)

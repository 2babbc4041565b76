"""The numba.cuda fast paths (backend="cuda") against the NumPy reference (issue 5).

CI runs these under numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1, set for the whole pytest run),
where every GPU thread is a Python thread: inputs stay small and the kernels run on a 2 x 8 grid.
On a machine with a GPU (and the simulator off) the same tests run the real kernels.  Without
numba.cuda support (no GPU and no simulator) they are skipped, except the check of the error message.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankspec.refimpl import rs_loss
from rankspec.refimpl.fast import cuda_available
from strategies import ranking_problems
from test_fast import (LOSS_FUNCS, TOL32, TOL64, assert_matches, assert_same_outcome, conventions, labels_for,
                       to_host)

needs_cuda = pytest.mark.skipif(not cuda_available(), reason="numba.cuda unavailable (no GPU, simulator off)")
pytestmark = pytest.mark.cuda


def _device(args):
    """Logits and labels as numba device arrays (the __cuda_array_interface__ path)."""
    from numba import cuda

    return (cuda.to_device(np.ascontiguousarray(args[0])), cuda.to_device(np.ascontiguousarray(args[1]))) \
        + tuple(args[2:])


@needs_cuda
@pytest.mark.parametrize("name", list(LOSS_FUNCS))
@settings(max_examples=8)
@given(prob=st.one_of(ranking_problems(max_size=14), ranking_problems(max_size=14, ties=True),
                      ranking_problems(max_size=10, grid=False, delta=st.floats(1e-3, 2.0))),
       data=st.data())
def test_cuda_matches_reference(name, prob, data):
    """Host input: same numbers as the reference (ties, delta = 0, every convention) or the same error."""
    kw = data.draw(conventions(name))
    args = (prob.logits, labels_for(name, prob.targets), prob.delta)
    assert_same_outcome(LOSS_FUNCS[name][0], args, kw, "cuda")


@needs_cuda
@pytest.mark.parametrize("name", list(LOSS_FUNCS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cuda_device_input_returns_device_gradient(name, dtype):
    """GPU input is used in place; the gradient comes back on the GPU in the logits' shape."""
    rng = np.random.default_rng(7)
    s = (rng.integers(-6, 7, 12) * 0.25).astype(dtype).reshape(3, 4)
    t = np.where(rng.random(12) < 0.4, rng.integers(1, 5, 12) / 4, 0.0).reshape(3, 4)
    y = labels_for(name, t).reshape(3, 4).astype(dtype)
    fn = LOSS_FUNCS[name][0]
    for delta in (0.0, 0.5):
        ref = fn(s, y, delta)
        fast = fn(*_device((s, y)), delta, backend="cuda")
        assert hasattr(fast.grad, "copy_to_host") and fast.grad.shape == (3, 4)
        assert_matches(ref, fast, TOL32 if dtype == np.float32 else TOL64)


@needs_cuda
@pytest.mark.parametrize("name", ["ap", "brs"])
def test_cuda_edge_cases(name):
    """No positive, no relevant negative, only positives: the defined results of the reference."""
    fn = LOSS_FUNCS[name][0]
    cases = [(np.array([0.5, 1.0, -1.0]), np.zeros(3)),
             (np.array([2.0, 3.0, -1.0, -2.0]), np.array([0.5, 1.0, 0.0, 0.0])),
             (np.array([1.0, 1.0, 0.0]), np.array([0.25, 1.0, 0.5]))]
    for s, t in cases:
        for delta in (0.0, 0.5):
            assert assert_same_outcome(fn, (s, labels_for(name, t), delta), {}, "cuda") == "ok"
            assert assert_same_outcome(fn, (s, labels_for(name, t), delta), {}, "cuda", convert=_device) == "ok"


@needs_cuda
def test_cuda_global_histogram_kernel(monkeypatch):
    """More slots than fit in shared memory: the global-atomics histogram gives the same numbers."""
    from rankspec.refimpl.fast import _cuda_kernels

    monkeypatch.setattr(_cuda_kernels, "SHARED_SLOTS", 0)
    s = np.array([0.5, -0.25, 1.0, 0.0, 0.75, 0.25, 1.0])
    t = np.array([0.75, 0.0, 0.0, 0.5, 0.0, 1.0, 0.25])
    for delta in (0.0, 0.5):
        assert_same_outcome(rs_loss, (s, t, delta), {}, "cuda")


@needs_cuda
@pytest.mark.parametrize("bad", ["nan-logit", "label", "shape", "empty", "delta"])
def test_cuda_bad_input_raises_like_the_reference(bad):
    s = np.array([0.5, -0.25, 1.0, 0.0])
    t = np.array([0.75, 0.0, 0.0, 0.5])
    delta = 0.5
    if bad == "nan-logit":
        s[1] = np.nan
    elif bad == "label":
        t[1] = 1.5
    elif bad == "shape":
        t = t[:3]
    elif bad == "empty":
        s, t = s[:0], t[:0]
    else:
        delta = -1.0
    for convert in (None, _device) if bad != "empty" else (None,):
        assert assert_same_outcome(rs_loss, (s, t, delta), {}, "cuda", convert=convert) == "raise"


def test_cuda_unavailable_gives_a_clear_error(monkeypatch):
    """Without a GPU (and without the simulator) backend='cuda' says so and names the alternatives."""
    numba_cuda = pytest.importorskip("numba.cuda")
    monkeypatch.setattr(numba_cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"backend='cuda' needs a CUDA GPU.*backend='numba'.*NUMBA_ENABLE_CUDASIM"):
        rs_loss(np.array([0.5, 0.0]), np.array([1.0, 0.0]), backend="cuda")
    assert not cuda_available()


@needs_cuda
def test_torch_cuda_tensor_zero_copy():
    """Real GPU only: a torch CUDA tensor goes in without a copy and the gradient wraps back into torch."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs torch with a CUDA device")
    s = torch.tensor([0.5, -0.25, 1.0, 0.0], device="cuda")
    t = torch.tensor([0.75, 0.0, 0.0, 0.5], device="cuda")
    r = rs_loss(s, t, backend="cuda")
    g = torch.as_tensor(r.grad, device="cuda")
    ref = rs_loss(s.cpu().numpy(), t.cpu().numpy())
    np.testing.assert_allclose(g.cpu().numpy(), ref.grad, atol=1e-10)
    assert abs(r.loss - ref.loss) < 1e-10
    assert to_host(r.grad).shape == (4,)


def _cuda_target(fn):
    def target(logits, labels, delta):
        return fn(logits, labels, delta, backend="cuda")
    target.__name__ = f"{fn.__name__}_cuda"
    return target


@needs_cuda
@pytest.mark.parametrize("spec, fn", [("rs", "rs_loss"), ("ap", "ap_loss"), ("brs", "bucketed_rs_loss")])
def test_cuda_backend_passes_the_conformance_harness(spec, fn):
    """The conformance harness (generated cases, ties, extremes, views, shrinking, diagnosis) finds no
    difference between ``backend="cuda"`` and the reference; small inputs, for the simulator."""
    import rankspec.refimpl as R
    from rankspec.conformance import assert_conforms

    report = assert_conforms(_cuda_target(getattr(R, fn)), spec, examples=40, max_size=32, vectors=False,
                             dtypes=("float64",), isolate=False, shrink=False)
    assert report.conformant


@needs_cuda
def test_the_harness_catches_a_wrong_cuda_result():
    """The same check fails for a port that is wrong on the GPU path (the loss of the CUDA kernels
    times 1.01): the harness is not fooled by a target that runs the real kernels."""
    import rankspec.refimpl as R
    from rankspec.conformance import check
    from rankspec.refimpl import LossResult

    def wrong(logits, labels, delta):
        r = R.rs_loss(logits, labels, delta, backend="cuda")
        return LossResult(r.loss * 1.01, r.grad, r.terms)

    report = check(wrong, "rs", examples=4, max_size=16, vectors=False, dtypes=("float64",), isolate=False,
                   shrink=False, diagnose=False)
    assert not report.conformant

"""engine="cuda": the torch glue to the numba.cuda kernels.

The CUDA simulator (NUMBA_ENABLE_CUDASIM=1) cannot take torch CUDA tensors, so the array part of the
glue (:func:`rankspec.adapters.torch._engine.cuda_arrays_loss`) is tested here with NumPy arrays and
(simulated) device arrays; the torch CUDA tensor tests run only on a real GPU (scripts/gpu-check)."""

import numpy as np
import pytest
import torch

from rankspec.adapters.torch import _engine
from rankspec.adapters.torch import functional as TF
from rankspec.refimpl import ap_loss, bucketed_rs_loss, rs_loss

numba_cuda = pytest.importorskip("numba.cuda")

NAMES = {"rs_loss": ("ranking", "sorting"), "ap_loss": ("ranking",), "bucketed_rs_loss": ("ranking", "sorting")}
OPTS = dict(self_rank="one", tie_value=1.0, normalization="positives", threshold=True, tied_negatives="above")


def _problem(L=60, P=8, seed=0):
    rng = np.random.default_rng(seed)
    s = rng.normal(1.0, 1.0, L)
    t = np.zeros(L)
    idx = rng.choice(L, P, replace=False)
    s[idx] = rng.normal(-1.0, 1.0, P)
    t[idx] = 1.0 - rng.random(P)
    s[idx[0]] = s[idx[1]]  # a tie between positives
    return s, t


def _host(g):
    return g.copy_to_host() if hasattr(g, "copy_to_host") else np.asarray(g)


@pytest.mark.skipif(not numba_cuda.is_available(), reason="numba.cuda unavailable (no GPU and no simulator)")
@pytest.mark.parametrize("fn,ref", [("rs_loss", rs_loss), ("ap_loss", ap_loss), ("bucketed_rs_loss", bucketed_rs_loss)])
@pytest.mark.parametrize("on_device", [False, True])
@pytest.mark.parametrize("delta", [0.0, 0.5])
def test_arrays_glue_matches_reference(fn, ref, on_device, delta):
    s, t = _problem()
    y = t if fn != "ap_loss" else (t > 0) * 1.0
    r = ref(s, y, delta, self_rank="one", tie_value=1.0)
    a, b = (numba_cuda.to_device(s), numba_cuda.to_device(y)) if on_device else (s, y)
    loss, grad, terms = _engine.cuda_arrays_loss(fn, a, b, delta, False, names=NAMES[fn], **OPTS)
    if on_device:
        assert not isinstance(grad, np.ndarray)  # the gradient stays on the device
    assert loss == pytest.approx(r.loss, abs=1e-12)
    assert np.allclose(_host(grad), r.grad, atol=1e-12, rtol=0)
    assert set(terms) == set(NAMES[fn])
    assert sum(terms.values()) == pytest.approx(loss, abs=1e-12)


@pytest.mark.skipif(not numba_cuda.is_available(), reason="numba.cuda unavailable (no GPU and no simulator)")
def test_arrays_glue_ill_conditioned_runs_reference():
    # delta far below the logits' scale: the kernels decline, the reference answers
    s = np.array([1e6, 1e6 + 1.0, 1e6 - 1.0])
    y = np.array([1.0, 0.0, 0.5])
    r = rs_loss(s, y, 1e-9, self_rank="one")
    loss, grad, _ = _engine.cuda_arrays_loss("rs_loss", s, y, 1e-9, False, names=NAMES["rs_loss"], **OPTS)
    assert loss == pytest.approx(r.loss, abs=1e-12)
    assert np.allclose(_host(grad), r.grad, atol=1e-12)


def test_engine_cuda_rejects_cpu_tensors():
    with pytest.raises(ValueError, match="engine='cuda' needs CUDA tensors"):
        TF.rs_loss(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0]), engine="cuda")


def test_engine_choice_is_checked():
    with pytest.raises(ValueError, match="engine"):
        TF.rs_loss(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0]), engine="gpu")


def test_auto_on_cpu_never_picks_cuda():
    x = torch.zeros(10)
    from rankspec.adapters.torch._inputs import parse

    p = parse(x, torch.tensor([1.0] + [0.0] * 9), 0.5, labels_name="targets", continuous=True, self_rank="one",
              tie_value=0.5, normalization="positives", scope="batch", image_ids=None)
    assert _engine.resolve_engine(p, "auto") in ("torch", "numba")


# ---------------------------------------------------------------- real GPU only
def _real_gpu():
    from numba import config

    return torch.cuda.is_available() and numba_cuda.is_available() and not config.ENABLE_CUDASIM


gpu = pytest.mark.skipif(not _real_gpu(), reason="needs a CUDA device visible to torch and numba (not the simulator); "
                                                 "run scripts/gpu-check on a GPU machine")


@gpu
@pytest.mark.parametrize("fn,ref", [("rs_loss", rs_loss), ("ap_loss", ap_loss), ("bucketed_rs_loss", bucketed_rs_loss)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_tensors_zero_copy(fn, ref, dtype):
    s, t = _problem(L=5000, P=100)
    y = t if fn != "ap_loss" else (t > 0) * 1.0
    s = s.astype(np.float32).astype(np.float64) if dtype == torch.float32 else s
    x = torch.tensor(s, dtype=dtype, device="cuda", requires_grad=True)
    loss = getattr(TF, fn)(x, torch.tensor(y, device="cuda"), 0.5, engine="cuda")
    loss.backward()
    assert x.grad.device == x.device and x.grad.dtype == dtype
    r = ref(s, y, 0.5)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert float(loss.detach()) == pytest.approx(r.loss, abs=tol)
    assert np.allclose(x.grad.cpu().double().numpy(), r.grad, atol=tol)


@gpu
def test_cuda_tensors_per_image_and_other_stream():
    s, t = _problem(L=3000, P=60, seed=4)
    ids = np.arange(s.size) % 3
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        x = torch.tensor(s, device="cuda", requires_grad=True)
        loss = TF.rs_loss(x, torch.tensor(t, device="cuda"), 0.5, scope="image",
                          image_ids=torch.tensor(ids, device="cuda"), engine="cuda")
        loss.backward()
    torch.cuda.synchronize()
    xc = torch.tensor(s, requires_grad=True)
    lc = TF.rs_loss(xc, torch.tensor(t), 0.5, scope="image", image_ids=torch.tensor(ids), engine="torch")
    lc.backward()
    assert float(loss.detach()) == pytest.approx(float(lc.detach()), abs=1e-12)
    assert np.allclose(x.grad.cpu().numpy(), xc.grad.numpy(), atol=1e-12)


@gpu
def test_cuda_auto_and_torch_engine_agree():
    s, t = _problem(L=200_000, P=2000, seed=5)
    out = {}
    for engine in ("auto", "torch", "cuda"):
        x = torch.tensor(s, device="cuda", requires_grad=True)
        loss = TF.rs_loss(x, torch.tensor(t, device="cuda"), 0.5, engine=engine)
        loss.backward()
        out[engine] = (float(loss.detach()), x.grad.cpu().numpy())
    for engine in ("auto", "cuda"):
        assert out[engine][0] == pytest.approx(out["torch"][0], abs=1e-12)
        assert np.allclose(out[engine][1], out["torch"][1], atol=1e-12)

"""scope="distributed" of the torch adapters: gloo process groups on the CPU against the NumPy reference.

Each test launches W worker processes (this file run as a script, ``init_method=file://``).  Every
worker builds the same global batch from a seed, keeps its own share of the rows (one rank holds
no positive, one holds no row at all), computes each loss with ``scope="distributed"`` and saves
the loss and the gradient of its own logits.  The test then checks, for every loss:

* the loss is the same on every rank and equals the reference loss of the concatenated batch;
* the gradients, concatenated in rank order and divided by W (what DistributedDataParallel's mean
  does), equal the reference gradient of the concatenated batch.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)

C = 3  # classes


def _global_batch(seed: int, sizes):
    """Rows of every rank: logits [N, C], class ids, one-hot labels, IoU targets, image ids, levels."""
    rng = np.random.default_rng(seed)
    N = sum(sizes)
    x = np.round(rng.normal(size=(N, C)) * 4) / 4  # quarter steps: ties across ranks too
    cls = rng.integers(-1, C, size=N)  # -1 background, 0..C-1 positive of that class
    # the last rank with rows has no positive
    last = max(r for r, n in enumerate(sizes) if n)
    start = sum(sizes[:last])
    cls[start:start + sizes[last]] = -1
    onehot = np.zeros((N, C))
    pos = np.flatnonzero(cls >= 0)
    onehot[pos, cls[pos]] = 1.0
    iou = np.where(cls >= 0, rng.uniform(0.1, 1.0, size=N), 0.0)
    img = np.concatenate([np.repeat(np.arange(2), [n // 2, n - n // 2]) for n in sizes])  # 2 images per rank
    levels = rng.integers(0, 2, size=N)
    return x, cls, onehot, iou, img, levels


def _cases(T, heads):
    """name -> f(x, cls, onehot, iou, img, levels) for this rank's rows (x requires grad); returns a 0-d loss."""
    from rankspec.adapters.torch.official import APLoss, BucketedRankSort, RankSort

    def rs_targets(onehot, iou):
        return onehot * iou[:, None]

    def heads_loss(name):
        def f(x, cls, onehot, iou, img, levels):
            flat = heads.FlatTargets(x, cls, iou, img, levels, num_images=2)
            return sum(heads.classification_loss(name, flat, scope="distributed").values())
        return f

    return {
        "ap": lambda x, cls, oh, iou, img, lev: T.ap_loss(x, oh, scope="distributed"),
        "ap_interp": lambda x, cls, oh, iou, img, lev: T.ap_loss(x, oh, interpolated=True, scope="distributed"),
        "rs": lambda x, cls, oh, iou, img, lev: T.rs_loss(x, rs_targets(oh, iou), scope="distributed"),
        "bap": lambda x, cls, oh, iou, img, lev: T.bucketed_ap_loss(x, oh, scope="distributed"),
        "brs": lambda x, cls, oh, iou, img, lev: T.bucketed_rs_loss(x, rs_targets(oh, iou), scope="distributed"),
        "rs_module": lambda x, cls, oh, iou, img, lev: T.RSLossModule(scope="distributed")(x, rs_targets(oh, iou)),
        "ranksort": lambda x, cls, oh, iou, img, lev: sum(RankSort.apply(x, rs_targets(oh, iou), 0.5,
                                                                         "distributed")),
        "bucketed_ranksort": lambda x, cls, oh, iou, img, lev: sum(BucketedRankSort.apply(
            x, rs_targets(oh, iou), 0.5, "distributed")),
        "aploss": lambda x, cls, oh, iou, img, lev: APLoss.apply(x, oh, 1.0, "distributed"),
        "ape": lambda x, cls, oh, iou, img, lev: T.ape_loss(x, oh, oh * iou[:, None], normalization="positives",
                                                          scope="distributed"),
        "pairwise_h": lambda x, cls, oh, iou, img, lev: T.pairwise_error_loss(x, oh, scope="distributed"),
        "dr": lambda x, cls, oh, iou, img, lev: T.dr_loss(x, torch.as_tensor(cls + 1), scope="distributed"),
        "dr_images": lambda x, cls, oh, iou, img, lev: T.dr_loss(x, torch.as_tensor(cls + 1), image_ids=img + 5,
                                                                 scope="distributed"),
        "rankdet": lambda x, cls, oh, iou, img, lev: T.rankdet_loss(x, cls, iou, lev, scope="distributed"),
        "rankdet_global": lambda x, cls, oh, iou, img, lev: T.global_ranking_loss(x, cls, scope="distributed"),
        "heads_rs": heads_loss("rs"),
        "heads_dr": heads_loss("dr"),
        # aLRP: e_loc = 1 - IoU of each positive (row order); the value includes the localisation component,
        # whose positives' order and rank span every rank (a wrong gather order changes it)
        "alrp": lambda x, cls, oh, iou, img, lev: sum(T.alrp_loss(x, oh, _e_loc(cls, iou), scope="distributed")),
        "alrp_module": lambda x, cls, oh, iou, img, lev: sum(T.ALRPLossModule(scope="distributed")(
            x, oh, _e_loc(cls, iou)).values()),
        "heads_alrp": heads_loss("alrp"),
    }


def _e_loc(cls, iou):
    """aLRP's e_loc of the positives of these rows (one per positive row, in row order): 1 - IoU."""
    cls, iou = torch.as_tensor(cls), torch.as_tensor(iou)
    return 1.0 - iou[cls >= 0]


def _loose_cases():
    """The aLRP drop-in (float32 buffers, the authors'): checked to float32 rounding, not 1e-9."""
    from rankspec.adapters.torch.alrp import aLRPLoss

    return {"alrp_dropin": lambda x, cls, oh, iou, img, lev: aLRPLoss.apply(x, oh, _e_loc(cls, iou), 1.0,
                                                                            "distributed")[0]}


def _reference(name, x, cls, onehot, iou, img, levels):
    """(loss, gradient w.r.t. the logits) of the concatenated batch, from the NumPy reference."""
    import rankspec.refimpl as R
    from rankspec.adapters.heads import reference_classification_loss

    t = onehot * iou[:, None]
    flat = x.reshape(-1)

    def flat_res(r):
        return r.loss, np.asarray(r.grad).reshape(x.shape)

    if name in ("ap", "aploss"):
        return flat_res(R.ap_loss(flat, onehot.reshape(-1), interpolated=name == "aploss"))
    if name == "ap_interp":
        return flat_res(R.ap_loss(flat, onehot.reshape(-1), interpolated=True))
    if name in ("rs", "rs_module", "ranksort"):
        return flat_res(R.rs_loss(flat, t.reshape(-1)))
    if name == "bap":
        return flat_res(R.bucketed_ap_loss(flat, onehot.reshape(-1)))
    if name in ("brs", "bucketed_ranksort"):
        return flat_res(R.bucketed_rs_loss(flat, t.reshape(-1)))
    if name == "ape":
        # the single-process adapter on the concatenation (itself checked against the reference in
        # test_ape_torch.py): the APE reference's defaults are being revised (saturation, normaliser)
        import rankspec.adapters.torch as T
        xt = torch.tensor(x, requires_grad=True)
        loss = T.ape_loss(xt, torch.tensor(onehot), torch.tensor(onehot * iou[:, None]), normalization="positives")
        loss.backward()
        return float(loss), xt.grad.numpy()
    if name == "pairwise_h":
        return flat_res(R.pairwise_error_loss(flat, onehot.reshape(-1)))
    if name == "dr":
        return flat_res(R.dr_loss(x, cls + 1))
    if name == "dr_images":
        return flat_res(R.dr_loss(x, cls + 1, image_ids=_rank_images(img)))
    if name == "rankdet":
        return flat_res(R.rankdet_loss(x, cls, iou, levels))
    if name == "rankdet_global":
        return flat_res(R.global_ranking_loss(x, cls))
    if name in ("alrp", "alrp_module", "alrp_dropin"):
        e = 1.0 - iou[cls >= 0]
        buf = "float32" if name == "alrp_dropin" else "float64"
        r = R.alrp_loss(flat, onehot.reshape(-1), e, buffer_dtype=buf)
        loc = R.alrp_loc_loss(e, r.terms["rank"], r.terms["order"]).loss
        weight = 50.0 if name == "alrp_module" else 1.0  # the module's initial self-balancing weight
        return (r.loss if name == "alrp_dropin" else r.loss + weight * loc), np.asarray(r.grad).reshape(x.shape)
    if name.startswith("heads_"):
        r = reference_classification_loss(name[len("heads_"):], x, cls, iou, img, levels, scope="distributed")
        return r.loss, np.asarray(r.grad)
    raise KeyError(name)


_SIZES = {}


def _rank_images(img):
    """Image ids of the concatenation: rank r's images numbered after those of ranks < r."""
    sizes = _SIZES["sizes"]
    out, start, shift = [], 0, 0
    for n in sizes:
        part = img[start:start + n]
        out.append(part + shift)
        if n:
            shift += int(part.max()) + 1
        start += n
    return np.concatenate(out)


def _worker(rank: int, world: int, store: str, outdir: str, seed: int, sizes) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    import rankspec.adapters.heads as heads
    import rankspec.adapters.torch as T

    x, cls, onehot, iou, img, levels = _global_batch(seed, sizes)
    lo = sum(sizes[:rank])
    rows = slice(lo, lo + sizes[rank])
    out = {}
    for name, fn in {**_cases(T, heads), **_loose_cases()}.items():
        xt = torch.tensor(x[rows], dtype=torch.float64, requires_grad=True)
        loss = fn(xt, torch.as_tensor(cls[rows]), torch.as_tensor(onehot[rows]), torch.as_tensor(iou[rows]),
                  torch.as_tensor(img[rows]), torch.as_tensor(levels[rows]))
        loss.backward()
        out[f"loss_{name}"] = loss.detach().numpy()
        out[f"grad_{name}"] = (xt.grad if xt.grad is not None else torch.zeros_like(xt)).numpy()
    # a bad input on one rank: that rank raises its own error, the others a ValueError naming it
    try:
        bad = torch.tensor(x[rows], dtype=torch.float64)
        labels = torch.as_tensor(onehot[rows])
        if rank == 0:
            labels = labels * 2.0 if labels.numel() else labels
            bad = bad.reshape(-1)  # shape mismatch with the labels: rejected before the collectives
        T.ap_loss(bad, labels, scope="distributed")
        out["error"] = np.array("none")
    except (TypeError, ValueError) as exc:
        out["error"] = np.array(str(exc))
    np.savez(os.path.join(outdir, f"rank{rank}.npz"), **out)
    dist.barrier()
    dist.destroy_process_group()


def _launch(tmp_path, sizes, seed):
    world = len(sizes)
    store = tmp_path / "store"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), str(r), str(world), str(store),
                               str(tmp_path), str(seed), ",".join(map(str, sizes))], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(world)]
    logs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=180)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hang is a failure, not a wait
            for q in procs:
                q.kill()
            pytest.fail("distributed workers did not finish within 180 s")
        logs.append(out.decode(errors="replace"))
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} failed:\n{logs[r][-4000:]}"
    return [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(world)]


@pytest.mark.parametrize("sizes, seed", [((9, 0, 6), 1), ((5, 7), 2), ((4, 6, 0, 5), 3)],
                         ids=["3 ranks, one empty", "2 ranks", "4 ranks, one empty"])
def test_distributed_matches_reference_on_the_concatenated_batch(tmp_path, sizes, seed):
    results = _launch(tmp_path, list(sizes), seed)
    W = len(sizes)
    _SIZES["sizes"] = list(sizes)
    x, cls, onehot, iou, img, levels = _global_batch(seed, list(sizes))
    import rankspec.adapters.heads as heads
    import rankspec.adapters.torch as T
    names = list(_cases(T, heads))
    for name in names:
        ref_loss, ref_grad = _reference(name, x, cls, onehot, iou, img, levels)
        for r in range(W):
            # the global loss on every rank
            assert float(results[r][f"loss_{name}"]) == pytest.approx(ref_loss, rel=1e-9, abs=1e-12), (name, r)
        grad = np.concatenate([results[r][f"grad_{name}"].reshape(-1, C) for r in range(W)]) / W  # DDP's mean
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-9, atol=1e-12, err_msg=name)
        assert np.abs(ref_grad).sum() > 0, name  # the case exercises a gradient
    for name in _loose_cases():  # float32 outputs: float32 rounding (and W * g / W in float32)
        ref_loss, ref_grad = _reference(name, x, cls, onehot, iou, img, levels)
        for r in range(W):
            assert float(results[r][f"loss_{name}"]) == pytest.approx(ref_loss, rel=1e-6, abs=1e-7), (name, r)
        grad = np.concatenate([results[r][f"grad_{name}"].reshape(-1, C) for r in range(W)]) / W
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-7, err_msg=name)
        assert np.abs(ref_grad).sum() > 0, name
    # a rank with bad input raises its own error; the others name it
    assert "must match" in str(results[0]["error"])
    for r in range(1, W):
        assert "rank(s) [0]" in str(results[r]["error"])


def test_distributed_needs_an_initialised_process_group():
    import rankspec.adapters.torch as T

    if dist.is_initialized():  # pragma: no cover
        pytest.skip("a process group is already initialised")
    x = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1.0, 0, 0, 0])
    for call in (lambda: T.ap_loss(x, y, scope="distributed"), lambda: T.dr_loss(x[:, None], y[:, None],
                                                                                  scope="distributed"),
                 lambda: T.RSLossModule(scope="distributed")(x, y)):
        with pytest.raises(ValueError, match="init_process_group"):
            call()


def test_world_size_one_equals_batch_scope(tmp_path):
    """In a group of one process, "distributed" is "batch": same loss, same gradient (W = 1)."""
    import rankspec.adapters.torch as T

    if dist.is_initialized():  # pragma: no cover
        pytest.skip("a process group is already initialised")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store1'}", rank=0, world_size=1)
    try:
        rng = np.random.default_rng(0)
        s = rng.normal(size=50)
        y = (rng.random(50) < 0.2) * rng.uniform(0.1, 1, 50)
        for fn in (T.rs_loss, T.bucketed_rs_loss):
            a = torch.tensor(s, requires_grad=True)
            b = torch.tensor(s, requires_grad=True)
            la = fn(a, torch.tensor(y), scope="distributed")
            lb = fn(b, torch.tensor(y), scope="batch")
            la.backward()
            lb.backward()
            assert float(la) == float(lb)
            assert torch.equal(a.grad, b.grad)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    _r, _w, _store, _out, _seed, _sizes = sys.argv[1:7]
    _SIZES["sizes"] = [int(v) for v in _sizes.split(",")]
    _worker(int(_r), int(_w), _store, _out, int(_seed), _SIZES["sizes"])

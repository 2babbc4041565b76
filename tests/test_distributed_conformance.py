"""scope="distributed" under the conformance harness (rankspec.conformance.distributed.DistributedTarget).

The target spreads every case the harness generates (ties, extremes, sizes, views, recorded vectors,
hostile inputs) over gloo ranks on the CPU, runs the torch adapter with ``scope="distributed"`` on each
rank's rows, checks that the ranks agree on the loss and returns the loss and the gradient assembled by
the documented DDP rule.  The tests show

* every covered loss conforms with 2 ranks (and one with 3 ranks, through the harness's worker process);
* the check can fail: two planted bugs in the distributed path - every rank ranking only its own rows,
  and a gradient missing its factor W - are reported non-conformant;
* the split puts rows on the ranks as documented (hand-worked small inputs), and a loss that depends on
  the rows of another rank (a negative above the only positive) gets that rank's rows.
"""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)

from rankspec.conformance import NonConformant, assert_conforms, check  # noqa: E402
from rankspec.conformance.distributed import (DISTRIBUTED_LOSSES, DistributedTarget, RanksDisagree,  # noqa: E402
                                              image_cuts, split_rows)

#: small, CI-friendly checks: generated cases up to 200 elements (hostile ones included), both dtypes
#: (convention="pair": the target returns (loss, grad); naming it keeps a target that fails on the harness's
#: probe input - the planted bugs - a non-conformant target rather than an undetectable one)
SMALL = dict(examples=12, max_size=200, vectors=False, shrink_seconds=5.0, diagnose_seconds=5.0,
             convention="pair")


# ------------------------------------------------------------------------------------------------
# planted bugs: what every rank calls instead of the adapter (module level, so the ranks import them)
# ------------------------------------------------------------------------------------------------

def rs_each_rank_alone(logits, targets, delta, *, scope):
    """The behaviour scope="distributed" exists to avoid: each rank ranks only its own rows."""
    import rankspec.adapters.torch as T

    if logits.numel() == 0:  # (a rank without rows: nothing to rank)
        return logits.sum() * 0.0
    return T.rs_loss(logits, targets, delta, scope="batch")


def rs_forgets_world_size(logits, targets, delta, *, scope):
    """The right loss on every rank, but each rank's gradient lacks the factor W of the DDP rule."""
    import rankspec.adapters.torch as T
    from rankspec.adapters.torch._distributed import scale_gradient

    loss = T.rs_loss(logits, targets, delta, scope=scope)
    return scale_gradient(loss, 1.0 / dist.get_world_size())


# ------------------------------------------------------------------------------------------------
# every covered loss conforms
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss", sorted(DISTRIBUTED_LOSSES))
def test_every_covered_loss_conforms_on_two_ranks(loss):
    with DistributedTarget(loss, world_size=2) as target:
        report = assert_conforms(target, loss, isolate=False, name=repr(target), **SMALL)
    assert all(r.cases >= SMALL["examples"] and r.failed == 0 for r in report.results)
    assert {r.dtype for r in report.results} == {"float32", "float64"}


def test_three_ranks_in_the_harness_worker_with_recorded_vectors():
    """The default isolation: the target is pickled to the harness's worker, which starts the pool there;
    the recorded vectors (the authors' inputs) run too."""
    target = DistributedTarget("brs", world_size=3)
    report = assert_conforms(target, "brs", examples=12, max_size=200, dtypes=("float64",), convention="pair")
    (res,) = report.results
    assert res.vector_cases > 0 and res.failed == 0
    assert not any("ran in this process" in n for n in res.notes)
    assert target._pool is None  # nothing started in this process


# ------------------------------------------------------------------------------------------------
# the check can fail
# ------------------------------------------------------------------------------------------------

def test_ranks_ranking_only_their_own_rows_are_non_conformant():
    with DistributedTarget("rs", world_size=2, function=rs_each_rank_alone) as target:
        with pytest.raises(NonConformant) as info:
            assert_conforms(target, "rs", isolate=False, dtypes=("float64",), diagnose=False, **SMALL)
    (res,) = info.value.report.results
    assert res.failed > 0
    assert res.first_failure.comparison.failure == "error:RanksDisagree"
    assert "different losses" in res.first_failure.comparison.message


def test_a_gradient_without_the_world_size_factor_is_non_conformant():
    W = 2
    with DistributedTarget("rs", world_size=W, function=rs_forgets_world_size) as target:
        report = check(target, "rs", isolate=False, dtypes=("float64",), diagnose=False, **SMALL)
    (res,) = report.results
    assert not report.conformant
    first = res.first_failure
    assert first.comparison.failure == "mismatch"
    assert first.comparison.loss_ok and not first.comparison.grad_ok  # the loss is right, the gradient is not
    # what came back is the single-process gradient divided by W: exactly the missing factor
    np.testing.assert_allclose(first.outcome.grad * W, first.expected.grad, rtol=1e-9, atol=1e-12)


def test_a_hand_worked_input_across_ranks():
    # AP over logits [2, 1, 0] with labels [0, 1, 0] and delta = 1: the negative 2 lies 1 above the
    # positive 1, H(1) = clip(1/2 + 1/2, 0, 1) = 1, so the positive's precision is 1 / (1 + 1) and the loss
    # is 1 - 1/2 = 0.5; rank 0 holds that negative, rank 1 the positive (and the negative 0, below it)
    x, y = np.array([2.0, 1.0, 0.0]), np.array([0.0, 1.0, 0.0])
    with DistributedTarget("ap", world_size=2, split=lambda n, W, pos: (1, 2)) as target:
        loss, grad = target(x, y, 1.0)
        assert target.last_split == (1, 2)
    assert loss == pytest.approx(0.5, abs=1e-12)
    # identity update: the positive gets -L = -0.5, the negative above it +0.5, the one below nothing
    np.testing.assert_allclose(grad, [0.5, -0.5, 0.0], atol=1e-12)
    # ranked alone (the planted bug), rank 0 has no positive (loss 0) while rank 1 ranks its positive 0
    # below its negative 1 (RS ranking error 1/2): the ranks disagree, and the target says so
    t = np.array([0.0, 0.0, 0.7])
    with DistributedTarget("rs", world_size=2, split=lambda n, W, pos: (1, 2),
                           function=rs_each_rank_alone) as bad:
        with pytest.raises(RanksDisagree, match="different losses"):
            bad(x, t, 0.5)


# ------------------------------------------------------------------------------------------------
# the split
# ------------------------------------------------------------------------------------------------

def test_split_by_hand():
    # rows 2..4 hold no positive and reach the end: with 3 ranks rank 1 is empty and the last rank holding
    # rows (rank 2) takes exactly that block, rank 0 the rest
    assert split_rows(5, 3, [1, 1, 0, 0, 0]) == (2, 0, 3)
    # leading rows without positives go to the first rank holding rows
    sizes = split_rows(6, 3, [0, 0, 1, 0, 1, 1])
    assert sizes[1] == 0 and sizes[0] == 2 and sum(sizes) == 6
    # one rank: everything; even: the positions nearest k n / W (7 / 2 = 3.5: 3 and 4 tie, the lower wins;
    # 8 / 3 = 2.67 -> 3 and 16 / 3 = 5.33 -> 5)
    assert split_rows(7, 1, [1] * 7) == (7,)
    assert split_rows(7, 2, None, split="even") == (3, 4)
    assert split_rows(8, 3, None, split="even") == (3, 2, 3)
    # image ids [0, 0, 1, 1, 0]: image 0 spans rows 0..4, so no interior cut keeps images whole
    assert list(image_cuts([0, 0, 1, 1, 0])) == [0, 5]
    assert list(image_cuts([0, 0, 1, 1, 2])) == [0, 2, 4, 5]
    assert list(image_cuts([7, 3, 3, 7])) == [0, 4]


def test_split_properties():
    rng = np.random.default_rng(5)
    for trial in range(300):
        n = int(rng.integers(0, 30))
        W = int(rng.integers(1, 6))
        pos = rng.random(n) < rng.choice([0.0, 0.2, 0.8])
        allowed = None if trial % 2 else image_cuts(np.sort(rng.integers(0, 4, n)))
        sizes = split_rows(n, W, pos, allowed=allowed, seed=trial)
        assert len(sizes) == W and min(sizes) >= 0 and sum(sizes) == n
        assert split_rows(n, W, pos, allowed=allowed, seed=trial) == sizes  # deterministic
        cuts = np.cumsum(sizes)
        if allowed is not None:
            assert set(cuts.tolist()) <= set(np.asarray(allowed).tolist())
        if W >= 3:
            assert sizes[1] == 0
        bounds = np.concatenate([[0], cuts])
        holds = [(sizes[r] > 0, bool(pos[bounds[r]:bounds[r + 1]].any())) for r in range(W)]
        # a negative block at an end that can be a whole share: some rank holds rows but no positive
        if allowed is None and pos.any() and W >= 2 and n and (not pos[0] or not pos[-1]) \
                and sum(1 for r in range(W) if W < 3 or r != 1) >= 2:
            if W >= 3 or sizes[0] > 0:  # (W = 2 with rank 0 empty: the other rank holds everything)
                assert any(has_rows and not has_pos for has_rows, has_pos in holds), (n, W, pos, sizes)


def test_the_split_spreads_generated_cases_over_the_ranks():
    seen = []

    class Recording(DistributedTarget):
        def __call__(self, logits, labels, *args, **kwargs):
            out = super().__call__(logits, labels, *args, **kwargs)
            seen.append(self.last_split)
            return out

    with Recording("rs", world_size=2) as target:
        check(target, "rs", isolate=False, dtypes=("float64",), **SMALL)
    assert sum(1 for s in seen if min(s) > 0) >= len(seen) // 3  # both ranks hold rows
    assert any(s[0] == 0 for s in seen)  # rank 0 empty


# ------------------------------------------------------------------------------------------------
# the target object
# ------------------------------------------------------------------------------------------------

def test_pickles_as_its_configuration_and_closes_its_pool():
    target = DistributedTarget("ap", world_size=2, options={"self_rank": "h0"})
    with target:
        target(np.array([1.0, 0.0, 2.0]), np.array([1.0, 0.0, 0.0]), 1.0)
        procs = list(target._pool.procs)
        copy = pickle.loads(pickle.dumps(target))
        assert copy._pool is None and copy.loss == "ap" and copy.options == {"self_rank": "h0"}
    assert target._pool is None
    assert all(p.poll() is not None for p in procs)  # the ranks exited


@pytest.mark.parametrize("kwargs, name", [
    (dict(loss="giou"), "loss"), (dict(loss=3), "loss"), (dict(world_size=0), "world_size"),
    (dict(world_size=True), "world_size"), (dict(world_size=2.0), "world_size"), (dict(split="random"), "split"),
    (dict(options={"scope": "batch"}), "options"), (dict(options=[1]), "options"),
    (dict(timeout=0), "timeout"), (dict(timeout=float("nan")), "timeout"),
    (dict(function="no_colon"), "function"), (dict(function=lambda *a, **k: None), "function"),
    (dict(function=3), "function"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DistributedTarget(**kwargs)


def test_a_split_that_breaks_the_rules_is_refused():
    x, y = np.zeros((4, 2)), np.array([1, 0, 2, 0])
    ids = np.array([0, 0, 1, 1])
    with pytest.raises(ValueError, match="split"):
        DistributedTarget("rs", 2, split=lambda n, W, pos: (1, 1))(np.zeros(3), np.zeros(3), 0.5)
    with pytest.raises(ValueError, match="cuts an image"):
        DistributedTarget("dr", 2, split=lambda n, W, pos: (1, 3))(x, y, image_ids=ids)
    with pytest.raises(TypeError, match="called as"):
        DistributedTarget("rs", 2)(np.zeros(3), np.zeros(3))


def test_importing_the_module_does_not_import_torch():
    code = ("import sys, rankspec.conformance, rankspec.conformance.distributed; "
            "assert 'torch' not in sys.modules and 'torch.distributed' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)

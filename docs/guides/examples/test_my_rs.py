"""Your test suite: keep the Rank & Sort port conformant (runs under pytest with rankspec installed)."""
import numpy as np
import pytest

from my_rs_fixed import rank_sort


def test_rank_sort_conforms(rankspec_oracle):
    # generated cases (--rankspec-examples, default 50) plus the authors' recorded vectors
    rankspec_oracle.assert_conforms(rank_sort, loss="rs", delta=0.5, dtypes=("float64",))


def test_rank_sort_matches_the_reference_on_my_edge_case(rankspec_oracle):
    logits, targets = np.array([2.0, 2.0, -1.0]), np.array([0.7, 0.0, 0.0])
    expected = rankspec_oracle.reference("rs", logits, targets, 0.5)   # a LossResult
    loss, grad = rank_sort(logits, targets, 0.5)
    assert loss == pytest.approx(expected.loss)
    np.testing.assert_allclose(grad, expected.grad, atol=1e-12)

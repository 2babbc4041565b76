"""The training demonstrations: learning really happens (fixed seeds, reduced steps), the metrics are right,
and ``rankspec demo`` prints the curves and writes the plots.

"Beyond noise" for Spearman's rho: under independence the standard error of rho over n positives is about
1 / sqrt(n - 1) (the spread of the initial networks' rho over seeds matches it); the tests require the
held-out rho to rise by more than twice that, and the mean rho of the training batches to rise too.  With the
fixed seed the margins are large; seeds 1-3 were checked to pass as well.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from rankspec.conformance import cli  # noqa: E402
from rankspec.adapters.demo import (average_precision, match_detections, run_demo, spearman,  # noqa: E402
                                       synth_scenes_2d, synth_scenes_3d)

RANKING = ("rs", "brs", "rankdet")
ALL = ("focal",) + RANKING


def _noise(n: int) -> float:
    """Twice the standard error of Spearman's rho of n independent pairs."""
    return 2 / math.sqrt(max(n - 1, 1))


# --------------------------------------------------------------------------------------------
# metrics and data
# --------------------------------------------------------------------------------------------

def test_average_precision_by_hand():
    # scores 0.9 (TP), 0.8 (FP), 0.7 (TP), 2 ground truths: recall 0.5, 0.5, 1; precision 1, 1/2, 2/3;
    # envelope 1, 2/3, 2/3; AP = 0.5 * 1 + 0 * 2/3 + 0.5 * 2/3 = 5/6
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1]), 2) == pytest.approx(5 / 6)
    assert average_precision(np.array([0.7, 0.9, 0.8]), np.array([1, 1, 0]), 2) == pytest.approx(5 / 6)
    assert average_precision(np.zeros(0), np.zeros(0), 3) == 0.0
    assert math.isnan(average_precision(np.array([0.5]), np.array([0]), 0))
    assert average_precision(np.array([0.9, 0.1]), np.array([1, 1]), 4) == pytest.approx(0.5)


def test_match_detections_by_hand():
    iou = np.array([[0.8, 0.1],   # best detection: matches gt 0
                    [0.7, 0.0],   # gt 0 taken: its next best is 0.0 < 0.5 -> false positive
                    [0.2, 0.6]])  # matches gt 1
    assert match_detections(np.array([0.9, 0.8, 0.3]), iou, 0.5).tolist() == [True, False, True]
    # order by score, not by index
    assert match_detections(np.array([0.1, 0.8, 0.3]), iou, 0.5).tolist() == [False, True, True]


def test_spearman_edge_cases():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 2], [1, 2]))
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_synthetic_data_is_deterministic_and_valid():
    a = synth_scenes_2d(12, np.random.default_rng(3))
    b = synth_scenes_2d(12, np.random.default_rng(3))
    np.testing.assert_array_equal(a.images, b.images)
    for boxes, labels in zip(a.boxes, a.labels):
        assert boxes.shape[1] == 4 and len(boxes) == len(labels)
        assert np.all(boxes[:, 2:] > boxes[:, :2]) and np.all((labels >= 0) & (labels < 2))
    assert {len(x) for x in a.boxes} - {0} and min(len(x) for x in synth_scenes_2d(40, np.random.default_rng(0)).boxes) == 0
    s = synth_scenes_3d(6, np.random.default_rng(1))
    for pts, cells, boxes in zip(s.points, s.cells, s.boxes):
        assert pts.shape[1] == 3 and len(pts) == len(cells) and len(pts) > 1000
        assert boxes.shape[1] == 7 and 1 <= len(boxes) <= 5 and np.all(boxes[:, 3:6] > 0)
        # some points lie inside every car (the points sampled on and inside the box)
        for b in boxes:
            c, sn = math.cos(b[6]), math.sin(b[6])
            u = c * (pts[:, 0] - b[0]) + sn * (pts[:, 1] - b[1])
            v = -sn * (pts[:, 0] - b[0]) + c * (pts[:, 1] - b[1])
            inside = (np.abs(u) < b[3] / 2 + 0.1) & (np.abs(v) < b[4] / 2 + 0.1) & (np.abs(pts[:, 2] - b[2]) < b[5])
            assert inside.sum() >= 40


def test_runs_are_deterministic():
    kw = dict(losses=("rs", "rankdet"), steps=4, seed=2, eval_every=2, num_train=16, num_val=8, log=None)
    r1, r2 = run_demo("2d", **kw), run_demo("2d", **kw)
    for name in kw["losses"]:
        assert r1.histories[name].total == r2.histories[name].total
        assert r1.histories[name].rho_val == r2.histories[name].rho_val


def test_run_demo_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        run_demo("4d")
    with pytest.raises(ValueError, match="losses"):
        run_demo("2d", losses=("softmax",))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        run_demo("2d", steps=0)
    with pytest.raises(TypeError, match="unknown demo option"):
        run_demo("2d", epochs=3)


# --------------------------------------------------------------------------------------------
# learning happens (reduced steps, fixed seeds)
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def result_2d():
    return run_demo("2d", losses=ALL, steps=120, seed=0, eval_every=60, num_train=256, num_val=64, log=None)


@pytest.fixture(scope="module")
def result_3d():
    return run_demo("3d", losses=ALL, steps=100, seed=0, eval_every=100, num_train=96, num_val=48, log=None)


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_2d_loss_falls_and_ap_rises(result_2d, name):
    h = result_2d.histories[name]
    assert h.loss_val[-1] < 0.9 * h.loss_val[0], h.loss_val  # held-out objective
    assert h.window(h.total, first=False) < 0.9 * h.window(h.total, first=True)  # training objective
    assert h.ap_final["AP50"] > h.ap_val[0]["AP50"] + 0.05
    if name in RANKING:
        assert h.ap_final["AP50"] > 0.3


@pytest.mark.slow
@pytest.mark.parametrize("name", RANKING)
def test_2d_correlation_of_scores_and_ious_rises_beyond_noise(result_2d, name):
    h = result_2d.histories[name]
    assert h.num_pos_val > 100
    assert h.rho_val[-1] - h.rho_val[0] > _noise(h.num_pos_val), h.rho_val
    assert h.window(h.rho_train, first=False) > h.window(h.rho_train, first=True) + 0.1


@pytest.mark.slow
def test_2d_ranking_losses_sort_better_than_focal(result_2d):
    # RS Sec. 6.3: a sorting objective raises the rank correlation of scores and IoUs
    focal = result_2d.histories["focal"].rho_val[-1]
    for name in ("rs", "brs"):
        assert result_2d.histories[name].rho_val[-1] > focal + 0.1


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_3d_loss_falls_and_ap_rises(result_3d, name):
    h = result_3d.histories[name]
    assert h.loss_val[-1] < 0.8 * h.loss_val[0], h.loss_val
    assert h.window(h.total, first=False) < 0.8 * h.window(h.total, first=True)
    assert h.ap_final["BEV_AP50"] > 0.5 and h.ap_final["3D_AP50"] > 0.4
    assert h.ap_val[0]["BEV_AP50"] < 0.1


@pytest.mark.slow
@pytest.mark.parametrize("name", RANKING)
def test_3d_correlation_of_scores_and_ious_rises_beyond_noise(result_3d, name):
    h = result_3d.histories[name]
    assert h.num_pos_val > 100
    assert h.rho_val[-1] - h.rho_val[0] > _noise(h.num_pos_val), h.rho_val
    assert h.window(h.rho_train, first=False) > h.window(h.rho_train, first=True) + 0.05


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------

def test_cli_demo_prints_curves_and_writes_plots(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "rankspec.conformance", "demo", "3d", "--steps", "3", "--eval-every", "3",
         "--num-train", "8", "--num-val", "4", "--losses", "rs", "focal", "--output", str(out), "--seed", "4"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "final (held-out):" in proc.stdout and "rho(val)" in proc.stdout and "BEV_AP50" in proc.stdout
    png = (out / "demo_3d.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    data = json.loads((out / "demo_3d.json").read_text())
    assert data["kind"] == "3d" and data["seed"] == 4 and set(data["histories"]) == {"rs", "focal"}
    assert len(data["histories"]["rs"]["total"]) == 3


@pytest.mark.parametrize("argv, message", [
    (["demo", "2d", "--steps", "0"], "--steps must be >= 1"),
    (["demo", "2d", "--lr", "-1"], "--lr must be > 0"),
    (["demo", "2d", "--num-train", "4", "--batch-size", "8"], "--batch-size must not exceed --num-train"),
])
def test_cli_demo_usage_errors(argv, message, capsys):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_demo_unknown_kind_is_a_usage_error():
    assert cli.main(["demo", "4d"]) == 2
    assert os.path.exists(os.path.dirname(cli.__file__))

"""What a demo run records (:class:`History` per loss, :class:`DemoResult`) and how it is reported: the
text report with sparklines, and the plot (matplotlib, Agg)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Sequence

import numpy as np

__all__ = ["History", "DemoResult", "format_report", "plot_result", "summary_line", "LOSS_COLOURS", "loss_colour"]


@dataclass
class History:
    """What one loss's training run recorded."""

    loss: str
    steps: List[int] = field(default_factory=list)
    total: List[float] = field(default_factory=list)  #: training loss (sum of the loss dict) per step
    parts: Dict[str, List[float]] = field(default_factory=dict)
    rho_train: List[float] = field(default_factory=list)  #: Spearman rho of the batch's positives per step
    eval_steps: List[int] = field(default_factory=list)
    rho_val: List[float] = field(default_factory=list)  #: Spearman rho on the held-out positives
    loss_val: List[float] = field(default_factory=list)  #: training objective on the held-out set
    num_pos_val: int = 0  #: positives of the held-out set (the sample size of rho_val)
    ap_val: List[Dict[str, float]] = field(default_factory=list)  #: held-out AP at each evaluation step
    seconds: float = 0.0

    @property
    def ap_final(self) -> Dict[str, float]:
        return self.ap_val[-1] if self.ap_val else {}

    def window(self, values: Sequence[float], first: bool, frac: float = 0.15) -> float:
        v = np.asarray(values, dtype=np.float64)
        k = max(1, int(round(len(v) * frac)))
        w = v[:k] if first else v[-k:]
        w = w[np.isfinite(w)]
        return float(w.mean()) if w.size else float("nan")


@dataclass
class DemoResult:
    kind: str
    seed: int
    config: Dict[str, object]
    histories: Dict[str, History]
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"kind": self.kind, "seed": self.seed, "config": self.config, "seconds": self.seconds,
                "histories": {k: asdict(h) for k, h in self.histories.items()}}


def _fmt(v: float, digits: int = 3) -> str:
    return "  nan" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def summary_line(kind: str, h: History) -> str:
    ap = h.ap_final
    aps = "  ".join(f"{k} {_fmt(v)}" for k, v in ap.items())
    return (f"[{kind}] {h.loss:8s} held-out loss {_fmt(h.loss_val[0])} -> {_fmt(h.loss_val[-1])}  "
            f"rho(val) {_fmt(h.rho_val[0])} -> {_fmt(h.rho_val[-1])}  {aps}  ({h.seconds:.1f} s)")


def _sparkline(values: Sequence[float], width: int = 40) -> str:
    bars = " .:-=+*#%@"
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return ""
    idx = np.linspace(0, v.size - 1, min(width, v.size)).round().astype(int)
    w = v[idx]
    lo, hi = w.min(), w.max()
    if hi == lo:
        return bars[len(bars) // 2] * len(w)
    return "".join(bars[int((x - lo) / (hi - lo) * (len(bars) - 1))] for x in w)


def format_report(result: DemoResult) -> str:
    """The text report ``rankspec demo`` prints: curves (checkpoint tables and sparklines) and final metrics."""
    lines = [f"rankspec demo {result.kind}: seed {result.seed}, {result.config['steps']} steps, batch "
             f"{result.config['batch_size']}, Adam lr {result.config['lr']}, {result.seconds:.1f} s"]
    for name, h in result.histories.items():
        lines.append("")
        lines.append(f"== {name}  ({h.seconds:.1f} s)")
        lines.append(f"   training loss   {_sparkline(h.total)}   {_fmt(h.total[0])} -> {_fmt(h.total[-1])}")
        lines.append(f"   rho (train)     {_sparkline(_smooth(h.rho_train))}")
        ap_keys = list(h.ap_final)
        lines.append("   held-out evaluations (train loss: mean over the steps since the previous row):")
        lines.append("   step  train loss  held-out loss  rho(val)  " + "  ".join(f"{k:>8s}" for k in ap_keys))
        for i, s in enumerate(h.eval_steps):
            lo = 0 if i == 0 else h.eval_steps[i - 1]
            seg = h.total[lo:s] if s > 0 else []
            # step 0 is the untrained network: no training batch has been seen yet, so no training loss
            train = _fmt(float(np.mean(seg)), 4) if seg else "-"
            lines.append(f"   {s:5d}  {train:>10s}  {_fmt(h.loss_val[i], 4):>13s}  {_fmt(h.rho_val[i]):>8s}  "
                         + "  ".join(f"{_fmt(h.ap_val[i][k]):>8s}" for k in ap_keys))
    lines.append("")
    lines.append("final (held-out):")
    keys = list(next(iter(result.histories.values())).ap_final)
    lines.append(f"   {'loss':11s} {'rho start':>9s} {'rho end':>8s} {'loss drop':>9s}  " + "  ".join(
        f"{k:>8s}" for k in keys) + "   (loss drop: held-out objective, first vs last evaluation)")
    for name, h in result.histories.items():
        drop = 1 - h.loss_val[-1] / h.loss_val[0] if h.loss_val[0] else float("nan")
        lines.append(f"   {name:11s} {_fmt(h.rho_val[0]):>9s} {_fmt(h.rho_val[-1]):>8s} {drop * 100:8.1f}%  "
                     + "  ".join(f"{_fmt(h.ap_final[k]):>8s}" for k in keys))
    return "\n".join(lines)


def _smooth(values: Sequence[float], k: int = 15) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    out = np.full(v.shape, np.nan)
    for i in range(v.size):
        w = v[max(0, i - k + 1):i + 1]
        w = w[np.isfinite(w)]
        if w.size:
            out[i] = w.mean()
    return out


#: one fixed colour per demo loss (matplotlib's tab10 cycle), the same in every panel and every run
LOSS_COLOURS = {"focal": "C0", "rs": "C1", "brs": "C2", "rankdet": "C3", "rankdet-exp": "C4", "ap": "C5",
                "bap": "C6", "ape": "C8", "dr": "C9"}


def loss_colour(name: str) -> str:
    """The plot colour of a demo loss (grey for a name outside :data:`LOSS_COLOURS`)."""
    return LOSS_COLOURS.get(name, "C7")


def plot_result(result: DemoResult, path: str) -> str:
    """Write the curves as a PNG (matplotlib, Agg backend): loss, rho (train / held-out), held-out AP."""
    from rankspec.refimpl._validate import require

    matplotlib = require("matplotlib", "rankspec demo plots")

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(17, 3.8))
    for name, h in result.histories.items():
        tot = np.asarray(h.total)
        colour = loss_colour(name)
        ax[0].plot(h.steps, _smooth(tot / tot[:5].mean(), 10), label=name, color=colour)
        ax[1].plot(h.steps, _smooth(h.rho_train, 20), label=name, color=colour)
        ax[2].plot(h.eval_steps, h.rho_val, marker="o", label=name, color=colour)
    ax[0].set_title("training loss / initial (smoothed)")
    ax[1].set_title("Spearman rho, batch positives (smoothed)")
    ax[2].set_title("Spearman rho, held-out positives")
    for a in ax[:3]:
        a.set_xlabel("step")
        a.grid(alpha=0.3)
    ax[0].legend(fontsize=8)
    # AP: one group per metric, one bar per loss in that loss's line colour, so a colour means the same
    # loss in every panel; AP lies in [0, 1]
    keys = list(next(iter(result.histories.values())).ap_final)
    names = list(result.histories)
    width = 0.8 / max(len(names), 1)
    for j, n in enumerate(names):
        vals = [result.histories[n].ap_final.get(k, np.nan) for k in keys]
        ax[3].bar(np.arange(len(keys)) + j * width, np.nan_to_num(vals, nan=0.0), width, label=n,
                  color=loss_colour(n))
    ax[3].set_xticks(np.arange(len(keys)) + width * (len(names) - 1) / 2)
    ax[3].set_xticklabels(keys)
    ax[3].set_title("held-out AP after training (colour = loss)")
    ax[3].set_ylim(0, 1.0)
    ax[3].grid(alpha=0.3, axis="y")
    fig.suptitle(f"rankspec demo {result.kind} (seed {result.seed}, {result.config['steps']} steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path

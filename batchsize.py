"""
The optimal batch size (paper §3.2).

The paper trains three models (0.009B, 0.03B, 0.17B) at six batch sizes each, lr 0.01 with a cosine schedule.
For each loss level, the batch size that reaches it with the fewest tokens lies on a line in log-log space:

    bs_opt(L) = 1.21e9 / L^6.24        (bs in tokens, L = C4 loss in nats/token)

At L = 2.5 that is 3.97M tokens; MiniCPM-2.4B was trained with 3.93M-token batches. A lower target loss needs a
larger batch: the gradient noise that a small batch averages away matters more near the optimum.

`python batchsize.py` reruns it small: 2-3 model sizes x 6 batch sizes on the embedded corpus, the loss-vs-tokens
curves, the optimal batch per loss level, and the fitted (a, b) of bs = a / L^b next to the paper's.
"""

import json
import math
import os

import numpy as np

from model import ladder
from plots import quick_cli, save, subplots

PAPER_A, PAPER_B = 1.21e9, 6.24
ROOT = os.path.dirname(os.path.abspath(__file__))


def optimal_batch_size(L, a=PAPER_A, b=PAPER_B):
    """The paper's law: the optimal batch size in tokens at loss L (nats/token)."""
    return a / np.asarray(L, dtype=float) ** b


def fit_batch_size_law(losses, batch_sizes):
    """(a, b) of bs = a / L^b by least squares of log bs on log L."""
    L, bs = np.asarray(losses, dtype=float), np.asarray(batch_sizes, dtype=float)
    if L.shape != bs.shape or L.ndim != 1 or len(L) < 2:
        raise ValueError(f"need two equal-length 1-D sequences of >= 2 points, got {L.shape} and {bs.shape}")
    if (L <= 0).any() or (bs <= 0).any():
        raise ValueError("losses and batch sizes must be positive")
    if np.ptp(np.log(L)) == 0:
        raise ValueError("all losses are equal: the slope b cannot be fitted")
    slope, intercept = np.polyfit(np.log(L), np.log(bs), 1)
    return float(math.exp(intercept)), float(-slope)


def tokens_to_reach(tokens, losses, level):
    """The first token count at which a loss curve reaches `level` (linear interpolation); None if it never does."""
    t, l_ = np.asarray(tokens, dtype=float), np.asarray(losses, dtype=float)
    below = np.nonzero(l_ <= level)[0]
    if len(below) == 0:
        return None
    i = below[0]
    if i == 0:
        return float(t[0])
    frac = (l_[i - 1] - level) / (l_[i - 1] - l_[i])
    return float(t[i - 1] + frac * (t[i] - t[i - 1]))


def best_batch_per_loss(curves, levels):
    """curves: {batch_size: (tokens, losses)} of one model. For each loss level, the batch size that reaches it with
    the fewest tokens: [(level, best_batch_size, tokens)], levels no curve reaches left out."""
    out = []
    for level in levels:
        reach = {bs: tokens_to_reach(t, l_, level) for bs, (t, l_) in curves.items()}
        reach = {bs: t for bs, t in reach.items() if t is not None}
        if reach:
            bs = min(reach, key=reach.get)
            out.append((float(level), bs, reach[bs]))
    return out


# ----------------------------------------------------------------------------------------------------------
# experiment

def experiment(quick=False, out=ROOT, fresh=False):
    from train import sweep
    if quick:  # 2-core CPU, ~5 minutes
        sizes = {f"w{w}": {k: v for k, v in ladder(w, 2).items() if k != "vocab_size"} for w in (64, 128)}
        seq, rows, budget = 64, [2, 4, 8, 16, 32, 64], 300_000
    else:  # one GPU, about an hour
        sizes = {p: dict(preset=p) for p in ("tiny", "wt-9m", "wt-36m")}
        seq, rows, budget = 256, [4, 8, 16, 32, 64, 128], 60_000_000
    runs = {}
    for name, model in sizes.items():
        for r in rows:
            steps = max(20, budget // (r * seq))
            runs[f"{name}_bs{r * seq}"] = dict(
                preset="tiny", **model, out_dir="", batch_size=r, seq_len=seq, max_steps=steps, lr=0.01,
                schedule="cosine", warmup_steps=max(1, steps // 50), decay_steps=0, eval_interval=max(1, steps // 16),
                eval_steps=8, sample_tokens=0, seed=1)
    results = sweep(os.path.join(out, "results", f"batchsize{'_quick' if quick else ''}.json"), runs, fresh=fresh,
                    desc="batch-size sweep")
    points, curves_all = [], {}
    for name in sizes:
        curves = {}
        for key, res in results.items():
            if key.startswith(name + "_bs"):
                bs = int(key.split("_bs")[1])
                tok_per_step = res["tokens"] / res["step"]
                curves[bs] = ([s * tok_per_step for s, _ in res["val_loss"]], [v for _, v in res["val_loss"]])
        curves_all[name] = curves
        lo = max(min(c[1]) for c in curves.values())  # a level every curve reaches ...
        hi = min(c[1][0] for c in curves.values())  # ... and none starts below; the lower half, past the noisy start
        for level, bs, tok in best_batch_per_loss(curves, np.linspace(lo + 0.5 * (hi - lo), lo, 8)):
            points.append(dict(model=name, loss=level, batch_size=bs, tokens=tok))
    a, b = fit_batch_size_law([p["loss"] for p in points], [p["batch_size"] for p in points])
    summary = dict(a=a, b=b, paper_a=PAPER_A, paper_b=PAPER_B, points=points)
    with open(os.path.join(out, "results", f"batchsize_fit{'_quick' if quick else ''}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    plot(curves_all, points, a, b, os.path.join(out, "assets", f"batchsize{'_quick' if quick else ''}.png"))
    print(f"fitted bs_opt = {a:.3g} / L^{b:.2f} tokens (paper: 1.21e9 / L^6.24) from {len(points)} points")
    for p in points:
        print(f"  {p['model']:6s} loss {p['loss']:.3f}: best batch {p['batch_size']:6d} tokens "
              f"(reached after {p['tokens']:,.0f} tokens)")
    return summary


def plot(curves_all, points, a, b, file):
    fig, axes = subplots(1, len(curves_all) + 1, figsize=(5 * (len(curves_all) + 1), 4))
    for ax, (name, curves) in zip(axes, curves_all.items()):
        for bs, (t, l_) in sorted(curves.items()):
            ax.plot(t, l_, label=f"bs {bs}")
        pts = [p for p in points if p["model"] == name]
        ax.plot([p["tokens"] for p in pts], [p["loss"] for p in pts], "k*--", ms=10, label="optimal bs")
        ax.set(xscale="log", xlabel="tokens", ylabel="val loss (nats/token)", title=name)
        ax.minorticks_off()
        ax.legend(fontsize=7)
    ax = axes[-1]
    L = np.array([p["loss"] for p in points])
    ax.scatter(L, [p["batch_size"] for p in points], c="k")
    grid = np.linspace(L.min() * 0.95, L.max() * 1.05, 50)
    ax.plot(grid, optimal_batch_size(grid, a, b), "r", label=f"fit {a:.3g} / L^{b:.2f}")
    ax.set(xscale="log", yscale="log", xlabel="loss", ylabel="optimal batch (tokens)", title="batch-size law")
    ax.minorticks_off()
    ticks = np.round(np.linspace(grid[0], grid[-1], 4), 2)
    ax.set_xticks(ticks, [f"{t:.2f}" for t in ticks])
    bss = sorted({p["batch_size"] for p in points})
    ax.set_yticks(bss, [str(b) for b in bss])
    ax.legend(fontsize=8)
    save(fig, file, dpi=110)


if __name__ == "__main__":
    quick_cli("Optimal batch size vs loss (paper §3.2)", experiment)

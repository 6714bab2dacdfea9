"""
The optimal batch size (paper §3.2).

The paper trains three models (0.009B, 0.03B, 0.17B) at six batch sizes each, lr 0.01 with a cosine schedule.
For each loss level, the batch size that reaches it with the fewest tokens lies on a line in log-log space:

    bs_opt(L) = 1.21e9 / L^6.24        (bs in tokens, L = C4 loss in nats/token)

At L = 2.5 that is 3.97M tokens; MiniCPM-2.4B was trained with 3.93M-token batches. A lower target loss needs a
larger batch: the gradient noise that a small batch averages away matters more near the optimum.

`python batchsize.py` reruns it small: 3 model sizes x 6 batch sizes on the embedded corpus, the loss-vs-tokens
curves, the optimal batch per loss level (a parabola in log batch through the fastest batch and its neighbours),
the fitted (a, b) of bs = a / L^b next to the paper's, and, with --seeds 3, the verdicts on b within each model and
pooled: the pooled fit alone can get its slope from the offset between model sizes.
"""

import json
import math
import os

import numpy as np

import findings
from corpus import corpus_keys
from findings import log2_vertex
from model import ladder_keys
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
    the fewest tokens, refined by a parabola in log2(batch) through the fastest one and its neighbours (so that a
    winner by 1% of tokens does not decide alone; findings.log2_vertex): [(level, best_batch_size, tokens)], levels
    that not every batch size reaches left out."""
    out = []
    bss = sorted(curves)
    for level in levels:
        reach = [tokens_to_reach(*curves[bs], level) for bs in bss]
        if None in reach:
            continue
        best = log2_vertex(bss, np.log(reach))
        out.append((float(level), best, min(reach)))
    return out


# ----------------------------------------------------------------------------------------------------------
# experiment

def experiment(quick=False, out=ROOT, fresh=False, seeds=1, data=None):
    """3 model sizes x 6 batch sizes, each with seeds 1 .. seeds; per model and seed the best batch per loss level
    and its own fit, and the paper's pooled fit; >= 3 seeds records the verdicts (findings.py). data: a corpus in
    place of the setting's own (corpus.corpus_keys)."""
    from train import sweep
    if quick:  # 2-core CPU, ~3 minutes a seed
        sizes = {f"w{w}": ladder_keys(w, 2) for w in (32, 64, 128)}
        seq, rows, budget, default_data = 64, [2, 4, 8, 16, 32, 64], 300_000, "embedded"
    else:  # one GPU, about an hour
        sizes = {p: dict(preset=p) for p in ("tiny", "wt-9m", "wt-36m")}
        seq, rows, budget, default_data = 256, [4, 8, 16, 32, 64, 128], 60_000_000, "python_source"  # 2.1 epochs
    corpus, runs = corpus_keys(data or default_data), {}
    for seed in range(1, seeds + 1):
        for name, model in sizes.items():
            for r in rows:
                steps = max(20, budget // (r * seq))
                runs[findings.seed_name(f"{name}_bs{r * seq}", seed)] = {"preset": "tiny", **model, **corpus, **dict(
                    out_dir="", batch_size=r, seq_len=seq, max_steps=steps, lr=0.01,
                    schedule="cosine", warmup_steps=max(1, steps // 50), decay_steps=0,
                    eval_interval=max(1, steps // 16), eval_steps=8, sample_tokens=0, seed=seed)}
    tag = findings.results_tag(quick, data)
    file = os.path.join(out, "results", f"batchsize{tag}.json")
    results = sweep(file, runs, fresh=fresh, desc="batch-size sweep")

    def curves_of(name, seed):
        curves = {}
        for r in rows:
            res = results[findings.seed_name(f"{name}_bs{r * seq}", seed)]
            tok_per_step = res["tokens"] / res["step"]
            curves[r * seq] = ([s * tok_per_step for s, _ in res["val_loss"]], [v for _, v in res["val_loss"]])
        return curves
    all_curves = {(n, s): curves_of(n, s) for n in sizes for s in range(1, seeds + 1)}
    points, fits = [], {}
    for name in sizes:
        cs = [c for (n, _), c in all_curves.items() if n == name]
        lo = max(min(c[1]) for cc in cs for c in cc.values())  # a level every curve of every seed reaches ...
        hi = min(c[1][0] for cc in cs for c in cc.values())  # ... and none starts below; the lower half
        for seed in range(1, seeds + 1):
            pts = best_batch_per_loss(all_curves[name, seed], np.linspace(lo + 0.5 * (hi - lo), lo, 8))
            points += [dict(model=name, seed=seed, loss=lv, batch_size=bs, tokens=tok) for lv, bs, tok in pts]
            fits[name, seed] = fit_batch_size_law([p[0] for p in pts], [p[1] for p in pts])
    pooled = {s: fit_batch_size_law([p["loss"] for p in points if p["seed"] == s],
                                    [p["batch_size"] for p in points if p["seed"] == s]) for s in range(1, seeds + 1)}
    a, b = pooled[1]
    summary = dict(a=a, b=b, paper_a=PAPER_A, paper_b=PAPER_B, points=[p for p in points if p["seed"] == 1],
                   per_model_b={f"{n} seed{s}": f[1] for (n, s), f in fits.items()},
                   pooled_b={str(s): f[1] for s, f in pooled.items()})
    if seeds >= 3:
        cmd = findings.command("batchsize.py", quick, seeds, data)
        hw = findings.this_machine()
        wall = findings.wall_s(file)
        zeros = [0.0] * seeds
        findings.record("batchsize_within_model", "§3.2", f"within each model ({', '.join(sizes)}), a lower loss "
                        f"wants a larger batch: the per-model exponent b of bs_opt = a / L^b (mean over the models) "
                        f"is positive", "bs_opt = 1.21e9 / L^6.24", "lower", "-b, per-model fits", "0",
                        [-float(np.mean([fits[n, s][1] for n in sizes])) for s in range(1, seeds + 1)], zeros,
                        cmd, hw, wall)
        findings.record("batchsize_pooled", "§3.2", "pooled over the models (the paper's fit), the exponent b is "
                        "positive", "bs_opt = 1.21e9 / L^6.24", "lower", "-b, pooled fit", "0",
                        [-pooled[s][1] for s in range(1, seeds + 1)], zeros, cmd, hw, wall)
    with open(os.path.join(out, "results", f"batchsize_fit{tag}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    figure = os.path.join(out, "assets", f"batchsize{tag}.png")
    plot({n: all_curves[n, 1] for n in sizes}, summary["points"], a, b, figure)
    print(f"fitted bs_opt = {a:.3g} / L^{b:.2f} tokens (paper: 1.21e9 / L^6.24) from {len(summary['points'])} "
          f"points (seed 1); per-model b: " + ", ".join(f"{k} {v:+.2f}" for k, v in summary["per_model_b"].items()))
    for p in summary["points"]:
        print(f"  {p['model']:6s} loss {p['loss']:.3f}: best batch {p['batch_size']:8.0f} tokens "
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
    bss = sorted(next(iter(curves_all.values())))
    ax.set_yticks(bss, [str(b) for b in bss])
    ax.legend(fontsize=8)
    save(fig, file, dpi=110)


if __name__ == "__main__":
    quick_cli("Optimal batch size vs loss (paper §3.2)", experiment)

"""
Paper §3.2, rerun small: 3 model sizes x 4 batch sizes (cosine, each batch at its own tuned lr), the loss-vs-tokens
curves, the batch that reaches each loss level with the fewest tokens (batchsize.best_batch_per_loss), the fitted
(a, b) of bs = a / L^b next to the paper's, and, with --seeds 5, the verdicts on b within each model and pooled: the
pooled fit alone can get its slope from the offset between model sizes.

The design, so that it can show the law: every run trains 1M tokens (the largest batch 977 steps, and the loss
falls ~40%, where b = 6.24 moves bs_opt ~20x), every run is scored on one held-out sample (eval_seed 0, 2 batches
of 128 rows: `train.py --eval_rows`), whatever its batch; tokens-to-reach reads a monotone (isotonic) fit of each
curve, so a noisy dip does not cross early; and each (model, batch) trains at the lr of a grid that ends lowest on
a tuning seed apart from the compared ones (runner.tune_lr: the grid extends past an edge optimum).

    python -m experiments.batchsize --quick --seeds 5   # widths 32-128, batches 128-1024 tokens (2-core CPU, ~45 min)
"""

import os

import numpy as np

from batchsize import PAPER_A, PAPER_B, best_batch_per_loss, fit_batch_size_law, optimal_batch_size
from corpus import corpus_keys
from experiments import cli, findings, runner
from experiments.runner import Experiment, ms, read_results
from model import ladder_keys
from plots import save, subplots

LRS = (0.0025, 0.005, 0.01)  # the first lr grid of every (model, batch); the paper's fixed 0.01 at its top
TUNE_SEED = 0  # the lr is tuned on a seed apart from the compared seeds 1 .. N
VAL_ROWS, VAL_BATCHES = 128, 2  # the one held-out sample every run is scored on: 2 x 128 rows of seq tokens
EVALS = 12  # evaluations a run (its loss curve)


def setting(quick):
    """The models, the sequence length, the batch sizes (rows), the tokens a run and the corpus."""
    if quick:  # 2-core CPU: ~5 minutes a seed (one lr), 1M tokens a run (0.04 epochs of python_source)
        # (a first grid of 256-4096 tokens had its best batch at 256, its lower edge, at every loss level of every
        # model and seed: results/batchsize_fit_first_grid_quick.json; 2048 and 4096 were never near it)
        return dict(sizes={f"w{w}": ladder_keys(w, 2) for w in (32, 64, 128)}, seq=64, rows=[2, 4, 8, 16],
                    budget=1_000_000, data="python_source")
    return dict(sizes={p: dict(preset=p) for p in ("tiny", "wt-9m", "wt-36m")}, seq=256,  # one GPU, a few hours
                rows=[4, 8, 16, 32, 64, 128], budget=60_000_000, data="python_source")  # (2.1 epochs)


def batch_run(st, corpus, model, rows, lr, seed):
    """One run of the sweep: `model` at `rows` x seq tokens a step for the setting's token budget, Cosine(S)."""
    steps = max(20, st["budget"] // (rows * st["seq"]))
    return {"preset": "tiny", **model, **corpus, **dict(
        out_dir="", batch_size=rows, seq_len=st["seq"], max_steps=steps, lr=lr, schedule="cosine",
        warmup_steps=max(1, steps // 50), decay_steps=0, eval_interval=max(1, steps // EVALS),
        eval_steps=VAL_BATCHES, eval_rows=VAL_ROWS, eval_seed=0, sample_tokens=0, seed=seed)}


def experiment(quick=False, out=runner.ROOT, fresh=False, seeds=1, data=None):
    """3 model sizes x 4 batch sizes, each at its tuned lr (on TUNE_SEED), with seeds 1 .. seeds; per model and seed
    the best batch per loss level and its own fit, and the paper's pooled fit; >= 3 seeds records the verdicts
    (findings.py). data: a corpus in place of the setting's own (corpus.corpus_keys)."""
    st = setting(quick)
    sizes, seq, rows = st["sizes"], st["seq"], st["rows"]
    corpus, tag = corpus_keys(data or st["data"]), runner.results_tag(quick, data)
    lr_file = os.path.join(out, "results", f"batchsize_lr{tag}.json")
    lr = runner.tune_lr(lr_file, {f"{n}_bs{r * seq}": (sizes[n], r) for n in sizes for r in rows},
                        lambda arm, lr_: batch_run(st, corpus, *arm, lr_, TUNE_SEED), LRS, desc="batch-size lr grid",
                        fresh=fresh)
    runs = runner.seeded(seeds, lambda seed: {f"{n}_bs{r * seq}": batch_run(st, corpus, sizes[n], r,
                                                                            lr[f"{n}_bs{r * seq}"], seed)
                                              for n in sizes for r in rows})
    file = os.path.join(out, "results", f"batchsize{tag}.json")
    results = runner.sweep(file, runs, fresh=fresh, desc="batch-size sweep")

    def curves_of(name, seed):
        curves = {}
        for r in rows:
            res = results[runner.seed_name(f"{name}_bs{r * seq}", seed)]
            tok_per_step = res["tokens"] / res["step"]
            curves[r * seq] = ([s * tok_per_step for s, _ in res["val_loss"]], [v for _, v in res["val_loss"]])
        return curves
    all_curves = {(n, s): curves_of(n, s) for n in sizes for s in range(1, seeds + 1)}
    points, fits, ranges = [], {}, {}
    for name in sizes:
        cs = [c for (n, _), c in all_curves.items() if n == name]
        lo = max(min(c[1]) for cc in cs for c in cc.values())  # a level every curve of every seed reaches ...
        hi = min(c[1][0] for cc in cs for c in cc.values())  # ... and none starts below; the lower half
        ranges[name] = [lo + 0.5 * (hi - lo), lo]
        for seed in range(1, seeds + 1):
            pts = best_batch_per_loss(all_curves[name, seed], np.linspace(*ranges[name], 8))
            points += [dict(model=name, seed=seed, loss=lv, batch_size=bs, tokens=tok) for lv, bs, tok in pts]
            fits[name, seed] = fit_batch_size_law([p[0] for p in pts], [p[1] for p in pts])
    pooled = {s: fit_batch_size_law([p["loss"] for p in points if p["seed"] == s],
                                    [p["batch_size"] for p in points if p["seed"] == s]) for s in range(1, seeds + 1)}
    a, b = pooled[1]
    summary = dict(a=a, b=b, paper_a=PAPER_A, paper_b=PAPER_B, points=[p for p in points if p["seed"] == 1],
                   per_model_b={f"{n} seed{s}": f[1] for (n, s), f in fits.items()},
                   pooled_b={str(s): f[1] for s, f in pooled.items()}, lr=lr, loss_levels=ranges,
                   paper_bs_change={n: float(optimal_batch_size(r[1]) / optimal_batch_size(r[0]))
                                    for n, r in ranges.items()})
    if seeds >= 3:
        batchsize_findings(summary, runner.command("batchsize", quick, seeds, data), runner.this_machine(),
                           runner.wall_s(file) + runner.wall_s(lr_file), [lr_file, file])
    runner.write_summary(out, f"batchsize_fit{tag}", summary)
    figure = os.path.join(out, "assets", f"batchsize{tag}.png")
    plot({n: all_curves[n, 1] for n in sizes}, summary["points"], a, b, figure)
    print(f"fitted bs_opt = {a:.3g} / L^{b:.2f} tokens (paper: 1.21e9 / L^6.24) from {len(summary['points'])} "
          f"points (seed 1); per-model b: " + ", ".join(f"{k} {v:+.2f}" for k, v in summary["per_model_b"].items()))
    print("tuned lr: " + ", ".join(f"{k} {v:g}" for k, v in lr.items()))
    for p in summary["points"]:
        print(f"  {p['model']:6s} loss {p['loss']:.3f}: best batch {p['batch_size']:8.0f} tokens "
              f"(reached after {p['tokens']:,.0f} tokens)")
    return summary


B_DELTA = 1.0  # the margin on the exponent b
B_WHY = "b = 1 moves bs_opt by only 1.1x over a 10% loss range (the paper's 6.24: 1.8x); a smaller b is no law"


def batchsize_findings(summary, command, hardware, wall_s, sources):
    """The §3.2 findings from the fit summary (results/batchsize_fit*.json): the per-seed exponents b, within each
    model (their mean) and pooled."""
    seeds = sorted(summary["pooled_b"], key=int)
    models = sorted({k.split(" seed")[0] for k in summary["per_model_b"]}, key=lambda m: int(m[1:]))
    where = dict(section="§3.2", paper="bs_opt = 1.21e9 / L^6.24", test="lower", delta=B_DELTA, why=B_WHY, b="0",
                 b_per_seed=[0.0] * len(seeds), command=command, hardware=hardware, wall_s=wall_s,
                 sources=sources)
    for fid, claim, a, per in (
            ("batchsize_within_model", f"within each model ({', '.join(models)}), a lower loss wants a larger "
             f"batch: the per-model exponent b of bs_opt = a / L^b (mean over the models) is positive",
             "-b, per-model fits",
             [-float(np.mean([summary["per_model_b"][f"{m} seed{s}"] for m in models])) for s in seeds]),
            ("batchsize_pooled", "pooled over the models (the paper's fit), the exponent b is positive",
             "-b, pooled fit", [-summary["pooled_b"][s] for s in seeds])):
        findings.record(fid=fid, claim=claim, a=a, a_per_seed=per, explanation=EXPLAIN.get(fid, ""), **where)


def record_from_results():
    """This file's findings again from results/batchsize_fit_quick.json, training nothing."""
    old = findings.load()["batchsize_pooled"]
    files = EXPERIMENT.sources()
    batchsize_findings(read_results("batchsize_fit_quick"), old["command"], old["hardware"],
                       sum(runner.wall_s(f) for f in files), files)


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


def batchsize_table():
    """§3.2: the exponent b of bs_opt = a / L^b, per model and pooled, per seed."""
    fit = read_results("batchsize_fit_quick")
    models = sorted({k.split(" seed")[0] for k in fit["per_model_b"]}, key=lambda m: int(m[1:]))
    seeds = sorted(fit["pooled_b"], key=int)
    rows = ["| b of bs_opt = a / L^b | " + " | ".join(f"seed {s}" for s in seeds) + " | mean +- std |",
            "|---|" + "---|" * (len(seeds) + 1)]
    for m in models:
        v = [fit["per_model_b"][f"{m} seed{s}"] for s in seeds]
        rows.append(f"| {m} alone | " + " | ".join(f"{x:+.2f}" for x in v) + f" | {ms(v, '+.2f')} |")
    v = [fit["pooled_b"][s] for s in seeds]
    rows.append("| pooled (the paper's fit) | " + " | ".join(f"{x:+.2f}" for x in v) + f" | {ms(v, '+.2f')} |")
    rows.append("| paper | " + "| " * len(seeds) + f"{fit['paper_b']:+.2f} |")
    ledger = findings.load()
    where = []
    for fid, name in (("batchsize_within_model", "within each model"), ("batchsize_pooled", "pooled")):
        lo, hi = (-x for x in reversed(ledger[fid]["diff"]["ci95"]))  # the findings' arm is -b
        where.append(f"{name} {'inside' if lo <= fit['paper_b'] <= hi else 'outside'} [{lo:+.2f}, {hi:+.2f}]")
    rows.append(f"\nThe paper's b = {fit['paper_b']:.2f} against the 95% intervals of b: {'; '.join(where)}.")
    return "\n".join(rows)


EXPLAIN = {
    "batchsize_within_model": "the per-seed exponents scatter with sd 2.4 (per model, -4 to +9, the batch-size "
                              "table): over the levels every curve reaches (2.07-1.65 nats/byte, a 15% range, where "
                              "the paper's b would move bs_opt 2.5-2.9x, little more than one step of the 2x grid) "
                              "the best batch stays at 130-450 tokens and its parabola vertex moves by noise; "
                              "resolving b within +-1 needs ~14 seeds at this design, or runs long enough that the "
                              "loss range spans several grid steps (~10M tokens a run, the one-GPU setting)",
}
EXPLAIN["batchsize_pooled"] = EXPLAIN["batchsize_within_model"]

EXPERIMENT = Experiment(name="batchsize", section="§3.2", rerun=(runner.command("batchsize", True, 5),),
                        sweeps=("batchsize_lr_quick", "batchsize_quick"), tables={"batch-size": batchsize_table},
                        explain=EXPLAIN, record=record_from_results)


if __name__ == "__main__":
    cli.main("Optimal batch size vs loss (paper §3.2)", experiment)

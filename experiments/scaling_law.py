"""
Paper §4.5, rerun small: per size one stable WSD run with a checkpoint every 10 N tokens, branched into 10% decays
at D = 10, 20, 40, 80, 160 and 320 N (the largest size to 160 N), so D sits at the same multiples of N for every
size and spans the optimum the paper finds (~192 N); each size at the lr of a grid that ends lowest at 80 N on a
tuning seed. The Chinchilla-form fit of scaling_law.py with N non-embedding (the paper's) and with N all parameters
(the embeddings are 20-50% of these models), how far the optimum moves when one size, one D level or a bootstrap
resample of the points is left out, and D_opt/N for a model in the middle of the sampled sizes
(scaling_law.ratio_for_size), quoted as inside or outside the sampled D/N. The quick setting trains tiny models on
Python's own source (no run repeats its corpus) and averages the loss over two held-out sets: that source and
Python's English docs, one sample of each for every run (eval_seed 0).

    python -m experiments.scaling_law --quick --seeds 5   # widths 16-48 (2-core CPU: ~3.5 min a seed, ~22 min)
"""

import math
import os
from dataclasses import asdict

import numpy as np
import torch

from corpus import TokenData, corpus_keys
from experiments import cli, findings, runner
from experiments.runner import Experiment, read_results
from model import MiniCPM, ladder_keys, model_config
from plots import save, subplots
from scaling_law import PAPER_LAW, ScalingLaw, compute_optimal, fit_scaling_law, ratio_for_size


HELD_OUT = ("python_source", "embedded")  # the quick runs' held-out sets: Python's source and its English docs
LEVELS = (1, 2, 4, 8, 16, 32)  # the branches, in steps of 10 N tokens: D = 10 N .. 320 N
LRS = (0.002, 0.004, 0.008)  # the first lr grid of every size; extended past an edge optimum
TUNE_SEED, TUNE_LEVEL = 0, 8  # each size's lr is tuned at 80 N (the middle of the D range) on a seed of its own
EVAL_BATCHES = 32  # batches of each held-out set (eval_seed 0): 32k tokens each at the quick shape


def setting(quick):
    """The widths, depth, sequence length and rows a step, and the widths that stop at 160 N (their cost)."""
    if quick:  # 2-core CPU, ~3.5 minutes a seed; python_source: no run repeats its corpus (0.32 epochs at most)
        return dict(widths=[16, 24, 32, 48], layers=2, seq=64, rows=16, to_160N=[48])
    return dict(widths=[64, 96, 128, 192], layers=4, seq=256, rows=32, to_160N=[192])  # one GPU


def sizes_of(widths, layers):
    """{width: (non-embedding parameters, all parameters)} of the ladder shapes."""
    out = {}
    for w in widths:
        with torch.device("meta"):
            m = MiniCPM(model_config(dict(preset="tiny", **ladder_keys(w, layers))))
        out[w] = (m.num_params(), m.num_params(non_embedding=False))
    return out


def experiment(quick=False, out=runner.ROOT, fresh=False, seeds=1, data=None):
    """Per size: one stable WSD run to 320 N tokens (160 N for the largest) with checkpoints every 10 N tokens,
    branched into 10% decays at 10 N .. 320 N, each size at its tuned lr; the loss is the mean over the held-out
    sets, in nats per byte. The fits (N non-embedding, N all parameters), their leave-one-out and bootstrap spread,
    and D_opt/N at the middle sampled size; every run with seeds 1 .. seeds, >= 3 records the verdicts
    (findings.py). data: a corpus in place of python_source (corpus.corpus_keys); held out: its own validation
    split, and the builtin sets too when it is byte-tokenized like them."""
    st = setting(quick)
    widths, seq, rows = st["widths"], st["seq"], st["rows"]
    corpus, tag = corpus_keys(data or "python_source"), runner.results_tag(quick, data)
    # the held-out sets: the builtin ones when the corpus shares their byte tokenizer (eval sets must), and its own
    same_tokens = TokenData(corpus["data"]).meta["tokenizer"] == "bytes"
    held_out = (HELD_OUT if same_tokens else ()) + ((data,) if data and data not in HELD_OUT else ())
    sizes = sizes_of(widths, st["layers"])
    every = {w: max(1, round(10 * sizes[w][0] / (rows * seq))) for w in widths}  # steps of 10 N tokens
    levels = {w: [k for k in LEVELS if k <= (16 if w in st["to_160N"] else 32)] for w in widths}

    def base(w, lr, seed):
        return dict(preset="tiny", **ladder_keys(w, st["layers"]), **corpus, batch_size=rows, seq_len=seq, lr=lr,
                    sample_tokens=0, seed=seed, eval_steps=EVAL_BATCHES, eval_seed=0,
                    warmup_steps=max(1, every[w] // 4))

    def decayed(w, lr, seed, s, **kw):  # s stable steps, then a decay of 10% of the branch's steps (paper §4.3)
        d = max(1, s // 9)
        return dict(base(w, lr, seed), out_dir="", max_steps=s + d, decay_steps=d, ckpt_interval=10 ** 9,
                    eval_interval=s + d, **kw)
    lr_file = os.path.join(out, "results", f"scaling_lr{tag}.json")
    lr = runner.tune_lr(lr_file, {f"w{w}, {10 * TUNE_LEVEL} N": w for w in widths},
                        lambda w, lr_: decayed(w, lr_, TUNE_SEED, TUNE_LEVEL * every[w]), LRS,
                        desc="scaling-law lr grid", fresh=fresh)
    lr = {w: lr[f"w{w}, {10 * TUNE_LEVEL} N"] for w in widths}
    runs = {}
    for w in widths:
        for seed in range(1, seeds + 1):
            stable_dir = os.path.join(out, "out-scaling" + tag, f"w{w}" + (f"-seed{seed}" if seed > 1 else ""))
            top = levels[w][-1] * every[w]  # one stable run per size (WSD with no decay), a checkpoint every 10 N
            runs[runner.seed_name(f"w{w}_stable", seed)] = dict(
                base(w, lr[w], seed), out_dir=stable_dir, max_steps=top, decay_steps=0, ckpt_interval=every[w],
                keep_ckpts=True, eval_interval=top)
            for k in levels[w]:
                s = k * every[w]
                runs[runner.seed_name(f"w{w}_decay{s}", seed)] = decayed(
                    w, lr[w], seed, s, init_from=os.path.join(stable_dir, f"ckpt_{s:06d}.pt"),
                    eval_data=",".join(held_out))
    file = os.path.join(out, "results", f"scaling{tag}.json")
    results = runner.sweep(file, runs, desc="scaling-law sweep", fresh=fresh)

    def points_of(seed):
        pts = []
        for w in widths:
            for k in levels[w]:
                name = runner.seed_name(f"w{w}_decay{k * every[w]}", seed)
                res = results[name]
                by_set = res["val_bpb_by_set"]
                pts.append(dict(run=name, N=sizes[w][0], N_total=sizes[w][1], D=res["tokens"],
                                L=float(np.mean(list(by_set.values()))) * math.log(2), by_set=by_set,
                                epochs=res.get("epochs")))
        return pts
    per_seed = {seed: points_of(seed) for seed in range(1, seeds + 1)}
    summary = summarize(per_seed, lr)
    if seeds >= 3:
        scaling_findings(summary, runner.command("scaling_law", quick, seeds, data), runner.this_machine(),
                         runner.wall_s(lr_file) + runner.wall_s(file), [lr_file, file])
    runner.write_summary(out, f"scaling_fit{tag}", summary)
    law = ScalingLaw(**summary["law"])
    plot(per_seed[1], law, os.path.join(out, "assets", f"scaling_law{tag}.png"))
    print(f"fitted L(N, D) = {law.C_N:.4g} N^-{law.alpha:.3f} + {law.C_D:.4g} D^-{law.beta:.3f} + {law.L0:.3f} "
          f"(nats/byte, mean over {', '.join(held_out)}; N non-embedding params, D tokens; seed 1; at most "
          f"{summary['max_epochs']:.2f} epochs); lr " + ", ".join(f"w{w} {v:g}" for w, v in lr.items()))
    for s in summary["per_seed"]:
        print(f"  seed {s['seed']}: alpha {s['alpha']:.2f} beta {s['beta']:.2f}, D_opt/N at N = "
              f"{summary['N_mid']:.0f}: {s['ratio_mid']:.0f} ({'inside' if s['inside'] else 'outside'} the sampled "
              f"D/N); with N all parameters {s['total']['ratio_mid']:.0f}")
    return summary


def law_summary(points, key, N_mid):
    """The fit of one seed's points with N = points[key] (non-embedding or all parameters) and its D_opt/N at
    N_mid (nan where the fit has no optimum: alpha or beta <= 0)."""
    law = fit_scaling_law([p[key] for p in points], [p["D"] for p in points], [p["L"] for p in points])
    try:
        ratio = float(ratio_for_size(N_mid, law))
    except ValueError:
        ratio = math.nan
    return dict(asdict(law), ratio_mid=ratio)


def summarize(per_seed, lr):
    """Per seed: the fits with N non-embedding and with N all parameters, D_opt/N at the middle sampled size
    (geometric mean of the sizes) and whether it lies inside the sampled D/N; seed 1's budget table, quoting
    D_opt/N_opt only where N_opt and D_opt/N_opt both lie inside the runs."""
    pts1 = per_seed[1]
    Ns = sorted({p["N"] for p in pts1})
    N_mid = float(math.exp(np.mean(np.log(Ns))))
    N_total_mid = float(math.exp(np.mean(np.log(sorted({p["N_total"] for p in pts1})))))
    dn = [p["D"] / p["N"] for p in pts1]
    dn_range = [min(dn), max(dn)]
    seeds = []
    for s, pts in per_seed.items():
        fit = law_summary(pts, "N", N_mid)
        fit.update(seed=s, inside=bool(dn_range[0] <= fit["ratio_mid"] <= dn_range[1]),
                   total=law_summary(pts, "N_total", N_total_mid))
        seeds.append(fit)
    law = {k: seeds[0][k] for k in ("C_N", "alpha", "C_D", "beta", "L0", "unit")}
    c_lo, c_hi = (f(6 * p["N"] * p["D"] for p in pts1) for f in (min, max))
    table = []
    for C in [10 ** e for e in range(math.floor(math.log10(c_lo)), math.ceil(math.log10(c_hi)) + 1)] + [1e21]:
        try:
            n, d = compute_optimal(C, ScalingLaw(**law))
        except ValueError:
            continue
        pn, pd = compute_optimal(C, PAPER_LAW)
        table.append(dict(C=C, inside_data=bool(Ns[0] <= n <= Ns[-1] and dn_range[0] <= d / n <= dn_range[1]),
                          N_opt=n, D_opt=d, ratio=d / n, paper_N_opt=pn, paper_D_opt=pd, paper_ratio=pd / pn))
    return dict(law=law, points=pts1, budgets=table, paper_law=asdict(PAPER_LAW), compute_range=[c_lo, c_hi],
                N_mid=N_mid, N_total_mid=N_total_mid, d_over_n_range=dn_range, lr={str(w): v for w, v in lr.items()},
                spread=fit_spread(pts1, N_mid), per_seed=seeds,
                max_epochs=max((p["epochs"] or 0) for p in pts1))


def scaling_findings(summary, command, hardware, wall_s, sources):
    """The §4.5 findings from the fit summary (results/scaling_fit*.json): each seed's exponents and D_opt/N at the
    middle sampled size."""
    laws, N_mid = summary["per_seed"], summary["N_mid"]
    where = dict(section="§4.5", test="lower", command=command, hardware=hardware, wall_s=wall_s, sources=sources)
    findings.record(fid="scaling_alpha_beta", claim="the fitted exponents satisfy alpha > beta (so D_opt/N_opt "
                    "grows with compute)", paper="alpha 0.29 > beta 0.23", delta=0.05,
                    why="0.05 is the paper's own alpha - beta (0.29 - 0.23), rounded down", a="beta", b="alpha",
                    a_per_seed=[lw["beta"] for lw in laws], b_per_seed=[lw["alpha"] for lw in laws],
                    explanation=EXPLAIN.get("scaling_alpha_beta", ""), **where)
    findings.record(fid="scaling_d_over_n", claim=f"the compute-optimal D/N of a model of N = {N_mid:,.0f} "
                    f"non-embedding parameters (the middle of the sampled sizes) is above Chinchilla's 20 (log10)",
                    paper="D_opt/N_opt ~192, Chinchilla ~20", delta=math.log10(2),
                    why="log10 2: a factor of two in tokens per parameter", a="log10 20 (Chinchilla)",
                    b="log10 D_opt/N at the middle size", a_per_seed=[math.log10(20)] * len(laws),
                    b_per_seed=[math.log10(lw["ratio_mid"]) for lw in laws],
                    explanation=EXPLAIN.get("scaling_d_over_n", ""), **where)


def record_from_results():
    """This file's findings again from results/scaling_fit_quick.json, training nothing."""
    old = findings.load()["scaling_d_over_n"]
    files = EXPERIMENT.sources()
    scaling_findings(read_results("scaling_fit_quick"), old["command"], old["hardware"],
                     sum(runner.wall_s(f) for f in files), files)


def fit_spread(points, N, boot=20, seed=0):
    """How much D_opt/N at size N (and alpha, beta) move with the data: [min, max] over fits leaving out one model
    size or one D level (the k-th branch of every size), and the 5-95% range over `boot` bootstrap resamples of
    the points (refits from 4 starts)."""
    def fit(pts, top_k=8):
        try:
            lw = fit_scaling_law(*([p[k] for p in pts] for k in "NDL"), top_k=top_k)
            return lw, float(ratio_for_size(N, lw))
        except ValueError:  # a resample whose fit has no optimum (alpha or beta <= 0)
            return None, math.nan
    Ns = sorted({p["N"] for p in points})
    levels = {p["run"]: i for n in Ns for i, p in enumerate(sorted((q for q in points if q["N"] == n),
                                                                   key=lambda q: q["D"]))}
    size_out = [fit([p for p in points if p["N"] != n]) for n in Ns]
    d_out = [fit([p for p in points if levels[p["run"]] != i]) for i in range(max(levels.values()) + 1)]
    rng = np.random.default_rng(seed)
    boots = [fit([points[i] for i in rng.integers(0, len(points), len(points))], top_k=4) for _ in range(boot)]

    def rng_of(fits, q=None):
        r = np.array([x[1] for x in fits], dtype=float)
        r = r[np.isfinite(r)]
        if not len(r):
            return [math.nan, math.nan]
        return [float(np.percentile(r, q[0])), float(np.percentile(r, q[1]))] if q else [float(r.min()), float(r.max())]
    alphas, betas = [x[0].alpha for x in size_out if x[0]], [x[0].beta for x in size_out if x[0]]
    return dict(N=N, leave_size_out=rng_of(size_out), leave_d_out=rng_of(d_out), bootstrap=rng_of(boots, (5, 95)),
                alpha_leave_size_out=[min(alphas), max(alphas)], beta_leave_size_out=[min(betas), max(betas)])


def plot(points, law, file, ylabel="val loss (nats/byte)"):
    fig, ax = subplots(figsize=(7, 4.5))
    for i, n in enumerate(sorted({p["N"] for p in points})):
        pts = sorted((p["D"], p["L"]) for p in points if p["N"] == n)
        c = f"C{i}"
        ax.plot(*zip(*pts), "o", color=c, label=f"N = {n / 1e3:.1f}K")
        grid = np.geomspace(pts[0][0] * 0.7, pts[-1][0] * 1.5, 50)
        ax.plot(grid, law(n, grid), "-", color=c, lw=1)
    ax.set(xscale="log", xlabel="tokens D", ylabel=ylabel,
           title=f"L = {law.C_N:.3g} N^-{law.alpha:.2f} + {law.C_D:.3g} D^-{law.beta:.2f} + {law.L0:.2f}")
    ax.legend(fontsize=8)
    save(fig, file, dpi=110)


def scaling_table():
    """§4.5: the fits per seed (N non-embedding and N all parameters), D_opt/N at the middle sampled size, how far
    it moves with the data, and the budgets where the optimum lies inside the runs."""
    f = read_results("scaling_fit_quick")
    sp, lo, hi = f["spread"], *f["d_over_n_range"]
    p = f["paper_law"]
    rows = ["| | C_N | alpha | C_D | beta | L_0 | D_opt / N at the middle size | with N all parameters |",
            "|---|---|---|---|---|---|---|---|",
            f"| paper (N, D in billions) | {p['C_N']:.4f} | {p['alpha']:.2f} | {p['C_D']:.3f} | {p['beta']:.2f} | "
            f"{p['L0']:.2f} | {ratio_for_size(1e9, ScalingLaw(**p)):.0f} at N = 1B | |"]
    for s in f["per_seed"]:
        where = "" if s["inside"] else " (outside the sampled D/N)"
        rows.append(f"| ours, seed {s['seed']} | {s['C_N']:.3g} | {s['alpha']:.2f} | {s['C_D']:.3g} | "
                    f"{s['beta']:.2f} | {s['L0']:.2f} | {s['ratio_mid']:.0f}{where} | {s['total']['ratio_mid']:.0f} "
                    f"(alpha {s['total']['alpha']:.2f}, beta {s['total']['beta']:.2f}) |")
    inside = [r for r in f["budgets"] if r["inside_data"]]
    rows.append(f"\nThe middle size: N = {f['N_mid']:,.0f} non-embedding parameters ({f['N_total_mid']:,.0f} with "
                f"the embeddings); the runs sample D/N = {lo:.0f}-{hi:.0f} and C = {f['compute_range'][0]:.1e} - "
                f"{f['compute_range'][1]:.1e} FLOPs (at most {f['max_epochs']:.2f} epochs of the corpus), each size "
                f"at its tuned lr (" + ", ".join(f"w{w} {v:g}" for w, v in f["lr"].items()) + "). Seed 1's D_opt/N "
                f"at the middle size: leaving one model size out {sp['leave_size_out'][0]:.0f}-"
                f"{sp['leave_size_out'][1]:.0f}, one D level out {sp['leave_d_out'][0]:.0f}-"
                f"{sp['leave_d_out'][1]:.0f}, bootstrap 5-95% {sp['bootstrap'][0]:.0f}-{sp['bootstrap'][1]:.0f}; "
                f"alpha {sp['alpha_leave_size_out'][0]:.2f}-{sp['alpha_leave_size_out'][1]:.2f} and beta "
                f"{sp['beta_leave_size_out'][0]:.2f}-{sp['beta_leave_size_out'][1]:.2f} leaving one size out. "
                f"Compute budgets whose optimum (N_opt and D_opt/N_opt) lies inside the runs, seed 1: " +
                (", ".join(f"{r['ratio']:.0f} at {r['C']:.0e} FLOPs" for r in inside) or "none") + ".")
    return "\n".join(rows)


EXPLAIN = {
    "scaling_alpha_beta": "alpha < beta on every seed (alpha 0.09-0.31, beta 0.32-0.44; with N all parameters "
                          "0.10-0.46 against 0.32-0.44, the scaling-law table): at 5k-51k parameters and D = 10-320 N "
                          "the loss falls faster with data than with size, so the fitted D_opt/N_opt falls with "
                          "compute (seed 1: 1296 at 1e9, 123 at 1e11, 38 at 1e12 FLOPs), the opposite of the paper's; "
                          "alpha is the weakly determined exponent (0.09-0.73 leaving one size out, L_0 at its bound "
                          "0 on seeds 3 and 4): four sizes over 10x in N do not pin it, sizes over >= 50x (the "
                          "paper's span) would",
}

EXPERIMENT = Experiment(name="scaling_law", section="§4.5", rerun=(runner.command("scaling_law", True, 5),),
                        sweeps=("scaling_lr_quick", "scaling_quick"), tables={"scaling-law": scaling_table},
                        explain=EXPLAIN, record=record_from_results)


if __name__ == "__main__":
    cli.main("Scaling law L(N, D) with WSD branches (paper §4.5)", experiment)

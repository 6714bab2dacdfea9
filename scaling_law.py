"""
The scaling law with WSD (paper §4.5).

The paper trains six sizes (0.04B-2B), decays each from six stable WSD checkpoints (10N-60N tokens), measures the
loss per byte on held-out sets, and fits the Chinchilla form

    L(N, D) = C_N * N^(-alpha) + C_D * D^(-beta) + L_0

as Chinchilla did: Huber loss (delta 1e-3) on log L, L-BFGS from a grid of starting points. With compute C = 6 N D
the optimum satisfies alpha C_N N^-alpha = beta C_D D^-beta, so in closed form

    N_opt = G (C/6)^(beta / (alpha + beta)),  D_opt = (C/6) / N_opt,  G = (alpha C_N / (beta C_D))^(1/(alpha+beta))

The paper's D_opt/N_opt is ~192 tokens per parameter (Chinchilla: ~20): small models deserve far more data.
WSD makes the fit cheap: one stable run per size, decays branched off it (O(mC) instead of O(m^2 C)).

`python scaling_law.py` reruns it small (`--quick`: tiny models on a 2-core CPU, trained on Python's own source so
that no run repeats its corpus, the loss averaged over two held-out sets: that source and Python's English docs),
with D at the same multiples of N for every size, and says how far D_opt/N_opt moves when one size, one D level or
a bootstrap resample of the points is left out; it quotes D_opt/N_opt inside the compute range of its runs.
"""

import itertools
import json
import math
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

import findings
from corpus import TokenData, corpus_keys
from model import MiniCPM, ladder_keys, model_config
from plots import quick_cli, save, subplots

ROOT = os.path.dirname(os.path.abspath(__file__))


@dataclass
class ScalingLaw:
    """L(N, D) = C_N N^-alpha + C_D D^-beta + L0, with N and D counted in multiples of `unit`."""
    C_N: float
    alpha: float
    C_D: float
    beta: float
    L0: float
    unit: float = 1.0

    def __getitem__(self, key):
        return getattr(self, key)

    def __call__(self, N, D):
        N, D = np.asarray(N, dtype=float) / self.unit, np.asarray(D, dtype=float) / self.unit
        return self.C_N * N ** -self.alpha + self.C_D * D ** -self.beta + self.L0


# our reading of the paper's fitted curve, N and D in billions (paper §4.5, Fig. 8): D_opt/N_opt ~ 190 at N = 1B
PAPER_LAW = ScalingLaw(C_N=0.0715, alpha=0.29, C_D=0.300, beta=0.23, L0=0.31, unit=1e9)


def compute_optimal(C, law):
    """(N_opt, D_opt) minimising law(N, D) subject to 6 N D = C (C in FLOPs, N in parameters, D in tokens)."""
    a, b = law.alpha, law.beta
    if not (a > 0 and b > 0 and law.C_N > 0 and law.C_D > 0):
        raise ValueError(f"the law has alpha={a:.3g}, beta={b:.3g}, C_N={law.C_N:.3g}, C_D={law.C_D:.3g}: loss "
                         f"does not fall with both N and D, so no compute-optimal allocation exists "
                         f"(fit more/larger runs)")
    c = C / law.unit ** 2 / 6
    G = (a * law.C_N / (b * law.C_D)) ** (1 / (a + b))
    N = G * c ** (b / (a + b))
    return N * law.unit, c / N * law.unit


def _huber(r, delta):
    a = r.abs()
    return torch.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def fit_scaling_law(N, D, L, delta=1e-3, top_k=32):
    """Fit L(N, D) as Chinchilla did: Huber(delta) on log L with log C_N = a, log C_D = b, log L0 = e, i.e.
    log L_hat = logsumexp(a - alpha log N, b - beta log D, e). The objective is evaluated on a grid of starts and
    L-BFGS is run from the best `top_k`; the best end point wins."""
    N, D, L = (np.asarray(v, dtype=float) for v in (N, D, L))
    if not (N.shape == D.shape == L.shape) or N.ndim != 1:
        raise ValueError(f"N, D, L must be 1-D of equal length, got shapes {N.shape}, {D.shape}, {L.shape}")
    if len(N) < 5:
        raise ValueError(f"{len(N)} points cannot determine the 5 parameters (C_N, alpha, C_D, beta, L0): need >= 5")
    if (N <= 0).any() or (D <= 0).any() or (L <= 0).any():
        raise ValueError("N, D and L must all be positive")
    lN, lD, lL = (torch.tensor(np.log(v), dtype=torch.float64) for v in (N, D, L))

    def objective(p):  # p: (..., 5) = a, b, e, alpha, beta
        a, b, e, al, be = p.unbind(-1)
        pred = torch.logsumexp(torch.stack([a[..., None] - al[..., None] * lN, b[..., None] - be[..., None] * lD,
                                            e[..., None].expand(*e.shape, len(lN))]), dim=0)
        return _huber(pred - lL, delta).sum(-1)

    grid = torch.tensor(list(itertools.product(np.arange(0, 30, 5), np.arange(0, 30, 5), np.arange(-1, 1.5, 0.5),
                                               np.arange(0, 2.5, 0.5), np.arange(0, 2.5, 0.5))), dtype=torch.float64)
    starts = grid[objective(grid).argsort()[:top_k]]
    best, best_val = None, math.inf
    for start in starts:
        p = start.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([p], lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = objective(p)
            loss.backward()
            return loss
        opt.step(closure)
        val = objective(p.detach()).item()
        if math.isfinite(val) and val < best_val:
            best, best_val = p.detach(), val
    a, b, e, al, be = best.tolist()
    return ScalingLaw(C_N=math.exp(a), alpha=al, C_D=math.exp(b), beta=be, L0=math.exp(e))


# ----------------------------------------------------------------------------------------------------------
# experiment

HELD_OUT = ("python_source", "embedded")  # the quick runs' held-out sets: Python's source and its English docs


def experiment(quick=False, out=ROOT, fresh=False, seeds=1, data=None):
    """Per size: one stable WSD run to ~67 N tokens with checkpoints every ~10 N tokens, each branched into a 10%
    decay, so D sits at the same multiples of N for every size (paper: 10N-60N); the loss is the mean over the
    held-out sets, in nats per byte. The fit, its leave-one-out and bootstrap spread, and D_opt/N_opt inside the
    compute range of the runs; every run with seeds 1 .. seeds, >= 3 records the verdicts (findings.py). data: a
    corpus in place of python_source (corpus.corpus_keys); held out: its own validation split, and the builtin sets
    too when it is byte-tokenized like them."""
    from train import sweep
    if quick:  # 2-core CPU, ~5 minutes a seed; python_source: no run repeats its corpus
        widths, layers, seq, rows, lr = [16, 24, 32, 48, 64], 2, 64, 16, 0.004
    else:
        widths, layers, seq, rows, lr = [128, 256, 384, 512, 768], 8, 256, 32, 0.01
    corpus, tag = corpus_keys(data or "python_source"), findings.results_tag(quick, data)
    # the held-out sets: the builtin ones when the corpus shares their byte tokenizer (eval sets must), and its own
    same_tokens = TokenData(corpus["data"]).meta["tokenizer"] == "bytes"
    held_out = (HELD_OUT if same_tokens else ()) + ((data,) if data and data not in HELD_OUT else ())
    runs, sizes, everys = {}, {}, {}
    for w in widths:
        model = dict(preset="tiny", **ladder_keys(w, layers))
        with torch.device("meta"):
            sizes[w] = MiniCPM(model_config(model)).num_params()
        every = everys[w] = max(1, round(10 * sizes[w] / (rows * seq)))  # steps of 10 N tokens
        for seed in range(1, seeds + 1):
            base = dict(**model, **corpus, batch_size=rows, seq_len=seq, lr=lr, sample_tokens=0, seed=seed,
                        eval_steps=16, warmup_steps=max(1, every // 4))
            stable_dir = os.path.join(out, "out-scaling" + tag, f"w{w}" + (f"-seed{seed}" if seed > 1 else ""))
            # one stable run per size (WSD with no decay: lr stays at eta), a checkpoint every 10 N tokens
            runs[findings.seed_name(f"w{w}_stable", seed)] = dict(
                base, out_dir=stable_dir, max_steps=6 * every, decay_steps=0, ckpt_interval=every, keep_ckpts=True,
                eval_interval=every)
            for k in range(1, 7):
                s = k * every
                d = max(1, s // 9)  # decay = 10% of the branch's steps (paper §4.3)
                runs[findings.seed_name(f"w{w}_decay{s}", seed)] = dict(
                    base, out_dir="", init_from=os.path.join(stable_dir, f"ckpt_{s:06d}.pt"), max_steps=s + d,
                    decay_steps=d, ckpt_interval=10 ** 9, eval_interval=s + d, eval_data=",".join(held_out))
    file = os.path.join(out, "results", f"scaling{tag}.json")
    results = sweep(file, runs, desc="scaling-law sweep", fresh=fresh)

    def points_of(seed):
        pts = []
        for w in widths:
            for k in range(1, 7):
                name = findings.seed_name(f"w{w}_decay{k * everys[w]}", seed)
                res = results[name]
                by_set = res["val_bpb_by_set"]
                pts.append(dict(run=name, N=sizes[w], D=res["tokens"], L=float(np.mean(list(by_set.values())))
                                * math.log(2), by_set=by_set, epochs=res.get("epochs")))
        return pts
    per_seed = {seed: points_of(seed) for seed in range(1, seeds + 1)}
    points = per_seed[1]
    law = fit_scaling_law([p["N"] for p in points], [p["D"] for p in points], [p["L"] for p in points])
    c_lo, c_hi = (f(6 * p["N"] * p["D"] for p in points) for f in (min, max))
    inside = [10 ** e for e in range(math.ceil(math.log10(c_lo)), math.floor(math.log10(c_hi)) + 1)]
    budgets = inside + [1e15, 1e17, 1e19, 1e21]
    table = []
    for C in budgets:
        n, d = compute_optimal(C, law)
        pn, pd = compute_optimal(C, PAPER_LAW)
        table.append(dict(C=C, inside_data=C <= c_hi, N_opt=n, D_opt=d, ratio=d / n, paper_N_opt=pn, paper_D_opt=pd,
                          paper_ratio=pd / pn))
    C_mid = inside[len(inside) // 2] if inside else c_hi
    spread = fit_spread(points, C_mid)
    summary = dict(law=asdict(law), points=points, budgets=table, paper_law=asdict(PAPER_LAW),
                   compute_range=[c_lo, c_hi], C_mid=C_mid, spread=spread,
                   max_epochs=max((p["epochs"] or 0) for p in points))
    if seeds >= 3:
        laws = [law] + [fit_scaling_law(*([p[k] for p in per_seed[s]] for k in "NDL")) for s in range(2, seeds + 1)]
        ratios = [math.log10(ratio_at(C_mid, lw)) for lw in laws]
        summary["per_seed"] = [dict(asdict(lw), log10_ratio_at_C_mid=r) for lw, r in zip(laws, ratios)]
        cmd = findings.command("scaling_law.py", quick, seeds, data)
        hw = findings.this_machine()
        wall = findings.wall_s(file)
        findings.record("scaling_alpha_beta", "§4.5", "the fitted exponents satisfy alpha > beta (so D_opt/N_opt grows "
                        "with compute)", "alpha 0.29 > beta 0.23", "lower", "beta", "alpha",
                        [lw.beta for lw in laws], [lw.alpha for lw in laws], cmd, hw, wall)
        findings.record("scaling_d_over_n", "§4.5", f"the compute-optimal D/N at C = {C_mid:.0e} FLOPs (inside the "
                        f"runs' compute) is above Chinchilla's 20 (log10)", "D_opt/N_opt ~192, Chinchilla ~20",
                        "lower", "log10 20 (Chinchilla)", "log10 D_opt/N_opt", [math.log10(20)] * seeds, ratios,
                        cmd, hw, wall)
    with open(os.path.join(out, "results", f"scaling_fit{tag}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    plot(points, law, os.path.join(out, "assets", f"scaling_law{tag}.png"))
    print(f"fitted L(N, D) = {law.C_N:.4g} N^-{law.alpha:.3f} + {law.C_D:.4g} D^-{law.beta:.3f} + {law.L0:.3f} "
          f"(nats/byte, mean over {', '.join(held_out)}; N non-embedding params, D "
          f"tokens; seed 1; at most {summary['max_epochs']:.2f} epochs)")
    print(f"the runs span C = {c_lo:.2g} - {c_hi:.2g} FLOPs; D/N at C = {C_mid:.0e}: leave one size out "
          f"{spread['leave_size_out'][0]:.0f}-{spread['leave_size_out'][1]:.0f}, one D level out "
          f"{spread['leave_d_out'][0]:.0f}-{spread['leave_d_out'][1]:.0f}, bootstrap 5-95% "
          f"{spread['bootstrap'][0]:.0f}-{spread['bootstrap'][1]:.0f}")
    for r in table:
        print(f"  C = {r['C']:.0e} FLOPs{'' if r['inside_data'] else ' (extrapolated)':15s}: N_opt {r['N_opt']:.3g}, "
              f"D_opt {r['D_opt']:.3g}, D/N = {r['ratio']:.1f}   (paper's law: D/N = {r['paper_ratio']:.0f})")
    return summary


def ratio_at(C, law):
    """D_opt / N_opt of `law` at compute C."""
    n, d = compute_optimal(C, law)
    return d / n


def fit_spread(points, C, boot=20, seed=0):
    """How much D_opt/N_opt at C (and alpha, beta) move with the data: [min, max] over fits leaving out one model
    size or one D level (the k-th branch of every size), and the 5-95% range over `boot` bootstrap resamples of
    the points (refits from 4 starts)."""
    def fit(pts, top_k=8):
        try:
            lw = fit_scaling_law(*([p[k] for p in pts] for k in "NDL"), top_k=top_k)
            return lw, ratio_at(C, lw)
        except ValueError:  # a resample whose fit has no optimum (alpha or beta <= 0)
            return None, math.nan
    Ns = sorted({p["N"] for p in points})
    levels = {p["run"]: i for n in Ns for i, p in enumerate(sorted((q for q in points if q["N"] == n),
                                                                   key=lambda q: q["D"]))}
    size_out = [fit([p for p in points if p["N"] != n]) for n in Ns]
    d_out = [fit([p for p in points if levels[p["run"]] != i]) for i in range(6)]
    rng = np.random.default_rng(seed)
    boots = [fit([points[i] for i in rng.integers(0, len(points), len(points))], top_k=4) for _ in range(boot)]

    def rng_of(fits, q=None):
        r = np.array([x[1] for x in fits], dtype=float)
        r = r[np.isfinite(r)]
        return [float(np.percentile(r, q[0])), float(np.percentile(r, q[1]))] if q else [float(r.min()), float(r.max())]
    alphas, betas = [x[0].alpha for x in size_out if x[0]], [x[0].beta for x in size_out if x[0]]
    return dict(C=C, leave_size_out=rng_of(size_out), leave_d_out=rng_of(d_out), bootstrap=rng_of(boots, (5, 95)),
                alpha_leave_size_out=[min(alphas), max(alphas)], beta_leave_size_out=[min(betas), max(betas)])


def plot(points, law, file):
    fig, ax = subplots(figsize=(7, 4.5))
    for i, n in enumerate(sorted({p["N"] for p in points})):
        pts = sorted((p["D"], p["L"]) for p in points if p["N"] == n)
        c = f"C{i}"
        ax.plot(*zip(*pts), "o", color=c, label=f"N = {n / 1e3:.1f}K")
        grid = np.geomspace(pts[0][0] * 0.7, pts[-1][0] * 1.5, 50)
        ax.plot(grid, law(n, grid), "-", color=c, lw=1)
    ax.set(xscale="log", xlabel="tokens D", ylabel="val loss (nats/byte)",
           title=f"L = {law.C_N:.3g} N^-{law.alpha:.2f} + {law.C_D:.3g} D^-{law.beta:.2f} + {law.L0:.2f}")
    ax.legend(fontsize=8)
    save(fig, file, dpi=110)


if __name__ == "__main__":
    quick_cli("Scaling law L(N, D) with WSD branches (paper §4.5)", experiment)

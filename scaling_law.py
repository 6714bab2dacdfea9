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

`python scaling_law.py` reruns it small on the embedded corpus (`--quick`: tiny models on a 2-core CPU).
"""

import itertools
import json
import math
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

from model import MiniCPM, ladder, model_config
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
        raise ValueError(f"the law has alpha={a:.3g}, beta={b:.3g}, C_N={law.C_N:.3g}, C_D={law.C_D:.3g}: loss does not "
                         f"fall with both N and D, so no compute-optimal allocation exists (fit more/larger runs)")
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

def experiment(quick=False, out=ROOT, fresh=False):
    from train import sweep
    if quick:
        widths, layers, seq, rows, S, every, lr = [16, 24, 32, 48, 64], 2, 64, 16, 1280, 320, 0.004
    else:
        widths, layers, seq, rows, S, every, lr = [128, 256, 384, 512, 768], 8, 256, 32, 8000, 2000, 0.01
    tag = "_quick" if quick else ""
    ckpt_root = os.path.join(out, "out-scaling" + tag)
    runs, sizes = {}, {}
    for w in widths:
        model = dict(preset="tiny", **{k: v for k, v in ladder(w, layers).items() if k != "vocab_size"})
        base = dict(**model, batch_size=rows, seq_len=seq, lr=lr, sample_tokens=0, seed=1, eval_steps=16,
                    warmup_steps=S // 40)
        stable_dir = os.path.join(ckpt_root, f"w{w}")
        # one stable run per size (WSD with no decay: lr stays at eta), keeping a checkpoint every `every` steps
        runs[f"w{w}_stable"] = dict(base, out_dir=stable_dir, max_steps=S, decay_steps=0, ckpt_interval=every,
                                    keep_ckpts=True, eval_interval=every)
        for s in range(every, S + 1, every):
            d = max(1, s // 9)  # decay = 10% of the branch's steps (paper §4.3)
            runs[f"w{w}_decay{s}"] = dict(base, out_dir="", init_from=os.path.join(stable_dir, f"ckpt_{s:06d}.pt"),
                                          max_steps=s + d, decay_steps=d, ckpt_interval=10 ** 9, eval_interval=s + d)
    results = sweep(os.path.join(out, "results", f"scaling{tag}.json"), runs, desc="scaling-law sweep", fresh=fresh)
    points = []
    for name, res in results.items():
        if "_decay" not in name:
            continue
        w = int(name[1:name.index("_")])
        if w not in sizes:
            with torch.device("meta"):
                sizes[w] = MiniCPM(model_config({**runs[name], "preset": "tiny"})).num_params()
        points.append(dict(run=name, N=sizes[w], D=res["tokens"], L=res["final_val_bpb"] * math.log(2)))
    law = fit_scaling_law([p["N"] for p in points], [p["D"] for p in points], [p["L"] for p in points])
    budgets = [1e15, 1e17, 1e19, 1e21]
    table = []
    for C in budgets:
        n, d = compute_optimal(C, law)
        pn, pd = compute_optimal(C, PAPER_LAW)
        table.append(dict(C=C, N_opt=n, D_opt=d, ratio=d / n, paper_N_opt=pn, paper_D_opt=pd, paper_ratio=pd / pn))
    summary = dict(law=asdict(law), points=points, budgets=table, paper_law=asdict(PAPER_LAW))
    with open(os.path.join(out, "results", f"scaling_fit{tag}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    plot(points, law, os.path.join(out, "assets", f"scaling_law{tag}.png"))
    print(f"fitted L(N, D) = {law.C_N:.4g} N^-{law.alpha:.3f} + {law.C_D:.4g} D^-{law.beta:.3f} + {law.L0:.3f} "
          f"(nats/byte; N non-embedding params, D tokens)")
    for r in table:
        print(f"  C = {r['C']:.0e} FLOPs: N_opt {r['N_opt']:.3g}, D_opt {r['D_opt']:.3g}, D/N = {r['ratio']:.1f}   "
              f"(paper's law: D/N = {r['paper_ratio']:.0f})")
    return summary


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

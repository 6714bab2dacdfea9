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

`python -m experiments.scaling_law` reruns it small, with D at the same multiples of N for every size.
"""

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch


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


def check_optimum(law):
    """A law has a compute-optimal allocation only when loss falls with both N and D; else one ValueError."""
    a, b = law.alpha, law.beta
    if not (a > 0 and b > 0 and law.C_N > 0 and law.C_D > 0):
        raise ValueError(f"the law has alpha={a:.3g}, beta={b:.3g}, C_N={law.C_N:.3g}, C_D={law.C_D:.3g}: loss "
                         f"does not fall with both N and D, so no compute-optimal allocation exists "
                         f"(fit more/larger runs)")


def compute_optimal(C, law):
    """(N_opt, D_opt) minimising law(N, D) subject to 6 N D = C (C in FLOPs, N in parameters, D in tokens)."""
    check_optimum(law)
    a, b = law.alpha, law.beta
    c = C / law.unit ** 2 / 6
    G = (a * law.C_N / (b * law.C_D)) ** (1 / (a + b))
    N = G * c ** (b / (a + b))
    return N * law.unit, c / N * law.unit


def fit_scaling_law(N, D, L, delta=1e-3, top_k=32):
    """Fit L(N, D) as Chinchilla did: Huber(delta) on log L with log C_N = a, log C_D = b, log L0 = e, i.e.
    log L_hat = logsumexp(a - alpha log N, b - beta log D, e). The objective is evaluated on a grid of starts and
    L-BFGS is run from the best `top_k`, on the objective's gradient in closed form; the best end point wins."""
    N, D, L = (np.asarray(v, dtype=float) for v in (N, D, L))
    if not (N.shape == D.shape == L.shape) or N.ndim != 1:
        raise ValueError(f"N, D, L must be 1-D of equal length, got shapes {N.shape}, {D.shape}, {L.shape}")
    if len(N) < 5:
        raise ValueError(f"{len(N)} points cannot determine the 5 parameters (C_N, alpha, C_D, beta, L0): need >= 5")
    if (N <= 0).any() or (D <= 0).any() or (L <= 0).any():
        raise ValueError("N, D and L must all be positive")
    lN, lD, lL = (torch.tensor(np.log(v), dtype=torch.float64) for v in (N, D, L))

    def terms(p):  # p: (..., 5) = a, b, e, alpha, beta -> the three log-terms (3, ..., n points)
        a, b, e, al, be = p.unbind(-1)
        return torch.stack([a[..., None] - al[..., None] * lN, b[..., None] - be[..., None] * lD,
                            e[..., None].expand(*e.shape, len(lN))])

    def objective(p):
        r = torch.logsumexp(terms(p), dim=0) - lL
        return torch.where(r.abs() <= delta, 0.5 * r * r, delta * (r.abs() - 0.5 * delta)).sum(-1)

    def gradient(p):  # d Huber / d r = clamp(r, -delta, delta); d logsumexp / d term = exp(term - logsumexp)
        t = terms(p)
        lse = torch.logsumexp(t, dim=0)
        w, h = (t - lse).exp(), (lse - lL).clamp(-delta, delta)
        return torch.stack([(h * w[0]).sum(), (h * w[1]).sum(), (h * w[2]).sum(), -(h * w[0] * lN).sum(),
                            -(h * w[1] * lD).sum()])

    grid = torch.tensor(list(itertools.product(np.arange(0, 30, 5), np.arange(0, 30, 5), np.arange(-1, 1.5, 0.5),
                                               np.arange(0, 2.5, 0.5), np.arange(0, 2.5, 0.5))), dtype=torch.float64)
    starts = grid[objective(grid).argsort()[:top_k]]
    best, best_val = None, math.inf
    for start in starts:
        p = start.clone()
        opt = torch.optim.LBFGS([p], lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                                line_search_fn="strong_wolfe")

        def closure():
            p.grad = gradient(p)
            return objective(p)
        opt.step(closure)
        val = objective(p).item()
        if math.isfinite(val) and val < best_val:
            best, best_val = p.clone(), val
    a, b, e, al, be = best.tolist()
    return ScalingLaw(C_N=math.exp(a), alpha=al, C_D=math.exp(b), beta=be, L0=math.exp(e))


def ratio_at(C, law):
    """D_opt / N_opt of `law` at compute C."""
    n, d = compute_optimal(C, law)
    return d / n


def ratio_for_size(N, law):
    """D_opt / N of a model of N parameters on the compute-optimal frontier: the D at which
    alpha C_N N^-alpha = beta C_D D^-beta, D = (beta C_D / (alpha C_N))^(1/beta) N^(alpha/beta). The frontier's
    tokens per parameter at a size the runs sampled (its compute follows), where compute_optimal at a chosen C may
    put N_opt outside them."""
    check_optimum(law)
    n = np.asarray(N, dtype=float) / law.unit
    d = (law.beta * law.C_D / (law.alpha * law.C_N)) ** (1 / law.beta) * n ** (law.alpha / law.beta)
    return d / n

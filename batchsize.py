"""
The optimal batch size (paper §3.2).

The paper trains three models (0.009B, 0.03B, 0.17B) at six batch sizes each, lr 0.01 with a cosine schedule.
For each loss level, the batch size that reaches it with the fewest tokens lies on a line in log-log space:

    bs_opt(L) = 1.21e9 / L^6.24        (bs in tokens, L = C4 loss in nats/token)

At L = 2.5 that is 3.97M tokens; MiniCPM-2.4B was trained with 3.93M-token batches. A lower target loss needs a
larger batch: the gradient noise that a small batch averages away matters more near the optimum.

`python -m experiments.batchsize` reruns it small: 3 model sizes x 4 batch sizes, the loss-vs-tokens curves, the
optimal batch per loss level (`best_batch_per_loss`: a parabola in log batch through the fastest batch and its
neighbours, `log2_vertex`, on the tokens each batch takes to reach the level on a monotone fit of its curve,
`tokens_to_reach`), and the fitted (a, b) of bs = a / L^b next to the paper's.
"""

import math

import numpy as np

PAPER_A, PAPER_B = 1.21e9, 6.24


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


def isotonic_decreasing(values):
    """The non-increasing sequence closest to `values` in least squares (pool-adjacent-violators): a loss curve
    with its noise averaged out where it rises, so that one low evaluation does not stand for the curve."""
    blocks = []  # [mean, count] of pooled neighbours
    for v in np.asarray(values, dtype=float):
        blocks.append([v, 1])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            (m2, n2), (m1, n1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    return np.concatenate([np.full(n, m) for m, n in blocks]) if blocks else np.zeros(0)


def tokens_to_reach(tokens, losses, level):
    """The token count at which a loss curve's isotonic fit (isotonic_decreasing) first reaches `level` (linear
    interpolation); None if it never does. On the raw curve, a noisy small-batch curve would cross early on one
    low evaluation: a bias toward small batches."""
    t, l_ = np.asarray(tokens, dtype=float), isotonic_decreasing(losses)
    below = np.nonzero(l_ <= level)[0]
    if len(below) == 0:
        return None
    i = below[0]
    if i == 0:
        return float(t[0])
    frac = (l_[i - 1] - level) / (l_[i - 1] - l_[i])
    return float(t[i - 1] + frac * (t[i] - t[i - 1]))


def log2_vertex(xs, ys):
    """The x of lowest y on a doubling grid, refined by a parabola in log2(x) through the grid minimum and its two
    neighbours (the grid point itself at the edge of the grid): a minimiser that does not jump between neighbours on
    noise. The best batch here, the best lr of the lr sweeps (experiments/mup.py)."""
    i = int(np.nanargmin(ys))
    if i == 0 or i == len(xs) - 1:
        return float(xs[i])
    a, b, _ = np.polyfit(np.log2(xs[i - 1:i + 2]), np.asarray(ys[i - 1:i + 2], dtype=float), 2)
    return float(2 ** (-b / (2 * a))) if a > 0 else float(xs[i])


def best_batch_per_loss(curves, levels):
    """curves: {batch_size: (tokens, losses)} of one model. For each loss level, the batch size that reaches it with
    the fewest tokens, refined by a parabola in log2(batch) through the fastest one and its neighbours (so that a
    winner by 1% of tokens does not decide alone; log2_vertex): [(level, best_batch_size, tokens)], levels
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

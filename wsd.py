"""
Warmup-Stable-Decay learning-rate schedule (paper §4, PAPER.md §4) and the cosine baselines it is compared with.

    WSD(T; s) = s / W * eta        s < W             (linear warmup)
              = eta                W <= s < T        (stable: the peak lr, as long as one likes)
              = f(s - T) * eta     T <= s <= S       (decay, 0 < f <= 1 decreasing)

MiniCPM's decay is exponential, f(s - T) = 0.5 ** ((s - T) / T_half), with a half-life of 5000 steps for 2.4B.
The paper's wording is ambiguous between half-life and decay length; we implement the half-life form: pass
`half_life` to use it as is, or leave it None and it is chosen so that the lr reaches final_lr_ratio * eta at S.
The other shapes ("linear", "cosine", "1-sqrt") go from eta to final_lr_ratio * eta over [T, S].
Why WSD: the stable phase can be continued indefinitely and a decay branched off any checkpoint, so one run gives
the whole loss-vs-data curve (O(mC) instead of O(m^2 C) for m data sizes), and it matches Cosine(S) (§4.3).

Baselines: Cosine(T) (warmup, then cosine from eta to final_lr_ratio * eta over T steps, flat after T) and
CosineLoop(T) (the cosine keeps going after T, rising back towards eta: our reading of the paper's Fig. 4).

`python wsd.py` draws every schedule to assets/wsd_schedules.png.
"""

import argparse
import math
import os

DECAYS = ("exp", "linear", "cosine", "1-sqrt")
ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")


def _check(W, T, S, final_lr_ratio):
    if not (isinstance(W, int) and isinstance(T, int) and isinstance(S, int)):
        raise ValueError(f"W={W!r}, T={T!r}, S={S!r}: steps must be integers")
    if W < 0:
        raise ValueError(f"W={W} (warmup steps) must be >= 0")
    if W > T:
        raise ValueError(f"W={W} > T={T}: warmup must end before the decay starts; lower W or raise T")
    if T > S:
        raise ValueError(f"T={T} > S={S}: the decay must start before the end; lower T or raise S")
    if not 0 < final_lr_ratio <= 1:
        raise ValueError(f"final_lr_ratio={final_lr_ratio} must be in (0, 1]")


def wsd_lr(s, *, lr, W, T, S, decay="exp", final_lr_ratio=0.1, half_life=None):
    """WSD(T; s): the learning rate at step s (paper §4.2)."""
    _check(W, T, S, final_lr_ratio)
    if decay not in DECAYS:
        raise ValueError(f"decay={decay!r}: unknown shape, use one of {', '.join(DECAYS)}")
    if half_life is not None and not half_life > 0:
        raise ValueError(f"half_life={half_life} must be > 0 (or None to end the decay at final_lr_ratio)")
    if s < W:
        return lr * s / W
    if s < T:
        return lr
    if S == T:  # no decay phase
        return lr
    s = min(s, S)
    x = (s - T) / (S - T)  # decay progress in [0, 1]
    r = final_lr_ratio
    if decay == "exp":
        h = half_life if half_life is not None else (S - T) * math.log(2) / math.log(1 / r) if r < 1 else math.inf
        f = 0.5 ** ((s - T) / h)
    elif decay == "linear":
        f = 1 - (1 - r) * x
    elif decay == "cosine":
        f = r + (1 - r) * 0.5 * (1 + math.cos(math.pi * x))
    else:  # "1-sqrt"
        f = 1 - (1 - r) * math.sqrt(x)
    return f * lr


def cosine_lr(s, *, lr, T, W=0, final_lr_ratio=0.1):
    """Cosine(T): linear warmup over W steps, cosine from lr to final_lr_ratio * lr at T, then flat."""
    _check(W, T, T, final_lr_ratio)
    if s < W:
        return lr * s / W
    x = min(1.0, (s - W) / max(1, T - W))
    return lr * (final_lr_ratio + (1 - final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * x)))


def cosine_loop_lr(s, *, lr, T, W=0, final_lr_ratio=0.1):
    """CosineLoop(T): like Cosine(T) but the cosine continues after T, rising back to lr at 2T, and so on."""
    _check(W, T, T, final_lr_ratio)
    if s < W:
        return lr * s / W
    x = (s - W) / max(1, T - W)
    return lr * (final_lr_ratio + (1 - final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * x)))


def plot_schedules(file, S=1000, W=20, lr=0.01):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = range(S + 1)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    ax = axes[0]
    for T, ls in ((S, "-"), (int(0.6 * S), "--"), (int(1.4 * S), ":")):
        ax.plot(steps, [cosine_lr(s, lr=lr, T=T, W=W) for s in steps], ls, label=f"Cosine(T={T})")
    ax.plot(steps, [cosine_loop_lr(s, lr=lr, T=S // 2, W=W) for s in steps], label=f"CosineLoop(T={S // 2})")
    ax.plot(steps, [wsd_lr(s, lr=lr, W=W, T=int(0.9 * S), S=S) for s in steps], "k", lw=2,
            label=f"WSD(T={int(0.9 * S)}), exp decay")
    ax.set(title=f"schedules compared in the paper (S = {S})", xlabel="step s", ylabel="lr")
    ax.legend(fontsize=8)
    ax = axes[1]
    for d in DECAYS:
        ax.plot(steps, [wsd_lr(s, lr=lr, W=W, T=int(0.8 * S), S=S, decay=d) for s in steps], label=f"decay={d}")
    ax.plot(steps, [wsd_lr(s, lr=lr, W=W, T=int(0.8 * S), S=S, half_life=S / 20) for s in steps], ":",
            label=f"exp, half_life={S // 20}")
    ax.set(title="WSD decay shapes (20% decay, final_lr_ratio 0.1)", xlabel="step s")
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(file), exist_ok=True)
    fig.savefig(file, dpi=120)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description="Warmup-Stable-Decay (paper §4): draw the schedules")
    p.add_argument("--S", type=int, default=1000)
    p.add_argument("--W", type=int, default=20)
    a = p.parse_args()
    file = os.path.join(ASSETS, "wsd_schedules.png")
    plot_schedules(file, a.S, a.W)
    print(f"figure: {file}")


if __name__ == "__main__":
    main()

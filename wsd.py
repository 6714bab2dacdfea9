"""
Warmup-Stable-Decay learning-rate schedule (paper §4) and the cosine baselines it is compared with.

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

`python wsd.py` draws every schedule to assets/wsd_schedules.png, then reruns §4.3 small: Cosine(T) with T = S,
T < S, T > S, CosineLoop, WSD with 2.5-20% decays and four shapes, and decays branched off one stable run
(`--quick`: a tiny model on a 2-core CPU).
"""

import argparse
import json
import math
import os

import findings
from plots import FRESH_HELP, save, subplots

DECAYS = ("exp", "linear", "cosine", "1-sqrt")
ROOT = os.path.dirname(os.path.abspath(__file__))
ASSETS = os.path.join(ROOT, "assets")


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
    steps = range(S + 1)
    fig, axes = subplots(1, 2, figsize=(12, 4))
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
    save(fig, file, dpi=120)


# ----------------------------------------------------------------------------------------------------------
# experiment (paper §4.3, Fig. 4-6): WSD vs Cosine, decay length, decay shape, decays branched off one stable run


SEEDED = ("Cosine(T={S})", "WSD exp 10.0%", "WSD exp 20.0%")  # the runs compared over seeds (findings.py)


def experiment(quick=False, out=ROOT, S=None, fresh=False, seeds=1):
    """`seeds` > 1: the compared runs (SEEDED) also with seeds 2 .. seeds (init and data order), for the verdicts."""
    from train import sweep
    if quick:  # 2-core CPU, ~5 minutes
        model = dict(preset="tiny", hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=2, intermediate_size=320)
        # lr: the optimum that `python mup.py transfer --quick` finds at this tiny scale (~0.002-0.004), not the
        # paper's 0.01, which is too high for 1k-token batches and makes every schedule a noise-floor contest
        S_, rows, seq, lr = 500, 16, 64, 0.004
    else:  # one GPU
        model, S_, rows, seq, lr = dict(preset="wt-9m"), 8000, 32, 256, 0.01
    S = S or S_
    W = S // 40
    base = dict(**model, out_dir="", lr=lr, batch_size=rows, seq_len=seq, max_steps=S, warmup_steps=W,
                eval_interval=S // 10, eval_steps=8, sample_tokens=0, seed=1)
    runs = {}
    for T in (int(0.75 * S), S, int(1.25 * S)):
        runs[f"Cosine(T={T})"] = dict(base, schedule="cosine", cosine_steps=T, decay_steps=0)
    runs[f"CosineLoop(T={S // 2})"] = dict(base, schedule="cosine_loop", cosine_steps=S // 2, decay_steps=0)
    for frac in (0.025, 0.05, 0.1, 0.2):
        runs[f"WSD exp {frac:.1%}"] = dict(base, decay="exp", decay_steps=int(frac * S))
    for shape in ("linear", "cosine", "1-sqrt"):
        runs[f"WSD {shape} 10.0%"] = dict(base, decay=shape, decay_steps=S // 10)
    tag = "_quick" if quick else ""
    stable_dir = os.path.join(out, f"out-wsd-stable{tag}")
    runs["stable"] = dict(base, out_dir=stable_dir, decay_steps=0, keep_ckpts=True, ckpt_interval=S // 4)
    branches = [S // 4 * i for i in range(1, 5)]
    for s in branches:
        d = s // 9  # the decay is 10% of the branch's steps
        runs[f"branch {s}+{d}"] = dict(base, init_from=os.path.join(stable_dir, f"ckpt_{s:06d}.pt"),
                                       max_steps=s + d, decay_steps=d, eval_interval=max(1, d // 4))
    for seed in range(2, seeds + 1):
        for name in SEEDED:
            runs[f"{name.format(S=S)} seed{seed}"] = dict(runs[name.format(S=S)], seed=seed)
    res = sweep(os.path.join(out, "results", f"wsd{tag}.json"), runs, desc="WSD sweep", fresh=fresh)
    if seeds > 1:
        with open(os.path.join(out, "results", f"wsd{tag}.json")) as f:
            wall = sum(v["seconds"] for k, v in json.load(f).items()
                       if any(k.startswith(n.format(S=S)) for n in SEEDED))
        record_wsd_findings(res, S, seeds, quick, wall)
    res = {k: r for k, r in res.items() if " seed" not in k}
    final = {k: r["final_val_loss"] for k, r in res.items()}
    cos_s = final[f"Cosine(T={S})"]
    summary = dict(S=S, final_val_loss=final, gap_wsd10_minus_cosineS=final["WSD exp 10.0%"] - cos_s,
                   branches={k: dict(tokens=r["tokens"], val_loss=r["final_val_loss"]) for k, r in res.items()
                             if k.startswith("branch")})
    with open(os.path.join(out, "results", f"wsd_summary{tag}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"final validation loss (nats/token) at S = {S} steps:")
    for k, v in final.items():
        if not k.startswith(("branch", "stable")):
            print(f"  {k:22s} {v:.4f}  ({v - cos_s:+.4f} vs Cosine(S))")
    print(f"WSD (exp, 10% decay) - Cosine(S) = {summary['gap_wsd10_minus_cosineS']:+.4f}")
    for k, b in summary["branches"].items():
        print(f"  {k:22s} {b['tokens']:>10,} tokens  val {b['val_loss']:.4f}")
    plot_experiment(res, S, os.path.join(out, "assets", f"wsd_vs_cosine{tag}.png"))
    return summary


def record_wsd_findings(res, S, seeds, quick, wall):
    """§4.3 over seeds 1..seeds: WSD (exp, 10% decay) vs Cosine(S), and 20% vs 10% of decay (findings.py)."""
    def per_seed(name):
        return [res[name if s == 1 else f"{name} seed{s}"]["final_val_loss"] for s in range(1, seeds + 1)]
    cmd = f"python wsd.py{' --quick' if quick else ''} --seeds {seeds}"
    hw = findings.this_cpu() if quick else "one GPU"
    findings.record("wsd_vs_cosine", "§4.3", "WSD (exp decay over the last 10% of S) ends at or below Cosine(S)",
                    "WSD matches Cosine(S) (Fig. 5)", "lower", "WSD exp 10.0%", f"Cosine(T={S})",
                    per_seed("WSD exp 10.0%"), per_seed(f"Cosine(T={S})"), cmd, hw, wall)
    findings.record("wsd_decay_10_percent", "§4.3", "a decay over 10% of S is enough: 20% does not end lower",
                    "10% of the tokens suffice for the decay", "no gain", "WSD exp 20.0%", "WSD exp 10.0%",
                    per_seed("WSD exp 20.0%"), per_seed("WSD exp 10.0%"), cmd, hw, wall, DECAY_EXPLANATION)


DECAY_EXPLANATION = ("control wsd_decay_10_percent_S2000 (wsd.decay_length_at): the 20% decay's advantage persists at "
                     "4x the steps, so it is not too few decay steps; at this scale (0.4M parameters, byte tokens) "
                     "the gain of a longer decay has not saturated at 20%")


def decay_length_at(S, seeds=3, out=ROOT, fresh=False):
    """The control for "10% of the steps suffice for the decay": 20% vs 10% exp decays at a longer S (the quick
    model and batch), over seeds; if 10% is too few *steps* at S = 500, the gap should shrink as S grows."""
    from train import sweep
    base = dict(preset="tiny", hidden_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                intermediate_size=320, out_dir="", lr=0.004, batch_size=16, seq_len=64, max_steps=S,
                warmup_steps=S // 40, eval_interval=S, eval_steps=8, sample_tokens=0, decay="exp")
    runs = {f"WSD exp {f:.1%} seed{s}": dict(base, decay_steps=int(f * S), seed=s)
            for f in (0.1, 0.2) for s in range(1, seeds + 1)}
    file = os.path.join(out, "results", f"wsd_decay_length_S{S}_quick.json")
    res = sweep(file, runs, desc=f"decay length at S={S}", fresh=fresh)
    with open(file) as f:
        wall = sum(v["seconds"] for v in json.load(f).values())
    per = {f: [res[f"WSD exp {f:.1%} seed{s}"]["final_val_loss"] for s in range(1, seeds + 1)] for f in (0.1, 0.2)}
    return findings.record(f"wsd_decay_10_percent_S{S}", "§4.3", f"at S = {S}: a decay over 10% of S is enough, 20% "
                           f"does not end lower", "10% of the tokens suffice for the decay", "no gain",
                           "WSD exp 20.0%", "WSD exp 10.0%", per[0.2], per[0.1],
                           f"python -c 'import wsd; wsd.decay_length_at({S}, {seeds})'", findings.this_cpu(), wall,
                           DECAY_EXPLANATION)


def plot_experiment(res, S, file):
    fig, axes = subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    for k, r in res.items():
        if k.startswith(("Cosine", "WSD exp 10")):
            ax.plot(*zip(*r["val_loss"]), "o-" if k.startswith("WSD") else "-", ms=3, label=k)
    ax.set(xlabel="step", ylabel="val loss", title=f"WSD vs Cosine (S = {S})")
    lo = min(r["final_val_loss"] for r in res.values())
    ax.set_ylim(lo - 0.03, lo + 0.6)
    ax.legend(fontsize=8)
    ax = axes[1]
    keys = [k for k in res if k.startswith("WSD")]
    ax.barh(keys, [res[k]["final_val_loss"] for k in keys], color=["C0"] * 4 + ["C1"] * 3)
    cos = res[f"Cosine(T={S})"]["final_val_loss"]
    ax.axvline(cos, color="k", ls="--", label=f"Cosine(T={S})")
    lo = min(res[k]["final_val_loss"] for k in keys + [f"Cosine(T={S})"])
    ax.set_xlim(lo - 0.05, max(res[k]["final_val_loss"] for k in keys) + 0.02)
    ax.set(xlabel="final val loss", title="decay length (exp) and shape (10%)")
    ax.legend(fontsize=8)
    ax = axes[2]
    st = res["stable"]
    tok_step = st["tokens"] / st["step"]
    ax.plot([s * tok_step for s, _ in st["val_loss"]], [v for _, v in st["val_loss"]], "k-", label="stable (lr = eta)")
    for k, r in res.items():
        if k.startswith("branch"):
            ax.plot([s * tok_step for s, _ in r["val_loss"]], [v for _, v in r["val_loss"]], "o-", ms=3, label=k)
    ax.set(xlabel="tokens", ylabel="val loss", title="decays branched off one stable run")
    ax.legend(fontsize=8)
    save(fig, file, dpi=110)


def main():
    p = argparse.ArgumentParser(description="Warmup-Stable-Decay (paper §4): draw the schedules, then compare WSD "
                                            "with Cosine, decay lengths and shapes, and branched decays")
    p.add_argument("--S", type=int, default=1000, help="steps of the schedule drawing")
    p.add_argument("--W", type=int, default=20)
    p.add_argument("--plot_only", action="store_true", help="only draw the schedules")
    p.add_argument("--quick", action="store_true", help="tiny model on a 2-core CPU, ~5 minutes")
    p.add_argument("--fresh", action="store_true", help=FRESH_HELP)
    p.add_argument("--seeds", type=int, default=1, help="run the compared schedules with seeds 1..N and record the "
                                                         "verdicts in results/findings.json")
    a = p.parse_args()
    file = os.path.join(ASSETS, "wsd_schedules.png")
    plot_schedules(file, a.S, a.W)
    print(f"figure: {file}")
    if not a.plot_only:
        experiment(quick=a.quick, fresh=a.fresh, seeds=a.seeds)


if __name__ == "__main__":
    main()

"""
Paper §7.3, rerun small: a dense run, then (per seed) the upcycled MoE (8 experts, top-2: moe.py) beside the dense
model continued for the same tokens and for the same active compute, each continuation ending in a 10% WSD decay.

    python -m experiments.moe --quick --seeds 5   # width 128, 2 layers, on python_source (2-core CPU: ~82 min)
"""

import os

import numpy as np
import torch

from checkpoint import read_jsonl
from corpus import corpus_keys
from experiments import cli, findings, runner
from experiments.runner import Experiment, ms, read_results, seeds_of
from model import MiniCPM, ladder_keys, model_config
from moe import param_counts
from plots import save, subplots


def experiment(quick=False, out=runner.ROOT, steps=None, fresh=False, seeds=1, data=None):
    """A dense run, then (per seed) the upcycled MoE beside the dense model continued for the same tokens and for
    the same active compute, each continuation ending in a 10% WSD decay; with >= 3 seeds the verdicts go to
    results/findings.json. The quick setting trains on python_source (~28M training tokens) so that no run repeats
    its corpus (the embedded docs would be gone over 3-5 times). data: a corpus in place of python_source
    (corpus.corpus_keys)."""
    if quick:  # 2-core CPU
        # the dense start is data-rich before it is upcycled (the paper upcycles a fully trained 2.4B): 8000 steps
        # of 1k tokens, ~21 tokens per non-embedding parameter (the first design trained 400 steps, ~1 a parameter:
        # a model that has not used its capacity cannot show the gain of more); lr 0.002, the optimum measured for
        # this model, corpus and batch (experiments.wsd). The continuation is 5000 steps (~2.5 tokens per MoE
        # parameter): at 1000 the experts, copies of one MLP at upcycling, had not diverged enough to differ
        # from the dense continuation (within 0.004 on every seed); 10x would be ~2 h on 2 cores
        model = dict(preset="tiny", **ladder_keys(128, 2))
        S1, S2, rows, seq, lr = 8000, 5000, 16, 64, 0.002
    else:  # one GPU: the same ~22 tokens per dense parameter before upcycling; lr 0.01 is not measured for wt-9m
        model, S1, S2, rows, seq, lr = dict(preset="wt-9m"), 24000, 15000, 32, 256, 0.01
    if steps:
        S1, S2 = steps, steps // 2
    tag = runner.results_tag(quick, data)
    # every run is scored on one held-out sample of 32 batches (32k tokens at the quick setting), whatever its seed
    base = dict(**model, **corpus_keys(data or "python_source"), lr=lr, batch_size=rows, seq_len=seq, sample_tokens=0,
                eval_steps=32, eval_seed=0, warmup_steps=S1 // 20)
    with torch.device("meta"):
        dense_n = MiniCPM(model_config(dict(base))).num_params()
        total, active = param_counts(MiniCPM(model_config(dict(base, num_experts=8, top_k=2))))
    ratio = active / dense_n  # active compute per token, MoE / dense (non-embedding matmuls)
    S2d = int(round(S2 * ratio))  # the dense continuation long enough to compare at equal compute
    ev = max(1, S2 // 8)
    runs = {}
    for seed in range(1, seeds + 1):
        dense_dir = os.path.join(out, f"out-moe-dense{tag}" + (f"-seed{seed}" if seed > 1 else ""))
        ck = os.path.join(dense_dir, "ckpt.pt")
        b = dict(base, seed=seed)
        one = {
            "dense": dict(b, out_dir=dense_dir, max_steps=S1, decay_steps=0, eval_interval=S1 // 4),
            "dense continued": dict(b, out_dir="", init_from=ck, max_steps=S1 + S2, decay_steps=S2 // 10,
                                    eval_interval=ev),
            "dense continued, equal compute": dict(b, out_dir="", init_from=ck, max_steps=S1 + S2d,
                                                   decay_steps=S2d // 10, eval_interval=ev),
            "MoE 8x top-2": dict(b, out_dir=os.path.join(out, f"out-moe{tag}") if seed == 1 else "", init_from=ck,
                                 num_experts=8, top_k=2, max_steps=S1 + S2, decay_steps=S2 // 10, eval_interval=ev,
                                 ckpt_interval=10 ** 9),
        }
        runs.update({runner.seed_name(k, seed): v for k, v in one.items()})
    file = os.path.join(out, "results", f"moe{tag}.json")
    res = runner.sweep(file, runs, desc="MoE sweep", fresh=fresh)
    if seeds >= 3:
        moe_findings(res, seeds, ratio, runner.command("moe", quick, seeds, data), runner.this_machine(),
                     runner.wall_s(file), [file])
    res = {k: r for k, r in res.items() if " seed" not in k}
    m_loss, d_equal_tokens = res["MoE 8x top-2"]["final_val_loss"], res["dense continued"]["final_val_loss"]
    d_equal_compute = res["dense continued, equal compute"]["final_val_loss"]
    summary = dict(dense_params=dense_n, moe_total=total, moe_active=active, active_ratio=ratio,
                   moe_val=m_loss, dense_val_equal_tokens=d_equal_tokens, dense_val_equal_compute=d_equal_compute,
                   gap_equal_tokens=m_loss - d_equal_tokens, gap_equal_compute=m_loss - d_equal_compute,
                   epochs=res["MoE 8x top-2"].get("epochs"))
    loads = [(r["step"], r["expert_load"]) for r in read_jsonl(os.path.join(out, f"out-moe{tag}", "metrics.jsonl"))
             if "expert_load" in r]
    summary["final_expert_load"] = loads[-1][1] if loads else None
    runner.write_summary(out, f"moe_summary{tag}", summary)
    print(f"non-embedding params: dense {dense_n / 1e6:.3f}M; MoE {total / 1e6:.3f}M total, {active / 1e6:.3f}M "
          f"active ({ratio:.2f}x the dense compute per token)")
    print(f"val loss after {S2} more steps (seed 1): MoE {m_loss:.4f}; dense at equal tokens {d_equal_tokens:.4f} "
          f"(gap {summary['gap_equal_tokens']:+.4f}); dense at equal active compute {d_equal_compute:.4f} "
          f"(gap {summary['gap_equal_compute']:+.4f})")
    plot(res, loads, S1 * rows * seq, rows * seq, os.path.join(out, "assets", f"moe{tag}.png"))
    return summary


def moe_findings(res, seeds, ratio, command, hardware, wall_s, sources):
    """The §7.3 findings from the sweep's metrics `res`: the MoE against the dense continuation at equal tokens,
    and (a second, labelled comparison) at equal active compute."""
    for fid, dense, what in (("moe_equal_tokens", "dense continued", "the same tokens"),
                             ("moe_equal_compute", "dense continued, equal compute",
                              f"the same active compute ({ratio:.2f}x the MoE's tokens)")):
        findings.record(
            fid=fid, section="§7.3", claim=f"the upcycled MoE (8 experts, top-2) ends below the dense model "
            f"continued for {what}", paper="MiniCPM-MoE (4B active) beats the dense 2.4B it was upcycled from",
            test="lower", delta=0.01, why="0.01 nats/token is 1% in perplexity", a="MoE 8x top-2", b=dense,
            a_per_seed=runner.per_seed(res, "MoE 8x top-2", seeds), b_per_seed=runner.per_seed(res, dense, seeds),
            command=command, hardware=hardware, wall_s=wall_s, sources=sources, explanation=EXPLAIN.get(fid, ""))


def record_from_results():
    """This file's findings again from results/moe_quick.json, training nothing."""
    old = findings.load()["moe_equal_tokens"]
    res = runner.metrics_of(read_results("moe_quick"))
    seeds = len([k for k in res if k.startswith("MoE 8x top-2")])
    file = os.path.join(runner.RESULTS, "moe_quick.json")
    moe_findings(res, seeds, read_results("moe_summary_quick")["active_ratio"], old["command"], old["hardware"],
                 runner.wall_s(file), [file])


def plot(res, loads, branch_tokens, tok_step, file):
    fig, axes = subplots(1, 2, figsize=(12, 4))
    ax = axes[0]
    for name, r in res.items():
        ax.plot([s * tok_step for s, _ in r["val_loss"]], [v for _, v in r["val_loss"]], "o-", ms=3, label=name)
    ax.axvline(branch_tokens, color="k", ls=":", lw=1)
    ax.set(xlabel="tokens", ylabel="val loss", title="upcycled MoE vs dense continuation")
    ax.legend(fontsize=8)
    ax = axes[1]
    if loads:
        im = ax.imshow(np.array([l_ for _, l_ in loads]).T, aspect="auto", cmap="viridis",
                       extent=[loads[0][0], loads[-1][0], len(loads[0][1]) - 0.5, -0.5])
        fig.colorbar(im, ax=ax, label="fraction of token slots")
        ax.set(xlabel="step", ylabel="expert", title="expert load over training (mean over layers)")
    save(fig, file, dpi=110)


def moe_table():
    """§7.3: the upcycled MoE against the dense continuations, over seeds."""
    sweep, summ = read_results("moe_quick"), read_results("moe_summary_quick")
    moe = seeds_of(sweep, "MoE 8x top-2")
    rows = ["| after the same dense start | val loss, mean +- std (seeds) | MoE minus it, per seed |", "|---|---|---|",
            f"| MoE 8 x top-2 ({summ['moe_total'] / 1e6:.2f}M total, {summ['moe_active'] / 1e6:.2f}M active) | "
            f"{ms(moe)} ({len(moe)}) | |"]
    for name, what in (("dense continued", "dense, the same tokens"),
                       ("dense continued, equal compute", f"dense, the same active compute "
                                                          f"({summ['active_ratio']:.2f}x the tokens)")):
        d = seeds_of(sweep, name)
        rows.append(f"| {what} | {ms(d)} ({len(d)}) | {ms([a - b for a, b in zip(moe, d)], '+.4f')} |")
    return "\n".join(rows)


EXPLAIN = {
    "moe_equal_compute": "the paper compares at equal tokens (moe_equal_tokens: reproduced, -0.020); at equal "
                         "active compute the dense run sees 1.66x the tokens and the MoE ends lower on 4 seeds of 5 "
                         "by -0.003 [-0.009, +0.002]: a gain of 0.01 is ruled out. After 5000 continuation steps the "
                         "extra tokens buy the dense model nearly what the sparse capacity buys the MoE (at 1000 "
                         "steps the dense run was 0.013 lower); a longer continuation would tell whether the MoE "
                         "pulls ahead",
}

EXPERIMENT = Experiment(name="moe", section="§7.3", rerun=(runner.command("moe", True, 5),), sweeps=("moe_quick",),
                        tables={"moe": moe_table}, explain=EXPLAIN, record=record_from_results)


if __name__ == "__main__":
    cli.main("MiniCPM-MoE by sparse upcycling against the dense model continued (paper §7.3)", experiment)

"""
MiniCPM-MoE by sparse upcycling (paper §7.3).

Every MLP of a trained dense MiniCPM becomes `num_experts` experts, each an exact copy of that MLP, plus a new
bias-free router. Per token x (the layer is `model.MoE`, which `num_experts > 0` puts in every block):

    p = softmax(W_router x)                  # over the E experts
    K = top_k(p)                             # the k experts kept (k = 2 for MiniCPM-MoE-8x2B)
    y = sum_{i in K} p_i / (sum_{j in K} p_j) * Expert_i(x)

At upcycling time all experts are equal and the kept weights sum to 1, so the MoE computes the dense function
(up to float rounding) and training continues from the dense loss instead of from scratch. A Switch-style
load-balancing loss (`model.load_balancing_loss`) keeps the router from collapsing onto a few experts:

    aux = E * sum_i f_i * P_i    f_i: fraction of the token slots routed to expert i, P_i: mean router probability

which is 1 for perfectly balanced routing and ~E/k when every token goes to the same k experts. The trainer adds
`router_aux_loss_coef` (0.01) x aux to its objective; the reported losses are the pure cross-entropy.

`python moe.py` trains a dense model, then continues it (a) dense and (b) upcycled 8x top-2 on the same tokens
(`--quick`: tiny models on a 2-core CPU); `python moe.py --bench` times one MoE layer against the dense MLP.
"""

import argparse
import dataclasses
import json
import math
import os
import statistics

import numpy as np
import torch
import torch.nn as nn

import findings
from bench import timeit
from checkpoint import read_jsonl
from configurator import exit_on_user_error
from corpus import corpus_keys
# the layer and its balancing loss live with the model (model.py builds them); named here too, where §7.3 is read
from model import (MLP, MiniCPM, MiniCPMConfig, MoE, expert_load, ladder_keys, load_balancing_loss,  # noqa: F401
                   model_config)
from plots import DATA_HELP, FRESH_HELP, SEEDS_HELP, save, subplots

ROOT = os.path.dirname(os.path.abspath(__file__))


def upcycle_state_dict(dense_state, config, seed=0):
    """The weights of the MoE model of `config` from a dense model's state dict: every expert a copy of its layer's
    dense MLP (gate/up/down (f, d) -> (E, f, d)), a new N(0, hidden std) router per layer (muP: the router is a hidden
    matrix, mup.py); everything else (embeddings, attention, norms) is the dense model's."""
    E = config.num_experts
    state = {}
    for k, v in dense_state.items():
        if ".mlp." in k:  # model.layers.i.mlp.gate_proj.weight (f, d) -> model.layers.i.mlp.gate_proj (E, f, d)
            state[k.removesuffix(".weight")] = v.unsqueeze(0).repeat(E, 1, 1)
        else:
            state[k] = v.clone()
    g = torch.Generator().manual_seed(seed)
    std = config.init_std / math.sqrt(config.width_mult)
    ref = dense_state["model.embed_tokens.weight"]
    for i in range(config.num_hidden_layers):
        router = torch.randn(E, config.hidden_size, generator=g) * std
        state[f"model.layers.{i}.mlp.router.weight"] = router.to(ref.dtype).to(ref.device)
    return state


def upcycle_optimizer_state(named_state, num_experts):
    """Carry AdamW's moments over, {param name: state} of the dense model -> of the MoE: each expert starts from its
    dense MLP's moments, the router from none, so the first MoE steps continue the dense run's optimisation instead
    of restarting it with raw sign-like updates."""
    out = {}
    for name, st in named_state.items():
        if ".mlp." in name:
            out[name.removesuffix(".weight")] = {k: v.clone() if v.dim() == 0 else v.unsqueeze(0).repeat(
                num_experts, 1, 1) for k, v in st.items()}
        else:
            out[name] = {k: v.clone() for k, v in st.items()}
    return out


def upcycle(dense, num_experts=8, top_k=2, seed=0):
    """A MoE MiniCPM whose every expert is a copy of the dense MLP of its layer, with a new router."""
    if not isinstance(num_experts, int) or num_experts < 1:
        raise ValueError(f"num_experts={num_experts!r}: upcycling needs at least 1 expert")
    if dense.config.num_experts:
        raise ValueError("the model is already a MoE: upcycle a dense model")
    config = dataclasses.replace(dense.config, num_experts=num_experts, top_k=top_k)  # validates top_k
    with torch.device("meta"):
        moe = MiniCPM(config)
    moe.load_state_dict(upcycle_state_dict(dense.state_dict(), config, seed), assign=True)
    return moe


def param_counts(model):
    """(total, active per token) non-embedding parameters: a token uses top_k of the E experts (and the router)."""
    return model.num_params(), model.num_active_params()


# ----------------------------------------------------------------------------------------------------------
# benchmark: one MoE layer against the dense MLP of the same width


def bench(d=512, f=1280, tokens=4096, E=8, k=2, reps=10, device="cpu"):
    cfg = MiniCPMConfig(hidden_size=d, intermediate_size=f, num_attention_heads=max(2, d // 64),
                        num_key_value_heads=max(2, d // 64), num_experts=E, top_k=k)
    torch.manual_seed(0)
    mlp, moe = MLP(cfg).to(device), MoE(cfg).to(device)
    for p in moe.parameters():
        nn.init.normal_(p, std=0.02)
    x = torch.randn(tokens, d, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def timed(fn):
        return statistics.median(timeit(fn, 3, reps, sync))
    results = {}
    with torch.no_grad():
        td, tm = timed(lambda: mlp(x)), timed(lambda: moe(x)[0])
    results["forward"] = tm / td
    xg = x.clone().requires_grad_(True)
    td2 = timed(lambda: mlp(xg).sum().backward())
    tm2 = timed(lambda: moe(xg)[0].sum().backward())
    results["forward+backward"] = tm2 / td2
    print(f"MoE layer ({E} experts, top-{k}, d={d}, ffn={f}, {tokens} tokens, {device}): forward "
          f"{tm / tokens * 1e6:.2f} us/token vs dense {td / tokens * 1e6:.2f} us/token = {tm / td:.2f}x; "
          f"forward+backward {tm2 / td2:.2f}x (the experts do {k}x the dense FLOPs)")
    return results


# ----------------------------------------------------------------------------------------------------------
# experiment


def experiment(quick=False, out=ROOT, steps=None, fresh=False, seeds=1, data=None):
    """A dense run, then (per seed) the upcycled MoE beside the dense model continued for the same tokens and for
    the same active compute, each continuation ending in a 10% WSD decay; with >= 3 seeds the verdicts go to
    results/findings.json. The quick setting trains on python_source (~28M training tokens) so that no run repeats
    its corpus (the embedded docs would be gone over 3-5 times). data: a corpus in place of python_source
    (corpus.corpus_keys)."""
    from train import sweep
    if quick:  # 2-core CPU
        model = dict(preset="tiny", **ladder_keys(128, 2))
        S1, S2, rows, seq, lr = 400, 1000, 16, 64, 0.004
    else:  # one GPU
        model, S1, S2, rows, seq, lr = dict(preset="wt-9m"), 4000, 2000, 32, 256, 0.01
    if steps:
        S1, S2 = steps, steps // 2
    tag = findings.results_tag(quick, data)
    base = dict(**model, **corpus_keys(data or "python_source"), lr=lr, batch_size=rows, seq_len=seq, sample_tokens=0,
                eval_steps=8, warmup_steps=S1 // 20)
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
        runs.update({findings.seed_name(k, seed): v for k, v in one.items()})
    file = os.path.join(out, "results", f"moe{tag}.json")
    res = sweep(file, runs, desc="MoE sweep", fresh=fresh)
    if seeds >= 3:
        cmd = findings.command("moe.py", quick, seeds, data)
        hw = findings.this_machine()
        for fid, dense, what in (("moe_equal_tokens", "dense continued", "the same tokens"),
                                 ("moe_equal_compute", "dense continued, equal compute",
                                  f"the same active compute ({ratio:.2f}x the MoE's tokens)")):
            findings.record(fid, "§7.3", f"the upcycled MoE (8 experts, top-2) ends below the dense model continued "
                            f"for {what}", "MiniCPM-MoE (4B active) beats the dense 2.4B it was upcycled from", "lower",
                            "MoE 8x top-2", dense, findings.per_seed(res, "MoE 8x top-2", seeds),
                            findings.per_seed(res, dense, seeds), cmd, hw, findings.wall_s(file, list(one)))
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
    with open(os.path.join(out, "results", f"moe_summary{tag}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"non-embedding params: dense {dense_n / 1e6:.3f}M; MoE {total / 1e6:.3f}M total, {active / 1e6:.3f}M "
          f"active ({ratio:.2f}x the dense compute per token)")
    print(f"val loss after {S2} more steps (seed 1): MoE {m_loss:.4f}; dense at equal tokens {d_equal_tokens:.4f} "
          f"(gap {summary['gap_equal_tokens']:+.4f}); dense at equal active compute {d_equal_compute:.4f} "
          f"(gap {summary['gap_equal_compute']:+.4f})")
    plot(res, loads, S1 * rows * seq, rows * seq, os.path.join(out, "assets", f"moe{tag}.png"))
    return summary


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


def main():
    p = argparse.ArgumentParser(description="MiniCPM-MoE by sparse upcycling (paper §7.3)")
    p.add_argument("--quick", action="store_true", help="tiny models on a 2-core CPU, ~5 minutes")
    p.add_argument("--fresh", action="store_true", help=FRESH_HELP)
    p.add_argument("--seeds", type=int, default=1, help=SEEDS_HELP)
    p.add_argument("--data", default=None, help=DATA_HELP)
    p.add_argument("--bench", action="store_true", help="time one MoE layer against the dense MLP")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    if a.bench:
        bench(device=a.device)
    else:
        exit_on_user_error(lambda: experiment(quick=a.quick, fresh=a.fresh, seeds=a.seeds, data=a.data))


if __name__ == "__main__":
    main()

"""
Paper §7.2, rerun small: (a) unchanged RoPE, (b) NTK-aware scaling without training, (c) ABF + untie + continued
training at 2L on the 44/56 long/short mix, and two controls: (d) the same continued training with the old base (is
it ABF, or only the training at 2L?) and (e) with a much larger base, 1e6; all from a base gated to retrieve at its
training length L; each evaluated at 1x-8x L: passkey heatmaps (longctx.passkey_accuracy) and the loss by position
(longctx.loss_by_position).

    python -m experiments.longctx --quick --seeds 5   # L = 128, a tiny model (2-core CPU: ~10 min a seed)
    python -m experiments.longctx                     # one GPU: L = 256
"""

import os
import statistics

import numpy as np

from checkpoint import model_from_checkpoint
from corpus import TokenData, corpus_keys
from experiments import cli, findings, runner
from experiments.runner import Experiment, ms, read_results
from longctx import loss_by_position, passkey_accuracy
from model import MiniCPMConfig
from plots import save, subplots
from rope import ntk_scaled_base


def plot_passkey(grids, lengths, depths, file):
    """Heatmaps of passkey accuracy, one per {title: grid}."""
    fig, axes = subplots(1, len(grids), figsize=(4.2 * len(grids), 3.6), squeeze=False)
    for ax, (title, grid) in zip(axes[0], grids.items()):
        im = ax.imshow(np.array([grid[L] for L in lengths]).T, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(lengths)), [str(L) for L in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
        ax.set(xlabel="context length (tokens)", ylabel="key depth", title=title)
    fig.colorbar(im, ax=axes[0][-1], label="accuracy")
    save(fig, file)


METHODS = {"a": "(a) RoPE, unchanged", "b": "(b) NTK-aware, no training", "c": "(c) ABF + untie + long/short training",
           "d": "(d) control: (c) with the old base", "e": "(e) (c) with rope_theta 1e6"}


def setting(quick):
    """The model, the trained length L, the base's and the extension's steps, rows a step, passkeys per (length,
    depth) cell, text windows of the loss by position, the fraction of passkey rows in the base's training, the
    corpus of its text rows, and where the base's retrieval gate looks (its kept checkpoints from gate_from on)."""
    if quick:  # 2-core CPU, ~10 minutes a seed (51 min for 5 seeds)
        return dict(model=dict(preset="tiny"), L=128, S1=2000, S2=200, rows=32, trials=20, windows=8, ratio=0.9,
                    text="embedded", gate_from=1000, gate_every=250)
    return dict(model=dict(preset="tiny"), L=256, S1=3000, S2=600, rows=64, trials=32, windows=32,  # one GPU
                ratio=0.75, text="python_source", gate_from=1500, gate_every=500)


def base_keys(st, data):
    """What every run of the experiment shares. The base model learns passkey retrieval at L from a mix of passkey
    rows (a fraction `ratio`) and text; the retrieval forms abruptly after some hundred steps, and fewer passkey rows
    delay it (at S1 = 900, two of three seeds had not formed it yet: 8% and 48% at L, so the quick base trains 2000
    steps and is gated, gate_base); the tiny shape learns it in standard parametrisation with scale_emb 1 (under
    muP with scale_emb 12 it stayed at chance for 3000 steps). lr 5e-4: at 1e-3 the lookup came and went (seed 1,
    100 prompts at L: 83%, 26%, 84%, 10%, 19% at steps 1000-2000), at 5e-4 it rose to 99% at step 1500 and stayed
    >= 90%, at 2.5e-4 it formed ~500 steps later (the gate's curve per seed is in the summary). Text rows: the
    embedded docs on the CPU (90% of the rows are passkeys), python_source on a GPU."""
    return dict(**st["model"], **corpus_keys(data or st["text"]),
                use_mup=False, scale_emb=1.0, lr=5e-4, sample_tokens=0, eval_steps=4, batch_size=st["rows"],
                passkey_ratio=st["ratio"])


def base_run(st, base, seed, out_dir):
    """The base model's run: S1 steps of WSD at L, a checkpoint kept every gate_every steps (the gate's)."""
    S1, L = st["S1"], st["L"]
    return dict(base, seed=seed, out_dir=out_dir, seq_len=L, max_position_embeddings=L, max_steps=S1,
                warmup_steps=S1 // 20, decay_steps=S1 // 10, eval_interval=S1 // 2, keep_ckpts=True,
                ckpt_interval=st["gate_every"])


GATE = 0.9  # the base retrieves at L on at least 90% of the gate's prompts
DEPTHS = [0.0, 0.25, 0.5, 0.75, 1.0]


def passkey_at(net, enc, T, depths, trials, seed, digits=5):
    """Passkey accuracy per depth of prompts that are T tokens with their answer (T = prompt + answer, so that
    T = L is exactly the trained length)."""
    P = T - digits - 1
    return passkey_accuracy(net, enc.encode_ordinary, enc.decode, [P], depths, trials, seed=seed, digits=digits)[P]


def retrieval_at_L(ckpt, data, L, trials):
    """Passkey accuracy at L (mean over DEPTHS, `trials` keys each) of a checkpoint, on prompts of their own
    (seed L + 1: not the evaluation's)."""
    grid = passkey_at(model_from_checkpoint(ckpt)[0], data.encoding(), L, DEPTHS, trials, seed=L + 1)
    return sum(grid) / len(DEPTHS)


def gate_base(st, out_dir, data):
    """The base the extensions start from: the first kept checkpoint from gate_from on that retrieves at L on >=
    GATE of its prompts (else the final, decayed one), and the retrieval of every checkpoint looked at ({step:
    accuracy}). The tiny base forms the lookup abruptly and can lose it again (at 1500 steps: 25%, 10%, 100% on
    three seeds), so a fixed number of steps does not give every seed a base that retrieves."""
    curve = {}
    for step in range(st["gate_from"], st["S1"] + 1, st["gate_every"]):
        ckpt = os.path.join(out_dir, "ckpt.pt" if step == st["S1"] else f"ckpt_{step:06d}.pt")
        curve[step] = retrieval_at_L(ckpt, data, st["L"], st["trials"])
        if curve[step] >= GATE:
            return ckpt, step, curve
    return os.path.join(out_dir, "ckpt.pt"), st["S1"], curve


def experiment(quick=False, out=runner.ROOT, fresh=False, seeds=1, data=None):
    """(a) unchanged RoPE, (b) NTK-aware scaling without training, (c) ABF + untie + continued training at 2L on
    the 44/56 long/short mix, and two controls: (d) the same continued training with the old base (is it ABF, or
    only the training at 2L?) and (e) with a much larger base, 1e6; all from a base that retrieves at L (gate_base);
    each evaluated at 1x-8x L: passkey heatmaps and loss by position. Trained at 2L and scored at 4L, ABF's
    advantage can show where the old base meets angles it never trained on. Every run with seeds 1 .. seeds; >= 3
    records the verdicts. data: the text corpus in place of the setting's own (corpus.corpus_keys)."""
    tag = runner.results_tag(quick, data)
    st = setting(quick)
    model, L, S1, S2, rows, trials, windows = (st[k] for k in ("model", "L", "S1", "S2", "rows", "trials", "windows"))
    base = base_keys(st, data)
    text_data = TokenData(base["data"])
    shape = MiniCPMConfig.from_preset(model["preset"], **{k: v for k, v in model.items() if k != "preset"})
    # ABF: a larger rope_theta, here the NTK-aware base for 8x (1e4 -> 8.6e4 at head_dim 64): long positions
    # rotate as slowly as 8x shorter ones did, and the short-range frequencies the model relies on barely move
    theta = round(ntk_scaled_base(shape.rope_theta, 8, shape.head_dim))
    file = os.path.join(out, "results", f"longctx{tag}.json")
    dirs = {seed: {k: os.path.join(out, f"out-longctx-{name}{tag}" + (f"-seed{seed}" if seed > 1 else ""))
                   for k, name in (("a", "base"), ("c", "abf"), ("d", "oldbase"), ("e", "abf1e6"))}
            for seed in range(1, seeds + 1)}
    bases = {runner.seed_name("base", s): base_run(st, base, s, d["a"]) for s, d in dirs.items()}
    runner.sweep(file, bases, desc="long-context bases", fresh=fresh)  # (the gate reads their checkpoints)
    gates = {s: gate_base(st, d["a"], text_data) for s, d in dirs.items()}
    runs = dict(bases)
    for seed, (ckpt, step, _) in gates.items():
        # paper §7.2: untie, a larger base, and a mix of 44% long (2L) and 56% short (L) rows, WSD
        ext = dict(bases[runner.seed_name("base", seed)], init_from=ckpt, seq_len=2 * L,
                   max_position_embeddings=2 * L, tie_word_embeddings=False, long_ratio=0.44, short_len=L,
                   batch_size=rows // 2, max_steps=step + S2, warmup_steps=S1 // 20, decay_steps=S2 // 5,
                   eval_interval=S2, ckpt_interval=10 ** 9, keep_ckpts=False)
        for k, name, th in (("c", "abf", theta), ("d", "old base", shape.rope_theta), ("e", "abf 1e6", 1e6)):
            runs[runner.seed_name(name, seed)] = dict(ext, out_dir=dirs[seed][k], rope_theta=th)
    res = runner.sweep(file, runs, desc="long-context runs", fresh=False)
    lengths = [L, 2 * L, 4 * L, 8 * L]
    evals = {s: evaluate_methods({"a": gates[s][0], **{k: os.path.join(dirs[s][k], "ckpt.pt") for k in "cde"}},
                                 text_data, L, lengths, DEPTHS, trials, windows) for s in dirs}
    grids, curves = evals[1]
    summary = dict(L=L, lengths=lengths, depths=DEPTHS, trials=trials, rope_theta_abf=theta, trained_at=2 * L,
                   passkey={n: {str(T): sum(g[T]) / len(DEPTHS) for T in lengths} for n, g in grids.items()},
                   passkey_by_depth={n: {str(T): g[T] for T in lengths} for n, g in grids.items()},
                   loss_by_position={n: c for n, c in curves.items()},
                   base_val_loss=res["base"]["val_loss"][-1][1], abf_val_loss=res["abf"]["val_loss"][-1][1],
                   base_gate={str(s): dict(step=g[1], retrieval_at_L={str(k): v for k, v in g[2].items()})
                              for s, g in gates.items()},
                   per_seed={str(s): dict(passkey={n: {str(T): sum(g[T]) / len(DEPTHS) for T in lengths}
                                                   for n, g in gr.items()}, loss_by_position=cu)
                             for s, (gr, cu) in evals.items()})
    if seeds >= 3:
        longctx_findings(summary, runner.command("longctx", quick, seeds, data), runner.this_machine(),
                         runner.wall_s(file), [file])
    runner.write_summary(out, f"longctx_summary{tag}", summary)
    print("base retrieval at L by step (the gate): " + "; ".join(
        f"seed {s}: " + ", ".join(f"{k} {v:.0%}" for k, v in g[2].items()) for s, g in gates.items()))
    print(f"passkey accuracy (mean over {len(DEPTHS)} depths x {trials} keys), trained at L={L}, seed 1:")
    print(f"{'':40s}" + "".join(f"{T:>8d}" for T in lengths))
    for n, accs in summary["passkey"].items():
        print(f"{n:40s}" + "".join(f"{accs[str(T)]:8.0%}" for T in lengths))
    print(f"validation loss by position over {8 * L} tokens (8 buckets of {L} tokens):")
    for n, c in curves.items():
        print(f"{n:40s}" + " ".join(f"{x:.3f}" for x in c))
    plot_passkey(grids, lengths, DEPTHS, os.path.join(out, "assets", f"longctx_passkey{tag}.png"))
    plot_loss_by_position(curves, 8 * L, L, os.path.join(out, "assets", f"longctx_loss{tag}.png"),
                          trained={2 * L: "(c)-(e)"})
    return summary


def evaluate_methods(ckpts, data, L, lengths, depths, trials, windows, digits=5):
    """Passkey accuracy (length -> per-depth list) and loss by position over 8L of each method in METHODS, from
    the checkpoint files ckpts {"a": base, "c": ABF, "d": old base, "e": ABF 1e6}."""
    enc = data.encoding()
    plain = model_from_checkpoint(ckpts["a"])[0]
    nets = {k: (plain, None) for k in "ab"}
    nets.update({k: (model_from_checkpoint(ckpts[k])[0], None) for k in "cde"})
    grids, curves = {}, {}
    for k, (net, _) in nets.items():
        def scaling(T):  # (b) only: the NTK base of the length asked for
            return {"type": "ntk", "factor": T / L} if k == "b" and T > L else None
        grid = {}
        for T in lengths:
            # the same weights, allowed 8L positions (evaluation beyond the trained length is the point)
            m = net.with_config(max_position_embeddings=8 * L, rope_scaling=scaling(T))
            grid[T] = passkey_at(m, enc, T, depths, trials, seed=T, digits=digits)
        grids[METHODS[k]] = grid
        m = net.with_config(max_position_embeddings=8 * L, rope_scaling=scaling(8 * L))
        curves[METHODS[k]] = loss_by_position(m, data, 8 * L, windows)
    return grids, curves


PASSKEY_DELTA = 0.1  # passkey error (1 - accuracy)
PASSKEY_WHY = "10 points of accuracy: 100 keys a cell (20 per depth x 5 depths), a binomial sd of <= 5 points"
LOSS_DELTA = 0.01  # nats/token
LOSS_WHY = "0.01 nats/token is 1% in perplexity"


def longctx_findings(summary, cmd, hardware, wall, sources):
    """The §7.2 verdicts over seeds from the summary's per-seed evaluations: passkey error (1 - accuracy, mean over
    depths) at a length, and mean validation loss over a range of 8 position buckets of L tokens."""
    L, per = summary["L"], summary["per_seed"]

    def err(k, T):
        return [1 - per[s]["passkey"][METHODS[k]][str(T)] for s in sorted(per, key=int)]

    def loss(k, lo, hi):  # buckets lo .. hi - 1, i.e. positions [lo L, hi L)
        return [sum(per[s]["loss_by_position"][METHODS[k]][lo:hi]) / (hi - lo) for s in sorted(per, key=int)]
    passkey, by_loss = dict(delta=PASSKEY_DELTA, why=PASSKEY_WHY), dict(delta=LOSS_DELTA, why=LOSS_WHY)
    for fid, claim, paper, test, a, b, va, vb, margin in (
            ("longctx_ntk_2L", f"NTK-aware scaling without training retrieves more passkeys at 2L = {2 * L} than "
             f"unchanged RoPE (passkey error)", "NTK-aware scaling extends the context without training", "lower",
             "b", "a", err("b", 2 * L), err("a", 2 * L), passkey),
            ("longctx_ntk_loss", f"NTK-aware scaling without training keeps the loss over positions L-4L "
             f"({L}-{4 * L}) below unchanged RoPE's", "NTK-aware scaling extends the context without training",
             "lower", "b", "a", loss("b", 1, 4), loss("a", 1, 4), by_loss),
            ("longctx_abf_vs_old_base_loss", f"ABF: continued training at 2L with the larger base ends with a lower "
             f"loss beyond the trained length, positions 2L-4L ({2 * L}-{4 * L}), than the same training with the "
             f"old base", "ABF + continued long-context training (MiniCPM-128K)", "lower", "c", "d",
             loss("c", 2, 4), loss("d", 2, 4), by_loss),
            ("longctx_abf_vs_old_base_passkey", f"ABF: with the larger base, retrieval at 4L = {4 * L}, beyond the "
             f"trained 2L, after the same continued training is better than with the old base (passkey error)",
             "ABF + continued long-context training (MiniCPM-128K)", "lower", "c", "d", err("c", 4 * L),
             err("d", 4 * L), passkey),
            ("longctx_1e6_loss_beyond", f"a much larger base (rope_theta 1e6) keeps the loss lower far beyond the "
             f"trained 2L (positions {4 * L}-{8 * L}) than the 8x NTK base", "ABF to a large base (1e6 for 128K)",
             "lower", "e", "c", loss("e", 4, 8), loss("c", 4, 8), by_loss),
            ("longctx_1e6_passkey", f"a much larger base (rope_theta 1e6) retrieves at 4L = {4 * L} no worse than the "
             f"8x NTK base after the same training (passkey error)", "ABF to a large base (1e6 for 128K)",
             "no_worse", "e", "c", err("e", 4 * L), err("c", 4 * L), passkey)):
        findings.record(fid=fid, section="§7.2", claim=claim, paper=paper, test=test, a=METHODS[a], b=METHODS[b],
                        a_per_seed=va, b_per_seed=vb, command=cmd, hardware=hardware, wall_s=wall, sources=sources,
                        explanation=EXPLAIN.get(fid, ""), **margin)


def record_from_results():
    """This file's findings again from results/longctx_summary_quick.json, evaluating and training nothing."""
    old = findings.load()["longctx_ntk_2L"]
    file = os.path.join(runner.RESULTS, "longctx_quick.json")
    longctx_findings(read_results("longctx_summary_quick"), old["command"], old["hardware"], runner.wall_s(file),
                     [file])


def plot_loss_by_position(curves, length, L, file, trained=None):
    fig, ax = subplots(figsize=(6.5, 4))
    for name, c in curves.items():
        step = length / len(c)
        ax.plot([step * (i + 0.5) for i in range(len(c))], c, marker="o", label=name)
    ax.axvline(L, color="gray", ls=":", label=f"trained length L={L}")
    for x, who in (trained or {}).items():
        ax.axvline(x, color="green", ls=":", label=f"{who} trained at {x}")
    ax.set(xlabel="position", ylabel="validation loss (nats/token)", title="loss by position")
    ax.legend(fontsize=8)
    save(fig, file)


def longctx_table():
    """§7.2: the bases' retrieval at L (the gate), passkey accuracy by method and length, and the loss by position
    range, over seeds."""
    summ = read_results("longctx_summary_quick")
    per = summ.get("per_seed", {"1": dict(passkey=summ["passkey"], loss_by_position=summ["loss_by_position"])})
    L, lengths, at = summ["L"], summ["lengths"], summ.get("trained_at", 4 * summ["L"])
    spans = [(1, 2), (2, 4), (4, 8)]
    rows = [f"| trained at L = {L}, (c)-(e) at {at} ({len(per)} seeds) | " +
            " | ".join(f"passkey at {T}" for T in lengths) + " | " +
            " | ".join(f"loss, positions {a * L}-{b * L}" for a, b in spans) + " |",
            "|---|" + "---|" * (len(lengths) + len(spans))]
    for m in per["1"]["passkey"]:
        acc = [" " + ms([100 * per[s]["passkey"][m][str(T)] for s in per], ".0f") + "%" for T in lengths]
        loss = [" " + ms([statistics.mean(per[s]["loss_by_position"][m][a:b]) for s in per]) for a, b in spans]
        rows.append(f"| {m} |" + " |".join(acc) + " |" + " |".join(loss) + " |")
    if "base_gate" in summ:
        rows.append("\nThe bases (gate: the first kept checkpoint from step " + str(min(
            int(k) for g in summ["base_gate"].values() for k in g["retrieval_at_L"])) + f" that retrieves at L on >= "
            f"{GATE:.0%} of {5 * summ['trials']} prompts of its own): " + "; ".join(
                f"seed {s} step {g['step']} ({100 * g['retrieval_at_L'][str(g['step'])]:.0f}%)"
                for s, g in summ["base_gate"].items()) + ".")
    return "\n".join(rows)


EXPLAIN = {
    "longctx_ntk_2L": "every base retrieves at L (95-100% on the evaluation's prompts, gated: gate_base); NTK-aware "
                      "scaling without training retrieves 0-13% at 2L, no more than unchanged RoPE (0-14%) on any "
                      "seed: a gain of 10 points is ruled out. Its loss gain (longctx_ntk_loss) shows that the "
                      "rescaled angles keep the language model working beyond L, but the lookup learned at L does "
                      "not survive them untrained; the paper's 128K recipe rescales with continued training, as (c)",
}

EXPERIMENT = Experiment(name="longctx", section="§7.2", rerun=(runner.command("longctx", True, 5),),
                        sweeps=("longctx_quick",), tables={"long-context": longctx_table}, explain=EXPLAIN,
                        record=record_from_results)


if __name__ == "__main__":
    cli.main("Context extension: RoPE vs NTK vs ABF + continued training, passkey and loss by position "
               "(paper §7.2)", experiment)

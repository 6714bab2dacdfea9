"""
Long context, MiniCPM-128K style (paper §7.2).

RoPE rotates the pair (i, i + d/2) of every query/key at position t by the angle t * base^(-2i/d). A model trained at
length L has only seen angles up to L * base^(-2i/d); extending it:

    ABF (Adjusted Base Frequency):  a larger base, e.g. rope_theta 1e4 -> 1e6, so long positions rotate slowly;
                                    then continue training on long data
    NTK-aware scaling:              base' = base * s^(d / (d - 2)),  s = new length / old length, d = head_dim
                                    (stretches the low frequencies by ~s, keeps the highest one: works untrained)
    dynamic NTK (the released 128K config's rope_scaling {"type": "dynamic", "factor": f}): at sequence length
                                    T > max_position_embeddings, base' = base * (f T / max_pos - (f - 1))^(d/(d-2))

MiniCPM-128K also unties the input and output embeddings before long-context training (`untie`) and trains on a
mix of 44% long and 56% short data with WSD.

    python longctx.py [--quick]   # (a) RoPE vs (b) NTK vs (c) ABF + untie + long/short training at 1x-8x the
                                  # trained length: passkey heatmaps and loss by position (assets/longctx*.png)
"""

import json
import os

import numpy as np
import torch
import torch.nn.functional as F

import findings
from checkpoint import model_from_checkpoint
from corpus import TokenData, corpus_keys
from model import MiniCPMConfig
from plots import quick_cli, save, subplots
# the formulas above, which model.py is built from (rope.py); named here too, where §7.2 is read
from rope import (ROPE_SCALING_TYPES, check_rope_scaling, dynamic_ntk_base, ntk_scaled_base,  # noqa: F401
                  rope_base, rope_inv_freq, rope_scaling_type)


def untie(model):
    """The model with an output head of its own, equal to the embedding at first (paper §7.2: untied before the
    long-context stage so that input and output vocabularies can be trained, and sharded, separately). A new model
    (model.with_config); the tied one is left as it was."""
    return model if model.lm_head is not None else model.with_config(tie_word_embeddings=False)


# ----------------------------------------------------------------------------------------------------------
# long/short data mix and the passkey task

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
INTRO = "Remember the pass key. "
QUESTION = " What is the pass key? The pass key:"


def passkey_sample(rng, n_tokens, depth, encode, digits=5):
    """A prompt of exactly n_tokens tokens: intro, filler, the key sentence at `depth` (0 = start of the filler,
    1 = end), more filler, the question. Returns (prompt token ids, key string). The ':' before the key occurs
    nowhere in the filler, so retrieval is one unambiguous lookup (an induction head), as in the usual passkey test
    where the key sentence is the only one of its kind."""
    key = str(int(rng.integers(10 ** (digits - 1), 10 ** digits)))
    intro, needle, question = encode(INTRO), encode(f" The pass key:{key}. "), \
        encode(QUESTION)
    budget = n_tokens - len(intro) - len(needle) - len(question)
    if budget < 0:
        raise ValueError(f"passkey prompt of {n_tokens} tokens is too short: it needs at least "
                         f"{n_tokens - budget} tokens")
    filler = encode(FILLER * (budget // max(1, len(encode(FILLER))) + 2))[:budget]
    pos = int(round(depth * budget))
    return intro + filler[:pos] + needle + filler[pos:] + question, key


def score_passkey(answer, key):
    """True when the generated answer starts (after spaces) with exactly the key's digits."""
    digits = ""
    for ch in answer.lstrip():
        if not ch.isdigit():
            break
        digits += ch
    return digits == key


def passkey_document(rng, n_tokens, encode, digits=5):
    """A training document of exactly n_tokens tokens: a passkey prompt at a random depth followed by its answer."""
    answer_len = len(encode("0" * digits + "."))
    prompt, key = passkey_sample(rng, n_tokens - answer_len, float(rng.random()), encode, digits)
    return prompt + encode(key + ".")


def mixed_batch(data, seed, step, global_batch, seq_len, rows=None, long_ratio=1.0, short_len=0, passkey_ratio=0.0,
                split="train"):
    """The global batch of (seed, step) as a long/short mix (paper §7.2: 44% long, 56% short): a fraction
    `long_ratio` of the rows are contiguous windows of seq_len tokens, the others concatenations of independent
    short_len-token windows (short-range text only); a fraction passkey_ratio of all rows are passkey documents."""
    g = np.random.default_rng([seed, 2 if split == "train" else 3, step])
    n_pass = int(round(passkey_ratio * global_batch))
    n_long = int(round(long_ratio * (global_batch - n_pass)))
    kinds = np.array(["passkey"] * n_pass + ["long"] * n_long + ["short"] * (global_batch - n_pass - n_long))
    kinds = kinds[g.permutation(global_batch)]
    encode = data.encoding().encode_ordinary
    out = []
    for kind in kinds:
        if kind == "passkey":
            row = passkey_document(g, seq_len + 1, encode)
        elif kind == "long":
            row = data.read(split, *data.draw(split, g, seq_len + 1), seq_len + 1)[0]
        else:
            parts, n = [], 0
            while n < seq_len + 1:
                parts.append(data.read(split, *data.draw(split, g, short_len), min(short_len, seq_len + 1 - n))[0])
                n += len(parts[-1])
            row = np.concatenate(parts)
        out.append(np.asarray(row, dtype=np.int64))
    t = torch.from_numpy(np.stack(out))
    if rows is not None:
        t = t[rows]
        kinds = kinds[rows]
    return t[:, :-1], t[:, 1:], [str(k) for k in kinds]


# ----------------------------------------------------------------------------------------------------------
# passkey evaluation


def passkey_accuracy(model, encode, decode, lengths, depths, trials=8, seed=0, digits=5):
    """Accuracy of greedy KV-cache retrieval for each (context length, depth): {length: [acc per depth]}."""
    device = next(model.parameters()).device
    for L in lengths:
        if L + digits + 1 > model.config.max_length:
            raise ValueError(f"passkey context of {L} tokens (+{digits + 1} to answer) exceeds the "
                             f"{model.config.max_length} tokens the model supports: evaluate shorter lengths or "
                             f"extend the context (rope_scaling / max_position_embeddings)")
    rng = np.random.default_rng(seed)
    grid = {}
    model.eval()
    for L in lengths:
        grid[L] = []
        for depth in depths:
            samples = [passkey_sample(rng, L, depth, encode, digits) for _ in range(trials)]
            x = torch.tensor([s[0] for s in samples], device=device)
            out = model.generate(x, digits + 1, top_k=1)[:, L:]
            grid[L].append(sum(score_passkey(decode(o.tolist()), key) for o, (_, key) in zip(out, samples)) / trials)
    return grid


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


def loss_by_position(model, data, length, windows, buckets=8, seed=0):
    """Mean validation loss (nats/token) in `buckets` equal position ranges of `windows` random windows of
    `length` tokens: a model that does not use (or is confused by) far context gets worse at late positions."""
    device = next(model.parameters()).device
    w = torch.from_numpy(data.read("val", *data.draw("val", np.random.default_rng(seed), length + 1, windows),
                                   length + 1)).to(device)
    model.eval()
    with torch.no_grad():
        losses = torch.cat([F.cross_entropy(model(w[i:i + 1, :-1])[0].float().transpose(1, 2), w[i:i + 1, 1:],
                                            reduction="none") for i in range(windows)])
    return [x.mean().item() for x in losses.mean(0).chunk(buckets)]


METHODS = {"a": "(a) RoPE, unchanged", "b": "(b) NTK-aware, no training", "c": "(c) ABF + untie + long/short training",
           "d": "(d) control: (c) with the old base", "e": "(e) (c) with rope_theta 1e6"}


def experiment(quick=False, out=None, fresh=False, seeds=1, data=None):
    """(a) unchanged RoPE, (b) NTK-aware scaling without training, (c) ABF + untie + continued training on the
    44/56 long/short mix, and two controls: (d) the same continued training with the old base (is it ABF, or only
    the training at 4L?) and (e) with a much larger base, 1e6; each evaluated at 1x-8x the training length L:
    passkey heatmaps and loss by position. Every run with seeds 1 .. seeds; >= 3 records the verdicts. data: the
    text corpus in place of the setting's own (corpus.corpus_keys)."""
    from train import sweep
    out = out or os.path.dirname(os.path.abspath(__file__))
    tag = findings.results_tag(quick, data)
    if quick:  # 2-core CPU, ~9 minutes a seed
        model = dict(preset="tiny")
        L, S1, S2, rows, trials, windows, ratio = 128, 1500, 150, 32, 8, 8, 0.9
    else:  # one GPU
        model, L, S1, S2, rows, trials, windows, ratio = dict(preset="tiny"), 256, 3000, 600, 64, 32, 32, 0.75
    # the base model learns passkey retrieval at L from a mix of passkey rows (a fraction `ratio`) and text; the
    # retrieval forms abruptly after some hundred steps, and fewer passkey rows delay it (at S1 = 900, two of three
    # seeds had not formed it yet: 8% and 48% at L, so the quick base trains 1500 steps); the tiny shape learns it in
    # standard parametrisation with scale_emb 1 (under muP with scale_emb 12 it stayed at chance for 3000 steps)
    # text rows: the embedded docs on the CPU (1.6 epochs: 90% of the rows are passkeys), python_source on a GPU
    base = dict(**model, **corpus_keys(data or ("embedded" if quick else "python_source")), use_mup=False,
                scale_emb=1.0, lr=1e-3, sample_tokens=0, eval_steps=4, batch_size=rows, passkey_ratio=ratio)
    shape = MiniCPMConfig.from_preset(model["preset"], **{k: v for k, v in model.items() if k != "preset"})
    # ABF: a larger rope_theta, here the NTK-aware base for 8x (1e4 -> 8.6e4 at head_dim 64): long positions
    # rotate as slowly as 8x shorter ones did, and the short-range frequencies the model relies on barely move
    theta = round(ntk_scaled_base(shape.rope_theta, 8, shape.head_dim))
    runs, dirs = {}, {}
    for seed in range(1, seeds + 1):
        sfx = tag + (f"-seed{seed}" if seed > 1 else "")
        d = dirs[seed] = {k: os.path.join(out, f"out-longctx-{name}{sfx}")
                          for k, name in (("a", "base"), ("c", "abf"), ("d", "oldbase"), ("e", "abf1e6"))}
        b = dict(base, seed=seed)
        runs[findings.seed_name("base", seed)] = dict(
            b, out_dir=d["a"], seq_len=L, max_position_embeddings=L, max_steps=S1, warmup_steps=S1 // 20,
            decay_steps=S1 // 10, eval_interval=S1 // 2)
        # paper §7.2: untie, a larger base, and a mix of 44% long (4L) and 56% short (L) rows, WSD
        ext = dict(b, init_from=os.path.join(d["a"], "ckpt.pt"), seq_len=4 * L, max_position_embeddings=4 * L,
                   tie_word_embeddings=False, long_ratio=0.44, short_len=L, batch_size=rows // 4, max_steps=S1 + S2,
                   warmup_steps=S1 // 20, decay_steps=S2 // 5, eval_interval=S2, ckpt_interval=10 ** 9)
        for k, name, th in (("c", "abf", theta), ("d", "old base", shape.rope_theta), ("e", "abf 1e6", 1e6)):
            runs[findings.seed_name(name, seed)] = dict(ext, out_dir=d[k], rope_theta=th)
    file = os.path.join(out, "results", f"longctx{tag}.json")
    res = sweep(file, runs, desc="long-context runs", fresh=fresh)
    text_data = TokenData(base["data"])
    lengths, depths = [L, 2 * L, 4 * L, 8 * L], [0.0, 0.25, 0.5, 0.75, 1.0]
    evals = {seed: evaluate_methods(dirs[seed], text_data, L, lengths, depths, trials, windows) for seed in dirs}
    grids, curves = evals[1]
    if seeds >= 3:
        record_longctx_findings(evals, L, seeds, findings.command("longctx.py", quick, seeds, data),
                                findings.wall_s(file))
    summary = dict(L=L, lengths=lengths, depths=depths, trials=trials, rope_theta_abf=theta,
                   passkey={n: {str(T): sum(g[T]) / len(depths) for T in lengths} for n, g in grids.items()},
                   passkey_by_depth={n: {str(T): g[T] for T in lengths} for n, g in grids.items()},
                   loss_by_position={n: c for n, c in curves.items()},
                   base_val_loss=res["base"]["val_loss"][-1][1], abf_val_loss=res["abf"]["val_loss"][-1][1],
                   per_seed={str(s): dict(passkey={n: {str(T): sum(g[T]) / len(depths) for T in lengths}
                                                   for n, g in gr.items()}, loss_by_position=cu)
                             for s, (gr, cu) in evals.items()})
    with open(os.path.join(out, "results", f"longctx_summary{tag}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"passkey accuracy (mean over {len(depths)} depths x {trials} keys), trained at L={L}, seed 1:")
    print(f"{'':40s}" + "".join(f"{T:>8d}" for T in lengths))
    for n, accs in summary["passkey"].items():
        print(f"{n:40s}" + "".join(f"{accs[str(T)]:8.0%}" for T in lengths))
    print(f"validation loss by position over {8 * L} tokens (8 buckets of {L} tokens):")
    for n, c in curves.items():
        print(f"{n:40s}" + " ".join(f"{x:.3f}" for x in c))
    plot_passkey(grids, lengths, depths, os.path.join(out, "assets", f"longctx_passkey{tag}.png"))
    plot_loss_by_position(curves, 8 * L, L, os.path.join(out, "assets", f"longctx_loss{tag}.png"),
                          trained={4 * L: "(c)-(e)"})
    return summary


def evaluate_methods(dirs, data, L, lengths, depths, trials, windows, digits=5):
    """Passkey accuracy (length -> per-depth list) and loss by position over 8L of each method in METHODS, from
    the checkpoints in dirs {"a": base, "c": ABF, "d": old base, "e": ABF 1e6}."""
    enc = data.encoding()
    plain = model_from_checkpoint(os.path.join(dirs["a"], "ckpt.pt"))[0]
    nets = {k: (plain, None) for k in "ab"}
    nets.update({k: (model_from_checkpoint(os.path.join(dirs[k], "ckpt.pt"))[0], None) for k in "cde"})
    grids, curves = {}, {}
    for k, (net, _) in nets.items():
        def scaling(T):  # (b) only: the NTK base of the length asked for
            return {"type": "ntk", "factor": T / L} if k == "b" and T > L else None
        grid = {}
        for T in lengths:  # T = prompt + answer, so that T = L is exactly the trained length
            # the same weights, allowed 8L positions (evaluation beyond the trained length is the point)
            m = net.with_config(max_position_embeddings=8 * L, rope_scaling=scaling(T))
            P = T - digits - 1
            grid[T] = passkey_accuracy(m, enc.encode_ordinary, enc.decode, [P], depths, trials, seed=T,
                                       digits=digits)[P]
        grids[METHODS[k]] = grid
        m = net.with_config(max_position_embeddings=8 * L, rope_scaling=scaling(8 * L))
        curves[METHODS[k]] = loss_by_position(m, data, 8 * L, windows)
    return grids, curves


def evals_from_summary(summary):
    """The per-seed (passkey {method: {length: [mean accuracy]}}, loss by position) evaluations stored in a
    longctx summary, in the shape record_longctx_findings reads (to record again without evaluating again)."""
    return {int(s): ({m: {int(T): [a] for T, a in acc.items()} for m, acc in v["passkey"].items()},
                     v["loss_by_position"]) for s, v in summary["per_seed"].items()}


def record_longctx_findings(evals, L, seeds, cmd, wall):
    """The §7.2 verdicts over seeds: per seed, passkey error (1 - accuracy, mean over depths) at a length, and mean
    validation loss over a range of 8 position buckets of L tokens."""
    def err(k, T):
        return [1 - sum(evals[s][0][METHODS[k]][T]) / len(evals[s][0][METHODS[k]][T]) for s in range(1, seeds + 1)]

    def loss(k, lo, hi):  # buckets lo .. hi - 1, i.e. positions [lo L, hi L)
        return [sum(evals[s][1][METHODS[k]][lo:hi]) / (hi - lo) for s in range(1, seeds + 1)]
    hw = findings.this_machine()
    for fid, claim, paper, a, b, va, vb in (
            ("longctx_ntk_2L", f"NTK-aware scaling without training retrieves more passkeys at 2L = {2 * L} than "
             f"unchanged RoPE (passkey error)", "NTK-aware scaling extends the context without training", "b", "a",
             err("b", 2 * L), err("a", 2 * L)),
            ("longctx_ntk_loss", f"NTK-aware scaling without training keeps the loss over positions L-4L "
             f"({L}-{4 * L}) below unchanged RoPE's", "NTK-aware scaling extends the context without training", "b",
             "a", loss("b", 1, 4), loss("a", 1, 4)),
            ("longctx_abf_vs_old_base_loss", f"ABF: continued training at 4L with the larger base ends with a lower "
             f"loss over positions L-4L ({L}-{4 * L}) than the same training with the old base",
             "ABF + continued long-context training (MiniCPM-128K)", "c", "d", loss("c", 1, 4), loss("d", 1, 4)),
            ("longctx_abf_vs_old_base_passkey", f"ABF: with the larger base, retrieval at 4L = {4 * L} after the same "
             f"continued training is better than with the old base (passkey error)",
             "ABF + continued long-context training (MiniCPM-128K)", "c", "d", err("c", 4 * L), err("d", 4 * L)),
            ("longctx_1e6_loss_beyond", f"a much larger base (rope_theta 1e6) keeps the loss lower beyond the trained "
             f"4L (positions {4 * L}-{8 * L}) than the 8x NTK base", "ABF to a large base (1e6 for 128K)", "e", "c",
             loss("e", 4, 8), loss("c", 4, 8)),
            ("longctx_1e6_passkey", f"a much larger base (rope_theta 1e6) retrieves at 4L = {4 * L} as well as the "
             f"8x NTK base after the same training: the 8x base is not better (passkey error)",
             "ABF to a large base (1e6 for 128K)", "c", "e", err("c", 4 * L), err("e", 4 * L))):
        findings.record(fid, "§7.2", claim, paper, "no gain" if fid == "longctx_1e6_passkey" else "lower",
                        METHODS[a], METHODS[b], va, vb, cmd, hw, wall)


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


def main():
    quick_cli("Context extension: RoPE vs NTK vs ABF + continued training, passkey and loss by position "
              "(paper §7.2)", experiment)


if __name__ == "__main__":
    main()

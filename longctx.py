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

The formulas live in rope.py, which model.py is built from; this file holds what long-context training and its
evaluation need: untying, the long/short data mix, the passkey task and the loss by position. `python -m
experiments.longctx` compares (a) RoPE, (b) NTK, (c) ABF + untie + long/short training at 1x-8x the trained length.
"""

import numpy as np
import torch
import torch.nn.functional as F


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

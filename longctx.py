"""
Long context, MiniCPM-128K style (paper §7.2, PAPER.md §7).

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
"""


def rope_inv_freq(head_dim, base):
    """The RoPE frequencies base^(-2i/d), i = 0 .. d/2 - 1 (a torch tensor, fp32)."""
    import torch
    return base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


def ntk_scaled_base(base, scale, head_dim):
    """NTK-aware RoPE base for a context `scale` times longer: base * scale^(d / (d - 2))."""
    if not scale > 0:
        raise ValueError(f"scale={scale}: the length ratio must be > 0")
    return base * scale ** (head_dim / (head_dim - 2))


def dynamic_ntk_base(base, factor, seq_len, max_position_embeddings, head_dim):
    """The `dynamic` rope_scaling base at a given sequence length: unchanged up to max_position_embeddings."""
    if seq_len <= max_position_embeddings:
        return base
    return base * (factor * seq_len / max_position_embeddings - (factor - 1)) ** (head_dim / (head_dim - 2))


ROPE_SCALING_TYPES = ("dynamic", "ntk")


def rope_scaling_type(rope_scaling):
    """"dynamic", "ntk" or None; official configs name the key "type", newer transformers ones "rope_type"."""
    if not isinstance(rope_scaling, dict):
        return None
    return rope_scaling.get("type", rope_scaling.get("rope_type"))


def check_rope_scaling(rope_scaling):
    """None, {"type": "dynamic", "factor": f} (the released 128K config) or {"type": "ntk", "factor": s}."""
    if rope_scaling is None:
        return
    if rope_scaling_type(rope_scaling) not in ROPE_SCALING_TYPES \
            or not isinstance(rope_scaling.get("factor"), (int, float)) or not rope_scaling["factor"] >= 1:
        raise ValueError(f"MiniCPMConfig.rope_scaling={rope_scaling!r}: use None, {{'type': 'dynamic', 'factor': f}} "
                         f"or {{'type': 'ntk', 'factor': s}} with a factor >= 1 (for ABF, set rope_theta instead)")


def rope_base(config, seq_len):
    """The RoPE base the model uses for a sequence of seq_len tokens, given its rope_theta and rope_scaling."""
    rs, base, d = config.rope_scaling, config.rope_theta, config.head_dim
    if rs is None:
        return base
    if rope_scaling_type(rs) == "ntk":
        return ntk_scaled_base(base, rs["factor"], d)
    return dynamic_ntk_base(base, rs["factor"], seq_len, config.max_position_embeddings, d)


def untie(model):
    """Give a tied model an output head of its own, equal to the embedding at first (paper §7.2: untied before the
    long-context stage so that input and output vocabularies can be trained, and sharded, separately)."""
    import torch
    import torch.nn as nn
    if model.lm_head is not None:
        return model
    emb = model.model.embed_tokens.weight
    model.lm_head = nn.Linear(emb.size(1), emb.size(0), bias=False, device=emb.device, dtype=emb.dtype)
    with torch.no_grad():
        model.lm_head.weight.copy_(emb)
    model.config.tie_word_embeddings = False
    return model


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
    import numpy as np
    import torch
    g = np.random.default_rng([seed, 2 if split == "train" else 3, step])
    n_pass = int(round(passkey_ratio * global_batch))
    n_long = int(round(long_ratio * (global_batch - n_pass)))
    kinds = np.array(["passkey"] * n_pass + ["long"] * n_long + ["short"] * (global_batch - n_pass - n_long))
    kinds = kinds[g.permutation(global_batch)]
    tokens = data.split[split]
    encode = data.encoding().encode_ordinary
    out = []
    for kind in kinds:
        if kind == "passkey":
            row = passkey_document(g, seq_len + 1, encode)
        elif kind == "long":
            o = int(g.integers(0, len(tokens) - seq_len - 1))
            row = tokens[o:o + seq_len + 1]
        else:
            parts, n = [], 0
            while n < seq_len + 1:
                o = int(g.integers(0, len(tokens) - short_len))
                parts.append(tokens[o:o + min(short_len, seq_len + 1 - n)])
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
    import numpy as np
    import torch
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
    import numpy as np
    from plots import save, subplots
    fig, axes = subplots(1, len(grids), figsize=(4.2 * len(grids), 3.6), squeeze=False)
    for ax, (title, grid) in zip(axes[0], grids.items()):
        im = ax.imshow(np.array([grid[L] for L in lengths]).T, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(lengths)), [str(L) for L in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
        ax.set(xlabel="context length (tokens)", ylabel="key depth", title=title)
    fig.colorbar(im, ax=axes[0].tolist(), label="accuracy")
    save(fig, file)

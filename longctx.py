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


def check_rope_scaling(rope_scaling):
    """None, {"type": "dynamic", "factor": f} (the released 128K config) or {"type": "ntk", "factor": s}."""
    if rope_scaling is None:
        return
    if not isinstance(rope_scaling, dict) or rope_scaling.get("type", rope_scaling.get("rope_type")) \
            not in ROPE_SCALING_TYPES or not isinstance(rope_scaling.get("factor"), (int, float)) \
            or not rope_scaling["factor"] >= 1:
        raise ValueError(f"MiniCPMConfig.rope_scaling={rope_scaling!r}: use None, {{'type': 'dynamic', 'factor': f}} "
                         f"or {{'type': 'ntk', 'factor': s}} with a factor >= 1 (for ABF, set rope_theta instead)")


def rope_base(config, seq_len):
    """The RoPE base the model uses for a sequence of seq_len tokens, given its rope_theta and rope_scaling."""
    rs, base, d = config.rope_scaling, config.rope_theta, config.head_dim
    if rs is None:
        return base
    kind = rs.get("type", rs.get("rope_type"))
    if kind == "ntk":
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

"""
RoPE and its long-context bases (paper §7.2): the formulas model.py is built from; longctx.py uses them to extend
a trained model's context.

RoPE rotates the pair (i, i + d/2) of every query/key at position t by the angle t * base^(-2i/d), d = head_dim,
base = rope_theta (10^4 in MiniCPM). A model trained at length L has only seen angles up to L * base^(-2i/d); to go
further:

    ABF (Adjusted Base Frequency):  a larger rope_theta, e.g. 1e4 -> 1e6, then continued training on long data
    NTK-aware scaling:              base' = base * s^(d / (d - 2)),  s = new length / old length
                                    (the config {"type": "ntk", "factor": s}: a fixed base, works without training)
    dynamic NTK (the released 128K config, {"type": "dynamic", "factor": f}): for a sequence of T > max_pos tokens
                                    base' = base * (f T / max_pos - (f - 1))^(d / (d - 2)), unchanged up to max_pos
    linear (position interpolation, {"type": "linear", "factor": f}): positions t / f, the base unchanged

Decoding under `dynamic`, as the official code does it: each forward uses the base of the sequence's current total
length (prompt + tokens so far); keys already in the KV cache keep the rotation they were given when computed.
"""

import torch

ROPE_SCALING_TYPES = ("dynamic", "ntk", "linear")


def rope_inv_freq(head_dim, base):
    """The RoPE frequencies base^(-2i/d), i = 0 .. d/2 - 1 (fp32)."""
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


def rope_scaling_type(rope_scaling):
    """"dynamic", "ntk", "linear" or None; official configs name the key "type", newer transformers ones
    "rope_type"."""
    if not isinstance(rope_scaling, dict):
        return None
    return rope_scaling.get("type", rope_scaling.get("rope_type"))


def check_rope_scaling(rope_scaling):
    """None, {"type": "dynamic", "factor": f} (the released 128K config), {"type": "ntk", "factor": s} or
    {"type": "linear", "factor": f} (official configs)."""
    if rope_scaling is None:
        return
    if rope_scaling_type(rope_scaling) not in ROPE_SCALING_TYPES \
            or not isinstance(rope_scaling.get("factor"), (int, float)) or not rope_scaling["factor"] >= 1:
        raise ValueError(f"MiniCPMConfig.rope_scaling={rope_scaling!r}: use None, or a type dynamic, ntk or linear "
                         f"with a factor >= 1, e.g. {{'type': 'dynamic', 'factor': 4.0}} (for ABF, set rope_theta)")


def rope_base(config, seq_len):
    """The RoPE base a model config uses for a sequence of seq_len tokens (rope_theta, rope_scaling)."""
    rs, base, d = config.rope_scaling, config.rope_theta, config.head_dim
    if rs is None:
        return base
    if rope_scaling_type(rs) == "ntk":
        return ntk_scaled_base(base, rs["factor"], d)
    if rope_scaling_type(rs) == "linear":
        return base
    return dynamic_ntk_base(base, rs["factor"], seq_len, config.max_position_embeddings, d)


def rope_tables(config, start, length, device=None):
    """(cos, sin) of positions start .. start + length - 1 of a model config: a forward over a sequence whose total
    length is start + length (its base under `dynamic`), positions divided by the factor under `linear`."""
    positions = torch.arange(start, start + length, device=device, dtype=torch.float32)
    if rope_scaling_type(config.rope_scaling) == "linear":
        positions = positions / config.rope_scaling["factor"]
    return rope_cos_sin(positions, config.head_dim, rope_base(config, start + length))


def rope_cos_sin(positions, head_dim, theta):
    """RoPE tables in fp32 for the given positions, (T, head_dim), frequencies theta^(-2i/d) in the rotate-half
    layout of the official code: pairs (i, i + d/2). The sin table carries the sign of the rotation:
    rotate_half(x) * sin == roll(x, d/2) * cat(-sin, sin), one op fewer on the hot path."""
    freqs = torch.outer(positions.float(), rope_inv_freq(head_dim, theta).to(positions.device))  # (T, d/2) angles
    return torch.cat((freqs, freqs), dim=-1).cos(), torch.cat((-freqs.sin(), freqs.sin()), dim=-1)


def apply_rope(x, cos, sin):
    xf = x.float()
    return (xf * cos + xf.roll(x.size(-1) // 2, dims=-1) * sin).type_as(x)

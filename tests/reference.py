"""An independent reference: a plain Llama forward pass (no multipliers) in float64, written from the
formulas with explicit attention, for parity tests. MiniCPM weights enter it with the multipliers folded in."""
import math

import torch


def fold_minicpm(model):
    """Paper §3.1 / the official modeling code: MiniCPM == Llama with E*scale_emb, o/down * scale_depth/sqrt(L), lm_head = head / m."""
    c = model.config
    sd = {k: v.detach().double().clone() for k, v in model.state_dict().items()}
    head = sd.get("lm_head.weight", sd["model.embed_tokens.weight"]).clone()
    sd["model.embed_tokens.weight"] *= c.scale_emb
    r = c.scale_depth / math.sqrt(c.num_hidden_layers)
    for i in range(c.num_hidden_layers):
        sd[f"model.layers.{i}.self_attn.o_proj.weight"] *= r
        sd[f"model.layers.{i}.mlp.down_proj.weight"] *= r
    m = c.hidden_size / c.dim_model_base if c.use_mup else 1.0
    sd["lm_head.weight"] = head / m
    return sd


def llama_logits(sd, c, idx):
    """Logits of a Llama model with state dict sd (float64) and MiniCPMConfig-like shape c."""
    B, T = idx.shape
    H, KV, D = c.num_attention_heads, c.num_key_value_heads, c.hidden_size // c.num_attention_heads

    def norm(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + c.rms_norm_eps) * w

    pos = torch.arange(T, dtype=torch.float64)
    inv = 1.0 / (c.rope_theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    ang = pos[:, None] * inv[None, :]  # (T, D/2)
    cos, sin = torch.cos(ang), torch.sin(ang)

    def rope(x):  # rotate-half layout: pairs (i, i + D/2)
        a, b = x[..., : D // 2], x[..., D // 2:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)

    x = sd["model.embed_tokens.weight"][idx]
    mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        h = norm(x, sd[p + "input_layernorm.weight"])
        q = (h @ sd[p + "self_attn.q_proj.weight"].T).view(B, T, H, D).transpose(1, 2)
        k = (h @ sd[p + "self_attn.k_proj.weight"].T).view(B, T, KV, D).transpose(1, 2)
        v = (h @ sd[p + "self_attn.v_proj.weight"].T).view(B, T, KV, D).transpose(1, 2)
        q, k = rope(q), rope(k)
        k = k.repeat_interleave(H // KV, dim=1)
        v = v.repeat_interleave(H // KV, dim=1)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D) + mask, -1)
        y = (att @ v).transpose(1, 2).reshape(B, T, H * D)
        x = x + y @ sd[p + "self_attn.o_proj.weight"].T
        h = norm(x, sd[p + "post_attention_layernorm.weight"])
        g, u = h @ sd[p + "mlp.gate_proj.weight"].T, h @ sd[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(g) * u) @ sd[p + "mlp.down_proj.weight"].T
    return norm(x, sd["model.norm.weight"]) @ sd["lm_head.weight"].T

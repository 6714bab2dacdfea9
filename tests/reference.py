"""Independent references, in float64 with explicit attention, written from the formulas: a plain Llama forward
(MiniCPM weights enter it with the multipliers folded in), and the official MiniCPM forward and greedy decoding
read straight from an official-format directory's state dict and config.json (the official code's defaults where
a key is missing: scale_emb, scale_depth and dim_model_base 1)."""
import math

import torch
import torch.nn.functional as F


def fold_minicpm(model):
    """Paper §3.1 / the official code: MiniCPM == Llama with E * scale_emb, o/down * scale_depth / sqrt(L),
    lm_head = head / m."""
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


def official_forward(sd, cfg, idx, past=None):
    """The official MiniCPM forward (modeling_minicpm.py's formulas; MiniCPM-MoE's routing) in float64, read
    straight from an official-format state dict and config.json dict, independent of model.py. idx (B, T): the new
    tokens after `past` (per layer (k, v), keys already rotated) or from position 0. Returns (logits, past).
    RoPE as the official rotary classes: plain, `linear` (positions / factor) or `dynamic` (the base of the total
    length once it exceeds max_position_embeddings; cached keys keep the rotation they were given)."""
    sd = {k: v.double() for k, v in sd.items()}
    B, T = idx.shape
    H = cfg["num_attention_heads"]
    KV = cfg.get("num_key_value_heads", H)
    D, L = cfg["hidden_size"] // H, cfg["num_hidden_layers"]
    start = 0 if past is None else past[0][0].size(2)
    total, theta, rs = start + T, cfg.get("rope_theta", 10000.0), cfg.get("rope_scaling") or {}
    kind = rs.get("type", rs.get("rope_type"))
    pos = torch.arange(start, total, dtype=torch.float64) / (rs["factor"] if kind == "linear" else 1.0)
    if kind == "dynamic" and total > cfg["max_position_embeddings"]:
        f = rs["factor"]
        theta = theta * (f * total / cfg["max_position_embeddings"] - (f - 1)) ** (D / (D - 2))
    ang = pos[:, None] / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)[None, :]
    cos, sin = torch.cos(ang), torch.sin(ang)

    def rope(x):
        a, b = x[..., : D // 2], x[..., D // 2:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)

    def norm(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.get("rms_norm_eps", 1e-5)) * w

    def mlp(p, h):
        if f"{p}mlp.gate.weight" not in sd:  # dense SwiGLU
            return (F.silu(h @ sd[p + "mlp.gate_proj.weight"].T) * (h @ sd[p + "mlp.up_proj.weight"].T)) \
                @ sd[p + "mlp.down_proj.weight"].T
        probs = torch.softmax(h @ sd[p + "mlp.gate.weight"].T, -1)  # MiniCPM-MoE: router `gate`, experts w1/w3/w2
        w, chosen = probs.topk(cfg["num_experts_per_tok"], -1)
        w = w / w.sum(-1, keepdim=True)
        out = torch.zeros_like(h)
        for e in range(cfg["num_experts"]):
            e_ = f"{p}mlp.experts.{e}."
            y = (F.silu(h @ sd[e_ + "w1.weight"].T) * (h @ sd[e_ + "w3.weight"].T)) @ sd[e_ + "w2.weight"].T
            out += y * (w * (chosen == e)).sum(-1, keepdim=True)
        return out

    r = cfg.get("scale_depth", 1.0) / math.sqrt(L)
    x = sd["model.embed_tokens.weight"][idx] * cfg.get("scale_emb", 1.0)
    mask = torch.full((T, total), float("-inf"), dtype=torch.float64).triu(start + 1)
    new_past = []
    for i in range(L):
        p = f"model.layers.{i}."
        h = norm(x, sd[p + "input_layernorm.weight"])
        q = rope((h @ sd[p + "self_attn.q_proj.weight"].T).view(B, T, H, D).transpose(1, 2))
        k = rope((h @ sd[p + "self_attn.k_proj.weight"].T).view(B, T, KV, D).transpose(1, 2))
        v = (h @ sd[p + "self_attn.v_proj.weight"].T).view(B, T, KV, D).transpose(1, 2)
        if past is not None:
            k, v = torch.cat([past[i][0], k], 2), torch.cat([past[i][1], v], 2)
        new_past.append((k, v))
        att = torch.softmax(q @ k.repeat_interleave(H // KV, 1).transpose(-1, -2) / math.sqrt(D) + mask, -1)
        y = (att @ v.repeat_interleave(H // KV, 1)).transpose(1, 2).reshape(B, T, H * D)
        x = x + r * (y @ sd[p + "self_attn.o_proj.weight"].T)
        x = x + r * mlp(p, norm(x, sd[p + "post_attention_layernorm.weight"]))
    head = sd["lm_head.weight"] if "lm_head.weight" in sd else sd["model.embed_tokens.weight"]
    m = cfg["hidden_size"] / cfg.get("dim_model_base", 1)
    return (norm(x, sd["model.norm.weight"]) / m) @ head.T, new_past


def official_greedy(sd, cfg, prompt, n):
    """Greedy decoding with the official KV cache: (tokens (B, T + n), logits of each new token (n, B, V))."""
    logits, past = official_forward(sd, cfg, prompt)
    out, steps = prompt, []
    for _ in range(n):
        steps.append(logits[:, -1])
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], 1)
        logits, past = official_forward(sd, cfg, nxt, past)
    return out, torch.stack(steps)

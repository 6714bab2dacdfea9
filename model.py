"""
MiniCPM, the model (paper §6.1; the muP scalings of §3.1; the MiniCPM-MoE layer of §7.3).

A Llama-style decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU, no biases) with the three muP
multipliers of MiniCPM, in the paper's / official config's names:

    h_0     = scale_emb * E[x]                                          # scale_emb = 12
    h_{l+1} = h_l + scale_depth / sqrt(L) * Attn(RMSNorm(h_l))          # scale_depth = 1.4, L = num_hidden_layers
    h_{l+1} = h'  + scale_depth / sqrt(L) * MLP(RMSNorm(h'))
    logits  = lm_head( RMSNorm(h_L) / m ),  m = hidden_size / dim_model_base   # dim_model_base = 256

and the muP initialisation: hidden matrices ~ N(0, (init_std / sqrt(m))^2), embedding ~ N(0, init_std^2).
`use_mup=False` builds the same network in standard parametrisation (m := 1 for init, logits and lr).
Module names equal the official checkpoint keys (model.layers.{i}.self_attn.q_proj, ...), so official
weights load with no renaming. The RoPE formulas (and the long-context bases) are in rope.py; `num_experts > 0`
makes every MLP a top-k mixture of experts (`MoE` below; its upcycling from a dense model is moe.py). Reading
and writing the released checkpoints' files is official.py's.
"""

import dataclasses
import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from rope import apply_rope, check_rope_scaling, rope_scaling_type, rope_tables


# ----------------------------------------------------------------------------------------------------------
# config


# the float fields of a config and their largest sensible value (a larger one overflows or means nothing)
POSITIVE_NUMBERS = dict(rms_norm_eps=0.1, rope_theta=1e12, scale_emb=1e4, scale_depth=1e3, init_std=10.0)


@dataclass
class MiniCPMConfig:
    vocab_size: int = 320  # byte-level tokenizer (256 bytes + specials) padded to a multiple of 64
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 2
    num_key_value_heads: int = 2
    intermediate_size: int = 320
    max_position_embeddings: int = 1024
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict = None  # None | {"type": "dynamic", "factor": f} | {"type": "ntk", "factor": s} (rope.py)
    scale_emb: float = 12.0  # paper §3.1 / official config: embedding output multiplier
    scale_depth: float = 1.4  # residual branches are scaled by scale_depth / sqrt(num_hidden_layers)
    dim_model_base: int = 256  # base width of the muP width multiplier m = hidden_size / dim_model_base
    init_std: float = 0.1  # official config: initializer_range
    tie_word_embeddings: bool = True
    use_mup: bool = True  # False: standard parametrisation (no width multiplier anywhere)
    # MiniCPM-MoE (paper §7.3): num_experts > 0 makes every MLP a top_k mixture of experts (MoE below)
    num_experts: int = 0
    top_k: int = 2
    router_aux_loss_coef: float = 0.01

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "intermediate_size", "max_position_embeddings", "dim_model_base"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"MiniCPMConfig.{name}={v!r}: must be a positive integer")
        for name in ("num_experts", "top_k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"MiniCPMConfig.{name}={v!r}: must be an integer >= 0")
        for name, most in POSITIVE_NUMBERS.items():  # finite, positive, and below what overflows the activations
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= most:
                raise ValueError(f"MiniCPMConfig.{name}={v!r}: must be a positive number <= {most:g}")
        if not (isinstance(self.router_aux_loss_coef, (int, float)) and 0 <= self.router_aux_loss_coef <= 1):
            raise ValueError(f"MiniCPMConfig.router_aux_loss_coef={self.router_aux_loss_coef!r}: must be in [0, 1]")
        for name in ("tie_word_embeddings", "use_mup"):
            if not isinstance(getattr(self, name), bool):  # the string "false" would read as true
                raise ValueError(f"MiniCPMConfig.{name}={getattr(self, name)!r}: must be true or false")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"MiniCPMConfig.num_attention_heads={self.num_attention_heads} does not divide "
                             f"hidden_size={self.hidden_size}: pick a head count that divides it")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"MiniCPMConfig.num_key_value_heads={self.num_key_value_heads} does not divide "
                             f"num_attention_heads={self.num_attention_heads}: pick a divisor of it")
        if self.num_experts < 0 or (self.num_experts and not 1 <= self.top_k <= self.num_experts):
            raise ValueError(f"MiniCPMConfig: top_k={self.top_k} must be within [1, num_experts={self.num_experts}] "
                             f"(and num_experts >= 0; 0 is the dense model)")
        check_rope_scaling(self.rope_scaling)
        if self.head_dim % 2:
            raise ValueError(f"MiniCPMConfig: head_dim = hidden_size / num_attention_heads = {self.head_dim} is "
                             f"odd, RoPE needs it even: change hidden_size or num_attention_heads")

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    @property
    def max_length(self):
        """The longest sequence the model accepts: max_position_embeddings, times the factor of a `dynamic`
        rope_scaling (whose base grows past max_position_embeddings, longctx.py)."""
        if rope_scaling_type(self.rope_scaling) == "dynamic":
            return int(self.max_position_embeddings * self.rope_scaling["factor"])
        return self.max_position_embeddings

    @property
    def width_mult(self):
        """m = hidden_size / dim_model_base (paper §3.1); 1 in standard parametrisation."""
        return self.hidden_size / self.dim_model_base if self.use_mup else 1.0

    @classmethod
    def from_preset(cls, name, **overrides):
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


def ladder(width, layers, vocab=320):
    """The shape of a wind-tunnel model of a given width, the one rule every experiment uses: head_dim 64 (2 heads
    below width 128), intermediate_size = 2.5 x width rounded down to a multiple of 16 (MiniCPM-2.4B: 5760 / 2304)."""
    heads = max(2, width // 64)
    return dict(vocab_size=vocab, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=heads, intermediate_size=max(16, int(2.5 * width) // 16 * 16))


def ladder_keys(width, layers):
    """train.py's model keys of a ladder shape, the vocabulary left to the preset / data."""
    return {k: v for k, v in ladder(width, layers).items() if k != "vocab_size"}


PRESETS = {
    # the released models (paper §6.1 / the official config.json files)
    "minicpm-2.4b": dict(vocab_size=122753, hidden_size=2304, num_hidden_layers=40, num_attention_heads=36,
                         num_key_value_heads=36, intermediate_size=5760, max_position_embeddings=4096),
    "minicpm-1.2b": dict(vocab_size=73440, hidden_size=1536, num_hidden_layers=52, num_attention_heads=24,
                         num_key_value_heads=8, intermediate_size=3840, max_position_embeddings=4096),
    # the wind-tunnel ladder (named by non-embedding size, as the paper's 0.009B ... 0.3B models)
    "tiny": ladder(128, 4),
    "wt-9m": ladder(256, 12),
    "wt-36m": ladder(512, 12),
    "wt-0.1b": ladder(768, 16),
    "wt-0.3b": ladder(1024, 24),
}


def model_config(run_config):
    """The MiniCPMConfig of a train.py config dict: its `preset`, overridden by every model key that is not None."""
    if not isinstance(run_config, dict):
        raise ValueError(f"a run's config must be a dict of keys, not {type(run_config).__name__}")
    overrides = {f.name: run_config[f.name] for f in fields(MiniCPMConfig) if run_config.get(f.name) is not None}
    preset = run_config.get("preset")
    return MiniCPMConfig.from_preset(preset, **overrides) if preset else MiniCPMConfig(**overrides)


# ----------------------------------------------------------------------------------------------------------
# layers


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 (as the official code), weight applied in the input dtype."""

    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):  # one fused kernel in fp32 (the .float() calls are no-ops for fp32 inputs)
        return F.rms_norm(x.float(), (x.size(-1),), self.weight.float(), self.eps).type_as(x)


class KVCache:
    """Preallocated keys/values for every layer, (n_layers, B, n_kv_heads, max_len, head_dim), and the RoPE
    tables of all max_len positions, computed once per generation instead of once per token (except under a
    `dynamic` rope_scaling, whose base changes with the length: each forward computes its own, rope.py)."""

    def __init__(self, config, batch_size, max_len, device, dtype):
        shape = (config.num_hidden_layers, batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.cos = self.sin = None
        if rope_scaling_type(config.rope_scaling) != "dynamic":
            self.cos, self.sin = rope_tables(config, 0, max_len, device)

    def update(self, layer, start, k, v):
        end = start + k.size(2)
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class Attention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv, self.hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        d = config.hidden_size
        self.q_proj = nn.Linear(d, self.n_head * self.hd, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv * self.hd, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.n_head * self.hd, d, bias=False)

    def forward(self, x, cos, sin, cache=None, start=0):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask, causal = None, True
        if cache is not None:
            k, v = cache.update(self.layer_idx, start, k, v)
            if start > 0:  # one new token sees every cached key; a chunk's query i sees keys 0 .. start + i
                causal = False
                if T > 1:
                    mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
        # softmax scale 1/sqrt(head_dim): the standard scale, not muP's 1/head_dim (head_dim is 64 at every size)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           enable_gqa=self.n_kv != self.n_head)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.hd))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        d, f = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoE(nn.Module):
    """MiniCPM-MoE's sparse MLP (paper §7.3): a router and E SwiGLU experts; per token x

        p = softmax(W_router x),  K = top_k(p),  y = sum_{i in K} p_i / (sum_{j in K} p_j) * Expert_i(x)

    Expert weights are stacked (E, out, in), so the optimizer, FSDP and checkpoints see three tensors per layer as
    for the dense MLP. Dispatch is dropless: token slots are sorted by expert, each expert runs one matmul on its
    contiguous group, and the results are scattered back with their weights (a loop over experts, never over
    tokens). Returns (y, router logits); the logits feed the balancing loss and the load statistics."""

    def __init__(self, config):
        super().__init__()
        E, d, f = config.num_experts, config.hidden_size, config.intermediate_size
        self.num_experts, self.top_k = E, config.top_k
        self.router = nn.Linear(d, E, bias=False)
        self.gate_proj = nn.Parameter(torch.empty(E, f, d))
        self.up_proj = nn.Parameter(torch.empty(E, f, d))
        self.down_proj = nn.Parameter(torch.empty(E, d, f))

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits = self.router(x)
        probs = F.softmax(logits.float(), dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)  # (N, k)
        weights = (weights / weights.sum(-1, keepdim=True)).to(x.dtype)
        # group the N*k token slots by expert: slot s = token s // k routed to experts.view(-1)[s]
        flat = experts.view(-1)
        order = flat.argsort(stable=True)
        token = order // self.top_k
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        outs = []
        for e, h in enumerate(x[token].split(counts)):  # one contiguous group of token slots per expert
            if len(h):
                outs.append(F.linear(F.silu(F.linear(h, self.gate_proj[e])) * F.linear(h, self.up_proj[e]),
                                     self.down_proj[e]))
        out = torch.cat(outs) * weights.view(-1)[order, None]
        y = torch.zeros_like(x).index_add_(0, token, out)
        return y.view(shape), logits


def load_balancing_loss(router_logits, top_k):
    """Switch/Mixtral auxiliary loss aux = E * sum_i f_i P_i for router logits (tokens, E), or a sequence of them
    (one per layer, concatenated); f_i: fraction of the token slots routed to expert i, P_i: mean router probability.
    1 when balanced, ~E/k when collapsed onto k experts."""
    if isinstance(router_logits, (list, tuple)):
        router_logits = torch.cat(router_logits)
    E = router_logits.size(-1)
    probs = F.softmax(router_logits.float(), dim=-1)
    chosen = probs.topk(top_k, dim=-1).indices
    f = F.one_hot(chosen, E).sum(1).float().mean(0) / top_k  # fraction of token slots per expert (sums to 1)
    P = probs.mean(0)
    return E * (f * P).sum()


@torch.no_grad()
def expert_load(router_logits, top_k):
    """Fraction of the token slots each expert received, over all layers' router logits: (E,)."""
    logits = torch.cat(router_logits) if isinstance(router_logits, (list, tuple)) else router_logits
    load = torch.bincount(logits.topk(top_k, -1).indices.view(-1), minlength=logits.size(-1)).float()
    return load / load.sum()


class DecoderLayer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MoE(config) if config.num_experts else MLP(config)
        # depth muP (paper §3.1): each residual branch is scaled by scale_depth / sqrt(L)
        self.residual_scale = config.scale_depth / math.sqrt(config.num_hidden_layers)

    def forward(self, x, cos, sin, cache=None, start=0):
        """(the block's output, the router logits of an MoE layer or None)."""
        x = torch.add(x, self.self_attn(self.input_layernorm(x), cos, sin, cache, start), alpha=self.residual_scale)
        y = self.mlp(self.post_attention_layernorm(x))
        y, router_logits = y if isinstance(y, tuple) else (y, None)
        return torch.add(x, y, alpha=self.residual_scale), router_logits


# ----------------------------------------------------------------------------------------------------------
# the model


def config_params(config):
    """The total parameter count of the model of `config`, from its shapes alone (nothing is built)."""
    c, kv = config, config.num_key_value_heads * config.head_dim
    mlp = 3 * c.hidden_size * c.intermediate_size * max(1, c.num_experts) + c.num_experts * c.hidden_size
    layer = c.hidden_size * (2 * c.hidden_size + 2 * kv) + mlp + 2 * c.hidden_size
    head = 0 if c.tie_word_embeddings else c.vocab_size * c.hidden_size
    return c.vocab_size * c.hidden_size + head + c.num_hidden_layers * layer + c.hidden_size


class MiniCPM(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = nn.Module()  # an extra level so that parameter names equal the official keys
        self.model.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.model.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.model.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size,
                                                                         bias=False)
        # recompute each block in the backward pass instead of storing its activations (train.py
        # --activation_checkpointing): memory per layer drops to the block's input, for ~1/3 more compute
        self.activation_checkpointing = False
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """muP init (paper §3.1): hidden matrices N(0, (init_std/sqrt(m))^2); embedding (and an untied head,
        which plays the embedding's role) N(0, init_std^2); norms 1."""
        std, hidden_std = self.config.init_std, self.config.init_std / math.sqrt(self.config.width_mult)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            elif self.is_embedding(name):
                p.normal_(0.0, std)
            else:
                p.normal_(0.0, hidden_std)

    @staticmethod
    def is_embedding(param_name):
        return param_name in ("model.embed_tokens.weight", "lm_head.weight")

    def num_params(self, non_embedding=True):
        return sum(p.numel() for n, p in self.named_parameters() if not (non_embedding and self.is_embedding(n)))

    def describe(self):
        """Parameter counts and the muP width multiplier, in one line (train.py prints it at the start)."""
        c = self.config
        line = (f"model: {self.num_params() / 1e6:.2f}M non-embedding params ({self.num_params(False) / 1e6:.2f}M "
                f"total), m = {c.width_mult:g}")
        if c.num_experts:
            line += f", MoE {c.num_experts} experts top-{c.top_k}: {self.num_active_params() / 1e6:.2f}M active"
        return line

    def num_active_params(self):
        """Non-embedding parameters a token uses: an MoE token runs top_k of the E experts (and the router)."""
        c = self.config
        return self.num_params() - c.num_hidden_layers * max(0, c.num_experts - c.top_k) * 3 * c.hidden_size * \
            c.intermediate_size

    def head_weight(self):
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def hidden_states(self, idx, cache=None, start=0):
        """(final normed hidden state divided by m, the input of the (tied or untied) head; the router logits of
        every MoE layer, an empty tuple for the dense model)."""
        B, T = idx.shape
        if start + T > self.config.max_length:
            raise ValueError(f"sequence of {start + T} tokens is longer than the model supports "
                             f"(max_position_embeddings={self.config.max_position_embeddings}, rope_scaling="
                             f"{self.config.rope_scaling}): shorten the input or extend the context (longctx.py)")
        if cache is not None and cache.cos is not None:
            cos, sin = cache.cos[start:start + T], cache.sin[start:start + T]
        else:  # (a dynamic base: that of the total length start + T, as the official decoder)
            cos, sin = rope_tables(self.config, start, T, idx.device)
        x = self.model.embed_tokens(idx) * self.config.scale_emb  # paper §3.1: scale_emb on the embedding output
        router_logits = []
        for layer in self.model.layers:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x, r = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x, r = layer(x, cos, sin, cache, start)
            if r is not None:
                router_logits.append(r)
        # paper §3.1: the output is divided by the width multiplier m before the head
        return self.model.norm(x) / self.config.width_mult, tuple(router_logits)

    def forward(self, idx, targets=None, output_router_logits=False):
        """(logits, loss) with loss the mean cross-entropy over targets != -100 (None without targets); with
        output_router_logits=True also the router logits of every MoE layer (a tuple, empty for a dense model),
        from which the trainer adds router_aux_loss_coef * load_balancing_loss to its objective (paper §7.3).
        The returned loss is always the pure cross-entropy: what evaluation reports."""
        h, router_logits = self.hidden_states(idx)
        logits = F.linear(h, self.head_weight())
        loss = None
        if targets is not None:  # targets -100 are ignored (prompt tokens in SFT / DPO)
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return (logits, loss, router_logits) if output_router_logits else (logits, loss)

    def with_config(self, **changes):
        """A new model holding these weights under the config with `changes`: a RoPE base, scaling or length limit
        (the tensors are shared), or tie_word_embeddings=False (an output head of its own, starting as a copy of the
        embedding: paper §7.2 unties before the long-context stage). Changes that reshape weights are an error."""
        config = dataclasses.replace(self.config, **changes)
        if config.tie_word_embeddings and not self.config.tie_word_embeddings:
            raise ValueError("with_config cannot tie an untied head (the two matrices differ)")
        state = self.state_dict()
        if not config.tie_word_embeddings and self.config.tie_word_embeddings:
            state = untie_state_dict(state)
        with torch.device("meta"):
            new = MiniCPM(config)
        try:
            new.load_state_dict(state, assign=True)
        except RuntimeError as e:
            raise ValueError(f"with_config({', '.join(changes)}): the weights no longer fit ({str(e).splitlines()[0]})"
                             ) from None
        new.activation_checkpointing = self.activation_checkpointing
        return new.train(self.training)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, eos_token_id=None):
        """Sample max_new_tokens after idx (B, T) with a KV cache; top_k=1 (or temperature=0) is greedy."""
        B, T = idx.shape
        total = T + max_new_tokens
        if total > self.config.max_length:
            raise ValueError(f"prompt of {T} tokens + max_new_tokens={max_new_tokens} = {total} exceeds the "
                             f"{self.config.max_length} tokens the model supports (max_position_embeddings="
                             f"{self.config.max_position_embeddings}): shorten the prompt or ask for fewer tokens")
        if max_new_tokens <= 0:
            return idx
        dtype = self.model.embed_tokens.weight.dtype
        if torch.is_autocast_enabled(idx.device.type):
            dtype = torch.get_autocast_dtype(idx.device.type)
        cache = KVCache(self.config, B, total, idx.device, dtype)
        out = torch.empty(B, total, dtype=idx.dtype, device=idx.device)
        out[:, :T] = idx
        x, start = idx, 0
        for i in range(max_new_tokens):
            h = self.hidden_states(x, cache, start)[0][:, -1]
            logits = F.linear(h, self.head_weight()).float()
            start += x.size(1)
            if top_k == 1 or temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                scaled = logits / temperature
                if not torch.isfinite(scaled).all():  # a tiny temperature overflows: the same ranking, from 0 down
                    scaled = (logits - logits.max(-1, keepdim=True).values) / temperature
                logits = scaled
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                nxt = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            out[:, start] = nxt[:, 0]
            x = nxt
            if eos_token_id is not None and (out[:, T:start + 1] == eos_token_id).any(1).all():
                return out[:, :start + 1]
        return out


def untie_state_dict(state):
    """A tied model's weights with an output head of its own, a copy of the embedding (paper §7.2)."""
    return {**state, "lm_head.weight": state["model.embed_tokens.weight"].clone()}


def main():
    """`python model.py`: the presets, their shapes and parameter counts (on the meta device: no memory used)."""
    print(f"{'preset':14s}{'hidden':>8s}{'layers':>8s}{'heads':>7s}{'kv':>5s}{'ffn':>7s}{'vocab':>8s}"
          f"{'non-embedding':>16s}{'total':>16s}")
    for name in PRESETS:
        c = MiniCPMConfig.from_preset(name)
        with torch.device("meta"):
            m = MiniCPM(c)
        print(f"{name:14s}{c.hidden_size:8d}{c.num_hidden_layers:8d}{c.num_attention_heads:7d}"
              f"{c.num_key_value_heads:5d}{c.intermediate_size:7d}{c.vocab_size:8d}{m.num_params():16,d}"
              f"{m.num_params(False):16,d}")
    print("\nMiniCPM(MiniCPMConfig.from_preset(name)) builds one; python train.py --preset=NAME trains one.")


if __name__ == "__main__":
    main()

"""
The released checkpoints' format, at the boundary: reading and writing official MiniCPM directories (config.json +
model.safetensors / pytorch_model.bin, single or sharded) and exporting to a plain Llama. model.py is the
architecture; this file is the only one that knows the official file layout.

    model = from_pretrained("MiniCPM-1B-sft-bf16")   # tied or untied, dense or MiniCPM-MoE in the released layout
    save_pretrained(model, "out_official")           # what the official modeling code (and vLLM) loads
    save_pretrained(model, "out", source="MiniCPM-1B-sft-bf16")  # + the source's config fields and other files
    export_llama(model, "out_llama")                 # the same function as a LlamaForCausalLM (multipliers folded)

Nothing loaded runs code: safetensors, or pytorch_model.bin through torch.load(weights_only=True).
"""

import math
import os
from dataclasses import asdict, fields

import torch

from tokenizer import TOKENIZER_EXTRAS, TOKENIZER_FILES, copy_file, save_tokenizer
from files import check_regular, make_dirs, read_json, replace_atomically, write_json
from model import MiniCPM, MiniCPMConfig
from rope import rope_base, rope_scaling_type


def from_pretrained(path, dtype=torch.float32, device="cpu"):
    """Load an official-format MiniCPM directory (tied or untied, single file or sharded with an index; dense
    or MiniCPM-MoE in the released layout)."""
    config = config_from_json(path)
    raw = read_weights(path)
    check_weights(raw, path)
    state = from_official_layout(raw, config)
    with torch.device("meta"):
        model = MiniCPM(config)
    check_state_dict(model, state, path)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, assign=True)
    return model.to(device)


def save_pretrained(model, path, source=None):
    """Write the official MiniCPM format, config.json + model.safetensors (or pytorch_model.bin), so that the
    official modeling code (and vLLM) computes the same logits: see official_config. `source`: the official
    directory the model was trained on from: config.json keeps its other fields (auto_map, token ids ...) and its
    other files (modeling code, generation_config.json ...) are copied beside (its tokenizer: save_tokenizer)."""
    config = official_config(model.config, model.head_weight().dtype)
    if source:
        config = {**read_config_json(source), **config}
        make_dirs(path)
        for f in other_files(source):
            copy_file(os.path.join(source, f), os.path.join(path, f))
    write_weights(path, to_official_layout({k: v.detach() for k, v in model.state_dict().items()}), config)


def is_official_dir(path):
    """Whether path is an official-format directory (config.json and weights), not a train.py out_dir."""
    return os.path.isfile(os.path.join(path, "config.json")) and \
        any(os.path.isfile(os.path.join(path, f)) for f in WEIGHT_FILES)


def other_files(path):
    """The files of an official directory that are neither its weights, its config.json nor its tokenizer: its
    modeling code, generation_config.json, README ... (top level; hidden files left)."""
    skip = {"config.json", *WEIGHT_FILES, *TOKENIZER_FILES, *TOKENIZER_EXTRAS}
    return sorted(f for f in os.listdir(path) if os.path.isfile(os.path.join(path, f)) and f not in skip
                  and not os.path.islink(os.path.join(path, f))  # (a link may point anywhere: a private key)
                  and not f.startswith(".") and not f.endswith((".safetensors", ".bin", ".pt", ".index.json")))


def official_config(c, dtype=torch.float32):
    """config.json of a MiniCPMConfig, in the official code's terms. What it has no field for is written as its
    equivalent: standard parametrisation (use_mup=False) as dim_model_base = hidden_size (so the official logits
    divide by m = 1), an `ntk` rope_scaling as the static rope_theta it amounts to, top_k as num_experts_per_tok."""
    cfg = {"architectures": ["MiniCPMForCausalLM"], "model_type": "minicpm", "hidden_act": "silu",
           "initializer_range": c.init_std, "torch_dtype": str(dtype).replace("torch.", ""),
           **{k: v for k, v in asdict(c).items() if k not in ("init_std", "top_k", "use_mup")}}
    if not c.use_mup:
        cfg["dim_model_base"] = c.hidden_size
    if rope_scaling_type(c.rope_scaling) == "ntk":
        cfg.update(rope_theta=rope_base(c, 0), rope_scaling=None)
    if c.num_experts:
        cfg["num_experts_per_tok"] = c.top_k
    return cfg


# the released MiniCPM-MoE layout: a router `mlp.gate` and per-expert w1 (gate), w3 (up), w2 (down); in memory the
# experts are stacked (E, out, in) and the router is `mlp.router`. Converted here, at the boundary, and nowhere else.
_EXPERT_NAMES = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}


def to_official_layout(state):
    out = {}
    for k, v in state.items():
        prefix, _, name = k.rpartition(".mlp.")
        if prefix and name == "router.weight":
            out[f"{prefix}.mlp.gate.weight"] = v
        elif prefix and name in _EXPERT_NAMES:  # stacked experts (E, out, in); a dense MLP's is `gate_proj.weight`
            for e in range(v.size(0)):
                out[f"{prefix}.mlp.experts.{e}.{_EXPERT_NAMES[name]}.weight"] = v[e].clone()
        else:
            out[k] = v
    return out


def from_official_layout(state, config):
    if not config.num_experts:
        return state
    out = {k: v for k, v in state.items() if ".mlp.experts." not in k and not k.endswith(".mlp.gate.weight")}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}.mlp"
        if f"{p}.gate.weight" in state:
            out[f"{p}.router.weight"] = state[f"{p}.gate.weight"]
        for ours, theirs in _EXPERT_NAMES.items():
            experts = [state.get(f"{p}.experts.{e}.{theirs}.weight") for e in range(config.num_experts)]
            if all(w is not None for w in experts):
                out[f"{p}.{ours}"] = torch.stack(experts)
    return out


# official config.json fields that map onto MiniCPMConfig under another name
_CONFIG_ALIASES = {"initializer_range": "init_std", "num_experts_per_tok": "top_k"}


def read_config_json(path):
    """The dict of an official directory's config.json, or one line of error."""
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file} not found: from_pretrained needs a directory with config.json and weights")
    raw = read_json(file, None, "re-download or re-export the checkpoint")
    if not isinstance(raw, dict):
        raise ValueError(f"{file} holds a {type(raw).__name__}, not a config object: re-download or re-export it")
    return raw


def config_from_json(path):
    """The MiniCPMConfig of an official directory's config.json."""
    file, raw = os.path.join(path, "config.json"), read_config_json(path)
    names = {f.name for f in fields(MiniCPMConfig)}
    kw = {_CONFIG_ALIASES.get(k, k): v for k, v in raw.items() if _CONFIG_ALIASES.get(k, k) in names}
    kw.setdefault("tie_word_embeddings", True)  # the official MiniCPM config's defaults
    if "num_attention_heads" in kw:
        kw.setdefault("num_key_value_heads", kw["num_attention_heads"])
    try:
        return MiniCPMConfig(**kw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{file}: {e}") from None


# the weight files of an official directory, in the order read_weights looks for them
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def read_weights(path):
    """State dict of an HF-style directory: model.safetensors / pytorch_model.bin, or their sharded index."""
    for name in WEIGHT_FILES:
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            continue
        if not name.endswith(".index.json"):
            return _read_weight_file(file)
        weight_map = read_index(file)
        state = {}
        for shard in sorted(set(weight_map.values())):
            part = _read_weight_file(os.path.join(path, shard))
            for k in part:
                if weight_map.get(k) != shard:
                    raise ValueError(f"{file}: {shard} holds {k}, which the index puts in "
                                     f"{weight_map.get(k, 'no shard')}: the shards and the index do not match")
            state.update(part)
        lost = sorted(set(weight_map) - set(state))
        if lost:
            raise ValueError(f"{file}: the index lists {_some(lost)}, which no shard holds: the download is incomplete")
        return state
    raise FileNotFoundError(f"no weights in {path}: expected model.safetensors or pytorch_model.bin "
                            f"(or their .index.json for sharded checkpoints)")


def read_index(file):
    """The weight_map {key: shard file name} of a sharded checkpoint's index, checked: every shard a plain file name
    in the index's own directory (never a path that leaves it)."""
    weight_map = read_json(file, dict, "re-download it").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{file} has no weight_map object: re-download it")
    for k, shard in weight_map.items():
        if not isinstance(shard, str) or shard != os.path.basename(shard) or shard in ("", ".", ".."):
            raise ValueError(f"{file}: the shard of {k} is {shard!r}, not a file name in its directory: the index is "
                             f"damaged or not from a checkpoint; re-download it")
    return weight_map


def check_weights(state, where):
    """Released weights are floating-point and finite: an integer tensor would be cast, a NaN or inf would score
    nan without a word."""
    for k, v in state.items():
        if not v.is_floating_point():
            raise ValueError(f"{where}: {k} is {str(v.dtype).replace('torch.', '')}, not floating point: these are "
                             f"not a model's weights (quantized checkpoints are not read)")
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{where}: {k} holds NaN or inf: the file is damaged; re-download it")


def _read_weight_file(file):
    if not os.path.exists(file):
        raise FileNotFoundError(f"{file} not found (listed in the checkpoint's index): the download is incomplete")
    check_regular(file)
    if file.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ImportError(f"{file} is a safetensors file: pip install safetensors to read it") from None
        try:
            return load_file(file)
        except Exception as e:
            raise ValueError(f"{file} could not be read ({type(e).__name__}: {e}): the file is corrupt") from None
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{file} could not be read ({type(e).__name__}: {str(e).splitlines()[0]}): "
                         f"the file is corrupt or truncated") from None


def write_weights(path, state, config_json):
    """Write config.json + weights (safetensors when installed) into path, each file atomically; a failed write (a
    full disk) is one WriteError line with no partial file left."""
    make_dirs(path)
    state = {k: v.contiguous() for k, v in state.items()}
    need = sum(v.numel() * v.element_size() for v in state.values())
    try:
        from safetensors.torch import save_file
    except ImportError:
        replace_atomically(os.path.join(path, "pytorch_model.bin"), lambda f: torch.save(state, f), need=need)
    else:
        # (save_file takes a path; a full disk there is an OSError or safetensors' own SafetensorError)
        replace_atomically(os.path.join(path, "model.safetensors"),
                           lambda tmp: save_file(state, tmp, metadata={"format": "pt"}), mode=None, need=need,
                           errors=(Exception,))
    write_json(os.path.join(path, "config.json"), config_json, indent=2)


def check_state_dict(model, state, where):
    """One clear line for missing keys, unexpected keys or shape mismatches."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and not k.endswith("rotary_emb.inv_freq")]
    for k in unexpected:  # official tied checkpoints sometimes also carry lm_head.weight equal to the embedding
        if k == "lm_head.weight" and model.lm_head is None:
            if not torch.equal(state[k], state.get("model.embed_tokens.weight", state[k] + 1)):
                raise ValueError(f"{where}: lm_head.weight differs from the embedding but config.json says "
                                 f"tie_word_embeddings=true: set it to false")
            state.pop(k)
    unexpected = [k for k in unexpected if k in state]
    if missing:
        raise ValueError(f"{where}: missing keys {_some(missing)}: the weights do not belong to this config.json")
    if unexpected:
        raise ValueError(f"{where}: unexpected keys {_some(unexpected)}: the weights do not belong to this "
                         f"config.json (a different architecture?)")
    for k, shape in expected.items():
        if tuple(state[k].shape) != tuple(shape):
            raise ValueError(f"{where}: {k} has shape {tuple(state[k].shape)} but config.json implies "
                             f"{tuple(shape)}: the config and the weights do not match")
    for k in list(state):
        if k.endswith("rotary_emb.inv_freq"):
            state.pop(k)


def _some(keys, n=3):
    return ", ".join(keys[:n]) + (f" (and {len(keys) - n} more)" if len(keys) > n else "")


# ----------------------------------------------------------------------------------------------------------
# export to plain Llama (dense) and Mixtral (MiniCPM-MoE)


def llama_state_dict(model):
    """The same function as a plain Llama (no multipliers): scale_emb folded into the embedding,
    scale_depth/sqrt(L) into o_proj/down_proj (every expert's, for a MoE), 1/m into an untied lm_head."""
    c = model.config
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().clone()
        if k == "model.embed_tokens.weight":
            v = v * c.scale_emb
        elif k.endswith(("o_proj.weight", "down_proj.weight", "mlp.down_proj")):  # (the last: stacked experts)
            v = v * (c.scale_depth / math.sqrt(c.num_hidden_layers))
        out[k] = v
    out["lm_head.weight"] = model.head_weight().detach() / c.width_mult
    return out


def mixtral_state_dict(model):
    """A MiniCPM-MoE model as Mixtral's weights, in the layout its released checkpoints use (transformers converts
    it on load): llama_state_dict's folding, then the official MoE layout (the router `gate`, experts w1 / w3 / w2:
    the same names) under `block_sparse_moe`. Mixtral routes as MiniCPM-MoE does: softmax over the experts, the
    top-k kept and renormalised."""
    return {k.replace(".mlp.", ".block_sparse_moe."): v for k, v in to_official_layout(llama_state_dict(model)).items()}


def export_llama(model, path, tokenizer=None):
    """Write a checkpoint transformers loads as it is, computing exactly this model's logits: a dense model as a
    LlamaForCausalLM, a MiniCPM-MoE model as a MixtralForCausalLM (the multipliers folded into the weights); and
    the tokenizer `tokenizer` names (ours, or a checkpoint directory's: tokenizer.save_tokenizer) beside it."""
    c = model.config
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
           "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
           "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
           "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim,
           "max_position_embeddings": c.max_position_embeddings, "rms_norm_eps": c.rms_norm_eps,
           # ntk scaling is a fixed base: export it as rope_theta; dynamic and linear have their Llama equivalents
           "rope_theta": rope_base(c, 0) if rope_scaling_type(c.rope_scaling) != "dynamic" else c.rope_theta,
           "rope_scaling": {"rope_type": rope_scaling_type(c.rope_scaling), "factor": c.rope_scaling["factor"]}
           if rope_scaling_type(c.rope_scaling) in ("dynamic", "linear") else None, "tie_word_embeddings": False,
           "attention_bias": False, "mlp_bias": False, "initializer_range": c.init_std,
           "torch_dtype": str(model.head_weight().dtype).replace("torch.", "")}
    if c.num_experts:
        cfg.update(architectures=["MixtralForCausalLM"], model_type="mixtral", num_local_experts=c.num_experts,
                   num_experts_per_tok=c.top_k, router_aux_loss_coef=c.router_aux_loss_coef, sliding_window=None,
                   router_jitter_noise=0.0)
        write_weights(path, mixtral_state_dict(model), cfg)
    else:
        write_weights(path, llama_state_dict(model), cfg)
    if tokenizer:
        save_tokenizer(tokenizer, path)

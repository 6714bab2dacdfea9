"""
The checks that protect a run, each named by what it guards: train.py calls them and a reader may skip them.

- the model keys a run inherits from the checkpoint it continues or starts from (inherited_model_keys);
- the data against the model: tokenizer, vocabulary, longest example, length (load_run_data, check_tokenizer);
- a resume: the checkpoint is this run's, on the same data, config and trainer version (read_source, resume_from,
  check_same_data);
- a new stage from another checkpoint: a WSD branch, a context extension, sparse upcycling or a released checkpoint,
  and nothing else (start_from).
"""

import os
from dataclasses import asdict, fields

import numpy as np
import torch

from checkpoint import (DCP_DIR, CheckpointError, StartPoint, dcp_train_state, first_line, load_checkpoint, load_dcp,
                        load_full_state, load_state, read_start_point, stored_config)
from configurator import ConfigError
from corpus import MixtureData, TokenData, load_data, load_eval_sets
from dpo import PreferenceData
from longctx import passkey_document
from model import MiniCPMConfig, untie_state_dict
from model import model_config as _model_config
from moe import upcycle_optimizer_state, upcycle_state_dict
from mup import named_optimizer_state
from tokenizer import data_tokenizer_id

# the numbers a config gives change with this version (step s trains at lr(s)): checkpoints and sweep results of
# another version are not continued or reused as if they were this one's
TRAINER_VERSION = 2
MODEL_KEYS = [f.name for f in fields(MiniCPMConfig)]
MOE_KEYS = {"num_experts", "top_k", "router_aux_loss_coef"}
CONTEXT_KEYS = {"rope_theta", "rope_scaling", "max_position_embeddings", "tie_word_embeddings"}
# keys that may change when resuming without changing the run's numbers
RESUMABLE_CHANGES = {"out_dir", "resume", "overwrite", "eval_interval", "eval_steps", "eval_seed", "eval_rows",
                     "ckpt_interval", "sample_tokens", "device", "dtype", "compile", "activation_checkpointing",
                     "keep_ckpts"}
# may change on resume when the global batch (batch_size x grad_accum x world size) stays the same
SPLIT_KEYS = {"batch_size", "grad_accum"}


def inherited_model_keys(cfg):
    """A run that continues a checkpoint (resume=True: its own) or starts from one (init_from: another run's, or a
    released checkpoint's config.json) has its model: the model keys not given come from it (the preset is then
    not used); those given are a new stage's transition (upcycling, a new RoPE) or are checked on resume."""
    src = cfg["out_dir"] if cfg["resume"] else cfg["init_from"]
    stored = stored_config(src) if src else None
    if not isinstance(stored, dict):
        return cfg
    if not cfg["resume"]:  # another model's keys, its preset resolved
        try:
            stored = asdict(model_config(stored))
        except ConfigError:
            return cfg  # (start_from says what is wrong with it)
    return {**cfg, **{k: stored.get(k) for k in MODEL_KEYS if cfg[k] is None}}


def check_objective(cfg):
    """DPO trains a policy from init_from on preference pairs, with none of the token stream's options."""
    if cfg["objective"] not in ("lm", "dpo"):
        raise ConfigError(f"config key objective={cfg['objective']!r}: use lm or dpo")
    if cfg["objective"] != "dpo":
        return
    if not cfg["init_from"] or not cfg["data"]:
        raise ConfigError("DPO needs --init_from (the SFT out_dir or checkpoint) and --data (a preference .jsonl)")
    mixed = [k for k in ("decay_data", "eval_data", "fsdp", "update_stats") if cfg[k]]
    if cfg["long_ratio"] < 1:
        mixed.append("long_ratio")
    if cfg["passkey_ratio"] > 0:
        mixed.append("passkey_ratio")
    if mixed:
        raise ConfigError(f"objective=dpo trains on preference pairs: drop {', '.join(mixed)}")


def load_preference_data(cfg, mcfg, source):
    """The preference pairs of a DPO run (dpo.PreferenceData), under the tokenizer of the model it starts from or
    continues (`source`), checked against the model's vocabulary and length."""
    try:
        data = PreferenceData(cfg["data"], source.tokenizer, cfg["seq_len"])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if mcfg.vocab_size < data.vocab_size:
        raise ConfigError(f"vocab_size={mcfg.vocab_size} is smaller than the pairs' tokenizer vocabulary "
                          f"({data.vocab_size}, {data.meta['tokenizer']})")
    check_positions(cfg, mcfg)
    return data


def model_config(cfg):
    """The MiniCPMConfig of a config dict (model.model_config), a bad value as one ConfigError line."""
    try:
        return _model_config(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def config_diff(a, b, ignore=()):
    return sorted(k for k in set(a) | set(b) if k not in ignore and a.get(k) != b.get(k))


def load_run_data(cfg, mcfg, source=None):
    """(data, decay_data or None, {eval_data name: data}) of a run, checked against the model: its tokenizer (that
    of the checkpoint it continues or starts from, `source`; .jsonl rows are tokenized with it), vocabulary, longest
    example, length."""
    tokenizer = source.tokenizer if source else None
    try:
        data = load_data(cfg["data"], tokenizer)
        decay_data = load_data(cfg["decay_data"], tokenizer or data.meta["tokenizer"]) if cfg["decay_data"] else None
        eval_sets = load_eval_sets(cfg["eval_data"], data, cfg["seq_len"] + 1)
    except ValueError as e:
        raise ConfigError(f"data: {e}") from None
    for d in (data, decay_data, *eval_sets.values()):
        check_tokenizer(d, source)
    if (isinstance(data, MixtureData) or decay_data) and (cfg["long_ratio"] < 1 or cfg["passkey_ratio"] > 0):
        raise ConfigError("long_ratio / passkey_ratio build rows from one token source: drop them or the mixture")
    for d in (data, decay_data) if decay_data else (data,):
        try:
            d.check_length(cfg["seq_len"] + 1)
        except ValueError as e:
            raise ConfigError(f"data: {e}") from None
        if getattr(d, "longest", 0) > cfg["seq_len"] + 1:
            raise ConfigError(f"data {d.spec!r} has an example of {d.longest} tokens: raise seq_len to at least "
                              f"{d.longest - 1}")
        if mcfg.vocab_size < d.vocab_size:
            raise ConfigError(f"vocab_size={mcfg.vocab_size} is smaller than the data's tokenizer vocabulary "
                              f"({d.vocab_size}, {d.meta['tokenizer']}): set --vocab_size={d.vocab_size}")
    if cfg["sample_tokens"] > 0:  # the end-of-run sample needs the tokenizer: a missing one is found now
        try:
            data.encoding()
        except (ValueError, RuntimeError) as e:
            raise ConfigError(f"data: {e} (or --sample_tokens=0: the end-of-run sample is what needs it)") from None
    if cfg["passkey_ratio"] > 0:  # a passkey document must fit a row: found now, not at the first step
        try:
            passkey_document(np.random.default_rng(0), cfg["seq_len"] + 1, data.encoding().encode_ordinary)
        except ValueError as e:
            raise ConfigError(f"passkey_ratio={cfg['passkey_ratio']}: {e}: raise seq_len") from None
    check_positions(cfg, mcfg)
    return data, decay_data, eval_sets


def check_positions(cfg, mcfg):
    """A row must fit the model's positions."""
    if cfg["seq_len"] > mcfg.max_position_embeddings:
        raise ConfigError(f"seq_len={cfg['seq_len']} exceeds max_position_embeddings="
                          f"{mcfg.max_position_embeddings}: lower seq_len or raise max_position_embeddings")


def check_tokenizer(data, source):
    """Token data under another tokenizer than the model's (that of `source`, the checkpoint the run continues or
    starts from) is one line naming both, never a silent mismatch."""
    if data is None or source is None or not source.tokenizer_id:
        return
    parts = data.sources if isinstance(data, MixtureData) else [data]
    for d in (p for p in parts if isinstance(p, TokenData)):
        if data_tokenizer_id(d.meta) != source.tokenizer_id:
            raise ConfigError(f"data {d.path} is tokenized with {d.meta['tokenizer']} ({data_tokenizer_id(d.meta)}), "
                              f"but the model's tokenizer is {source.tokenizer} ({source.tokenizer_id}, that of "
                              f"{source.path}): prepare the data with it: python corpus.py --input FILES --tokenizer "
                              f"{source.tokenizer} --out DIR")


def read_source(cfg):
    """The checkpoint a run continues (resume=True: this out_dir's) or starts from (init_from), read once, before the
    data (whose .jsonl rows take its tokenizer), as a StartPoint; None for a fresh run. Under fsdp=True a resumed
    checkpoint is its train_state.json (the shards are checked against it, then loaded)."""
    if not cfg["resume"]:
        return read_start_point(cfg["init_from"]) if cfg["init_from"] else None
    if not cfg["out_dir"]:
        raise ConfigError("resume=True needs an out_dir")
    fsdp = cfg["fsdp"]
    path = os.path.join(cfg["out_dir"], DCP_DIR if fsdp else "ckpt.pt")
    if fsdp:
        ckpt = dcp_train_state(path)[1]
    elif os.path.isdir(os.path.join(cfg["out_dir"], DCP_DIR)) and not os.path.exists(path):
        raise CheckpointError(f"{cfg['out_dir']} holds an FSDP checkpoint ({DCP_DIR}): resume it with --fsdp=True "
                              f"under torchrun")
    elif not os.path.lexists(path):
        raise CheckpointError(f"checkpoint {path} not found: nothing to resume in {cfg['out_dir']}; to start a new "
                              f"run there, drop --resume=True")
    else:
        ckpt = load_checkpoint(path)
    return StartPoint(path, None, ckpt.get("model"), ckpt.get("optimizer"), ckpt.get("step"), ckpt.get("tokenizer"),
                      ckpt.get("tokenizer_id"), ckpt.get("origin"), checkpoint=ckpt)


def resume_from(cfg, source, model, optimizer, fsdp, global_batch, device, fingerprints, defaults):
    """Load this out_dir's checkpoint (source, read_source) after checking that it belongs to this run; returns its
    step."""
    path, ckpt = source.path, source.checkpoint
    lacks = sorted({"data", "config", "step"} - set(ckpt) | ({"rng"} - set(ckpt) if not fsdp else set()))
    if lacks:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(lacks)}: it was not written by train.py's loop (a "
                              f"converted checkpoint?): start from it with --init_from instead of --resume")
    if ckpt.get("trainer") != TRAINER_VERSION:
        raise CheckpointError(f"checkpoint {path} was written by another train.py version ({ckpt.get('trainer')}, "
                              f"this is {TRAINER_VERSION}): resuming would change the run's numbers midway; start a "
                              f"new stage from it with --init_from")
    check_same_data(path, ckpt, cfg, fingerprints)
    # keys added to train.py since the checkpoint was written count as their defaults (as in sweep); the data is
    # compared by content (check_same_data), not by how its path is spelled
    diff = config_diff({**defaults, **ckpt["config"]}, cfg,
                       ignore=RESUMABLE_CHANGES | SPLIT_KEYS | {"data", "decay_data"})
    if diff:
        raise CheckpointError(f"checkpoint {path} was written with another config; differing keys: " +
                              ", ".join(f"{k} ({ckpt['config'].get(k)!r} vs {cfg.get(k)!r})" for k in diff))
    if ckpt["data"]["global_batch"] != global_batch:  # another world size or split must keep the global batch
        raise CheckpointError(f"checkpoint {path} trained with a global batch of {ckpt['data']['global_batch']} "
                              f"rows; batch_size x grad_accum x world size = {global_batch}: choose batch_size / "
                              f"grad_accum so that they multiply to it")
    if fsdp:
        return load_dcp(path, model, optimizer)["step"]
    step = load_state(model, optimizer, ckpt, path)
    torch.set_rng_state(ckpt["rng"]["cpu"])
    if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
    return step


def data_fingerprints(data, decay_data):
    """{"fingerprint": the run's data, "decay_fingerprint": its decay data's}: their content (corpus.py), which a
    resumed checkpoint must have trained on."""
    return dict(fingerprint=data.fingerprint(), **({"decay_fingerprint": decay_data.fingerprint()} if decay_data
                                                   else {}))


def check_same_data(path, ckpt, cfg, fingerprints):
    """A checkpoint resumes only on the data it trained on: the same content (the same directory spelled dir/ or
    ./dir is the same data; a directory prepared again from other text is not)."""
    for key, spec in (("fingerprint", "data"), ("decay_fingerprint", "decay_data")):
        old, new = ckpt["config"].get(spec, ""), cfg[spec]
        if ckpt["data"].get(key) != fingerprints.get(key):
            raise CheckpointError(f"checkpoint {path} trained on other data: {spec}={new!r} now holds other tokens "
                                  f"than the {old!r} it was trained on (prepared again from other text?): resume it "
                                  f"on that data, or start a new stage with --init_from")


def start_from(cfg, mcfg, source, model, optimizer, log, weights_only=False):
    """Another run's weights, AdamW moments and step, under this run's schedule: the same model (a WSD decay
    branch, paper §4.3), a context extension (a new RoPE base / scaling / length, untied if asked: paper §7.2), or
    sparse upcycling to MoE (every expert a copy of the dense MLP, a new router: paper §7.3). From a released
    checkpoint (source.optimizer None), or with weights_only (a DPO policy): its weights alone, AdamW fresh, step 0
    (a new run from its warmup)."""
    src, src_cfg = source.path, source.config
    a, b = asdict(src_cfg), asdict(mcfg)
    diff = config_diff(a, b)
    state = source.model
    fresh = weights_only or source.optimizer is None
    opt_state = {} if fresh else named_optimizer_state(src_cfg, source.optimizer)
    if not fresh:
        what = f"{src} (step {source.step})"
    elif weights_only:
        what = f"{src}'s weights (AdamW fresh; step 0)"
    else:
        what = f"the released checkpoint {src} (its weights; AdamW fresh; step 0)"
    if not src_cfg.num_experts and mcfg.num_experts and set(diff) <= MOE_KEYS:
        state = upcycle_state_dict(state, mcfg, seed=cfg["seed"])
        opt_state = upcycle_optimizer_state(opt_state, mcfg.num_experts)
        log(f"upcycled {what} to {mcfg.num_experts} experts, top-{mcfg.top_k}")
    elif set(diff) <= CONTEXT_KEYS and not (mcfg.tie_word_embeddings and not src_cfg.tie_word_embeddings):
        if src_cfg.tie_word_embeddings and not mcfg.tie_word_embeddings:
            state = untie_state_dict(state)  # the new head starts as the embedding, without AdamW moments
        log(f"initialised from {what}" + "".join(f", {k}={b[k]!r}" for k in diff))
    else:
        raise CheckpointError(f"init_from checkpoint {src} has another model; differing keys: " +
                              ", ".join(f"{k} ({a[k]!r} vs {b[k]!r})" for k in diff))
    try:
        load_full_state(model, optimizer, state, opt_state)
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {src} does not fit the model ({first_line(e)})") from None
    return 0 if fresh else source.step


def check_eval_split(cfg, world):
    """eval_rows splits over the processes (evaluate scores each one's share): checked before the first step."""
    if cfg["eval_rows"] and cfg["eval_rows"] % world:
        raise ConfigError(f"eval_rows={cfg['eval_rows']} does not split over {world} processes: make it a multiple "
                          f"of {world}")


def stage_start(cfg, source, step):
    """The step this stage started at: an init_from stage's first step (its source's), kept by a resumed run; 0 for
    a run of its own."""
    if cfg["resume"]:
        return (source.checkpoint or {}).get("stage_start", 0)
    return step if cfg["init_from"] else 0

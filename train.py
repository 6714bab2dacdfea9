"""
Train MiniCPM: model.py + mup.py + wsd.py composed (paper §3-§4, PAPER.md §2, §4), nanoGPT style.

    python train.py                                   # tiny model on the embedded corpus, CPU, a few minutes
    python train.py config/wt_9m.py --max_steps=2000  # a config file, then --key=value overrides
    torchrun --standalone --nproc_per_node=8 train.py config/x.py               # one node, DDP
    torchrun --nnodes=4 --nproc_per_node=8 --rdzv_backend=c10d \\
        --rdzv_endpoint=$HEAD_NODE:29500 --rdzv_id=$JOB_ID train.py config/x.py # many nodes: same command on each
    torchrun ... train.py config/x.py --fsdp=True     # FSDP2, sharded DCP checkpoints (resumable at any world size)
    python train.py export out/ckpt_dcp official_dir  # a checkpoint -> the official format (from_pretrained)
    python train.py --init_from=out --data=sft.jsonl --decay_steps=0 --lr=1e-3   # SFT (paper §5; dpo.py for DPO)

Every key below can be set in a config file or as --key=value; model keys left at None come from `preset`.
The global batch of step s is a function of (seed, s) only: batch_size x grad_accum x world_size rows, split
across processes and micro-steps, so any split logs the same losses. `train(config)` runs one training and returns
its metrics, for experiment scripts that run many in one process.
"""

import ast
import difflib
import json
import math
import os
import signal
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, fields

import torch
import torch.distributed as dist

from corpus import MixtureData, load_data
from model import MiniCPM, MiniCPMConfig
from mup import configure_optimizer, set_lr
from wsd import cosine_lr, cosine_loop_lr, wsd_lr

# ---------------------------------------------------------------------------------------------------- config
# I/O
out_dir = "out"  # checkpoints, metrics.jsonl, loss.png; "" writes nothing (in-process experiments)
resume = False  # continue out_dir/ckpt.pt exactly where it stopped
init_from = ""  # start from another run's checkpoint (file or out_dir): weights, optimizer and step, with this
#                run's schedule; how WSD branches a decay off a stable run (paper §4.3)
keep_ckpts = False  # also keep every periodic checkpoint as ckpt_{step:06d}.pt (decay branch points)
eval_interval = 100  # steps between validation evaluations (and at the last step)
eval_steps = 10  # validation batches per evaluation
ckpt_interval = 250  # steps between checkpoints (and at the end, and on SIGTERM / Ctrl-C)
sample_tokens = 300  # tokens sampled from the model at the end (0: none)
# data
data = "embedded"  # "embedded" (Python's own docs, offline), a directory prepared by corpus.py, a .jsonl of
#                   prompt/response examples (SFT: loss on the responses only), or a mixture "src:w,src:w"
decay_data = ""  # paper §5, two-stage pre-training: the mixture the WSD decay trains on, from T = S - decay_steps,
#                  e.g. "embedded:0.7,data/tasks/sft_train.jsonl:0.3"; "" keeps `data`
long_ratio = 1.0  # long-context mix (paper §7.2: 0.44): the fraction of rows that are seq_len-long windows ...
short_len = 0  # ... the others are made of independent short_len-token windows
passkey_ratio = 0.0  # the fraction of rows that are passkey documents (longctx.py)
# model: a preset from model.PRESETS, each field below overrides it when not None
preset = "tiny"
for _f in fields(MiniCPMConfig):
    globals()[_f.name] = None
# optimisation (paper §3: AdamW betas (0.9, 0.95), weight decay 0.1, grad clip 1.0, muP lr ~0.01)
lr = 0.01  # the base lr eta; hidden matrices get lr / m (mup.py)
weight_decay = 0.1
grad_clip = 1.0  # 0: no clipping (the norm is still logged)
batch_size = 16  # rows per process per micro-step
grad_accum = 1  # micro-steps per step
seq_len = 256
seed = 1337
# schedule (wsd.py): S = max_steps, W = warmup_steps, T = S - decay_steps
schedule = "wsd"  # "wsd" | "cosine" (Cosine(T), T = cosine_steps) | "cosine_loop"
max_steps = 600
warmup_steps = 30
decay_steps = 60  # ~10% of S: the paper finds 10% of the tokens enough for the decay
decay = "exp"  # exp | linear | cosine | 1-sqrt
final_lr_ratio = 0.1
half_life = 0.0  # exp decay half-life in steps; 0: end the decay at final_lr_ratio
cosine_steps = 0  # T of Cosine(T) / CosineLoop(T); 0: = max_steps
# system
device = "auto"  # auto: cuda if available, else cpu
dtype = "auto"  # auto: bfloat16 autocast on CUDA, float32 on CPU
compile = "auto"  # auto: torch.compile on CUDA, eager on CPU
fsdp = False  # FSDP2 (fully_shard per block, bf16 params / fp32 reductions on CUDA) + DCP checkpoints; torchrun
activation_checkpointing = False  # recompute each block in the backward: ~4x longer contexts for ~1/3 more compute

CONFIG_KEYS = [k for k in list(globals()) if not k.startswith("_") and not callable(globals()[k])
               and not isinstance(globals()[k], type(sys)) and k.islower() and k not in ("CONFIG_KEYS",)]
MODEL_KEYS = [f.name for f in fields(MiniCPMConfig)]
MOE_KEYS = {"num_experts", "top_k", "router_aux_loss_coef"}
CONTEXT_KEYS = {"rope_theta", "rope_scaling", "max_position_embeddings", "tie_word_embeddings"}
# keys that may change when resuming without changing the run's numbers
RESUMABLE_CHANGES = {"out_dir", "resume", "eval_interval", "eval_steps", "ckpt_interval", "sample_tokens",
                     "device", "dtype", "compile", "activation_checkpointing", "keep_ckpts"}
# may change on resume when the global batch (batch_size x grad_accum x world size) stays the same
SPLIT_KEYS = {"batch_size", "grad_accum"}


class ConfigError(ValueError):
    pass


def default_config():
    g = globals()
    return {k: g[k] for k in CONFIG_KEYS}


def _expected_type(key, defaults):
    if key in MODEL_KEYS:
        return {f.name: f.type for f in fields(MiniCPMConfig)}[key]
    if key in ("compile",):
        return (bool, str)
    return type(defaults[key])


def _check_value(key, value, defaults):
    want = _expected_type(key, defaults)
    if isinstance(want, str):  # dataclass annotations may be strings
        want = {"int": int, "float": float, "bool": bool}.get(want, object)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    ok = isinstance(value, want) and not (want in (int, float) and isinstance(value, bool))
    if not ok:
        names = want.__name__ if isinstance(want, type) else "/".join(t.__name__ for t in want)
        raise ConfigError(f"config key {key}={value!r} has type {type(value).__name__}, expected {names}")
    return value


def _unknown(key, valid):
    close = difflib.get_close_matches(key, valid, n=1)
    return ConfigError(f"unknown config key {key!r}" + (f": did you mean {close[0]!r}?" if close else ""))


def get_config(argv=(), base=None):
    """Defaults <- config files (python files assigning keys) <- --key=value (Python literals or plain strings)."""
    cfg = dict(base or default_config())
    for arg in argv:
        if not arg.startswith("--"):
            if not os.path.isfile(arg):
                raise ConfigError(f"config file {arg} not found")
            scope = dict(cfg)
            exec(open(arg).read(), {}, scope)
            for k, v in scope.items():
                if k.startswith("_") or isinstance(v, type(sys)) or callable(v):
                    continue
                if k not in cfg:
                    raise _unknown(k, list(cfg))
                cfg[k] = v if v is None and k in MODEL_KEYS else _check_value(k, v, cfg)
            continue
        key, eq, val = arg[2:].partition("=")
        if not eq:
            raise ConfigError(f"argument {arg!r}: write --key=value")
        if key not in cfg:
            raise _unknown(key, list(cfg))
        try:
            v = ast.literal_eval(val)
        except (ValueError, SyntaxError):
            v = val  # a plain string
        cfg[key] = v if v is None and key in MODEL_KEYS else _check_value(key, v, cfg)
    return validate_config(cfg)


def validate_config(cfg):
    for k in cfg:
        if k not in CONFIG_KEYS:
            raise _unknown(k, CONFIG_KEYS)
    for k in ("max_steps", "batch_size", "grad_accum", "seq_len", "eval_steps", "eval_interval", "ckpt_interval"):
        if not cfg[k] >= 1:
            raise ConfigError(f"config key {k}={cfg[k]} must be >= 1")
    if cfg["schedule"] not in ("wsd", "cosine", "cosine_loop"):
        raise ConfigError(f"config key schedule={cfg['schedule']!r}: use wsd, cosine or cosine_loop")
    if not 0 <= cfg["decay_steps"] <= cfg["max_steps"]:
        raise ConfigError(f"decay_steps={cfg['decay_steps']} must be within [0, max_steps={cfg['max_steps']}]")
    for k in ("long_ratio", "passkey_ratio"):
        if not 0 <= cfg[k] <= 1:
            raise ConfigError(f"config key {k}={cfg[k]} must be within [0, 1]")
    if cfg["long_ratio"] < 1 and not 1 <= cfg["short_len"] <= cfg["seq_len"]:
        raise ConfigError(f"long_ratio={cfg['long_ratio']} mixes in short rows: set short_len within [1, seq_len]")
    if cfg["lr"] <= 0:
        raise ConfigError(f"config key lr={cfg['lr']} must be > 0")
    if cfg["decay_data"] and not cfg["decay_steps"]:
        raise ConfigError(f"decay_data={cfg['decay_data']!r} is the data of the decay phase: set decay_steps > 0")
    lr_at(cfg, 0)  # the schedule's own checks (W > T, unknown decay shape ...) as one clear line
    model_config(cfg)
    return cfg


def model_config(cfg):
    overrides = {k: cfg[k] for k in MODEL_KEYS if cfg.get(k) is not None}
    try:
        return MiniCPMConfig.from_preset(cfg["preset"], **overrides) if cfg["preset"] else MiniCPMConfig(**overrides)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def lr_at(cfg, step):
    S, W = cfg["max_steps"], cfg["warmup_steps"]
    kw = dict(lr=cfg["lr"], W=W, final_lr_ratio=cfg["final_lr_ratio"])
    try:
        if cfg["schedule"] == "wsd":
            return wsd_lr(step, T=S - cfg["decay_steps"], S=S, decay=cfg["decay"],
                          half_life=cfg["half_life"] or None, **kw)
        fn = cosine_lr if cfg["schedule"] == "cosine" else cosine_loop_lr
        return fn(step, T=cfg["cosine_steps"] or S, **kw)
    except ValueError as e:
        raise ConfigError(f"schedule: {e}") from None


# ---------------------------------------------------------------------------------------------------- checkpoints


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(path, state):
    """Atomic: write a temporary file in the same directory, then rename over the old checkpoint."""
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path):
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} not found: train into {os.path.dirname(path) or '.'} first")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120]}); it is left in place: delete it or pick another "
                              f"out_dir") from None
    missing = {"model", "optimizer", "step", "config"} - set(ckpt) if isinstance(ckpt, dict) else {"everything"}
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(sorted(missing))}: not a train.py checkpoint")
    return ckpt


DCP_DIR = "ckpt_dcp"  # FSDP runs: a torch.distributed.checkpoint directory, one file per rank + train_state.json


def save_dcp(path, model, optimizer, train_state, keep=None):
    """Every rank writes its shards in parallel into path.tmp; rank 0 then publishes it by renames (the previous
    checkpoint moves to path.old until the new one is in place), so a kill at any moment leaves one whole checkpoint.
    `keep`: also keep this checkpoint as a hard-linked copy (WSD decay branch points)."""
    import shutil

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    tmp, old = path + ".tmp", path + ".old"
    rank = dist.get_rank()
    if rank == 0 and os.path.isdir(tmp):
        shutil.rmtree(tmp)
    dist.barrier()
    msd, osd = get_state_dict(model, optimizer)
    dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=tmp)
    if rank == 0:
        with open(os.path.join(tmp, "train_state.json"), "w") as f:
            json.dump(train_state, f)
        if os.path.isdir(path):
            if os.path.isdir(old):
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
        if keep:
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(path, keep, copy_function=os.link)
    dist.barrier()


def dcp_train_state(path):
    """(directory, train_state) of the published DCP checkpoint at path, or of the previous one if a kill came
    between the two renames of save_dcp."""
    for p in (path, path + ".old"):
        if os.path.isfile(os.path.join(p, "train_state.json")):
            with open(os.path.join(p, "train_state.json")) as f:
                return p, json.load(f)
    raise CheckpointError(f"DCP checkpoint {path} not found (no train_state.json): train into "
                          f"{os.path.dirname(path) or '.'} with --fsdp=True first")


def load_dcp(path, model, optimizer):
    """Load a DCP checkpoint into the (sharded) model and optimizer, at any world size; returns train_state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    path, train_state = dcp_train_state(path)
    msd, osd = get_state_dict(model, optimizer)
    state = {"model": msd, "optimizer": osd}
    try:
        dcp.load(state, checkpoint_id=path)
    except Exception as e:
        raise CheckpointError(f"DCP checkpoint {path} does not fit the model or is incomplete ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160]})") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    return train_state


def dcp_to_checkpoint(path):
    """A DCP directory as the dict of a single-file train.py checkpoint (full tensors, on CPU), through PyTorch's
    own converter; no process group needed."""
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    path, train_state = dcp_train_state(path)
    with tempfile.TemporaryDirectory() as d:
        dcp_to_torch_save(path, os.path.join(d, "full.pt"))
        full = torch.load(os.path.join(d, "full.pt"), map_location="cpu", weights_only=True)
    return dict(model=full["model"], optimizer=full["optimizer"], **train_state)


def export_checkpoint(src, dst):
    """A train.py checkpoint (ckpt.pt, or an FSDP run's DCP directory) -> the official single-file format in dst
    (config.json + model.safetensors, or pytorch_model.bin without safetensors), which MiniCPM.from_pretrained
    reads."""
    model, _ = model_from_checkpoint(src)
    model.save_pretrained(dst)
    return dst


def config_diff(a, b, ignore=()):
    return sorted(k for k in set(a) | set(b) if k not in ignore and a.get(k) != b.get(k))


def read_checkpoint(path):
    """A checkpoint's dict from ckpt.pt, a DCP directory (ckpt_dcp*), or an out_dir holding either."""
    if os.path.isdir(path) and not os.path.basename(os.path.normpath(path)).startswith(DCP_DIR):  # an out_dir
        path = next((p for p in (os.path.join(path, "ckpt.pt"), os.path.join(path, DCP_DIR)) if os.path.exists(p)),
                    os.path.join(path, "ckpt.pt"))
    return dcp_to_checkpoint(path) if os.path.isdir(path) else load_checkpoint(path)


def model_from_checkpoint(path, device="cpu"):
    """(model, config dict) from a train.py checkpoint (ckpt.pt, an out_dir, or a DCP directory)."""
    ckpt = read_checkpoint(path)
    model = MiniCPM(model_config(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt["config"]


# ---------------------------------------------------------------------------------------------------- training


def setup_distributed(device_type):
    """(rank, local_rank, world_size) from torchrun's environment; one process without it."""
    if "RANK" not in os.environ:
        return 0, 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size()


def all_mean(x, world):
    if world > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= world
    return x


class StopFlag:
    """SIGTERM / Ctrl-C set a flag; the loop saves a checkpoint at the end of the step and exits cleanly."""

    def __init__(self):
        self.set = False
        self.old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not in the main thread: no handler
                pass
        return self

    def _handler(self, signum, frame):
        self.set = True

    def __exit__(self, *exc):
        for sig, h in self.old.items():
            signal.signal(sig, h)


def resolve_system(cfg):
    dev = cfg["device"] if cfg["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={dev!r} but CUDA is not available: use --device=cpu")
    dt = cfg["dtype"] if cfg["dtype"] != "auto" else ("bfloat16" if dev.startswith("cuda") else "float32")
    if dt not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"dtype={dt!r}: use float32, bfloat16 or float16")
    comp = cfg["compile"] if cfg["compile"] != "auto" else dev.startswith("cuda")
    if not isinstance(comp, bool):
        raise ConfigError(f"compile={cfg['compile']!r}: use True, False or 'auto'")
    return dev, getattr(torch, dt), comp


def train(cfg, quiet=False):
    """Run one training described by a config dict (see the module-level keys); returns its metrics."""
    cfg = validate_config({**default_config(), **cfg})
    dev, ptdtype, use_compile = resolve_system(cfg)
    rank, local_rank, world = setup_distributed(dev.split(":")[0])
    if dev == "cuda":
        dev = f"cuda:{local_rank}"
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    device = torch.device(dev)
    master = rank == 0
    fsdp = cfg["fsdp"]
    if fsdp and not dist.is_initialized():
        raise ConfigError("fsdp=True shards the model over the processes of torchrun: run it as `torchrun "
                          "--standalone --nproc_per_node=N train.py --fsdp=True ...` (N=1 works too)")
    log = (lambda *a: None) if quiet or not master else print

    try:
        data_ = load_data(cfg["data"])
        decay_ = load_data(cfg["decay_data"]) if cfg["decay_data"] else None
    except ValueError as e:
        raise ConfigError(f"data: {e}") from None
    if (isinstance(data_, MixtureData) or decay_) and (cfg["long_ratio"] < 1 or cfg["passkey_ratio"] > 0):
        raise ConfigError("long_ratio / passkey_ratio build rows from one token source: drop them or the mixture")
    switch = cfg["max_steps"] - cfg["decay_steps"] if decay_ else None  # T: the decay, stage 2, starts here
    mcfg = model_config(cfg)
    for d in (data_, decay_) if decay_ else (data_,):
        if getattr(d, "longest", 0) > cfg["seq_len"] + 1:
            raise ConfigError(f"data {d.spec!r} has an example of {d.longest} tokens: raise seq_len to at least "
                              f"{d.longest - 1}")
        if mcfg.vocab_size < d.vocab_size:
            raise ConfigError(f"vocab_size={mcfg.vocab_size} is smaller than the data's tokenizer vocabulary "
                              f"({d.vocab_size}, {d.meta['tokenizer']}): set --vocab_size={d.vocab_size}")
    if cfg["seq_len"] > mcfg.max_position_embeddings:
        raise ConfigError(f"seq_len={cfg['seq_len']} exceeds max_position_embeddings="
                          f"{mcfg.max_position_embeddings}: lower seq_len or raise max_position_embeddings")

    torch.manual_seed(cfg["seed"])
    model = MiniCPM(mcfg).to(device)
    optimizer = configure_optimizer(model, cfg["lr"], cfg["weight_decay"])
    step, rows_log = 0, []
    ckpt_path = os.path.join(cfg["out_dir"], DCP_DIR if fsdp else "ckpt.pt") if cfg["out_dir"] else None
    global_batch = cfg["batch_size"] * cfg["grad_accum"] * world
    metrics_path = os.path.join(cfg["out_dir"], "metrics.jsonl") if cfg["out_dir"] else None
    if cfg["resume"]:
        if not ckpt_path:
            raise ConfigError("resume=True needs an out_dir")
        if fsdp:  # the sharded state is loaded below, once the model is sharded
            ckpt = dcp_train_state(ckpt_path)[1]
        elif not os.path.isfile(ckpt_path):
            raise CheckpointError(f"checkpoint {ckpt_path} not found: nothing to resume, drop --resume=True")
        else:
            ckpt = load_checkpoint(ckpt_path)
        diff = config_diff(ckpt["config"], cfg, ignore=RESUMABLE_CHANGES | SPLIT_KEYS)
        if diff:
            raise CheckpointError(f"checkpoint {ckpt_path} was written with another config; differing keys: " +
                                  ", ".join(f"{k} ({ckpt['config'].get(k)!r} vs {cfg.get(k)!r})" for k in diff))
        if ckpt["data"]["global_batch"] != global_batch:  # another world size or split must keep the global batch
            raise CheckpointError(f"checkpoint {ckpt_path} trained with a global batch of {ckpt['data']['global_batch']}"
                                  f" rows; batch_size x grad_accum x world size = {global_batch}: choose batch_size / "
                                  f"grad_accum so that they multiply to it")
        if fsdp:
            step = ckpt["step"]
        else:
            step = _load_state(model, optimizer, ckpt, ckpt_path)
            torch.set_rng_state(ckpt["rng"]["cpu"])
            if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
        if master and metrics_path and os.path.isfile(metrics_path):  # drop rows logged after the checkpoint
            rows_log = [r for r in read_jsonl(metrics_path) if r["step"] <= step]
            _write_jsonl(metrics_path, rows_log)
        log(f"resumed {ckpt_path} at step {step}")
    else:
        if cfg["init_from"]:
            src = cfg["init_from"]
            ckpt = read_checkpoint(src)
            src_cfg = model_config(ckpt["config"])
            a, b = asdict(src_cfg), asdict(mcfg)
            diff = config_diff(a, b)
            if not src_cfg.num_experts and mcfg.num_experts and set(diff) <= MOE_KEYS:
                # sparse upcycling (paper §7.3): every expert a copy of the dense MLP, a new router; AdamW's moments
                # and the step count (so the WSD schedule) continue
                from moe import upcycle, upcycle_optimizer_state
                dense = MiniCPM(src_cfg)
                dense_opt = configure_optimizer(dense, cfg["lr"], cfg["weight_decay"])
                step = _load_state(dense, dense_opt, ckpt, src)
                model = upcycle(dense, mcfg.num_experts, mcfg.top_k, seed=cfg["seed"]).to(device)
                model.config = mcfg
                optimizer = configure_optimizer(model, cfg["lr"], cfg["weight_decay"])
                upcycle_optimizer_state(dense, dense_opt, model, optimizer)
                log(f"upcycled {src} (step {step}) to {mcfg.num_experts} experts, top-{mcfg.top_k}")
            elif set(diff) <= CONTEXT_KEYS and not (mcfg.tie_word_embeddings and not src_cfg.tie_word_embeddings):
                # the same model (a WSD decay branch), or a context extension (paper §7.2): the same weights under a
                # new RoPE base / scaling / length limit, untied if asked; AdamW's moments carry over (an untied
                # head starts without)
                model = MiniCPM(src_cfg).to(device)
                optimizer = configure_optimizer(model, cfg["lr"], cfg["weight_decay"])
                step = _load_state(model, optimizer, ckpt, src)
                if src_cfg.tie_word_embeddings and not mcfg.tie_word_embeddings:
                    from longctx import untie
                    old = optimizer
                    untie(model)
                    optimizer = configure_optimizer(model, cfg["lr"], cfg["weight_decay"])
                    optimizer.state.update(old.state)
                model.config = mcfg
                log(f"initialised from {src} at step {step}" + "".join(f", {k}={b[k]!r}" for k in diff))
            else:
                raise CheckpointError(f"init_from checkpoint {src} has another model; differing keys: " +
                                      ", ".join(f"{k} ({a[k]!r} vs {b[k]!r})" for k in diff))
    if not cfg["resume"] and master and metrics_path:
        os.makedirs(cfg["out_dir"], exist_ok=True)
        if ckpt_path and os.path.isfile(ckpt_path):
            log(f"starting fresh: {ckpt_path} will be overwritten (--resume=True continues it)")
        _write_jsonl(metrics_path, [])

    model.activation_checkpointing = cfg["activation_checkpointing"]
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
        full = StateDictOptions(full_state_dict=True)
        loaded = get_state_dict(model, optimizer, options=full) if step and not cfg["resume"] else None
        shard_model(model, ptdtype, device)
        optimizer = configure_optimizer(model, cfg["lr"], cfg["weight_decay"])  # the same muP groups, on shards
        if cfg["resume"]:
            load_dcp(ckpt_path, model, optimizer)
        elif loaded:
            set_state_dict(model, optimizer, model_state_dict=loaded[0], optim_state_dict=loaded[1], options=full)
    raw_model = model
    if use_compile:
        model = torch.compile(model)
    if world > 1 and not fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        # experts that get no token in a step have no gradient: DDP must expect unused parameters
        model = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None,
                    find_unused_parameters=mcfg.num_experts > 0)
    autocast = torch.autocast(device.type, dtype=ptdtype) if ptdtype != torch.float32 else nullcontext()

    B, A, T = cfg["batch_size"], cfg["grad_accum"], cfg["seq_len"]
    tokens_per_step = global_batch * T
    peak = None
    if device.type == "cuda":
        from bench import flops_per_token, peak_flops
        peak = peak_flops(device)
        flops_tok = flops_per_token(mcfg, T)
    if mcfg.num_experts:
        from moe import param_counts
        log(f"MoE: {mcfg.num_experts} experts, top-{mcfg.top_k}: {param_counts(raw_model)[1] / 1e6:.2f}M active "
            f"non-embedding params per token")
    log(f"model: {raw_model.num_params() / 1e6:.2f}M non-embedding params ({raw_model.num_params(False) / 1e6:.2f}M "
        f"total), m = {mcfg.width_mult:g}; {world} process(es) x {A} micro-steps x {B} rows x {T} tokens = "
        f"{tokens_per_step:,} tokens/step on {dev} ({str(ptdtype).replace('torch.', '')}, compile={use_compile}"
        f"{', FSDP2' if fsdp else ''})")

    def evaluate():
        model.eval()
        losses = torch.zeros((), device=device)
        with torch.no_grad():
            for i in range(cfg["eval_steps"]):
                for micro in range(A):  # the same global batch and split as training: equal for any split
                    lo = (rank * A + micro) * B
                    x, y = data_.batch("val", cfg["seed"], i, global_batch, T, rows=slice(lo, lo + B))
                    with autocast:
                        _, loss = raw_model(x.to(device), y.to(device))
                    losses += loss.float()
        model.train()
        val = all_mean(losses / (cfg["eval_steps"] * A), world).item()
        return val, val / math.log(2) / data_.meta["bytes_per_token"]

    def checkpoint():
        if fsdp and ckpt_path:
            keep = os.path.join(cfg["out_dir"], f"{DCP_DIR}_{step:06d}") if cfg["keep_ckpts"] else None
            return save_dcp(ckpt_path, raw_model, optimizer, dict(step=step, config=cfg, data=dict(
                seed=cfg["seed"], next_step=step, global_batch=global_batch)), keep)
        if master and ckpt_path:
            save_checkpoint(ckpt_path, dict(
                model=raw_model.state_dict(), optimizer=optimizer.state_dict(), step=step, config=cfg,
                data=dict(seed=cfg["seed"], next_step=step, global_batch=global_batch),
                rng=dict(cpu=torch.get_rng_state(), cuda=torch.cuda.get_rng_state(device) if device.type == "cuda"
                         else None)))
            if cfg["keep_ckpts"]:
                kept = os.path.join(cfg["out_dir"], f"ckpt_{step:06d}.pt")
                if os.path.exists(kept):
                    os.remove(kept)
                os.link(ckpt_path, kept)  # the same bytes, no copy; ckpt.pt is later replaced, not rewritten
        if world > 1:
            dist.barrier()

    def log_row(row):
        rows_log.append(row)
        if master and metrics_path:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")

    from tqdm import tqdm
    bar = tqdm(total=cfg["max_steps"], initial=step, disable=not master or quiet, dynamic_ncols=True)
    history = dict(train_loss=[], val_loss=[], val_bpb=[])
    stopped = False
    with StopFlag() as stop:
        while step < cfg["max_steps"]:
            t0 = time.perf_counter()
            lr_now = lr_at(cfg, step)
            set_lr(optimizer, lr_now)
            loss_sum = torch.zeros((), device=device)
            src = decay_ if switch is not None and step >= switch else data_
            if src is decay_ and step == switch:
                weights = [round(float(w), 6) for w in getattr(src, "weights", [1.0])]
                log_row(dict(step=step, data_switch=cfg["decay_data"], weights=weights))
                if master and not quiet:
                    bar.write(f"step {step}: the decay phase starts on {cfg['decay_data']} (weights {weights})")
            masked = isinstance(src, MixtureData)
            if masked:  # rows with prompt / padding labels: weight each micro-batch by its share of the global tokens
                xg, yg = src.batch("train", cfg["seed"], step, global_batch, T)
                n_global = max(1, int((yg != -100).sum()))
            for micro in range(A):
                # rows of the global batch owned by this process and micro-step: a function of (seed, step) only
                lo = (rank * A + micro) * B
                if masked:
                    x, y = xg[lo:lo + B], yg[lo:lo + B]
                elif cfg["long_ratio"] < 1 or cfg["passkey_ratio"] > 0:
                    from longctx import mixed_batch
                    x, y, _ = mixed_batch(data_, cfg["seed"], step, global_batch, T, slice(lo, lo + B),
                                          cfg["long_ratio"], cfg["short_len"], cfg["passkey_ratio"])
                else:
                    x, y = data_.batch("train", cfg["seed"], step, global_batch, T, rows=slice(lo, lo + B))
                if fsdp:  # reduce-scatter the gradients on the last micro-step only
                    raw_model.set_requires_gradient_sync(micro == A - 1)
                sync = model.no_sync() if world > 1 and not fsdp and micro < A - 1 else nullcontext()
                with sync, autocast:
                    _, loss = model(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
                if masked:  # the mean over all response tokens of the global batch, whatever the split
                    w = int((y != -100).sum()) * world / n_global
                    (loss * w).backward()
                    loss_sum += loss.detach().float() * w
                else:
                    (loss / A).backward()
                    loss_sum += loss.detach().float()
            grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg["grad_clip"] or float("inf"))
            if hasattr(grad_norm, "full_tensor"):  # FSDP2: the norm over all shards
                grad_norm = grad_norm.full_tensor()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            train_loss = all_mean(loss_sum if masked else loss_sum / A, world).item()
            step += 1
            dt = time.perf_counter() - t0
            row = dict(step=step, train_loss=train_loss, lr=lr_now, grad_norm=grad_norm.item(),
                       tokens=step * tokens_per_step, tok_per_s=tokens_per_step / dt)
            if peak:
                row["mfu"] = flops_tok * tokens_per_step / dt / (peak * world)
            if mcfg.num_experts:  # of this process's last micro-batch
                from moe import expert_load, model_aux_loss
                with torch.no_grad():
                    row["aux_loss"] = model_aux_loss(raw_model).item()
                row["expert_load"] = [round(v, 4) for v in expert_load(raw_model).tolist()]
            log_row(row)
            history["train_loss"].append(train_loss)
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.4f}", lr=f"{lr_now:.2e}", refresh=False)
            if not math.isfinite(train_loss):
                bar.close()
                raise FloatingPointError(f"train loss is {train_loss} at step {step}: lower lr (now {cfg['lr']}) "
                                         f"or check the data")
            if step % cfg["eval_interval"] == 0 or step == cfg["max_steps"]:
                val, bpb = evaluate()
                log_row(dict(step=step, val_loss=val, val_bpb=bpb))
                history["val_loss"].append((step, val))
                history["val_bpb"].append((step, bpb))
                bar.write(f"step {step}: train {train_loss:.4f}, val {val:.4f} ({bpb:.3f} bits/byte)") if master \
                    and not quiet else None
            stop_now = torch.tensor(float(stop.set), device=device)
            if world > 1:  # every process stops at the same step
                dist.all_reduce(stop_now, op=dist.ReduceOp.MAX)
            if stop_now.item() or step % cfg["ckpt_interval"] == 0 or step == cfg["max_steps"]:
                checkpoint()
            if stop_now.item():
                stopped = True
                break
    bar.close()
    if stopped:
        log(f"stopped by signal: checkpoint at step {step} in {ckpt_path}; continue with --resume=True")
    result = dict(step=step, stopped=stopped, tokens=step * tokens_per_step, **history,
                  tok_per_s=statistics.median([r["tok_per_s"] for r in rows_log if "tok_per_s" in r][1:] or [0.0]),
                  final_train_loss=history["train_loss"][-1] if history["train_loss"] else None,
                  final_val_loss=history["val_loss"][-1][1] if history["val_loss"] else None,
                  final_val_bpb=history["val_bpb"][-1][1] if history["val_bpb"] else None)
    if master and cfg["out_dir"] and not stopped:
        plot_metrics(metrics_path, os.path.join(cfg["out_dir"], "loss.png"))
    if master and not quiet and not stopped and cfg["sample_tokens"] > 0 and not fsdp:  # (sharded: export first)
        enc = data_.encoding()
        prompt = torch.tensor([enc.encode("The ")], device=device)
        torch.manual_seed(cfg["seed"])
        raw_model.eval()
        with autocast:
            out = raw_model.generate(prompt, min(cfg["sample_tokens"], mcfg.max_position_embeddings - 4),
                                     temperature=0.8, top_k=40)
        print("-" * 40 + " sample " + "-" * 40)
        print(enc.decode([i for i in out[0].tolist() if i < enc.n_vocab]))  # (not the vocab padding)
        print("-" * 88)
    result["model"] = raw_model
    return result


def shard_model(model, ptdtype, device):
    """FSDP2: one fully_shard unit per transformer block, then the root (embeddings, final norm, head). Blocks
    all-gather their weights in the training dtype (bf16 on CUDA) and reduce gradients in fp32; the fp32 shards are
    the master weights. The residual stream and the root stay fp32 (cast_forward_inputs=False), as under DDP with
    autocast, so that FSDP and DDP compute the same function."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    low = None if ptdtype == torch.float32 else ptdtype
    block = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32, cast_forward_inputs=False)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=block)
    fully_shard(model, mesh=mesh, mp_policy=MixedPrecisionPolicy(reduce_dtype=torch.float32))
    return model


def _load_state(model, optimizer, ckpt, path):
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit the model ({str(e).splitlines()[0]})") from None
    return ckpt["step"]


def sweep(results_file, runs, desc="runs"):
    """Train every {name: config} in `runs` in this process, saving each run's metrics into results_file (JSON) as
    it finishes. Runs already there with the same config are not redone, so an interrupted sweep resumes."""
    from tqdm import tqdm
    done = {}
    if os.path.isfile(results_file):
        with open(results_file) as f:
            done = {k: v for k, v in json.load(f).items() if k in runs}  # drop runs the sweep no longer has
    for name, cfg in tqdm(runs.items(), desc=desc):
        cfg = validate_config({**default_config(), **cfg})
        # a finished run counts when its config matches; keys added to train.py since it ran take their defaults
        if name in done and {**default_config(), **done[name]["config"]} == cfg:
            continue
        t0 = time.perf_counter()
        res = train(cfg, quiet=True)
        res.pop("model")
        if res["stopped"]:  # Ctrl-C / SIGTERM: keep what finished, record nothing of this run
            raise KeyboardInterrupt(f"sweep interrupted during {name}; rerun to continue")
        done[name] = dict(config=cfg, metrics=res, seconds=time.perf_counter() - t0)
        os.makedirs(os.path.dirname(results_file) or ".", exist_ok=True)
        with open(results_file + ".tmp", "w") as f:
            json.dump(done, f)
        os.replace(results_file + ".tmp", results_file)
    return {name: done[name]["metrics"] for name in runs}


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path, rows):
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(path + ".tmp", path)


def plot_metrics(metrics_path, file):
    from plots import save, subplots
    rows = read_jsonl(metrics_path)
    tr = [r for r in rows if "train_loss" in r]
    va = [r for r in rows if "val_loss" in r]
    fig, ax = subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in tr], [r["train_loss"] for r in tr], lw=0.8, label="train")
    ax.plot([r["step"] for r in va], [r["val_loss"] for r in va], "o-", label="val")
    ax.set(xlabel="step", ylabel="loss (nats/token)")
    ax2 = ax.twinx()
    ax2.plot([r["step"] for r in tr], [r["lr"] for r in tr], "k:", lw=1, label="lr")
    ax2.set_ylabel("lr")
    ax.legend(loc="upper right")
    save(fig, file, dpi=110)


def main(argv):
    try:
        if argv[:1] == ["export"]:  # python train.py export out/ckpt_dcp official_dir
            if len(argv) != 3:
                raise ConfigError("usage: python train.py export CHECKPOINT(ckpt.pt | DCP dir | out_dir) OUT_DIR")
            print(f"exported to {export_checkpoint(argv[1], argv[2])} (MiniCPM.from_pretrained reads it)")
            return
        cfg = get_config(argv)
        train(cfg)
    except (ConfigError, CheckpointError, FileNotFoundError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])

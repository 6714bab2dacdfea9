"""
Train MiniCPM: model.py + mup.py + wsd.py composed (paper §3-§4), nanoGPT style.

    python train.py                                   # tiny model on the embedded corpus, CPU, a few minutes
    python train.py config/wt_9m.py --max_steps=2000  # a config file, then --key=value overrides
    torchrun --standalone --nproc_per_node=8 train.py config/x.py               # one node, DDP
    torchrun --nnodes=4 --nproc_per_node=8 --rdzv_backend=c10d \\
        --rdzv_endpoint=$HEAD_NODE:29500 --rdzv_id=$JOB_ID train.py config/x.py # many nodes: same command on each
    torchrun ... train.py config/x.py --fsdp=True     # FSDP2, sharded DCP checkpoints (resumable at any world size)
    python train.py export out/ckpt_dcp official_dir  # a checkpoint -> the official format (from_pretrained)
    python train.py --init_from=out --data=sft.jsonl --decay_steps=0 --lr=1e-3 --max_steps=1000 --out_dir=out-sft
                                                      # SFT: steps 601-1000 after a 600-step run (paper §5)
    python train.py config/dpo.py --init_from=out-sft --data=pref.jsonl   # DPO against the SFT model (§7.1, dpo.py)
    python train.py --init_from=MiniCPM-1B-sft-bf16 --data=data/mine --max_steps=2000 --lr=1e-3 --out_dir=out-cpt
                                                      # on from a released checkpoint: its model, weights, tokenizer

The file reads top to bottom: the config (every key below can be set in a config file or as --key=value; model
keys left at None come from `preset`), then the loop and its training step (the next-token loss, or DPO's on
preference pairs), then the start (the config checked; the data, the model and its optimizer: fresh, resumed, or
from another run) and the end of a run. The checks that protect a run live
in guards.py, each called by a name that says what it guards. The global batch of step s is a function of
(seed, s) only: batch_size x grad_accum x world_size rows, split across processes and micro-steps, so any split logs
the same losses.
`train(config)` runs one training and returns its metrics, for experiment scripts that run many in one process.
"""

import math
import os
import statistics
import sys
import time
from contextlib import closing, nullcontext
from dataclasses import dataclass, field, fields

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import configurator
from checkpoint import (DCP_DIR, CheckpointError, append_jsonl, claim_out_dir, export_checkpoint, keep_copy, locked,
                        model_from_checkpoint, open_metrics, save_checkpoint, save_dcp)
from configurator import ConfigError
from corpus import MixtureData, epochs
from dpo import METRICS as DPO_METRICS
from dpo import micro_batch_loss, pairs_drawn, reference_logps, step_order
from files import WriteError, write_json
from guards import (MODEL_KEYS, TRAINER_VERSION, check_eval_split, check_objective, data_fingerprints,
                    inherited_model_keys, load_preference_data, load_run_data, model_config, read_source, resume_from,
                    stage_start, start_from)
from longctx import mixed_batch
from model import PRESETS, MiniCPM, MiniCPMConfig, expert_load, load_balancing_loss
from mup import configure_optimizer, set_lr
from plots import plot_metrics
from sample import generate_text
from system import (StopFlag, all_mean, check_fits_in_memory, check_same_config, check_step_fits, flops_per_token,
                    hardware, launch_command, peak_flops, process_device, resolve_system, setup_distributed,
                    shard_model)
from tokenizer import data_tokenizer_id
from wsd import DecayStats, lr_at, schedule_defaults

# ---------------------------------------------------------------------------------------------------- config
# I/O
out_dir = "out"  # checkpoints, metrics.jsonl, loss.png; "" writes nothing (in-process experiments)
resume = False  # continue out_dir/ckpt.pt exactly where it stopped
overwrite = False  # start fresh in an out_dir that holds a run (its checkpoint and metrics are replaced)
init_from = ""  # start from another run's checkpoint (file or out_dir): weights, optimizer and step, with this
#                run's schedule; how WSD branches a decay off a stable run (paper §4.3). Or a released checkpoint
#                (an official directory: config.json + weights): its model (the model keys not given), weights and
#                tokenizer, a fresh AdamW and step 0: continued pre-training is a new WSD run
keep_ckpts = False  # also keep every periodic checkpoint as ckpt_{step:06d}.pt (decay branch points)
eval_interval = 100  # steps between validation evaluations (and at the last step)
eval_steps = 10  # validation batches per evaluation
eval_seed = None  # the seed the validation batches are drawn with (None: the run's seed); runs of several seeds
#                   compared on one held-out sample set it (experiments)
eval_rows = None  # rows per validation batch (None: the training global batch); with eval_seed, runs of different
#                   batch sizes are scored on one identical sample (the batch-size sweep, paper §3.2)
ckpt_interval = 250  # steps between checkpoints (and at the end, and on SIGTERM / Ctrl-C)
sample_tokens = 300  # tokens sampled from the model at the end (0: none)
# data
data = "embedded"  # "embedded" (Python's own docs, offline), "python_source" (its ~30 MB of source, offline), a
#                   directory prepared by corpus.py, a .jsonl of prompt/response examples (SFT: loss on the
#                   responses only), or a mixture "src:w,src:w"
eval_data = ""  # more held-out sets, e.g. "python_source,embedded": each one's val split is evaluated at the end
#                 (bits/byte in the result's val_bpb_by_set; paper §4.5 averages the loss over several held-out sets)
decay_data = ""  # paper §5, two-stage pre-training: the mixture the WSD decay trains on, from T = S - decay_steps,
#                  e.g. "embedded:0.7,data/tasks/sft_train.jsonl:0.3"; "" keeps `data`
long_ratio = 1.0  # long-context mix (paper §7.2: 0.44): the fraction of rows that are seq_len-long windows ...
short_len = 0  # ... the others are made of independent short_len-token windows
passkey_ratio = 0.0  # the fraction of rows that are passkey documents (longctx.py)
# objective
objective = "lm"  # "lm": next-token cross-entropy (pre-training, SFT); "dpo": preference pairs against the init_from
#                  model, frozen (paper §7.1, dpo.py): data is a {prompt, chosen, rejected} .jsonl; config/dpo.py
beta = 0.1  # DPO: how strongly the policy is held to the reference
# model: a preset from model.PRESETS; the model keys at the end of this block override it
preset = "tiny"
# optimisation (paper §3: AdamW betas (0.9, 0.95), weight decay 0.1, grad clip 1.0, muP lr ~0.01)
lr = 0.01  # the base lr eta; hidden matrices get lr / m (mup.py); 0 keeps the weights (a round-trip check)
weight_decay = 0.1
grad_clip = 1.0  # 0: no clipping (the norm is still logged)
batch_size = 16  # rows per process per micro-step
grad_accum = 1  # micro-steps per step
seq_len = 256
seed = 1337
# schedule (wsd.py): S = max_steps, W = warmup_steps, T = S - decay_steps
schedule = "wsd"  # "wsd" | "cosine" (Cosine(T), T = cosine_steps) | "cosine_loop"
max_steps = 600  # S, counted from step 0 of the first stage (an init_from run continues the source's count)
warmup_steps = None  # W; None: 5% of S (30 of 600), within the stable phase
decay_steps = None  # S - T; None: 10% of S (the paper finds 10% of the tokens enough for the decay; 0 for cosine)
stage_warmup_steps = 0  # an init_from stage: its first N steps ramp the lr up from near 0 (after a decayed checkpoint
#                        or upcycling, instead of jumping back to the peak); 0: the schedule as it is (a WSD branch)
decay = "exp"  # exp | linear | cosine | 1-sqrt
final_lr_ratio = 0.1
half_life = 0.0  # exp decay half-life in steps; 0: end the decay at final_lr_ratio
cosine_steps = 0  # T of Cosine(T) / CosineLoop(T); 0: = max_steps
update_stats = False  # paper §4.4: also record, each step, the largest element-wise weight update and the cosine
#                       of consecutive gradients (wsd.DecayStats; copies the weight matrices each step; not FSDP)
# system
device = "auto"  # auto: cuda if available, else cpu
dtype = "auto"  # auto: bfloat16 autocast on CUDA, float32 on CPU
compile = "auto"  # auto: torch.compile on CUDA, eager on CPU
fsdp = False  # FSDP2 (fully_shard per block, bf16 params / fp32 reductions on CUDA) + DCP checkpoints; torchrun
activation_checkpointing = False  # recompute each block in the backward: ~4x longer contexts for ~1/3 more compute
# model keys: model.py's MiniCPMConfig fields; None takes the preset's value (or, resuming or starting from a
# checkpoint, its model's). Their meanings and defaults: python train.py --help
vocab_size = None
hidden_size = None
num_hidden_layers = None
num_attention_heads = None
num_key_value_heads = None
intermediate_size = None
max_position_embeddings = None
rms_norm_eps = None
rope_theta = None
rope_scaling = None
scale_emb = None
scale_depth = None
dim_model_base = None
init_std = None
tie_word_embeddings = None
use_mup = None
num_experts = None
top_k = None
router_aux_loss_coef = None

CONFIG_KEYS = [k for k in list(globals()) if not k.startswith("_") and not callable(globals()[k])
               and not isinstance(globals()[k], type(sys)) and k.islower()]
LOWER_BOUNDS = dict(max_steps=1, batch_size=1, grad_accum=1, seq_len=1, eval_steps=1, eval_interval=1, ckpt_interval=1,
                    lr=0, grad_clip=0, weight_decay=0, seed=0, warmup_steps=0, decay_steps=0, half_life=0,
                    cosine_steps=0, short_len=0, stage_warmup_steps=0, eval_seed=0, eval_rows=1, beta=0)


# -------------------------------------------------------------------------------------------------------- the loop


def train(cfg, quiet=False, progress=None):
    """Run one training described by a config dict (see the module-level keys); returns its metrics. The out_dir is
    locked for the whole run (by rank 0 under torchrun): a second run on it stops at once. quiet=True prints
    nothing; `progress`, a label, still shows the steps' progress bar under it (an experiment's run inside its
    sweep), cleared when the run ends."""
    cfg = validate_config({**default_config(), **cfg})
    resolve_system(cfg["device"], cfg["dtype"], cfg["compile"])  # (a device this machine lacks: before out_dir exists)
    holds_lock = cfg["out_dir"] and os.environ.get("RANK", "0") == "0"
    with locked(cfg["out_dir"]) if holds_lock else nullcontext():
        return run(cfg, quiet, progress)


def run(cfg, quiet, progress=None):
    """train() of a checked config, its out_dir held: start, then one training step after another (each followed by
    an evaluation and a checkpoint when they are due), until max_steps or a signal; then the end of the run."""
    r = start(cfg, quiet, progress)
    stopped = False
    with StopFlag() as stop, closing(r.bar):  # (the bar closed before any error line is printed)
        while r.step < cfg["max_steps"]:
            train_step(r)
            if r.step % cfg["eval_interval"] == 0 or r.step == cfg["max_steps"]:
                evaluate_run(r, stop)
            stopped = stop.anywhere(r.device, r.world)
            if stopped or r.step % cfg["ckpt_interval"] == 0 or r.step == cfg["max_steps"]:
                save_run(r)
            if stopped:
                break
    return dict(finish(r, stopped), exit_code=stop.exit_code if stopped else 0)


def train_step(r):
    """One optimizer step at this step's lr (wsd.lr_at x each muP group's lr_scale): the micro-steps' gradients of the
    objective, clipping, the step (refused, checkpoint kept, if the loss or the gradient is not finite), its row."""
    cfg, t0 = r.cfg, time.perf_counter()
    lr_now = lr_at(cfg, r.step + 1, r.stage_start)  # step r.step + 1 (wsd.lr_at: warmup from lr > 0, decay to the end)
    set_lr(r.optimizer, lr_now)
    metrics, router_logits, aux = preference_gradients(r) if r.dpo else lm_gradients(r)
    grad_norm = torch.nn.utils.clip_grad_norm_(r.raw_model.parameters(), cfg["grad_clip"] or float("inf"))
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: the norm over all shards
        grad_norm = grad_norm.full_tensor()
    metrics, grad_norm = all_mean(metrics, r.world), grad_norm.item()
    train_loss = metrics.item() if metrics.dim() == 0 else metrics[0].item()
    if not (math.isfinite(train_loss) and math.isfinite(grad_norm)):  # before the weights change
        raise FloatingPointError(f"the run diverged at step {r.step + 1} (lr {lr_now:.3g}, base lr {cfg['lr']}): "
                                 f"train loss {train_loss}, gradient norm {grad_norm}; no step was taken and the last "
                                 f"checkpoint is kept: lower --lr or check the data")
    if r.decay_stats:  # the gradients and weights read around the step
        r.decay_stats.step(r.optimizer, r.step + 1, lr_now, grad_norm, train_loss)
    else:
        r.optimizer.step()
    r.optimizer.zero_grad(set_to_none=True)
    r.step += 1
    log_step(r, train_loss, metrics, lr_now, grad_norm, time.perf_counter() - t0, router_logits, aux)


def lm_gradients(r):
    """The next-token loss's gradients over this step's micro-batches (+ an MoE's balancing term, paper §7.3):
    (the step's loss, the last micro-batch's router logits and balancing loss)."""
    cfg, A = r.cfg, r.cfg["grad_accum"]
    src = step_data(r)
    loss_sum, router_logits, aux = torch.zeros((), device=r.device), (), None
    for micro, (x, y, weight) in enumerate(micro_batches(cfg, src, r.step, r.global_batch, r.rank, r.world)):
        if cfg["fsdp"]:  # reduce-scatter the gradients on the last micro-step only
            r.raw_model.set_requires_gradient_sync(micro == A - 1)
        sync = r.model.no_sync() if r.world > 1 and not cfg["fsdp"] and micro < A - 1 else nullcontext()
        with sync, r.autocast:
            _, loss, router_logits = r.model(x.to(r.device, non_blocking=True), y.to(r.device, non_blocking=True),
                                             output_router_logits=True)
            objective = loss
            if router_logits:  # MoE: + the load-balancing term, in the objective only (paper §7.3)
                aux = load_balancing_loss(router_logits, r.mcfg.top_k)
                objective = loss + r.mcfg.router_aux_loss_coef * aux
        (objective * weight).backward()
        loss_sum += loss.detach().float() * weight
    return loss_sum, router_logits, aux


def preference_gradients(r):
    """The DPO loss's gradients over this step's pairs (dpo.py), drawn from (seed, step) alone: (its metrics)."""
    cfg, A, B = r.cfg, r.cfg["grad_accum"], r.cfg["batch_size"]
    order = step_order(cfg, r.step, len(r.data), r.global_batch)
    stats = torch.zeros(len(DPO_METRICS), device=r.device)
    for micro in range(A):
        lo = (r.rank * A + micro) * B
        sync = r.model.no_sync() if r.world > 1 and micro < A - 1 else nullcontext()
        with sync, r.autocast:
            loss, micro_stats = micro_batch_loss(r.model, r.data, r.reference, order[lo:lo + B], cfg["beta"],
                                                 r.device)
        (loss / A).backward()
        stats += micro_stats / A
    return stats, (), None


def step_data(r):
    """The data of this step: decay_data from T = S - decay_steps on (two-stage pre-training, paper §5), logged once
    where it starts; else the run's data."""
    cfg = r.cfg
    T = cfg["max_steps"] - cfg["decay_steps"]
    if r.decay_data is None or r.step < T:
        return r.data
    if r.step == T:
        weights = [round(float(w), 6) for w in getattr(r.decay_data, "weights", [1.0])]
        r.log_row(dict(step=r.step, data_switch=cfg["decay_data"], weights=weights))
        r.write(f"step {r.step}: the decay phase starts on {cfg['decay_data']} (weights {weights})")
    return r.decay_data


def micro_batches(cfg, src, step, global_batch, rank, world):
    """This process's micro-batches of step `step`, [(x, y, weight)]: rows (rank * A + micro) * B ... of the global
    batch, a function of (seed, step) only. Token data: plain windows, or the long/short + passkey mix of
    longctx.py (paper §7.2); weight 1/A. Data with prompt / padding labels (-100: SFT, two-stage mixtures): weight =
    the micro-batch's share of the global batch's response tokens (x world: DDP averages the processes), so that
    the step's loss is the mean over every response token whatever the split."""
    A, B, seq_len = cfg["grad_accum"], cfg["batch_size"], cfg["seq_len"]
    rows = [slice((rank * A + micro) * B, (rank * A + micro + 1) * B) for micro in range(A)]
    if isinstance(src, MixtureData):
        x, y = src.batch("train", cfg["seed"], step, global_batch, seq_len)
        n = max(1, int((y != -100).sum()))
        return [(x[r], y[r], int((y[r] != -100).sum()) * world / n) for r in rows]
    if cfg["long_ratio"] < 1 or cfg["passkey_ratio"] > 0:  # (drawn as a whole global batch: built once a step)
        x, y, _ = mixed_batch(src, cfg["seed"], step, global_batch, seq_len, None, cfg["long_ratio"],
                              cfg["short_len"], cfg["passkey_ratio"])
        return [(x[r], y[r], 1 / A) for r in rows]
    return [(*src.batch("train", cfg["seed"], step, global_batch, seq_len, rows=r), 1 / A) for r in rows]


def log_step(r, train_loss, metrics, lr_now, grad_norm, dt, router_logits, aux):
    """The step's metrics row (MFU on a known GPU; an MoE's balancing loss and expert load; DPO's metrics under TRL's
    names), the progress bar."""
    if r.dpo:
        row = dict(step=r.step, **dict(zip(DPO_METRICS, metrics.tolist())), lr=lr_now, grad_norm=grad_norm,
                   pairs_per_s=r.global_batch / dt)
    else:
        row = dict(step=r.step, train_loss=train_loss, lr=lr_now, grad_norm=grad_norm,
                   tokens=r.step * r.tokens_per_step, tok_per_s=r.tokens_per_step / dt)
    if r.peak and not r.dpo:
        row["mfu"] = flops_per_token(r.mcfg, r.cfg["seq_len"]) * r.tokens_per_step / dt / (r.peak * r.world)
    if router_logits:  # of this process's last micro-batch
        row["aux_loss"] = aux.item()
        row["expert_load"] = [round(v, 4) for v in expert_load(router_logits, r.mcfg.top_k).tolist()]
    r.log_row(row)
    r.history["train_loss"].append(train_loss)
    r.bar.update(1)
    r.bar.set_postfix(loss=f"{train_loss:.4f}", lr=f"{lr_now:.2e}", refresh=False)


def evaluate_run(r, stop):
    """Validation on the run's data, logged and printed; left off when a signal comes during it (StopFlag), and for
    DPO (its pairs are scored by dpo.evaluate_pairs)."""
    if r.dpo:
        return
    scores = evaluate(r.raw_model, r.data, r.cfg, r.global_batch, r.rank, r.world, r.device, r.autocast, stop)
    if scores is None:
        return
    val, bpb = scores
    r.log_row(dict(step=r.step, val_loss=val, val_bpb=bpb))
    r.history["val_loss"].append((r.step, val))
    r.history["val_bpb"].append((r.step, bpb))
    r.write(f"step {r.step}: train {r.history['train_loss'][-1]:.4f}, val {val:.4f} ({bpb:.3f} bits/byte)")


@torch.no_grad()
def evaluate(model, data, cfg, global_batch, rank, world, device, autocast, stop=None):
    """(validation loss in nats/token, in bits/byte): eval_steps batches of eval_rows rows (else the training
    global batch) drawn with eval_seed (else the run's seed), each process scoring its share in chunks of at most
    batch_size rows, so equal for any split; the pure cross-entropy (an MoE's balancing term is not part of it).
    None when `stop` (a StopFlag) is set between two batches: a signal's checkpoint does not wait for the rest."""
    rows = cfg["eval_rows"] or global_batch
    share, B = rows // world, cfg["batch_size"]  # (rows split over the processes: check_eval_split)
    seed = cfg["seed"] if cfg["eval_seed"] is None else cfg["eval_seed"]
    was_training = model.training
    model.eval()
    losses = torch.zeros((), device=device)
    for i in range(cfg["eval_steps"]):
        if stop is not None and stop.anywhere(device, world):
            model.train(was_training)
            return None
        for lo in range(rank * share, (rank + 1) * share, B):
            hi = min(lo + B, (rank + 1) * share)
            x, y = data.batch("val", seed, i, rows, cfg["seq_len"], rows=slice(lo, hi))
            with autocast:
                losses += model(x.to(device), y.to(device))[1].float() * ((hi - lo) / B)  # (1 but a last chunk)
    model.train(was_training)
    val = all_mean(losses / (cfg["eval_steps"] * share / B), world).item()
    return val, val / math.log(2) / data.meta["bytes_per_token"]


def save_run(r):
    """The run's checkpoint at this step (every process takes part under FSDP; rank 0 writes the single file)."""
    cfg, step, path = r.cfg, r.step, r.ckpt_path
    train_state = dict(step=step, config=cfg, trainer=TRAINER_VERSION, **r.lineage,
                       data=dict(seed=cfg["seed"], next_step=step, global_batch=r.global_batch, **r.fingerprints))
    if cfg["fsdp"] and path:
        keep = os.path.join(cfg["out_dir"], f"{DCP_DIR}_{step:06d}") if cfg["keep_ckpts"] else None
        save_dcp(path, r.raw_model, r.optimizer, train_state, keep)
    elif r.master and path:
        rng = dict(cpu=torch.get_rng_state(),
                   cuda=torch.cuda.get_rng_state(r.device) if r.device.type == "cuda" else None)
        save_checkpoint(path, dict(model=r.raw_model.state_dict(), optimizer=r.optimizer.state_dict(), rng=rng,
                                   **train_state))
        if cfg["keep_ckpts"]:
            keep_copy(path, os.path.join(cfg["out_dir"], f"ckpt_{step:06d}.pt"))
    if r.world > 1:
        dist.barrier()


# ------------------------------------------------------------------------------- the start: data, model, optimizer


def default_config():
    g = globals()
    return {k: g[k] for k in CONFIG_KEYS}


def get_config(argv=(), base=None):
    """Defaults <- config files (python files assigning keys) <- --key=value (Python literals or plain strings)."""
    types = {f.name: f.type for f in fields(MiniCPMConfig)}  # model keys default to None: their type is the field's
    types.update(compile=(bool, str), warmup_steps=int, decay_steps=int, eval_seed=int, eval_rows=int)
    return validate_config(configurator.get_config(argv, base or default_config(), types,
                                                   nullable=MODEL_KEYS + ["warmup_steps", "decay_steps",
                                                                          "eval_seed", "eval_rows"]))


def file_config(path):
    """The keys a config file sets, for a run in another script's process (e.g. DPO's: file_config(dpo.CONFIG))."""
    scope = {}
    configurator.run_config_file(path, scope)
    return {k: v for k, v in scope.items() if k in CONFIG_KEYS}


def validate_config(cfg):
    for k in cfg:
        if k not in CONFIG_KEYS:
            raise configurator.unknown_key(k, CONFIG_KEYS)
    configurator.check_numbers(cfg, LOWER_BOUNDS, positive={"beta"})  # (before the defaults, which divide max_steps)
    cfg = schedule_defaults(cfg)  # (wsd.py) warmup / decay scaled to the run, the schedule checked
    for k in ("long_ratio", "passkey_ratio"):
        if not 0 <= cfg[k] <= 1:
            raise ConfigError(f"config key {k}={cfg[k]} must be within [0, 1]")
    if cfg["long_ratio"] < 1 and not 1 <= cfg["short_len"] <= cfg["seq_len"]:
        raise ConfigError(f"long_ratio={cfg['long_ratio']} mixes in short rows: set short_len within [1, seq_len]")
    if cfg["update_stats"] and cfg["fsdp"]:
        raise ConfigError("update_stats=True compares whole weights and gradients step to step: not with fsdp=True")
    if cfg["decay_data"] and not cfg["decay_steps"]:
        raise ConfigError(f"decay_data={cfg['decay_data']!r} is the data of the decay phase: set decay_steps > 0")
    check_objective(cfg)
    cfg = inherited_model_keys(cfg)
    model_config(cfg)
    return cfg


@dataclass
class Run:
    """One training in progress: what `start` builds and every step of the loop reads and advances."""
    cfg: dict
    mcfg: MiniCPMConfig
    data: object  # the training data (TokenData, SFTData or MixtureData)
    decay_data: object  # the data of the WSD decay (two-stage pre-training), or None
    eval_sets: dict  # more held-out sets, evaluated at the end
    device: torch.device
    autocast: object
    rank: int
    world: int
    model: torch.nn.Module  # what the step calls: compiled and / or wrapped in DDP
    raw_model: MiniCPM  # the model itself (FSDP-sharded under fsdp=True)
    optimizer: torch.optim.Optimizer
    step: int
    log: object  # print, or nothing (quiet runs, ranks > 0)
    quiet: bool
    peak: float  # the device's peak FLOP/s (MFU), None on a CPU
    fingerprints: dict  # the content of the data (data_fingerprints), saved with every checkpoint
    lineage: dict  # the run's tokenizer (name, id), the released checkpoint it trained on from (origin) and the step
    #               this stage started at (stage_start: its stage_warmup_steps count from it), saved too
    rows_log: list = field(default_factory=list)  # every metrics.jsonl row of the run
    history: dict = field(default_factory=lambda: dict(train_loss=[], val_loss=[], val_bpb=[]))
    decay_stats: object = None  # wsd.DecayStats under update_stats=True (paper §4.4)
    reference: object = None  # DPO: the frozen init_from model's log-probs of the pairs the steps draw (2, n pairs)
    bar: object = None
    t_start: float = 0.0

    @property
    def stage_start(self):
        return self.lineage["stage_start"]

    @property
    def dpo(self):
        return self.cfg["objective"] == "dpo"

    @property
    def master(self):
        return self.rank == 0

    @property
    def global_batch(self):
        return self.cfg["batch_size"] * self.cfg["grad_accum"] * self.world

    @property
    def tokens_per_step(self):
        return self.global_batch * self.cfg["seq_len"]

    @property
    def ckpt_path(self):
        out_dir = self.cfg["out_dir"]
        return os.path.join(out_dir, DCP_DIR if self.cfg["fsdp"] else "ckpt.pt") if out_dir else None

    def write(self, text):
        """A line beside the progress bar (rank 0, not quiet)."""
        if self.bar is not None and not self.bar.disable and not self.quiet:
            self.bar.write(text)

    def log_row(self, row):
        """A metrics.jsonl row: kept for the figure and summary, appended to the file by rank 0."""
        self.rows_log.append(row)
        if self.master and self.cfg["out_dir"]:
            append_jsonl(os.path.join(self.cfg["out_dir"], "metrics.jsonl"), row)


def start(cfg, quiet, progress=None):
    """The processes, the data, the model and optimizer (fresh, resumed or from another run), metrics.jsonl and the
    progress bar of a run (shown unless quiet, or labelled `progress`); the run's first lines printed."""
    dev, ptdtype, use_compile = resolve_system(cfg["device"], cfg["dtype"], cfg["compile"])
    rank, local_rank, world = setup_distributed(dev.split(":")[0])
    device, master, fsdp = process_device(dev, local_rank), rank == 0, cfg["fsdp"]
    check_same_config(cfg, world)
    if fsdp and not dist.is_initialized():
        raise ConfigError("fsdp=True shards the model over the processes of torchrun: run it as `torchrun "
                          "--standalone --nproc_per_node=N train.py --fsdp=True ...` (N=1 works too)")
    log = (lambda *a: None) if quiet or not master else print
    t_start = time.time()
    mcfg = model_config(cfg)
    source = read_source(cfg)
    dpo, reference = cfg["objective"] == "dpo", None
    if dpo:  # the reference: init_from's model, frozen (read first: a bad checkpoint says so)
        reference_model = model_from_checkpoint(cfg["init_from"], device).model
        data, decay_data, eval_sets = load_preference_data(cfg, mcfg, source), None, {}
    else:
        data, decay_data, eval_sets = load_run_data(cfg, mcfg, source)
    out_dir = cfg["out_dir"]
    if master and out_dir:
        claim_out_dir(out_dir, cfg["resume"], cfg["overwrite"], cfg["init_from"])
    global_batch = cfg["batch_size"] * cfg["grad_accum"] * world
    check_eval_split(cfg, world)
    fingerprints = data_fingerprints(data, decay_data)
    raw_model, optimizer, step = build(cfg, mcfg, device, ptdtype, fsdp, global_batch, log, fingerprints, source)
    lineage = dict(tokenizer=data.meta["tokenizer"], tokenizer_id=data_tokenizer_id(data.meta),
                   origin=source.origin if source else None, stage_start=stage_start(cfg, source, step))
    if dpo:  # its log-probs of the pairs the steps draw, once (also on resume); then dropped
        used = pairs_drawn(cfg, len(data), global_batch)
        reference = reference_logps(reference_model, data.pairs, used, device, quiet or not master)
        del reference_model
    rows_log = open_metrics(out_dir, cfg["resume"], cfg["overwrite"], step, log) if master and out_dir else []
    model = torch.compile(raw_model) if use_compile else raw_model
    if world > 1 and not fsdp:
        # experts that get no token in a step have no gradient: DDP must expect unused parameters
        model = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None,
                    find_unused_parameters=mcfg.num_experts > 0)
    autocast = torch.autocast(device.type, dtype=ptdtype) if ptdtype != torch.float32 else nullcontext()
    r = Run(cfg=cfg, mcfg=mcfg, data=data, decay_data=decay_data, eval_sets=eval_sets, device=device,
            autocast=autocast, rank=rank, world=world, model=model, raw_model=raw_model, optimizer=optimizer,
            step=step, log=log, quiet=quiet, peak=peak_flops(device), fingerprints=fingerprints, lineage=lineage,
            rows_log=rows_log, t_start=t_start, reference=reference)
    log(f"{raw_model.describe()}; {world} process(es) x {cfg['grad_accum']} micro-steps x {cfg['batch_size']} rows x "
        f"{cfg['seq_len']} tokens = {r.tokens_per_step:,} tokens/step on {device} "
        f"({str(ptdtype).replace('torch.', '')}, compile={use_compile}{', FSDP2' if fsdp else ''})")
    S = cfg["max_steps"]
    # never repeats its corpus silently: the epochs of the steps this run (or stage) trains, at its own batch (an
    # earlier stage trained on its own data at its own batch, unknown here)
    if run_epochs := epochs(data, (S - step) * r.tokens_per_step, cfg["passkey_ratio"]):
        log(f"{S - step:,} steps x {r.tokens_per_step:,} tokens = {run_epochs:.2f} epochs of {cfg['data']}"
            + (f" (this stage: steps {step + 1}-{S})" if step else ""))
    r.bar = tqdm(total=S, initial=step, disable=not master or (quiet and not progress), dynamic_ncols=True,
                 desc=progress, leave=not quiet)
    if cfg["update_stats"]:  # paper §4.4
        r.decay_stats = DecayStats(raw_model)
        r.history["decay_stats"] = r.decay_stats.rows  # [step, lr, grad norm, cos to the last gradient, max |update|,
        #                                                loss]
    return r


def build(cfg, mcfg, device, ptdtype, fsdp, global_batch, log, fingerprints, source):
    """The one model and its one optimizer, then their state from `source` (read_source: this out_dir's checkpoint
    under `resume`; under `init_from` another run's checkpoint, a WSD branch, a context extension, sparse upcycling,
    or a released checkpoint) or a fresh muP init (source None); `fingerprints`, the content of this run's data
    (data_fingerprints), is what a resumed checkpoint must have trained on. Returns (model, optimizer, step)."""
    check_fits_in_memory(mcfg)
    check_step_fits(mcfg, cfg["batch_size"], cfg["seq_len"], device, cfg["activation_checkpointing"])
    torch.manual_seed(cfg["seed"])
    model = MiniCPM(mcfg).to(device)
    model.activation_checkpointing = cfg["activation_checkpointing"]
    if fsdp:
        shard_model(model, ptdtype, device)
    optimizer = configure_optimizer(model, cfg["lr"], cfg["weight_decay"])  # the muP groups (on shards under FSDP)
    step, S = 0, cfg["max_steps"]
    if cfg["resume"]:
        step = resume_from(cfg, source, model, optimizer, fsdp, global_batch, device, fingerprints,
                           default_config())
        if step >= S:
            raise ConfigError(f"{cfg['out_dir']} finished at step {step} = max_steps: nothing to resume; to train "
                              f"further, start a new stage: --init_from={cfg['out_dir']} --max_steps=<more than "
                              f"{step}> --out_dir=<another directory>")
        log(f"resumed {cfg['out_dir']} at step {step}: steps {step + 1}-{S} to go")
    elif cfg["init_from"]:
        step = start_from(cfg, mcfg, source, model, optimizer, log, weights_only=cfg["objective"] == "dpo")
        if step >= S:  # (a stage of 0 steps would exit 0 having trained nothing)
            raise ConfigError(f"init_from {cfg['init_from']} is at step {step}, and max_steps={S} counts from step 0 "
                              f"of the first stage: nothing to train; set --max_steps={step} + the steps of this "
                              f"stage (e.g. --max_steps={step + max(1, step // 2)})")
        log(f"this stage trains steps {step + 1}-{S} ({S - step} steps) under this run's schedule")
    return model, optimizer, step


# --------------------------------------------------------------------------------------------------------- the end


def finish(r, stopped):
    """The end of a run: the other held-out sets, the loss figure, a sample, summary.json; returns the result (its
    metrics and the model). A stopped run only says how to continue."""
    cfg, out_dir = r.cfg, r.cfg["out_dir"]
    if stopped:
        r.log(f"stopped by signal: checkpoint at step {r.step} in {r.ckpt_path}; continue with --resume=True")
    elif r.eval_sets:  # the other held-out sets, once, at the end
        r.history["val_bpb_by_set"] = {name: evaluate(r.raw_model, d, cfg, r.global_batch, r.rank, r.world, r.device,
                                                      r.autocast)[1] for name, d in r.eval_sets.items()}
        r.log("held-out sets (bits/byte): " + ", ".join(f"{k} {v:.4f}" for k, v in r.history["val_bpb_by_set"].items()))
    h = r.history
    result = dict(step=r.step, stopped=stopped, tokens=r.step * r.tokens_per_step, **h,
                  tok_per_s=statistics.median([x["tok_per_s"] for x in r.rows_log if "tok_per_s" in x][1:] or [0.0]),
                  final_train_loss=h["train_loss"][-1] if h["train_loss"] else None,
                  final_val_loss=h["val_loss"][-1][1] if h["val_loss"] else None,
                  final_val_bpb=h["val_bpb"][-1][1] if h["val_bpb"] else None,
                  epochs=epochs(r.data, r.step * r.tokens_per_step, cfg["passkey_ratio"]))
    if r.dpo and r.rows_log:  # its metrics rows, and the first and last under TRL's names (card.py reads them)
        keys = ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected")
        result.update(rows=r.rows_log, **{k: {m: r.rows_log[i][m] for m in keys} for k, i in (("first", 0),
                                                                                              ("last", -1))})
    writes = r.master and out_dir and not stopped
    if writes:  # before the sample: a signal during it leaves a finished run's summary and figure
        write_run_outputs(r, result, None)
    if cfg["fsdp"] and cfg["sample_tokens"] > 0 and not stopped:
        r.log(f"no end-of-run sample under FSDP (the weights are sharded): python train.py export {r.ckpt_path} "
              f"DIR, then python sample.py --model_dir=DIR")
    elif r.master and not r.quiet and not stopped and cfg["sample_tokens"] > 0:
        torch.manual_seed(cfg["seed"])
        with r.autocast:
            text = generate_text(r.raw_model, r.data.encoding(), "The ", cfg["sample_tokens"])
        print("-" * 40 + " sample " + "-" * 40 + "\n" + text + "\n" + "-" * 88)
        if writes:
            write_run_outputs(r, result, text, figure=False)
    return dict(result, model=r.raw_model)


def write_run_outputs(r, result, text, figure=True):
    """summary.json (what the run did, where, how fast: the numbers a README may quote), then loss.png; a full disk
    here is one line that says the run itself is complete."""
    out_dir, h = r.cfg["out_dir"], r.history
    try:
        write_json(os.path.join(out_dir, "summary.json"), dict(
            command=launch_command("train.py"),
            hardware=hardware(r.device), wall_s=round(time.time() - r.t_start, 1), sample=text,
            **{k: v for k, v in result.items() if k not in h and k != "rows"},
            first_train_loss=h["train_loss"][0] if h["train_loss"] else None))
        if figure:
            plot_metrics(r.rows_log, os.path.join(out_dir, "loss.png"))
    except WriteError as e:
        raise WriteError(f"{e}; the run itself is complete (its checkpoint at step {r.step} is in {r.ckpt_path}): "
                         f"`python plots.py {out_dir}` redraws loss.png") from None


EXPORT_USAGE = """python train.py export CHECKPOINT OUT_DIR [--format=minicpm|llama]

CHECKPOINT: a run's out_dir, its ckpt.pt, or an FSDP run's DCP directory (ckpt_dcp). OUT_DIR: a new directory.
  --format=minicpm  the official MiniCPM layout (config.json, model.safetensors, the tokenizer). Our from_pretrained,
                    sample.py and eval.py read it. transformers reads it only with the official modeling code
                    (trust_remote_code): a run trained from scratch carries none, so copy it in or use llama.
  --format=llama    a LlamaForCausalLM (a MiniCPM-MoE model: MixtralForCausalLM), the multipliers folded into the
                    weights: transformers loads it with no custom code, with the same logits."""
EXPORT_READERS = dict(minicpm="official.from_pretrained reads it; transformers with the official modeling code",
                      llama="transformers' AutoModelForCausalLM reads it")


def usage():
    """The docstring, then every config key with its default and the comment beside it in this file (and, for the
    model keys, in model.py's MiniCPMConfig): written once, where a reader finds it."""
    here = os.path.abspath(__file__)
    return __doc__ + configurator.help_text([
        ("config keys (set in a config file or as --key=value)", (here, "-- config", "# model keys:")),
        (f"model keys (default: the value in --preset, one of {', '.join(PRESETS)}; shown: MiniCPMConfig's own "
         f"default, model.py)", (os.path.join(os.path.dirname(here), "model.py"), "class MiniCPMConfig", "def __post")
         )])


def main(argv):
    if argv[:1] in (["--help"], ["-h"]):
        print(usage())
        return

    def work():
        if argv[:1] == ["export"]:  # python train.py export out/ckpt_dcp official_dir [--format=llama]
            fmt = next((x.split("=", 1)[1] for x in argv[1:] if x.startswith("--format=")), "minicpm")
            paths = [x for x in argv[1:] if not x.startswith("--format=")]
            if paths[:1] in (["--help"], ["-h"]):
                print(EXPORT_USAGE)
                return 0
            if len(paths) != 2 or fmt not in ("minicpm", "llama"):
                raise ConfigError("usage: python train.py export CHECKPOINT OUT_DIR [--format=minicpm|llama] "
                                  "(--help: what each writes)")
            print(f"exported to {export_checkpoint(paths[0], paths[1], fmt)} ({EXPORT_READERS[fmt]})")
            return 0
        return train(get_config(argv))["exit_code"]
    try:
        code = configurator.exit_on_user_error(work, CheckpointError)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if code:  # stopped by a signal, checkpoint saved: 128 + its number (StopFlag)
        sys.exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])

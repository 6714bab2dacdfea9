"""
Alignment, and the two-stage recipe around it (paper §5 and §7.1).

Two-stage pre-training: stage 1 trains on the large pre-training corpus; stage 2 is the WSD decay, trained on the
pre-training data mixed with high-quality and SFT-formatted data (`train.py --decay_data=...`); SFT then trains on
prompt/response pairs only, loss on the responses (`train.py --data=sft.jsonl`), at the decay's final lr.

DPO (Rafailov et al. 2023) then trains the policy pi against a frozen copy of the SFT model, the reference:

    L_DPO = -log sigmoid( beta * [ (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x)) ] )

y_w the chosen and y_l the rejected response, log-probabilities summed over the response tokens only; the implicit
rewards are beta * (log pi - log ref); at the first step pi = ref and the loss is log 2. The paper: lr ~1e-5.

    python dpo.py --init_from=out-sft --data=data/tasks/pref_train.jsonl --out_dir=out-dpo   # train (torchrun too)
    python dpo.py --init_from=MiniCPM-1B-sft-bf16 --data=pref.jsonl --out_dir=out-dpo   # a released checkpoint
    python dpo.py --write_data=data/tasks        # the offline instruction / preference sets (tasks.py)

`python -m experiments.two_stage` reruns decay mixing (A-1 vs A-2) and SFT vs SFT + DPO small.
"""

import argparse
import json
import math
import os
import sys
import time
from contextlib import closing, nullcontext

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from checkpoint import (CheckpointError, append_jsonl, load_checkpoint, load_state, locked, model_from_checkpoint,
                        claim_out_dir, open_metrics, save_checkpoint)
from configurator import ConfigError, check_numbers, cli_bool, exit_on_user_error
from corpus import read_jsonl_rows
from tokenizer import chat_ids, get_encoding, tokenizer_id
from files import write_json
from mup import configure_optimizer, set_lr
from plots import plot_metrics
from system import StopFlag, all_mean, hardware, launch_command, process_device, resolve_system, setup_distributed
from tasks import write_task_data
from wsd import lr_at, schedule_defaults


# ------------------------------------------------------------------------------------------------------------
# the loss


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1):
    """Per-example sigmoid DPO loss and implicit rewards: (losses, chosen_rewards, rejected_rewards)."""
    chosen = policy_chosen_logps - ref_chosen_logps
    rejected = policy_rejected_logps - ref_rejected_logps
    losses = -F.logsigmoid(beta * (chosen - rejected))
    return losses, beta * chosen.detach(), beta * rejected.detach()


def sequence_logps(model, input_ids, labels):
    """Sum over the response tokens of log p(token | prefix): labels are aligned with input_ids (labels[t] is the
    token at t, or -100 for prompt and padding); position t - 1 predicts token t."""
    logits = model(input_ids)[0][:, :-1].float()
    target = labels[:, 1:]
    mask = target != -100
    logp = torch.gather(logits.log_softmax(-1), 2, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1)


# ------------------------------------------------------------------------------------------------------------
# DPO training


def encode_responses(enc, rows, key, seq_len):
    """(input_ids, labels) tensors (n, seq_len) of prompt + row[key] under the chat template, padded with
    <|endoftext|> and labels -100; labels aligned with input_ids (sequence_logps shifts them)."""
    ids = np.full((len(rows), seq_len), enc.eot_token, dtype=np.int64)
    lab = np.full((len(rows), seq_len), -100, dtype=np.int64)
    for i, r in enumerate(rows):
        a, b = chat_ids(enc, [("user", r["prompt"]), ("assistant", r[key])])
        if len(a) > seq_len:
            where = f"line {r['_line']}" if "_line" in r else f"row {i + 1}"  # rows of a file: its line numbers
            raise ValueError(f"{where}: prompt + {key} is {len(a)} tokens > seq_len={seq_len}: raise seq_len")
        ids[i, :len(a)], lab[i, :len(b)] = a, b
    return torch.from_numpy(ids), torch.from_numpy(lab)


def encode_pairs(enc, rows, seq_len):
    """Chosen (input_ids, labels) and rejected (input_ids, labels) of preference rows: four (n, seq_len) tensors."""
    return (*encode_responses(enc, rows, "chosen", seq_len), *encode_responses(enc, rows, "rejected", seq_len))


# the keys of a DPO run; the schedule's keys and defaults are train.py's (wsd.schedule_defaults: warmup 5%, an exp
# decay over the last 10% of max_steps), its lr the paper's ~1e-5
DEFAULTS = dict(init_from="", data="", out_dir="out-dpo", resume=False, overwrite=False, beta=0.1, lr=1e-5,
                weight_decay=0.0, grad_clip=1.0, batch_size=16, grad_accum=1, max_steps=200, warmup_steps=None,
                decay_steps=None, schedule="wsd", decay="exp", final_lr_ratio=0.1, half_life=0.0, cosine_steps=0,
                seq_len=64, seed=1337, device="auto", ckpt_interval=50)
LOWER_BOUNDS = dict(beta=0, lr=0, weight_decay=0, grad_clip=0, batch_size=1, grad_accum=1, max_steps=1,
                    warmup_steps=0, decay_steps=0, half_life=0, cosine_steps=0, seq_len=1, seed=0, ckpt_interval=1)
# keys that may change when resuming without changing the run's numbers
RESUMABLE_CHANGES = {"out_dir", "resume", "overwrite", "device", "ckpt_interval"}
# the numbers a DPO config gives change with this version (2: step s trains at lr(s), as train.py's version 2)
DPO_VERSION = 2


def validate_dpo_config(cfg):
    """The config of a DPO run with its defaults filled in, or one ConfigError line: unknown keys, missing
    init_from / data, non-finite or out-of-range numbers, a schedule that does not fit."""
    cfg = {**DEFAULTS, **cfg}
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown DPO config key(s) {', '.join(sorted(unknown))}: choose from {', '.join(DEFAULTS)}")
    if not cfg["init_from"] or not cfg["data"]:
        raise ConfigError("DPO needs --init_from (the SFT out_dir or checkpoint) and --data (a preference .jsonl)")
    if not cfg["out_dir"]:
        raise ConfigError("DPO writes its policy and metrics into --out_dir: give one")
    check_numbers(cfg, LOWER_BOUNDS, positive={"beta", "lr"})
    return schedule_defaults(cfg)


def train_dpo(cfg, quiet=False):
    """DPO from a train.py checkpoint (the SFT model: policy init and frozen reference), run like train.py's runs:
    its out_dir locked (by rank 0 under torchrun), a run already there refused unless --resume / --overwrite,
    metrics.jsonl through checkpoint.py, a checkpoint every ckpt_interval steps and on SIGTERM / Ctrl-C, and
    --resume=True continuing exactly. The pairs of every step are drawn up front; the reference log-probs of those
    pairs are computed once, then the reference is dropped. Logs TRL's metric names."""
    cfg = validate_dpo_config(cfg)
    holds_lock = os.environ.get("RANK", "0") == "0"
    with locked(cfg["out_dir"]) if holds_lock else nullcontext():
        return run_dpo(cfg, quiet)


def run_dpo(cfg, quiet):
    """train_dpo() of a checked config, its out_dir held."""
    dev = resolve_system(cfg["device"])[0]
    rank, local_rank, world = setup_distributed(dev.split(":")[0])
    device, master = process_device(dev, local_rank), rank == 0
    log = (lambda *a: None) if quiet or not master else print
    out_dir, S, t_start = cfg["out_dir"], cfg["max_steps"], time.time()
    if master:
        claim_out_dir(out_dir, cfg["resume"], cfg["overwrite"], cfg["init_from"])
    model, source, pairs = load_policy_and_pairs(cfg, dev)
    global_batch = cfg["batch_size"] * cfg["grad_accum"] * world
    ref = reference_logps(model, pairs, pairs_drawn(cfg, len(pairs[0]), global_batch), device, quiet or not master)
    model.train()
    optimizer = configure_optimizer(model, cfg["lr"], cfg["weight_decay"])
    step = resume_dpo(cfg, model, optimizer, global_batch) if cfg["resume"] else 0
    history = open_metrics(out_dir, cfg["resume"], cfg["overwrite"], step, log) if master else []
    raw = model
    if world > 1:
        model = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None)
    stopped = False
    bar = tqdm(total=S, initial=step, disable=quiet or not master, desc="DPO")
    with StopFlag() as stop, closing(bar):
        while step < S:
            order = step_order(cfg, step, len(pairs[0]), global_batch)
            row = dpo_step(cfg, model, raw, optimizer, pairs, ref, order, step, rank, world, device)
            step += 1
            history.append(row)
            if master:
                append_jsonl(os.path.join(out_dir, "metrics.jsonl"), row)
            bar.update(1)
            stopped = stop.anywhere(device, world)
            if master and (stopped or step % cfg["ckpt_interval"] == 0 or step == S):
                save_dpo(cfg, source, raw, optimizer, step, global_batch)
            if stopped:
                break
    if stopped:
        log(f"stopped by signal: checkpoint at step {step} in {out_dir}/ckpt.pt; continue with --resume=True")
    elif history:
        log(f"DPO: loss {history[0]['loss']:.4f} -> {history[-1]['loss']:.4f}, reward accuracy "
            f"{history[-1]['rewards/accuracies']:.2f}, margin {history[-1]['rewards/margins']:.3f}; "
            f"saved {out_dir}/ckpt.pt")
        if master:
            write_dpo_outputs(cfg, history, device, t_start)
    raw.eval()
    return dict(history=history, model=raw, step=step, stopped=stopped, exit_code=stop.exit_code if stopped else 0)


def write_dpo_outputs(cfg, history, device, t_start):
    """summary.json (the command, machine, time, first and last metrics) and loss.png of a finished DPO run, as
    train.py writes them."""
    keys = ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected")
    write_json(os.path.join(cfg["out_dir"], "summary.json"), dict(
        command=launch_command("dpo.py"),
        hardware=hardware(device), wall_s=round(time.time() - t_start, 1), step=history[-1]["step"],
        first={k: history[0][k] for k in keys}, last={k: history[-1][k] for k in keys}))
    plot_metrics(history, os.path.join(cfg["out_dir"], "loss.png"))


def load_policy_and_pairs(cfg, dev):
    """(the SFT model (a train.py run's or a released checkpoint's), what it was loaded as (checkpoint.Loaded), the
    encoded preference pairs (chosen ids, labels, rejected ids, labels)), the rows tokenized by the model's
    tokenizer under its chat format."""
    try:
        loaded = model_from_checkpoint(cfg["init_from"], dev)
        rows = read_jsonl_rows(cfg["data"], ("prompt", "chosen", "rejected"))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    same = [r for r in rows if r["chosen"] == r["rejected"]]
    if same:  # no preference, no signal: Adam would turn the rounding noise of its zero gradient into full updates
        where = f"line {same[0]['_line']}" if "_line" in same[0] else "a row"
        raise ConfigError(f"{cfg['data']} {where}: chosen equals rejected ({len(same)} such pair(s)): a pair without "
                          f"a preference carries no signal; drop those rows")
    try:
        pairs = encode_pairs(get_encoding(loaded.tokenizer), rows, cfg["seq_len"])
    except ValueError as e:
        raise ConfigError(f"{cfg['data']}: {e}") from None
    return loaded.model, loaded, pairs


def pair_logps(model, pairs, idx, device):
    """(chosen, rejected) summed response log-probs of the pairs idx, in one forward (one DDP forward per
    backward); bf16 autocast on CUDA."""
    cw, cl, rw, rl = pairs
    autocast = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    with autocast:
        lp = sequence_logps(model, torch.cat([cw[idx], rw[idx]]).to(device), torch.cat([cl[idx], rl[idx]]).to(device))
    return lp[:len(idx)], lp[len(idx):]


@torch.no_grad()
def evaluate_pairs(policy, reference, pairs, beta, device, batch=64):
    """Held-out DPO metrics of a policy against its reference on encoded pairs (encode_pairs), under TRL's eval
    names: the loss, the reward accuracy (the implicit reward ranks the chosen response above the rejected one), the
    reward margin, and the mean summed log-probs of the chosen and of the rejected responses under the policy."""
    policy.eval()
    reference.eval()
    stats = []
    for lo in range(0, len(pairs[0]), batch):
        idx = torch.arange(lo, min(lo + batch, len(pairs[0])))
        pc, pr = pair_logps(policy, pairs, idx, device)
        losses, chosen, rejected = dpo_loss(pc, pr, *pair_logps(reference, pairs, idx, device), beta)
        stats.append(torch.stack([losses, (chosen > rejected).float(), chosen - rejected, pc, pr]).float().cpu())
    means = torch.cat(stats, 1).mean(1).tolist()
    return {f"eval_{k}": v for k, v in zip(("loss", "rewards/accuracies", "rewards/margins", "logps/chosen",
                                            "logps/rejected"), means)}


def step_order(cfg, step, n_pairs, global_batch):
    """The pairs of a step: drawn from seed and step alone, as a resumed or other-world run would."""
    return torch.from_numpy(np.random.default_rng([cfg["seed"], step]).integers(0, n_pairs, global_batch))


def pairs_drawn(cfg, n_pairs, global_batch):
    """The sorted indices of the pairs the run's steps draw; the walk over the steps stops once every pair is drawn,
    so a run of 10^9 steps does not draw them all up front."""
    seen = torch.zeros(n_pairs, dtype=torch.bool)
    for step in range(cfg["max_steps"]):
        seen[step_order(cfg, step, n_pairs, global_batch)] = True
        if seen.all():
            break
    return seen.nonzero().flatten()


@torch.no_grad()
def reference_logps(model, pairs, used, device, quiet):
    """The reference is the initial policy: its log-probs (2, n pairs) once, for the pairs the steps draw (`used`: a
    short run draws few of them); NaN for the others."""
    model.eval()
    ref = torch.full((2, len(pairs[0])), math.nan)
    for i in tqdm(range(0, len(used), 64), disable=quiet, desc="DPO reference log-probs"):
        idx = used[i:i + 64]
        ref[0, idx], ref[1, idx] = (lp.float().cpu() for lp in pair_logps(model, pairs, idx, device))
    return ref


def dpo_step(cfg, model, raw, optimizer, pairs, ref, order, step, rank, world, device):
    """One optimizer step of the DPO loss at this step's lr (wsd.lr_at); returns its metrics row."""
    t0, B, A = time.perf_counter(), cfg["batch_size"], cfg["grad_accum"]
    lr_now = lr_at(cfg, step + 1)  # this is step step + 1 (wsd.lr_at)
    set_lr(optimizer, lr_now)
    stats = torch.zeros(7, device=device)
    for micro in range(A):
        lo = (rank * A + micro) * B
        idx = order[lo:lo + B]
        pc, pr = pair_logps(model, pairs, idx, device)
        losses, rc, rr = dpo_loss(pc, pr, ref[0][idx].to(device), ref[1][idx].to(device), cfg["beta"])
        (losses.mean() / A).backward()
        stats += torch.stack([losses.mean().detach(), rc.mean(), rr.mean(), (rc > rr).float().mean(),
                              (rc - rr).mean(), pc.detach().mean(), pr.detach().mean()]).float() / A
    grad_norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg["grad_clip"] or float("inf"))
    stats = all_mean(stats, world).tolist()
    if not (math.isfinite(stats[0]) and math.isfinite(grad_norm.item())):  # before the weights change
        raise FloatingPointError(f"DPO loss {stats[0]}, gradient norm {grad_norm.item()} at step {step + 1}: no step "
                                 f"was taken and the last checkpoint is kept: lower --lr (now {cfg['lr']})")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"step": step + 1, "loss": stats[0], "rewards/chosen": stats[1], "rewards/rejected": stats[2],
            "rewards/accuracies": stats[3], "rewards/margins": stats[4], "logps/chosen": stats[5],
            "logps/rejected": stats[6], "lr": lr_now, "grad_norm": grad_norm.item(),
            "pairs_per_s": cfg["batch_size"] * A * world / (time.perf_counter() - t0)}


def save_dpo(cfg, source, model, optimizer, step, global_batch):
    """The policy in train.py's checkpoint format (sample.py, model_from_checkpoint and export read it), with the
    DPO config and step it continues from, and the tokenizer and origin of the model it started from (`source`)."""
    save_checkpoint(os.path.join(cfg["out_dir"], "ckpt.pt"), dict(
        model=model.state_dict(), optimizer=optimizer.state_dict(), step=step,
        config={**source.config, "out_dir": cfg["out_dir"]}, dpo=cfg, dpo_version=DPO_VERSION,
        tokenizer=source.tokenizer, tokenizer_id=tokenizer_id(source.tokenizer), origin=source.origin,
        data=dict(seed=cfg["seed"], next_step=step, global_batch=global_batch)))


def resume_dpo(cfg, model, optimizer, global_batch):
    """Load out_dir's DPO checkpoint after checking it belongs to this run; returns its step."""
    path = os.path.join(cfg["out_dir"], "ckpt.pt")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} not found: nothing to resume in {cfg['out_dir']}; to start a new "
                              f"DPO run there, drop --resume=True")
    ckpt = load_checkpoint(path)
    if "dpo" not in ckpt:
        raise CheckpointError(f"checkpoint {path} was not written by dpo.py: resume it with train.py")
    if ckpt.get("dpo_version", 1) != DPO_VERSION:
        raise CheckpointError(f"checkpoint {path} was written by dpo.py version {ckpt.get('dpo_version', 1)}: resuming "
                              f"would change the run's numbers midway; start a new DPO run")
    diff = sorted(k for k in DEFAULTS if k not in RESUMABLE_CHANGES and ckpt["dpo"].get(k) != cfg[k])
    if diff:
        raise CheckpointError(f"checkpoint {path} was written with another DPO config; differing keys: " +
                              ", ".join(f"{k} ({ckpt['dpo'].get(k)!r} vs {cfg[k]!r})" for k in diff))
    if ckpt["data"]["global_batch"] != global_batch:
        raise CheckpointError(f"checkpoint {path} trained with a global batch of {ckpt['data']['global_batch']} "
                              f"pairs; batch_size x grad_accum x world size = {global_batch}")
    if ckpt["step"] >= cfg["max_steps"]:
        raise ConfigError(f"{cfg['out_dir']} finished at step {ckpt['step']} = max_steps: nothing to resume")
    return load_state(model, optimizer, ckpt, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write_data", metavar="DIR", help="write the offline SFT / preference jsonl sets to DIR")
    for k, v in DEFAULTS.items():
        p.add_argument(f"--{k}", type=int if v is None else cli_bool if isinstance(v, bool) else type(v), default=v)
    a = vars(p.parse_args(argv))
    if a["write_data"]:
        print(json.dumps(write_task_data(a.pop("write_data")), indent=1))
        return
    a.pop("write_data")
    try:
        code = exit_on_user_error(lambda: train_dpo(a), CheckpointError)["exit_code"]
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if code:  # stopped by a signal, checkpoint saved: 128 + its number (system.StopFlag)
        sys.exit(code)


if __name__ == "__main__":
    main()

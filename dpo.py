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
    python dpo.py --write_data=data/tasks        # the offline instruction / preference sets (tasks.py)

`python -m experiments.two_stage` reruns decay mixing (A-1 vs A-2) and SFT vs SFT + DPO small.
"""

import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from checkpoint import CheckpointError, model_from_checkpoint, save_checkpoint
from configurator import ConfigError, exit_on_user_error
from corpus import chat_ids, load_data, read_jsonl_rows
from mup import configure_optimizer, set_lr
from system import all_mean, resolve_system, setup_distributed
from tasks import write_task_data
from wsd import cosine_lr, wsd_lr


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


# warmup_steps / decay_steps None: 5% / 20% of max_steps (10 / 40 of 200)
DEFAULTS = dict(init_from="", data="", out_dir="out-dpo", beta=0.1, lr=1e-5, weight_decay=0.0, batch_size=16,
                grad_accum=1, max_steps=200, warmup_steps=None, decay_steps=None, schedule="wsd", seq_len=64,
                seed=1337, device="auto", grad_clip=1.0)


def train_dpo(cfg, quiet=False):
    """DPO from a train.py checkpoint (the SFT model: policy init and frozen reference). The pairs of every step are
    drawn up front; the reference log-probs of those pairs are computed once, then the reference is dropped. Logs
    TRL's metric names to metrics.jsonl."""
    cfg = {**DEFAULTS, **cfg}
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown DPO config key(s) {', '.join(sorted(unknown))}: choose from {', '.join(DEFAULTS)}")
    if not cfg["init_from"] or not cfg["data"]:
        raise ConfigError("DPO needs --init_from (the SFT out_dir or checkpoint) and --data (a preference .jsonl)")
    if cfg["beta"] <= 0:
        raise ConfigError(f"beta={cfg['beta']} must be > 0")
    for k in ("max_steps", "batch_size", "grad_accum", "seq_len"):
        if not cfg[k] >= 1:
            raise ConfigError(f"{k}={cfg[k]} must be >= 1")
    S = cfg["max_steps"]
    if cfg["decay_steps"] is None:
        cfg["decay_steps"] = round(S / 5) if cfg["schedule"] == "wsd" else 0
    if cfg["warmup_steps"] is None:
        cfg["warmup_steps"] = min(round(S / 20), S - cfg["decay_steps"])
    W = cfg["warmup_steps"]
    if cfg["schedule"] == "wsd":  # a linear decay to 0.1 lr over the last decay_steps (T = S - decay_steps)
        def lr_at(s):
            return wsd_lr(s, lr=cfg["lr"], W=W, T=S - cfg["decay_steps"], S=S, decay="linear")
    elif cfg["schedule"] == "cosine":
        def lr_at(s):
            return cosine_lr(s, lr=cfg["lr"], W=W, T=S)
    else:
        raise ConfigError(f"schedule={cfg['schedule']!r}: use wsd or cosine")
    try:
        lr_at(0)
    except ValueError as e:
        raise ConfigError(f"schedule: {e}") from None
    dev = resolve_system(cfg["device"])[0]
    rank, local_rank, world = setup_distributed(dev.split(":")[0])
    if dev == "cuda":
        dev = f"cuda:{local_rank}"
    device, master = torch.device(dev), rank == 0
    log = (lambda *a: None) if quiet or not master else print

    try:
        model, src_cfg = model_from_checkpoint(cfg["init_from"], dev)
        rows = read_jsonl_rows(cfg["data"], ("prompt", "chosen", "rejected"))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    enc = load_data(src_cfg["data"]).encoding()
    try:
        cw, cl, rw, rl = encode_pairs(enc, rows, cfg["seq_len"])
    except ValueError as e:
        raise ConfigError(f"{cfg['data']}: {e}") from None
    autocast = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def logps(m, idx):  # chosen and rejected in one forward (one DDP forward per backward)
        with autocast:
            lp = sequence_logps(m, torch.cat([cw[idx], rw[idx]]).to(device), torch.cat([cl[idx], rl[idx]]).to(device))
        return lp[:len(idx)], lp[len(idx):]
    B, A = cfg["batch_size"], cfg["grad_accum"]
    global_batch = B * A * world
    # the pairs of every step, drawn up front (from seed and step alone, as a resumed or other-world run would)
    orders = [torch.from_numpy(np.random.default_rng([cfg["seed"], step]).integers(0, len(rows), global_batch))
              for step in range(S)]
    used = torch.cat(orders).unique()
    model.eval()
    with torch.no_grad():  # the reference is the initial policy: its log-probs once, for the pairs drawn (a short
        # run draws few of them), then only the policy is kept
        ref = torch.full((2, len(rows)), math.nan)
        for i in tqdm(range(0, len(used), 64), disable=quiet or not master, desc="DPO reference log-probs"):
            idx = used[i:i + 64]
            ref[0, idx], ref[1, idx] = (lp.float().cpu() for lp in logps(model, idx))
    model.train()
    optimizer = configure_optimizer(model, cfg["lr"], cfg["weight_decay"])
    raw = model
    if world > 1:
        model = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None)
    os.makedirs(cfg["out_dir"], exist_ok=True) if master else None
    metrics_path = os.path.join(cfg["out_dir"], "metrics.jsonl")
    if master:
        open(metrics_path, "w").close()
    history = []
    for step in tqdm(range(cfg["max_steps"]), disable=quiet or not master, desc="DPO"):
        t0 = time.perf_counter()
        lr_now = lr_at(step)
        set_lr(optimizer, lr_now)
        order = orders[step]
        stats = torch.zeros(7, device=device)
        for micro in range(A):
            lo = (rank * A + micro) * B
            idx = order[lo:lo + B]
            pc, pr = logps(model, idx)
            losses, rc, rr = dpo_loss(pc, pr, ref[0][idx].to(device), ref[1][idx].to(device), cfg["beta"])
            (losses.mean() / A).backward()
            stats += torch.stack([losses.mean().detach(), rc.mean(), rr.mean(), (rc > rr).float().mean(),
                                  (rc - rr).mean(), pc.detach().mean(), pr.detach().mean()]).float() / A
        grad_norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stats = all_mean(stats, world).tolist()
        row = {"step": step + 1, "loss": stats[0], "rewards/chosen": stats[1], "rewards/rejected": stats[2],
               "rewards/accuracies": stats[3], "rewards/margins": stats[4], "logps/chosen": stats[5],
               "logps/rejected": stats[6], "lr": lr_now, "grad_norm": grad_norm.item(),
               "pairs_per_s": global_batch / (time.perf_counter() - t0)}
        if not math.isfinite(row["loss"]):
            raise FloatingPointError(f"DPO loss is {row['loss']} at step {step + 1}: lower lr (now {cfg['lr']})")
        history.append(row)
        if master:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
    if master:  # the policy in train.py's checkpoint format: sample.py, model_from_checkpoint and export read it
        save_checkpoint(os.path.join(cfg["out_dir"], "ckpt.pt"), dict(
            model=raw.state_dict(), optimizer=optimizer.state_dict(), step=cfg["max_steps"],
            config={**src_cfg, "out_dir": cfg["out_dir"]}, dpo=cfg,
            data=dict(seed=cfg["seed"], next_step=cfg["max_steps"], global_batch=global_batch)))
        log(f"DPO: loss {history[0]['loss']:.4f} -> {history[-1]['loss']:.4f}, reward accuracy "
            f"{history[-1]['rewards/accuracies']:.2f}, margin {history[-1]['rewards/margins']:.3f}; "
            f"saved {cfg['out_dir']}/ckpt.pt")
    raw.eval()
    return dict(history=history, model=raw)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write_data", metavar="DIR", help="write the offline SFT / preference jsonl sets to DIR")
    for k, v in DEFAULTS.items():
        p.add_argument(f"--{k}", type=int if v is None else type(v), default=v)
    a = vars(p.parse_args(argv))
    if a["write_data"]:
        print(json.dumps(write_task_data(a.pop("write_data")), indent=1))
        return
    a.pop("write_data")
    try:
        exit_on_user_error(lambda: train_dpo(a), CheckpointError)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()

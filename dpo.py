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
    python dpo.py --write_data=data/tasks        # the offline instruction / preference sets (below)
    python dpo.py --experiment [--quick]         # decay mixing (A-1 vs A-2) and SFT vs SFT + DPO

Offline data: three tasks whose answers a program checks (exact match), generated deterministically: write a word
in capitals (words of Python's own docs), the number after n, repeat a word. Held-out prompts (words and numbers)
never occur in the training split. The rejected response of a preference pair is the typical error: the word
unchanged, n itself, the word cut short.
"""

import argparse
import json
import math
import os
import re
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import findings
from checkpoint import CheckpointError, model_from_checkpoint, save_checkpoint
from configurator import ConfigError, exit_on_user_error
from corpus import TokenData, chat_ids, corpus_keys, embedded_documents, load_data, read_jsonl_rows
from mup import configure_optimizer, set_lr
from plots import FRESH_HELP, SEEDS_HELP, save, subplots
from system import all_mean, resolve_system, setup_distributed
from wsd import cosine_lr, wsd_lr

ROOT = os.path.dirname(os.path.abspath(__file__))


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
# offline task data


def _words():
    return sorted({w for d in embedded_documents() for w in re.findall(r"\b[a-z]{3,8}\b", d)})


def task_examples(split, n, seed=0):
    """n examples {"prompt", "response", "rejected", "task"} of the held-out ("val") or training split."""
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    held = split != "train"
    words = [w for i, w in enumerate(_words()) if (i % 5 == 0) == held]
    numbers = [k for k in range(1000) if (k % 5 == 0) == held]
    out = []
    for _ in range(n):
        task = ("caps", "next", "repeat")[int(rng.integers(3))]
        if task == "caps":
            w = words[int(rng.integers(len(words)))]
            ex = dict(prompt=f"Write in capitals: {w}", response=w.upper(), rejected=w)
        elif task == "next":
            k = numbers[int(rng.integers(len(numbers)))]
            ex = dict(prompt=f"What number comes after {k}?", response=str(k + 1), rejected=str(k))
        else:
            w = words[int(rng.integers(len(words)))]
            ex = dict(prompt=f"Repeat the word: {w}", response=w, rejected=w[:-1])
        out.append(dict(ex, task=task))
    return out


def write_task_data(out_dir, n_train=4000, n_val=300, seed=0):
    """sft_{train,val}.jsonl ({"prompt", "response"}) and pref_{train,val}.jsonl ({"prompt", "chosen", "rejected"})."""
    os.makedirs(out_dir, exist_ok=True)
    files = {}
    for split, n in (("train", n_train), ("val", n_val)):
        ex = task_examples(split, n, seed)
        for kind, rows in (("sft", [dict(prompt=e["prompt"], response=e["response"]) for e in ex]),
                           ("pref", [dict(prompt=e["prompt"], chosen=e["response"], rejected=e["rejected"])
                                     for e in ex])):
            path = os.path.join(out_dir, f"{kind}_{split}.jsonl")
            with open(path + ".tmp", "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            os.replace(path + ".tmp", path)
            files[f"{kind}_{split}"] = path
    return files


@torch.no_grad()
def task_score(model, enc, rows, max_new_tokens=12):
    """Exact-match accuracy of greedy answers to {"prompt", "response"} rows under the chat template, by task;
    "chars": the fraction of characters right at their position (partial credit)."""
    device = next(model.parameters()).device
    model.eval()
    by_len = {}
    for r in rows:
        ids, _ = chat_ids(enc, [("user", r["prompt"])])
        by_len.setdefault(len(ids), []).append((ids, r))
    hits = {}
    for n, group in by_len.items():
        x = torch.tensor([g[0] for g in group], device=device)
        out = model.generate(x, max_new_tokens, top_k=1)[:, n:].tolist()
        for o, (_, r) in zip(out, group):
            # the answer ends at <|endoftext|> (or at an id past the tokenizer: the model's vocabulary padding)
            o = o[:next((i for i, t in enumerate(o) if t == enc.eot_token or t >= enc.n_vocab), len(o))]
            answer = enc.decode(o).strip()
            chars = sum(a == b for a, b in zip(answer, r["response"])) / max(len(answer), len(r["response"]))
            hits.setdefault(r.get("task", "all"), []).append((answer == r["response"], chars))
    score = {t: float(np.mean([h[0] for h in v])) for t, v in sorted(hits.items())}
    score["all"] = float(np.mean([h[0] for v in hits.values() for h in v]))
    score["chars"] = float(np.mean([h[1] for v in hits.values() for h in v]))  # partial credit, per position
    return score


@torch.no_grad()
def response_loss(model, enc, rows, seq_len=64):
    """Mean loss (nats/token) of the correct responses (and their end) given the prompts: the held-out task loss."""
    model.eval()
    ids, labels = encode_responses(enc, rows, "response", seq_len)
    return -sequence_logps(model, ids, labels).sum().item() / (labels[:, 1:] != -100).sum().item()


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


# ------------------------------------------------------------------------------------------------------------
# experiments


@torch.no_grad()
def pretrain_val_loss(model, data, windows=16, seq_len=128, seed=0):
    """Mean loss on pre-training validation windows (the 'alignment tax' measure)."""
    model.eval()
    x, y = data.batch("val", seed, 0, windows, seq_len)
    return model(x, y)[1].item()


def experiment(quick=False, out=ROOT, steps=None, fresh=False, seeds=1, data=None):
    """1. decay mixing (paper A-1 vs A-2): one stable run, two decays (pre-training data only / mixed with the SFT
    tasks), the same SFT after each, and the paper's B-2 control: A-1's decay with twice the SFT (far more task rows
    than the 30% of A-2's decay adds); 2. DPO on A-2 + SFT: held-out task score, reward curves, drift. Every run with
    seeds 1 .. seeds (init, data order, DPO order); >= 3 records the verdicts (findings.py). data: the pre-training
    corpus in place of the setting's own (corpus.corpus_keys; byte-tokenized, as the task sets are)."""
    from train import sweep
    # python_source: the quick runs would go over the embedded docs 4.4 times, one GPU's ~90 times
    corpus = corpus_keys(data or "python_source",
                         bytes_only="the task sets are byte-tokenized (SFTData)")
    tag = findings.results_tag(quick, data)
    files = write_task_data(os.path.join(out, "data", "tasks"))
    if quick:  # 2-core CPU
        model, S1, D, S_sft, rows, dpo_steps, n_val = dict(preset="tiny"), 300, 150, 800, 32, 60, 150
    else:  # one GPU
        model, S1, D, S_sft, rows, dpo_steps, n_val = dict(preset="wt-9m"), 4000, 800, 1000, 64, 300, 300
    if steps:  # a smoke-sized run (tests)
        S1, D, S_sft, rows, dpo_steps, n_val = steps, steps // 2, steps // 2, 8, steps // 2, 12
    # standard parametrisation at lr 1e-3 for these shapes (as in longctx.py: the copy-like tasks need the lookup
    # heads that the tiny muP shape forms slowly); the decays end at 0.3 lr, and SFT trains at that final lr, as
    # the paper does; DPO at a tenth of it
    base = dict(**model, **corpus, use_mup=False, scale_emb=1.0, lr=1e-3, sample_tokens=0, eval_steps=4,
                final_lr_ratio=0.3, batch_size=rows, seq_len=128, warmup_steps=max(1, S1 // 20))
    runs, dirs = {}, {}
    for seed in range(1, seeds + 1):
        d = dirs[seed] = {k: os.path.join(out, f"out-align-{k}{tag}" + (f"-seed{seed}" if seed > 1 else ""))
                          for k in ("stable", "a1", "a2", "a1sft", "a2sft", "b2sft", "dpo")}
        ck = {k: os.path.join(v, "ckpt.pt") for k, v in d.items()}
        b = dict(base, seed=seed)
        decay = dict(b, max_steps=S1 + D, decay_steps=D, eval_interval=D)
        sft = dict(b, data=files["sft_train"], max_steps=S1 + D + S_sft, decay_steps=0, lr=3e-4, seq_len=64,
                   eval_interval=S_sft)
        one = {
            "stable": dict(b, out_dir=d["stable"], max_steps=S1, decay_steps=0, eval_interval=S1 // 2),
            "A-1 decay (pre-training data)": dict(decay, out_dir=d["a1"], init_from=ck["stable"]),
            "A-2 decay (70% pre-training + 30% SFT tasks)": dict(
                decay, out_dir=d["a2"], init_from=ck["stable"],
                decay_data=f"{corpus['data']}:0.7,{files['sft_train']}:0.3"),
            "A-1 + SFT": dict(sft, out_dir=d["a1sft"], init_from=ck["a1"]),
            "A-2 + SFT": dict(sft, out_dir=d["a2sft"], init_from=ck["a2"]),
            "A-1 + 2x SFT (B-2)": dict(sft, out_dir=d["b2sft"], init_from=ck["a1"], max_steps=S1 + D + 2 * S_sft,
                                       eval_interval=2 * S_sft),
        }
        runs.update({findings.seed_name(k, seed): v for k, v in one.items()})
    file = os.path.join(out, "results", f"align{tag}.json")
    sweep(file, runs, desc="two-stage runs", fresh=fresh)
    held = task_examples("val", 300)[:n_val]  # the prompts of sft_val.jsonl, with their task names
    text = TokenData(corpus["data"])
    enc = text.encoding()
    per_seed, hist = {}, None
    for seed, d in dirs.items():
        summary = {}
        for name, key in (("A-1 decay", "a1"), ("A-2 decay", "a2"), ("A-1 + SFT", "a1sft"), ("A-2 + SFT", "a2sft"),
                          ("A-1 + 2x SFT (B-2)", "b2sft")):
            m, _ = model_from_checkpoint(os.path.join(d[key], "ckpt.pt"))
            summary[name] = dict(score=task_score(m, enc, held), task_loss=response_loss(m, enc, held),
                                 pretrain_val_loss=pretrain_val_loss(m, text))
        dpo = train_dpo(dict(init_from=d["a2sft"], data=files["pref_train"], out_dir=d["dpo"], lr=3e-5, beta=0.1,
                             max_steps=dpo_steps, warmup_steps=dpo_steps // 10, decay_steps=dpo_steps // 5,
                             batch_size=rows, seq_len=64, seed=seed), quiet=True)
        summary["A-2 + SFT + DPO"] = dict(score=task_score(dpo["model"], enc, held),
                                          task_loss=response_loss(dpo["model"], enc, held),
                                          pretrain_val_loss=pretrain_val_loss(dpo["model"], text))
        h = dpo["history"]
        summary["dpo"] = {k: [h[0][k], h[-1][k]] for k in ("loss", "rewards/accuracies", "rewards/margins",
                                                           "logps/chosen", "logps/rejected")}
        per_seed[seed], hist = summary, hist or h
    summary = per_seed[1]
    if seeds >= 3:
        record_align_findings(per_seed, seeds, findings.command("dpo.py --experiment", quick, seeds, data),
                              findings.wall_s(file))
    with open(os.path.join(out, "results", f"align_summary{tag}.json"), "w") as f:
        json.dump(dict(summary, seeds={str(k): v for k, v in per_seed.items()}), f, indent=1)
    print(f"held-out prompts ({len(held)}), seed 1: exact-match accuracy by task, characters right, loss of the "
          f"correct response, and pre-training validation loss:")
    for name, r in summary.items():
        if name != "dpo":
            print(f"  {name:20s} " + "  ".join(f"{t} {v:5.1%}" for t, v in r["score"].items()) +
                  f"  task loss {r['task_loss']:.3f}  pre-training val loss {r['pretrain_val_loss']:.3f}")
    print("DPO first -> last step: " + ", ".join(f"{k} {a:.3f} -> {b:.3f}" for k, (a, b) in summary["dpo"].items()))
    plot(summary, hist, os.path.join(out, "assets", f"align{tag}.png"))
    return summary


def record_align_findings(per_seed, seeds, cmd, wall):
    """The §5 / §7.1 verdicts over seeds, on the held-out task prompts."""
    def v(model, key):
        return [per_seed[s][model][key] if key == "task_loss" else 1 - per_seed[s][model]["score"]["all"]
                for s in range(1, seeds + 1)]
    hw = findings.this_machine()
    for fid, section, claim, paper, a, b, key in (
            ("two_stage_a2_vs_a1", "§5", "with the task data in the decay (A-2), the same SFT ends with a lower "
             "held-out task loss than after a decay on pre-training data only (A-1)", "A-2 > A-1 (Table 3)",
             "A-2 + SFT", "A-1 + SFT", "task_loss"),
            ("two_stage_a2_vs_b2", "§5", "A-2 + SFT also beats the control B-2, A-1 with twice the SFT (far more task "
             "rows than A-2's decay adds): held-out task loss", "B-3 (mixed decay) > B-2 (plain decay, 2x SFT)",
             "A-2 + SFT", "A-1 + 2x SFT (B-2)", "task_loss"),
            ("sft_task_loss", "§5", "SFT lowers the held-out task loss of the A-2 decay", "SFT after the decay",
             "A-2 + SFT", "A-2 decay", "task_loss"),
            ("dpo_score", "§7.1", "DPO on the preference pairs lowers the held-out exact-match error of A-2 + SFT",
             "DPO: MT-Bench 6.89 -> 7.25", "A-2 + SFT + DPO", "A-2 + SFT", "error")):
        findings.record(fid, section, claim, paper, "lower", a, b, v(a, key), v(b, key), cmd, hw, wall)


def plot(summary, hist, file):
    fig, axes = subplots(1, 3, figsize=(15, 4))
    names = [n for n in summary if n != "dpo"]
    x = np.arange(len(names))
    axes[0].bar(x - 0.2, [summary[n]["score"]["all"] for n in names], 0.4, label="exact match")
    axes[0].bar(x + 0.2, [summary[n]["score"]["chars"] for n in names], 0.4, label="characters right")
    axes[0].set_xticks(x, [n.replace(" + ", "\n+ ") for n in names], fontsize=8)
    axes[0].set(ylabel="held-out score", title="two-stage decay, SFT, DPO")
    axes[0].legend()
    steps = [h["step"] for h in hist]
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        axes[1].plot(steps, [h[k] for h in hist], label=k)
    axes[1].set(xlabel="DPO step", ylabel="implicit reward", title="DPO rewards")
    axes[1].legend()
    axes[2].plot(steps, [h["rewards/accuracies"] for h in hist], label="rewards/accuracies")
    axes[2].plot(steps, [h["loss"] for h in hist], label="loss")
    axes[2].axhline(math.log(2), color="gray", ls=":", label="log 2")
    axes[2].set(xlabel="DPO step", title="DPO loss and reward accuracy")
    axes[2].legend()
    save(fig, file)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", action="store_true", help="decay mixing A-1 vs A-2, then SFT vs SFT + DPO; "
                   "--data DIR then names its pre-training corpus (byte-tokenized)")
    p.add_argument("--quick", action="store_true", help="with --experiment: tiny models on a 2-core CPU")
    p.add_argument("--fresh", action="store_true", help="with --experiment: " + FRESH_HELP)
    p.add_argument("--seeds", type=int, default=1, help="with --experiment: " + SEEDS_HELP)
    p.add_argument("--write_data", metavar="DIR", help="write the offline SFT / preference jsonl sets to DIR")
    for k, v in DEFAULTS.items():
        p.add_argument(f"--{k}", type=int if v is None else type(v), default=v)
    a = vars(p.parse_args(argv))
    if a.pop("experiment"):
        return exit_on_user_error(lambda: experiment(quick=a["quick"], fresh=a["fresh"], seeds=a["seeds"],
                                                     data=a["data"] or None))
    for k in ("quick", "fresh", "seeds"):
        a.pop(k)
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

"""
Evaluate any checkpoint, with the paper's measures: bits per byte on held-out sets (§4.5), passkey retrieval by
context length and depth (§7.2), and the exact-match score of the offline instruction tasks (§5, tasks.py).

    python eval.py --out_dir=out                                  # a train.py or dpo.py run
    python eval.py --model_dir=official_dir                       # an official-format directory (train.py export)
    python eval.py --out_dir=out --data=embedded,python_source --passkey_lengths=64,128,256 --tasks=150
    python eval.py --model_dir=official_dir --lm_eval=hellaswag,arc_easy   # lm-evaluation-harness (harness.py)

Every number is printed and written as JSON (OUT/eval.json for a run, DIR/eval.json for a directory, or --json
FILE). Bits per byte needs data prepared with the model's own tokenizer (a run's, the one an export carries, or a
released checkpoint's: python corpus.py --tokenizer DIR); the offline tasks are asked in the tokenizer's chat format
(tokenizer.py: ours, the checkpoint's template, or the MiniCPM SFT format).
"""

import argparse
import functools
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from checkpoint import CheckpointError, model_from_checkpoint
from configurator import ConfigError, exit_on_user_error
from corpus import TokenData
from files import write_json
from harness import run_tasks
from longctx import passkey_accuracy
from official import from_pretrained
from system import hardware, resolve_system
from tasks import task_examples, task_score
from tokenizer import data_tokenizer_id, decode_ids, get_encoding, tokenizer_id, tokenizer_of, with_bos

DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def load_model(out_dir=None, model_dir=None, device="cpu"):
    """(model, tokenizer (as get_encoding names it) or None, the run's config or None) of a train.py out_dir or an
    official directory."""
    if model_dir:
        return from_pretrained(model_dir, device=device).eval(), tokenizer_of(model_dir), None
    model, cfg, tokenizer, _ = model_from_checkpoint(out_dir, device)
    return model, tokenizer, cfg


@torch.no_grad()
def bits_per_byte(model, data, seq_len, windows=64, seed=0, batch=8):
    """(mean loss in nats/token, bits per byte, the half-width of its 95% interval in bits per byte) over `windows`
    validation windows of seq_len tokens (paper §4.5: the loss per byte compares models of different tokenizers).
    The interval is the sampling error of the windows (1.96 standard errors of their mean): another sample of
    windows, such as the one training evaluates, lands within about that much."""
    device = next(model.parameters()).device
    per_window = []
    for i in range(math.ceil(windows / batch)):
        rows = min(batch, windows - i * batch)
        x, y = data.batch("val", seed, i, rows, seq_len)
        logits = model(x.to(device))[0].float()
        per_window += F.cross_entropy(logits.transpose(1, 2), y.to(device), reduction="none").mean(1).tolist()
    loss, to_bpb = statistics.fmean(per_window), 1 / math.log(2) / data.meta["bytes_per_token"]
    half = 1.96 * statistics.stdev(per_window) / math.sqrt(len(per_window)) if len(per_window) > 1 else math.nan
    return loss, loss * to_bpb, half * to_bpb


def passkey(model, encode, decode, lengths, trials=8, digits=5):
    """{length: {"mean": accuracy, "by_depth": [...]}}: greedy retrieval of a key hidden at DEPTHS of prompts that
    fill `length` tokens with the answer (longctx.passkey_accuracy)."""
    out = {}
    for T in lengths:
        P = T - digits - 1
        acc = passkey_accuracy(model, encode, decode, [P], DEPTHS, trials, seed=T, digits=digits)[P]
        out[T] = dict(mean=sum(acc) / len(acc), by_depth=acc)
    return out


def evaluate(a):
    """Every measure asked for, as a dict (what eval.json holds)."""
    t0 = time.time()
    device = resolve_system(a.device, "float32", False)[0]
    model, name, cfg = load_model(None if a.model_dir else a.out_dir, a.model_dir, device)
    if not name:
        raise ConfigError(f"{a.model_dir} carries no tokenizer (tokenizer.json, tokenizer.model or tiktoken.json): "
                          f"copy the checkpoint's tokenizer files into it")
    enc = get_encoding(name)
    seq_len = a.seq_len or min(cfg["seq_len"] if cfg else 256, model.config.max_length - 1)
    if not 1 <= seq_len < model.config.max_length:
        raise ConfigError(f"--seq_len={seq_len} must be within [1, {model.config.max_length - 1}] (the model's "
                          f"max_length - 1), or 0 for the run's own")
    result = dict(model=a.model_dir or a.out_dir, tokenizer=tokenizer_id(name), seq_len=seq_len, windows=a.windows)
    default = cfg["data"] if cfg and "," not in cfg["data"] and not cfg["data"].endswith(".jsonl") else "embedded"
    sets = [s for s in (a.data if a.data is not None else default).split(",") if s]
    result["loss"], result["bits_per_byte"], result["bits_per_byte_95"] = {}, {}, {}
    for s in sets:
        data = TokenData(s)
        if data_tokenizer_id(data.meta) != tokenizer_id(name):
            raise ConfigError(f"--data {s} is tokenized with {data_tokenizer_id(data.meta)}, the model with "
                              f"{tokenizer_id(name)}: give data prepared with the model's tokenizer (python corpus.py "
                              f"--tokenizer {name} ...)")
        result["loss"][s], result["bits_per_byte"][s], result["bits_per_byte_95"][s] = bits_per_byte(
            model, data, seq_len, a.windows)
    encode, decode = (lambda s: with_bos(enc, enc.encode_ordinary(s))), functools.partial(decode_ids, enc)
    lengths = [int(x) for x in a.passkey_lengths.split(",") if x] if a.passkey_lengths is not None else \
        [L for L in (128, 256, 512, 1024, 2048, 4096) if L <= model.config.max_length][-3:]
    result["passkey"] = passkey(model, encode, decode, lengths, a.passkey_trials)
    if a.tasks:  # the held-out prompts of the offline tasks (tasks.py), greedy answers
        result["tasks"] = task_score(model, enc, task_examples("val", 300)[:a.tasks])
    if a.lm_eval:  # lm-evaluation-harness's tasks (harness.py)
        result["lm_eval"] = run_tasks(model, enc, a.lm_eval, a.lm_eval_include, a.lm_eval_limit)
    result.update(hardware=hardware(torch.device(device)), command=" ".join(["python", *sys.argv]),
                  wall_s=round(time.time() - t0, 1))
    return result


def report(result):
    """The numbers, one line each."""
    lines = [f"{result['model']} (tokenizer {result['tokenizer']}, windows of {result['seq_len']} tokens)"]
    lines += [f"  bits per byte on {s}: {b:.4f} +- {result['bits_per_byte_95'][s]:.4f} (95%, {result['windows']} "
              f"windows; {result['loss'][s]:.4f} nats/token)" for s, b in result["bits_per_byte"].items()]
    lines += [f"  passkey at {T} tokens: {p['mean']:.0%} (by depth {', '.join(f'{x:.0%}' for x in p['by_depth'])})"
              for T, p in result["passkey"].items()]
    for task, scores in result.get("lm_eval", {}).items():
        lines.append(f"  lm-eval {task}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    if "tasks" in result:
        lines.append("  offline tasks, exact match: " + ", ".join(f"{k} {v:.1%}" for k, v in result["tasks"].items()))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--out_dir", default="out", help="a train.py / dpo.py output directory")
    src.add_argument("--model_dir", default=None, help="an official-format directory (config.json + weights)")
    p.add_argument("--data", default=None, help="held-out sets, comma-separated (default: the run's data, or "
                                                "embedded); '' for none")
    p.add_argument("--seq_len", type=int, default=0, help="window length (default: the run's seq_len, or 256)")
    p.add_argument("--windows", type=int, default=64, help="validation windows per set")
    p.add_argument("--passkey_lengths", default=None, help="comma-separated context lengths, >= 96 (default: the "
                                                           "longest three of 128 .. 4096 that the model supports); "
                                                           "'' for none")
    p.add_argument("--passkey_trials", type=int, default=8, help="keys per (length, depth)")
    p.add_argument("--tasks", type=int, default=150, help="held-out task prompts to score (0: none)")
    p.add_argument("--lm_eval", default="", help="lm-evaluation-harness tasks, comma-separated (optional package "
                                                "lm-eval), e.g. hellaswag,arc_easy")
    p.add_argument("--lm_eval_include", default=None, help="a directory of lm-eval task YAML files of your own")
    p.add_argument("--lm_eval_limit", type=int, default=None, help="score only the first N documents of each task")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, help="where to write the numbers (default: eval.json in the model's "
                                                "directory)")
    a = p.parse_args(argv)

    def work():
        for key in ("windows", "passkey_trials"):
            if getattr(a, key) < 1:
                raise ConfigError(f"--{key}={getattr(a, key)} must be >= 1")
        result = evaluate(a)
        print(report(result))
        file = a.json or os.path.join(a.model_dir or a.out_dir, "eval.json")
        write_json(file, result)
        print(f"written to {file}")
    exit_on_user_error(work, CheckpointError, ValueError)


if __name__ == "__main__":
    main()

"""
Offline instruction and preference data (paper §5, §7.1, rerun small): three tasks whose answers a program checks
(exact match), generated deterministically: write a word in capitals (words of Python's own docs), the number after
n, repeat a word. Held-out prompts (words and numbers) never occur in the training split. The rejected response of a
preference pair is the typical error: the word unchanged, n itself, the word cut short.

    python dpo.py --write_data=data/tasks   # sft_{train,val}.jsonl {prompt, response}, pref_{train,val}.jsonl
                                            # {prompt, chosen, rejected}

`task_score` grades a model's greedy answers to held-out prompts (the two-stage experiment, experiments/two_stage.py).
"""

import json
import os
import re

import numpy as np
import torch

from corpus import embedded_documents
from files import replace_atomically
from tokenizer import prompt_ids


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
            replace_atomically(path, lambda f: f.writelines(json.dumps(r) + "\n" for r in rows), mode="w")
            files[f"{kind}_{split}"] = path
    return files


@torch.no_grad()
def greedy_answers(model, enc, rows, max_new_tokens=12):
    """(index, the model's greedy answer) for each {"prompt", ...} row under the chat template, a batch per prompt
    length (in the order of the batches)."""
    device = next(model.parameters()).device
    model.eval()
    by_len = {}
    for i, r in enumerate(rows):
        ids = prompt_ids(enc, [("user", r["prompt"])])
        by_len.setdefault(len(ids), []).append((ids, i))
    for n, group in by_len.items():
        x = torch.tensor([g[0] for g in group], device=device)
        out = model.generate(x, max_new_tokens, top_k=1)[:, n:].tolist()
        for o, (_, i) in zip(out, group):
            # the answer ends at <|endoftext|> (or at an id past the tokenizer: the model's vocabulary padding)
            o = o[:next((j for j, t in enumerate(o) if t == enc.eot_token or t >= enc.n_vocab), len(o))]
            yield i, enc.decode(o).strip()


def task_answers(model, enc, rows, max_new_tokens=12):
    """The model's greedy answers (strings) to the rows, in the rows' order."""
    answers = dict(greedy_answers(model, enc, rows, max_new_tokens))
    return [answers[i] for i in range(len(rows))]


def task_score(model, enc, rows, max_new_tokens=12):
    """Exact-match accuracy of greedy answers to {"prompt", "response"} rows under the chat template, by task;
    "chars": the fraction of characters right at their position (partial credit)."""
    hits = {}
    for i, answer in greedy_answers(model, enc, rows, max_new_tokens):
        r = rows[i]
        chars = sum(a == b for a, b in zip(answer, r["response"])) / max(len(answer), len(r["response"]))
        hits.setdefault(r.get("task", "all"), []).append((answer == r["response"], chars))
    score = {t: float(np.mean([h[0] for h in v])) for t, v in sorted(hits.items())}
    score["all"] = float(np.mean([h[0] for v in hits.values() for h in v]))
    score["chars"] = float(np.mean([h[1] for v in hits.values() for h in v]))  # partial credit, per position
    return score

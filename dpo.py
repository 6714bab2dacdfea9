"""
Alignment, and the two-stage recipe around it (paper §5 and §7.1).

Two-stage pre-training: stage 1 trains on the large pre-training corpus; stage 2 is the WSD decay, trained on the
pre-training data mixed with high-quality and SFT-formatted data (`train.py --decay_data=...`); SFT then trains on
prompt/response pairs only, loss on the responses (`train.py --data=sft.jsonl`), at the decay's final lr.

DPO (Rafailov et al. 2023) then trains the policy pi against a frozen copy of the SFT model, the reference:

    L_DPO = -log sigmoid( beta * [ (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x)) ] )

y_w the chosen and y_l the rejected response, log-probabilities summed over the response tokens only; the implicit
rewards are beta * (log pi - log ref); at the first step pi = ref and the loss is log 2. The paper: lr ~1e-5.
train.py trains it (objective = "dpo"): this file holds the loss, the preference batch and the pairs' evaluation.

    python train.py config/dpo.py --init_from=out-sft --data=data/tasks/pref_train.jsonl   # train (torchrun too)
    python dpo.py --init_from=out-sft --data=data/tasks/pref_train.jsonl                   # the same command
    python dpo.py --write_data=data/tasks        # the offline instruction / preference sets (tasks.py)

`python -m experiments.two_stage` reruns decay mixing (A-1 vs A-2) and SFT vs SFT + DPO small.
"""

import argparse
import json
import math
import os
import runpy
import sys

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from configurator import exit_on_user_error
from corpus import read_jsonl_rows, rows_fingerprint, tokenizer_meta
from tasks import write_task_data
from tokenizer import chat_ids, get_encoding

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, "config", "dpo.py")  # DPO's defaults as train.py keys (lr 1e-5, 200 steps ...)


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


class PreferenceData:
    """Preference rows {prompt, chosen, rejected} of a jsonl file, encoded under the model's tokenizer and chat format
    into `pairs` (encode_pairs: chosen ids, labels, rejected ids, labels), the data of a DPO run; a bad file is one
    ValueError line that names it."""

    def __init__(self, path, tokenizer, seq_len):
        self.path = self.spec = path
        self.enc = get_encoding(tokenizer)
        rows = read_jsonl_rows(path, ("prompt", "chosen", "rejected"))  # (a missing or bad file: one line)
        self._digest = rows_fingerprint(path, tokenizer, self.enc)
        same = [r for r in rows if r["chosen"] == r["rejected"]]
        if same:  # no preference, no signal: Adam would turn the rounding noise of its zero gradient into full updates
            where = f"line {same[0]['_line']}" if "_line" in same[0] else "a row"
            raise ValueError(f"{path} {where}: chosen equals rejected ({len(same)} such pair(s)): a pair without a "
                             f"preference carries no signal; drop those rows")
        try:
            self.pairs = encode_pairs(self.enc, rows, seq_len)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        self.vocab_size = self.enc.n_vocab
        self.meta = tokenizer_meta(self.enc, tokenizer)

    def __len__(self):
        return len(self.pairs[0])

    def fingerprint(self):
        """The file's bytes and the tokenizer its rows are encoded with."""
        return self._digest

    def encoding(self):
        return self.enc


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


def micro_batch_loss(model, data, reference, idx, beta, device):
    """The DPO loss of the pairs idx (their mean) and its metrics: [loss, chosen reward, rejected reward, reward
    accuracy, margin, chosen log-prob, rejected log-prob], each a mean over the pairs."""
    pc, pr = pair_logps(model, data.pairs, idx, device)
    losses, rc, rr = dpo_loss(pc, pr, reference[0][idx].to(device), reference[1][idx].to(device), beta)
    stats = torch.stack([losses.mean().detach(), rc.mean(), rr.mean(), (rc > rr).float().mean(), (rc - rr).mean(),
                         pc.detach().mean(), pr.detach().mean()]).float()
    return losses.mean(), stats


# the names of micro_batch_loss's metrics in metrics.jsonl: TRL's
METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected")


def main(argv=None):
    """`python dpo.py --write_data=DIR`, or a DPO run: `python train.py config/dpo.py ARGS` (the same process)."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a.startswith("--write_data") for a in argv):
        p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--write_data", metavar="DIR", help="write the offline SFT / preference jsonl sets to DIR")
        a = p.parse_args(argv)
        print(json.dumps(exit_on_user_error(lambda: write_task_data(a.write_data)), indent=1))
        return
    sys.argv = [os.path.join(HERE, "train.py"), CONFIG, *argv]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()

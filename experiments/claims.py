"""
The registry of claims: what each finding tests, fixed and committed before its runs.

A claim names its table (the paper's, the later literature's, or a sanity check), its two arms (A, the arm the claim
favours; B), its test and margin (findings.py), and its design: the model, the tokens per non-embedding parameter,
the seeds, and how the lr is chosen. An experiment reads its design from here, so that a run cannot differ from
what was registered. A finding records the claim's hash and the commit its runs trained under:

    registered   the claim with this hash was committed before every run of the finding
    post hoc     the claim changed after its runs, or was committed after them (report.py says so)

    python -m experiments.claims            # every claim, its hash and the commit that registered it
"""

import ast
import hashlib
import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILE = os.path.relpath(os.path.abspath(__file__), ROOT)
TABLES = ("paper", "literature", "sanity")

# Pure literals (no calls, no names), so that any commit's registry is read back with ast.literal_eval. The scoring
# seeds 101-108 are fresh: no design was tuned on them (seed 1 is the pilot that centres each lr grid).
DESIGNS = {
    "schedules": {
        "experiment": "experiments/schedules.py",
        "model": "ladder(64, 2): 94,528 non-embedding parameters, byte vocabulary (259), python_source",
        "batch_tokens": 1024,
        "tokens_per_param": (5, 20),
        "seeds": (101, 102, 103, 104, 105, 106, 107, 108),
        "warmup": "S // 40 steps",
        "lr": "tuned inside each replicate: the grid 0.001, 0.002, 0.004 (centred on a pilot at seed 1), grown by "
              "an octave past an edge that holds the seed's optimum; each arm scores its lowest final loss",
        "metric": "final validation loss, nats/byte, on one held-out sample of 32k tokens shared by every run",
    },
    "depth": {
        "experiment": "experiments/depth.py",
        "model": "ladder(64, L), L = 2 and 8: 94,528 and 377,920 non-embedding parameters, byte vocabulary (259), "
                 "width muP, python_source",
        "width": 64,
        "depths": (2, 8),
        "residuals": "plain m = 1; depth-muP m = 1.4 / sqrt(L); CompleteP m = 1.4 sqrt(2) / L",
        "batch_tokens": 1024,
        "steps": 600,
        "tokens_per_param": (6.5, 1.63),
        "seeds": (101, 102, 103, 104, 105, 106, 107, 108),
        "warmup": "S // 40 steps, then WSD with an exp decay over the last 10% to 10% of the lr",
        "lr": "tuned inside each replicate: the grid 0.001, 0.002, 0.004 (centred on a pilot at seed 1), grown "
              "by an octave past an edge that holds the replicate's optimum; its best lr is the vertex of a "
              "parabola in log2(lr) through the lowest loss and its two neighbours",
        "metric": "shift = log2(best lr at 8 layers / best lr at 2 layers), octaves, per seed and residual scaling; "
                  "final validation loss, nats/byte, on one held-out sample of 32k tokens shared by every run",
    },
    "scaling_tokens": {
        "experiment": "experiments/scaling_tokens.py",
        "model": "ladder(w, 2), w = 12, 16, 24, 32, 48, 64: 2,364 to 94,528 non-embedding parameters (40x)",
        "corpus": "python_source tokenized with a 1024-token byte-level BPE trained on its training part (corpus."
                  "bpe_corpus: 11.0M training tokens, 2.59 bytes a token)",
        "widths": (12, 16, 24, 32, 48, 64),
        "rows": (4, 8, 16, 16, 16, 16),
        "seq_len": 64,
        "tokens_per_param": (10, 20, 40, 80, 160, 320),
        "top": "320 N for widths 12-32 (at most 0.7 epochs), 160 N for 48 and 64 (0.74 and 1.38 epochs)",
        "runs": "per size and seed one stable WSD run (warmup a quarter of 10 N tokens) with a checkpoint every 10 N "
                "tokens, branched into exp decays of a ninth of the stable steps to 10% of the lr at each level",
        "seeds": (101, 102, 103, 104, 105, 106, 107, 108),
        "lr": "tuned per size on the tuning seed 1 (not scored): a decayed run to 40 N tokens at 0.004, 0.008, "
              "0.016, grown by an octave past an edge that holds the optimum",
        "fit": "per seed, scaling_law.fit_scaling_law on its 34 branch ends (N non-embedding, D tokens, L nats a "
               "token); D_opt/N at the geometric mean of the sizes (15,929) by scaling_law.ratio_for_size; a fit "
               "without an optimum enters at the bound its exponents point to (alpha <= 0: 1e5, beta <= 0: 1)",
        "metric": "validation loss, nats a token, on 32 batches of the corpus's held-out tenth (eval_seed 0)",
    },
    "width": {
        "experiment": "experiments/width.py",
        "model": "ladder(w, 2), w = 32 and 128: 23,712 and 377,472 non-embedding parameters, byte vocabulary (259), "
                 "muP (dim_model_base 256) or SP, python_source",
        "widths": (32, 128),
        "layers": 2,
        "batch_tokens": 1024,
        "steps": 1000,
        "tokens_per_param": (43.2, 2.71),
        "seeds": (101, 102, 103, 104, 105, 106, 107, 108),
        "warmup": "S // 40 steps, then WSD with an exp decay over the last 10% to 10% of the lr",
        "lr": "tuned inside each replicate: the grid 0.001, 0.002, 0.004, grown by an octave past an edge that "
              "holds the replicate's optimum; its best lr is the vertex of a parabola in log2(lr) through the "
              "lowest loss and its two neighbours",
        "metric": "shift = log2(best lr at width 128 / best lr at width 32), octaves, per seed and parametrisation; "
                  "final validation loss, nats/byte, on one held-out sample of 32k tokens shared by every run",
    },
    "small_long": {
        "experiment": "experiments/small_long.py",
        "model": "ladder(16, 2) against ladder(32, 2): 5,200 and 23,712 non-embedding parameters (4.56x), byte "
                 "vocabulary, python_source",
        "small": 16,
        "large": 32,
        "batch_tokens": 1024,
        "large_tokens_per_param": 40,
        "compute": (1, 2, 4),
        "runs": "the large model: 926 steps, warmup S // 40, WSD with an exp decay over the last 10% to 10% of the "
                "lr; the small model: one stable WSD run per seed and lr with a checkpoint every 3,800 steps, "
                "branched at k x 3,800 steps into an exp decay of a ninth of them, k x the large run's training "
                "compute (6 N D); the small model reads 831, 1663 and 3326 tokens a parameter, at most 0.61 epochs",
        "tokens_per_param": (40, 831, 1663, 3326),
        "seeds": (101, 102, 103, 104, 105, 106, 107, 108),
        "lr": "tuned inside each replicate: every arm of a seed trains at 0.001, 0.002, 0.004, the seed's grid "
              "grown by an octave past an edge that holds any of its arms' optimum; each arm scores its lowest "
              "final loss",
        "metric": "final validation loss, nats/byte, on one held-out sample of 32k tokens shared by every run",
    },
    "preference": {
        "experiment": "experiments/preference.py",
        "model": "the tiny preset (ladder(128, 4)): 754,816 non-embedding parameters, byte vocabulary, standard "
                 "parametrisation; experiments/two_stage.py's stable run (300 steps) on python_source, its A-2 decay "
                 "(150 steps, 70% python_source + 30% SFT tasks), then 800 SFT steps on the task rows",
        "stable_steps": 300,
        "decay_steps": 150,
        "sft_steps": 800,
        "rows": 32,
        "pairs": "on-policy: the SFT model's greedy answers to 2000 fresh prompts of the training split (tasks.py, "
                 "seed 1); each wrong, non-empty answer that fits a DPO row of 64 tokens is a pair, chosen the right "
                 "answer, rejected the model's own",
        "pair_prompts": 2000,
        "pair_seed": 1,
        "dpo_steps": 60,
        "betas": (0.1, 0.5),
        "lr_bounds": (1e-06, 0.001),
        "tokens_per_param": 2.44,
        "tokens": "pre-training (stable and decay, 32 rows of 128 tokens a step) per non-embedding parameter; the SFT "
                  "adds 2.17",
        "seeds": (101, 102, 103, 104, 105, 106, 107, 108),
        "lr": "tuned inside each replicate, per beta: the grid 2.5e-6, 5e-6, 1e-5 (centred on a pilot at seed 1, whose "
              "optimum was 5e-6 at both betas), grown by an octave past an edge that holds the optimum, within 1e-6 "
              ".. 1e-3; the lr and beta with the lowest "
              "exact-match error on the held-out tuning prompts 151-300 (ties: the lower loss of the right answers)",
        "metric": "exact-match error of greedy answers on the held-out prompts 1-150 (tasks.py's validation split)",
    },
    "decay_mix": {
        "experiment": "experiments/decay_mix.py",
        "model": "the tiny preset (ladder(128, 4)): 754,816 non-embedding parameters, byte vocabulary, standard "
                 "parametrisation; experiments/two_stage.py's runs: a stable run (300 steps) on python_source, two "
                 "decays of 150 steps branched from it (A-1: python_source; A-2: 70% python_source + 30% SFT task "
                 "rows), then SFT on the task rows after each",
        "stable_steps": 300,
        "decay_steps": 150,
        "rows": 32,
        "sft_steps": 100,
        "matched_steps": 45,
        "ckpt_every": 50,
        "arms": "A-2 + 100 SFT steps; A-1 + 100 SFT steps (the same SFT); A-1 + 145 SFT steps (45 more steps of 32 "
                "rows: the 1,440 task rows A-2's decay mixes in, expected)",
        "sft_length": "100 steps: the exploratory seeds 1-5 (experiments/two_stage.py) showed A-2's gap at 50 and 100 "
                      "steps, -0.06 nats each, with exact match still 0",
        "tokens_per_param": 2.44,
        "tokens": "pre-training (stable and decay, 32 rows of 128 tokens a step) per non-embedding parameter",
        "seeds": (109, 110, 111, 112, 113, 114, 115, 116),
        "lr": "not tuned: every arm shares every lr (pre-training 1e-3, the decays to 0.3 of it, SFT 3e-4 as "
              "experiments/two_stage.py), so the claims compare data, not lrs; seeds 109-116 are fresh",
        "metric": "held-out task loss: the mean loss of the right answers (nats a token) on the held-out prompts "
                  "1-150 (tasks.py's validation split)",
    },
}

CLAIMS = {
    "wsd_no_worse_cosine_20tpp": {
        "table": "paper", "section": "§4.3",
        "claim": "WSD with a 10% exp decay ends no worse than Cosine(T=S), each at its own lr, at 20 tokens a "
                 "parameter",
        "a": "WSD exp 10%", "b": "Cosine(T=S)", "test": "no_worse", "delta": 0.01,
        "why": "0.01 nats is 1% in perplexity", "design": "schedules", "tokens_per_param": 20,
    },
    "cosine_T_equals_S_20tpp": {
        "table": "paper", "section": "§4.3",
        "claim": "Cosine(T=S) ends lower than Cosine(T=1.25 S) at step S, each at its own lr, at 20 tokens a "
                 "parameter",
        "a": "Cosine(T=S)", "b": "Cosine(T=1.25S)", "test": "lower", "delta": 0.01,
        "why": "0.01 nats is 1% in perplexity", "design": "schedules", "tokens_per_param": 20,
    },
    "d2z_lower_cosine_20tpp": {
        "table": "literature", "section": "Bergsma et al. 2025",
        "claim": "Linear decay to zero ends lower than Cosine(T=S) to 10%, each at its own lr, at 20 tokens a "
                 "parameter",
        "a": "linear to zero", "b": "Cosine(T=S)", "test": "lower", "delta": 0.01,
        "why": "0.01 nats is 1% in perplexity", "design": "schedules", "tokens_per_param": 20,
    },
    "d2z_gain_grows_with_tpp": {
        "table": "literature", "section": "Bergsma et al. 2025",
        "claim": "The gain of linear-to-zero over Cosine(T=S) is larger at 20 tokens a parameter than at 5",
        "a": "gain at 20 tokens a parameter", "b": "gain at 5", "test": "lower", "delta": 0.005,
        "why": "half the loss margin: a difference of two differences", "design": "schedules",
        "tokens_per_param": (5, 20),
    },
    "tokens_alpha_above_beta": {
        "table": "paper", "section": "§4.5",
        "claim": "Fitted in BPE tokens, the size exponent exceeds the data exponent (alpha > beta), so D_opt/N_opt "
                 "grows with compute",
        "a": "beta", "b": "alpha", "test": "lower", "delta": 0.05,
        "why": "the paper's own alpha - beta (0.29 - 0.23), rounded down", "design": "scaling_tokens",
        "tokens_per_param": (10, 320),
    },
    "tokens_d_over_n_above_chinchilla": {
        "table": "paper", "section": "§4.5",
        "claim": "Fitted in BPE tokens, the compute-optimal D/N at the middle size is above Chinchilla's 20 (log10)",
        "a": "log10 20", "b": "log10 D_opt/N", "test": "lower", "delta": 0.30103,
        "why": "log10 2: a factor of two in tokens a parameter", "design": "scaling_tokens",
        "tokens_per_param": (10, 320),
    },
    "tokens_d_over_n_matches_192": {
        "table": "paper", "section": "§4.5",
        "claim": "Fitted in BPE tokens, the compute-optimal D/N at the middle size is the paper's 192 within a factor "
                 "of two (log10)",
        "a": "log10 D_opt/N", "b": "log10 192", "test": "matches", "delta": 0.30103,
        "why": "log10 2: a factor of two in tokens a parameter", "design": "scaling_tokens",
        "tokens_per_param": (10, 320),
    },
    "depth_mup_shift_lower_plain": {
        "table": "paper", "section": "§3.1",
        "claim": "With residuals x scale_depth / sqrt(L), the best lr moves less from 2 to 8 layers than with plain "
                 "residuals (absolute shift, octaves)",
        "a": "depth-muP |shift|", "b": "plain |shift|", "test": "lower", "delta": 0.25,
        "why": "a quarter of the grid's step (an octave): the parabola's vertex resolves shifts of this size",
        "design": "depth", "tokens_per_param": (6.5, 1.63),
    },
    "completep_shift_lower_depth_mup": {
        "table": "literature", "section": "Dey et al. 2025",
        "claim": "With CompleteP's residuals (1/L), the best lr moves less from 2 to 8 layers than with depth-muP's "
                 "(1/sqrt(L)) (absolute shift, octaves)",
        "a": "CompleteP |shift|", "b": "depth-muP |shift|", "test": "lower", "delta": 0.25,
        "why": "a quarter of the grid's step (an octave): the parabola's vertex resolves shifts of this size",
        "design": "depth", "tokens_per_param": (6.5, 1.63),
    },
    "completep_no_worse_depth_mup_loss": {
        "table": "literature", "section": "Dey et al. 2025",
        "claim": "At 8 layers, each at its best lr of the grid, CompleteP's residuals end no worse than depth-muP's",
        "a": "CompleteP, 8 layers", "b": "depth-muP, 8 layers", "test": "no_worse", "delta": 0.01,
        "why": "0.01 nats is 1% in perplexity", "design": "depth", "tokens_per_param": 1.63,
    },
    "mup_width_shift_lower_sp": {
        "table": "paper", "section": "§3.3",
        "claim": "Under muP the best lr moves less from width 32 to 128 than under SP (absolute shift, octaves)",
        "a": "muP |shift|", "b": "SP |shift|", "test": "lower", "delta": 0.25,
        "why": "a quarter of the grid's step (an octave): the parabola's vertex resolves shifts of this size",
        "design": "width", "tokens_per_param": (43.2, 2.71),
    },
    "mup_width_shift_within_half_octave": {
        "table": "paper", "section": "§3.3",
        "claim": "Under muP the best lr at width 128 is the one at width 32 within half an octave (signed shift)",
        "a": "muP shift", "b": "0", "test": "matches", "delta": 0.5,
        "why": "half an octave: the paper's Fig. 3 reads its optimum (0.01) off a grid of octaves",
        "design": "width", "tokens_per_param": (43.2, 2.71),
    },
    "small_long_no_worse_at_4x": {
        "table": "paper", "section": "§4.3",
        "claim": "A 4.6x smaller model trained with WSD on 4x the large model's training compute ends no worse than "
                 "the large model trained on 40 N tokens, each at its own lr",
        "a": "small, 4x compute", "b": "large, 40 N tokens", "test": "no_worse", "delta": 0.01,
        "why": "0.01 nats is 1% in perplexity", "design": "small_long", "tokens_per_param": (40, 3326),
    },
    "dpo_on_policy_lower_error": {
        "table": "paper", "section": "§7.1",
        "claim": "DPO on the SFT model's own wrong answers, lr and beta tuned on held-out prompts, lowers the "
                 "exact-match error of greedy answers on other held-out prompts",
        "a": "A-2 + SFT + DPO", "b": "A-2 + SFT", "test": "lower", "delta": 0.05,
        "why": "5 points of exact match: 7-8 of the 150 scored prompts", "design": "preference",
        "tokens_per_param": 2.44,
    },
    "decay_mix_a2_lower_a1": {
        "table": "paper", "section": "§5",
        "claim": "With SFT task rows mixed into the decay (A-2), 100 steps of the same SFT end with a lower held-out "
                 "task loss than after a decay on pre-training data only (A-1)",
        "a": "A-2 + SFT 100", "b": "A-1 + SFT 100", "test": "lower", "delta": 0.05,
        "why": "0.05 nats per answer token is 5% in the answers' perplexity", "design": "decay_mix",
        "tokens_per_param": 2.44,
    },
    "decay_mix_a2_lower_rows_matched": {
        "table": "paper", "section": "§5",
        "claim": "A-2 + 100 SFT steps ends with a lower held-out task loss than A-1 + 145 SFT steps, which adds as "
                 "many task rows as A-2's decay mixed in, all of them in SFT (Table 3: B-3 above B-2)",
        "a": "A-2 + SFT 100", "b": "A-1 + SFT 145 (rows matched)", "test": "lower", "delta": 0.05,
        "why": "0.05 nats per answer token is 5% in the answers' perplexity", "design": "decay_mix",
        "tokens_per_param": 2.44,
    },
}


def hash_of(claim, designs=None):
    """The sha256 (16 hex digits) of a claim and the design it names: any change to either changes it."""
    designs = DESIGNS if designs is None else designs
    text = json.dumps(dict(claim=claim, design=designs.get(claim.get("design"))), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def current_hash(cid):
    """The hash of claim `cid` as the registry holds it now."""
    if cid not in CLAIMS:
        raise KeyError(f"claim {cid!r} is not in {FILE}: register it there and commit before its runs")
    return hash_of(CLAIMS[cid])


def literal(source, name):
    """The value of `name = <literal>` in Python source, read without running it (ast.literal_eval)."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def git(*args, root=ROOT):
    """git's output in the repository, or None outside a git checkout (a tarball of the project)."""
    try:
        out = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def head(root=ROOT):
    """The commit the working tree is on, or None; with "+" when this registry differs from it (uncommitted)."""
    commit = git("rev-parse", "HEAD", root=root)
    if commit is None:
        return None
    dirty = git("status", "--porcelain", "--", FILE, root=root)
    return commit + ("+" if dirty else "")


def hashes_at(commit, root=ROOT):
    """{claim id: hash} of the registry as committed at `commit`."""
    source = git("show", f"{commit}:{FILE}", root=root)
    if source is None:
        return {}
    claims, designs = literal(source, "CLAIMS"), literal(source, "DESIGNS")
    return {cid: hash_of(c, designs) for cid, c in claims.items()}


def registered_at(cid, claim_hash, root=ROOT):
    """The oldest commit of the unbroken run of registry commits, back from HEAD, in which claim `cid` has
    `claim_hash`: the commit that registered the claim as it is. None if HEAD's registry does not hold it so."""
    found = None
    for commit in (git("log", "--format=%H", "--", FILE, root=root) or "").split():
        if hashes_at(commit, root).get(cid) != claim_hash:
            break
        found = commit
    return found


def is_ancestor(a, b, root=ROOT):
    """Whether commit a is b or an ancestor of b."""
    return git("merge-base", "--is-ancestor", a, b, root=root) is not None


def history_readable(root=ROOT):
    """Whether git can tell when a claim was committed: a full checkout (not a tarball, not a shallow clone)."""
    return git("rev-parse", "--is-shallow-repository", root=root) == "false"


def status(cid, claim_hash, run_commits, root=ROOT, current=None):
    """"registered" when the claim still has `claim_hash` (the registry's now: `current`, or this file's) and was
    committed before every run (each run's commit, clean, descends from the registering commit); else "post hoc",
    with the reason."""
    if claim_hash != (current or current_hash(cid)):
        return "post hoc", "the claim changed after its runs"
    first = registered_at(cid, claim_hash, root)
    if first is None:
        return "post hoc", "the claim is not committed"
    for c in run_commits:
        if not c or c.endswith("+") or not is_ancestor(first, c, root):
            return "post hoc", "a run trained before the claim was committed"
    return "registered", f"registered in {first[:10]}"


def main():
    for cid, c in CLAIMS.items():
        h = current_hash(cid)
        print(f"{cid:28s} {c['table']:10s} {h}  {(registered_at(cid, h) or 'not committed')[:10]}")


if __name__ == "__main__":
    main()

"""
Findings: each claim of the paper we rerun, with seeds, the noise, and a verdict (the wind tunnel's ledger).

A finding compares two arms run with the same seeds (init and data order): d_s = ours(arm A, seed s) - ours(arm B,
seed s). Its noise is the standard deviation of d_s over the seeds (ddof 1), and the verdict is

    claim "lower" (A ends below B):    reproduced if mean(d) < -2 noise; not reproduced if mean(d) > 2 noise;
                                       else within noise
    claim "no gain" (A is not better): reproduced if mean(d) > -2 noise; not reproduced otherwise

so "reproduced" needs a margin of twice the noise. results/findings.json holds every finding recorded so far: the
paper's section, claim and number, ours (per seed, mean, std), the verdict, the command, hardware and wall time.
`python report.py` writes the table (and every experiment's own tables) into the README.
"""

import json
import os
import statistics

from checkpoint import write_json
from experiments.runner import RESULTS

FILE = os.path.join(RESULTS, "findings.json")


def verdict(diffs, claim):
    """(mean, noise, verdict) of the per-seed differences A - B under a claim "lower" or "no gain"."""
    if len(diffs) < 3:
        raise ValueError(f"{len(diffs)} seeds: a verdict needs at least 3")
    mean, noise = statistics.mean(diffs), statistics.stdev(diffs)
    if claim == "lower":
        v = "reproduced" if mean < -2 * noise else "not reproduced" if mean > 2 * noise else "within noise"
    elif claim == "no gain":
        v = "reproduced" if mean > -2 * noise else "not reproduced"
    else:
        raise ValueError(f"claim={claim!r}: use 'lower' or 'no gain'")
    return mean, noise, v


def record(*, fid, section, claim, paper, test, a, b, a_per_seed, b_per_seed, command, hardware, wall_s,
           explanation=""):
    """Add or replace finding `fid` in results/findings.json: arm `a` against arm `b` (names; their per-seed
    values), under `test` ("lower" | "no gain"); returns it."""
    diffs = [x - y for x, y in zip(a_per_seed, b_per_seed)]
    mean, noise, v = verdict(diffs, test)
    finding = dict(id=fid, section=section, claim=claim, paper=paper, arms=[a, b], test=test,
                   ours=dict(a=list(a_per_seed), b=list(b_per_seed), diff_per_seed=diffs, diff_mean=mean,
                             diff_std=noise, seeds=len(diffs)),
                   verdict=v, explanation=explanation, command=command, hardware=hardware, wall_s=round(wall_s, 1))
    allf = load()
    allf[fid] = finding
    write_json(FILE, allf)
    return finding


def load():
    if not os.path.isfile(FILE):
        return {}
    with open(FILE) as f:
        return json.load(f)


def table(findings=None):
    """The README's findings table (markdown), one row per finding."""
    rows = ["| paper | claim | paper's number | ours: A - B, mean +- std (seeds) | verdict | command |",
            "|---|---|---|---|---|---|"]
    for f in (findings or load()).values():
        o = f["ours"]
        rows.append(f"| {f['section']} | {f['claim']} | {f['paper']} | {o['diff_mean']:+.4f} +- {o['diff_std']:.4f} "
                    f"({o['seeds']}) | **{f['verdict']}** | `{f['command']}` |")
    return "\n".join(rows)

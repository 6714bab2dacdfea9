"""
Findings: each claim of the paper we rerun, with seeds, the noise, and a verdict (the wind tunnel's ledger).

A finding compares two arms run with the same seeds (init and data order): d_s = ours(arm A, seed s) - ours(arm B,
seed s). Its noise is the standard deviation of d_s over the seeds (ddof 1), and the verdict is

    claim "lower" (A ends below B):    reproduced if mean(d) < -2 noise; not reproduced if mean(d) > 2 noise;
                                       else within noise
    claim "no gain" (A is not better): reproduced if mean(d) > -2 noise; not reproduced otherwise

so "reproduced" needs a margin of twice the noise. results/findings.json holds every finding recorded so far: the
paper's section, claim and number, ours (per seed, mean, std), the verdict, the command, hardware and wall time.
`python findings.py` prints the table; `python report.py` writes it (and every other experiment table) into the
README, and `python report.py --rerun` reruns every experiment that records findings first.
"""

import json
import os
import platform
import statistics

import numpy as np

ROOT = os.path.dirname(os.path.abspath(__file__))
FILE = os.path.join(ROOT, "results", "findings.json")


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


def record(fid, section, claim_text, paper, claim, a, b, per_seed_a, per_seed_b, command, hardware, wall_s,
           explanation=""):
    """Add or replace finding `fid` in results/findings.json; returns it."""
    diffs = [x - y for x, y in zip(per_seed_a, per_seed_b)]
    mean, noise, v = verdict(diffs, claim)
    finding = dict(id=fid, section=section, claim=claim_text, paper=paper, arms=[a, b], test=claim,
                   ours=dict(a=per_seed_a, b=per_seed_b, diff_per_seed=diffs, diff_mean=mean, diff_std=noise,
                             seeds=len(diffs)),
                   verdict=v, explanation=explanation, command=command, hardware=hardware, wall_s=round(wall_s, 1))
    allf = load()
    allf[fid] = finding
    write_json(FILE, allf)
    return finding


def write_json(path, obj):
    """Write JSON atomically (a temporary file, then a rename)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def seed_name(name, seed):
    """The run `name` with another seed: seed 1 is the run itself, seed s > 1 is "name seed{s}"."""
    return name if seed == 1 else f"{name} seed{seed}"


def with_seeds(runs, names, seeds):
    """`runs` plus, for each of `names`, copies with seed 2 .. seeds (init and data order; named by seed_name)."""
    extra = {seed_name(n, s): dict(runs[n], seed=s) for s in range(2, seeds + 1) for n in names}
    return {**runs, **extra}


def per_seed(res, name, seeds, key="final_val_loss"):
    """[res[run][key] for seeds 1 .. seeds] of the run `name`."""
    return [res[seed_name(name, s)][key] for s in range(1, seeds + 1)]


def wall_s(results_file, names):
    """Seconds the runs of `names` (every seed) took, from a train.sweep results file."""
    with open(results_file) as f:
        done = json.load(f)
    return sum(v["seconds"] for k, v in done.items() if k.split(" seed")[0] in names)


def log2_vertex(xs, ys):
    """The x of lowest y, refined by a parabola in log2(x) through the grid minimum and its two neighbours (the grid
    point itself at the edge of the grid): a minimiser that does not jump between neighbours on noise."""
    i = int(np.nanargmin(ys))
    if i == 0 or i == len(xs) - 1:
        return float(xs[i])
    a, b, _ = np.polyfit(np.log2(xs[i - 1:i + 2]), np.asarray(ys[i - 1:i + 2], dtype=float), 2)
    return float(2 ** (-b / (2 * a))) if a > 0 else float(xs[i])


def this_cpu():
    return f"{len(os.sched_getaffinity(0))}-core CPU ({platform.machine()})"


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


if __name__ == "__main__":
    print(table())

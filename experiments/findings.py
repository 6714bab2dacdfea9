"""
Findings: each claim of the paper we rerun, with seeds, an interval, a declared margin and a verdict (the wind
tunnel's ledger).

A finding compares two arms run with the same seeds (init and data order), A always the arm the paper favours,
lower always better (an accuracy enters as its error, 1 - accuracy): d_s = A_s - B_s over seeds s = 1 .. n, and

    CI = mean(d) -+ t_{0.95, n-1} sd(d) / sqrt(n)          the two-sided 90% t-interval [lo, hi] of mean(d)

Each finding declares its test and a margin delta > 0 in its metric's units, fixed in the experiment's code before
its runs, with the line that says why that size matters:

    lower     (A ends below B):            reproduced if hi < 0;       not reproduced if lo > -delta
    no_worse  (A is no worse than B):      reproduced if hi < delta;   not reproduced if lo > delta
    matches   (|A - B| < delta):           reproduced if -delta < lo and hi < delta;
                                           not reproduced if lo >= delta or hi <= -delta
    otherwise inconclusive: the interval is too wide to say either way (more seeds or a better design).

"not reproduced" thus needs evidence against the claim (a gain of delta ruled out, a loss of delta shown), never
the absence of evidence for it. A sanity check (a row true by construction, e.g. an update that follows the lr
under Adam) is recorded and shown apart, and does not count as a reproduction. results/findings.json holds every
finding: its arms and their per-seed values, the differences, the interval, the verdict, the command, the hardware
and the wall time, so anyone can recompute it.
"""

import math
import os
import statistics

from configurator import ConfigError
from experiments.runner import RESULTS, read_json
from files import write_json

FILE = os.path.join(RESULTS, "findings.json")
TESTS = ("lower", "no_worse", "matches")
VERDICTS = ("reproduced", "not reproduced", "inconclusive")


def _betacf(a, b, x):
    """The continued fraction of the regularized incomplete beta function (modified Lentz), to 1e-15."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            return h
    raise ArithmeticError("incomplete beta: no convergence")


def incomplete_beta(a, b, x):
    """I_x(a, b), the regularized incomplete beta function."""
    if x <= 0 or x >= 1:
        return float(x >= 1)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def t_cdf(t, df):
    """P(T <= t) for Student's t with df degrees of freedom."""
    tail = 0.5 * incomplete_beta(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t > 0 else tail


def t_quantile(p, df):
    """The p-quantile of Student's t with df degrees of freedom (0.5 < p < 1), by bisection on t_cdf to 1e-12."""
    if not (0.5 < p < 1 and df >= 1):
        raise ValueError(f"t_quantile(p={p}, df={df}): need 0.5 < p < 1 and df >= 1")
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def interval(diffs):
    """(mean, sd, [lo, hi]) of the per-seed differences: the two-sided 90% t-interval of their mean."""
    n = len(diffs)
    if n < 3:
        raise ValueError(f"{n} seeds: a verdict needs at least 3")
    mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
    half = t_quantile(0.95, n - 1) * sd / math.sqrt(n)
    return mean, sd, [mean - half, mean + half]


def verdict(ci90, test, delta):
    """The verdict of a finding from its interval [lo, hi], its test and its margin delta > 0."""
    lo, hi = ci90
    if not delta > 0:
        raise ValueError(f"delta={delta}: a margin must be > 0")
    if test == "lower":
        return "reproduced" if hi < 0 else "not reproduced" if lo > -delta else "inconclusive"
    if test == "no_worse":
        return "reproduced" if hi < delta else "not reproduced" if lo > delta else "inconclusive"
    if test == "matches":
        if -delta < lo and hi < delta:
            return "reproduced"
        return "not reproduced" if lo >= delta or hi <= -delta else "inconclusive"
    raise ValueError(f"test={test!r}: use one of {', '.join(TESTS)}")


def provenance(sources, hardware=None):
    """(machines, train.py versions) of every run in the sweeps' results files `sources`, each sorted and unique
    (a run recorded before runs kept their machine: `hardware`, the finding's); a finding rests on runs of one
    machine and one code version when both have one element."""
    runs = [r for file in sources for r in read_json(file).values()]
    return sorted({r.get("hardware", hardware) for r in runs}), sorted({r.get("trainer", 1) for r in runs})


def record(*, fid, section, claim, paper, test, delta, why, a, b, a_per_seed, b_per_seed, command, hardware, wall_s,
           sources, explanation="", sanity=False):
    """Add or replace finding `fid` in results/findings.json: arm `a` (the paper's) against arm `b`, their per-seed
    values, under `test` with margin `delta` (why: the line that says why that size matters), and the machines and
    train.py versions of the runs in `sources` (the sweeps' results files it rests on; () for a measurement that
    trains no sweep, recorded with `hardware`); returns it."""
    if test not in TESTS:
        raise ValueError(f"test={test!r}: use one of {', '.join(TESTS)}")
    machines, trainers = provenance(sources, hardware) if sources else ([hardware], [])
    diffs = [x - y for x, y in zip(a_per_seed, b_per_seed, strict=True)]
    mean, sd, ci90 = interval(diffs)
    finding = dict(id=fid, section=section, claim=claim, paper=paper, test=test, delta=delta, why=why,
                   a=dict(name=a, per_seed=list(a_per_seed)), b=dict(name=b, per_seed=list(b_per_seed)),
                   diff=dict(per_seed=diffs, mean=mean, sd=sd, ci90=ci90), seeds=len(diffs),
                   verdict=verdict(ci90, test, delta), sanity=sanity, explanation=explanation, command=command,
                   hardware="; ".join(machines), machines=machines, trainer=trainers,
                   sources=[os.path.basename(f) for f in sources], wall_s=round(wall_s, 1))
    allf = load()
    allf[fid] = finding
    write_json(FILE, allf)
    return finding


# what every finding of the ledger holds (report.py's tables read these)
FIELDS = ("id", "section", "claim", "test", "delta", "a", "b", "diff", "seeds", "verdict", "command")


def load():
    """The ledger {id: finding}, {} where none is written yet; a ledger that is not one (corrupt, {}, a finding
    without its fields) is one ConfigError line: the README's tables are never rebuilt from it."""
    if not os.path.isfile(FILE):
        return {}
    ledger = read_json(FILE)
    fix = f"restore it (git checkout -- {os.path.relpath(FILE)}) or record them again (python report.py --record)"
    if not ledger:
        raise ConfigError(f"{FILE} holds no findings: {fix}")
    for fid, f in ledger.items():
        lacks = [k for k in FIELDS if k not in f] if isinstance(f, dict) else ["everything"]
        if lacks:
            raise ConfigError(f"{FILE}: finding {fid} lacks {', '.join(lacks)}: {fix}")
    return ledger


def _fmt(x):
    return f"{x:+.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:+.2e}"


TEST_WORDS = {"lower": "A < B", "no_worse": "A < B + delta", "matches": "abs(A - B) < delta"}


def cell(text):
    """Text in a markdown table cell: a pipe (|shift|) would split the cell."""
    return str(text).replace("|", "\\|")


def _rows(found):
    rows = ["| paper | claim | A (the paper's arm) | B | test, delta | A - B: mean [90% CI] (seeds) | verdict | "
            "command |", "|---|---|---|---|---|---|---|---|"]
    for f in found:
        d = f["diff"]
        rows.append(f"| {f['section']} | {cell(f['claim'])} | {cell(f['a']['name'])} | {cell(f['b']['name'])} | "
                    f"{TEST_WORDS[f['test']]}, {f['delta']:g} | {_fmt(d['mean'])} [{_fmt(d['ci90'][0])}, "
                    f"{_fmt(d['ci90'][1])}] ({f['seeds']}) | **{f['verdict']}** | `{f['command']}` |")
    return rows


def table(findings=None):
    """The README's findings table (markdown): every counted finding, then the sanity checks apart."""
    allf = list((findings or load()).values())
    counted = [f for f in allf if not f.get("sanity")]
    tally = {v: sum(f["verdict"] == v for f in counted) for v in VERDICTS}
    out = [f"{len(counted)} findings: " + ", ".join(f"{n} {v}" for v, n in tally.items()) + ".", ""] + _rows(counted)
    sanity = [f for f in allf if f.get("sanity")]
    if sanity:
        out += ["", "Sanity checks (true by construction or by training on the measure; not counted above):", ""]
        out += _rows(sanity)
    return "\n".join(out)

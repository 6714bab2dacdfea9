"""
Findings: each claim we rerun, with seeds, an interval, a p-value, a declared margin and a verdict (the wind
tunnel's ledger).

A finding compares two arms run with the same seeds (init and data order), A always the arm the claim favours,
lower always better (an accuracy enters as its error, 1 - accuracy): d_s = A_s - B_s over seeds s = 1 .. n, and

    CI = mean(d) -+ t_{0.975, n-1} sd(d) / sqrt(n)          the two-sided 95% t-interval [lo, hi] of mean(d)
    p  = #{signs e: mean(e * d') <= mean(d')} / 2^n          the exact one-sided sign-flip p-value of "the claim is
                                                              false", d' = d for lower, d - delta for no_worse;
                                                              matches takes the larger of its two one-sided tests

Each finding declares its test and a margin delta > 0 in its metric's units, with the line that says why that size
matters:

    lower     (A ends below B):            reproduced if hi < 0;       not reproduced if lo > -delta
    no_worse  (A is no worse than B):      reproduced if hi < delta;   not reproduced if lo > delta
    matches   (|A - B| < delta):           reproduced if -delta < lo and hi < delta;
                                           not reproduced if lo >= delta or hi <= -delta
    otherwise inconclusive: the interval is too wide to say either way (more seeds or a better design).

A registered claim (experiments/claims.py: committed before its runs) is a primary finding: "reproduced" also needs
its Holm-adjusted p < 0.05 over its table's family (the paper's claims, the later literature's). A finding without a
registered claim is exploratory: shown apart, never counted. "not reproduced" needs evidence against the claim (a
gain of delta ruled out, a loss of delta shown), never the absence of evidence for it. A sanity check (true by
construction) is shown apart too. results/findings.json holds every finding: its arms and their per-seed values, the
differences, the interval, the verdict, its earlier verdicts, the command, the hardware and the wall time.
"""

import itertools
import math
import os
import statistics

from configurator import ConfigError
from experiments import claims
from experiments.runner import RESULTS, read_json, this_machine, trained, wall_s
from files import write_json

FILE = os.path.join(RESULTS, "findings.json")
TESTS = ("lower", "no_worse", "matches")
VERDICTS = ("reproduced", "not reproduced", "inconclusive")
LEVEL = 0.95  # the interval's coverage
ALPHA = 0.05  # the family-wise error rate Holm's correction holds


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


def interval(diffs, level=LEVEL):
    """(mean, sd, [lo, hi]) of the per-seed differences: the two-sided t-interval of their mean at `level`."""
    n = len(diffs)
    if n < 3:
        raise ValueError(f"{n} seeds: a verdict needs at least 3")
    mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
    half = t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return mean, sd, [mean - half, mean + half]


MAX_FLIP_SEEDS = 20  # 2^20 sign patterns: exact enumeration stays under a second


def _flip_p(d):
    """P(mean(e * d) <= mean(d)) over the 2^n sign vectors e: small when d sits below 0 by more than chance."""
    if len(d) > MAX_FLIP_SEEDS:
        raise ValueError(f"{len(d)} seeds: the exact sign-flip test enumerates at most {MAX_FLIP_SEEDS}")
    observed = sum(d)
    hits = sum(sum(e * x for e, x in zip(signs, d)) <= observed + 1e-12 * (1 + abs(observed))
               for signs in itertools.product((1, -1), repeat=len(d)))
    return hits / 2 ** len(d)


def sign_flip_p(diffs, test, delta):
    """The exact one-sided sign-flip p-value of the null that the claim is false at its margin."""
    if test == "lower":
        return _flip_p(diffs)
    if test == "no_worse":
        return _flip_p([x - delta for x in diffs])
    if test == "matches":  # two one-sided tests: below +delta and above -delta
        return max(_flip_p([x - delta for x in diffs]), _flip_p([-x - delta for x in diffs]))
    raise ValueError(f"test={test!r}: use one of {', '.join(TESTS)}")


def holm(ps):
    """Holm's step-down adjusted p-values, in the order given."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    adjusted, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


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
    return sorted({r.get("hardware", hardware) for r in runs}), sorted({r["trainer"] for r in runs})


def record(*, fid, section, claim, paper, test, delta, why, a, b, a_per_seed, b_per_seed, command, hardware, wall_s,
           sources, explanation="", sanity=False, registered=None):
    """Add or replace finding `fid` in results/findings.json: arm `a` (the claim's) against arm `b`, their per-seed
    values, under `test` with margin `delta` (why: the line that says why that size matters), and the machines and
    train.py versions of the runs in `sources` (the sweeps' results files it rests on; () for a measurement that
    trains no sweep, recorded with `hardware`); `registered`: the claim fields record_claim adds. Returns it."""
    if test not in TESTS:
        raise ValueError(f"test={test!r}: use one of {', '.join(TESTS)}")
    machines, trainers = provenance(sources, hardware) if sources else ([hardware], [])
    diffs = [x - y for x, y in zip(a_per_seed, b_per_seed, strict=True)]
    mean, sd, ci95 = interval(diffs)
    ci90 = interval(diffs, 0.90)[2]  # (what a rerun elsewhere is compared against: report.py --compare)
    finding = dict(id=fid, section=section, claim=claim, paper=paper, test=test, delta=delta, why=why,
                   a=dict(name=a, per_seed=list(a_per_seed)), b=dict(name=b, per_seed=list(b_per_seed)),
                   diff=dict(per_seed=diffs, mean=mean, sd=sd, ci95=ci95, ci90=ci90), seeds=len(diffs),
                   level=LEVEL, p=sign_flip_p(diffs, test, delta), verdict=verdict(ci95, test, delta),
                   sanity=sanity, explanation=explanation, command=command,
                   hardware="; ".join(machines), machines=machines, trainer=trainers,
                   sources=[os.path.basename(f) for f in sources], wall_s=round(wall_s, 1),
                   **(registered or dict(table="exploratory")))
    allf = load()
    old = allf.get(fid)
    allf[fid] = finding
    adjusted(allf)  # (the verdict after Holm is the one the history compares: recorded again, nothing changed)
    finding["history"] = history(old, finding)
    write_json(FILE, allf)
    return finding


def record_claim(cid, *, a_per_seed, b_per_seed, command, hardware, wall_s, sources, run_commits, explanation=""):
    """Record the registered claim `cid` (experiments/claims.py): its arms, test and margin from the registry, its
    hash, the commits its runs trained under, and whether the claim was committed before them."""
    c = claims.CLAIMS[cid]
    h = claims.current_hash(cid)
    old = load().get(cid, {})
    if claims.history_readable() or old.get("claim_hash") != h or old.get("run_commits") != list(run_commits):
        status, why_status = claims.status(cid, h, run_commits)
    else:  # (a shallow clone cannot see the registering commit: the status recorded with the full history stands)
        status, why_status = old["status"], old["status_why"]
    registered = dict(table=c["table"], claim_id=cid, claim_hash=h, run_commits=list(run_commits), status=status,
                      status_why=why_status, tokens_per_param=c["tokens_per_param"])
    return record(fid=cid, section=c["section"], claim=c["claim"], paper=c["section"], test=c["test"],
                  delta=c["delta"], why=c["why"], a=c["a"], b=c["b"], a_per_seed=a_per_seed, b_per_seed=b_per_seed,
                  command=command, hardware=hardware, wall_s=wall_s, sources=sources, explanation=explanation,
                  sanity=c["table"] == "sanity", registered=registered)


def record_claims(arms, command, sources, explain):
    """Record each registered claim of {claim id: (A per seed, B per seed)} from the sweeps in `sources` (results
    files): the commits of every run they trained, their wall time, this machine, each claim's explanation."""
    commits = sorted({v.get("commit") for f in sources for v in trained(read_json(f)).values()}, key=str)
    wall = sum(wall_s(f) for f in sources)
    for cid, (a, b) in arms.items():
        record_claim(cid, a_per_seed=a, b_per_seed=b, command=command, hardware=this_machine(), wall_s=wall,
                     sources=list(sources), run_commits=commits, explanation=explain.get(cid, ""))


def history(old, new):
    """The earlier verdicts of a finding: the old entry's, plus the old entry itself when its verdict, interval
    level or claim differ from the new one's (a verdict that changed after a redesign stays visible)."""
    if old is None:
        return []
    past = list(old.get("history", []))
    then = dict(verdict=old["verdict"], level=old.get("level", 0.90), claim_hash=old.get("claim_hash"),
                seeds=old["seeds"], mean=old["diff"]["mean"])
    if any(then[k] != new.get(k) for k in ("verdict", "level", "claim_hash")):
        past.append(then)
    return past


def primary(f):
    """A finding that counts: a registered claim of the paper or the later literature, committed before its runs."""
    return f.get("status") == "registered" and f.get("table") in ("paper", "literature")


def adjusted(ledger):
    """The ledger with Holm's correction over each table's primary findings: a "reproduced" whose adjusted p is not
    below ALPHA becomes inconclusive."""
    for table in ("paper", "literature"):
        family = [f for f in ledger.values() if primary(f) and f["table"] == table]
        for f, p in zip(family, holm([f["p"] for f in family])):
            f["p_holm"] = p
            f["verdict"] = verdict(f["diff"]["ci95"], f["test"], f["delta"])
            if f["verdict"] == "reproduced" and p >= ALPHA:
                f["verdict"] = "inconclusive"
    return ledger


# what every finding of the ledger holds (report.py's tables read these)
FIELDS = ("id", "section", "claim", "test", "delta", "a", "b", "diff", "seeds", "p", "verdict", "command")


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


def _p(f):
    """The sign-flip p-value, and Holm's adjusted one for a primary finding."""
    holm_p = f" ({f['p_holm']:.3g})" if "p_holm" in f else ""
    return f"{f['p']:.3g}{holm_p}"


def _rows(found, status=False):
    rows = ["| source | claim | A (the claim's arm) | B | test, delta | tokens/param | A - B: mean [95% CI] (seeds) | "
            "p (Holm) | verdict |" + (" why not counted |" if status else ""),
            "|---|---|---|---|---|---|---|---|---|" + ("---|" if status else "")]
    for f in found:
        d, tpp = f["diff"], f.get("tokens_per_param", "-")
        if isinstance(tpp, list):  # (a claim over two lengths)
            tpp = " and ".join(map(str, tpp))
        ci = f"[{_fmt(d['ci95'][0])}, {_fmt(d['ci95'][1])}]"
        rows.append(f"| {f['section']} | {cell(f['claim'])} | {cell(f['a']['name'])} | {cell(f['b']['name'])} | "
                    f"{TEST_WORDS[f['test']]}, {f['delta']:g} | {tpp} | {_fmt(d['mean'])} {ci} ({f['seeds']}) | "
                    f"{_p(f)} | **{f['verdict']}** |" + (f" {cell(not_counted(f))} |" if status else ""))
    return rows


def not_counted(f):
    """Why a finding is exploratory: its claim changed after its runs, or was never registered before them."""
    return f.get("status_why") or "not registered before its runs"


def group(f):
    """Which table a finding sits in: paper, literature, sanity or exploratory."""
    if f.get("sanity"):
        return "sanity"
    return f["table"] if primary(f) else "exploratory"


# each group's name, and what its table's title adds
GROUPS = {
    "paper": ("The paper's claims", ", registered before their runs (Holm over this table)"),
    "literature": ("The later literature", ", registered before its runs (Holm over this table)"),
    "sanity": ("Sanity checks", " (true by construction; not counted)"),
    "exploratory": ("Exploratory", ": claims not registered before their data (post hoc; not counted)"),
}


def tally(found):
    return ", ".join(f"{sum(f['verdict'] == v for f in found)} {v}" for v in VERDICTS)


def table(findings=None):
    """The README's findings tables (markdown): the paper's registered claims, the later literature's, the sanity
    checks, and the exploratory findings, each with its tally."""
    allf = list((findings or load()).values())
    out = []
    for g, (name, note) in GROUPS.items():
        found = [f for f in allf if group(f) == g]
        if found:
            out += ([""] if out else []) + [f"**{name}{note}.** {len(found)} findings: {tally(found)}.", ""]
            out += _rows(found, status=g == "exploratory")
    return "\n".join(out)

"""The wind tunnel's ledger: a verdict follows from the per-seed differences A - B under a declared test and margin
(the two-sided 95% t-interval against delta, an exact sign-flip p-value, Holm over each table of registered claims),
every per-seed value comes from a results file, a registered claim was committed before its runs, and the README's
findings table is results/findings.json's."""
import itertools
import json
import math
import os
import shutil
import statistics
import subprocess

import pytest

import report
from conftest import ROOT
from experiments import claims, findings, runner

# t_{0.95, df}, from a printed table of Student's t (independent of findings.t_quantile)
T95 = {1: 6.313751514675043, 2: 2.919985580353725, 4: 2.131846786326649, 9: 1.833112932653634,
       29: 1.699127026533497}
# t_{0.975, df}, the same table's two-sided 95% column
T975 = {2: 4.302652729749464, 3: 3.182446305284263, 4: 2.776445105197793, 7: 2.364624251592785, 9: 2.262157162798205}


@pytest.mark.parametrize("df", sorted(T95))
def test_the_t_quantile_is_exact(df):
    assert findings.t_quantile(0.95, df) == pytest.approx(T95[df], rel=1e-10)
    assert findings.t_cdf(T95[df], df) == pytest.approx(0.95, abs=1e-12)
    if df in T975:
        assert findings.t_quantile(0.975, df) == pytest.approx(T975[df], rel=1e-8)


def independent_verdict(lo, hi, test, delta):
    """The rule of the issue, written again here."""
    if test == "lower":
        return "reproduced" if hi < 0 else ("not reproduced" if lo > -delta else "inconclusive")
    if test == "no_worse":
        return "reproduced" if hi < delta else ("not reproduced" if lo > delta else "inconclusive")
    assert test == "matches"
    if lo > -delta and hi < delta:
        return "reproduced"
    return "not reproduced" if (lo >= delta or hi <= -delta) else "inconclusive"


@pytest.mark.parametrize("ci, test, want", [
    ([-0.03, -0.01], "lower", "reproduced"),
    ([-0.03, 0.001], "lower", "inconclusive"),      # a gain is possible, and so is none
    ([-0.005, 0.02], "lower", "not reproduced"),    # a gain of delta = 0.01 is ruled out
    ([0.001, 0.009], "no_worse", "reproduced"),     # worse, but by less than delta
    ([0.005, 0.02], "no_worse", "inconclusive"),
    ([0.011, 0.03], "no_worse", "not reproduced"),
    ([-0.009, 0.009], "matches", "reproduced"),
    ([0.001, 0.045], "matches", "inconclusive"),    # the branched decays' interval: neither shown nor ruled out
    ([0.01, 0.02], "matches", "not reproduced"),
    ([-0.03, -0.01], "matches", "not reproduced")])
def test_the_verdict_rule(ci, test, want):
    assert findings.verdict(ci, test, 0.01) == want == independent_verdict(*ci, test, 0.01)


def test_no_gain_is_never_granted_on_absence_of_evidence():
    # A better than B by about one noise unit over 4 seeds: an interval that allows a gain of delta gives
    # "inconclusive" for "lower", and only an interval that rules it out says "not reproduced"
    mean, sd, ci = findings.interval([-0.010, -0.020, 0.000, -0.010])
    assert findings.verdict(ci, "no_worse", 0.01) == "reproduced" and findings.verdict(ci, "lower", 0.01) == \
        "inconclusive"
    half = T975[3] * statistics.stdev([-0.010, -0.020, 0.000, -0.010]) / 2
    assert ci == pytest.approx([-0.01 - half, -0.01 + half])
    with pytest.raises(ValueError, match="2 seeds: a verdict needs at least 3"):
        findings.interval([0.1, 0.2])
    with pytest.raises(ValueError, match="a margin must be > 0"):
        findings.verdict([0, 1], "lower", 0)


def test_every_finding_recomputes_from_its_arms_under_the_rule():
    for f in findings.load().values():
        assert {"id", "section", "claim", "paper", "test", "delta", "why", "a", "b", "diff", "seeds", "verdict",
                "explanation", "command", "hardware", "machines", "trainer", "sources", "wall_s"} <= set(f), f["id"]
        a, b = f["a"]["per_seed"], f["b"]["per_seed"]
        assert f["a"]["name"] and f["b"]["name"] and f["why"] and f["delta"] > 0 and f["seeds"] == len(a) == len(b)
        d = [x - y for x, y in zip(a, b)]
        assert f["diff"]["per_seed"] == d
        n, mean, sd = len(d), sum(d) / len(d), statistics.stdev(d)
        half = T975[n - 1] * sd / math.sqrt(n)
        assert f["diff"]["mean"] == pytest.approx(mean, abs=1e-12) and f["diff"]["sd"] == pytest.approx(sd)
        assert f["diff"]["ci95"] == pytest.approx([mean - half, mean + half], rel=1e-9, abs=1e-12)
        assert f["p"] == pytest.approx(brute_p(d, f["test"], f["delta"]), abs=1e-12), f["id"]
        want = independent_verdict(mean - half, mean + half, f["test"], f["delta"])
        if findings.primary(f) and want == "reproduced" and f["p_holm"] >= 0.05:
            want = "inconclusive"
        assert f["verdict"] == want, f["id"]
        assert f["command"] and f["hardware"] and f["wall_s"] > 0
        # its runs (the sweeps it rests on, named in sources) come from one machine and one train.py version
        assert len(f["machines"]) == 1 and f["hardware"] == f["machines"][0], f["id"]
        assert len(f["trainer"]) == (1 if f["sources"] else 0), f["id"]
        for name in f["sources"]:
            assert findings.provenance([os.path.join(ROOT, "results", name)], f["hardware"]) == \
                (f["machines"], f["trainer"])


def test_every_per_seed_value_comes_from_a_results_file(tmp_path, monkeypatch):
    # recording every finding again from results/ (python report.py --record, no training) gives the ledger
    monkeypatch.setattr(findings, "FILE", str(tmp_path / "findings.json"))
    with open(os.path.join(ROOT, "results", "findings.json")) as f:
        committed = json.load(f)
    (tmp_path / "findings.json").write_text(json.dumps(committed))
    report.record()
    assert_same_ledger(json.loads((tmp_path / "findings.json").read_text()), committed)


def assert_same_ledger(got, want, where="findings"):
    """Equal structure, strings and verdicts; floats equal to 1e-9 relative: a numpy fit (np.polyfit, a mean)
    sums in another order under another CPU kernel, which moves the last digits only."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{where}: keys {sorted(set(got) ^ set(want))}"
        for k in want:
            assert_same_ledger(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: length"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_ledger(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(got, bool):
        assert isinstance(got, (int, float)) and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12), \
            f"{where}: {got!r} vs {want!r}"
    else:
        assert got == want, f"{where}: {got!r} vs {want!r}"


def test_the_readme_shows_what_results_hold():
    # every generated block of the README (the findings ledger and each experiment's table) is what report.py
    # builds from results/ now
    shown = {}  # the README's blocks and experiments/README.md's (the wind tunnel's own document), each in one
    for doc in report.DOCS:
        found = report.blocks_in(open(doc).read())
        assert not set(found) & set(shown), f"blocks {set(found) & set(shown)} in two documents"
        shown.update(found)
    blocks = report.blocks()
    assert set(shown) == set(blocks), f"README lacks the blocks {set(blocks) - set(shown)}"
    for name, fn in blocks.items():
        assert shown[name] == fn().strip(), f"README block {name} is stale: run python report.py"
    for f in findings.load().values():  # every finding's row names both arms, the margin and the verdict
        row = next(line for line in shown["findings"].splitlines() if f"| {findings.cell(f['claim'])} |" in line)
        assert f"| {findings.cell(f['a']['name'])} | {findings.cell(f['b']['name'])} |" in row
        assert f"**{f['verdict']}**" in row
        assert f", {f['delta']:g} |" in row
        # the explanation is its experiment's EXPLAIN, the one place it is written (python report.py --explain); a
        # finding a rerun turned "not reproduced" without one is reported by report.py, not failed here: the tests
        # check the ledger's structure and rule, never which verdict came out
        assert f["explanation"] == report.explanations().get(f["id"], ""), f"{f['id']}: stale explanation"


def test_report_help_and_a_truncated_results_file(tmp_path, capsys):
    docs = {doc: open(doc).read() for doc in report.DOCS}
    with pytest.raises(SystemExit) as e:
        report.main(["--help"])
    assert e.value.code == 0 and "--rerun" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        report.main(["--rerum"])  # a mistyped flag: usage, not a regenerated README
    assert e.value.code == 2
    assert {doc: open(doc).read() for doc in report.DOCS} == docs
    bad = tmp_path / "wsd_quick.json"
    bad.write_text('{"WSD exp 10.0%": {"config": {')  # cut off mid-write
    with pytest.raises(runner.ConfigError, match=r"wsd_quick.json is not valid JSON .*: restore it"):
        runner.sweep(str(bad), {"a": {}})


def test_a_rerun_elsewhere_is_compared_verdict_by_verdict(tmp_path, capsys, monkeypatch):
    # python report.py --compare OTHER: how many verdicts a full rerun on a second machine shares with ours, written
    # to results/rerun_comparison.json, from which experiments/README.md's paragraph is generated
    mine = findings.load()
    counted = [k for k, f in mine.items() if not f.get("sanity")]
    theirs = json.loads(json.dumps(mine))
    flipped = counted[0]
    theirs[flipped]["verdict"] = next(v for v in findings.VERDICTS if v != mine[flipped]["verdict"])
    theirs[flipped]["diff"]["mean"] = theirs[flipped]["diff"]["ci90"][1] + 1  # outside our interval
    for f in theirs.values():
        f["machines"] = ["1-core CPU (x86_64, AVX2)"]
    del theirs[counted[1]]  # a finding the other ledger lacks is not counted
    other = tmp_path / "findings.json"
    other.write_text(json.dumps(theirs))
    monkeypatch.setattr(report, "COMPARISON", str(tmp_path / "rerun_comparison.json"))
    with pytest.raises(SystemExit) as e:  # a ledger without the log of the fresh rerun that wrote it
        report.main(["--compare", str(other)])
    assert e.value.code == 2 and "has no log of a fresh rerun beside it" in capsys.readouterr().err
    commands = sorted({f["command"] for f in mine.values()})
    log = dict(started="2026-12-02 01:00:00", fresh=True, jobs=2, elapsed_s=14400, total_s=25000,
               experiments={c: dict(wall_s=60, returncode=0) for c in commands})
    (tmp_path / "rerun.json").write_text(json.dumps(log))  # the other rerun's log: every command finished
    same, moved, not_rerun = report.compare(str(other))
    assert len(same) == len(counted) - 2 and not_rerun == []
    assert moved == {flipped: (mine[flipped]["verdict"], theirs[flipped]["verdict"])}
    report.print_comparison(str(other))
    assert f"{len(counted) - 2} of {len(counted) - 1} verdicts the same" in capsys.readouterr().out
    saved = json.loads((tmp_path / "rerun_comparison.json").read_text())
    assert (saved["same"], saved["of"], saved["moved"]) == (len(counted) - 2, len(counted) - 1, [flipped])
    assert saved["findings"][flipped]["there"]["per_seed"] == theirs[flipped]["diff"]["per_seed"]
    paragraph = report.rerun_comparison_table()
    assert paragraph.startswith(f"**{len(counted) - 2} of {len(counted) - 1} verdicts the same** after a full rerun "
                                f"on 1-core CPU (x86_64, AVX2) (`python report.py --rerun --fresh --jobs 2`: 4.0 h")
    assert f"inside our 90% interval for {len(counted) - 2} of {len(counted) - 1} findings" in paragraph
    assert f"| {flipped} | {mine[flipped]['verdict']} | {theirs[flipped]['verdict']} |" in paragraph
    # a rerun still under way: the findings of a command it has not finished are the clone's copies of ours, not
    # agreement, so they are left out of the count
    waiting = mine[counted[2]]["command"]
    log["experiments"][waiting]["returncode"] = -2
    del log["total_s"]
    (tmp_path / "rerun.json").write_text(json.dumps(log))
    same, moved, not_rerun = report.compare(str(other))
    assert not_rerun and not_rerun == [k for k in counted if k in theirs and mine[k]["command"] == waiting]
    assert not set(not_rerun) & (set(same) | set(moved))
    report.print_comparison(str(other))
    assert f"not compared: {len(not_rerun)} findings" in capsys.readouterr().out
    paragraph = report.rerun_comparison_table()
    assert "verdicts the same** so far, over the experiments that a rerun on" in paragraph
    assert f"{len(not_rerun)} findings wait for `{waiting}`" in paragraph
    with pytest.raises(SystemExit) as e:
        report.main(["--compare", str(tmp_path / "missing.json")])
    assert e.value.code == 2 and "not found: give the results/findings.json" in capsys.readouterr().err


def brute_p(d, test, delta):
    """The sign-flip p-value written again: the share of the 2^n sign patterns whose mean is at most the observed."""
    def p(x):
        pats = [sum(e * v for e, v in zip(signs, x)) for signs in itertools.product((1, -1), repeat=len(x))]
        return sum(m <= sum(x) + 1e-12 for m in pats) / len(pats)
    if test == "lower":
        return p(d)
    if test == "no_worse":
        return p([v - delta for v in d])
    return max(p([v - delta for v in d]), p([-v - delta for v in d]))


def test_the_sign_flip_p_value_and_holm():
    # 8 seeds all below 0: the observed sum is the smallest of 2^8 patterns (ties only with itself)
    assert findings.sign_flip_p([-0.01, -0.02, -0.03, -0.04, -0.05, -0.06, -0.07, -0.08], "lower", 0.01) == 1 / 256
    # all above 0: every pattern is at most the observed sum
    assert findings.sign_flip_p([0.01, 0.02, 0.03], "lower", 0.01) == 1.0
    # no_worse shifts by delta: A worse by 0.002 on every seed is well under delta = 0.01
    assert findings.sign_flip_p([0.002] * 5, "no_worse", 0.01) == 1 / 32
    # matches: both one-sided tests must pass; a constant offset of 0.02 fails the upper one
    assert findings.sign_flip_p([0.02] * 5, "matches", 0.01) == 1.0
    with pytest.raises(ValueError, match="21 seeds"):
        findings.sign_flip_p([0.0] * 21, "lower", 0.01)
    # Holm on a textbook family: p sorted 0.01, 0.03, 0.04 -> 3 x 0.01, max(0.03, 2 x 0.03), max(0.06, 0.04)
    assert findings.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert findings.holm([]) == []


def test_a_finding_keeps_its_earlier_verdicts(tmp_path, monkeypatch):
    monkeypatch.setattr(findings, "FILE", str(tmp_path / "findings.json"))
    kw = dict(fid="x", section="§4.3", claim="A below B", paper="p", test="lower", delta=0.01, why="w", a="A", b="B",
              command="c", hardware="h", wall_s=1.0, sources=())
    findings.record(**kw, a_per_seed=[1.0, 1.1, 1.2, 1.3], b_per_seed=[1.1, 1.2, 1.3, 1.4])
    findings.record(**kw, a_per_seed=[1.0, 1.1, 1.2, 1.3], b_per_seed=[1.1, 1.2, 1.3, 1.4])  # same: no new entry
    assert findings.load()["x"]["history"] == []
    f = findings.record(**kw, a_per_seed=[1.0, 1.1, 1.2, 1.3], b_per_seed=[0.9, 1.0, 1.1, 1.2])  # now A is worse
    assert f["verdict"] == "not reproduced" and [h["verdict"] for h in f["history"]] == ["reproduced"]
    assert findings.group(f) == "exploratory" and "not registered" in findings.not_counted(f)


def test_a_verdict_held_back_by_holm_recorded_again_adds_no_history(tmp_path, monkeypatch):
    # an interval below 0 (reproduced before Holm) in a family of two whose other p is 1: its adjusted p is 2 x 1/16
    # >= 0.05, so it is inconclusive; recording it again must not file the same verdict as an earlier one
    monkeypatch.setattr(findings, "FILE", str(tmp_path / "findings.json"))
    monkeypatch.setattr(findings, "primary", lambda f: f.get("table") == "paper")
    kw = dict(section="§5", claim="A below B", paper="p", test="lower", delta=0.05, why="w", a="A", b="B",
              command="c", hardware="h", wall_s=1.0, sources=(), registered=dict(table="paper"))
    findings.record(fid="other", **kw, a_per_seed=[1.0] * 4, b_per_seed=[0.0] * 4)
    for _ in range(2):
        f = findings.record(fid="x", **kw, a_per_seed=[1.0, 1.1, 1.2, 1.3], b_per_seed=[1.1, 1.3, 1.35, 1.5])
    assert f["verdict"] == "inconclusive" and f["p_holm"] == pytest.approx(0.125) and f["history"] == []
    assert findings.load()["x"]["history"] == []


def test_the_registry_reads_back_from_any_commit_without_running_code():
    source = open(os.path.join(ROOT, claims.FILE)).read()
    assert claims.literal(source, "CLAIMS") == claims.CLAIMS and claims.literal(source, "DESIGNS") == claims.DESIGNS
    for cid, c in claims.CLAIMS.items():
        assert c["table"] in claims.TABLES and c["test"] in findings.TESTS and c["delta"] > 0, cid
        assert c["design"] in claims.DESIGNS, cid
    c = next(iter(claims.CLAIMS.values()))
    changed = {k: dict(v, seeds=(1, 2, 3)) for k, v in claims.DESIGNS.items()}
    assert claims.hash_of(c, changed) != claims.hash_of(c)  # a design changed is a claim changed
    with pytest.raises(ValueError):  # a registry that calls code is refused, not run
        claims.literal("CLAIMS = dict(a=__import__('os').getcwd())", "CLAIMS")


def git(repo, *args):
    out = subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_claim_is_registered_only_when_committed_before_its_runs(tmp_path):
    # a real repository: a run before the registry's commit, one after it, and a claim edited after its runs
    repo = tmp_path / "repo"
    (repo / "experiments").mkdir(parents=True)
    git(repo, "init", "-q")
    (repo / "README").write_text("x")
    git(repo, "add", "README")
    git(repo, "commit", "-qm", "before")
    before = git(repo, "rev-parse", "HEAD")
    shutil.copy(os.path.join(ROOT, claims.FILE), repo / claims.FILE)
    cid = next(iter(claims.CLAIMS))
    h = claims.current_hash(cid)
    assert claims.head(str(repo)).endswith("+")  # an uncommitted registry: runs under it are post hoc
    assert claims.status(cid, h, [claims.head(str(repo))], str(repo))[0] == "post hoc"
    git(repo, "add", claims.FILE)
    git(repo, "commit", "-qm", "register")
    registered = git(repo, "rev-parse", "HEAD")
    (repo / "README").write_text("y")
    git(repo, "commit", "-qam", "a run")
    after = claims.head(str(repo))
    assert claims.registered_at(cid, h, str(repo)) == registered
    assert claims.status(cid, h, [registered, after], str(repo)) == ("registered", f"registered in {registered[:10]}")
    assert claims.status(cid, h, [before, after], str(repo))[0] == "post hoc"
    assert claims.status(cid, h, [after], str(repo), current="0" * 16) == \
        ("post hoc", "the claim changed after its runs")


def test_every_registered_finding_holds_its_claim_as_registered_now():
    for f in findings.load().values():
        if "claim_id" in f:
            assert f["claim_hash"] == claims.current_hash(f["claim_id"]), f"{f['id']}: its claim changed after its runs"
            if claims.history_readable():  # (a shallow clone cannot see when the claim was committed)
                assert (f["status"], f["status_why"]) == claims.status(f["claim_id"], f["claim_hash"],
                                                                       f["run_commits"])

"""The wind tunnel's ledger: verdicts need a margin of twice the seed-to-seed noise, and the README's findings
table is results/findings.json's."""
import os

import pytest

import report
from conftest import ROOT
from experiments import findings


@pytest.mark.parametrize("diffs, claim, verdict", [
    ([-0.030, -0.020, -0.025], "lower", "reproduced"),       # mean -0.025, noise 0.005: a margin of 5 noises
    ([-0.012, 0.004, -0.007], "lower", "within noise"),      # mean -0.005, noise 0.0082
    ([0.030, 0.020, 0.025], "lower", "not reproduced"),
    ([0.010, 0.000, 0.020], "no gain", "reproduced"),
    ([-0.030, -0.020, -0.025], "no gain", "not reproduced"),
])
def test_verdicts_need_twice_the_noise(diffs, claim, verdict):
    mean, noise, v = findings.verdict(diffs, claim)
    assert v == verdict and mean == pytest.approx(sum(diffs) / 3)


def test_a_verdict_needs_three_seeds():
    with pytest.raises(ValueError, match="2 seeds: a verdict needs at least 3"):
        findings.verdict([0.1, 0.2], "lower")


def test_the_readme_shows_what_results_hold():
    # every generated block of the README (the findings ledger and each experiment's table) is what report.py
    # builds from results/ now
    readme = open(os.path.join(ROOT, "README.md")).read()
    shown = report.blocks_in(readme)
    blocks = report.blocks()
    assert set(shown) == set(blocks), f"README lacks the blocks {set(blocks) - set(shown)}"
    for name, fn in blocks.items():
        assert shown[name] == fn().strip(), f"README block {name} is stale: run python report.py"
    for f in findings.load().values():  # every recorded finding: >= 3 seeds, a command, hardware and time
        assert f["ours"]["seeds"] >= 3 and f["command"] and f["hardware"] and f["wall_s"] > 0
        assert f["verdict"] == findings.verdict(f["ours"]["diff_per_seed"], f["test"])[2]
        assert f["verdict"] != "not reproduced" or f["explanation"], f"{f['id']}: not reproduced, unexplained"
        # the explanation is its experiment's EXPLAIN, the one place it is written (python report.py --explain)
        assert f["explanation"] == report.explanations().get(f["id"], ""), f"{f['id']}: stale explanation"

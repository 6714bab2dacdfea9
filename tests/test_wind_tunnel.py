"""The wind tunnel's instruments (issue: seeds, controls, the §4.4 analysis): the decay statistics, several
held-out sets, epochs, seeds of a sweep, finished runs whose checkpoints later runs need, the noise-aware minimum,
and the one command that reruns every finding."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tiktoken
import torch

import batchsize
import corpus
import report
import tokenizer
import train
import wsd
from conftest import ROOT, TINY, cfg
from experiments import batchsize as batchsize_experiment
from experiments import findings, longctx, moe, mup, runner, scaling_law, two_stage
from experiments import wsd as wsd_experiment
from model import MiniCPM, model_config


def test_decay_stats_are_the_update_and_the_gradient_cosine(tmp_path):
    # an independent computation: a copy of the model stepped by hand, gradients and weights compared directly
    c = train.validate_config({**train.default_config(), **TINY, "out_dir": ""})
    torch.manual_seed(0)
    model = MiniCPM(model_config(c))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    stats = wsd.DecayStats(model)
    x = torch.randint(0, 256, (4, 16))
    grads, got = [], []
    for _ in range(3):
        model(x, x)[1].backward()
        mats = [p for p in model.parameters() if p.dim() >= 2]
        grads.append(torch.cat([p.grad.flatten() for p in mats]))
        before = [p.detach().clone() for p in mats]
        cos = stats.before_step()
        opt.step()
        got.append((cos, stats.after_step()))
        assert got[-1][1] == max((p.detach() - b).abs().max().item() for p, b in zip(mats, before))
        opt.zero_grad()
    assert got[0][0] is None
    for i in (1, 2):
        g0, g1 = grads[i - 1].double(), grads[i].double()
        assert got[i][0] == pytest.approx((g0 @ g1 / g0.norm() / g1.norm()).item(), abs=1e-6)


def test_update_stats_only_read(tmp_path):
    plain = train.train(cfg(tmp_path / "a"), quiet=True)
    seen = train.train(cfg(tmp_path / "b", update_stats=True), quiet=True)
    assert seen["train_loss"] == plain["train_loss"] and seen["final_val_loss"] == plain["final_val_loss"]
    st = seen["decay_stats"]  # [step, lr, grad norm, cosine, max |update|, loss] per step
    assert [r[0] for r in st] == list(range(1, 13)) and [r[5] for r in st] == plain["train_loss"]
    assert [r[1] for r in st] == [wsd.lr_at(train.validate_config({**train.default_config(), **cfg(tmp_path)}), s)
                                  for s in range(1, 13)]
    assert all(-1 <= r[3] <= 1 for r in st[1:]) and all(r[4] > 0 for r in st)  # every step moves the weights
    windows = wsd_experiment.decay_windows(st, 12, 3)  # the last 3 stable steps (7-9) and the 3 decay steps (10-12)
    assert windows[1]["grad_norm"] == pytest.approx(np.mean([r[2] for r in st[9:12]]))
    assert windows[0]["loss_slope"] == pytest.approx(np.polyfit([7, 8, 9], [r[5] for r in st[6:9]], 1)[0])


def test_held_out_sets_and_epochs(tmp_path):
    res = train.train(cfg(tmp_path, eval_data="embedded"), quiet=True)
    # the same data, batches and function as the run's own validation: the same number
    assert res["val_bpb_by_set"] == {"embedded": res["final_val_bpb"]}
    meta = corpus.TokenData("embedded").meta
    assert res["epochs"] == round(12 * 8 * 32 / meta["train_tokens"], 3)
    rows = tmp_path / "sft.jsonl"
    rows.write_text(json.dumps(dict(prompt="a", response="b")) + "\n")
    with pytest.raises(train.ConfigError, match="eval_data .*under the run's tokenizer"):
        train.train(cfg(tmp_path / "x", eval_data=str(rows)), quiet=True)


def test_epochs_count_only_rows_read_from_the_corpus(tmp_path):
    # passkey rows (longctx.py) are generated: a run of half passkey rows goes over its corpus half as often
    # (longctx's quick runs were once reported at 10.25 epochs of the embedded docs for ~1 epoch of its text)
    res = train.train(cfg(tmp_path, seq_len=96, max_steps=6, eval_interval=6, passkey_ratio=0.5), quiet=True)
    meta = corpus.TokenData("embedded").meta
    assert res["epochs"] == round(6 * 8 * 96 * 0.5 / meta["train_tokens"], 3)
    config = train.validate_config({**train.default_config(), **cfg(tmp_path, seq_len=96, passkey_ratio=0.5)})
    run = dict(config=config, metrics=res)
    assert report.epochs(run) == res["epochs"]


def test_python_source_corpus_is_the_standard_library():
    docs = corpus.python_source_documents()
    assert len(docs) > 500 and sum(map(len, docs)) > 5_000_000  # Python 3.11: 1,790 files, 31.5 MB
    assert "python_source" in corpus.BUILTIN and "embedded" in corpus.BUILTIN


def test_seeds_of_a_sweep_and_their_wall_time(tmp_path):
    runs = runner.seeded(3, lambda s: {"a": dict(seed=s, lr=1.0), "b": dict(seed=s)})
    assert runs == {"a": dict(seed=1, lr=1.0), "b": dict(seed=1), "a seed2": dict(seed=2, lr=1.0),
                    "b seed2": dict(seed=2), "a seed3": dict(seed=3, lr=1.0), "b seed3": dict(seed=3)}
    res = {k: dict(final_val_loss=i) for i, k in enumerate(runs)}
    assert runner.per_seed(res, "a", 3) == [0, 2, 4]
    f = tmp_path / "r.json"
    f.write_text(json.dumps({k: dict(seconds=1.5) for k in runs}))
    assert runner.wall_s(str(f), ["a"]) == 4.5


def test_a_finished_run_whose_checkpoints_are_gone_is_trained_again(tmp_path, monkeypatch):
    # a stable run that later runs branch from: in a fresh clone its out_dir is missing, so it runs again
    c = cfg(tmp_path / "stable", max_steps=6, eval_interval=6)
    file = str(tmp_path / "r.json")
    calls, real = [], train.train
    monkeypatch.setattr(train, "train", lambda c_, quiet=False, **kw: calls.append(1) or real(c_, quiet, **kw))
    first = runner.sweep(file, {"stable": c})["stable"]
    assert runner.sweep(file, {"stable": c})["stable"]["train_loss"] == first["train_loss"] and calls == [1]
    for f in os.listdir(tmp_path / "stable"):  # out_dir emptied: trained again, to the same numbers
        os.remove(tmp_path / "stable" / f)
    assert runner.sweep(file, {"stable": c})["stable"]["train_loss"] == first["train_loss"] and calls == [1, 1]
    assert os.path.isfile(tmp_path / "stable" / "ckpt.pt")


def test_an_lr_grid_extends_past_an_edge_optimum_until_it_brackets_it(tmp_path, monkeypatch):
    # a loss whose optimum lies two octaves below the first grid: the grid grows downward one octave a pass and
    # stops once the best lr has a neighbour on each side; a rerun trains nothing and keeps the extension
    best_at = {"a": 0.0005, "b": 0.004}
    trained = []

    def fake_train(c, quiet=False, progress=None):
        trained.append((c["seed"], c["lr"]))
        loss = 2 + (np.log2(c["lr"]) - np.log2(best_at["a" if c["seed"] == 1 else "b"])) ** 2
        return dict(final_val_loss=loss, stopped=False, model=None)
    monkeypatch.setattr(train, "train", fake_train)
    file = str(tmp_path / "grid.json")
    arms = {"a": 1, "b": 2}

    def run_of(seed, lr):
        return cfg(tmp_path / f"x{seed}", out_dir="", seed=seed, lr=lr)
    assert runner.tune_lr(file, arms, run_of, (0.002, 0.004, 0.008)) == best_at
    assert sorted(lr for s, lr in trained if s == 1) == [0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008]
    assert sorted(lr for s, lr in trained if s == 2) == [0.002, 0.004, 0.008]  # inside at once: no extension
    n = len(trained)
    assert runner.tune_lr(file, arms, run_of, (0.002, 0.004, 0.008)) == best_at and len(trained) == n


def test_an_lr_grid_scored_by_its_own_measure_stops_at_its_bound(tmp_path, monkeypatch):
    # a score that always prefers the lowest lr (DPO's exact match when it barely moves the model): the grid grows
    # down to its lower bound and no further, and the best lr is the bound
    trained = []

    def fake_train(c, quiet=False, progress=None):
        trained.append(c["lr"])
        return dict(final_val_loss=-c["lr"], stopped=False, model=None)  # (the default measure would go up)
    monkeypatch.setattr(train, "train", fake_train)

    def run_of(seed, lr):
        return cfg(tmp_path / "x", out_dir="", seed=seed, lr=lr)
    best = runner.tune_lr(str(tmp_path / "grid.json"), {"a": 1}, run_of, (0.002, 0.004, 0.008),
                          score=lambda name, metrics: -metrics["final_val_loss"], bounds=(0.001, 1.0))
    assert best == {"a": 0.001} and sorted(trained) == [0.001, 0.002, 0.004, 0.008]


def test_a_run_branched_off_a_retrained_run_is_retrained_too(tmp_path, monkeypatch):
    # a fresh clone lacks the stable run's out_dir: the stable run trains again on this machine, and its branch must
    # not stay the one computed elsewhere from the other training (issue: the branched-decays finding moved and
    # flipped when its dedicated runs and branches came from two machines)
    stable = cfg(tmp_path / "stable", max_steps=6, eval_interval=6, decay_steps=0, keep_ckpts=True, ckpt_interval=3)
    branch = cfg("", init_from=str(tmp_path / "stable" / "ckpt_000003.pt"), max_steps=5, decay_steps=2,
                 warmup_steps=0, eval_interval=5)
    other = cfg("", max_steps=4, eval_interval=4, warmup_steps=0, decay_steps=1)
    runs, file = {"stable": stable, "branch": branch, "other": other}, str(tmp_path / "r.json")
    calls, real = [], train.train
    monkeypatch.setattr(train, "train",
                        lambda c_, quiet=False, **kw: calls.append(c_["max_steps"]) or real(c_, quiet, **kw))
    runner.sweep(file, runs)
    runner.sweep(file, runs)
    assert calls == [6, 5, 4]  # the second sweep reused all three
    recorded = json.loads(open(file).read())
    assert recorded["branch"]["from_run"] == recorded["stable"]["run_id"] and recorded["stable"]["hardware"]
    for f in os.listdir(tmp_path / "stable"):
        os.remove(tmp_path / "stable" / f)
    before = json.loads(open(file).read())
    runner.sweep(file, runs)
    # the whole sweep again, the independent run too: a finding comparing the branch with it (the branched decays
    # against dedicated runs) never sets runs of this machine beside runs computed elsewhere
    assert calls == [6, 5, 4, 6, 5, 4]
    after = json.loads(open(file).read())
    assert all(after[k]["run_id"] > before[k]["run_id"] for k in runs)
    assert findings.provenance([file]) == ([runner.this_machine()], [train.TRAINER_VERSION])
    del after["other"]  # an interrupted sweep (a run not recorded yet) resumes: only the missing run trains
    open(file, "w").write(json.dumps(after))
    runner.sweep(file, runs)
    assert calls == [6, 5, 4, 6, 5, 4, 4]


def test_log2_vertex_is_the_parabola_through_the_minimum():
    xs = [1, 2, 4, 8]
    ys = [(math.log2(x) - 1.3) ** 2 for x in xs]  # an exact parabola in log2 x: the vertex is 2^1.3
    assert batchsize.log2_vertex(xs, ys) == pytest.approx(2 ** 1.3)
    assert batchsize.log2_vertex(xs, [0, 1, 2, 3]) == 1 and batchsize.log2_vertex(xs, [3, 2, 1, 0]) == 8


def test_an_experiment_not_run_yet_says_how_to_run_it_and_records_nothing(monkeypatch):
    called = []
    e = runner.Experiment(name="x", section="§1", rerun=("python -m experiments.x --seeds 8",),
                          tables={"x": lambda: called.append("table")}, record=lambda: called.append("record"),
                          summary="no_such_summary")
    monkeypatch.setattr(report, "registry", lambda: [e])
    assert report.blocks()["x"]() == "Not run yet: `python -m experiments.x --seeds 8 --record`."
    report.record()
    assert called == [] and not e.ran()


def test_one_command_reruns_every_finding():
    ids = {f["command"].split(" --seeds")[0] for f in findings.load().values()}
    rerun = {c.split(" --seeds")[0] for c in report.rerun_commands()}
    assert ids <= rerun, f"findings recorded by commands that --rerun does not run: {ids - rerun}"
    for c in report.rerun_commands():  # python -m experiments.NAME ...: a file of experiments/
        assert c.split()[1] == "-m" and os.path.isfile(os.path.join(ROOT, *c.split()[2].split(".")) + ".py")
    assert "python report.py --rerun" in open(os.path.join(ROOT, "README.md")).read()
    assert "python report.py --rerun" in open(os.path.join(ROOT, "experiments", "README.md")).read()


class _Captured(Exception):
    pass


def _capture_sweep(file, runs, desc="", fresh=False):
    raise _Captured(file, runs)


@pytest.mark.parametrize("name, call", [
    ("wsd", lambda out, d: wsd_experiment.experiment(out=out, data=d)),
    ("lr_transfer", lambda out, d: mup.lr_transfer(out=out, data=d)),
    ("batchsize", lambda out, d: batchsize_experiment.experiment(out=out, data=d)),
    ("scaling", lambda out, d: scaling_law.experiment(out=out, data=d)),
    ("moe", lambda out, d: moe.experiment(out=out, data=d)),
    ("longctx", lambda out, d: longctx.experiment(out=out, data=d)),
    ("align", lambda out, d: two_stage.experiment(out=out, data=d))])
def test_every_experiment_trains_on_the_corpus_given_with_data(tmp_path, monkeypatch, name, call):
    # the one-GPU settings run on a corpus the user prepares (python corpus.py --input ... --out DIR): every run of
    # the experiment reads it (SFT rows aside), and its results go to their own file beside the committed ones
    web = tmp_path / "web"
    corpus.prepare(str(web), corpus.embedded_documents()[:200])
    monkeypatch.setattr(runner, "sweep", _capture_sweep)
    tuned = []

    def tune_lr(file, arms, run_of, lrs, desc="", fresh=False):  # an lr grid (batch size, scaling law): its runs
        assert file == str(tmp_path / "results" / f"{name}_lr_web.json")  # read the corpus too
        assert all(run_of(arm, lrs[0])["data"] == str(web) for arm in arms.values())
        tuned.append(file)
        return {a: lrs[0] for a in arms}
    monkeypatch.setattr(runner, "tune_lr", tune_lr)
    with pytest.raises(_Captured) as got:
        call(str(tmp_path), str(web))
    file, runs = got.value.args
    assert file == str(tmp_path / "results" / f"{name}_web.json")
    assert bool(tuned) == (name in ("batchsize", "scaling"))
    pre = [c for c in runs.values() if not c.get("data", "").endswith(".jsonl")]
    assert pre and all(c["data"] == str(web) for c in pre)
    assert all(str(web) in c["decay_data"] for c in runs.values() if c.get("decay_data"))
    if name == "scaling":  # its held-out sets: the builtin byte-level ones and the corpus's own
        assert {c.get("eval_data") for c in runs.values()} == {None, f"python_source,embedded,{web}"}


def test_data_names_a_prepared_corpus_or_fails_in_one_line(tmp_path, monkeypatch):
    with pytest.raises(train.ConfigError, match=r"--data: .*meta.json not found: run `python corpus.py --input"):
        corpus.corpus_keys(str(tmp_path / "missing"))
    big = tiktoken.Encoding(name="big", pat_str=tokenizer._PAT, mergeable_ranks={bytes([i]): i for i in range(256)},
                            special_tokens={"<|endoftext|>": 1000})
    monkeypatch.setattr(corpus, "get_encoding", lambda name: big)
    monkeypatch.setattr(corpus, "known_tokenizers", lambda: ["bytes", "big"])
    corpus.prepare(str(tmp_path / "big"), ["some text"] * 50, tokenizer="big")
    # a larger vocabulary than the models' 320: the runs get a vocab_size that holds it, padded to 64
    assert corpus.corpus_keys(str(tmp_path / "big")) == dict(data=str(tmp_path / "big"), vocab_size=1024)
    with pytest.raises(train.ConfigError, match="tokenized with big, but the task sets are byte-tokenized"):
        two_stage.experiment(out=str(tmp_path), data=str(tmp_path / "big"))
    r = subprocess.run([sys.executable, "-m", "experiments.batchsize", "--data", str(tmp_path / "missing")], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--data: data=" in r.stderr
    # the controls on python_source take no --data: said, not silently ignored
    r = subprocess.run([sys.executable, "-m", "experiments.wsd", "--small_long", "--data", str(tmp_path / "big")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "--data applies to the schedule experiment" in r.stderr


def test_decay_length_control_runs_on_the_quick_setting(tmp_path, monkeypatch):
    # `python -m experiments.wsd --decay_length_at S` (a command of report.py --rerun): the quick model and corpus,
    # 10% and 20% exp decays over 3 seeds, recorded as a finding
    monkeypatch.setattr(findings, "FILE", str(tmp_path / "findings.json"))
    f = wsd_experiment.decay_length_at(20, out=str(tmp_path))
    saved = json.loads((tmp_path / "results/wsd_decay_length_S20_quick.json").read_text())
    assert sorted(saved) == sorted(f"WSD exp {p} seed{s}" for p in ("10.0%", "20.0%") for s in (1, 2, 3))
    model = wsd_experiment.setting(True)[0]
    for name, run in saved.items():
        assert {k: run["config"][k] for k in model} == model and run["config"]["data"] == "python_source"
        assert run["config"]["decay_steps"] == (2 if "10.0%" in name else 4) and run["metrics"]["step"] == 20
    assert f["id"] == "wsd_decay_10_percent_S20" and f["seeds"] == 3 and f["a"]["name"] == "WSD exp 10.0%"
    assert json.loads((tmp_path / "findings.json").read_text())["wsd_decay_10_percent_S20"] == f


def test_the_same_run_under_two_names_trains_once(tmp_path, monkeypatch):
    # muP's 2-layer depth arm at width 64 is the width sweep's 2-layer run at width 64 (35 runs trained twice):
    # a sweep trains one config once, records it under both names, and counts its time once
    calls, real = [], train.train
    monkeypatch.setattr(train, "train", lambda c_, quiet=False, **kw: calls.append(c_["lr"]) or real(c_, quiet, **kw))
    one = cfg("", max_steps=4, eval_interval=4, warmup_steps=0, decay_steps=1)
    runs, file = {"width": one, "depth": dict(one), "other": dict(one, lr=one["lr"] / 2)}, str(tmp_path / "r.json")
    res = runner.sweep(file, runs)
    assert calls == [one["lr"], one["lr"] / 2] and res["depth"] == res["width"]
    recorded = json.loads(open(file).read())
    assert recorded["depth"]["same_as"] == "width" and recorded["depth"]["run_id"] == recorded["width"]["run_id"]
    assert runner.wall_s(file) == recorded["width"]["seconds"] + recorded["other"]["seconds"]
    runner.sweep(file, runs)
    assert len(calls) == 2  # a rerun reuses both names


def test_a_sweep_shows_each_runs_steps_under_its_bar(tmp_path, capsys):
    """A sweep of long runs moved at all (issue: `experiments.wsd --data DIR` sat at 0/93 for hours): each run's
    steps show under the sweep's bar, labelled with the run's name, and nothing else of the run is printed."""
    runner.sweep(str(tmp_path / "r.json"), {"lr 0.01": cfg(tmp_path / "a", max_steps=5, eval_interval=5)})
    err = capsys.readouterr().err
    assert "lr 0.01:" in err and "/5 [" in err and "step 5: train" not in err

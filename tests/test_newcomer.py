"""A newcomer's first hour: every README command does what it says, small runs just work, every entry point treats
bad input the same way (one line, exit 2), exports can be sampled, and the README's numbers are today's."""
import json
import math
import os
import re

import pytest
import torch

import checkpoint
import corpus
import tokenizer
import dpo
import model as M
import plots
import sample
import tasks
import train
from experiments import runner
from conftest import ROOT, cfg, dpo_run, rows


@pytest.fixture
def cli(capsys):
    """cli(main, argv, *needles) -> the one `error: ...` line of an entry point run in this process (exit 2)."""
    def run(main, argv, *needles):
        with pytest.raises(SystemExit) as e:
            main([str(a) for a in argv])
        lines = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and lines[-1].startswith("error: ") and not any("Traceback" in x for x in lines)
        for n in needles:
            assert n in lines[-1], lines[-1]
        return lines[-1]
    return run


# ------------------------------------------------------------------------------------------ small runs, stages


@pytest.mark.parametrize("argv, W, decay", [(["--max_steps=10"], 0, 1), (["--preset=wt-9m", "--max_steps=5"], 0, 1),
                                            (["--max_steps=100"], 5, 10), ([], 30, 60),
                                            ([os.path.join(ROOT, "config", "wt_9m.py"), "--max_steps=20"], 1, 2),
                                            (["--max_steps=10", "--schedule=cosine"], 0, 0)])
def test_small_runs_get_a_schedule_that_fits(argv, W, decay):
    c = train.get_config(argv)
    assert (c["warmup_steps"], c["decay_steps"]) == (W, decay)
    with pytest.raises(train.ConfigError, match=r"decay_steps=60 must be within \[0, max_steps=10\]"):
        train.get_config(["--max_steps=10", "--decay_steps=60"])  # an explicit value that does not fit: an error


def test_a_continuation_says_what_it_trains_and_never_trains_nothing(tmp_path, capsys):
    base = dict(max_steps=8, decay_steps=2, warmup_steps=0)
    train.train(cfg(tmp_path / "out", **base), quiet=True)
    data = tasks.write_task_data(str(tmp_path / "tasks"), 100, 10)
    sft = cfg(tmp_path / "sft", init_from=str(tmp_path / "out"), data=data["sft_train"], decay_steps=0, lr=1e-3,
              seq_len=64, max_steps=8)  # the old README's SFT command: max_steps = the source's step
    with pytest.raises(train.ConfigError, match=r"is at step 8, and max_steps=8 counts from step 0 of the first "
                                                r"stage: nothing to train; set --max_steps=8 \+ the steps"):
        train.train(sft)
    assert not (tmp_path / "sft" / "metrics.jsonl").exists()
    res = train.train({**sft, "max_steps": 12})
    assert "this stage trains steps 9-12 (4 steps)" in capsys.readouterr().out
    assert res["step"] == 12 and checkpoint.load_checkpoint(str(tmp_path / "sft" / "ckpt.pt"))["step"] == 12
    with pytest.raises(train.ConfigError, match="finished at step 12 = max_steps: nothing to resume"):
        train.train({**sft, "max_steps": 12, "resume": True}, quiet=True)
    # the README's next command, DPO from the SFT run, works
    d = dpo_run(dict(init_from=str(tmp_path / "sft"), data=data["pref_train"], out_dir=str(tmp_path / "dpo"),
                     max_steps=2, batch_size=4, device="cpu"))
    assert len(d["rows"]) == 2


def test_a_fresh_run_refuses_an_out_dir_holding_a_run(tmp_path, monkeypatch):
    c = cfg(tmp_path, max_steps=4, decay_steps=0, warmup_steps=0)
    first = train.train(c, quiet=True)
    before = (tmp_path / "ckpt.pt").read_bytes()
    with pytest.raises(train.ConfigError, match=r"holds a run \(ckpt.pt\): continue it with "
                                                r"--resume=True, or start over with --overwrite=True"):
        train.train({**c, "lr": 0.02}, quiet=True)
    assert (tmp_path / "ckpt.pt").read_bytes() == before and len(rows(tmp_path)) == len(first["train_loss"]) + 1
    again = train.train({**c, "overwrite": True}, quiet=True)
    assert again["train_loss"] == first["train_loss"]
    # sweeps redo what they must without asking; a finished run is reused unless fresh=True (--fresh)
    res = runner.sweep(str(tmp_path / "r.json"), {"a": c})
    assert res["a"]["train_loss"] == first["train_loss"]
    trained, real = [], train.train
    monkeypatch.setattr(train, "train", lambda cfg_, quiet=False, **kw: trained.append(1) or real(cfg_, quiet, **kw))
    runner.sweep(str(tmp_path / "r.json"), {"a": c})
    assert trained == []
    assert runner.sweep(str(tmp_path / "r.json"), {"a": c}, fresh=True)["a"]["train_loss"] == first["train_loss"]
    assert trained == [1]


# ------------------------------------------------------------------------------------------ what every file says


def test_help_lists_every_key_with_its_comment(capsys):
    train.main(["--help"])
    out = capsys.readouterr().out
    for k in train.CONFIG_KEYS:
        assert f"--{k}=" in out, k
    assert re.search(r"--lr=0.01 +the base lr eta; hidden matrices get lr / m", out)
    assert re.search(r"--init_from=\"\" +start from another run's checkpoint .* how WSD branches a decay off a "
                     r"stable run \(paper §4.3\)", out)  # a comment continued on the next line, joined
    assert re.search(r"--scale_emb=12.0 +paper §3.1 / official config: embedding output multiplier", out)
    assert "--data=\"embedded\"" in out and "\n  --data" in out  # (section headers are not glued to comments)


def test_model_py_and_plots_py_do_something(tmp_path, capsys):
    M.main()
    out = capsys.readouterr().out
    assert re.search(r"minicpm-1.2b +1536 +52 +24 +8 +3840 +73440 +1,247,442,432", out)
    train.train(cfg(tmp_path, max_steps=4, decay_steps=0, warmup_steps=0), quiet=True)
    os.remove(tmp_path / "loss.png")
    plots.main([str(tmp_path)])
    assert (tmp_path / "loss.png").stat().st_size > 1000


# ------------------------------------------------------------------------------------------ bad input, one way


def test_every_entry_point_handles_bad_input_the_same_way(tmp_path, cli, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # (what a CPU machine says)
    need = "device='cuda' but CUDA is not available: use --device=cpu"
    cli(sample.main, ["--device=cuda", f"--out_dir={tmp_path}"], need)
    cli(dpo.main, ["--device=cuda", "--init_from=x", "--data=y", f"--out_dir={tmp_path / 'dpo'}"], need)
    assert not (tmp_path / "dpo").exists()  # (refused before its out_dir is made)
    cli(train.main, ["--device=cuda", "--out_dir="], need)
    cli(dpo.main, ["--init_from=x", "--data=y", "--max_steps=5", "--warmup_steps=10", f"--out_dir={tmp_path / 'd'}"],
        "schedule: W=10 > T=4")
    cli(sample.main, ["--out_dir=out-typo"], "out-typo does not exist")
    (tmp_path / "empty.txt").write_text("\n")
    cli(corpus.main, ["--input", tmp_path / "empty.txt", "--out", tmp_path / "data"], "the documents are empty")
    assert not (tmp_path / "data" / "meta.json").exists()


def test_the_dpo_reference_pass_shows_progress(tmp_path, capsys):
    data = tasks.write_task_data(str(tmp_path / "tasks"), 80, 10)
    train.train(cfg(tmp_path / "sft", data=data["sft_train"], seq_len=64, max_steps=2, decay_steps=0,
                    warmup_steps=0), quiet=True)
    dpo_run(dict(init_from=str(tmp_path / "sft"), data=data["pref_train"], out_dir=str(tmp_path / "d"),
                 max_steps=1, batch_size=4, device="cpu"), quiet=False)
    assert "DPO reference log-probs" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ right numbers


def test_val_bpb_on_sft_data_counts_response_bytes(tmp_path):
    data = tasks.write_task_data(str(tmp_path / "tasks"), 100, 10)
    assert corpus.SFTData(data["sft_train"]).meta["bytes_per_token"] == 1.0  # byte tokenizer: 1 byte per token
    res = train.train(cfg(tmp_path / "s", data=data["sft_train"], seq_len=64, max_steps=2, decay_steps=0,
                          warmup_steps=0, eval_interval=2), quiet=True)
    assert res["final_val_bpb"] == pytest.approx(res["final_val_loss"] / math.log(2), rel=1e-9)


def test_an_export_carries_its_tokenizer_and_samples(tmp_path, capsys):
    pytest.importorskip("tokenizers", reason="optional: reads tokenizer.json")
    train.train(cfg(tmp_path / "run", max_steps=2, decay_steps=0, warmup_steps=0), quiet=True)
    train.main(["export", str(tmp_path / "run"), str(tmp_path / "exp")])
    assert sorted(os.listdir(tmp_path / "exp")) == ["config.json", "model.safetensors", "tokenizer.json",
                                                    "tokenizer_config.json"]
    model, encode, decode, eos = sample.load(model_dir=str(tmp_path / "exp"))
    enc = tokenizer.get_encoding("bytes")
    text = "héllo — the <b>end</b>\n\t!"
    assert encode(text) == enc.encode_ordinary(text) and decode(enc.encode_ordinary(text)) == text
    assert eos == enc.eot_token
    capsys.readouterr()
    sample.main([f"--model_dir={tmp_path / 'exp'}", "--max_new_tokens=5", "--num_samples=1"])
    assert capsys.readouterr().out.startswith("The ")


def test_the_readme_quotes_todays_numbers():
    """The quick start's numbers are those of results/quickstart.json (python train.py, recorded with its
    hardware and time); config/wt_9m.py's CPU time is that of results/wt_9m_cpu_speed.json."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    q = json.load(open(os.path.join(ROOT, "results", "quickstart.json")))
    assert q["command"] == "python train.py" and q["step"] == 600
    quick = readme[readme.index("## Quick start"):readme.index("## The paper in code")]
    for number in (f"{q['first_train_loss']:.1f}", f"{q['final_train_loss']:.2f}", f"{q['final_val_loss']:.3f}",
                   f"{q['final_val_bpb']:.2f}", f"{q['wall_s'] / 60:.1f} minutes", f"{q['tok_per_s'] / 1000:.1f}k"):
        assert number in quick, number
    assert q["sample"].strip().splitlines()[0] in quick
    for other in q["other_runs"]:  # a rerun: the same losses, its own speed
        assert other["final_val_loss"] == q["final_val_loss"] and f"{other['wall_s'] / 60:.1f} minutes" in quick
        assert f"{other['tok_per_s'] / 1000:.1f}k" in quick
    for other in q.get("other_machines", []):  # another CPU: another float order, a drift of a few hundredths
        assert f"{other['final_val_loss']:.3f}" in quick and f"{other['wall_s'] / 60:.1f} minutes" in quick
        assert abs(other["final_val_loss"] - q["final_val_loss"]) < 0.05
    d = json.load(open(os.path.join(ROOT, "results", "batch_split_drift.json")))  # (python bench.py --modes split)
    for x in (d["sft"]["first_step_max"], d["sft"]["later_steps_max"], d["text"]["later_steps_max"]):
        assert re.sub(r"e-0(\d)", r"e-\1", f"{x:.1e}") in open(os.path.join(ROOT, "docs", "training.md")).read()
    assert d["sft"]["first_step_max"] < 2e-6 and 10 * max(d[k]["later_steps_max"] for k in ("sft", "text")) < 2e-4
    s = json.load(open(os.path.join(ROOT, "results", "wt_9m_cpu_speed.json")))
    assert s["hardware"].startswith("2-core CPU") and s["tokens"] == 6 * 16384
    conf = open(os.path.join(ROOT, "config", "wt_9m.py")).read()
    hours = 3000 * 16384 / s["tok_per_s"] / 3600
    assert f"{s['tok_per_s']:,.0f} tokens/s" in conf and f"about {hours:.0f} hours for 3000 steps" in conf


def test_the_speedrun_time_the_readme_quotes_is_recorded():
    s = json.load(open(os.path.join(ROOT, "results", "speedrun_tiny.json")))
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert s["command"] == "bash speedrun.sh tiny" and f"in {s['command_wall_s'] / 60:.1f} minutes" in readme
    assert set(s["stages"]) == {"pretrain", "decay", "sft", "dpo"} and s["hardware"].startswith("2-core CPU")

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tiktoken
import torch

import checkpoint
import corpus
import tokenizer
import train
from conftest import ROOT, assert_same_losses, cfg, cli_args, losses, rows, run_cli

# ------------------------------------------------------------------------------------------ config


def test_config_errors_name_the_key():
    with pytest.raises(train.ConfigError, match="unknown config key 'lrr': did you mean 'lr'"):
        train.get_config(["--lrr=0.1"])
    with pytest.raises(train.ConfigError, match="batch_size='eight' has type str, expected int"):
        train.get_config(["--batch_size=eight"])
    with pytest.raises(train.ConfigError, match="hidden_size=64.5 has type float, expected int"):
        train.get_config(["--hidden_size=64.5"])
    with pytest.raises(train.ConfigError, match="num_attention_heads=3 does not divide hidden_size=128"):
        train.get_config(["--num_attention_heads=3"])
    with pytest.raises(train.ConfigError, match="W=700 > T=540"):
        train.get_config(["--warmup_steps=700", "--max_steps=600", "--decay_steps=60"])
    with pytest.raises(train.ConfigError, match="decay='step'"):
        train.get_config(["--decay=step"])
    c = train.get_config(["--lr=1", "--preset=wt-9m", "--compile=False"])
    assert c["lr"] == 1.0 and isinstance(c["lr"], float) and train.model_config(c).hidden_size == 256


def test_config_file_and_overrides(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import math\nlr = 3e-3\nhidden_size = 256\nnum_attention_heads = 4\nmax_steps = 100\n")
    c = train.get_config([str(f), "--max_steps=200"])
    assert c["lr"] == 3e-3 and c["max_steps"] == 200 and train.model_config(c).num_attention_heads == 4
    f.write_text("learning_rate = 1e-3\n")
    with pytest.raises(train.ConfigError, match="unknown config key 'learning_rate'"):
        train.get_config([str(f)])


def test_cli_error_is_one_line(tmp_path, capsys):
    r = run_cli(["train.py", "--lrr=0.1"])  # the command line itself, once: nothing else reaches stderr
    assert r.returncode == 2 and r.stderr.strip() == "error: unknown config key 'lrr': did you mean 'lr'?"
    with pytest.raises(SystemExit) as e:  # train.main in this process: the same path, without a 5 s start-up
        train.main([f"--out_dir={tmp_path}", "--resume=True"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: checkpoint") and "not found" in err
    assert len(err.splitlines()) == 1


# ------------------------------------------------------------------------------------------ data


def test_offline_default_data(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "DATA_DIR", str(tmp_path))
    d = corpus.TokenData("embedded")
    enc = d.encoding()
    assert isinstance(enc, tiktoken.Encoding) and enc.n_vocab == 259 and enc.eot_token == 256
    assert enc.decode(enc.encode("def f(x): return x ü")) == "def f(x): return x ü"
    assert d.meta["train_tokens"] > 300_000 and d.meta["val_tokens"] > 30_000
    first = hashlib.sha256(open(tmp_path / "embedded" / "val.bin", "rb").read()).hexdigest()
    corpus.prepare(str(tmp_path / "again"), corpus.embedded_documents())
    assert hashlib.sha256(open(tmp_path / "again" / "val.bin", "rb").read()).hexdigest() == first  # deterministic
    x, y = d.batch("train", 1, 5, 8, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])
    a, _ = d.batch("train", 1, 5, 8, 16, rows=slice(4, 8))
    assert torch.equal(a, x[4:])  # a process's rows are a slice of the global batch
    assert not torch.equal(d.batch("train", 1, 6, 8, 16)[0], x) and not torch.equal(d.batch("train", 2, 5, 8, 16)[0], x)


def test_prepare_local_files_and_uint32(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("hello world " * 50)
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "first doc"}) + "\n\n" + json.dumps({"text": "second"})
                                      + "\n")
    docs = corpus.read_documents([str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")])
    assert docs[1:] == ["first doc", "second"]
    meta = corpus.prepare(str(tmp_path / "small"), docs)
    assert meta["dtype"] == "uint16"
    d = corpus.TokenData(str(tmp_path / "small"))
    allt = np.concatenate([d.split["train"], d.split["val"]])
    assert d.encoding().decode(allt.tolist()).endswith("first doc<|endoftext|>second<|endoftext|>")
    big = tiktoken.Encoding(name="big", pat_str=tokenizer._PAT, mergeable_ranks={bytes([i]): i for i in range(256)},
                            special_tokens={"<|endoftext|>": 70_000})
    monkeypatch.setattr(corpus, "get_encoding", lambda name: big)
    meta = corpus.prepare(str(tmp_path / "big"), docs, tokenizer="big")
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 70_001
    assert int(np.fromfile(tmp_path / "big" / "val.bin", dtype=np.uint32)[-1]) == 70_000
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object with a \"text\" field"):
        corpus.read_documents([str(tmp_path / "bad.jsonl")])
    with pytest.raises(FileNotFoundError, match="meta.json not found"):
        corpus.TokenData(str(tmp_path / "nothing"))


def test_uncached_bpe_offline_is_one_clear_line(monkeypatch):
    def no_network(name):
        raise ConnectionError("Max retries exceeded with url: https://openaipublic.blob.core.windows.net/...")
    monkeypatch.setattr(tiktoken, "get_encoding", no_network)
    tokenizer.get_encoding.cache_clear()  # an encoding built earlier in this process would be returned from the cache
    with pytest.raises(RuntimeError, match="tiktoken BPE 'gpt2' is not cached and could not be downloaded"):
        tokenizer.get_encoding("gpt2")
    with pytest.raises(ValueError, match="unknown tokenizer 'gpt5'"):
        tokenizer.get_encoding("gpt5")


# ------------------------------------------------------------------------------------------ training


def test_tiny_run_loss_falls_and_writes_outputs(tmp_path):
    res = train.train(cfg(tmp_path, max_steps=40, decay_steps=8, eval_interval=20, warmup_steps=4), quiet=True)
    first, last = res["train_loss"][:3], res["train_loss"][-3:]
    assert sum(last) / 3 < sum(first) / 3 - 1.5
    assert res["val_loss"][0][1] > res["val_loss"][-1][1]
    r = rows(tmp_path)
    step_rows = [x for x in r if "train_loss" in x]
    assert len(step_rows) == 40 and {"step", "train_loss", "lr", "grad_norm", "tokens", "tok_per_s"} <= set(r[0])
    assert step_rows[-1]["tokens"] == 40 * 8 * 32
    assert [x["step"] for x in r if "val_bpb" in x] == [20, 40]
    assert os.path.isfile(tmp_path / "ckpt.pt") and os.path.isfile(tmp_path / "loss.png")
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ck["step"] == 40 and ck["config"]["hidden_size"] == 64 and "rng" in ck and "data" in ck
    # the logged lr is the WSD schedule: step s trains at lr(s), the first of the W = 4 warmup steps at lr / 4
    assert [x["lr"] for x in step_rows[:5]] == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01])


def test_batch_split_invariance_1x8_1x4x2_torchrun_2x4(tmp_path):
    a = train.train(cfg(tmp_path / "a", batch_size=8, grad_accum=1), quiet=True)
    b = train.train(cfg(tmp_path / "b", batch_size=4, grad_accum=2), quiet=True)
    assert_same_losses(b["train_loss"], a["train_loss"])
    np.testing.assert_allclose([v for _, v in b["val_loss"]], [v for _, v in a["val_loss"]], rtol=2e-4)
    c = cfg(tmp_path / "c", batch_size=4, grad_accum=1)
    r = run_cli(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", *cli_args(c)],
                timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())  # the command as a user would type it again
    assert summary["command"].startswith("torchrun --nnodes=1 --nproc_per_node=2 train.py --preset=tiny")
    ddp = [v for _, v in losses(tmp_path / "c")]
    assert_same_losses(ddp, a["train_loss"])
    val = [x["val_loss"] for x in rows(tmp_path / "c") if "val_loss" in x]
    np.testing.assert_allclose(val, [v for _, v in a["val_loss"]], rtol=2e-4)


def test_eval_rows_scores_every_batch_size_on_one_sample(tmp_path):
    # lr 0: the weights stay at the seed's init, so only the validation sample can differ between batch sizes
    def val(batch_size, **kw):
        run = cfg(tmp_path / f"b{batch_size}{len(kw)}", batch_size=batch_size, lr=0.0, max_steps=4, eval_seed=0,
                  warmup_steps=1, decay_steps=1, **kw)
        return train.train(run, quiet=True)["final_val_loss"]
    assert val(2, eval_rows=12) == pytest.approx(val(8, eval_rows=12), rel=1e-6)  # 12 rows: 8 + a last chunk of 4
    assert abs(val(2) - val(8)) > 1e-4  # without it each batch size draws its own sample
    with pytest.raises(train.ConfigError, match="eval_rows"):
        train.get_config(["--eval_rows=0"])
    # rows that do not split over the processes stop the run before its first step, in one line
    c = cfg(tmp_path / "ddp", batch_size=4, eval_rows=3, eval_interval=1)
    r = run_cli(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", *cli_args(c)],
                timeout=300)
    assert r.returncode != 0 and "eval_rows=3 does not split over 2 processes" in r.stderr
    assert not os.path.isfile(tmp_path / "ddp" / "metrics.jsonl")  # (checked at the first evaluation: a step trained)


def test_sigterm_then_resume_equals_uninterrupted(tmp_path, one_thread):
    full = train.train(cfg(tmp_path / "full", max_steps=200, decay_steps=10, eval_interval=100), quiet=True)
    c = cfg(tmp_path / "cut", max_steps=200, decay_steps=10, eval_interval=100)
    p = subprocess.Popen([sys.executable, "train.py", *cli_args(c)], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 5):
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, err[-2000:]  # stopped, not finished: 143, checkpoint saved
    stopped = torch.load(tmp_path / "cut" / "ckpt.pt", weights_only=True)["step"]
    assert 5 <= stopped < 200, "the run was not interrupted"
    assert "stopped by signal" in out
    res = train.train({**c, "resume": True}, quiet=True)
    assert res["step"] == 200
    assert [v for _, v in losses(tmp_path / "cut")] == full["train_loss"]  # one thread in both: the same bits
    assert [s for s, _ in losses(tmp_path / "cut")] == list(range(1, 201))  # no duplicated or missing rows


def test_periodic_checkpoint_resume_equality(tmp_path, kept_checkpoints):
    """A run that dies after step 7 restarts from its step-5 periodic checkpoint and logs what it would have."""
    saved = kept_checkpoints
    c = cfg(tmp_path, ckpt_interval=5)
    full = train.train(c, quiet=True)
    assert sorted(saved) == [5, 10, 12]
    (tmp_path / "ckpt.pt").write_bytes(saved[5])  # the state on disk of a run killed during steps 6-7
    res = train.train({**c, "resume": True}, quiet=True)
    assert res["train_loss"] == full["train_loss"][5:]  # bit-identical on CPU
    assert [s for s, _ in losses(tmp_path)] == list(range(1, 13))


def _checkpoint_error(c):
    with pytest.raises(checkpoint.CheckpointError) as e:
        train.train({**c, "resume": True}, quiet=True)
    return str(e.value)


def test_bad_checkpoints_are_reported_and_left_in_place(tmp_path):
    c = cfg(tmp_path, max_steps=4, decay_steps=1, warmup_steps=1, eval_interval=4)
    train.train(c, quiet=True)
    path = tmp_path / "ckpt.pt"
    good = path.read_bytes()
    msg = _checkpoint_error({**c, "hidden_size": 128, "lr": 0.02})
    assert str(path) in msg and "hidden_size (64 vs 128)" in msg and "lr (0.01 vs 0.02)" in msg
    path.write_bytes(good[: len(good) // 2])  # truncated
    msg = _checkpoint_error(c)
    assert str(path) in msg and "is corrupt, truncated" in msg
    assert len(path.read_bytes()) == len(good) // 2  # left in place, not overwritten
    path.write_bytes(b"\x00garbage" * 10)
    assert "is corrupt, truncated" in _checkpoint_error(c) and path.read_bytes() == b"\x00garbage" * 10
    torch.save({"weights": torch.zeros(2)}, path)
    assert "not a train.py checkpoint" in _checkpoint_error(c)


def test_vocab_and_length_checks(tmp_path):
    with pytest.raises(train.ConfigError, match="vocab_size=200 is smaller than the data's tokenizer vocabulary"):
        train.train(cfg(tmp_path, vocab_size=200), quiet=True)
    with pytest.raises(train.ConfigError, match="seq_len=2048 exceeds max_position_embeddings=1024"):
        train.train(cfg(tmp_path, seq_len=2048), quiet=True)


def test_init_from_branches_off_a_kept_checkpoint(tmp_path):
    """WSD's O(mC) trick: a decay branched off a stable run's step-6 checkpoint continues it exactly."""
    c = cfg(tmp_path / "stable", ckpt_interval=6, keep_ckpts=True, decay_steps=0)
    stable = train.train(c, quiet=True)
    ck6 = str(tmp_path / "stable" / "ckpt_000006.pt")
    assert os.path.isfile(ck6) and os.path.isfile(tmp_path / "stable" / "ckpt_000012.pt")
    same = train.train({**c, "out_dir": "", "keep_ckpts": False, "init_from": ck6}, quiet=True)
    assert same["step"] == 12 and same["train_loss"] == stable["train_loss"][6:]
    branch = train.train({**c, "out_dir": "", "keep_ckpts": False, "decay_steps": 4, "max_steps": 10,
                          "init_from": ck6}, quiet=True)
    # the branch's decay starts at T = 10 - 4 = 6: its 4 steps 7-10 all train at decayed lrs, so its first loss
    # (measured before the first update) is the stable run's, and the next one already differs
    assert branch["train_loss"][0] == stable["train_loss"][6] and branch["train_loss"][1] != stable["train_loss"][7]
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"init_from checkpoint .* has another model; differing keys: hidden_size \(64 vs 128\)"):
        train.train({**c, "out_dir": "", "hidden_size": 128, "init_from": str(tmp_path / "stable")}, quiet=True)


@pytest.mark.parametrize("W, d, S", [(2, 3, 12), (0, 1, 10), (5, 8, 40)])
def test_the_schedule_trains_every_warmup_and_every_decay_step(tmp_path, W, d, S):
    # step s trains at lr(s), s = 1 .. S: W warmup steps at lr > 0 (the first at lr / W, not 0), d decay steps each
    # lower than the last, the final one at final_lr_ratio * lr (version 1 trained step s at lr(s - 1))
    res = train.train(cfg(tmp_path, max_steps=S, warmup_steps=W, decay_steps=d, eval_interval=S), quiet=True)
    lrs = [r["lr"] for r in rows(tmp_path) if "lr" in r]
    assert len(lrs) == S and all(x > 0 for x in lrs)
    if W:
        assert lrs[0] == pytest.approx(0.01 / W) and lrs[W - 1] == pytest.approx(0.01)
    decay = lrs[S - d - 1:]  # the last stable step, then the decay
    assert decay[0] == pytest.approx(0.01) and all(b < a for a, b in zip(decay, decay[1:]))
    assert lrs[-1] == pytest.approx(0.01 * 0.1) and res["step"] == S


def test_a_continued_stage_counts_the_epochs_of_its_own_steps(tmp_path, capsys):
    train.train(cfg(tmp_path / "a", max_steps=8, decay_steps=0), quiet=True)
    train.train(cfg(tmp_path / "b", init_from=str(tmp_path / "a"), max_steps=12, decay_steps=2, batch_size=4))
    out = capsys.readouterr().out
    # 4 steps of 4 x 32 tokens (not 12 steps at this stage's batch): the epochs of what this stage reads
    tokens = corpus.TokenData("embedded").meta["train_tokens"]
    assert f"4 steps x 128 tokens = {4 * 128 / tokens:.2f} epochs of embedded (this stage: steps 9-12)" in out


def test_a_new_stage_can_warm_up_again_and_resumes_its_ramp(tmp_path, kept_checkpoints):
    """From a decayed checkpoint (lr 1e-3 at its last step), a stage's first lr is the schedule's peak (a jump) unless
    stage_warmup_steps=V: then its steps s = 13 .. 16 train at lr(s) x (s - 12) / V; a resumed stage keeps the ramp."""
    train.train(cfg(tmp_path / "decayed"), quiet=True)  # 12 steps, the last 3 decaying to 1e-3
    stage = cfg(tmp_path / "stage", init_from=str(tmp_path / "decayed"), max_steps=20, decay_steps=0, ckpt_interval=2)
    train.train(stage, quiet=True)
    assert [r["lr"] for r in rows(tmp_path / "stage") if "lr" in r][0] == pytest.approx(0.01)  # the jump
    warm = {**stage, "out_dir": str(tmp_path / "warm"), "stage_warmup_steps": 4}
    full = train.train(warm, quiet=True)
    lrs = [r["lr"] for r in rows(tmp_path / "warm") if "lr" in r]
    assert lrs[:5] == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01])
    (tmp_path / "warm" / "ckpt.pt").write_bytes(kept_checkpoints[14])  # killed inside the ramp, at step 14
    res = train.train({**warm, "resume": True}, quiet=True)
    assert res["train_loss"] == full["train_loss"][2:]
    assert [r["lr"] for r in rows(tmp_path / "warm") if "lr" in r][:4] == pytest.approx([0.0025, 0.005, 0.0075, 0.01])


def test_the_gpu_defaults_bf16_and_compile_train_on_cpu(tmp_path):
    # what a GPU run does by default (bf16 autocast, torch.compile), here on the CPU: the run trains, its first loss is
    # the fp32 eager run's to bf16's precision (8 bits of mantissa: ~1%), and it ends lower than it started
    c = cfg(tmp_path / "bf16", max_steps=6, warmup_steps=0, decay_steps=0, eval_interval=6)
    low = train.train({**c, "dtype": "bfloat16", "compile": True}, quiet=True)
    fp32 = train.train({**c, "out_dir": str(tmp_path / "fp32")}, quiet=True)
    assert low["train_loss"][0] == pytest.approx(fp32["train_loss"][0], rel=2e-2)
    assert low["train_loss"][-1] < low["train_loss"][0] and math.isfinite(low["final_val_loss"])

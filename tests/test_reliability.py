"""Nothing lost, nothing silently wrong: diverging runs, tampered and broken checkpoints, two runs on one out_dir,
a full disk, corrupt prepared data, out-of-range config values, torn metrics, old checkpoints."""
import errno
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp

import checkpoint
import corpus
import tokenizer
import dpo
import sample
import train
from conftest import ROOT, cfg, cli_args, one_line_error, read_only, rows, run_cli


def finite(state):
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# ------------------------------------------------------------------------------------------ divergence


def test_a_diverging_run_keeps_its_last_finite_checkpoint(tmp_path, cli):
    c = cfg(tmp_path, max_steps=20, decay_steps=1, warmup_steps=0, ckpt_interval=1, lr=1000.0)
    with pytest.raises(FloatingPointError, match=r"diverged at step \d+ \(lr 1e\+03.*no step was taken"):
        train.train(c, quiet=True)
    ck = checkpoint.load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert finite(ck["model"]) and ck["step"] >= 1
    logged = [r["step"] for r in rows(tmp_path) if "train_loss" in r]
    assert ck["step"] == logged[-1]  # the checkpoint is the last step taken: the diverged one was never applied
    cli(train.main, cli_args({**c, "out_dir": tmp_path / "cli"}), "diverged at step")


def test_non_finite_weights_are_never_saved(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    checkpoint.save_checkpoint(path, dict(model={"w": torch.ones(2)}, step=1))
    with pytest.raises(checkpoint.CheckpointError, match="refusing to save non-finite weights"):
        checkpoint.save_checkpoint(path, dict(model={"w": torch.tensor([1.0, math.nan])}, step=2))
    assert torch.load(path, weights_only=True)["step"] == 1 and not os.path.exists(path + ".tmp")


# ------------------------------------------------------------------------------------------ nothing runs on load


class Evil:
    """Unpickling it runs a command: what a tampered checkpoint file could hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def tampered_run(tmp_path, where):
    """An out_dir whose ckpt_dcp/ would run a command when opened by plain pickle / torch.load(weights_only=False):
    `where` = "metadata" (the .metadata file) or "bytes" (a non-tensor entry in a .distcp shard)."""
    out, marker = tmp_path / "run", tmp_path / "PWNED"
    d = out / checkpoint.DCP_DIR
    state = {"model": {"w": torch.ones(3)}, "optimizer": {"param_groups": [{"lr": 0.01}]}}
    if where == "bytes":
        state["optimizer"]["param_groups"][0]["lr"] = Evil(marker)
    dcp.save(state, checkpoint_id=str(d), no_dist=True)
    if where == "metadata":
        (d / ".metadata").write_bytes(pickle.dumps(Evil(marker)))
    cfg_ = {**train.default_config(), "hidden_size": 64, "num_hidden_layers": 2}
    (d / "train_state.json").write_text(json.dumps(dict(step=1, config=cfg_, data=dict(global_batch=16))))
    return out, marker


@pytest.mark.parametrize("where", ["metadata", "bytes"])
def test_a_tampered_dcp_checkpoint_runs_nothing(tmp_path, where, cli):
    out, marker = tampered_run(tmp_path, where)
    with pytest.raises(checkpoint.CheckpointError, match="nothing in it was run"):
        checkpoint.model_from_checkpoint(str(out))
    if where == "metadata":  # the whole command line once, in its own process
        one_line_error(run_cli(["sample.py", f"--out_dir={out}"]), "nothing in it was run")
    cli(sample.main, [f"--out_dir={out}"], "nothing in it was run")
    cli(train.main, ["export", out, tmp_path / "exported"], "nothing in it was run")
    cli(train.main, [f"--init_from={out}", f"--out_dir={tmp_path / 'x'}", "--max_steps=2", "--decay_steps=0",
                     "--warmup_steps=0"], "nothing in it was run")
    assert not marker.exists()
    with open(out / checkpoint.DCP_DIR / ".metadata", "rb") as f:  # (plain pickle would have run it)
        if where == "metadata":
            pickle.load(f)
            assert marker.exists()


def test_an_incomplete_dcp_directory_is_one_line(tmp_path):
    d = tmp_path / checkpoint.DCP_DIR
    dcp.save({"model": {"w": torch.ones(3)}, "optimizer": {}}, checkpoint_id=str(d), no_dist=True)
    (d / "train_state.json").write_text(json.dumps(dict(step=1, config={}, data={})))
    for f in d.glob("*.distcp"):  # a copy that lost its shard files
        f.unlink()
    with pytest.raises(checkpoint.CheckpointError, match="cannot be loaded"):
        checkpoint.read_checkpoint(str(d))


# ------------------------------------------------------------------------------------------ one run per out_dir


def test_a_second_run_on_a_locked_out_dir_stops_at_once_and_a_killed_holder_leaves_no_lock(tmp_path, cli):
    hold = ("import sys, time, checkpoint\nwith checkpoint.locked(sys.argv[1]):\n"
            "    print('locked', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.perf_counter()
        cli(train.main, [f"--out_dir={tmp_path}", "--max_steps=2", "--decay_steps=0", "--warmup_steps=0"],
            f"out_dir {tmp_path} is in use by another run (process {holder.pid} on")
        assert time.perf_counter() - t0 < 10 and not (tmp_path / "metrics.jsonl").exists()
    finally:
        holder.kill()  # kill -9: the kernel drops the lock with the process
        holder.wait()
    train.train(cfg(tmp_path, max_steps=2, decay_steps=0, warmup_steps=0), quiet=True)
    assert (tmp_path / "ckpt.pt").exists()


# ------------------------------------------------------------------------------------------ a full disk


def test_a_full_disk_keeps_the_previous_checkpoint_and_leaves_no_partial_file(tmp_path, monkeypatch):
    real_save, calls = torch.save, []

    def save_until_full(obj, f, *a, **kw):
        calls.append(1)
        if len(calls) == 1:
            return real_save(obj, f, *a, **kw)
        f.write(b"partial bytes")  # what a full disk leaves: part of the file
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", save_until_full)
    with pytest.raises(checkpoint.CheckpointError, match=r"No space left on device.*the previous checkpoint is kept: "
                                                         r"a checkpoint needs about [\d.]+ MiB free in"):
        train.train(cfg(tmp_path, ckpt_interval=6), quiet=True)
    monkeypatch.setattr(torch, "save", real_save)
    assert checkpoint.load_checkpoint(str(tmp_path / "ckpt.pt"))["step"] == 6
    assert sorted(os.listdir(tmp_path)) == [".lock", "ckpt.pt", "metrics.jsonl"]


def test_a_real_full_disk_while_saving_ckpt_pt_is_one_line(tmp_path, tmpfs, cli):
    # a 4 MB tmpfs, a checkpoint (~1.2 MB with AdamW) every step, each kept: the disk fills at the fourth. torch's zip
    # writer turns the OSError into a RuntimeError when it closes the file: one line all the same, no .tmp left
    disk = tmpfs("4m")
    out = disk / "run"
    cli(train.main, cli_args(cfg(out, ckpt_interval=1, keep_ckpts=True, max_steps=12)), "could not write", "ckpt.pt",
        "the previous checkpoint is kept", "MiB free")
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    step = checkpoint.load_checkpoint(str(out / "ckpt.pt"))["step"]
    assert 1 <= step < 12


def test_a_real_full_disk_in_export_and_corpus_leaves_no_partial_file(tmp_path, tmpfs, cli):
    train.train(cfg(tmp_path / "run", max_steps=2, warmup_steps=0, decay_steps=0), quiet=True)
    disk = tmpfs("100k")  # the weights (~0.4 MB) do not fit
    cli(train.main, ["export", tmp_path / "run", disk / "official"], "could not write", "free space")
    assert not [f for f in os.listdir(disk / "official") if f.endswith(".tmp")]
    text = tmp_path / "big.txt"
    text.write_text("some text to tokenize. " * 20000)  # 460 KB of bytes: train.bin does not fit
    cli(corpus.main, ["--input", text, "--out", disk / "data"], "could not write", "train.bin", "free space")
    assert not os.path.exists(disk / "data" / "train.bin.tmp") and not os.path.exists(disk / "data" / "meta.json")


def test_a_full_disk_at_the_end_of_a_run_still_writes_the_summary_first(tmp_path, tmpfs):
    # the run's last checkpoint fits, loss.png does not: one line that says the run is complete, summary.json there
    c = cfg(tmp_path / "ref", max_steps=4, warmup_steps=0, decay_steps=0, ckpt_interval=1000)
    train.train(c, quiet=True)
    sizes = {f: os.path.getsize(tmp_path / "ref" / f) for f in ("ckpt.pt", "metrics.jsonl", "summary.json")}
    disk = tmpfs("4m")
    out = disk / "run"
    out.mkdir()
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    room = sizes["ckpt.pt"] + 4 * 4096 + 8192  # the checkpoint, the small files' pages and the lock: no loss.png
    (disk / "filler").write_bytes(b"\0" * (free - room))
    r = run_cli(["train.py", *cli_args({**c, "out_dir": str(out)})])
    err = one_line_error(r, "loss.png", "the run itself is complete", "python plots.py")
    assert checkpoint.load_checkpoint(str(out / "ckpt.pt"))["step"] == 4, err
    assert json.loads((out / "summary.json").read_text())["step"] == 4
    assert not os.path.exists(out / "loss.png.tmp")


def test_read_only_mounts_and_an_immutable_lock_are_one_line(tmp_path, tmpfs, cli):
    disk = tmpfs("8m")
    c = cfg(disk / "run", max_steps=2, warmup_steps=0, decay_steps=0)
    train.train(c, quiet=True)
    read_only(disk)
    cli(train.main, cli_args({**c, "resume": True, "max_steps": 4}), "read-only file system")
    cli(train.main, cli_args(cfg(disk / "fresh")), "read-only file system")
    cli(train.main, ["export", disk / "run", disk / "official"], "read-only file system")
    lock = tmp_path / "run" / ".lock"
    lock.parent.mkdir()
    lock.write_text("")
    if subprocess.run(["chattr", "+i", str(lock)], capture_output=True).returncode:
        pytest.skip("chattr +i is refused on this file system: the immutable-lock case needs it")
    try:
        cli(train.main, cli_args(cfg(tmp_path / "run")), ".lock", "no permission")
    finally:
        subprocess.run(["chattr", "-i", str(lock)], capture_output=True)
    # an immutable ckpt.pt: not "needs N MiB free", but what it is
    c = cfg(tmp_path / "imm", max_steps=4, warmup_steps=0, decay_steps=0)
    train.train(c, quiet=True)
    ck = torch.load(tmp_path / "imm" / "ckpt.pt", weights_only=True)
    ck["step"], ck["data"]["next_step"] = 2, 2  # a run stopped at step 2 of 4
    torch.save(ck, tmp_path / "imm" / "ckpt.pt")
    subprocess.run(["chattr", "+i", str(tmp_path / "imm" / "ckpt.pt")], check=True)
    try:
        err = cli(train.main, cli_args({**c, "resume": True}), "ckpt.pt", "no permission",
                  "immutable", "the previous checkpoint is kept")
        assert "MiB free" not in err
    finally:
        subprocess.run(["chattr", "-i", str(tmp_path / "imm" / "ckpt.pt")], capture_output=True)


def test_export_into_a_directory_holding_a_model_is_refused(tmp_path, cli):
    train.train(cfg(tmp_path / "run", max_steps=2, warmup_steps=0, decay_steps=0), quiet=True)
    checkpoint.export_checkpoint(str(tmp_path / "run"), str(tmp_path / "official"))
    before = {f: (tmp_path / "official" / f).read_bytes() for f in os.listdir(tmp_path / "official")}
    cli(train.main, ["export", tmp_path / "run", tmp_path / "official"], "already holds a model", "config.json")
    assert {f: (tmp_path / "official" / f).read_bytes() for f in os.listdir(tmp_path / "official")} == before


def start_and_kill(argv, started):
    """Start `python train.py argv`, wait until started() is true (the run is in its loop), SIGKILL it."""
    p = subprocess.Popen([sys.executable, "train.py", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not started():
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)


def metrics_lines(path):
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def test_a_run_killed_before_its_first_checkpoint_starts_again_without_overwrite(tmp_path, capsys):
    # SIGKILL (no handler can run) after a few steps and before any checkpoint (a run far too long to finish first):
    # metrics.jsonl alone is no run to resume, so a plain rerun starts (saying so), and an --overwrite run that dies
    # never sits beside the old run's files
    c = cfg(tmp_path, max_steps=10 ** 6, ckpt_interval=10 ** 7, eval_interval=10 ** 7, warmup_steps=0,
            decay_steps=0)
    metrics = tmp_path / "metrics.jsonl"
    start_and_kill(cli_args(c), lambda: len(metrics_lines(metrics)) >= 3)
    assert not (tmp_path / "ckpt.pt").exists() and metrics.exists()
    with pytest.raises(checkpoint.CheckpointError, match="drop --resume=True"):
        train.train({**c, "resume": True}, quiet=True)
    train.train({**c, "max_steps": 6})
    assert "starting over" in capsys.readouterr().out
    assert [x["step"] for x in rows(tmp_path) if "train_loss" in x] == [1, 2, 3, 4, 5, 6]
    # an --overwrite run killed early: the finished run's checkpoint and summary went before it trained
    assert (tmp_path / "summary.json").exists() and (tmp_path / "ckpt.pt").exists()
    metrics.write_text('{"marker": "the earlier run"}\n' + metrics.read_text())  # (start_over removes it last)
    start_and_kill(cli_args({**c, "overwrite": True}), lambda: len(metrics_lines(metrics)) >= 2 and
                   "marker" not in metrics_lines(metrics)[0])
    assert not (tmp_path / "ckpt.pt").exists() and not (tmp_path / "summary.json").exists()
    assert not (tmp_path / "loss.png").exists()


def test_init_from_inside_an_out_dir_that_overwrite_empties_is_refused(tmp_path):
    train.train(cfg(tmp_path, max_steps=2, warmup_steps=0, decay_steps=0), quiet=True)
    with pytest.raises(checkpoint.CheckpointError, match="lies inside out_dir .* which --overwrite=True empties"):
        train.train(cfg(tmp_path, init_from=str(tmp_path / "ckpt.pt"), max_steps=4, warmup_steps=0, decay_steps=0,
                        overwrite=True), quiet=True)
    assert checkpoint.load_checkpoint(str(tmp_path / "ckpt.pt"))["step"] == 2


def test_checkpoints_are_fsynced_file_and_directory(tmp_path, monkeypatch):
    synced, real = [], os.fsync

    def fsync(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    checkpoint.save_checkpoint(str(tmp_path / "ckpt.pt"), dict(model={"w": torch.ones(2)}))
    assert synced == [str(tmp_path / "ckpt.pt.tmp"), str(tmp_path)]


def test_resume_with_an_unwritable_metrics_file_is_one_line(tmp_path, kept_checkpoints, cli):
    c = killed_at_3(tmp_path, kept_checkpoints)[0]
    (tmp_path / "metrics.jsonl.tmp").mkdir()  # writing it fails with an OSError, as on a full disk
    cli(train.main, cli_args({**c, "resume": True}), "could not write")


# ------------------------------------------------------------------------------------------ corrupt data


@pytest.fixture
def prepared(tmp_path):
    d = tmp_path / "data"
    corpus.prepare(str(d), ["hello world, " * 200, "another document. " * 100])
    return d


@pytest.fixture
def data_error(cli):
    def run(d, seq_len=32):
        return cli(train.main, [f"--data={d}", f"--seq_len={seq_len}", "--out_dir=", "--max_steps=2",
                                "--decay_steps=0", "--warmup_steps=0"])
    return run


def test_corrupt_prepared_data_stops_before_the_first_step(prepared, data_error):
    meta = json.loads((prepared / "meta.json").read_text())
    tokens = [np.fromfile(prepared / f"{s}.bin", np.uint16) for s in ("train", "val")]
    assert meta["max_token_id"] == max(int(t.max()) for t in tokens)
    good = (prepared / "train.bin").read_bytes()
    (prepared / "train.bin").write_bytes(good[:-20])  # a truncated copy
    assert "train files hold" in data_error(prepared) and "(a truncated copy?)" in data_error(prepared)
    (prepared / "train.bin").write_bytes(good)
    for dtype in ("uint8", "float16"):
        (prepared / "meta.json").write_text(json.dumps({**meta, "dtype": dtype}))
        assert f"dtype '{dtype}' does not match" in data_error(prepared)
    bad = np.frombuffer(good, np.uint16).copy()
    bad[7] = 60000  # an id past the 259-token byte vocabulary
    (prepared / "train.bin").write_bytes(bad.tobytes())
    (prepared / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "max_token_id"}))
    assert "token id 60000 is past the tokenizer's vocabulary" in data_error(prepared)


def test_a_split_shorter_than_seq_len_is_found_at_start(prepared, data_error):
    meta = json.loads((prepared / "meta.json").read_text())
    assert "the val split" in data_error(prepared, seq_len=meta["val_tokens"] + 5)


# ------------------------------------------------------------------------------------------ config values


@pytest.mark.parametrize("arg, needle", [("--grad_clip=-1.0", "grad_clip=-1.0 must be >= 0"),
                                         ("--seed=-1", "seed=-1 must be >= 0"),
                                         ("--device=mps", "device='mps': use auto, cpu, cuda or cuda:N"),
                                         ("--device=cuda:x", "device='cuda:x'"),
                                         ("--lr=1e999", "lr=inf must be a finite number"),
                                         ("--weight_decay=-0.1", "weight_decay=-0.1 must be >= 0"),
                                         ("--dtype=float8", "dtype='float8'"),
                                         ("--passkey_ratio=0.5", "passkey_ratio=0.5: passkey prompt of 27 tokens is "
                                                                 "too short: it needs at least 80 tokens")])
def test_out_of_range_values_are_refused(arg, needle, cli):
    cli(train.main, [arg, "--out_dir=", "--max_steps=2", "--seq_len=32"], needle)


def test_config_file_errors_name_the_file_and_line(tmp_path, cli):
    f = tmp_path / "c.py"
    f.write_text("lr = 3e-3\nmax_steps = (\n")
    cli(train.main, [f], f"config file {f}:2")
    f.write_text("import math\nlr = 3e-3\nwarmup_steps = 1 // 0\n")
    cli(train.main, [f], f"config file {f}:3: ZeroDivisionError")
    f.write_text("import math\nlr = math.nan\n")
    cli(train.main, [f], "lr=nan must be a finite number")


def test_bad_jsonl_bytes_and_long_dpo_rows_name_their_line(tmp_path):
    f = tmp_path / "sft.jsonl"
    f.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "\xff\xfe", "response": "b"}\n')
    with pytest.raises(ValueError, match=r"sft.jsonl:2: not UTF-8 text"):
        corpus.read_jsonl_rows(str(f), "chat")
    p = tmp_path / "pref.jsonl"
    p.write_text("\n".join(json.dumps(dict(prompt="q", chosen="a" * (80 if i == 2 else 2), rejected="b"))
                           for i in range(4)) + "\n")
    enc = tokenizer.get_encoding("bytes")
    with pytest.raises(ValueError, match=r"line 3: prompt \+ chosen is \d+ tokens > seq_len=64"):
        dpo.encode_pairs(enc, corpus.read_jsonl_rows(str(p), ("prompt", "chosen", "rejected")), 64)


# ------------------------------------------------------------------------------------------ resuming what is on disk


def test_broken_checkpoints_are_one_line(tmp_path, cli):
    c = cfg(tmp_path, max_steps=4, decay_steps=0, warmup_steps=0)
    train.train(c, quiet=True)
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resume = cli_args({**c, "resume": True})
    for lacks in ("rng", "data"):
        torch.save({k: v for k, v in ck.items() if k != lacks}, tmp_path / "ckpt.pt")
        cli(train.main, resume, f"lacks {lacks}", "--init_from instead of --resume")
    (tmp_path / "ckpt.pt").write_bytes(b"")
    cli(train.main, resume, "is corrupt, truncated")
    (tmp_path / "ckpt.pt").unlink()
    (tmp_path / checkpoint.DCP_DIR).mkdir()
    cli(train.main, resume, "holds an FSDP checkpoint", "--fsdp=True")


def killed_at_3(tmp_path, kept_checkpoints):
    """(config, full run's losses) of a 6-step run whose out_dir is left as a kill after step 3 leaves it."""
    c = cfg(tmp_path, max_steps=6, decay_steps=0, warmup_steps=0, ckpt_interval=3)
    full = train.train(c, quiet=True)
    (tmp_path / "ckpt.pt").write_bytes(kept_checkpoints[3])
    kept = [r for r in rows(tmp_path) if r["step"] <= 3]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    return c, full["train_loss"]


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path, kept_checkpoints):
    c, full = killed_at_3(tmp_path, kept_checkpoints)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "train_lo')  # a crash in the middle of an append
    r = run_cli(["train.py", *cli_args({**c, "resume": True})])
    assert r.returncode == 0 and "dropped a torn last line" in r.stdout, r.stderr[-2000:]
    assert [x["train_loss"] for x in rows(tmp_path) if "train_loss" in x] == full


def test_a_checkpoint_from_before_a_config_key_existed_resumes(tmp_path, kept_checkpoints):
    c, full = killed_at_3(tmp_path, kept_checkpoints)
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    del ck["config"]["passkey_ratio"]  # as written before the key was added
    torch.save(ck, tmp_path / "ckpt.pt")
    res = train.train({**c, "resume": True}, quiet=True)
    assert res["train_loss"] == full[3:]


@pytest.mark.parametrize("change, message", [
    (dict(num_experts=2.5), "num_experts=2.5: must be an integer >= 0"),
    (dict(rms_norm_eps=float("inf")), "rms_norm_eps=inf: must be a positive number <= 0.1"),
    (dict(scale_emb=1e308), "scale_emb=1e+308: must be a positive number <= 10000"),
    (dict(tie_word_embeddings="false"), "tie_word_embeddings='false': must be true or false"),
    (dict(num_hidden_layers=1e7), "num_hidden_layers=10000000.0: must be a positive integer"),
    (dict(vocab_size=2_000_000_000), "config.json implies (2000000000, 64)")])
def test_an_official_config_json_that_cannot_be_a_model_is_one_line(tmp_path, cli, change, message):
    # written to disk as a released directory would be, read as sample.py reads it: never built, never allocated
    official = tmp_path / "official"
    train.train(cfg(tmp_path / "run", max_steps=2, warmup_steps=0, decay_steps=0), quiet=True)
    checkpoint.export_checkpoint(str(tmp_path / "run"), str(official))
    config = json.loads((official / "config.json").read_text())
    (official / "config.json").write_text(json.dumps({**config, **change}))
    cli(sample.main, [f"--model_dir={official}"], message)


def test_a_config_json_list_and_a_checkpoint_whose_weights_do_not_fit(tmp_path, cli):
    train.train(cfg(tmp_path / "run", max_steps=2, warmup_steps=0, decay_steps=0), quiet=True)
    checkpoint.export_checkpoint(str(tmp_path / "run"), str(tmp_path / "official"))
    (tmp_path / "official" / "config.json").write_text("[1, 2]")
    cli(sample.main, [f"--model_dir={tmp_path / 'official'}"], "holds a list, not a config")
    ck = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    ck["config"]["hidden_size"] = 128  # the weights are width 64
    torch.save(ck, tmp_path / "run" / "ckpt.pt")
    cli(sample.main, [f"--out_dir={tmp_path / 'run'}"], "its weights do not fit its config")
    cli(train.main, ["export", tmp_path / "run", tmp_path / "again"], "its weights do not fit its config")
    cli(dpo.main, [f"--init_from={tmp_path / 'run'}", "--data=x.jsonl", f"--out_dir={tmp_path / 'dpo'}"],
        "its weights do not fit its config")  # (its out_dir under tmp_path: nothing lands in the checkout)
    ck["config"] = "a string"
    torch.save(ck, tmp_path / "run" / "ckpt.pt")
    cli(sample.main, [f"--out_dir={tmp_path / 'run'}"], "has a config that cannot be built")


def test_a_model_larger_than_the_machine_is_refused_before_any_allocation(tmp_path, cli):
    cli(train.main, ["--vocab_size=2000000000", f"--out_dir={tmp_path}"], "more than this machine's", "GiB of memory")


# ------------------------------------------------------------------------------------------ data by content


def test_a_run_resumes_only_on_the_data_it_trained_on_however_its_path_is_spelled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    corpus.prepare(str(data), ["hello world, " * 300, "another document. " * 200])
    c = cfg(tmp_path / "run", data="./data/", max_steps=8, warmup_steps=0, decay_steps=0)
    train.train(c, quiet=True)
    ck = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    ck["step"], ck["data"]["next_step"] = 4, 4  # the state of a run stopped at step 4 of 8
    torch.save(ck, tmp_path / "run" / "ckpt.pt")
    # the same directory spelled another way is the same data
    assert train.train({**c, "data": str(data), "resume": True}, quiet=True)["step"] == 8
    torch.save(ck, tmp_path / "run" / "ckpt.pt")
    corpus.prepare(str(data), ["quite different text. " * 400])  # prepared again, from other text
    with pytest.raises(checkpoint.CheckpointError, match="trained on other data: data=.* now holds other tokens"):
        train.train({**c, "resume": True}, quiet=True)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("bytes_per_token"), "field bytes_per_token=None must be a positive number"),
    (lambda m: m.update(bytes_per_token=0), "field bytes_per_token=0 must be a positive number"),
    (lambda m: m.pop("vocab_size"), "field vocab_size=None must be a positive int"),
    (lambda m: m.pop("train_tokens"), "field train_tokens=None must be a positive int"),
    (lambda m: m.update(vocab_size="320"), "field vocab_size='320' must be a positive int"),
    (lambda m: m.update(tokenizer="gtp2"), "tokenizer 'gtp2' is not one of bytes, gpt2"),
    (None, "holds a list, not an object of fields")])
def test_a_bad_meta_json_is_one_line_before_any_step(prepared, cli, edit, message):
    meta = json.loads((prepared / "meta.json").read_text())
    if edit:
        edit(meta)
    (prepared / "meta.json").write_text(json.dumps(meta if edit else [meta]))
    cli(train.main, [f"--data={prepared}", "--out_dir="], message)


def test_corpus_input_that_is_not_text_is_one_line(tmp_path, cli):
    for content, message in (('{"text": 123}\n', "bad.jsonl:1: the \"text\" field is int, not a string"),
                             ('{"text": null}\n', "bad.jsonl:1: the \"text\" field is NoneType, not a string")):
        (tmp_path / "bad.jsonl").write_text(content)
        cli(corpus.main, ["--input", tmp_path / "bad.jsonl", "--out", tmp_path / "d"], message)
    (tmp_path / "binary.txt").write_bytes(b"text \xff\xfe then bytes")
    cli(corpus.main, ["--input", tmp_path / "binary.txt", "--out", tmp_path / "d"], "binary.txt is not UTF-8 text",
        "offset 5")


def test_hub_rows_are_read_from_the_named_text_field():
    rows = [{"text": "a", "url": "u"}, {"text": "b", "url": "v"}, {"text": "c", "url": "w"}]
    assert list(corpus.hub_documents(iter(rows), "text", 2)) == ["a", "b"]  # --hf_max_docs rows, streamed
    assert list(corpus.hub_documents(iter([{"content": "x"}]), "content", 5)) == ["x"]
    with pytest.raises(ValueError, match=r"fineweb row 1: no string field 'text' \(its fields: content, id\): set "
                                         r"--hf_text_field"):
        list(corpus.hub_documents(iter([{"text": "a"}, {"content": "x", "id": 1}]), "text", 5, "fineweb"))

"""A run directory that was tampered with, copied in part or received as a tarball: nothing a user wrote is lost,
nothing is written through a link or outside its directory, nothing blocks forever, and each fault is one line.
Every fault is real: real links, real FIFOs, real signals, real files on disk."""
import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import checkpoint
import corpus
import dpo
import files
import official
import tokenizer
import train
from conftest import ROOT, cfg, cli_args, file_bytes, official_dir, one_line_error, rows, run_cli

SMALL = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1, max_position_embeddings=64, dim_model_base=16, scale_emb=1.0, scale_depth=1.0)


def a_run(tmp_path, **kw):
    c = cfg(tmp_path, **{**dict(max_steps=4, warmup_steps=0, decay_steps=0, ckpt_interval=2, keep_ckpts=True), **kw})
    train.train(c, quiet=True)
    return c


def release(path):
    """A released directory (config.json + pytorch_model.bin) of random weights at path; returns (path, state)."""
    path.mkdir(parents=True)
    return str(path), official_dir(path, SMALL)


# ------------------------------------------------------------------------------------------ checkpoints are kept


def test_a_resume_without_metrics_deletes_no_checkpoint(tmp_path):
    c = a_run(tmp_path, max_steps=6)
    (tmp_path / "metrics.jsonl").unlink()  # only the checkpoints were copied
    (tmp_path / "ckpt.pt").write_bytes((tmp_path / "ckpt_000004.pt").read_bytes())
    kept = {n: (tmp_path / n).read_bytes() for n in ("ckpt_000002.pt", "ckpt_000004.pt")}
    train.train({**c, "resume": True, "keep_ckpts": False}, quiet=True)
    assert {n: (tmp_path / n).read_bytes() for n in kept} == kept
    assert [r["step"] for r in rows(tmp_path) if "train_loss" in r] == [5, 6]


def test_a_plain_run_never_deletes_kept_checkpoints(tmp_path):
    c = a_run(tmp_path)
    (tmp_path / "ckpt.pt").unlink()
    before = file_bytes(tmp_path)
    with pytest.raises(train.ConfigError, match=r"holds a run \(ckpt_000002.pt, ckpt_000004.pt\)"):
        train.train(c, quiet=True)
    assert file_bytes(tmp_path) == before
    train.train({**c, "overwrite": True, "keep_ckpts": False}, quiet=True)  # only --overwrite deletes them
    assert not (tmp_path / "ckpt_000002.pt").exists()


def test_overwrite_leaves_no_file_of_the_earlier_model(tmp_path):
    c = a_run(tmp_path)
    (tmp_path / "eval.json").write_text("{}")
    train.train({**c, "overwrite": True}, quiet=True)
    assert not (tmp_path / "eval.json").exists()


def test_an_export_into_its_own_run_is_refused(tmp_path, cli):
    a_run(tmp_path)
    before = file_bytes(tmp_path)
    cli(train.main, ["export", tmp_path, tmp_path], "already holds a model", "ckpt.pt")
    assert file_bytes(tmp_path) == before


# ------------------------------------------------------------------------------------------ links


def test_no_write_follows_a_planted_link(tmp_path):
    outside = tmp_path / "bashrc"
    outside.write_text("the user's own file\n")
    run = tmp_path / "run"
    c = a_run(run, max_steps=6)
    (run / "ckpt.pt").write_bytes((run / "ckpt_000004.pt").read_bytes())
    for name in (".lock", "ckpt.pt.tmp", "summary.json.tmp", "metrics.jsonl.tmp", "loss.png.tmp", "ckpt_000006.pt"):
        (run / name).unlink(missing_ok=True)
        os.symlink(outside, run / name)
    train.train({**c, "resume": True}, quiet=True)  # the links are replaced, never followed
    assert outside.read_text() == "the user's own file\n"
    assert not (run / "ckpt.pt").is_symlink() and checkpoint.load_checkpoint(str(run / "ckpt.pt"))["step"] == 6


def test_an_append_through_a_link_is_one_line_and_writes_nothing(tmp_path):
    outside = tmp_path / "key"
    outside.write_text("secret\n")
    os.symlink(outside, tmp_path / "metrics.jsonl")
    with pytest.raises(checkpoint.CheckpointError, match="metrics.jsonl .*is a symbolic link"):
        checkpoint.append_jsonl(str(tmp_path / "metrics.jsonl"), {"step": 1})
    assert outside.read_text() == "secret\n"


def test_an_export_copies_no_link_of_the_release(tmp_path):
    src, _ = release(tmp_path / "rel")
    (tmp_path / "id_rsa").write_text("PRIVATE KEY\n")
    os.symlink(tmp_path / "id_rsa", os.path.join(src, "notes.md"))
    with open(os.path.join(src, "generation_config.json"), "w") as f:
        f.write("{}")
    model = official.from_pretrained(src)
    official.save_pretrained(model, str(tmp_path / "out"), source=src)
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "generation_config.json", "model.safetensors"]
    assert "notes.md" in os.listdir(src)


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        official.save_pretrained(official.from_pretrained(release(tmp_path / "rel")[0]), str(tmp_path / "o"))
    finally:
        os.umask(old)
    assert {f: oct(os.stat(tmp_path / "o" / f).st_mode & 0o777) for f in os.listdir(tmp_path / "o")} == \
        {"config.json": "0o644", "model.safetensors": "0o644"}


# ------------------------------------------------------------------------------------------ nothing blocks


@pytest.mark.parametrize("how", ["resume", "init_from"])
def test_a_fifo_checkpoint_is_one_line_not_a_hang(tmp_path, how):
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / "ckpt.pt")
    c = cfg(tmp_path / "new" if how == "init_from" else run, max_steps=4, warmup_steps=0, decay_steps=0)
    c = {**c, "resume": True} if how == "resume" else {**c, "init_from": str(run / "ckpt.pt")}
    r = run_cli(["train.py", *cli_args(c)], timeout=60)
    one_line_error(r, "FIFO")


def test_a_chat_template_that_loops_or_grows_stops_in_one_line():
    class Enc:
        path, bos_text, eos_text = "rel", "<s>", "</s>"
    for template, why in [
            ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "steps"),
            ("{{ 'x' * 10000000000 }}", "characters"),
            ("{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}", "characters"),
            ("{% for m in messages %}", "does not parse"),
            ("{{ messages[5].content }}", "fails on a conversation"),
            ("{{ messages.append(1) }}", "fails on a conversation .*SecurityError")]:
        Enc.chat_template = template
        t0 = time.time()
        with pytest.raises(ValueError, match=f"the chat template of rel.*{why}"):
            tokenizer.chat_renderer(Enc)([{"role": "user", "content": "hi"}], False)
        assert time.time() - t0 < 20


def test_sigterm_during_an_evaluation_saves_within_seconds(tmp_path):
    # an evaluation of a million batches starts at step 2: the signal's checkpoint does not wait for it
    c = cfg(tmp_path, max_steps=10, eval_interval=2, eval_steps=10 ** 6, warmup_steps=0, decay_steps=0)
    p = subprocess.Popen([sys.executable, "train.py", *cli_args(c)], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        metrics, deadline = tmp_path / "metrics.jsonl", time.time() + 120
        while time.time() < deadline and not (metrics.exists() and '"step": 2' in metrics.read_text()):
            time.sleep(0.05)
        time.sleep(1)
        t0 = time.time()
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 128 + signal.SIGTERM and time.time() - t0 < 15, err[-2000:]
    assert checkpoint.load_checkpoint(str(tmp_path / "ckpt.pt"))["step"] == 2


def test_ranks_with_different_configs_stop_in_one_line(tmp_path):
    conf = tmp_path / "per_node.py"
    conf.write_text("import os\nmax_steps = 4 + int(os.environ['RANK'])\n")
    c = cfg(tmp_path / "run", warmup_steps=0, decay_steps=0)
    c.pop("max_steps")
    p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "train.py", str(conf), *cli_args(c)], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=180)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)  # (the ranks too, if they hung)
    assert p.returncode != 0 and "rank 1 runs another config than rank 0 (differing keys: max_steps)" in err


# ------------------------------------------------------------------------------------------ data and weights


def test_two_preparations_of_one_directory_cannot_mix(tmp_path):
    out = tmp_path / "data"
    hold = subprocess.Popen([sys.executable, "-c", "import sys, time, files\nwith files.locked(sys.argv[1], "
                             "ValueError):\n    print('held', flush=True); time.sleep(60)", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert hold.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match="is being prepared by another process"):
            corpus.prepare(str(out), ["some text " * 50])
    finally:
        hold.kill()
        hold.wait()
    assert not (out / "meta.json").exists()
    corpus.prepare(str(out), ["some text " * 50])
    assert corpus.TokenData(str(out)).meta["train_tokens"] > 0


@pytest.mark.parametrize("fraction", ["1", "-0.5", "nan"])
def test_a_val_fraction_outside_zero_one_is_one_line(tmp_path, fraction):
    (tmp_path / "a.txt").write_text("text " * 100)
    one_line_error(run_cli(["corpus.py", "--input", str(tmp_path / "a.txt"), "--out", str(tmp_path / "d"),
                            "--val_fraction", fraction]), "val_fraction")


def sharded(tmp_path, weight_map):
    src, state = release(tmp_path / "rel")
    from safetensors.torch import save_file
    os.remove(os.path.join(src, "pytorch_model.bin"))
    keys = sorted(state)
    save_file({k: state[k] for k in keys[:2]}, os.path.join(src, "a.safetensors"))
    save_file({k: state[k] for k in keys}, os.path.join(src, "b.safetensors"))
    with open(os.path.join(src, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": weight_map(keys)}, f)
    return src


def test_a_sharded_index_is_checked_not_trusted(tmp_path):
    # a key in two shards: the one the index does not name must not silently win
    src = sharded(tmp_path / "dup", lambda keys: {k: "a.safetensors" if i < 2 else "b.safetensors"
                                                  for i, k in enumerate(keys)})
    with pytest.raises(ValueError, match="b.safetensors holds .* which the index puts in a.safetensors"):
        official.from_pretrained(src)
    for shard in ("../../../../etc/passwd", "/etc/passwd"):
        src = sharded(tmp_path / str(len(shard)), lambda keys: {k: shard for k in keys})
        with pytest.raises(ValueError, match="not a file name in its directory"):
            official.from_pretrained(src)


@pytest.mark.parametrize("bad", ["nan", "inf", "int8"])
def test_released_weights_that_are_not_finite_floats_are_refused(tmp_path, bad):
    src, state = release(tmp_path / "rel")
    k = "model.norm.weight"
    state[k] = state[k].to(torch.int8) if bad == "int8" else state[k] * float(bad)
    torch.save(state, os.path.join(src, "pytorch_model.bin"))
    with pytest.raises(checkpoint.CheckpointError, match="model.norm.weight (holds NaN or inf|is int8)"):
        checkpoint.model_from_checkpoint(src)


# ------------------------------------------------------------------------------------------ errors by errno


@pytest.mark.parametrize("code, advice", [(errno.ENOSPC, "free space"), (errno.ENOTDIR, "a file stands where"),
                                          (errno.ELOOP, "symbolic link"), (errno.ENAMETOOLONG, "too long"),
                                          (errno.EMFILE, "too many open files"), (errno.EFBIG, "ulimit -f")])
def test_the_advice_fits_the_errno(code, advice):
    assert advice in files.fix_for(OSError(code, os.strerror(code)), "/run/x")


def test_a_file_where_the_out_dir_should_be_is_not_a_full_disk(tmp_path):
    (tmp_path / "f").write_text("x")
    r = run_cli(["train.py", *cli_args(cfg(tmp_path / "f" / "run", max_steps=2, warmup_steps=0, decay_steps=0))])
    err = one_line_error(r, "a file stands where")
    assert "free space" not in err


def test_a_seed_too_large_for_torch_is_one_line():
    with pytest.raises(train.ConfigError, match="seed=18446744073709551616 is too large"):
        train.get_config([f"--seed={2 ** 64}"])


def test_a_dpo_run_of_a_billion_steps_draws_no_list_of_them():
    t0 = time.time()
    assert dpo.pairs_drawn(dict(seed=1, max_steps=10 ** 9), 50, 16).tolist() == list(range(50))
    assert time.time() - t0 < 10


# ------------------------------------------------------------------------------------------ a newcomer's path


def test_export_help_and_a_llama_export_from_the_command_line(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    a_run(tmp_path / "run")
    train.main(["export", "--help"])
    assert "--format=llama" in capsys.readouterr().out
    train.main(["export", str(tmp_path / "run"), str(tmp_path / "llama"), "--format=llama"])
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "llama")).eval()
    ours = checkpoint.model_from_checkpoint(str(tmp_path / "run")).model
    x = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours(x)[0], rtol=1e-4, atol=1e-4)


def test_eval_states_its_sampling_error_and_refuses_a_bad_length(tmp_path):
    a_run(tmp_path / "run")
    r = run_cli(["eval.py", f"--out_dir={tmp_path / 'run'}", "--seq_len=-5"])
    one_line_error(r, "--seq_len=-5 must be within [1,")
    r = run_cli(["eval.py", f"--out_dir={tmp_path / 'run'}", "--windows=16", "--tasks=0", "--passkey_lengths=128",
                 "--passkey_trials=1"], timeout=300)
    assert r.returncode == 0 and "+- " in r.stdout and "(95%, 16 windows" in r.stdout, r.stderr[-2000:]


def test_a_tiny_temperature_samples_the_top_token():
    m = checkpoint.MiniCPM(checkpoint.MiniCPMConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                                    num_hidden_layers=1, num_attention_heads=2))
    x = torch.randint(0, 64, (1, 4))
    torch.manual_seed(0)
    assert torch.equal(m.generate(x, 5, temperature=1e-30, top_k=None), m.generate(x, 5, temperature=0))


# ------------------------------------------------------------------------------------------ files that are JSON


def test_metrics_rows_that_are_not_objects_or_nest_too_deeply_are_one_line(tmp_path):
    c = a_run(tmp_path, max_steps=6)
    (tmp_path / "ckpt.pt").write_bytes((tmp_path / "ckpt_000004.pt").read_bytes())
    good = (tmp_path / "metrics.jsonl").read_text()
    for bad, message in (("[1, 2]", "is a JSON list, not a row object"), ("[" * 100000 + "]" * 100000, "too deeply")):
        (tmp_path / "metrics.jsonl").write_text(bad + "\n" + good)
        with pytest.raises(checkpoint.CheckpointError, match=f"metrics.jsonl:1 .*{message}"):
            train.train({**c, "resume": True}, quiet=True)


def test_a_deeply_nested_sft_row_is_one_line(tmp_path):
    f = tmp_path / "sft.jsonl"
    f.write_text('{"prompt": "a", "response": "b"}\n' + '{"prompt": ' + "[" * 100000 + "]" * 100000 + "}\n")
    with pytest.raises(ValueError, match="sft.jsonl:2 is JSON nested too deeply"):
        corpus.read_jsonl_rows(str(f), "chat")


@pytest.mark.parametrize("ledger", ["{}", "[]", '{"x": {"id": "x"}}', "{"])
def test_report_refuses_a_ledger_that_is_not_one_and_rewrites_nothing(tmp_path, monkeypatch, ledger):
    import report
    from experiments import findings
    (tmp_path / "findings.json").write_text(ledger)
    monkeypatch.setattr(findings, "FILE", str(tmp_path / "findings.json"))
    docs = {doc: open(doc).read() for doc in report.DOCS}
    with pytest.raises(SystemExit) as e:
        report.main([])
    assert e.value.code == 2 and {doc: open(doc).read() for doc in report.DOCS} == docs


def test_plots_draws_a_run_whose_last_line_is_torn(tmp_path, capsys):
    import plots
    a_run(tmp_path)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "train_lo')
    (tmp_path / "loss.png").unlink()
    plots.main([str(tmp_path)])
    assert "torn last line left out" in capsys.readouterr().out and (tmp_path / "loss.png").exists()


@pytest.mark.parametrize("name, text, message", [
    ("tokenizer_config.json", '{"chat_template": 5}', "chat_template is a JSON int"),
    ("tokenizer_config.json", '{"eos_token": ["</s>"]}', "eos_token is a JSON list"),
    ("tokenizer_config.json", '{"add_bos_token": "yes"}', "add_bos_token must be true or false"),
    ("tiktoken.json", "[1, 2]", "must be an object naming the encoding")])
def test_tokenizer_files_of_odd_types_are_one_line(tmp_path, name, text, message):
    a_run(tmp_path / "run")
    checkpoint.export_checkpoint(str(tmp_path / "run"), str(tmp_path / "exp"))
    if name == "tokenizer_config.json":  # a tokenizer of its own (not byte for byte ours): read from the directory
        spec = json.loads((tmp_path / "exp" / "tokenizer.json").read_text())
        (tmp_path / "exp" / "tokenizer.json").write_text(json.dumps({**spec, "truncation": {"max_length": 512}}))
    (tmp_path / "exp" / name).write_text(text)
    r = run_cli(["sample.py", f"--model_dir={tmp_path / 'exp'}", "--max_new_tokens=2", "--num_samples=1"])
    one_line_error(r, message)


def test_a_batch_that_cannot_fit_in_memory_is_refused_before_it_is_allocated(tmp_path):
    r = run_cli(["train.py", *cli_args(cfg(tmp_path, batch_size=10 ** 6, seq_len=256, warmup_steps=0,
                                           decay_steps=0))], timeout=120)
    one_line_error(r, "a training step of batch_size=1000000 rows x seq_len=256 tokens needs at least",
                   "raise grad_accum")
    assert not (tmp_path / "metrics.jsonl").exists()


# ------------------------------------------------------------------------------------------ signals outside the loop


def test_ctrl_c_outside_a_loop_is_one_line_and_130():
    # (SIGINT at its default in the child, as under a terminal: a shell's background job inherits it ignored)
    r = subprocess.run([sys.executable, "-c", "import os, signal, time, configurator\nconfigurator.exit_on_user_error("
                        "lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(30)))"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert r.returncode == 130 and r.stderr.strip() == "stopped by Ctrl-C", r.stderr


def test_a_reader_that_closes_stdout_early_gets_no_traceback():
    # python report.py | head: the pipe closes while the command still prints
    p = subprocess.Popen([sys.executable, "-c", "import configurator\nconfigurator.exit_on_user_error("
                          "lambda: [print('x' * 100) for _ in range(10 ** 6)])"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdout.read(10)
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=60) == 1 and err == "", err


def test_sigterm_during_the_end_of_run_sample_leaves_a_finished_run(tmp_path):
    # the summary and figure of a finished run come before its sample: a signal during the sample costs only it
    c = cfg(tmp_path, max_steps=2, warmup_steps=0, decay_steps=0, sample_tokens=10 ** 5,
            max_position_embeddings=10 ** 5)
    p = subprocess.Popen([sys.executable, "train.py", *cli_args(c)], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (tmp_path / "summary.json").exists():
            time.sleep(0.05)
        time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == -signal.SIGTERM  # (after the loop: the default action, as any program)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["step"] == 2 and summary["sample"] is None and (tmp_path / "loss.png").exists()


@pytest.mark.parametrize("script", ["sample.py", "eval.py"])
def test_an_uncached_bpe_offline_is_one_line(tmp_path, script):
    # the export names tiktoken's gpt2, nothing is cached, and the download is refused (a proxy that refuses)
    a_run(tmp_path / "run")
    checkpoint.export_checkpoint(str(tmp_path / "run"), str(tmp_path / "exp"))
    (tmp_path / "exp" / "tiktoken.json").write_text('{"tiktoken_encoding": "gpt2"}')
    offline = dict(TIKTOKEN_CACHE_DIR=str(tmp_path / "empty"), HTTPS_PROXY="http://127.0.0.1:9",
                   HTTP_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9")
    one_line_error(run_cli([script, f"--model_dir={tmp_path / 'exp'}"], env_extra=offline, timeout=120),
                   "tiktoken BPE 'gpt2' is not cached and could not be downloaded")

"""Two-stage decay data, SFT and DPO (dpo.py, corpus.py's chat data, train.py's decay_data)."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import checkpoint
import corpus
import tokenizer
import dpo
import tasks
import train
from experiments import preference, two_stage
from model import MiniCPM, MiniCPMConfig
from conftest import ROOT, assert_same_losses, cfg, cli_args, dpo_run, rows, run_cli


# ------------------------------------------------------------------------------------------ the DPO loss


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5, 2.0])
def test_dpo_loss_is_the_formula(beta):
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6, generator=g, dtype=torch.float64) * 5 for _ in range(4))
    losses, cr, rj = dpo.dpo_loss(pc, pr, rc, rr, beta)
    for i in range(6):
        z = beta * ((pc[i] - rc[i]) - (pr[i] - rr[i])).item()
        assert losses[i].item() == pytest.approx(math.log(1 + math.exp(-z)), rel=1e-12)
        assert cr[i].item() == pytest.approx(beta * (pc[i] - rc[i]).item())
        assert rj[i].item() == pytest.approx(beta * (pr[i] - rr[i]).item())


def test_dpo_loss_is_log2_at_init_and_its_gradient_signs():
    pc, pr = torch.tensor([-3.0, -7.0], requires_grad=True), torch.tensor([-4.0, -2.0], requires_grad=True)
    losses, cr, rj = dpo.dpo_loss(pc, pr, pc.detach(), pr.detach(), 0.1)
    assert torch.allclose(losses, torch.full((2,), math.log(2))) and not cr.any() and not rj.any()
    losses.sum().backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()  # raise the chosen, lower the rejected
    assert torch.allclose(pc.grad, torch.full((2,), -0.05))  # -beta * sigmoid(0)


def test_sequence_logps_sums_response_tokens_only():
    torch.manual_seed(0)
    m = MiniCPM(MiniCPMConfig.from_preset("tiny", hidden_size=64, num_hidden_layers=2)).eval()
    enc = tokenizer.get_encoding("bytes")
    rows_ = [dict(prompt="What is 2 plus 2?", chosen="4", rejected="5"),
             dict(prompt="Write in capitals: cat", chosen="CAT", rejected="cat")]
    cw, cl, rw, rl = dpo.encode_pairs(enc, rows_, 48)
    got = dpo.sequence_logps(m, cw, cl)
    for i, r in enumerate(rows_):  # reference: the model on each growing prefix, token by token
        ids, labels = tokenizer.chat_ids(enc, [("user", r["prompt"]), ("assistant", r["chosen"])])
        assert labels.count(-100) == len(tokenizer.chat_ids(enc, [("user", r["prompt"])])[0])
        ref = 0.0
        for t in range(1, len(ids)):
            if labels[t] != -100:
                logits = m(torch.tensor([ids[:t]]))[0][0, -1].double()
                ref += torch.log_softmax(logits, -1)[ids[t]].item()
        assert got[i].item() == pytest.approx(ref, abs=1e-4)
    assert cl[0, -1] == -100 and cw[0, -1] == enc.eot_token  # padding: eot, not scored


def test_held_out_pair_metrics_are_the_loss_over_every_pair():
    # dpo.evaluate_pairs (the experiment's DPO tuning score): over batches, the mean of the per-pair loss, the
    # reward accuracy and margin, and the policy's log-probs, each from sequence_logps on the whole set at once
    torch.manual_seed(0)
    ref = MiniCPM(MiniCPMConfig.from_preset("tiny", hidden_size=64, num_hidden_layers=2)).eval()
    policy = MiniCPM(MiniCPMConfig.from_preset("tiny", hidden_size=64, num_hidden_layers=2)).eval()
    enc = tokenizer.get_encoding("bytes")
    rows_ = [dict(prompt=f"Write in capitals: w{i}", chosen=f"W{i}", rejected=f"w{i}") for i in range(5)]
    pairs = dpo.encode_pairs(enc, rows_, 48)
    got = dpo.evaluate_pairs(policy, ref, pairs, 0.5, torch.device("cpu"), batch=2)  # batches of 2, 2, 1
    with torch.no_grad():
        pc, pr, rc, rr = (dpo.sequence_logps(m, pairs[i], pairs[i + 1]) for m, i in
                          ((policy, 0), (policy, 2), (ref, 0), (ref, 2)))
    z = 0.5 * ((pc - rc) - (pr - rr))
    assert got["eval_loss"] == pytest.approx(torch.nn.functional.softplus(-z).mean().item(), rel=1e-5)
    assert got["eval_rewards/margins"] == pytest.approx(z.mean().item(), rel=1e-5)
    assert got["eval_rewards/accuracies"] == (z > 0).float().mean().item()
    assert got["eval_logps/chosen"] == pytest.approx(pc.mean().item(), rel=1e-5)
    assert got["eval_logps/rejected"] == pytest.approx(pr.mean().item(), rel=1e-5)
    same = dpo.evaluate_pairs(ref, ref, pairs, 0.5, torch.device("cpu"))  # the reference against itself: log 2
    assert same["eval_loss"] == pytest.approx(math.log(2)) and same["eval_rewards/accuracies"] == 0


# ------------------------------------------------------------------------------------------ SFT data


def write(path, lines):
    path.write_text("".join(lines))
    return str(path)


def test_sft_rows_mask_the_prompt_and_padding(tmp_path):
    f = write(tmp_path / "s.jsonl", [json.dumps(dict(prompt=f"p{i}", response=f"answer {i}")) + "\n"
                                     for i in range(20)])
    d = corpus.SFTData(f)
    x, y = d.batch("train", 0, 0, 4, 32)
    enc = d.encoding()
    for xi, yi in zip(x.tolist(), y.tolist()):
        text = enc.decode([t for t in xi if t != enc.eot_token])
        prompt, resp = text.split(tokenizer.ASSISTANT)
        kept = [t for t in yi if t != -100]
        assert enc.decode(kept[:-1]) == resp and kept[-1] == enc.eot_token  # response + its end, nothing else
        assert yi[:len(enc.encode_ordinary(prompt + tokenizer.ASSISTANT)) - 1] == [-100] * (
            len(enc.encode_ordinary(prompt + tokenizer.ASSISTANT)) - 1)
    assert len(d.split["val"]) == 2 and len(d.split["train"]) == 18  # every 10th example is validation
    msgs = write(tmp_path / "m.jsonl", [json.dumps(dict(messages=[
        dict(role="user", content="hi"), dict(role="assistant", content="yo"), dict(role="user", content="again"),
        dict(role="assistant", content="ok")])) + "\n"])
    ids, labels = tokenizer.chat_ids(enc, corpus.read_jsonl_rows(msgs, "chat")[0]["turns"])
    assert enc.decode([t for t in labels if t not in (-100, enc.eot_token)]) == " yo ok"


@pytest.mark.parametrize("line, msg", [
    ('{"prompt": "a"}', "line_2.*'response' is missing"),
    ('{"prompt": "a", "response": "  "}', "'response' is empty"),
    ('{"prompt": "a", "response": ', "not valid JSON"),
    ('["a", "b"]', "expected a JSON object"),
    ('{"messages": [{"role": "user", "content": "a"}]}', "last message must be the assistant"),
    ('{"messages": [{"role": "bot", "content": "a"}]}', r"messages\[0\] needs role"),
])
def test_malformed_sft_rows_name_their_line(tmp_path, line, msg):
    f = write(tmp_path / "bad.jsonl", ['{"prompt": "ok", "response": "fine"}\n', line + "\n"])
    with pytest.raises(ValueError, match=msg.replace("line_2", "bad.jsonl:2")):
        corpus.read_jsonl_rows(f, "chat")
    with pytest.raises(ValueError, match="bad.jsonl:2: field 'rejected' is missing"):
        bad = write(tmp_path / "bad.jsonl", ['{"prompt": "a", "chosen": "b", "rejected": "c"}\n',
                                             '{"prompt": "a", "chosen": "b"}\n'])
        corpus.read_jsonl_rows(bad, ("prompt", "chosen", "rejected"))
    with pytest.raises(SystemExit):  # the CLI: one line, no traceback
        train.main([f"--data={f}", "--out_dir=", "--max_steps=2", "--decay_steps=0", "--warmup_steps=0"])


def test_sft_loss_is_the_mean_over_response_tokens_for_any_batch_split(tmp_path):
    data = tasks.write_task_data(str(tmp_path / "tasks"), 200, 20)
    c = dict(data=data["sft_train"], seq_len=64, max_steps=6, decay_steps=0, warmup_steps=0, eval_interval=6)
    a = train.train(cfg(tmp_path / "a", **c, batch_size=8), quiet=True)
    b = train.train(cfg(tmp_path / "b", **c, batch_size=2, grad_accum=4), quiet=True)
    assert_same_losses(b["train_loss"], a["train_loss"])
    # step 1's loss is the token mean over the global batch's response tokens (the fresh model, same init)
    torch.manual_seed(train.default_config()["seed"])
    m = MiniCPM(train.model_config(train.validate_config({**train.default_config(), **cfg(tmp_path, **c)})))
    x, y = corpus.load_data(data["sft_train"]).batch("train", 1337, 0, 8, 64)
    ref = F.cross_entropy(m(x)[0].flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum") / (y != -100).sum()
    assert a["train_loss"][0] == pytest.approx(ref.item(), rel=2e-6)


def test_decay_phase_switches_data_at_T(tmp_path):
    data = tasks.write_task_data(str(tmp_path / "tasks"), 200, 20)
    mix = f"embedded:0.5,{data['sft_train']}:0.5"
    res = train.train(cfg(tmp_path / "r", max_steps=10, decay_steps=4, warmup_steps=1, decay_data=mix,
                          seq_len=64), quiet=True)
    switch = [r for r in rows(tmp_path / "r") if "data_switch" in r]
    assert switch == [dict(step=6, data_switch=mix, weights=[0.5, 0.5])]  # T = S - decay_steps
    md = corpus.MixtureData(mix)
    kinds = []
    for step in range(40):
        x, y = md.batch("train", 1, step, 16, 64)
        kinds += [bool((r == -100).any()) for r in y]  # SFT rows carry masked prompts
        for lo, hi in ((0, 5), (5, 11), (11, 16)):  # a process's rows, read alone, are those of the global batch
            xr, yr = md.batch("train", 1, step, 16, 64, rows=slice(lo, hi))
            assert torch.equal(xr, x[lo:hi]) and torch.equal(yr, y[lo:hi])
    assert 0.35 < np.mean(kinds) < 0.65
    no_mix = train.train(cfg(tmp_path / "n", max_steps=10, decay_steps=4, warmup_steps=1, seq_len=64), quiet=True)
    assert res["train_loss"][:6] == no_mix["train_loss"][:6] and res["train_loss"][6:] != no_mix["train_loss"][6:]
    with pytest.raises(train.ConfigError, match="weight 'x' of 'embedded' is not a number"):
        train.train(cfg(tmp_path / "e", decay_data="embedded:x"), quiet=True)
    with pytest.raises(train.ConfigError, match="set decay_steps > 0"):
        train.train(cfg(tmp_path / "e", decay_data=mix, decay_steps=0), quiet=True)


def test_dpo_trains_from_an_sft_checkpoint(tmp_path, monkeypatch):
    data = tasks.write_task_data(str(tmp_path / "tasks"), 200, 20)
    train.train(cfg(tmp_path / "sft", data=data["sft_train"], seq_len=64, max_steps=4, decay_steps=0,
                    warmup_steps=0, eval_interval=4), quiet=True)
    reference_rows, logps = [], dpo.sequence_logps

    def counted(model, input_ids, labels):
        if not torch.is_grad_enabled():
            reference_rows.extend(input_ids.tolist())
        return logps(model, input_ids, labels)
    monkeypatch.setattr(dpo, "sequence_logps", counted)
    res = dpo_run(dict(init_from=str(tmp_path / "sft"), data=data["pref_train"], out_dir=str(tmp_path / "d"),
                       lr=3e-3, max_steps=12, warmup_steps=0, decay_steps=2, batch_size=8, device="cpu"))
    h = res["rows"]
    assert h[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    # the reference log-probs are computed once for each pair the 12 steps x 8 draw (not for all 200 pairs)
    drawn = {int(i) for s in range(12) for i in np.random.default_rng([train.seed, s]).integers(0, 200, 8)}
    assert len(reference_rows) == 2 * len(drawn) < 2 * 96
    monkeypatch.undo()
    assert h[-1]["loss"] < h[0]["loss"] - 0.05 and h[-1]["rewards/margins"] > 0
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
            "logps/rejected"} <= set(rows(tmp_path / "d")[0])
    # like a train.py run: summary.json and loss.png (the DPO loss and reward accuracy, not an empty figure)
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["step"] == 12 and summary["last"]["loss"] == h[-1]["loss"] and summary["hardware"]
    assert os.path.getsize(tmp_path / "d" / "loss.png") > 25_000  # (an empty figure is ~18 KB)
    m = checkpoint.model_from_checkpoint(str(tmp_path / "d")).model
    x = torch.randint(0, 259, (1, 8))
    assert torch.equal(m(x)[0], res["model"](x)[0])
    # under torchrun: 2 processes x 4 pairs log the losses of one process x 8
    r = run_cli(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "dpo.py",
                 f"--init_from={tmp_path / 'sft'}", f"--data={data['pref_train']}", f"--out_dir={tmp_path / 'ddp'}",
                 "--lr=3e-3", "--max_steps=12", "--warmup_steps=0", "--decay_steps=2", "--batch_size=4",
                 "--device=cpu"], timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ddp = [x["loss"] for x in rows(tmp_path / "ddp")]
    np.testing.assert_allclose(ddp[:6], [x["loss"] for x in h[:6]], atol=1e-5)  # (float sums in another order:
    np.testing.assert_allclose(ddp, [x["loss"] for x in h], atol=1e-3)          # the tiny gap grows with lr 3e-3)
    with pytest.raises(train.ConfigError, match="pref_train.jsonl.*tokens > seq_len=8"):
        dpo_run(dict(init_from=str(tmp_path / "sft"), data=data["pref_train"], seq_len=8, device="cpu",
                     out_dir=str(tmp_path / "d2")))


def test_two_stage_and_dpo_experiment_end_to_end(tmp_path):
    s = two_stage.experiment(quick=True, out=str(tmp_path), steps=20)
    # SFT scored after 1, 2, 5 and 10 steps (S_sft / 8 .. S_sft), A-1 also after twice each (the control B-2)
    assert list(s) == ["A-1 decay", "A-2 decay"] + [f"A-1 + SFT {n}" for n in (1, 2, 4, 5, 10, 20)] + \
        [f"A-2 + SFT {n}" for n in (1, 2, 5, 10)] + ["A-2 + SFT + DPO", "dpo"]
    assert s["dpo"]["train"]["loss"][0] == pytest.approx(math.log(2), abs=1e-4)
    for arm, n in (("A-1", 20), ("A-2", 10)):  # SFT lowers the held-out task loss of the decayed model
        assert s[f"{arm} + SFT {n}"]["task_loss"] < s[f"{arm} decay"]["task_loss"]
    assert s["A-1 + SFT 1"] != s["A-1 + SFT 20"]  # each length is its own checkpoint
    a1 = rows(tmp_path / "out-align-a1sft_quick")  # A-1's SFT runs twice as long as A-2's: B-2 at every length
    assert [r["step"] for r in a1 if "train_loss" in r] == list(range(31, 51))
    switch = [r for r in rows(tmp_path / "out-align-a2_quick") if "data_switch" in r]
    assert switch[0]["step"] == 20 and switch[0]["weights"] == [0.7, 0.3]
    summary = json.loads((tmp_path / "results" / "align_summary_quick.json").read_text())
    grid = summary["dpo_grid"]  # the DPO grid on held-out pairs: the chosen config has the best reward accuracy
    assert [(g["lr"], g["beta"]) for g in grid] == [(g["lr"], g["beta"]) for g in two_stage.DPO_GRID]
    best = max(g["held_out"]["eval_rewards/accuracies"] for g in grid)
    assert [g["held_out"]["eval_rewards/accuracies"] for g in grid if (g["lr"], g["beta"]) ==
            (s["dpo"]["lr"], s["dpo"]["beta"])] == [best]
    for g in grid:  # the SFT model's log-probs on the tuning pairs are the DPO reference's: the same in every row
        assert g["held_out"]["sft_logps/chosen"] == pytest.approx(grid[0]["held_out"]["sft_logps/chosen"])
    assert os.path.isfile(tmp_path / "assets" / "align_quick.png")


def test_dpo_runs_like_any_run_locked_refusing_a_run_and_resumed_after_sigterm(tmp_path, one_thread):
    # DPO trains through train.py's machinery: the out_dir lock, the refusal of an out_dir holding a run, metrics
    # through checkpoint.py, a checkpoint on SIGTERM (a real signal) and --resume=True continuing exactly
    data = tasks.write_task_data(str(tmp_path / "tasks"), 200, 20)
    train.train(cfg(tmp_path / "sft", data=data["sft_train"], seq_len=64, max_steps=4, decay_steps=0,
                    warmup_steps=0, eval_interval=4), quiet=True)
    c = dict(init_from=str(tmp_path / "sft"), data=data["pref_train"], lr=3e-3, max_steps=24, batch_size=8,
             device="cpu", ckpt_interval=1000)
    full = dpo_run(dict(c, out_dir=str(tmp_path / "full")))["rows"]
    cut = tmp_path / "cut"
    p = subprocess.Popen([sys.executable, "dpo.py", *cli_args(dict(c, out_dir=str(cut)))], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and (not (cut / "metrics.jsonl").exists() or
                                      len((cut / "metrics.jsonl").read_text().splitlines()) < 3):
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM and "stopped by signal" in out, err[-2000:]
    stopped = torch.load(cut / "ckpt.pt", weights_only=True)["step"]
    assert 3 <= stopped < 24, "the run was not interrupted"
    # a fresh DPO run into it is refused, and nothing of the run is touched
    before = (cut / "metrics.jsonl").read_text()
    with pytest.raises(train.ConfigError, match="holds a run .*continue it with --resume=True"):
        dpo_run(dict(c, out_dir=str(cut)))
    assert (cut / "metrics.jsonl").read_text() == before
    with pytest.raises(checkpoint.CheckpointError, match="another config; differing keys: beta"):
        dpo_run(dict(c, out_dir=str(cut), resume=True, beta=0.5), quiet=True)
    res = dpo_run(dict(c, out_dir=str(cut), resume=True), quiet=True)
    assert res["step"] == 24 and [r["step"] for r in rows(cut)] == list(range(1, 25))
    assert [r["loss"] for r in rows(cut)] == [r["loss"] for r in full]  # one thread in both: the same bits
    m = checkpoint.model_from_checkpoint(str(cut))[0]
    x = torch.randint(0, 259, (1, 8))
    assert torch.equal(m(x)[0], res["model"](x)[0])


@pytest.mark.parametrize("arg, message", [
    ("--grad_clip=-1", "grad_clip=-1.0 must be >= 0 (a negative clip would turn descent into ascent)"),
    ("--weight_decay=-1", "weight_decay=-1.0 must be >= 0"),
    ("--lr=nan", "lr=nan must be a finite number"),
    ("--beta=0", "beta=0.0 must be > 0"),
    ("--resume=maybe", "resume='maybe' has type str, expected bool")])
def test_dpo_refuses_bad_numbers_in_one_line(capsys, arg, message):
    with pytest.raises(SystemExit) as e:
        dpo.main(["--init_from=x", "--data=y", arg])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err, err


def test_a_pair_without_a_preference_is_refused(tmp_path):
    data = tasks.write_task_data(str(tmp_path / "tasks"), 40, 10)
    train.train(cfg(tmp_path / "sft", data=data["sft_train"], seq_len=64, max_steps=2, decay_steps=0,
                    warmup_steps=0), quiet=True)
    pref = tmp_path / "pref.jsonl"
    pref.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
                    '{"prompt": "a", "chosen": "b", "rejected": "b"}\n')
    with pytest.raises(train.ConfigError, match=r"pref.jsonl line 2: chosen equals rejected \(1 such pair"):
        dpo_run(dict(init_from=str(tmp_path / "sft"), data=str(pref), out_dir=str(tmp_path / "d")))


def test_on_policy_pairs_are_the_models_own_wrong_answers(tmp_path, monkeypatch):
    # experiments/preference.py: each pair's rejected response is the SFT model's own greedy answer, wrong and not
    # empty; the file is one DPO can train on
    data = tasks.write_task_data(str(tmp_path / "tasks"), 40, 10)
    # (near its random init, so that its answers are wrong and mostly not empty)
    train.train(cfg(tmp_path / "sft", data=data["sft_train"], seq_len=64, max_steps=1, decay_steps=0,
                    warmup_steps=0, lr=1e-6), quiet=True)
    model = checkpoint.model_from_checkpoint(str(tmp_path / "sft" / "ckpt.pt")).model
    monkeypatch.setitem(preference.DESIGN, "pair_prompts", 24)
    enc = tokenizer.get_encoding("bytes")
    path, n, match = preference.on_policy_pairs(model, enc, str(tmp_path), "7")
    prompts = tasks.task_examples("train", 24, seed=preference.DESIGN["pair_seed"])
    answers = dict(zip((r["prompt"] for r in prompts), tasks.task_answers(model, enc, prompts)))
    pairs = [json.loads(line) for line in open(path)]
    assert path.endswith("pairs-7.jsonl") and n == len(pairs) > 0
    assert all(p["rejected"] == answers[p["prompt"]] != p["chosen"] and p["rejected"] for p in pairs)
    assert match == sum(answers[r["prompt"]] == r["response"] for r in prompts) / 24
    dpo_run(dict(init_from=str(tmp_path / "sft"), data=path, out_dir=str(tmp_path / "d"), max_steps=1,
                 batch_size=2))
    assert os.path.isfile(tmp_path / "d" / "ckpt.pt")

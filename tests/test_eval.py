"""eval.py: bits per byte on held-out sets (equal to an independent computation, and the same for a run and its
export), passkey retrieval by length and depth, the offline tasks' score, written as JSON; bad input in one line."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

import checkpoint
import corpus
import eval as evaluation
import train
from conftest import cfg
from official import save_pretrained
from model import MiniCPM, MiniCPMConfig

ARGS = ["--windows=8", "--seq_len=32", "--passkey_lengths=96", "--passkey_trials=2", "--tasks=12"]


def test_eval_scores_a_run_and_its_export_alike(tmp_path, capsys):
    train.train(cfg(tmp_path / "run", max_steps=6, warmup_steps=0, decay_steps=1, max_position_embeddings=128),
                quiet=True)
    evaluation.main([f"--out_dir={tmp_path / 'run'}", "--data=embedded", *ARGS])
    got = json.loads((tmp_path / "run" / "eval.json").read_text())
    # independent: the same 8 validation windows through the model and cross-entropy by hand
    model = checkpoint.model_from_checkpoint(str(tmp_path / "run")).model
    data = corpus.TokenData("embedded")
    x, y = data.batch("val", 0, 0, 8, 32)
    with torch.no_grad():
        loss = F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()).item()
    assert got["loss"]["embedded"] == pytest.approx(loss, rel=1e-6)
    assert got["bits_per_byte"]["embedded"] == pytest.approx(loss / math.log(2) / data.meta["bytes_per_token"])
    assert set(got["passkey"]) == {"96"} and len(got["passkey"]["96"]["by_depth"]) == 5
    assert 0 <= got["passkey"]["96"]["mean"] <= 1 and {"caps", "next", "repeat", "all", "chars"} == set(got["tasks"])
    assert got["hardware"] and "bits per byte on embedded" in capsys.readouterr().out
    # the export carries the byte-level tokenizer: the same numbers from the official directory
    checkpoint.export_checkpoint(str(tmp_path / "run"), str(tmp_path / "official"))
    evaluation.main([f"--model_dir={tmp_path / 'official'}", "--data=embedded", *ARGS,
                     f"--json={tmp_path / 'o.json'}"])
    exported = json.loads((tmp_path / "o.json").read_text())
    assert exported["bits_per_byte"]["embedded"] == pytest.approx(got["bits_per_byte"]["embedded"], rel=1e-5)
    assert exported["tasks"] == got["tasks"] and exported["passkey"] == got["passkey"]


def test_eval_refuses_data_of_another_tokenizer_in_one_line(tmp_path, cli):
    save_pretrained(MiniCPM(MiniCPMConfig(vocab_size=320)), tmp_path / "foreign")  # no tokenizer at all
    cli(evaluation.main, [f"--model_dir={tmp_path / 'foreign'}"], "carries no tokenizer", "tokenizer files")
    train.train(cfg(tmp_path / "run", max_steps=2, warmup_steps=0, decay_steps=0), quiet=True)
    cli(evaluation.main, [f"--out_dir={tmp_path / 'run'}", "--windows=0"], "--windows=0 must be >= 1")
    cli(evaluation.main, [f"--out_dir={tmp_path / 'missing'}"], "does not exist")

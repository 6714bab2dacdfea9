import json
import os
import subprocess
import sys

import pytest
import torch

import sample
import train
from conftest import cfg, one_line_error
from model import MiniCPM, MiniCPMConfig
from official import save_pretrained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args):
    return subprocess.run([sys.executable, "sample.py", *args], cwd=ROOT, capture_output=True, text=True)


def test_sample_from_out_dir(tmp_path):
    train.train(cfg(tmp_path, max_steps=3, decay_steps=1, warmup_steps=1, eval_interval=3), quiet=True)
    r = run([f"--out_dir={tmp_path}", "--prompt=Hello", "--max_new_tokens=20", "--num_samples=2"])
    assert r.returncode == 0, r.stderr
    outs = [s for s in r.stdout.split("-" * 80 + "\n") if s.strip()]
    assert len(outs) == 2 and all(o.startswith("Hello") for o in outs)
    model, encode, decode, eos = sample.load(out_dir=str(tmp_path))
    assert decode(encode("abc")) == "abc" and eos == 256


def test_sample_errors_are_one_line(tmp_path, capsys):
    r = run([f"--out_dir={tmp_path}"])  # the command line itself, once: nothing else reaches stderr
    assert r.returncode == 2 and r.stderr.strip() == f"error: {tmp_path} holds no checkpoint (ckpt.pt or ckpt_dcp/): " \
                                                     f"train into it first (python train.py --out_dir={tmp_path})"

    def error(argv):  # sample.main in this process: the same exit_on_user_error path, without a 5 s start-up
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            sample.main(argv)
        assert e.value.code == 2
        return capsys.readouterr().err.strip()
    save_pretrained(MiniCPM(MiniCPMConfig()), tmp_path)
    assert error([f"--model_dir={tmp_path}"]) == (f"error: no tokenizer in {tmp_path} (tokenizer.json, tokenizer.model "
                                                  f"or tiktoken.json): copy the checkpoint's tokenizer files into it")
    (tmp_path / "tokenizer.model").write_bytes(b"")
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        assert error([f"--model_dir={tmp_path}"]) == f"error: {tmp_path}/tokenizer.model needs the optional " \
                                                      f"package: pip install sentencepiece"
    else:  # a file that is not a tokenizer: one line
        assert error([f"--model_dir={tmp_path}"]).startswith(f"error: {tmp_path}/tokenizer.model could not be read")


def test_sample_from_official_directory_with_tokenizer_json(tmp_path):
    tokenizers = pytest.importorskip("tokenizers", reason="optional: tokenizers is not installed")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate("the cat sat on a mat".split())}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.decoder = tokenizers.decoders.WordPiece()
    tok.save(str(tmp_path / "tokenizer.json"))
    torch.manual_seed(0)
    save_pretrained(MiniCPM(MiniCPMConfig(vocab_size=len(vocab))), tmp_path)
    model, encode, decode, eos = sample.load(model_dir=str(tmp_path))
    assert encode("the cat") == [3, 4] and eos == 2 and decode([3, 4]) == "the cat"
    r = run([f"--model_dir={tmp_path}", "--prompt=the cat", "--max_new_tokens=5", "--num_samples=1", "--top_k=1"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("the cat")
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["MiniCPMForCausalLM"]


@pytest.mark.parametrize("flag, message", [
    ("--top_k=-3", "--top_k=-3 must be >= 0"), ("--temperature=-1", "--temperature=-1.0 must be a finite number >= 0"),
    ("--temperature=nan", "--temperature=nan must be a finite number"), ("--max_new_tokens=-1", "must be >= 1"),
    ("--num_samples=0", "--num_samples=0 must be >= 1")])
def test_bad_sampling_flags_are_one_line(tmp_path, capsys, flag, message):
    with pytest.raises(SystemExit) as e:
        sample.main([f"--out_dir={tmp_path}", flag])  # refused before any checkpoint is read
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_top_k_0_a_long_prompt_and_a_stray_byte(tmp_path, capsys, cli):
    train.train(cfg(tmp_path, max_steps=2, decay_steps=0, warmup_steps=0, max_position_embeddings=64), quiet=True)
    sample.main([f"--out_dir={tmp_path}", "--top_k=0", "--max_new_tokens=5", "--num_samples=1"])  # 0: every token
    assert capsys.readouterr().out.startswith("The ")
    cli(sample.main, [f"--out_dir={tmp_path}", "--prompt=" + "x" * 64], "the prompt is 64 tokens and the model "
        "supports 64")
    r = subprocess.run([sys.executable, "sample.py", f"--out_dir={tmp_path}".encode(), b"--prompt=a\xffb"], cwd=ROOT,
                       capture_output=True, text=True)
    one_line_error(r, "--prompt is not valid UTF-8")

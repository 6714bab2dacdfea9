"""Helpers shared by several test files (imported as `from conftest import cfg, ...`) and fixtures."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import checkpoint  # noqa: E402
import dpo  # noqa: E402
import train  # noqa: E402

# a 2-layer width-64 model that trains 12 steps in about a second on a 2-core CPU
TINY = dict(preset="tiny", hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            intermediate_size=128, seq_len=32, batch_size=8, max_steps=12, warmup_steps=2, decay_steps=3,
            eval_interval=6, eval_steps=2, ckpt_interval=100, sample_tokens=0, device="cpu", lr=0.01)


def cfg(tmp_path, **kw):
    """A train.py config of the TINY run writing into tmp_path, with overrides."""
    return {**TINY, "out_dir": str(tmp_path), **kw}


def dpo_run(cfg, quiet=True):
    """A DPO run in this process: train.py under config/dpo.py's keys, as `python train.py config/dpo.py ...`."""
    return train.train({**train.file_config(dpo.CONFIG), **cfg}, quiet=quiet)


def rows(out_dir):
    return checkpoint.read_jsonl(os.path.join(out_dir, "metrics.jsonl"))


def losses(out_dir):
    return [(r["step"], r["train_loss"]) for r in rows(out_dir) if "train_loss" in r]


def assert_same_losses(got, ref, later=2e-4):
    """Losses of one run computed with another batch split, world size or sharding. Step 1 is the same function of
    the same numbers summed in another order: equal to float32 rounding (<= 2e-7 relative measured; asserted 2e-6).
    Every later step starts from weights that already differ by that rounding, and training amplifies it (SFT at lr
    0.01: up to 7.5e-6 relative after 6 steps, results/batch_split_drift.json from `python bench.py --modes split`;
    2e-5 was seen on another 2-core machine): later steps to `later`, ten times the largest drift seen anywhere; a
    wrong weighting of micro-batches is off by 1e-2 and more."""
    np.testing.assert_allclose(got[:1], ref[:1], rtol=2e-6)
    np.testing.assert_allclose(got[1:], ref[1:], rtol=later)


@pytest.fixture
def one_thread():
    """torch in this process on one thread, as the subprocesses of run_cli run: a run compared bit for bit with one
    in a subprocess then has one process setting (on some CPUs 1 and 2 threads sum in another order)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_cli(args, env_extra=None, **kw):
    """Run `python *args` in the repository as a user would, one thread (2-core CI machines)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, **kw)


def file_bytes(*dirs):
    """{path: bytes} of the files directly in each directory: what a test holds to say nothing there changed."""
    return {os.path.join(d, f): open(os.path.join(d, f), "rb").read() for d in map(str, dirs)
            for f in sorted(os.listdir(d)) if os.path.isfile(os.path.join(d, f))}


def cli_args(c):
    return [f"--{k}={v}" for k, v in c.items()]


def official_dir(tmp_path, cfg, seed=1):
    """An official-format directory written by hand (as the released checkpoints are laid out), random weights."""
    g = torch.Generator().manual_seed(seed)
    d, f, V, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    kv = cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * d // cfg["num_attention_heads"]
    sd = {"model.embed_tokens.weight": torch.randn(V, d, generator=g) * 0.1,
          "model.norm.weight": 1 + 0.1 * torch.randn(d, generator=g)}
    for i in range(L):
        p = f"model.layers.{i}."
        shapes = {"self_attn.q_proj": (d, d), "self_attn.k_proj": (kv, d), "self_attn.v_proj": (kv, d),
                  "self_attn.o_proj": (d, d)}
        if cfg.get("num_experts"):
            shapes["mlp.gate"] = (cfg["num_experts"], d)
            for e in range(cfg["num_experts"]):
                shapes.update({f"mlp.experts.{e}.w1": (f, d), f"mlp.experts.{e}.w3": (f, d),
                               f"mlp.experts.{e}.w2": (d, f)})
        else:
            shapes.update({"mlp.gate_proj": (f, d), "mlp.up_proj": (f, d), "mlp.down_proj": (d, f)})
        for name, shape in shapes.items():
            sd[f"{p}{name}.weight"] = torch.randn(*shape, generator=g) * 0.15
        for n in ("input_layernorm", "post_attention_layernorm"):
            sd[f"{p}{n}.weight"] = 1 + 0.1 * torch.randn(d, generator=g)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return sd


@pytest.fixture
def kept_checkpoints(monkeypatch):
    """{step: bytes} of every checkpoint train.py writes, to restore the state on disk of a run killed later."""
    saved = {}
    real_save = checkpoint.save_checkpoint

    def save_and_keep(path, state):
        real_save(path, state)
        with open(path, "rb") as f:
            saved[state["step"]] = f.read()
    monkeypatch.setattr(train, "save_checkpoint", save_and_keep)
    return saved


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a real tmpfs of `size` (e.g. "4m") under tmp_path, unmounted after the test; the test is skipped,
    saying why, where mounting is refused (not root, no tmpfs). A full disk and a read-only mount for real."""
    mounted = []

    def mount(size, name="disk"):
        d = tmp_path / name
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True,
                           text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'mount refused'}): this fault needs root")
        mounted.append(d)
        return d
    yield mount
    for d in reversed(mounted):
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def read_only(path):
    """Remount a tmpfs of the tmpfs fixture read-only."""
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)


def one_line_error(r, *needles):
    """A CLI failure that ends in exactly one line `error: ...` (after any progress bar), no traceback, exit 2."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and lines and lines[-1].startswith("error: ") and "Traceback" not in r.stderr \
        and sum(line.startswith("error: ") for line in lines) == 1, r.stderr[-2000:]
    err = lines[-1]
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture
def cli(capsys):
    """cli(main, argv, *needles): an entry point's main(argv) run in this process (no interpreter start-up), as
    one_line_error checks a subprocess."""
    def run(main, argv, *needles):
        with pytest.raises(SystemExit) as e:
            main([str(a) for a in argv])
        return one_line_error(subprocess.CompletedProcess(argv, e.value.code, "", capsys.readouterr().err), *needles)
    return run

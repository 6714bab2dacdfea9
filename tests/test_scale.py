"""Scale (issue: FSDP2, DCP checkpoints, token shards): CPU, gloo, torchrun subprocesses."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import checkpoint
import corpus
import tokenizer
import train
from official import from_pretrained
from conftest import assert_same_losses, cfg, cli_args, losses, run_cli


def torchrun(n, c):
    r = run_cli(["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "train.py", *cli_args(c)],
                timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_fsdp_equals_ddp_resumes_dcp_at_world_sizes_1_and_2_and_exports(tmp_path):
    steps = dict(max_steps=10, decay_steps=2, warmup_steps=2, eval_interval=5, ckpt_interval=5)
    ref = train.train(cfg(tmp_path / "ref", **steps), quiet=True)  # one process, 8 rows = DDP 2 x 4 (test_train)
    # FSDP2 over 2 processes, 2 rows x 2 micro-steps each, activation checkpointing: the same 10 losses
    fs = cfg(tmp_path / "fsdp", **steps, fsdp=True, batch_size=2, grad_accum=2, keep_ckpts=True,
             activation_checkpointing=True)
    r = torchrun(2, {**fs, "sample_tokens": 20})  # (the sample is not part of the losses)
    assert "no end-of-run sample under FSDP" in r.stdout and "python sample.py --model_dir=DIR" in r.stdout
    assert_same_losses([v for _, v in losses(tmp_path / "fsdp")], ref["train_loss"])
    dcp_dir = tmp_path / "fsdp" / checkpoint.DCP_DIR
    assert sorted(os.listdir(dcp_dir)) == [".metadata", "__0_0.distcp", "__1_0.distcp", "train_state.json"]
    assert json.loads((dcp_dir / "train_state.json").read_text())["step"] == 10
    # resume the step-5 checkpoint on ONE process (8 rows): steps 6..10 as before
    (tmp_path / "one").mkdir()
    shutil.copytree(tmp_path / "fsdp" / f"{checkpoint.DCP_DIR}_000005", tmp_path / "one" / checkpoint.DCP_DIR)
    torchrun(1, cfg(tmp_path / "one", **{**steps, "ckpt_interval": 2}, fsdp=True, resume=True, keep_ckpts=True))
    np.testing.assert_allclose([v for _, v in losses(tmp_path / "one")], ref["train_loss"][5:], rtol=1e-4, atol=1e-4)
    # and back: the step-8 checkpoint of that one process resumed on TWO processes (4 rows each)
    (tmp_path / "two").mkdir()
    shutil.copytree(tmp_path / "one" / f"{checkpoint.DCP_DIR}_000008", tmp_path / "two" / checkpoint.DCP_DIR)
    torchrun(2, cfg(tmp_path / "two", **steps, fsdp=True, resume=True, batch_size=4))
    np.testing.assert_allclose([v for _, v in losses(tmp_path / "two")], ref["train_loss"][8:], rtol=1e-4, atol=1e-4)
    # a global batch that differs from the checkpoint's is refused with the fix
    with pytest.raises(checkpoint.CheckpointError, match="global batch of 8 rows"):
        train.train(cfg(tmp_path / "ref", **steps, resume=True, batch_size=4), quiet=True)
    # export the sharded checkpoint to the official format: from_pretrained gives the trained function
    train.main(["export", str(dcp_dir), str(tmp_path / "official")])  # in this process: no 5 s start-up
    m = from_pretrained(str(tmp_path / "official")).eval()
    x = torch.randint(0, 259, (2, 16))
    dense = checkpoint.model_from_checkpoint(str(dcp_dir)).model
    assert torch.equal(m(x)[0], dense(x)[0])
    torch.testing.assert_close(m(x)[0], ref["model"].eval()(x)[0], rtol=0, atol=2e-3)


def test_fsdp_needs_torchrun_and_dcp_errors(tmp_path):
    with pytest.raises(train.ConfigError, match="torchrun --standalone --nproc_per_node=N train.py --fsdp=True"):
        train.train(cfg(tmp_path, fsdp=True), quiet=True)
    (tmp_path / checkpoint.DCP_DIR).mkdir()  # e.g. a run killed before its first checkpoint was published
    with pytest.raises(checkpoint.CheckpointError, match="no train_state.json"):
        checkpoint.model_from_checkpoint(str(tmp_path / checkpoint.DCP_DIR))


def test_shards_stream_and_read_the_same_batches_at_any_world_size(tmp_path):
    docs = corpus.embedded_documents()[:300]
    meta = corpus.prepare(str(tmp_path), iter(docs), shard_tokens=20_000, val_fraction=0.1)
    assert len(meta["shards"]["train"]) > 3 and len(meta["shards"]["val"]) >= 1
    enc = tokenizer.get_encoding("bytes")
    val_docs = docs[::10]  # every 10th document is validation
    assert meta["val_tokens"] == sum(len(enc.encode_ordinary(d)) + 1 for d in val_docs)
    assert meta["train_tokens"] + meta["val_tokens"] == sum(len(enc.encode_ordinary(d)) + 1 for d in docs)
    data = corpus.TokenData(str(tmp_path))
    stream = np.concatenate([np.asarray(s) for s in data.shards["train"]])
    x, y = data.batch("train", 7, 3, 16, 64)
    # world sizes 1, 2, 4: each process reads its rows only, together the same global batch
    for world in (2, 4):
        per = 16 // world
        parts = [data.batch("train", 7, 3, 16, 64, rows=slice(r * per, (r + 1) * per)) for r in range(world)]
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
    # every window lies inside one shard and is the stream's tokens there
    g = np.random.default_rng([7, 0, 3])
    shard, off = data.draw("train", g, 65, 16)
    starts = np.cumsum([0] + [len(s) for s in data.shards["train"]])[shard] + off
    assert all(o + 65 <= len(data.shards["train"][s]) for s, o in zip(shard, off))
    assert torch.equal(x, torch.from_numpy(np.stack([stream[s:s + 64] for s in starts]).astype(np.int64)))
    # and train.py trains on it
    res = train.train(cfg(tmp_path / "run", data=str(tmp_path), max_steps=6, decay_steps=2, eval_interval=6),
                      quiet=True)
    assert np.isfinite(res["final_val_loss"])


@pytest.mark.parametrize("change", [dict(tie_word_embeddings=False, rope_theta=1e5), dict(num_experts=4, top_k=2)],
                         ids=["untie+abf", "upcycle"])
def test_fsdp_init_from_equals_one_process(tmp_path, change):
    """init_from loads by parameter name into the sharded model and optimizer: a context extension that unties the
    head, and sparse upcycling, train the same losses under FSDP2 (2 processes) as in one process."""
    steps = dict(max_steps=6, decay_steps=0, warmup_steps=2, eval_interval=6, ckpt_interval=6)
    train.train(cfg(tmp_path / "dense", **steps), quiet=True)
    cont = dict(steps, init_from=str(tmp_path / "dense"), max_steps=10, decay_steps=2, eval_interval=10, **change)
    # 4 rows x 2 micro-steps: the same micro-batches as 2 processes x 4 rows (an MoE's balancing term is computed per
    # micro-batch, so only the same split gives the same objective)
    ref = train.train(cfg(tmp_path / "ref", **cont, batch_size=4, grad_accum=2), quiet=True)
    torchrun(2, cfg(tmp_path / "fsdp", **cont, fsdp=True, batch_size=4))
    got = losses(tmp_path / "fsdp")
    assert [s for s, _ in got] == list(range(7, 11))
    assert_same_losses([v for _, v in got], ref["train_loss"])

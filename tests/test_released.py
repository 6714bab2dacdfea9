"""A released checkpoint as the starting point of every stage: tiny official-format directories written here as the
released ones are laid out (weights under the official key names, bf16, sharded safetensors with an index; a
`tokenizers` BPE trained on the embedded docs with MiniCPM's special tokens, <s> added at the start of a text;
tokenizer_config.json; the modeling code file), dense and MoE. The official code is tests/reference.py's
official_forward, read from the directories alone."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import checkpoint
import corpus
import sample
import train
from conftest import cli_args, dpo_run, official_dir
from official import read_weights
from reference import official_forward
from tokenizer import get_encoding, train_bpe

tokenizers = pytest.importorskip("tokenizers", reason="optional: tokenizers is not installed")
pytest.importorskip("safetensors", reason="optional: safetensors is not installed")
from safetensors.torch import save_file  # noqa: E402

SPECIALS = ["<unk>", "<s>", "</s>", "<用户>", "<AI>"]
MODEL = dict(architectures=["MiniCPMForCausalLM"], model_type="minicpm", hidden_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, intermediate_size=96, max_position_embeddings=128,
             scale_emb=12, scale_depth=1.4, dim_model_base=16, rms_norm_eps=1e-5, torch_dtype="bfloat16",
             bos_token_id=1, eos_token_id=2, auto_map={"AutoModelForCausalLM": "modeling_minicpm.MiniCPMForCausalLM"})
# the template of tokenizer_config.json in the released MiniCPM SFT format, rendered by transformers too
TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ '<用户>' + m['content'] + '<AI>' }}"
            "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}")
RUN = dict(seq_len=48, batch_size=8, eval_interval=100, eval_steps=2, ckpt_interval=100, sample_tokens=0,
           device="cpu", warmup_steps=0, decay_steps=0)


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    """A 400-token byte-level BPE trained on the first 40 embedded docs (the rest is the text trained on here)."""
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.train_from_iterator(corpus.embedded_documents()[:40], tokenizers.trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    tok.save(str(path))
    return path


def released(path, bpe, template=None, **model):
    """An official-format directory at path: random weights (conftest.official_dir) stored as the released ones
    are (bf16, two safetensors shards and their index), the BPE, tokenizer_config.json, modeling code."""
    path.mkdir()
    cfg = {**MODEL, "vocab_size": 400, **model}
    official_dir(path, cfg)
    state = {k: v.to(torch.bfloat16) for k, v in torch.load(path / "pytorch_model.bin").items()}
    (path / "pytorch_model.bin").unlink()
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(path / file), metadata={"format": "pt"})
    (path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: f for f, keys in shards.items() for k in keys}}))
    (path / "tokenizer.json").write_bytes(bpe.read_bytes())
    (path / "tokenizer_config.json").write_text(json.dumps(dict(
        tokenizer_class="PreTrainedTokenizerFast", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        **({"chat_template": template} if template else {}))))
    (path / "modeling_minicpm.py").write_text("# the released modeling code (copied by an export, never run here)\n")
    return path


def text_data(tmp_path, tokenizer, docs=slice(40, None), name="data"):
    """corpus.py --tokenizer DIR on the embedded docs past those the BPE was trained on."""
    (tmp_path / f"{name}.txt").write_text("\n\n".join(corpus.embedded_documents()[docs]))
    corpus.main(["--input", str(tmp_path / f"{name}.txt"), "--tokenizer", str(tokenizer), "--out",
                 str(tmp_path / name)])
    return str(tmp_path / name)


def official_logits(path, idx):
    """The official code's logits (float64) of a directory, read from its files alone."""
    cfg = json.loads((path / "config.json").read_text())
    return official_forward({k: v.double() for k, v in read_weights(path).items()}, cfg, idx)[0]


def test_corpus_prepares_token_files_with_the_checkpoints_tokenizer(tmp_path, bpe):
    d = released(tmp_path / "MiniCPM-tiny", bpe)
    meta = corpus.TokenData(text_data(tmp_path, d)).meta
    tok = tokenizers.Tokenizer.from_file(str(bpe))
    assert meta["tokenizer"] == str(d) and meta["tokenizer_id"].startswith("tokenizer.json@")
    text = (tmp_path / "data.txt").read_text()  # one document: <s> text </s>, as the tokenizer has it
    tokens = [*np.fromfile(tmp_path / "data" / "train.bin", dtype=np.uint16),
              *np.fromfile(tmp_path / "data" / "val.bin", dtype=np.uint16)]
    assert tokens == [1, *tok.encode(text, add_special_tokens=False).ids, 2]
    assert meta["bytes_per_token"] == pytest.approx((len(text.encode()) + 2) / len(tokens))
    # a vocabulary past 65,535 ids (the 2.4B's is 122,753): uint32 token files
    vocab = {**{t: i for i, t in enumerate(SPECIALS)}, **{f"w{i}": i + 5 for i in range(70_000)}}
    big = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    big.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    (tmp_path / "big").mkdir()
    big.save(str(tmp_path / "big" / "tokenizer.json"))
    (tmp_path / "w.txt").write_text(" ".join(f"w{i}" for i in range(0, 70_000, 7)))
    corpus.main(["--input", str(tmp_path / "w.txt"), "--tokenizer", str(tmp_path / "big"), "--out",
                 str(tmp_path / "wide")])
    wide = corpus.TokenData(str(tmp_path / "wide"))
    assert wide.meta["dtype"] == "uint32" and wide.meta["max_token_id"] == 69_993 + 5
    assert get_encoding(str(tmp_path / "big")).decode(wide.split["val"][-3:-1].tolist()) == "w69986 w69993"


@pytest.mark.parametrize("model", [{}, dict(num_experts=4, num_experts_per_tok=2)], ids=["dense", "moe"])
def test_a_1_step_lr_0_round_trip_through_export_changes_no_logit(tmp_path, bpe, model):
    d = released(tmp_path / "MiniCPM-tiny", bpe, **model)
    data = text_data(tmp_path, d)
    r = train.train(dict(RUN, init_from=str(d), data=data, lr=0.0, max_steps=1, out_dir=str(tmp_path / "run")),
                    quiet=True)
    c = r["model"].config  # the model of config.json, not the preset's
    assert (c.hidden_size, c.num_hidden_layers, c.vocab_size) == (64, 2, 400)
    assert c.num_experts == model.get("num_experts", 0)
    exported = tmp_path / "export"
    train.main(["export", str(tmp_path / "run"), str(exported)])
    idx = torch.randint(0, 400, (2, 40), generator=torch.Generator().manual_seed(0))
    assert (official_logits(exported, idx) - official_logits(d, idx)).abs().max() <= 1e-5
    # the released directory's layout: its other config fields and files, its tokenizer as it is
    config = json.loads((exported / "config.json").read_text())
    assert config["auto_map"] == MODEL["auto_map"] and config["eos_token_id"] == 2
    assert (exported / "modeling_minicpm.py").read_text() == (d / "modeling_minicpm.py").read_text()
    assert (exported / "tokenizer.json").read_bytes() == bpe.read_bytes()
    transformers = pytest.importorskip("transformers", reason="optional: transformers is not installed")
    auto = transformers.AutoTokenizer.from_pretrained(str(exported))
    assert auto.encode("def f(x):") == tokenizers.Tokenizer.from_file(str(bpe)).encode("def f(x):").ids
    _, encode, decode, eos = sample.load(model_dir=str(exported))
    assert encode("def f(x):") == auto.encode("def f(x):") and eos == 2 and decode(encode("a b")) == "a b"


def held_out_loss(path, windows):
    """The official code's mean next-token loss of a directory on token windows (n, T + 1)."""
    return F.cross_entropy(official_logits(path, windows[:, :-1]).flatten(0, 1), windows[:, 1:].flatten()).item()


def test_continued_pretraining_is_a_new_wsd_run_that_lowers_the_official_held_out_loss(tmp_path, bpe):
    d = released(tmp_path / "MiniCPM-tiny", bpe)
    data = text_data(tmp_path, d, slice(40, 70))
    held = corpus.TokenData(text_data(tmp_path, d, slice(70, None), "held"))  # text of the same kind, not trained on
    windows = torch.from_numpy(np.stack([held.split["train"][i:i + 49].astype(np.int64) for i in range(0, 4900, 100)]))
    r = train.train(dict(RUN, init_from=str(d), data=data, lr=0.01, max_steps=40, warmup_steps=4, decay_steps=8,
                         out_dir=str(tmp_path / "cpt")), quiet=True)
    lrs = [row["lr"] for row in checkpoint.read_jsonl(str(tmp_path / "cpt" / "metrics.jsonl")) if "lr" in row]
    assert lrs[:4] == pytest.approx([0.0025, 0.005, 0.0075, 0.01]) and lrs[-1] == pytest.approx(0.001)  # W, S from 0
    assert r["step"] == 40
    train.main(["export", str(tmp_path / "cpt"), str(tmp_path / "export")])
    before, after = held_out_loss(d, windows), held_out_loss(tmp_path / "export", windows)
    assert after < before - 0.5, (before, after)  # random weights at ~ln 400 = 6.0 nats; trained: < 5.5


def test_sft_and_dpo_rows_take_the_checkpoints_chat_format(tmp_path, bpe):
    tok = tokenizers.Tokenizer.from_file(str(bpe))
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    rows = [dict(prompt=f"What is {i} + {i}?", response=str(2 * i)) for i in range(30)]
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # without a template: the released MiniCPM SFT format, <s><用户>{prompt}<AI>{response}</s>, loss on the response
    plain = released(tmp_path / "plain", bpe)
    sft = corpus.SFTData(str(tmp_path / "sft.jsonl"), str(plain))
    ids, labels = sft.split["train"][0]
    prompt, response = [1, 3, *enc("What is 1 + 1?"), 4], [*enc("2"), 2]
    assert ids == prompt + response and labels == [-100] * len(prompt) + response
    # with one (tokenizer_config.json): exactly what transformers' apply_chat_template makes of the conversation
    templated = released(tmp_path / "templated", bpe, template=TEMPLATE)
    ids, labels = corpus.SFTData(str(tmp_path / "sft.jsonl"), str(templated)).split["train"][0]
    transformers = pytest.importorskip("transformers", reason="optional: transformers is not installed")
    messages = [{"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": "2"}]
    reference = transformers.AutoTokenizer.from_pretrained(str(templated)).apply_chat_template(messages, tokenize=True)
    assert ids == list(reference["input_ids"]) and labels[-2:] == ids[-2:] and set(labels[:-2]) == {-100}
    # SFT from the released directory trains on those rows; DPO from it and from the SFT run
    r = train.train(dict(RUN, init_from=str(templated), data=str(tmp_path / "sft.jsonl"), lr=0.01, max_steps=30,
                         out_dir=str(tmp_path / "sft")), quiet=True)
    assert np.mean(r["train_loss"][-5:]) < np.mean(r["train_loss"][:5]) - 1
    pairs = [dict(prompt=x["prompt"], chosen=x["response"], rejected=str(int(x["response"]) + 1)) for x in rows]
    (tmp_path / "pref.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    for src in (templated, tmp_path / "sft"):
        out = tmp_path / f"dpo-{src.name}"
        res = dpo_run(dict(init_from=str(src), data=str(tmp_path / "pref.jsonl"), out_dir=str(out), max_steps=2,
                           batch_size=4, seq_len=32, device="cpu", lr=1e-3))
        assert res["rows"][0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
        assert checkpoint.model_from_checkpoint(str(out)).tokenizer == str(templated)
    train.main(["export", str(tmp_path / "dpo-sft"), str(tmp_path / "export")])
    assert json.loads((tmp_path / "export" / "tokenizer_config.json").read_text())["chat_template"] == TEMPLATE


def test_the_transitions_start_from_a_released_checkpoint_too(tmp_path, bpe):
    d = released(tmp_path / "MiniCPM-tiny", bpe)
    data = text_data(tmp_path, d)
    dense = checkpoint.model_from_checkpoint(str(d)).model
    moe = train.train(dict(RUN, init_from=str(d), data=data, lr=0.0, max_steps=1, num_experts=4, top_k=2,
                           out_dir=str(tmp_path / "moe")), quiet=True)["model"]
    mlp = dense.model.layers[1].mlp
    assert moe.config.num_experts == 4 and all(torch.equal(moe.model.layers[1].mlp.down_proj[e], mlp.down_proj.weight)
                                               for e in range(4))
    long = train.train(dict(RUN, init_from=str(d), data=data, lr=0.0, max_steps=1, rope_theta=1e6,
                            max_position_embeddings=512, tie_word_embeddings=False, out_dir=str(tmp_path / "long")),
                       quiet=True)["model"]
    assert long.config.rope_theta == 1e6 and torch.equal(long.lm_head.weight, dense.model.embed_tokens.weight)


def test_data_of_another_tokenizer_than_the_checkpoints_is_one_line(tmp_path, bpe, cli):
    d = released(tmp_path / "MiniCPM-tiny", bpe)
    args = cli_args(dict(RUN, init_from=str(d), max_steps=2, out_dir=str(tmp_path / "run")))
    cli(train.main, [*args, "--data=embedded"], "is tokenized with bytes", f"the model's tokenizer is {d}",
        f"--tokenizer {d}")
    data = text_data(tmp_path, d, slice(40, 45))  # data whose tokenizer directory is then moved away
    d.rename(tmp_path / "moved")
    cli(train.main, cli_args(dict(RUN, data=data, vocab_size=400, max_steps=2, sample_tokens=10,
                                  out_dir=str(tmp_path / "run2"))), "was tokenized with the tokenizer in", str(d),
        "put the directory back")
    (tmp_path / "moved").rename(d)
    for f in d.glob("*.safetensors*"):  # an incomplete download: config.json and no weights
        f.unlink()
    cli(train.main, [*args, "--data=embedded"], "has a config.json but no weights", "the download is incomplete")


def test_the_memory_of_a_full_fine_tune_follows_from_the_shapes():
    """system.training_memory (the README's batch per GPU): 16 bytes a parameter for fp32 weights, gradients and
    AdamW plus 2 for autocast's bf16 copies, activations linear in the rows; under activation checkpointing each
    added layer keeps exactly its input (B x T x d fp32), the rest of a block only while it recomputes."""
    from model import MiniCPMConfig, config_params
    from system import training_memory
    shape = dict(vocab_size=512, hidden_size=128, num_attention_heads=4, num_key_value_heads=2, intermediate_size=256)
    mem = {(L, B, ac): training_memory(MiniCPMConfig(num_hidden_layers=L, **shape), B, 64, ac)
           for L in (2, 4) for B in (1, 2, 3) for ac in (True, False)}
    c = MiniCPMConfig(num_hidden_layers=2, **shape)
    assert mem[2, 1, True]["weights_grads_adamw"] + mem[2, 1, True]["bf16_weight_copies"] == 18 * config_params(c)
    assert training_memory(c, 1, 64, True, shards=8)["weights_grads_adamw"] == 2 * config_params(c)
    for ac in (True, False):
        act = [mem[2, B, ac]["activations"] for B in (1, 2, 3)]
        assert act[2] - act[1] == act[1] - act[0] > 0
    assert mem[4, 2, True]["activations"] - mem[2, 2, True]["activations"] == 2 * (2 * 64 * 128 * 4)
    assert mem[4, 2, True]["activations"] < mem[4, 2, False]["activations"]
    assert mem[2, 3, True]["logits_gradient"] == 4 * 3 * 64 * 512


def test_a_sentencepiece_tokenizer_model_serves_the_same_way(tmp_path):
    """tokenizer.model (the released MiniCPM-2B's format) through the optional sentencepiece: documents as
    <s> text </s>, SFT rows in the released format."""
    spm = pytest.importorskip("sentencepiece", reason="optional: sentencepiece is not installed")
    (tmp_path / "text.txt").write_text("\n".join(d.replace("\n", " ")[:4000] for d in corpus.embedded_documents()[:30]))
    d = tmp_path / "sp"
    d.mkdir()
    spm.SentencePieceTrainer.train(input=str(tmp_path / "text.txt"), model_prefix=str(d / "tokenizer"), vocab_size=300,
                                   user_defined_symbols=["<用户>", "<AI>"], unk_id=0, bos_id=1, eos_id=2,
                                   minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
    corpus.prepare(str(tmp_path / "data"), ["hello world", "second doc"], str(d))
    tokens = [*np.fromfile(tmp_path / "data" / "train.bin", dtype=np.uint16),
              *np.fromfile(tmp_path / "data" / "val.bin", dtype=np.uint16)]
    assert tokens == [1, *sp.encode("hello world"), 2, 1, *sp.encode("second doc"), 2]
    (tmp_path / "sft.jsonl").write_text(json.dumps(dict(prompt="hi", response="yo")) + "\n")
    ids, labels = corpus.SFTData(str(tmp_path / "sft.jsonl"), str(d)).split["train"][0]
    assert ids == [1, *sp.encode("<用户>hi<AI>"), *sp.encode("yo"), 2] and labels[-len(sp.encode("yo")) - 1:] == \
        [*sp.encode("yo"), 2]


def test_a_bpe_trained_here_is_the_same_file_twice_and_reads_back(tmp_path):
    docs = corpus.embedded_documents()[:30]
    a, b = (train_bpe(docs, 320, str(tmp_path / d)) for d in "ab")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    enc = get_encoding(a)
    text = "def f(x):\n    return x + 1  # é"
    ids = enc.encode_ordinary(text)
    assert enc.n_vocab == 320 and enc.decode(ids) == text and len(ids) < len(text.encode())
    assert enc.decode_token(enc.eot_token) == "<|endoftext|>" and enc.bos_token is None


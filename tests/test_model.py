import json
import math
import os

import pytest
import torch

import model as M
import official
from model import MiniCPM, MiniCPMConfig
from reference import fold_minicpm, llama_logits


def small(**kw):
    base = dict(vocab_size=97, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
                intermediate_size=96, max_position_embeddings=64, dim_model_base=16)
    return MiniCPMConfig(**{**base, **kw})


SHAPES = {"mha": {}, "gqa": dict(num_key_value_heads=2),
          "mqa-untied": dict(num_key_value_heads=1, tie_word_embeddings=False),
          "sp": dict(use_mup=False)}


@pytest.mark.parametrize("shape", SHAPES)
def test_logits_match_folded_llama_reference(shape):
    torch.manual_seed(0)
    c = small(**SHAPES[shape])
    m = MiniCPM(c)
    idx = torch.randint(0, c.vocab_size, (2, 11))
    logits, loss = m(idx)
    assert logits.shape == (2, 11, c.vocab_size) and loss is None
    ref = llama_logits(fold_minicpm(m), c, idx)
    torch.testing.assert_close(logits.double(), ref, rtol=1e-4, atol=1e-4)
    # the multipliers matter: without them the reference is far away
    assert (logits.double() - llama_logits({k: v.double() for k, v in m.state_dict().items()} |
                                           {"lm_head.weight": m.head_weight().double()}, c, idx)).abs().max() > 0.1


def test_loss_is_cross_entropy_ignoring_minus_100():
    torch.manual_seed(0)
    m = MiniCPM(small())
    idx = torch.randint(0, 97, (2, 9))
    tgt = torch.randint(0, 97, (2, 9))
    tgt[0, :4] = -100
    logits, loss = m(idx, tgt)
    keep = tgt != -100
    lp = torch.log_softmax(logits.double(), -1)
    ref = -lp[keep].gather(-1, tgt[keep][:, None]).mean()
    assert abs(loss.item() - ref.item()) < 1e-5


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    m = MiniCPM(small(num_key_value_heads=2))
    idx, tgt = torch.randint(0, 97, (2, 9)), torch.randint(0, 97, (2, 9))
    grads = []
    for ac in (False, True):
        m.activation_checkpointing = ac
        m.zero_grad()
        m(idx, tgt)[1].backward()
        grads.append([p.grad.clone() for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_official_key_names_and_tying():
    tied = MiniCPM(small()).state_dict()
    assert "lm_head.weight" not in tied and "model.layers.2.self_attn.q_proj.weight" in tied
    assert {"model.embed_tokens.weight", "model.norm.weight", "model.layers.0.mlp.gate_proj.weight",
            "model.layers.0.post_attention_layernorm.weight"} <= set(tied)
    assert "lm_head.weight" in MiniCPM(small(tie_word_embeddings=False)).state_dict()


def test_preset_parameter_counts_on_meta():
    for name, n in (("minicpm-2.4b", 2_442_057_984), ("minicpm-1.2b", 1_247_442_432)):
        with torch.device("meta"):
            m = MiniCPM(MiniCPMConfig.from_preset(name))
        assert m.num_params(non_embedding=True) == n
    with torch.device("meta"):
        m = MiniCPM(MiniCPMConfig.from_preset("minicpm-1.2b"))
    assert m.num_params(non_embedding=False) == 1_247_442_432 + 73440 * 1536  # tied: one embedding


@pytest.mark.parametrize("use_mup", [True, False])
def test_init_std_per_parameter_kind(use_mup):
    torch.manual_seed(0)
    c = small(hidden_size=256, num_attention_heads=4, num_key_value_heads=4, intermediate_size=1024,
              dim_model_base=64, vocab_size=4000, tie_word_embeddings=False, use_mup=use_mup)
    m = MiniCPM(c)
    hidden_std = 0.1 / math.sqrt(4.0) if use_mup else 0.1  # m = 256 / 64 = 4
    for name, p in m.named_parameters():
        if p.dim() == 1:
            assert torch.all(p == 1), name
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            assert abs(p.std().item() - 0.1) < 0.003, name
        else:
            assert abs(p.std().item() - hidden_std) < 0.05 * hidden_std, (name, p.std().item())
            assert abs(p.mean().item()) < 0.01 * hidden_std + 1e-3


@pytest.mark.parametrize("kv", [4, 2])
def test_kv_cache_generation_equals_recomputation(kv):
    torch.manual_seed(0)
    m = MiniCPM(small(num_key_value_heads=kv))
    prompt = torch.randint(0, 97, (3, 7))
    out = m.generate(prompt, 20, top_k=1)
    seq = prompt
    for _ in range(20):
        logits, _ = m(seq)
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)
    # a chunk after cached tokens (start > 0, T > 1) sees exactly its causal past
    cache = M.KVCache(m.config, 3, 27, "cpu", torch.float32)
    with torch.no_grad():
        a = m.hidden_states(seq[:, :10], cache, 0)[0]
        b = m.hidden_states(seq[:, 10:], cache, 10)[0]
        full = m.hidden_states(seq)[0]
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=1e-5, atol=1e-5)


def test_sampling_respects_top_k_and_seed():
    torch.manual_seed(0)
    m = MiniCPM(small())
    prompt = torch.randint(0, 97, (2, 4))
    torch.manual_seed(1)
    a = m.generate(prompt, 8, temperature=1.0, top_k=5)
    torch.manual_seed(1)
    b = m.generate(prompt, 8, temperature=1.0, top_k=5)
    assert torch.equal(a, b) and a.shape == (2, 12)
    logits, _ = m(a[:, :-1])  # every sampled token is in the top 5 of its step's distribution
    top5 = logits[:, 3:].topk(5, -1).indices
    assert (top5 == a[:, 4:, None]).any(-1).all()


def test_too_long_is_a_clear_error():
    m = MiniCPM(small())
    with pytest.raises(ValueError, match="= 65 exceeds the 64 tokens the model supports"):
        m.generate(torch.zeros(1, 60, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="65 tokens is longer than the model supports"):
        m(torch.zeros(1, 65, dtype=torch.long))


@pytest.mark.parametrize("kw, field", [
    (dict(num_attention_heads=5), "num_attention_heads"),
    (dict(num_key_value_heads=3), "num_key_value_heads"),
    (dict(hidden_size=60, num_attention_heads=4), "odd"),
    (dict(hidden_size=0), "hidden_size"),
    (dict(vocab_size=-3), "vocab_size"),
    (dict(init_std=0.0), "init_std"),
    (dict(num_hidden_layers=2.5), "num_hidden_layers"),
])
def test_bad_config_names_field(kw, field):
    with pytest.raises(ValueError, match=field):
        small(**kw)
    with pytest.raises(ValueError, match="unknown preset"):
        MiniCPMConfig.from_preset("minicpm-7b")


@pytest.mark.parametrize("safetensors", [True, False])
@pytest.mark.parametrize("tied", [True, False])
def test_save_and_from_pretrained_round_trip(tmp_path, monkeypatch, safetensors, tied):
    if safetensors:
        pytest.importorskip("safetensors", reason="the optional safetensors package is not installed")
    else:  # pretend safetensors is absent: pytorch_model.bin is written and read
        import builtins
        real_import = builtins.__import__
        monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError)
                            if name.startswith("safetensors") else real_import(name, *a, **k))
    torch.manual_seed(0)
    m = MiniCPM(small(tie_word_embeddings=tied, num_key_value_heads=2))
    official.save_pretrained(m, tmp_path)
    assert os.path.isfile(tmp_path / ("model.safetensors" if safetensors else "pytorch_model.bin"))
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["initializer_range"] == 0.1 and cfg["scale_emb"] == 12.0 and cfg["tie_word_embeddings"] == tied
    m2 = official.from_pretrained(tmp_path)
    idx = torch.randint(0, 97, (2, 10))
    assert torch.equal(m(idx)[0], m2(idx)[0])


def test_from_pretrained_official_style_config(tmp_path):
    """An official config.json (initializer_range, no tie_word_embeddings key -> tied) and a .bin file."""
    torch.manual_seed(0)
    m = MiniCPM(small())
    cfg = dict(architectures=["MiniCPMForCausalLM"], vocab_size=97, hidden_size=64, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=4, intermediate_size=96, max_position_embeddings=64,
               rms_norm_eps=1e-5, initializer_range=0.1, scale_emb=12, scale_depth=1.4, dim_model_base=16,
               rope_scaling=None, torch_dtype="bfloat16", hidden_act="silu")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    sd = {k: v.to(torch.bfloat16) for k, v in m.state_dict().items()}
    sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # older exports carry this buffer
    torch.save(sd, tmp_path / "pytorch_model.bin")
    m2 = official.from_pretrained(tmp_path)
    assert m2.config.tie_word_embeddings and m2.head_weight().dtype == torch.float32
    torch.testing.assert_close(m2.model.layers[1].mlp.up_proj.weight, m.model.layers[1].mlp.up_proj.weight.to(
        torch.bfloat16).float())


def _write(tmp_path, m, sd):
    official.save_pretrained(m, tmp_path)
    for f in ("model.safetensors", "pytorch_model.bin"):
        if (tmp_path / f).exists():
            (tmp_path / f).unlink()
    torch.save(sd, tmp_path / "pytorch_model.bin")


def test_from_pretrained_errors(tmp_path):
    torch.manual_seed(0)
    m = MiniCPM(small())
    with pytest.raises(FileNotFoundError, match="config.json"):
        official.from_pretrained(tmp_path)
    official.save_pretrained(m, tmp_path)
    for f in ("model.safetensors", "pytorch_model.bin"):
        if (tmp_path / f).exists():
            (tmp_path / f).unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        official.from_pretrained(tmp_path)
    sd = m.state_dict()
    bad = dict(sd)
    bad.pop("model.layers.1.mlp.up_proj.weight")
    _write(tmp_path, m, bad)
    with pytest.raises(ValueError, match="missing keys model.layers.1.mlp.up_proj.weight"):
        official.from_pretrained(tmp_path)
    _write(tmp_path, m, {**sd, "model.layers.9.mlp.up_proj.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unexpected keys model.layers.9"):
        official.from_pretrained(tmp_path)
    _write(tmp_path, m, {**sd, "model.norm.weight": torch.ones(65)})
    with pytest.raises(ValueError, match=r"model.norm.weight has shape \(65,\)"):
        official.from_pretrained(tmp_path)
    _write(tmp_path, m, {**sd, "lm_head.weight": torch.zeros(97, 64)})
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        official.from_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        official.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        official.from_pretrained(tmp_path)


@pytest.mark.parametrize("shape", ["gqa", "mqa-untied"])
def test_export_llama_matches_reference(tmp_path, shape):
    torch.manual_seed(0)
    c = small(**SHAPES[shape])
    m = MiniCPM(c)
    official.export_llama(m, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["tie_word_embeddings"] is False
    sd = {k: v.double() for k, v in official.read_weights(tmp_path).items()}
    idx = torch.randint(0, c.vocab_size, (2, 12))
    torch.testing.assert_close(llama_logits(sd, c, idx), m(idx)[0].double(), rtol=1e-4, atol=1e-4)


def assert_same_as_transformers(m, hf):
    """Our model and its export loaded by transformers: the same logits (to float32 rounding) and greedy tokens."""
    idx = torch.randint(0, m.config.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, m(idx)[0], rtol=1e-4, atol=1e-4)
        ours = m.generate(idx[:, :5], 10, top_k=1)
        theirs = hf.generate(idx[:, :5], attention_mask=torch.ones_like(idx[:, :5]), max_new_tokens=10,
                             do_sample=False, pad_token_id=0)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("shape", ["gqa", "mqa-untied"])
def test_export_llama_loads_in_transformers(tmp_path, shape):
    transformers = pytest.importorskip("transformers", reason="optional: transformers is not installed")
    torch.manual_seed(0)
    c = small(**SHAPES[shape])
    m = MiniCPM(c)
    official.export_llama(m, tmp_path)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert_same_as_transformers(m, hf)


def test_export_llama_carries_its_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers", reason="optional: transformers is not installed")
    official.export_llama(MiniCPM(small(vocab_size=320)), tmp_path / "llama", tokenizer="bytes")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "llama")  # failed before: no tokenizer was written
    ids = tok("héllo, world")["input_ids"]
    assert ids == list("héllo, world".encode("utf-8")) and tok.decode(ids) == "héllo, world"
    assert tok.eos_token == "<|endoftext|>" and tok.convert_tokens_to_ids("<|endoftext|>") == 256


@pytest.mark.parametrize("top_k", [1, 2])
def test_a_moe_model_exports_as_mixtral_with_the_same_logits(tmp_path, top_k):
    """MiniCPM-MoE as transformers' MixtralForCausalLM (it loaded a dense Llama config beside the experts before and
    initialised the MLPs at random: logits off by up to 27): the same logits and greedy tokens."""
    transformers = pytest.importorskip("transformers", reason="optional: transformers is not installed")
    torch.manual_seed(0)
    m = MiniCPM(small(num_experts=4, top_k=top_k)).eval()
    with torch.no_grad():
        for p in m.parameters():  # away from the init, so that every route and multiplier matters
            p.add_(torch.randn_like(p) * 0.05)
    official.export_llama(m, tmp_path, tokenizer="bytes")
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["MixtralForCausalLM"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(hf).__name__ == "MixtralForCausalLM"
    assert_same_as_transformers(m, hf)

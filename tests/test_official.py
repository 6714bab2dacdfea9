"""Exact to the official MiniCPM code in both directions: what nanoCPM saves means the same to the official
formulas (tests/reference.py: official_forward, read from the saved directory alone), and official-layout
directories load with the same logits (float64) and greedy tokens: dense MHA / GQA / untied, MiniCPM-MoE, standard
parametrisation, and dynamic / NTK / linear RoPE."""
import json

import pytest
import torch

from model import KVCache, MiniCPM, MiniCPMConfig
from official import from_pretrained, read_weights, save_pretrained
from conftest import official_dir
from reference import official_forward, official_greedy

# model.py computes RoPE tables and RMSNorm in fp32 even for a float64 model (as the official code does); the
# reference is float64 throughout: logits of size ~1 then differ by up to 9e-7 (measured over these tests), so
# 5e-6. A wrong base, route or multiplier is off by 1e-3 and more (the old dynamic decoding: 6e-3).
TOL = dict(rtol=5e-6, atol=5e-6)
SMALL = dict(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=96, max_position_embeddings=64, dim_model_base=16)


def saved(model, path):
    """(state dict, config.json) of what save_pretrained wrote: all the reference sees."""
    save_pretrained(model, path)
    return read_weights(path), json.loads((path / "config.json").read_text())


def random_model(**kw):
    torch.manual_seed(0)
    m = MiniCPM(MiniCPMConfig(**{**SMALL, **kw})).double()
    with torch.no_grad():
        for p in m.parameters():  # away from the init, so that every multiplier and route matters
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


@pytest.mark.parametrize("kw", [{}, dict(num_key_value_heads=4), dict(num_key_value_heads=1, tie_word_embeddings=False),
                                dict(use_mup=False), dict(rope_scaling={"type": "ntk", "factor": 4.0}),
                                dict(num_experts=4, top_k=2), dict(num_experts=4, top_k=1, tie_word_embeddings=False)],
                         ids=["gqa", "mha", "mqa-untied", "sp", "ntk", "moe-top2", "moe-top1-untied"])
def test_what_we_save_means_the_same_to_the_official_code_and_loads_back(tmp_path, kw):
    m = random_model(**kw)
    sd, cfg = saved(m, tmp_path)
    idx = torch.randint(0, 97, (2, 23))
    ours = m(idx)[0]
    torch.testing.assert_close(official_forward(sd, cfg, idx)[0], ours, **TOL)
    back = from_pretrained(tmp_path, dtype=torch.float64).eval()
    torch.testing.assert_close(back(idx)[0], ours, rtol=1e-12, atol=1e-12)
    if kw.get("num_experts"):  # the released MiniCPM-MoE layout and routing key
        assert cfg["num_experts_per_tok"] == kw["top_k"] and "top_k" not in cfg
        assert "model.layers.1.mlp.gate.weight" in sd
        assert sd["model.layers.1.mlp.experts.3.w2.weight"].shape == (64, 96)
        assert not any(".mlp.router" in k or k.endswith("mlp.gate_proj") for k in sd)
    if not kw.get("use_mup", True):
        assert cfg["dim_model_base"] == cfg["hidden_size"]  # the official 1/m is then 1, as in SP
    if kw.get("rope_scaling"):
        assert cfg["rope_scaling"] is None and cfg["rope_theta"] == pytest.approx(10000 * 4 ** (16 / 14))


OFFICIAL = dict(architectures=["MiniCPMForCausalLM"], model_type="minicpm", vocab_size=97, hidden_size=64,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
                max_position_embeddings=32, scale_emb=12, scale_depth=1.4, dim_model_base=16, rms_norm_eps=1e-5)


@pytest.mark.parametrize("extra", [dict(num_experts=4, num_experts_per_tok=1),
                                   dict(num_experts=4, num_experts_per_tok=2),
                                   dict(rope_scaling={"type": "linear", "factor": 2.0}),
                                   dict(num_key_value_heads=None)],
                         ids=["moe-top1", "moe-top2", "linear-rope", "no-kv-heads"])
def test_official_directories_load_with_the_official_logits(tmp_path, extra):
    cfg = {**OFFICIAL, **extra}
    if extra.get("num_key_value_heads", 0) is None:
        del cfg["num_key_value_heads"]  # the official code then uses num_attention_heads
    sd = official_dir(tmp_path, cfg)
    m = from_pretrained(tmp_path, dtype=torch.float64).eval()
    assert m.config.top_k == extra.get("num_experts_per_tok", m.config.top_k)
    assert m.config.num_key_value_heads == cfg.get("num_key_value_heads", 4)
    idx = torch.randint(0, 97, (2, 29))
    ref = official_forward(sd, cfg, idx)[0]
    torch.testing.assert_close(m(idx)[0], ref, **TOL)
    out, _ = official_greedy(sd, cfg, idx[:, :5], 20)
    assert torch.equal(m.generate(idx[:, :5], 20, top_k=1), out)


@pytest.mark.parametrize("prompt_len", [8, 40])
def test_dynamic_rope_decoding_equals_the_official_decoder_token_for_token(tmp_path, prompt_len):
    """Under rope_scaling dynamic, each forward uses the base of the current total length and cached keys keep
    their rotation (prompt 8 or 40 tokens + 32 new ones, max_position_embeddings 16)."""
    m = random_model(max_position_embeddings=16, rope_scaling={"type": "dynamic", "factor": 8.0})
    sd, cfg = saved(m, tmp_path)
    prompt = torch.randint(0, 97, (2, prompt_len))
    tokens, ref_logits = official_greedy(sd, cfg, prompt, 32)
    assert torch.equal(m.generate(prompt, 32, top_k=1), tokens)
    cache = KVCache(m.config, 2, prompt_len + 32, "cpu", torch.float64)  # our per-step logits along the same path
    x, start, ours = prompt, 0, []
    with torch.no_grad():
        for i in range(32):
            h = m.hidden_states(x, cache, start)[0][:, -1]
            ours.append(torch.nn.functional.linear(h, m.head_weight()))
            start += x.size(1)
            x = tokens[:, start:start + 1]
    torch.testing.assert_close(torch.stack(ours), ref_logits, **TOL)

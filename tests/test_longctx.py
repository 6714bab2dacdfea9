import math

import pytest
import torch

import longctx
from model import MiniCPM, MiniCPMConfig


def small(**kw):
    base = dict(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=96, max_position_embeddings=32, dim_model_base=16)
    return MiniCPMConfig(**{**base, **kw})


def test_rope_formulas_exact():
    f = longctx.rope_inv_freq(8, 10000.0)
    assert f.tolist() == pytest.approx([10000 ** (-0 / 8), 10000 ** (-2 / 8), 10000 ** (-4 / 8), 10000 ** (-6 / 8)])
    assert longctx.ntk_scaled_base(10000.0, 4.0, 64) == pytest.approx(10000 * 4 ** (64 / 62))
    assert longctx.ntk_scaled_base(1e4, 1.0, 64) == 1e4
    assert longctx.dynamic_ntk_base(1e4, 2.0, 32, 32, 64) == 1e4  # within the trained length: unchanged
    assert longctx.dynamic_ntk_base(1e4, 2.0, 64, 32, 64) == pytest.approx(1e4 * (2 * 64 / 32 - 1) ** (64 / 62))
    with pytest.raises(ValueError, match="scale=0"):
        longctx.ntk_scaled_base(1e4, 0, 64)


def _reference_dynamic_logits(model, idx):
    """HF-style dynamic NTK reference: recompute inv_freq for the full length with the documented formula, then a
    model with plain RoPE at that base must give the same logits."""
    c = model.config
    T = idx.size(1)
    base = c.rope_theta
    if T > c.max_position_embeddings:
        f = c.rope_scaling["factor"]
        base = base * ((f * T / c.max_position_embeddings) - (f - 1)) ** (c.head_dim / (c.head_dim - 2))
    plain = MiniCPM(MiniCPMConfig(**{**c.__dict__, "rope_scaling": None, "rope_theta": base,
                                     "max_position_embeddings": 4 * c.max_position_embeddings}))
    plain.load_state_dict(model.state_dict())
    return plain(idx)[0]


def test_dynamic_rope_scaling_matches_reference():
    torch.manual_seed(0)
    c = small(rope_scaling={"type": "dynamic", "factor": 2.0}, max_position_embeddings=32)
    m = MiniCPM(c)
    assert c.max_length == 64  # dynamic scaling extends the accepted length by its factor
    for T in (20, 48, 64):  # within the trained length: plain RoPE; beyond: the base grows with T
        idx = torch.randint(0, 97, (2, T))
        torch.testing.assert_close(m(idx)[0], _reference_dynamic_logits(m, idx))
    assert longctx.rope_base(c, 64) > c.rope_theta and longctx.rope_base(c, 16) == c.rope_theta
    with pytest.raises(ValueError, match="65 tokens is longer than the model supports"):
        m(torch.zeros(1, 65, dtype=torch.long))


def test_ntk_rope_scaling_is_a_fixed_base():
    torch.manual_seed(0)
    m = MiniCPM(small(rope_scaling={"type": "ntk", "factor": 4.0}))
    plain = MiniCPM(small(rope_theta=longctx.ntk_scaled_base(10000.0, 4.0, 16)))
    plain.load_state_dict(m.state_dict())
    idx = torch.randint(0, 97, (2, 30))
    torch.testing.assert_close(m(idx)[0], plain(idx)[0])
    assert torch.equal(m.generate(idx[:, :5], 10, top_k=1), plain.generate(idx[:, :5], 10, top_k=1))


def test_minicpm_128k_style_config_loads_and_runs(tmp_path):
    c = small(rope_theta=1e6, tie_word_embeddings=False, max_position_embeddings=256,
              rope_scaling={"type": "dynamic", "factor": 4.0})
    MiniCPM(c).save_pretrained(tmp_path)
    m = MiniCPM.from_pretrained(tmp_path)
    assert m.config.rope_scaling == {"type": "dynamic", "factor": 4.0} and m.lm_head is not None
    out = m.generate(torch.randint(0, 97, (1, 100)), 20, top_k=1)
    assert out.shape == (1, 120)


@pytest.mark.parametrize("bad", [{"type": "yarn", "factor": 2.0}, {"type": "dynamic"}, {"type": "ntk", "factor": 0.5},
                                 "dynamic"])
def test_bad_rope_scaling_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="rope_scaling"):
        small(rope_scaling=bad)


def test_untie_keeps_logits_and_makes_tensors_independent():
    torch.manual_seed(0)
    m = MiniCPM(small())
    idx = torch.randint(0, 97, (2, 12))
    before = m(idx)[0]
    longctx.untie(m)
    assert m.config.tie_word_embeddings is False and m.lm_head is not None
    assert torch.equal(m(idx)[0], before)
    assert m.lm_head.weight.data_ptr() != m.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        m.lm_head.weight.add_(1.0)
    assert not torch.equal(m.lm_head.weight, m.model.embed_tokens.weight)
    assert "lm_head.weight" in m.state_dict()
    assert not torch.equal(m(idx)[0], before)

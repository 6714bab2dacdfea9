
import pytest
import torch

import longctx
import rope
from official import from_pretrained, save_pretrained
from model import MiniCPM, MiniCPMConfig


def small(**kw):
    base = dict(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=96, max_position_embeddings=32, dim_model_base=16)
    return MiniCPMConfig(**{**base, **kw})


def test_rope_formulas_exact():
    f = rope.rope_inv_freq(8, 10000.0)
    assert f.tolist() == pytest.approx([10000 ** (-0 / 8), 10000 ** (-2 / 8), 10000 ** (-4 / 8), 10000 ** (-6 / 8)])
    assert rope.ntk_scaled_base(10000.0, 4.0, 64) == pytest.approx(10000 * 4 ** (64 / 62))
    assert rope.ntk_scaled_base(1e4, 1.0, 64) == 1e4
    assert rope.dynamic_ntk_base(1e4, 2.0, 32, 32, 64) == 1e4  # within the trained length: unchanged
    assert rope.dynamic_ntk_base(1e4, 2.0, 64, 32, 64) == pytest.approx(1e4 * (2 * 64 / 32 - 1) ** (64 / 62))
    with pytest.raises(ValueError, match="scale=0"):
        rope.ntk_scaled_base(1e4, 0, 64)


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
    assert rope.rope_base(c, 64) > c.rope_theta and rope.rope_base(c, 16) == c.rope_theta
    with pytest.raises(ValueError, match="65 tokens is longer than the model supports"):
        m(torch.zeros(1, 65, dtype=torch.long))


def test_ntk_rope_scaling_is_a_fixed_base():
    torch.manual_seed(0)
    m = MiniCPM(small(rope_scaling={"type": "ntk", "factor": 4.0}))
    plain = MiniCPM(small(rope_theta=rope.ntk_scaled_base(10000.0, 4.0, 16)))
    plain.load_state_dict(m.state_dict())
    idx = torch.randint(0, 97, (2, 30))
    torch.testing.assert_close(m(idx)[0], plain(idx)[0])
    assert torch.equal(m.generate(idx[:, :5], 10, top_k=1), plain.generate(idx[:, :5], 10, top_k=1))


def test_minicpm_128k_style_config_loads_and_runs(tmp_path):
    c = small(rope_theta=1e6, tie_word_embeddings=False, max_position_embeddings=256,
              rope_scaling={"type": "dynamic", "factor": 4.0})
    save_pretrained(MiniCPM(c), tmp_path)
    m = from_pretrained(tmp_path)
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
    tied = MiniCPM(small())
    idx = torch.randint(0, 97, (2, 12))
    before = tied(idx)[0]
    m = longctx.untie(tied)
    assert m.config.tie_word_embeddings is False and m.lm_head is not None
    assert tied.config.tie_word_embeddings is True and tied.lm_head is None  # a new model: the tied one unchanged
    assert torch.equal(m(idx)[0], before)
    assert m.lm_head.weight.data_ptr() != m.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        m.lm_head.weight.add_(1.0)
    assert not torch.equal(m.lm_head.weight, m.model.embed_tokens.weight)
    assert "lm_head.weight" in m.state_dict()
    assert not torch.equal(m(idx)[0], before)
    assert torch.equal(tied(idx)[0], before)


def test_with_config_shares_weights_and_leaves_the_model_alone():
    torch.manual_seed(0)
    m = MiniCPM(small(max_position_embeddings=32))
    long = m.with_config(max_position_embeddings=128, rope_scaling={"type": "ntk", "factor": 4.0})
    assert m.config.max_position_embeddings == 32 and m.config.rope_scaling is None
    assert long.model.embed_tokens.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()  # shared, not copied
    idx = torch.randint(0, 97, (1, 100))
    assert long(idx)[0].shape == (1, 100, 97)
    with pytest.raises(ValueError, match="sequence of 100 tokens is longer"):
        m(idx)
    with pytest.raises(ValueError, match="no longer fit"):
        m.with_config(hidden_size=32, num_attention_heads=2, num_key_value_heads=2)


# ------------------------------------------------------------------------------------------ data and passkey

import numpy as np  # noqa: E402

import corpus
import tokenizer  # noqa: E402
import train  # noqa: E402
from conftest import cfg  # noqa: E402

ENC = tokenizer.get_encoding()


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 1.0])
def test_passkey_sample_places_the_key_at_the_asked_depth(depth):
    prompt, key = longctx.passkey_sample(np.random.default_rng(3), 300, depth, ENC.encode_ordinary)
    text = ENC.decode(prompt)
    assert len(prompt) == 300 and len(key) == 5 and text.startswith(longctx.INTRO)
    assert text.endswith(longctx.QUESTION)
    needle = f" The pass key:{key}. "
    filler_start, filler_len = len(longctx.INTRO), 300 - len(ENC.encode(longctx.INTRO + needle + longctx.QUESTION))
    assert text.index(needle) - filler_start == round(depth * filler_len)  # position within the filler
    with pytest.raises(ValueError, match="too short"):
        longctx.passkey_sample(np.random.default_rng(0), 40, 0.5, ENC.encode_ordinary)


def test_passkey_scorer():
    assert longctx.score_passkey(" 12345. ", "12345") and longctx.score_passkey("12345", "12345")
    assert not longctx.score_passkey("123456", "12345")  # extra digits are wrong
    assert not longctx.score_passkey("1234", "12345") and not longctx.score_passkey("x12345", "12345")


def test_long_short_mix_ratio_and_determinism(tmp_path):
    d = corpus.TokenData()
    kinds = []
    for step in range(40):
        x, y, k = longctx.mixed_batch(d, 1, step, 25, 128, long_ratio=0.44, short_len=8, passkey_ratio=0.0)
        assert x.shape == (25, 128) and torch.equal(x[:, 1:], y[:, :-1])
        kinds += k
    assert kinds.count("long") / len(kinds) == pytest.approx(0.44, abs=0.01)  # 11 of every 25 rows
    a = longctx.mixed_batch(d, 1, 7, 25, 128, long_ratio=0.44, short_len=8, passkey_ratio=0.2)
    b = longctx.mixed_batch(d, 1, 7, 25, 128, rows=slice(10, 20), long_ratio=0.44, short_len=8, passkey_ratio=0.2)
    assert torch.equal(a[0][10:20], b[0]) and a[2][10:20] == b[2] and a[2].count("passkey") == 5
    row = a[0][a[2].index("passkey")]
    assert ENC.decode(row.tolist()).startswith(longctx.INTRO)


def test_passkey_accuracy_with_known_answers_and_length_errors(monkeypatch):
    torch.manual_seed(0)
    m = MiniCPM(small(vocab_size=320, max_position_embeddings=256))
    keys = []
    real = longctx.passkey_sample

    def sample(*a, **k):
        p, key = real(*a, **k)
        keys.append(key)
        return p, key
    monkeypatch.setattr(longctx, "passkey_sample", sample)

    def oracle(self, idx, n, **kw):  # answers right for even trials, wrong for odd ones
        ans = [ENC.encode(keys[-idx.size(0) + i] + "." if i % 2 == 0 else "00000.") for i in range(idx.size(0))]
        return torch.cat([idx, torch.tensor(ans)], 1)
    monkeypatch.setattr(MiniCPM, "generate", oracle)
    grid = longctx.passkey_accuracy(m, ENC.encode_ordinary, ENC.decode, [96, 128], [0.0, 1.0], trials=4)
    assert grid == {96: [0.5, 0.5], 128: [0.5, 0.5]}
    with pytest.raises(ValueError, match="passkey context of 256 tokens .* exceeds the 256 tokens the model supports"):
        longctx.passkey_accuracy(m, ENC.encode_ordinary, ENC.decode, [256], [0.5])


def test_train_continues_at_longer_length_with_abf_and_untie(tmp_path):
    short = cfg(tmp_path / "short", max_position_embeddings=96, seq_len=96, decay_steps=0, passkey_ratio=0.25)
    train.train(short, quiet=True)
    res = train.train(cfg(tmp_path / "long", init_from=str(tmp_path / "short"), max_position_embeddings=192,
                          seq_len=192, rope_theta=1e6, tie_word_embeddings=False, long_ratio=0.44, short_len=16,
                          max_steps=16, decay_steps=4), quiet=True)
    m = res["model"]
    assert res["step"] == 16 and m.config.rope_theta == 1e6 and m.lm_head is not None
    assert not torch.equal(m.lm_head.weight, m.model.embed_tokens.weight)  # trained apart after untying
    with pytest.raises(train.ConfigError, match="set short_len"):
        train.train(cfg(tmp_path / "x", long_ratio=0.5), quiet=True)


def test_loss_by_position_buckets_average_to_the_model_loss():
    torch.manual_seed(0)
    m = MiniCPM(MiniCPMConfig.from_preset("tiny", hidden_size=64, num_hidden_layers=2, max_position_embeddings=64))
    data = corpus.TokenData()
    curve = longctx.loss_by_position(m, data, 64, windows=3, buckets=4, seed=1)
    w = torch.from_numpy(data.read("val", *data.draw("val", np.random.default_rng(1), 65, 3), 65))
    _, loss = m(w[:, :-1], w[:, 1:])
    assert len(curve) == 4 and abs(sum(curve) / 4 - loss.item()) < 1e-5
    # each bucket is the mean loss of its positions over the windows
    with torch.no_grad():
        per_tok = torch.nn.functional.cross_entropy(m(w[:, :-1])[0].transpose(1, 2), w[:, 1:], reduction="none")
    assert curve[0] == pytest.approx(per_tok[:, :16].mean().item(), abs=1e-5)


import pytest
import torch
import torch.nn.functional as F

import moe
import checkpoint
import train
from model import MiniCPM, MiniCPMConfig, MoE, load_balancing_loss
from conftest import cfg, losses


def dense(**kw):
    torch.manual_seed(0)
    base = dict(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                intermediate_size=96, dim_model_base=16)
    return MiniCPM(MiniCPMConfig(**{**base, **kw}))


@pytest.mark.parametrize("kv", [4, 2])
def test_upcycled_moe_computes_the_dense_function(kv):
    d = dense(num_key_value_heads=kv)
    m = moe.upcycle(d, num_experts=8, top_k=2)
    idx = torch.randint(0, 97, (3, 17))
    torch.testing.assert_close(m(idx)[0], d(idx)[0], rtol=1e-5, atol=1e-5)
    assert all(isinstance(layer.mlp, MoE) for layer in m.model.layers)
    assert torch.equal(m.model.layers[1].self_attn.q_proj.weight, d.model.layers[1].self_attn.q_proj.weight)
    for e in range(8):  # every expert an exact copy of its layer's dense MLP
        assert torch.equal(m.model.layers[0].mlp.down_proj[e], d.model.layers[0].mlp.down_proj.weight)
    m.model.layers[0].mlp.up_proj.data[3] += 1  # copies, not views of the dense weights
    assert not torch.equal(m.model.layers[0].mlp.up_proj[3], d.model.layers[0].mlp.up_proj.weight)
    assert torch.equal(m.generate(idx[:, :5], 8, top_k=1)[:1], dense(num_key_value_heads=kv).generate(
        idx[:1, :5], 8, top_k=1))


def test_dispatch_equals_naive_per_token_reference():
    torch.manual_seed(1)
    c = MiniCPMConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, intermediate_size=48,
                      num_experts=6, top_k=2)
    layer = MoE(c)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 13, 64)
    y, router_logits = layer(x)
    torch.testing.assert_close(router_logits, x.reshape(-1, 64) @ layer.router.weight.T)
    ref = torch.zeros(26, 64)
    for t, xt in enumerate(x.reshape(-1, 64)):
        p = torch.softmax(layer.router.weight @ xt, -1)
        w, e = p.topk(2)
        w = w / w.sum()
        for wi, ei in zip(w, e):
            h = F.silu(layer.gate_proj[ei] @ xt) * (layer.up_proj[ei] @ xt)
            ref[t] += wi * (layer.down_proj[ei] @ h)
    torch.testing.assert_close(y.reshape(-1, 64), ref, rtol=1e-5, atol=1e-5)


def test_every_parameter_gets_a_gradient():
    m = moe.upcycle(dense(), num_experts=4, top_k=2)
    idx = torch.randint(0, 97, (8, 32))
    _, loss = m(idx, torch.roll(idx, -1, 1))
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for layer in m.model.layers:  # each expert got tokens, so each expert's slice has a gradient
        assert (layer.mlp.gate_proj.grad.abs().sum((1, 2)) > 0).all()


def test_load_balancing_loss_values():
    E, k, N = 8, 2, 64
    balanced = torch.full((N, E), -10.0)
    for t in range(N):  # token t prefers experts t % 8 and (t + 1) % 8 equally: every expert gets 1/8 of slots
        balanced[t, [t % E, (t + 1) % E]] = 10.0
    assert load_balancing_loss(balanced, k).item() == pytest.approx(1.0, abs=1e-3)
    collapsed = torch.full((N, E), -10.0)
    collapsed[:, :2] = 10.0
    assert load_balancing_loss(collapsed, k).item() == pytest.approx(E / k, rel=1e-3)
    logits = torch.randn(N, E)  # the formula itself
    probs = torch.softmax(logits, -1)
    top = probs.topk(k, -1).indices
    f = torch.stack([(top == i).sum() for i in range(E)]).float() / (N * k)
    assert load_balancing_loss(logits, k).item() == pytest.approx(E * (f * probs.mean(0)).sum().item(), rel=1e-6)


def test_parameter_accounting_for_minicpm_moe_8x2b():
    with torch.device("meta"):
        m = MiniCPM(MiniCPMConfig.from_preset("minicpm-2.4b", num_experts=8, top_k=2))
    total, active = moe.param_counts(m)
    assert total == pytest.approx(13.6e9, rel=0.01) and active == pytest.approx(4.0e9, rel=0.02)
    per_expert = 3 * 2304 * 5760
    assert total - active == 40 * 6 * per_expert


def test_bad_expert_counts_are_clear_errors():
    with pytest.raises(ValueError, match="top_k=3 must be within \\[1, num_experts=2\\]"):
        MiniCPMConfig(num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="top_k=9"):
        moe.upcycle(dense(), num_experts=8, top_k=9)
    with pytest.raises(ValueError, match="num_experts=0: upcycling needs at least 1 expert"):
        moe.upcycle(dense(), num_experts=0)
    with pytest.raises(ValueError, match="num_experts"):
        MiniCPMConfig(num_experts=-1)


def test_train_upcycles_logs_and_resumes_exactly(tmp_path, kept_checkpoints):
    train.train(cfg(tmp_path / "dense", decay_steps=0), quiet=True)
    c = cfg(tmp_path / "moe", init_from=str(tmp_path / "dense"), num_experts=4, top_k=2, max_steps=24,
            decay_steps=4, ckpt_interval=6)
    saved = kept_checkpoints
    full = train.train(c, quiet=True)
    assert full["step"] == 24 and len(full["train_loss"]) == 12
    rows = [r for r in checkpoint.read_jsonl(tmp_path / "moe" / "metrics.jsonl") if "train_loss" in r]
    assert all(len(r["expert_load"]) == 4 and abs(sum(r["expert_load"]) - 1) < 1e-3 and r["aux_loss"] >= 1 - 1e-4
               for r in rows)
    ck = torch.load(tmp_path / "moe" / "ckpt.pt", weights_only=True)
    assert ck["model"]["model.layers.0.mlp.gate_proj"].shape == (4, 128, 64)
    (tmp_path / "moe" / "ckpt.pt").write_bytes(saved[18])  # a MoE run killed after step 18 resumes exactly
    res = train.train({**c, "resume": True}, quiet=True)
    assert res["train_loss"] == full["train_loss"][-6:]
    assert [s for s, _ in losses(tmp_path / "moe")] == list(range(13, 25))

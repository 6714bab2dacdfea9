import numpy as np
import pytest

import mup
from experiments import mup as mup_experiment
from model import MiniCPM, MiniCPMConfig


@pytest.mark.parametrize("use_mup, tied", [(True, True), (True, False), (False, True)])
def test_optimizer_groups_lrs(use_mup, tied):
    c = MiniCPMConfig(hidden_size=512, num_attention_heads=8, num_key_value_heads=2, intermediate_size=1280,
                      num_hidden_layers=2, tie_word_embeddings=tied, use_mup=use_mup)
    m = MiniCPM(c)
    opt = mup.configure_optimizer(m, lr=0.01, weight_decay=0.1)
    groups = {g["name"]: g for g in opt.param_groups}
    mult = 2.0 if use_mup else 1.0  # m = 512 / 256
    assert groups["hidden"]["lr"] == pytest.approx(0.01 / mult) and groups["hidden"]["weight_decay"] == 0.1
    assert groups["embedding"]["lr"] == pytest.approx(0.01) and groups["embedding"]["weight_decay"] == 0.1
    assert groups["norm"]["lr"] == pytest.approx(0.01) and groups["norm"]["weight_decay"] == 0.0
    assert opt.defaults["betas"] == (0.9, 0.95)
    names = {id(p): n for n, p in m.named_parameters()}
    emb = {names[id(p)] for p in groups["embedding"]["params"]}
    assert emb == ({"model.embed_tokens.weight"} if tied else {"model.embed_tokens.weight", "lm_head.weight"})
    assert all(names[id(p)].endswith("layernorm.weight") or names[id(p)] == "model.norm.weight"
               for p in groups["norm"]["params"])
    assert len(groups["hidden"]["params"]) == 2 * 7  # q k v o gate up down per layer
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(m.parameters()))
    mup.set_lr(opt, 0.004)
    assert groups["hidden"]["lr"] == pytest.approx(0.004 / mult) and groups["norm"]["lr"] == pytest.approx(0.004)


def test_coordinate_check_flat_under_mup_growing_under_sp():
    widths = [64, 128, 256, 512]
    res = {mode: mup_experiment.coord_check(widths, mode == "muP", steps=3, lr=1e-2, batch_size=4, seq_len=32, layers=1)
           for mode in ("muP", "SP")}
    for kind in ("attention", "mlp"):
        sp, mp = mup_experiment.growth(res["SP"][kind], widths), mup_experiment.growth(res["muP"][kind], widths)
        assert sp > 0.5, (kind, sp)  # SP: activations grow ~ width^0.5 or faster
        assert mp < 0.15, (kind, mp)  # muP: no growth with width
        assert sp - mp > 0.6


def test_growth_slope_exact():
    assert mup_experiment.growth([1, 2, 4, 8], [1, 2, 4, 8]) == pytest.approx(1.0)
    assert mup_experiment.growth([3, 3, 3], [10, 20, 40]) == pytest.approx(0.0)


def test_best_lr_parabola_vertex():
    lrs = [0.001, 0.002, 0.004, 0.008, 0.016]
    losses = [(np.log2(lr) - np.log2(0.003)) ** 2 + 2 for lr in lrs]  # a parabola in log2(lr), minimum at 0.003
    assert mup_experiment.best_lr(lrs, losses) == pytest.approx(0.003)
    assert mup_experiment.best_lr(lrs, [1, 2, 3, 4, 5]) == 0.001  # minimum at the grid's edge: the grid point

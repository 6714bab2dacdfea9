import math

import pytest

import train
import wsd
from wsd import DECAYS, cosine_loop_lr, cosine_lr, wsd_lr

KW = dict(lr=0.01, W=10, T=80, S=100)


@pytest.mark.parametrize("decay", DECAYS)
def test_wsd_phase_boundaries(decay):
    f = lambda s: wsd_lr(s, decay=decay, **KW)  # noqa: E731
    assert f(0) == 0.0 and f(5) == pytest.approx(0.005) and f(10) == 0.01  # warmup s/W * eta
    assert f(11) == f(50) == f(79) == f(80) == 0.01  # stable at exactly eta, decay starts at f(0) = 1
    assert f(100) == pytest.approx(0.001)  # final_lr_ratio * eta at S
    assert f(150) == f(100)  # flat after S
    assert all(f(s + 1) < f(s) for s in range(80, 100))  # strictly decreasing in the decay


def test_wsd_decay_shapes_midpoints():
    r = 0.1
    mid = lambda d: wsd_lr(90, decay=d, **KW) / 0.01  # noqa: E731  x = 0.5
    assert mid("exp") == pytest.approx(math.sqrt(r))  # exp ending at r: f(x) = r^x
    assert mid("linear") == pytest.approx((1 + r) / 2)
    assert mid("cosine") == pytest.approx((1 + r) / 2)
    assert wsd_lr(85, decay="1-sqrt", **KW) / 0.01 == pytest.approx(1 - (1 - r) * 0.5)  # x = 0.25
    assert wsd_lr(85, decay="cosine", **KW) / 0.01 == pytest.approx(r + (1 - r) * 0.5 * (1 + math.cos(math.pi / 4)))


def test_wsd_explicit_half_life_is_honoured():
    f = lambda s: wsd_lr(s, lr=1.0, W=0, T=0, S=20000, half_life=5000)  # noqa: E731  the paper's 5000 steps
    assert f(5000) == pytest.approx(0.5) and f(10000) == pytest.approx(0.25) and f(20000) == pytest.approx(1 / 16)


@pytest.mark.parametrize("kw, name", [
    (dict(W=90), "W=90 > T=80"), (dict(T=120), "T=120 > S=100"), (dict(decay="step"), "decay='step'"),
    (dict(half_life=0), "half_life"), (dict(final_lr_ratio=-0.1), "final_lr_ratio"),
    (dict(final_lr_ratio=0.0), "an exp decay never reaches 0"), (dict(W=-1), "W=-1")])
def test_wsd_bad_arguments(kw, name):
    with pytest.raises(ValueError, match=name.replace("(", r"\(")):
        wsd_lr(5, **{**KW, **kw})


@pytest.mark.parametrize("decay", ["linear", "cosine", "1-sqrt"])
def test_a_decay_straight_to_zero(decay):
    # Bergsma et al. 2025 ("Straight to Zero"): final_lr_ratio = 0 ends the decay at 0, in train.py's config too
    f = lambda s: wsd_lr(s, lr=1.0, W=0, T=80, S=100, decay=decay, final_lr_ratio=0.0)  # noqa: E731
    assert f(80) == 1.0 and 0 < f(99) < f(90) < 1 and f(100) == 0.0
    assert cosine_lr(100, lr=1.0, T=100, final_lr_ratio=0.0) == pytest.approx(0.0, abs=1e-12)
    c = train.get_config(["--max_steps=100", f"--decay={decay}", "--final_lr_ratio=0"])
    assert wsd.lr_at(c, 100) == 0.0


def test_cosine_baselines():
    c = lambda s, T: cosine_lr(s, lr=0.01, T=T, W=10)  # noqa: E731
    assert c(5, 100) == pytest.approx(0.005) and c(10, 100) == pytest.approx(0.01)
    assert c(55, 100) == pytest.approx(0.01 * (0.1 + 0.9 * 0.5))  # half-way through the cosine
    assert c(100, 100) == pytest.approx(0.001) and c(140, 100) == pytest.approx(0.001)  # Cosine(T<S): flat after T
    assert c(100, 190) > 0.005  # Cosine(T>S): still high at S
    loop = lambda s: cosine_loop_lr(s, lr=0.01, T=50, W=0)  # noqa: E731
    assert loop(50) == pytest.approx(0.001) and loop(100) == pytest.approx(0.01) and loop(75) == pytest.approx(
        loop(25))
    with pytest.raises(ValueError, match="W=60 > T=50"):
        cosine_lr(0, lr=0.01, T=50, W=60)

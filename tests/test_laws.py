import math

import numpy as np
import pytest

import batchsize
import scaling_law as sl
from experiments import decay_mix, depth, scaling_tokens, small_long


# ------------------------------------------------------------------------------------------ batch size (§3.2)

def test_optimal_batch_size_is_the_papers_law():
    assert batchsize.optimal_batch_size(2.5) == pytest.approx(1.21e9 / 2.5 ** 6.24)
    assert batchsize.optimal_batch_size(2.5) == pytest.approx(3.97e6, rel=5e-3)  # paper §3.2: 3.97M tokens at L=2.5
    assert batchsize.optimal_batch_size([2.0, 3.0]) == pytest.approx([1.21e9 / 2 ** 6.24, 1.21e9 / 3 ** 6.24])


def test_fit_batch_size_law_recovers_parameters():
    rng = np.random.default_rng(0)
    L = rng.uniform(2.0, 4.0, 40)
    bs = 1.21e9 / L ** 6.24 * np.exp(rng.normal(0, 0.05, 40))
    a, b = batchsize.fit_batch_size_law(L, bs)
    assert b == pytest.approx(6.24, abs=0.15) and math.log(a) == pytest.approx(math.log(1.21e9), abs=0.25)
    with pytest.raises(ValueError, match="positive"):
        batchsize.fit_batch_size_law([2.0, -1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="equal-length"):
        batchsize.fit_batch_size_law([2.0, 3.0], [1.0])


def test_best_batch_per_loss_on_synthetic_curves():
    # curves L(t) = 2 + k_bs / t^0.5 + f_bs where a larger batch wastes tokens early and wins late (a lower floor)
    t = np.geomspace(1e2, 1e7, 400)
    curves = {bs: (t, 2 + k / t ** 0.5 + f) for bs, k, f in ((1e3, 10, 0.04), (4e3, 14, 0.01), (1.6e4, 25, 0.0))}
    levels = [2.8, 2.1, 2.05]
    best = batchsize.best_batch_per_loss(curves, levels)
    assert len(best) == 3
    # brute force on a fine grid: the batch whose curve first gets below each level; the best batch is the vertex
    # of the parabola in log2(batch) of log(tokens) through it and its neighbours (closed form for equal spacing)
    for level, bs, tok in best:
        first = {b: t[np.nonzero(c[1] <= level)[0][0]] for b, c in curves.items()}
        grid = sorted(first)
        i = grid.index(min(first, key=first.get))
        assert tok <= first[grid[i]] and tok >= t[max(0, np.searchsorted(t, first[grid[i]]) - 1)]
        if i in (0, len(grid) - 1):
            assert bs == grid[i]
        else:
            y = [np.log(batchsize.tokens_to_reach(*curves[b], level)) for b in grid[i - 1:i + 2]]
            h = np.log2(grid[i + 1] / grid[i])
            vertex = np.log2(grid[i]) + h * (y[0] - y[2]) / (2 * (y[0] - 2 * y[1] + y[2]))
            assert np.log2(bs) == pytest.approx(vertex, abs=1e-9) and grid[i - 1] < bs < grid[i + 1]
    assert [b for _, b, _ in best] == sorted(b for _, b, _ in best)  # lower loss -> larger optimal batch
    assert batchsize.best_batch_per_loss(curves, [2.03]) == []  # a level some batch never reaches: left out
    assert batchsize.tokens_to_reach([0, 10], [3.0, 1.0], 2.0) == pytest.approx(5.0)
    # one noisy low evaluation does not stand for the curve: the isotonic fit pools it with its rising neighbours
    assert batchsize.isotonic_decreasing([3.0, 2.4, 2.7, 2.5, 2.2]) == pytest.approx([3.0, 2.55, 2.55, 2.5, 2.2])
    assert batchsize.isotonic_decreasing([3.0, 2.4, 2.7, 2.8, 2.2]) == pytest.approx([3.0, 2.6333, 2.6333, 2.6333,
                                                                                      2.2], abs=1e-4)
    assert batchsize.isotonic_decreasing([1.0, 2.0, 3.0]) == pytest.approx([2.0, 2.0, 2.0])
    noisy = ([0, 10, 20, 30, 40], [3.0, 2.4, 2.7, 2.5, 2.2])
    later = 30 + 10 * (2.5 - 2.45) / (2.5 - 2.2)  # (the raw curve crosses at 9.2)
    assert batchsize.tokens_to_reach(*noisy, 2.45) == pytest.approx(later, abs=1e-3)
    assert batchsize.tokens_to_reach([0, 10], [3.0, 2.5], 2.0) is None


# ------------------------------------------------------------------------------------------ scaling law (§4.5)

def test_law_values_and_key_access():
    law = sl.ScalingLaw(C_N=2.0, alpha=0.5, C_D=3.0, beta=0.25, L0=1.0)
    assert law(4.0, 16.0) == pytest.approx(2 / 2 + 3 / 2 + 1)
    assert law["alpha"] == 0.5 and law.C_D == 3.0
    p = sl.PAPER_LAW
    assert p(1e9, 1e9) == pytest.approx(0.0715 + 0.300 + 0.31)  # N = D = 1 billion


def test_compute_optimal_closed_form_matches_brute_force():
    for law in (sl.PAPER_LAW, sl.ScalingLaw(C_N=406.4, alpha=0.34, C_D=410.7, beta=0.28, L0=1.69)):
        for C in (1e18, 1e21, 1e23):
            n, d = sl.compute_optimal(C, law)
            assert 6 * n * d == pytest.approx(C)
            grid = np.geomspace(n / 100, n * 100, 200001)
            brute = grid[np.argmin(law(grid, C / (6 * grid)))]
            assert n == pytest.approx(brute, rel=2e-3)
    n, d = sl.compute_optimal(6 * 1e9 * 186.2e9, sl.PAPER_LAW)  # paper §4.5: ~190 tokens per parameter at N = 1B
    assert n == pytest.approx(1e9, rel=0.02) and d / n == pytest.approx(186, rel=0.05)


def test_ratio_for_size_is_the_compute_optimal_frontier():
    # D_opt / N at a given N equals compute_optimal's ratio at the compute where that N is optimal
    for law in (sl.PAPER_LAW, sl.ScalingLaw(C_N=406.4, alpha=0.34, C_D=410.7, beta=0.28, L0=1.69)):
        for C in (1e12, 1e18, 1e21):
            n, d = sl.compute_optimal(C, law)
            assert sl.ratio_for_size(n, law) == pytest.approx(d / n, rel=1e-9)
    assert sl.ratio_for_size(1e9, sl.PAPER_LAW) == pytest.approx(186, rel=0.05)  # paper §4.5: ~190 at N = 1B
    with pytest.raises(ValueError, match="no compute-optimal"):
        sl.ratio_for_size(1e6, sl.ScalingLaw(C_N=1.0, alpha=-0.1, C_D=1.0, beta=0.2, L0=1.0))


def test_fit_scaling_law_recovers_known_parameters():
    rng = np.random.default_rng(0)
    true = sl.ScalingLaw(C_N=406.4, alpha=0.34, C_D=410.7, beta=0.28, L0=1.69)  # Chinchilla's law
    N = np.repeat(np.geomspace(1e7, 1e9, 6), 6)
    D = np.concatenate([n * np.geomspace(10, 60, 6) for n in np.geomspace(1e7, 1e9, 6)])
    L = true(N, D) * np.exp(rng.normal(0, 0.002, len(N)))
    fit = sl.fit_scaling_law(N, D, L, top_k=4)  # 4 starts: the 32 of the default reach the same optimum, 7x slower
    assert fit.alpha == pytest.approx(0.34, abs=0.05) and fit.beta == pytest.approx(0.28, abs=0.05)
    assert fit.L0 == pytest.approx(1.69, abs=0.08)
    assert np.abs(np.log(fit(N, D)) - np.log(L)).max() < 0.01


@pytest.mark.parametrize("args, msg", [
    (([1, 2, 3], [1, 2, 3], [1, 2, 3]), "need >= 5"),
    (([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 2, 3, 4]), "equal length"),
    (([1, 2, 3, 4, -5], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5]), "positive"),
    (([1, 2, 3, 4, 5], [1, 2, 0, 4, 5], [1, 2, 3, 4, 5]), "positive")])
def test_fit_scaling_law_rejects_degenerate_input(args, msg):
    with pytest.raises(ValueError, match=msg):
        sl.fit_scaling_law(*args)


def test_the_annealing_law_fit_recovers_a_known_law():
    # curves made by L0 + A S1^-alpha - C S2 on two schedules: the fit finds the law again, and predicts a third
    from experiments import anneal_law
    base = dict(lr=1.0, max_steps=500, warmup_steps=10, schedule="wsd", decay="exp", final_lr_ratio=0.1,
                half_life=0.0, cosine_steps=0, stage_warmup_steps=0)
    runs = {"stable": dict(base, decay_steps=0), "cosine": dict(base, schedule="cosine", decay_steps=0),
            "wsd": dict(base, decay_steps=50)}
    law = dict(L0=2.0, A=1.5, alpha=0.5, C=0.02)
    curve = {}
    for name, cfg in runs.items():
        s1, s2 = anneal_law.areas(cfg, 1.0)
        curve[name] = (s1, s2, law["L0"] + law["A"] * s1 ** -law["alpha"] - law["C"] * s2)
    points = [(curve[n][0][s], curve[n][1][s], curve[n][2][s]) for n in ("stable", "cosine")
              for s in range(49, 500, 50)]
    got = anneal_law.fit(points)
    assert got["alpha"] == pytest.approx(0.5, abs=0.01) and got["C"] == pytest.approx(0.02, rel=0.05)
    s1, s2, y = curve["wsd"]
    assert got["L0"] + got["A"] * s1[-1] ** -got["alpha"] - got["C"] * s2[-1] == pytest.approx(y[-1], abs=2e-3)


# ------------------------------------------------------------------------------------------ the registered designs

def test_the_residual_scalings_of_the_depth_design():
    m = {mode: {L: depth.scale_depth(mode, L) / math.sqrt(L) for L in (2, 8, 32)} for mode in depth.MODES}
    assert m["plain"] == {2: 1.0, 8: 1.0, 32: 1.0}
    assert m["CompleteP"][2] == m["depth-muP"][2]  # one model at 2 layers: its runs are trained once
    assert m["CompleteP"][8] * 8 == pytest.approx(m["CompleteP"][32] * 32)  # 1/L
    assert m["depth-muP"][8] * math.sqrt(8) == pytest.approx(m["depth-muP"][32] * math.sqrt(32))  # 1/sqrt(L)


def test_a_fit_without_an_optimum_enters_at_its_registered_bound():
    law = sl.ScalingLaw(C_N=1.0, alpha=0.3, C_D=1.0, beta=0.2, L0=0.5)
    assert scaling_tokens.d_over_n(law, 1e4) == pytest.approx(float(sl.ratio_for_size(1e4, law)))
    assert scaling_tokens.d_over_n(sl.ScalingLaw(C_N=1.0, alpha=-0.1, C_D=1.0, beta=0.2, L0=0.5), 1e4) == 1e5
    assert scaling_tokens.d_over_n(sl.ScalingLaw(C_N=1.0, alpha=0.3, C_D=1.0, beta=0.0, L0=0.5), 1e4) == 1.0


def test_the_small_long_ladder_reads_k_times_the_large_runs_compute():
    N = small_long.sizes()
    large, unit = small_long.steps(N)
    assert (N[16], N[32], large, unit) == (5200, 23712, 926, 3800)
    for k in small_long.DESIGN["compute"]:
        small = k * unit + k * unit // 9  # the stable steps to the branch point and the branch's decay
        assert N[16] * small / (N[32] * large) == pytest.approx(k, rel=0.002)


def test_the_rows_matched_control_reads_as_many_task_rows_as_the_mixed_decay():
    rows = decay_mix.task_rows()
    assert rows == dict(rows=1440, sft_steps=45) and decay_mix.DESIGN["matched_steps"] == rows["sft_steps"]
    start, n, m = 450, decay_mix.DESIGN["sft_steps"], decay_mix.DESIGN["sft_steps"] + 45
    # the A-1 SFT run keeps a checkpoint at the shared SFT length n, and ends at the matched length m
    assert (start + n) % decay_mix.DESIGN["ckpt_every"] == 0
    assert decay_mix.checkpoint("d", start, n, m).endswith("ckpt_000550.pt")
    assert decay_mix.checkpoint("d", start, m, m).endswith("/ckpt.pt")

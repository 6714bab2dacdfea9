"""
A later scaling law beside the paper's §4.3: Tissue et al. 2024, "Scaling Law with Learning Rate Annealing". The loss
at step s of any schedule follows from two areas under its learning-rate curve:

    L(s) = L0 + A * S1^(-alpha) - C * S2
    S1 = sum_{i <= s} eta_i                                   the forward area
    S2 = sum_{i <= s} m_i,  m_i = lam * m_{i-1} + (eta_{i-1} - eta_i)   the annealing area, lam = 0.999

eta in units of the sweep's base lr. Fitted on two schedules of the WSD sweep (the constant-lr stable run and
Cosine(S), mean validation curves over seeds), then asked for the final loss of every other schedule of that sweep,
at every lr it ran. No training: it reads results/wsd_quick.json.

    python -m experiments.anneal_law        # results/anneal_law_quick.json and the table of experiments/README.md
"""

import itertools

import numpy as np

from experiments import cli, runner
from experiments.runner import Experiment, read_results
from experiments.schedules import ARMS, replicate
from wsd import lr_at

LAM = 0.999  # the annealing momentum of Tissue et al. 2024
FIT_ON = ("stable", "Cosine(T=500)")  # the two curves the law is fitted on; every other plain run is predicted
# the schedules sweep (20 and 5 tokens a parameter): the lr most of its replicates chose, and the two fitted curves
REGIME_LR, REGIME_FIT_ON = 0.002, ("WSD exp 10% @20", "Cosine(T=S) @20")
ALPHAS = np.linspace(0.02, 2.0, 496)  # the grid of alpha; (L0, A, C) are linear given it


def areas(cfg, base_lr):
    """(S1, S2) after each step s = 1 .. max_steps of a run's schedule (wsd.lr_at), eta in units of base_lr."""
    eta = np.array([0.0] + [lr_at(cfg, s) for s in range(1, cfg["max_steps"] + 1)]) / base_lr
    m, s2 = 0.0, []
    for i in range(1, len(eta)):
        m = LAM * m + (eta[i - 1] - eta[i])
        s2.append(m)
    return np.cumsum(eta[1:]), np.cumsum(s2)


def design(s1, s2, alpha):
    """The columns of L0, A and -C at alpha."""
    return np.stack([np.ones_like(s1), s1 ** -alpha, -s2], axis=1)


def fit(points):
    """(L0, A, alpha, C) minimising the squared error over points [(S1, S2, loss)]: least squares in (L0, A, C) for
    each alpha of the grid."""
    s1, s2, y = (np.array(v, dtype=float) for v in zip(*points))
    best = None
    for alpha in ALPHAS:
        X = design(s1, s2, alpha)
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        sse = float(((X @ coef - y) ** 2).sum())
        if best is None or sse < best[0]:
            best = (sse, alpha, coef)
    _, alpha, (L0, A, C) = best
    return dict(L0=float(L0), A=float(A), alpha=float(alpha), C=float(C), rmse=float(np.sqrt(best[0] / len(y))))


def mean_curve(runs):
    """[(step, mean validation loss over the runs)] of one schedule's runs (its seeds)."""
    steps = [s for s, _ in runs[0]["metrics"]["val_loss"]]
    return [(s, float(np.mean([dict(r["metrics"]["val_loss"])[s] for r in runs]))) for s in steps]


def fit_and_predict(schedules, fit_on, base):
    """Fit the law on the mean curves of `fit_on`, predict every other schedule's final loss. schedules: {name:
    the runs (seeds) of one schedule, all at the lr `base`}."""
    curves = {name: mean_curve(runs) for name, runs in schedules.items()}
    cum = {name: areas(runs[0]["config"], base) for name, runs in schedules.items()}
    points = [(cum[n][0][s - 1], cum[n][1][s - 1], loss) for n in fit_on for s, loss in curves[n]]
    law = fit(points)
    rows = {}
    for name, runs in schedules.items():
        S = runs[0]["config"]["max_steps"]
        s1, s2 = cum[name][0][S - 1], cum[name][1][S - 1]
        predicted = law["L0"] + law["A"] * s1 ** -law["alpha"] - law["C"] * s2
        rows[name] = dict(measured=curves[name][-1][1], predicted=float(predicted), fitted_on=name in fit_on)
    held = [n for n in schedules if n not in fit_on]
    pairs = list(itertools.combinations(held, 2))
    agree = sum((rows[a]["measured"] < rows[b]["measured"]) == (rows[a]["predicted"] < rows[b]["predicted"])
                for a, b in pairs)
    # a fit whose alpha sits at an edge of its grid, or whose floor L0 is below 0, has not found the law's shape
    law["degenerate"] = bool(law["alpha"] <= ALPHAS[0] or law["alpha"] >= ALPHAS[-1] or law["L0"] < 0)
    return dict(law=law, runs=rows, held_out=len(held), pairs=len(pairs), pairs_ordered_right=agree,
                mean_abs_error=float(np.mean([abs(rows[n]["predicted"] - rows[n]["measured"]) for n in held])),
                lam=LAM, fit_on=list(fit_on), base_lr=base)


def experiment(quick=True, out=runner.ROOT, fresh=False, seeds=None, data=None):
    """Fit the law on FIT_ON and predict every other plain run (no init_from) of the WSD sweep; then on two
    schedules of the schedules sweep at 20 tokens a parameter, predicting the rest at 20 and 5; write the
    summaries."""
    res = read_results("wsd_quick")
    plain = sorted({k.split(" seed")[0] for k, v in res.items() if not v["config"]["init_from"]})
    schedules = {n: [res[k] for k in res if k == n or k.startswith(n + " seed")] for n in plain}
    summary = dict(fit_and_predict(schedules, FIT_ON, res[FIT_ON[0]]["config"]["lr"]), source="results/wsd_quick.json",
                   seeds=len(schedules[FIT_ON[0]]))
    runner.write_summary(out, "anneal_law_quick", summary)
    sched = read_results("schedules_summary_quick")
    done = read_results("schedules_quick")
    in_regime = {f"{arm} @{tpp}": [done[f"{replicate(arm, tpp, s)}, lr {REGIME_LR:g}"] for s in sched["seeds"]]
                 for tpp in (20, 5) for arm in ARMS}
    regime = dict(fit_and_predict(in_regime, REGIME_FIT_ON, REGIME_LR), source="results/schedules_quick.json",
                  seeds=len(sched["seeds"]))
    runner.write_summary(out, "anneal_law_schedules_quick", regime)
    for name, s in (("WSD sweep", summary), ("schedules sweep", regime)):
        law = s["law"]
        print(f"{name}, fit on {', '.join(s['fit_on'])}: L0 {law['L0']:.3f}, A {law['A']:.3f}, alpha "
              f"{law['alpha']:.2f}, C {law['C']:.2e}; {s['held_out']} schedules predicted, mean |error| "
              f"{s['mean_abs_error']:.4f}, {s['pairs_ordered_right']} of {s['pairs']} pairs in the measured order")
    return summary


def law_table(name, degenerate_why):
    """Tissue et al.'s law, fitted on two curves, against every other schedule's measured final loss."""
    s = read_results(name)
    law = s["law"]
    out = [f"Fitted on {' and '.join(s['fit_on'])} (mean validation curves, {s['seeds']} seeds, lr {s['base_lr']:g}): "
           f"L0 = {law['L0']:.3f}, A = {law['A']:.3f}, alpha = {law['alpha']:.2f}, C = {law['C']:.2e} (rmse "
           f"{law['rmse']:.4f}). On the {s['held_out']} other schedules the mean error is {s['mean_abs_error']:.4f} "
           f"nats, and {s['pairs_ordered_right']} of {s['pairs']} pairs come out in the measured order." +
           (" The fit is degenerate: alpha sits at the edge of its grid or L0 below 0, so no power law in S1 fits "
            "these curves. " + degenerate_why if law["degenerate"] else ""), "",
           "| schedule | measured final loss | predicted | error |", "|---|---|---|---|"]
    for run, r in sorted(s["runs"].items(), key=lambda kv: kv[1]["measured"]):
        tag = " (fitted on)" if r["fitted_on"] else ""
        out.append(f"| {run}{tag} | {r['measured']:.4f} | {r['predicted']:.4f} | "
                   f"{r['predicted'] - r['measured']:+.4f} |")
    return "\n".join(out)


def anneal_law_table():
    return law_table("anneal_law_quick", "The runs are far from converged at 500 steps.")


def anneal_law_schedules_table():
    return law_table("anneal_law_schedules_quick", "At 20 tokens a parameter too, the curves fall like log S1 (alpha "
                                                   "near 0), not as a power law with a floor.")


EXPERIMENT = Experiment(name="anneal_law", section="§4.3 (Tissue et al. 2024)",
                        rerun=("python -m experiments.anneal_law --quick --seeds 5",),
                        sweeps=("wsd_quick", "schedules_quick"),
                        tables={"anneal-law": anneal_law_table, "anneal-law-schedules": anneal_law_schedules_table})


def main():
    cli.main("Tissue et al. 2024's lr-annealing law fitted on two WSD-sweep curves, predicting the others "
             "(no training)", experiment)


if __name__ == "__main__":
    main()

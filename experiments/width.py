"""
Paper §3.3 (Fig. 3) in a registered design: under muP the best lr stays put when the model gets wider; under the
standard parametrisation (SP) it slides. Widths 32 and 128 at 2 layers, each lr tuned inside every replicate, over
8 fresh seeds, on python_source (no repeated text). The claims and the design are registered in experiments/claims.py
(design "width") before the runs. The best lr of a replicate is the vertex of a parabola in log2(lr) through its
grid's lowest loss and the two neighbours (experiments/depth.py: tuned); the shift is log2(best lr at width 128 /
best lr at width 32), in octaves.

    python -m experiments.width --quick --seeds 8   # 2-core CPU: ~55 min at one thread (its only setting)
"""

import math
import os

from experiments import claims, cli, findings, runner
from experiments.depth import tuned
from experiments.runner import Experiment, ms, read_results
from mup import width_config

DESIGN = claims.DESIGNS["width"]
MODES = ("muP", "SP")
LRS = (0.001, 0.002, 0.004)  # the registered starting grid
MODEL_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
              "use_mup")


def replicate(mode, w, seed):
    return f"{mode} w{w} seed{seed}"


def run_of(rep, lr):
    """The config of one replicate at one lr."""
    mode, w, seed = rep
    c = width_config(w, mode == "muP", DESIGN["layers"])
    S = DESIGN["steps"]
    return dict(preset="tiny", **{k: getattr(c, k) for k in MODEL_KEYS}, data="python_source", batch_size=16,
                seq_len=64, out_dir="", lr=lr, seed=seed, max_steps=S, warmup_steps=S // 40, decay="exp",
                decay_steps=S // 10, eval_interval=S, eval_steps=32, eval_seed=0, sample_tokens=0)


def experiment(quick=False, out=runner.ROOT, fresh=False, seeds=8, data=None):
    """The registered sweep (the 2-core CPU design; quick is its only setting); records the claims with >= 3
    seeds."""
    runner.registered_corpus(data)
    seed_list = DESIGN["seeds"][:seeds]
    widths = DESIGN["widths"]
    file = os.path.join(out, "results", "width_quick.json")
    reps = {replicate(m, w, s): (m, w, s) for s in seed_list for w in widths for m in MODES}
    runner.tune_lr(file, reps, run_of, LRS, desc="width", fresh=fresh)
    done = runner.read_json(file)
    summary = summarize(done, seed_list)
    runner.write_summary(out, "width_summary_quick", summary)
    if len(seed_list) >= 3:
        record(summary, runner.command("width", True, seeds), file)
    for m in MODES:
        print(f"{m:4s} shift {ms(summary['shift'][m], '+.2f')} octaves")
    return summary


def summarize(done, seed_list):
    """Per replicate its grid, vertex lr and lowest loss; per mode and seed the shift from the first width to the
    last, in octaves."""
    t = tuned(done)
    w0, w1 = DESIGN["widths"][0], DESIGN["widths"][-1]
    shift = {m: [math.log2(t["best_lr"][replicate(m, w1, s)] / t["best_lr"][replicate(m, w0, s)]) for s in seed_list]
             for m in MODES}
    return dict(widths=list(DESIGN["widths"]), seeds=list(seed_list), **t, shift=shift)


def record(summary, command, file):
    """The registered claims from the summary."""
    shift = summary["shift"]
    arms = {"mup_width_shift_lower_sp": ([abs(x) for x in shift["muP"]], [abs(x) for x in shift["SP"]]),
            "mup_width_shift_within_half_octave": (shift["muP"], [0.0] * len(shift["muP"]))}
    findings.record_claims(arms, command, [file], EXPLAIN)


def record_from_results():
    """The registered claims again from results/width_quick.json, training nothing (report.py --record)."""
    file = os.path.join(runner.RESULTS, "width_quick.json")
    s, done = read_results("width_summary_quick"), runner.read_json(file)
    record(summarize(done, s["seeds"]), runner.command("width", True, len(s["seeds"])), file)


def width_table():
    """Each parametrisation's best lr at each width and the shift (mean +- sd over seeds)."""
    s = read_results("width_summary_quick")
    w0, w1 = s["widths"][0], s["widths"][-1]
    rows = [f"| parametrisation | best lr, width {w0} | best lr, width {w1} | shift (octaves) | loss, width {w0} | "
            f"loss, width {w1} |", "|---|---|---|---|---|---|"]
    for m in MODES:
        lr0, lr1, low0, low1 = ([s[key][replicate(m, w, x)] for x in s["seeds"]]
                                for key, w in (("best_lr", w0), ("best_lr", w1), ("lowest", w0), ("lowest", w1)))
        rows.append(f"| {m} | {ms(lr0, '.4f')} | {ms(lr1, '.4f')} | {ms(s['shift'][m], '+.2f')} | {ms(low0, '.4f')} | "
                    f"{ms(low1, '.4f')} |")
    return "\n".join(rows)


EXPLAIN = {
    "mup_width_shift_within_half_octave": "Under muP the best lr falls 0.81 +- 0.18 octaves from width 32 to 128, "
                                          "under SP 2.21 +- 0.37 (the width table): muP removes about two thirds of "
                                          "SP's shift, not all of it, at 1,000 steps. Both widths are below muP's "
                                          "base width (dim_model_base 256).",
}

EXPERIMENT = Experiment(name="width", section="§3.3", rerun=(runner.command("width", True, 8),),
                        sweeps=("width_quick",), tables={"width": width_table}, explain=EXPLAIN,
                        summary="width_summary_quick", record=record_from_results)


def main():
    cli.main("The best lr across width: muP against SP, lr tuned in each replicate (paper §3.3)", experiment)


if __name__ == "__main__":
    main()

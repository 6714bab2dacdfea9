"""
The report card of a recipe run (speedrun.sh): DIR/report.md, which says in a minute whether the recipe worked, and
its numbers as DIR/report.json.

    python card.py runs/speedrun-tiny

It reads each stage's summary.json and eval.json (pretrain, decay, sft, dpo) and shows, per stage, its steps,
tokens, time and losses; the evaluation of each model; a few plain checks (did every loss fall, did the decay
help, did SFT teach the tasks); a sample; and the loss curves as pictures.
"""

import datetime
import os
import sys

from configurator import ConfigError, exit_on_user_error
from files import read_json, replace_atomically, write_json

STAGES = (("pretrain", "WSD pre-training, the stable phase (§4)"),
          ("decay", "the WSD decay on the two-stage mixture (§5)"),
          ("sft", "SFT on the instruction set, at the decay's final lr (§5)"),
          ("dpo", "DPO against the SFT model (§7.1)"))


def read_stage(root, name):
    """(summary.json, eval.json or None) of a stage's out_dir; a stage not run yet is one line of error."""
    summary = os.path.join(root, name, "summary.json")
    if not os.path.isfile(summary):
        raise ConfigError(f"{summary} not found: the stage {name} has not finished; run speedrun.sh again")
    scores = os.path.join(root, name, "eval.json")
    return read_json(summary), read_json(scores) if os.path.isfile(scores) else None


def losses(summary):
    """(first, last) training loss of a stage: train.py's train loss, DPO's loss."""
    if "first" in summary:  # a DPO run
        return summary["first"]["loss"], summary["last"]["loss"]
    return summary["first_train_loss"], summary["final_train_loss"]


def read_stages(root):
    """{stage: (summary.json, eval.json or None)} of every stage."""
    return {name: read_stage(root, name) for name, _ in STAGES}


def numbers(runs):
    """What the card shows, as data: the machine, each stage's steps, tokens, time and losses, each evaluation."""
    stages = {name: dict(steps=s["step"], tokens=s.get("tokens"), wall_s=s["wall_s"], first_loss=losses(s)[0],
                         last_loss=losses(s)[1], val_bpb=s.get("final_val_bpb"), command=s.get("command"))
              for name, (s, _) in runs.items()}
    return dict(hardware=runs["pretrain"][0]["hardware"], date=datetime.date.today().isoformat(),
                minutes=round(sum(s["wall_s"] for s in stages.values()) / 60, 1), stages=stages,
                evals={name: e for name, (_, e) in runs.items() if e}, checks=checks(runs))


def card(root, runs):
    """The report card's markdown (runs: read_stages)."""
    summaries = {name: s for name, (s, _) in runs.items()}
    hardware = summaries["pretrain"]["hardware"]
    minutes = sum(s["wall_s"] for s in summaries.values()) / 60
    out = [f"# Report card: {os.path.basename(os.path.normpath(root))}", "",
           f"{hardware}; {minutes:.1f} minutes of training; written {datetime.date.today().isoformat()}.", "",
           "| stage | what | steps | tokens | minutes | training loss, first -> last | validation bits/byte |",
           "|---|---|---|---|---|---|---|"]
    for name, what in STAGES:
        s = summaries[name]
        first, last = losses(s)
        bpb = f"{s['final_val_bpb']:.3f}" if s.get("final_val_bpb") is not None else "-"
        tokens = f"{s['tokens']:,}" if "tokens" in s else "-"
        out.append(f"| {name} | {what} | {s['step']} | {tokens} | {s['wall_s'] / 60:.1f} | {first:.3f} -> {last:.3f} "
                   f"| {bpb} |")
    out += ["", "## Evaluation", "", "| model | bits/byte (95% sampling error) | tasks, exact match: caps / next / "
            "repeat / all | passkey, by length |", "|---|---|---|---|"]
    for name, (_, scores) in runs.items():
        if scores is None:
            continue
        data = next(iter(scores["bits_per_byte"]))  # (the run's own held-out set: speedrun.sh gives one)
        bpb, err = scores["bits_per_byte"][data], scores["bits_per_byte_95"][data]
        t = scores.get("tasks", {})
        tasks = " / ".join(f"{t.get(k, float('nan')):.0%}" for k in ("caps", "next", "repeat", "all"))
        keys = ", ".join(f"{L}: {p['mean']:.0%}" for L, p in scores["passkey"].items())
        out.append(f"| {name} | {bpb:.3f} +- {err:.3f} ({data}) | {tasks} | {keys} |")
    out += ["", "## Did it work?", ""] + checks(runs)
    sample = summaries["decay"].get("sample")
    if sample:
        out += ["", "## A sample of the decayed model", "", "```", sample.strip(), "```"]
    out += ["", "## Loss curves", ""]
    out += [f"![{name}]({name}/loss.png)" for name, _ in STAGES if os.path.isfile(os.path.join(root, name, "loss.png"))]
    return "\n".join(out) + "\n"


def checks(runs):
    """Plain yes / no lines on what each stage is for."""
    s = {name: summary for name, (summary, _) in runs.items()}
    fell = [name for name in s if losses(s[name])[1] < losses(s[name])[0]]
    lines = [f"- The training loss fell in {len(fell)} of {len(s)} stages" +
             ("." if len(fell) == len(s) else f": not in {', '.join(n for n in s if n not in fell)}.")]
    before, after = s["pretrain"].get("final_val_bpb"), s["decay"].get("final_val_bpb")
    if before is not None and after is not None:
        lines.append(f"- The decay {'lowered' if after < before else 'did not lower'} the validation bits/byte: "
                     f"{before:.3f} -> {after:.3f}.")
    tasks = {n: e["tasks"]["all"] for n, (_, e) in runs.items() if e and "tasks" in e}
    if "decay" in tasks and "sft" in tasks:
        lines.append(f"- SFT {'raised' if tasks['sft'] > tasks['decay'] else 'did not raise'} the held-out exact "
                     f"match: {tasks['decay']:.0%} -> {tasks['sft']:.0%}.")
    if "dpo" in s:
        last = s["dpo"]["last"]
        lines.append(f"- DPO's last step ranked its pairs right {last['rewards/accuracies']:.0%} of the time, margin "
                     f"{last['rewards/margins']:+.3f}.")
    return lines


def main(argv):
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if argv[:1] in (["-h"], ["--help"]) else 2)
    root = argv[0]

    def work():
        runs = read_stages(root)
        text = card(root, runs)
        path = os.path.join(root, "report.md")
        replace_atomically(path, lambda f: f.write(text), mode="w")
        write_json(os.path.join(root, "report.json"), numbers(runs))
        print(f"report card: {path}")
    exit_on_user_error(work, ValueError)


if __name__ == "__main__":
    main(sys.argv[1:])

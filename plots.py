"""
Figures: matplotlib figures drawn straight to a file (no screen, no global backend switched behind a notebook's
back), and the training curve of a run.

    python plots.py out/metrics.jsonl [out/loss.png]   # redraw a run's loss / lr curve (train.py draws it at the end)
"""

import argparse
import math
import os
import sys

from matplotlib.figure import Figure

from checkpoint import CheckpointError, read_jsonl
from files import make_dirs, replace_atomically


def subplots(nrows=1, ncols=1, figsize=None, **kwargs):
    """(figure, axes) as plt.subplots returns them, on a Figure that is only ever saved to a file."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save(fig, file, dpi=110):
    """The figure into `file` (its format by its extension), atomically: a full disk is one WriteError line."""
    fig.tight_layout()
    make_dirs(os.path.dirname(os.path.abspath(file)))
    replace_atomically(file, lambda f: fig.savefig(f, dpi=dpi, format=os.path.splitext(file)[1][1:] or "png"))


def plot_metrics(rows, file):
    """Train and validation loss against step, with the learning rate on a second axis, from metrics.jsonl rows; a
    DPO run's rows (dpo.py: loss, rewards/accuracies) as the DPO loss and the reward accuracy."""
    dpo = not any("train_loss" in r for r in rows) and any("rewards/accuracies" in r for r in rows)
    tr = [r for r in rows if ("loss" if dpo else "train_loss") in r]
    fig, ax = subplots(figsize=(7, 4))
    if dpo:
        ax.plot([r["step"] for r in tr], [r["loss"] for r in tr], lw=0.8, label="DPO loss")
        ax.plot([r["step"] for r in tr], [r["rewards/accuracies"] for r in tr], lw=0.8, label="reward accuracy")
        ax.axhline(math.log(2), color="gray", ls=":", lw=1, label="log 2 (the first step)")
        ax.set(xlabel="step", ylabel="DPO loss / reward accuracy")
    else:
        va = [r for r in rows if "val_loss" in r]
        ax.plot([r["step"] for r in tr], [r["train_loss"] for r in tr], lw=0.8, label="train")
        ax.plot([r["step"] for r in va], [r["val_loss"] for r in va], "o-", label="val")
        ax.set(xlabel="step", ylabel="loss (nats/token)")
    ax2 = ax.twinx()
    ax2.plot([r["step"] for r in tr], [r["lr"] for r in tr], "k:", lw=1, label="lr")
    ax2.set_ylabel("lr")
    ax.legend(loc="upper right")
    save(fig, file, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description="Draw a run's loss and lr curves from its metrics.jsonl")
    p.add_argument("metrics", nargs="?", default="out", help="a train.py run's metrics.jsonl or out_dir (default: out)")
    p.add_argument("out", nargs="?", help="the figure (default: loss.png beside metrics.jsonl)")
    a = p.parse_args(argv)
    path = os.path.join(a.metrics, "metrics.jsonl") if os.path.isdir(a.metrics) else a.metrics
    if not os.path.isfile(path):
        print(f"error: {path} not found: train first (python train.py), or give a run's metrics.jsonl or out_dir",
              file=sys.stderr)
        sys.exit(2)
    out = a.out or os.path.join(os.path.dirname(path), "loss.png")
    try:
        rows, torn = read_jsonl(path, torn_ok=True)  # (a run still writing it may have cut its last line short)
        plot_metrics(rows, out)
    except (CheckpointError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"figure: {out}" + (" (its torn last line left out)" if torn else ""))


if __name__ == "__main__":
    main()

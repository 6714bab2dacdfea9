"""
The command line every experiment shares, and where its runs go.

    python -m experiments.wsd --quick --seeds 3            # your own: runs/results/, runs/assets/, their ledger
    python -m experiments.wsd --quick --seeds 5 --record   # the repository's: results/, assets/, its ledger

A user's rerun never changes the committed results: without --record every file an experiment writes (its runs'
checkpoints, results, figures and findings) goes under runs/. `python report.py --rerun` records (it adds --record).
"""

import argparse
import os

from configurator import exit_on_user_error
from experiments import findings, runner

RECORD_HELP = ("write into the repository's results/, assets/ and ledger (results/findings.json), replacing what they "
               "hold; without it everything goes under runs/ and the committed results stay as they are")


def positive_int(text):
    """An argparse type: an integer >= 1 (a sweep of 0 seeds or 0 steps is one line of usage, not a traceback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def parser(description):
    """--quick, --fresh, --seeds N, --data DIR and --record."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny models on a 2-core CPU")
    p.add_argument("--fresh", action="store_true", help=runner.FRESH_HELP)
    p.add_argument("--seeds", type=positive_int, default=1, help=runner.SEEDS_HELP)
    p.add_argument("--data", default=None, help=runner.DATA_HELP)
    p.add_argument("--record", action="store_true", help=RECORD_HELP)
    return p


def destination(record):
    """The root an experiment writes under: the repository with --record, else runs/ (its own results/, assets/ and
    ledger); said in one line, so a user knows where the numbers went."""
    out = runner.ROOT if record else runner.RUNS
    findings.FILE = os.path.join(out, "results", "findings.json")
    if not record:
        print(f"writing under {runner.rel(out)}/ (--record writes the repository's results/)")
    return out


def main(description, experiment, argv=None):
    """`python -m experiments.<name> [--quick] [--fresh] [--seeds N] [--data DIR] [--record]`: experiment(...) under
    destination(); a bad flag, --data or config as one line on stderr, not a traceback."""
    a = parser(description).parse_args(argv)
    out = destination(a.record)
    return exit_on_user_error(lambda: experiment(quick=a.quick, fresh=a.fresh, seeds=a.seeds, data=a.data, out=out))

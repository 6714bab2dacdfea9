"""Figures for the experiments: matplotlib without a display, saved to a file (assets/ by convention); and the
command line the experiment scripts share."""

import os


def subplots(*args, **kwargs):
    """plt.subplots on the file-only Agg backend (works on machines with no screen)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt.subplots(*args, **kwargs)


def save(fig, file, dpi=110):
    import matplotlib.pyplot as plt
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(file)), exist_ok=True)
    fig.savefig(file, dpi=dpi)
    plt.close(fig)


def quick_cli(description, experiment, argv=None):
    """`python <file>.py [--quick]`: run experiment(quick=...) (the shared command line of the experiment scripts)."""
    import argparse
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny models on a 2-core CPU, ~5 minutes")
    return experiment(quick=p.parse_args(argv).quick)

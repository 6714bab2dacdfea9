"""Figures for the experiments: matplotlib without a display, saved to a file (assets/ by convention)."""

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

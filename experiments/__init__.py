"""The model wind tunnel (paper §3.1): the paper's findings rerun small, one file per section, over one runner
(runner.py) and one ledger (findings.py). Run each from the repository root: `python -m experiments.wsd --quick`."""

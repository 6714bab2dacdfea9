import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402


@pytest.fixture
def kept_checkpoints(monkeypatch):
    """{step: bytes} of every checkpoint train.py writes, to restore the state on disk of a run killed later."""
    import train
    saved = {}
    real_save = train.save_checkpoint

    def save_and_keep(path, state):
        real_save(path, state)
        with open(path, "rb") as f:
            saved[state["step"]] = f.read()
    monkeypatch.setattr(train, "save_checkpoint", save_and_keep)
    return saved

import json
import os

import pytest

import train
from experiments import wsd


def test_wsd_quick_experiment_end_to_end_and_resumable(tmp_path, monkeypatch):
    # the quick setting's model and lr with 8 x 32-token batches (not 16 x 64), on the embedded docs (not
    # python_source): its 32 runs then train in ~1 min on a slow 2-core CPU instead of ~2.5
    model, S, _, _, lr = wsd.setting(True)
    monkeypatch.setattr(wsd, "setting", lambda quick: ({**model, "data": "embedded"}, S, 8, 32, lr))
    s = wsd.experiment(quick=True, out=str(tmp_path), S=40)
    for f in ("results/wsd_quick.json", "results/wsd_summary_quick.json", "assets/wsd_vs_cosine_quick.png",
              "out-wsd-stable_quick/ckpt_000020.pt"):
        assert os.path.isfile(tmp_path / f), f
    final = s["final_val_loss"]
    assert len(final) == 32 and all(1.5 < v < 5.0 for v in final.values())  # trained: well below ln(320) = 5.77
    assert s["gap_wsd10_minus_cosineS"] == pytest.approx(final["WSD exp 10.0%"] - final["Cosine(T=40)"])
    # every run is scored on the same held-out sample, whatever its seed (at 40 steps the order of these losses is
    # noise: on 32 held-out batches a 4-step decay does not beat its stable run, on 8 of them it did by 0.007)
    saved = json.loads((tmp_path / "results/wsd_quick.json").read_text())
    assert {(r["config"]["eval_seed"], r["config"]["eval_steps"]) for r in saved.values()} == {(0, 32)}
    tokens = [b["tokens"] for b in s["branches"].values()]
    assert tokens == sorted(tokens) and len(tokens) == 5  # four branches and the continued run
    assert saved["branch 20+2"]["config"]["init_from"].endswith("ckpt_000020.pt")
    # continual training: the stable run taken on from S = 40 to 80, then decayed over 8 steps
    cont = saved["continued 40->80+8"]
    assert cont["config"]["init_from"].endswith("ckpt_000040.pt") and cont["metrics"]["step"] == 88
    # §4.4: the WSD 10% run records its decay statistics, and recording them changes none of its numbers
    stats = saved["WSD exp 10.0%"]["metrics"]["decay_stats"]
    assert [r[0] for r in stats] == list(range(1, 41)) and stats[0][3] is None
    assert os.path.isfile(tmp_path / "assets/wsd_decay_analysis_quick.png")

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")
    monkeypatch.setattr(train, "train", no_training)  # a rerun reads every finished run from results/
    assert wsd.experiment(quick=True, out=str(tmp_path), S=40)["final_val_loss"] == final

"""eval.py: bits per byte on held-out sets (equal to an independent computation, and the same for a run and its
export), passkey retrieval by length and depth, the offline tasks' score, written as JSON; bad input in one line."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

import checkpoint
import corpus
import eval as evaluation
import harness
import tokenizer
import train
from conftest import cfg
from official import save_pretrained
from model import MiniCPM, MiniCPMConfig

ARGS = ["--windows=8", "--seq_len=32", "--passkey_lengths=96", "--passkey_trials=2", "--tasks=12"]


def test_eval_scores_a_run_and_its_export_alike(tmp_path, capsys):
    train.train(cfg(tmp_path / "run", max_steps=6, warmup_steps=0, decay_steps=1, max_position_embeddings=128),
                quiet=True)
    evaluation.main([f"--out_dir={tmp_path / 'run'}", "--data=embedded", *ARGS])
    got = json.loads((tmp_path / "run" / "eval.json").read_text())
    # independent: the same 8 validation windows through the model and cross-entropy by hand
    model = checkpoint.model_from_checkpoint(str(tmp_path / "run")).model
    data = corpus.TokenData("embedded")
    x, y = data.batch("val", 0, 0, 8, 32)
    with torch.no_grad():
        loss = F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()).item()
    assert got["loss"]["embedded"] == pytest.approx(loss, rel=1e-6)
    assert got["bits_per_byte"]["embedded"] == pytest.approx(loss / math.log(2) / data.meta["bytes_per_token"])
    assert set(got["passkey"]) == {"96"} and len(got["passkey"]["96"]["by_depth"]) == 5
    assert 0 <= got["passkey"]["96"]["mean"] <= 1 and {"caps", "next", "repeat", "all", "chars"} == set(got["tasks"])
    assert got["hardware"] and "bits per byte on embedded" in capsys.readouterr().out
    # the export carries the byte-level tokenizer: the same numbers from the official directory
    checkpoint.export_checkpoint(str(tmp_path / "run"), str(tmp_path / "official"))
    evaluation.main([f"--model_dir={tmp_path / 'official'}", "--data=embedded", *ARGS,
                     f"--json={tmp_path / 'o.json'}"])
    exported = json.loads((tmp_path / "o.json").read_text())
    assert exported["bits_per_byte"]["embedded"] == pytest.approx(got["bits_per_byte"]["embedded"], rel=1e-5)
    assert exported["tasks"] == got["tasks"] and exported["passkey"] == got["passkey"]


def test_eval_refuses_data_of_another_tokenizer_in_one_line(tmp_path, cli):
    save_pretrained(MiniCPM(MiniCPMConfig(vocab_size=320)), tmp_path / "foreign")  # no tokenizer at all
    cli(evaluation.main, [f"--model_dir={tmp_path / 'foreign'}"], "carries no tokenizer", "tokenizer files")
    train.train(cfg(tmp_path / "run", max_steps=2, warmup_steps=0, decay_steps=0), quiet=True)
    cli(evaluation.main, [f"--out_dir={tmp_path / 'run'}", "--windows=0"], "--windows=0 must be >= 1")
    cli(evaluation.main, [f"--out_dir={tmp_path / 'missing'}"], "does not exist")


LOCAL_TASKS = {  # three lm-eval tasks on local files, one of each request type (no download)
    "nano_choice": ("multiple_choice", {"doc_to_text": "{{question}}", "doc_to_target": "{{gold}}",
                                        "doc_to_choice": "{{choices}}", "metric_list": [{"metric": "acc"}]}),
    "nano_ppl": ("loglikelihood_rolling", {"doc_to_text": "", "doc_to_target": "{{text}}", "metric_list": [
        {"metric": "word_perplexity"}, {"metric": "bits_per_byte"}]}),
    "nano_gen": ("generate_until", {"doc_to_text": "{{question}}", "doc_to_target": "{{answer}}",
                                    "generation_kwargs": {"until": ["\n"], "max_gen_toks": 8, "do_sample": False},
                                    "metric_list": [{"metric": "exact_match"}]}),
}


def local_tasks(tmp_path):
    """A directory of lm-eval task YAML files, each reading its own jsonl (dataset_path: json)."""
    rows = [dict(question=f"What number comes after {k}?", answer=str(k + 1), gold=k % 3,
                 choices=[[str(k + 1), str(k), " x"], [str(k), str(k + 1), " x"], [" x", str(k), str(k + 1)]][k % 3],
                 text=f"The number {k} comes before {k + 1}, and the words go on.") for k in range(12)]
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, (kind, spec) in LOCAL_TASKS.items():
        task = dict(task=name, dataset_path="json", dataset_kwargs={"data_files": {"test": str(tmp_path / "tasks" /
                                                                                               "rows.jsonl")}},
                    test_split="test", output_type=kind, **spec)
        (tmp_path / "tasks" / f"{name}.yaml").write_text(json.dumps(task))  # (YAML reads JSON)
    return str(tmp_path / "tasks")


def test_lm_eval_scores_a_run_as_its_own_hf_model_scores_the_export(tmp_path, monkeypatch):
    # the harness's hf model on the Llama export (transformers, no custom code) and our wrapper on the run itself
    lm_eval = pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    train.train(cfg(tmp_path / "run", max_steps=30, warmup_steps=0, decay_steps=3, max_position_embeddings=128),
                quiet=True)
    checkpoint.export_checkpoint(str(tmp_path / "run"), str(tmp_path / "llama"), "llama")
    include = local_tasks(tmp_path)
    model = checkpoint.model_from_checkpoint(str(tmp_path / "run")).model
    runs = [lm_eval.simple_evaluate(model=lm, tasks=list(LOCAL_TASKS), task_manager=TaskManager(include_path=include),
                                    log_samples=True)
            for lm in (harness.harness_model(model, tokenizer.get_encoding("bytes"), batch_size=5),
                       HFLM(pretrained=str(tmp_path / "llama"), batch_size=4, device="cpu"))]
    ours, theirs = runs
    for task in LOCAL_TASKS:  # every document's responses: log-likelihoods (and greedy flags), generated text
        for a, b in zip(ours["samples"][task], theirs["samples"][task], strict=True):
            for x, y in zip(a["resps"], b["resps"], strict=True):
                x, y = x[0], y[0]
                if isinstance(y, str):
                    assert x == y, (task, a["doc"])
                else:
                    assert x == pytest.approx(y, rel=1e-4, abs=1e-5), (task, a["doc"])
        scores = {k: v for k, v in theirs["results"][task].items() if isinstance(v, float)}
        assert scores and ours["results"][task].keys() >= scores.keys()
        for k, v in scores.items():
            assert ours["results"][task][k] == pytest.approx(v, rel=1e-4, abs=1e-6), (task, k)


def test_lm_eval_from_the_command_line(tmp_path, capsys):
    pytest.importorskip("lm_eval")
    train.train(cfg(tmp_path / "run", max_steps=4, warmup_steps=0, decay_steps=1, max_position_embeddings=128),
                quiet=True)
    include = local_tasks(tmp_path)
    evaluation.main([f"--out_dir={tmp_path / 'run'}", "--data=embedded", *ARGS[:4], "--tasks=0",
                     "--lm_eval=nano_choice", f"--lm_eval_include={include}"])
    got = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert 0 <= got["lm_eval"]["nano_choice"]["acc,none"] <= 1 and "lm-eval nano_choice" in capsys.readouterr().out

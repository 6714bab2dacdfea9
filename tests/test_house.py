"""The layout a reader relies on: project imports at the top of each file and no import circle between them (the
one exception: experiment code importing `train` inside its function), model.py importing only what it is built
from, train.py short enough to read, one rule for the wind-tunnel shapes, no state hidden on modules."""
import ast
import glob
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import batchsize  # noqa: F401
import mup
from conftest import ROOT
from model import PRESETS, MiniCPM, MiniCPMConfig, ladder

PROJECT = {os.path.basename(f)[:-3] for f in glob.glob(os.path.join(ROOT, "*.py"))}


def project_imports(path):
    """[(module, top level?, enclosing function or None)] of the project modules a file imports."""
    tree = ast.parse(open(path).read())
    found = []

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, child.name)
                continue
            if isinstance(child, ast.Import):
                names = [a.name.split(".")[0] for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0:
                names = [child.module.split(".")[0]]
            else:
                visit(child, func)
                continue
            found.extend((n, func is None, func) for n in names if n in PROJECT)
    visit(tree, None)
    return found


def test_project_imports_sit_at_the_top_and_form_no_circle():
    graph, inside = {}, []
    for name in sorted(PROJECT):
        imports = project_imports(os.path.join(ROOT, f"{name}.py"))
        graph[name] = {m for m, top, _ in imports if top}
        inside += [f"{name}.py: {m} in {f}()" for m, top, f in imports if not top and m != "train"]
    assert inside == [], "project imports inside functions (only experiment code may import train there)"

    def cycle_from(node, path):
        for nxt in graph.get(node, ()):
            if nxt in path:
                return path[path.index(nxt):] + [nxt]
            found = cycle_from(nxt, path + [nxt])
            if found:
                return found
    for start in graph:
        assert cycle_from(start, [start]) is None, f"import circle: {' -> '.join(cycle_from(start, [start]))}"


def test_model_imports_only_what_it_is_built_from():
    code = "import sys; import model; print(sorted(m for m in sys.modules if m in %r))" % sorted(PROJECT)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['model', 'rope']"


def test_train_py_reads_top_to_bottom():
    src = open(os.path.join(ROOT, "train.py")).read()
    assert len(src.splitlines()) < 600
    long = [(f.name, f.end_lineno - f.lineno + 1) for f in ast.walk(ast.parse(src))
            if isinstance(f, ast.FunctionDef) and f.end_lineno - f.lineno + 1 > 150]
    assert long == []


def test_one_ladder_rule_for_every_wind_tunnel_shape():
    # the presets kept their shapes (checkpoints and results stay valid) ...
    assert PRESETS["tiny"] == ladder(128, 4) and PRESETS["wt-0.3b"] == ladder(1024, 24)
    assert [ladder(w, 2)["intermediate_size"] for w in (16, 24, 32, 48, 64, 128, 256, 768)] == \
        [32, 48, 80, 112, 160, 320, 640, 1920]
    assert ladder(512, 12)["num_attention_heads"] == 8 and ladder(64, 2)["num_attention_heads"] == 2
    # ... and mup's coordinate check / lr transfer use the same rule
    c = mup.width_config(64, use_mup=False, layers=3)
    assert {k: getattr(c, k) for k in ladder(64, 3)} == ladder(64, 3) and c.use_mup is False


def test_moe_forward_returns_router_logits_and_stashes_nothing():
    torch.manual_seed(0)
    m = MiniCPM(MiniCPMConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                              num_key_value_heads=2, intermediate_size=64, num_experts=4, top_k=2))
    x = torch.randint(0, 97, (2, 9))
    logits, loss, router_logits = m(x, x, output_router_logits=True)
    assert len(router_logits) == 2 and router_logits[0].shape == (18, 4)
    # the returned loss is the pure cross-entropy (what evaluation reports); the balancing term is the trainer's
    assert loss.item() == pytest.approx(F.cross_entropy(logits.view(-1, 97), x.view(-1)).item(), rel=1e-6)
    assert torch.equal(m(x, x)[1], loss)
    before = {k: v for k, v in vars(m.model.layers[0].mlp).items() if not k.startswith("_")}
    m(x)
    assert {k: v for k, v in vars(m.model.layers[0].mlp).items() if not k.startswith("_")} == before


def test_the_code_cites_the_paper_not_files_outside_the_repository():
    files = glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "tests", "*.py")) + \
        glob.glob(os.path.join(ROOT, "config", "*"))
    notes = "PAPER" + ".md"  # (spelled in two parts so that this file does not cite it)
    assert [f for f in files if notes in open(f).read()] == []

"""The layout a reader relies on: the paper's ideas as libraries (the concept files import neither train.py nor an
experiment, and define no experiment), the wind tunnel in experiments/ over one runner, project imports at the top
of each file and no import circle between them, model.py the architecture alone, train.py a recipe of named steps,
one rule for the wind-tunnel shapes, no state hidden on modules."""
import ast
import glob
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import mup
import report
import train
from conftest import ROOT
from model import PRESETS, MiniCPM, MiniCPMConfig, ladder

TOP = {os.path.basename(f)[:-3] for f in glob.glob(os.path.join(ROOT, "*.py"))}
EXPERIMENTS = {"experiments." + os.path.basename(f)[:-3] for f in glob.glob(os.path.join(ROOT, "experiments", "*.py"))
               if not f.endswith("__init__.py")}
PROJECT = TOP | EXPERIMENTS | {"experiments"}
CONCEPTS = ["mup", "wsd", "moe", "longctx", "dpo", "batchsize", "scaling_law"]


def path_of(module):
    if module == "experiments":
        return os.path.join(ROOT, "experiments", "__init__.py")
    return os.path.join(ROOT, *module.split(".")) + ".py"


def project_imports(path):
    """[(module, enclosing function or None)] of the project modules a file imports (experiments.X for a module of
    experiments/)."""
    tree = ast.parse(open(path).read())
    found = []

    def names_of(node):
        if isinstance(node, ast.Import):
            return [a.name if a.name in PROJECT else a.name.split(".")[0] for a in node.names]
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in PROJECT]
            return subs or [node.module if node.module in PROJECT else node.module.split(".")[0]]
        return None

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, child.name)
                continue
            names = names_of(child)
            if names is None:
                visit(child, func)
                continue
            found.extend((n, func) for n in names if n in PROJECT)
    visit(tree, None)
    return found


def import_graph():
    return {m: {n for n, _ in project_imports(path_of(m))} for m in sorted(PROJECT)}


def test_project_imports_sit_at_the_top_and_form_no_circle():
    inside = [f"{m}: {n} in {f}()" for m in sorted(PROJECT) for n, f in project_imports(path_of(m)) if f]
    assert inside == [], "project imports inside functions"
    graph = import_graph()

    def cycle_from(node, path):
        for nxt in graph.get(node, ()):
            if nxt in path:
                return path[path.index(nxt):] + [nxt]
            found = cycle_from(nxt, path + [nxt])
            if found:
                return found
    for start in graph:
        assert cycle_from(start, [start]) is None, f"import circle: {' -> '.join(cycle_from(start, [start]))}"


def test_the_concept_files_are_libraries_and_the_experiments_live_in_experiments():
    graph = import_graph()
    for name in CONCEPTS:
        imported = graph[name]
        assert "train" not in imported and not any(m.startswith("experiments") for m in imported), (name, imported)
        tree = ast.parse(open(path_of(name)).read())
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))} | \
            {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        assert not defined & {"experiment", "EXPERIMENT", "sweep"}, f"{name}.py defines an experiment"
    # nothing imports the benchmark script
    assert [m for m, imported in graph.items() if "bench" in imported] == []
    # every experiment file declares itself (but the helpers they share); report.py finds them all, one per section
    declared = {e.name for e in report.registry()}
    assert declared == {m.split(".")[1] for m in EXPERIMENTS} - {"runner", "findings", "rerun", "cli", "claims"}
    assert {"mup", "batchsize", "wsd", "scaling_law", "two_stage", "longctx", "moe"} <= declared


def test_model_py_is_the_architecture():
    src = open(path_of("model")).read()
    assert len(src.splitlines()) <= 500
    tree = ast.parse(src)
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | \
        {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"dataclasses", "math", "torch", "rope"}, imported  # no file format: official.py reads them


def test_model_imports_only_what_it_is_built_from():
    code = "import sys; import model; print(sorted(m for m in sys.modules if m in %r))" % sorted(PROJECT)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['model', 'rope']"


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
        glob.glob(os.path.join(ROOT, "config", "*")) + glob.glob(os.path.join(ROOT, "experiments", "*.py"))
    notes = "PAPER" + ".md"  # (spelled in two parts so that this file does not cite it)
    assert [f for f in files if notes in open(f).read()] == []


def test_every_write_goes_through_files_py():
    # one writer that never follows a link: no other module opens a file for writing or appending itself
    offenders = []
    for path in [os.path.join(ROOT, f) for f in os.listdir(ROOT) if f.endswith(".py")] + \
            [os.path.join(ROOT, "experiments", f) for f in os.listdir(os.path.join(ROOT, "experiments"))
             if f.endswith(".py")]:
        if os.path.basename(path) == "files.py":
            continue
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "open":
                mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"),
                                                                    None)
                if isinstance(mode, ast.Constant) and set(str(mode.value)) & set("wax+"):
                    offenders.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}")
    assert offenders == [], f"files opened for writing outside files.py: {offenders}"


def test_train_py_writes_every_model_key_by_name():
    # a reader finds each model key in train.py's config by its name; none is made by a loop
    src = open(os.path.join(ROOT, "train.py")).read()
    for name in train.MODEL_KEYS:
        assert re.search(rf"^{name} = None$", src, re.M), name
    assert "globals()[_f.name]" not in src and "for _f in fields" not in src

"""
The wind tunnel's runner: what every experiment does the same way, written once.

An experiment (one file of this folder, one paper section) builds its runs as {name: train.py config} for seeds
1 .. N (`seeded`), trains the ones not yet in its results file (`sweep`: an interrupted experiment resumes, a finished
one only redraws its figures), records its findings (findings.py) and declares itself to report.py with an
`EXPERIMENT = Experiment(...)`: its rerun commands, the sweeps its findings rest on, its README tables and the
explanations of its findings. Adding an experiment is writing one file here.

    python -m experiments.wsd --quick --seeds 3      # from the repository root (the experiments import train.py)
"""

import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

import system
import train
from checkpoint import run_files
from configurator import ConfigError
from experiments import claims
import files
from files import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "results")
ASSETS = os.path.join(ROOT, "assets")
RUNS = os.path.join(ROOT, "runs")  # a user's own reruns: results, figures, ledger (cli.py; --record: the repository's)

FRESH_HELP = ("train every run again (default: runs already in results/*.json with the same config are reused, so "
              "an interrupted experiment resumes and a finished one only redraws its figures)")
SEEDS_HELP = "every compared run with seeds 1..N (init and data order); N >= 3 records the verdicts (findings.py)"
DATA_HELP = ("the training corpus instead of the setting's own (python_source for one GPU): a directory prepared by "
             "`python corpus.py --input FILES --out DIR` (or a builtin name); results go to results/<name>_<DIR>.json")


@dataclass(frozen=True)
class Experiment:
    """What report.py reads of an experiment: the commands that rerun it, the sweeps (results/<sweep>.json) its
    findings rest on, its README tables ({block name: function returning markdown}), the explanation of each
    finding it records that is not reproduced ({finding id: text}), and `record()`, which records its findings
    again from its results files, training nothing (report.py --record). summary: the results/<summary>.json its
    run writes last; until it exists the experiment has not run, its tables say how to run it and it records
    nothing."""
    name: str
    section: str
    rerun: tuple
    sweeps: tuple = ()
    tables: dict = field(default_factory=dict)
    explain: dict = field(default_factory=dict)
    record: object = None
    summary: str = ""

    def sources(self):
        """The committed results files of its sweeps (results/<sweep>.json), what its findings rest on."""
        return [os.path.join(RESULTS, f"{n}.json") for n in self.sweeps]

    def ran(self):
        """Whether its results are committed (always, for an experiment without a summary to wait for)."""
        return not self.summary or os.path.isfile(os.path.join(RESULTS, f"{self.summary}.json"))

    def not_run(self):
        return f"Not run yet: `{self.rerun[0]} --record`."


def seed_name(name, seed):
    """The run `name` with another seed: seed 1 is the run itself, seed s > 1 is "name seed{s}"."""
    return name if seed == 1 else f"{name} seed{seed}"


def seeded(seeds, runs_of_seed):
    """The seed loop: {seed_name(run, s): config} over s = 1 .. seeds of runs_of_seed(s) -> {run: config}."""
    return {seed_name(k, s): v for s in range(1, seeds + 1) for k, v in runs_of_seed(s).items()}


def seed_dir(path, seed, tag=""):
    """A run directory of seed `seed`: path + tag for seed 1, path + tag + "-seed{s}" after."""
    return path + tag + (f"-seed{seed}" if seed > 1 else "")


def per_seed(res, name, seeds, key="final_val_loss"):
    """[res[run][key] for seeds 1 .. seeds] of the run `name`."""
    return [res[seed_name(name, s)][key] for s in range(1, seeds + 1)]


def wall_s(results_file, names=None):
    """Seconds the runs of `names` (every seed; None: every run) took, from a sweep's results file."""
    return sum(v["seconds"] for k, v in trained(read_json(results_file)).items()
               if names is None or k.split(" seed")[0] in names)


def trained(done):
    """The runs of a sweep's results that were trained ({name: entry}): not those recorded under a second name,
    `same_as` a run with the same config (runner.sweep trains that once)."""
    return {k: v for k, v in done.items() if "same_as" not in v}


def results_tag(quick, data=None):
    """The suffix of an experiment's results and figures: "_quick" for the 2-core CPU setting, and "_<corpus>" when
    --data replaced the setting's corpus (so a run on a user's corpus never overwrites the committed results)."""
    return ("_quick" if quick else "") + (f"_{os.path.basename(os.path.normpath(data))}" if data else "")


def command(module, quick=False, seeds=1, data=None, args=""):
    """The command an experiment's findings are recorded with: `python -m experiments.<module> [args]` and the
    flags it ran with."""
    return (f"python -m experiments.{module}{' ' + args if args else ''}{' --quick' if quick else ''} --seeds {seeds}"
            + (f" --data {data}" if data else ""))


def this_machine():
    """Where the runs of a finding trained: the GPU when there is one (the experiments' runs use it), else the CPU."""
    return system.machine(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def sweep(results_file, runs, desc="runs", fresh=False):
    """Train every {name: config} in `runs` in this process, saving each run's metrics into results_file (JSON) as
    it finishes. Runs already there with the same config are not redone, so an interrupted sweep resumes (the
    default: a rerun of a finished experiment only redraws its figures); fresh=True trains every run again. A run
    that starts from another run's checkpoint (init_from inside its out_dir: a WSD branch, an upcycled MoE) is
    redone whenever that run is, so that a run never rests on a source trained on another machine or by other code;
    every run records the machine it trained on and its commit (claims.head: the registered claims it ran under). A
    recorded run that cannot stand any more (its config or the train.py version changed, or the checkpoints other
    runs branch from are gone, as in a fresh clone) retrains the whole sweep: its findings then rest on runs of one
    machine and one code version, never on a mix."""
    done = {}
    if os.path.isfile(results_file) and not fresh:
        done = {k: v for k, v in read_json(results_file).items() if k in runs}  # drop runs the sweep no longer has
    recorded = {k: checked(runs[k]) for k in done}
    if any(not reusable(done[k], cfg, done.get(source_of(cfg, done))) for k, cfg in recorded.items()):
        print(f"{rel(results_file)}: its recorded runs were trained by another train.py or config (or lack the "
              f"checkpoints their branches need): all {len(runs)} are trained again")
        done = {}  # (a stale run: train them all here)
    elif done:
        print(f"{rel(results_file)}: {len(done)} of {len(runs)} runs reused as recorded, {len(runs) - len(done)} to "
              f"train" + (" (--fresh trains every one)" if len(done) == len(runs) else ""))
    for name, cfg in tqdm(runs.items(), desc=desc):
        cfg = checked(cfg)  # (here, after its source trained: a branch inherits its model keys from the checkpoint)
        source = source_of(cfg, done)
        if name in done and reusable(done[name], cfg, done.get(source)):
            continue
        twin = twin_of(cfg, done)
        if twin:  # the same run under another name (an arm two comparisons share, e.g. muP's 2-layer depth arm)
            done[name] = dict(done[twin], same_as=twin)
            write_json(results_file, done, indent=None)
            continue
        t0 = time.perf_counter()
        # a run redone replaces what an older one left; its steps show under the sweep's bar
        res = train.train({**cfg, "overwrite": True}, quiet=True, progress=name)
        res.pop("model")
        if res["stopped"]:  # Ctrl-C / SIGTERM: keep what finished, record nothing of this run; exit as train.py does
            print(f"stopped by signal during {name}: the runs that finished are in {rel(results_file)}; the same "
                  f"command continues", file=sys.stderr)
            raise SystemExit(res["exit_code"])
        done[name] = dict(config=cfg, metrics=res, seconds=time.perf_counter() - t0, trainer=train.TRAINER_VERSION,
                          hardware=this_machine(), run_id=time.time_ns(), commit=claims.head(),
                          from_run=done[source].get("run_id") if source else None)
        write_json(results_file, done, indent=None)
    return {name: done[name]["metrics"] for name in runs}


def rel(path):
    """A path as a user reads it: relative to the repository when inside it."""
    inside = os.path.commonpath([os.path.abspath(path), ROOT]) == ROOT
    return os.path.relpath(path, ROOT) if inside else path


def tune_lr(results_file, arms, run_of, lrs, desc="lr grid", fresh=False, score=None, bounds=(0, math.inf)):
    """{arm: the lr whose run ends lowest} for every arm of `arms` ({name: what run_of needs}), each trained at a grid
    of lrs (run_of(arms[name], lr): its config; run "<name>, lr <lr>"), the grid extended by one octave past
    whichever edge holds an arm's optimum until it is inside, so that the grid brackets it. The grid starts from
    every lr already recorded for the arm (an extension of an earlier pass is not dropped and retrained). score(run
    name, metrics): what the lr minimises (default: the final validation loss); the grid never grows past bounds
    (lowest, highest lr)."""
    recorded = read_json(results_file) if os.path.isfile(results_file) and not fresh else {}
    grid = {a: sorted(set(lrs) | {v["config"]["lr"] for k, v in recorded.items()
                                  if k == f"{a}, lr {v['config']['lr']:g}"}) for a in arms}
    while True:
        runs = {f"{a}, lr {lr:g}": run_of(arms[a], lr) for a in arms for lr in grid[a]}
        res = sweep(results_file, runs, desc=desc, fresh=fresh)
        fresh = False  # (only the first pass trains what was there again)
        best, grown = {}, False
        for a in arms:
            names = {lr: f"{a}, lr {lr:g}" for lr in grid[a]}
            loss = {lr: score(n, res[n]) if score else res[n]["final_val_loss"] for lr, n in names.items()}
            best[a] = min(loss, key=loss.get)
            step = best[a] / 2 if best[a] == grid[a][0] else best[a] * 2
            if best[a] in (grid[a][0], grid[a][-1]) and bounds[0] <= step <= bounds[1]:
                grid[a] = sorted(grid[a] + [step])
                grown = True
        if not grown:
            return best


def registered_corpus(data):
    """A registered design trains on its own corpus: --data is refused in one line."""
    if data:
        raise ConfigError(f"--data={data}: this experiment's corpus is part of its registered design "
                          f"(experiments/claims.py); run it without --data")


def lr_grids(done):
    """{replicate: {lr: final validation loss}} of a tune_lr sweep's results (runs "<replicate>, lr <lr>")."""
    grids = {}
    for name, run in done.items():
        rep, lr = name.rsplit(", lr ", 1)
        grids.setdefault(rep, {})[float(lr)] = run["metrics"]["final_val_loss"]
    return grids


def checked(cfg):
    """A run's config as train.py runs it: the defaults filled in, validated."""
    return train.validate_config({**train.default_config(), **cfg})


def twin_of(cfg, done):
    """A recorded run of the sweep with exactly cfg's config, trained from scratch and writing no out_dir, so that
    its metrics are cfg's too (a run is deterministic on one machine), or None."""
    if cfg["out_dir"] or cfg["init_from"]:
        return None
    return next((k for k, v in done.items() if reusable(v, cfg, None)), None)


def source_of(cfg, done):
    """The run of the sweep whose out_dir holds cfg's init_from checkpoint, or None."""
    if not cfg["init_from"]:
        return None
    src = os.path.abspath(cfg["init_from"])
    return next((k for k, v in done.items() if v["config"].get("out_dir") and
                 os.path.commonpath([src, os.path.abspath(v["config"]["out_dir"])]) ==
                 os.path.abspath(v["config"]["out_dir"])), None)


def reusable(entry, cfg, source_entry):
    """Whether a recorded run stands for `cfg` now: the same config (new keys at their defaults) trained by this
    train.py version, its out_dir (if any) still there for the runs that branch from it, and trained from the
    source run as it is recorded now (not from an earlier training of it)."""
    return ({**train.default_config(), **entry["config"]} == cfg and entry.get("trainer") == train.TRAINER_VERSION
            and not (cfg["out_dir"] and not run_files(cfg["out_dir"]))
            and (source_entry is None or entry.get("from_run") == source_entry.get("run_id")))


def write_summary(out, name, summary):
    """out/results/<name>.json: an experiment's summary (what its README table and figures read)."""
    write_json(os.path.join(out, "results", f"{name}.json"), summary)


# ----------------------------------------------------------------------------------------------------------
# reading results back (the README's tables)


def read_json(file):
    """A results file, a truncated or corrupt one as one line that names it."""
    fix = f"restore it (git checkout -- {file}) or rerun the experiment that writes it"
    try:
        return files.read_json(file, dict, fix)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def read_results(name):
    """results/<name>.json, or one line saying how to make it."""
    file = os.path.join(RESULTS, name + ".json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file} not found: run the experiment first (python report.py --rerun)")
    return read_json(file)


def metrics_of(sweep_results):
    """{run: its metrics} of a sweep's results (what sweep returns, read back from its file)."""
    return {k: v["metrics"] for k, v in sweep_results.items()}


def seeds_of(sweep_results, name, key="final_val_loss"):
    """[metric of the run `name`, seed 1, 2, ...] for every seed a sweep's results file holds."""
    out, s = [], 1
    while seed_name(name, s) in sweep_results:
        out.append(sweep_results[seed_name(name, s)]["metrics"][key])
        s += 1
    return out


def ms(values, fmt=".3f"):
    """mean +- std (ddof 1) of a list, or the value alone for one seed."""
    if not values:  # (a results file holding no run of this name yet)
        return "n/a"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{statistics.mean(values):{fmt}} +- {statistics.stdev(values):{fmt.lstrip('+')}}"

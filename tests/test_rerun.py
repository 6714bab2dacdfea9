"""`python report.py --rerun [--fresh] [--jobs N]` (experiments/rerun.py): a rerun of hours that a failed command or
a kill does not restart from zero, a fresh one that never sets old runs beside new ones, experiments side by side on
their own cores; and the machine a run records names the CPU kernels its floats come from."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import report
from conftest import ROOT, file_bytes, run_cli
from experiments import rerun, runner

# an experiment's command, run as a real process: it counts its runs, fails while a marker file is there (removing
# it), with `wait` waits for the other experiment to start (so two can only finish side by side), records the cores
# it was given and writes its sweep's results file
SCRIPT = """
import json, os, sys, time
name, work, results = sys.argv[1], sys.argv[2], sys.argv[3]
open(os.path.join(work, "ran"), "a").write(name + "\\n")
open(os.path.join(work, "started-" + name), "w").close()
if os.path.exists(os.path.join(work, "fail-" + name)):
    os.remove(os.path.join(work, "fail-" + name))
    sys.exit(3)
if len(sys.argv) > 4:
    t = time.time()
    while not os.path.exists(os.path.join(work, "started-" + sys.argv[4])):
        if time.time() - t > 60:
            sys.exit("the other experiment never started beside this one")
        time.sleep(0.05)
json.dump(dict(cores=sorted(os.sched_getaffinity(0)), new=True), open(os.path.join(results, name + ".json"), "w"))
"""


@pytest.fixture
def tunnel(tmp_path, monkeypatch):
    """(experiments A and B of one command each, the log file, the results folder, the work folder)."""
    results, work = tmp_path / "results", tmp_path / "work"
    results.mkdir(), work.mkdir()
    monkeypatch.setattr(runner, "RESULTS", str(results))
    (work / "exp.py").write_text(SCRIPT)

    def experiment(name, *wait):
        cmd = " ".join(["python", str(work / "exp.py"), name, str(work), str(results), *wait])
        return runner.Experiment(name=name, section="§0", rerun=(cmd,), sweeps=(name,))
    return experiment, str(results / "rerun.json"), results, work


def ran(work):
    return (work / "ran").read_text().split()


def test_an_interrupted_fresh_rerun_continues_without_old_runs(tunnel, capsys):
    experiment, log, results, work = tunnel
    A, B = experiment("A"), experiment("B")
    for name in "AB":  # the runs recorded before: a fresh rerun trains them all again
        (results / f"{name}.json").write_text(json.dumps({"old": True}))
    (work / "fail-B").touch()
    with pytest.raises(SystemExit, match=r"B .* failed .*`python report.py --rerun --fresh` continues where it "):
        rerun.rerun([A, B], log, fresh=True)
    assert ran(work) == ["A", "B"]
    assert json.loads((results / "A.json").read_text())["new"] and not (results / "B.json").exists()
    first = json.loads(open(log).read())
    assert first["fresh"] and "total_s" not in first and first["experiments"][B.rerun[0]]["returncode"] == 3

    rerun.rerun([A, B], log, fresh=True)  # started again: A (finished) is not rerun, A's new runs are kept
    assert ran(work) == ["A", "B", "B"] and "continuing the fresh rerun" in capsys.readouterr().out
    assert json.loads((results / "A.json").read_text())["new"]
    done = json.loads(open(log).read())
    assert done["started"] == first["started"] and "total_s" in done and done["elapsed_s"] >= first["elapsed_s"]
    assert {v["returncode"] for v in done["experiments"].values()} == {0}

    rerun.rerun([A, B], log, fresh=False)  # a finished log: a new rerun, which resumes each experiment
    assert ran(work) == ["A", "B", "B", "A", "B"]
    (work / "fail-A").touch(), (work / "fail-B").touch()
    with pytest.raises(SystemExit):  # a new fresh rerun, the longest first (both fail)
        rerun.rerun([B, A], log, fresh=True, minutes={"A": 5, "B": 1})
    assert ran(work)[-2:] == ["A", "B"]
    rerun.rerun([B, A], log, fresh=True, minutes={"A": 0, "B": 9})  # continued: the order of its start still holds
    assert ran(work)[-2:] == ["A", "B"] and json.loads(open(log).read())["minutes"] == {"A": 5, "B": 1}


# a rerun in a process of its own, as `python report.py --rerun --jobs 2` runs: two experiments whose commands train
# until they get a SIGTERM (then stop as train.py does, exit status 143)
DRIVER = """
import os, signal, sys, time
sys.path.insert(0, sys.argv[1])
from experiments import rerun, runner
work = sys.argv[2]
runner.RESULTS = work
SLOW = ("import os, signal, sys, time; name = sys.argv[1]; "
        "signal.signal(signal.SIGTERM, lambda *a: (open(os.path.join(sys.argv[2], 'stopped-' + name), 'w').close(), "
        "sys.exit(143))); open(os.path.join(sys.argv[2], 'pid-' + name), 'w').write(str(os.getpid())); time.sleep(120)")
open(os.path.join(work, 'slow.py'), 'w').write(SLOW)
exps = [runner.Experiment(name=n, section='', rerun=(f'python {work}/slow.py {n} {work}',), sweeps=()) for n in 'AB']
rerun.rerun(exps, os.path.join(work, 'rerun.json'), fresh=True, jobs=2, logs=os.path.join(work, 'logs'))
"""


def test_a_sigterm_stops_the_rerun_and_every_process_it_runs(tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("two jobs need two cores")
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, ROOT, str(tmp_path)], stderr=subprocess.PIPE, text=True)
    t = time.time()
    while not all((tmp_path / f"pid-{n}").exists() for n in "AB"):  # both experiments training
        assert time.time() - t < 60 and driver.poll() is None, driver.stderr.read()
        time.sleep(0.05)
    # a kill -9 now would lose nothing: the log says a fresh rerun is under way, so that starting it again continues
    # it rather than forgetting the runs it trained
    assert json.loads((tmp_path / "rerun.json").read_text())["fresh"]
    driver.send_signal(signal.SIGTERM)
    err = driver.communicate(timeout=60)[1]
    assert driver.returncode == 1 and err.strip() == \
        "rerun stopped: `python report.py --rerun --fresh --jobs 2` continues where it stopped", err
    assert all((tmp_path / f"stopped-{n}").exists() for n in "AB")  # each stopped as a run does, not orphaned
    log = json.loads((tmp_path / "rerun.json").read_text())
    assert "total_s" not in log and {v["returncode"] for v in log["experiments"].values()} == {143}


def test_two_experiments_at_once_each_on_its_own_cores(tunnel):
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip(f"{len(cores)} core: two jobs need two")
    experiment, log, results, work = tunnel
    recorded = []
    A, B = experiment("A", "B"), experiment("B", "A")  # each finishes only once the other started
    rerun.rerun([A, B], log, jobs=2, record=lambda: recorded.append(True), logs=str(work / "logs"))
    a, b = (set(json.loads((results / f"{n}.json").read_text())["cores"]) for n in "AB")
    assert not a & b and a | b == set(cores) and sorted(map(len, (a, b))) == [len(cores) // 2, (len(cores) + 1) // 2]
    assert sorted(os.listdir(work / "logs")) == ["A.log", "B.log"]  # each one's output apart
    assert recorded == [True]  # the findings recorded again once both were done
    assert json.loads(open(log).read())["jobs"] == 2
    assert os.sched_getaffinity(0) == set(cores)  # this process keeps its cores


def test_a_job_count_the_machine_cannot_give_is_one_line(capsys):
    n = len(os.sched_getaffinity(0))
    for jobs in (0, n + 1):
        with pytest.raises(SystemExit) as e:
            report.main(["--rerun", "--jobs", str(jobs)])
        assert e.value.code == 2 and f"--jobs {jobs}: use 1 to {n}" in capsys.readouterr().err
    assert [len(s) for s in rerun.core_shares(2, cores=[0, 1, 2])] == [2, 1]


def test_the_machine_names_the_cpu_kernels_its_floats_come_from():
    # a run's loss differs between torch's AVX512 and AVX2 kernels (another summation order), so the machine a run
    # records says which ran it
    assert torch.backends.cpu.get_cpu_capability() in runner.this_machine()
    got = run_cli(["-c", "from experiments.runner import this_machine; print(this_machine())"],
                  {"ATEN_CPU_CAPABILITY": "default"})
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip().endswith(", DEFAULT)"), got.stdout


# ------------------------------------------------------------------------------------------ a user's own rerun


def test_an_experiment_run_without_record_leaves_the_committed_results(tmp_path, monkeypatch, capsys):
    from experiments import findings, mup
    before = file_bytes(runner.RESULTS, runner.ASSETS)
    monkeypatch.setattr(runner, "RUNS", str(tmp_path / "runs"))
    monkeypatch.setattr(findings, "FILE", findings.FILE)  # (restored after: destination() points it at runs/)
    monkeypatch.setattr(sys, "argv", ["mup.py", "coord", "--widths", "64", "128", "--steps", "1", "--seeds", "3"])
    mup.main()
    assert "writing under" in capsys.readouterr().out
    assert file_bytes(runner.RESULTS, runner.ASSETS) == before  # results/, assets/ and the ledger untouched
    mine = json.loads((tmp_path / "runs" / "results" / "findings.json").read_text())
    assert set(mine) == {"coord_check_attention", "coord_check_mlp"}
    assert (tmp_path / "runs" / "assets" / "coord_check.png").exists()


def test_a_rerun_records_an_experiment_and_nothing_else():
    assert rerun.argv_of("python -m experiments.wsd --quick --seeds 5")[1:] == \
        ["-m", "experiments.wsd", "--quick", "--seeds", "5", "--record"]
    assert rerun.argv_of("python /tmp/exp.py A") == [sys.executable, "/tmp/exp.py", "A"]


@pytest.mark.parametrize("argv, message", [(["-m", "experiments.wsd", "--seeds", "0"], "0 must be >= 1"),
                                           (["-m", "experiments.wsd", "--small_long", "--seeds", "1"],
                                            "needs --seeds 3 or more"),
                                           (["-m", "experiments.mup", "transfer", "--steps", "0"], "0 must be >= 1"),
                                           (["-m", "experiments.mup", "coord", "--widths", "3", "--seeds", "1",
                                             "--steps", "1"], "num_attention_heads=2 does not divide hidden_size=3")])
def test_experiment_flags_out_of_range_are_one_line(argv, message):
    r = run_cli(argv, timeout=120)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


def test_a_sweep_says_which_runs_it_reuses(tmp_path, capsys):
    c = dict(preset="tiny", hidden_size=32, num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1,
             intermediate_size=64, seq_len=16, batch_size=2, max_steps=2, warmup_steps=0, decay_steps=0,
             eval_interval=2, eval_steps=1, sample_tokens=0, device="cpu", out_dir="")
    file = str(tmp_path / "sweep.json")
    runner.sweep(file, {"a": c})
    runner.sweep(file, {"a": c, "b": {**c, "seed": 2}})
    assert "1 of 2 runs reused as recorded, 1 to train" in capsys.readouterr().out

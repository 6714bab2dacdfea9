"""
Every experiment again, one command (`python report.py --rerun [--fresh] [--jobs N]`): each experiment's rerun
commands in turn, `jobs` experiments at a time, each on its own share of the machine's cores. A whole fresh rerun is
hours (the training time under the findings table), so it must survive a Ctrl-C, a kill or a failed command: started
again with the same flags, it continues where it stopped.

- Each experiment resumes by itself: its sweeps reuse the runs already in their results files (runner.sweep).
- The rerun keeps a log (results/rerun.json: the machine, each experiment's commands, wall time and exit status);
  an unfinished log with the same --fresh is continued, so its finished experiments are not run again.
- --fresh forgets the recorded runs once, when a fresh rerun starts: the results files of every experiment's sweeps
  are removed, so every run trains again here, and a resumed fresh rerun keeps what it trained (passing --fresh to
  each experiment instead would retrain an interrupted experiment's finished sweeps, and running the rest without it
  would set old runs beside new ones).
- With jobs > 1 two experiments can record their findings at the same moment (each reads results/findings.json,
  adds its own and writes it back), so at the end every finding is recorded again from the results files.
"""

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from configurator import ConfigError
from experiments.runner import ROOT, read_json, this_machine
from files import make_dirs, write_json

LOGS = os.path.join(ROOT, "out-rerun")  # each experiment's output when jobs > 1 (out*/ is not committed)


def core_shares(jobs, cores=None):
    """The machine's cores (those this process may use) dealt into `jobs` disjoint sets, one per job."""
    cores = sorted(os.sched_getaffinity(0) if cores is None else cores)
    if not 1 <= jobs <= len(cores):
        raise ConfigError(f"--jobs {jobs}: use 1 to {len(cores)} (the cores of this machine), one experiment a core "
                          f"at most")
    return [set(cores[i::jobs]) for i in range(jobs)]


def started_log(file, fresh, experiments):
    """The log of the rerun to continue: the unfinished one in `file` with the same fresh, or a new one (a new fresh
    rerun first forgets the recorded runs of every experiment's sweeps)."""
    if os.path.isfile(file):
        log = read_json(file)
        if "total_s" not in log and log.get("fresh") == fresh:
            print(f"continuing the {'fresh ' if fresh else ''}rerun started {log['started']} ({file})", flush=True)
            return log
    if fresh:
        forget_runs(experiments)
    return dict(hardware=this_machine(), started=time.strftime("%Y-%m-%d %H:%M:%S"), fresh=fresh, elapsed_s=0,
                experiments={})


def forget_runs(experiments):
    """Remove the results file of every sweep of `experiments`: their runs all train again."""
    for e in experiments:
        for file in e.sources():
            if os.path.isfile(file):
                os.remove(file)


def finished(log, e):
    """Whether every rerun command of experiment e ran to the end in this rerun."""
    return all(log["experiments"].get(c, {}).get("returncode") == 0 for c in e.rerun)


def longest_first(experiments, minutes):
    """The experiments in order of their training time (minutes: {name: minutes}, those the results record before
    the rerun starts), the longest first, so that the last job to finish is a short one."""
    return sorted(experiments, key=lambda e: -minutes.get(e.name, 0))


def run_command(cmd, cores, logfile):
    """Run `python ...` in the repository on `cores` (None: every core), its output to the terminal or to logfile;
    the exit status. (The calling thread takes the cores, and the process it starts inherits them: torch there
    starts one thread per core it may use.)"""
    if cores is not None:
        os.sched_setaffinity(0, cores)
    argv = [sys.executable, *cmd.split()[1:]]
    if logfile is None:
        return subprocess.call(argv, cwd=ROOT)
    with open(logfile, "a") as out:
        return subprocess.call(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def rerun(experiments, file, fresh=False, jobs=1, minutes=None, record=None, logs=LOGS):
    """Run every rerun command of `experiments` (runner.Experiment), `jobs` experiments at a time, logging to
    `file`; continues the unfinished rerun `file` holds (started_log). minutes: {experiment name: training minutes}
    to start the longest first; record(): every finding recorded again from the results (run at the end when
    jobs > 1); logs: the folder of each experiment's output when jobs > 1. Exits with one line naming the commands
    that failed."""
    shares = core_shares(jobs)
    log = started_log(file, fresh, experiments)
    log["jobs"] = jobs
    lock, free = threading.Lock(), list(shares)
    t0, before = time.perf_counter(), log["elapsed_s"]  # (the time of the invocations it continues)

    def save():
        with lock:
            log["elapsed_s"] = round(before + time.perf_counter() - t0, 1)
            write_json(file, log)

    def experiment(e):
        with lock:
            cores = free.pop()
        try:
            for cmd in e.rerun:
                if log["experiments"].get(cmd, {}).get("returncode") == 0:
                    continue
                print(f"=== {cmd}" + (f" (cores {sorted(cores)})" if jobs > 1 else ""), flush=True)
                t = time.perf_counter()
                logfile = None
                if jobs > 1:
                    make_dirs(logs)
                    logfile = os.path.join(logs, f"{e.name}.log")
                rc = run_command(cmd, cores if jobs > 1 else None, logfile)
                earlier = log["experiments"].get(cmd, {}).get("wall_s", 0)  # (a resumed command's time before)
                log["experiments"][cmd] = dict(wall_s=round(earlier + time.perf_counter() - t, 1), returncode=rc)
                save()
                if rc:
                    return
        finally:
            with lock:
                free.append(cores)

    todo = [e for e in longest_first(experiments, minutes or {}) if not finished(log, e)]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(experiment, todo))
    failed = [c for c, v in log["experiments"].items() if v["returncode"]]
    save()
    if failed:
        sys.exit(f"{', '.join(failed)} failed (see {logs if jobs > 1 else 'above'}); the same command continues "
                 f"where it stopped")
    if jobs > 1 and record is not None:
        record()
    log["total_s"] = round(sum(v["wall_s"] for v in log["experiments"].values()), 1)
    save()
    print(f"all {len(log['experiments'])} commands: {log['total_s'] / 60:.0f} min of experiments in "
          f"{log['elapsed_s'] / 60:.0f} min")

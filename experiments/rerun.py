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
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from configurator import ConfigError
from experiments.runner import ROOT, read_json, this_machine
from files import make_dirs, open_append, write_json

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


def done(log, cmd):
    """Whether the command ran to the end in this rerun."""
    return log["experiments"].get(cmd, {}).get("returncode") == 0


def finished(log, e):
    """Whether every rerun command of experiment e ran to the end in this rerun."""
    return all(done(log, c) for c in e.rerun)


def longest_first(experiments, minutes):
    """The experiments in order of their training time (minutes: {name: minutes}, those the results record when the
    rerun starts, kept in its log), the longest first, so that the last job to finish is a short one."""
    return sorted(experiments, key=lambda e: -minutes.get(e.name, 0))


def argv_of(cmd):
    """The argv of a rerun's command: this Python, and --record for an experiment's (a rerun writes the repository's
    results and ledger, experiments/cli.py)."""
    argv = [sys.executable, *cmd.split()[1:]]
    return argv + ["--record"] if argv[1:2] == ["-m"] and argv[2:3] and argv[2].startswith("experiments.") else argv


class Rerun:
    """One invocation of a rerun: its log (saved after every command), the cores free for the next experiment, and
    the processes running, so that a Ctrl-C or a SIGTERM stops them all (each run stops at the end of its step,
    keeping its checkpoint) and nothing trains on after the rerun has stopped."""

    def __init__(self, file, log, shares, logs):
        self.file, self.log, self.free, self.logs = file, log, list(shares), logs
        self.jobs, self.lock, self.running, self.stopping = len(shares), threading.Lock(), set(), False
        self.t0, self.before = time.perf_counter(), log["elapsed_s"]  # (the time of the invocations it continues)

    def save(self):
        with self.lock:
            self.log["elapsed_s"] = round(self.before + time.perf_counter() - self.t0, 1)
            write_json(self.file, self.log)

    def experiment(self, e):
        """Run e's rerun commands not yet finished, in turn, on a share of the cores; stop at one that fails."""
        with self.lock:
            cores = self.free.pop()
        try:
            for cmd in e.rerun:
                if done(self.log, cmd):
                    continue
                if self.stopping:
                    return
                with self.lock:  # (one line at a time from the jobs)
                    print(f"=== {cmd}" + (f" (cores {sorted(cores)})" if self.jobs > 1 else ""), flush=True)
                t = time.perf_counter()
                rc = self.run_command(cmd, cores if self.jobs > 1 else None,
                                      os.path.join(self.logs, f"{e.name}.log") if self.jobs > 1 else None)
                earlier = self.log["experiments"].get(cmd, {}).get("wall_s", 0)  # (a resumed command's time before)
                self.log["experiments"][cmd] = dict(wall_s=round(earlier + time.perf_counter() - t, 1), returncode=rc)
                self.save()
                if rc:
                    return
        finally:
            with self.lock:
                self.free.append(cores)

    def run_command(self, cmd, cores, logfile):
        """Run `python ...` in the repository on `cores` (None: every core), its output to the terminal or to
        logfile; the exit status. (The calling thread takes the cores, and the process it starts inherits them:
        torch there starts one thread per core it may use.)"""
        if cores is not None:
            os.sched_setaffinity(0, cores)
        argv = argv_of(cmd)
        out = None
        if logfile is not None:
            make_dirs(self.logs)
            out = open_append(logfile)
        try:
            with self.lock:
                if self.stopping:
                    return -signal.SIGTERM
                p = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT if out else None)
                self.running.add(p)
            rc = p.wait()
            with self.lock:
                self.running.discard(p)
            return rc
        finally:
            if out is not None:
                out.close()

    def stop(self):
        """SIGTERM to every process the rerun runs (train.py saves its checkpoint and stops); none starts after."""
        with self.lock:
            self.stopping = True
            for p in self.running:
                p.terminate()


def interrupted(signum, frame):
    raise KeyboardInterrupt  # (SIGTERM as Ctrl-C: the rerun stops its processes and saves its log)


def rerun(experiments, file, fresh=False, jobs=1, minutes=None, record=None, logs=LOGS):
    """Run every rerun command of `experiments` (runner.Experiment), `jobs` experiments at a time, logging to
    `file`; continues the unfinished rerun `file` holds (started_log). minutes: {experiment name: training minutes}
    to start the longest first; record(): every finding recorded again from the results (run at the end when
    jobs > 1); logs: the folder of each experiment's output when jobs > 1. Exits with one line naming the commands
    that failed, or saying that it stopped (Ctrl-C, SIGTERM)."""
    log = started_log(file, fresh, experiments)
    log["jobs"] = jobs
    r = Rerun(file, log, core_shares(jobs), logs)
    r.save()  # (at once: a fresh rerun killed before its first command ends is continued, not forgotten again)
    # the order is that of the rerun's start (a continued fresh rerun has forgotten the runs that timed them)
    minutes = log.setdefault("minutes", minutes or {})
    todo = [e for e in longest_first(experiments, minutes) if not finished(log, e)]
    again = "python report.py --rerun" + (" --fresh" if fresh else "") + (f" --jobs {jobs}" if jobs > 1 else "")
    handler = signal.signal(signal.SIGTERM, interrupted)
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        list(pool.map(r.experiment, todo))
    except KeyboardInterrupt:
        r.stop()
        pool.shutdown(wait=True, cancel_futures=True)
        r.save()
        sys.exit(f"rerun stopped: `{again}` continues where it stopped")
    finally:
        pool.shutdown(wait=True)
        signal.signal(signal.SIGTERM, handler)
    failed = [c for c, v in log["experiments"].items() if v["returncode"]]
    r.save()
    if failed:
        sys.exit(f"{', '.join(failed)} failed (see {logs if jobs > 1 else 'above'}); `{again}` continues where it "
                 f"stopped")
    if jobs > 1 and record is not None:
        record()
    log["total_s"] = round(sum(v["wall_s"] for v in log["experiments"].values()), 1)
    r.save()
    print(f"all {len(log['experiments'])} commands: {log['total_s'] / 60:.0f} min of experiments in "
          f"{log['elapsed_s'] / 60:.0f} min")

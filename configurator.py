"""
The command line of train.py (nanoGPT's configurator): defaults <- config files <- --key=value.

    python train.py config/wt_9m.py --lr=3e-3 --decay=linear

A config file is a Python file assigning keys; a --key=value is a Python literal or a plain string. Every key must
exist in the defaults and keep its type, so a typo or a wrong type stops the run at once with one line.
"""

import argparse
import ast
import difflib
import math
import os
import re
import sys
import traceback

from files import WriteError


class ConfigError(ValueError):
    """Bad input from the user: printed as one line, exit status 2."""


# what an entry point reports as one line `error: ...` with exit status 2 (each adds its own, e.g. CheckpointError)
USER_ERRORS = (ConfigError, FileNotFoundError, FloatingPointError, ImportError, WriteError)


def exit_on_user_error(work, *errors):
    """Run an entry point's work(); a user error is one line on stderr and exit status 2, never a traceback (the
    same for train.py, sample.py, dpo.py and corpus.py). Returns work()'s result otherwise."""
    try:
        return work()
    except USER_ERRORS + errors as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # before or after a run's loop (its loop stops at the end of a step: StopFlag)
        print("stopped by Ctrl-C", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # stdout's reader went away (python report.py | head): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (the exit's flush must not fail again)
        sys.exit(1)


def unknown_key(key, valid):
    close = difflib.get_close_matches(key, valid, n=1)
    return ConfigError(f"unknown config key {key!r}" + (f": did you mean {close[0]!r}?" if close else ""))


def check_numbers(cfg, lower_bounds, positive=()):
    """Every float of a config finite, every key of lower_bounds >= its bound (> it for the keys in `positive`):
    else one ConfigError line (train.py and dpo.py check their configs the same way)."""
    for k, v in cfg.items():  # nan / inf in a config file or on the command line
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"config key {k}={v} must be a finite number")
    for k, lo in lower_bounds.items():
        v, strict = cfg[k], k in positive
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 2 ** 63:
            raise ConfigError(f"config key {k}={v} is too large: it must be below 2**63")
        if v is not None and not (v > lo if strict else v >= lo):
            raise ConfigError(f"config key {k}={v} must be {'>' if strict else '>='} {lo}"
                              + (" (a negative clip would turn descent into ascent)" if k == "grad_clip" else ""))


def cli_bool(text):
    """An argparse type for a boolean flag (--resume=True / false / 1 / no ...): bool("False") would be True, so an
    unknown word is argparse's one-line error."""
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean: use True or False")


def check_value(key, value, want):
    """value converted to / checked against `want` (a type or a tuple of types); ints are accepted for floats."""
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is float and isinstance(value, str) and value.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
        return float(value)  # (--lr=nan is a number, and check_numbers names it as one)
    ok = isinstance(value, want) and not (want in (int, float) and isinstance(value, bool))
    if not ok:
        names = want.__name__ if isinstance(want, type) else "/".join(t.__name__ for t in want)
        raise ConfigError(f"config key {key}={value!r} has type {type(value).__name__}, expected {names}")
    return value


def run_config_file(path, scope):
    """Execute a config file into scope; a syntax error or an exception in it is one line naming file:line."""
    try:
        with open(path, encoding="utf-8") as f:
            code = compile(f.read(), path, "exec")
    except (SyntaxError, UnicodeDecodeError) as e:
        where = f"{path}:{e.lineno}" if isinstance(e, SyntaxError) else path
        raise ConfigError(f"config file {where}: {e.msg if isinstance(e, SyntaxError) else 'not UTF-8 text'}") from None
    try:
        exec(code, {}, scope)
    except Exception as e:
        line = next((fr.lineno for fr in reversed(traceback.extract_tb(e.__traceback__)) if fr.filename == path), "?")
        raise ConfigError(f"config file {path}:{line}: {type(e).__name__}: {e}") from None


def get_config(argv, defaults, types=None, nullable=()):
    """Defaults <- config files <- --key=value. `types`: the expected type of keys whose default does not tell
    it (default: type(defaults[key])); keys in `nullable` may also be None."""
    types = types or {}
    cfg = dict(defaults)

    def assign(key, value):
        if key not in cfg:
            raise unknown_key(key, list(cfg))
        cfg[key] = value if value is None and key in nullable else check_value(key, value, types.get(key, type(
            defaults[key])))

    for arg in argv:
        if not arg.startswith("--"):
            if not os.path.isfile(arg):
                raise ConfigError(f"config file {arg} not found")
            scope = dict(cfg)
            run_config_file(arg, scope)
            for k, v in scope.items():
                if not (k.startswith("_") or isinstance(v, type(sys)) or callable(v)):
                    assign(k, v)
            continue
        key, eq, val = arg[2:].partition("=")
        if not eq:
            raise ConfigError(f"argument {arg!r}: write --key=value")
        try:
            v = ast.literal_eval(val)
        except (ValueError, SyntaxError):
            v = val  # a plain string
        assign(key, v)
    return cfg


ASSIGNMENT = re.compile(r"^(\s*)(\w+)\s*(?::\s*[^=]+?)?\s*=\s*(.+?)(?:\s+#\s?(.*))?$")


def documented_keys(path, start, end):
    """[(key, default as written, comment)] of the assignments between the lines containing `start` and `end` in a
    source file (a config block, a dataclass body): the comment beside a key and the comment lines under it, so
    that --help repeats what the file says, written once."""
    keys, inside = [], False
    with open(path, encoding="utf-8") as f:
        for line in f:
            if start in line:
                inside = True
                continue
            if not inside:
                continue
            if end in line:
                break
            m = ASSIGNMENT.match(line.rstrip())
            if m and not m.group(2).startswith("_") and m.group(2).islower() and "(" not in m.group(2):
                keys.append([m.group(2), m.group(3), m.group(4) or ""])
            elif keys and re.match(r"\s*#\s{2,}\S", line):  # "#   ..." continues the comment above; "# data" heads
                keys[-1][2] += " " + line.strip().lstrip("#").strip()  # a comment continued on the next line
    return [tuple(k) for k in keys]


def help_text(sections):
    """--help: one line per key, `--key=default  comment`, under each (title, (file, start, end)) section."""
    out = []
    for title, where in sections:
        keys = documented_keys(*where)
        out.append(f"\n{title}:")
        width = max(len(f"--{k}={d}") for k, d, _ in keys)
        out += [f"  {f'--{k}={d}':{width}s}  {c}".rstrip() for k, d, c in keys]
    return "\n".join(out)

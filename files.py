"""
Writing files so that a fault costs nothing: every file a run, an export or a data preparation writes goes to
path.tmp first and is renamed over path once whole, so a kill leaves the old file or the new one; a write that
fails (a full disk, a read-only mount, a file or directory without permission) removes its partial file and is one
line naming the file, the cause and the fix (WriteError), never a traceback. A real full disk surfaces as OSError
from write() or as RuntimeError from torch's zip writer when it closes the file: both are caught here.
"""

import contextlib
import errno
import json
import os


class WriteError(OSError):
    """A file could not be written: one line, the partial file removed."""


def fix_for(e, path):
    """What to do about an OSError while writing into path's directory."""
    where = os.path.dirname(path) or "."
    if getattr(e, "errno", None) == errno.EROFS:
        return f"{where} is on a read-only file system: write to another directory"
    if getattr(e, "errno", None) in (errno.EACCES, errno.EPERM):
        return f"no permission to write in {where} (or the file is immutable): fix its permissions or write elsewhere"
    return f"free space in {where}"


def one_line(e):
    """An exception as one short line (some have an empty message)."""
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}".rstrip(": ")


def write_error(path, e, need=None):
    """The WriteError of a failed write of `path` (need: the bytes the file takes, to say how much space to free)."""
    fix = fix_for(e, path)
    if need and fix.startswith("free space"):
        fix += f" (it needs about {need / 2 ** 20:,.1f} MiB)"
    return WriteError(f"could not write {path} ({one_line(e)}): {fix}")


def fsync_dir(path):
    """Make a rename in `path` durable: a power loss after it cannot bring the old name back."""
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(path, write, mode="wb", need=None, durable=False, error=write_error,
                       errors=(OSError, RuntimeError)):
    """write(f) into path.tmp opened with `mode` (mode=None: write(tmp_path), for writers that take a path), then
    rename it over path; durable=True fsyncs the file, then the directory after the rename. On a failure among
    `errors` the partial file goes and error(path, e, need) is raised (a WriteError line by default)."""
    tmp = path + ".tmp"
    try:
        if mode is None:
            write(tmp)
        else:
            with open(tmp, mode) as f:
                write(f)
                f.flush()
                if durable:
                    os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_dir(os.path.dirname(path))
    except errors as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise error(path, e, need) from None


def write_json(path, obj, indent=1):
    """An atomic JSON file, its directory made if needed."""
    make_dirs(os.path.dirname(path) or ".")
    replace_atomically(path, lambda f: json.dump(obj, f, indent=indent), mode="w")


def make_dirs(path):
    """os.makedirs(path, exist_ok=True), a failure (read-only, no permission) as one WriteError line."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise write_error(os.path.join(path, ""), e) from None

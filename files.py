"""
Writing files so that a fault costs nothing: every file a run, an export or a data preparation writes goes to
path.tmp first and is renamed over path once whole, so a kill leaves the old file or the new one; a write that
fails (a full disk, a read-only mount, a file or directory without permission) removes its partial file and is one
line naming the file, the cause and the fix (WriteError), never a traceback. A real full disk surfaces as OSError
from write() or as RuntimeError from torch's zip writer when it closes the file: both are caught here.

Nothing is written through a symbolic link: a file is created new (O_EXCL | O_NOFOLLOW) and renamed into place, an
append or a lock file is opened with O_NOFOLLOW, so a link planted in a run directory (one received as a tarball)
cannot make a write land outside it. Nothing is read from what is not a regular file: a FIFO would block forever.
"""

import contextlib
import errno
import fcntl
import json
import os
import stat


class WriteError(OSError):
    """A file could not be written: one line, the partial file removed."""


def fix_for(e, path):
    """What to do about an OSError while writing path, by its errno (a RuntimeError of torch's zip writer has none:
    a full disk is what raises it)."""
    where = os.path.dirname(path) or "."
    code = getattr(e, "errno", None)
    if code == errno.EROFS:
        return f"{where} is on a read-only file system: write to another directory"
    if code in (errno.EACCES, errno.EPERM):
        return f"no permission to write in {where} (or the file is immutable): fix its permissions or write elsewhere"
    if code in (errno.ENOSPC, errno.EDQUOT) or code is None:
        return f"free space in {where}"
    if code == errno.EFBIG:
        return "the file is larger than this process may write (ulimit -f): raise the limit"
    if code == errno.ELOOP:
        return f"{path} (or a directory above it) is a symbolic link: nothing is written through a link; remove it"
    if code in (errno.ENOTDIR, errno.EEXIST):
        return f"a file stands where a directory of {path} should be: move it away or choose another path"
    if code == errno.EISDIR:
        return f"{path} is a directory: move it away or choose another path"
    if code == errno.ENAMETOOLONG:
        return "the path (or one of its names) is too long for the file system: choose a shorter one"
    if code in (errno.EMFILE, errno.ENFILE):
        return "too many open files (ulimit -n): raise the limit or close other programs"
    return f"{os.strerror(code)}: check {where}"


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


def create_new(path):
    """The descriptor of a new, empty regular file at path, opened for writing with the umask's mode: whatever was
    at path (a crash's leftover, a link) is unlinked first, never written through."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)


def umask_mode():
    """The mode a new file gets under this process's umask (0o666 & ~umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def open_append(path):
    """path opened for appending text, created if missing, never through a symbolic link (ELOOP)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666), "a")


def check_regular(path):
    """path (read through links, as a user may link data in) is a regular file: a FIFO or a device would block a
    reader forever, a directory cannot be read. FileNotFoundError when missing, else ValueError in one line."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise ValueError(f"{path} is {kind}, not a regular file: replace it with the file itself")
    return path


def open_regular(path, mode="r", **kw):
    """open(path, mode) for reading, refusing in one line what is not a regular file (check_regular)."""
    return open(check_regular(path), mode, **kw)


def replace_atomically(path, write, mode="wb", need=None, durable=False, error=write_error,
                       errors=(OSError, RuntimeError)):
    """write(f) into path.tmp, a new regular file (create_new) opened with `mode` (mode=None: write(tmp_path), for
    writers that take a path), then rename it over path (a link at path is replaced, not followed); durable=True
    fsyncs the file, then the directory after the rename. The file gets the umask's mode whatever the writer did.
    On a failure among `errors` the partial file goes and error(path, e, need) is raised (WriteError by default)."""
    tmp = path + ".tmp"
    try:
        fd = create_new(tmp)
        if mode is None:
            os.close(fd)
            write(tmp)
            os.chmod(tmp, umask_mode(), follow_symlinks=False)
        else:
            with os.fdopen(fd, mode) as f:
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


@contextlib.contextmanager
def locked(directory, busy_error):
    """Hold an exclusive flock on directory/.lock while the block runs, its holder written in it. The kernel releases
    it when the process ends, however it ends, so a kill never leaves a stale lock; a second holder gets
    busy_error(holder) at once (busy_error None: it waits its turn). The lock file is never opened through a link,
    nor truncated before it is held."""
    make_dirs(directory)
    path = os.path.join(directory, ".lock")
    if os.path.islink(path):  # (no one can hold a lock through it: O_NOFOLLOW) replaced, never followed
        os.unlink(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as e:  # a link, a read-only mount, an immutable or unwritable .lock
        raise write_error(path, e) from None
    with os.fdopen(fd, "r+") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise WriteError(f"{path} is not a regular file: remove it")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (fcntl.LOCK_NB if busy_error else 0))
        except BlockingIOError:
            raise busy_error(f.read(200).strip() or "another process") from None
        f.truncate()
        f.write(f"process {os.getpid()} on {os.uname().nodename}\n")
        f.flush()
        yield


def parse_json(text, where):
    """json.loads of text, a bad document as one ValueError line naming `where` and the line and column (nesting
    too deep for Python's parser included)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise ValueError(f"{where} is JSON nested too deeply to read") from None


def read_json(path, kind=dict, fix="restore it or write it again"):
    """The JSON document of the regular file path, checked to be a `kind` (dict, list ...; None: any): else one
    ValueError line naming the file, what is wrong and `fix`."""
    with open_regular(path, "rb") as f:
        text = f.read()
    try:
        obj = parse_json(text, path)
    except ValueError as e:
        raise ValueError(f"{e}: {fix}") from None
    if kind is not None and not isinstance(obj, kind):
        raise ValueError(f"{path} holds a JSON {type(obj).__name__}, not a JSON {kind.__name__}: {fix}")
    return obj

"""One writer per output: an advisory lock held for a command's whole run.

Two commands writing the same output corrupt it without either noticing (two
``score --resume`` runs both "finish" with every row twice; an ``--overwrite``
replaces parts under a running score). Every command that writes a directory or a
file therefore holds :func:`output_lock` on it until it ends:

    with output_lock(out_dir, what="score output"):            # OUT_DIR/.anglerank.lock
        ...
    with output_lock(out_file, what="rank output", directory=False):  # .NAME.lock next to it
        ...

The lock is ``fcntl.flock`` on a small file, so the operating system releases it
when the process ends in any way (kill -9 included): a lock file left behind is
never stale, the next command simply takes it. The holder writes its pid, host and
command line into the file, so a second process can say who is using the output
(one line, exit 2). The lock file is opened with ``O_NOFOLLOW``: a symbolic link
planted under its name is refused, never written through. Locks are re-entrant
within one process (a command may call another that locks the same output). Where
``fcntl`` does not exist (Windows), or the file system refuses ``flock``, outputs
are not locked.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from anglerank.data.writer import OutputError, open_own

try:
    import fcntl
except ImportError:  # Windows: no flock, so no locking (documented above)
    fcntl = None

__all__ = ["LOCK_NAME", "lock_path", "output_lock"]

LOCK_NAME = ".anglerank.lock"
_held: dict[str, int] = {}  # lock files this process holds -> nesting depth
# file systems without flock: run unlocked rather than refuse to work at all
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def lock_path(path, directory: bool = True) -> Path:
    """The lock file of an output: inside a directory, or ``.NAME.lock`` next to a file.

    An output that is replaced as a whole by a rename (a file, or a directory built
    elsewhere and renamed into place) must be locked from outside, hence ``directory=False``.
    """
    target = Path(path)
    # a file output is replaced by a rename at the name given, so its lock sits beside that name
    return target.resolve() / LOCK_NAME if directory else target.parent.resolve() / f".{target.name}.lock"


@contextlib.contextmanager
def output_lock(path, what: str = "output", *, directory: bool = True) -> Iterator[Path]:
    """Hold the exclusive lock of output ``path`` for the ``with`` block; yields the lock file.

    ``directory=True`` creates ``path`` if needed (and removes it again on exit if it
    is then empty and was created here). Another process holding the lock raises
    :class:`OutputError` naming it; ``what`` says what the output is ("score output").
    """
    target = Path(path).resolve()
    if directory and target.exists() and not target.is_dir():
        raise OutputError(f"output {path} exists and is not a directory")
    lock = lock_path(path, directory)
    key = str(lock)
    if fcntl is None or key in _held:
        _held[key] = _held.get(key, 0) + 1
        try:
            yield lock
        finally:
            _held[key] -= 1
            if not _held[key]:
                del _held[key]
        return
    try:
        created = _make_dirs(lock.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    fd = None
    try:
        fd = _acquire(lock, what, path)
        _held[key] = 1
        yield lock
    finally:
        _held.pop(key, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(lock)  # before unlocking: a waiter that opened it retries on the new file
            os.close(fd)
        for d in reversed(created):
            with contextlib.suppress(OSError):
                d.rmdir()  # only if empty: nothing was written


def _make_dirs(d: Path) -> list[Path]:
    """Create ``d`` and missing parents; return the ones created here, outermost first."""
    missing = []
    while not d.exists():
        missing.append(d)
        d = d.parent
    missing.reverse()
    done: list[Path] = []
    try:
        for m in missing:
            m.mkdir(exist_ok=True)
            done.append(m)
    except OSError:
        for m in reversed(done):
            with contextlib.suppress(OSError):
                m.rmdir()
        raise
    return missing


def _acquire(lock: Path, what: str, shown) -> int | None:
    """The locked descriptor of ``lock`` with our details written in, or None where locks are unsupported."""
    while True:
        try:
            fd = open_own(lock, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise OutputError(f"cannot write {what} {shown}: {exc.strerror or exc} ({lock})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputError(f"{what} {shown} is in use by {holder}; wait for it to finish or write "
                              "elsewhere") from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in _NO_LOCKS:
                return None
            raise OutputError(f"cannot lock {what} {shown}: {exc.strerror or exc} ({lock})") from None
        if _same_file(fd, lock):
            _write_holder(fd)
            return fd
        os.close(fd)  # the previous holder removed this file while we opened it: lock the current one


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.lstat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _write_holder(fd: int) -> None:
    argv = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": shlex.join(argv),
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    try:
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    except OSError:
        pass  # a full disk must not keep a command from locking: a waiter then names "another process"


def _holder(fd: int) -> str:
    """Who holds the lock, from what it wrote into the file (it may still be writing it)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        cmd = info["command"] if len(info["command"]) <= 120 else info["command"][:117] + "..."
        host = "" if info.get("host") == socket.gethostname() else f" on {info.get('host')}"
        return f"another process (pid {int(info['pid'])}{host}, since {info.get('since')}: {cmd})"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, OSError):
        return "another process"


def stale_temps(out: Path) -> list[Path]:
    """Temporaries of ``out`` that a killed run left (``.NAME.<pid>.tmp``, ``.NAME.<pid>.old.tmp``).

    Only call this holding ``out``'s lock: then no other process is writing them.
    """
    out = Path(out)
    return [p for p in out.parent.glob(glob.escape(f".{out.name}.") + "*.tmp")
            if re.fullmatch(r"\d+(\.old)?", p.name[len(out.name) + 2:-4])]

"""The run's log files: ``metrics.jsonl`` and ``subsets.jsonl``, one JSON object a line.

Append-only, so a crash loses at most the line being written; a checkpoint
records each file's size and a resume truncates them back to it, so the logs
always describe exactly the training the weights have seen.

Every file anglerank writes in a run directory is opened here without following a
symbolic link (``O_NOFOLLOW``): a link planted in a run directory could otherwise
point the run's appends, truncations and rewrites at any file the user can write.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import warnings
from pathlib import Path

import numpy as np

from anglerank.errors import UserError

__all__ = ["Jsonl", "read_metrics", "linked", "open_run_file", "replace_run_file", "stage_run_file"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def linked(path) -> UserError:
    return UserError(f"{path} is a symbolic link; anglerank writes only its own files in a run directory, never "
                     "through a link (remove the link)")


def open_run_file(path, flags: int) -> int:
    """A descriptor of the run file ``path`` (``os.open`` flags), refusing a symbolic link in one line."""
    try:
        return os.open(path, flags | _NOFOLLOW, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP or (exc.errno == errno.EEXIST and os.path.islink(path)):
            raise linked(path) from None
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def stage_run_file(path, text: str) -> Path:
    """Write ``text`` to a fresh temporary sibling of ``path`` (``.NAME.tmp``) and return it, for a rename
    into place: a full disk leaves the old file whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if os.path.lexists(tmp):
        tmp.unlink()
    fd = open_run_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        _write_all(fd, text.encode())
    except OSError as exc:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    return tmp


def replace_run_file(path, text: str) -> None:
    """Create or replace the small run file ``path`` whole (a link at ``path`` is replaced, never followed)."""
    os.replace(stage_run_file(path, text), path)


class Jsonl:
    """An append-only JSON-lines file."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def write(self, rec: dict) -> None:
        self.append(json.dumps(rec, default=_json_default) + "\n")

    def append(self, text: str) -> None:
        """Append whole lines in one write; a write that fails (a full disk) leaves no torn line behind."""
        fd = open_run_file(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            start = os.fstat(fd).st_size
            _write_all(fd, text.encode())
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise UserError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        finally:
            os.close(fd)

    def size(self) -> int:
        return os.lstat(self.path).st_size if os.path.lexists(self.path) else 0

    def truncate(self, size: int) -> str | None:
        """Forget lines written after a checkpoint (a run killed later than its last checkpoint).

        The file is never extended: one shorter than ``size``, or not ending a line at
        ``size``, was cut or edited since the checkpoint; it keeps its whole lines up to
        ``size`` and the returned warning says so (None when all is as recorded).
        """
        fd = open_run_file(self.path, os.O_RDWR | os.O_CREAT)
        try:
            have = os.fstat(fd).st_size
            keep = _line_start(fd, min(size, have))
            os.ftruncate(fd, keep)
        except OSError as exc:
            raise UserError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        if keep == size:
            return None
        return (f"{self.path} holds {have} bytes but the checkpoint recorded {size}: it was cut or edited since; "
                f"kept its first {keep} bytes (whole lines), so the log misses what was cut")

    def reset(self) -> None:
        os.close(open_run_file(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC))


def _line_start(fd: int, end: int) -> int:
    """The largest offset <= ``end`` that starts a line (0, or just after a newline)."""
    pos = end
    while pos > 0:
        chunk = os.pread(fd, min(pos, 65536), pos - min(pos, 65536))
        nl = chunk.rfind(b"\n")
        if nl >= 0:
            return pos - len(chunk) + nl + 1
        pos -= len(chunk)
    return 0


def read_metrics(run_dir, kind: str | None = None) -> list[dict]:
    """Records of ``RUN_DIR/metrics.jsonl`` (optionally only one ``type``).

    A last line cut short (the process was killed while writing it) is skipped with a
    warning; a bad line anywhere else means the file is not a run's log: an error.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise UserError(f"no metrics.jsonl in {run_dir}")
    return [r for r in read_jsonl(path) if kind is None or r.get("type") == kind]


def read_jsonl(path: Path) -> list:
    """The records of a run's JSON-lines log. A last line cut short (the process was killed while writing
    it) is skipped with a warning; a bad line anywhere else means the file is not that log: an error."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                warnings.warn(f"{path}: skipped its last line, cut short (the run was killed while writing it)",
                              stacklevel=3)
                break
            raise UserError(f"{path}: line {i + 1} is not JSON; is this a run's {path.name}?") from None
    return out

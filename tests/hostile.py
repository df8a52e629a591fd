"""Reusable pieces for the hostile tests: real processes, one-line errors, a full disk.

The full disk is a private tmpfs mounted inside an unprivileged user and mount
namespace (``unshare -Urm``): nothing on the host is touched, and the namespace
(and the tmpfs with it) ends with the command. What a test wants to inspect
afterwards is copied out of the tmpfs by the same shell script.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    return e


def cli_argv(*args) -> list[str]:
    """The ``anglerank`` command as a fresh process."""
    return [sys.executable, "-m", "anglerank.cli", *map(str, args)]


def run_cli(*args, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cli_argv(*args), env=env(), capture_output=True, text=True, timeout=timeout, **kw)


def one_error_line(res, *fragments) -> str:
    """Exit 2 and exactly one ``error:`` line holding every fragment (a CliRunner result or a CompletedProcess)."""
    code = getattr(res, "exit_code", getattr(res, "returncode", None))
    lines = [x for x in res.stderr.splitlines() if x.strip() and not x.startswith("warning:")]
    assert code == 2, (code, res.stderr)
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert "internal error" not in lines[0], lines[0]
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def can_make_small_disk() -> bool:
    if shutil.which("unshare") is None:
        return False
    p = subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt || exit 3"],
                       capture_output=True)
    return p.returncode == 0


def on_small_disk(mount: Path, size_kb: int, script: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the bash ``script`` with a ``size_kb`` tmpfs mounted at ``mount`` (created if missing).

    ``$DISK`` in the script is the mount point; ``$PY`` the test interpreter; ``$ANGLERANK`` the command.
    Whatever the script copies out of ``$DISK`` to a real directory survives it.
    """
    mount.mkdir(parents=True, exist_ok=True)
    prelude = (f"set -u; DISK={shlex.quote(str(mount))}; PY={shlex.quote(sys.executable)}; "
               f"ANGLERANK=\"$PY -m anglerank.cli\"; "
               f"mount -t tmpfs -o size={int(size_kb)}k tmpfs \"$DISK\" || exit 97\n")
    return subprocess.run(["unshare", "-Urm", "bash", "-c", prelude + script], env=env(), capture_output=True,
                          text=True, timeout=timeout)


def package_at(commit: str, dest: Path) -> Path:
    """The ``anglerank`` package as it was at ``commit``, unpacked under ``dest`` (put ``dest`` on PYTHONPATH
    to run it); skips the test where the commit is not in this checkout's history."""
    import io
    import tarfile

    import pytest

    tar = shutil.which("git") and subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "anglerank"], capture_output=True)
    if not tar or tar.returncode != 0:
        pytest.skip(f"reference commit {commit[:8]} is not in this checkout")
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as tf:
        tf.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return dest

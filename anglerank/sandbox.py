"""Run untrusted Python (a model's completion) with limits, for the code reward.

Each program runs in a fresh temporary directory, as its own process group,
started through ``_sandbox_launcher.py`` (a separate interpreter: no namespace
call happens in this, possibly threaded, process). What it gets:

- a wall-clock timeout; at the end the whole group is killed with SIGKILL, and
  with PID namespaces everything the program started dies with it;
- limits: address space (``memory_mb``), CPU seconds, output size (stdout and
  stderr are files capped by RLIMIT_FSIZE and read back up to
  ``max_output_bytes``), 64 open files, no core dumps, and a pids cgroup
  capping its processes (the guard that holds for root);
- where the kernel allows (it does on Linux as root): no network (a new network
  namespace with no interfaces), a read-only view of every file system except its
  directory, its own /proc, and no capabilities;
- an empty environment (no tokens or keys inherited).

It does NOT protect against: reading files readable by the user running the
trainer (the file system is read-only, not hidden), kernel exploits, or
timing side channels; without root or namespaces only the limits, the process
group and the empty environment remain (``isolation()`` says which). For code
you do not trust at all, run the trainer in a container or VM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Limits", "Outcome", "run_python", "run_many", "isolation"]

_LAUNCHER = str(Path(__file__).with_name("_sandbox_launcher.py"))
_STARTUP_S = 2.0  # interpreter start-up is not the program's time


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 5.0
    memory_mb: int = 1024
    max_output_bytes: int = 1 << 20
    max_procs: int = 32


@dataclass
class Outcome:
    returncode: int | None  # None: killed at the timeout
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float
    isolation: dict


def run_python(code: str, stdin: str = "", limits: Limits = Limits()) -> Outcome:
    """Run ``code`` as ``main.py`` in a fresh directory under ``limits``; never raises for what the code does."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="anglerank-sandbox-") as tmp:
        root = Path(tmp)
        work = root / "work"
        work.mkdir()
        (work / "main.py").write_text(code)
        cfg = {"work": str(work), "program": "main.py", "python": sys.executable, "memory_mb": limits.memory_mb,
               "cpu_s": int(limits.timeout_s) + 1, "max_file_bytes": limits.max_output_bytes,
               "max_procs": limits.max_procs, "cgroup": f"anglerank-sandbox-{os.getpid()}-{root.name[-8:]}"}
        with open(root / "stdout", "w+b") as out, open(root / "stderr", "w+b") as err, \
                open(root / "report.json", "w+b") as rep:
            cfg["report_fd"] = rep.fileno()
            proc = subprocess.Popen([sys.executable, "-I", "-B", _LAUNCHER, json.dumps(cfg)], stdin=subprocess.PIPE,
                                    stdout=out, stderr=err, cwd=work, env={"LANG": "C.UTF-8"},
                                    start_new_session=True, close_fds=True, pass_fds=(rep.fileno(),))
            timed_out = _wait(proc, stdin.encode(), limits.timeout_s + _STARTUP_S)
            _kill_leftovers(proc, cfg["cgroup"])
            stdout, stderr = _read(out, limits), _read(err, limits)
            rep.seek(0)
            report = json.loads(rep.read() or b"{}")
    return Outcome(None if timed_out else proc.returncode, stdout, stderr, timed_out,
                   round(time.perf_counter() - t0, 3), report)


def _wait(proc: subprocess.Popen, data: bytes, timeout: float) -> bool:
    """Feed stdin and wait; True if the timeout ran out (the group is then killed)."""
    try:
        proc.communicate(data, timeout=timeout)
        return False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        return True


def _kill_leftovers(proc: subprocess.Popen, cgroup: str) -> None:
    """Whatever escaped the process group (setsid) but stayed in the cgroup is killed, and the cgroup removed."""
    path = Path("/sys/fs/cgroup/pids") / cgroup
    if not path.exists():
        return
    for _ in range(50):
        pids = [int(p) for p in (path / "cgroup.procs").read_text().split()] if path.exists() else []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.02)


def _read(f, limits: Limits) -> str:
    f.seek(0)
    return f.read(limits.max_output_bytes).decode("utf-8", errors="replace")


def run_many(jobs: list[tuple[str, str]], limits: Limits = Limits(), workers: int | None = None) -> list[Outcome]:
    """``run_python`` over (code, stdin) pairs, ``workers`` at a time (default: the CPU count)."""
    workers = workers or max(1, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: run_python(job[0], job[1], limits), jobs))


def isolation() -> dict:
    """Which protections take effect on this machine (runs a tiny program)."""
    return run_python("print('ok')", limits=Limits(timeout_s=10)).isolation

"""Run untrusted Python (a model's completion) isolated, and judge it against tests from outside.

Each job (one completion with its tests, or one plain run) goes to a judge: a
separate interpreter, ``_sandbox_launcher.py`` (no namespace call ever happens
in this, possibly threaded, process), which gets the job on a pipe, never on
disk or in its arguments. The judge builds a private root and starts the
program in it; the program sees the Python installation and its own /work,
nothing else of the machine (not the data, the run directory, /tmp, home
directories), has no network, no capabilities, its own uid and PID namespace,
and an empty environment, under limits: a wall-clock timeout per test,
address space (``memory_mb``), CPU seconds, output size, 64 open files, a
pids cgroup and RLIMIT_NPROC (``max_procs``).

The tests run in the judge, not in the program: assert tests are executed there
against the program's functions, which answer over a dedicated pair of pipes
with plain values only; stdin/stdout tests compare the captured output there.
What the program prints, its exit status and anything it writes decide nothing
else. See ``docs/rewards.md`` for the threat model.

Where the private root cannot be built (no root and no unprivileged user
namespaces) a job fails with :class:`SandboxUnavailable`, unless isolation is
waived with ``Limits(require_isolation=False)`` or ``ANGLERANK_UNISOLATED_CODE=1``
(for a trainer that already runs in a container of its own); ``isolation()``
says what takes effect.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from anglerank.errors import UserError

__all__ = ["Limits", "Outcome", "SandboxUnavailable", "UNISOLATED_ENV", "run_python", "judge", "judge_many",
           "isolation", "check"]

_LAUNCHER = str(Path(__file__).with_name("_sandbox_launcher.py"))
_STARTUP_S = 5.0  # the judge's own start-up and clean-up, on top of the programs' time
UNISOLATED_ENV = "ANGLERANK_UNISOLATED_CODE"


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 5.0  # per test (per run)
    memory_mb: int = 1024
    max_output_bytes: int = 1 << 20
    max_procs: int = 32
    total_timeout_s: float = 60.0  # all the tests of one completion
    require_isolation: bool = True


class SandboxUnavailable(UserError):
    """Programs cannot be isolated on this machine, and isolation was not waived."""


@dataclass
class Outcome:
    returncode: int | None  # None: killed at the timeout
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float
    isolation: dict


def run_python(code: str, stdin: str = "", limits: Limits = Limits()) -> Outcome:
    """Run ``code`` as ``/work/main.py`` once under ``limits``; never raises for what the code does."""
    t0 = time.perf_counter()
    messages = _launch({"mode": "run", "code": code, "stdin": stdin}, limits, limits.timeout_s)
    res = next((m for m in messages if "returncode" in m), None) or \
        {"returncode": None, "stdout": "", "stderr": "", "timed_out": True}
    return Outcome(res["returncode"], res["stdout"], res["stderr"], res["timed_out"],
                   round(time.perf_counter() - t0, 3), messages[0]["isolation"] if messages else {})


def judge(code: str, tests: list, limits: Limits = Limits()) -> list[bool]:
    """Per test (``("assert", source)`` or ``("io", (stdin, expected_stdout))``): passed or not."""
    passed = [False] * len(tests)
    if not tests:
        return passed
    for m in _launch({"mode": "judge", "code": code, "tests": tests}, limits, limits.total_timeout_s):
        if type(m.get("test")) is int and 0 <= m["test"] < len(tests):
            passed[m["test"]] = m.get("ok") is True
    return passed


def judge_many(jobs: list[tuple[str, list]], limits: Limits = Limits(), workers: int | None = None) -> list[list[bool]]:
    """:func:`judge` over (code, tests) pairs, ``workers`` at a time (default: the CPU count)."""
    workers = workers or max(1, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: judge(job[0], job[1], limits), jobs))


def check(limits: Limits = Limits()) -> None:
    """Raise :class:`SandboxUnavailable` now where programs cannot be isolated and isolation is required,
    rather than at the first completion that holds code (perhaps hours into a run)."""
    if _required(limits):
        _isolates(_python(), sys.base_prefix)


@functools.lru_cache(maxsize=None)
def _isolates(python: str, base_prefix: str) -> None:
    """One empty program; a refusal raises, a success is remembered (the machine does not change under a run;
    the arguments, what the private root is built from, are the key)."""
    _launch({"mode": "run", "code": "", "stdin": ""}, Limits(timeout_s=10), 10)


def isolation() -> dict:
    """Which protections take effect on this machine (runs a tiny program, isolation not required)."""
    return run_python("print('ok')", limits=Limits(timeout_s=10, require_isolation=False)).isolation


def _launch(job: dict, limits: Limits, budget_s: float) -> list[dict]:
    """Start a judge for ``job`` and collect its report lines; kills it after ``budget_s`` (plus start-up)."""
    required = _required(limits)
    with tempfile.TemporaryDirectory(prefix="anglerank-sandbox-", ignore_cleanup_errors=True) as scratch:
        cgroup = f"anglerank-sandbox-{os.getpid()}-{Path(scratch).name[-8:]}"
        job = dict(job, limits=asdict(limits), config={
            "python": _python(),
            "base_prefix": sys.base_prefix, "memory_mb": limits.memory_mb, "max_procs": limits.max_procs,
            "max_output_bytes": limits.max_output_bytes, "cgroup": cgroup, "require_isolation": required,
            "scratch": scratch})
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-B", _LAUNCHER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=scratch,
                                env={"LANG": "C.UTF-8"}, start_new_session=True, close_fds=True)
        try:
            out, err = proc.communicate(json.dumps(job).encode(), timeout=budget_s + _STARTUP_S)
            killed = False
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            out, err = proc.communicate()
            killed = True
        finally:
            _kill_leftovers(cgroup)
    messages = _parse(out)
    refused = next((m["refused"] for m in messages if "refused" in m), None)
    if refused is not None:
        raise SandboxUnavailable(
            f"the code sandbox cannot isolate programs here ({refused}); it needs root or unprivileged user "
            f"namespaces. Inside a container of your own, set {UNISOLATED_ENV}=1 to run them unisolated")
    if not killed and proc.returncode != 0:
        raise RuntimeError(f"the sandbox judge failed (exit {proc.returncode}): "
                           f"{err.decode(errors='replace')[-2000:]}")
    return messages


def _required(limits: Limits) -> bool:
    return limits.require_isolation and os.environ.get(UNISOLATED_ENV) != "1"


def _python() -> str:
    """The base interpreter: a virtual environment's python would bring its site-packages along."""
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def _parse(out: bytes) -> list[dict]:
    messages = []
    for line in out.splitlines():
        try:
            m = json.loads(line)
        except ValueError:
            continue  # a line cut short by the kill at the budget
        if isinstance(m, dict):
            messages.append(m)
    return messages


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _kill_leftovers(cgroup: str) -> None:
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

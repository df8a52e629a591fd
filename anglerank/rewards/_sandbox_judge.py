"""Runs a completion's tests outside the program's process (imported by ``_sandbox_launcher.py``).

Assert tests are executed here, by ``exec``, with the program's top-level names
bound to what the program reported: plain values as exact built-in values,
everything else as a :class:`Proxy` whose calls, attributes, items and
iteration are requests to the program (one process serves every assert test of
a completion; a fresh one starts after a test it died in). An answer counts only
as an exact built-in value (:func:`_sandbox_runner.decode`); a proxy refuses to
be compared, hashed or tested for truth, so an object that claims to equal
anything equals nothing. A program that exits, crashes, times out or breaks the
protocol fails the test it was in, however the test handles exceptions.

stdin/stdout tests are one program run each; its captured stdout is compared
here with the expected output (line by line, trailing whitespace ignored).
"""

import builtins
import importlib
import importlib.util
import json
import os
import select
import struct
import sys
import time

SETUP_S = 1.0  # a program process's start-up, on top of its test's time
# standard modules that do something when imported: never imported on a program's say-so
NOISY_MODULES = {"antigravity", "this", "idlelib", "turtledemo", "turtle", "tkinter", "webbrowser", "pydoc",
                 "__hello__", "__phello__"}


def _load_codec():
    """The value format, from the runner module next to this file (this process has no package)."""
    if "_sandbox_runner" not in sys.modules:
        path = os.path.join(os.path.dirname(__file__), "_sandbox_runner.py")
        spec = importlib.util.spec_from_file_location("_sandbox_runner", path)
        sys.modules["_sandbox_runner"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["_sandbox_runner"])
    return sys.modules["_sandbox_runner"]


codec = _load_codec()


class SetupError(Exception):
    """The sandbox could not be set up for a program (nothing of the program had run yet)."""


class Gone(BaseException):
    """The program died, timed out or answered out of protocol; no ``except Exception`` in a test catches it."""


class ProgramFailed(BaseException):
    """The program raised something that is not an ``Exception`` (``SystemExit``, ``KeyboardInterrupt``...)."""


def _exception(name: str, message: str) -> BaseException:
    """The program's exception as the same built-in class (tests may expect a ValueError), else ProgramFailed."""
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        for base in cls.__mro__:
            try:
                return base(message)
            except TypeError:
                continue
    return ProgramFailed(f"{name}: {message}")


class Remote:
    """One program process serving requests over two pipes, with a deadline per test."""

    def __init__(self, spawn, code: str, null: int, timeout_s: float, cpu_s: int):
        req_r, self.out = os.pipe()
        self.inp, rep_w = os.pipe()
        printed = os.memfd_create("output", os.MFD_CLOEXEC)  # ignored, but capped like any output
        try:
            self.child = spawn(code, ["--serve"], [null, printed, printed, req_r, rep_w], cpu_s)
        finally:
            for fd in (req_r, rep_w, printed):
                os.close(fd)
        for fd in (self.out, self.inp):
            os.set_blocking(fd, False)
        self.seq, self.dead, self.failed, self.names = 0, False, False, None
        _check_status(self.child)
        self.deadline = time.monotonic() + timeout_s + SETUP_S
        try:
            ready = self._receive()
            if type(ready) is not list or len(ready) != 2 or ready[0] != "ready" or type(ready[1]) is not dict:
                raise Gone("no ready message")
            self.names = ready[1]
        except Gone:
            self.close()

    def begin(self, timeout_s: float) -> None:
        self.deadline, self.failed = time.monotonic() + timeout_s, False

    def close(self) -> None:
        if not self.dead:
            self.dead = True
            self.child.kill()
            self.child.wait()
            os.close(self.out)
            os.close(self.inp)

    def request(self, op: str, *args):
        if self.dead:
            self.failed = True
            raise Gone("the program is no longer running")
        self.seq += 1
        try:
            self._write(codec.request_frame([self.seq, op, list(args)]))
            reply = self._receive()
            if type(reply) is not list or len(reply) not in (3, 4) or reply[0] != self.seq:
                raise Gone("answer out of protocol")
            if reply[1] == "ok" and len(reply) == 3:
                try:
                    return codec.decode(reply[2], lambda ref: Proxy(self, ref))
                except (ValueError, TypeError, OverflowError, RecursionError, MemoryError):
                    raise Gone("malformed value") from None
            if reply[1] != "exc" or len(reply) != 4 or type(reply[2]) is not str or type(reply[3]) is not str:
                raise Gone("answer out of protocol")
        except Gone:
            self.failed = True
            self.close()
            raise
        exc = _exception(reply[2], reply[3])
        self.failed = self.failed or isinstance(exc, ProgramFailed)
        raise exc

    def encode(self, x):
        def ref(p):
            if type(p) is Proxy and object.__getattribute__(p, "_remote") is self:
                return ["r", object.__getattribute__(p, "_ref")]
            raise codec.NotPlain(type(p).__name__)

        try:
            return codec.Encoder(ref)(x)
        except codec.NotPlain as exc:
            raise TypeError(f"only plain values can be passed to the program, not {exc}") from None

    def _wait(self, fd: int, write: bool) -> None:
        left = self.deadline - time.monotonic()
        ready = left > 0 and any(select.select([] if write else [fd], [fd] if write else [], [], left)[:2])
        if not ready:
            raise Gone("timed out")

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            self._wait(self.out, True)
            try:
                view = view[os.write(self.out, view):]
            except BlockingIOError:
                continue
            except OSError:
                raise Gone("the program stopped reading") from None

    def _read(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            self._wait(self.inp, False)
            try:
                chunk = os.read(self.inp, min(n - len(buf), 1 << 20))
            except BlockingIOError:
                continue
            if not chunk:
                raise Gone("the program exited")
            buf += chunk
        return bytes(buf)

    def _receive(self):
        size = struct.unpack(">I", self._read(4))[0]
        if size > codec.MAX_FRAME:
            raise Gone("answer too large")
        try:
            return json.loads(self._read(size))
        except (ValueError, RecursionError):
            raise Gone("malformed answer") from None


def _refuse(what: str):
    def method(self, *args):
        raise TypeError(f"a {what} of an object the program returned: only plain values can be judged")

    return method


class Proxy:
    """An object that stays in the program; what crosses over is a plain value or another proxy."""

    __slots__ = ("_remote", "_ref")

    def __init__(self, remote: Remote, ref: int):
        object.__setattr__(self, "_remote", remote)
        object.__setattr__(self, "_ref", ref)

    def _ask(self, op: str, *args):
        return object.__getattribute__(self, "_remote").request(op, object.__getattribute__(self, "_ref"), *args)

    def _enc(self, x):
        return object.__getattribute__(self, "_remote").encode(x)

    def __call__(self, *args, **kwargs):
        return self._ask("call", self._enc(list(args)), self._enc(kwargs))

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._ask("getattr", name)

    def __setattr__(self, name: str, value) -> None:
        self._ask("setattr", name, self._enc(value))

    def __getitem__(self, key):
        return self._ask("getitem", self._enc(key))

    def __setitem__(self, key, value) -> None:
        self._ask("setitem", self._enc(key), self._enc(value))

    def __iter__(self):
        return iter(self._ask("iter"))

    def __next__(self):
        return self._ask("next")

    def __len__(self) -> int:
        return _exact(self._ask("len"), int)

    def __contains__(self, item) -> bool:
        return _exact(self._ask("contains", self._enc(item)), bool)

    def __str__(self) -> str:
        return _exact(self._ask("str"), str)

    def __repr__(self) -> str:
        return _exact(self._ask("repr"), str)

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _refuse("comparison")
    __hash__ = _refuse("hash")
    __bool__ = _refuse("truth value")
    __index__ = __int__ = __float__ = __complex__ = _refuse("conversion to a number")


def _exact(value, kind):
    if type(value) is not kind:
        raise TypeError(f"the program answered a {type(value).__name__} where a {kind.__name__} is needed")
    return value


# --------------------------------------------------------------------------- #
# Tests
# --------------------------------------------------------------------------- #


def _referenced(code) -> set:
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= _referenced(const)
    return names


def _bind(remote: Remote, code) -> dict:
    """The test's globals: the program's names it uses. Built-ins and standard modules are never the
    program's (a program-defined ``abs`` or ``math`` would otherwise judge its own answers)."""
    env = {"__name__": "__main__", "__builtins__": builtins}
    for name in _referenced(code) & remote.names.keys():
        entry = remote.names[name]
        if hasattr(builtins, name) or name.startswith("__"):
            continue
        module = entry[1] if type(entry) is list and len(entry) == 2 and entry[0] == "m" else None
        stdlib = name if name in sys.stdlib_module_names else module
        top = stdlib.partition(".")[0] if type(stdlib) is str else None
        if top in sys.stdlib_module_names and top not in NOISY_MODULES:
            try:
                env[name] = importlib.import_module(stdlib)
            except Exception:
                pass
        elif module is None and stdlib is None:
            try:
                env[name] = codec.decode(entry, lambda ref: Proxy(remote, ref))
            except (ValueError, TypeError, OverflowError, RecursionError, MemoryError):
                pass
    return env


def run_assert(remote: Remote, source: str, timeout_s: float) -> bool:
    """True if the test ran to its end and the program neither failed nor stopped answering meanwhile."""
    try:
        code = compile(source, "<test>", "exec")
    except (SyntaxError, ValueError):
        return False
    remote.begin(timeout_s)
    try:
        exec(code, _bind(remote, code))
    except BaseException:
        return False
    return not remote.failed


def same_output(got: str, want: str) -> bool:
    lines = lambda s: [x.rstrip() for x in s.strip().splitlines()]  # noqa: E731
    return lines(got) == lines(want)


def _check_status(child) -> None:
    if child.status != "ok" and child.status.startswith("{"):
        child.kill()
        child.wait()
        try:
            reason = json.loads(child.status).get("error", child.status)
        except ValueError:
            reason = child.status
        raise SetupError(f"cannot start a program in the sandbox: {reason}")


def run_program(spawn, code: str, stdin: str, limits: dict) -> dict:
    """One run with ``stdin``; its stdout and stderr, each cut at ``max_output_bytes``."""
    files = [os.memfd_create(name, os.MFD_CLOEXEC) for name in ("stdin", "stdout", "stderr")]
    try:
        os.write(files[0], stdin.encode())
        os.lseek(files[0], 0, os.SEEK_SET)
        child = spawn(code, [], files, int(limits["timeout_s"]) + 1)
        _check_status(child)
        done = child.wait(time.monotonic() + limits["timeout_s"] + SETUP_S)
        if not done:
            child.kill()
            child.wait()
        cap = int(limits["max_output_bytes"])
        text = lambda fd: os.pread(fd, cap, 0).decode("utf-8", errors="replace")  # noqa: E731
        return {"returncode": child.code if done else None, "stdout": text(files[1]), "stderr": text(files[2]),
                "timed_out": not done}
    finally:
        for fd in files:
            os.close(fd)


def run_job(job: dict, spawn, null: int, emit) -> None:
    """``run``: one program run, reported. ``judge``: one line per test, ``{"test": i, "ok": bool}``."""
    limits = job["limits"]
    if job["mode"] == "run":
        emit(run_program(spawn, job["code"], job["stdin"], limits))
        return
    end = time.monotonic() + limits["total_timeout_s"]
    remote = None
    for i, (kind, test) in enumerate(job["tests"]):
        left = min(limits["timeout_s"], end - time.monotonic())
        ok = False
        try:
            if left > 0 and kind == "io":
                res = run_program(spawn, job["code"], test[0], dict(limits, timeout_s=left))
                ok = res["returncode"] == 0 and same_output(res["stdout"], test[1])
            elif left > 0:
                if remote is None or remote.dead and remote.names is not None:
                    remote = Remote(spawn, job["code"], null, left, int(limits["total_timeout_s"]) + 1)
                ok = remote.names is not None and run_assert(remote, test, left)
        except OSError:  # no process could be started (the machine's process or memory limits): not passed
            remote = None
        emit({"test": i, "ok": bool(ok)})
    if remote is not None:
        remote.close()

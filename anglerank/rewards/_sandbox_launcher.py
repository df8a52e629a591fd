"""The judge process: isolates itself, builds a private root, starts the program in it, and runs the tests.

Executed as a separate interpreter (``python -I -S -B _sandbox_launcher.py``, the
job as JSON on stdin) so that no namespace or mount call ever happens in the
trainer's own, threaded process. Standard library only. Steps:

1. a pids cgroup with ``pids.max`` (the fork-bomb guard that works for root,
   where RLIMIT_NPROC does not apply);
2. new mount, network, IPC and UTS namespaces (and a user namespace when not
   root); a tmpfs over /tmp, private to this process, holds the program's root:
   read-only binds of /usr, /lib*, the Python installation, a few /etc files and
   /dev/null, /dev/zero, /dev/random, /dev/urandom, plus the program-side runner;
3. per program process (:func:`spawn`): a fresh PID namespace under a small init
   (when it exits, everything the program started dies with it), a mount
   namespace of its own with a size-capped tmpfs at /work holding ``main.py`` and
   a /proc of its PID namespace, ``pivot_root`` into the private root (the host's
   tree is detached), limits, its own unprivileged uid (as root), no
   capabilities, no new privileges, an empty environment, and the base
   interpreter with ``-I -S -B``. Step 2 ends with one such start, stopped short
   of the interpreter, so that a refused step shows before any test.

Where step 2 is refused the job fails closed with one line naming what is missing,
unless isolation was waived; then the program runs as a plain child with limits.
The tests themselves run here (:mod:`anglerank.rewards._sandbox_judge`), never in the program.
"""

import ctypes
import fcntl
import importlib.util
import json
import os
import resource
import select
import signal
import struct
import sys
import time

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = \
    0x20000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, \
    1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_SECUREBITS = 1, 4, 24, 38, 28
SECBIT_NOROOT_ALL = 0x3 | 0x4 | 0x8 | 0x10 | 0x20  # noroot, no_setuid_fixup, keep_caps_locked (and locks)
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(os.uname().machine)
PIDS_ROOT = "/sys/fs/cgroup/pids"
JAIL = "/tmp"  # a tmpfs mounted here, in this process's own mount namespace only
TOP_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
ETC_FILES = ("ld.so.cache", "localtime")
DEVICES = ("null", "zero", "random", "urandom")
FIRST_UID = 0x10000000  # program uids: this plus the starter's pid, a uid no account uses

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src, target: str, fstype, flags: int, data=None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(libc.mount(enc(src), target.encode(), enc(fstype), flags, enc(data)), f"mount {target}")


# --------------------------------------------------------------------------- #
# This process: cgroup, namespaces, the private root
# --------------------------------------------------------------------------- #


def join_pids_cgroup(name: str, max_pids: int) -> bool:
    path = os.path.join(PIDS_ROOT, name)
    try:
        os.mkdir(path)
        with open(os.path.join(path, "pids.max"), "w") as f:
            f.write(str(max_pids))
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        return True
    except OSError:
        return False


def enter_namespaces() -> bool:
    """Own mount, network, IPC and UTS namespaces; True if a user namespace was needed (not root)."""
    uid, gid = os.geteuid(), os.getegid()
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | (CLONE_NEWUSER if uid else 0)
    _check(libc.unshare(flags), "unshare (unprivileged user namespaces are off, or no root)")
    if uid:
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    _mount("none", "/", None, MS_REC | MS_PRIVATE)
    return bool(uid)


def _kept_flags(path: str) -> int:
    """The source mount's flags a bind must keep (a user namespace may not clear them)."""
    f = os.statvfs(path).f_flag
    out = MS_NOSUID | MS_NODEV | (MS_NOEXEC if f & os.ST_NOEXEC else 0)
    out |= (MS_NOATIME if f & os.ST_NOATIME else 0) | (MS_NODIRATIME if f & os.ST_NODIRATIME else 0)
    return out | (MS_RELATIME if f & os.ST_RELATIME else 0)


def _bind(src: str, dest: str, read_only: bool = True, extra: int = 0) -> None:
    _mount(src, dest, None, MS_BIND)
    _mount(None, dest, None, MS_REMOUNT | MS_BIND | (MS_RDONLY if read_only else 0) | _kept_flags(src) | extra)


def _traversable_dirs(path: str) -> None:
    """Parents that can be crossed but not listed, not even by their owner (the Python installation may live
    under /root)."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        d = JAIL + "/" + "/".join(parts[:i])
        if not os.path.isdir(d):
            os.mkdir(d, 0o111)


def build_root(python: str, base_prefix: str, runner_source: str) -> None:
    """The program's future root in a tmpfs at JAIL, read-only when done."""
    _mount("tmpfs", JAIL, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,nr_inodes=4096,mode=0755")
    shown = []
    for top in TOP_DIRS:
        host = "/" + top
        if os.path.islink(host):
            os.symlink(os.readlink(host), JAIL + host)
        elif os.path.isdir(host):
            os.mkdir(JAIL + host)
            _bind(host, JAIL + host)
            shown.append(host)
    for need in (os.path.realpath(base_prefix), os.path.dirname(os.path.realpath(python))):
        if not any(need == d or need.startswith(d + "/") for d in map(os.path.realpath, shown)):
            _traversable_dirs(need)
            _bind(need, JAIL + need)
            shown.append(need)
    for sub, names in (("etc", ETC_FILES), ("dev", DEVICES)):
        os.mkdir(f"{JAIL}/{sub}", 0o755)
        for name in names:
            if os.path.exists(f"/{sub}/{name}"):
                open(f"{JAIL}/{sub}/{name}", "w").close()
                if sub == "dev":  # a device needs its node, not a copy; writes to it change no file
                    _mount(f"/dev/{name}", f"{JAIL}/dev/{name}", None, MS_BIND)
                    _mount(None, f"{JAIL}/dev/{name}", None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NOEXEC)
                else:
                    _bind(f"/etc/{name}", f"{JAIL}/etc/{name}")
    for d in ("work", "proc", "sandbox"):
        os.mkdir(f"{JAIL}/{d}", 0o755)
    with open(f"{JAIL}/sandbox/runner.py", "w") as f:
        f.write(runner_source)
    _mount(None, JAIL, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


# --------------------------------------------------------------------------- #
# One program process
# --------------------------------------------------------------------------- #


class Child:
    """A started program under its ``starter``: ``pid`` is its namespace's init when isolated (killing that
    ends every process in the namespace), else the program itself (the leader of its own session)."""

    def __init__(self, starter: int, pid: int, status: str):
        self.starter, self.pid, self.status, self.code = starter, pid, status, None

    def kill(self) -> None:
        for kill, target in ((os.killpg, self.pid), (os.kill, self.pid), (os.kill, self.starter)):
            try:
                kill(target, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def wait(self, deadline: float | None = None) -> bool:
        """Reap the starter (it exits with the program's status); False if the deadline passed first."""
        while self.code is None:
            pid, status = os.waitpid(self.starter, os.WNOHANG)
            if pid:
                self.code = _exit_code(status)
            elif deadline is not None and time.monotonic() >= deadline:
                return False
            else:
                time.sleep(0.002)
        return True


def spawn(cfg: dict, code: str, argv: list, fds: list) -> Child:
    """Start ``python -I -S -B runner.py *argv`` with ``fds`` as its 0, 1, 2, ...; see the module docstring."""
    pid_r, pid_w = os.pipe()
    st_r, st_w = os.pipe()
    starter = os.fork()
    if starter == 0:
        try:
            _starter(cfg, code, argv, fds, pid_w, st_w)
        finally:
            os._exit(127)
    os.close(pid_w)
    os.close(st_w)
    with os.fdopen(pid_r, "rb") as f:
        raw = f.read(4)
    with os.fdopen(st_r, "rb") as f:
        status = f.read(4096).decode(errors="replace")
    return Child(starter, struct.unpack(">i", raw)[0] if len(raw) == 4 else starter, status)


def _starter(cfg: dict, code: str, argv: list, fds: list, pid_w: int, st_w: int) -> None:
    """Runs in a fork: a new PID namespace and its init, then wait and pass the program's status on."""
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    uid = FIRST_UID + os.getpid()
    if cfg["isolated"]:
        _check(libc.unshare(CLONE_NEWPID), "unshare pid")
    pid = os.fork()
    if pid == 0:
        try:
            (_init if cfg["isolated"] else _program)(cfg, code, argv, fds, st_w, uid)
        finally:
            os._exit(127)
    os.write(pid_w, struct.pack(">i", pid))
    os.closerange(0, 1 << 16)
    os._exit(_exit_code(os.waitpid(pid, 0)[1]))


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def _init(cfg: dict, code: str, argv: list, fds: list, st_w: int, uid: int) -> None:
    """PID 1 of the namespace: starts the program (PID 2, so that signals it sends itself work as usual),
    reaps orphans, and exits with the program's status; its exit ends every process of the namespace."""
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # this copy of the judge holds the tests: no ptrace, no /proc/1/mem
    program = os.fork()
    if program == 0:
        try:
            _program(cfg, code, argv, fds, st_w, uid)
        finally:
            os._exit(127)
    os.closerange(0, 1 << 16)
    while True:
        pid, status = os.wait()
        if pid == program:
            os._exit(_exit_code(status))


def _program(cfg: dict, code: str, argv: list, fds: list, st_w: int, uid: int) -> None:
    status = st_w
    try:
        if cfg["isolated"]:
            work, runner = "/work", "/sandbox/runner.py"
            _enter_root(code, uid if cfg["as_root"] else None)
        else:
            work, runner = os.path.join(cfg["scratch"], f"p{os.getpid()}"), cfg["runner"]
            os.mkdir(work, 0o700)
            with open(os.path.join(work, "main.py"), "w") as f:
                f.write(code)
        status = _arrange_fds(fds, st_w)
        os.chdir(work)
        os.setsid()
        _set_limits(cfg)
        _drop_privileges(uid if cfg["isolated"] and cfg["as_root"] else None)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after the credential change, which clears it
        os.write(status, b"ok")
        if cfg.get("probe"):
            os._exit(0)
        python, main_py = cfg["python"], os.path.join(work, "main.py")
        os.execve(python, [python, "-I", "-S", "-B", runner, *argv, main_py], {"LANG": "C.UTF-8"})
    except BaseException as exc:
        os.write(status, json.dumps({"error": str(exc)}).encode())


def _enter_root(code: str, uid) -> None:
    """A mount namespace of its own: /work and /proc mounted, then the private root becomes /."""
    _check(libc.unshare(CLONE_NEWNS), "unshare mount")
    owner = "" if uid is None else f",uid={uid},gid={uid}"
    _mount("tmpfs", JAIL + "/work", "tmpfs", MS_NOSUID | MS_NODEV, f"size=64m,nr_inodes=4096,mode=0700{owner}")
    with open(JAIL + "/work/main.py", "w") as f:
        f.write(code)
    _mount("proc", JAIL + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chdir(JAIL)
    if PIVOT_ROOT is not None:
        _check(libc.syscall(PIVOT_ROOT, b".", b"."), "pivot_root")
        _check(libc.umount2(b".", MNT_DETACH), "detach the old root")
    else:  # without capabilities a chroot cannot be left; the old mounts stay out of reach
        _check(libc.chroot(b"."), "chroot")
    os.chdir("/")


def _arrange_fds(fds: list, keep: int) -> int:
    """``fds`` become 0, 1, 2, ...; every other descriptor is closed except ``keep`` (close-on-exec)."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64) for fd in fds]
    kept = fcntl.fcntl(keep, fcntl.F_DUPFD_CLOEXEC, 64)
    for target, fd in enumerate(high):
        os.dup2(fd, target)
    os.closerange(len(fds), kept)
    os.closerange(kept + 1, 1 << 16)
    return kept


def _set_limits(cfg: dict) -> None:
    mem = int(cfg["memory_mb"]) << 20
    for what, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, int(cfg["cpu_s"])),
                        (resource.RLIMIT_FSIZE, int(cfg["max_output_bytes"])), (resource.RLIMIT_NOFILE, 64),
                        (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, int(cfg["max_procs"]))):
        try:
            resource.setrlimit(what, (value, value))
        except (ValueError, OSError):
            pass


def _drop_privileges(uid) -> None:
    """No capability can come back; as root, also an unprivileged uid of the program's own."""
    for cap in range(64):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    else:
        libc.prctl(PR_SET_SECUREBITS, SECBIT_NOROOT_ALL, 0, 0, 0)
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    _check(libc.capset(ctypes.byref(Header(0x20080522, 0)), (Data * 2)()), "capset")


# --------------------------------------------------------------------------- #
# Entry point
# --------------------------------------------------------------------------- #


def _sibling(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(__file__), name + ".py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _probe(cfg: dict) -> None:
    """Every step of starting a program once, short of the interpreter; OSError names a refused one."""
    null = os.open(os.devnull, os.O_RDWR)
    try:
        child = spawn(dict(cfg, isolated=True, probe=True, cpu_s=1), "", [], [null, null, null])
    finally:
        os.close(null)
    child.wait()
    if child.status != "ok" or child.code != 0:
        reason = json.loads(child.status)["error"] if child.status.startswith('{"error"') else "no program started"
        raise OSError(f"cannot start a program in the private root: {reason}")


def isolate(cfg: dict) -> dict:
    """Namespaces and the private root; the report says what took effect, ``error`` what did not."""
    report = {"pids_cgroup": join_pids_cgroup(cfg["cgroup"], cfg["max_procs"] + 3), "namespaces": False,
              "user_namespace": False, "private_root": False, "read_only": False, "own_uid": False}
    cfg["as_root"] = os.geteuid() == 0
    try:
        report["user_namespace"] = enter_namespaces()
        report["namespaces"] = True
        with open(os.path.join(os.path.dirname(__file__), "_sandbox_runner.py")) as f:
            build_root(cfg["python"], cfg["base_prefix"], f.read())
        _probe(cfg)
        report.update(private_root=True, read_only=True, own_uid=cfg["as_root"])
    except OSError as exc:
        report["error"] = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror or str(exc)
        libc.umount2(JAIL.encode(), MNT_DETACH)  # a half-built root must not hide the real /tmp
    cfg["isolated"] = report["private_root"]
    return report


def main() -> None:
    job = json.loads(sys.stdin.buffer.read())
    null = os.open(os.devnull, os.O_RDWR)
    out = os.dup(1)
    for fd in (0, 1):  # the tests may print; only ``out`` carries results
        os.dup2(null, fd)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    cfg = job["config"]
    cfg["runner"] = os.path.join(os.path.dirname(__file__), "_sandbox_runner.py")
    # loaded before the private root is built: it is mounted over /tmp, where this package may live
    judge = _sibling("_sandbox_judge")
    report = isolate(cfg)

    def emit(message) -> None:
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(out, data):]

    if not cfg["isolated"] and cfg["require_isolation"]:
        emit({"isolation": report, "refused": report.get("error", "no private root")})
        os._exit(3)
    emit({"isolation": report})
    try:
        judge.run_job(job, lambda code, argv, fds, cpu_s: spawn(dict(cfg, cpu_s=cpu_s), code, argv, fds), null, emit)
    except judge.SetupError as exc:
        emit({"refused": str(exc)})
        os._exit(3)
    os._exit(0)


if __name__ == "__main__":
    main()

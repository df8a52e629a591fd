"""Runs one untrusted Python program in a locked-down child (started by :mod:`anglerank.sandbox`).

Executed as a separate interpreter (``python -I _sandbox_launcher.py CONFIG_JSON``)
so that no namespace or mount call ever happens in the trainer's own, threaded
process. Standard library only. Steps, each skipped where the OS refuses it
(``sandbox.isolation()`` reports which took effect):

1. a pids cgroup with ``pids.max`` (the fork-bomb guard that works for root,
   where RLIMIT_NPROC does not apply);
2. new mount, network, PID, IPC and UTS namespaces; the program becomes PID 1
   of its namespace, so when it dies every process it started dies with it;
3. in the child: mounts made private, a fresh /proc, every mount remounted
   read-only except the program's own directory; resource limits (address
   space, CPU seconds, file size, open files, no core dumps); every capability
   dropped (no remount, no raw sockets, no chown); parent-death signal, so
   killing this launcher kills the program;
4. exec the program with an empty environment.
"""

import ctypes
import json
import os
import resource
import signal
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x4000000, 0x8000000, 0x20000000, \
    0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, \
    1 << 18
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_SECUREBITS = 1, 24, 38, 28
SECBIT_NOROOT_ALL = 0x3 | 0x4 | 0x8 | 0x10 | 0x20  # noroot, no_setuid_fixup, keep_caps_locked (and locks)
PIDS_ROOT = "/sys/fs/cgroup/pids"

libc = ctypes.CDLL(None, use_errno=True)


def _ok(ret: int) -> bool:
    return ret == 0


def join_pids_cgroup(name: str, max_pids: int) -> str | None:
    path = os.path.join(PIDS_ROOT, name)
    try:
        os.mkdir(path)
        with open(os.path.join(path, "pids.max"), "w") as f:
            f.write(str(max_pids))
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        return path
    except OSError:
        return None


def leave_pids_cgroup(path: str | None) -> None:
    if path is None:
        return
    try:
        with open(os.path.join(PIDS_ROOT, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        os.rmdir(path)
    except OSError:
        pass  # the parent removes it after killing what is left


def _mountpoints() -> list[str]:
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].encode().decode("unicode_escape") for line in f]
    return list(dict.fromkeys(points))


def lock_down_mounts(work: str) -> bool:
    """Everything read-only except ``work``; a /proc that shows only this namespace. True if / is read-only."""
    mount = libc.mount
    if not _ok(mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None)):
        return False
    mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    w = work.encode()
    mount(w, w, None, MS_BIND, None)
    root_ro = False
    for point in _mountpoints():
        if point == work:
            continue
        p = point.encode()
        ok = _ok(mount(None, p, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None))
        root_ro = root_ro or (ok and point == "/")
    return root_ro


def drop_privileges() -> None:
    """No capability can come back: bounding set emptied, root's exec rules off, effective set zero."""
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    for cap in range(64):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    libc.prctl(PR_SET_SECUREBITS, SECBIT_NOROOT_ALL, 0, 0, 0)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    libc.capset(ctypes.byref(Header(0x20080522, 0)), (Data * 2)())


def set_limits(cfg: dict) -> None:
    mem = int(cfg["memory_mb"]) << 20
    for what, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, int(cfg["cpu_s"])),
                        (resource.RLIMIT_FSIZE, int(cfg["max_file_bytes"])), (resource.RLIMIT_NOFILE, 64),
                        (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, int(cfg["max_procs"]))):
        try:
            resource.setrlimit(what, (value, value))
        except (ValueError, OSError):
            pass


def child(cfg: dict, status_fd: int) -> None:
    work = cfg["work"]
    report = {"read_only": lock_down_mounts(work) if cfg["namespaces"] else False}
    os.chdir(work)
    set_limits(cfg)
    drop_privileges()
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after the credential change, which clears it
    os.write(status_fd, json.dumps(report).encode())
    os.close(status_fd)
    os.execve(cfg["python"], [cfg["python"], "-I", "-B", cfg["program"]], {"LANG": "C.UTF-8"})


def main() -> None:
    cfg = json.loads(sys.argv[1])
    cgroup = join_pids_cgroup(cfg["cgroup"], cfg["max_procs"])
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    cfg["namespaces"] = _ok(libc.unshare(flags))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            child(cfg, w)
        finally:
            os._exit(127)
    os.close(w)
    report = json.loads(os.read(r, 4096) or b"{}")
    _, status = os.waitpid(pid, 0)
    leave_pids_cgroup(cgroup)
    report.update(namespaces=cfg["namespaces"], pids_cgroup=cgroup is not None)
    # an fd the caller opened: this process shares the child's mount namespace, now read-only
    os.write(cfg["report_fd"], json.dumps(report).encode())
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()

"""The sandbox's first process: run as pid 1 of fresh pid / network / mount / IPC / UTS namespaces
(``unshare``), it locks the program in and becomes it. Standard library only: it runs as
``python -I -S sandbox_init.py CONFIG_JSON`` and never imports the project.

Protocol (trainer.evaluation.sandbox): stdin holds one line with the nonce, then the program's
source. Steps, in order; any failure exits with :data:`SETUP_FAILED` and one line on stderr:

1. every mount read-only (``mount_setattr(AT_RECURSIVE)``, else a read-only remount of each);
2. a fresh, size-limited tmpfs on /tmp, the program's only writable place and its working folder,
   holding ``program.py``;
3. resource limits: CPU seconds, address space, file size, processes, open files, no core dumps;
4. privileges dropped for good: as real root, to the unprivileged ``uid`` (no capabilities, no
   groups); as root of a user namespace (a non-root caller), every capability and the bounding
   set dropped and the securebits locked so that no exec gives them back; no new privileges;
   SIGKILL if the parent (``unshare``) dies;
5. exec of the interpreter on :data:`RUNNER`, which executes the program in a fresh namespace and
   writes the nonce to fd 3 only if it returns normally.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys

SETUP_FAILED = 121

# the runner: the program's module namespace is a fresh dict, as lm-evaluation-harness's
# code_eval runs ``exec(program, {})``; SystemExit and every other exception are failures
RUNNER = r"""
def _run():
    import os, signal, sys
    nonce = os.read(4, 256)
    os.close(4)
    limit = float(sys.argv[1])
    signal.setitimer(signal.ITIMER_PROF, limit)  # CPU seconds; SIGPROF's default action ends the process
    with open("/tmp/program.py", encoding="utf-8") as f:
        code = compile(f.read(), "program.py", "exec")
    try:
        exec(code, {})
    except BaseException:
        import traceback
        try:
            sys.stdout.flush()  # what it printed, then the traceback
            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(1)
    signal.setitimer(signal.ITIMER_PROF, 0)
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(3, nonce)
    os._exit(0)
_run()
"""

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 32, 4096, 16384
MS_NOEXEC = 8
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (added in Linux 5.12)
AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = -100, 0x8000, 0x1
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS = 1, 24, 28, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
SECBITS_LOCKED_NOROOT = 0x2F  # NOROOT, NO_SETUID_FIXUP, KEEP_CAPS_LOCKED, each with its lock


def fail(what: str) -> None:
    err = ctypes.get_errno()
    sys.stderr.write(f"sandbox setup: {what} failed ({os.strerror(err) if err else 'error'})\n")
    sys.stderr.flush()
    os._exit(SETUP_FAILED)


def check(ret: int, what: str) -> None:
    if ret != 0:
        fail(what)


def read_only_everywhere() -> None:
    """Make every mount of this (private) mount namespace read-only."""

    class MountAttr(ctypes.Structure):
        _fields_ = [(n, ctypes.c_uint64) for n in ("attr_set", "attr_clr", "propagation", "userns_fd")]

    attr = MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    ret = _libc.syscall(
        SYS_MOUNT_SETATTR,
        ctypes.c_int(AT_FDCWD),
        b"/",
        ctypes.c_uint(AT_RECURSIVE),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    if ret == 0:
        return
    # an older kernel: remount each mount point read-only, keeping its locked flags
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    names = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}
    for fields in mounts:
        point = fields[4].encode().decode("unicode_escape").encode()
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        flags |= sum(v for k, v in names.items() if k in fields[5].split(","))
        if _libc.mount(None, point, None, flags, None) != 0 and os.path.isdir(point):
            fail(f"read-only remount of {point.decode()}")


def expose(path: str) -> None:
    """Real root: make ``path`` (the interpreter's installation) reachable for the unprivileged uid
    although an ancestor of it is private (e.g. a pyenv Python under /root, mode 0700): that
    ancestor is covered by a read-only tmpfs holding only ``path``, bind-mounted back at its place
    (so the interpreter's paths, its RUNPATH included, stay as they are; the rest stays hidden)."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts)):
        private = "/" + "/".join(parts[:i])
        if not os.stat(private).st_mode & 0o001:  # others cannot traverse it
            break
    else:
        return
    keep = os.open(path, os.O_PATH)
    check(
        _libc.mount(b"tmpfs", private.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755"),
        f"hiding {private}",
    )
    os.makedirs(path)
    source = f"/proc/self/fd/{keep}".encode()
    check(_libc.mount(source, path.encode(), None, MS_BIND | MS_REC, None), f"exposing {path}")
    check(_libc.mount(None, path.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY, None), f"read-only {path}")
    check(_libc.mount(None, private.encode(), None, MS_REMOUNT | MS_RDONLY, None), f"read-only {private}")
    os.close(keep)


def drop_namespace_root() -> None:
    """Root of a user namespace (a non-root caller): drop every capability for good."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "dropping the capability bounding set")
    check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clearing ambient capabilities")
    check(_libc.prctl(PR_SET_SECUREBITS, SECBITS_LOCKED_NOROOT, 0, 0, 0), "locking the securebits")

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [(n, ctypes.c_uint32) for n in ("effective", "permitted", "inheritable")]

    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3, all zero
    check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "clearing capabilities")


def prepare(cfg: dict) -> int:
    """Steps 1-2 and the file descriptors: returns the uid the program will run as."""
    data = sys.stdin.buffer.read()
    nonce, _, program = data.partition(b"\n")
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    read_only_everywhere()
    if cfg["real_root"]:
        for path in cfg["expose"]:
            expose(path)
    uid = cfg["uid"] if cfg["real_root"] else 0
    opts = f"size={cfg['tmp_mb']}m,mode=0700,uid={uid},gid={uid}".encode()
    check(_libc.mount(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV, opts), "mounting a tmpfs on /tmp")
    path = "/tmp/program.py"
    with open(path, "wb") as f:
        f.write(program)
    os.chown(path, uid, uid)
    os.chdir("/tmp")
    if cfg["marker_fd"] != 3:
        os.dup2(cfg["marker_fd"], 3)
        os.close(cfg["marker_fd"])
    r, w = os.pipe()
    os.write(w, nonce)
    os.close(w)
    if r != 4:
        os.dup2(r, 4)
        os.close(r)
    return uid


def become_program(cfg: dict, uid: int) -> None:
    """Steps 3-5, in the child: limits, privileges dropped, exec of the runner."""
    os.set_inheritable(3, True)
    os.set_inheritable(4, True)
    cpu = int(cfg["cpu_s"])
    for limit, value in (
        (resource.RLIMIT_CPU, (cpu + 1, cpu + 2)),
        (resource.RLIMIT_AS, (cfg["memory_mb"] << 20,) * 2),
        (resource.RLIMIT_FSIZE, (cfg["file_mb"] << 20,) * 2),
        (resource.RLIMIT_NPROC, (cfg["nproc"],) * 2),
        (resource.RLIMIT_NOFILE, (256, 256)),
        (resource.RLIMIT_CORE, (0, 0)),
    ):
        resource.setrlimit(limit, value)
    if cfg["real_root"]:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        if 0 in os.getresuid() or 0 in os.getresgid():
            fail("dropping root")
    else:
        drop_namespace_root()
    check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "setting no_new_privs")
    check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "setting the parent-death signal")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",
    }
    os.execve(cfg["python"], [cfg["python"], "-s", "-c", RUNNER, str(cfg["cpu_s"])], env)


def main() -> None:
    """Pid 1 stays a minimal init: signals from inside the namespace cannot reach it, it reaps
    orphans, and it exits with the program's status (128 + N for signal N), which ends every
    other process of the namespace."""
    cfg = json.loads(sys.argv[1])
    uid = prepare(cfg)
    child = os.fork()
    if child == 0:
        try:
            become_program(cfg, uid)
        except Exception as e:  # noqa: BLE001 - one line, the setup exit status
            sys.stderr.write(f"sandbox setup: {type(e).__name__}: {e}\n")
            sys.stderr.flush()
        os._exit(SETUP_FAILED)
    os.close(3)
    os.close(4)
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - any setup error: one line, the setup exit status
        sys.stderr.write(f"sandbox setup: {type(e).__name__}: {e}\n")
        sys.stderr.flush()
        os._exit(SETUP_FAILED)

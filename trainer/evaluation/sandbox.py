"""Run untrusted Python programs (model-generated code and its tests), each in its own locked-down
process, in parallel over the cores.

Every program runs through ``unshare`` (util-linux) in fresh pid, network, mount, IPC and UTS
namespaces, plus a user namespace when the caller is not root, and
:mod:`trainer.evaluation.sandbox_init` locks it in before it starts:

- its own process tree: pid 1 of its pid namespace, so it sees and can signal only its own
  processes (not its parent, not the other programs); when it ends or is killed, the kernel kills
  every process it started;
- no network: a network namespace with only a loopback interface, which is down;
- no writes outside its folder: every mount read-only; a fresh tmpfs on /tmp (``tmp_mb``) is its
  working folder and HOME, gone when it ends;
- an unprivileged identity: as real root, a uid of its own per worker (so RLIMIT_NPROC binds and
  file permissions apply); as a non-root caller, root of a user namespace with every capability
  dropped for good; no new privileges either way;
- limits: ``timeout`` seconds of CPU time (a SIGPROF timer, with RLIMIT_CPU behind it), a wall
  clock of ``timeout + wall_slack`` seconds, ``memory_mb`` of address space, ``nproc`` processes,
  ``file_mb`` per file; the environment holds only PATH, HOME, TMPDIR, LANG and fixed
  PYTHONHASHSEED / OMP_NUM_THREADS values;
- output: the first ``max_output`` bytes of stdout and stderr are kept, the rest is read and
  counted but not stored.

A program passes when it runs to its end (no exception, SystemExit included; no os._exit before
the end) within the limits: the runner then writes a per-run random nonce to a pipe, which the
program cannot do on its behalf unless it is written to look for it. This contains buggy and
hostile code (infinite loops, fork bombs, huge allocations, writes outside its folder, killing
its parent or every process it sees, sockets); it is not a defence against kernel exploits, and
reading world-readable files (the repository, the data) is allowed.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

INIT = Path(__file__).with_name("sandbox_init.py")
SETUP_FAILED = 121  # sandbox_init's exit status when it could not lock the program in
# programs run on the base interpreter (the standard library, not this environment's packages)
PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
PYTHON_HOME = os.path.commonpath([os.path.realpath(sys.base_prefix), os.path.dirname(PYTHON)])
UID_BASE = 1_500_000  # real root: worker k of process p runs as UID_BASE + (p % 4096) * 256 + k


class SandboxUnavailable(Exception):
    """The sandbox cannot run here (no ``unshare``, namespaces refused, ...); the message says why."""


@dataclass(frozen=True)
class Limits:
    """Per program. ``timeout`` is lm-evaluation-harness's code_eval default (3 s), counted in CPU
    seconds so that a busy machine does not fail a slow but correct program."""

    timeout: float = 3.0
    wall_slack: float = 10.0
    memory_mb: int = 1024
    nproc: int = 64
    file_mb: int = 16
    tmp_mb: int = 64
    max_output: int = 64 * 1024


@dataclass(frozen=True)
class ExecResult:
    """What one program did: ``status`` is "passed", "failed" (an exception or a non-zero exit),
    "timeout" (the wall clock), "killed" (a signal: the CPU limit, the memory limit, ...) or
    "no result" (it exited 0 without running to its end)."""

    passed: bool
    status: str
    returncode: int | None
    seconds: float
    output: str
    output_bytes: int

    def reason(self) -> str:
        """One line on why it did not pass: its last output line, else what ended it (the signal
        of a kill, the wall clock, the exit code)."""
        last = (self.output.strip().splitlines() or [""])[-1][:200]
        if last:
            return last
        rc = self.returncode
        if self.status == "killed" and rc is not None:
            num = -rc if rc < 0 else rc - 128
            try:
                name = signal.Signals(num).name
            except ValueError:
                name = f"signal {num}"
            return f"no output; ended by {name} (a CPU, memory or process limit, or the program itself)"
        if self.status == "timeout":
            return f"no output; stopped at the wall-clock limit after {self.seconds:.1f} s"
        return f"no output; exit code {rc}"


def _read_capped(proc: subprocess.Popen, deadline: float, cap: int) -> tuple[bytes, int, bool]:
    """(the first ``cap`` bytes of the process's output, the total, whether the deadline passed)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    kept, total = bytearray(), 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(kept), total, True
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if not ready:
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return bytes(kept), total, False
        total += len(chunk)
        if len(kept) < cap:
            kept += chunk[: cap - len(kept)]


class Sandbox:
    """Runs programs as described in the module docstring, ``workers`` at a time (default: the
    CPU count). Construction probes the machine once: :class:`SandboxUnavailable` if no program
    can run here."""

    def __init__(self, limits: Limits | None = None, workers: int | None = None):
        self.limits = limits or Limits()
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.real_root = os.geteuid() == 0
        self.isolation = "pid+net+mount+ipc+uts namespaces, read-only mounts, own tmpfs, " + (
            "an unprivileged uid per worker" if self.real_root else "a user namespace without capabilities"
        )
        self._slots: queue.Queue[int] = queue.Queue()
        for k in range(self.workers):
            self._slots.put(k)
        unshare = shutil.which("unshare")
        if unshare is None:
            raise SandboxUnavailable("the sandbox needs util-linux's unshare, which is not on PATH")
        self._cmd = [unshare, "--pid", "--net", "--mount", "--ipc", "--uts", "--fork", "--kill-child"]
        self._cmd += ["--mount-proc"]
        if not self.real_root:
            self._cmd[1:1] = ["--user", "--map-root-user"]
        probe = self.run("import sys\nassert sys.version_info >= (3,)\n")
        if not probe.passed:
            why = probe.output.strip().splitlines()[-1:] or [f"status {probe.status}"]
            raise SandboxUnavailable(f"the sandbox cannot start a program here: {why[0][:300]}")

    def _config(self, slot: int, marker_fd: int) -> str:
        import json

        lim = self.limits
        return json.dumps(
            {
                "uid": UID_BASE + (os.getpid() % 4096) * 256 + slot,
                "real_root": self.real_root,
                "marker_fd": marker_fd,
                "python": PYTHON,
                "expose": [PYTHON_HOME],
                "cpu_s": lim.timeout,
                "memory_mb": lim.memory_mb,
                "file_mb": lim.file_mb,
                "tmp_mb": lim.tmp_mb,
                "nproc": lim.nproc,
            }
        )

    def run(self, program: str) -> ExecResult:
        """Run one program (Python source) to its end or its limits."""
        slot = self._slots.get()
        try:
            return self._run(program, slot)
        finally:
            self._slots.put(slot)

    def _run(self, program: str, slot: int) -> ExecResult:
        lim = self.limits
        nonce = secrets.token_hex(16).encode()
        marker_r, marker_w = os.pipe()
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(
                [*self._cmd, sys.executable, "-I", "-S", str(INIT), self._config(slot, marker_w)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(marker_w,),
                start_new_session=True,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
            )
        except OSError as e:
            os.close(marker_r)
            os.close(marker_w)
            raise SandboxUnavailable(f"cannot start unshare ({e})") from None
        os.close(marker_w)
        assert proc.stdin is not None
        try:
            proc.stdin.write(nonce + b"\n" + program.encode("utf-8", "surrogatepass"))
            proc.stdin.close()
        except BrokenPipeError:
            pass
        deadline = t0 + lim.timeout + lim.wall_slack
        out, total, timed_out = _read_capped(proc, deadline, lim.max_output)
        if timed_out:
            self._kill(proc)
        try:
            rc = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self._kill(proc)
            rc, timed_out = proc.wait(), True
        seconds = time.monotonic() - t0
        os.set_blocking(marker_r, False)
        try:
            mark = os.read(marker_r, 256)
        except BlockingIOError:
            mark = b""
        os.close(marker_r)
        text = out.decode("utf-8", "replace")
        if rc == SETUP_FAILED and "sandbox setup:" in text:
            raise SandboxUnavailable(text.strip().splitlines()[-1][:300])
        passed = not timed_out and rc == 0 and mark == nonce
        if passed:
            status = "passed"
        elif timed_out:
            status = "timeout"
        elif rc is not None and (rc < 0 or rc > 128):
            status = "killed"
        elif rc == 0:
            status = "no result"
        else:
            status = "failed"
        return ExecResult(passed, status, rc, seconds, text, total)

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        """SIGKILL the namespace's pid 1 (unshare's child; the kernel then kills every process of
        the namespace, and unshare returns once they are all gone), then unshare's process group."""
        try:
            with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                children = [int(pid) for pid in f.read().split()]
        except OSError:
            children = []
        for pid in children:  # unshare has not reaped them: the numbers cannot be reused yet
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def run_all(
        self, programs: Sequence[str], progress: Callable[[int], object] | None = None
    ) -> list[ExecResult]:
        """Every program, ``workers`` at a time; results in the programs' order."""

        def one(p: str) -> ExecResult:
            r = self.run(p)
            if progress:
                progress(1)
            return r

        if len(programs) <= 1 or self.workers == 1:
            return [one(p) for p in programs]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(one, programs))

    def describe(self) -> dict:
        return {"isolation": self.isolation, "workers": self.workers, **asdict(self.limits)}

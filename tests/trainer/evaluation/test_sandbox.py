"""The sandbox contains hostile programs, scores them as failures, and keeps working.

Each hostile program runs through tests/trainer/evaluation/sandbox_driver.py, itself started in a
pid namespace of its own (and killed after 60 s): a program that escaped the sandbox could kill the
driver or what the driver can see, never pytest, and the test then fails on the driver's report.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO
from trainer.evaluation.sandbox import Limits, Sandbox

DRIVER = Path(__file__).with_name("sandbox_driver.py")


def contained(tmp_path: Path, program: str, timeout: float = 1.0) -> dict:
    """The driver's report on ``program`` (see sandbox_driver.py for the placeholders)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "program.py").write_text(program)
    wrap = [shutil.which("unshare") or "unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]
    if os.geteuid() != 0:
        wrap[1:1] = ["--user", "--map-root-user"]
    proc = subprocess.run(
        [*wrap, sys.executable, str(DRIVER), str(tmp_path / "program.py"), str(outside), str(timeout)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, f"the driver died (exit {proc.returncode}): {proc.stderr[-2000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # whatever the program did, the world outside is intact and the sandbox still works
    assert report["sentinel_alive"] and not report["connected"] and report["outside"] == []
    assert report["leftover_processes"] == 0
    assert report["after"]["passed"], report["after"]
    return report


def test_an_ordinary_program_passes_and_a_failing_one_fails(tmp_path):
    ok = contained(tmp_path, "def f(x):\n    return x + 1\nassert f(1) == 2\nprint('fine')\n")["result"]
    assert ok["passed"] and ok["status"] == "passed" and ok["output"] == "fine\n"
    bad = Sandbox(Limits(timeout=1)).run("assert 1 + 1 == 3\n")
    assert not bad.passed and bad.status == "failed" and bad.output.rstrip().endswith("AssertionError")


@pytest.mark.parametrize(
    "program",
    ["import sys\nsys.exit(0)\n", "exit()\n", "import os\nos._exit(0)\n", "raise KeyboardInterrupt\n"],
    ids=["sys.exit(0)", "exit()", "os._exit(0)", "KeyboardInterrupt"],
)
def test_leaving_early_is_a_failure_even_with_status_0(program):
    """The harness's code_eval counts SystemExit (and anything but a normal end) as a failure."""
    r = Sandbox(Limits(timeout=1)).run(program)
    assert not r.passed and r.status in ("failed", "no result")


def test_a_failure_says_why_in_one_line():
    """ExecResult.reason: the last output line, else the signal that ended a silent program."""
    killed = Sandbox(Limits(timeout=5)).run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    assert killed.status == "killed" and "SIGKILL" in killed.reason()
    failed = Sandbox(Limits(timeout=5)).run("assert 1 == 2, 'one is not two'\n")
    assert failed.status == "failed" and failed.reason() == "AssertionError: one is not two"


def test_infinite_loop_is_stopped_at_the_cpu_limit(tmp_path):
    r = contained(tmp_path, "while True:\n    pass\n")["result"]
    assert not r["passed"] and r["status"] == "killed" and r["seconds"] < 1.0 + 3.0 + 1.0


def test_sleeping_forever_is_stopped_by_the_wall_clock(tmp_path):
    r = contained(tmp_path, "import time\ntime.sleep(600)\n")["result"]
    assert not r["passed"] and r["status"] == "timeout" and r["seconds"] < 1.0 + 3.0 + 2.0


def test_fork_bomb_is_contained(tmp_path):
    program = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    r = contained(tmp_path, program)["result"]
    assert not r["passed"] and r["status"] in ("timeout", "killed")


def test_huge_allocation_fails(tmp_path):
    r = contained(tmp_path, "x = bytearray(64 * 1024**3)\nassert len(x) > 0\n")["result"]
    assert not r["passed"] and "MemoryError" in r["output"]


def test_writing_outside_its_folder_fails(tmp_path):
    """The test's folder, the repository, /dev/shm, a folder of the host's /tmp: all refused (the
    report checks the outside folder stays empty)."""
    program = (
        "import os\n"
        "for path in ['{outside}/pwned', '" + str(REPO / "pwned_by_sandbox") + "', '/dev/shm/pwned']:\n"
        "    try:\n"
        "        open(path, 'w').write('x')\n"
        "    except OSError as e:\n"
        "        print(path, 'refused:', type(e).__name__)\n"
        "    else:\n"
        "        print(path, 'written')\n"
        "open('{outside}/pwned', 'w').write('x')\n"
    )
    r = contained(tmp_path, program)["result"]
    assert not r["passed"] and "written" not in r["output"] and r["output"].count("refused:") == 3
    assert not (REPO / "pwned_by_sandbox").exists() and not Path("/dev/shm/pwned").exists()


def test_its_own_folder_is_writable_and_fresh(tmp_path):
    program = "import os\nassert os.listdir('.') == ['program.py'], os.listdir('.')\nopen('out.txt', 'w').write('x')\n"
    assert contained(tmp_path, program)["result"]["passed"]


def test_killing_its_parent_or_everything_fails(tmp_path):
    """The driver's pid and its sentinel's (numbers of the driver's namespace), its own parent, pid 1,
    then every process it can see: nothing outside it dies (the driver checks), and the program,
    whose last kill finds no process, fails."""
    program = (
        "import os, signal, time\n"
        "for pid in {{{parent}, {sentinel}, os.getppid(), 1}} - {{os.getpid()}}:\n"
        "    try:\n"
        "        os.kill(pid, signal.SIGKILL)\n"
        "    except OSError as e:\n"
        "        print(pid, type(e).__name__)\n"
        "time.sleep(0.2)\n"
        "os.kill(-1, signal.SIGKILL)\n"
    )
    r = contained(tmp_path, program)["result"]  # the driver and its sentinel are alive: checked there
    assert not r["passed"] and r["output"].rstrip().endswith("ProcessLookupError: [Errno 3] No such process")


def test_sockets_reach_nothing(tmp_path):
    program = (
        "import socket\n"
        "for host in ['127.0.0.1', '1.1.1.1']:\n"
        "    try:\n"
        "        socket.create_connection((host, {port}), timeout=0.5)\n"
        "    except OSError as e:\n"
        "        print(host, type(e).__name__)\n"
        "socket.create_connection(('127.0.0.1', {port}), timeout=0.5)\n"
    )
    r = contained(tmp_path, program)["result"]  # nothing reached the driver's port: checked there
    assert not r["passed"] and r["output"].count("Error") >= 3


def test_megabytes_of_output_are_capped(tmp_path):
    program = "import sys\nfor _ in range(300):\n    sys.stdout.write('y' * 10000)\n"
    r = contained(tmp_path, program)["result"]
    assert r["passed"] and r["output_bytes"] == 3_000_000 and len(r["output"]) == 4096


def test_environment_is_scrubbed_and_identity_unprivileged():
    os.environ["MINIGPT_SECRET"] = "do-not-leak"
    try:
        program = (
            "import os\n"
            "assert 'MINIGPT_SECRET' not in os.environ, 'leaked'\n"
            "assert sorted(os.environ) == ['HOME', 'LANG', 'OMP_NUM_THREADS', 'PATH', "
            "'PYTHONDONTWRITEBYTECODE', 'PYTHONHASHSEED', 'TMPDIR'], sorted(os.environ)\n"
            "assert os.getcwd() == '/tmp'\n"
            "status = open('/proc/self/status').read()\n"
            "cap_eff = [l for l in status.splitlines() if l.startswith('CapEff')][0]\n"
            "assert cap_eff.split()[1] == '0000000000000000', cap_eff\n"
            "assert 'NoNewPrivs:\\t1' in status\n"
        )
        r = Sandbox(Limits(timeout=1)).run(program)
        assert r.passed, r.output
    finally:
        del os.environ["MINIGPT_SECRET"]


def test_programs_run_in_parallel_and_results_keep_their_order():
    sandbox = Sandbox(Limits(timeout=2), workers=2)
    programs = [f"print({i})\nassert {i} % 3 != 0\n" for i in range(7)]
    results = sandbox.run_all(programs)
    assert [r.output.splitlines()[0] for r in results] == [f"{i}" for i in range(7)]
    assert [r.passed for r in results] == [i % 3 != 0 for i in range(7)]


def test_without_unshare_the_sandbox_says_why(tmp_path, monkeypatch):
    """A machine without util-linux's unshare: one reason, which eval_llm turns into a note
    ("pass@1 skipped: ...") and --code_selftest into a one-line error."""
    from trainer.evaluation.sandbox import SandboxUnavailable

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxUnavailable, match="needs util-linux's unshare, which is not on PATH"):
        Sandbox()

"""Runs one program through the sandbox and reports, as JSON on stdout, what it did and what the
world outside it looks like afterwards. tests/trainer/evaluation/test_sandbox.py starts this in a
pid namespace of its own, so a program that escaped the sandbox could at worst kill this process,
never pytest.

    python sandbox_driver.py PROGRAM_FILE OUTSIDE_DIR [TIMEOUT]

Before the program runs, the driver starts a sentinel process (``sleep``) and listens on a TCP
port of 127.0.0.1; the program's text may use ``{parent}`` (this process's pid), ``{sentinel}``,
``{port}`` and ``{outside}`` (a folder outside the program's own). After it, the driver reports
whether the sentinel is alive, whether anything connected to the port, the files in
``{outside}``, and runs an ordinary program to show the sandbox still works.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from trainer.evaluation.sandbox import Limits, Sandbox


def _uid(pid: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except FileNotFoundError:
        return None


def main() -> None:
    program, outside = Path(sys.argv[1]).read_text(), Path(sys.argv[2])
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    sentinel = subprocess.Popen(["sleep", "120"])
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.setblocking(False)
    port = server.getsockname()[1]
    sandbox = Sandbox(Limits(timeout=timeout, wall_slack=3.0, max_output=4096), workers=2)
    text = program.format(parent=os.getpid(), sentinel=sentinel.pid, port=port, outside=outside)
    result = sandbox.run(text)
    try:
        server.accept()
        connected = True
    except BlockingIOError:
        connected = False
    leftover = [d for d in os.listdir("/proc") if d.isdigit() and _uid(d) not in (None, os.getuid())]
    after = sandbox.run("x = sum(range(10))\nassert x == 45\n")
    alive = sentinel.poll() is None
    sentinel.kill()
    print(
        json.dumps(
            {
                "result": asdict(result),
                "after": asdict(after),
                "sentinel_alive": alive,
                "connected": connected,
                "outside": sorted(p.name for p in outside.iterdir()),
                "leftover_processes": len(leftover),
                "isolation": sandbox.isolation,
            }
        )
    )


if __name__ == "__main__":
    main()

"""What several test modules share: running the real scripts, the real data, the tiny model.

Tests import these from here (never from conftest or from another test module).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.paths import REPO_ROOT

REPO = REPO_ROOT
SHARED = Path(os.environ.get("MINIGPT_SHARED", REPO_ROOT.parent / "shared"))
SHARED_DATA = Path(os.environ.get("MINIGPT_SHARED_DATA", SHARED / "data"))

# One thread: tiny matmuls on 2 threads stall for milliseconds each when the machine is busy.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}

TINY_MODEL = [
    "--hidden_size",
    "64",
    "--num_hidden_layers",
    "2",
    "--num_attention_heads",
    "4",
    "--num_key_value_heads",
    "2",
]


def _require(path: Path) -> Path:
    if not path.exists():
        msg = f"real test data missing: {path} (set MINIGPT_SHARED to the shared folder)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data: under CI a missing file fails the test, elsewhere it skips."""
    return _require(SHARED_DATA.joinpath(*parts))


def field_case(*parts: str) -> Path:
    """A file under ../shared/field-cases (same rule as shared_file)."""
    return _require(SHARED.joinpath("field-cases", *parts))


def field_case3(*parts: str) -> Path:
    """A file under ../shared/field-cases3, the round-3 field reports (same rule as shared_file)."""
    return _require(SHARED.joinpath("field-cases3", *parts))


def run_script(*args: str, env: dict | None = None, timeout: int = 600, check: bool = True):
    """Run a repo script with this interpreter, as a user would; returns the CompletedProcess."""
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
        )
    return proc


def bad(*args, **kw) -> str:
    """Run a script that must fail on bad input: exit 2, no traceback; returns its last stderr line."""
    proc = run_script(*args, check=False, **kw)
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    return lines[-1]


def load_script(relpath: str, name: str):
    """Import a top-level script (eval_llm.py, scripts/*.py) as a module, to call its main() in-process."""
    spec = importlib.util.spec_from_file_location(name, REPO / relpath)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

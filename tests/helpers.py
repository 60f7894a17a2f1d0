"""What several test modules share: running the real scripts, the real data, the tiny model.

Tests import these from here (never from conftest or from another test module).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.paths import REPO_ROOT, shared_data

REPO = REPO_ROOT
SHARED = Path(os.environ.get("MINIGPT_SHARED", REPO_ROOT.parent / "shared"))
SHARED_DATA = shared_data()

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


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for torchrun's --master_port / MASTER_PORT: tests run in
    parallel (pytest-xdist), so no test may fix a port number."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(processes: int) -> list[str]:
    """run_script's arguments that start the script under torchrun with ``processes`` local ranks
    on a free port."""
    return [
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(processes),
        "--master_port",
        str(free_port()),
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
    assert spec is not None and spec.loader is not None, relpath
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- small models per family


def small_config(**kw):
    """A 128 x 3 config (vocab 512, 8 heads, 2 kv heads) with ``kw`` on top."""
    from model import ModelConfig

    return ModelConfig(
        **{
            "vocab_size": 512,
            "hidden_size": 128,
            "num_hidden_layers": 3,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "max_position_embeddings": 256,
            **kw,
        }
    )


# One config per family the model reproduces (see tests/model/test_hf.py for the transformers side).
FAMILIES = {
    "ours": {},
    "llama3_rope_bias": dict(
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        tie_word_embeddings=False,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    ),
    "qwen2": dict(architecture="Qwen2ForCausalLM", qkv_bias=True, rms_norm_eps=1e-6),
    "qwen3": dict(
        architecture="Qwen3ForCausalLM", qk_norm=True, head_dim=32, pad_token_id=None, bos_token_id=None
    ),
}


def family_model(name: str):
    """A small model of one family with norms and biases away from their init, so they matter."""
    import torch

    from model import MiniGPTForCausalLM

    torch.manual_seed(0)
    model = MiniGPTForCausalLM(small_config(**FAMILIES[name])).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.uniform_(0.5, 1.5)
            elif pname.endswith("bias"):
                p.normal_(0.0, 0.3)
    return model

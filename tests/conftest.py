"""Shared fixtures: the real public data in ../shared/data (never copied into the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trainer.paths import REPO_ROOT

# One thread: tiny matmuls on 2 threads stall for milliseconds each when the machine is busy.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SHARED_DATA = Path(os.environ.get("MINIGPT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data: under CI a missing file fails the test, elsewhere it skips."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        msg = f"real test data missing: {path} (set MINIGPT_SHARED_DATA to the shared/data folder)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture
def shared_data() -> Path:
    """The ../shared/data folder itself (fails under CI=true when absent)."""
    return shared_file()


REPO = REPO_ROOT


def run_script(*args: str, env: dict | None = None, timeout: int = 600, check: bool = True):
    """Run a repo script with this interpreter, as a user would; returns the CompletedProcess."""
    import subprocess
    import sys

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


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A 1024-token BPE trained on real TinyStories and Code Alpaca rows (both shipped in ../shared/data)."""
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    run_script(
        "scripts/train_tokenizer.py",
        "--data_path",
        str(shared_file("tinystories", "train_v1_first2MiB.jsonl")),
        "--vocab_size",
        "1024",
        "--max_docs",
        "1500",
        "--output_dir",
        str(out),
    )
    return out


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory, tokenizer_dir) -> Path:
    """A tiny model pretrained for 60 steps on real TinyStories: the folder holding pretrain_64.pth."""
    out = tmp_path_factory.mktemp("pretrained")
    run_script(
        "trainer/train_pretrain.py",
        "--data_path",
        str(shared_file("tinystories", "train_v1_first2MiB.jsonl")),
        "--val_path",
        str(shared_file("tinystories", "validation_first1000.jsonl")),
        "--tokenizer_path",
        str(tokenizer_dir),
        *TINY_MODEL,
        "--max_seq_len",
        "128",
        "--batch_size",
        "16",
        "--max_steps",
        "60",
        "--learning_rate",
        "3e-3",
        "--eval_interval",
        "30",
        "--eval_batches",
        "4",
        "--log_interval",
        "10",
        "--save_dir",
        str(out),
        "--checkpoint_dir",
        str(out / "ckpt"),
        "--cache_dir",
        str(out / "cache"),
    )
    return out

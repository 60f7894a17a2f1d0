"""Shared fixtures (helpers live in tests/helpers.py): the real public data in ../shared/data
(never copied into the repo), a tokenizer and a tiny pretrained model built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import TINY_MODEL, field_case, field_case3, run_script, shared_file


def pytest_configure(config):
    """One torch thread per process unless the caller set OMP_NUM_THREADS: ``pytest -n auto`` runs a
    worker per core and most tests run the real scripts in subprocesses, so with torch's default
    (a thread per core each) the threads outnumber the cores and OpenMP's spinning threads wait on
    one another. The suite on our 2-core machine: 740 s with torch's default, 566 s with one. Set
    here, before the xdist workers start, so that they and every script they run inherit it."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def shared_data() -> Path:
    """The ../shared/data folder itself (fails under CI=true when absent)."""
    return shared_file()


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


SLOW_FIXTURES = {"tokenizer_dir", "pretrained"}  # each runs the real scripts once per session


def pytest_collection_modifyitems(items):
    """Tests built on the session's trained tokenizer or model are end-to-end: mark them slow, so
    ``pytest -m "not slow"`` is the fast inner loop (``make test`` runs everything). The files of
    tests marked ``long`` (minutes each) go first, so that ``make test``'s parallel workers
    (pytest-xdist, a file per worker) do not end with one of them running alone."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    long_files = {item.path for item in items if item.get_closest_marker("long")}
    items.sort(key=lambda item: item.path not in long_files)  # stable: the order within stays


@pytest.fixture(scope="session")
def field_tokenizer_dir(tmp_path_factory) -> Path:
    """The field reports' 400-token BPE, trained on ../shared/field-cases/madeup_corpus.jsonl."""
    from dataset.io import iter_docs
    from dataset.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("ftok") / "tokenizer"
    train_tokenizer((t for t, _ in iter_docs(field_case("madeup_corpus.jsonl"))), 400, out)
    return out


@pytest.fixture(scope="session")
def field_tokenizer(field_tokenizer_dir):
    from dataset.tokenizer import load_tokenizer

    return load_tokenizer(field_tokenizer_dir)


@pytest.fixture(scope="session")
def smollm_tokenizer(tmp_path_factory):
    """A SmolLM2-style tokenizer whose BOS is its EOS (<|endoftext|>), as field-cases3 builds it."""
    from dataset.tokenizer import load_tokenizer

    out = tmp_path_factory.mktemp("smoltok")
    run_script(
        str(field_case3("make_smollm_tok.py")), str(out), env={"MINIGPT_SHARED_DATA": str(shared_file())}
    )
    return load_tokenizer(out)

"""Tokenize once: the token stores prepare_dataset writes beside the JSONL, and how the trainer's
data (dataset.mixture.mixture_stores) takes them, on real rows from ../shared/data.

The store prepare writes must be exactly the store the trainer would build from the JSONL (so
using it changes nothing but the time), whatever ``num_proc``; the trainer must use it without
tokenizing, and refuse, in one line naming both hashes, a store of another tokenizer or of another
JSONL; an interrupted preparation must leave nothing a later run could take for a store.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from dataset.mixture import load_mixture_config, mixture_stores, prepare_mixture, prepared_paths
from dataset.store import StoreWriter, build_store
from dataset.tokenizer import load_tokenizer, tokenizer_sha256, train_tokenizer
from model.errors import UserError
from tests.dataset.test_mixture_tokens import _seed_texts, write_config

BINS = ("tokens.bin", "doc_start.bin", "doc_len.bin", "doc_source.bin")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("hf_cache"))


@pytest.fixture(scope="module")
def toks(tmp_path_factory) -> tuple[Path, Path]:
    """Two real BPEs trained on the sources' rows (512 and 384 tokens)."""
    root = tmp_path_factory.mktemp("toks")
    train_tokenizer(_seed_texts(300), 512, root / "a")
    train_tokenizer(_seed_texts(200), 384, root / "b")
    return root / "a", root / "b"


@pytest.fixture(scope="module")
def staged(tmp_path_factory, toks, cache_dir):
    """A staged tokens-mode mixture prepared with num_proc 1 and 2."""
    root = tmp_path_factory.mktemp("staged")
    config = load_mixture_config(write_config(root / "cfg", toks[0], staged=True, total_tokens=60_000))
    for n in (1, 2):
        prepare_mixture(config, root / f"out{n}", num_proc=n, cache_dir=cache_dir)
    return config, root


def test_the_prepared_store_is_the_one_the_trainer_would_build(staged, toks, tmp_path):
    config, root = staged
    tok = load_tokenizer(toks[0])
    for n in (1, 2):
        paths = prepared_paths(config, root / f"out{n}")
        for jsonl, folder in ((paths.train, paths.train_store), (paths.val, paths.val_store)):
            built = build_store([jsonl], tok, tmp_path / f"cache{n}", num_proc=2)
            for name in BINS:
                assert (folder / name).read_bytes() == (built.folder / name).read_bytes(), (
                    n,
                    jsonl.name,
                    name,
                )
            mine, theirs = (json.loads((f / "meta.json").read_text()) for f in (folder, built.folder))
            assert mine["inputs"] == [{"path": jsonl.name, "sha256": theirs["inputs"][0]["sha256"]}]
            assert {**mine, "inputs": None} == {**theirs, "inputs": None}
            assert [g["name"] for g in mine["segments"]] == ["main", "decay"]  # the stages, in order
    one, two = (prepared_paths(config, root / f"out{n}") for n in (1, 2))
    for name in (*BINS, "meta.json"):
        assert (one.train_store / name).read_bytes() == (two.train_store / name).read_bytes(), name


def test_the_trainer_takes_the_prepared_store_without_tokenizing(staged, toks, tmp_path, caplog):
    config, root = staged
    tok = load_tokenizer(toks[0])
    paths = prepared_paths(config, root / "out1")
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="dataset.store"):
        train, val = mixture_stores(config, root / "out1", cache, tok)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("token store:")]
    assert lines == [
        f"token store: {paths.train_store} (from prepare_dataset, {train.num_tokens:,} tokens)",
        f"token store: {paths.val_store} (from prepare_dataset, {val.num_tokens:,} tokens)",
    ]
    assert not cache.exists()  # nothing tokenized, nothing cached
    manifest = json.loads(paths.manifest.read_text())
    assert train.num_tokens == manifest["outputs"]["train"]["store"]["tokens"]
    # the planner's counts are the store's targets: every token of a document but its first
    targets = sum(
        c["train_tokens"] + c["val_tokens"] for st in manifest["plan"]["stages"] for c in st["sources"]
    )
    assert targets == train.num_tokens + val.num_tokens - train.num_docs - val.num_docs


def test_a_store_of_another_tokenizer_or_another_jsonl_is_refused(tmp_path, toks, cache_dir):
    """Rows mode with --tokenizer_path a: a trainer with tokenizer b, or a JSONL changed after
    preparing, is refused in one line naming both hashes and the command that re-makes it."""
    path = write_config(tmp_path / "cfg", None, total_tokens=30_000)
    raw = yaml.safe_load(path.read_text())
    raw.pop("mix_by"), raw.pop("total_tokens")
    raw["total_samples"] = 120
    path.write_text(yaml.safe_dump(raw))
    config = load_mixture_config(path)
    prepare_mixture(config, tmp_path / "out", cache_dir=cache_dir, tokenizer=str(toks[0]))
    paths = prepared_paths(config, tmp_path / "out")
    a, b = load_tokenizer(toks[0]), load_tokenizer(toks[1])
    with pytest.raises(UserError) as e:
        mixture_stores(config, tmp_path / "out", tmp_path / "cache", b)
    msg = str(e.value)
    assert msg.startswith(f"--use_prepared: {paths.train_store} holds the tokens of tokenizer sha256 ")
    assert tokenizer_sha256(a)[:12] in msg and tokenizer_sha256(b)[:12] in msg and "\n" not in msg
    assert "scripts/prepare_dataset.py --config" in msg and "--tokenizer_path" in msg
    old = json.loads(paths.manifest.read_text())["outputs"]["train"]["sha256"]
    with paths.train.open("a") as f:
        f.write('{"text": "one row more", "source": "replay"}\n')
    with pytest.raises(UserError) as e:
        mixture_stores(config, tmp_path / "out", tmp_path / "cache", a)
    msg = str(e.value)
    assert f"{paths.train_store} was written for a {paths.train.name} with sha256 {old[:12]}" in msg
    assert "not for this one (sha256" in msg and "--overwrite" in msg
    assert not (tmp_path / "cache").exists()


def test_files_prepared_without_a_tokenizer_are_tokenized_once_into_the_cache(
    tmp_path, toks, cache_dir, caplog
):
    """Rows mode, no tokenizer: no store beside the JSONL; the trainer's cache tokenizes it on the
    first start and not on the next (whatever its row length: the key has none)."""
    path = write_config(tmp_path / "cfg", None)
    raw = yaml.safe_load(path.read_text())
    raw.pop("mix_by"), raw.pop("total_tokens")
    raw["total_samples"] = 120
    path.write_text(yaml.safe_dump(raw))
    config = load_mixture_config(path)
    manifest = prepare_mixture(config, tmp_path / "out", cache_dir=cache_dir)
    paths = prepared_paths(config, tmp_path / "out")
    assert "store" not in manifest["outputs"]["train"] and not paths.train_store.exists()
    tok = load_tokenizer(toks[0])
    with caplog.at_level(logging.INFO, logger="dataset.store"):
        first, _ = mixture_stores(config, tmp_path / "out", tmp_path / "cache", tok)
        again, _ = mixture_stores(config, tmp_path / "out", tmp_path / "cache", tok)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("token store:")]
    assert lines[0] == f"token store: {first.folder} (tokenized now, {first.num_tokens:,} tokens)"
    assert lines[2] == f"token store: {first.folder} (cached, {first.num_tokens:,} tokens)"
    assert again.folder == first.folder


def test_an_older_manifest_is_refused_in_one_line(staged, toks):
    config, root = staged
    paths = prepared_paths(config, root / "out2")
    manifest = json.loads(paths.manifest.read_text())
    try:
        paths.manifest.write_text(json.dumps({**manifest, "manifest_version": 1}))
        with pytest.raises(UserError) as e:
            mixture_stores(config, root / "out2", root / "cache", load_tokenizer(toks[0]))
    finally:
        paths.manifest.write_text(json.dumps(manifest))
    msg = str(e.value)
    assert "manifest version 1, written by an older prepare_dataset (this version reads 2)" in msg
    assert "re-run: python scripts/prepare_dataset.py --config" in msg and "\n" not in msg


def test_an_interrupted_preparation_leaves_no_store(tmp_path, toks, cache_dir, monkeypatch):
    """Ctrl-C while the stores are written: no store, no JSONL, no spill or temporary left; the
    earlier run's outputs stay as they were."""
    config = load_mixture_config(write_config(tmp_path / "cfg", toks[0], total_tokens=30_000))
    out = tmp_path / "out"
    prepare_mixture(config, out, cache_dir=cache_dir)
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real = StoreWriter.add_batch

    def interrupted(self, *args, **kwargs):
        real(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(StoreWriter, "add_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_mixture(config, out, overwrite=True, cache_dir=cache_dir)
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        prepare_mixture(config, fresh, cache_dir=cache_dir)
    assert not fresh.exists()

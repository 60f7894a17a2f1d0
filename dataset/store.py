"""The token store: JSONL documents tokenized once, kept as documents (not rows), memory-mapped.

One store is a folder named by its key: the sha256 of every input file, the tokenizer's sha256
and the format version. Nothing else enters the key: the row length (``--max_seq_len``) and the
row layout (``--packing``, :mod:`dataset.rows`) are derived from the store at start, cheaply and
deterministically, so changing either never re-tokenizes. Files:

  tokens.bin      uint16/uint32: the documents in file order as the trainer joins them,
                  ``BOS doc EOS BOS doc EOS ...`` (``doc EOS`` without BOS, e.g. Qwen's;
                  ``<e> doc <e> doc <e>``, one separator per boundary, when BOS is EOS, e.g.
                  SmolLM2's: dataset.tokenizer.shares_separator)
  doc_start.bin   int64 per document: where its tokens start in tokens.bin
  doc_len.bin     int32 per document: how many tokens it has, as it would be alone (``BOS doc
                  EOS``): with a shared separator two neighbours overlap by that one token
  doc_source.bin  uint8 per document: its source id (``meta.json`` names them)
  meta.json       format version, inputs and their sha256, tokenizer sha256, dtype, pad id,
                  sources, segments (stages: a range of documents and of tokens each)

A staged file keeps each stage's documents together (prepare_dataset writes them so); each
stage is a segment whose first document starts with its own BOS. Memory stays flat as the corpus
grows: text is read and tokenized in batches and appended to disk; readers use memory maps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dataset.io import atomic_dir, file_sha256, iter_jsonl, iter_staged_docs
from dataset.once import build_once, from_rank0, rank
from dataset.pool import Runner, pool_encode
from dataset.tokenizer import doc_start, pad_id, shares_separator, token_dtype, tokenizer_sha256
from model.errors import UserError

log = logging.getLogger(__name__)

FORMAT_VERSION = 4  # 4: documents and their boundaries, keyed without the row length
_BATCH = 1024  # documents per tokenizer call: large enough for the Rust batch encoder to be efficient
_ARRAYS = {"doc_start": np.int64, "doc_len": np.int32, "doc_source": np.uint8}


def check_data_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The files, checked before any training work: each exists and its first row reads (an
    empty or unreadable file fails here with the reader's one line, as in every other tool)."""
    out = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise UserError(f"{p}: data file not found")
        next(iter_jsonl(p), None)
        out.append(p)
    if not out:
        raise UserError("no data file given (--data_path)")
    return out


class TokenStore:
    """A tokenized corpus on disk as documents, read through memory maps (module docstring).

    ``doc_start`` / ``doc_len`` / ``doc_source``: (num_docs,) arrays; document i is
    ``tokens[doc_start[i] : doc_start[i] + doc_len[i]]``. ``segments``: per stage, in order,
    ``(name, first document, end document, first token, end token)``.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.source_names: list[str] = self.meta["sources"]
        self.pad_id: int = self.meta["pad_id"]
        self.num_tokens: int = self.meta["num_tokens"]
        self.num_docs: int = self.meta["num_docs"]
        self.segments = [
            (g["name"], g["docs"][0], g["docs"][1], g["tokens"][0], g["tokens"][1])
            for g in self.meta["segments"]
        ]
        self.segment_names: list[str | None] = [g[0] for g in self.segments]
        self._dtype = np.dtype(self.meta["dtype"])
        self._maps: dict[str, np.ndarray] = {}

    # Memory maps open lazily so the object pickles cheaply into DataLoader workers.
    def _map(self, name: str, dtype) -> np.ndarray:
        if name not in self._maps:
            path = self.folder / f"{name}.bin"
            self._maps[name] = (
                np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.zeros(0, dtype=dtype)
            )
        return self._maps[name]

    def __getstate__(self):
        return {**self.__dict__, "_maps": {}}

    @property
    def tokens(self) -> np.ndarray:
        return self._map("tokens", self._dtype)

    @property
    def doc_start(self) -> np.ndarray:
        return self._map("doc_start", np.int64)

    @property
    def doc_len(self) -> np.ndarray:
        return self._map("doc_len", np.int32)

    @property
    def doc_source(self) -> np.ndarray:
        return self._map("doc_source", np.uint8)

    @property
    def doc_end(self) -> np.ndarray:
        return self.doc_start + self.doc_len

    def describe(self) -> str:
        return f"{self.folder} ({self.num_tokens:,} tokens, {self.num_docs:,} documents)"


class DocSubset:
    """Some documents of a :class:`TokenStore` (a validation sample), with the store's interface:
    their tokens copied into memory and joined as the store joins documents (one shared
    separator between neighbours when BOS is EOS), their sources, one segment per stage."""

    def __init__(self, store: TokenStore, docs: np.ndarray):
        docs = np.sort(np.asarray(docs, dtype=np.int64))
        self.source_names, self.pad_id = store.source_names, store.pad_id
        self.meta = store.meta
        shared = bool(store.meta.get("shared_separator"))
        starts, lens = store.doc_start[docs], store.doc_len[docs].astype(np.int64)
        pieces, self.doc_start, pos = [], np.zeros(len(docs), dtype=np.int64), 0
        for k, (a, n) in enumerate(zip(starts.tolist(), lens.tolist(), strict=True)):
            skip = 1 if shared and k and n else 0  # the previous document's EOS is this one's BOS
            self.doc_start[k] = pos - skip
            pieces.append(np.asarray(store.tokens[a + skip : a + n]))
            pos += n - skip
        self.tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
        self.doc_len = lens.astype(np.int32)
        self.doc_source = np.asarray(store.doc_source[docs])
        self.num_docs, self.num_tokens = len(docs), int(pos)
        self.segments = []
        for name, d0, d1, _, _ in store.segments:
            lo, hi = np.searchsorted(docs, [d0, d1])
            if hi > lo:
                end = int(self.doc_start[hi - 1] + self.doc_len[hi - 1])
                self.segments.append((name, int(lo), int(hi), int(self.doc_start[lo]), end))
        self.segment_names = [g[0] for g in self.segments]

    @property
    def doc_end(self) -> np.ndarray:
        return self.doc_start + self.doc_len


class StoreWriter:
    """Appends documents, given as their text's token ids, to a store folder being written (its
    files as the module docstring lays them out); :meth:`finish` writes ``meta.json``.

    The one writer of stores: the trainers' cache (:func:`build_store`, which tokenizes JSONL
    files) and prepare_dataset (which writes the ids its workers counted with) both go through
    it, so a store prepare_dataset writes beside a JSONL file is byte for byte the one
    :func:`build_store` would make of that file. Memory: the document arrays of one batch.
    """

    def __init__(self, out: Path, tok: Any, where: str):
        self.out, self.where = Path(out), where
        self.dtype = token_dtype(tok)
        self.tokenizer_sha256 = tokenizer_sha256(tok)
        self.pad_id = pad_id(tok)
        self.shared = shares_separator(tok)  # the previous document's EOS is this one's BOS
        head = doc_start(tok)
        self._head = np.asarray(head, dtype=self.dtype).tobytes()
        self._head_len = len(head)
        self._eos = np.asarray([tok.eos_token_id], dtype=self.dtype).tobytes()
        self.names: dict[str, int] = {}
        self.source_tokens: list[int] = []
        self.segments: list[dict] = []  # {"name", "docs": [lo, hi], "tokens": [start, end]} per stage
        self.num_docs = self.num_tokens = 0
        self._files = {
            name: open(self.out / f"{name}.bin", "wb", buffering=1 << 20) for name in ("tokens", *_ARRAYS)
        }

    def add_batch(
        self, flat: np.ndarray, lens: Sequence[int], sources: Sequence[str], stages: Sequence[str | None]
    ) -> None:
        """Documents whose text tokens are ``flat`` cut at ``lens`` (in order), with their source and
        stage. UserError when a stage comes again after another or there are over 255 sources."""
        flat = np.asarray(flat, dtype=self.dtype)
        lens = np.asarray(lens, dtype=np.int64).tolist()
        starts, sizes, sids = [], [], []
        at = 0
        tokens = self._files["tokens"]
        for n, src, stage in zip(lens, sources, stages, strict=True):
            if not self.segments or self.segments[-1]["name"] != stage:
                if any(g["name"] == stage for g in self.segments):
                    raise UserError(
                        f"{self.where}: rows of stage {stage!r} come again after another stage; a staged "
                        "mixture keeps each stage's rows together (prepare_dataset does)"
                    )
                self.segments.append(
                    {"name": stage, "docs": [self.num_docs] * 2, "tokens": [self.num_tokens] * 2}
                )
            first = self.segments[-1]["docs"][0] == self.num_docs  # a segment's first document
            lead = self._head_len if first or not self.shared else 0
            if lead:
                tokens.write(self._head)
            tokens.write(flat[at : at + n].tobytes())
            tokens.write(self._eos)
            at += n
            size = lead + n + 1
            sid = self.names.get(src)
            if sid is None:
                if len(self.names) == 255:
                    raise UserError(
                        f"{self.where}: more than 255 distinct 'source' values; merge some of them"
                    )
                sid = self.names[src] = len(self.names)
                self.source_tokens.append(0)
            start = self.num_tokens - (self._head_len - lead)  # a shared separator starts the document
            starts.append(start)
            sizes.append(self.num_tokens + size - start)
            sids.append(sid)
            self.source_tokens[sid] += size
            self.num_docs += 1
            self.num_tokens += size
            self.segments[-1]["docs"][1], self.segments[-1]["tokens"][1] = self.num_docs, self.num_tokens
        for name, values in (("doc_start", starts), ("doc_len", sizes), ("doc_source", sids)):
            self._files[name].write(np.asarray(values, dtype=_ARRAYS[name]).tobytes())

    def close(self) -> None:
        for f in self._files.values():
            f.close()

    def finish(self, inputs: list[dict[str, str]]) -> dict[str, Any]:
        """Close the files and write ``meta.json`` (``inputs``: ``{"path", "sha256"}`` per input
        file); returns the meta. UserError when there is nothing to train on."""
        self.close()
        if self.num_tokens < 2:
            raise UserError(f"{self.where}: no documents to train on")
        meta = {
            "format_version": FORMAT_VERSION,
            "inputs": inputs,
            "tokenizer_sha256": self.tokenizer_sha256,
            "dtype": self.dtype.name,
            "pad_id": self.pad_id,
            "shared_separator": self.shared,
            "num_docs": self.num_docs,
            "num_tokens": self.num_tokens,
            "sources": list(self.names),
            "source_tokens": self.source_tokens,
            "segments": self.segments,
        }
        (self.out / "meta.json").write_text(json.dumps(meta, indent=1))
        return meta


def store_key(paths: Sequence[Path], tok, hashes: Sequence[str] | None = None) -> str:
    """Input content hashes + tokenizer hash + the format version (never the row length).
    ``hashes``: the files' sha256 when already known (else read here)."""
    h = hashlib.sha256()
    h.update(f"store-v{FORMAT_VERSION}|tok{tokenizer_sha256(tok)}".encode())
    for sha in hashes if hashes is not None else map(file_sha256, paths):
        h.update(sha.encode())
    return h.hexdigest()


def default_num_proc() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _workers(paths: Sequence[Path], num_proc: int | None) -> int:
    """``num_proc``, or by default every core but at most one per 8 MB of input (forking a pool
    for a small validation file costs more than it saves)."""
    if num_proc is not None:
        if num_proc < 1:
            raise UserError(f"num_proc must be >= 1, got {num_proc}")
        return num_proc
    size = sum(p.stat().st_size for p in paths)
    return max(1, min(default_num_proc(), size // (8 << 20)))


def build_store(
    paths: Sequence[str | os.PathLike], tok, cache_dir: str | os.PathLike, num_proc: int | None = None
) -> TokenStore:
    """Tokenize JSONL files into the cache (once) and return the store.

    A cache hit costs one hash pass over the inputs (on rank 0 only under torchrun). A miss
    streams the files through the tokenizer on ``num_proc`` worker processes (default: every
    core; the main process parses the JSON, workers encode batches, results are written in
    order, so the store does not depend on ``num_proc``) into a temporary folder that is renamed
    into place when complete, so an interrupted build never leaves anything a later run could
    take for a store. Under torchrun one process per copy of the cache folder builds while the
    others wait (:func:`dataset.once.build_once`). Logs ``token store: <folder> (tokenized now |
    cached, N tokens)``.
    """
    paths = check_data_files(paths)
    hashes = from_rank0(lambda: [file_sha256(p) for p in paths])
    folder = Path(cache_dir) / f"store-{store_key(paths, tok, hashes)[:20]}"

    def build() -> None:
        if rank() != 0:  # a node-local cache: this node's copy of the files must be rank 0's
            for p, want in zip(paths, hashes, strict=True):
                if (got := file_sha256(p)) != want:
                    raise UserError(
                        f"{p}: this node's copy (sha256 {got[:12]}) differs from rank 0's (sha256 {want[:12]}); "
                        "give every node the same data files"
                    )
        with atomic_dir(folder, replace=False) as tmp:  # a concurrent build of the same key is identical
            _write_store(paths, hashes, tok, tmp, _workers(paths, num_proc))

    built = build_once(Path(cache_dir), lambda: (folder / "meta.json").is_file(), build)
    store = TokenStore(folder)
    log.info(f"token store: {folder} ({'tokenized now' if built else 'cached'}, {store.num_tokens:,} tokens)")
    return store


def _write_store(paths: list[Path], hashes: list[str], tok, out: Path, num_proc: int) -> None:
    where = ", ".join(map(str, paths))
    writer = StoreWriter(out, tok, where)
    try:
        with Runner(num_proc, tokenizer=tok) as runner:
            for path in paths:
                pending: deque[tuple[list[str], list[str | None]]] = deque()

                def tasks(path: Path = path, pending: deque = pending) -> Iterator[tuple]:
                    batch: list[tuple[str, str, str | None]] = []
                    for doc in iter_staged_docs(path):
                        batch.append(doc)
                        if len(batch) == _BATCH:
                            texts, srcs, stages = map(list, zip(*batch, strict=True))
                            pending.append((srcs, stages))
                            yield texts, writer.dtype
                            batch = []
                    if batch:
                        texts, srcs, stages = map(list, zip(*batch, strict=True))
                        pending.append((srcs, stages))
                        yield texts, writer.dtype

                bar = tqdm(desc=f"tokenize {path.name}", unit="doc", leave=False, disable=None)
                for flat, lens in runner.map(pool_encode, runner.encode, tasks()):
                    srcs, stages = pending.popleft()
                    writer.add_batch(flat, lens, srcs, stages)
                    bar.update(len(lens))
                bar.close()
    finally:
        writer.close()
    writer.finish([{"path": str(p), "sha256": sha} for p, sha in zip(paths, hashes, strict=True)])


def open_prepared_store(folder: Path, jsonl: Path, tok, command: str) -> TokenStore:
    """The store prepare_dataset wrote beside ``jsonl`` (``folder``), checked before use: its
    format, that it holds this tokenizer's tokens (sha256) and that it was written for this very
    file (sha256 of ``jsonl``, hashed on rank 0). Otherwise one UserError naming both hashes and
    ``command``, which re-makes it. Logs ``token store: <folder> (from prepare_dataset, N tokens)``."""
    meta = json.loads((folder / "meta.json").read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{folder}: token store format {meta.get('format_version')}, this version reads "
            f"{FORMAT_VERSION}; re-run: {command}"
        )
    want = tokenizer_sha256(tok)
    if meta.get("tokenizer_sha256") != want:
        raise UserError(
            f"{folder} holds the tokens of tokenizer sha256 {str(meta.get('tokenizer_sha256'))[:12]}, not of "
            f"this model's tokenizer (sha256 {want[:12]}); re-run: {command} --tokenizer_path <the model's "
            "tokenizer folder> --overwrite"
        )
    sha = from_rank0(lambda: file_sha256(jsonl))
    stored = [str(i.get("sha256")) for i in meta.get("inputs", [])]
    if stored != [sha]:
        raise UserError(
            f"{folder} was written for a {jsonl.name} with sha256 {(stored or ['none'])[0][:12]}, not for "
            f"this one (sha256 {sha[:12]}); re-run: {command} --overwrite"
        )
    store = TokenStore(folder)
    log.info(f"token store: {folder} (from prepare_dataset, {store.num_tokens:,} tokens)")
    return store

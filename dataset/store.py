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
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dataset.io import atomic_dir, file_sha256, iter_jsonl, iter_staged_docs
from dataset.tokenizer import doc_start, encode_texts, pad_id, shares_separator, tokenizer_sha256
from model.errors import UserError

log = logging.getLogger(__name__)

FORMAT_VERSION = 4  # 4: documents and their boundaries, keyed without the row length
_BATCH = 1024  # documents per tokenizer call: large enough for the Rust batch encoder to be efficient
_ARRAYS = {"doc_start": np.int64, "doc_len": np.int32, "doc_source": np.uint8}


def check_data_files(paths: Sequence[str | Path]) -> list[Path]:
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


def store_key(paths: Sequence[Path], tok) -> str:
    """Input content hashes + tokenizer hash + the format version (never the row length)."""
    h = hashlib.sha256()
    h.update(f"store-v{FORMAT_VERSION}|tok{tokenizer_sha256(tok)}".encode())
    for p in paths:
        h.update(file_sha256(p).encode())
    return h.hexdigest()


def build_store(paths: Sequence[str | Path], tok, cache_dir: str | Path) -> TokenStore:
    """Tokenize JSONL files into the cache (once) and return the store.

    A cache hit costs one hash pass over the inputs. A miss streams the files through the
    tokenizer's batch encoder into a temporary folder that is renamed into place when complete,
    so an interrupted build never leaves anything a later run could take for a store.
    """
    paths = check_data_files(paths)
    folder = Path(cache_dir) / f"store-{store_key(paths, tok)[:20]}"
    if (folder / "meta.json").is_file():
        store = TokenStore(folder)
        log.info(f"Token store: {store.describe()} (cached)")
        return store
    with atomic_dir(folder, replace=False) as tmp:  # a concurrent build of the same key is identical
        _write_store(paths, tok, tmp)
    store = TokenStore(folder)
    log.info(f"Token store: {store.describe()} (tokenized now, from {len(paths)} file(s))")
    return store


def _write_store(paths: list[Path], tok, out: Path) -> None:
    vocab = len(tok)
    dtype = np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.uint32
    head, eos = doc_start(tok), tok.eos_token_id
    shared = shares_separator(tok)  # the previous document's EOS is this one's BOS
    names: dict[str, int] = {}
    source_tokens: list[int] = []
    segments: list[dict] = []  # {"name", "docs": [lo, hi], "tokens": [start, end]} per stage, in file order
    n_docs = n_tokens = 0
    files = {name: open(out / f"{name}.bin", "wb") for name in ("tokens", *_ARRAYS)}
    try:

        def flush(texts: list[str], srcs: list[str], stages: list[str | None]) -> None:
            nonlocal n_docs, n_tokens
            starts, lens, sids = [], [], []
            for doc, src, stage in zip(encode_texts(tok, texts), srcs, stages, strict=True):
                if not segments or segments[-1]["name"] != stage:
                    if any(g["name"] == stage for g in segments):
                        raise UserError(
                            f"{', '.join(map(str, paths))}: rows of stage {stage!r} come again after another "
                            "stage; a staged mixture keeps each stage's rows together (prepare_dataset does)"
                        )
                    segments.append({"name": stage, "docs": [n_docs, n_docs], "tokens": [n_tokens, n_tokens]})
                first = segments[-1]["docs"][0] == n_docs  # a segment's first document
                lead = head if first or not shared else []
                ids = np.array([*lead, *doc, eos], dtype=dtype)
                if src not in names:
                    if len(names) == 255:
                        raise UserError("more than 255 distinct 'source' values; merge some of them")
                    names[src] = len(names)
                    source_tokens.append(0)
                sid = names[src]
                files["tokens"].write(ids.tobytes())
                start = n_tokens - (len(head) - len(lead))  # a shared separator starts the document
                starts.append(start)
                lens.append(n_tokens + len(ids) - start)
                sids.append(sid)
                source_tokens[sid] += len(ids)
                n_docs += 1
                n_tokens += len(ids)
                segments[-1]["docs"][1], segments[-1]["tokens"][1] = n_docs, n_tokens
            for name, values in (("doc_start", starts), ("doc_len", lens), ("doc_source", sids)):
                files[name].write(np.asarray(values, dtype=_ARRAYS[name]).tobytes())

        for path in paths:
            batch: list[tuple[str, str, str | None]] = []
            for doc in tqdm(
                iter_staged_docs(path), desc=f"tokenize {path.name}", unit="doc", leave=False, disable=None
            ):
                batch.append(doc)
                if len(batch) == _BATCH:
                    flush(*map(list, zip(*batch, strict=True)))
                    batch = []
            if batch:
                flush(*map(list, zip(*batch, strict=True)))
    finally:
        for f in files.values():
            f.close()
    if n_tokens < 2:
        raise UserError(f"{', '.join(map(str, paths))}: no documents to train on")
    meta = {
        "format_version": FORMAT_VERSION,
        "inputs": [{"path": str(p), "sha256": file_sha256(p)} for p in paths],
        "tokenizer_sha256": tokenizer_sha256(tok),
        "dtype": np.dtype(dtype).name,
        "pad_id": pad_id(tok),
        "shared_separator": shared,
        "num_docs": n_docs,
        "num_tokens": n_tokens,
        "sources": list(names),
        "source_tokens": source_tokens,
        "segments": segments,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))

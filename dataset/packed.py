"""Tokenize JSONL once into a memory-mapped token file, pack documents into fixed-length rows.

Layout of one cache entry (a folder named by the cache key):
  tokens.bin   uint16/uint32 stream: BOS doc EOS BOS doc EOS ... in file order (``doc EOS`` for a
               tokenizer without BOS, e.g. Qwen's: dataset.tokenizer.check_special_tokens; one
               separator between documents when BOS is EOS, e.g. SmolLM2's: <e> doc <e> doc <e>)
  sources.bin  uint8, the source id of the document each token belongs to
  meta.json    source names, token counts, the key's ingredients

Row i of a corpus of N tokens and sequence length L is the window tokens[i*L : i*L + L + 1]:
inputs x = window[:-1], targets y = window[1:]. Windows overlap by one token, so every token
after the first is a target exactly once and no token is thrown away; only the last row can
be short, and its tail is padded with targets of -100 (ignored). Attention runs across the
document boundaries inside a row (as in GPT-2/nanoGPT); BOS/EOS mark where a document starts.

A staged mixture's rows carry ``"stage"``; each stage is a segment of the stream (the file keeps
stage order) and rows are cut per segment, so no row holds tokens of two stages: the rule above
applies within each segment (its first token is never a target, its last row may be short).

Memory stays flat as the corpus grows: text is streamed in batches and appended to disk, and
training reads rows straight from the memory map.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dataset.io import atomic_dir, file_sha256, iter_jsonl, iter_staged_docs
from dataset.tokenizer import doc_start, encode_texts, pad_id, shares_separator, tokenizer_sha256
from model.errors import UserError

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # 2: segments (stages) in meta.json; 3: one separator when BOS is EOS
IGNORE_INDEX = -100
_BATCH = 1024  # documents per tokenizer call: large enough for the Rust batch encoder to be efficient


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


class PackedCorpus:
    """A tokenized corpus on disk, read through memory maps."""

    def __init__(self, folder: str | Path, seq_len: int):
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.seq_len = seq_len
        self.source_names: list[str] = self.meta["sources"]
        self.pad_id: int = self.meta["pad_id"]
        self.num_tokens: int = self.meta["num_tokens"]
        self._dtype = np.dtype(self.meta["dtype"])
        self._tokens: np.memmap | None = None
        self._sources: np.memmap | None = None
        # segments (stages): token ranges [start, end), and the first row of each
        segs = self.meta["segments"]
        self.segment_names: list[str | None] = [g["name"] for g in segs]
        self._seg_tokens = [(g["start"], g["end"]) for g in segs]
        rows = [-(-(end - start - 1) // seq_len) for start, end in self._seg_tokens]
        self._seg_row0 = np.cumsum([0, *rows]).tolist()

    # Memory maps open lazily so the object pickles cheaply into DataLoader workers.
    @property
    def tokens(self) -> np.memmap:
        if self._tokens is None:
            self._tokens = np.memmap(self.folder / "tokens.bin", dtype=self._dtype, mode="r")
        return self._tokens

    @property
    def sources(self) -> np.memmap:
        if self._sources is None:
            self._sources = np.memmap(self.folder / "sources.bin", dtype=np.uint8, mode="r")
        return self._sources

    def __getstate__(self):
        return {**self.__dict__, "_tokens": None, "_sources": None}

    @property
    def num_rows(self) -> int:
        return self._seg_row0[-1]

    @property
    def num_targets(self) -> int:
        """Tokens trained on per epoch: every token but the first of each segment is a target once."""
        return sum(end - start - 1 for start, end in self._seg_tokens)

    def segment_rows(self) -> list[range]:
        """The rows of each segment (stage), in order: what dataset.sampler.StepSampler trains."""
        return [range(a, b) for a, b in zip(self._seg_row0[:-1], self._seg_row0[1:], strict=True)]

    def _window(self, i: int) -> tuple[int, int]:
        """[start, end) token positions of row i's window (end - start - 1 targets)."""
        k = bisect.bisect_right(self._seg_row0, i) - 1
        seg_start, seg_end = self._seg_tokens[k]
        start = seg_start + (i - self._seg_row0[k]) * self.seq_len
        return start, min(start + self.seq_len + 1, seg_end)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(inputs, targets, target source ids) of row i, each of length seq_len, as int64."""
        L = self.seq_len
        start, end = self._window(i)
        window = np.asarray(self.tokens[start:end], dtype=np.int64)
        src = np.asarray(self.sources[start + 1 : end], dtype=np.int64)
        n = len(window) - 1  # targets in this row (< L only for a segment's last one)
        x = np.full(L, self.pad_id, dtype=np.int64)
        y = np.full(L, IGNORE_INDEX, dtype=np.int64)
        s = np.full(L, -1, dtype=np.int64)
        x[:n], y[:n], s[:n] = window[:-1], window[1:], src
        return x, y, s

    def source_token_counts(self) -> dict[str, int]:
        return dict(zip(self.source_names, self.meta["source_tokens"], strict=True))

    def segment_source_targets(self) -> np.ndarray:
        """(segments, sources) int64: the targets of each source in each segment (stage)."""
        n_src = max(len(self.source_names), 1)
        out = np.zeros((len(self._seg_tokens), n_src), dtype=np.int64)
        for k, (start, end) in enumerate(self._seg_tokens):
            out[k] = np.bincount(np.asarray(self.sources[start + 1 : end], dtype=np.int64), minlength=n_src)
        return out

    def row_source_targets(self) -> np.ndarray:
        """(num_rows, num_sources) int64: how many targets of each source every row holds."""
        n_src, L = max(len(self.source_names), 1), self.seq_len
        out = np.zeros((self.num_rows, n_src), dtype=np.int64)
        for (start, end), row0 in zip(self._seg_tokens, self._seg_row0, strict=False):
            src = np.asarray(self.sources[start + 1 : end], dtype=np.int64)  # every target's source
            row = row0 + np.arange(len(src)) // L
            out += np.bincount(row * n_src + src, minlength=self.num_rows * n_src).reshape(
                self.num_rows, n_src
            )
        return out


def sample_rows(corpus: PackedCorpus, cap: int) -> tuple[np.ndarray, str]:
    """A fixed, deterministic sample of at most ``cap`` rows (0: every row) for a capped evaluation,
    spread over the whole corpus and stratified by source, and a one-line description of it.

    Every source that has targets gets rows: a floor of ``cap // (2 x sources)`` rows each (at
    least 1), the rest in proportion to how many rows hold its targets (largest remainder); rows
    are picked evenly spaced among the rows that hold the source's targets. When ``cap`` is
    smaller than the number of sources, one row per source is taken anyway (and said).
    """
    counts = corpus.row_source_targets()
    names = corpus.source_names or ["all"]
    if cap == 0 or cap >= corpus.num_rows:
        rows = np.arange(corpus.num_rows)
    else:
        holders = [np.flatnonzero(counts[:, k]) for k in range(counts.shape[1])]
        present = [k for k, h in enumerate(holders) if len(h)]
        floor = max(1, cap // (2 * len(present)))
        take = {k: min(len(holders[k]), floor) for k in present}
        rest = max(cap - sum(take.values()), 0)
        spare = {k: len(holders[k]) - take[k] for k in present}
        weight = sum(spare.values())
        if rest and weight:
            exact = {k: rest * spare[k] / weight for k in present}
            extra = {k: min(spare[k], int(exact[k])) for k in present}
            order = sorted(present, key=lambda k: (-(exact[k] - int(exact[k])), k))
            for k in order[: rest - sum(extra.values())]:
                extra[k] = min(spare[k], extra[k] + 1)
            take = {k: take[k] + extra[k] for k in present}
        picked = set()
        for k in present:
            h, n = holders[k], take[k]
            picked.update(h[(np.arange(n) * len(h)) // n].tolist())
        rows = np.array(sorted(picked), dtype=np.int64)
    sel = counts[rows].sum(axis=0)
    total = counts.sum(axis=0)
    per = ", ".join(f"{names[k]} {sel[k]:,}/{total[k]:,}" for k in range(len(total)) if total[k])
    raised = " (one row per source at least)" if cap and len(rows) > cap else ""
    return rows, f"{len(rows):,} of {corpus.num_rows:,} rows{raised}; target tokens per source: {per}"


class PackedDataset(torch.utils.data.Dataset):
    """Rows of a PackedCorpus as tensors (x, y, source ids) for a DataLoader."""

    def __init__(self, corpus: PackedCorpus):
        self.corpus = corpus

    def __len__(self) -> int:
        return self.corpus.num_rows

    def __getitem__(self, i: int):
        """(x, y, s) of row i; i < 0 (``dataset.sampler.EMPTY``) is a filler row with no targets."""
        if i < 0:
            L = self.corpus.seq_len
            return (
                torch.full((L,), self.corpus.pad_id, dtype=torch.long),
                torch.full((L,), IGNORE_INDEX, dtype=torch.long),
                torch.full((L,), -1, dtype=torch.long),
            )
        return tuple(torch.from_numpy(a) for a in self.corpus.row(i))


def cache_key(paths: Sequence[Path], tok, seq_len: int) -> str:
    """Input content hash + tokenizer hash + sequence length (+ the layout version)."""
    h = hashlib.sha256()
    h.update(f"v{FORMAT_VERSION}|L{seq_len}|tok{tokenizer_sha256(tok)}".encode())
    for p in paths:
        h.update(file_sha256(p).encode())
    return h.hexdigest()


def build_packed(paths: Sequence[str | Path], tok, seq_len: int, cache_dir: str | Path) -> PackedCorpus:
    """Tokenize JSONL files into the cache (once) and return the packed corpus.

    A cache hit costs one hash pass over the inputs. A miss streams the files through the
    tokenizer's batch encoder and writes into a temporary folder that is renamed into place
    when complete, so an interrupted build never leaves a corrupt cache entry.
    """
    paths = check_data_files(paths)
    key = cache_key(paths, tok, seq_len)
    folder = Path(cache_dir) / f"packed-{key[:20]}"
    if (folder / "meta.json").is_file():
        log.info(f"Token cache hit: {folder}")
        return PackedCorpus(folder, seq_len)
    with atomic_dir(folder, replace=False) as tmp:  # a concurrent build of the same key is identical
        _write_packed(paths, tok, seq_len, tmp)
    corpus = PackedCorpus(folder, seq_len)
    log.info(f"Tokenized {corpus.num_tokens:,} tokens from {len(paths)} file(s) into {folder}")
    return corpus


def _write_packed(paths: list[Path], tok, seq_len: int, out: Path) -> None:
    vocab = len(tok)
    dtype = np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.uint32
    head, eos = doc_start(tok), tok.eos_token_id
    shared = shares_separator(tok)  # the previous document's EOS is this one's BOS
    names: dict[str, int] = {}
    source_tokens: list[int] = []
    segments: list[dict] = []  # {"name", "start", "end"} per stage, in file order
    n_docs = n_tokens = 0
    with open(out / "tokens.bin", "wb") as ftok, open(out / "sources.bin", "wb") as fsrc:

        def flush(texts: list[str], srcs: list[str], stages: list[str | None]) -> None:
            nonlocal n_docs, n_tokens
            for doc, src, stage in zip(encode_texts(tok, texts), srcs, stages, strict=True):
                if not segments or segments[-1]["name"] != stage:
                    if any(g["name"] == stage for g in segments):
                        raise UserError(
                            f"{', '.join(map(str, paths))}: rows of stage {stage!r} come again after another "
                            "stage; a staged mixture keeps each stage's rows together (prepare_dataset does)"
                        )
                    segments.append({"name": stage, "start": n_tokens, "end": n_tokens})
                first = segments[-1]["end"] == segments[-1]["start"]  # a segment's first document
                ids = np.array([*(head if first or not shared else ()), *doc, eos], dtype=dtype)
                if src not in names:
                    if len(names) == 255:
                        raise UserError("more than 255 distinct 'source' values; merge some of them")
                    names[src] = len(names)
                    source_tokens.append(0)
                sid = names[src]
                ftok.write(ids.tobytes())
                fsrc.write(np.full(len(ids), sid, dtype=np.uint8).tobytes())
                source_tokens[sid] += len(ids)
                n_docs += 1
                n_tokens += len(ids)
                segments[-1]["end"] = n_tokens

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
    if n_tokens < 2:
        raise UserError(f"{', '.join(map(str, paths))}: no documents to train on")
    meta = {
        "format_version": FORMAT_VERSION,
        "inputs": [{"path": str(p), "sha256": file_sha256(p)} for p in paths],
        "tokenizer_sha256": tokenizer_sha256(tok),
        "seq_len": seq_len,
        "dtype": np.dtype(dtype).name,
        "pad_id": pad_id(tok),
        "num_docs": n_docs,
        "num_tokens": n_tokens,
        "sources": list(names),
        "source_tokens": source_tokens,
        "segments": segments,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))

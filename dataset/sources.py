"""Open a configured source (a Hugging Face dataset id or local files) and read its rows.

Local JSON files (.jsonl, .json) are read by :func:`dataset.io.iter_json_records`, the reader
every other tool uses, so prepare_dataset accepts, reads and rejects exactly what the trainers,
the tokenizer trainer and eval_llm do. Each row is kept as its JSON text in a memory-mapped Arrow
file (a cache keyed by the files' sha256) and parsed again when it is read: no column types are
inferred, so values may change JSON type from row to row anywhere in a file. Hub datasets and
local parquet / text files load through ``datasets.load_dataset``; any failure is a one-line
UserError naming the file and line when it can.

Rows are read in a seeded random order of short runs from memory-mapped Arrow files that are
re-mapped every few thousand rows, so memory stays flat whatever the input's size.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dataset.io import atomic_dir, decode_line, file_sha256, iter_json_records
from dataset.mixture_config import DataRef
from model.errors import UserError

BATCH_SIZE = 1000
LOAD_CHUNK_BYTES = 1 << 20
HUB_HINT = (
    "check the id and your network, or download the data and point data_files: at the local "
    "copies (see config/data/midtrain/phase1/local.yaml)"
)


def first_line(e: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters of it), for one-line errors."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


@contextlib.contextmanager
def quiet_datasets(progress: bool = True) -> Iterator[None]:
    """Mute datasets' own error logs (a failure becomes our one-line UserError) and, with
    ``progress=False``, its progress bars."""
    import datasets

    logger = logging.getLogger("datasets")
    level = logger.level
    was_enabled = datasets.utils.logging.is_progress_bar_enabled()
    logger.setLevel(logging.CRITICAL)
    if not progress:
        datasets.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        logger.setLevel(level)
        if was_enabled:
            datasets.utils.logging.enable_progress_bar()


def _expand_files(ref: DataRef, where: str) -> list[str]:
    files: list[str] = []
    for pattern in ref.data_files:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise UserError(
                f"{where}: data_files {pattern!r} matches no file; fix the path (relative to the config)"
            )
        files += [m for m in matches if m not in files]
    return files


def _first_bad_text_line(files: list[str]) -> str | None:
    """``file:line: not UTF-8 ...`` for the first line of ``files`` that is not UTF-8, or None."""
    for path in files:
        with open(path, "rb") as f:
            try:
                for lineno, raw in enumerate(f, 1):
                    decode_line(raw, path, lineno)
            except UserError as e:
                return str(e)
    return None


# --------------------------------------------------------------------------- local JSON rows

JSON_ROWS_VERSION = 1  # bump when the stored layout changes: older cache files are then ignored
_WRITE_ROWS = 4096  # rows per Arrow record batch (or fewer when their text passes _WRITE_BYTES)
_WRITE_BYTES = 16 << 20
_SHA256: dict[tuple[str, int, int], str] = {}


def _sha256(path: str) -> str:
    """file_sha256, computed once per version of the file (path, size, mtime) in a process."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA256:
        _SHA256[key] = file_sha256(path)
    return _SHA256[key]


def default_cache_dir() -> Path:
    """The datasets cache folder (``$HF_DATASETS_CACHE``, else ``$HF_HOME/datasets``)."""
    from huggingface_hub import constants

    return Path(os.environ.get("HF_DATASETS_CACHE") or os.path.join(constants.HF_HOME, "datasets"))


class JsonRows:
    """The rows of local JSON files, each stored as its JSON text in a memory-mapped Arrow file.

    Built once per content (the cache key is the files' sha256) in one pass of
    :func:`dataset.io.iter_json_records` over every file, which checks every line. The cache
    folder holds ``rows.arrow`` (columns ``json``: the row's text, ``file``: index into
    ``files``, ``line``: its 1-based line number) and ``meta.json``. ``column_names`` is the
    union of the rows' keys in order of first appearance (as ``datasets`` names a JSON file's
    columns); no value is converted, so types may vary between rows.
    """

    def __init__(self, files: list[str], cache_dir: str | os.PathLike | None):
        self.files = files
        key = hashlib.sha256(json.dumps([JSON_ROWS_VERSION, [_sha256(f) for f in files]]).encode())
        root = Path(cache_dir) if cache_dir else default_cache_dir()
        self.folder = root / "minigpt_json_rows" / key.hexdigest()[:40]
        if not (self.folder / "meta.json").is_file():
            with atomic_dir(self.folder, replace=False) as tmp:  # a concurrent build is identical
                self._write(tmp)
        meta = json.loads((self.folder / "meta.json").read_text())
        self.num_rows: int = meta["rows"]
        self.column_names: list[str] = meta["columns"]

    def __len__(self) -> int:
        return self.num_rows

    def _write(self, out: Path) -> None:
        import pyarrow as pa

        schema = pa.schema([("json", pa.string()), ("file", pa.int32()), ("line", pa.int64())])
        columns: dict[str, None] = {}
        rows = 0
        with pa.OSFile(str(out / "rows.arrow"), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:

            def flush(texts: list[str], index: int, lines: list[int]) -> None:
                nonlocal rows
                writer.write_batch(pa.record_batch([texts, [index] * len(texts), lines], schema=schema))
                rows += len(texts)

            for index, file in enumerate(self.files):
                texts: list[str] = []
                lines: list[int] = []
                size = 0
                for lineno, text, row in iter_json_records(file):
                    columns.update(dict.fromkeys(row))
                    texts.append(text)
                    lines.append(lineno)
                    size += len(text)
                    if len(texts) == _WRITE_ROWS or size >= _WRITE_BYTES:
                        flush(texts, index, lines)
                        texts, lines, size = [], [], 0
                if texts:
                    flush(texts, index, lines)
        meta = {"version": JSON_ROWS_VERSION, "rows": rows, "columns": list(columns)}
        (out / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1))

    @contextlib.contextmanager
    def open(self) -> Iterator[Any]:
        """The stored rows as a memory-mapped ``pyarrow.Table``, unmapped once the block has ended
        and nothing references the table."""
        import pyarrow as pa

        with pa.memory_map(str(self.folder / "rows.arrow")) as source:
            yield pa.ipc.open_file(source).read_all()

    def where(self, index: int) -> str:
        """``file:line`` of row ``index`` (0-based), for messages."""
        with self.open() as table:
            return f"{self.files[table['file'][index].as_py()]}:{table['line'][index].as_py()}"


def load(ref: DataRef, where: str, cache_dir: str | None) -> tuple[Any, list[str]]:
    """``(rows, files)`` for a source or eval set: a :class:`JsonRows` for local JSON files, else a
    ``datasets.Dataset``. UserError on any failure (for JSON files, the reader's
    ``file:line: what; what to do``, exactly as every other tool reports it)."""
    if ref.dataset or ref.builder != "json":
        with quiet_datasets():
            return _load_with_datasets(ref, where, cache_dir)
    files = _expand_files(ref, where)
    return JsonRows(files, cache_dir), files


def _load_with_datasets(ref: DataRef, where: str, cache_dir: str | None) -> tuple[Any, list[str]]:
    import datasets

    if ref.dataset:
        try:
            ds = datasets.load_dataset(
                ref.dataset, ref.subset, split=ref.split, revision=ref.revision, cache_dir=cache_dir
            )
        except Exception as e:  # noqa: BLE001 - any failure to fetch is the user's to fix
            raise UserError(
                f"{where}: cannot load Hugging Face dataset {ref.dataset!r} ({first_line(e)}); {HUB_HINT}"
            ) from None
        return ds, []
    files = _expand_files(ref, where)
    try:
        # 1 MB read chunks (datasets' default is 10 MB): the one-time text -> Arrow conversion
        # then peaks at ~20 MB whatever the file size, and runs as fast (measured).
        chunks = {"chunksize": LOAD_CHUNK_BYTES} if ref.builder == "text" else {}
        ds = datasets.load_dataset(
            ref.builder, data_files=files, split="train", cache_dir=cache_dir, **chunks
        )
    except Exception as e:  # noqa: BLE001 - reported as one line below
        bad = _first_bad_text_line(files) if ref.builder == "text" else None
        if bad:
            raise UserError(bad) from None
        raise UserError(
            f"{where}: cannot read {ref.label} ({first_line(e)}); check that it is a valid {ref.builder} file"
        ) from None
    return ds, files


def check_columns(ds: Any, ref: DataRef, where: str, names: list[str] | None = None) -> list[str]:
    """The columns a source's format reads (``names``: the dataset's columns, default
    ``ds.column_names``); UserError naming the fields it lacks."""
    names = ds.column_names if names is None else names
    missing = ref.format.missing_columns(names)
    if missing:
        hint = (
            "set text_field: to one of them" if ref.format.format == "text" else "pick the format that fits"
        )
        raise UserError(
            f"{where} ({ref.label}): rows have no field {', '.join(map(repr, missing))} "
            f"needed by format {ref.format.format} (fields: {', '.join(names)}); {hint}"
        )
    return ref.format.columns(names)


def _resolved_revision(ds: Any) -> str | None:
    """The Hub commit a dataset was read at: datasets caches it under a folder named by the sha."""
    for f in getattr(ds, "cache_files", None) or []:
        parent = os.path.basename(os.path.dirname(f.get("filename", "")))
        if re.fullmatch(r"[0-9a-f]{40}", parent):
            return parent
    return None


def _file_record(path: str) -> dict[str, Any]:
    return {"path": path, "bytes": os.path.getsize(path), "sha256": _sha256(path)}


def ref_record(ref: DataRef, ds: Any, files: list[str]) -> dict[str, Any]:
    if ref.dataset:
        return {
            "dataset": ref.dataset,
            "subset": ref.subset,
            "split": ref.split,
            "revision": ref.revision,
            "revision_resolved": _resolved_revision(ds),
            "format": ref.format.format,
        }
    return {"data_files": [_file_record(f) for f in files], "format": ref.format.format}


def draw_run(n_rows: int) -> int:
    """How many consecutive rows are drawn together from a source of ``n_rows`` rows.

    Arrow files are memory-mapped and every page fault maps ~64 KB around it, so rows
    drawn one by one from a large file would map most of the file. Runs of up to 64
    consecutive rows (n / 1024, at least 1) keep the pages touched proportional to the
    rows used. The rows kept are shuffled afterwards, so only the sample, not the output
    order, is clustered: ~1,000 or more random places per source.
    """
    return max(1, min(64, n_rows // 1024))


def row_order(n_rows: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Row indices in a seeded random order (random runs of :func:`draw_run` rows), ~BATCH_SIZE at a time."""
    run = draw_run(n_rows)
    starts = rng.permutation(-(-n_rows // run)) * run
    per_batch = max(1, BATCH_SIZE // run)
    for i in range(0, len(starts), per_batch):
        idx = (starts[i : i + per_batch, None] + np.arange(run)).ravel()
        yield idx[idx < n_rows]


class RowReader:
    """Reads rows of a memory-mapped source as ``{column: [values]}``, re-mapping its Arrow files
    every REMAP_ROWS rows.

    Every page of an Arrow file that is read stays mapped, and counted in resident
    memory, for as long as the mapping lives. Opening the files afresh from time to time
    drops those pages, so memory stays flat however large the input is. ``ds`` is a
    :class:`JsonRows` (each row parsed from its JSON text, a key a row lacks read as None) or
    a ``datasets.Dataset``.
    """

    REMAP_ROWS = 2_000

    def __init__(self, ds: Any, columns: list[str]):
        self.ds, self.columns = ds, columns
        self.since_remap = 0
        self.view: Any = None
        self._mapping: contextlib.ExitStack | None = None
        if isinstance(ds, JsonRows):
            self.remappable = True
            self._remap()
            return
        files = [f["filename"] for f in ds.cache_files or []]
        self.remappable = bool(files) and ds._indices is None and all(os.path.exists(f) for f in files)
        self.files = files
        self.view = ds.select_columns(columns)

    def _remap(self) -> None:
        self.view = None  # the last reference: its mapping is released here
        if isinstance(self.ds, JsonRows):
            if self._mapping is not None:
                self._mapping.close()
            self._mapping = contextlib.ExitStack()
            self.view = self._mapping.enter_context(self.ds.open()).column("json").chunks
            self._starts = np.cumsum([0] + [len(c) for c in self.view])
        else:
            import datasets

            parts = [
                datasets.Dataset.from_file(f, info=self.ds.info, split=self.ds.split) for f in self.files
            ]
            fresh = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
            self.view = fresh.select_columns(self.columns)
        self.since_remap = 0

    def _json_rows(self, key: slice | list[int]) -> dict[str, list]:
        """Rows ``key`` parsed from their JSON text. Each Arrow record batch is read on its own:
        ``ChunkedArray.take`` would first concatenate the whole column into memory."""
        import pyarrow as pa

        index = np.arange(*key.indices(len(self.ds))) if isinstance(key, slice) else np.asarray(key, np.int64)
        chunk = np.searchsorted(self._starts, index, side="right") - 1
        texts: list[str] = [""] * len(index)
        for c in np.unique(chunk):
            at = np.flatnonzero(chunk == c)
            values = self.view[c].take(pa.array(index[at] - self._starts[c])).to_pylist()
            for i, text in zip(at.tolist(), values, strict=True):
                texts[i] = text
        rows = [json.loads(t) for t in texts]
        return {c: [row.get(c) for row in rows] for c in self.columns}

    def __getitem__(self, key: slice | list[int]) -> dict[str, list]:
        if self.remappable and self.since_remap >= self.REMAP_ROWS:
            self._remap()
        rows = self._json_rows(key) if isinstance(self.ds, JsonRows) else self.view[key]
        self.since_remap += len(next(iter(rows.values()))) if rows else 0
        return rows


def batches(ds: Any, columns: list[str]) -> Iterator[dict[str, list]]:
    """Column dicts of BATCH_SIZE rows in storage order."""
    reader = RowReader(ds, columns)
    for start in range(0, len(ds), BATCH_SIZE):
        yield reader[start : start + BATCH_SIZE]


class MapReader:
    """A loaded source (:func:`load`) read in a seeded random order of runs (:func:`row_order`)."""

    streaming = False

    def __init__(self, ds: Any, files: list[str], ref: DataRef, columns: list[str], rng: np.random.Generator):
        self.ds, self.files, self.ref, self.columns, self.rng = ds, files, ref, columns, rng

    def batches(self, room: Callable[[], int]) -> Iterator[tuple[np.ndarray, dict[str, list]]]:
        """``(row indices, rows)`` about BATCH_SIZE at a time, fewer when ``room()`` says fewer
        are needed (the order of the rows is the same either way)."""
        reader = RowReader(self.ds, self.columns)
        for idx in row_order(len(self.ds), self.rng):
            while len(idx):
                take = idx[: max(1, room())]
                idx = idx[len(take) :]
                yield take, reader[take.tolist()]

    def where(self, index: int) -> str:
        """``file:line`` of a row of local JSON files, else ``row N`` (0-based) of a dataset."""
        return self.ds.where(index) if hasattr(self.ds, "where") else f"row {index}"

    def read_to_end(self, read: int) -> bool:
        return read == len(self.ds)

    def total_rows(self, read: int) -> int | None:
        return len(self.ds)

    def record(self, read: int) -> dict[str, Any]:
        return {**ref_record(self.ref, self.ds, self.files), "streaming": False}

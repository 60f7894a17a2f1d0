"""Open a configured source (a Hugging Face dataset id or local files) and read its rows.

Loading goes through ``datasets.load_dataset`` for the Hub and for local files alike, so both
share one code path; any failure is a one-line UserError naming the file and line when it can.
Rows are read in a seeded random order of short runs, from memory-mapped Arrow files that are
re-mapped every few thousand rows, so memory stays flat whatever the input's size.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from dataset.io import file_sha256, iter_jsonl
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


def _first_bad_json_line(files: list[str]) -> str | None:
    """``file:line: problem; what to do`` for the first malformed JSON line among ``files``, or None."""
    for path in files:
        if path.endswith(".json"):
            try:
                with open(path, encoding="utf-8") as f:
                    json.load(f)
                continue  # one JSON document: whatever went wrong, it was not the syntax
            except json.JSONDecodeError as e:
                if not e.msg.startswith("Extra data"):  # "Extra data": JSON lines in a .json file
                    return f"{path}:{e.lineno}: malformed JSON ({e.msg}, column {e.colno}); fix that line"
            except UnicodeDecodeError as e:
                return f"{path}: not UTF-8 ({e.reason}); re-encode the file as UTF-8"
        try:
            for _ in iter_jsonl(path):
                pass
        except UserError as e:
            return str(e)
    return None


def load(ref: DataRef, where: str, cache_dir: str | None) -> tuple[Any, list[str]]:
    """``(datasets.Dataset, files)`` for a source or eval set; UserError on any failure."""
    with quiet_datasets():
        return _load_quietly(ref, where, cache_dir)


def _load_quietly(ref: DataRef, where: str, cache_dir: str | None) -> tuple[Any, list[str]]:
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
        # 1 MB read chunks (datasets' default is 10 MB): the one-time JSON -> Arrow conversion
        # then peaks at ~20 MB whatever the file size, and runs as fast (measured).
        chunks = {"chunksize": LOAD_CHUNK_BYTES} if ref.builder in ("json", "text") else {}
        ds = datasets.load_dataset(
            ref.builder, data_files=files, split="train", cache_dir=cache_dir, **chunks
        )
    except Exception as e:  # noqa: BLE001 - reported as one line below
        bad = _first_bad_json_line(files) if ref.builder == "json" else None
        if bad:
            raise UserError(f"{where}: {bad}") from None
        raise UserError(f"{where}: cannot read {ref.label} ({first_line(e)})") from None
    return ds, files


def check_columns(ds: Any, ref: DataRef, where: str) -> list[str]:
    missing = ref.format.missing_columns(ds.column_names)
    if missing:
        hint = (
            "set text_field: to one of them" if ref.format.format == "text" else "pick the format that fits"
        )
        raise UserError(
            f"{where} ({ref.label}): rows have no field {', '.join(map(repr, missing))} "
            f"needed by format {ref.format.format} (fields: {', '.join(ds.column_names)}); {hint}"
        )
    return ref.format.columns(ds.column_names)


def _resolved_revision(ds: Any) -> str | None:
    """The Hub commit a dataset was read at: datasets caches it under a folder named by the sha."""
    for f in getattr(ds, "cache_files", None) or []:
        parent = os.path.basename(os.path.dirname(f.get("filename", "")))
        if re.fullmatch(r"[0-9a-f]{40}", parent):
            return parent
    return None


def _file_record(path: str) -> dict[str, Any]:
    return {"path": path, "bytes": os.path.getsize(path), "sha256": file_sha256(path)}


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
    """Reads rows of a memory-mapped dataset, re-mapping its Arrow files every REMAP_ROWS rows.

    Every page of an Arrow file that is read stays mapped, and counted in resident
    memory, for as long as the mapping lives. Opening the files afresh from time to time
    drops those pages, so memory stays flat however large the input is.
    """

    REMAP_ROWS = 2_000

    def __init__(self, ds: Any, columns: list[str]):
        self.ds, self.columns = ds, columns
        files = [f["filename"] for f in ds.cache_files or []]
        self.remappable = bool(files) and ds._indices is None and all(os.path.exists(f) for f in files)
        self.files = files
        self.view = ds.select_columns(columns)
        self.since_remap = 0

    def _remap(self) -> None:
        import datasets

        self.view = None  # the last reference: its mapping is released here
        parts = [datasets.Dataset.from_file(f, info=self.ds.info, split=self.ds.split) for f in self.files]
        fresh = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
        self.view = fresh.select_columns(self.columns)
        self.since_remap = 0

    def __getitem__(self, key: slice | list[int]) -> dict[str, list]:
        if self.remappable and self.since_remap >= self.REMAP_ROWS:
            self._remap()
        rows = self.view[key]
        self.since_remap += len(next(iter(rows.values()))) if rows else 0
        return rows


def batches(ds: Any, columns: list[str]) -> Iterator[dict[str, list]]:
    """Column dicts of BATCH_SIZE rows in storage order."""
    reader = RowReader(ds, columns)
    for start in range(0, len(ds), BATCH_SIZE):
        yield reader[start : start + BATCH_SIZE]

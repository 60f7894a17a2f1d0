"""Streamed sources (``streaming: true``): rows read as they are needed, never the whole dataset.

A streamed source loads with ``datasets.load_dataset(..., streaming=True)`` (an
``IterableDataset``: a Hub dataset's files are fetched as they are read; local files the same
way, through the same code). Its seeded order comes from datasets' shuffle buffer
(``IterableDataset.shuffle(generator=..., buffer_size=shuffle_buffer, max_buffer_input_shards=1)``:
the dataset's files (shards) are read one after another in a seeded order, and rows are drawn at
random from a buffer of ``shuffle_buffer`` rows) instead of a permutation of every row, which
would need the whole dataset. Reading stops when the source's plan is met: rows are handed to
the workers in batches no larger than could all still be needed
(:func:`dataset.selection.select_source`), so the rows taken from the dataset are at most the
rows the selection read plus the shuffle buffer (plus, in tokens mode, the rest of a last batch
when a row turns out larger than every row before it). What the selection keeps goes to the spill
on disk (:mod:`dataset.spill`), so a stream that ends short of its plan is repeated from there,
up to ``max_repeats``, exactly like a source read whole; no second pass over the stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import numpy as np

from dataset.mixture_config import SourceConfig
from dataset.sources import (
    BATCH_SIZE,
    HUB_HINT,
    _expand_files,
    _file_record,
    first_line,
    quiet_datasets,
)
from model.errors import UserError


def load_stream(ref: SourceConfig, where: str, cache_dir: str | None) -> tuple[Any, list[str]]:
    """``(IterableDataset, local files)`` of a streamed source; UserError when it does not open."""
    import datasets

    with quiet_datasets():
        if ref.dataset:
            try:
                ds = datasets.load_dataset(
                    ref.dataset,
                    ref.subset,
                    split=ref.split,
                    revision=ref.revision,
                    cache_dir=cache_dir,
                    streaming=True,
                )
            except Exception as e:  # noqa: BLE001 - any failure to fetch is the user's to fix
                raise UserError(
                    f"{where}: cannot stream Hugging Face dataset {ref.dataset!r} ({first_line(e)}); {HUB_HINT}"
                ) from None
            return ds, []
        files = _expand_files(ref, where)
        try:
            ds = datasets.load_dataset(
                ref.builder, data_files=files, split="train", cache_dir=cache_dir, streaming=True
            )
        except Exception as e:  # noqa: BLE001 - reported as one line
            raise UserError(f"{where}: cannot stream {ref.label} ({first_line(e)})") from None
    return ds, files


class StreamReader:
    """A streamed source read in its shuffle buffer's seeded order, counting what it takes:
    ``pulled`` rows taken from the dataset (the buffer's included), ``yielded`` rows handed to
    the selection, ``exhausted`` once the dataset has no more."""

    streaming = True

    def __init__(self, ds: Any, files: list[str], ref: SourceConfig, columns: list[str], seed: list[int]):
        self.ref, self.files, self.columns = ref, files, columns
        self.where_ = f"({ref.label})"
        self.pulled = self.yielded = 0
        self.exhausted = False
        self.info_rows = _info_rows(ds, ref)
        counted = ds.map(self._count)  # runs as each row is taken from the dataset, before the buffer
        # One input shard at a time (in a seeded order of shards): datasets' interleaving of
        # several shards reads a row ahead in each, which would break the bound on rows taken.
        self.stream = counted.shuffle(
            generator=np.random.default_rng(seed), buffer_size=ref.shuffle_buffer, max_buffer_input_shards=1
        )

    def _count(self, _row: dict) -> dict:
        self.pulled += 1
        return {}

    def batches(self, room: Callable[[], int]) -> Iterator[tuple[np.ndarray, dict[str, list]]]:
        """``(positions in the stream, rows)``, each batch as large as ``room()`` allows (at most
        BATCH_SIZE), until the dataset ends."""
        rows = iter(self.stream)
        while True:
            want = max(1, min(BATCH_SIZE, room()))
            try:
                chunk = list(islice(rows, want))
            except Exception as e:  # noqa: BLE001 - a network or parse failure mid-stream
                raise UserError(
                    f"source {self.ref.name!r} {self.where_}: reading the stream failed after {self.pulled} rows "
                    f"({first_line(e)})"
                ) from None
            if len(chunk) < want:
                self.exhausted = True
            if not chunk:
                return
            idx = np.arange(self.yielded, self.yielded + len(chunk))
            self.yielded += len(chunk)
            yield idx, {c: [row.get(c) for row in chunk] for c in self.columns}

    def where(self, index: int) -> str:
        return f"row {index} of the stream (in its shuffled order)"

    def read_to_end(self, read: int) -> bool:
        return self.exhausted and read == self.yielded

    def total_rows(self, read: int) -> int | None:
        """Rows of the dataset: counted when read to its end, else the dataset card's count (Hub
        metadata) when it has one, else None."""
        return self.pulled if self.read_to_end(read) else self.info_rows

    def record(self, read: int) -> dict[str, Any]:
        """The manifest's record of the source: where it is, and ``streaming``, ``shuffle_buffer``,
        ``rows_streamed`` (taken from the dataset, the buffer's rows included) and ``rows_unread``
        (handed out in a last batch but not needed: tokens mode only), so that
        ``rows_streamed <= rows_read + rows_unread + shuffle_buffer``."""
        if self.ref.dataset:
            ref: dict[str, Any] = {
                "dataset": self.ref.dataset,
                "subset": self.ref.subset,
                "split": self.ref.split,
                "revision": self.ref.revision,
                "format": self.ref.format.format,
            }
        else:
            ref = {"data_files": [_file_record(f) for f in self.files], "format": self.ref.format.format}
        return {
            **ref,
            "streaming": True,
            "shuffle_buffer": self.ref.shuffle_buffer,
            "rows_streamed": self.pulled,
            "rows_unread": self.yielded - read,
        }


def _info_rows(ds: Any, ref: SourceConfig) -> int | None:
    splits = getattr(getattr(ds, "info", None), "splits", None) or {}
    split = splits.get(ref.split if ref.dataset else "train")
    return int(split.num_examples) if split is not None and split.num_examples else None


def stream_columns(ds: Any) -> list[str]:
    """The column names of a streamed dataset: from its features, else from its first row."""
    if ds.column_names:
        return list(ds.column_names)
    first = next(iter(ds), None)
    return list(first) if first is not None else []

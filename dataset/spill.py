"""Kept rows on disk while a mixture is prepared: what keeps prepare_dataset's memory flat.

The process that renders a row (a pool worker, or the main process with ``num_proc`` 1) appends
its text, already encoded as the JSON string the output line holds (``json.dumps(text,
ensure_ascii=False)`` in UTF-8: the serialising is done in parallel, not by the main process),
and, when a tokenizer is given, its token ids (the store's dtype) to its own spill file
``spill-<pid>.bin`` in a temporary folder beside the outputs; the main process keeps a
fixed-size reference per row, ``(file, offset, JSON bytes, ids, text bytes)``, and reads the
rows back in output order when it writes the JSONL files and the token stores
(:mod:`dataset.outputs`).
Memory then holds a few integers per row and nothing per token, however large the mixture; the
disk holds each kept row once until the outputs are written, then the folder is removed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

REF_FIELDS = 5  # file, offset, JSON bytes, ids, UTF-8 bytes of the text, per row
# A row's reference as the main process keeps it: 24 bytes (no row is 4 GB).
REF_DTYPE = np.dtype(
    [("file", "<u4"), ("offset", "<i8"), ("nbytes", "<u4"), ("nids", "<u4"), ("tbytes", "<u4")]
)


class SpillWriter:
    """Appends rows to this process's spill file in ``folder``."""

    def __init__(self, folder: str | Path, dtype: Any):
        self.pid = os.getpid()
        self.path = str(Path(folder) / f"spill-{self.pid}.bin")
        self.dtype = np.dtype(dtype)
        self._f = open(self.path, "ab")
        self.offset = self._f.tell()

    def write(self, text: str, ids: list[int] | None) -> tuple[int, int, int, int]:
        """Append one row (its text as a JSON string, then its ids); its ``(offset, JSON bytes,
        ids, UTF-8 bytes of the text)``."""
        data = json.dumps(text, ensure_ascii=False).encode("utf-8")
        at = self.offset
        self._f.write(data)
        n = 0
        if ids is not None:
            n = len(ids)
            self._f.write(np.asarray(ids, dtype=self.dtype).tobytes())
        self.offset += len(data) + n * self.dtype.itemsize
        return at, len(data), n, len(text.encode("utf-8"))

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


_WRITERS: dict[tuple[int, str], SpillWriter] = {}


def writer_for(folder: str | Path, dtype: Any) -> SpillWriter:
    """This process's writer for ``folder`` (one per process: a forked worker opens its own)."""
    key = (os.getpid(), str(folder))
    if key not in _WRITERS:
        _WRITERS[key] = SpillWriter(folder, dtype)
    return _WRITERS[key]


def close_writers(folder: str | Path) -> None:
    """Close this process's writers for ``folder`` (the main process's, after the workers exit)."""
    for key in [k for k in _WRITERS if k[1] == str(folder)]:
        _WRITERS.pop(key).close()


class SpillReader:
    """Reads rows back by their references, with ``os.pread`` (no memory map, so the pages read
    are never counted in this process's resident memory)."""

    def __init__(self, paths: list[str], dtype: Any):
        self.dtype = np.dtype(dtype)
        self._fds = [os.open(p, os.O_RDONLY) for p in paths]

    def read(self, file: int, offset: int, nbytes: int, nids: int) -> tuple[bytes, np.ndarray]:
        """``(text as a UTF-8 JSON string, ids)`` of the row with reference ``(file, offset, JSON
        bytes, ids, ...)``."""
        data = os.pread(self._fds[file], nbytes + nids * self.dtype.itemsize, offset)
        return data[:nbytes], np.frombuffer(data, dtype=self.dtype, offset=nbytes)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def __enter__(self) -> SpillReader:
        return self

    def __exit__(self, *_) -> None:
        self.close()

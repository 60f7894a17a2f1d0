"""File I/O every module shares: JSONL reading, file hashing, and writes that are never half-done.

- :func:`iter_jsonl` / :func:`iter_docs`: the one way a JSONL file is read (streamed, a bad line
  named as ``file:line``);
- :func:`file_sha256`: content identity of an input file (token cache keys, manifests);
- :func:`atomic_write`, :func:`atomic_dir`, :class:`AtomicFiles`: a file, a folder or a set of
  files written beside their destination and renamed into place, so a crash (even ``kill -9``)
  leaves the old version or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from model.errors import UserError

# --------------------------------------------------------------------------- reading


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) per non-blank line; malformed JSON or a non-object row is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: data file not found")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(
                    f"{path}:{lineno}: not UTF-8 ({e.reason}); re-encode the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(
                    f"{path}:{lineno}: malformed JSON ({e.msg}, column {e.colno}); fix or remove that line"
                ) from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object per line")
            yield lineno, row


def iter_docs(path: str | Path) -> Iterator[tuple[str, str]]:
    """(text, source) per ``{"text", "source"}`` row; source defaults to the file's stem."""
    path = Path(path)
    for lineno, row in iter_jsonl(path):
        if not isinstance(row.get("text"), str):
            raise UserError(
                f'{path}:{lineno}: row needs a string field "text" (rows look like {{"text": ..., "source": ...}})'
            )
        source = row.get("source", path.stem)
        if not isinstance(source, str) or not source:
            raise UserError(f'{path}:{lineno}: field "source" must be a non-empty string')
        yield row["text"], source


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- writing


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """Run ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A crash (even kill -9) at any point leaves either the old file or the new one, never a
    half-written mix; a failed ``write`` leaves no temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir(src: Path, dst: Path) -> None:
    """Move folder src to dst, replacing dst; dst is never left half-written."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(dst: str | Path, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``dst``; when the block ends normally it becomes ``dst``.

    ``replace``: an existing ``dst`` is replaced; otherwise an existing ``dst`` is kept and the new
    folder discarded (for content-addressed caches, where a concurrent writer made the same
    folder). On an exception the temporary folder is removed and ``dst`` is untouched.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        yield tmp
        if replace:
            replace_dir(tmp, dst)
        else:
            try:
                os.replace(tmp, dst)
            except OSError:  # dst appeared meanwhile (a non-empty folder cannot be replaced): keep it
                if not dst.is_dir():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class AtomicFiles:
    """Write several files as ``.<name>.tmp`` siblings, then rename them all into place at once."""

    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path]] = []

    def open(self, path: Path) -> BinaryIO:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.pending.append((tmp, path))
        return open(tmp, "wb")

    def commit(self) -> None:
        for tmp, path in self.pending:
            os.replace(tmp, path)
        self.pending.clear()

    def discard(self) -> None:
        for tmp, _ in self.pending:
            tmp.unlink(missing_ok=True)
        self.pending.clear()

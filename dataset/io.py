"""File I/O every module shares: JSONL reading, file hashing, and writes that are never half-done.

- :func:`iter_json_records` / :func:`iter_jsonl` / :func:`iter_docs`: the one way a local JSON
  data file (.jsonl, .json, either gzipped) is read, by every tool: streamed, rows exactly as
  ``json.loads`` gives them, a bad line named as ``file:line: what; what to do``;
- :func:`file_sha256`: content identity of an input file (token cache keys, manifests);
- :func:`atomic_write`, :func:`atomic_dir`, :class:`AtomicFiles`: a file, a folder or a set of
  files written beside their destination and renamed into place, so a crash (even ``kill -9``)
  leaves the old version or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from model.errors import UserError

# --------------------------------------------------------------------------- reading

JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_JSON_SPACE = " \t\r\n"  # the whitespace JSON allows around values (RFC 8259, section 2)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # a \u escape of a UTF-16 surrogate


def is_json_file(path: str | Path) -> bool:
    """Whether :func:`iter_json_records` reads ``path``: its name ends in .jsonl or .json (+ .gz)."""
    return str(path).lower().endswith(JSON_SUFFIXES)


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes including the newline) of a file, gunzipped when its name ends in .gz."""
    lineno = 0
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        try:
            for raw in f:
                lineno += 1
                yield lineno, raw
        except (OSError, EOFError, zlib.error) as e:  # a corrupt or cut-off gzip stream, a read error
            raise UserError(
                f"{path}:{lineno + 1}: cannot read the file ({type(e).__name__}: {e}); "
                "re-create or re-download it"
            ) from None


def decode_line(raw: bytes, path: str | Path, lineno: int) -> str:
    """One line's bytes as text: UTF-8, with a UTF-8 byte-order mark on line 1 dropped.

    Raises UserError ``file:line: not UTF-8 (...); re-encode the file as UTF-8`` (a UTF-16 file,
    recognised by its byte-order mark, is named as such).
    """
    if lineno == 1:
        if raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        elif raw.startswith(_UTF16_BOMS):
            raise UserError(f"{path}:1: UTF-16 text, not UTF-8; re-encode the file as UTF-8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path}:{lineno}: not UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line: "
            f"{e.reason}); re-encode the file as UTF-8"
        ) from None


def _type_name(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number")


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def _check_row(row: Any, text: str, path: Path, lineno: int) -> dict:
    if not isinstance(row, dict):
        raise UserError(
            f"{path}:{lineno}: expected a JSON object {{...}}, got {_type_name(row)}; "
            "write one JSON object per row"
        )
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(row):  # the search keeps this cheap
        raise UserError(
            f"{path}:{lineno}: a \\u escape encodes half of a UTF-16 surrogate pair, not a character; "
            "fix or remove that escape"
        )
    return row


def _deep(path: Path, lineno: int) -> UserError:
    return UserError(f"{path}:{lineno}: JSON nested too deeply to read; fix or remove that row")


def _parse_line(text: str, path: Path, lineno: int, cut_off: bool) -> dict:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        hint = ""
        if cut_off:
            hint = " on the last line, which has no newline: the file looks cut off"
        elif lineno == 1 and text.startswith("{") and path.name.lower().endswith((".json", ".json.gz")):
            hint = " (a .json file holds one JSON object per line, or one JSON array of objects)"
        raise UserError(
            f"{path}:{lineno}: malformed JSON ({e.msg}, column {e.colno}){hint}; fix or remove that line"
        ) from None
    except RecursionError:
        raise _deep(path, lineno) from None
    return _check_row(row, text, path, lineno)


def _array_records(path: Path, text: str, first_line: int) -> Iterator[tuple[int, str, dict]]:
    """Records of ``text``, one JSON array of objects that starts on line ``first_line`` of the
    file, each numbered by the line its item starts on."""
    decoder = json.JSONDecoder()
    n = len(text)
    lineno, counted = first_line, 0

    def skip(i: int) -> int:
        while i < n and text[i] in _JSON_SPACE:
            i += 1
        return i

    def line_at(i: int) -> int:
        nonlocal lineno, counted
        lineno += text.count("\n", counted, i)
        counted = i
        return lineno

    pos = skip(text.index("[") + 1)
    closed = pos < n and text[pos] == "]"
    while not closed:
        try:
            row, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise UserError(
                f"{path}:{e.lineno + first_line - 1}: malformed JSON ({e.msg}, column {e.colno}); fix that item"
            ) from None
        except RecursionError:
            raise _deep(path, line_at(pos)) from None
        item = text[pos:end]
        yield line_at(pos), item, _check_row(row, item, path, line_at(pos))
        pos = skip(end)
        if pos < n and text[pos] == ",":
            pos = skip(pos + 1)
        elif pos < n and text[pos] == "]":
            closed = True
        else:
            raise UserError(
                f"{path}:{line_at(min(pos, n))}: malformed JSON array (',' or ']' expected after an item"
                f"{'' if pos < n else ', the file ends first: it looks cut off'}); fix that line"
            )
    pos = skip(pos + 1)
    if pos < n:
        raise UserError(f"{path}:{line_at(pos)}: text after the JSON array's closing ']'; remove it")


def _whole_text(path: Path, lines: Iterator[tuple[int, bytes]], first: tuple[int, bytes]) -> str:
    """The rest of a file as text, checked line by line (so a bad byte is named by its line)."""
    parts = [decode_line(first[1], path, first[0])]
    parts += [decode_line(raw, path, lineno) for lineno, raw in lines]
    return "".join(parts)


def iter_json_records(path: str | Path) -> Iterator[tuple[int, str, dict]]:
    """``(line number, the row's JSON text, the row)`` for every row of a local JSON data file.

    The one reader of local JSON data for every tool (packing, tokenizer training, mixture
    preparation, evaluation), so a file one tool accepts, all accept and read the same way, and
    a file one rejects, all reject with the same line. What it reads:

    - one JSON object per line (JSON Lines), in ``.jsonl`` or ``.json``; a ``.json`` file may
      instead hold one JSON array of objects (read whole); ``.gz`` after either is gunzipped;
    - UTF-8 only; a UTF-8 byte-order mark at the start is dropped; CRLF line ends, blank and
      whitespace-only lines are fine (line numbers count every line, as an editor does);
    - any JSON value types, varying freely from row to row (``null`` then a string, an index
      then a letter), lines of any length: a row is the dict ``json.loads`` gives, nothing is
      inferred or converted (Python's NaN/Infinity extension is accepted, as ``json.loads`` does).

    The JSON text is the line without its surrounding whitespace (an array item's own text).
    Raises UserError ``file:line: what; what to do`` at the first line that is not UTF-8, not
    JSON (a cut-off last line is named as such), not an object or holds a lone surrogate escape;
    ``file:line: cannot read the file`` for a corrupt gzip stream; ``file: no rows ...`` for a
    file without any row; ``file: data file not found``.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: data file not found")
    lines = _raw_lines(path)
    rows = 0
    for lineno, raw in lines:
        text = decode_line(raw, path, lineno).strip(_JSON_SPACE)
        if not text:
            continue
        if rows == 0 and text.startswith("[") and path.name.lower().endswith((".json", ".json.gz")):
            for record in _array_records(path, _whole_text(path, lines, (lineno, raw)), lineno):
                rows += 1
                yield record
            break
        rows += 1
        yield lineno, text, _parse_line(text, path, lineno, cut_off=not raw.endswith(b"\n"))
    if rows == 0:
        raise UserError(
            f"{path}: no rows (the file is empty, blank or an empty array); give one JSON object per line"
        )


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """``(line number, row)`` per row of a local JSON data file: :func:`iter_json_records` without
    the text. UserErrors as there."""
    for lineno, _, row in iter_json_records(path):
        yield lineno, row


def text_field(row: dict, field: str, path: str | Path, lineno: int) -> str:
    """``row[field]`` when it is a string; else UserError ``file:line: row has no string field ...``."""
    value = row.get(field)
    if not isinstance(value, str):
        got = "it is missing" if field not in row else f"it is {_type_name(value)}"
        raise UserError(
            f'{path}:{lineno}: row needs a string field "{field}" ({got}); '
            f'fix or remove that row (rows look like {{"{field}": ..., "source": ...}})'
        )
    return value


def data_stem(path: str | Path) -> str:
    """A data file's name without its extension (``val.jsonl.gz`` -> ``val``): the default source."""
    name = Path(path).name
    return Path(name[:-3] if name.lower().endswith(".gz") else name).stem


def iter_docs(path: str | Path) -> Iterator[tuple[str, str]]:
    """``(text, source)`` per ``{"text", "source"}`` row of a JSON data file (:func:`iter_jsonl`).

    ``source`` is optional: absent or null, it is the file's stem. UserError ``file:line: ...``
    for a row whose text is not a string or whose source is not a non-empty string.
    """
    for text, source, _ in iter_staged_docs(path):
        yield text, source


def iter_staged_docs(path: str | Path) -> Iterator[tuple[str, str, str | None]]:
    """``(text, source, stage)`` per row: :func:`iter_docs` plus the optional ``"stage"`` field a
    staged mixture writes (None when absent; a non-empty string otherwise)."""
    path = Path(path)
    for lineno, row in iter_jsonl(path):
        text = text_field(row, "text", path, lineno)
        source, stage = row.get("source"), row.get("stage")
        if source is None:
            source = data_stem(path)
        for name, value in (("source", source), ("stage", stage)):
            if value is not None and (not isinstance(value, str) or not value):
                got = "empty" if value == "" else _type_name(value)
                raise UserError(
                    f'{path}:{lineno}: field "{name}" must be a non-empty string (it is {got}); '
                    "fix that row or drop the field"
                )
        yield text, source, stage


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- writing


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (/proc/self/status)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, then put it back at once
    os.umask(mask)
    return mask


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
        os.chmod(tmp, 0o666 & ~_umask())  # the mode open() would give, not mkstemp's private 0600
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
        tmp.chmod(0o777 & ~_umask())  # the mode mkdir would give, not mkdtemp's private 0700
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
    """Write several files and folders as ``.<name>.tmp-<pid>`` siblings, then rename them all into
    place at once (in the order they were opened: open the one that says "complete" last)."""

    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path]] = []
        self.stale: list[Path] = []

    def open(self, path: Path) -> BinaryIO:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.pending.append((tmp, path))
        return open(tmp, "wb")

    def folder(self, path: Path) -> Path:
        """An empty temporary folder that becomes ``path`` (replacing it) on :meth:`commit`."""
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tmp.chmod(0o777 & ~_umask())
        self.pending.append((tmp, path))
        return tmp

    def remove(self, path: Path) -> None:
        """Remove ``path`` (a folder an earlier run wrote that this one does not) on :meth:`commit`."""
        self.stale.append(path)

    def commit(self) -> None:
        for path in self.stale:
            shutil.rmtree(path, ignore_errors=True)
        for tmp, path in self.pending:
            if tmp.is_dir():
                replace_dir(tmp, path)
            else:
                os.replace(tmp, path)
        self.pending.clear()
        self.stale.clear()

    def discard(self) -> None:
        for tmp, _ in self.pending:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        self.pending.clear()
        self.stale.clear()

"""Reading JSONL the one way every script does: streamed, with bad rows named as file:line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from model.errors import UserError


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

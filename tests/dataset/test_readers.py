"""dataset.io's JSON reader (the one every tool uses) and prepare_dataset's store built on it.

Exact rows and exact messages on awkward but valid files and on broken ones; the Arrow-backed
store of dataset.sources gives back exactly the reader's rows, wherever types drift.
"""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from dataset.io import data_stem, iter_docs, iter_json_records, iter_jsonl
from dataset.mixture_config import DataRef
from dataset.sources import JsonRows, RowReader, batches, load
from model.errors import UserError
from tests.helpers import field_case, shared_file
from trainer.evaluation.data import load_local_rows, mbpp_problems, read_val_docs


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def lines(rows: list[dict], end: str = "\n") -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + end for r in rows).encode("utf-8")


ROWS: list[dict[str, Any]] = [
    {"text": "first café", "source": "a"},
    {"text": "second", "n": 2},
    {"text": "third", "source": "b"},
]


@pytest.mark.parametrize(
    ("name", "data", "numbers"),
    [
        ("plain.jsonl", lines(ROWS), [1, 2, 3]),
        ("bom.jsonl", b"\xef\xbb\xbf" + lines(ROWS), [1, 2, 3]),
        ("crlf.jsonl", lines(ROWS, "\r\n"), [1, 2, 3]),
        ("blank.jsonl", b"\n  \r\n" + lines(ROWS).replace(b"}\n", b"}\n\t\n") + b"\n\n", [3, 5, 7]),
        ("no_newline.jsonl", lines(ROWS)[:-1], [1, 2, 3]),
        ("lines.json", lines(ROWS), [1, 2, 3]),
        (
            "array.json",
            b"\xef\xbb\xbf[\n" + b",\n".join(json.dumps(r).encode() for r in ROWS) + b"\n]\n",
            [2, 3, 4],
        ),
    ],
)
def test_valid_layouts_read_the_same_rows(tmp_path, name, data, numbers):
    path = write(tmp_path / name, data)
    assert list(iter_jsonl(path)) == list(zip(numbers, ROWS, strict=True))
    gz = write(tmp_path / f"{name}.gz", gzip.compress(data))
    assert list(iter_jsonl(gz)) == list(zip(numbers, ROWS, strict=True))


def test_record_text_is_the_row_itself(tmp_path):
    path = write(tmp_path / "r.jsonl", b'  {"text": "a"}  \r\n{"text":"b\\ud83d\\ude00"}\n')
    assert [(n, t) for n, t, _ in iter_json_records(path)] == [
        (1, '{"text": "a"}'),
        (2, '{"text":"b\\ud83d\\ude00"}'),
    ]
    assert [r["text"] for _, r in iter_jsonl(path)] == [
        "a",
        "b\U0001f600",
    ]  # a surrogate pair is one character


def test_values_keep_their_json_type_wherever_they_change(tmp_path):
    """An optional field null then a string, an index then a letter, an int then a float, after
    the first megabyte: every row exactly as written (nothing inferred per chunk)."""
    rows: list[dict[str, Any]] = [
        {"question": f"q{i} " + "x" * 1000, "answer": 1, "input": None, "score": 3} for i in range(1200)
    ]
    rows += [
        {"question": "late", "answer": "B", "input": "some input", "score": 2.5, "extra": [1, {"a": None}]}
    ]
    path = write(tmp_path / "drift.jsonl", lines(rows))
    assert path.stat().st_size > 1 << 20
    got = [row for _, row in iter_jsonl(path)]
    assert got == rows
    assert type(got[0]["score"]) is int and type(got[-1]["score"]) is float


def test_a_line_of_several_megabytes(tmp_path):
    big = "word " * 1_200_000  # 6 MB on one line
    path = write(tmp_path / "huge.jsonl", lines([{"text": "short"}, {"text": big}, {"text": "after"}]))
    assert [t for t, _ in iter_docs(path)] == ["short", big, "after"]


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        (
            "latin1.jsonl",
            b'{"text": "ok"}\n{"text": "caf\xe9"}\n',
            "{p}:2: not UTF-8 (byte 0xe9 at byte 14 of the line: invalid continuation byte); "
            "re-encode the file as UTF-8",
        ),
        (
            "utf16.jsonl",
            '{"text": "ok"}\n'.encode("utf-16"),
            "{p}:1: UTF-16 text, not UTF-8; re-encode the file as UTF-8",
        ),
        (
            "cut.jsonl",
            b'{"text": "ok"}\n{"text": "cut o',
            "{p}:2: malformed JSON (Unterminated string starting at, column 10) on the last line, which has "
            "no newline: the file looks cut off; fix or remove that line",
        ),
        (
            "middle.jsonl",
            b'{"text": "ok"}\n\n{"text": "a" "b"}\n{"text": "ok"}\n',
            "{p}:3: malformed JSON (Expecting ',' delimiter, column 14); fix or remove that line",
        ),
        (
            "list.jsonl",
            b'{"text": "ok"}\n["text", "a"]\n',
            "{p}:2: expected a JSON object {{...}}, got an array; write one JSON object per row",
        ),
        (
            "string.jsonl",
            b'{"text": "ok"}\n"just text"\n',
            "{p}:2: expected a JSON object {{...}}, got a string; write one JSON object per row",
        ),
        (
            "null.jsonl",
            b"null\n",
            "{p}:1: expected a JSON object {{...}}, got null; write one JSON object per row",
        ),
        (
            "surrogate.jsonl",
            b'{"text": "half \\udc80 a pair"}\n',
            "{p}:1: a \\u escape encodes half of a UTF-16 surrogate pair, not a character; fix or remove that escape",
        ),
        (
            "deep.jsonl",
            b'{"a": ' + b"[" * 200_000 + b"\n",
            "{p}:1: JSON nested too deeply to read; fix or remove that row",
        ),
        (
            "blank.jsonl",
            b"\n \r\n\n",
            "{p}: no rows (the file is empty, blank or an empty array); give one JSON object per line",
        ),
        (
            "empty.json",
            b"[ ]",
            "{p}: no rows (the file is empty, blank or an empty array); give one JSON object per line",
        ),
        (
            "two.jsonl",
            b'{"text": "a"} {"text": "b"}\n',
            "{p}:1: malformed JSON (Extra data, column 15); fix or remove that line",
        ),
        (
            "pretty.json",
            b'{\n  "text": "a"\n}\n',
            "{p}:1: malformed JSON (Expecting property name enclosed in double quotes, column 2) (a .json file "
            "holds one JSON object per line, or one JSON array of objects); fix or remove that line",
        ),
        (
            "items.json",
            b'[\n{"text": "a"}\n{"text": "b"}\n]',
            "{p}:3: malformed JSON array (',' or ']' expected after an item); fix that line",
        ),
        (
            "open.json",
            b'[\n{"text": "a"},\n{"text": "b"}',
            "{p}:3: malformed JSON array (',' or ']' expected after an item, the file ends first: it looks cut off); "
            "fix that line",
        ),
        (
            "after.json",
            b'[{"text": "a"}]\nmore\n',
            "{p}:2: text after the JSON array's closing ']'; remove it",
        ),
        (
            "notgz.jsonl.gz",
            b'{"text": "a"}\n',
            "{p}:1: cannot read the file (BadGzipFile: Not a gzipped file (b'{{\"')); re-create or re-download it",
        ),
    ],
)
def test_broken_files_are_named_by_line(tmp_path, name, data, message):
    path = write(tmp_path / name, data)
    with pytest.raises(UserError) as e:
        list(iter_jsonl(path))
    assert str(e.value) == message.format(p=path)


def test_a_cut_off_gzip_stream(tmp_path):
    data = gzip.compress(lines([{"text": f"row {i}"} for i in range(5000)]))
    path = write(tmp_path / "cut.jsonl.gz", data[:-20])
    with pytest.raises(
        UserError, match=r"cut.jsonl.gz:\d+: cannot read the file \(EOFError: Compressed file ended"
    ):
        list(iter_jsonl(path))


def test_docs_source_defaults_and_field_errors(tmp_path):
    path = write(
        tmp_path / "val.v2.jsonl.gz", gzip.compress(b'{"text": "a", "source": null}\n{"text": "b"}\n')
    )
    assert data_stem(path) == "val.v2"
    assert list(iter_docs(path)) == [("a", "val.v2"), ("b", "val.v2")]
    bad = write(tmp_path / "bad.jsonl", b'{"text": "a"}\n{"text": null}\n')
    with pytest.raises(UserError) as e:
        list(iter_docs(bad))
    assert str(e.value) == (
        f'{bad}:2: row needs a string field "text" (it is null); fix or remove that row '
        '(rows look like {"text": ..., "source": ...})'
    )
    empty_source = write(tmp_path / "src.jsonl", b'{"text": "a", "source": ""}\n')
    with pytest.raises(
        UserError, match=r'src.jsonl:1: field "source" must be a non-empty string \(it is empty\)'
    ):
        list(iter_docs(empty_source))


# --------------------------------------------------------------------------- prepare_dataset's store


def _store(files: list[Path], cache: Path) -> JsonRows:
    rows, got_files = load(DataRef(data_files=tuple(map(str, files))), "test", str(cache))
    assert isinstance(rows, JsonRows) and got_files == [str(f) for f in files]
    return rows


def test_store_gives_back_the_readers_rows(tmp_path, monkeypatch):
    first = [{"q": f"q{i}", "answer": i % 4, "input": None} for i in range(2500)]
    second = [{"q": "later", "answer": "C", "input": "text", "new": {"k": [1]}} for _ in range(700)]
    a = write(tmp_path / "a.jsonl", lines(first))
    b = write(tmp_path / "b.json", b"\n" + lines(second))
    store = _store([a, b], tmp_path / "cache")
    expected = first + second
    assert len(store) == 3200 and store.column_names == ["q", "answer", "input", "new"]
    columns = ["q", "answer", "input", "new"]

    def as_rows(batch: dict[str, list]) -> list[dict]:
        return [{c: batch[c][i] for c in columns} for i in range(len(batch["q"]))]

    full = [{c: row.get(c) for c in columns} for row in expected]  # an absent key reads as None
    monkeypatch.setattr(RowReader, "REMAP_ROWS", 300)  # re-map many times on the way
    assert [r for batch in batches(store, columns) for r in as_rows(batch)] == full
    reader = RowReader(store, ["answer"])
    picks = [3199, 0, 2500, 2499, 7, 7]
    for _ in range(20):
        assert reader[picks] == {"answer": [full[i]["answer"] for i in picks]}
    assert store.where(0) == f"{a}:1" and store.where(2500) == f"{b}:2"


def test_store_is_keyed_by_content(tmp_path):
    path = write(tmp_path / "a.jsonl", lines([{"text": "one"}]))
    first = _store([path], tmp_path / "cache")
    again = _store([path], tmp_path / "cache")
    assert again.folder == first.folder and len(list((tmp_path / "cache").rglob("rows.arrow"))) == 1
    write(path, lines([{"text": "one"}, {"text": "two"}]))
    changed = _store([path], tmp_path / "cache")
    assert changed.folder != first.folder and len(changed) == 2


def test_store_refuses_what_the_reader_refuses(tmp_path):
    path = write(tmp_path / "a.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(UserError) as e:
        _store([path], tmp_path / "cache")
    assert str(e.value).startswith(f"{path}:2: not UTF-8")
    assert not list((tmp_path / "cache").rglob("rows.arrow"))  # nothing half-written is left


def test_field_cases_with_drifting_types_load_whole():
    """alpaca input null then a string, MMLU answer an index then a letter, past the first MB."""
    for name, field, late in (
        ("alpaca_null_then_str.jsonl", "input", str),
        ("mc_mixed_answer_types.jsonl", "answer", str),
    ):
        path = field_case(name)
        rows = [row for _, row in iter_jsonl(path)]
        store, _ = load(DataRef(data_files=(str(path),)), "test", None)
        got = RowReader(store, [field])[list(range(len(store)))][field]
        assert got == [row[field] for row in rows] and isinstance(got[-1], late)


# --------------------------------------------------------------------------- evaluation loaders


def test_eval_loader_reads_gzipped_humaneval_like_datasets_does():
    """The real HumanEval.jsonl.gz: the same 164 rows as datasets' own JSON reader gives."""
    from datasets import load_dataset

    path = shared_file("humaneval", "HumanEval.jsonl.gz")
    rows = load_local_rows(path, "humaneval")
    assert len(rows) == 164 and rows[0]["task_id"] == "HumanEval/0"
    assert rows == load_dataset("json", data_files=str(path), split="train").to_list()


def test_eval_loader_errors_are_the_readers(tmp_path):
    path = write(tmp_path / "mc.jsonl", b'{"question": "ok"}\n{"question": "caf\xe9"}\n')
    with pytest.raises(UserError) as e:
        load_local_rows(path, "MMLU")
    with pytest.raises(UserError) as same:
        list(iter_jsonl(path))
    assert str(e.value) == str(same.value)
    csv = write(tmp_path / "mc.csv", b"")
    with pytest.raises(UserError, match=r"mc.csv: MMLU file is empty; give a csv file"):
        load_local_rows(csv, "MMLU")


def test_val_docs_say_how_many_rows_are_left_out(tmp_path, caplog):
    path = write(tmp_path / "val.jsonl", lines([{"text": "a"}, {"text": ""}, {"text": "b"}, {"text": ""}]))
    with caplog.at_level(logging.WARNING):
        docs = read_val_docs(path)
    assert [d.text for d in docs] == ["a", "b"]
    assert f'{path}: 2 of 4 rows have an empty "text" and are not evaluated' in caplog.text
    empty = write(tmp_path / "e.jsonl", lines([{"text": ""}]))
    with pytest.raises(UserError, match='no documents to evaluate: all 1 rows have an empty "text"'):
        read_val_docs(empty)


def test_full_mbpp_file_is_cut_to_its_test_split_and_says_so(caplog):
    path = shared_file("mbpp", "mbpp.jsonl")
    rows = load_local_rows(path, "mbpp")
    with caplog.at_level(logging.INFO):
        problems = mbpp_problems(rows, str(path))
    assert len(rows) == 974 and len(problems) == 500
    assert {int(p.task_id) for p in problems} == set(range(11, 511))
    assert (
        f"{path}: the full MBPP set (974 rows); scoring its test split, task_ids 11-510: 500 rows"
        in caplog.text
    )

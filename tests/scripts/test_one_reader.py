"""One reader, one behaviour (field report 4 of issue 11): every tool that reads local JSON data
reads the same awkward files the same way.

The tools, each through the code path its script runs, under trainer.cli.run (which prints the
``error: ...`` line and exits 2): prepare_dataset (the script's main), train_tokenizer (the
script's main), the trainers' token store (check_data_files + build_store, as train_pretrain and
train_midtrain call them for --data_path and --val_path) and eval_llm's data loading (its
parse_args + load_data for --val_path, --mmlu_path, --humaneval_path, --mbpp_path). A file one
accepts, all accept, with the same rows and text; a file one rejects, all reject with the same
line. The field cases also run through the real scripts as processes.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dataset.formats import FormatSpec, render_row
from dataset.store import build_store, check_data_files
from dataset.tokenizer import encode_texts, iter_jsonl_texts
from tests.helpers import TINY_MODEL, field_case, load_script, run_script
from trainer.cli import run
from trainer.evaluation.data import CodeProblem, Doc, MCQuestion, mbpp_prompt

# --------------------------------------------------------------------------- the rows of each kind

STORY = "Odo the otter found a jar of honey near the caf\u00e9, and Kit the hare watched from the hill."


def docs_rows(n: int = 12) -> list[dict]:
    rows: list[dict] = [{"text": f"Story {i}. {STORY} \u2713 {i}", "source": "replay"} for i in range(n)]
    rows[1]["source"] = None  # null source: the file's stem, in every tool
    del rows[2]["source"]
    rows[3]["meta"] = 7
    rows[4]["meta"] = "seven"  # a field that changes type
    return rows


def mmlu_rows(n: int = 12) -> list[dict]:
    rows = []
    for i in range(n):
        answer: Any = i % 4 if i % 3 else "ABCD"[i % 4]  # an index, then a letter, then ...
        subject: Any = None if i % 2 else "fables"
        rows.append(
            {
                "question": f"Q{i}: {STORY} Who watched?",
                "choices": ["Odo", "Kit", "Mira", f"n{i}"],
                "answer": answer,
                "subject": subject,
            }
        )
    return rows


def humaneval_rows(n: int = 12) -> list[dict]:
    return [
        {
            "task_id": f"HumanEval/{i}",
            "prompt": f'def f{i}(x):\n    """{STORY}"""\n',
            "canonical_solution": f"    return x + {i}\n",
            "test": None if i % 2 else f"assert f{i}(0) == {i}",
        }
        for i in range(n)
    ]


def mbpp_rows(n: int = 12) -> list[dict]:
    return [
        {
            "task_id": 11 + i,
            "text": f"Write f{i}. {STORY}",
            "code": f"def f{i}(x):\r\n    return x + {i}",
            "test_list": [f"assert f{i}(0) == {i}"],
            "test_setup_code": None if i % 2 else "",
        }
        for i in range(n)
    ]


MAIN_FIELD = {"docs": "text", "mmlu": "question", "humaneval": "prompt", "mbpp": "text"}
ROWS = {"docs": docs_rows, "mmlu": mmlu_rows, "humaneval": humaneval_rows, "mbpp": mbpp_rows}
FORMAT = {
    "docs": {"format": "text"},
    "mmlu": {"format": "mmlu"},
    "humaneval": {"format": "template", "template": "{prompt}{canonical_solution}"},
    "mbpp": {"format": "template", "template": "{text}\n{code}"},
}

# --------------------------------------------------------------------------- the awkward files


def jsonl(rows: list[dict], end: str = "\n") -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + end for r in rows).encode("utf-8")


def drift_after_a_megabyte(kind: str) -> list[dict]:
    """The kind's rows behind 1,200 rows of ~1 KB whose optional fields hold other JSON types:
    datasets' JSON reader inferred types on the first MB and refused what came after."""
    base = ROWS[kind]()
    early = []
    for i in range(1200):
        row = dict(base[i % 2 * 2])  # rows 0 and 2 of the kind: a string source/subject/test/...
        row[MAIN_FIELD[kind]] = f"early {i} " + "x" * 1000
        for key in ("source", "subject", "test", "test_setup_code"):
            if key in row:
                row[key] = None
        if kind == "mmlu":
            row["answer"] = i % 4
        if kind == "mbpp":
            row["task_id"] = 1000 + i
        if kind == "humaneval":
            row["task_id"] = f"HumanEval/early{i}"
        early.append(row)
    return early + base


def huge_line(kind: str) -> list[dict]:
    rows = ROWS[kind]()
    rows[5][MAIN_FIELD[kind]] = "honey jar " * 200_000  # one 2 MB line
    return rows


def json_array(rows: list[dict]) -> bytes:
    return ("[\n" + ",\n".join(json.dumps(r, indent=1, ensure_ascii=False) for r in rows) + "\n]\n").encode()


def latin1_line_4(rows: list[dict]) -> bytes:
    lines = jsonl(rows).split(b"\n")
    lines[3] = json.dumps(rows[3], ensure_ascii=False).encode("utf-8").replace("\u00e9".encode(), b"\xe9")
    return b"\n".join(lines)


# name: (file name, rows -> bytes, rows maker, expected error line (None: accepted, same rows))
ACCEPTED = {
    "plain": ("data.jsonl", jsonl, None),
    "utf8_bom": ("data.jsonl", lambda r: b"\xef\xbb\xbf" + jsonl(r), None),
    "crlf": ("data.jsonl", lambda r: jsonl(r, "\r\n"), None),
    "blank_lines": (
        "data.jsonl",
        lambda r: b"\n \t\r\n" + jsonl(r).replace(b"}\n", b"}\n\n", 3) + b"\n\n",
        None,
    ),
    "no_final_newline": ("data.jsonl", lambda r: jsonl(r)[:-1], None),
    "type_drift_after_1mb": ("data.jsonl", jsonl, drift_after_a_megabyte),
    "huge_line": ("data.jsonl", jsonl, huge_line),
    "gzip": ("data.jsonl.gz", lambda r: gzip.compress(jsonl(r)), None),
    "json_array": ("data.json", json_array, None),
}
REJECTED = {
    "latin1": (
        "data.jsonl",
        latin1_line_4,
        "{p}:4: not UTF-8 (byte 0xe9 at byte {col} of the line: invalid continuation byte); re-encode the file as UTF-8",
    ),
    "utf16": (
        "data.jsonl",
        lambda r: jsonl(r).decode().encode("utf-16"),
        "{p}:1: UTF-16 text, not UTF-8; re-encode the file as UTF-8",
    ),
    "truncated_last_line": (
        "data.jsonl",
        lambda r: jsonl(r)[:-25],
        "{p}:12: malformed JSON ({msg}) on the last line, which has no newline: the file looks cut off; fix or remove that line",
    ),
    "non_object_line": (
        "data.jsonl",
        lambda r: jsonl(r[:1]) + b'["a", "list"]\n' + jsonl(r[1:]),
        "{p}:2: expected a JSON object {{...}}, got an array; write one JSON object per row",
    ),
    "malformed_line": (
        "data.jsonl",
        lambda r: jsonl(r[:6]) + b'{"text": "a" "b"}\n' + jsonl(r[6:]),
        "{p}:7: malformed JSON (Expecting ',' delimiter, column 14); fix or remove that line",
    ),
    "lone_surrogate": (
        "data.jsonl",
        lambda r: jsonl(r[:2]) + b'{"text": "\\ud800"}\n' + jsonl(r[2:]),
        "{p}:3: a \\u escape encodes half of a UTF-16 surrogate pair, not a character; fix or remove that escape",
    ),
    "blank_only": (
        "data.jsonl",
        lambda r: b"\n\r\n  \n",
        "{p}: no rows (the file is empty, blank or an empty array); give one JSON object per line",
    ),
}
# prepare_dataset's configs take .jsonl/.json/.parquet/.txt (dataset/mixture_config.py): no .gz yet.
PREPARE_SKIPS: set[str] = set()  # every tool reads every case

# --------------------------------------------------------------------------- the tools


def tool_run(capsys, call: Callable[[], Any]) -> tuple[int, str, Any]:
    """(exit status, last stderr line, what ``call`` returned) with ``call`` run as the scripts run main."""
    capsys.readouterr()
    result: list[Any] = []
    try:
        run(lambda: result.append(call()))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err[-1] if err and code else "", result[0] if result else None


@pytest.fixture(scope="module")
def scripts():
    return {
        "prepare": load_script("scripts/prepare_dataset.py", "prepare_dataset_one_reader").main,
        "tokenizer": load_script("scripts/train_tokenizer.py", "train_tokenizer_one_reader").main,
        "eval": load_script("eval_llm.py", "eval_llm_one_reader"),
    }


def prepare(scripts, path: Path, kind: str, n_rows: int, tmp: Path):
    config = {
        "total_samples": n_rows,
        "val_ratio": 0.0,
        "seed": 1,
        "dedup": False,
        "sources": [{"name": "s", "data_files": str(path), "ratio": 1.0, **FORMAT[kind]}],
    }
    (tmp / "mix.yaml").write_text(yaml.safe_dump(config))
    argv = [
        "--config",
        str(tmp / "mix.yaml"),
        "--output_dir",
        str(tmp / "out"),
        "--cache_dir",
        str(tmp / "cache"),
    ]
    scripts["prepare"](argv + ["--num_proc", "1", "--overwrite"])
    return sorted(
        json.loads(line)["text"] for line in (tmp / "out" / "mix_train.jsonl").open(encoding="utf-8")
    )


def train_tokenizer(scripts, path: Path, tmp: Path, monkeypatch, capsys) -> int:
    """The number of documents train_tokenizer says it read (its log goes to stdout)."""
    argv = [
        "train_tokenizer.py",
        "--data_path",
        str(path),
        "--vocab_size",
        "300",
        "--output_dir",
        str(tmp / "tok"),
    ]
    monkeypatch.setattr(sys, "argv", argv)
    scripts["tokenizer"]()
    m = re.search(r"([\d,]+) documents in 1 file", capsys.readouterr().out)
    assert m is not None
    return int(m.group(1).replace(",", ""))


def eval_data(scripts, flag: str, path: Path):
    module = scripts["eval"]
    skip = {"--val_path": "--no_lm", "--mmlu_path": "--no_mmlu"}
    argv = ["--weight", "unused", "--no_hub", "--shots", "0", flag, str(path)]
    argv += [f for k, f in skip.items() if k != flag] + (
        # the solution loss reads these rows; pass@1's rows (test, entry_point) are tests/trainer/evaluation's
        ["--no_exec"] if flag.endswith(("humaneval_path", "mbpp_path")) else ["--no_code"]
    )
    args = module.parse_args(argv)
    module.check_args(args)
    data = module.load_data(args)
    return {
        "--val_path": lambda: data.val_docs,
        "--mmlu_path": lambda: data.mmlu_test,
        "--humaneval_path": lambda: data.code["humaneval"],
        "--mbpp_path": lambda: data.code["mbpp"],
    }[flag]()


def expected_eval(kind: str, rows: list[dict], stem: str) -> list:
    if kind == "docs":
        return [Doc(r["text"], r.get("source") or stem) for r in rows]
    if kind == "mmlu":
        return [
            MCQuestion(
                r["question"],
                tuple(r["choices"]),
                "ABCD".index(r["answer"]) if isinstance(r["answer"], str) else r["answer"],
                r["subject"] or "",
            )
            for r in rows
        ]
    if kind == "humaneval":
        return [CodeProblem(r["task_id"], r["prompt"], r["canonical_solution"]) for r in rows]
    return [CodeProblem(str(r["task_id"]), mbpp_prompt(r["text"], r["test_list"]), r["code"]) for r in rows]


EVAL_FLAG = {
    "docs": "--val_path",
    "mmlu": "--mmlu_path",
    "humaneval": "--humaneval_path",
    "mbpp": "--mbpp_path",
}


def every_tool(kind, path, n_rows, tmp, scripts, capsys, monkeypatch, tok, skip_prepare=False):
    """{tool: (exit status, error line, what it read)} for every tool that reads files of ``kind``."""
    out = {}
    if not skip_prepare:
        out["prepare_dataset"] = tool_run(capsys, lambda: prepare(scripts, path, kind, n_rows, tmp))
    if kind == "docs":
        out["train_tokenizer"] = tool_run(
            capsys, lambda: train_tokenizer(scripts, path, tmp, monkeypatch, capsys)
        )
        out["trainers"] = tool_run(capsys, lambda: build_store(check_data_files([path]), tok, tmp / "pack"))
    out[f"eval_llm {EVAL_FLAG[kind]}"] = tool_run(capsys, lambda: eval_data(scripts, EVAL_FLAG[kind], path))
    return out


@pytest.fixture
def in_process(scripts, capsys, monkeypatch, field_tokenizer):
    return lambda kind, path, n, tmp, skip=False: every_tool(
        kind, path, n, tmp, scripts, capsys, monkeypatch, field_tokenizer, skip
    )


# --------------------------------------------------------------------------- accepted files


@pytest.mark.parametrize("kind", list(ROWS))
@pytest.mark.parametrize("case", list(ACCEPTED))
def test_every_tool_reads_an_awkward_valid_file_the_same(tmp_path, in_process, field_tokenizer, case, kind):
    name, encode, maker = ACCEPTED[case]
    rows = (maker or (lambda k: ROWS[k]()))(kind)
    path = tmp_path / name
    path.write_bytes(encode(rows))
    results = in_process(kind, path, len(rows), tmp_path, case in PREPARE_SKIPS)
    for tool, (code, line, _) in results.items():
        assert code == 0, (tool, line)

    spec = FormatSpec(**FORMAT[kind])
    if "prepare_dataset" in results:
        assert results["prepare_dataset"][2] == sorted(render_row(r, spec) for r in rows)
    got = results[f"eval_llm {EVAL_FLAG[kind]}"][2]
    assert got == expected_eval(kind, rows, "data"), kind
    if kind == "docs":
        texts = [r["text"] for r in rows]
        assert results["train_tokenizer"][2] == len(rows) and list(iter_jsonl_texts(path)) == texts
        corpus = results["trainers"][2]
        bos, eos = field_tokenizer.bos_token_id, field_tokenizer.eos_token_id
        packed = [t for ids in encode_texts(field_tokenizer, texts) for t in [bos, *ids, eos]]
        assert corpus.tokens.tolist() == packed
        assert set(corpus.source_names) == {r.get("source") or "data" for r in rows}


# --------------------------------------------------------------------------- rejected files


@pytest.mark.parametrize("kind", list(ROWS))
@pytest.mark.parametrize("case", list(REJECTED))
def test_every_tool_rejects_a_broken_file_with_the_same_line(tmp_path, in_process, case, kind):
    name, encode, expected = REJECTED[case]
    rows = ROWS[kind]()
    path = tmp_path / name
    data = encode(rows)
    path.write_bytes(data)
    results = in_process(kind, path, len(rows), tmp_path)
    for tool, (code, _, _) in results.items():
        assert code == 2, tool
    lines = {line for _, line, _ in results.values()}
    assert len(lines) == 1, results
    line = lines.pop()
    col = data.split(b"\n")[3].find(b"\xe9") + 1
    msg = ""
    if case == "truncated_last_line":
        m = re.search(r"malformed JSON \((.*)\) on the last", line)
        assert m is not None, line
        msg = m.group(1)
    assert line == "error: " + expected.format(p=path, col=col, msg=msg)
    assert not (tmp_path / "out" / "mix_train.jsonl").exists() and not (tmp_path / "tok").exists()


# --------------------------------------------------------------------------- the field cases


def test_field_cases_with_type_drift_prepare_and_evaluate(tmp_path, scripts, capsys):
    """nullstr.yaml and mixedans.yaml: every row is kept, with the right text (the late rows'
    input and letter answers included); eval_llm reads the same 4,000 questions."""
    for config, late in (("nullstr.yaml", "### Input:\nx = 3"), ("mixedans.yaml", "Answer: A")):

        def prepare_config(c: str = config) -> Any:
            return scripts["prepare"](
                [
                    "--config",
                    str(field_case(c)),
                    "--output_dir",
                    str(tmp_path),
                    "--cache_dir",
                    str(tmp_path / "c"),
                    "--num_proc",
                    "1",
                ]
            )

        code, line, _ = tool_run(capsys, prepare_config)
        assert code == 0, line
        manifest = json.loads((tmp_path / f"{Path(config).stem}_manifest.json").read_text())
        source = manifest["sources"][0]
        assert source["rows_total"] == source["kept"] == manifest["total_samples"]
        texts = [json.loads(x)["text"] for x in (tmp_path / f"{Path(config).stem}_train.jsonl").open()]
        assert len(texts) == manifest["total_samples"] and any(late in t for t in texts)
    rows = [json.loads(x) for x in field_case("mc_mixed_answer_types.jsonl").open()]
    questions = eval_data(scripts, "--mmlu_path", field_case("mc_mixed_answer_types.jsonl"))
    assert len(questions) == 4000 == len(rows)
    assert [q.answer for q in questions] == [
        "ABCD".index(r["answer"]) if isinstance(r["answer"], str) else r["answer"] for r in rows
    ]
    assert sum(isinstance(r["answer"], str) for r in rows) == 100


@pytest.mark.slow
def test_field_cases_latin1_through_the_real_scripts(tmp_path, field_tokenizer):
    """The real processes: prepare_dataset, train_tokenizer, train_pretrain and eval_llm refuse a
    Latin-1 line with one identical line and exit 2 (it was a 30-line pyarrow traceback and exit 1
    in prepare_dataset and eval_llm)."""
    latin = field_case("latin1_row.jsonl").resolve()  # as latin1_row.yaml resolves its data_files
    expected = f"error: {latin}:11: not UTF-8"
    tok = tmp_path / "tok"
    field_tokenizer.save_pretrained(tok)
    model = [
        *TINY_MODEL,
        "--max_seq_len",
        "64",
        "--save_dir",
        str(tmp_path),
        "--checkpoint_dir",
        str(tmp_path),
        "--cache_dir",
        str(tmp_path / "cache"),
    ]
    runs = {
        "prepare_dataset": [
            "scripts/prepare_dataset.py",
            "--config",
            str(field_case("latin1_row.yaml")),
            "--output_dir",
            str(tmp_path / "p"),
            "--cache_dir",
            str(tmp_path / "c"),
        ],
        "train_tokenizer": [
            "scripts/train_tokenizer.py",
            "--data_path",
            str(latin),
            "--output_dir",
            str(tmp_path / "t"),
        ],
        "train_pretrain": [
            "trainer/train_pretrain.py",
            "--data_path",
            str(latin),
            "--tokenizer_path",
            str(tok),
            *model,
            "--max_steps",
            "1",
        ],
    }
    lines = {name: _failing(args) for name, args in runs.items()}
    assert len(set(lines.values())) == 1 and lines["prepare_dataset"].startswith(expected), lines

    # eval_llm loads its model first: a one-step model, then the MMLU file with a Latin-1 line 6,
    # refused as prepare_dataset refuses the same file as an mmlu source.
    corpus = field_case("madeup_corpus.jsonl")
    run_script(
        "trainer/train_pretrain.py",
        "--data_path",
        str(corpus),
        "--tokenizer_path",
        str(tok),
        *model,
        "--max_steps",
        "1",
        "--batch_size",
        "2",
    )
    mc = field_case("mc_latin1.jsonl")
    eval_line = _failing(
        [
            "eval_llm.py",
            "--save_dir",
            str(tmp_path),
            "--weight",
            "pretrain_64",
            "--mmlu_path",
            str(mc),
            "--no_lm",
            "--no_code",
            "--no_hub",
            "--shots",
            "0",
        ]
    )
    config = tmp_path / "mc.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "total_samples": 5,
                "val_ratio": 0.0,
                "sources": [{"name": "mc", "data_files": str(mc), "format": "mmlu", "ratio": 1.0}],
            }
        )
    )
    prep_line = _failing(
        [
            "scripts/prepare_dataset.py",
            "--config",
            str(config),
            "--output_dir",
            str(tmp_path / "p2"),
            "--cache_dir",
            str(tmp_path / "c"),
        ]
    )
    assert eval_line == prep_line and eval_line.startswith(f"error: {mc}:6: not UTF-8"), (
        eval_line,
        prep_line,
    )


def _failing(args: list[str]) -> str:
    proc = run_script(*args, check=False, env={"OMP_NUM_THREADS": "1"})
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, (
        args[0],
        proc.returncode,
        proc.stderr[-2000:],
    )
    return err[-1]

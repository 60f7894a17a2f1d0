"""The embedded smoke sample in dataset/demo/ is what scripts/make_demo_data.py generates."""

from __future__ import annotations

import ast
import json

from tests.helpers import load_script
from trainer.paths import REPO_ROOT

DEMO = REPO_ROOT / "dataset" / "demo"


def _generator():
    return load_script("scripts/make_demo_data.py", "make_demo_data")


def test_committed_files_match_the_generator():
    files = _generator().build(1234)
    for name, rows in files.items():
        assert name.startswith("smoke_")
        assert [json.loads(line) for line in (DEMO / name).open()] == rows, name
    assert sum((DEMO / n).stat().st_size for n in files) < 1_000_000
    assert (DEMO / "README.md").read_text().startswith("# dataset/demo: smoke sample")


def test_demo_rows_are_well_formed():
    stories = [json.loads(line) for line in (DEMO / "smoke_stories.jsonl").open()]
    assert len(stories) >= 300 and len({s["text"] for s in stories}) == len(stories)
    for row in map(json.loads, (DEMO / "smoke_code.jsonl").open()):
        assert set(row) == {"instruction", "input", "output"}
        ast.parse(row["output"])  # every output is valid Python
    for name in ("smoke_reasoning.jsonl", "smoke_reasoning_test.jsonl"):
        for row in map(json.loads, (DEMO / name).open()):
            assert len(row["choices"]) == 4 and len(set(row["choices"])) == 4 and 0 <= row["answer"] < 4


def test_arithmetic_answers_are_right():
    for row in map(json.loads, (DEMO / "smoke_reasoning.jsonl").open()):
        if row["subject"] == "smoke_multiplication":
            words = row["question"].split()
            boxes, each = int(words[2]), int(words[5])
            assert row["choices"][row["answer"]] == str(boxes * each)
        if row["subject"] == "smoke_addition":
            nums = [int(w) for w in row["question"].replace(".", " ").split() if w.isdigit()]
            assert row["choices"][row["answer"]] == str(sum(nums))

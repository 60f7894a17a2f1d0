"""Rendering rows: alpaca, mmlu (incl. the nested cais/mmlu auxiliary_train layout), template."""

from __future__ import annotations

import json

import pytest

from dataset.formats import FormatSpec, MissingFieldError, render_alpaca, render_mmlu, render_row
from tests.helpers import shared_file


def test_render_mmlu_prompt_and_answer():
    prompt = render_mmlu("What is 2 + 3?", ["4", "5", "6", "7"])
    assert prompt == "What is 2 + 3?\nA. 4\nB. 5\nC. 6\nD. 7\nAnswer:"
    assert render_mmlu("What is 2 + 3?", ["4", "5", "6", "7"], 1) == prompt + " B"
    for answer in ("B", "b", " B ", "1"):
        assert render_mmlu("What is 2 + 3?", ["4", "5", "6", "7"], answer).endswith("Answer: B")
    for bad in (4, -1, "E", 1.5, True, "maybe"):
        with pytest.raises(ValueError):
            render_mmlu("q", ["a", "b", "c", "d"], bad)


def test_mmlu_real_rows_flat_and_nested():
    row = json.loads(shared_file("mmlu", "test.jsonl").open().readline())
    spec = FormatSpec(format="mmlu")
    text = render_row(row, spec)
    assert text.startswith(row["question"].strip()) and text.endswith(f"Answer: {'ABCD'[row['answer']]}")
    assert text.count("\n") == 5
    # cais/mmlu's auxiliary_train config stores each row under one "train" column.
    nested = {"train": {k: row[k] for k in ("question", "choices", "answer", "subject")}}
    assert render_row(nested, spec) == text
    assert spec.columns(["train"]) == ["train"] and spec.missing_columns(["train"]) == []


def test_mmlu_choices_are_kept_as_they_are():
    """lm-evaluation-harness's mmlu prompt strips the question but not the choices; training rows
    take the same shape (real test rows 2135 and 1105 have spaces at the ends of choices)."""
    rows = [json.loads(line) for line in shared_file("mmlu", "test.jsonl").open()]
    for row in (rows[2135], rows[1105]):
        assert any(c != c.strip() for c in row["choices"])
        text = render_row(row, FormatSpec(format="mmlu"))
        lines = text.split("\n")
        assert lines[1:5] == [f"{x}. {c}" for x, c in zip("ABCD", row["choices"], strict=True)]
    assert render_mmlu(" Q? ", ["$649 ", " b", "c", "d"], 0) == "Q?\nA. $649 \nB.  b\nC. c\nD. d\nAnswer: A"


def test_alpaca_real_rows_with_and_without_input():
    rows = [json.loads(line) for line in shared_file("code_instructions", "code_alpaca_2k.jsonl").open()]
    with_input = next(r for r in rows if r["input"])
    without = next(r for r in rows if not r["input"])
    spec = FormatSpec(format="alpaca")
    text = render_row(with_input, spec)
    assert text == (
        f"### Instruction:\n{with_input['instruction'].strip()}\n\n### Input:\n{with_input['input'].strip()}"
        f"\n\n### Response:\n{with_input['output'].strip()}"
    )
    assert "### Input:" not in render_row(without, spec)
    assert render_row({"instruction": "Say hi.", "output": "hi"}, spec) == render_alpaca(
        "Say hi.", None, "hi"
    )


def test_template_and_text_formats():
    spec = FormatSpec(format="template", template="Q: {question}\nA: {answer}")
    assert render_row({"question": "2+2?", "answer": 4, "extra": 1}, spec) == "Q: 2+2?\nA: 4"
    assert spec.required_fields() == ["question", "answer"]
    assert render_row({"story": "Once."}, FormatSpec(text_field="story")) == "Once."


@pytest.mark.parametrize(
    ("row", "spec"),
    [
        ({"text": None}, FormatSpec()),
        ({}, FormatSpec()),
        ({"instruction": "x", "output": None}, FormatSpec(format="alpaca")),
        ({"question": "q", "choices": ["a", "b"]}, FormatSpec(format="mmlu")),
        ({"question": "q"}, FormatSpec(format="template", template="{question} {answer}")),
    ],
)
def test_missing_fields_raise(row, spec):
    with pytest.raises(MissingFieldError):
        render_row(row, spec)

"""How a raw dataset row becomes one training text.

:data:`FORMATS` is the one table of formats: each format's name, the option keys a source may
give with it, the row fields it needs and its renderer, read both by the mixture config's
validation (:mod:`dataset.mixture_config`) and by :func:`render_row`. A new format is one
renderer and one table entry. Four formats, chosen per source in a mixture config (``format:``):

- ``text``: the row's ``text_field`` as is.
- ``alpaca``: instruction / input / output through :data:`ALPACA_TEMPLATE`.
- ``mmlu``: a multiple-choice question through :func:`render_mmlu` (the evaluation
  code imports the same function, so training and scoring see one prompt shape).
- ``template``: a Python ``str.format`` template over the row's fields.

Rendering is a pure function of the row: the same row always gives the same text.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# The Stanford Alpaca layout without its one-sentence preamble ("Below is an instruction
# that describes a task..."), which costs ~30 tokens per row and teaches nothing. The
# "### Input:" block is left out when the input is empty, as Alpaca itself does.
ALPACA_TEMPLATE = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{output}"
ALPACA_TEMPLATE_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n{output}"

MMLU_LETTERS = "ABCDEFGHIJ"


class MissingFieldError(ValueError):
    """A row lacks a field its format needs (absent or null)."""


def render_alpaca(instruction: str, input: str | None, output: str) -> str:  # noqa: A002 - the Alpaca field name
    """One Alpaca row as text: instruction, optional input, response."""
    instruction, output = instruction.strip(), output.strip()
    input = (input or "").strip()
    if input:
        return ALPACA_TEMPLATE.format(instruction=instruction, input=input, output=output)
    return ALPACA_TEMPLATE_NO_INPUT.format(instruction=instruction, output=output)


def mmlu_answer_letter(answer: Any, n_choices: int) -> str:
    """The answer as a letter: accepts an index (0 = A) or a letter ("b", " B ")."""
    if isinstance(answer, bool):
        raise ValueError(f"answer must be an index or a letter, got {answer!r}")
    if isinstance(answer, str):
        letter = answer.strip().upper()
        if len(letter) == 1 and letter in MMLU_LETTERS[:n_choices]:
            return letter
        if letter.isdigit():
            answer = int(letter)
        else:
            raise ValueError(f"answer {answer!r} is not one of {', '.join(MMLU_LETTERS[:n_choices])}")
    try:
        index = int(answer)
    except (TypeError, ValueError):
        raise ValueError(f"answer must be an index or a letter, got {answer!r}") from None
    if index != answer or not 0 <= index < n_choices:
        raise ValueError(f"answer index {answer!r} is outside 0..{n_choices - 1}")
    return MMLU_LETTERS[index]


def render_mmlu(question: str, choices: Sequence[str], answer: Any = None) -> str:
    """An MMLU-style prompt: the question, lettered choices, then ``Answer:``.

    With ``answer`` (an index, 0 = A, or a letter) the text ends in ``Answer: X``; without
    it the text ends in ``Answer:``, ready for a model to score the next token::

        What is 2 + 3?
        A. 4
        B. 5
        C. 6
        D. 7
        Answer: B

    This is lm-evaluation-harness's ``mmlu`` ``doc_to_text`` (tasks/mmlu/default/
    _default_template_yaml: ``{{question.strip()}}\\nA. {{choices[0]}}...\\nAnswer:``) with its
    target delimiter ``" "`` before the letter: the question is stripped, the choices are kept
    exactly as they are (41 real test rows have a leading or trailing space in a choice), so
    training rows and the scored prompts have one shape and eval_llm's prompt is the harness's.
    """
    if not 2 <= len(choices) <= len(MMLU_LETTERS):
        raise ValueError(f"need 2 to {len(MMLU_LETTERS)} choices, got {len(choices)}")
    lines = [question.strip()]
    lines += [f"{MMLU_LETTERS[i]}. {choice}" for i, choice in enumerate(choices)]
    if answer is None:
        lines.append("Answer:")
    else:
        lines.append(f"Answer: {mmlu_answer_letter(answer, len(choices))}")
    return "\n".join(lines)


def template_fields(template: str) -> list[str]:
    """The top-level field names a ``str.format`` template reads (``{a.b}`` -> ``a``)."""
    fields = []
    for _, name, _, _ in string.Formatter().parse(template):
        if name is None:
            continue
        if name == "" or name.isdigit():
            raise ValueError("template fields must be named, like {question}")
        root = name.split(".")[0].split("[")[0]
        if root not in fields:
            fields.append(root)
    return fields


@dataclass(frozen=True)
class FormatSpec:
    """What is needed to render a row: the format name and its options."""

    format: str = "text"
    text_field: str = "text"
    template: str | None = None

    def required_fields(self) -> list[str]:
        """Columns a dataset must have for this format (before any unwrapping)."""
        return FORMATS[self.format].fields(self)

    def columns(self, available: Sequence[str]) -> list[str]:
        """The columns to read from a dataset with ``available`` columns."""
        if self.format == "mmlu" and "question" not in available and "train" in available:
            return ["train"]  # cais/mmlu auxiliary_train nests each row under "train"
        if self.format == "alpaca":
            return [c for c in ("instruction", "input", "output") if c in available]
        return self.required_fields()

    def missing_columns(self, available: Sequence[str]) -> list[str]:
        """Required columns that ``available`` lacks (the nested MMLU layout counts as complete)."""
        if self.format == "mmlu" and "question" not in available and "train" in available:
            return []
        return [c for c in self.required_fields() if c not in available]


def _field(row: Mapping[str, Any], name: str) -> Any:
    value = row.get(name)
    if value is None:
        raise MissingFieldError(f"field '{name}' is missing or null")
    return value


def _render_text(row: Mapping[str, Any], spec: FormatSpec) -> str:
    value = _field(row, spec.text_field)
    if not isinstance(value, str):
        raise ValueError(f"field '{spec.text_field}' must be a string, got {type(value).__name__}")
    return value


def _render_alpaca_row(row: Mapping[str, Any], spec: FormatSpec) -> str:
    return render_alpaca(
        str(_field(row, "instruction")), str(row.get("input") or ""), str(_field(row, "output"))
    )


def _render_mmlu_row(row: Mapping[str, Any], spec: FormatSpec) -> str:
    if "question" not in row and isinstance(row.get("train"), Mapping):
        row = row["train"]
    choices = _field(row, "choices")
    if isinstance(choices, str) or not isinstance(choices, Sequence):
        raise ValueError(f"field 'choices' must be a list, got {type(choices).__name__}")
    return render_mmlu(str(_field(row, "question")), choices, _field(row, "answer"))


def _render_template(row: Mapping[str, Any], spec: FormatSpec) -> str:
    assert spec.template is not None
    for name in template_fields(spec.template):
        _field(row, name)
    return spec.template.format_map(row)


@dataclass(frozen=True)
class FormatInfo:
    """One format of :data:`FORMATS`: the option keys a source may give with it (``required`` of
    them must be given), the row fields a row needs, and the renderer."""

    options: frozenset[str]
    required: frozenset[str]
    fields: Callable[[FormatSpec], list[str]]
    render: Callable[[Mapping[str, Any], FormatSpec], str]


FORMATS: dict[str, FormatInfo] = {
    "text": FormatInfo(frozenset({"text_field"}), frozenset(), lambda s: [s.text_field], _render_text),
    "alpaca": FormatInfo(frozenset(), frozenset(), lambda s: ["instruction", "output"], _render_alpaca_row),
    "mmlu": FormatInfo(
        frozenset(), frozenset(), lambda s: ["question", "choices", "answer"], _render_mmlu_row
    ),
    "template": FormatInfo(
        frozenset({"template"}),
        frozenset({"template"}),
        lambda s: template_fields(s.template or ""),
        _render_template,
    ),
}
FORMAT_OPTIONS = frozenset().union(*(f.options for f in FORMATS.values()))  # every format's option keys


def render_row(row: Mapping[str, Any], spec: FormatSpec) -> str:
    """Render one row (a column-name -> value mapping) with ``spec``.

    Raises MissingFieldError when a field the format needs is absent or null, and
    ValueError when a value is malformed (e.g. an MMLU answer out of range) or the format unknown.
    """
    info = FORMATS.get(spec.format)
    if info is None:
        raise ValueError(f"unknown format {spec.format!r} (known: {', '.join(FORMATS)})")
    return info.render(row, spec)

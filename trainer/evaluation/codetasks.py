"""HumanEval and MBPP as lm-evaluation-harness's ``humaneval`` and ``mbpp`` tasks define them: the
prompt, the stop strings, the token cap, and the program that is run (the task's post-processing
and its reference tests).

From lm_eval/tasks (v0.4.13):

- ``humaneval``: 0-shot; the prompt is the row's ``prompt``; generation stops at ``\\nclass``,
  ``\\ndef``, ``\\n#``, ``\\nif``, ``\\nprint`` after at most 1024 new tokens; the program is
  ``prompt + completion`` (its ``build_predictions`` filter), then a newline and the reference
  ``test + "\\ncheck(entry_point)"`` (code_eval's ``candidate + "\\n" + test_case``);
- ``mbpp``: the 500 test tasks (task_ids 11-510), 3-shot with the task's fixed examples (tasks
  2, 3 and 4, :data:`MBPP_FEWSHOT`); each example is ``doc_to_text + code + "\\n[DONE]"`` and
  examples are joined by a blank line; generation stops at ``[DONE]`` after at most 256 new tokens
  (the model's default ``max_gen_toks``); the program is the completion, a newline and the row's
  first three ``test_list`` asserts (``test_setup_code`` and ``challenge_test_list`` are not used).

``solution`` holds the dataset's own solution in the completion's place, for ``--code_selftest``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from model.errors import UserError

HUMANEVAL_UNTIL = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
HUMANEVAL_MAX_GEN = 1024
MBPP_UNTIL = ("[DONE]",)
MBPP_MAX_GEN = 256  # the task sets no max_gen_toks: HFLM's default
MBPP_TESTS = 3  # the task's doc_to_text and reference use test_list[0..2]

# lm_eval/tasks/mbpp/utils.py list_fewshot_samples(): MBPP tasks 2, 3, 4 (the prompting split)
MBPP_FEWSHOT: tuple[dict[str, Any], ...] = (
    {
        "task_id": 2,
        "text": "Write a function to find the similar elements from the given two tuple lists.",
        "code": "def similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & set(test_tup2))\r\n  return (res) ",
        "test_list": [
            "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
            "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)",
            "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)",
        ],
    },
    {
        "task_id": 3,
        "text": "Write a python function to identify non-prime numbers.",
        "code": "import math\r\ndef is_not_prime(n):\r\n    result = False\r\n    for i in range(2,int(math.sqrt(n)) + 1):\r\n        if n % i == 0:\r\n            result = True\r\n    return result",
        "test_list": [
            "assert is_not_prime(2) == False",
            "assert is_not_prime(10) == True",
            "assert is_not_prime(35) == True",
        ],
    },
    {
        "task_id": 4,
        "text": "Write a function to find the largest integers from a given list of numbers using heap queue algorithm.",
        "code": "import heapq as hq\r\ndef heap_queue_largest(nums,n):\r\n  largest_nums = hq.nlargest(n, nums)\r\n  return largest_nums",
        "test_list": [
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] ",
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] ",
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35]",
        ],
    },
)


@dataclass(frozen=True)
class ExecTask:
    """One problem to solve by generation and score by running it (pass@1)."""

    task_id: str
    prompt: str  # what the model is given
    prefix: str  # what the program has before the completion (HumanEval: the prompt)
    tests: str  # the reference tests, after the completion and a newline
    solution: str  # the dataset's own solution, in the completion's place

    def program(self, completion: str) -> str:
        """The program run for ``completion`` (code_eval's ``candidate + "\\n" + test_case``)."""
        return self.prefix + completion + "\n" + self.tests


@dataclass(frozen=True)
class CodeTask:
    """A code benchmark: its problems, and how lm-evaluation-harness generates for it."""

    name: str
    items: list[ExecTask]
    until: tuple[str, ...]
    max_gen: int


def _field(row: dict, name: str, where: str, kind: type = str) -> Any:
    value = row.get(name)
    if not isinstance(value, kind):
        got = "missing" if name not in row else f"{type(value).__name__}"
        raise UserError(f"{where}: field '{name}' must be a {kind.__name__} ({got}); fix or remove that row")
    return value


def humaneval_tasks(rows: list[dict], where: list[str]) -> CodeTask:
    """HumanEval rows (task_id, prompt, canonical_solution, test, entry_point); ``where[i]`` names
    row i (``file:line``) in the UserError a row without a field gets."""
    items = []
    for row, at in zip(rows, where, strict=True):
        prompt = _field(row, "prompt", at)
        tests = _field(row, "test", at) + "\ncheck(" + _field(row, "entry_point", at) + ")"
        solution = _field(row, "canonical_solution", at)
        items.append(ExecTask(str(row.get("task_id", at)), prompt, prompt, tests, solution))
    return CodeTask("humaneval", items, HUMANEVAL_UNTIL, HUMANEVAL_MAX_GEN)


def mbpp_text(row: dict) -> str:
    """The ``mbpp`` task's doc_to_text."""
    t = row["test_list"]
    return (
        f"You are an expert Python programmer, and here is your task: {row['text']} "
        f"Your code should pass these tests:\n\n{t[0]}\n{t[1]}\n{t[2]}\n[BEGIN]\n"
    )


def mbpp_fewshot_text() -> str:
    """The three examples: ``doc_to_text + "" + code + "\\n[DONE]"``, each followed by a blank line."""
    return "".join(mbpp_text(s) + s["code"] + "\n[DONE]" + "\n\n" for s in MBPP_FEWSHOT)


def mbpp_tasks(rows: list[dict], where: list[str]) -> CodeTask:
    """MBPP test rows (text, code, test_list with >= 3 asserts; already cut to the test split)."""
    shots = mbpp_fewshot_text()
    items = []
    for row, at in zip(rows, where, strict=True):
        _field(row, "text", at)
        code = _field(row, "code", at)
        tests = _field(row, "test_list", at, list)
        if len(tests) < MBPP_TESTS or not all(isinstance(t, str) for t in tests):
            raise UserError(
                f"{at}: field 'test_list' must hold at least {MBPP_TESTS} assert strings "
                f"(the mbpp task shows and runs three; it has {len(tests)}); fix or remove that row"
            )
        reference = "\n".join(tests[:MBPP_TESTS])
        items.append(ExecTask(str(row.get("task_id", at)), shots + mbpp_text(row), "", reference, code))
    return CodeTask("mbpp", items, MBPP_UNTIL, MBPP_MAX_GEN)

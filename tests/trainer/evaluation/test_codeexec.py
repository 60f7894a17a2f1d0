"""pass@1 by execution and GSM8K exact match through eval_llm's real paths: the programs are the
harness's assembly, the datasets' own solutions pass through the sandbox, planted models score
exactly what they are built to score, and bad rows are refused in one line."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dataset.tokenizer import load_tokenizer
from model.errors import UserError
from tests.helpers import shared_file
from tests.trainer.evaluation.support import jsonl
from trainer.ablation.stats import wilson95
from trainer.evaluation import gsm8k
from trainer.evaluation.codeexec import pass_at_1, selftest
from trainer.evaluation.codetasks import humaneval_tasks, mbpp_tasks
from trainer.evaluation.data import Hub, load_code, load_local_located, mbpp_test_split
from trainer.evaluation.models import EvalModel
from trainer.evaluation.sandbox import Limits, Sandbox

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def code():
    return load_code(
        str(shared_file("humaneval", "HumanEval.jsonl.gz")),
        str(shared_file("mbpp", "mbpp.jsonl")),
        Hub(enabled=False),
        execute=True,
    ).tasks


@pytest.fixture(scope="module")
def sandbox():
    return Sandbox(Limits(timeout=3.0))


def test_programs_are_the_harness_assembly(code):
    """HumanEval: prompt + completion (build_predictions), then code_eval's "\\n" + test +
    "\\ncheck(entry_point)"; MBPP: completion, "\\n", the first three asserts."""
    he = jsonl(shared_file("humaneval", "HumanEval.jsonl.gz"))
    mbpp = [r for r in jsonl(shared_file("mbpp", "mbpp.jsonl")) if 11 <= r["task_id"] <= 510]
    assert len(code["humaneval"].items) == 164 and len(code["mbpp"].items) == 500
    for row, t in zip(he, code["humaneval"].items, strict=True):
        assert t.task_id == row["task_id"] and t.prompt == row["prompt"]
        assert t.program("    return 1\n") == (
            row["prompt"] + "    return 1\n" + "\n" + row["test"] + "\ncheck(" + row["entry_point"] + ")"
        )
    for row, t in zip(mbpp, code["mbpp"].items, strict=True):
        assert t.task_id == str(row["task_id"]) and t.prompt.endswith("\n[BEGIN]\n")
        assert t.program("def f(): pass") == "def f(): pass\n" + "\n".join(row["test_list"][:3])
        assert t.solution == row["code"]


def test_canonical_solutions_pass_through_the_sandbox(code, sandbox):
    """A spread of real problems (the full 164 / 500: scripts/dev/bench_eval.py --selftest); MBPP
    task 367 needs its test_setup_code, which the harness's mbpp task does not run: it fails as it
    does there, and is listed."""
    from dataclasses import replace

    he = code["humaneval"]
    r = selftest(replace(he, items=he.items[::8]), sandbox)
    assert r == {**r, "passed": 21, "n": 21, "failed": []}
    mbpp = code["mbpp"]
    picked = [t for t in mbpp.items[::25]] + [t for t in mbpp.items if t.task_id == "367"]
    r = selftest(replace(mbpp, items=picked), sandbox)
    assert r["n"] == 21 and r["passed"] == 20
    (failed,) = r["failed"]
    assert failed[:2] == ("367", "failed") and "NameError: name 'root' is not defined" in failed[2]


class Planted(EvalModel):
    """Generates, for each prompt it recognises, the given text's tokens (then stops at the end-of-
    text token), ignoring the prompt otherwise: e.g. the canonical solution followed by a stop
    string and junk, or nothing at all."""

    def __init__(self, tok, answers: dict[str, str]):
        super().__init__("planted", "memory", tok, 4096, "cpu", torch.float32, {})
        self.answers = answers

    def generate_batch(self, prompts, max_new_tokens, stop=None):
        out = []
        for p in prompts:
            text = self.tokenizer.decode(list(p), skip_special_tokens=True)
            answer = next(a for key, a in self.answers.items() if text.endswith(key))
            toks = self.encode([answer])[0][:max_new_tokens] if answer else []
            out.append(toks + [self.eos_id])
        return out


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


@pytest.mark.parametrize(
    "name,stop_and_junk", [("humaneval", "\ndef junk(:\n"), ("mbpp", "\n[DONE]\nassert False\n")]
)
def test_a_model_writing_the_solutions_passes_everything_and_an_empty_one_nothing(
    code, sandbox, tok, name, stop_and_junk
):
    """The canonical solution, then the task's stop string and code that would fail: the stop cut
    keeps the solution, every test passes (pass@1 = 1). Nothing, or only whitespace, fails every
    problem without an error."""
    from dataclasses import replace

    task = replace(code[name], items=code[name].items[:6])
    right = Planted(tok, {t.prompt[-200:]: t.solution + stop_and_junk for t in task.items})
    r = pass_at_1(right, task, sandbox, batch_size=4)
    assert r["pass@1"] == {"value": 1.0, "ci95": list(wilson95(6, 6)[1:]), "correct": 6, "n": 6}
    assert r["status"] == {"passed": 6} and r["passed_ids"] == [t.task_id for t in task.items]
    for empty in ("", "   \n\t"):
        nothing = Planted(tok, {t.prompt[-200:]: empty for t in task.items})
        r = pass_at_1(nothing, task, sandbox, batch_size=4)
        assert r["pass@1"]["correct"] == 0 and r["empty"] == 6 and r["status"] == {"failed": 6}


def test_pass_at_1_interval_is_wilson():
    p, lo, hi = wilson95(3, 10)
    z = 1.96
    centre = (0.3 + z * z / 20) / (1 + z * z / 10)
    half = z * math.sqrt(0.3 * 0.7 / 10 + z * z / 400) / (1 + z * z / 10)
    assert (p, lo, hi) == pytest.approx((0.3, centre - half, centre + half))
    assert gsm8k.proportion(3, 10) == {"value": 0.3, "ci95": [lo, hi], "correct": 3, "n": 10}


def test_gsm8k_planted_model_scores_exactly(tok):
    """Answers that end in the right '#### N' (then 'Question:' and junk) score 1 on both filters;
    the wrong number scores 0; the prompts hold 5 examples each."""
    test, train, _ = gsm8k.load_gsm8k(str(shared_file("gsm8k", "test.jsonl")), None, 5, Hub(enabled=False))
    questions = test[:5]
    key = {q.question[-150:] + "\nAnswer:": q for q in questions}
    right = Planted(tok, {k: " " + q.answer + "\n\nQuestion: what?" for k, q in key.items()})
    r = gsm8k.gsm8k_eval(right, questions, train, 5, batch_size=2)
    assert r["strict"]["correct"] == r["flexible"]["correct"] == 5
    wrong = Planted(tok, {k: " So it is 1234567.\n#### 1234567" for k in key})
    r = gsm8k.gsm8k_eval(wrong, questions, train, 5, batch_size=2)
    assert r["strict"]["correct"] == r["flexible"]["correct"] == 0
    assert r["predictions"]["strict"] == ["1234567"] * 5
    prompts = gsm8k.gsm8k_prompts(questions, train, 5)
    assert all(p.count("Question: ") == 6 and p.count("\n#### ") == 5 for p in prompts)
    for empty in ("", " \n "):  # nothing, or only whitespace: wrong, not an error
        r = gsm8k.gsm8k_eval(Planted(tok, {k: empty for k in key}), questions, train, 5, batch_size=2)
        assert r["strict"]["correct"] == r["flexible"]["correct"] == 0 and r["empty"] == 5
        assert r["predictions"]["strict"] == ["[invalid]"] * 5


def test_gsm8k_examples_follow_the_harness_sampler():
    """One Random(1234) for the run, 5 examples drawn per question in order: question i's examples
    depend on the questions before it, as in the harness."""
    import random

    train = [gsm8k.MathQuestion(f"q{i}", f"a{i} #### {i}") for i in range(50)]
    test = [gsm8k.MathQuestion(f"t{i}", "#### 0") for i in range(3)]
    rnd = random.Random(1234)
    want = [rnd.sample(train, 5) for _ in test]
    prompts = gsm8k.gsm8k_prompts(test, train, 5)
    for p, shots, q in zip(prompts, want, test, strict=True):
        assert p == "".join(f"Question: {s.question}\nAnswer: {s.answer}\n\n" for s in shots) + (
            f"Question: {q.question}\nAnswer:"
        )


@pytest.mark.parametrize(
    "kind,row,field",
    [
        ("gsm8k", {"question": "q?"}, "answer"),
        ("gsm8k", {"question": 3, "answer": "#### 3"}, "question"),
        ("humaneval", {"task_id": "x", "prompt": "def f():\n", "canonical_solution": "  pass\n"}, "test"),
        ("mbpp", {"task_id": 11, "text": "t", "code": "c", "test_list": "assert True"}, "test_list"),
    ],
)
def test_rows_without_the_fields_name_file_line_and_field(tmp_path, kind, row, field):
    good = {
        "gsm8k": {"question": "q", "answer": "#### 1"},
        "humaneval": {
            "task_id": "HumanEval/0",
            "prompt": "def f():\n",
            "canonical_solution": "    return 1\n",
            "test": "def check(c):\n    assert c() == 1\n",
            "entry_point": "f",
        },
        "mbpp": {"task_id": 11, "text": "t", "code": "c", "test_list": ["a", "b", "c"]},
    }[kind]
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(row) + "\n")
    located = load_local_located(path, kind)
    with pytest.raises(UserError) as e:
        if kind == "gsm8k":
            gsm8k.parse_gsm8k(located)
        elif kind == "humaneval":
            humaneval_tasks([r for _, r in located], [w for w, _ in located])
        else:
            rows, where = mbpp_test_split([r for _, r in located], [w for w, _ in located], str(path))
            mbpp_tasks(rows, where)
    msg = str(e.value)
    assert msg.startswith(f"{path}:3: field '{field}'") and "\n" not in msg, msg


def test_a_three_assert_minimum_for_mbpp(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"task_id": 11, "text": "t", "code": "c", "test_list": ["assert 1"]}) + "\n")
    located = load_local_located(path, "mbpp")
    with pytest.raises(UserError, match=r"m.jsonl:1: field 'test_list' must hold at least 3 assert strings"):
        mbpp_tasks([r for _, r in located], [w for w, _ in located])

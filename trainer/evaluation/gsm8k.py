"""GSM8K as lm-evaluation-harness's ``gsm8k`` task scores it: k-shot prompt, greedy generation until
its stop strings, strict-match and flexible-extract exact match, with 95% intervals.

From lm_eval/tasks/gsm8k/gsm8k.yaml and the code it runs (v0.4.13):

- prompt: ``k`` solved training examples, each ``"Question: {q}\\nAnswer: {full answer}"`` followed
  by a blank line, then ``"Question: {q}\\nAnswer:"``; the examples are drawn by the task's default
  sampler: one ``random.Random(1234)`` (simple_evaluate's ``fewshot_random_seed``) for the whole
  run, ``rnd.sample(train, k)`` for each test question in order;
- generation: greedy, until ``Question:``, ``</s>``, ``<|im_end|>`` or the end-of-text token, at
  most 256 new tokens (:mod:`trainer.evaluation.generation`);
- strict-match: the first ``#### N`` in the answer (``#### (\\-?[0-9\\.\\,]+)``);
  flexible-extract: the last number-like match of ``(-?[$0-9.,]{2,})|(-?[0-9]+)``; no match is
  ``[invalid]``;
- exact match: prediction and reference (the full answer) both lose ``,``, ``$``, everything up to
  ``#### `` and a final ``.``, are lower-cased, then compared as strings.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.errors import UserError
from trainer import runtime
from trainer.ablation.stats import wilson95
from trainer.evaluation.data import DataUnavailable, Hub, load_local_located
from trainer.evaluation.generation import generate_until, token_budget
from trainer.evaluation.models import EvalModel

GSM8K_HUB = ("openai/gsm8k", "main")
UNTIL = ("Question:", "</s>", "<|im_end|>")
MAX_GEN = 256  # the task sets no max_gen_toks: HFLM's default
SHOTS = 5
FEWSHOT_SEED = 1234
STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
IGNORE = (",", "\\$", "(?s).*#### ", "\\.$")
INVALID = "[invalid]"


@dataclass(frozen=True)
class MathQuestion:
    question: str
    answer: str  # the full worked answer, ending in "#### N"


def parse_gsm8k(located: list[tuple[str, dict]]) -> list[MathQuestion]:
    """GSM8K rows ``{question, answer}``; a row without one of them (or not a string) is a
    UserError that names its file and line and the field."""
    out = []
    for at, row in located:
        for name in ("question", "answer"):
            if not isinstance(row.get(name), str):
                got = "missing" if name not in row else type(row[name]).__name__
                raise UserError(
                    f"{at}: field '{name}' must be a string ({got}); GSM8K rows are "
                    '{"question": ..., "answer": "... #### N"}'
                )
        out.append(MathQuestion(row["question"], row["answer"]))
    if not out:
        raise UserError(f"{located[0][0] if located else 'GSM8K'}: no GSM8K questions")
    return out


def load_gsm8k(
    path: str | None, train_path: str | None, shots: int, hub: Hub
) -> tuple[list[MathQuestion], list[MathQuestion], str]:
    """(test questions, training questions for the examples, where they came from). ``path`` is
    a test file and ``train_path`` the examples' file (default: ``train.jsonl`` beside it; only
    needed for ``shots`` > 0); without ``path``, openai/gsm8k from the Hub (DataUnavailable if it
    cannot be reached)."""
    if path is None:
        repo, config = GSM8K_HUB
        test = parse_gsm8k(hub.located(repo, config, "test", "GSM8K", "--gsm8k_path"))
        train = parse_gsm8k(hub.located(repo, config, "train", "GSM8K", "--gsm8k_path")) if shots else []
        return test, train, f"{repo} ({config}) from the Hub"
    test = parse_gsm8k(load_local_located(path, "GSM8K"))
    if not shots:
        return test, [], str(path)
    if train_path is None:
        beside = Path(path).with_name("train.jsonl")
        if not beside.is_file():
            raise UserError(
                f"GSM8K {shots}-shot needs training examples: no {beside}; pass --gsm8k_train_path FILE "
                "or --gsm8k_shots 0"
            )
        train_path = str(beside)
    train = parse_gsm8k(load_local_located(train_path, "GSM8K train"))
    if len(train) < shots:
        raise UserError(f"{train_path}: {len(train)} examples, fewer than --gsm8k_shots {shots}")
    return test, train, str(path)


def gsm8k_prompts(questions: Sequence[MathQuestion], train: Sequence[MathQuestion], k: int) -> list[str]:
    """The harness's prompt for each question, its k examples drawn as its sampler draws them."""
    rnd = random.Random(FEWSHOT_SEED)
    pool = list(train)
    out = []
    for q in questions:
        shots = rnd.sample(pool, k) if k else []
        out.append(
            "".join(f"Question: {s.question}\nAnswer: {s.answer}\n\n" for s in shots)
            + f"Question: {q.question}\nAnswer:"
        )
    return out


def extract(text: str, pattern: re.Pattern, group_select: int) -> str:
    """The harness's ``regex`` filter: match ``group_select`` of ``findall`` (the first non-empty
    group of a tuple), stripped; ``[invalid]`` when nothing matches."""
    matches = pattern.findall(text)
    if not matches:
        return INVALID
    m = matches[group_select]
    if isinstance(m, tuple):
        m = next((g for g in m if g), INVALID)
    return m.strip()


def normalise(text: str) -> str:
    for pattern in IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()


def exact_match(prediction: str, reference: str) -> bool:
    """The task's exact_match (regexes_to_ignore, ignore_case)."""
    return normalise(prediction) == normalise(reference)


def proportion(correct: int, n: int) -> dict[str, Any]:
    """{"value", "ci95": [low, high] (Wilson score interval), "correct", "n"}."""
    p, lo, hi = wilson95(correct, n)
    return {"value": p, "ci95": [lo, hi], "correct": correct, "n": n}


def score(answers: Sequence[str], questions: Sequence[MathQuestion]) -> dict[str, Any]:
    """Both filters' predictions, per-question correctness and exact match with intervals."""
    strict = [extract(a, STRICT, 0) for a in answers]
    flexible = [extract(a, FLEXIBLE, -1) for a in answers]
    ok_s = [exact_match(p, q.answer) for p, q in zip(strict, questions, strict=True)]
    ok_f = [exact_match(p, q.answer) for p, q in zip(flexible, questions, strict=True)]
    return {
        "strict": proportion(sum(ok_s), len(questions)),
        "flexible": proportion(sum(ok_f), len(questions)),
        "predictions": {"strict": strict, "flexible": flexible},
        "correct": {"strict": ok_s, "flexible": ok_f},
    }


def gsm8k_eval(
    em: EvalModel,
    questions: Sequence[MathQuestion],
    train: Sequence[MathQuestion],
    shots: int,
    batch_size: int,
    user_max: int | None = None,
) -> dict[str, Any]:
    """Exact match of ``em`` on ``questions`` (strict and flexible, with 95% Wilson intervals),
    the generation facts (:func:`generation.generate_until`), the predicted numbers and the
    first three answers."""
    budget = token_budget(em.max_len, MAX_GEN, user_max)
    prompts = gsm8k_prompts(questions, train, shots)
    answers, facts = generate_until(em, prompts, UNTIL, budget, batch_size, desc=f"gsm8k {em.label}")
    scored = score(answers, questions)
    return {
        **facts,
        "shots": shots,
        "strict": scored["strict"],
        "flexible": scored["flexible"],
        "predictions": scored["predictions"],
        "empty": sum(not a.strip() for a in answers),
        "samples": answers[:3],
        "dtype": runtime.dtype_name(em.dtype),
    }


def load_or_note(args_path, train_path, shots, hub, notes: list[str]):
    """:func:`load_gsm8k`, or None with the Hub's note when its default cannot be loaded."""
    try:
        return load_gsm8k(args_path, train_path, shots, hub)
    except DataUnavailable as e:
        notes.append(str(e))
        return None

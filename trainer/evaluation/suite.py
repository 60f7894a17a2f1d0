"""The whole evaluation of one or more models on the same data: every metric, samples, timings."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dataset.formats import ALPACA_TEMPLATE_NO_INPUT, render_mmlu
from trainer.evaluation.codeexec import pass_at_1
from trainer.evaluation.codetasks import CodeTask
from trainer.evaluation.data import CodeProblem, Doc, MCQuestion
from trainer.evaluation.gsm8k import MathQuestion, gsm8k_eval
from trainer.evaluation.lm import code_loss, lm_per_source
from trainer.evaluation.mmlu import mmlu_eval
from trainer.evaluation.models import EvalModel
from trainer.evaluation.sandbox import Sandbox

log = logging.getLogger(__name__)


SAMPLE_PROMPTS: tuple[tuple[str, str], ...] = (
    ("story", "Once upon a time, there was a little girl named Lily. One day,"),
    ("code", 'def is_prime(n):\n    """Return True if n is a prime number."""\n'),
    (
        "instruction",
        ALPACA_TEMPLATE_NO_INPUT.format(
            instruction="Write a Python function that returns the sum of a list of numbers.", output=""
        ),
    ),
    (
        "question",
        render_mmlu("Tom has 3 apples and buys 4 more. How many apples does he have?", ["6", "7", "8", "12"]),
    ),
)
HUMANEVAL_STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert")


def stop_at(text: str, stops: Sequence[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def samples(
    em: EvalModel, prompts: Sequence[tuple[str, str]], max_new_tokens: int, stops=()
) -> dict[str, str]:
    return {name: stop_at(em.generate(p, max_new_tokens), stops) for name, p in prompts}


@dataclass
class EvalData:
    """What to evaluate on; None / empty means the metric is skipped (with a note)."""

    val_docs: list[Doc] | None = None
    val_where: str | None = None
    mmlu_test: list[MCQuestion] | None = None
    mmlu_dev: list[MCQuestion] | None = None
    mmlu_where: str | None = None
    shots: tuple[int, ...] = (0,)
    code: dict[str, list[CodeProblem]] = field(default_factory=dict)
    code_where: dict[str, str] = field(default_factory=dict)
    code_samples: int = 3
    exec_tasks: dict[str, CodeTask] = field(default_factory=dict)
    sandbox: Sandbox | None = None
    gsm8k_test: list[MathQuestion] | None = None
    gsm8k_train: list[MathQuestion] = field(default_factory=list)
    gsm8k_shots: int = 5
    gsm8k_where: str | None = None
    lm_eval_tasks: list[str] = field(default_factory=list)
    lm_eval_include: str | None = None
    lm_eval_limit: int | None = None
    samples: bool = True
    max_new_tokens: int | None = None  # a cap on every generation (None: each task's own)
    notes: list[str] = field(default_factory=list)


SAMPLE_TOKENS = 64  # new tokens of the fixed samples unless --max_new_tokens says otherwise


def evaluate_model(em: EvalModel, data: EvalData, batch_size: int) -> dict[str, Any]:
    """Every metric ``data`` has for one model."""
    res: dict[str, Any] = {}
    if data.val_docs:
        res["lm"] = lm_per_source(em, data.val_docs, batch_size)
        log.info(
            f"{em.label}: language modelling "
            + " ".join(f"{s}:{v['loss']:.4f}" for s, v in res["lm"].items())
        )
    if data.mmlu_test:
        res["mmlu"] = {}
        for k in data.shots:
            r = mmlu_eval(em, data.mmlu_test, data.mmlu_dev, k, batch_size)
            res["mmlu"][f"{k}-shot"] = r
            log.info(
                f"{em.label}: MMLU {k}-shot {r['acc'] * 100:.2f}% +- {r['acc_se'] * 100:.2f} (macro {r['macro_acc'] * 100:.2f}%) "
                f"on {r['n']} questions in {r['seconds']:.1f}s ({r['questions_per_s']:.0f} q/s, {r['dtype']})"
            )
    if data.code:
        res["code"] = {name: code_loss(em, probs, batch_size, name) for name, probs in data.code.items()}
        log.info(f"{em.label}: code loss " + " ".join(f"{n}:{v['loss']:.4f}" for n, v in res["code"].items()))
        he = data.code.get("humaneval", [])[: data.code_samples]
        if he:
            res["code_samples"] = samples(
                em, [(p.task_id, p.prompt) for p in he], max(data.max_new_tokens or 0, 128), HUMANEVAL_STOP
            )
    if data.exec_tasks and data.sandbox is not None:
        for name, task in data.exec_tasks.items():
            r = pass_at_1(em, task, data.sandbox, batch_size, data.max_new_tokens)
            res.setdefault("exec", {})[name] = r
            res[f"{name}_pass@1"] = r["pass@1"]
            p, (lo, hi) = r["pass@1"]["value"], r["pass@1"]["ci95"]
            log.info(
                f"{em.label}: {name} pass@1 {p * 100:.2f}% [{lo * 100:.2f}, {hi * 100:.2f}] "
                f"({r['pass@1']['correct']}/{r['n']}); generation {r['seconds']:.1f}s "
                f"({r['questions_per_s']:.2f} q/s, up to {r['max_new_tokens']} new tokens), "
                f"tests {r['exec_seconds']:.1f}s; {r['status']}"
            )
    if data.gsm8k_test:
        r = gsm8k_eval(
            em, data.gsm8k_test, data.gsm8k_train, data.gsm8k_shots, batch_size, data.max_new_tokens
        )
        res["gsm8k"] = r
        res["gsm8k_exact_match_strict"], res["gsm8k_exact_match_flexible"] = r["strict"], r["flexible"]
        log.info(
            f"{em.label}: GSM8K {data.gsm8k_shots}-shot exact match strict {r['strict']['value'] * 100:.2f}% "
            f"flexible {r['flexible']['value'] * 100:.2f}% on {r['n']} questions in {r['seconds']:.1f}s "
            f"({r['questions_per_s']:.2f} q/s)"
        )
    if data.lm_eval_tasks:
        from trainer.evaluation.harness import run_lm_eval

        res["lm_eval"] = run_lm_eval(
            em, data.lm_eval_tasks, data.lm_eval_include, batch_size, data.lm_eval_limit, data.max_new_tokens
        )
    if data.samples:
        res["samples"] = samples(em, SAMPLE_PROMPTS, data.max_new_tokens or SAMPLE_TOKENS)
    return res


def evaluate_all(models: list[EvalModel], data: EvalData, batch_size: int) -> dict[str, dict[str, Any]]:
    results = {}
    for em in models:
        log.info(
            f"Evaluating {em.label} ({em.path}; {em.info.get('params', 0) / 1e6:.1f}M params, context {em.max_len})"
        )
        t0 = time.perf_counter()
        results[em.label] = evaluate_model(em, data, batch_size)
        results[em.label]["seconds"] = time.perf_counter() - t0
    return results

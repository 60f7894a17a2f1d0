"""pass@1 by execution: greedy completions of the HumanEval / MBPP prompts (lm-evaluation-harness's
tasks, :mod:`trainer.evaluation.codetasks`) run with their tests in the sandbox
(:mod:`trainer.evaluation.sandbox`); and the self-test that runs the datasets' own solutions
through the same path.

With one greedy sample per problem, pass@1 is the share of problems whose program passes (the
unbiased pass@k estimator of Chen et al. 2021 with n = k = 1); its interval is the 95% Wilson
score interval over the problems.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from tqdm import tqdm

from trainer import runtime
from trainer.evaluation.codetasks import CodeTask
from trainer.evaluation.generation import generate_until, token_budget
from trainer.evaluation.gsm8k import proportion
from trainer.evaluation.models import EvalModel
from trainer.evaluation.sandbox import ExecResult, Sandbox


def run_programs(sandbox: Sandbox, programs: list[str], desc: str) -> tuple[list[ExecResult], float]:
    """The sandbox's results for ``programs`` (in parallel) and the wall seconds it took."""
    t0 = time.perf_counter()
    bar = tqdm(total=len(programs), desc=desc, unit="prog", leave=False, disable=None)
    results = sandbox.run_all(programs, progress=bar.update)
    bar.close()
    return results, time.perf_counter() - t0


def pass_at_1(
    em: EvalModel, task: CodeTask, sandbox: Sandbox, batch_size: int, user_max: int | None = None
) -> dict[str, Any]:
    """pass@1 of ``em`` on ``task``: {"pass@1": {value, ci95, correct, n}, the generation facts,
    ``exec_seconds``, ``status`` counts (passed / failed / timeout / killed / no result), ``empty``
    completions (only whitespace: they run, and fail), the passing task ids and three samples}."""
    budget = token_budget(em.max_len, task.max_gen, user_max)
    prompts = [t.prompt for t in task.items]
    completions, facts = generate_until(
        em, prompts, task.until, budget, batch_size, desc=f"{task.name} {em.label}"
    )
    programs = [t.program(c) for t, c in zip(task.items, completions, strict=True)]
    results, exec_seconds = run_programs(sandbox, programs, f"{task.name} tests {em.label}")
    passed = [r.passed for r in results]
    return {
        **facts,
        "pass@1": proportion(sum(passed), len(passed)),
        "exec_seconds": exec_seconds,
        "status": dict(Counter(r.status for r in results)),
        "empty": sum(not c.strip() for c in completions),
        "passed_ids": [t.task_id for t, ok in zip(task.items, passed, strict=True) if ok],
        "samples": {t.task_id: c for t, c in zip(task.items[:3], completions[:3], strict=True)},
        "dtype": runtime.dtype_name(em.dtype),
    }


def selftest(task: CodeTask, sandbox: Sandbox) -> dict[str, Any]:
    """The dataset's own solutions run with the task's tests through the sandbox: {"passed",
    "n", "failed": [(task_id, status, last output line)], "seconds"}."""
    programs = [t.program(t.solution) for t in task.items]
    results, seconds = run_programs(sandbox, programs, f"{task.name} canonical")
    failed = [
        (t.task_id, r.status, r.reason()) for t, r in zip(task.items, results, strict=True) if not r.passed
    ]
    return {"passed": len(results) - len(failed), "n": len(results), "failed": failed, "seconds": seconds}

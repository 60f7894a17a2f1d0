"""Greedy generation until stop strings, as lm-evaluation-harness's ``HFLM.generate_until`` does it,
batched through the evaluation model's KV cache.

The harness's rules, mirrored here (lm_eval/models/huggingface.py, v0.4.13):

- the context is ``tokenizer(prompt)`` (the tokenizer's default special tokens: BOS for our models
  and their exports, :meth:`EvalModel.prompt_start`) cut from the left to ``max_length -
  max_gen_toks`` tokens, ``max_length`` being the model's context (``EvalModel.max_len``, the
  export's max_position_embeddings);
- up to ``max_gen_toks`` new tokens, greedy (the argmax of the fp32 logits), a row ending at its
  end-of-text token; the stop strings are the task's ``until`` plus the end-of-text token's text;
- the answer is the decoded continuation (special tokens skipped) cut before each stop string in
  turn (``text.split(stop)[0]``).

Where the harness would refuse a task because ``max_gen_toks`` leaves no room for a context
(``max_len <= max_gen_toks``: e.g. HumanEval's 1024 new tokens on a 512-token model), the budget
becomes half the context: :func:`token_budget` says so, and the report records the budget used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from trainer.evaluation.models import EvalModel

log = logging.getLogger(__name__)

HARNESS_MAX_GEN_TOKS = 256  # HFLM's default max_gen_toks, for tasks that do not set one
STOP_WINDOW = 24  # generated tokens decoded to look for a stop string (stops are a few characters)


@dataclass(frozen=True)
class Budget:
    """Tokens for one task on one model: ``context`` for the prompt (cut from the left), ``new``
    generated at most; ``note`` says why ``new`` is below the task's own cap (empty if it is not)."""

    context: int
    new: int
    note: str = ""


def token_budget(max_len: int, task_max: int, user_max: int | None = None) -> Budget:
    """The harness's split of the context (``max_len - new`` for the prompt, ``new`` generated),
    with ``new = min(task_max, user_max)``; when that leaves no room for a prompt, ``new`` is half
    the context. Raises ValueError for a context of fewer than 2 tokens."""
    if max_len < 2:
        raise ValueError(f"a context of {max_len} tokens leaves no room to generate")
    new, note = task_max, ""
    if user_max is not None and user_max < new:
        new, note = user_max, f"--max_new_tokens {user_max}; the task allows {task_max}"
    if new >= max_len:
        new = max_len // 2
        note = f"half the model's {max_len}-token context; the task's {task_max} leave no room for a prompt"
    return Budget(max_len - new, new, note)


def stop_strings(em: EvalModel, until: Sequence[str]) -> list[str]:
    """The task's stop strings plus the end-of-text token's text (``handle_stop_sequences``)."""
    stops = list(until)
    if em.eos_id is not None:
        eos = em.tokenizer.decode([em.eos_id], skip_special_tokens=False)
        if eos not in stops:
            stops.append(eos)
    return stops


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """``postprocess_generated_text``: the text before each (non-empty) stop string, in turn."""
    for s in stops:
        if s:
            text = text.split(s)[0]
    return text


def generate_until(
    em: EvalModel,
    prompts: Sequence[str],
    until: Sequence[str],
    budget: Budget,
    batch_size: int,
    desc: str = "",
) -> tuple[list[str], dict[str, Any]]:
    """The greedy answer to each prompt (see the module docstring) and facts about the run:
    ``truncated`` prompts, answers that ran to the token ``budget.new`` (``hit_limit``),
    ``new_tokens`` generated, ``seconds``. Prompts are run longest first, ``batch_size`` at a time.
    """
    stops = stop_strings(em, until)
    checks = [s for s in stops if s]
    enc = [(em.prompt_start() + ids) for ids in em.encode(prompts)]
    truncated = sum(len(e) > budget.context for e in enc)
    enc = [e[-budget.context :] for e in enc]
    order = sorted(range(len(prompts)), key=lambda i: (-len(enc[i]), prompts[i]))
    texts: list[str] = [""] * len(prompts)
    hit_limit = new_tokens = 0

    def stopped(tokens: list[int]) -> bool:
        tail = em.tokenizer.decode(tokens[-STOP_WINDOW:], skip_special_tokens=True)
        return any(s in tail for s in checks)

    t0 = time.perf_counter()
    bar = tqdm(total=len(prompts), desc=desc or f"generate {em.label}", unit="q", leave=False, disable=None)
    for b in range(0, len(order), batch_size):
        batch = order[b : b + batch_size]
        outs = em.generate_batch([enc[i] for i in batch], budget.new, stopped)
        for i, toks in zip(batch, outs, strict=True):
            if em.eos_id is not None and em.eos_id in toks:
                toks = toks[: toks.index(em.eos_id)]
            elif len(toks) >= budget.new:
                hit_limit += 1
            new_tokens += len(toks)
            texts[i] = cut_at_stops(em.tokenizer.decode(toks, skip_special_tokens=True), stops)
        bar.update(len(batch))
    bar.close()
    seconds = time.perf_counter() - t0
    facts: dict[str, Any] = {
        "n": len(prompts),
        "context": budget.context,
        "max_new_tokens": budget.new,
        "truncated": truncated,
        "hit_limit": hit_limit,
        "new_tokens": new_tokens,
        "seconds": seconds,
        "questions_per_s": len(prompts) / seconds if seconds > 0 else 0.0,
    }
    if budget.note:
        facts["budget_note"] = budget.note
    return texts, facts

"""MMLU as lm-evaluation-harness scores it: the ``mmlu`` prompt, each answer's full continuation,
accuracy with standard errors.

Everything that decides a prediction follows lm-evaluation-harness (>= 0.4.9.2; the ``mmlu``
task of tasks/mmlu/default, its ``_encode_pair`` and ``HFLM._loglikelihood_tokens``):

- prompt: ``description + k solved dev examples + doc_to_text`` (:func:`mmlu_prompt`), the
  question stripped and the choices exactly as they are (dataset.formats.render_mmlu);
  the examples are the first k dev rows of the question's subject, in file order;
- tokens: ``context = start + encode(prompt)``, and each letter's continuation is what
  ``encode(prompt + " X")`` has after the first ``len(context)`` tokens: every token of it is
  scored, so a tokenizer that splits " A" into two tokens is scored on both;
- truncation: the model reads ``(context + continuation)[-(max_len + 1):][:-1]``; a prompt
  longer than the context loses its oldest tokens (no examples are dropped);
- score: the sum of the continuation tokens' log-softmax; the prediction is the argmax, a tie
  going to the first letter.

``start`` is what the tokenizer puts in front of a text by default (``EvalModel.prompt_start``:
BOS for our models and their exports and for Llama 3, nothing for Qwen), as the harness
encodes with the tokenizer's own default. The scorer only saves work around this: the subject
header and examples run once into a KV cache (:class:`~trainer.evaluation.models.MiniGPTEval`),
letters that share ``context + continuation[:-1]`` share one row, and the last layer and LM head
run only where a logit is read.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from dataset.formats import MMLU_LETTERS, render_mmlu
from model.errors import UserError
from trainer import runtime
from trainer.evaluation.data import MCQuestion
from trainer.evaluation.models import EvalModel

log = logging.getLogger(__name__)

TARGET_DELIMITER = " "  # lm-evaluation-harness's default target_delimiter: "Answer:" + " " + "A"
EXAMPLE_DELIMITER = "\n\n"  # its fewshot_delimiter


def mmlu_header(subject: str) -> str:
    """The ``mmlu`` task's description (Hendrycks et al.; lm-evaluation-harness), underscores as spaces."""
    about = f" about {subject.replace('_', ' ')}" if subject else ""
    return f"The following are multiple choice questions (with answers){about}.\n\n"


def _examples_text(subject: str, shots: Sequence[MCQuestion]) -> str:
    return mmlu_header(subject) + "".join(
        render_mmlu(s.question, s.choices, s.answer) + EXAMPLE_DELIMITER for s in shots
    )


def mmlu_prompt(q: MCQuestion, shots: Sequence[MCQuestion]) -> str:
    """The harness's context string: header, k solved examples, then the question ending in
    ``Answer:`` (dataset.formats.render_mmlu, the shape mid-training renders MMLU rows with)."""
    return _examples_text(q.subject, shots) + render_mmlu(q.question, q.choices)


def letter_continuations(
    em: EvalModel, contexts: Sequence[str], groups: Sequence[str]
) -> list[tuple[tuple[int, ...], ...]]:
    """Per context, the tokens of each answer letter as lm-evaluation-harness's ``_encode_pair``
    splits them: ``encode(context + " X")`` after the first ``len(encode(context))`` tokens.

    Every MMLU context ends in the line ``Answer:``. The letters' tokens are read once from that
    last line and checked against the full computation on the first context of every group
    (subject); if any differs (a tokenizer whose merges reach across the line), every context is
    split in full (5 encodings of each prompt instead of 1). Raises UserError when a letter adds
    no token.
    """
    letters = MMLU_LETTERS[:4]

    def full(texts: Sequence[str]) -> list[tuple[tuple[int, ...], ...]]:
        ctx = em.encode(texts)
        whole = [em.encode([t + TARGET_DELIMITER + x for t in texts]) for x in letters]
        return [
            tuple(tuple(whole[j][i][len(ctx[i]) :]) for j in range(len(letters))) for i in range(len(texts))
        ]

    tails = sorted({c[c.rfind("\n") + 1 :] for c in contexts})
    plan = dict(zip(tails, full(tails), strict=True))
    firsts: dict[str, int] = {}
    for i, g in enumerate(groups):
        firsts.setdefault(g, i)
    sample = sorted(firsts.values())
    fast = [plan[c[c.rfind("\n") + 1 :]] for c in contexts]
    if any(
        a != b for a, b in zip(full([contexts[i] for i in sample]), [fast[i] for i in sample], strict=True)
    ):
        log.info(f"{em.label}: letter tokens depend on the whole prompt; splitting each prompt in full")
        fast = full(contexts)
    for c, conts in zip(contexts, fast, strict=True):
        for x, cont in zip(letters, conts, strict=True):
            if not cont:
                raise UserError(
                    f"{em.label}: the tokenizer adds no token for ' {x}' after {c[-40:]!r}; cannot score MMLU"
                )
    return fast


@dataclass
class _Item:
    """One question's forward work: ``rows`` read after the shared ``prefix``; letter j reads the
    last ``len(conts[j])`` positions of row ``row_of[j]``."""

    index: int
    prefix: tuple[int, ...]
    rows: list[list[int]]
    row_of: list[int]
    conts: tuple[tuple[int, ...], ...]
    truncated: bool
    reads: list[int] = field(default_factory=list)  # positions read per row (the longest continuation)


def _mmlu_items(em: EvalModel, questions: list[MCQuestion], shots_of) -> list[_Item]:
    """The harness's inputs for every question, split into a prefix shared by a subject's
    questions (header and examples; nothing is shared by a truncated prompt) and their own rows."""
    start = list(em.prompt_start())
    prompts = [mmlu_prompt(q, shots_of(q)) for q in questions]
    contexts = [start + ids for ids in em.encode(prompts)]
    conts_all = letter_continuations(em, prompts, [q.subject for q in questions])
    prefix_ids: dict[str, tuple[int, ...]] = {}
    for q in questions:
        if q.subject not in prefix_ids:
            # the last token may merge with what follows; it goes with each question's rows
            text = _examples_text(q.subject, shots_of(q))
            prefix_ids[q.subject] = tuple((start + em.encode([text])[0])[:-1])
    items = []
    for i, (q, ctx, conts) in enumerate(zip(questions, contexts, conts_all, strict=True)):
        if max(map(len, conts)) > em.max_len:
            raise UserError(f"{em.label}: an answer letter takes more tokens than the context {em.max_len}")
        truncated = any(len(ctx) + len(c) > em.max_len + 1 for c in conts)
        pre = prefix_ids[q.subject]
        if truncated or len(ctx) <= len(pre) or tuple(ctx[: len(pre)]) != pre:
            pre = ()
        rows: list[list[int]] = []
        keys: dict[tuple[int, ...], int] = {}
        row_of = []
        for c in conts:
            inp = (ctx + list(c))[-(em.max_len + 1) :][:-1]
            key = tuple(inp)
            if key not in keys:
                keys[key] = len(rows)
                rows.append(inp[len(pre) :])
            row_of.append(keys[key])
        item = _Item(i, pre, rows, row_of, conts, truncated)
        item.reads = [
            max(len(c) for c, r in zip(conts, row_of, strict=True) if r == j) for j in range(len(rows))
        ]
        items.append(item)
    return items


def _shot_source(
    questions: list[MCQuestion], dev: list[MCQuestion] | None, k: int
) -> dict[str, list[MCQuestion]]:
    """The first k dev rows per subject (the harness's ``first_n`` sampler); fewer is an error."""
    by_subject: dict[str, list[MCQuestion]] = defaultdict(list)
    for d in dev or []:
        by_subject[d.subject].append(d)
    if not k:
        return {}
    if not by_subject:
        raise UserError(f"MMLU {k}-shot needs dev examples; pass --mmlu_dev FILE or use --shots 0")
    if not by_subject.keys() & {q.subject for q in questions}:
        # subjects that do not match: the first examples of the whole dev split, for every question
        pool = [d for ds in by_subject.values() for d in ds]
        by_subject = defaultdict(list, {q.subject: pool for q in questions})
    short = sorted({q.subject for q in questions if len(by_subject.get(q.subject, [])) < k})
    if short:
        have = min(len(by_subject.get(s, [])) for s in short)
        raise UserError(
            f"MMLU {k}-shot: subject {short[0]!r}"
            + (f" (and {len(short) - 1} more)" if len(short) > 1 else "")
            + f" has only {have} dev examples; use --shots {have} or fewer, or a dev file with {k} per subject"
        )
    return {s: ds[:k] for s, ds in by_subject.items()}


def mmlu_loglikelihoods(
    em: EvalModel, questions: list[MCQuestion], dev: list[MCQuestion] | None, k: int, batch_size: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """(N, 4) fp64 log-likelihoods of the answer letters' continuations (nats; the fp32 log-softmax
    summed over each continuation's tokens), and facts about the prompts: ``shots``, the number
    ``truncated`` to the context, ``tokens`` run through the model past the shared prefixes and
    the ``padding`` share of the batches. Raises UserError for missing dev examples."""
    shots = _shot_source(questions, dev, k)
    items = _mmlu_items(em, questions, lambda q: shots.get(q.subject, []))
    ll = torch.zeros(len(questions), 4, dtype=torch.float64)
    groups: dict[tuple[int, ...], list[_Item]] = defaultdict(list)
    for it in items:
        groups[it.prefix].append(it)
    scored = padded = 0
    bar = tqdm(total=len(items), desc=f"mmlu {k}-shot {em.label}", unit="q", leave=False, disable=None)
    for prefix, group in groups.items():
        group.sort(key=lambda it: -max(map(len, it.rows)))
        b = 0
        while b < len(group):
            chunk: list[_Item] = []
            n_rows = 0
            while b < len(group) and (not chunk or n_rows + len(group[b].rows) <= batch_size):
                chunk.append(group[b])
                n_rows += len(group[b].rows)
                b += 1
            rows = [r for it in chunk for r in it.rows]
            pos = [
                list(range(len(r) - n, len(r)))
                for it in chunk
                for r, n in zip(it.rows, it.reads, strict=True)
            ]
            logprobs = [torch.log_softmax(lg, dim=-1) for lg in em.logits_at(prefix, rows, pos)]
            scored += sum(len(r) for r in rows)
            padded += len(rows) * max(len(r) for r in rows)
            at = 0
            for it in chunk:
                for letter, (r, cont) in enumerate(zip(it.row_of, it.conts, strict=True)):
                    lp = logprobs[at + r][-len(cont) :]
                    ll[it.index, letter] = lp[torch.arange(len(cont)), torch.tensor(cont)].double().sum()
                at += len(it.rows)
            bar.update(len(chunk))
    bar.close()
    facts = {
        "shots": k,
        "truncated": sum(it.truncated for it in items),
        "tokens": scored,
        "padding": 1 - scored / max(padded, 1),
    }
    return ll, facts


def accuracy_stats(correct: Sequence[bool], subjects: Sequence[str]) -> dict[str, Any]:
    """Micro accuracy (over questions) and macro accuracy (mean over subjects), with standard errors.

    Micro SE is the sample standard error of a mean of 0/1 outcomes, sqrt(p(1-p)/(n-1)) (the one
    lm-evaluation-harness reports); macro SE combines the subjects' SEs as for a mean of
    independent estimates: sqrt(sum se_s^2) / S.
    """
    n = len(correct)
    p = sum(correct) / n
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for c, s in zip(correct, subjects, strict=True):
        per[s][0] += int(c)
        per[s][1] += 1
    subj: dict[str, dict[str, Any]] = {s: {"acc": a / m, "n": m} for s, (a, m) in sorted(per.items())}

    def se(acc: float, m: int) -> float:
        return math.sqrt(acc * (1 - acc) / (m - 1)) if m > 1 else 0.0

    macro = sum(v["acc"] for v in subj.values()) / len(subj)
    macro_se = math.sqrt(sum(se(v["acc"], v["n"]) ** 2 for v in subj.values())) / len(subj)
    return {
        "acc": p,
        "acc_se": se(p, n),
        "macro_acc": macro,
        "macro_acc_se": macro_se,
        "n": n,
        "subjects": subj,
    }


def mmlu_predictions(ll: torch.Tensor) -> list[int]:
    """The predicted letter per question: the argmax, a tie going to the first (lowest) letter
    (as numpy's argmax in lm-evaluation-harness's ``acc``)."""
    return [int(row.argmax()) for row in ll]  # torch.argmax returns the first maximal index


def mmlu_eval(
    em: EvalModel, questions: list[MCQuestion], dev: list[MCQuestion] | None, k: int, batch_size: int
) -> dict[str, Any]:
    """Accuracy of ``em`` on ``questions`` with k examples: micro / macro / per subject with SEs,
    the probability mass on the four letters, predicted-letter counts, timing and prompt facts.
    Prompts longer than the context are said in the log (they lose their oldest tokens)."""
    t0 = time.perf_counter()
    ll, facts = mmlu_loglikelihoods(em, questions, dev, k, batch_size)
    seconds = time.perf_counter() - t0
    if facts["truncated"]:
        log.info(
            f"{em.label}: {facts['truncated']} of {len(questions)} MMLU {k}-shot prompts are longer than "
            f"the context {em.max_len} and lose their oldest tokens (as lm-evaluation-harness truncates)"
        )
    pred = mmlu_predictions(ll)
    correct = [p == q.answer for p, q in zip(pred, questions, strict=True)]
    stats = accuracy_stats(correct, [q.subject or "all" for q in questions])
    # how much probability the model puts on the four letters at all: near 0 means it has not
    # learned the answer format yet, whatever its accuracy
    mass = ll.exp().sum(dim=1).mean().item()
    return {
        **stats,
        "letter_mass": mass,
        "pred_counts": {MMLU_LETTERS[i]: pred.count(i) for i in range(ll.shape[1])},
        "seconds": seconds,
        "questions_per_s": len(questions) / seconds if seconds > 0 else 0.0,
        "context": em.max_len,
        "dtype": runtime.dtype_name(em.dtype),
        **facts,
    }

"""MMLU: the standard prompt, the answer letters' log-likelihood (0- and k-shot), accuracy with SEs."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from dataset.formats import MMLU_LETTERS, render_mmlu
from model.errors import UserError
from trainer.evaluation.data import MCQuestion
from trainer.evaluation.models import EvalModel


def mmlu_header(subject: str) -> str:
    """The standard MMLU prompt header (Hendrycks et al.; lm-evaluation-harness)."""
    about = f" about {subject.replace('_', ' ')}" if subject else ""
    return f"The following are multiple choice questions (with answers){about}.\n\n"


def mmlu_prompt(q: MCQuestion, shots: Sequence[MCQuestion]) -> str:
    """Header, k solved examples, then the question ending in ``Answer:`` (dataset.formats.render_mmlu,
    the same shape mid-training renders its MMLU-style rows with)."""
    solved = "".join(render_mmlu(s.question, s.choices, s.answer) + "\n\n" for s in shots)
    return mmlu_header(q.subject) + solved + render_mmlu(q.question, q.choices)


@dataclass(frozen=True)
class AnswerPlan:
    """How the answer letters continue a prompt ending in ``Answer:``, in tokens.

    Each letter's continuation is ``stem + last``: the letters that share a stem are scored from one
    row (for a byte-level BPE that merged " A".." D" the stem is empty: one forward pass, the four
    logits at the last prompt position). A letter's log-likelihood sums over all its tokens.
    """

    stems: tuple[tuple[int, ...], ...]
    letters: tuple[tuple[int, tuple[int, ...]], ...]  # (stem index, continuation tokens) per letter

    @property
    def extra(self) -> int:
        return max(len(s) for s in self.stems)


def answer_plan(em: EvalModel, n_choices: int = 4) -> AnswerPlan:
    probe = render_mmlu("Which letter?", ["a", "b", "c", "d"][:n_choices])
    ctx = em.encode([probe])[0]
    stems: list[tuple[int, ...]] = []
    letters = []
    for full, letter in zip(
        em.encode([f"{probe} {x}" for x in MMLU_LETTERS[:n_choices]]), MMLU_LETTERS, strict=False
    ):
        if full[: len(ctx)] != ctx or len(full) == len(ctx):
            raise UserError(
                f"{em.label}: the tokenizer does not split 'Answer: {letter}' after 'Answer:'; cannot score MMLU"
            )
        cont = tuple(full[len(ctx) :])
        if cont[:-1] not in stems:
            stems.append(cont[:-1])
        letters.append((stems.index(cont[:-1]), cont))
    return AnswerPlan(tuple(stems), tuple(letters))


@dataclass
class _Item:
    index: int
    prefix: tuple[int, ...]
    body: list[int]
    shots: int
    truncated: bool


def _mmlu_items(
    em: EvalModel, questions: list[MCQuestion], dev_by_subject: dict, k: int, extra: int
) -> list[_Item]:
    """Tokenized prompts, each with the largest number of shots <= k that fits the context, split
    into a prefix shared by the questions of a subject (header and examples) and their own body."""
    budget = em.max_len - extra
    start = em.start()
    prefix_text: dict[tuple[str, int], str] = {}
    prefix_ids: dict[tuple[str, int], tuple[int, ...]] = {}

    def prefix(subject: str, j: int) -> tuple[str, tuple[int, ...]]:
        key = (subject, j)
        if key not in prefix_text:
            shots = dev_by_subject.get(subject, [])[:j]
            text = mmlu_header(subject) + "".join(
                render_mmlu(s.question, s.choices, s.answer) + "\n\n" for s in shots
            )
            prefix_text[key] = text
            # the last token may merge with what follows; it goes with each question's body
            prefix_ids[key] = tuple((start + em.encode([text])[0])[:-1])
        return prefix_text[key], prefix_ids[key]

    def shots_for(q: MCQuestion) -> int:
        return min(k, len(dev_by_subject.get(q.subject, [])))

    first = em.encode(
        [prefix(q.subject, shots_for(q))[0] + render_mmlu(q.question, q.choices) for q in questions]
    )
    items = []
    for i, (q, toks) in enumerate(zip(questions, first, strict=True)):
        j = shots_for(q)
        ids = start + toks
        while len(ids) > budget and j > 0:
            j -= 1
            ids = start + em.encode([prefix(q.subject, j)[0] + render_mmlu(q.question, q.choices)])[0]
        truncated = len(ids) > budget
        pre = prefix(q.subject, j)[1]
        if truncated:
            items.append(_Item(i, (), ids[-budget:], j, True))
        elif ids[: len(pre)] == list(pre):
            items.append(_Item(i, pre, ids[len(pre) :], j, False))
        else:  # the prompt tokenizes differently across the prefix boundary: no sharing for this one
            items.append(_Item(i, (), ids, j, False))
    return items


def mmlu_loglikelihoods(
    em: EvalModel, questions: list[MCQuestion], dev: list[MCQuestion] | None, k: int, batch_size: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """(N, 4) log-likelihoods of the answer letters, and facts about the prompts (shots, truncation)."""
    plan = answer_plan(em)
    dev_by_subject: dict[str, list[MCQuestion]] = defaultdict(list)
    for d in dev or []:
        dev_by_subject[d.subject].append(d)
    if k and not dev_by_subject:
        raise UserError(f"MMLU {k}-shot needs dev examples; pass --mmlu_dev FILE or use --shots 0")
    if k and dev_by_subject and not dev_by_subject.keys() & {q.subject for q in questions}:
        # subjects that do not match: examples from the whole dev split, as one "subject"
        pool = [d for ds in dev_by_subject.values() for d in ds]
        dev_by_subject = defaultdict(list, {q.subject: pool for q in questions})
    items = _mmlu_items(em, questions, dev_by_subject, k, plan.extra)
    ll = torch.zeros(len(questions), len(plan.letters), dtype=torch.float64)
    groups: dict[tuple[int, ...], list[_Item]] = defaultdict(list)
    for it in items:
        groups[it.prefix].append(it)
    n_rows = len(plan.stems)
    rows_per_batch = max(1, batch_size // n_rows)
    scored = padded = 0  # tokens run through the model past the shared prefixes; with padding
    bar = tqdm(total=len(items), desc=f"mmlu {k}-shot {em.label}", unit="q", leave=False, disable=None)
    for prefix, group in groups.items():
        group.sort(key=lambda it: -len(it.body))
        for b in range(0, len(group), rows_per_batch):
            chunk = group[b : b + rows_per_batch]
            rows, pos = [], []
            for it in chunk:
                for stem in plan.stems:
                    rows.append(it.body + list(stem))
                    pos.append(list(range(len(it.body) - 1, len(it.body) + len(stem))))
            logits = em.logits_at(prefix, rows, pos)
            scored += sum(len(r) for r in rows)
            padded += len(rows) * max(len(r) for r in rows)
            for c, it in enumerate(chunk):
                for letter, (si, cont) in enumerate(plan.letters):
                    lp = torch.log_softmax(logits[c * n_rows + si], dim=-1)
                    ll[it.index, letter] = sum(lp[j, t].item() for j, t in enumerate(cont))
            bar.update(len(chunk))
    bar.close()
    facts = {
        "mean_shots": sum(it.shots for it in items) / len(items),
        "truncated": sum(it.truncated for it in items),
        "tokens": scored,
        "padding": 1 - scored / max(padded, 1),
        "fewer_shots": sum(
            it.shots < min(k, len(dev_by_subject.get(questions[it.index].subject, []))) for it in items
        ),
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
    subj = {s: {"acc": a / m, "n": m} for s, (a, m) in sorted(per.items())}

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


def mmlu_eval(
    em: EvalModel, questions: list[MCQuestion], dev: list[MCQuestion] | None, k: int, batch_size: int
) -> dict[str, Any]:
    t0 = time.perf_counter()
    ll, facts = mmlu_loglikelihoods(em, questions, dev, k, batch_size)
    seconds = time.perf_counter() - t0
    pred = ll.argmax(dim=1).tolist()
    correct = [p == q.answer for p, q in zip(pred, questions, strict=True)]
    stats = accuracy_stats(correct, [q.subject or "all" for q in questions])
    # how much probability the model puts on the four letters at all: near 0 means it has not
    # learned the answer format yet, whatever its accuracy
    mass = ll.exp().sum(dim=1).mean().item()
    return {
        **stats,
        "shots": k,
        "letter_mass": mass,
        "pred_counts": {MMLU_LETTERS[i]: pred.count(i) for i in range(ll.shape[1])},
        "seconds": seconds,
        "questions_per_s": len(questions) / seconds if seconds > 0 else 0.0,
        **facts,
    }

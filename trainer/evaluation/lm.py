"""Loss-based metrics: per-token NLL of chosen targets, language modelling per source, code loss.

Language modelling scores each document on its own as ``BOS doc EOS`` (long documents in
windows of the model's context, every token predicted once), so per-source bits per byte are
exact. Code loss is the loss of the canonical solutions given their prompts.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.nn.functional as F
from tqdm import tqdm

from trainer.evaluation.data import CodeProblem, Doc
from trainer.evaluation.models import EvalModel

LOGITS_BUDGET = 1 << 28  # fp32 logits held at once (1 GiB)


def _batches(order: list[int], pos: list[list[int]], batch_size: int, vocab: int) -> list[list[int]]:
    """Indices in ``order`` (most positions first) cut into batches; rows with many positions
    and a big vocabulary get smaller batches so the (positions x vocab) fp32 logits stay under
    ~1 GiB."""
    out: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        limit = max(1, min(batch_size, LOGITS_BUDGET // max(1, len(pos[cur[0] if cur else i]) * vocab)))
        if len(cur) >= limit:
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


def target_nll(
    em: EvalModel, seqs: list[list[int]], n_scored: list[int], batch_size: int, desc: str = ""
) -> list[torch.Tensor]:
    """Per-token NLL (nats, fp64) of the last ``n_scored[i]`` tokens of each sequence given the
    tokens before them. Sequences longer than ``em.max_len + 1`` lose their oldest tokens."""
    vocab = len(em.tokenizer)
    span = max(1, LOGITS_BUDGET // vocab)  # a row with more scored positions is run once per span
    rows, pos, tgt, owner = [], [], [], []
    for k, (s, n) in enumerate(zip(seqs, n_scored, strict=True)):
        s = s[-(em.max_len + 1) :]
        n = min(n, len(s) - 1)
        for a in range(len(s) - 1 - n, len(s) - 1, span):
            b = min(a + span, len(s) - 1)
            rows.append(s[:-1])
            pos.append(list(range(a, b)))
            tgt.append(s[a + 1 : b + 1])
            owner.append(k)
    parts: list[torch.Tensor] = [torch.zeros(0, dtype=torch.float64)] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: (-len(pos[i]), -len(rows[i])))
    for batch in tqdm(
        _batches(order, pos, batch_size, vocab), desc=desc, unit="batch", leave=False, disable=None
    ):
        logits = em.logits_at((), [rows[i] for i in batch], [pos[i] for i in batch])
        for i, lg in zip(batch, logits, strict=True):
            t = torch.tensor(tgt[i], dtype=torch.long)
            parts[i] = F.cross_entropy(lg, t, reduction="none").double()
    out: list[list[torch.Tensor]] = [[] for _ in seqs]
    for i, k in enumerate(owner):
        out[k].append(parts[i])
    return [torch.cat(p) if p else torch.zeros(0, dtype=torch.float64) for p in out]


def _loss_stats(nll_sum: float, tokens: int, bits_nll: float, n_bytes: int) -> dict[str, float]:
    loss = nll_sum / max(tokens, 1)
    return {
        "loss": loss,
        "ppl": math.exp(min(loss, 700.0)),
        "bpb": bits_nll / math.log(2) / max(n_bytes, 1),
        "tokens": tokens,
        "bytes": n_bytes,
    }


def lm_per_source(em: EvalModel, docs: list[Doc], batch_size: int) -> dict[str, dict[str, float]]:
    """Loss (nats/token, the EOS prediction included, as in training), perplexity and bits per
    byte (the text's tokens only, over its UTF-8 bytes) per source and over all ("all")."""
    ids = em.encode([d.text for d in docs])
    seqs, n_scored, owner = [], [], []
    for k, toks in enumerate(ids):
        full = em.start() + toks + ([em.eos_id] if em.eos_id is not None else [])
        # windows of max_len + 1 tokens overlapping by one: each token is predicted exactly once
        for s in range(0, len(full) - 1, em.max_len):
            w = full[s : s + em.max_len + 1]
            seqs.append(w)
            n_scored.append(len(w) - 1)
            owner.append(k)
    nll = target_nll(em, seqs, n_scored, batch_size, desc=f"lm {em.label}")
    acc: dict[str, list[float]] = defaultdict(
        lambda: [0.0, 0, 0.0, 0, 0]
    )  # nll, tokens, text nll, bytes, docs
    last_window = {k: i for i, k in enumerate(owner)}
    for i, k in enumerate(owner):
        text_nll = nll[i].sum().item()
        if last_window[k] == i and em.eos_id is not None:
            text_nll -= nll[i][-1].item()  # the EOS prediction has no bytes
        for key in (docs[k].source, "all"):
            a = acc[key]
            a[0] += nll[i].sum().item()
            a[1] += len(nll[i])
            a[2] += text_nll
    for d in docs:
        for key in (d.source, "all"):
            acc[key][3] += len(d.text.encode("utf-8"))
            acc[key][4] += 1
    out = {}
    for key in sorted(acc, key=lambda s: (s == "all", s)):
        a = acc[key]
        out[key] = {**_loss_stats(a[0], int(a[1]), a[2], int(a[3])), "docs": a[4]}
    return out


def code_loss(em: EvalModel, problems: list[CodeProblem], batch_size: int, name: str) -> dict[str, float]:
    """Loss of the canonical solutions given their prompts (lm-evaluation-harness split: the
    solution's tokens are those of ``prompt + solution`` after the prompt's own tokens)."""
    ctx = em.encode([p.prompt for p in problems])
    whole = em.encode([p.prompt + p.solution for p in problems])
    seqs = [em.start() + w for w in whole]
    n_cont = [max(1, len(w) - len(c)) for w, c in zip(whole, ctx, strict=True)]
    nll = target_nll(em, seqs, n_cont, batch_size, desc=f"{name} {em.label}")
    total = sum(x.sum().item() for x in nll)
    tokens = sum(len(x) for x in nll)
    # bytes of the scored part: all of the solution unless a long prompt+solution lost its start
    n_bytes = sum(
        len(p.solution.encode("utf-8")) * len(x) / n for p, x, n in zip(problems, nll, n_cont, strict=True)
    )
    return {**_loss_stats(total, tokens, total, int(round(n_bytes))), "problems": len(problems)}

"""Evaluation of one or more checkpoints side by side (the library behind eval_llm.py).

Metrics, each computed for every model on exactly the same data:

- language modelling per source: loss, perplexity and bits per byte of a prepared val split,
  each document scored on its own as ``BOS doc EOS`` (long documents in windows of the model's
  context, every token predicted once), so per-source bits per byte are exact;
- MMLU: the log-likelihood of the answer letters after the standard prompt (0-shot and k-shot),
  micro / macro / per-subject accuracy with standard errors;
- code: loss of the canonical HumanEval and MBPP solutions given their prompts, and greedy
  generations for a few HumanEval prompts;
- samples: greedy generations for fixed story / code / question prompts.

A model is an :class:`EvalModel`: our checkpoint (rebuilt from the file alone) or a
transformers model folder such as the one scripts/export_hf.py writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dataset.formats import ALPACA_TEMPLATE_NO_INPUT, MMLU_LETTERS, render_mmlu
from model.errors import UserError
from model.model import KVCache, MiniGPTForCausalLM, rotate_half
from trainer.checkpoint import load_model, resolve_weight
from trainer.eval_data import CodeProblem, Doc, MCQuestion

log = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# The context a checkpoint is scored with when it does not record its training length: the
# trainers' default --max_seq_len. Positions past the trained length only add noise.
DEFAULT_CONTEXT = 512
EXPORT_META = "minigpt.json"  # written by scripts/export_hf.py beside the transformers files


# --------------------------------------------------------------------------- models


class EvalModel:
    """A causal LM to score and sample from, with its tokenizer and scoring context length.

    Subclasses provide ``_hidden_at`` (final hidden states at chosen positions, after a shared prefix),
    ``_head`` (hidden -> logits) and ``_generate``; the scoring helpers are shared.
    """

    kind = "?"

    def __init__(self, label: str, path: str, tokenizer, max_len: int, device, dtype, info: dict):
        self.label, self.path, self.tokenizer, self.max_len = label, path, tokenizer, max_len
        self.device, self.dtype, self.info = torch.device(device), dtype, info
        self.bos_id = tokenizer.bos_token_id
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.eos_id or 0)

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens (BOS is added by the callers)."""
        return [
            e.ids
            for e in self.tokenizer.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)
        ]

    def start(self) -> list[int]:
        """What every scored sequence starts with: BOS, as in training (``BOS doc EOS``)."""
        return [self.bos_id] if self.bos_id is not None else []

    def _hidden_at(
        self, ids: torch.Tensor, prefix: tuple[int, ...], bi: torch.Tensor, pi: torch.Tensor
    ) -> torch.Tensor:
        """Final hidden states (N, hidden) at rows ``bi``, positions ``pi`` of ``ids`` read after ``prefix``."""
        raise NotImplementedError

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _generate(self, ids: list[int], max_new_tokens: int) -> list[int]:
        raise NotImplementedError

    @torch.no_grad()
    def logits_at(
        self, prefix: Sequence[int], rows: Sequence[Sequence[int]], positions: Sequence[Sequence[int]]
    ) -> list[torch.Tensor]:
        """fp32 logits at ``positions[i]`` of ``rows[i]``, each row read after the shared ``prefix``.

        Rows are right-padded into one batch (padding after a token cannot change it under a
        causal mask) and the LM head runs only at the requested positions.
        """
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        bi = torch.tensor([i for i, p in enumerate(positions) for _ in p], dtype=torch.long)
        pi = torch.tensor([j for p in positions for j in p], dtype=torch.long)
        with self.autocast():
            h = self._hidden_at(ids.to(self.device), tuple(prefix), bi.to(self.device), pi.to(self.device))
            logits = self._head(h).float().cpu()
        return list(torch.split(logits, [len(p) for p in positions]))

    @torch.no_grad()
    def generate(self, prompt: str, max_new_tokens: int) -> str:
        """Greedy continuation of ``prompt`` (up to EOS), decoded."""
        ids = self.start() + self.encode([prompt])[0]
        # prompt + continuation within the scoring context; the prompt keeps at least half of it
        ids = ids[-max(self.max_len - max_new_tokens, self.max_len // 2) :]
        with self.autocast():
            new = self._generate(ids, min(max_new_tokens, self.max_len - len(ids)))
        if self.eos_id is not None and self.eos_id in new:
            new = new[: new.index(self.eos_id)]
        return self.tokenizer.decode(new, skip_special_tokens=True)


class MiniGPTEval(EvalModel):
    """Our checkpoint. A shared prompt prefix is run once into a KV cache and reused by every row."""

    kind = "minigpt"

    def __init__(self, model: MiniGPTForCausalLM, *args, **kw):
        super().__init__(*args, **kw)
        self.model = model.to(self.device).eval()
        if self.dtype != torch.float32:
            # Autocast would cast these weights to the same values on every forward pass; doing it
            # once saves that copy. Embedding, norms and RoPE stay fp32, so the residual stream and
            # the results are exactly those of autocast (the tied LM head is cast where used).
            for layer in self.model.model.layers:
                layer.self_attn.to(self.dtype)
                layer.mlp.to(self.dtype)
        self._prefix_key: tuple[int, ...] | None = None
        self._prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _run_layers(
        self, ids: torch.Tensor, cache: KVCache | None, layers: int | None = None
    ) -> torch.Tensor:
        # MiniGPTForCausalLM.forward without the LM head (test_eval checks they agree): scoring
        # needs logits at a few positions only, and the head is 1/8 of the 26M model's FLOPs.
        m, t = self.model, ids.shape[1]
        start = cache.pos if cache is not None else 0
        cos, sin = m.rope_cos[start : start + t], m.rope_sin[start : start + t]
        x = m.model.embed_tokens(ids)
        for layer in m.model.layers[:layers]:
            x = layer(x, cos, sin, cache)
        if layers is not None:
            return x
        if cache is not None:
            cache.pos += t
        return m.model.norm(x)

    def _last_layer_at(
        self, x: torch.Tensor, cache: KVCache | None, bi: torch.Tensor, pi: torch.Tensor
    ) -> torch.Tensor:
        """The last decoder layer and the final norm at the selected positions only.

        Keys and values still cover every position, but queries, the attention output and the MLP
        run where a logit is wanted: 1/8 less work for the 8-layer model when MMLU needs one
        position per row. Mirrors DecoderLayer / Attention (checked against model.forward in
        test_eval); dropout is off in eval mode.
        """
        m = self.model
        layer, idx = m.model.layers[-1], len(m.model.layers) - 1
        attn = layer.self_attn
        b, t, _ = x.shape
        past = cache.pos if cache is not None else 0
        h = layer.input_layernorm(x)
        k = attn.k_proj(h).view(b, t, attn.n_kv, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(b, t, attn.n_kv, attn.head_dim).transpose(1, 2)
        cos, sin = m.rope_cos[past : past + t].to(k.dtype), m.rope_sin[past : past + t].to(k.dtype)
        k = k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(idx, k, v)
        # the selections of each row side by side: slot j of row r holds its j-th position
        counts = torch.bincount(bi, minlength=b)
        first = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(bi), device=bi.device) - first[bi]
        qpos = torch.zeros(b, int(counts.max()), dtype=torch.long, device=bi.device)
        qpos[bi, slot] = pi
        rows = torch.arange(b, device=bi.device)[:, None]
        hq = h[rows, qpos]
        q = attn.q_proj(hq).view(b, qpos.shape[1], attn.n_heads, attn.head_dim).transpose(1, 2)
        cq, sq = m.rope_cos[past + qpos][:, None].to(q.dtype), m.rope_sin[past + qpos][:, None].to(q.dtype)
        q = q * cq + rotate_half(q) * sq
        if attn.n_kv != attn.n_heads:
            rep = attn.n_heads // attn.n_kv
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        mask = torch.arange(k.shape[2], device=bi.device)[None, None, :] <= (past + qpos)[:, :, None]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
        xq = x[rows, qpos] + attn.o_proj(y.transpose(1, 2).reshape(b, qpos.shape[1], -1))
        xq = xq + layer.mlp(layer.post_attention_layernorm(xq))
        if cache is not None:
            cache.pos += t
        return m.model.norm(xq)[bi, slot]

    def _cache_dtype(self) -> torch.dtype:
        return torch.float32 if self.dtype == torch.float32 else self.dtype

    def _with_prefix(self, ids: torch.Tensor, prefix: tuple[int, ...]) -> KVCache | None:
        """A KV cache of batch size len(ids) holding ``prefix`` (computed once per distinct prefix)."""
        if not prefix:
            return None
        if prefix != self._prefix_key:
            one = KVCache(self.model.config, 1, len(prefix), self.device, self._cache_dtype())
            self._run_layers(torch.tensor([prefix], device=self.device), one)
            self._prefix_key, self._prefix_kv = prefix, list(zip(one.k, one.v, strict=True))
        b, p = ids.shape[0], len(prefix)
        cache = KVCache(self.model.config, b, p + ids.shape[1], self.device, self._cache_dtype())
        for layer, (k, v) in enumerate(self._prefix_kv):
            cache.k[layer][:, :, :p] = k
            cache.v[layer][:, :, :p] = v
        cache.pos = p
        return cache

    def _hidden_at(
        self, ids: torch.Tensor, prefix: tuple[int, ...], bi: torch.Tensor, pi: torch.Tensor
    ) -> torch.Tensor:
        cache = self._with_prefix(ids, prefix)
        if len(bi) * 2 > ids.numel():  # most positions wanted (language modelling): the plain path
            return self._run_layers(ids, cache)[bi, pi]
        x = self._run_layers(ids, cache, layers=len(self.model.model.layers) - 1)
        return self._last_layer_at(x, cache, bi, pi)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(h)

    def _generate(self, ids: list[int], max_new_tokens: int) -> list[int]:
        x = torch.tensor([ids], device=self.device)
        out = self.model.generate(x, max_new_tokens, temperature=0.0, eos_token_id=self.eos_id)
        return out[0, len(ids) :].tolist()


class HFEval(EvalModel):
    """A transformers causal LM folder (no remote code). The prefix is simply prepended."""

    kind = "hf"

    def __init__(self, model, *args, **kw):
        super().__init__(*args, **kw)
        self.model = model.to(self.device).eval()

    def _hidden_at(
        self, ids: torch.Tensor, prefix: tuple[int, ...], bi: torch.Tensor, pi: torch.Tensor
    ) -> torch.Tensor:
        if prefix:
            pre = torch.tensor(prefix, device=ids.device).expand(ids.shape[0], -1)
            ids = torch.cat([pre, ids], dim=1)
        h = self.model.model(input_ids=ids, use_cache=False).last_hidden_state
        return h[bi, pi + len(prefix)]

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(h)

    def _generate(self, ids: list[int], max_new_tokens: int) -> list[int]:
        x = torch.tensor([ids], device=self.device)
        out = self.model.generate(
            x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
        )
        return out[0, len(ids) :].tolist()


@dataclass(frozen=True)
class ModelSpec:
    """One model named on the command line: ``--weight NAME`` or ``--hf_path DIR``."""

    kind: str  # "weight" | "hf"
    value: str


def _minigpt_context(meta: dict, max_positions: int) -> int:
    return min(int(meta.get("max_seq_len") or DEFAULT_CONTEXT), max_positions)


def load_eval_model(
    spec: ModelSpec,
    save_dir: str,
    hidden_size: int | None,
    device: str,
    dtype: torch.dtype,
    max_len: int | None,
) -> EvalModel:
    """Rebuild a model and its tokenizer from a checkpoint (or a transformers folder) alone."""
    if spec.kind == "weight":
        path = resolve_weight(spec.value, save_dir, hidden_size)
        model, tok, ckpt = load_model(path)
        cfg, meta = model.config, ckpt["meta"]
        context = max_len or _minigpt_context(meta, cfg.max_position_embeddings)
        info = {
            "params": model.num_params(),
            "architecture": f"{cfg.hidden_size}x{cfg.num_hidden_layers}, {cfg.num_attention_heads} heads "
            f"({cfg.num_key_value_heads} kv), vocab {cfg.vocab_size}",
            "stage": meta.get("stage"),
            "step": meta.get("step"),
            "tokens_seen": meta.get("tokens_seen"),
            "finished": meta.get("finished"),
            "parent": (meta.get("parent") or {}).get("path"),
        }
        return MiniGPTEval(model, path.stem, str(path), tok, context, device, dtype, info)
    return load_hf_dir(spec.value, device, dtype, max_len)


def load_hf_dir(path: str, device: str, dtype: torch.dtype, max_len: int | None) -> HFEval:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise UserError(f"--hf_path {folder}: no config.json there (export one with scripts/export_hf.py)")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:  # noqa: BLE001 - unknown architecture, missing weights, ...: the user's folder
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise UserError(
            f"--hf_path {folder}: cannot load it with transformers ({type(e).__name__}: {first})"
        ) from None
    if not hasattr(model, "model") or not hasattr(model, "lm_head"):
        raise UserError(
            f"--hf_path {folder}: {type(model).__name__} has no .model/.lm_head (a decoder-only LM is needed)"
        )
    meta_file = folder / EXPORT_META
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    positions = int(getattr(model.config, "max_position_embeddings", DEFAULT_CONTEXT))
    context = max_len or int(meta.get("context_length") or min(positions, 4096))
    info = {
        "params": sum(p.numel() for p in model.parameters()),
        "architecture": getattr(model.config, "model_type", type(model).__name__),
        "stage": meta.get("stage"),
        "step": meta.get("step"),
        "tokens_seen": meta.get("tokens_seen"),
        "exported_from": meta.get("source_checkpoint"),
    }
    return HFEval(model, f"hf:{folder.name}", str(folder), tok, context, device, dtype, info)


def unique_labels(models: list[EvalModel]) -> None:
    """Two models with the same name (e.g. pretrain_512 from two folders) get a #2 suffix."""
    seen: dict[str, int] = defaultdict(int)
    for m in models:
        seen[m.label] += 1
        if seen[m.label] > 1:
            m.label = f"{m.label}#{seen[m.label]}"


# --------------------------------------------------------------------------- scoring


def _batches(order: list[int], rows: list[list[int]], batch_size: int, vocab: int) -> list[list[int]]:
    """Indices in ``order`` (longest first) cut into batches; long rows with a big vocabulary get
    smaller batches so the (rows x positions x vocab) fp32 logits stay under ~1 GB."""
    out, cur = [], []
    for i in order:
        limit = max(1, min(batch_size, (1 << 28) // max(1, len(rows[cur[0] if cur else i]) * vocab)))
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
    rows, pos, tgt = [], [], []
    for s, n in zip(seqs, n_scored, strict=True):
        s = s[-(em.max_len + 1) :]
        n = min(n, len(s) - 1)
        rows.append(s[:-1])
        pos.append(list(range(len(s) - 1 - n, len(s) - 1)))
        tgt.append(s[len(s) - n :])
    out: list[torch.Tensor] = [torch.zeros(0, dtype=torch.float64)] * len(seqs)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    vocab = len(em.tokenizer)
    for batch in tqdm(
        _batches(order, rows, batch_size, vocab), desc=desc, unit="batch", leave=False, disable=None
    ):
        logits = em.logits_at((), [rows[i] for i in batch], [pos[i] for i in batch])
        for i, lg in zip(batch, logits, strict=True):
            t = torch.tensor(tgt[i], dtype=torch.long)
            out[i] = F.cross_entropy(lg, t, reduction="none").double()
    return out


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
        out[key] = {**_loss_stats(a[0], a[1], a[2], a[3]), "docs": a[4]}
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


# --------------------------------------------------------------------------- MMLU


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


# --------------------------------------------------------------------------- samples


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


# --------------------------------------------------------------------------- the whole run


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
    samples: bool = True
    max_new_tokens: int = 64
    notes: list[str] = field(default_factory=list)


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
                f"on {r['n']} questions in {r['seconds']:.1f}s ({r['questions_per_s']:.0f} q/s)"
            )
    if data.code:
        res["code"] = {name: code_loss(em, probs, batch_size, name) for name, probs in data.code.items()}
        log.info(f"{em.label}: code loss " + " ".join(f"{n}:{v['loss']:.4f}" for n, v in res["code"].items()))
        he = data.code.get("humaneval", [])[: data.code_samples]
        if he:
            res["code_samples"] = samples(
                em, [(p.task_id, p.prompt) for p in he], max(data.max_new_tokens, 128), HUMANEVAL_STOP
            )
    if data.samples:
        res["samples"] = samples(em, SAMPLE_PROMPTS, data.max_new_tokens)
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

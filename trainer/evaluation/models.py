"""The models eval_llm.py scores: our checkpoints and transformers folders, behind one interface.

:class:`EvalModel` gives every metric the same calls (``encode``, ``logits_at``, ``generate``);
:class:`MiniGPTEval` runs our model (a shared prompt prefix computed once into a KV cache, the
last layer and LM head only where a logit is read), :class:`HFEval` a transformers causal LM.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from dataset.tokenizer import default_prefix, doc_start, encode_texts, exported_prefix, pad_id
from model.errors import UserError
from model.hf import EXPORT_META
from model.model import KVCache, MiniGPTForCausalLM
from trainer import runtime, weights
from trainer.weights import trained_context

log = logging.getLogger(__name__)

StopFn = Callable[[list[int]], bool]  # a generated row so far -> whether it has ended


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
        self.pad_id = pad_id(tokenizer)
        self._prompt_start = default_prefix(tokenizer)

    def autocast(self):
        return runtime.autocast(self.device, self.dtype)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, as text (dataset.tokenizer.encode_texts; BOS is added by the callers)."""
        return encode_texts(self.tokenizer, texts)

    def start(self) -> list[int]:
        """What every sequence scored for loss starts with: what training started each document
        with (BOS when the tokenizer has one, dataset.tokenizer.doc_start)."""
        return doc_start(self.tokenizer)

    def prompt_start(self) -> list[int]:
        """What a prompt (MMLU, samples) starts with: what lm-evaluation-harness puts there for this
        model, i.e. what ``tokenizer(text)`` adds by default (dataset.tokenizer.default_prefix);
        for our checkpoints, what the tokenizer of their export adds (MiniGPTEval)."""
        return list(self._prompt_start)

    def _hidden_at(
        self, ids: torch.Tensor, prefix: tuple[int, ...], bi: torch.Tensor, pi: torch.Tensor
    ) -> torch.Tensor:
        """Final hidden states (N, hidden) at rows ``bi``, positions ``pi`` of ``ids`` read after ``prefix``."""
        raise NotImplementedError

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def generate_batch(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop: StopFn | None = None
    ) -> list[list[int]]:
        """Greedy continuations (token ids, fp32 argmax) of each prompt, generated side by side:
        a row ends at its end-of-text token (included) or when ``stop(tokens so far)`` is true,
        after ``max_new_tokens`` at most. Each row is exactly what the prompt alone would give:
        prompts are left-padded, the padding masked (and, for our model, positions counted from
        each prompt's own start). Prompts must fit in the model's positions with the new tokens."""
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
        ids = self.prompt_start() + self.encode([prompt])[0]
        # prompt + continuation within the scoring context; the prompt keeps at least half of it
        ids = ids[-max(self.max_len - max_new_tokens, self.max_len // 2) :]
        new = self.generate_batch([ids], min(max_new_tokens, self.max_len - len(ids)))[0]
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
            # once saves that copy with bit-identical results (the tied LM head is cast where used).
            self.model.cast_layer_matmuls_(self.dtype)
        # BOS for our own tokenizer, an imported model's own default otherwise: eval_llm scores the
        # checkpoint as lm-evaluation-harness scores its export (scripts/export_hf.py)
        self._prompt_start = exported_prefix(self.tokenizer)
        self._prefix_key: tuple[int, ...] | None = None
        self._prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _cache_dtype(self) -> torch.dtype:
        return torch.float32 if self.dtype == torch.float32 else self.dtype

    def _with_prefix(self, ids: torch.Tensor, prefix: tuple[int, ...]) -> KVCache | None:
        """A KV cache of batch size len(ids) holding ``prefix`` (computed once per distinct prefix)."""
        if not prefix:
            return None
        if prefix != self._prefix_key:
            one = KVCache(self.model.config, 1, len(prefix), self.device, self._cache_dtype())
            self.model.forward_hidden(torch.tensor([prefix], device=self.device), one)
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
            return self.model.forward_hidden(ids, cache)[bi, pi]
        # a few positions (MMLU: one per row): the last layer runs only there
        return self.model.forward_hidden(ids, cache, at=(bi, pi))

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(h)

    @torch.no_grad()
    def generate_batch(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop: StopFn | None = None
    ) -> list[list[int]]:
        """Left padding is a document of its own (``doc_ids`` 0, the prompt 1) and each prompt's
        positions start at 0, so the block-causal mask and RoPE make every row exactly the prompt
        alone; finished rows leave the batch (their cache rows are dropped)."""
        b, width = len(prompts), max(len(p) for p in prompts)
        if b == 0 or max_new_tokens <= 0:
            return [[] for _ in prompts]
        dev = self.device
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        docs = torch.zeros((b, width), dtype=torch.long)
        pos = torch.zeros((b, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            docs[i, width - len(p) :] = 1
            pos[i, width - len(p) :] = torch.arange(len(p))
        ids, docs, pos = ids.to(dev), docs.to(dev), pos.to(dev)
        cache = KVCache(self.model.config, b, width + max_new_tokens, dev, self._cache_dtype())
        rows = torch.arange(b, device=dev)
        out: list[list[int]] = [[] for _ in prompts]
        alive = list(range(b))  # original index of each row still in the batch
        last = pos[:, -1]
        with self.autocast():
            h = self.model.forward_hidden(
                ids, cache, at=(rows, torch.full_like(rows, width - 1)), positions=pos, doc_ids=docs
            )
            for step in range(max_new_tokens):
                nxt = self._head(h).float().argmax(dim=-1)
                keep = []
                for j, tok in enumerate(nxt.tolist()):
                    i = alive[j]
                    out[i].append(tok)
                    done = tok == self.eos_id or (stop is not None and stop(out[i]))
                    if not done:
                        keep.append(j)
                if not keep or step == max_new_tokens - 1:
                    break
                if len(keep) < len(alive):
                    sel = torch.tensor(keep, device=dev)
                    cache.k = [k[sel] for k in cache.k]
                    cache.v = [v[sel] for v in cache.v]
                    assert cache.docs is not None
                    cache.docs = cache.docs[sel]
                    nxt, last = nxt[sel], last[sel]
                    alive = [alive[j] for j in keep]
                last = last + 1
                h = self.model.forward_hidden(
                    nxt[:, None], cache, positions=last[:, None], doc_ids=torch.ones_like(last)[:, None]
                )[:, -1]
        return out


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

    @torch.no_grad()
    def generate_batch(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop: StopFn | None = None
    ) -> list[list[int]]:
        """transformers' ``generate`` (greedy, the model's own end-of-text ids from its generation
        config, as lm-evaluation-harness calls it) on the left-padded batch with its attention
        mask; ``stop`` is checked per row by a stopping criterion."""
        from transformers import StoppingCriteria, StoppingCriteriaList

        b, width = len(prompts), max(len(p) for p in prompts)
        if b == 0 or max_new_tokens <= 0:
            return [[] for _ in prompts]
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p) :] = 1

        class Rows(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):
                assert stop is not None
                gen = input_ids[:, width:].tolist()
                return torch.tensor([stop(g) for g in gen], dtype=torch.bool, device=input_ids.device)

        with self.autocast():
            out = self.model.generate(
                ids.to(self.device),
                attention_mask=mask.to(self.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.pad_id,
                stopping_criteria=StoppingCriteriaList([Rows()]) if stop is not None else None,
            )
        ends = self._eos_ids()
        result = []
        for row in out[:, width:].tolist():
            cut = next((j + 1 for j, t in enumerate(row) if t in ends), len(row))
            result.append(row[:cut])
        return result

    def _eos_ids(self) -> set[int]:
        """The end-of-text ids ``generate`` stops at: the generation config's, else the tokenizer's."""
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = self.eos_id
        return set(eos if isinstance(eos, list) else [eos]) - {None}


@dataclass(frozen=True)
class ModelSpec:
    """One model named on the command line: ``--weight NAME`` or ``--hf_path DIR``."""

    kind: str  # "weight" | "hf"
    value: str


TOKENIZER_INFINITY = 1000000000000000019884624838656  # transformers' "no model_max_length"
HARNESS_DEFAULT_LENGTH = 2048


def harness_max_length(config, tokenizer) -> int:
    """The context lm-evaluation-harness's ``--model hf`` gives a model when not told one
    (lm_eval.utils.resolve_max_length): ``n_positions``, ``max_position_embeddings`` or ``n_ctx``
    of the (text) config, else the tokenizer's ``model_max_length``, else 2048."""
    cfg = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, attr, None)
        if value is not None:
            return int(value)
    value = getattr(tokenizer, "model_max_length", None)
    if value is not None and value != TOKENIZER_INFINITY:
        return int(value)
    return HARNESS_DEFAULT_LENGTH


def load_eval_model(
    spec: ModelSpec,
    save_dir: str,
    hidden_size: int | None,
    device: str | torch.device,
    dtype: torch.dtype,
    max_len: int | None,
    hub: bool = True,
) -> EvalModel:
    """Rebuild a model and its tokenizer from a checkpoint alone. ``--weight`` takes what
    ``--from_weight`` takes (trainer.weights: a checkpoint, a transformers folder or a Hub id;
    a folder is converted, proven by the parity check and scored natively); ``--hf_path`` runs
    transformers' own forward on a folder."""
    if spec.kind == "hf":
        return load_hf_dir(spec.value, device, dtype, max_len)
    source = weights.resolve(spec.value, save_dir, hidden_size, flag="--weight", hub=hub)
    got = weights.load(source, flag="--weight")
    model, meta, cfg = got.model, got.meta, got.model.config
    context = max_len or trained_context(meta, cfg.max_position_embeddings)
    shape = (
        f"{cfg.hidden_size}x{cfg.num_hidden_layers}, {cfg.num_attention_heads} heads "
        f"({cfg.num_key_value_heads} kv), vocab {cfg.vocab_size}"
    )
    imported = weights.imported_source(meta)
    info = {
        "params": model.num_params(),
        "architecture": f"{cfg.architecture} {shape}" if imported else shape,
        "stage": meta.get("stage"),
        "step": meta.get("step"),
        "tokens_seen": meta.get("tokens_seen"),
        "finished": meta.get("finished"),
        "parent": (meta.get("parent") or {}).get("path"),
    }
    if source.kind == "checkpoint":
        label = got.path.stem
    else:
        label = source.label if source.kind == "hub" else got.path.name
        info["parity_max_abs_diff"] = meta["parity_max_abs_diff"]
    return MiniGPTEval(model, label, str(got.path), got.tokenizer, context, device, dtype, info)


def load_hf_dir(path: str, device: str | torch.device, dtype: torch.dtype, max_len: int | None) -> HFEval:
    """A transformers folder in fp32 weights (computing in ``dtype``). Its context: ``max_len``,
    else the trained context scripts/export_hf.py recorded (minigpt.json), else the one
    lm-evaluation-harness would use (:func:`harness_max_length`). UserError for a folder
    transformers cannot load or that is not a decoder-only LM."""
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
    harness = harness_max_length(model.config, tok)
    trained = meta.get("context_length")
    context = max_len or int(trained or harness)
    if trained and int(trained) != harness and not max_len:
        log.info(
            f"note: {folder}: trained context {trained} ({EXPORT_META}) but config.json says {harness}, "
            f"which lm-evaluation-harness would use; re-export with scripts/export_hf.py to record it there"
        )
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

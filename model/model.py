"""A Llama-style decoder-only transformer whose weights map 1:1 onto transformers' LlamaForCausalLM,
Qwen2ForCausalLM or Qwen3ForCausalLM (``ModelConfig.architecture``).

Module and parameter names follow those classes exactly (``model.layers.0.self_attn.q_proj``,
``...self_attn.q_norm`` for Qwen3, ...), so a state dict moves between the two without renaming
(see ``model/hf.py``). The three differ only in what ModelConfig records: q/k/v and o_proj biases,
MLP biases, the per-head q/k RMSNorm, head_dim, and the RoPE frequencies.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from model.attention import causal_attention
from model.config import ModelConfig
from model.loss import head_losses


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 then cast back, as LlamaRMSNorm does: bf16 variance loses precision.
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_inv_freq(cfg: ModelConfig, device: torch.device | None = None) -> torch.Tensor:
    """RoPE inverse frequencies, shape (head_dim / 2,), fp32.

    "default": 1 / theta^(2i / head_dim) (RoFormer). ``rope_scaling`` "llama3": Meta's Llama 3.1
    frequency scaling, written as transformers' ``modeling_rope_utils._compute_llama3_parameters``
    (same operations in the same order, so the tables are bit-identical): wavelengths longer than
    original_max_position_embeddings / low_freq_factor are divided by ``factor``, those shorter than
    original_max_position_embeddings / high_freq_factor kept, the band between interpolated.
    """
    dim = cfg.head_dim
    inv_freq = 1.0 / (
        cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim)
    )
    rs = cfg.rope_scaling
    if rs is None:
        return inv_freq
    factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old_context_len = rs["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = old_context_len / low, old_context_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(medium, smoothed, scaled)


def rope_cache(cfg: ModelConfig, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (max_position_embeddings, head_dim), in fp32 (see :func:`rope_inv_freq`)."""
    inv_freq = rope_inv_freq(cfg, device)
    pos = torch.arange(cfg.max_position_embeddings, dtype=torch.float32, device=device)
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class KVCache:
    """A preallocated key/value cache for generation: one (B, kv_heads, max_len, head_dim) pair per layer.

    ``docs`` (B, max_len) long holds the document id of every cached position once a forward pass
    gave ``doc_ids`` (None until then): later queries attend only to cached keys of their own
    document, e.g. a left-padded prompt batch whose padding is a document of its own.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device, dtype):
        shape = (batch_size, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.pos = 0  # tokens already stored
        self.docs: torch.Tensor | None = None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = k.shape[2]
        self.k[layer][:, :, self.pos : self.pos + t] = k
        self.v[layer][:, :, self.pos : self.pos + t] = v
        end = self.pos + t
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class Varlen(NamedTuple):
    """Document attention as variable-length sequences for a fused kernel that skips masked
    blocks (``torch.nn.attention.varlen.varlen_attn``, FlashAttention with cu_seqlens): the rows
    flattened into one stream of B x T tokens, ``cu`` (int32, documents + 1) the start of each
    document in it and ``max_len`` the longest. Built once per forward (:func:`varlen_spec`)."""

    cu: torch.Tensor
    max_len: int


def varlen_spec(doc_ids: torch.Tensor) -> Varlen:
    """The :class:`Varlen` of rows with document ids ``doc_ids`` (B, T): a document starts where the
    id changes or a row starts."""
    b, t = doc_ids.shape
    flat = doc_ids.reshape(-1)
    start = torch.ones_like(flat, dtype=torch.bool)
    start[1:] = flat[1:] != flat[:-1]
    start[::t] = True
    begins = torch.nonzero(start).flatten()
    cu = torch.cat([begins, begins.new_tensor([b * t])]).to(torch.int32)
    return Varlen(cu, int((cu[1:] - cu[:-1]).max()))


def _varlen_kernel():
    """``varlen_attn`` where this torch has it (CUDA FlashAttention), else None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
        self.dropout = cfg.dropout
        h = cfg.hidden_size
        self.q_proj = nn.Linear(h, self.n_heads * self.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, h, bias=cfg.o_bias)
        # Qwen3: RMSNorm over each query/key head (shared across heads), before RoPE.
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None

    def forward(
        self,
        x,
        cos,
        sin,
        cache: KVCache | None = None,
        at: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, hidden) -> (B, T, hidden); with ``at`` (B, Q) positions in this chunk, the
        output (B, Q, hidden) at those positions only (keys and values still cover every position).

        ``cos``/``sin``: (T, head_dim) for positions shared by every row, or (B, 1, T, head_dim)
        per row. ``mask``: a boolean (B, 1, T or Q, keys) attention mask (True: may attend) that
        replaces the causal rule (built once per forward by :func:`document_mask`)."""
        b, t, _ = x.shape
        xq, qcos, qsin = x, cos, sin
        if at is not None:
            rows = torch.arange(b, device=x.device)[:, None]
            xq = x[rows, at]
            if cos.dim() == 2:
                qcos, qsin = cos[at][:, None], sin[at][:, None]
            else:
                qcos, qsin = cos[rows, 0, at][:, None], sin[rows, 0, at][:, None]
        q = self.q_proj(xq).view(b, xq.shape[1], self.n_heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q = q * qcos.to(q.dtype) + rotate_half(q) * qsin.to(q.dtype)
        k = k * cos.to(k.dtype) + rotate_half(k) * sin.to(k.dtype)
        past = 0
        if cache is not None:
            past = cache.pos
            k, v = cache.update(self.layer_idx, k, v)
        if isinstance(mask, Varlen):  # a fused kernel over the documents, GQA inside it
            flat = [z.transpose(1, 2).reshape(b * t, z.shape[1], self.head_dim) for z in (q, k, v)]
            kernel = _varlen_kernel()
            assert kernel is not None
            y = kernel(
                *flat, mask.cu, mask.cu, mask.max_len, mask.max_len, window_size=(-1, 0), enable_gqa=True
            )
            return self.o_proj(y.reshape(b, t, -1))
        blocks = cache is None and at is None and t > 1 and self._block_backward(q)  # causal or documents
        if self.n_kv != self.n_heads and not blocks:  # causal_attention takes the K/V heads as they are
            # Expanding K/V explicitly is faster on CPU than SDPA's enable_gqa path (measured in
            # scripts/dev/bench_train.py) and works on every torch >= 2.4.
            rep = self.n_heads // self.n_kv
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        causal = mask is None and past == 0 and t > 1 and at is None
        if mask is not None:
            pass
        elif at is not None:  # each selected query sees the prefix and the positions up to its own
            mask = (torch.arange(k.shape[2], device=x.device)[None, None, :] <= (past + at)[:, :, None])[
                :, None
            ]
        elif past and t > 1:  # a chunk after a cached prefix: queries see the prefix and their own past
            s = past + t
            mask = torch.ones(t, s, dtype=torch.bool, device=x.device).tril(diagonal=past)
        if blocks:
            y = causal_attention(q, k, v, mask)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
            )
        return self.o_proj(y.transpose(1, 2).reshape(b, xq.shape[1], -1))

    def _block_backward(self, q: torch.Tensor) -> bool:
        """Whether this call's causal or document attention runs :func:`causal_attention` (torch's
        flash forward, a block-skipping backward: faster than torch's CPU kernel when compiled): a
        compiled model's training forward on the CPU, without attention dropout."""
        return (
            q.device.type == "cpu"
            and torch.compiler.is_compiling()
            and q.requires_grad
            and not (self.training and self.dropout > 0)
        )


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, cache=None, at: torch.Tensor | None = None, mask=None):
        """x (B, T, hidden) -> (B, T, hidden), or (B, Q, hidden) at positions ``at`` (B, Q) only."""
        a = self.self_attn(self.input_layernorm(x), cos, sin, cache, at, mask)
        if at is not None:
            x = x[torch.arange(x.shape[0], device=x.device)[:, None], at]
        x = x + self.drop(a)
        return x + self.drop(self.mlp(self.post_attention_layernorm(x)))


class MiniGPTModel(nn.Module):
    """The transformer body (LlamaModel's layout)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)


class MiniGPTForCausalLM(nn.Module):
    rope_cos: torch.Tensor  # (max_position_embeddings, head_dim) fp32 buffers (:meth:`reset_rope`)
    rope_sin: torch.Tensor

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = MiniGPTModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.reset_rope()
        self.apply(self._init_weights)
        # GPT-2's scaled init for the projections that write into the residual stream, so its
        # variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=cfg.initializer_range / (2 * cfg.num_hidden_layers) ** 0.5)

    # Document attention on CUDA: "auto" runs varlen_attn (FlashAttention over cu_seqlens: masked
    # blocks are skipped) where it applies, "sdpa" always the SDPA boolean mask (the CPU path).
    attention_kernel = "auto"

    def _use_varlen(self, input_ids: torch.Tensor, cache, at) -> bool:
        """Whether this forward's document attention runs varlen_attn: on CUDA, in bf16/fp16 (autocast
        or half weights), no KV cache or selected positions, no attention dropout in training."""
        if self.attention_kernel != "auto" or not input_ids.is_cuda or cache is not None or at is not None:
            return False
        half = (torch.float16, torch.bfloat16)
        amp = torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") in half
        if not (amp or self.lm_head.weight.dtype in half) or (self.training and self.config.dropout > 0):
            return False
        return _varlen_kernel() is not None

    def reset_rope(self, device: torch.device | str | None = None) -> None:
        """(Re)compute the RoPE tables, non-persistent buffers that no state dict carries: needed
        after building the model on the meta device and ``to_empty`` (model/hf.py does)."""
        cos, sin = rope_cache(self.config, torch.device(device) if device is not None else None)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor):
                nn.init.zeros_(bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def cast_layer_matmuls_(self, dtype: torch.dtype) -> None:
        """Cast every decoder layer's nn.Linear (weight and bias) to ``dtype`` once, for inference
        under autocast to that dtype: autocast casts exactly these on every call, so the results
        are bit-identical while the copy is saved. Embedding, LM head, norms (Qwen3's q/k norms
        included: autocast keeps them fp32) and RoPE stay as they are."""
        for layer in self.model.layers:
            for m in layer.modules():
                if isinstance(m, nn.Linear):
                    m.to(dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        grad_scale: float | torch.Tensor = 1.0,
    ) -> torch.Tensor:
        """Logits of shape (B, T, vocab) for input_ids of shape (B, T) (see :meth:`forward_hidden`).

        With ``targets`` (B, T) (token ids, -100 where none): the per-token cross entropy instead,
        (B, T) fp32 nats, 0 where ignored, computed by the fused chunked LM head + loss
        (:func:`model.loss.linear_cross_entropy`: never the (tokens, vocab) logits); ``grad_scale``
        is the factor the caller multiplies the losses' sum by before backward (the fastest exact
        gradient; any other is exact too), a 0-dim tensor under torch.compile (no guard on it)."""
        h = self.forward_hidden(input_ids, cache, positions=positions, doc_ids=doc_ids)
        if targets is None:
            return self.lm_head(h)
        # compiled model: the loss's softmax passes compiled too (model.loss._softmax_grad)
        return head_losses(
            self.lm_head, h, targets, grad_scale=grad_scale, compiled=torch.compiler.is_compiling()
        )

    def forward_hidden(
        self,
        input_ids: torch.Tensor,
        cache: KVCache | None = None,
        at: tuple[torch.Tensor, torch.Tensor] | None = None,
        positions: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states (after the last norm, before the LM head).

        Without ``at``: shape (B, T, hidden). With ``at = (rows, positions)``, two (N,) long
        tensors: shape (N, hidden), the states at those (row, position) pairs only; the last
        layer then runs its queries, attention output and MLP there alone (scoring reads a
        logit at one position per row: 1/layers less work, and the LM head runs N times, not B x T).

        Several documents in one row (document attention): ``doc_ids`` (B, T) long gives each
        token's document, and a token attends only to earlier tokens (cached ones included) of the
        same document (block-causal, :func:`document_mask`); ``positions`` (B, T) long gives each
        token's RoPE position (restarting at 0 where a document starts). Without them every row is
        one causal sequence whose positions continue from the cache. Raises ValueError for a
        position beyond max_position_embeddings.
        """
        t = input_ids.shape[1]
        start = cache.pos if cache is not None else 0
        # Under torch.compile the check on ``positions`` would read a value (a graph break every step):
        # the trainer, the one compiled caller, refuses rows longer than the table at start.
        if positions is None or not torch.compiler.is_compiling():
            end = start + t if positions is None else int(positions.max()) + 1 if positions.numel() else 0
        else:
            end = 0
        if end > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence of {end} tokens exceeds max_position_embeddings {self.config.max_position_embeddings}"
            )
        if positions is None:
            cos, sin = self.rope_cos[start : start + t], self.rope_sin[start : start + t]
        else:
            cos, sin = self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]
        mask: torch.Tensor | Varlen | None = None
        last_mask: torch.Tensor | Varlen | None = None
        if doc_ids is not None:
            keys = doc_ids
            if cache is not None:
                if cache.docs is None:
                    cache.docs = torch.full(
                        (input_ids.shape[0], cache.k[0].shape[2]), -1, dtype=torch.long, device=doc_ids.device
                    )
                cache.docs[:, start : start + t] = doc_ids
                keys = cache.docs[:, : start + t]
            if self._use_varlen(input_ids, cache, at):
                mask = last_mask = varlen_spec(doc_ids)
            else:
                mask = last_mask = document_mask(doc_ids, keys, start)
        elif cache is not None and cache.docs is not None:
            raise ValueError("this cache holds document ids: pass doc_ids for the new tokens too")
        x = self.model.drop(self.model.embed_tokens(input_ids))
        layers = self.model.layers
        if at is None:
            for layer in layers:
                x = layer(x, cos, sin, cache, None, mask)
        else:
            rows, slots, padded = _side_by_side(*at, x.shape[0])
            if isinstance(mask, torch.Tensor):  # the last layer's queries: the selected positions only
                last_mask = mask[torch.arange(x.shape[0], device=x.device)[:, None], 0, padded][:, None]
            for layer in layers[:-1]:
                x = layer(x, cos, sin, cache, None, mask)
            x = layers[-1](x, cos, sin, cache, padded, last_mask)[rows, slots]
        if cache is not None:
            cache.pos += t
        return self.model.norm(x)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        eos_token_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample with a KV cache. temperature 0 is greedy; top_p < 1 is nucleus sampling.

        Rows that have emitted ``eos_token_id`` keep emitting it; generation stops early once
        every row has. Returns prompt + generated tokens.
        """
        b, t = input_ids.shape
        max_len = min(t + max_new_tokens, self.config.max_position_embeddings)
        dtype = next(self.parameters()).dtype
        cache = KVCache(self.config, b, max_len, input_ids.device, dtype)
        out = input_ids
        done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
        logits = self(input_ids, cache)[:, -1, :]
        for _ in range(max_len - t):
            nxt = sample_next(logits.float(), temperature, top_p, generator)
            if eos_token_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
                done |= nxt == eos_token_id
            out = torch.cat([out, nxt[:, None]], dim=1)
            if eos_token_id is not None and bool(done.all()):
                break
            if cache.pos >= max_len:
                break
            logits = self(nxt[:, None], cache)[:, -1, :]
        return out


def document_mask(q_docs: torch.Tensor, k_docs: torch.Tensor, past: int = 0) -> torch.Tensor:
    """The block-causal attention mask of rows holding several documents: (B, 1, T, S) bool, True
    where query i may attend to key j, i.e. key j is at or before query i and of the same document.

    ``q_docs`` (B, T): the document id of each new token (queries at positions past..past+T-1 of
    the row); ``k_docs`` (B, S): the document id of every key (cached and new: S = past + T).
    Built once per forward and shared by every layer (document masking: Zhao et al. 2024,
    arXiv 2402.13991; torchtitan's block-causal mask).
    """
    q_idx = torch.arange(q_docs.shape[1], device=q_docs.device) + past
    k_idx = torch.arange(k_docs.shape[1], device=k_docs.device)
    causal = k_idx[None, :] <= q_idx[:, None]
    return ((q_docs[:, :, None] == k_docs[:, None, :]) & causal)[:, None]


def _side_by_side(rows: torch.Tensor, pos: torch.Tensor, b: int) -> tuple[torch.Tensor, ...]:
    """(rows, slots, padded): the selections of each row side by side in a (b, Q) table ``padded``
    (slot j of row r holds its j-th position; unused slots repeat position 0), and the slot of
    each selection, so that ``table[rows, slots]`` reads them back in their original order."""
    counts = torch.bincount(rows, minlength=b)
    first = torch.cumsum(counts, 0) - counts
    # slot = rank of a selection among its row's, in the given order (rows need not be sorted)
    order = torch.argsort(rows, stable=True)
    slots = torch.empty_like(rows)
    slots[order] = torch.arange(len(rows), device=rows.device) - first[rows[order]]
    padded = torch.zeros(b, int(counts.max()), dtype=torch.long, device=rows.device)
    padded[rows, slots] = pos
    return rows, slots, padded


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator=None) -> torch.Tensor:
    """One token per row from (B, vocab) logits: greedy at temperature 0, else top-p sampling."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = sorted_p.cumsum(dim=-1) - sorted_p > top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

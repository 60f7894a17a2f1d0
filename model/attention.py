"""Causal attention for a compiled model's training step on the CPU: torch's flash forward, and a
backward that recomputes the probabilities in query blocks, skipping the keys after each block.

torch's CPU flash-attention backward (``_scaled_dot_product_flash_attention_for_cpu_backward``) is
~4-5x its forward's time at a training shape (4 x 9 heads x 512 x 64, bf16: ~25-40 ms against ~6-7 ms
over this project's measurements), a quarter of a compiled SmolLM2-135M step before this kernel;
FlexAttention has no CPU backward. The backward here
is FlashAttention-2's (Dao 2023, arXiv 2307.08691, Algorithm 2) written with whole-block matmuls for
torch.compile to schedule: with the forward's log-sum-exp ``L``, per block of queries i (and the keys
up to its last query, the only ones a causal or document mask lets it see; the block holds their
whole rows)

    P = exp(Q_i K^T * scale - L_i) (0 where masked)     dV += P^T dO_i      dP = dO_i V^T
    dS = P ∘ (dP - rowsum(P ∘ dP)) * scale              dQ_i = dS K         dK += dS^T Q_i

The scores ``Q_i K^T`` are computed in fp32 (the forward's precision; from 16-bit inputs they are
exact products), P and dS rounded once to the inputs' dtype for their matmuls, dK and dV accumulated
in fp32. ``rowsum(P ∘ dP)`` is the softmax backward's own term, taken from the same rounded dP
(FlashAttention's ``rowsum(dO ∘ O)`` equals it exactly, but from the bf16 output it does not cancel
dP's rounding: dQ's error was 1.3x torch's kernel's with it, ~1.1x with this). Skipping the keys after
each block saves 3/8 of the backward's matmul work at 4 blocks. Grouped-query attention: K and V
come with their own heads (not expanded to the query heads), and the query heads that share a K/V
head form one block of rows (:func:`_backward`). Measured (scripts/dev/bench_attention.py,
alternating in one process, bf16, against the eager model's K/V expansion + SDPA): forward + backward
at SmolLM2-135M's 4 x 9 heads (3 K/V) x 512 x 64 19.9 ms against 31.8 ms (1.62x by the median of
per-round ratios), at our 26M's 8 x 8 (2) x 512 x 64 36.0 against 53.3 ms (1.50x); against fp64,
dq/dk/dv relative errors 2.9/3.3/2.8e-3 (torch's: 2.5/4.9/4.9e-3).

Compiled models only: the backward is itself compiled (once, shared by every layer, one opaque op
in the model's graph); an eager model keeps torch's kernel (``Attention.forward`` takes this path
only when ``torch.compiler.is_compiling()``).
"""

# no ``from __future__ import annotations``: torch.library.custom_op reads the signature's types
# (keep them real objects, not strings)
from collections.abc import Callable

import torch

# Query rows per block of the backward: 4 blocks at 512 tokens measured fastest (1, 2, 8: slower).
QUERY_BLOCK = 128


def _block_bounds(t: int) -> list[tuple[int, int]]:
    """[(start, end)] of the query blocks of a t-token row (the last may be short)."""
    return [(s, min(s + QUERY_BLOCK, t)) for s in range(0, t, QUERY_BLOCK)]


class _CausalAttention(torch.autograd.Function):
    """out = softmax(q k^T * scale, masked) v for q (B, H, T, D), k, v (B, KV, T, D) (H a multiple
    of KV: each K/V head serves H / KV query heads) and a causal rule (mask None) or a boolean
    (B, 1, T, T) mask inside the causal one (True: may attend; every query must see itself, as
    document masks do)."""

    @staticmethod
    def forward(ctx, q, k, v, mask):
        bias = (
            None
            if mask is None
            else torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, -torch.inf)
        )
        rep = q.shape[1] // k.shape[1]  # torch's CPU flash kernel takes as many K/V heads as queries
        ke, ve = (k, v) if rep == 1 else (k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1))
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, ke, ve, 0.0, mask is None, attn_mask=bias
        )[:2]
        ctx.save_for_backward(q, k, v, lse, mask)
        return out

    @staticmethod
    def backward(ctx, go):
        q, k, v, lse, mask = ctx.saved_tensors
        return (*attention_backward(q, k, v, lse, mask, go.contiguous()), None)


@torch.library.custom_op("minigpt::attention_backward", mutates_args=())
def attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lse: torch.Tensor,
    mask: torch.Tensor | None,
    go: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of :func:`causal_attention`, each contiguous and shaped as q, k, v: one opaque op in a
    compiled model's backward graph that runs :func:`_backward` compiled once (on first use) for
    every layer. Traced into the model's graph instead, the block loop was compiled once per layer:
    a 303 s first step at SmolLM2-135M's 30 layers, against ~60-150 s."""
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = torch.compile(_backward, dynamic=False, fullgraph=True)
    with torch.autocast(q.device.type, enabled=False):
        dq, dk, dv = _KERNEL(q, k, v, lse, mask, go)
    return dq.contiguous(), dk.contiguous(), dv.contiguous()  # the layout the fake op gives


@attention_backward.register_fake
def _(q, k, v, lse, mask, go):
    return tuple(torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in (q, k, v))  # contiguous


_KERNEL: Callable | None = None


def _backward(q, k, v, lse, mask, go):
    """The block loop of the module docstring: (dq, dk, dv) like q (B, H, T, D), k, v (B, KV, T, D);
    ``lse`` the forward's log-sum-exp (B, H, T) fp32, ``go`` the output's gradient (B, H, T, D).

    The G = H / KV query heads of a K/V head are stacked into one block of G x (block rows) query
    rows against that head's keys: larger matmuls than per query head, and dK, dV summed over the
    group in fp32 inside them (against K/V expanded to H heads and their gradients summed after:
    35.1 -> 22.5 ms a layer at our 26M's 8 x 8 heads (2 K/V) x 512 x 64, 23.4 -> 16.8 ms at
    SmolLM2-135M's 4 x 9 (3) x 512 x 64, bf16, compiled)."""
    (b, h, t, d), kv = q.shape, k.shape[1]
    g, acc, scale = h // kv, torch.promote_types(q.dtype, torch.float32), d**-0.5
    qg, gog, lseg = q.view(b, kv, g, t, d), go.view(b, kv, g, t, d), lse.view(b, kv, g, t)
    dq = []
    dk = torch.zeros(k.shape, dtype=acc, device=q.device)
    dv = torch.zeros(v.shape, dtype=acc, device=q.device)
    for s, e in _block_bounds(t):
        n = e - s  # rows (g, i) of the stacked block: query s + i of the group's head g
        qi, goi = (x[:, :, :, s:e].reshape(b, kv, g * n, d) for x in (qg, gog))
        ks, vs = k[:, :, :e], v[:, :, :e]
        p = torch.exp((qi.to(acc) @ ks.to(acc).mT) * scale - lseg[:, :, :, s:e].reshape(b, kv, g * n, 1))
        if mask is None:
            seen = torch.arange(e, device=q.device)[None, :] <= torch.arange(s, e, device=q.device)[:, None]
            seen = seen.repeat(g, 1)
        else:
            seen = mask[:, :, s:e, :e].repeat(1, 1, g, 1)
        p = torch.where(seen, p, 0.0)
        dv[:, :, :e] += p.to(q.dtype).mT @ goi
        dp = (goi @ vs.mT).to(acc)
        ds = (p * (dp - (p * dp).sum(-1, keepdim=True)) * scale).to(q.dtype)
        dq.append((ds @ ks).view(b, kv, g, n, d))
        dk[:, :, :e] += ds.mT @ qi
    return torch.cat(dq, 3).view(b, h, t, d), dk.to(q.dtype), dv.to(q.dtype)


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """(B, H, T, D) attention output for q (B, H, T, D) and k, v (B, KV, T, D) on the CPU (grouped-query
    attention where KV < H: K/V head j serves query heads j * H/KV to (j + 1) * H/KV - 1), each
    query seeing the keys at or before it (``mask`` None) or where the boolean (B, 1, T, T) ``mask``
    is True (a subset of the causal rule in which every query sees itself, e.g.
    :func:`model.model.document_mask`). Equal to ``F.scaled_dot_product_attention(q, k, v,
    attn_mask=mask, is_causal=mask is None, enable_gqa=True)``;
    its backward is the block-skipping recomputation above, torch.compile'd on first use (a C++
    compiler needed, as for any compiled model). No dropout, no scale other than 1/sqrt(D)."""
    return _CausalAttention.apply(q, k, v, mask)

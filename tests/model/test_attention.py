"""model/attention.py: torch's CPU flash forward with the block-skipping backward, against SDPA.

fp32: output and every gradient within 1e-5 of ``F.scaled_dot_product_attention`` (relative to the
tensor's largest magnitude); bf16: each gradient about as close to fp64 as torch's own kernel's.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import model.attention
from model.attention import causal_attention
from model.model import document_mask

pytestmark = pytest.mark.usefixtures("one_thread")

B, HEADS, T, D = 2, 3, 45, 16  # with QUERY_BLOCK 16: blocks of 16, 16 and a short 13
KV_HEADS = [3, 1]  # K/V heads: one per query head, or one for all three (grouped-query attention)


def inputs(dtype: torch.dtype, documents: bool, seed: int = 0, kv: int = HEADS):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, h, T, D, generator=g).to(dtype).requires_grad_() for h in (HEADS, kv, kv))
    go = torch.randn(B, HEADS, T, D, generator=g).to(dtype)
    # row 0: documents of 10, 20 and 15 tokens (one crosses a block edge); row 1: one document
    docs = torch.tensor([[0] * 10 + [1] * 20 + [2] * 15, [7] * T])
    return q, k, v, go, document_mask(docs, docs) if documents else None


def fwd_bwd(attend, q, k, v, go, mask) -> list[torch.Tensor]:
    for x in (q, k, v):
        x.grad = None
    y = attend(q, k, v, mask)
    y.backward(go)
    return [y.detach()] + [x.grad for x in (q, k, v)]


def sdpa(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True)


@pytest.fixture
def small_blocks(monkeypatch):
    """Query blocks of 16 (three at T = 45), the backward kernel compiled afresh for them."""
    monkeypatch.setattr(model.attention, "QUERY_BLOCK", 16)
    monkeypatch.setattr(model.attention, "_KERNEL", None)


@pytest.mark.parametrize("kv", KV_HEADS, ids=lambda kv: f"kv{kv}")
@pytest.mark.parametrize("documents", [False, True], ids=["causal", "documents"])
def test_fp32_output_and_gradients_equal_sdpa(small_blocks, documents, kv):
    q, k, v, go, mask = inputs(torch.float32, documents, kv=kv)
    want = fwd_bwd(sdpa, q, k, v, go, mask)
    got = fwd_bwd(causal_attention, q, k, v, go, mask)
    for name, a, e in zip(("output", "dq", "dk", "dv"), got, want, strict=True):
        assert a.dtype == e.dtype and a.shape == e.shape and a.is_contiguous(), name
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5 * float(e.abs().max()), msg=name)


@pytest.mark.parametrize("kv", KV_HEADS, ids=lambda kv: f"kv{kv}")
def test_bf16_gradients_are_as_accurate_as_torchs_kernel(small_blocks, kv):
    """Against fp64 SDPA on the same (bf16-exact) inputs, relative Frobenius error of dq, dk, dv.
    Measured at this shape over 8 seeds, causal and documents: with a K/V head per query head
    0.91-1.20x torch's kernel's error for each gradient (their sums 0.97-1.15x), with three query
    heads per K/V head 0.65-1.11x (sums 0.83-0.96x: dK and dV summed over the group in fp32); at
    SmolLM2's shape dq 1.15x, dk and dv 0.6-0.7x (scripts/dev/bench_attention.py). Asserted at seed 3:
    none above 1.25x torch's, their sum within 1.1x.
    (With FlashAttention's rowsum(dO * O) in place of rowsum(P * dP), dq and dk were 1.2-1.5x.)"""
    q, k, v, go, mask = inputs(torch.bfloat16, documents=True, seed=3, kv=kv)
    ref = [x.detach().double().requires_grad_() for x in (q, k, v)]
    exact = fwd_bwd(sdpa, ref[0], ref[1], ref[2], go.double(), mask)[1:]

    def errors(grads):
        return [float((g.double() - e).norm() / e.norm()) for g, e in zip(grads, exact, strict=True)]

    torch_err = errors(fwd_bwd(sdpa, q, k, v, go, mask)[1:])
    ours = fwd_bwd(causal_attention, q, k, v, go, mask)[1:]
    assert all(g.dtype == torch.bfloat16 for g in ours)
    ours_err = errors(ours)
    assert min(torch_err) > 0
    assert all(o <= 1.25 * t for o, t in zip(ours_err, torch_err, strict=True)), (ours_err, torch_err)
    assert sum(ours_err) <= 1.1 * sum(torch_err), (ours_err, torch_err)

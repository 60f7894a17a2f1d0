"""One layer's attention forward + backward on the CPU: torch's SDPA kernel vs model/attention.py.

    python scripts/dev/bench_attention.py [--shapes smollm2-135m,ours-512x8] [--reps 9] [--documents]

sdpa: the K/V heads expanded to the query heads (``repeat_interleave``), then
``F.scaled_dot_product_attention(q, k, v, is_causal=True)`` (with ``--documents``, the boolean
document mask of rows holding documents of ~100 tokens on average instead), torch's CPU flash kernel
forward and backward: what an eager model (and transformers' models) run. ours:
``model.attention.causal_attention`` on the K/V heads as they are: the same forward and the
block-skipping backward over each K/V head's group of query heads, which a compiled model runs (its
backward kernel compiled once, before timing; the compile time printed). q (B, heads, T, head_dim),
k, v (B, K/V heads, T, head_dim) bf16, as a training step makes them under bf16 autocast.

The two alternate in one process (one untimed run each, then ``--reps`` rounds), so both see the
same load on a shared machine; median seconds per forward + backward of each, and the median of each
round's ratio. Accuracy: each variant's gradients against fp64 SDPA on the same inputs (relative
Frobenius error of dq, dk, dv): the new backward is about as accurate as torch's kernel (measured:
dq ~1.1-1.15x its error, dk and dv ~0.6-0.7x).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from model.attention import causal_attention
from model.errors import UserError
from model.model import document_mask
from trainer.cli import run

# (rows, heads, K/V heads, tokens per row, head_dim, layers) of a training step at bench_train's
# default batches
SHAPES = {
    "smollm2-135m": (4, 9, 3, 512, 64, 30),
    "ours-512x8": (8, 8, 2, 512, 64, 8),
    "qwen3-0.6b": (4, 16, 8, 1024, 128, 28),
}


def inputs(shape: str, documents: bool):
    b, h, kv, t, d, _ = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, n, t, d, generator=g).to(torch.bfloat16).requires_grad_() for n in (h, kv, kv))
    go = torch.randn(b, h, t, d, generator=g).to(torch.bfloat16)
    mask = None
    if documents:  # a new document starts at each position with probability 1/100
        docs = (torch.rand(b, t, generator=g) < 0.01).cumsum(1)
        mask = document_mask(docs, docs)
    return q, k, v, go, mask


def fwd_bwd(variant: str, q, k, v, go, mask) -> list[torch.Tensor]:
    for x in (q, k, v):
        x.grad = None
    if variant == "ours":
        y = causal_attention(q, k, v, mask)
    else:  # the eager model's path (model.model.Attention)
        rep = q.shape[1] // k.shape[1]
        ke, ve = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, ke, ve, attn_mask=mask, is_causal=mask is None)
    y.backward(go)
    return [x.grad for x in (q, k, v)]


def errors(grads, q, k, v, go, mask) -> list[float]:
    ref = [x.detach().double().requires_grad_() for x in (q, k, v)]
    fwd_bwd("sdpa", ref[0], ref[1], ref[2], go.double(), mask)
    return [float((a.double() - r.grad).norm() / r.grad.norm()) for a, r in zip(grads, ref, strict=True)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="smollm2-135m,ours-512x8")
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--documents", action="store_true", help="a document mask instead of the causal rule")
    args = p.parse_args()
    shapes = args.shapes.split(",")
    if unknown := [x for x in shapes if x not in SHAPES]:
        raise UserError(f"--shapes: unknown {', '.join(unknown)}; use some of {', '.join(SHAPES)}")
    if args.reps < 1:
        raise UserError(f"--reps {args.reps}: use at least 1")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for shape in shapes:
        q, k, v, go, mask = inputs(shape, args.documents)
        start = time.perf_counter()
        fwd_bwd("ours", q, k, v, go, mask)
        print(f"{shape}: (B, H, T, D) = {tuple(q.shape)}, {k.shape[1]} K/V heads, "
              f"{'documents' if args.documents else 'causal'}; "
              f"the backward kernel compiled in {time.perf_counter() - start:.1f} s")  # fmt: skip
        secs: dict[str, list[float]] = {"sdpa": [], "ours": []}
        fwd_bwd("sdpa", q, k, v, go, mask)
        for _ in range(args.reps):
            for variant, got in secs.items():
                start = time.perf_counter()
                fwd_bwd(variant, q, k, v, go, mask)
                got.append(time.perf_counter() - start)
        ratio = statistics.median(s / o for s, o in zip(secs["sdpa"], secs["ours"], strict=True))
        layers = SHAPES[shape][5]
        for variant, got in secs.items():
            err = errors(fwd_bwd(variant, q, k, v, go, mask), q, k, v, go, mask)
            print(f"  {variant:<5} {1e3 * statistics.median(got):7.1f} ms forward + backward "
                  f"(x {layers} layers: {layers * statistics.median(got):.2f} s)  "
                  f"error vs fp64 dq/dk/dv {' '.join(f'{e:.2e}' for e in err)}")  # fmt: skip
        print(f"  sdpa / ours, median of per-round ratios: {ratio:.2f}x")


if __name__ == "__main__":
    run(main)

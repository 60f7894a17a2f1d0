"""Training cost of open-model shapes: tokens/s, MFU and peak memory, random weights, no data.

    python scripts/dev/bench_model_sizes.py [--shapes smollm2-135m,smollm2-360m] [--seq_len 256]

For each shape (the architecture of a published checkpoint, built with random weights through
``ModelConfig``) it runs the training step the engine runs (fp32 master weights, AdamW with the
engine's betas, the trainer's --dtype auto precision by default, fp32 cross entropy, gradient clipping) on random token
ids, skips ``--warmup`` steps, and reports the median step's tokens/s, the MFU against a matmul
peak in the same precision measured in the same process (trainer/throughput.py), and the peak memory: the
process's peak resident set (CPU, includes Python and torch themselves, ~0.2 GiB) or
``torch.cuda.max_memory_allocated`` (GPU). Each shape runs in a subprocess of its own, so the
peaks do not mix. On a shared machine the figures move with the load; MFU is the steadier one.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from model.config import ModelConfig
from model.errors import UserError
from trainer import runtime
from trainer.cli import run
from trainer.throughput import measure_matmul_flops


def _smollm2(hidden: int, layers: int, heads: int, intermediate: int) -> dict:
    """SmolLM2's config.json (HuggingFaceTB/SmolLM2-*): Llama, GQA 3:1, head_dim 64, tied."""
    return dict(
        vocab_size=49152,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads // 3,
        head_dim=64,
        intermediate_size=intermediate,
        tie_word_embeddings=True,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=8192,
    )


# The published configs (config.json on the Hub) of models issue 12 names, as ModelConfig.
SHAPES = {
    "smollm2-135m": _smollm2(576, 30, 9, 1536),
    "smollm2-360m": _smollm2(960, 32, 15, 2560),
    "qwen3-0.6b": dict(
        architecture="Qwen3ForCausalLM",
        qk_norm=True,
        vocab_size=151936,
        hidden_size=1024,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=3072,
        tie_word_embeddings=True,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        max_position_embeddings=40960,
    ),
}


def measure(
    shape: str, seq_len: int, batch_size: int, steps: int, warmup: int, dtype: str, device: str
) -> dict:
    """One shape's figures (runs in the calling process; see :func:`main` for the isolation)."""
    from model.model import MiniGPTForCausalLM

    dev = torch.device(device)
    dt = runtime.resolve_dtype(dtype, dev)
    cfg = ModelConfig(**SHAPES[shape])
    torch.manual_seed(0)
    model = MiniGPTForCausalLM(cfg).to(dev).train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=1e-5, betas=(0.9, 0.95), eps=1e-8, fused=dev.type == "cuda"
    )
    g = torch.Generator().manual_seed(0)
    times = []
    for i in range(warmup + steps):
        x = torch.randint(0, cfg.vocab_size, (batch_size, seq_len + 1), generator=g).to(dev)
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        with runtime.autocast(dev, dt):
            logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    peak = measure_matmul_flops(dev, dt, seconds=2.0)  # the run's precision: float32 against float32
    step = statistics.median(times)
    tps = batch_size * seq_len / step
    if dev.type == "cuda":
        mem = torch.cuda.max_memory_allocated(dev)
    else:
        mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {
        "shape": shape,
        "params": cfg.num_params(),
        "seq_len": seq_len,
        "batch_size": batch_size,
        "dtype": runtime.dtype_name(dt),
        "step_s": step,
        "tokens_per_s": tps,
        "mfu": tps * cfg.flops_per_token(seq_len) / peak,
        "peak_flops": peak,
        "peak_mem_bytes": mem,
        "threads": torch.get_num_threads(),
        "device": str(dev),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="smollm2-135m", help=f"comma-separated subset of {','.join(SHAPES)}")
    p.add_argument("--seq_len", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--dtype",
        default="auto",
        help="autocast dtype: auto (as the trainer's) | bfloat16 | float16 | float32",
    )
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: one shape, JSON out
    args = p.parse_args()
    shapes = args.shapes.split(",")
    if unknown := [s for s in shapes if s not in SHAPES]:
        raise UserError(f"--shapes: unknown {unknown}; choose from {', '.join(SHAPES)}")
    if min(args.seq_len, args.batch_size, args.steps) <= 0 or args.warmup < 0:
        raise UserError("--seq_len, --batch_size and --steps must be positive, --warmup >= 0")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    runtime.resolve_dtype(
        args.dtype, runtime.resolve_device(device)
    )  # a bad flag: one line here, not in a child
    if args.one:
        r = measure(shapes[0], args.seq_len, args.batch_size, args.steps, args.warmup, args.dtype, device)
        print(json.dumps(r))
        return
    rows = []
    for shape in shapes:
        cmd = [sys.executable, __file__, "--one", "--shapes", shape, "--device", device]
        for flag in ("seq_len", "batch_size", "steps", "warmup", "dtype"):
            cmd += [f"--{flag}", str(getattr(args, flag))]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        print(
            f"{shape}: {r['params'] / 1e6:.1f}M params, batch {r['batch_size']} x {r['seq_len']}, "
            f"{r['dtype']} autocast, {r['device']} ({r['threads']} threads): step {r['step_s']:.2f} s, "
            f"{r['tokens_per_s']:,.0f} tokens/s, MFU {r['mfu']:.1%} of a measured "
            f"{r['peak_flops'] / 1e12:.3f} TFLOP/s {r['dtype']} matmul peak, peak memory {r['peak_mem_bytes'] / 2**30:.2f} GiB",
            flush=True,
        )


if __name__ == "__main__":
    run(main)

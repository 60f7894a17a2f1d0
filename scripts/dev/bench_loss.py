"""The LM head + cross entropy of one training micro-batch: the plain path vs model/loss.py, side by side.

    python scripts/dev/bench_loss.py [--shapes qwen3-0.6b,smollm2-135m] [--dtypes bf16,fp32] [--reps 2]
                                     [--sweep_mib 128,256,512,1024,2048] [--threads N]

plain: what trainer/engine.py runs today: ``logits = F.linear(h, W)`` (under bf16 autocast, or fp32),
``F.cross_entropy(logits.float(), y, reduction="sum")``, ``(loss * scale).backward()``, with the
logits held until the backward ends (the engine's ``logits`` variable is). fused:
``model.loss.linear_cross_entropy(h, W, y, grad_scale=scale).sum() * scale``, backward. ``h``
(tokens, hidden) is fp32 and needs a gradient, like the final norm's output; ``W`` (vocab, hidden) is
an fp32 parameter; every target is counted.

Peak memory: each variant runs once in a fresh process and reports its peak RSS (getrusage) minus
the RSS before the loss (torch imported, ``h``, ``W`` and the targets made): the loss's own peak,
the weight's fp32 gradient included (both variants make it). Time: the two variants alternate in one
further process (one untimed run each, then ``--reps`` rounds), so both see the same load on a
shared machine; the least seconds per forward + backward (the run least disturbed by other jobs),
wall and the process's CPU seconds (less sensitive to other jobs taking a core). ``--sweep_mib``:
the fused path in bf16 at each chunk budget (model.loss.chunk_rows), peak and time from one fresh
process each (one run, then ``--reps`` timed).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from model.errors import UserError
from model.loss import DEFAULT_CHUNK_BYTES, chunk_rows, linear_cross_entropy
from trainer.cli import run

# (rows, tokens per row, hidden, vocab) of the two LM heads measured
SHAPES = {
    "qwen3-0.6b": (4, 1024, 1024, 151_936),
    "smollm2-135m": (4, 512, 576, 49_152),
}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
MiB = 2**20


def setup(shape: str):
    b, t, h, v = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    hidden = torch.empty(b * t, h).normal_(generator=g).requires_grad_()
    weight = torch.nn.Parameter(torch.empty(v, h).normal_(0.0, 0.02, generator=g))
    targets = torch.randint(0, v, (b * t,), generator=g)
    return hidden, weight, targets


def step(variant: str, dtype: torch.dtype, hidden, weight, targets, chunk_bytes: int) -> tuple[float, float]:
    """One forward + backward of the loss: (wall seconds, this process's CPU seconds)."""
    hidden.grad = weight.grad = None
    scale = 1.0 / targets.numel()
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        if variant == "plain":
            logits = F.linear(hidden, weight)
        else:
            losses = linear_cross_entropy(hidden, weight, targets, grad_scale=scale, chunk_bytes=chunk_bytes)
    if variant == "plain":
        loss = F.cross_entropy(logits.float(), targets, ignore_index=-100, reduction="sum")
    else:
        loss = losses.sum()
    (loss * scale).backward()
    return time.perf_counter() - t0, time.process_time() - c0


def rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def child(spec: dict) -> dict:
    """In a fresh process: the first run's peak RSS increase, then timed runs."""
    hidden, weight, targets = setup(spec["shape"])
    dtype = DTYPES[spec["dtype"]]
    before = rss_peak()
    first = step(spec["variant"], dtype, hidden, weight, targets, spec["chunk_bytes"])
    peak = rss_peak() - before
    times = [
        step(spec["variant"], dtype, hidden, weight, targets, spec["chunk_bytes"])
        for _ in range(spec["reps"])
    ]
    wall, cpu = zip(*times, strict=True) if times else ([first[0]], [first[1]])
    return {"peak": peak, "wall": min(wall), "cpu": min(cpu)}


def timing(spec: dict) -> dict:
    """In one process: plain and fused alternate (one untimed run each first); min seconds."""
    hidden, weight, targets = setup(spec["shape"])
    dtype = DTYPES[spec["dtype"]]
    times: dict[str, list[tuple[float, float]]] = {"plain": [], "fused": []}
    for r in range(spec["reps"] + 1):
        for variant in times:
            s = step(variant, dtype, hidden, weight, targets, spec["chunk_bytes"])
            if r:
                times[variant].append(s)
    return {k: [min(x) for x in zip(*v, strict=True)] for k, v in times.items()}


def spawn(mode: str, **spec) -> dict:
    cmd = [sys.executable, __file__, f"--{mode}", json.dumps(spec), "--threads", str(torch.get_num_threads())]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(
            f"{mode} {spec}: the measuring process failed: {proc.stderr.strip().splitlines()[-1:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated subset of {','.join(SHAPES)}")
    p.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated subset of bf16,fp32")
    p.add_argument("--reps", type=int, default=2, help="timed forward+backward runs per variant")
    p.add_argument(
        "--chunk_mib", type=int, default=DEFAULT_CHUNK_BYTES // MiB, help="the fused path's budget"
    )
    p.add_argument(
        "--sweep_mib", default="128,256,512,1024,2048", help="chunk budgets to time (bf16); '' for none"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--timing", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child or args.timing:
        print(json.dumps(child(json.loads(args.child)) if args.child else timing(json.loads(args.timing))))
        return
    shapes, dtypes = args.shapes.split(","), args.dtypes.split(",")
    if bad := [s for s in shapes if s not in SHAPES] + [d for d in dtypes if d not in DTYPES]:
        raise UserError(f"--shapes/--dtypes: unknown {bad}; choose from {list(SHAPES)} and {list(DTYPES)}")
    if args.reps < 1:
        raise UserError(f"--reps must be >= 1, got {args.reps}")
    try:
        sweep = [int(m) for m in args.sweep_mib.split(",") if m]
    except ValueError:
        raise UserError(f"--sweep_mib {args.sweep_mib!r}: comma-separated MiB integers") from None
    budget = args.chunk_mib * MiB
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; fused chunk budget {args.chunk_mib} MiB"
    )
    print(f"{'shape':<13} {'dtype':<5} {'tokens':>6} {'rows/chunk':>10} {'peak plain':>11} {'peak fused':>11} "
          f"{'ratio':>6} {'s plain':>8} {'s fused':>8} {'speedup':>8} {'cpu-s plain':>12} {'cpu-s fused':>12}")  # fmt: skip
    for shape in shapes:
        b, t, _, v = SHAPES[shape]
        for dt in dtypes:
            common = {"shape": shape, "dtype": dt, "chunk_bytes": budget}
            peak = {k: spawn("child", variant=k, reps=0, **common)["peak"] for k in ("plain", "fused")}
            secs = spawn("timing", reps=args.reps, **common)
            rows = chunk_rows(v, DTYPES[dt] if dt == "fp32" else torch.bfloat16, budget)
            print(
                f"{shape:<13} {dt:<5} {b * t:>6} {rows:>10} {peak['plain'] / MiB:>8.0f} MiB "
                f"{peak['fused'] / MiB:>7.0f} MiB {peak['fused'] / peak['plain']:>6.1%} {secs['plain'][0]:>8.2f} "
                f"{secs['fused'][0]:>8.2f} {secs['plain'][0] / secs['fused'][0]:>7.2f}x {secs['plain'][1]:>12.2f} "
                f"{secs['fused'][1]:>12.2f}",
                flush=True,
            )
    if not sweep:
        return
    print("\nfused, bf16: chunk budget vs peak and time (one fresh process per budget)")
    print(f"{'shape':<13} {'MiB':>5} {'rows/chunk':>10} {'chunks':>6} {'peak':>9} {'s':>7} {'cpu-s':>7}")
    for shape in shapes:
        b, t, _, v = SHAPES[shape]
        for mib in sweep:
            r = spawn(
                "child", shape=shape, dtype="bf16", variant="fused", reps=args.reps, chunk_bytes=mib * MiB
            )
            rows = chunk_rows(v, torch.bfloat16, mib * MiB)
            print(
                f"{shape:<13} {mib:>5} {rows:>10} {-(-b * t // rows):>6} {r['peak'] / MiB:>5.0f} MiB "
                f"{r['wall']:>7.2f} {r['cpu']:>7.2f}",
                flush=True,
            )


if __name__ == "__main__":
    run(main)

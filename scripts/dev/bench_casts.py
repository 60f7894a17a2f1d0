"""Where an eager bf16 training step on the CPU goes, and what the dtype casts cost: side by side.

    python scripts/dev/bench_casts.py [--steps 3] [--variants autocast,autocast+fusedloss,...] [--profile]
                                      [--compile autocast,autocast+fusedloss+fusedadamw] [--components 5]
                                      [--threads N]

The SmolLM2-135M shape (hidden 576, 30 layers, 9 heads, 3 KV heads, intermediate 1536, vocab 49,152,
tied embeddings) at 4 rows x 512 tokens, random token ids (a step's time does not depend on them),
AdamW as trainer/engine.py builds it on the CPU (no ``fused``), one micro-batch per step. A variant
is a base and optional "+" features:

  autocast        today's step: fp32 weights, torch.autocast(bf16) casts every nn.Linear weight to
                  bf16 at every forward, F.cross_entropy over the fp32 logits.
  bf16copy        each decoder layer's nn.Linear weights live in the model as bf16 compute copies;
                  the fp32 masters sit in AdamW. After backward each bf16 gradient is copied into
                  its master's fp32 .grad; after the AdamW step each master is copied into its bf16
                  copy (once per optimizer step). Autocast stays on, so the embedding, the norms and
                  the residual stream are what they were (fp32) and autocast's cast of a bf16 weight
                  is a no-op: the same numbers as autocast (the losses of every step are printed
                  side by side).
  +fusedloss      the LM head and the loss by model.loss.linear_cross_entropy instead of the
                  logits + F.cross_entropy.
  +fusedadamw     torch.optim.AdamW(fused=True), which torch has on the CPU since 2.4 (the engine
                  passes fused=True on CUDA only).
  --compile V,..  each variant V with torch.compile (the engine's --use_compile: the model; with
                  +fusedloss its forward_hidden, the loss staying eager), one process each: compile
                  time (the first step), then steps alternating with the same variant eager.
  --components N  what each alternative removes, each part timed on its own on one thread (least
                  CPU seconds of N runs): the weight casts autocast makes and their bf16copy
                  counterparts, clipping + the AdamW step (fused or not), the LM head + loss.

The eager variants alternate step by step in one process (each its own copy of the same initial
model), so they share the machine's load; after one warm-up step, the min and median wall and CPU
seconds of the steps are reported (the min is the least disturbed by other jobs on a shared
machine), the step split into forward + backward and the optimizer part, and the speedups against
the first variant. --profile: torch.profiler's top ops of one step of the first and of the last
variant.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from model import MiniGPTForCausalLM, ModelConfig
from model.errors import UserError
from model.loss import head_losses
from trainer.cli import run

CFG = ModelConfig(vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3, intermediate_size=1536, max_position_embeddings=2048)  # fmt: skip
ROWS, SEQ = 4, 512
BASES, FEATURES = ("autocast", "bf16copy"), ("fusedloss", "fusedadamw")
VARIANTS = (
    "autocast",
    "autocast+fusedloss",
    "bf16copy",
    "autocast+fusedadamw",
    "autocast+fusedloss+fusedadamw",
)


class Bf16Copies:
    """The decoder layers' nn.Linear weights as bf16 compute copies, fp32 masters for the optimizer."""

    def __init__(self, model: MiniGPTForCausalLM):
        self.pairs: list[tuple[nn.Parameter, nn.Parameter]] = []
        for layer in model.model.layers:
            for m in layer.modules():
                if isinstance(m, nn.Linear):
                    for p in m.parameters(recurse=False):
                        master = nn.Parameter(p.detach().clone())
                        p.data = p.data.to(torch.bfloat16)
                        self.pairs.append((p, master))
        # the model's parameters in their order, each copy replaced by its master: clipping sums
        # the gradient norms in this order, so the same order gives the same numbers
        masters = {id(p): m for p, m in self.pairs}
        self.params = [masters.get(id(p), p) for p in model.parameters()]

    def grads_to_masters(self) -> None:
        for p, m in self.pairs:
            m.grad = p.grad.float() if p.grad is not None else None
            p.grad = None

    def refresh(self) -> None:
        with torch.no_grad():
            for p, m in self.pairs:
                p.copy_(m)


class Run:
    """One variant: its model, optimizer and step."""

    def __init__(self, name: str, model: MiniGPTForCausalLM):
        base, *features = name.split("+")
        self.name, self.model, self.fused_loss = name, model, "fusedloss" in features
        self.copies = Bf16Copies(model) if base == "bf16copy" else None
        params = self.copies.params if self.copies else list(model.parameters())
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        self.opt = torch.optim.AdamW(
            groups, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, fused="fusedadamw" in features
        )
        self.params = params
        self.losses: list[float] = []

    def step(self, x: torch.Tensor, y: torch.Tensor) -> list[float]:
        """One optimizer step as trainer/engine.py takes it: [wall, CPU] seconds of the whole step,
        then of forward + backward (the loss included), then of the rest (gradient copies, clipping,
        AdamW, zero_grad, weight refresh)."""
        t0, c0 = time.perf_counter(), time.process_time()
        scale = 1.0 / y.numel()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if self.fused_loss:
                losses = head_losses(self.model.lm_head, self.model.forward_hidden(x), y, grad_scale=scale)
            else:
                logits = self.model(x)
        if self.fused_loss:
            loss = losses.sum()
        else:
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
        (loss * scale).backward()
        t1, c1 = time.perf_counter(), time.process_time()
        if self.copies:
            self.copies.grads_to_masters()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.copies:
            self.copies.refresh()
        t2, c2 = time.perf_counter(), time.process_time()
        self.losses.append(float(loss.detach()) * scale)
        return [t2 - t0, c2 - c0, t1 - t0, c1 - c0, t2 - t1, c2 - c1]


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    ids = torch.randint(0, CFG.vocab_size, (ROWS, SEQ + 1), generator=g)
    return ids[:, :-1], ids[:, 1:]


def profile_step(r: Run, x, y, rows: int = 15) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        r.step(x, y)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40)


def eager(variants: list[str], steps: int, want_profile: bool) -> None:
    torch.manual_seed(0)
    base = MiniGPTForCausalLM(CFG)
    runs = [Run(v, copy.deepcopy(base)) for v in variants]
    del base
    times: dict[str, list[list[float]]] = {r.name: [] for r in runs}
    for s in range(steps + 1):
        x, y = batch(s)
        for r in runs:
            t = r.step(x, y)
            if s:  # the first step warms up
                times[r.name].append(t)
    print(
        f"\nseconds per step over {steps} steps (min / median); fwd+bwd and optimizer: min; speedup: of the"
    )
    print(f"min wall and min CPU seconds against {runs[0].name}")
    head = f"{'variant':<30} {'wall':>13} {'cpu':>13} {'fwd+bwd wall/cpu':>17} {'opt wall/cpu':>13} {'speedup':>12}"
    print(head)
    ref = [min(t[i] for t in times[runs[0].name]) for i in (0, 1)]
    for r in runs:
        ts = times[r.name]
        lo = [min(t[i] for t in ts) for i in range(6)]
        med = [statistics.median(t[i] for t in ts) for i in (0, 1)]
        print(
            f"{r.name:<30} {lo[0]:>5.1f} / {med[0]:>5.1f} {lo[1]:>5.1f} / {med[1]:>5.1f} {lo[2]:>8.1f} / {lo[3]:>5.1f} "
            f"{lo[4]:>5.1f} / {lo[5]:>5.1f} {ref[0] / lo[0]:>5.2f}x/{ref[1] / lo[1]:.2f}x",
            flush=True,
        )
    print(f"\nlosses of steps 1..{steps + 1} (equal losses: the same numbers)")
    for r in runs:
        print(f"{r.name:<30} {' '.join(f'{v:.6f}' for v in r.losses)}")
    if want_profile:
        x, y = batch(steps + 1)
        for r in {runs[0].name: runs[0], runs[-1].name: runs[-1]}.values():
            print(f"\n== profile of one {r.name} step (torch.profiler, self CPU time)")
            print(profile_step(r, x, y), flush=True)


def compiled(variant: str, steps: int) -> dict:
    """The variant compiled and eager, from the same initial model, alternating step by step after
    the compiled one's first step (the compilation) and one eager warm-up step."""
    torch.manual_seed(0)
    base = MiniGPTForCausalLM(CFG)
    eager_run, r = Run(variant, copy.deepcopy(base)), Run(variant, base)
    if r.fused_loss:  # the loss is torch.compiler.disable'd: compile what precedes it
        r.model.forward_hidden = torch.compile(r.model.forward_hidden)
    else:
        r.model = torch.compile(r.model)
    first = r.step(*batch(0))[0]
    eager_run.step(*batch(0))
    t: dict[str, list[list[float]]] = {"eager": [], "compiled": []}
    for s in range(1, steps + 1):
        t["eager"].append(eager_run.step(*batch(s)))
        t["compiled"].append(r.step(*batch(s)))
    out = {k: [min(x[i] for x in v) for i in (0, 1)] for k, v in t.items()}
    return {"first_s": first, **out, "losses": r.losses, "eager_losses": eager_run.losses}


def timed(fn, reps: int) -> float:
    """The least CPU seconds of ``reps`` calls (after one untimed call)."""
    fn()
    best = float("inf")
    for _ in range(reps):
        c0 = time.process_time()
        fn()
        best = min(best, time.process_time() - c0)
    return best


def components(reps: int) -> None:
    """What each alternative removes, timed on its own (least CPU seconds of ``reps`` runs, one thread
    each: no thread waits on another, so other jobs on the machine disturb the figure least)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MiniGPTForCausalLM(CFG)
    x, y = batch(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    F.cross_entropy(logits.float().flatten(0, 1), y.flatten()).backward()
    del logits
    weights = [m.weight for layer in model.model.layers for m in layer.modules() if isinstance(m, nn.Linear)]
    n_w = sum(w.numel() for w in weights)
    grads16 = [w.grad.to(torch.bfloat16) for w in weights if w.grad is not None]
    copies16 = [w.detach().to(torch.bfloat16) for w in weights]
    masters_grad = [torch.empty_like(w) for w in weights]
    rows = {
        "autocast: the forward's weight casts (fp32 -> new bf16)": lambda: [
            w.to(torch.bfloat16) for w in weights
        ],
        "autocast: the backward's weight-gradient casts (bf16 -> new fp32)": lambda: [
            g.float() for g in grads16
        ],
        "bf16copy: refresh (fp32 master -> the bf16 copy, in place)": lambda: [
            c.copy_(w.detach()) for c, w in zip(copies16, weights, strict=True)
        ],
        "bf16copy: gradients to masters (bf16 -> kept fp32, in place)": lambda: [
            m.copy_(g) for m, g in zip(masters_grad, grads16, strict=True)
        ],
    }
    print(
        f"\ncomponents: least CPU seconds of {reps} runs, 1 thread ({n_w / 1e6:.1f}M decoder-layer weights)"
    )
    for name, fn in rows.items():
        print(f"  {name:<66} {timed(fn, reps):6.3f}", flush=True)
    params = list(model.parameters())
    for fused in (False, True):
        opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, fused=fused)

        def opt_step(opt=opt) -> None:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()

        print(f"  {'clip + AdamW step, fused=' + str(fused):<66} {timed(opt_step, reps):6.3f}", flush=True)
    h = model.forward_hidden(x).detach().requires_grad_()
    scale = 1.0 / y.numel()

    def loss_step(fused: bool) -> None:
        h.grad = model.lm_head.weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if fused:
                loss = head_losses(model.lm_head, h, y, grad_scale=scale).sum()
            else:
                logits = model.lm_head(h)
        if not fused:
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
        (loss * scale).backward()

    for fused in (False, True):
        label = "LM head + loss, forward + backward, " + ("fused" if fused else "plain")
        print(f"  {label:<66} {timed(lambda fused=fused: loss_step(fused), reps):6.3f}", flush=True)
    torch.set_num_threads(threads)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}"
    )
    p.add_argument("--compile", default="", help="comma-separated variants to also time under torch.compile")
    p.add_argument("--profile", action="store_true", help="print the top ops of one step")
    p.add_argument("--components", type=int, default=0, help="time each part on its own, this many runs")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--compiled_child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compiled_child:
        print(json.dumps(compiled(args.compiled_child, args.steps)))
        return
    variants = [v for v in args.variants.split(",") if v]
    to_compile = [v for v in args.compile.split(",") if v]
    bad = [
        v
        for v in variants + to_compile
        if v.split("+")[0] not in BASES or not set(v.split("+")[1:]) <= set(FEATURES)
    ]
    if bad:
        raise UserError(
            f"--variants/--compile: unknown {bad}; a variant is one of {', '.join(BASES)} followed by any of "
            f"{', '.join('+' + f for f in FEATURES)}"
        )
    n = CFG.num_params()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; SmolLM2-135M shape ({n / 1e6:.1f}M "
          f"parameters), {ROWS} x {SEQ} tokens, bf16 autocast, AdamW")  # fmt: skip
    if args.components:
        components(args.components)
    if variants:
        eager(variants, args.steps, args.profile)
    for v in to_compile:
        cmd = [
            sys.executable,
            __file__,
            "--compiled_child",
            v,
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise UserError(f"torch.compile run of {v} failed: {proc.stderr.strip().splitlines()[-1:]}")
        c = json.loads(proc.stdout.strip().splitlines()[-1])
        (ew, ec), (cw, cc) = c["eager"], c["compiled"]
        print(
            f"\ncompiled {v}: first step (compiling) {c['first_s']:.1f} s; then, min of {args.steps} steps "
            f"alternating with eager: compiled {cw:.2f} s / {cc:.2f} cpu-s, eager {ew:.2f} s / {ec:.2f} cpu-s "
            f"({ew / cw:.2f}x / {ec / cc:.2f}x)"
        )
        print(f"  losses compiled {' '.join(f'{x:.6f}' for x in c['losses'])}")
        print(f"  losses eager    {' '.join(f'{x:.6f}' for x in c['eager_losses'])}", flush=True)


if __name__ == "__main__":
    run(main)

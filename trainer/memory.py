"""Training memory per process, on paper: the check before any data work, and the README's table.

Model state (mixed precision with fp32 master weights, AdamW; Rajbhandari et al. 2020, "ZeRO",
section 3.1): per parameter 4 bytes of weight, 4 of gradient and 8 of AdamW moments, 16 bytes.
DDP holds all of it in every process; FSDP holds 1/world of it, plus the full weights and
gradients (8 bytes per parameter, all-gathered fp32 here: trainer/parallel.py) of the layer
being computed and of the root module's own parameters (embedding and an untied LM head), which
FSDP2 keeps gathered from the forward pass to the backward.

Activations of one decoder layer for a micro-batch of b rows of s tokens, 16-bit, without
recomputation (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
Models", eq. 1 with t = 1): s*b*h*(34 + 5*a*s/h) bytes, twice that in fp32 (--dtype float32).
SDPA's fused kernels do not keep the attention scores and softmax, which is what the 5*a*s/h term
counts, so it is left out for them.
With activation checkpointing only each layer's input is kept (4*s*b*h bytes here: the residual
stream is fp32 under autocast), plus one layer's activations while it is recomputed.
The logits: with ``--loss plain`` 4 bytes per row, position and vocabulary entry, twice (fp32
logits and their gradient); with ``--loss fused`` (the default, model/loss.py) one chunk's
transient logits, at most its ``chunk_rows`` tokens x vocabulary x 6 bytes (16-bit matmul dtype and
fp32) or 4 (fp32), 1 GiB by default, whatever the batch.

These are estimates: allocator overhead, fragmentation and framework buffers come on top, so the
check refuses a run only when the estimate alone exceeds what the device has.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from model.config import ModelConfig
from model.errors import UserError
from model.loss import chunk_rows

GiB = 1 << 30
STATE_BYTES_PER_PARAM = 16  # fp32 weight 4 + fp32 gradient 4 + AdamW exp_avg 4 + exp_avg_sq 4


@dataclass(frozen=True)
class Estimate:
    """Bytes per process."""

    state: float  # weights, gradients, optimizer (the process's share)
    layer: float  # FSDP: full weights and gradients of one layer and of the root (0 for DDP)
    activations: float
    logits: float

    @property
    def total(self) -> float:
        return self.state + self.layer + self.activations + self.logits


def estimate(
    cfg: ModelConfig,
    *,
    strategy: str,
    world_size: int,
    micro_batch: int,
    seq_len: int,
    checkpointing: bool,
    fused_attention: bool = True,
    loss: str = "fused",
    dtype: torch.dtype = torch.bfloat16,
) -> Estimate:
    """Memory per process of a training step (see the module docstring for the formulas), bytes.
    ``loss``: the trainer's --loss (fused / plain); ``dtype``: its compute dtype (--dtype)."""
    n = cfg.num_params()
    h, a, s, b, layers = cfg.hidden_size, cfg.num_attention_heads, seq_len, micro_batch, cfg.num_hidden_layers
    shards = world_size if strategy == "fsdp" else 1
    state = STATE_BYTES_PER_PARAM * n / shards
    root = cfg.vocab_size * h * (1 if cfg.tie_word_embeddings else 2)
    per_layer = (n - root) / max(layers, 1)
    layer = 8 * (per_layer + root) if strategy == "fsdp" and shards > 1 else 0.0
    one_layer = (
        s * b * h * (34 + (0 if fused_attention else 5 * a * s / h)) * (2 if dtype == torch.float32 else 1)
    )
    activations = (layers * 4 * s * b * h + one_layer) if checkpointing else layers * one_layer
    if loss == "fused":
        per_token = cfg.vocab_size * (4 + (0 if dtype == torch.float32 else torch.finfo(dtype).bits // 8))
        logits = float(min(s * b, chunk_rows(cfg.vocab_size, dtype)) * per_token)
    else:
        logits = 2 * 4 * s * b * cfg.vocab_size
    return Estimate(state, layer, activations, logits)


def device_memory(device: torch.device) -> float | None:
    """Bytes this process may use on ``device``: a GPU's total memory, or the host's available RAM
    (/proc/meminfo MemAvailable); None when it cannot be told."""
    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError):
        return None


def check_fits(cfg: ModelConfig, device: torch.device, *, processes_here: int = 1, **kw) -> Estimate:
    """The estimate, or a UserError (before any data work) when it exceeds the device's memory:
    it names the parts and what to change. ``processes_here``: processes sharing the host (CPU)."""
    est = estimate(cfg, **kw)
    have = device_memory(device)
    if have is not None and device.type != "cuda":
        have /= max(processes_here, 1)
    if have is not None and est.total > have:
        n = cfg.num_params()
        raise UserError(
            f"this run needs about {est.total / GiB:.1f} GiB per process on {device} and it has {have / GiB:.1f} GiB: "
            f"model state {est.state / GiB:.1f} GiB ({n / 1e6:.0f}M parameters x 16 bytes"
            f"{' / ' + str(kw['world_size']) + ' processes' if kw['strategy'] == 'fsdp' else ''}), activations "
            f"{est.activations / GiB:.1f} GiB, logits {est.logits / GiB:.1f} GiB; use --strategy fsdp over more "
            "processes, --activation_checkpointing, or a smaller --batch_size / --max_seq_len"
        )
    return est


def peak_memory(device: torch.device) -> float:
    """This process's peak memory so far, bytes: max allocated on a GPU, peak RSS on the CPU."""
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


# Shapes of the open models people mid-train (their config.json files), for the README's table.
TABLE_MODELS = {
    "SmolLM2-135M": ModelConfig(vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                                num_key_value_heads=3, intermediate_size=1536),
    "SmolLM2-360M": ModelConfig(vocab_size=49152, hidden_size=960, num_hidden_layers=32, num_attention_heads=15,
                                num_key_value_heads=5, intermediate_size=2560),
    "Llama-3.2-1B": ModelConfig(vocab_size=128256, hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                                num_key_value_heads=8, intermediate_size=8192),
    "Llama-3.2-3B": ModelConfig(vocab_size=128256, hidden_size=3072, num_hidden_layers=28, num_attention_heads=24,
                                num_key_value_heads=8, intermediate_size=8192),
}  # fmt: skip
TABLE_SETTINGS = (("ddp", 1, False), ("ddp", 1, True), ("fsdp", 8, False), ("fsdp", 8, True))
TABLE_CARDS = (24, 40, 80)


def fits_table(micro_batch: int = 1, seq_len: int = 2048) -> str:
    """The README's markdown table: per-GPU memory of each model under each strategy, and the
    cards it fits on, from :func:`estimate` (fused attention, as on a GPU; the default fused loss in
    bf16). A "24 / 40 / 80 GB" card holds that many GiB (24,576 / 40,960 / 81,920 MiB), so totals (GiB) compare with it
    directly; the CUDA context and allocator slack (~1 GiB) come on top."""
    lines = [
        f"| model | params | strategy | model state | activations + logits (batch {micro_batch} x {seq_len}) "
        f"| total per GPU | fits on {' / '.join(f'{c} GB' for c in TABLE_CARDS)} |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, cfg in TABLE_MODELS.items():
        for strategy, world, ac in TABLE_SETTINGS:
            e = estimate(cfg, strategy=strategy, world_size=world, micro_batch=micro_batch, seq_len=seq_len,
                         checkpointing=ac)  # fmt: skip
            fits = " / ".join("yes" if e.total <= c * GiB else "no" for c in TABLE_CARDS)
            label = ("DDP" if strategy == "ddp" else f"FSDP x{world}") + (" + AC" if ac else "")
            lines.append(
                f"| {name} | {cfg.num_params() / 1e9:.2f}B | {label} | {(e.state + e.layer) / GiB:.1f} GiB "
                f"| {(e.activations + e.logits) / GiB:.1f} GiB | {e.total / GiB:.1f} GiB | {fits} |"
            )
    return "\n".join(lines)

"""The one training engine: every stage script (pretrain, midtrain) parses its flags, builds what
differs (data, starting weights, LR schedule, defaults) and calls ``fit``.

It owns the loop, gradient accumulation, precision, DDP, evaluation per data source,
logging (terminal, metrics JSONL, wandb), checkpointing and exact resume.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from dataset.packed import IGNORE_INDEX, PackedCorpus, PackedDataset, StepSampler
from dataset.tokenizer import load_tokenizer, tokenizer_from_dict, tokenizer_sha256
from model.config import ModelConfig
from model.errors import UserError
from model.model import MiniGPTForCausalLM
from trainer import dist
from trainer.checkpoint import (
    atomic_torch_save,
    available,
    checkpoint_paths,
    load_checkpoint,
    model_from_checkpoint,
    resolve_weight,
    weights_state,
)
from trainer.cli import setup_logging
from trainer.metrics import mfu, peak_flops
from trainer.paths import repo_path

log = logging.getLogger("trainer")

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
ARCH_FLAGS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")


# --------------------------------------------------------------------------- flags


@dataclass(frozen=True)
class TrainConfig:
    """Every engine flag, typed. Stage scripts add their own flags on top."""

    save_dir: str
    checkpoint_dir: str
    cache_dir: str
    save_weight: str
    tokenizer_path: str | None
    epochs: int
    max_steps: int | None
    stop_after: int | None
    batch_size: int
    accumulation_steps: int
    learning_rate: float
    warmup_ratio: float
    weight_decay: float
    grad_clip: float
    dtype: str
    device: str | None
    hidden_size: int | None
    num_hidden_layers: int | None
    num_attention_heads: int | None
    num_key_value_heads: int | None
    max_seq_len: int | None
    from_weight: str | None
    from_resume: int
    log_interval: int
    save_interval: int
    eval_interval: int
    eval_batches: int
    early_eval_steps: int
    early_eval_interval: int
    use_wandb: bool
    wandb_project: str
    wandb_run_name: str | None
    use_compile: bool
    num_workers: int
    seed: int
    peak_tflops: float | None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        cfg = cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        positive = (
            "epochs",
            "batch_size",
            "accumulation_steps",
            "log_interval",
            "early_eval_interval",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise UserError(f"--{name} must be positive, got {getattr(self, name)}")
        for name in ("max_steps", "stop_after"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise UserError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.max_seq_len is not None and self.max_seq_len <= 0:
            raise UserError(f"--max_seq_len must be positive, got {self.max_seq_len}")
        if self.eval_batches < 0:
            raise UserError(
                f"--eval_batches must be >= 0 (0: the whole validation set), got {self.eval_batches}"
            )
        if self.learning_rate <= 0:
            raise UserError(f"--learning_rate must be positive, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise UserError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype {self.dtype!r}: unknown dtype; use one of {', '.join(DTYPES)}")
        if self.from_resume not in (0, 1):
            raise UserError(f"--from_resume takes 0 or 1, got {self.from_resume}")

    @property
    def global_batch_rows(self) -> int:
        return self.batch_size * self.accumulation_steps


def engine_parser(
    description: str, *, save_weight: str, learning_rate: float, warmup_ratio: float, wandb_project: str
) -> argparse.ArgumentParser:
    """The flags every stage shares (MiniMind-compatible names), with the stage's defaults."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("outputs")
    g.add_argument(
        "--save_dir", default=str(repo_path("out")), help="weights folder (default: out/ at the repo root)"
    )
    g.add_argument(
        "--checkpoint_dir",
        default=str(repo_path("checkpoints")),
        help="resume-state folder (default: checkpoints/)",
    )
    g.add_argument(
        "--cache_dir", default=str(repo_path("out", "cache")), help="token cache folder (default: out/cache)"
    )
    g.add_argument("--save_weight", default=save_weight, help=f"weight name prefix (default: {save_weight})")
    g = p.add_argument_group("model")
    g.add_argument(
        "--tokenizer_path",
        default=None,
        help="tokenizer folder (default: out/tokenizer, or the one in --from_weight)",
    )
    g.add_argument(
        "--hidden_size",
        type=int,
        default=None,
        help="default 512 for a new model; taken from the checkpoint otherwise",
    )
    g.add_argument("--num_hidden_layers", type=int, default=None, help="default 8 for a new model")
    g.add_argument("--num_attention_heads", type=int, default=None, help="default 8 for a new model")
    g.add_argument("--num_key_value_heads", type=int, default=None, help="default 2 for a new model (GQA)")
    g.add_argument(
        "--max_seq_len",
        type=int,
        default=None,
        help="tokens per packed training row (default: the --from_weight run's, else 512)",
    )
    g.add_argument(
        "--from_weight",
        default=None,
        help="start from these weights: a prefix (pretrain), a stem (pretrain_512) or a .pth path",
    )
    g.add_argument(
        "--from_resume",
        type=int,
        default=0,
        choices=(0, 1),
        help="1: continue from the resume checkpoint if there is one",
    )
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=1)
    g.add_argument(
        "--max_steps",
        type=int,
        default=None,
        help="cap on optimizer steps; the LR schedule spans the capped total",
    )
    g.add_argument(
        "--stop_after",
        type=int,
        default=None,
        help="stop after this optimizer step, saving a resume checkpoint, as if preempted (the schedule is unchanged)",
    )
    g.add_argument("--batch_size", type=int, default=32, help="rows per micro-batch per process")
    g.add_argument("--accumulation_steps", type=int, default=1)
    g.add_argument(
        "--learning_rate", type=float, default=learning_rate, help=f"peak LR (default {learning_rate:g})"
    )
    g.add_argument(
        "--warmup_ratio",
        type=float,
        default=warmup_ratio,
        help=f"fraction of steps spent warming up (default {warmup_ratio:g})",
    )
    g.add_argument("--weight_decay", type=float, default=0.1)
    g.add_argument("--grad_clip", type=float, default=1.0, help="max global grad norm (0: off)")
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default=None, help="cuda if available else cpu; or cuda:N")
    g.add_argument(
        "--dtype", default="bfloat16", help="bfloat16 | float16 | float32 (autocast; bf16 on CPU too)"
    )
    g.add_argument("--use_compile", action="store_true", help="torch.compile the model")
    g.add_argument(
        "--num_workers",
        type=int,
        default=0,
        help="DataLoader workers (rows come from a memory map; 0 is fine on CPU)",
    )
    g.add_argument("--seed", type=int, default=42)
    g.add_argument(
        "--peak_tflops",
        type=float,
        default=None,
        help="peak per device for MFU (default: GPU table, or a CPU matmul measured at start)",
    )
    g = p.add_argument_group("logging")
    g.add_argument("--log_interval", type=int, default=10)
    g.add_argument(
        "--save_interval",
        type=int,
        default=500,
        help="save weights + resume state every N steps (0: only at the end)",
    )
    g.add_argument(
        "--eval_interval",
        type=int,
        default=100,
        help="validation loss per source every N steps (0: only at start and end)",
    )
    g.add_argument(
        "--eval_batches",
        type=int,
        default=20,
        help="validation batches per evaluation (0: the whole validation set)",
    )
    g.add_argument(
        "--early_eval_steps",
        type=int,
        default=0,
        help="also evaluate every --early_eval_interval steps during the first N steps (to see an early loss spike)",
    )
    g.add_argument("--early_eval_interval", type=int, default=1)
    g.add_argument("--use_wandb", action="store_true")
    g.add_argument("--wandb_project", default=wandb_project)
    g.add_argument("--wandb_run_name", default=None)
    return p


# --------------------------------------------------------------------------- setup


@dataclass
class Session:
    """Process-level state chosen once: ranks, device, precision."""

    cfg: TrainConfig
    dist: dist.DistInfo
    device: torch.device
    dtype: torch.dtype

    def autocast(self):
        """The one precision context: autocast to bf16/fp16 (CPU included), nothing for fp32."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def setup(cfg: TrainConfig) -> Session:
    info, device = dist.init_distributed(cfg.device)
    setup_logging(info.rank)
    dtype = DTYPES[cfg.dtype]
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--dtype bfloat16: this GPU has no bf16 support; use --dtype float16")
    torch.manual_seed(cfg.seed)
    return Session(cfg, info, device, dtype)


@dataclass
class Start:
    """Where a run starts: the model and tokenizer, and the checkpoint they came from."""

    model: MiniGPTForCausalLM
    tokenizer: Any
    resume: dict | None = None  # the resume state when continuing an interrupted run
    parent: dict | None = None  # meta of the --from_weight checkpoint
    parent_path: Path | None = None


def _check_arch_flags(cfg: TrainConfig, model_cfg: ModelConfig, where: Path) -> None:
    for name in ARCH_FLAGS:
        flag = getattr(cfg, name)
        if flag is not None and flag != getattr(model_cfg, name):
            raise UserError(
                f"--{name} {flag} does not match {where} ({name}={getattr(model_cfg, name)}); "
                "the architecture comes from the checkpoint: drop the flag"
            )


def _check_tokenizer_flag(cfg: TrainConfig, tok, where: Path) -> None:
    if cfg.tokenizer_path is not None and tokenizer_sha256(
        load_tokenizer(cfg.tokenizer_path)
    ) != tokenizer_sha256(tok):
        raise UserError(
            f"--tokenizer_path {cfg.tokenizer_path} is not the tokenizer {where} was trained with; "
            "drop the flag (the checkpoint carries its tokenizer)"
        )


def load_start(session: Session, require_weight: Callable[[str], str] | None = None) -> Start:
    """Resume state if asked for and present, else --from_weight, else a new model.

    ``require_weight``: for stages that never start from scratch (mid-training), turns "what
    is missing" into the error message, both when --from_weight is absent and when it names
    no checkpoint. Settles ``session.cfg.max_seq_len``: the flag, else the length the starting
    checkpoint was trained with, else 512.
    """
    start = _load_start(session.cfg, require_weight)
    cfg = session.cfg
    if cfg.max_seq_len is None:
        trained = (start.resume or {}).get("meta", {}).get("max_seq_len") or (start.parent or {}).get(
            "max_seq_len"
        )
        session.cfg = dataclasses.replace(cfg, max_seq_len=int(trained or 512))
    return start


def _load_start(cfg: TrainConfig, require_weight: Callable[[str], str] | None) -> Start:
    if cfg.from_resume:
        try:
            path = resolve_weight(cfg.save_weight, cfg.checkpoint_dir, cfg.hidden_size, suffix="_resume")
        except UserError:
            path = None
            log.info(
                f"No resume checkpoint for '{cfg.save_weight}' in {cfg.checkpoint_dir}: starting a new run"
            )
        if path is not None:
            ckpt = load_checkpoint(path)
            if "optimizer" not in ckpt:
                raise UserError(f"{path}: a weights file, not a resume checkpoint")
            model = model_from_checkpoint(ckpt, path)
            _check_arch_flags(cfg, model.config, path)
            tok = tokenizer_from_dict(ckpt["tokenizer"])
            _check_tokenizer_flag(cfg, tok, path)
            log.info(f"Resuming from {path} at step {ckpt['step']}")
            parent = ckpt["meta"].get("parent")
            return Start(model, tok, resume=ckpt, parent=parent)
    if cfg.from_weight:
        try:
            path = resolve_weight(cfg.from_weight, cfg.save_dir, cfg.hidden_size)
        except UserError as e:
            if require_weight is None:
                raise
            raise UserError(require_weight(str(e))) from None
        ckpt = load_checkpoint(path)
        model = model_from_checkpoint(ckpt, path)
        _check_arch_flags(cfg, model.config, path)
        tok = tokenizer_from_dict(ckpt["tokenizer"])
        _check_tokenizer_flag(cfg, tok, path)
        meta = {**ckpt["meta"], "path": str(path)}
        return Start(model, tok, parent=meta, parent_path=path)
    if require_weight is not None:
        raise UserError(require_weight(f"--from_weight is required; {available(cfg.save_dir)}"))
    tok = load_tokenizer(cfg.tokenizer_path or repo_path("out", "tokenizer"))
    model_cfg = ModelConfig(
        vocab_size=len(tok),
        hidden_size=cfg.hidden_size or 512,
        num_hidden_layers=cfg.num_hidden_layers or 8,
        num_attention_heads=cfg.num_attention_heads or 8,
        num_key_value_heads=cfg.num_key_value_heads or 2,
        max_position_embeddings=max(4096, cfg.max_seq_len or 512),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return Start(MiniGPTForCausalLM(model_cfg), tok)


# --------------------------------------------------------------------------- evaluation


def token_losses(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-token cross entropy (fp32), 0 where the target is ignored."""
    logits = model(x)
    return F.cross_entropy(
        logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    ).view_as(y)


@torch.no_grad()
def evaluate(
    model, corpus: PackedCorpus, session: Session, batch_size: int, max_batches: int
) -> dict[str, float]:
    """Mean validation loss overall and per source, on the first ``max_batches`` batches of rows.

    Rows are split across ranks and the per-source sums all-reduced, so every rank returns the
    same numbers. Keys: "all" and each source name.
    """
    was_training = model.training
    model.eval()
    n_src = len(corpus.source_names)
    sums = torch.zeros(n_src + 1, dtype=torch.float64)
    counts = torch.zeros(n_src + 1, dtype=torch.float64)
    n_rows = corpus.num_rows if max_batches == 0 else min(corpus.num_rows, batch_size * max_batches)
    rows = list(range(n_rows))[session.dist.rank :: session.dist.world_size]
    ds = PackedDataset(corpus)
    for i in range(0, len(rows), batch_size):
        x, y, s = (torch.stack(t) for t in zip(*(ds[j] for j in rows[i : i + batch_size]), strict=True))
        with session.autocast():
            losses = token_losses(model, x.to(session.device), y.to(session.device)).cpu().double()
        s = s.clamp(min=-1) + 1  # pad positions (-1) go to bin 0 with zero loss
        sums += torch.bincount(s.flatten(), weights=losses.flatten(), minlength=n_src + 1)
        counts += torch.bincount(s.flatten(), minlength=n_src + 1).double()
    dist.all_reduce_sum(sums)
    dist.all_reduce_sum(counts)
    model.train(was_training)
    out = {"all": float(sums[1:].sum() / counts[1:].sum().clamp(min=1))}
    if n_src == 1:  # a single source: its loss is the overall loss
        return out
    for k, name in enumerate(corpus.source_names, 1):
        if counts[k] > 0:
            out[name] = float(sums[k] / counts[k])
    return out


def format_losses(losses: dict[str, float]) -> str:
    return " ".join(f"{k}:{v:.4f}" for k, v in losses.items())


# --------------------------------------------------------------------------- the loop


@dataclass
class Stage:
    """What a stage script hands the engine besides the model and data."""

    name: str  # "pretrain", "midtrain": stored in the checkpoint meta
    lr_at: Callable[[int, int], float]  # (step, total_steps) -> LR used at that step
    banner: Callable[[int], list[str]] = lambda total: []  # lines printed once the run length is known
    identity: dict = field(default_factory=dict)  # what makes a resume checkpoint belong to this run
    meta: dict = field(default_factory=dict)  # extra facts stored in the checkpoint (data config, ...)
    target_shares: dict[str, float] | None = None  # the mixture's per-source ratio (of rows), to compare
    optimizer_state: dict | None = None  # start from this AdamW state (e.g. carried over from pretrain)


def _optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(
        groups, lr=cfg.learning_rate, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda"
    )


def _run_identity(cfg: TrainConfig, session: Session, model: MiniGPTForCausalLM, tok, stage: Stage) -> dict:
    return {
        "stage": stage.name,
        "model_config": model.config.to_dict(),
        "tokenizer_sha256": tokenizer_sha256(tok),
        "seed": cfg.seed,
        "max_seq_len": cfg.max_seq_len,
        "global_batch_rows": cfg.global_batch_rows * session.dist.world_size,
        **stage.identity,
    }


def _identity_hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _check_resume_identity(saved: dict, now: dict, path: str) -> None:
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff:
        details = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {now.get(k)!r}" for k in diff[:3])
        raise UserError(
            f"{path} belongs to another run ({details}); resume with the same settings, "
            "or drop --from_resume / use another --save_weight to start a new run"
        )


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _fmt_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def fit(session: Session, start: Start, train: PackedCorpus, val: PackedCorpus | None, stage: Stage) -> dict:
    """Train ``start.model`` on ``train`` and return a summary dict (also stored in the checkpoint)."""
    cfg, info, device = session.cfg, session.dist, session.device
    model, tok = start.model.to(device), start.tokenizer
    model.train()

    sampler_probe = StepSampler(
        train.num_rows, cfg.batch_size, cfg.accumulation_steps, info.world_size, info.rank, cfg.seed, 1
    )
    steps_per_epoch = sampler_probe.steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)

    identity = _run_identity(cfg, session, model, tok, stage)
    paths = checkpoint_paths(cfg.save_dir, cfg.checkpoint_dir, cfg.save_weight, model.config.hidden_size)
    optimizer = _optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=session.dtype == torch.float16)
    step, history, seen = 0, [], torch.zeros(len(train.source_names), dtype=torch.float64)
    wandb_id = None
    if start.resume is not None:
        r = start.resume
        _check_resume_identity(r["identity"], identity, str(paths.resume))
        optimizer.load_state_dict(r["optimizer"])
        scaler.load_state_dict(r["scaler"])
        _set_rng_state(r["rng"], device)
        step, history, wandb_id = r["step"], r["eval_history"], r.get("wandb_id")
        seen = r["source_tokens_seen"].double()
        if r["total_steps"] != total:
            log.info(
                f"Run length changed from {r['total_steps']} to {total} steps: the LR schedule is recomputed over the new total"
            )
        if step >= total:
            raise UserError(
                f"{paths.resume} is already at step {step} of {total}; raise --epochs or --max_steps to train further"
            )
    elif stage.optimizer_state is not None:
        optimizer.load_state_dict(stage.optimizer_state)
    for g in optimizer.param_groups:  # the schedule sets the LR each step; keep "initial_lr" out of it
        g["lr"] = stage.lr_at(step, total)

    train_model = torch.compile(model) if cfg.use_compile else model
    if info.enabled:
        train_model = DDP(train_model, device_ids=[device.index] if device.type == "cuda" else None)

    n_params = model.num_params()
    flops_per_token = model.config.flops_per_token(cfg.max_seq_len)
    peak, peak_src = peak_flops(device, session.dtype, cfg.peak_tflops)
    log.info(
        f"Model: {n_params / 1e6:.2f}M parameters ({model.config.hidden_size}x{model.config.num_hidden_layers}, "
        f"vocab {model.config.vocab_size}) | device {device} x{info.world_size} | {cfg.dtype}"
        f"{' + compile' if cfg.use_compile else ''}"
    )
    log.info(
        f"Data: {train.num_tokens:,} tokens, {train.num_rows:,} rows of {cfg.max_seq_len} | global batch "
        f"{cfg.global_batch_rows * info.world_size} rows | {steps_per_epoch} steps/epoch | {total} steps"
    )
    log.info(f"Peak for MFU: {peak / 1e12:.2f} TFLOP/s per device ({peak_src})")
    for line in stage.banner(total):
        log.info(line)

    wandb_run = None
    if cfg.use_wandb and info.is_main:
        import wandb

        wandb_run = wandb.init(
            project=cfg.wandb_project,
            name=cfg.wandb_run_name,
            id=wandb_id,
            resume="allow",
            config={**dataclasses.asdict(cfg), "stage": stage.name, **stage.meta},
        )
        wandb_id = wandb_run.id

    metrics_path = paths.metrics
    if info.is_main:
        _truncate_metrics(metrics_path, step)

    def record(kind: str, data: dict) -> None:
        if not info.is_main:
            return
        with open(metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"kind": kind, **data}) + "\n")
        if wandb_run is not None and kind != "summary":
            prefix = "val/" if kind == "eval" else "train/"
            wandb_run.log({prefix + k: v for k, v in data.items() if k != "step"}, step=data["step"])

    def run_eval() -> None:
        if val is None:
            return
        losses = evaluate(model, val, session, cfg.batch_size, cfg.eval_batches)
        history.append({"step": step, **losses})
        log.info(f"eval step {step}/{total}: val_loss {format_losses(losses)}")
        record("eval", {"step": step, **{f"loss_{k}": v for k, v in losses.items()}})

    def save(final: bool) -> None:
        state = weights_state(
            model,
            tok,
            {
                "stage": stage.name,
                "save_weight": cfg.save_weight,
                "max_seq_len": cfg.max_seq_len,
                "step": step,
                "total_steps": total,
                "final_lr": stage.lr_at(min(step, total) - 1, total) if step else stage.lr_at(0, total),
                "tokens_seen": float(seen.sum()),
                "parent": start.parent,
                "identity_sha256": _identity_hash(identity),
                "eval_history": history,
                "finished": final,
                **stage.meta,
            },
        )
        if info.is_main:
            atomic_torch_save(state, paths.weights)
            atomic_torch_save(
                {
                    **state,
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": _rng_state(device),
                    "step": step,
                    "total_steps": total,
                    "world_size": info.world_size,
                    "identity": identity,
                    "eval_history": history,
                    "source_tokens_seen": seen,
                    "wandb_id": wandb_id,
                },
                paths.resume,
            )
        dist.barrier()

    if not history:
        run_eval()

    loader = torch.utils.data.DataLoader(
        PackedDataset(train),
        batch_sampler=StepSampler(
            train.num_rows,
            cfg.batch_size,
            cfg.accumulation_steps,
            info.world_size,
            info.rank,
            cfg.seed,
            total,
            start_step=step,
        ),
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
    )
    stop_at = min(total, cfg.stop_after) if cfg.stop_after else total
    bar = tqdm(
        total=stop_at,
        initial=step,
        desc=stage.name,
        unit="step",
        disable=None if info.is_main else True,
        mininterval=2.0,
        leave=False,
    )
    micro, loss_acc, tokens_acc = 0, torch.zeros((), dtype=torch.float64), 0
    interval_tokens, interval_t0 = 0, time.perf_counter()
    run_t0, run_step0 = time.perf_counter(), step
    last = {}
    for x, y, s in loader:
        if step >= stop_at:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        lr = stage.lr_at(step, total)
        for g in optimizer.param_groups:
            g["lr"] = lr
        micro += 1
        sync = micro == cfg.accumulation_steps
        ctx = train_model.no_sync() if info.enabled and not sync else contextlib.nullcontext()
        with ctx:
            with session.autocast():
                logits = train_model(x)
            n_valid = (y != IGNORE_INDEX).sum()
            loss = F.cross_entropy(
                logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
            )
            loss = loss / n_valid.clamp(min=1)
            scaler.scale(loss / cfg.accumulation_steps).backward()
        loss_acc += loss.detach().double().cpu() / cfg.accumulation_steps
        tokens_acc += int(n_valid)
        valid_src = s[s >= 0]
        if len(train.source_names):
            seen += torch.bincount(valid_src, minlength=len(train.source_names)).double()
        if not sync:
            continue
        micro = 0
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        )
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        stats = torch.stack([loss_acc, torch.tensor(float(tokens_acc), dtype=torch.float64)])
        dist.all_reduce_sum(stats)
        step_loss, step_tokens = float(stats[0]) / info.world_size, int(stats[1])
        interval_tokens += step_tokens
        loss_acc.zero_()
        tokens_acc = 0
        last = {"loss": step_loss, "lr": lr, "grad_norm": float(grad_norm)}
        if not math.isfinite(step_loss):
            raise UserError(
                f"loss became {step_loss} at step {step}; lower --learning_rate or use --dtype bfloat16/float32"
            )

        if step % cfg.log_interval == 0 or step == stop_at:
            el = time.perf_counter() - interval_t0
            tps = interval_tokens / el if el > 0 else 0.0
            util = mfu(tps, flops_per_token, peak * info.world_size)
            eta = (time.perf_counter() - run_t0) / max(step - run_step0, 1) * (stop_at - step)
            epoch = min((step - 1) // steps_per_epoch + 1, cfg.epochs)
            log.info(
                f"Epoch:[{epoch}/{cfg.epochs}]({step}/{total}) loss:{step_loss:.6f} lr:{lr:.10f} "
                f"grad_norm:{float(grad_norm):.4f} tokens/s:{tps:.0f} MFU:{util * 100:.2f}% ETA {_fmt_time(eta)}"
            )
            seen_all = seen.clone()
            dist.all_reduce_sum(seen_all)
            shares = (seen_all / seen_all.sum().clamp(min=1)).tolist()
            record(
                "train",
                {
                    "step": step,
                    "epoch": epoch,
                    **last,
                    "tokens_per_sec": tps,
                    "mfu": util,
                    **{f"share_{n}": v for n, v in zip(train.source_names, shares, strict=True)},
                },
            )
            interval_tokens, interval_t0 = 0, time.perf_counter()
        pause_t0 = time.perf_counter()
        if step < total and (
            (cfg.eval_interval and step % cfg.eval_interval == 0)
            or (step <= cfg.early_eval_steps and step % cfg.early_eval_interval == 0)
        ):
            run_eval()
        if cfg.save_interval and step % cfg.save_interval == 0 and step < stop_at:
            save(final=False)
        interval_t0 += time.perf_counter() - pause_t0  # throughput counts training time only
    bar.close()

    finished = step >= total
    if finished:
        run_eval()
    save(final=finished)
    dist.all_reduce_sum(seen)
    summary = _summary(
        train, seen, history, stage, finished, step, total, paths, time.perf_counter() - run_t0
    )
    record("summary", {k: summary[k] for k in ("step", "finished", "token_share", "seconds")})
    if wandb_run is not None:
        wandb_run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
        wandb_run.finish()
    return summary


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the metrics log consistent with the state we start from: drop records past ``step``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if step == 0 or not path.exists():
        path.write_text("")
        return
    keep = [
        line
        for line in path.read_text().splitlines()
        if line and json.loads(line)["step"] <= step and json.loads(line)["kind"] != "summary"
    ]
    path.write_text("".join(line + "\n" for line in keep))


def _summary(train, seen, history, stage, finished, step, total, paths, seconds) -> dict:
    names = train.source_names
    shares = (seen / seen.sum().clamp(min=1)).tolist()
    corpus = train.source_token_counts()
    corpus_total = max(sum(corpus.values()), 1)
    if len(names) > 1 or stage.target_shares:
        # a mixture's ratios count rows (samples); sources with longer rows take a larger share of tokens
        log.info(
            "Share of tokens per source: realized in training | in the prepared data | mixture ratio (rows)"
        )
        for n, share in zip(names, shares, strict=True):
            target = (
                f"{stage.target_shares[n]:.1%}" if stage.target_shares and n in stage.target_shares else "-"
            )
            log.info(f"  {n:<16} {share:>8.1%} | {corpus[n] / corpus_total:>8.1%} | {target:>6}")
    if len(history) >= 2:
        first, end = history[0], history[-1]
        log.info(f"Validation loss per source: step {first['step']} -> step {end['step']}")
        for k in end:
            if k != "step" and k in first:
                log.info(f"  {k:<16} {first[k]:.4f} -> {end[k]:.4f} ({end[k] - first[k]:+.4f})")
    state = "finished" if finished else f"stopped at step {step} of {total} (continue with --from_resume 1)"
    log.info(f"Run {state} in {_fmt_time(seconds)}")
    log.info(f"Weights: {paths.weights}")
    log.info(f"Resume state: {paths.resume}")
    log.info(f"Metrics log: {paths.metrics}")
    return {
        "finished": finished,
        "step": step,
        "total_steps": total,
        "token_share": dict(zip(names, shares, strict=True)),
        "seconds": seconds,
        "eval_history": history,
        "weights": str(paths.weights),
        "resume": str(paths.resume),
        "metrics": str(paths.metrics),
    }

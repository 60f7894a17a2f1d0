"""Where a run starts: the resume state of this run, a checkpoint to continue from, or a new model;
and, for a resumed run, the run's own settings (a resumed run is the same run).

:func:`load_start` picks, in this order: ``--from_resume 1`` with a resume file of this
``--save_weight``, else ``--from_weight``, else a new model from the architecture flags and
``--tokenizer_path``. A checkpoint carries its architecture and tokenizer, so a flag that
disagrees with it is an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dataset.tokenizer import load_tokenizer, tokenizer_sha256
from model.config import ModelConfig
from model.errors import UserError
from model.model import MiniGPTForCausalLM
from trainer import checkpoint as ckpt
from trainer import runtime, weights
from trainer.cli import setup_logging
from trainer.config import ARCH_FLAGS, DEFAULT_SEQ_LEN, TrainConfig, restore_run_args
from trainer.memory import GiB, check_fits
from trainer.paths import repo_path
from trainer.weights import find_checkpoint

log = logging.getLogger("trainer")


@dataclass
class Start:
    """Where a run starts: the model and tokenizer, and the checkpoint they came from."""

    model: MiniGPTForCausalLM
    tokenizer: Any
    resume: ckpt.TrainState | None = None  # the training state when continuing an interrupted run
    parent: dict | None = None  # meta of the --from_weight checkpoint (of the run being resumed)
    parent_path: Path | None = None
    trained_seq_len: int | None = None  # the training length of the checkpoint started from
    path: Path | None = None  # the file the model came from (resume or weights file)


def _check_flags(cfg: TrainConfig, model: MiniGPTForCausalLM, tok, where: Path) -> None:
    """Architecture and tokenizer come from the checkpoint; a flag that disagrees is an error."""
    for name in ARCH_FLAGS:
        flag = getattr(cfg, name)
        if flag is not None and flag != getattr(model.config, name):
            raise UserError(
                f"--{name} {flag} does not match {where} ({name}={getattr(model.config, name)}); "
                "the architecture comes from the checkpoint: drop the flag"
            )
    if cfg.tokenizer_path is not None and tokenizer_sha256(
        load_tokenizer(cfg.tokenizer_path)
    ) != tokenizer_sha256(tok):
        raise UserError(
            f"--tokenizer_path {cfg.tokenizer_path} is not the tokenizer {where} was trained with; "
            "drop the flag (the checkpoint carries its tokenizer)"
        )


def start_run(
    args: argparse.Namespace, given: set[str], require_weight: Callable[[str], str] | None = None
) -> tuple[TrainConfig, Start, argparse.Namespace]:
    """Where the run starts, and its settled configuration: ``(cfg, start, args)``.

    On resume, the run's own values are restored (:func:`trainer.config.restore_run_args`);
    ``max_seq_len`` is the flag, else the length the starting checkpoint was trained with, else
    DEFAULT_SEQ_LEN. Seeds torch's RNG with ``--seed`` first, so a new model's weights depend on
    the seed alone.
    """
    rank, world = runtime.env_rank_world()
    setup_logging(rank)
    if "decay_ratio" in given and args.lr_schedule != "wsd" and not args.from_resume:
        raise UserError(
            f"--decay_ratio sets the decay of --lr_schedule wsd; with --lr_schedule {args.lr_schedule} it "
            "would be ignored: drop it or add --lr_schedule wsd"
        )
    cfg = TrainConfig.from_args(args)
    torch.manual_seed(cfg.seed)
    start = load_start(cfg, require_weight)
    if start.resume is not None:
        if start.resume.args is None:
            log.info("This resume file predates restored run values: the flags given now define the run")
        else:
            args, notes = restore_run_args(args, given, start.resume.args, world, start.path)
            for line in notes:
                log.info(line)
            cfg = TrainConfig.from_args(args)
    positions = start.model.config.max_position_embeddings
    if cfg.max_seq_len is None:
        cfg = dataclasses.replace(
            cfg, max_seq_len=int(start.trained_seq_len or min(DEFAULT_SEQ_LEN, positions))
        )
        args.max_seq_len = cfg.max_seq_len
    assert cfg.max_seq_len is not None
    if cfg.max_seq_len > positions:
        raise UserError(
            f"--max_seq_len {cfg.max_seq_len} is longer than the model's {positions} positions "
            "(max_position_embeddings); use at most that"
        )
    _check_memory(cfg, start, world)
    if (start.parent or {}).get("source") == "transformers" and start.resume is None:
        m = start.model.config
        log.info(
            f"Starting from {m.architecture} {start.path} ({start.model.num_params() / 1e6:.1f}M parameters, "
            f"vocab {m.vocab_size}, {positions} positions), not a checkpoint of this project: "
            f"training rows of {cfg.max_seq_len} tokens"
        )
    return cfg, start, args


def _check_memory(cfg: TrainConfig, start: Start, world: int) -> None:
    """Refuse, before any data work, a run whose estimated memory exceeds the device's (trainer.memory)."""
    device = runtime.resolve_device(cfg.device)
    est = check_fits(
        start.model.config,
        device,
        processes_here=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        strategy=cfg.strategy,
        world_size=world,
        micro_batch=cfg.batch_size,
        seq_len=cfg.max_seq_len,
        checkpointing=cfg.activation_checkpointing,
        fused_attention=device.type == "cuda",
        loss=cfg.loss,
        dtype=runtime.resolve_dtype(cfg.dtype, device),
    )
    log.info(
        f"Memory estimate per process: {est.total / GiB:.2f} GiB (model state {est.state / GiB:.2f}, "
        f"activations {est.activations / GiB:.2f}, logits {est.logits / GiB:.2f})"
    )


def load_start(cfg: TrainConfig, require_weight: Callable[[str], str] | None = None) -> Start:
    """Resume state if asked for and present, else --from_weight, else a new model.

    ``require_weight``: for stages that never start from scratch (mid-training), turns "what
    is missing" into the error message, both when --from_weight is absent and when it names
    no checkpoint.
    """
    return (_resume_start(cfg) if cfg.from_resume else None) or _weight_start(cfg, require_weight)


def _resume_start(cfg: TrainConfig) -> Start | None:
    path = find_checkpoint(cfg.checkpoint_dir, cfg.save_weight, cfg.hidden_size, suffix="_resume")
    if path is None:
        log.info(f"No resume checkpoint for '{cfg.save_weight}' in {cfg.checkpoint_dir}: starting a new run")
        return None
    model, tok, meta, state = ckpt.load_resume(path)
    _check_flags(cfg, model, tok, path)
    log.info(f"Resuming from {path} at step {state.step}")
    parent = meta.get("parent")
    trained = meta.get("max_seq_len") or (parent or {}).get("max_seq_len")
    return Start(model, tok, resume=state, parent=parent, trained_seq_len=trained, path=path)


def _weight_start(cfg: TrainConfig, require_weight: Callable[[str], str] | None) -> Start:
    if cfg.from_weight:
        try:
            source = weights.resolve(cfg.from_weight, cfg.save_dir, cfg.hidden_size)
        except UserError as e:
            if require_weight is None:
                raise
            raise UserError(require_weight(str(e))) from None
        got = weights.load(source)
        _check_flags(cfg, got.model, got.tokenizer, got.path)
        meta = {**got.meta, "path": str(got.path)}
        return Start(
            got.model,
            got.tokenizer,
            parent=meta,
            parent_path=got.path,
            trained_seq_len=meta.get("max_seq_len"),
            path=got.path,
        )
    if require_weight is not None:
        raise UserError(require_weight(f"--from_weight is required; {ckpt.available(cfg.save_dir)}"))
    tok = load_tokenizer(cfg.tokenizer_path or repo_path("out", "tokenizer"))
    model_cfg = ModelConfig(
        vocab_size=len(tok),
        hidden_size=cfg.hidden_size or 512,
        num_hidden_layers=cfg.num_hidden_layers or 8,
        num_attention_heads=cfg.num_attention_heads or 8,
        num_key_value_heads=cfg.num_key_value_heads or 2,
        max_position_embeddings=max(4096, cfg.max_seq_len or DEFAULT_SEQ_LEN),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return Start(MiniGPTForCausalLM(model_cfg), tok)

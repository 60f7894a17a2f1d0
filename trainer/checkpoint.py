"""Checkpoints: the one owner of the files a run writes and every later script reads.

Two files per run, named by :func:`checkpoint_paths`:
  {save_dir}/{save_weight}_{hidden_size}.pth               weights + model config + tokenizer + run meta
  {checkpoint_dir}/{save_weight}_{hidden_size}_resume.pth  all of that + the training state (:class:`TrainState`)

Both load with ``torch.load(path, weights_only=True)``: only tensors, numbers, strings, lists
and dicts are stored. A checkpoint carries its model config and its tokenizer (the full
tokenizer.json text, a few hundred KB), so later scripts rebuild both from the file alone.
Both are written atomically (:func:`dataset.io.atomic_write`).

Everything that reads or writes these files goes through this module: :func:`save_run`,
:func:`load_model`, :func:`load_resume`, :func:`carried_optimizer_state`, :func:`is_finished`,
the run identity (:func:`identity_sha256`, :func:`check_resume_identity`) and the RNG state.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from dataset.io import atomic_write
from dataset.tokenizer import tokenizer_from_dict, tokenizer_to_dict
from model.config import ModelConfig
from model.errors import UserError
from model.model import MiniGPTForCausalLM

FORMAT = "minigpt/v1"
"""The tag every checkpoint carries; a file without it is refused (:func:`load_checkpoint`).

Still ``v1``: this round only added keys, so every v1 file reads as before. Weights files of
earlier rounds load everywhere: the keys added since are optional when read (an imported model's
``source_files``, the folder's own files the export writes back, are absent there, and the export
then writes what transformers generates). A *resume* file also carries the run identity, which
gained ``packing`` and ``attention`` this round: an older resume file is refused by
:func:`check_resume_identity` in one line naming them (``packing: checkpoint None vs now 'bfd'``),
since its rows had another layout. The data formats have their own versions, each refused in one
place: the token store (``dataset.store.FORMAT_VERSION``: an older cache is rebuilt) and the
prepared manifest (``dataset.manifest.MANIFEST_VERSION``: ``dataset.mixture.find_prepared``
refuses an older one).
"""


class RunPaths(NamedTuple):
    weights: Path  # {save_dir}/{save_weight}_{hidden_size}.pth
    resume: Path  # {checkpoint_dir}/{save_weight}_{hidden_size}_resume.pth
    metrics: Path  # {save_dir}/{save_weight}_{hidden_size}_metrics.jsonl: train/eval records per step


def checkpoint_paths(
    save_dir: str | Path, checkpoint_dir: str | Path, save_weight: str, hidden_size: int
) -> RunPaths:
    """The one place that knows how a run's files are named."""
    stem = f"{save_weight}_{hidden_size}"
    save_dir = Path(save_dir)
    return RunPaths(
        save_dir / f"{stem}.pth",
        Path(checkpoint_dir) / f"{stem}_resume.pth",
        save_dir / f"{stem}_metrics.jsonl",
    )


# --------------------------------------------------------------------------- writing


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save through :func:`dataset.io.atomic_write`: the old file or the new one, never a
    truncated mix, whenever the process dies."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def weights_state(
    model: MiniGPTForCausalLM | dict, tokenizer, meta: dict, config: ModelConfig | None = None
) -> dict:
    """The weights-file content: the model's weights (a module, or its full state dict with
    ``config``), its config, its tokenizer and run facts (``meta``)."""
    if isinstance(model, dict):
        if config is None:
            raise ValueError("weights_state: a state dict needs its config")
        state = model
    else:
        state, config = model.state_dict(), config if config is not None else model.config
    return {
        "format": FORMAT,
        "model": state,
        "model_config": config.to_dict(),
        "tokenizer": tokenizer if isinstance(tokenizer, dict) else tokenizer_to_dict(tokenizer),
        "meta": meta,
    }


@dataclass
class TrainState:
    """What a resume file holds beyond the weights file: enough to continue bit-identically."""

    optimizer: dict | None  # AdamW state_dict; None when sharded (see sharded_optimizer)
    scaler: dict  # GradScaler state_dict (fp16)
    rng: dict  # {"torch": cpu RNG state, "cuda": ...}
    step: int  # optimizer steps taken
    total_steps: int  # the run length the LR schedule spans
    world_size: int
    identity: dict  # what makes a resume belong to this run (see check_resume_identity)
    eval_history: list  # [{"step", "all", <source>...}] validation losses so far
    source_tokens_seen: torch.Tensor  # float64 (num sources,): targets trained on per source
    wandb_id: str | None = None
    args: dict | None = None  # the run's effective flag values (restored on resume); None: older file
    schedule_changes: list | None = None  # [{"at", "from", "to"}]: run-length changes on resume
    strategy: str = "ddp"  # "fsdp": the AdamW state is sharded in sharded_optimizer
    sharded_optimizer: str | None = None  # a torch.distributed.checkpoint folder beside the file

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> TrainState:
        values: dict[str, Any] = {f.name: ckpt.get(f.name) for f in dataclasses.fields(cls)}
        return cls(**values)

    def to_dict(self) -> dict:
        # not dataclasses.asdict: it deep-copies, and the optimizer state is 2x the model
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def sharded_folder(paths: RunPaths, step: int) -> Path:
    """Where an FSDP run's sharded AdamW state of ``step`` goes: beside the resume file, one
    folder per saved step, so the resume file always names a complete folder."""
    return paths.resume.with_name(f"{paths.resume.stem}.optim") / f"step{step:08d}"


def prune_sharded(paths: RunPaths, keep: Path | None) -> None:
    """Remove the sharded states other than ``keep`` (after the resume file names ``keep``)."""
    import shutil

    root = paths.resume.with_name(f"{paths.resume.stem}.optim")
    for old in root.glob("step*") if root.is_dir() else ():
        if keep is None or old.resolve() != keep.resolve():
            shutil.rmtree(old, ignore_errors=True)


def save_run(
    paths: RunPaths, model: MiniGPTForCausalLM | dict, tokenizer, meta: dict, state: TrainState, config=None
) -> None:
    """Write a run's weights file and its resume file (call on the main rank only)."""
    weights = weights_state(model, tokenizer, meta, config)
    atomic_torch_save(weights, paths.weights)
    atomic_torch_save({**weights, **state.to_dict()}, paths.resume)


# --------------------------------------------------------------------------- reading


def load_checkpoint(path: str | Path) -> dict:
    """Load and sanity-check a miniGPT checkpoint; a foreign or corrupt file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, pickle with code, not a torch file, ...
        raise UserError(
            f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(
            f"{path}: not a miniGPT checkpoint (no '{FORMAT}' format tag); was it written by another project?"
        )
    for key in ("model", "model_config", "tokenizer", "meta"):
        if key not in ckpt:
            raise UserError(f"{path}: checkpoint is missing '{key}'")
    return ckpt


def model_from_checkpoint(ckpt: dict, path: str | Path = "checkpoint") -> MiniGPTForCausalLM:
    """Rebuild the model (fp32, on CPU) from a loaded checkpoint; a mismatch is a UserError."""
    cfg = ModelConfig.from_dict(ckpt["model_config"])
    model = MiniGPTForCausalLM(cfg)
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise UserError(
            f"{path}: weights do not match the model config stored with them ({first[:200]})"
        ) from None
    return model


def load_model(path: str | Path) -> tuple[MiniGPTForCausalLM, Any, dict]:
    """(model, tokenizer, checkpoint dict) from a weights or resume file."""
    ckpt = load_checkpoint(path)
    return model_from_checkpoint(ckpt, path), tokenizer_from_dict(ckpt["tokenizer"]), ckpt


def load_resume(path: str | Path) -> tuple[MiniGPTForCausalLM, Any, dict, TrainState]:
    """(model, tokenizer, weights meta, training state) from a resume file."""
    model, tok, ckpt = load_model(path)
    if "optimizer" not in ckpt:
        raise UserError(f"{path}: a weights file, not a resume checkpoint")
    state = TrainState.from_checkpoint(ckpt)
    state.strategy = state.strategy or "ddp"
    return model, tok, ckpt["meta"], state


def carried_optimizer_state(parent: dict, save_dir: str | Path, checkpoint_dir: str | Path, hidden_size: int):
    """``(optimizer state, path)``: the AdamW state the run that wrote ``parent`` (a weights meta)
    ended with, from its resume file; a missing or mismatched file is a UserError."""
    if "save_weight" not in parent:
        raise UserError("--optimizer_state pretrain: the --from_weight checkpoint does not name its run")
    path = checkpoint_paths(save_dir, checkpoint_dir, parent["save_weight"], hidden_size).resume
    if not path.is_file():
        raise UserError(
            f"--optimizer_state pretrain: {path} not found (the pretrain run's resume state); {available(path.parent, '_resume')}"
        )
    ckpt = load_checkpoint(path)
    if ckpt["meta"].get("identity_sha256") != parent.get("identity_sha256") or ckpt.get("step") != parent.get(
        "step"
    ):
        raise UserError(
            f"--optimizer_state pretrain: {path} is not the state that {parent.get('path')} was saved with"
        )
    return ckpt["optimizer"], path, ckpt["step"]


def is_finished(path: str | Path, data_config_sha256: str | None = None) -> bool:
    """Whether ``path`` is a weights file of a finished run (and, if given, one trained on the
    mixture config with that sha256). Anything unreadable counts as not finished."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        meta = load_checkpoint(path)["meta"]
    except UserError:  # a file from an older layout: redo the run
        return False
    same_data = data_config_sha256 is None or meta.get("data_config_sha256") == data_config_sha256
    return bool(meta.get("finished")) and same_data


# --------------------------------------------------------------------------- run identity, RNG


def identity_sha256(identity: dict) -> str:
    """A stable hash of a run's identity (stored in the weights meta; links a child run to it)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def check_resume_identity(saved: dict, now: dict, path: str | Path) -> None:
    """A resume file belongs to this run only if every identity field agrees; else a UserError."""
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff:
        details = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {now.get(k)!r}" for k in diff[:3])
        raise UserError(
            f"{path} belongs to another run ({details}); resume with the same settings, "
            "or drop --from_resume / use another --save_weight to start a new run"
        )


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# --------------------------------------------------------------------------- finding a checkpoint


def available(save_dir: str | Path, suffix: str = "") -> str:
    files = sorted(f.name for f in Path(save_dir).glob(f"*{suffix}.pth")) if Path(save_dir).is_dir() else []
    return f"available in {save_dir}: {', '.join(files)}" if files else f"{save_dir} holds no checkpoints"

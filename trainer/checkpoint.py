"""Checkpoints: naming (one function), atomic writes, and self-describing contents.

Two files per run, named by ``checkpoint_paths``:
  {save_dir}/{save_weight}_{hidden_size}.pth               weights + model config + tokenizer + run meta
  {checkpoint_dir}/{save_weight}_{hidden_size}_resume.pth  all of that + optimizer, step, RNG, data position

Both load with ``torch.load(path, weights_only=True)``: only tensors, numbers, strings, lists
and dicts are stored. A checkpoint carries its model config and its tokenizer (the full
tokenizer.json text, a few hundred KB), so later scripts rebuild both from the file alone.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple

import torch

from dataset.tokenizer import tokenizer_from_dict, tokenizer_to_dict
from model.config import ModelConfig
from model.errors import UserError
from model.model import MiniGPTForCausalLM
from trainer.paths import atomic_write

FORMAT = "minigpt/v1"


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


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save through :func:`trainer.paths.atomic_write`: the old file or the new one, never a
    truncated mix, whenever the process dies."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def weights_state(model: MiniGPTForCausalLM, tokenizer, meta: dict) -> dict:
    """The weights-file content: model, its config, its tokenizer and run facts (``meta``)."""
    return {
        "format": FORMAT,
        "model": model.state_dict(),
        "model_config": model.config.to_dict(),
        "tokenizer": tokenizer_to_dict(tokenizer),
        "meta": meta,
    }


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


_STEM = re.compile(r"^(?P<prefix>.+)_(?P<hidden>\d+)$")


def resolve_weight(name: str, save_dir: str | Path, hidden_size: int | None = None, suffix: str = "") -> Path:
    """Turn a --from_weight / --weight value into a file.

    ``name`` is a path to a .pth, a stem like ``pretrain_512``, or a prefix like ``pretrain``:
    ``{save_dir}/{prefix}_{hidden_size}{suffix}.pth``, or, with hidden_size unknown, the only
    ``{prefix}_*{suffix}.pth`` there. Raises UserError listing what exists otherwise.
    """
    save_dir = Path(save_dir)
    p = Path(name)
    if p.suffix == ".pth":
        if p.is_file():
            return p
        raise UserError(f"{p}: checkpoint not found")
    if hidden_size is not None:
        cand = save_dir / f"{name}_{hidden_size}{suffix}.pth"
        if cand.is_file():
            return cand
    exact = save_dir / f"{name}{suffix}.pth"
    if _STEM.match(name) and exact.is_file():
        return exact
    if hidden_size is None:
        matches = sorted(
            f
            for f in save_dir.glob(f"{name}_*{suffix}.pth")
            if (m := _STEM.match(f.name[: -len(f"{suffix}.pth")])) and m["prefix"] == name
        )
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UserError(
                f"several checkpoints match '{name}' in {save_dir}: {', '.join(f.name for f in matches)}; "
                "pass --hidden_size or the file path"
            )
    looked = save_dir / (f"{name}_{hidden_size}{suffix}.pth" if hidden_size else f"{name}_*{suffix}.pth")
    raise UserError(f"no checkpoint '{name}' (looked for {looked}); {available(save_dir, suffix)}")


def available(save_dir: str | Path, suffix: str = "") -> str:
    files = sorted(f.name for f in Path(save_dir).glob(f"*{suffix}.pth")) if Path(save_dir).is_dir() else []
    return f"available in {save_dir}: {', '.join(files)}" if files else f"{save_dir} holds no checkpoints"

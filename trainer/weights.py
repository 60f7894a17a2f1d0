"""What ``--from_weight`` (trainers) and ``--weight`` (eval_llm.py, scripts/export_hf.py) name, and
loading it: a miniGPT checkpoint, a local transformers folder, or a Hugging Face Hub id.

Resolution order for a value V (the same in every script):

1. V is an existing file: a miniGPT checkpoint (``.pth``).
2. V is an existing folder with a config.json: a transformers model folder (config.json +
   safetensors + tokenizer).
3. V names a checkpoint: a stem (``pretrain_512``) or a prefix (``pretrain``, the only
   ``pretrain_<hidden>.pth``, or ``pretrain_<--hidden_size>.pth``) in the folder V names
   (``out/runs/pretrain``: out/runs/; ``/abs/dir/pre``: /abs/dir/) or, for a bare name, in
   ``--save_dir``.
4. V looks like a Hub id, ``org/name`` or ``org/name@revision``, and no local folder ``org``
   exists: downloaded with huggingface_hub into the usual Hugging Face cache (unless the
   script's --no_hub / offline setting forbids it).

Anything else is a UserError naming what was looked for and what exists.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataset.tokenizer import encode_texts, load_tokenizer
from model.errors import UserError
from model.hf import PARITY_TEXT, load_hf_folder, parity, source_files
from trainer.checkpoint import available, load_model
from trainer.config import DEFAULT_SEQ_LEN

log = logging.getLogger(__name__)

_STEM = re.compile(r"^(?P<prefix>.+)_(?P<hidden>\d+)$")
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]


@dataclass(frozen=True)
class Source:
    """A resolved --from_weight / --weight value."""

    kind: str  # "checkpoint" (a miniGPT .pth), "hf" (a transformers folder), "hub" (a Hub id)
    path: Path | None = None  # the .pth file or the folder
    repo_id: str | None = None  # kind "hub"
    revision: str | None = None  # kind "hub": a branch, tag or commit (None: main)

    @property
    def label(self) -> str:
        if self.kind == "hub":
            return f"{self.repo_id}" + (f"@{self.revision}" if self.revision else "")
        return str(self.path)


def resolve(
    value: str,
    save_dir: str | Path,
    hidden_size: int | None = None,
    flag: str = "--from_weight",
    hub: bool = True,
) -> Source:
    """Turn a --from_weight / --weight value into a :class:`Source` (order: module docstring).
    ``hub`` False: a value that could only be a Hub id is a UserError, never a download."""
    p = Path(value).expanduser()
    if p.is_file():
        if p.suffix != ".pth":
            raise UserError(f"{flag} {value}: a file that is not a miniGPT checkpoint (.pth)")
        return Source("checkpoint", p.resolve())
    if p.is_dir() and (p / "config.json").is_file():
        return Source("hf", p.resolve())
    if p.suffix == ".pth":
        raise UserError(f"{flag} {value}: checkpoint not found")
    folder = p.parent if (p.is_absolute() or len(p.parts) > 1) else Path(save_dir)
    found = find_checkpoint(folder, p.name, hidden_size)
    if found is not None:
        return Source("checkpoint", found.resolve())
    if p.is_dir():
        raise UserError(
            f"{flag} {value}: a folder without config.json (not a transformers model folder) and no "
            f"checkpoint of that name in {folder}; give a .pth file, a checkpoint name or a model folder"
        )
    match = _HUB_ID.match(value)
    if match and not p.parent.is_dir():
        if not hub:
            raise UserError(
                f"{flag} {value}: no local folder or checkpoint of that name, and the Hub is off "
                "(--no_hub); give a local folder or checkpoint"
            )
        return Source("hub", repo_id=match["repo"], revision=match["revision"])
    looked = folder / (f"{p.name}_{hidden_size}.pth" if hidden_size else f"{p.name}_*.pth")
    raise UserError(f"{flag} {value}: no checkpoint (looked for {looked}); {available(folder)}")


def find_checkpoint(folder: str | Path, name: str, hidden_size: int | None, suffix: str = "") -> Path | None:
    """``{name}_{hidden}{suffix}.pth``, ``{name}{suffix}.pth`` for a stem, or the only
    ``{name}_*{suffix}.pth`` in ``folder``; None when there is none (UserError when several)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    if hidden_size is not None and (folder / f"{name}_{hidden_size}{suffix}.pth").is_file():
        return folder / f"{name}_{hidden_size}{suffix}.pth"
    if _STEM.match(name) and (folder / f"{name}{suffix}.pth").is_file():
        return folder / f"{name}{suffix}.pth"
    if hidden_size is not None:
        return None
    end = f"{suffix}.pth"
    matches = sorted(
        f
        for f in folder.iterdir()
        if f.name.endswith(end) and (m := _STEM.match(f.name[: -len(end)])) and m["prefix"] == name
    )
    if len(matches) > 1:
        raise UserError(
            f"several checkpoints match '{name}' in {folder}: {', '.join(f.name for f in matches)}; "
            "pass --hidden_size or the file path"
        )
    return matches[0] if matches else None


def hub_folder(source: Source, flag: str = "--from_weight") -> Path:
    """The local folder of a Hub model: downloaded (config, safetensors, tokenizer files) into the
    Hugging Face cache, or found there. Unreachable Hub: one line saying how to go local."""
    from huggingface_hub import snapshot_download

    assert source.repo_id is not None  # resolve() sets it for every "hub" source
    try:
        return Path(snapshot_download(source.repo_id, revision=source.revision, allow_patterns=HUB_PATTERNS))
    except Exception as e:  # noqa: BLE001 - no network, unknown repo, gated model, ...
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{flag} {source.label}: no local folder or checkpoint of that name, and cannot get it from the "
            f"Hugging Face Hub ({type(e).__name__}: {first}); on a machine with access run "
            f"`huggingface-cli download {source.repo_id} --local-dir DIR` and pass that folder: {flag} DIR"
        ) from None


def imported_source(meta: dict | None) -> dict | None:
    """The meta of the transformers model a checkpoint descends from (its own meta for a model just
    loaded from a folder, else the nearest ``parent`` with ``source: transformers``); None for a
    model this project pretrained."""
    while meta:
        if meta.get("source") == "transformers":
            return meta
        meta = meta.get("parent")
    return None


def trained_context(meta: dict, max_positions: int) -> int:
    """The context a checkpoint is scored with, which scripts/export_hf.py writes as the export's
    ``max_position_embeddings`` (where lm-evaluation-harness reads it):

    - a model this project pretrained: the sequence length it was trained with (its meta
      ``max_seq_len``, else the trainers' default), at most its positions;
    - a model imported from transformers, and everything mid-trained from it: the source's
      ``max_position_embeddings`` (the context it was pretrained for; mid-training on shorter rows
      does not shrink it), so the original and the mid-trained model are scored alike.
    """
    if imported_source(meta) is not None:
        return max_positions
    return min(int(meta.get("max_seq_len") or DEFAULT_SEQ_LEN), max_positions)


@dataclass
class Loaded:
    """A model and its tokenizer, from any :class:`Source`."""

    model: Any  # MiniGPTForCausalLM, fp32 on the CPU
    tokenizer: Any
    meta: dict  # a checkpoint's run facts; for a transformers model its origin and parity figures
    path: Path  # the .pth file or the model folder


def load(source: Source, flag: str = "--from_weight") -> Loaded:
    """Load a resolved source. A transformers folder (or Hub model) becomes our model with the
    folder's own tokenizer, and is proven at once: its logits must equal transformers' own
    forward on a fixed prompt (fp32) within B = 1e-4 x max(1, max |logit|), logged as
    ``parity vs transformers: ...``; above B it is a UserError, so a mis-converted model is never
    trained or scored. Its meta (``source: transformers``, found again by :func:`imported_source`
    in every descendant checkpoint) carries the folder's description files
    (:func:`model.hf.source_files`) for the export."""
    folder = hub_folder(source, flag) if source.kind == "hub" else source.path
    assert folder is not None  # resolve() sets the path of every local source
    if source.kind == "checkpoint":
        model, tok, ckpt = load_model(folder)
        return Loaded(model, tok, {**ckpt["meta"], "path": str(folder)}, folder)
    model = load_hf_folder(folder)
    tok = load_tokenizer(folder)
    if len(tok) > model.config.vocab_size:
        raise UserError(
            f"{folder}: the tokenizer has {len(tok)} ids but the model's embedding only {model.config.vocab_size} rows"
        )
    import transformers

    start = [tok.bos_token_id] if tok.bos_token_id is not None else []
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar for the reference model
    try:
        proof = parity(model, folder, start + encode_texts(tok, [PARITY_TEXT])[0])
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    log.info(proof.line)
    proof.check()
    meta = {
        "stage": "imported",
        "source": "transformers",
        "path": str(folder),
        "repo_id": source.repo_id,
        "revision": source.revision,
        "architecture": model.config.architecture,
        "parity_max_abs_diff": proof.max_abs_diff,
        "parity_bound": proof.bound,
        # config.json, generation_config.json, the tokenizer's own files: every descendant checkpoint
        # keeps this meta under "parent", and scripts/export_hf.py writes them back
        "source_files": source_files(folder),
    }
    return Loaded(model, tok, meta, folder)

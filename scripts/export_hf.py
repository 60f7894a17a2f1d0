"""Export a checkpoint as a transformers Llama folder (safetensors + config + tokenizer, no remote code).

    python scripts/export_hf.py --weight midtrain_512 --output_dir out/hf/midtrain_512

Then, anywhere with transformers installed:

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("out/hf/midtrain_512")
    tok = AutoTokenizer.from_pretrained("out/hf/midtrain_512")   # adds <|bos|> like training did

The weights map 1:1 onto LlamaForCausalLM (model/hf.py), so the logits equal ours. config.json's
max_position_embeddings is the context the model was trained with, so lm-evaluation-harness and
other tools truncate prompts where eval_llm.py does. The folder
is written to a temporary sibling and renamed into place; an existing export is replaced, any
other non-empty folder is left alone.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from dataset.io import atomic_dir
from model.errors import UserError
from model.hf import EXPORT_META, to_hf
from trainer import runtime
from trainer.checkpoint import load_model, resolve_weight
from trainer.cli import add_save_dir_flag, run, setup_logging
from trainer.evaluation.models import trained_context
from trainer.paths import repo_path

log = logging.getLogger("export_hf")


def add_bos(tok) -> None:
    """Make the tokenizer prepend BOS when special tokens are added (``tok(text)``), as Llama's does:
    our model was trained on ``BOS doc EOS``."""
    from tokenizers import processors

    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.bos_token_id)]
    )
    if hasattr(type(tok), "add_bos_token"):  # transformers >= 5 records it in tokenizer_config.json
        tok.add_bos_token = True


def check_output_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out} is a file")
    if out.is_dir() and any(out.iterdir()) and not (out / EXPORT_META).is_file():
        raise UserError(
            f"--output_dir {out} is not empty and holds no earlier export ({EXPORT_META}); choose another folder"
        )


def export(weight_path: Path, out: Path, dtype: torch.dtype) -> dict:
    """Write ``out``; returns the facts written to minigpt.json beside the transformers files.

    config.json's ``max_position_embeddings`` and the tokenizer's ``model_max_length`` are the
    context the model was trained with (trainer.evaluation.models.trained_context), not the size
    of its RoPE table: lm-evaluation-harness and other tools take their context from there
    (``n_positions`` / ``max_position_embeddings`` / ``n_ctx``, then ``model_max_length``), so their
    defaults truncate prompts where eval_llm does. RoPE itself does not read it (default and
    llama3 rope; the model's own value stays in minigpt.json's ``model_config``).
    """
    model, tok, ckpt = load_model(weight_path)
    meta = ckpt["meta"]
    context = trained_context(meta, model.config.max_position_embeddings)
    hf = to_hf(model).to(dtype)
    hf.config.max_position_embeddings = context
    if tok.bos_token is not None:
        add_bos(tok)
    tok.model_max_length = context
    hf.generation_config.bos_token_id = tok.bos_token_id
    hf.generation_config.eos_token_id = tok.eos_token_id
    hf.generation_config.pad_token_id = tok.pad_token_id
    info = {
        "source_checkpoint": str(weight_path.resolve()),
        "stage": meta.get("stage"),
        "step": meta.get("step"),
        "tokens_seen": meta.get("tokens_seen"),
        # the context eval_llm.py scores the checkpoint with (also config.json's max_position_embeddings)
        "context_length": context,
        "model_config": model.config.to_dict(),
        "dtype": str(dtype).removeprefix("torch."),
    }
    with atomic_dir(out) as tmp:
        hf.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / EXPORT_META).write_text(json.dumps(info, indent=1) + "\n")
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--weight", required=True, help="a prefix (midtrain), a stem (midtrain_512) or a .pth path"
    )
    add_save_dir_flag(p, help="where --weight names are looked up (default: out/)")
    p.add_argument(
        "--hidden_size", type=int, default=None, help="pick NAME_<hidden_size>.pth when several sizes exist"
    )
    p.add_argument("--output_dir", default=None, help="default: out/hf/<weight stem>")
    p.add_argument(
        "--dtype", default="float32", help="stored weight dtype: float32 (default) | bfloat16 | float16"
    )
    args = p.parse_args()
    setup_logging()
    path = resolve_weight(args.weight, args.save_dir, args.hidden_size)
    out = Path(args.output_dir) if args.output_dir else repo_path("out", "hf", path.stem)
    check_output_dir(out)
    info = export(path, out, runtime.resolve_dtype(args.dtype, torch.device("cpu")))
    log.info(f"Exported {path} ({info['stage']}, step {info['step']}) to {out}")
    log.info(
        f'Load it with AutoModelForCausalLM.from_pretrained("{out}") and AutoTokenizer.from_pretrained("{out}")'
    )


if __name__ == "__main__":
    run(main)

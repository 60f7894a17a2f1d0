"""Export a checkpoint as a transformers folder of its own architecture (safetensors + config +
tokenizer, no remote code).

    python scripts/export_hf.py --weight midtrain_512 --output_dir out/hf/midtrain_512

Then, anywhere with transformers installed:

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("out/hf/midtrain_512")
    tok = AutoTokenizer.from_pretrained("out/hf/midtrain_512")

Our own models are written as LlamaForCausalLM, whose tokenizer then adds <|bos|> like training
did; a model mid-trained from a transformers folder is written as the class and config it came
with (a Qwen3 in, a Qwen3 out: biases, head_dim, q/k norm, RoPE scaling, tie flag), with the
source folder's own files written back as they were (config.json, generation_config.json with its
stop ids and sampling settings, the tokenizer's files and chat template: only the weights and the
keys the export sets differ, listed in one log line). The weights map 1:1 (model/hf.py), so the
logits equal ours. config.json's max_position_embeddings is the context eval_llm.py scores the
model with (trainer.weights.trained_context), so lm-evaluation-harness and other tools
truncate prompts where eval_llm.py does. --weight takes what the trainers' --from_weight takes
(trainer/weights.py). The folder is written to a temporary sibling and renamed into place; an
existing export is replaced, any other non-empty folder is left alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import torch

from dataset.io import atomic_dir
from dataset.tokenizer import add_bos_by_default, is_own, pad_id
from model.config import ModelConfig
from model.errors import UserError
from model.hf import EXPORT_META, read_hf_config, to_hf
from trainer import runtime, weights
from trainer.cli import add_save_dir_flag, run, setup_logging
from trainer.paths import repo_path

log = logging.getLogger("export_hf")


def check_output_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out} is a file")
    if out.is_dir() and any(out.iterdir()) and not (out / EXPORT_META).is_file():
        raise UserError(
            f"--output_dir {out} is not empty and holds no earlier export ({EXPORT_META}); choose another folder"
        )


def write_back(
    tmp: Path, files: dict[str, str], tok, expected: ModelConfig, dtype: torch.dtype, where: str
) -> list[str]:
    """Write an imported model's own files (:func:`model.hf.source_files`) into the export folder
    ``tmp`` beside the weights ``save_pretrained`` wrote there, each as the source had it, except
    what the export sets in config.json: ``max_position_embeddings`` (``expected``'s: the scoring
    context, the source's own for an imported model) and ``dtype`` (``torch_dtype`` in the older
    layout: the stored weights' dtype). tokenizer.json is the checkpoint's tokenizer (the source's,
    which training does not change). A source without generation_config.json gets none, so
    transformers derives one from config.json as it does for the source.

    Returns the changed keys as ``"key old -> new"``. Raises UserError when the written
    config.json does not describe ``expected`` (the carried files belong to another model).
    """
    config = json.loads(files["config.json"])
    dtype_key = "torch_dtype" if "torch_dtype" in config and "dtype" not in config else "dtype"
    sets = {
        "max_position_embeddings": expected.max_position_embeddings,
        dtype_key: runtime.dtype_name(dtype),
    }
    changed = [f"{k} {config.get(k)} -> {v}" for k, v in sets.items() if config.get(k) != v]
    (tmp / "generation_config.json").unlink(missing_ok=True)
    for name, text in files.items():
        if name == "config.json" and changed:
            text = json.dumps({**config, **sets}, indent=2) + "\n"
        (tmp / name).write_text(text, encoding="utf-8")
    tok.backend_tokenizer.save(str(tmp / "tokenizer.json"))
    got = read_hf_config(tmp)
    if got != expected:
        wrong = [k for k, v in got.to_dict().items() if expected.to_dict().get(k) != v]
        raise UserError(
            f"{where}: the config.json carried from its source does not describe the checkpoint's model "
            f"({', '.join(wrong)} differ); export it from the checkpoint of one run"
        )
    return changed


def export(source: weights.Source, out: Path, dtype: torch.dtype) -> dict:
    """Write ``out``; returns the facts written to minigpt.json beside the transformers files.

    config.json's ``max_position_embeddings`` and the tokenizer's ``model_max_length`` are the
    context eval_llm.py scores the model with (trainer.weights.trained_context: the
    trained sequence length for our models, the source's own value for imported ones), not the
    size of our RoPE table: lm-evaluation-harness and other tools take their context from there
    (``n_positions`` / ``max_position_embeddings`` / ``n_ctx``, then ``model_max_length``), so their
    defaults truncate prompts where eval_llm does. RoPE itself does not read it (default and
    llama3 rope; the model's own value stays in minigpt.json's ``model_config``).

    A model imported from transformers (or trained from one: trainer.weights.imported_source) gets
    the files of its source folder back (:func:`write_back`): config.json, generation_config.json
    (stop ids, sampling settings) and the tokenizer's files as they were, only the weights and the
    keys the export sets differ; one info line lists those keys, or says "unchanged".
    """
    got = weights.load(source, flag="--weight")
    model, tok, meta = got.model, got.tokenizer, got.meta
    context = weights.trained_context(meta, model.config.max_position_embeddings)
    hf = to_hf(model).to(dtype)
    hf.config.max_position_embeddings = context
    if is_own(tok):  # an imported model's tokenizer is written as it came
        add_bos_by_default(tok)
        tok.model_max_length = context
    hf.generation_config.bos_token_id = tok.bos_token_id
    hf.generation_config.eos_token_id = tok.eos_token_id
    hf.generation_config.pad_token_id = pad_id(tok)
    imported = weights.imported_source(meta)
    files, origin = (imported or {}).get("source_files") or {}, (imported or {}).get("path")
    files = files if "config.json" in files else {}
    info = {
        "source_checkpoint": str(got.path.resolve()),
        "stage": meta.get("stage"),
        "step": meta.get("step"),
        "tokens_seen": meta.get("tokens_seen"),
        # the context eval_llm.py scores the checkpoint with (also config.json's max_position_embeddings)
        "context_length": context,
        "model_config": model.config.to_dict(),
        "dtype": runtime.dtype_name(dtype),
    }
    with atomic_dir(out) as tmp:
        hf.save_pretrained(tmp, safe_serialization=True)
        if files:
            expected = dataclasses.replace(model.config, max_position_embeddings=context)
            changed = write_back(tmp, files, tok, expected, dtype, str(got.path))
            info.update(imported_from=origin, changed_from_source=changed)
        else:
            tok.save_pretrained(tmp)
        (tmp / EXPORT_META).write_text(json.dumps(info, indent=1) + "\n")
    if files:
        what = f"as they were except config.json {', '.join(changed)}" if changed else "unchanged"
        log.info(f"files of {origin} written back ({', '.join(sorted(files))}): {what}")
    elif imported is not None:
        log.info(
            f"{got.path}: imported from transformers before checkpoints carried the source's files: "
            "config.json rebuilt from the model config, generation_config.json from the tokenizer"
        )
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--weight",
        required=True,
        help="what --from_weight takes: a prefix (midtrain), a stem (midtrain_512), a .pth path, "
        "a transformers folder or a Hub id org/name[@revision] (order: trainer/weights.py)",
    )
    add_save_dir_flag(p, help="where --weight names are looked up (default: out/)")
    p.add_argument(
        "--hidden_size", type=int, default=None, help="pick NAME_<hidden_size>.pth when several sizes exist"
    )
    p.add_argument(
        "--output_dir", default=None, help="default: out/hf/<checkpoint stem, or the folder / Hub repo name>"
    )
    p.add_argument(
        "--dtype",
        default="float32",
        help="stored weight dtype: float32 (default) | bfloat16 (half the size; what most Hub models ship) | float16",
    )
    args = p.parse_args()
    setup_logging()
    source = weights.resolve(args.weight, args.save_dir, args.hidden_size, flag="--weight")
    name = Path(source.label).stem if source.kind == "checkpoint" else Path(source.label.split("@")[0]).name
    out = Path(args.output_dir) if args.output_dir else repo_path("out", "hf", name)
    check_output_dir(out)
    info = export(source, out, runtime.resolve_dtype(args.dtype, torch.device("cpu"), auto=False))
    what = f"{info['stage']}, step {info['step']}" if info["step"] is not None else info["stage"]
    log.info(f"Exported {source.label} ({what}) to {out}")
    log.info(
        f'Load it with AutoModelForCausalLM.from_pretrained("{out}") and AutoTokenizer.from_pretrained("{out}")'
    )


if __name__ == "__main__":
    run(main)

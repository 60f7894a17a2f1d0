"""What the evaluation tests share (imported by them; not a test module): small models saved as
checkpoints trained at a chosen context and their exports, and the optional lm-evaluation-harness."""

from __future__ import annotations

from pathlib import Path

import torch

from model import MiniGPTForCausalLM, ModelConfig
from tests.helpers import load_script
from trainer.checkpoint import atomic_torch_save, weights_state
from trainer.weights import Source


def tiny_config(vocab: int) -> ModelConfig:
    return ModelConfig(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.1,  # peaky logits, so wrong positions or tokens would show
    )


def export_checkpoint(tmp: Path, tok, cfg: ModelConfig, context: int, seed: int = 0) -> tuple[Path, Path]:
    """(a random model saved as a checkpoint trained at ``context`` tokens, its export folder)."""
    torch.manual_seed(seed)
    model = MiniGPTForCausalLM(cfg).eval()
    path = tmp / f"m_{cfg.hidden_size}.pth"
    atomic_torch_save(weights_state(model, tok, {"stage": "test", "max_seq_len": context, "step": 0}), path)
    export = load_script("scripts/export_hf.py", "export_hf")
    export.export(Source("checkpoint", path), tmp / "hf", torch.float32)
    return path, tmp / "hf"


def jsonl(path) -> list[dict]:
    """The rows of a JSON-lines file (gzipped when its name ends in .gz), read plainly."""
    import gzip
    import json

    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def lm_eval_or_skip():
    """lm_eval (the ``eval`` extra, in ``dev``): under CI=true its absence fails the test, elsewhere
    it skips (as tests.helpers.shared_file does for missing data)."""
    import os

    import pytest

    try:
        import lm_eval
    except ImportError:
        msg = 'lm-evaluation-harness is not installed (pip install -e ".[dev]")'
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return lm_eval

"""The model's typed configuration. It travels inside every checkpoint."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from model.errors import UserError, check_keys


@dataclass
class ModelConfig:
    """A Llama-style decoder-only transformer.

    The defaults are MiniMind's 26M model (512 x 8, GQA 8:2, vocab 6400), so a user moving
    over gets the same size; every field maps onto ``transformers.LlamaConfig``.
    """

    vocab_size: int = 6400
    hidden_size: int = 512
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    # None: SwiGLU width 8/3 * hidden rounded up to a multiple of 64 (1408 for 512), the usual
    # choice that keeps the MLP's parameter count equal to a 4x GELU MLP.
    intermediate_size: int | None = None
    max_position_embeddings: int = 4096
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-5
    dropout: float = 0.0
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2

    def __post_init__(self) -> None:
        if self.intermediate_size is None:
            self.intermediate_size = 64 * math.ceil(8 * self.hidden_size / 3 / 64)
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "intermediate_size",
            "max_position_embeddings",
        ):
            if int(getattr(self, name)) <= 0:
                raise UserError(f"model config: {name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise UserError(
                f"model config: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise UserError(
                f"model config: num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise UserError(f"model config: head_dim {self.head_dim} must be even for RoPE")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"model config: dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        check_keys(d, {f.name for f in fields(cls)}, file="model config")
        return cls(**d)

    def num_params(self) -> int:
        """Parameter count (tied embeddings counted once), without building the model."""
        h, kv = self.hidden_size, self.num_key_value_heads * self.head_dim
        attn = h * h * 2 + h * kv * 2
        mlp = 3 * h * self.intermediate_size
        per_layer = attn + mlp + 2 * h
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return emb + self.num_hidden_layers * per_layer + h

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6N for the matmuls plus the attention scores term.

        The PaLM / nanoGPT convention: 6 * N + 12 * layers * hidden * seq_len, where N counts
        every weight used in a matmul (the tied lm_head included, the norms are negligible).
        """
        n = self.num_params()
        return 6 * n + 12 * self.num_hidden_layers * self.hidden_size * seq_len

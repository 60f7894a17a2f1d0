"""The model's typed configuration. It travels inside every checkpoint."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from model.errors import UserError, check_keys

# The transformers classes our network reproduces exactly, and what each one fixes about it
# (transformers' modeling_llama.py / modeling_qwen2.py / modeling_qwen3.py): Qwen2 always has
# q/k/v biases and no o_proj bias; Llama and Qwen3 put ``attention_bias`` on all four projections;
# only Qwen3 has the per-head q/k RMSNorm; only Llama has ``mlp_bias``.
ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
# RoPE variants (transformers' modeling_rope_utils): "default" (rope_scaling None) and "llama3".
ROPE_TYPES = ("default", "llama3")
LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclass
class ModelConfig:
    """A Llama-style decoder-only transformer (Llama, Qwen2 and Qwen3 layouts).

    The defaults are MiniMind's 26M model (512 x 8, GQA 8:2, vocab 6400), so a user moving
    over gets the same size; every field maps onto the transformers config of ``architecture``
    (model/hf.py). A checkpoint written before a field existed loads with its default, which is
    the network that checkpoint was trained as.
    """

    vocab_size: int = 6400
    hidden_size: int = 512
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    # 0 (or None in an older checkpoint): SwiGLU width 8/3 * hidden rounded up to a multiple of 64
    # (1408 for 512), the usual choice that keeps the MLP's parameter count equal to a 4x GELU MLP.
    intermediate_size: int = 0
    max_position_embeddings: int = 4096
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-5
    dropout: float = 0.0
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    # Written into an exported config.json; an imported model may have none (Qwen: no BOS) or
    # several EOS ids (a list), as its transformers config says.
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    # Per-head width; 0 (or None): hidden_size // num_attention_heads (Qwen3 sets it, e.g. 128 at 1024/16).
    head_dim: int = 0
    qkv_bias: bool = False  # biases on q_proj, k_proj, v_proj (Qwen2; Llama/Qwen3 attention_bias)
    o_bias: bool = False  # bias on o_proj (Llama/Qwen3 attention_bias)
    mlp_bias: bool = False  # biases on gate/up/down_proj (Llama mlp_bias)
    qk_norm: bool = False  # RMSNorm(head_dim) on each query and key head before RoPE (Qwen3)
    # None: plain RoPE. Llama 3.1+ scaling: {"rope_type": "llama3", "factor", "low_freq_factor",
    # "high_freq_factor", "original_max_position_embeddings"}.
    rope_scaling: dict[str, Any] | None = None
    architecture: str = "LlamaForCausalLM"  # the transformers class written on export

    def __post_init__(self) -> None:
        if not self.intermediate_size:
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
        if not self.head_dim:
            if self.hidden_size % self.num_attention_heads:
                raise UserError(
                    f"model config: hidden_size {self.hidden_size} is not divisible by "
                    f"num_attention_heads {self.num_attention_heads}"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise UserError(
                f"model config: num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.head_dim <= 0 or self.head_dim % 2:
            raise UserError(f"model config: head_dim {self.head_dim} must be positive and even for RoPE")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"model config: dropout must be in [0, 1), got {self.dropout}")
        self._check_rope_scaling()
        self._check_architecture()

    def _check_rope_scaling(self) -> None:
        rs = self.rope_scaling
        if rs is None:
            return
        if not isinstance(rs, dict) or rs.get("rope_type") != "llama3":
            raise UserError(
                f"model config: rope_scaling {rs!r} is not supported (supported rope types: "
                f"{', '.join(ROPE_TYPES)}; default is rope_scaling None)"
            )
        check_keys(
            rs,
            {"rope_type", *LLAMA3_ROPE_KEYS},
            "rope_scaling",
            file="model config",
            required=LLAMA3_ROPE_KEYS,
        )
        if not rs["high_freq_factor"] > rs["low_freq_factor"] or rs["factor"] <= 0:
            raise UserError(
                "model config: rope_scaling needs factor > 0 and high_freq_factor > low_freq_factor, "
                f"got {rs}"
            )

    def _check_architecture(self) -> None:
        a = self.architecture
        if a not in ARCHITECTURES:
            raise UserError(
                f"model config: architecture {a!r} is not supported (supported: {', '.join(ARCHITECTURES)})"
            )
        wrong = []
        if a == "Qwen2ForCausalLM":
            wrong = [n for n, want in (("qkv_bias", True), ("o_bias", False)) if getattr(self, n) != want]
        elif self.qkv_bias != self.o_bias:  # one attention_bias flag covers all four projections
            wrong = ["qkv_bias == o_bias"]
        if (a == "Qwen3ForCausalLM") != self.qk_norm:
            wrong.append(f"qk_norm={a == 'Qwen3ForCausalLM'}")
        if self.mlp_bias and a != "LlamaForCausalLM":
            wrong.append("mlp_bias=False")
        if wrong:
            raise UserError(
                f"model config: architecture {a} needs {', '.join(wrong)} (its transformers class)"
            )

    @property
    def model_type(self) -> str:
        """transformers' model_type of ``architecture``: llama, qwen2 or qwen3."""
        return self.architecture.removesuffix("ForCausalLM").lower()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        check_keys(d, {f.name for f in fields(cls)}, file="model config")
        return cls(**d)

    def num_params(self) -> int:
        """Parameter count (tied embeddings counted once), without building the model."""
        h, hd = self.hidden_size, self.head_dim
        q, kv, i = self.num_attention_heads * hd, self.num_key_value_heads * hd, self.intermediate_size
        attn = 2 * h * q + 2 * h * kv
        attn += (q + 2 * kv) * self.qkv_bias + h * self.o_bias + 2 * hd * self.qk_norm
        mlp = 3 * h * i + (2 * i + h) * self.mlp_bias
        per_layer = attn + mlp + 2 * h
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return emb + self.num_hidden_layers * per_layer + h

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6N for the matmuls plus the attention scores term.

        The PaLM / nanoGPT convention: 6 * N + 12 * layers * (heads * head_dim) * seq_len, where N
        counts every weight used in a matmul: the LM head (tied or not) and the layers; an untied
        input embedding is a lookup, not a matmul, and is left out (the norms are negligible).
        """
        n = self.num_params() - (0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size)
        return 6 * n + 12 * self.num_hidden_layers * self.num_attention_heads * self.head_dim * seq_len

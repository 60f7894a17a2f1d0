"""The 1:1 mapping between our model and transformers' LlamaForCausalLM (no remote code)."""

from __future__ import annotations

from model.config import ModelConfig
from model.model import MiniGPTForCausalLM

# Written by scripts/export_hf.py beside the transformers files: where the weights came from and
# the context the model was trained with (eval_llm scores an export with it).
EXPORT_META = "minigpt.json"


def to_llama_config(cfg: ModelConfig):
    """The transformers.LlamaConfig describing the same network."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.rms_norm_eps,
        attention_dropout=cfg.dropout,
        tie_word_embeddings=cfg.tie_word_embeddings,
        initializer_range=cfg.initializer_range,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        pad_token_id=cfg.pad_token_id,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
    )


def to_llama(model: MiniGPTForCausalLM):
    """A transformers LlamaForCausalLM (fp32, eval mode) holding a copy of our weights."""
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM(to_llama_config(model.config))
    missing, unexpected = hf.load_state_dict(model.state_dict(), strict=False)
    # The tied lm_head may be reported as missing by transformers versions that drop it from the
    # state dict; anything else is a real mismatch.
    missing = [k for k in missing if not (model.config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(
            f"state dict does not map onto LlamaForCausalLM: missing={missing} unexpected={unexpected}"
        )
    return hf.float().eval()

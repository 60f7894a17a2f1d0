"""The miniGPT model: a Llama-compatible decoder-only transformer."""

from model.config import ModelConfig
from model.model import KVCache, MiniGPTForCausalLM

__all__ = ["KVCache", "MiniGPTForCausalLM", "ModelConfig"]

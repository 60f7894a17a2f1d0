"""The miniGPT model: a Llama-compatible decoder-only transformer.

``MiniGPTForCausalLM`` and ``KVCache`` load lazily, so ``from model.errors import UserError``
(used by every data script) does not pay for importing torch.
"""

from model.config import ModelConfig

__all__ = ["KVCache", "MiniGPTForCausalLM", "ModelConfig"]


def __getattr__(name: str):
    if name in ("KVCache", "MiniGPTForCausalLM"):
        from model import model as _model

        return getattr(_model, name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")

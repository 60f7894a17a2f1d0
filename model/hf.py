"""Our model <-> transformers' LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM (no remote code).

The parameter names are the same on both sides, so weights move without renaming; what differs
between the families lives in :class:`model.config.ModelConfig` (biases, q/k norm, head_dim,
RoPE scaling, tied embeddings, ``architecture``).

    cfg = read_hf_config(folder)                # ModelConfig, or UserError naming what is supported
    model = load_hf_folder(folder)              # MiniGPTForCausalLM in fp32 (any stored dtype)
    p = parity(model, folder, ids)              # logits vs transformers' own forward on the folder
    print(p.line)                               # "parity vs transformers: max abs logit diff X (bound B)"
    p.check()                                   # UserError above the bound
    hf = to_hf(model)                           # the transformers class it came from, for save_pretrained
    files = source_files(folder)                # config, generation config, tokenizer files: carried to the export

``ids`` are the token ids of :data:`PARITY_TEXT` in the model's own tokenizer. Everything here
runs offline: a folder is a local directory (config.json + *.safetensors); reaching the Hub is
the caller's job. A folder that cannot be read as a float model (a file cut short, not
safetensors, a shard missing, an index that is not JSON, a shape config.json does not imply,
quantized or integer tensors) is a UserError: one line naming the file and what to do.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.config import ARCHITECTURES, ROPE_TYPES, ModelConfig
from model.errors import UserError
from model.model import MiniGPTForCausalLM

log = logging.getLogger(__name__)

# Written by scripts/export_hf.py beside the transformers files: where the weights came from and
# the context the model was trained with (eval_llm scores an export with it).
EXPORT_META = "minigpt.json"

SUPPORTED = (
    f"supported: architectures {', '.join(ARCHITECTURES)} with rope types {', '.join(ROPE_TYPES)}, "
    "silu MLP, full attention (no sliding window)"
)
# safetensors dtype names of the weights that are read (each converted to fp32); anything else
# (I8, U8, packed 4-bit, F8_*) is quantized or not a weight.
FLOAT_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
FLOAT_ONLY = (
    "only float weights (float32, bfloat16, float16) are read: use the model's unquantized release "
    "(the repository without -GPTQ / -AWQ / -bnb / -FP8 in its name)"
)
REDOWNLOAD = "download the folder again"

# The fixed prompt of the parity proof: several sentences of ordinary prose, code and digits, so
# that many embedding rows, positions and attention patterns take part.
PARITY_TEXT = (
    "The quick brown fox jumps over the lazy dog. In 1969, Apollo 11 landed on the Moon and "
    "Neil Armstrong stepped onto its surface. Water boils at 100 degrees Celsius at sea level. "
    "def add(a, b):\n    return a + b\n"
    "She opened the old book, read the first page twice, and smiled."
)
# B = PARITY_REL * max(1, max |logit|): fp32 forwards of the same weights agree to ~1e-6 relative.
PARITY_REL = 1e-4


def _hf_classes(architecture: str):
    """(config class, model class) of a supported architecture."""
    import transformers

    config_cls = architecture.replace("ForCausalLM", "Config")
    return getattr(transformers, config_cls), getattr(transformers, architecture)


# --------------------------------------------------------------------------- configs


def config_from_hf(hf_config, where: str = "config.json") -> ModelConfig:
    """The ModelConfig of a transformers config (a ``PretrainedConfig`` of Llama, Qwen2 or Qwen3).

    The older config.json format (top-level ``rope_theta`` + ``rope_scaling``) and the newer one
    (``rope_parameters``) are both read (transformers 5 converts the older on load). Raises
    UserError, one line naming ``where`` and listing what is supported, for any other
    architecture, RoPE type, activation, a sliding-window attention or a ``quantization_config``
    (GPTQ, AWQ, bitsandbytes, FP8: only float weights are read).
    """
    archs = list(getattr(hf_config, "architectures", None) or [])
    model_type = str(getattr(hf_config, "model_type", None))
    by_type = {a.removesuffix("ForCausalLM").lower(): a for a in ARCHITECTURES}
    arch = archs[0] if archs else by_type.get(model_type)
    if len(archs) > 1 or arch not in ARCHITECTURES or by_type.get(model_type) != arch:
        raise UserError(
            f"{where}: architecture {', '.join(archs) or '(none named)'} (model_type {getattr(hf_config, 'model_type', None)!r}) "
            f"is not supported; {SUPPORTED}"
        )

    def refuse(what: str) -> UserError:
        return UserError(f"{where}: {arch} with {what} is not supported; {SUPPORTED}")

    rp = dict(getattr(hf_config, "rope_parameters", None) or {})
    theta = rp.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    rope_type = rp.get("rope_type", rp.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise refuse(f"rope type {rope_type!r}")
    if float(rp.get("partial_rotary_factor", 1.0)) != 1.0:
        raise refuse(f"partial_rotary_factor {rp['partial_rotary_factor']}")
    rope_scaling = None
    if rope_type == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        if missing := [k for k in keys if rp.get(k) is None]:
            raise UserError(f"{where}: llama3 rope scaling lacks {', '.join(missing)}")
        rope_scaling = {"rope_type": "llama3", **{k: rp[k] for k in keys}}
    if getattr(hf_config, "hidden_act", "silu") != "silu":
        raise refuse(f"hidden_act {hf_config.hidden_act!r}")
    if getattr(hf_config, "use_sliding_window", False) or any(
        t != "full_attention" for t in getattr(hf_config, "layer_types", None) or []
    ):
        raise refuse("sliding-window attention (use_sliding_window / layer_types)")
    if quant := getattr(hf_config, "quantization_config", None):
        method = (
            quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
        )
        raise UserError(f"{where}: quantization_config ({method or 'quantized'}): {FLOAT_ONLY}")

    heads = hf_config.num_attention_heads
    bias = bool(getattr(hf_config, "attention_bias", False))
    return ModelConfig(
        vocab_size=hf_config.vocab_size,
        hidden_size=hf_config.hidden_size,
        num_hidden_layers=hf_config.num_hidden_layers,
        num_attention_heads=heads,
        num_key_value_heads=getattr(hf_config, "num_key_value_heads", None) or heads,
        intermediate_size=hf_config.intermediate_size,
        max_position_embeddings=hf_config.max_position_embeddings,
        rope_theta=float(theta),
        rms_norm_eps=float(hf_config.rms_norm_eps),
        dropout=float(getattr(hf_config, "attention_dropout", 0.0) or 0.0),
        tie_word_embeddings=bool(hf_config.tie_word_embeddings),
        initializer_range=float(getattr(hf_config, "initializer_range", 0.02)),
        pad_token_id=getattr(hf_config, "pad_token_id", None),
        bos_token_id=getattr(hf_config, "bos_token_id", None),
        eos_token_id=getattr(hf_config, "eos_token_id", None),
        head_dim=getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads,
        qkv_bias=True if arch == "Qwen2ForCausalLM" else bias,
        o_bias=False if arch == "Qwen2ForCausalLM" else bias,
        mlp_bias=bool(getattr(hf_config, "mlp_bias", False)),
        qk_norm=arch == "Qwen3ForCausalLM",
        rope_scaling=rope_scaling,
        architecture=arch,
    )


def read_hf_config(folder: str | Path) -> ModelConfig:
    """The ModelConfig of a local transformers folder's config.json (no remote code).

    Raises UserError when the folder has no config.json, transformers cannot read it, or the
    architecture is not supported (see :func:`config_from_hf`).
    """
    from transformers import AutoConfig

    path = Path(folder) / "config.json"
    if not path.is_file():
        raise UserError(f"{folder}: no config.json (not a transformers model folder)")
    try:
        hf_config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    except (ValueError, KeyError, OSError, json.JSONDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: transformers cannot read it ({first}); {SUPPORTED}") from None
    return config_from_hf(hf_config, where=str(path))


def hf_config(cfg: ModelConfig):
    """The transformers config (class ``cfg.architecture``) describing the same network."""
    config_cls, _ = _hf_classes(cfg.architecture)
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling is not None:
        rope = {**cfg.rope_scaling, "rope_theta": cfg.rope_theta}
    kw = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters=rope,
        rms_norm_eps=cfg.rms_norm_eps,
        attention_dropout=cfg.dropout,
        tie_word_embeddings=cfg.tie_word_embeddings,
        initializer_range=cfg.initializer_range,
        hidden_act="silu",
        pad_token_id=cfg.pad_token_id,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
    )
    if cfg.architecture == "LlamaForCausalLM":
        kw.update(attention_bias=cfg.o_bias, mlp_bias=cfg.mlp_bias)
    elif cfg.architecture == "Qwen3ForCausalLM":
        kw.update(attention_bias=cfg.o_bias, use_sliding_window=False)
    else:  # Qwen2: q/k/v biases are built in
        kw.update(use_sliding_window=False)
    out = config_cls(**kw)
    out.architectures = [cfg.architecture]
    return out


# --------------------------------------------------------------------------- weights


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files holding a folder's weights (one file, or the shards of an index).
    UserError, one line saying to download again, for an index that is not JSON or has no
    ``weight_map`` of file names, or a shard it names that is missing."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            if not all(isinstance(n, str) for n in names):
                raise TypeError("weight_map values are not file names")
        except ValueError as e:  # not UTF-8 or not JSON
            raise UserError(
                f"{index}: not a safetensors index (not JSON: {_first_line(e)}); {REDOWNLOAD}"
            ) from None
        except (KeyError, TypeError, AttributeError) as e:
            raise UserError(
                f"{index}: not a safetensors index (no weight_map of file names: {_first_line(e)}); {REDOWNLOAD}"
            ) from None
        files = [folder / n for n in names]
        if missing := [str(f) for f in files if not f.is_file()]:
            raise UserError(f"{index}: shard(s) missing: {', '.join(missing)}; {REDOWNLOAD}")
        return files
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    raise UserError(
        f"{folder}: no model.safetensors or model.safetensors.index.json (only safetensors weights "
        "are read; convert a pytorch_model.bin with transformers' save_pretrained(safe_serialization=True))"
    )


@contextmanager
def _open_safetensors(file: Path) -> Iterator[Any]:
    """``safetensors.safe_open(file)``; a file that is not safetensors, or is cut short (its header
    promises more bytes than it has), is a UserError naming it and saying to download again."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            yield f
    except (SafetensorError, OSError) as e:
        raise UserError(
            f"{file}: not a readable safetensors file ({_first_line(e)}): it is incomplete (an interrupted "
            f"download?) or not safetensors at all; {REDOWNLOAD}"
        ) from None


def _declared_dtype(folder: Path) -> str | None:
    """config.json's ``dtype`` (``torch_dtype`` in the older layout), e.g. "bfloat16"; None if unset."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    value = config.get("dtype") or config.get("torch_dtype")
    return str(value).removeprefix("torch.") if value else None


def load_hf_folder(folder: str | Path, device: torch.device | str = "cpu") -> MiniGPTForCausalLM:
    """Our model, in fp32 on ``device``, holding the weights of a local transformers folder.

    Reads config.json (:func:`read_hf_config`) and every safetensors shard, in whatever float dtype
    they are stored (bf16, fp16, fp32, fp64), one tensor at a time, converting each into the fp32
    parameter of the same name; weights stored in another dtype than config.json's ``dtype`` /
    ``torch_dtype`` are read as stored, with one info line saying so. The embedding keeps the
    checkpoint's row count (Qwen pads it beyond the tokenizer). A tied model ignores a stored
    ``lm_head.weight``, as transformers does; ``rotary_emb.inv_freq`` buffers of old checkpoints
    are recomputed, not read. Raises UserError, one line naming the file and what to do, for a
    file that is cut short or not safetensors, an index that is not JSON, a missing shard, a
    quantized or integer tensor (I8, U8, packed 4-bit, F8), a tensor with no place in the
    architecture, a shape config.json does not imply, or a missing tensor. Run :func:`parity`
    afterwards: it proves the result.
    """
    folder = Path(folder)
    cfg = read_hf_config(folder)
    files = _weight_files(folder)
    with torch.device("meta"):  # no random init of weights that are about to be overwritten
        model = MiniGPTForCausalLM(cfg)
    model.to_empty(device=device)  # uninitialised memory; unties lm_head from the embedding
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.reset_rope(device)
    params = dict(model.named_parameters())  # a tied lm_head appears once, as the embedding
    loaded: set[str] = set()
    stored: set[str] = set()
    for file in files:
        with _open_safetensors(file) as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if name.endswith("rotary_emb.inv_freq") or (
                    cfg.tie_word_embeddings and name == "lm_head.weight"
                ):
                    continue
                dtype = f.get_slice(name).get_dtype()
                if dtype not in FLOAT_DTYPES:
                    raise UserError(
                        f"{file}: tensor {name} is stored as {dtype} (quantized or not a weight); {FLOAT_ONLY}"
                    )
                p = params.get(name)
                if p is None:
                    raise UserError(
                        f"{file}: tensor {name} has no place in {cfg.architecture} as config.json "
                        "describes it (wrong config.json, or a variant that is not supported)"
                    )
                t = f.get_tensor(name)
                if tuple(t.shape) != tuple(p.shape):
                    raise UserError(
                        f"{file}: tensor {name} has shape {tuple(t.shape)}, config.json implies "
                        f"{tuple(p.shape)}: the weights and config.json are not of one model; {REDOWNLOAD} (or fix config.json)"
                    )
                with torch.no_grad():
                    p.copy_(t)
                loaded.add(name)
                stored.add(FLOAT_DTYPES[dtype])
    if missing := sorted(set(params) - loaded):
        more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        raise UserError(
            f"{folder}: tensors missing from the safetensors files: {', '.join(missing[:5])}{more}; {REDOWNLOAD}"
        )
    declared = _declared_dtype(folder)
    if declared is not None and stored != {declared}:
        log.info(
            f"{folder}: weights stored as {', '.join(sorted(stored))}, config.json says {declared}: "
            "read as stored and converted to float32"
        )
    return model.eval()


def to_hf(model: MiniGPTForCausalLM):
    """The transformers model of ``model.config.architecture`` (fp32, eval mode) holding a copy of
    our weights: LlamaForCausalLM, Qwen2ForCausalLM or Qwen3ForCausalLM with the config of
    :func:`hf_config`, loadable with no remote code. A model imported from a Qwen3 folder comes
    back as a Qwen3 (biases, head_dim, q/k norm, RoPE scaling and the tie flag preserved).
    Raises RuntimeError if a tensor does not map (a bug, not user input)."""
    _, model_cls = _hf_classes(model.config.architecture)
    hf = model_cls(hf_config(model.config))
    missing, unexpected = hf.load_state_dict(model.state_dict(), strict=False)
    # The tied lm_head may be reported as missing by transformers versions that drop it from the
    # state dict; anything else is a real mismatch.
    missing = [k for k in missing if not (model.config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(
            f"state dict does not map onto {model.config.architecture}: missing={missing} unexpected={unexpected}"
        )
    if model.config.tie_word_embeddings:
        hf.tie_weights()
    return hf.float().eval()


# --------------------------------------------------------------------------- the files beside the weights

# What a transformers folder holds beside its weights that describes the model: config.json,
# generation_config.json (stop ids, sampling settings) and the tokenizer's own files. tokenizer.json
# itself travels in every checkpoint (dataset.tokenizer.tokenizer_to_dict); the weights index
# describes files that an export writes anew, and an earlier export's minigpt.json its own run.
CARRIED_SUFFIXES = (".json", ".jinja", ".txt")
NOT_CARRIED = frozenset({"model.safetensors.index.json", "tokenizer.json", EXPORT_META})
CARRIED_MAX_BYTES = 8 << 20  # Qwen2.5's vocab.json, the largest such file we know, is 2.7 MB


def source_files(folder: str | Path) -> dict[str, str]:
    """``{file name: text}`` of the files in a transformers folder that describe the model beside
    its weights: every top-level ``*.json``, ``*.jinja`` and ``*.txt`` (config.json,
    generation_config.json, tokenizer_config.json, special_tokens_map.json, added_tokens.json,
    chat_template.jinja, vocab.json, merges.txt, ...) except tokenizer.json, the weights index and
    :data:`EXPORT_META`: the set scripts/export_hf.py writes back for an imported model
    (trainer.weights.load stores it in the model's meta). A file over :data:`CARRIED_MAX_BYTES` or not UTF-8 is left out, with
    one info line naming it. Raises nothing."""
    files: dict[str, str] = {}
    for f in sorted(Path(folder).iterdir()):
        if not f.is_file() or f.suffix not in CARRIED_SUFFIXES or f.name in NOT_CARRIED:
            continue
        size = f.stat().st_size
        try:
            if size > CARRIED_MAX_BYTES:
                raise ValueError(f"{size} bytes, over {CARRIED_MAX_BYTES}")
            files[f.name] = f.read_text(encoding="utf-8")
        except ValueError as e:  # too large, or not UTF-8 text
            log.info(f"{f}: not carried to an export ({_first_line(e)})")
    return files


# --------------------------------------------------------------------------- parity proof


@dataclass(frozen=True)
class Parity:
    """The outcome of :func:`parity`: max |our logit - transformers' logit| over the prompt, and
    the bound B = PARITY_REL * max(1, max |transformers' logit|)."""

    max_abs_diff: float
    bound: float
    max_abs_logit: float
    tokens: int
    where: str

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.bound  # a NaN difference is not ok

    @property
    def line(self) -> str:
        return f"parity vs transformers: max abs logit diff {self.max_abs_diff:.3g} (bound {self.bound:.3g})"

    def check(self) -> Parity:
        """Self if within the bound; else UserError: the model must not be trained."""
        if not self.ok:
            raise UserError(
                f"{self.where}: {self.line}: the converted model does not compute what transformers "
                "computes from this folder; refusing to use it (check config.json against the weights)"
            )
        return self


def parity(model: MiniGPTForCausalLM, folder: str | Path, input_ids) -> Parity:
    """Compare our model's logits with transformers' own forward of ``folder`` (fp32, CPU).

    ``input_ids``: a sequence of token ids or a (T,) / (1, T) long tensor, normally
    :data:`PARITY_TEXT` encoded with the model's tokenizer; every id must be < vocab_size. The
    reference is ``AutoModelForCausalLM.from_pretrained(folder, dtype=float32)`` (no remote code;
    it needs the fp32 model's memory once more, freed on return). Our model runs in eval mode
    without autocast on its own device and is left as it was (training flag included).
    The bound is :data:`PARITY_REL` x max(1, max |logit|) (issue 12); returns a :class:`Parity`,
    call ``.check()`` to stop above it.
    """
    ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(1, -1).cpu()
    cfg = model.config
    if ids.numel() < 2 or int(ids.min()) < 0 or int(ids.max()) >= cfg.vocab_size:
        raise UserError(
            f"parity: need >= 2 token ids within [0, {cfg.vocab_size}), got {ids.tolist()[0][:8]}..."
        )
    ids = ids[:, : cfg.max_position_embeddings]
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # true fp32 on both sides (no TF32 on a GPU)
    try:
        theirs, ours = _both_logits(model, folder, ids)
    finally:
        torch.set_float32_matmul_precision(precision)
    peak = theirs.abs().max().item()
    diff = (ours - theirs).abs().max().item()
    if diff != diff:  # NaN anywhere: no proof
        diff = float("inf")
    return Parity(diff, PARITY_REL * max(1.0, peak), peak, ids.shape[1], str(folder))


def _both_logits(model: MiniGPTForCausalLM, folder, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(transformers' logits, ours), both (1, T, vocab) fp32 on the CPU."""
    from transformers import AutoModelForCausalLM

    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        ref = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, trust_remote_code=False)
        theirs = ref.eval()(ids).logits.float()
        del ref
        was_training = model.training
        device = next(model.parameters()).device
        try:
            with torch.autocast(device.type, enabled=False):
                ours = model.eval()(ids.to(device)).float().cpu()
        finally:
            model.train(was_training)
    return theirs, ours

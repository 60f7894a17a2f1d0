"""Open checkpoints in and out: transformers' own Llama / Qwen2 / Qwen3 classes, tiny random models.

Every folder is written by transformers itself (``save_pretrained``); the "old format" ones get
the config.json layout the Hub still serves (top-level ``rope_theta`` + ``rope_scaling``,
``torch_dtype``). Weights are randomised with a scale that makes attention sharp, biases and
norm weights included, so that a wrong RoPE, a missing bias or a missing q/k norm moves the logits
far beyond the parity bound (a tiny model at init would hide them).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from dataset.tokenizer import encode_texts, load_tokenizer
from model.config import ModelConfig
from model.errors import UserError
from model.hf import (
    PARITY_TEXT,
    config_from_hf,
    load_hf_folder,
    parity,
    read_hf_config,
    to_hf,
)
from model.model import MiniGPTForCausalLM

pytestmark = pytest.mark.usefixtures("one_thread")

EXTRA_ROWS = 40  # embedding rows beyond the tokenizer's ids, as Qwen pads its embedding

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # small enough that the prompt's positions span scaled, interpolated and kept frequencies
    "original_max_position_embeddings": 32,
}

# name -> (architecture, config kwargs, stored dtype, config.json layout)
FAMILIES = {
    "llama_tied_llama3": (
        "LlamaForCausalLM",
        dict(
            tie_word_embeddings=True,
            rms_norm_eps=1e-5,
            rope_parameters={**LLAMA3_ROPE, "rope_theta": 500000.0},
        ),
        torch.bfloat16,
        "old",
    ),
    "llama_untied_bias": (
        "LlamaForCausalLM",
        dict(
            tie_word_embeddings=False,
            attention_bias=True,
            mlp_bias=True,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        torch.float32,
        "new",
    ),
    "qwen2": (
        "Qwen2ForCausalLM",
        dict(
            tie_word_embeddings=True,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
            use_sliding_window=False,
            sliding_window=4096,
            max_window_layers=2,
        ),
        torch.bfloat16,
        "old",
    ),
    "qwen3": (
        "Qwen3ForCausalLM",
        dict(
            tie_word_embeddings=True,
            head_dim=32,  # != hidden / heads = 16, as in Qwen3-0.6B (128 vs 64)
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        ),
        torch.float32,
        "new",
    ),
    "qwen3_untied_bias_bf16": (
        "Qwen3ForCausalLM",
        dict(
            tie_word_embeddings=False,
            head_dim=32,
            attention_bias=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        ),
        torch.bfloat16,
        "old",
    ),
}


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Weights at a scale that gives sharp attention and O(1..10) logits; norms around 1, biases
    clearly non-zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.empty(p.shape).uniform_(0.5, 1.5, generator=g))
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p.shape[-1] ** 0.5))


def to_old_format(folder: Path, dtype: torch.dtype) -> None:
    """Rewrite config.json as older Hub files have it: top-level rope_theta + rope_scaling (with
    the pre-4.45 "type" key for llama3), torch_dtype instead of dtype."""
    path = folder / "config.json"
    c = json.loads(path.read_text())
    rp = c.pop("rope_parameters")
    c["rope_theta"] = rp.pop("rope_theta")
    kind = rp.pop("rope_type")
    c["rope_scaling"] = None if kind == "default" else {"type": kind, **rp}
    c.pop("dtype", None)
    c["torch_dtype"] = str(dtype).removeprefix("torch.")
    path.write_text(json.dumps(c, indent=2))


def make_folder(root: Path, name: str, vocab_size: int) -> Path:
    import transformers

    arch, kw, dtype, layout = FAMILIES[name]
    config_cls = getattr(transformers, arch.replace("ForCausalLM", "Config"))
    cfg = config_cls(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=None if arch.startswith("Qwen") else 1,
        eos_token_id=2,
        **kw,
    )
    torch.manual_seed(0)
    model = getattr(transformers, arch)(cfg)
    randomise(model, seed=len(name))
    out = root / name
    model.to(dtype).save_pretrained(out)
    if layout == "old":
        to_old_format(out, dtype)
    return out


@pytest.fixture(scope="module")
def prompt_ids(tokenizer_dir) -> list[int]:
    """PARITY_TEXT in a real trained BPE (1024 ids), as the caller encodes it."""
    return encode_texts(load_tokenizer(tokenizer_dir), [PARITY_TEXT])[0]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_families")
    vocab = len(load_tokenizer(tokenizer_dir)) + EXTRA_ROWS
    return {name: make_folder(root, name, vocab) for name in FAMILIES}


def reference(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


# --------------------------------------------------------------------------- configs


def test_configs_read_as_each_family_defines_them(folders, tokenizer_dir):
    vocab = len(load_tokenizer(tokenizer_dir)) + EXTRA_ROWS
    got = {name: read_hf_config(folder) for name, folder in folders.items()}
    llama, untied, qwen2, qwen3, qwen3b = got.values()
    assert all(c.vocab_size == vocab for c in got.values())  # the model's rows, not the tokenizer's
    assert llama.rope_scaling == LLAMA3_ROPE and llama.rope_theta == 500000.0 and llama.tie_word_embeddings
    assert (llama.qkv_bias, llama.o_bias, llama.mlp_bias, llama.qk_norm, llama.head_dim) == (
        False,
        False,
        False,
        False,
        16,
    )
    assert (untied.qkv_bias, untied.o_bias, untied.mlp_bias, untied.tie_word_embeddings) == (True,) * 3 + (
        False,
    )
    assert untied.rope_scaling is None and untied.rope_theta == 10000.0
    assert (qwen2.architecture, qwen2.qkv_bias, qwen2.o_bias, qwen2.rope_theta, qwen2.rms_norm_eps) == (
        "Qwen2ForCausalLM",
        True,
        False,
        1e6,
        1e-6,
    )
    assert qwen2.bos_token_id is None
    assert (qwen3.architecture, qwen3.qk_norm, qwen3.head_dim, qwen3.qkv_bias) == (
        "Qwen3ForCausalLM",
        True,
        32,
        False,
    )
    assert (qwen3b.qkv_bias, qwen3b.o_bias, qwen3b.tie_word_embeddings) == (True, True, False)


def test_old_and_new_config_layouts_read_the_same(folders, tmp_path):
    for name in ("llama_tied_llama3", "qwen2"):
        new = tmp_path / name
        shutil.copytree(folders[name], new)
        c = json.loads((new / "config.json").read_text())
        scaling = c.pop("rope_scaling") or {"type": "default"}
        c["rope_parameters"] = {
            "rope_type": scaling.pop("type"),
            **scaling,
            "rope_theta": c.pop("rope_theta"),
        }
        c["dtype"] = c.pop("torch_dtype")
        (new / "config.json").write_text(json.dumps(c))
        assert read_hf_config(new) == read_hf_config(folders[name])


def test_old_checkpoint_config_dicts_still_load():
    # a model_config as checkpoints wrote it before the family fields existed
    old = {
        "vocab_size": 6400,
        "hidden_size": 512,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "intermediate_size": 1408,
        "max_position_embeddings": 4096,
        "rope_theta": 1e6,
        "rms_norm_eps": 1e-5,
        "dropout": 0.0,
        "tie_word_embeddings": True,
        "initializer_range": 0.02,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    cfg = ModelConfig.from_dict(old)
    assert cfg == ModelConfig() and cfg.head_dim == 64 and cfg.architecture == "LlamaForCausalLM"
    assert not (cfg.qkv_bias or cfg.o_bias or cfg.mlp_bias or cfg.qk_norm) and cfg.rope_scaling is None
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def one_line_error(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_unsupported_models_are_refused_in_one_line(tmp_path):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    cases = {
        "mistral": MistralConfig(
            hidden_size=64, num_attention_heads=4, num_hidden_layers=1, architectures=["MistralForCausalLM"]
        ),
        "yarn": Qwen2Config(
            hidden_size=64,
            num_attention_heads=4,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 1e6,
                "factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
        "sliding": Qwen2Config(
            hidden_size=64,
            num_attention_heads=4,
            num_hidden_layers=2,
            use_sliding_window=True,
            max_window_layers=1,
        ),
        "gelu": LlamaConfig(hidden_size=64, num_attention_heads=4, hidden_act="gelu"),
    }
    for name, cfg in cases.items():
        cfg.save_pretrained(tmp_path / name)
        with pytest.raises(UserError) as e:
            read_hf_config(tmp_path / name)
        msg = one_line_error(e)
        assert "LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM" in msg and "default, llama3" in msg
        assert str(tmp_path / name) in msg
    assert "MistralForCausalLM" in str(pytest.raises(UserError, config_from_hf, cases["mistral"]).value)
    with pytest.raises(UserError, match="no config.json") as e:
        read_hf_config(tmp_path)
    one_line_error(e)


def test_family_flags_must_fit_the_architecture():
    with pytest.raises(UserError, match="Qwen2ForCausalLM needs qkv_bias"):
        ModelConfig(architecture="Qwen2ForCausalLM")
    with pytest.raises(UserError, match="qk_norm=True"):
        ModelConfig(architecture="Qwen3ForCausalLM")
    with pytest.raises(UserError, match="supported rope types: default, llama3"):
        ModelConfig(rope_scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(UserError, match="original_max_position_embeddings"):
        ModelConfig(
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
            }
        )
    with pytest.raises(UserError, match="not supported"):
        ModelConfig(architecture="GPT2LMHeadModel")


# --------------------------------------------------------------------------- load + parity


@pytest.mark.parametrize("name", FAMILIES)
def test_load_is_proven_by_parity(folders, prompt_ids, name):
    model = load_hf_folder(folders[name])
    ref = reference(folders[name])
    assert all(p.dtype == torch.float32 for p in model.parameters())
    emb = model.model.embed_tokens.weight
    assert emb.shape[0] == ref.config.vocab_size > max(prompt_ids) + EXTRA_ROWS - 1
    assert (model.lm_head.weight is emb) == ref.config.tie_word_embeddings
    # every tensor equals transformers' own (bf16-stored ones exactly, after the fp32 upcast)
    ours = model.state_dict()
    for k, v in ref.state_dict().items():
        assert torch.equal(ours[k], v), k
    p = parity(model, folders[name], prompt_ids)
    print(f"{name}: {p.line} over {p.tokens} tokens, max |logit| {p.max_abs_logit:.2f}")
    assert p.ok and p.check() is p
    assert p.tokens == len(prompt_ids) > 40 and p.max_abs_logit > 1.0  # the bound is relative, and bites
    assert p.max_abs_diff < p.bound / 10  # well inside, not by luck
    assert p.line.startswith("parity vs transformers: max abs logit diff ")


@pytest.mark.parametrize("name", ["llama_tied_llama3", "qwen2", "qwen3"])
def test_planted_mismatches_are_caught(folders, prompt_ids, name):
    folder = folders[name]
    # a corrupted weight: two query heads swapped in one layer (a permutation bug), and a
    # single element off by a little
    for corrupt in ("swap_heads", "one_element"):
        model: Any = load_hf_folder(folder)
        with torch.no_grad():
            if corrupt == "swap_heads":
                w = model.model.layers[1].self_attn.q_proj.weight
                hd = model.config.head_dim
                w[:hd], w[hd : 2 * hd] = w[hd : 2 * hd].clone(), w[:hd].clone()
            else:
                model.model.layers[0].mlp.down_proj.weight[3, 5] += 0.5
        p = parity(model, folder, prompt_ids)
        assert not p.ok, (corrupt, p.line)
        with pytest.raises(UserError, match="parity vs transformers: max abs logit diff .* refusing") as e:
            p.check()
        one_line_error(e)
    # a wrong rope theta (the converter read the default 10000 instead of the file's)
    good = load_hf_folder(folder)
    wrong = MiniGPTForCausalLM(ModelConfig.from_dict({**good.config.to_dict(), "rope_theta": 10000.0}))
    wrong.load_state_dict(good.state_dict())
    assert not parity(wrong, folder, prompt_ids).ok
    # ... or dropped the llama3 scaling
    if good.config.rope_scaling is not None:
        plain = MiniGPTForCausalLM(ModelConfig.from_dict({**good.config.to_dict(), "rope_scaling": None}))
        plain.load_state_dict(good.state_dict())
        assert not parity(plain, folder, prompt_ids).ok


def test_missing_and_misshaped_tensors_are_user_errors(folders, tmp_path):
    from safetensors.torch import load_file, save_file

    src = folders["qwen2"]
    for what in ("missing", "extra", "shape"):
        bad = tmp_path / what
        shutil.copytree(src, bad)
        sd = load_file(str(bad / "model.safetensors"))
        if what == "missing":
            del sd["model.layers.1.self_attn.k_proj.bias"]
        elif what == "extra":
            sd["model.layers.0.self_attn.q_norm.weight"] = torch.ones(16)
        else:
            sd["model.norm.weight"] = torch.ones(65)
        save_file(sd, str(bad / "model.safetensors"))
        with pytest.raises(
            UserError, match={"missing": "k_proj.bias", "extra": "q_norm", "shape": "norm.weight"}[what]
        ) as e:
            load_hf_folder(bad)
        one_line_error(e)


# --------------------------------------------------------------------------- export


@pytest.mark.parametrize("name", FAMILIES)
def test_export_round_trip_keeps_the_family(folders, prompt_ids, tmp_path, name):
    from safetensors import safe_open

    src = folders[name]
    model = load_hf_folder(src)
    out = tmp_path / "export"
    to_hf(model).save_pretrained(out)
    # the same class and the same network description
    c_src, c_out = read_hf_config(src), read_hf_config(out)
    assert c_out == c_src
    assert json.loads((out / "config.json").read_text())["architectures"] == [c_src.architecture]
    with (
        safe_open(str(src / "model.safetensors"), "pt") as a,
        safe_open(str(out / "model.safetensors"), "pt") as b,
    ):
        assert set(a.keys()) == set(b.keys())  # biases, q/k norms, lm_head present exactly as in the source
    # transformers reloads it (no remote code) and computes the original logits
    orig, back = reference(src), reference(out)
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        assert (orig(ids).logits - back(ids).logits).abs().max().item() <= 1e-4
    # identical greedy generations: transformers before and after, and our KV-cache generation
    prompt = ids[:, :12]
    kw = dict(max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
    g_orig, g_back = orig.generate(prompt, **kw), back.generate(prompt, **kw)
    assert torch.equal(g_orig, g_back)
    assert torch.equal(model.generate(prompt, 16, temperature=0), g_orig)
    # and our loader reads the export back to the same weights
    again = load_hf_folder(out).state_dict()
    assert all(torch.equal(again[k], v) for k, v in model.state_dict().items())


def test_our_own_model_exports_as_llama():
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    model = MiniGPTForCausalLM(cfg).eval()
    hf = to_hf(model)
    assert type(hf).__name__ == "LlamaForCausalLM"
    x = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max().item() <= 1e-5

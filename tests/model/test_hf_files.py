"""Damaged transformers folders.

The folders are the round-3 field cases' (../shared/field-cases3/make_hf_models.py): llama3 (tied,
llama3 RoPE, bf16 weights, BOS by post-processor), qwen2 (untied, biases, no BOS, ChatML template,
generation_config.json with eos [<|im_end|>, <|endoftext|>] and sampling settings,
max_window_layers 2, no head_dim in config.json) and qwen3 (head_dim 32 != 64 / 4, q/k norm).

- Every way a folder's weights can be unreadable is one line naming the file and what to do.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from model.errors import UserError
from tests.helpers import SHARED, SHARED_DATA, _require, bad

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ("llama3", "qwen2", "qwen3")


@pytest.fixture(scope="module")
def hf(tmp_path_factory) -> Path:
    """OUT/{llama3,qwen2,qwen3}, written by the field cases' own builder (a few seconds)."""
    path = _require(SHARED / "field-cases3" / "make_hf_models.py")
    spec = importlib.util.spec_from_file_location("make_hf_models", path)
    assert spec is not None and spec.loader is not None
    builder: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    builder.DATA = _require(SHARED_DATA / "tinystories" / "validation_first1000.jsonl")
    root = tmp_path_factory.mktemp("fc3")
    builder.build(root)
    return root


def config(folder: Path, name: str = "config.json") -> dict:
    return json.loads((folder / name).read_text())


# --------------------------------------------------------------------------- damaged folders


def damage(folder: Path, how: str) -> str:
    """Damage ``folder`` (a copy of qwen2) one way; returns the file the error must name."""
    from safetensors.torch import load_file, save_file

    st = folder / "model.safetensors"
    if how == "cut":  # an interrupted download
        st.write_bytes(st.read_bytes()[: st.stat().st_size // 3])
    elif how == "not_safetensors":  # an error page saved under the file's name
        st.write_text("<html><body>Access denied</body></html>")
    elif how == "empty":
        st.write_bytes(b"")
    elif how in ("int8", "uint8_packed_4bit", "float8"):
        sd = load_file(str(st))
        w = sd["model.layers.0.mlp.down_proj.weight"]
        if how == "int8":
            sd["model.layers.0.mlp.down_proj.weight"] = (w * 100).to(torch.int8)  # the same shape
        elif how == "uint8_packed_4bit":  # bitsandbytes' layout: two 4-bit values a byte
            sd["model.layers.0.mlp.down_proj.weight"] = torch.zeros(w.numel() // 2, 1, dtype=torch.uint8)
        else:
            sd["model.layers.0.mlp.down_proj.weight"] = w.to(torch.float8_e4m3fn)
        save_file(sd, str(st))
    elif how == "shape":
        sd = load_file(str(st))
        sd["model.layers.1.self_attn.q_proj.weight"] = torch.zeros(64, 32)
        save_file(sd, str(st))
    elif how == "quantization_config":
        c = config(folder)
        c["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128}
        (folder / "config.json").write_text(json.dumps(c))
        return "config.json"
    else:  # sharded: a missing shard, an index that is not JSON, an index without a weight map
        from transformers import AutoModelForCausalLM

        st.unlink()
        AutoModelForCausalLM.from_pretrained(folder.parent / "src").save_pretrained(
            folder, max_shard_size="60KB"
        )
        index = folder / "model.safetensors.index.json"
        if how == "shard_missing":
            shard = sorted(json.loads(index.read_text())["weight_map"].values())[-1]
            (folder / shard).unlink()
            return shard
        index.write_text('{"metadata": {}, "weight_map": ' if how == "index_not_json" else '{"metadata": {}}')
        return index.name
    return st.name


DAMAGES = {
    "cut": "incomplete (an interrupted download?) or not safetensors at all; download the folder again",
    "not_safetensors": "incomplete (an interrupted download?) or not safetensors at all; download the folder again",
    "empty": "incomplete (an interrupted download?) or not safetensors at all; download the folder again",
    "shard_missing": "shard(s) missing: ",
    "index_not_json": "not a safetensors index (not JSON: ",
    "index_no_weight_map": "not a safetensors index (no weight_map of file names: ",
    "shape": "has shape (64, 32), config.json implies (64, 64): the weights and config.json are not of one model",
    "int8": "model.layers.0.mlp.down_proj.weight is stored as I8 (quantized or not a weight); only float weights",
    "uint8_packed_4bit": "model.layers.0.mlp.down_proj.weight is stored as U8 (quantized or not a weight)",
    "float8": "model.layers.0.mlp.down_proj.weight is stored as F8_E4M3 (quantized or not a weight)",
    "quantization_config": "quantization_config (gptq): only float weights (float32, bfloat16, float16) are read",
}


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_folder_is_one_line_naming_the_file_and_what_to_do(hf, tmp_path, how):
    from model.hf import load_hf_folder

    shutil.copytree(hf / "qwen2", tmp_path / "src")
    folder = tmp_path / "damaged"
    shutil.copytree(tmp_path / "src", folder)
    name = damage(folder, how)
    with pytest.raises(UserError) as e:
        load_hf_folder(folder)
    msg = str(e.value)
    assert "\n" not in msg and str(folder / name) in msg and DAMAGES[how] in msg, msg
    assert "download the folder again" in msg or "unquantized release" in msg


def test_a_cut_download_through_the_real_scripts_is_exit_2_and_one_line(hf, tmp_path):
    folder = tmp_path / "cut"
    shutil.copytree(hf / "qwen2", folder)
    damage(folder, "cut")
    out = tmp_path / "exp"
    line = bad("scripts/export_hf.py", "--weight", str(folder), "--output_dir", str(out))
    assert line.startswith(f"error: {folder / 'model.safetensors'}: not a readable safetensors file (")
    assert line.endswith("or not safetensors at all; download the folder again")
    assert not out.exists()


def test_weights_stored_in_another_dtype_than_config_says_are_read_and_said(hf, tmp_path, caplog):
    """The README promises any stored dtype: config.json saying float32 over bf16 weights is
    converted, not refused, and the result is transformers' own."""
    from transformers import AutoModelForCausalLM

    from model.hf import load_hf_folder

    caplog.set_level(logging.INFO)
    folder = tmp_path / "l"
    shutil.copytree(hf / "llama3", folder)
    c = config(folder)
    c["dtype"] = "float32"
    (folder / "config.json").write_text(json.dumps(c))
    model = load_hf_folder(folder)
    assert f"{folder}: weights stored as bfloat16, config.json says float32: read as stored" in caplog.text
    ref = AutoModelForCausalLM.from_pretrained(hf / "llama3", dtype=torch.float32)
    ours = model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in ref.state_dict().items())
    caplog.clear()
    load_hf_folder(hf / "llama3")  # as declared: nothing to say
    assert "weights stored as" not in caplog.text

"""A transformers folder's own files and damaged folders.

The folders are the round-3 field cases' (../shared/field-cases3/make_hf_models.py): llama3 (tied,
llama3 RoPE, bf16 weights, BOS by post-processor), qwen2 (untied, biases, no BOS, ChatML template,
generation_config.json with eos [<|im_end|>, <|endoftext|>] and sampling settings,
max_window_layers 2, no head_dim in config.json) and qwen3 (head_dim 32 != 64 / 4, q/k norm).

- An export of an imported model (the folder itself, or a checkpoint descending from it) writes
  the source's config.json, generation_config.json and tokenizer files back, changing only what the
  export sets (field case 1).
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
from tests.helpers import bad, field_case3, load_script, shared_file
from trainer import weights
from trainer.checkpoint import atomic_torch_save, weights_state

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ("llama3", "qwen2", "qwen3")


@pytest.fixture(scope="module")
def hf(tmp_path_factory) -> Path:
    """OUT/{llama3,qwen2,qwen3}, written by the field cases' own builder (a few seconds)."""
    path = field_case3("make_hf_models.py")
    spec = importlib.util.spec_from_file_location("make_hf_models", path)
    assert spec is not None and spec.loader is not None
    builder: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    builder.DATA = shared_file("tinystories", "validation_first1000.jsonl")
    root = tmp_path_factory.mktemp("fc3")
    builder.build(root)
    return root


@pytest.fixture(scope="module")
def export_hf():
    return load_script("scripts/export_hf.py", "export_hf_under_test")


def config(folder: Path, name: str = "config.json") -> dict:
    return json.loads((folder / name).read_text())


def written_back_line(caplog) -> str:
    return next(r.getMessage() for r in caplog.records if " written back (" in r.getMessage())


def same_generation(src: Path, out: Path) -> None:
    """The export stops on the source's ids, and greedy decoding under each folder's own
    generation config gives the same tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    assert GenerationConfig.from_pretrained(out).to_dict() == GenerationConfig.from_pretrained(src).to_dict()
    a = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    b = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert a.generation_config.eos_token_id == b.generation_config.eos_token_id
    tok_a, tok_b = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(out)
    text = "Once upon a time, a little girl named Lily found a shiny stone."
    assert tok_a(text)["input_ids"] == tok_b(text)["input_ids"]
    if tok_a.chat_template:
        msgs = [{"role": "user", "content": "Hi"}]
        assert tok_a.apply_chat_template(msgs, tokenize=False) == tok_b.apply_chat_template(
            msgs, tokenize=False
        )
    ids = tok_a(text, return_tensors="pt").input_ids
    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    assert torch.equal(a.generate(ids, **kw), b.generate(ids, **kw))


# --------------------------------------------------------------------------- the source's files come back


@pytest.mark.parametrize("family", FAMILIES)
def test_an_imported_folder_exports_with_its_own_files(hf, export_hf, tmp_path, caplog, family):
    caplog.set_level(logging.INFO)
    src, out = hf / family, tmp_path / "exp"
    info = export_hf.export(weights.Source("hf", src), out, torch.float32)
    # llama3 ships bf16 weights: the float32 export says so in its dtype, and that is all that changes
    changed = ["dtype bfloat16 -> float32"] if family == "llama3" else []
    assert info["changed_from_source"] == changed
    got, want = config(out), config(src)
    assert {k for k in got.keys() | want.keys() if got.get(k) != want.get(k)} == (
        {"dtype"} if changed else set()
    )
    if changed:
        assert (want["dtype"], got["dtype"]) == ("bfloat16", "float32")
    assert (out / "generation_config.json").read_text() == (src / "generation_config.json").read_text()
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        assert (out / name).is_file() == (src / name).is_file()
        if (src / name).is_file():
            assert (out / name).read_text() == (src / name).read_text(), name
    line = written_back_line(caplog)
    assert line.endswith(
        ": as they were except config.json dtype bfloat16 -> float32" if changed else ": unchanged"
    )
    assert line.startswith(f"files of {src} written back (") and "generation_config.json" in line
    same_generation(src, out)


def test_a_bf16_export_of_a_bf16_folder_changes_nothing(hf, export_hf, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    src, out = hf / "llama3", tmp_path / "exp"
    export_hf.export(weights.Source("hf", src), out, torch.bfloat16)
    assert (out / "config.json").read_text() == (src / "config.json").read_text()  # byte for byte
    assert written_back_line(caplog).endswith(": unchanged")
    from safetensors import safe_open

    with (
        safe_open(str(src / "model.safetensors"), "pt") as a,
        safe_open(str(out / "model.safetensors"), "pt") as b,
    ):
        assert set(a.keys()) == set(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())  # noqa: SIM118


def test_a_descendant_checkpoint_exports_with_its_sources_files(hf, export_hf, tmp_path, caplog):
    """The files travel in the imported model's meta, kept under "parent" by every child run; a
    checkpoint written before they did gets today's rebuilt files, and says so."""
    caplog.set_level(logging.INFO)
    src = hf / "qwen2"
    got = weights.load(weights.Source("hf", src))
    assert set(got.meta["source_files"]) == {
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "tokenizer_config.json",
    }
    grandparent = {**got.meta, "path": str(src)}
    meta = {"stage": "midtrain", "step": 7, "parent": {"stage": "midtrain", "step": 3, "parent": grandparent}}
    ckpt = tmp_path / "child_64.pth"
    atomic_torch_save(weights_state(got.model, got.tokenizer, meta), ckpt)
    out = tmp_path / "exp"
    info = export_hf.export(weights.Source("checkpoint", ckpt), out, torch.float32)
    assert info["changed_from_source"] == [] and info["imported_from"] == str(src) and info["step"] == 7
    assert config(out) == config(src)
    assert config(out, "generation_config.json") == config(src, "generation_config.json")
    same_generation(src, out)

    del grandparent["source_files"]
    atomic_torch_save(weights_state(got.model, got.tokenizer, meta), ckpt)
    caplog.clear()
    export_hf.export(weights.Source("checkpoint", ckpt), tmp_path / "old", torch.float32)
    assert "before checkpoints carried the source's files" in caplog.text
    old = config(tmp_path / "old")
    assert (old["max_window_layers"], old["head_dim"]) == (28, 16)  # rebuilt by transformers' defaults
    assert config(tmp_path / "old", "generation_config.json")["eos_token_id"] == got.tokenizer.eos_token_id


def test_carried_files_are_the_describing_text_files(hf, tmp_path, monkeypatch, caplog):
    import model.hf

    caplog.set_level(logging.INFO)
    folder = tmp_path / "q"
    shutil.copytree(hf / "qwen2", folder)
    (folder / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    (folder / "special_tokens_map.json").write_text('{"eos_token": "<|endoftext|>"}')
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "added_tokens.json").write_bytes(b"\xff\xfe not utf-8")
    (folder / "README.md").write_text("# model card")
    (folder / "minigpt.json").write_text('{"stage": "pretrain"}')  # an earlier export's record of its run
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": list(range(400))}))
    monkeypatch.setattr(model.hf, "CARRIED_MAX_BYTES", 1000)
    files = model.hf.source_files(folder)
    assert files["special_tokens_map.json"] == '{"eos_token": "<|endoftext|>"}'
    assert files["config.json"] == (folder / "config.json").read_text()
    # tokenizer.json travels as the checkpoint's tokenizer; the index, the weights, the card do not
    # describe the model; a file over the size bound (1000 bytes here) and a non-UTF-8 file are left out, said
    assert set(files) == {
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "merges.txt",
        "special_tokens_map.json",
        "tokenizer_config.json",
    }
    assert f"{folder / 'trainer_state.json'}: not carried to an export (1907 bytes, over 1000)" in caplog.text
    assert f"{folder / 'added_tokens.json'}: not carried to an export (" in caplog.text


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

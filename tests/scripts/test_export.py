"""scripts/export_hf.py: the exported folder loads with plain transformers and behaves like our model."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import ONE_THREAD, run_script, shared_file
from trainer.checkpoint import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported(pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "hf"
    run_script(
        "scripts/export_hf.py",
        "--weight",
        "pretrain",
        "--save_dir",
        str(pretrained),
        "--output_dir",
        str(out),
    )
    return out


def test_folder_has_safetensors_config_tokenizer_and_no_remote_code(exported):
    names = {p.name for p in exported.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "minigpt.json",
    } <= names
    assert not any(n.endswith((".bin", ".py", ".tmp")) for n in names)
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "llama" and "auto_map" not in config
    # a model pretrained here has no source folder: config and generation config are built from it
    assert config["max_position_embeddings"] == 128  # the trained context
    generation = json.loads((exported / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (1, 2, 0)
    assert not {"imported_from", "changed_from_source"} & set(
        json.loads((exported / "minigpt.json").read_text())
    )
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".")]  # no temp dir left


def test_logits_and_greedy_generation_match_our_model(pretrained, exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ours, tok, _ = load_model(pretrained / "pretrain_64.pth")
    ours.eval()
    hf = AutoModelForCausalLM.from_pretrained(str(exported), dtype=torch.float32).eval()
    hf_tok = AutoTokenizer.from_pretrained(str(exported))
    text = json.loads(shared_file("tinystories", "validation_first1000.jsonl").read_text().splitlines()[3])[
        "text"
    ]
    ids = hf_tok(text[:400], return_tensors="pt").input_ids
    # the exported tokenizer adds BOS as training did; the rest is our tokenizer's output
    assert ids[0, 0].item() == tok.bos_token_id
    assert ids[0, 1:].tolist() == tok.encode(text[:400], add_special_tokens=False)
    with torch.no_grad():
        diff = (ours(ids) - hf(ids).logits).abs().max().item()
    assert diff <= 1e-4

    prompt = hf_tok("Once upon a time, there was a little", return_tensors="pt").input_ids
    mine = ours.generate(prompt, max_new_tokens=40, temperature=0.0, eos_token_id=tok.eos_token_id)[
        0
    ].tolist()
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=40, do_sample=False)[
        0
    ].tolist()

    def until_eos(seq):
        return seq[: seq.index(tok.eos_token_id) + 1] if tok.eos_token_id in seq else seq

    assert until_eos(mine) == until_eos(theirs) and len(until_eos(mine)) > prompt.shape[1] + 5


def test_eval_llm_gives_the_same_numbers_for_the_export(pretrained, exported, tmp_path):
    """--weight and --hf_path of the same model: equal losses and MMLU predictions (fp32)."""
    out = tmp_path / "r.json"
    val = tmp_path / "val.jsonl"
    rows = json.loads(
        "["
        + ",".join(shared_file("tinystories", "validation_first1000.jsonl").read_text().splitlines()[:4])
        + "]"
    )
    val.write_text("".join(json.dumps({"text": r["text"], "source": "stories"}) + "\n" for r in rows))
    run_script(
        "eval_llm.py",
        "--save_dir",
        str(pretrained),
        "--weight",
        "pretrain",
        "--hf_path",
        str(exported),
        "--val_path",
        str(val),
        "--mmlu_path",
        str(shared_file("mmlu", "test.jsonl")),
        "--shots",
        "0",
        "--limit",
        "16",
        "--no_code",
        "--no_samples",
        "--no_hub",  # GSM8K is not asked for: not waited for (~25 s of retries without a network)
        "--dtype",
        "float32",
        "--output",
        str(out),
        env=ONE_THREAD,
    )
    report = json.loads(out.read_text())
    ours, theirs = report["results"]["pretrain_64"], report["results"]["hf:hf"]
    assert ours["lm"]["stories"]["tokens"] == theirs["lm"]["stories"]["tokens"]
    assert ours["lm"]["stories"]["loss"] == pytest.approx(theirs["lm"]["stories"]["loss"], abs=1e-4)
    a, b = ours["mmlu"]["0-shot"], theirs["mmlu"]["0-shot"]
    assert a["pred_counts"] == b["pred_counts"] and a["acc"] == b["acc"]
    assert a["letter_mass"] == pytest.approx(b["letter_mass"], rel=1e-3)


def test_reexport_replaces_and_foreign_folders_are_refused(pretrained, exported, tmp_path):
    run_script(
        "scripts/export_hf.py",
        "--weight",
        "pretrain_64",
        "--save_dir",
        str(pretrained),
        "--output_dir",
        str(exported),
    )
    assert (exported / "model.safetensors").is_file()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    proc = run_script(
        "scripts/export_hf.py",
        "--weight",
        "pretrain",
        "--save_dir",
        str(pretrained),
        "--output_dir",
        str(other),
        check=False,
    )
    assert proc.returncode == 2 and "not empty" in proc.stderr and "Traceback" not in proc.stderr
    assert (other / "notes.txt").read_text() == "keep me"
    proc = run_script(
        "scripts/export_hf.py", "--weight", "nosuch", "--save_dir", str(pretrained), check=False
    )
    assert (
        proc.returncode == 2
        and "pretrain_64.pth" in proc.stderr
        and len(proc.stderr.strip().splitlines()) == 1
    )

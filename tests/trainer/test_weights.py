"""One resolver for --from_weight / --weight in every script (field case 6, issue 12)."""

from __future__ import annotations

import os

import pytest

from model.errors import UserError
from trainer.config import DEFAULT_SEQ_LEN
from trainer.weights import Source, find_checkpoint, imported_source, resolve, trained_context


@pytest.fixture
def runs(tmp_path):
    d = tmp_path / "abs" / "dir"
    d.mkdir(parents=True)
    for name in ("pre_64.pth", "mid_64.pth", "mid_128.pth", "pre_64_resume.pth"):
        (d / name).write_bytes(b"x")
    hf = tmp_path / "hfmodel"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    return d, hf


def test_absolute_and_relative_prefixes_stems_and_files(runs, tmp_path):
    d, _ = runs
    assert resolve(str(d / "pre"), "unused") == Source("checkpoint", d / "pre_64.pth")  # was a crash
    assert resolve(str(d / "pre_64"), "unused") == Source("checkpoint", d / "pre_64.pth")
    assert resolve(str(d / "pre_64.pth"), "unused") == Source("checkpoint", d / "pre_64.pth")
    assert resolve("pre", d) == Source("checkpoint", d / "pre_64.pth")  # a bare name: in --save_dir
    assert resolve(str(d / "mid"), "unused", hidden_size=128).path == d / "mid_128.pth"
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert resolve("abs/dir/pre", "unused").path == d / "pre_64.pth"  # relative to the cwd
    finally:
        os.chdir(cwd)
    assert find_checkpoint(d, "pre", None, suffix="_resume") == d / "pre_64_resume.pth"


def test_a_transformers_folder_and_a_hub_id(runs):
    _, hf = runs
    assert resolve(str(hf), "unused") == Source("hf", hf)
    assert resolve("HuggingFaceTB/SmolLM2-135M", "unused") == Source(
        "hub", repo_id="HuggingFaceTB/SmolLM2-135M"
    )
    assert resolve("Qwen/Qwen3-0.6B@main", "unused") == Source(
        "hub", repo_id="Qwen/Qwen3-0.6B", revision="main"
    )


def test_what_cannot_be_used_is_one_line_naming_what_was_tried(runs, tmp_path):
    d, _ = runs
    with pytest.raises(UserError) as e:
        resolve(str(d / "nope"), "unused")
    assert f"looked for {d / 'nope'}_*.pth" in str(e.value) and "mid_128.pth" in str(e.value)
    with pytest.raises(UserError, match="several checkpoints match 'mid'"):
        resolve(str(d / "mid"), "unused")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="a folder without config.json"):
        resolve(str(empty), "unused")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="not a miniGPT checkpoint"):
        resolve(str(tmp_path / "notes.txt"), "unused")
    with pytest.raises(UserError, match="checkpoint not found"):
        resolve(str(d / "gone.pth"), "unused")


def test_a_folder_without_config_does_not_hide_a_checkpoint_name(runs, tmp_path):
    """`--weight pretrain` run from a folder that happens to hold a `pretrain/` folder: the
    checkpoint in --save_dir is still found."""
    d, _ = runs
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        (tmp_path / "pre").mkdir()
        assert resolve("pre", d) == Source("checkpoint", d / "pre_64.pth")
    finally:
        os.chdir(cwd)


def test_without_the_hub_a_hub_id_is_refused_not_downloaded(runs):
    with pytest.raises(UserError, match=r"--weight org/model: no local folder or checkpoint .*--no_hub"):
        resolve("org/model", "unused", flag="--weight", hub=False)


def test_the_scoring_context_of_our_models_and_of_imported_ones():
    """Our models: the trained sequence length (capped by the positions); anything descending from
    a transformers folder: the source's own max_position_embeddings, however short its rows were."""
    imported = {"stage": "imported", "source": "transformers", "path": "/models/q"}
    child = {"stage": "midtrain", "max_seq_len": 64, "parent": {"stage": "midtrain", "parent": imported}}
    assert imported_source(child) is imported and imported_source({"stage": "pretrain"}) is None
    assert trained_context(child, 32768) == 32768
    assert trained_context({"stage": "pretrain", "max_seq_len": 256}, 4096) == 256
    assert trained_context({"stage": "pretrain", "max_seq_len": 8192}, 4096) == 4096
    assert trained_context({"stage": "pretrain"}, 4096) == DEFAULT_SEQ_LEN == 512

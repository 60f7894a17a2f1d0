"""dataset/demo/: the real sample `make demo` trains on is what scripts/dev/make_demo_sample.py cuts
from ../shared/data, well formed, licensed file by file, and never trains on what the demo scores."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest

from dataset.formats import render_alpaca, render_mmlu
from dataset.io import iter_jsonl
from dataset.mixture import load_mixture_config, prepare_mixture
from model.errors import UserError
from tests.helpers import SHARED_DATA, bad, load_script, shared_file
from trainer.evaluation.data import MBPP_TEST_IDS, mbpp_prompt
from trainer.paths import REPO_ROOT

DEMO = REPO_ROOT / "dataset" / "demo"
TRAIN_FILES = ("tinystories.jsonl", "mbpp_train.jsonl", "mmlu_aux_train.jsonl")
EVAL_FILES = ("mbpp_test.jsonl", "mmlu_test.jsonl")


@pytest.fixture(scope="module")
def sample():
    return load_script("scripts/dev/make_demo_sample.py", "make_demo_sample")


def _rows(name: str) -> list[dict]:
    return [row for _, row in iter_jsonl(DEMO / name)]


def test_committed_sample_is_what_the_script_cuts(sample):
    for rel, _ in sample.INPUTS.values():
        shared_file(rel)  # under CI a missing input fails rather than skips
    files = sample.build(SHARED_DATA)
    assert sorted(files) == sorted(p.name for p in DEMO.iterdir())
    for name, blob in files.items():
        assert (DEMO / name).read_bytes() == blob, (
            f"{name} is stale: run python scripts/dev/make_demo_sample.py"
        )


def test_a_changed_input_is_refused_by_name(sample, tmp_path):
    for rel, _ in sample.INPUTS.values():
        src = shared_file(rel)
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, tmp_path / rel)
    mbpp = tmp_path / "mbpp" / "mbpp.jsonl"
    mbpp.write_bytes(mbpp.read_bytes().replace(b"Write a function", b"Write a method", 1))
    with pytest.raises(UserError, match=r"mbpp\.jsonl: sha256 [0-9a-f]{64}, expected ccf64cea"):
        sample.build(tmp_path)
    mbpp.unlink()
    with pytest.raises(UserError, match=r"mbpp\.jsonl: not found; give --shared_dir"):
        sample.build(tmp_path)
    out = tmp_path / "out"
    line = bad("scripts/dev/make_demo_sample.py", "--shared_dir", str(tmp_path), "--out_dir", str(out))
    assert line.startswith("error: ") and "mbpp.jsonl: not found" in line and not out.exists()


def test_sample_is_small_and_well_formed():
    assert sum(p.stat().st_size for p in DEMO.iterdir()) < 4_000_000
    stories = _rows("tinystories.jsonl")
    assert len(stories) == 2000 and all(set(r) == {"text"} and r["text"].strip() for r in stories)
    assert len({r["text"] for r in stories}) == len(stories)
    assert stories[0]["text"].startswith("One day, a little girl named Lily found a needle")

    train, test = _rows("mbpp_train.jsonl"), _rows("mbpp_test.jsonl")
    assert sorted(r["task_id"] for r in test) == list(MBPP_TEST_IDS)
    assert sorted(r["task_id"] for r in train) == [*range(1, 11), *range(511, 975)]
    for row in train:
        assert set(row) == {"task_id", "instruction", "input", "output"} and row["input"] == ""
        compile(row["output"], f"mbpp task {row['task_id']}", "exec")  # every reference solution is Python
    for row in test:
        assert set(row) == {"text", "code", "task_id", "test_setup_code", "test_list", "challenge_test_list"}

    aux, mmlu = _rows("mmlu_aux_train.jsonl"), _rows("mmlu_test.jsonl")
    assert len(aux) == 1218 and {r["subject"] for r in aux} == {"science_elementary", "science_middle"}
    subjects: dict[str, int] = {}
    for row in aux + mmlu:
        assert len(row["choices"]) == 4 and row["answer"] in range(4) and row["question"].strip()
    for row in mmlu:
        subjects[row["subject"]] = subjects.get(row["subject"], 0) + 1
    assert len(subjects) == 57 and set(subjects.values()) == {10}


def test_code_rows_render_as_the_prompt_eval_llm_scores(sample):
    """A training row in the Alpaca format is eval_llm's MBPP prompt followed by the reference code
    (up to whitespace at the end of the last assert, which render_alpaca strips)."""
    for row in _rows("mbpp_test.jsonl"):  # the rule the training rows were made with, on published rows
        alpaca = sample.mbpp_alpaca(row)
        rendered = render_alpaca(alpaca["instruction"], alpaca["input"], alpaca["output"])
        tests = [*row["test_list"][:-1], row["test_list"][-1].rstrip()]
        assert rendered == mbpp_prompt(row["text"], tests) + row["code"].strip()


def _grams(text: str, n: int = 13) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {tuple(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def test_training_files_hold_no_evaluation_task():
    assert not {r["task_id"] for r in _rows("mbpp_train.jsonl")} & set(MBPP_TEST_IDS)
    questions = {r["question"].strip() for r in _rows("mmlu_test.jsonl")}
    assert not questions & {r["question"].strip() for r in _rows("mmlu_aux_train.jsonl")}


def _files(refs) -> list[Path]:
    return sorted(Path(f).resolve() for ref in refs for f in ref.data_files)


def test_the_demo_never_trains_on_what_it_scores(tmp_path):
    """The prepared demo mixture (train and val) shares no 13-word sequence with the files `make demo`
    evaluates on, although MBPP repeats some test tasks under training task_ids (602 = 217, 704 = 248,
    872 = 216); no replay validation story was pretrained on; the Makefile evaluates on exactly the
    files the mixture is decontaminated against."""
    mix = load_mixture_config(REPO_ROOT / "config" / "data" / "demo.yaml")
    pre = load_mixture_config(REPO_ROOT / "config" / "data" / "pretrain" / "demo.yaml")
    assert _files(mix.decontaminate) == sorted(DEMO / n for n in EVAL_FILES)
    assert _files(mix.sources) == sorted(DEMO / n for n in TRAIN_FILES)
    assert _files(pre.sources) == [DEMO / "tinystories.jsonl"]
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert all(f"dataset/demo/{name}" in makefile for name in EVAL_FILES)

    scored: set[tuple[str, ...]] = set()
    for row in _rows("mbpp_test.jsonl"):
        scored |= _grams(f"{row['text']}\n{row['test_list']}\n{row['code']}")
    for row in _rows("mmlu_test.jsonl"):
        scored |= _grams(render_mmlu(row["question"], row["choices"], row["answer"]))
    assert len(scored) > 50_000
    prepare_mixture(mix, tmp_path, cache_dir=str(tmp_path / "hf"))
    prepare_mixture(pre, tmp_path, cache_dir=str(tmp_path / "hf"))
    mixed = {
        split: [row for _, row in iter_jsonl(tmp_path / f"demo_{split}.jsonl")] for split in ("train", "val")
    }
    for rows in mixed.values():
        assert {r["source"] for r in rows} == {"replay", "code", "reasoning"}
        assert not [r["text"][:80] for r in rows if _grams(r["text"]) & scored]
    pretrained = {row["text"] for _, row in iter_jsonl(tmp_path / "pretrain_demo_train.jsonl")}
    replay_val = {r["text"] for r in mixed["val"] if r["source"] == "replay"}
    assert replay_val and not replay_val & pretrained
    assert f"2 epochs over {len(pretrained):,} real TinyStories" in makefile  # the demo's closing summary


def test_every_file_is_listed_with_its_sha256_and_licence():
    sources = (DEMO / "SOURCES.md").read_text()
    licence = {"tinystories.jsonl": "CDLA-Sharing-1.0", "mbpp": "CC BY 4.0", "mmlu": "MIT"}
    for path in DEMO.glob("*.jsonl"):
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        assert f"| `{path.name}` | {len(path.read_bytes().splitlines()):,} |" in sources
        assert f"`{sha}`" in sources, f"{path.name}: sha256 not in SOURCES.md"
        section = sources.split(f"## {path.name}\n", 1)[1].split("\n## ", 1)[0]
        want = next(v for k, v in licence.items() if path.name.startswith(k.split(".")[0]))
        assert f"**{want}**" in section, path.name
    assert "Copyright (c) 2020 Dan Hendrycks" in sources and "https://cdla.dev/sharing-1-0/" in sources
    assert "CC BY-NC" in sources  # says why Code Alpaca is not here


def test_nothing_from_code_alpaca_is_shipped():
    """Code Alpaca (CC BY-NC 4.0) is in ../shared/data but must not be redistributed with the project."""
    rows = [row for _, row in iter_jsonl(shared_file("code_instructions", "code_alpaca_2k.jsonl"))]
    alpaca = {row[key].strip() for row in rows for key in ("instruction", "output")}
    alpaca = {text for text in alpaca if len(text) >= 40}  # not short answers such as "25"
    shipped = {str(v).strip() for p in DEMO.glob("*.jsonl") for _, row in iter_jsonl(p) for v in row.values()}
    assert len(alpaca) > 2500 and len(shipped) > 5000
    assert not alpaca & shipped

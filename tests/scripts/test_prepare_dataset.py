"""scripts/prepare_dataset.py: the demo run, and every kind of bad input.

Bad input must end in one `error: ...` line naming the file/field, exit status 2, no
traceback and no output files left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dataset.mixture import load_mixture_config
from tests.helpers import load_script, shared_file
from trainer.cli import run
from trainer.paths import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "prepare_dataset.py"


def _prepare_main():
    return load_script("scripts/prepare_dataset.py", "prepare_dataset_script").main


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("hf_cache"))


def base_config(**top) -> dict:
    config = {
        "total_samples": 200,
        "val_ratio": 0.1,
        "seed": 1,
        "sources": [
            {
                "name": "stories",
                "data_files": str(shared_file("tinystories", "validation_first1000.jsonl")),
                "format": "text",
                "ratio": 0.5,
                "filters": {"length": {"min": 100, "max": 2000}},
            },
            {
                "name": "code",
                "data_files": str(shared_file("code_instructions", "code_alpaca_2k.jsonl")),
                "format": "alpaca",
                "ratio": 0.5,
            },
        ],
    }
    config.update(top)
    return config


def expect_error(
    tmp_path: Path, config: dict | str, cache_dir: str, *extra: str, out: Path | None = None
) -> str:
    """Run the script's main in-process; assert exit 2, one error line, no outputs; return the line."""
    path = tmp_path / "bad.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False))
    out = out or tmp_path / "out"
    argv = [
        "--config",
        str(path),
        "--output_dir",
        str(out),
        "--cache_dir",
        cache_dir,
        "--num_proc",
        "1",
        *extra,
    ]
    main = _prepare_main()
    with pytest.raises(SystemExit) as e:
        run(lambda: main(argv))
    assert e.value.code == 2
    return str(out)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    lines = [line for line in err if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in "\n".join(err), err
    return lines[0]


def _edit(config: dict, i: int, **changes) -> dict:
    config["sources"][i] = {**config["sources"][i], **changes}
    return config


def _staged(config: dict, *stages: dict) -> dict:
    """The config with its source ratios replaced by ``stages`` (default: two valid stages)."""
    for source in config["sources"]:
        source.pop("ratio")
    config["stages"] = list(stages) or [
        {"name": "first", "fraction": 0.5, "ratios": {"stories": 1.0}},
        {"name": "second", "fraction": 0.5, "ratios": {"stories": 0.5, "code": 0.5}},
    ]
    return config


def _tokens(config: dict, **top) -> dict:
    config.pop("total_samples")
    return config | {"mix_by": "tokens", "total_tokens": 20_000} | top


CONFIG_ERRORS = [
    ("ratios", lambda c: _edit(c, 1, ratio=0.4), "ratios sum to 0.9"),
    ("unknown top key", lambda c: c | {"epochs": 3}, "epochs: unknown key"),
    ("unknown source key", lambda c: _edit(c, 0, weight=1), "sources[0].weight: unknown key"),
    ("unknown format", lambda c: _edit(c, 1, format="sharegpt"), "unknown format 'sharegpt'"),
    (
        "unknown filter",
        lambda c: _edit(c, 0, filters={"perplexity": {"threshold": 1}}),
        "sources[0].filters.perplexity: unknown key",
    ),
    ("min > max", lambda c: _edit(c, 0, filters={"length": {"min": 500, "max": 100}}), "min 500 > max 100"),
    (
        "threshold range",
        lambda c: _edit(c, 0, filters={"quality": {"threshold": 2}}),
        "threshold: must be in [0.0, 1.0]",
    ),
    ("both sources", lambda c: _edit(c, 0, dataset="roneneldan/TinyStories"), "exactly one of dataset"),
    ("no files", lambda c: _edit(c, 0, data_files="nowhere/*.jsonl"), "matches no file"),
    ("mix_by value", lambda c: c | {"mix_by": "bytes"}, "mix_by: expected rows or tokens, got 'bytes'"),
    (
        "total_samples in tokens mode",
        lambda c: c | {"mix_by": "tokens"},
        "total_samples: does not apply with mix_by: tokens (use total_tokens:",
    ),
    (
        "total_tokens in rows mode",
        lambda c: c | {"total_tokens": 5000},
        "total_tokens: does not apply with mix_by: rows (use total_samples:",
    ),
    (
        "tokens mode without a total",
        lambda c: {k: v for k, v in _tokens(c).items() if k != "total_tokens"},
        "total_tokens: required key is missing",
    ),
    (
        "tokenizer in rows mode",
        lambda c: c | {"tokenizer": "tok"},
        "tokenizer: only mix_by: tokens counts tokens",
    ),
    (
        "shuffle_buffer without streaming",
        lambda c: _edit(c, 0, shuffle_buffer=100),
        "sources[0].shuffle_buffer: only applies with streaming: true",
    ),
    (
        "streaming not a bool",
        lambda c: _edit(c, 0, streaming="yes"),
        "sources[0].streaming: expected true or false",
    ),
    (
        "shuffle_buffer of 0",
        lambda c: _edit(c, 0, streaming=True, shuffle_buffer=0),
        "sources[0].shuffle_buffer: must be >= 1, got 0",
    ),
    (
        "unknown stage key",
        lambda c: _staged(c, {"name": "a", "fraction": 1, "ratios": {"stories": 1}, "lr": 1}),
        "stages[0].lr: unknown key",
    ),
    (
        "fractions",
        lambda c: _staged(
            c,
            {"name": "a", "fraction": 0.5, "ratios": {"stories": 1}},
            {"name": "b", "fraction": 0.4, "ratios": {"code": 1}},
        ),
        "stages: fractions sum to 0.9, not 1 (a=0.5, b=0.4)",
    ),
    (
        "stage names an unknown source",
        lambda c: _staged(c, {"name": "a", "fraction": 1, "ratios": {"stories": 0.5, "poetry": 0.5}}),
        "stages[0].ratios.poetry: no source named 'poetry' (sources: stories, code)",
    ),
    (
        "stage shares",
        lambda c: _staged(c, {"name": "a", "fraction": 1, "ratios": {"stories": 0.5, "code": 0.3}}),
        "stages[0].ratios: shares sum to 0.8, not 1",
    ),
    (
        "ratio beside stages",
        lambda c: _edit(_staged(c), 1, ratio=0.5),
        "sources[1].ratio: with stages:, each stage's ratios: give the shares",
    ),
    (
        "source in no stage",
        lambda c: _staged(c, {"name": "a", "fraction": 1, "ratios": {"stories": 1}}),
        "sources[1]: source 'code' has share 0 in every stage",
    ),
    (
        "stage too small for a source",
        lambda c: _staged(
            c,
            {"name": "a", "fraction": 0.999, "ratios": {"stories": 1}},
            {"name": "b", "fraction": 0.001, "ratios": {"stories": 0.5, "code": 0.5}},
        ),
        "total_samples: 200 gives source 'stories' no rows in stage 'b'",
    ),
]


@pytest.mark.parametrize(("case", "edit", "needle"), CONFIG_ERRORS, ids=[c[0] for c in CONFIG_ERRORS])
def test_bad_config(tmp_path, capsys, cache_dir, case, edit, needle):
    out = expect_error(tmp_path, edit(base_config()), cache_dir)
    line = _error_line(capsys)
    assert needle in line and "bad.yaml" in line, line
    assert not Path(out).exists()


def test_invalid_yaml(tmp_path, capsys, cache_dir):
    expect_error(tmp_path, "total_samples: 10\nsources: [\n", cache_dir)
    line = _error_line(capsys)
    assert "invalid YAML" in line and "line" in line


def test_missing_column(tmp_path, capsys, cache_dir):
    out = expect_error(tmp_path, _edit(base_config(), 0, text_field="story"), cache_dir)
    line = _error_line(capsys)
    assert "no field 'story'" in line and "fields: text" in line
    assert not Path(out).exists()


def test_missing_field_in_a_row(tmp_path, capsys, cache_dir):
    rows = [json.loads(line) for line in shared_file("code_instructions", "code_alpaca_2k.jsonl").open()][:50]
    del rows[7]["output"]
    data = tmp_path / "code.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = base_config(total_samples=80)
    config["sources"][1]["data_files"] = str(data)
    expect_error(tmp_path, config, cache_dir)
    line = _error_line(capsys)
    assert "source 'code'" in line and "code.jsonl:8:" in line and "'output' is missing" in line  # file:line


def test_malformed_json_line(tmp_path, capsys, cache_dir):
    lines = shared_file("code_instructions", "code_alpaca_2k.jsonl").read_text().splitlines()[:20]
    lines[11] = lines[11][:-5]  # cut off the closing quote and brace
    data = tmp_path / "broken.jsonl"
    data.write_text("\n".join(lines) + "\n")
    config = base_config()
    config["sources"][1]["data_files"] = str(data)
    expect_error(tmp_path, config, cache_dir)
    line = _error_line(capsys)
    assert f"{data}:12: malformed JSON" in line


def test_source_empty_after_filters(tmp_path, capsys, cache_dir):
    out = expect_error(tmp_path, _edit(base_config(), 0, filters={"length": {"min": 100_000}}), cache_dir)
    line = _error_line(capsys)
    assert "source 'stories'" in line and "empty after filters" in line and "length 1000" in line
    assert not Path(out).exists()


def test_short_source(tmp_path, capsys, cache_dir):
    config = base_config(total_samples=6000)
    out = expect_error(tmp_path, config, cache_dir)
    line = _error_line(capsys)
    assert (
        "source 'stories'" in line and "is short" in line and "3000 needed" in line and "max_repeats" in line
    )
    assert not Path(out).exists()


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> Path:
    """A 400-token BPE trained on real TinyStories and Code Alpaca rows."""
    from dataset.tokenizer import train_tokenizer

    stories = [
        json.loads(line)["text"] for line in shared_file("tinystories", "validation_first1000.jsonl").open()
    ]
    code = [
        json.loads(line)["output"] for line in shared_file("code_instructions", "code_alpaca_2k.jsonl").open()
    ]
    out = tmp_path_factory.mktemp("bpe") / "tokenizer"
    train_tokenizer(stories[:200] + code[:300], 400, out)
    return out


def test_tokens_mode_without_a_tokenizer(tmp_path, capsys, cache_dir):
    out = expect_error(tmp_path, _tokens(base_config()), cache_dir)
    line = _error_line(capsys)
    assert "bad.yaml: mix_by: tokens needs the tokenizer the model will train with" in line
    assert "tokenizer:" in line and "--tokenizer_path" in line
    assert not Path(out).exists()


def test_tokenizer_path_that_is_no_folder(tmp_path, capsys, cache_dir):
    missing = tmp_path / "no_tokenizer_here"
    expect_error(tmp_path, _tokens(base_config()), cache_dir, "--tokenizer_path", str(missing))
    line = _error_line(capsys)
    assert f"--tokenizer_path: {missing}: no such tokenizer folder" in line and "train_tokenizer.py" in line


def test_source_short_of_its_token_plan(tmp_path, capsys, cache_dir, bpe):
    config = _tokens(base_config(), total_tokens=3_000_000, tokenizer=str(bpe))
    out = expect_error(tmp_path, config, cache_dir)
    line = _error_line(capsys)
    assert (
        "source 'stories'" in line and "is short" in line and "tokens in" in line and "1500000 needed" in line
    )
    assert "max_repeats" in line and "total_tokens" in line
    assert not Path(out).exists()


def test_tokens_mode_prints_the_plan(tmp_path, capsys, cache_dir, bpe):
    """--tokenizer_path counts the tokens; the printed plan is the manifest's."""
    path = tmp_path / "tok.yaml"
    path.write_text(yaml.safe_dump(_staged(_tokens(base_config()))))
    argv = ["--config", str(path), "--output_dir", str(tmp_path / "out"), "--hf_cache_dir", cache_dir]
    _prepare_main()([*argv, "--num_proc", "1", "--tokenizer_path", str(bpe)])
    printed = capsys.readouterr().out
    manifest = json.loads((tmp_path / "out" / "tok_manifest.json").read_text())
    assert manifest["tokenizer"]["ref"] == str(bpe)
    assert f"plan: 20,000 tokens, {manifest['plan']['written']:,} written" in printed
    for st in manifest["plan"]["stages"]:
        for c in st["sources"]:
            cells = [
                st["name"],
                c["name"],
                f"{c['planned']:,}",
                f"{c['written']:,}",
                f"{100 * c['share']:.1f}%",
            ]
            assert any(line.split()[:5] == cells for line in printed.splitlines()), cells
    assert [s["name"] for s in manifest["stages"]] == ["first", "second"]


def test_unwritable_output_dir(tmp_path, capsys, cache_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    expect_error(tmp_path, base_config(), cache_dir, out=blocker / "out")
    line = _error_line(capsys)
    assert "output dir" in line and "is a file" in line
    assert blocker.read_text() == "not a folder"


def test_existing_outputs_need_overwrite(tmp_path, capsys, cache_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "bad_train.jsonl").write_text("keep me\n")
    expect_error(tmp_path, base_config(), cache_dir, out=out)
    assert "--overwrite" in _error_line(capsys)
    assert (out / "bad_train.jsonl").read_text() == "keep me\n"


def _run_script(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow
def test_unreachable_hub_dataset_says_how_to_go_local(tmp_path, cache_dir):
    config = base_config()
    config["sources"][0] = {"name": "stories", "dataset": "roneneldan/TinyStories", "ratio": 0.5}
    path = tmp_path / "hub.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = _run_script(
        "--config", str(path), "--output_dir", str(tmp_path / "out"), "--cache_dir", cache_dir,
        env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "'roneneldan/TinyStories'" in line and "data_files" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_demo_config_end_to_end(tmp_path, cache_dir):
    """What `make demo` runs, on the real sample in dataset/demo/."""
    proc = _run_script(
        "--config", str(REPO_ROOT / "config" / "data" / "demo.yaml"), "--output_dir", str(tmp_path),
        "--cache_dir", cache_dir, "--num_proc", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "mixture demo" in proc.stdout and "reasoning" in proc.stdout
    manifest = json.loads((tmp_path / "demo_manifest.json").read_text())
    config = load_mixture_config(REPO_ROOT / "config" / "data" / "demo.yaml")
    assert manifest["outputs"]["train"]["rows"] + manifest["outputs"]["val"]["rows"] == config.total_samples
    code = next(s for s in manifest["sources"] if s["name"] == "code")
    assert code["max_uses_per_row"] == 2 and code["repeat_factor"] > 1
    assert sum(s["decontaminated"] for s in manifest["sources"]) > 0  # the demo decontaminates


def test_a_stream_that_ends_before_its_plan(tmp_path, capsys, cache_dir):
    config = _edit(base_config(total_samples=2400), 0, streaming=True, shuffle_buffer=50)
    out = expect_error(tmp_path, config, cache_dir)
    line = _error_line(capsys)
    assert "source 'stories'" in line and "the stream ended before its plan: 1000 rows read, " in line
    assert (
        "rows kept after filters, dedup and decontamination, 1200 needed" in line
        and "set max_repeats: 2" in line
    )
    assert not Path(out).exists()


def test_rows_mode_with_a_tokenizer_writes_the_token_stores(tmp_path, capsys, cache_dir, bpe):
    """--tokenizer_path in rows mode: the plan is rows, the rows are tokenized once into the stores."""
    path = tmp_path / "rows.yaml"
    path.write_text(yaml.safe_dump(base_config()))
    argv = ["--config", str(path), "--output_dir", str(tmp_path / "out"), "--hf_cache_dir", cache_dir]
    _prepare_main()([*argv, "--num_proc", "1", "--tokenizer_path", str(bpe)])
    printed = capsys.readouterr().out
    manifest = json.loads((tmp_path / "out" / "rows_manifest.json").read_text())
    stored = 0
    for split in ("train", "val"):
        store = manifest["outputs"][split]["store"]
        meta = json.loads((tmp_path / "out" / store["folder"] / "meta.json").read_text())
        assert meta["inputs"] == [
            {"path": f"rows_{split}.jsonl", "sha256": manifest["outputs"][split]["sha256"]}
        ]
        assert (
            meta["num_tokens"] == store["tokens"] and meta["num_docs"] == manifest["outputs"][split]["rows"]
        )
        assert f"token store {store['folder']} ({store['tokens']:,} tokens)" in printed
        stored += meta["num_tokens"]
    assert manifest["tokenizer_sha256"] == meta["tokenizer_sha256"] and "plan" not in manifest
    # each source's exact tokens are its targets: a document's tokens (BOS text EOS) but its first
    assert sum(s["tokens"] for s in manifest["sources"]) == stored - 200

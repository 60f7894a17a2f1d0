"""Streamed sources (``streaming: true``): datasets' streaming mode through the same code a Hub id
takes (``load_dataset(..., streaming=True)``), here on the real local files of ../shared/data.

A streamed source takes from its dataset at most the rows the selection read plus the shuffle
buffer (rows mode exactly; tokens mode plus the rest of a batch cut short by a larger row than any
before, reported as ``rows_unread``), and the realized token shares equal the plan as exactly as
without streaming: ``planned <= written < planned + one document`` per source, by an independent
recount of the files.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

from dataset.io import iter_jsonl
from dataset.mixture import load_mixture_config, prepare_mixture, prepared_paths
from dataset.tokenizer import load_tokenizer, train_tokenizer
from model.errors import UserError
from tests.dataset.test_mixture_tokens import SHARES, _seed_texts, recount, sources

BUFFERS = {"replay": 300, "reasoning": 200}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("hf_cache"))


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bpe") / "tokenizer"
    train_tokenizer(_seed_texts(300), 512, out)
    return out


def streamed_config(folder: Path, tokenizer: Path | None, streamed=BUFFERS, **top) -> Path:
    """The three real sources, 30/35/35; those in ``streamed`` read as streams with that buffer."""
    config: dict = {"mix_by": "tokens", "total_tokens": 150_000, "val_ratio": 0.1, "seed": 7}
    if tokenizer is not None:
        config["tokenizer"] = str(tokenizer)
    extra = {n: {"ratio": r} for n, r in SHARES.items()}
    for name, buffer in streamed.items():
        extra[name] |= {"streaming": True, "shuffle_buffer": buffer}
    config["sources"] = sources(**extra)
    config.update(top)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mix.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def rows(paths) -> list[dict]:
    return [r for _, r in iter_jsonl(paths.train)] + [r for _, r in iter_jsonl(paths.val)]


def check_stop(s: dict, buffer: int) -> None:
    """What a streamed source took: the rows read, the buffer, and the rows of a batch cut short."""
    assert s["streaming"] and s["shuffle_buffer"] == buffer
    assert s["rows_read"] == s["kept"] + sum(s["dropped"].values()) + s["decontaminated"] + s["duplicates"]
    assert s["rows_streamed"] <= s["rows_read"] + s["rows_unread"] + buffer, s
    assert s["rows_total"] is None  # local files say nothing of their size; not read to the end


@pytest.fixture(scope="module")
def tokens_run(tmp_path_factory, bpe, cache_dir):
    root = tmp_path_factory.mktemp("stream")
    config = load_mixture_config(streamed_config(root / "cfg", bpe))
    out = {}
    for num_proc in (1, 2):
        manifest = prepare_mixture(config, root / f"out{num_proc}", num_proc=num_proc, cache_dir=cache_dir)
        out[num_proc] = (manifest, prepared_paths(config, root / f"out{num_proc}"))
    return out


def test_streamed_sources_meet_their_token_shares_and_stop_at_the_plan(tokens_run, bpe):
    manifest, paths = tokens_run[1]
    written = rows(paths)
    per_source: dict[str, int] = Counter()
    longest: dict[str, int] = Counter()
    for r, n in zip(written, recount(written, load_tokenizer(bpe)), strict=True):
        per_source[r["source"]] += n
        longest[r["source"]] = max(longest[r["source"]], n)
    plan = {p["name"]: p for p in manifest["plan"]["sources"]}
    total = sum(per_source.values())
    for name, share in SHARES.items():
        assert plan[name]["planned"] <= per_source[name] < plan[name]["planned"] + longest[name], name
        assert per_source[name] == plan[name]["written"]
        assert abs(per_source[name] / total - share) < 0.005, name
    by_name = {s["name"]: s for s in manifest["sources"]}
    for name, buffer in BUFFERS.items():
        s = by_name[name]
        check_stop(s, buffer)
        assert s["rows_unread"] <= 0.02 * s["rows_read"], s  # a few rows of a last batch at most
        assert plan[name]["epochs"] is None and not plan[name]["available_exact"]
    assert by_name["replay"]["rows_streamed"] < 0.3 * 2727  # far from the files' 2,727 rows
    assert not by_name["code"]["streaming"] and "rows_streamed" not in by_name["code"]


def test_streamed_outputs_do_not_depend_on_num_proc(tokens_run):
    for a, b in zip(tokens_run[1][1], tokens_run[2][1], strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    for a, b in ((tokens_run[1][1].train_store, tokens_run[2][1].train_store),):
        for f in ("tokens.bin", "doc_start.bin", "doc_len.bin", "doc_source.bin", "meta.json"):
            assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_streamed_rows_mode_reads_exactly_its_plan_and_what_was_dropped(tmp_path, cache_dir):
    """Rows mode: every row handed out is needed (rows_unread 0), each source gets exactly its rows."""
    path = streamed_config(tmp_path / "cfg", None)
    raw = yaml.safe_load(path.read_text())
    raw.pop("mix_by"), raw.pop("total_tokens")
    raw["total_samples"] = 800
    path.write_text(yaml.safe_dump(raw))
    config = load_mixture_config(path)
    manifest = prepare_mixture(config, tmp_path / "out", num_proc=2, cache_dir=cache_dir)
    counts = Counter(r["source"] for r in rows(prepared_paths(config, tmp_path / "out")))
    assert counts == {"replay": 240, "code": 280, "reasoning": 280}
    for s in manifest["sources"]:
        if s["name"] in BUFFERS:
            check_stop(s, BUFFERS[s["name"]])
            assert s["rows_unread"] == 0 and s["kept"] == counts[s["name"]]


def test_a_stream_short_of_its_plan_says_so_or_repeats(tmp_path, bpe, cache_dir):
    """Reasoning alone, streamed, at ~1.3x its ~160k unique tokens: with max_repeats 1 one line
    naming the rows read and the tokens kept and needed; with 2 it is read to its end (its size
    and epochs exact) and repeated from the spill, no row used more than twice."""
    path = streamed_config(tmp_path / "cfg", bpe, streamed={"reasoning": 100}, total_tokens=210_000)
    raw = yaml.safe_load(path.read_text())
    raw["sources"] = [s | {"ratio": 1.0} for s in raw["sources"] if s["name"] == "reasoning"]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError) as e:
        prepare_mixture(load_mixture_config(path), tmp_path / "out", cache_dir=cache_dir)
    msg = str(e.value)
    assert (
        "\n" not in msg
        and "source 'reasoning'" in msg
        and "the stream ended before its plan: 1218 rows read" in msg
    )
    assert "210000 needed" in msg and "set max_repeats: 2" in msg and not (tmp_path / "out").exists()
    raw["sources"][0]["max_repeats"] = 2
    path.write_text(yaml.safe_dump(raw))
    manifest = prepare_mixture(load_mixture_config(path), tmp_path / "out", cache_dir=cache_dir)
    s, p = manifest["sources"][0], manifest["plan"]["sources"][0]
    assert s["rows_read"] == s["rows_total"] == s["rows_streamed"] == 1218 and p["available_exact"]
    assert p["max_uses_per_row"] == 2 and p["epochs"] == pytest.approx(
        p["written"] / p["unique_available"], abs=1e-4
    )
    assert 1 < p["epochs"] <= 2 and 210_000 <= p["written"]

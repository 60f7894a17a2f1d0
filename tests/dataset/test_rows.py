import json
from collections import Counter

import numpy as np
import pytest
from transformers import AutoTokenizer

from dataset.rows import IGNORE_INDEX, bfd_pack, build_rows
from dataset.sampler import EMPTY, StepPlan
from dataset.store import FORMAT_VERSION, build_store
from dataset.tokenizer import count_tokens, encode_texts
from model.errors import UserError
from tests.helpers import shared_file


@pytest.fixture
def tok(tokenizer_dir):
    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def mixed_file(tmp_path, n=300):
    """Real rows from two sources, tagged like a prepared mixture."""
    rows = []
    with open(shared_file("tinystories", "validation_first1000.jsonl")) as f:
        rows += [{"text": json.loads(line)["text"], "source": "replay"} for line in list(f)[:n]]
    with open(shared_file("code_instructions", "code_alpaca_2k.jsonl")) as f:
        rows += [
            {"text": json.loads(line)["output"], "source": "code"}
            for line in list(f)[:n]
            if json.loads(line)["output"]
        ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def test_concat_packing_uses_every_token_exactly_once(tmp_path, tok):
    """--packing concat --attention causal: the GPT-2 layout as before, token for token."""
    path, rows = mixed_file(tmp_path)
    corpus = build_rows(build_store([path], tok, tmp_path / "cache"), 64, "concat", "causal")
    expected = []
    for r in rows:
        expected += [
            tok.bos_token_id,
            *tok(r["text"], add_special_tokens=False)["input_ids"],
            tok.eos_token_id,
        ]
    assert corpus.num_tokens == len(expected)
    targets, inputs = [], []
    sources = []
    for i in range(corpus.num_rows):
        x, y, s, _, _ = corpus.row(i)
        keep = y != IGNORE_INDEX
        sources += s[keep].tolist()
        targets += y[keep].tolist()
        inputs += x[keep].tolist()
        assert (s[keep] >= 0).all() and (s[~keep] == -1).all()
    # each token after the first is predicted exactly once, in order; no padding but the last row's tail
    assert targets == expected[1:]
    assert inputs == expected[:-1]
    pad_rows = [i for i in range(corpus.num_rows) if (corpus.row(i)[1] == IGNORE_INDEX).any()]
    assert pad_rows in ([], [corpus.num_rows - 1])
    # per-token source ids follow the documents (a BOS is its document's, the first BOS no target)
    expected_src = [
        r["source"]
        for r in rows
        for _ in range(len(tok(r["text"], add_special_tokens=False)["input_ids"]) + 2)
    ]
    names = corpus.source_names
    assert [names[k] for k in sources] == expected_src[1:]
    assert dict(zip(names, corpus.source_targets().tolist(), strict=True)) == dict(Counter(expected_src[1:]))


def test_store_is_keyed_by_content_and_tokenizer_only(tmp_path, tok, monkeypatch):
    """Any row length and either packing reuse one store; other content or an older format does not."""
    path, _ = mixed_file(tmp_path, n=50)
    a = build_store([path], tok, tmp_path / "cache")
    assert build_store([path], tok, tmp_path / "cache").folder == a.folder  # hit
    for length in (32, 64):
        for packing in ("bfd", "concat"):
            assert build_rows(a, length, packing, "document").num_rows > 0
    monkeypatch.setattr("dataset.store.FORMAT_VERSION", FORMAT_VERSION - 1)
    assert build_store([path], tok, tmp_path / "cache").folder != a.folder  # an old format is rebuilt
    monkeypatch.undo()
    path.write_text(path.read_text() + json.dumps({"text": "one more story", "source": "replay"}) + "\n")
    assert build_store([path], tok, tmp_path / "cache").folder != a.folder
    assert not list((tmp_path / "cache").glob(".*")), "no temporary folders left behind"


def test_sampler_is_deterministic_and_splits_ranks_like_one_big_batch():
    one = list(
        StepPlan(1000, batch_size=8, accumulation_steps=2, world_size=1, rank=0, seed=3).sampler(0, 200)
    )
    again = list(
        StepPlan(1000, batch_size=8, accumulation_steps=2, world_size=1, rank=0, seed=3).sampler(0, 200)
    )
    assert one == again
    r0 = list(StepPlan(1000, 4, 2, world_size=2, rank=0, seed=3).sampler(0, 200))
    r1 = list(StepPlan(1000, 4, 2, world_size=2, rank=1, seed=3).sampler(0, 200))
    real = lambda b: [i for i in b if i != EMPTY]  # noqa: E731
    assert all(real(a + b) == real(c) for a, b, c in zip(r0, r1, one, strict=True))
    # an epoch visits each row exactly once (1000 = 62 full steps of 16 + one short step of 8);
    # a new epoch reshuffles
    spe = -(-1000 // 16)
    epoch0 = [i for b in one[: spe * 2] for i in real(b)]
    assert sorted(epoch0) == list(range(1000))
    assert one[: spe * 2] != one[spe * 2 : spe * 4]
    # resuming at step k yields exactly the tail
    tail = list(StepPlan(1000, 8, 2, 1, 0, seed=3).sampler(77, 200))
    assert tail == one[77 * 2 :]


def test_no_row_is_dropped_and_a_short_step_keeps_every_rank_busy():
    """Field case 8: 317 rows, batch 64: 5 steps, the last with 61 rows; every rank runs the same
    number of micro-batches (an empty slot is one EMPTY row with no targets)."""
    s = StepPlan(317, batch_size=64, accumulation_steps=1, world_size=1, rank=0, seed=0)
    assert s.steps_per_epoch == 5
    batches = list(s.sampler(0, 5))
    assert sorted(i for b in batches for i in b if i != EMPTY) == list(range(317))
    assert [len(b) for b in batches] == [64] * 5  # the short step filled up with EMPTY rows
    assert [len([i for i in b if i != EMPTY]) for b in batches] == [64, 64, 64, 64, 61]
    # 4 ranks x batch 16 x 2 micro-steps = 128 rows a step: the short third step has 61 rows
    ranks = [list(StepPlan(317, 16, 2, 4, r, seed=0).sampler(0, 3)) for r in range(4)]
    assert all(len(r) == 6 for r in ranks)
    rows = [i for r in ranks for b in r for i in b if i != EMPTY]
    assert sorted(rows) == list(range(317))
    assert ranks[3][5] == [EMPTY] * 16  # 61 rows fill the first micro-step and part of the second


def test_segments_are_trained_in_order_and_never_mixed_in_a_step():
    segs = [range(0, 50), range(50, 130), range(130, 135)]
    s = StepPlan(segs, batch_size=8, accumulation_steps=2, world_size=1, rank=0, seed=1)
    assert s.segment_steps == [4, 5, 1] and s.steps_per_epoch == 10
    steps = [s.step_rows(k) for k in range(14)]
    for k, rows in enumerate(steps):
        seg = s.locate(k)[1]
        assert all(i in segs[seg] for i in rows)
    assert sorted(i for rows in steps[:10] for i in rows) == list(range(135))
    assert s.locate(12) == (1, 0, 2)  # epoch 2 starts again at the first segment


def test_bad_jsonl_names_file_and_line(tmp_path, tok):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: malformed JSON"):
        build_store([bad], tok, tmp_path / "cache")
    bad.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')  # Latin-1, not UTF-8
    with pytest.raises(UserError, match=r"bad.jsonl:2: not UTF-8"):
        build_store([bad], tok, tmp_path / "cache")
    bad.write_text('{"txt": "no text field"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:1: .*\"text\""):
        build_store([bad], tok, tmp_path / "cache")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UserError, match="empty"):
        build_store([empty], tok, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == [], "a failed build leaves nothing in the cache"


def test_token_file_is_compact(tmp_path, tok):
    path, _ = mixed_file(tmp_path, n=100)
    store = build_store([path], tok, tmp_path / "cache")
    assert store.tokens.dtype == np.uint16
    assert (store.folder / "tokens.bin").stat().st_size == 2 * store.num_tokens
    # per document: 8 + 4 + 1 bytes (start, length, source), nothing per token but the token
    assert (
        sum((store.folder / f"{n}.bin").stat().st_size for n in ("doc_start", "doc_len", "doc_source"))
        == 13 * store.num_docs
    )
    assert Counter(store.doc_source.tolist()).keys() <= {0, 1}


def test_one_separator_when_bos_is_eos(tmp_path, smollm_tokenizer):
    """Field case 3.2: SmolLM2's <|endoftext|> is both BOS and EOS and it was trained with one
    between documents: the stream is <e> d1 <e> d2 <e> ..., never two in a row, and the
    tokens-mode planner counts each document as n + 1 tokens, as the stream holds it."""
    tok, e = smollm_tokenizer, smollm_tokenizer.eos_token_id
    assert tok.bos_token_id == e
    path, rows = mixed_file(tmp_path, n=40)
    corpus = build_store([path], tok, tmp_path / "cache")
    ids = encode_texts(tok, [r["text"] for r in rows])
    expected = [e]
    for doc in ids:
        expected += [*doc, e]
    t = np.asarray(corpus.tokens, dtype=np.int64)
    assert t.tolist() == expected
    assert int(((t[:-1] == e) & (t[1:] == e)).sum()) == 0
    assert corpus.num_tokens == 1 + sum(count_tokens(tok, [r["text"] for r in rows]))
    # stages: each stage's segment starts with its own separator (its first token is never a target)
    staged = tmp_path / "staged.jsonl"
    staged.write_text(
        "".join(json.dumps({**r, "stage": "a" if i < 30 else "b"}) + "\n" for i, r in enumerate(rows))
    )
    c2 = build_store([staged], tok, tmp_path / "cache")
    t2 = np.asarray(c2.tokens, dtype=np.int64)
    (a0, a1), (b0, b1) = [tuple(g["tokens"]) for g in c2.meta["segments"]]
    assert t2[a0] == e and t2[b0] == e and a1 == b0 and t2[b0 - 1] == e and t2[b0 + 1] != e
    assert len(t2) == len(t) + 1


def _pieces(tokens: np.ndarray, L: int) -> list[tuple[int, ...]]:
    """A document's pieces as the bfd layout must hold them: t[kL : kL + L + 1], k = 0, 1, ..."""
    return [tuple(tokens[k : k + L + 1].tolist()) for k in range(0, len(tokens) - 1, L)]


def _row_pieces(rows, i) -> list[tuple[int, ...]]:
    """The documents (pieces) of row i, read back from (x, y, pos, doc) alone."""
    x, y, s, pos, doc = rows.row(i)
    out = []
    for d in np.unique(doc):
        at = np.flatnonzero(doc == d)
        assert (pos[at] == np.arange(len(at))).all()  # positions restart at every document
        if (y[at] == IGNORE_INDEX).all():
            assert (x[at] == rows.pad_id).all()  # padding: no targets
            continue
        assert (y[at] != IGNORE_INDEX).all() and len(set(s[at].tolist())) == 1
        out.append(tuple(x[at].tolist()) + (int(y[at][-1]),))
    return out


@pytest.mark.parametrize("L", [16, 128])
def test_bfd_trains_every_target_once_in_whole_documents_and_keeps_stages_apart(tmp_path, tok, L):
    """Best-fit-decreasing rows: each document (or piece of one longer than a row) lies whole in
    one row with positions from 0; every token of every document but its first is a target exactly
    once; long documents are split into pieces of L targets overlapping by one token; the rows of
    a stage hold only that stage's documents; the same inputs give the same rows."""
    path, rows = mixed_file(tmp_path, n=60)
    staged = tmp_path / "staged.jsonl"
    staged.write_text(
        "".join(json.dumps({**r, "stage": "a" if i < 70 else "b"}) + "\n" for i, r in enumerate(rows))
    )
    store = build_store([staged], tok, tmp_path / "cache")
    layout = build_rows(store, L, "bfd", "document")
    assert layout.segment_names == ["a", "b"]
    for (name, d0, d1, _, _), seg in zip(store.segments, layout.segment_rows(), strict=True):
        expected = Counter(
            p
            for a, n in zip(store.doc_start[d0:d1], store.doc_len[d0:d1], strict=True)
            for p in _pieces(np.asarray(store.tokens[a : a + n]), L)
        )
        got = Counter(p for i in seg for p in _row_pieces(layout, i))
        assert got == expected, name
    split = sum(int(n - 1 > L) for n in store.doc_len)
    stats = layout.stats()
    assert stats.split == split > 0 and stats.documents == store.num_docs
    assert stats.targets == int((np.asarray(store.doc_len) - 1).sum()) == layout.num_targets
    assert stats.line() == (
        f"packing: bfd, {store.num_docs:,} documents ({split:,} split) into {layout.num_rows:,} rows of {L}, "
        f"fill {100 * stats.targets / (layout.num_rows * L):.1f}%"
    )
    again = build_rows(store, L, "bfd", "document")
    assert all(
        np.array_equal(a, b)
        for i in range(layout.num_rows)
        for a, b in zip(layout.row(i), again.row(i), strict=True)
    )


def test_bfd_pack_is_best_fit_decreasing():
    """The histogram packer against a plain best-fit-decreasing loop: the same number of rows, every
    item once, no row over capacity (random lengths, many capacities)."""
    rng = np.random.default_rng(0)
    for _ in range(40):
        cap = int(rng.integers(4, 80))
        lengths = rng.integers(1, cap + 1, size=int(rng.integers(1, 400)))
        rows, offsets, n = bfd_pack(lengths, cap)
        used = np.zeros((n, cap), dtype=int)
        for r, o, m in zip(rows, offsets, lengths, strict=True):
            used[r, o : o + m] += 1
        assert used.max() == 1 and used.sum() == lengths.sum()
        free: list[int] = []
        for m in sorted(lengths.tolist(), reverse=True):
            fits = [j for j, f in enumerate(free) if f >= m]
            if fits:
                free[min(fits, key=lambda j: free[j])] -= m
            else:
                free.append(cap - m)
        assert n == len(free)


def test_concat_with_document_attention_ignores_the_next_documents_first_token(tmp_path, tok):
    """--packing concat --attention document: the GPT-2 windows, but each position predicts only its
    own document's next token (the first token of the next is no target) and positions restart."""
    path, rows = mixed_file(tmp_path, n=30)
    store = build_store([path], tok, tmp_path / "cache")
    layout = build_rows(store, 64, "concat", "document")
    causal = build_rows(store, 64, "concat", "causal")
    assert layout.num_rows == causal.num_rows
    bos = tok.bos_token_id
    for i in range(layout.num_rows):
        x, y, s, pos, doc = layout.row(i)
        xc, yc, *_ = causal.row(i)
        assert np.array_equal(x, xc)
        cross = yc == bos  # the prediction of the next document's BOS from the previous EOS
        assert (y[cross] == IGNORE_INDEX).all() and np.array_equal(y[~cross], yc[~cross])
        starts = np.flatnonzero(x == bos)
        assert (pos[starts] == 0).all()
    assert (
        layout.num_targets
        == int((np.asarray(store.doc_len) - 1).sum())
        == causal.num_targets - (store.num_docs - 1)
    )


def test_bfd_fills_the_demo_mixtures_rows(tmp_path, tok):
    """On the demo mixture (stories, MBPP tasks, MMLU questions) at the demo's 256 tokens a row,
    best-fit packing of whole documents loses less than 5% of the positions to padding."""
    from dataset.mixture import load_mixture_config, prepare_mixture, prepared_paths
    from trainer.paths import repo_path

    config = load_mixture_config(repo_path("config", "data", "demo.yaml"))
    prepare_mixture(config, tmp_path / "demo")
    store = build_store([prepared_paths(config, tmp_path / "demo").train], tok, tmp_path / "cache")
    stats = build_rows(store, 256, "bfd", "document").stats()
    assert stats.fill >= 0.95, stats.line()

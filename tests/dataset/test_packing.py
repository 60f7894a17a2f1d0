import json
from collections import Counter

import numpy as np
import pytest
from transformers import AutoTokenizer

from dataset.packed import IGNORE_INDEX, build_packed
from dataset.sampler import EMPTY, StepPlan
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


def test_packing_uses_every_token_exactly_once(tmp_path, tok):
    path, rows = mixed_file(tmp_path)
    corpus = build_packed([path], tok, seq_len=64, cache_dir=tmp_path / "cache")
    expected = []
    for r in rows:
        expected += [
            tok.bos_token_id,
            *tok(r["text"], add_special_tokens=False)["input_ids"],
            tok.eos_token_id,
        ]
    assert corpus.num_tokens == len(expected)
    targets, inputs = [], []
    for i in range(corpus.num_rows):
        x, y, s = corpus.row(i)
        keep = y != IGNORE_INDEX
        targets += y[keep].tolist()
        inputs += x[keep].tolist()
        assert (s[keep] >= 0).all() and (s[~keep] == -1).all()
    # each token after the first is predicted exactly once, in order; no padding but the last row's tail
    assert targets == expected[1:]
    assert inputs == expected[:-1]
    pad_rows = [i for i in range(corpus.num_rows) if (corpus.row(i)[1] == IGNORE_INDEX).any()]
    assert pad_rows in ([], [corpus.num_rows - 1])
    # per-token source ids follow the documents
    counts = corpus.source_token_counts()
    assert set(counts) == {"replay", "code"} and sum(counts.values()) == len(expected)


def test_cache_is_keyed_by_content_tokenizer_and_length(tmp_path, tok):
    path, _ = mixed_file(tmp_path, n=50)
    a = build_packed([path], tok, 64, tmp_path / "cache")
    assert build_packed([path], tok, 64, tmp_path / "cache").folder == a.folder  # hit
    assert build_packed([path], tok, 32, tmp_path / "cache").folder != a.folder
    path.write_text(path.read_text() + json.dumps({"text": "one more story", "source": "replay"}) + "\n")
    assert build_packed([path], tok, 64, tmp_path / "cache").folder != a.folder
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
    assert sorted(i for b in batches for i in b) == list(range(317))
    assert [len(b) for b in batches] == [64, 64, 64, 64, 61]
    # 4 ranks x batch 16 x 2 micro-steps = 128 rows a step: the short third step has 61 rows
    ranks = [list(StepPlan(317, 16, 2, 4, r, seed=0).sampler(0, 3)) for r in range(4)]
    assert all(len(r) == 6 for r in ranks)
    rows = [i for r in ranks for b in r for i in b if i != EMPTY]
    assert sorted(rows) == list(range(317))
    assert ranks[3][5] == [EMPTY]  # 61 rows fill the first micro-step and part of the second


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
        build_packed([bad], tok, 64, tmp_path / "cache")
    bad.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')  # Latin-1, not UTF-8
    with pytest.raises(UserError, match=r"bad.jsonl:2: not UTF-8"):
        build_packed([bad], tok, 64, tmp_path / "cache")
    bad.write_text('{"txt": "no text field"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:1: .*\"text\""):
        build_packed([bad], tok, 64, tmp_path / "cache")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UserError, match="empty"):
        build_packed([empty], tok, 64, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == [], "a failed build leaves nothing in the cache"


def test_token_file_is_compact(tmp_path, tok):
    path, _ = mixed_file(tmp_path, n=100)
    corpus = build_packed([path], tok, 64, tmp_path / "cache")
    assert corpus.tokens.dtype == np.uint16
    assert (corpus.folder / "tokens.bin").stat().st_size == 2 * corpus.num_tokens
    assert Counter(corpus.sources.tolist()).keys() <= {0, 1}


def test_one_separator_when_bos_is_eos(tmp_path, smollm_tokenizer):
    """Field case 3.2: SmolLM2's <|endoftext|> is both BOS and EOS and it was trained with one
    between documents: the stream is <e> d1 <e> d2 <e> ..., never two in a row, and the
    tokens-mode planner counts each document as n + 1 tokens, as the stream holds it."""
    tok, e = smollm_tokenizer, smollm_tokenizer.eos_token_id
    assert tok.bos_token_id == e
    path, rows = mixed_file(tmp_path, n=40)
    corpus = build_packed([path], tok, 64, tmp_path / "cache")
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
    c2 = build_packed([staged], tok, 64, tmp_path / "cache")
    t2 = np.asarray(c2.tokens, dtype=np.int64)
    (a0, a1), (b0, b1) = [(g["start"], g["end"]) for g in c2.meta["segments"]]
    assert t2[a0] == e and t2[b0] == e and a1 == b0 and t2[b0 - 1] == e and t2[b0 + 1] != e
    assert len(t2) == len(t) + 1

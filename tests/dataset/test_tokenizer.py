import json

import numpy as np
from transformers import AutoTokenizer

from dataset.tokenizer import tokenizer_from_dict, tokenizer_sha256, tokenizer_to_dict
from tests.helpers import field_case, shared_file


def real_texts():
    for name in ("validation_first1000.jsonl",):
        with open(shared_file("tinystories", name)) as f:
            yield from (json.loads(line)["text"] for line in list(f)[:200])
    with open(shared_file("code_instructions", "code_alpaca_2k.jsonl")) as f:
        yield from (json.loads(line)["output"] for line in list(f)[:200])


def test_autotokenizer_loads_and_round_trips_real_text(tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert len(tok) == 1024
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    n = 0
    for text in real_texts():  # stories with curly quotes, and code with tabs and braces
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
        n += 1
    assert n == 400


def test_checkpoint_copy_is_the_same_tokenizer(tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    copy = tokenizer_from_dict(tokenizer_to_dict(tok))
    assert tokenizer_sha256(copy) == tokenizer_sha256(tok)
    text = "Once upon a time, Lily said “hi”.\n\tdef f(x): return x"
    assert copy(text)["input_ids"] == tok(text)["input_ids"]


def test_special_token_strings_in_text_stay_text(field_tokenizer, tmp_path):
    """Field case 5: "<|bos|>", "<|eos|>", "<|pad|>" inside a document are characters, not specials."""
    from dataset.io import iter_docs
    from dataset.rows import IGNORE_INDEX, build_rows
    from dataset.store import build_store
    from dataset.tokenizer import encode_texts

    tok = field_tokenizer
    path = field_case("special_in_text.jsonl")
    texts = [t for t, _ in iter_docs(path)]
    specials = {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}
    for text, ids in zip(texts, encode_texts(tok, texts), strict=True):
        assert not specials & set(ids), text
        assert tok.decode(ids) == text  # byte-level: the text round-trips exactly
    store = build_store([path], tok, tmp_path)
    stream = np.asarray(store.tokens).tolist()
    # the pipeline's own boundaries only: BOS doc EOS per document, and nothing else special
    expected = []
    for ids in encode_texts(tok, texts):
        expected += [tok.bos_token_id, *ids, tok.eos_token_id]
    assert stream == expected
    assert stream[:2] != [tok.bos_token_id, tok.bos_token_id]
    for packing in ("bfd", "concat"):
        rows = build_rows(store, 32, packing, "document")
        for i in range(rows.num_rows):
            _, y, *_ = rows.row(i)
            assert tok.pad_token_id not in y[y != IGNORE_INDEX].tolist()  # the pad id is never a target

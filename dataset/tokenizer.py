"""Byte-level BPE tokenizer: training, loading, and its identity (a hash that travels in checkpoints)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dataset.io import atomic_dir, iter_docs, iter_jsonl, text_field
from model.errors import UserError

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
SPECIAL_TOKENS = [PAD, BOS, EOS]  # ids 0, 1, 2: the ModelConfig defaults


def iter_jsonl_texts(path: str | Path, field: str = "text") -> Iterator[str]:
    """Yield ``row[field]`` from a JSON data file, one row at a time, read as every tool reads it.

    With ``field`` "text" these are exactly the texts the trainers pack (:func:`dataset.io.iter_docs`,
    which also checks each row's "source"), so a file the trainers refuse is refused here with
    the same ``file:line`` message. Raises UserError as :func:`dataset.io.iter_jsonl` does, or
    when a row's ``field`` is not a string.
    """
    if field == "text":
        yield from (text for text, _ in iter_docs(path))
        return
    for lineno, row in iter_jsonl(path):
        yield text_field(row, field, path, lineno)


def train_tokenizer(texts: Iterable[str], vocab_size: int, output_dir: str | Path, max_length: int = 4096):
    """Train a byte-level BPE on ``texts`` and save it so AutoTokenizer.from_pretrained loads it.

    Byte-level means every string round-trips exactly and there is no unknown token. The
    folder is written to a temporary sibling first and renamed, so a failed run leaves no
    half-written tokenizer behind.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise UserError(f"--vocab_size {vocab_size} is too small: byte-level BPE needs at least 259")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if tok.get_vocab_size() == len(SPECIAL_TOKENS) + 256:
        raise UserError("the tokenizer's training data is empty: no merges were learned")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
    )
    with atomic_dir(output_dir) as tmp:
        fast.save_pretrained(tmp)
    return fast


def load_tokenizer(path: str | Path):
    """Load a fast tokenizer folder: one written by train_tokenizer, or the tokenizer files of a
    transformers model folder (no remote code). Special tokens follow :func:`check_special_tokens`."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise UserError(
            f"{path}: no tokenizer.json there (a fast tokenizer is needed); train one with "
            f"`python scripts/train_tokenizer.py --data_path FILE.jsonl --output_dir {path}`"
        )
    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad file from the user's side
        raise UserError(
            f"{path}: unreadable tokenizer ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None
    if not getattr(tok, "is_fast", False):
        raise UserError(f"{path}: not a fast tokenizer (tokenizers library); save one with tokenizer.json")
    return check_special_tokens(tok, str(path))


def check_special_tokens(tok, where: str):
    """The document-boundary rule every tokenizer follows here (packing, loss, evaluation):

    - every document ends with EOS, so an EOS token is required (Qwen's and SmolLM2's is
      ``<|endoftext|>``; ours ``<|eos|>``);
    - a document starts with BOS only when the tokenizer has one (ours, SmolLM2, Llama 3 do;
      Qwen has none, so its documents are ``doc EOS``): :func:`doc_start`;
    - a tokenizer without a pad token pads with EOS's id (:func:`pad_id`): padded positions are
      never targets (their target is -100), so the pad id never enters the loss. The tokenizer
      itself is left as it came, so an export writes it unchanged.
    Returns ``tok``; UserError without EOS.
    """
    if tok.eos_token_id is None:
        raise UserError(
            f"{where}: tokenizer has no eos token (it ends every document); retrain it with "
            "scripts/train_tokenizer.py or set eos_token in its tokenizer_config.json"
        )
    return tok


def doc_start(tok) -> list[int]:
    """What every packed document (and every sequence eval_llm scores for loss) starts with:
    ``[BOS]`` when the tokenizer has a BOS token, else nothing (:func:`check_special_tokens`)."""
    return [tok.bos_token_id] if tok.bos_token_id is not None else []


def shares_separator(tok: Any) -> bool:
    """True when the tokenizer's BOS is its EOS (SmolLM2's ``<|endoftext|>``, GPT-2's): then one
    token separates two documents, the end of one and the start of the next, as such models were
    trained (two would teach "EOS after EOS")."""
    return tok.bos_token_id is not None and tok.bos_token_id == tok.eos_token_id


def doc_targets(tok: Any) -> int:
    """How many targets a document of n text tokens gives in training beyond n - 1 + 1, i.e.
    ``n + doc_targets(tok)`` in all: every token of a document but its first is a target
    (:mod:`dataset.rows`), so ``BOS text EOS`` gives n + 1 (the text and EOS), ``text EOS`` (no
    BOS, e.g. Qwen) gives n (the text's first token is never predicted). UserError without EOS."""
    if getattr(tok, "eos_token_id", None) is None:
        raise UserError("the tokenizer has no eos token: the trainer ends every document with one")
    return 1 if tok.bos_token_id is not None else 0


def count_tokens(tok: Any, texts: list[str]) -> list[int]:
    """Tokens each text is trained on, its targets: ``len(encode_texts(tok, [text])[0]) +
    doc_targets(tok)`` (what the realized token shares of a run count), computed with the batched
    fast encoder."""
    extra = doc_targets(tok)
    return [len(ids) + extra for ids in encode_texts(tok, texts)]


def token_dtype(tok: Any) -> np.dtype:
    """The dtype token ids are stored in for ``tok``: uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16 if len(tok) <= np.iinfo(np.uint16).max + 1 else np.uint32)


def pad_id(tok) -> int:
    """The id rows are padded with: the pad token's, else EOS's (never a target)."""
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def is_own(tok) -> bool:
    """A tokenizer trained by scripts/train_tokenizer.py (its BOS is ``<|bos|>``)."""
    return tok.bos_token == BOS


def default_prefix(tok) -> list[int]:
    """The ids ``tok(text)`` puts before the text's own tokens (its default special tokens): what
    transformers users and lm-evaluation-harness (>= 0.4.9.2) prepend to a prompt."""
    probe = "The answer"
    plain = encode_texts(tok, [probe])[0]
    ids = list(tok(probe)["input_ids"])
    for s in range(len(ids) - len(plain) + 1):
        if ids[s : s + len(plain)] == plain:
            return ids[:s]
    return []


def exported_prefix(tok) -> list[int]:
    """What the tokenizer scripts/export_hf.py writes for ``tok`` puts before a text: BOS for our
    own tokenizer (:func:`add_bos_by_default`), the tokenizer's own default for any other."""
    return doc_start(tok) if is_own(tok) else default_prefix(tok)


def add_bos_by_default(tok) -> None:
    """Make ``tok(text)`` prepend BOS, as Llama's tokenizer does (our models are trained on
    ``BOS doc EOS``). Done by scripts/export_hf.py for our own tokenizer only: an imported model's
    tokenizer is exported as it came."""
    from tokenizers import processors

    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.bos_token_id)]
    )
    if hasattr(type(tok), "add_bos_token"):  # transformers >= 5 records it in tokenizer_config.json
        tok.add_bos_token = True


def encode_texts(tok, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, as text: no special tokens are added, and a special token's string
    inside a text (``"<|eos|>"`` in a document about markup) encodes as the ordinary characters it
    is, never as that special token. Document boundaries and padding come from the pipeline alone.

    Uses the Rust batch encoder without offsets (``tokenizers.Tokenizer.encode_batch_fast``, the
    same ids, 10-20% faster); raises nothing.
    """
    backend = tok.backend_tokenizer
    before = backend.encode_special_tokens
    backend.encode_special_tokens = True
    try:
        return [e.ids for e in backend.encode_batch_fast(list(texts), add_special_tokens=False)]
    finally:
        backend.encode_special_tokens = before


def tokenizer_to_dict(tok) -> dict:
    """Everything needed to rebuild the tokenizer, small enough to store inside a checkpoint: the
    tokenizer.json text and the other files ``save_pretrained`` writes (tokenizer_config.json,
    special tokens, chat template), so an export writes the tokenizer the model came with."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        files = {
            f.name: f.read_text(encoding="utf-8")
            for f in sorted(Path(tmp).iterdir())
            if f.is_file() and f.name != "tokenizer.json"
        }
    return {
        "tokenizer_json": tok.backend_tokenizer.to_str(),
        "files": files,
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "pad_token": tok.pad_token,
        "model_max_length": int(min(tok.model_max_length, 1 << 30)),
        "sha256": tokenizer_sha256(tok),
    }


def tokenizer_from_dict(d: dict):
    """The tokenizer a checkpoint stores (:func:`tokenizer_to_dict`); older checkpoints without
    ``files`` rebuild a PreTrainedTokenizerFast from tokenizer.json and the special tokens."""
    if d.get("files"):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            for name, text in {**d["files"], "tokenizer.json": d["tokenizer_json"]}.items():
                (Path(tmp) / name).write_text(text, encoding="utf-8")
            tok = load_tokenizer(tmp)
        if d.get("pad_token") is not None:
            tok.pad_token = d["pad_token"]
        return tok
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(d["tokenizer_json"]),
        bos_token=d["bos_token"],
        eos_token=d["eos_token"],
        pad_token=d["pad_token"],
        model_max_length=d["model_max_length"],
        clean_up_tokenization_spaces=False,
    )
    return check_special_tokens(tok, "checkpoint tokenizer")


def tokenizer_sha256(tok) -> str:
    """Identity of a tokenizer: sha256 of its canonical serialisation (vocab, merges, specials)."""
    return hashlib.sha256(tok.backend_tokenizer.to_str().encode("utf-8")).hexdigest()

"""Train the byte-level BPE tokenizer on one or more JSONL files (rows with a "text" field).

    python scripts/train_tokenizer.py --data_path dataset/demo/tinystories.jsonl --vocab_size 6400

The result loads with ``transformers.AutoTokenizer.from_pretrained(output_dir)``.
"""

import argparse
import itertools
import logging

from dataset.tokenizer import iter_jsonl_texts, train_tokenizer
from model.errors import UserError
from trainer.cli import run, setup_logging
from trainer.paths import repo_path

log = logging.getLogger("train_tokenizer")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data_path",
        action="append",
        required=True,
        help="JSON lines file (.jsonl, .json, either gzipped); repeat the flag for several",
    )
    p.add_argument("--vocab_size", type=int, default=6400)
    p.add_argument("--output_dir", default=str(repo_path("out", "tokenizer")), help="default: out/tokenizer")
    p.add_argument("--text_field", default="text")
    p.add_argument("--max_docs", type=int, default=None, help="train on at most this many documents")
    args = p.parse_args()
    setup_logging()
    if args.max_docs is not None and args.max_docs <= 0:
        raise UserError("--max_docs must be positive")
    # Every line of every file is read and checked before training, --max_docs or not, so a file
    # the trainers refuse is refused here too (with the same file:line), before the long pass.
    available = sum(sum(1 for _ in iter_jsonl_texts(path, args.text_field)) for path in args.data_path)
    used = available if args.max_docs is None else min(available, args.max_docs)
    log.info(f"{available:,} documents in {len(args.data_path)} file(s); training on {used:,}")
    if args.max_docs is not None and available < args.max_docs:
        log.warning(
            f"--max_docs {args.max_docs:,}: the data holds only {available:,} documents, all of them used"
        )
    texts = itertools.chain.from_iterable(iter_jsonl_texts(p, args.text_field) for p in args.data_path)
    tok = train_tokenizer(itertools.islice(texts, used), args.vocab_size, args.output_dir)
    log.info(f"Tokenizer ({len(tok)} tokens) saved to {args.output_dir}")


if __name__ == "__main__":
    run(main)

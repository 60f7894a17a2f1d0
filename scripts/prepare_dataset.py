"""Prepare a data mixture from a YAML config: train/val JSONL plus a manifest.

    python scripts/prepare_dataset.py --config config/data/demo.yaml
    python scripts/prepare_dataset.py --config config/data/midtrain/phase1/local.yaml \\
        --output_dir /tmp/mix --num_proc 2 --overwrite
    python scripts/prepare_dataset.py --config config/data/midtrain/phase1/local_tokens.yaml \\
        --tokenizer_path out/tokenizer          # mix_by: tokens, counted with the model's tokenizer

Writes DIR/{name}_train.jsonl, DIR/{name}_val.jsonl and DIR/{name}_manifest.json
(DIR defaults to the repo's dataset/ folder) and, with a tokenizer (`mix_by: tokens`, or
--tokenizer_path in rows mode), the token stores DIR/{name}_train.store/ and {name}_val.store/
that train_midtrain.py --use_prepared trains from without tokenizing again. Prints a summary
table, plus the plan (per stage and source: tokens or rows planned and written, share, epochs,
rows) for a config with `mix_by: tokens` or `stages:`. --num_proc workers (default: every core)
render, filter, decontaminate and tokenize; the rows they keep wait on disk in a spill folder
beside the outputs, so memory holds a few numbers per row. Bad input (config, data, tokenizer,
output folder) ends with one `error: ...` line and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import time

from dataset.mixture import format_summary, load_mixture_config, prepare_mixture, prepared_paths
from dataset.store import default_num_proc
from trainer.cli import run, setup_logging
from trainer.paths import repo_path

log = logging.getLogger("prepare_dataset")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="mixture YAML (see config/README.md)")
    p.add_argument("--output_dir", default=None, help="where to write (default: the repo's dataset/ folder)")
    p.add_argument(
        "--num_proc",
        type=int,
        default=default_num_proc(),
        help="worker processes that render, filter, decontaminate and tokenize rows (default: every core "
        "this process may use)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs of this mixture")
    p.add_argument(
        "--hf_cache_dir",
        "--cache_dir",
        dest="hf_cache_dir",
        default=None,
        help="Hugging Face datasets cache folder (default: the Hugging Face cache); --cache_dir is its "
        "former name (in the trainers --cache_dir is the token cache)",
    )
    p.add_argument(
        "--tokenizer_path",
        default=None,
        help="the tokenizer the model will train with (a folder, or a Hugging Face id; wins over the "
        "config's tokenizer:): counts a mix_by: tokens plan and, in either mode, tokenizes the rows once "
        "into the token stores beside the JSONL",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging()
    config = load_mixture_config(args.config)
    output_dir = args.output_dir or repo_path("dataset")
    start = time.perf_counter()
    manifest = prepare_mixture(
        config,
        output_dir,
        num_proc=args.num_proc,
        overwrite=args.overwrite,
        cache_dir=args.hf_cache_dir,
        tokenizer=args.tokenizer_path,
    )
    print(format_summary(manifest))
    manifest_path = prepared_paths(config, output_dir).manifest
    print(f"manifest: {manifest_path}  ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    run(main)

"""Prepare a data mixture: what a config asks for is exactly what lands on disk.

``prepare_mixture`` runs, per source in config order:

1. load (:mod:`dataset.sources`: local JSON through :mod:`dataset.io`, the reader every tool
   uses; Hub ids, parquet and text files through ``datasets.load_dataset``; a source with
   ``streaming: true`` through datasets' streaming mode, :mod:`dataset.stream`);
2. walk the rows in a seeded random order (a streamed source: from a shuffle buffer), rendering
   each (:mod:`dataset.formats`), filtering (:mod:`dataset.filters`), dropping rows that overlap
   the evaluation sets (:mod:`dataset.decontam`) and exact duplicates of rows kept so far, in
   this source or an earlier one, and tokenizing the rows kept (with a tokenizer), until the
   source's plan is met or the source runs out (then rows repeat, up to ``max_repeats`` uses
   each). Workers write each kept row's text and token ids to a spill file on disk
   (:mod:`dataset.spill`); the main process keeps a fixed-size record per row (its spill
   reference, text hash and size; the dedup hashes, :mod:`dataset.dedup`), nothing per token;
3. split train/validation by a hash of the text and interleave sources so every prefix
   of each file (of each stage) follows the mixture (:mod:`dataset.blend`);
4. write ``{name}_train.jsonl``, ``{name}_val.jsonl``, with a tokenizer their token stores
   ``{name}_train.store/`` and ``{name}_val.store/`` (the documents tokenized once, as the
   trainer would tokenize the JSONL, :mod:`dataset.outputs`), and ``{name}_manifest.json``,
   renamed into place together, the manifest last.

Only the rows needed are read, rendered and filtered, so time follows the plan, not the size
of the inputs, and memory holds a few numbers per row. Results do not depend on ``num_proc``:
workers process batches and the main process consumes them in order.

The plan, and the contract with the trainer
-------------------------------------------
``mix_by: rows`` (the default): ``total_samples`` rows, a source's ``ratio`` is its share of
rows. A tokenizer given (``prepare_dataset.py --tokenizer_path``) tokenizes the rows into the
token stores and gives each source's exact ``tokens`` in the manifest; the plan stays in rows.

``mix_by: tokens``: ``total_tokens`` tokens, a source's ``ratio`` is its share of tokens.
Tokens are counted with the tokenizer the model trains with (``tokenizer:`` in the config,
or the ``tokenizer`` argument / ``prepare_dataset.py --tokenizer_path``, which wins), as the
trainer trains on them, as targets: ``len(encode_texts(tok, [text])[0]) + doc_targets(tok)``
(every token of a document but its first is a target: the text and EOS after a BOS, the text
but its first token and EOS without one; :func:`dataset.tokenizer.doc_targets`), so the plan's
shares are shares of what is trained. The ids counted are the ids stored: tokenized once.

``stages:`` (either mode): ordered stages, each a ``fraction`` of the total with its own
shares per source. Planned amounts are integers: stage totals ``allocate(total, fractions)``,
then each stage's ``allocate(stage total, shares)`` (largest remainder). The plan covers
train and validation together:

- rows: exactly the planned rows per stage and source;
- tokens: a source's documents are taken in its seeded order until its tokens reach its plan
  (summed over stages); the document that crosses the plan is kept whole (never cut), so
  ``planned <= written < planned + that document``. Within the source a document belongs to the
  stage in which it starts (:func:`dataset.blend.assign_stages`): each stage's tokens are its
  plan to within one document.

A document goes to validation iff :func:`dataset.blend.is_val` of its text hash. The train and
val files hold all rows of stage k before any of stage k+1, sources interleaved within a stage
by the deficit rule (of rows, or of tokens in tokens mode); with stages each row is
``{"text", "source", "stage"}``, else ``{"text", "source"}``.

Manifest (``manifest_version`` MANIFEST_VERSION; :func:`find_prepared` refuses another):
per source its data, ``streaming`` (a streamed source also ``shuffle_buffer``,
``rows_streamed``: rows taken from the dataset, its buffer's included, and ``rows_unread``),
the rows read, dropped, kept and selected; ``outputs`` = per split ``{file, rows, bytes, sha256}``
plus, with a tokenizer, ``store`` = ``{folder, tokens, documents, tokenizer_sha256}``; with a
tokenizer ``tokenizer`` (``ref``, ``sha256``, ``targets_per_document``, ``bos``) and
``tokenizer_sha256``. With ``mix_by: tokens`` or ``stages``: ``mix_by``, ``total_tokens``;
``plan`` = ``{unit, total, written, rule, sources: [...], stages: [...]}`` where each source entry
has ``name, share, planned, written, written_share, rows, unique_rows, unique_available,
available_exact, epochs, max_repeats, max_uses_per_row`` and each stage entry ``name, fraction,
planned, written, rows, train_rows, val_rows, train_tokens, val_tokens, sources: [{name, share,
planned, written, written_share, rows, train_rows, val_rows, train_tokens, val_tokens, epochs}]``
(amounts in ``unit``; token fields null in rows mode); and, with stages, ``stages`` =
``[{name, fraction, train_rows, val_rows, train_tokens, val_tokens}]`` in order. ``epochs`` =
units used / unique units available after filters, dedup and decontamination; exact when the
source was read to its end (``available_exact``), else extrapolated from the rows read (null
for a streamed source of unknown size not read to its end). Above 4 epochs a warning (returns
from repeated data fall after ~4 epochs: Muennighoff et al. 2023, "Scaling Data-Constrained
Language Models"). :func:`find_prepared` checks the manifest version, the config sha256 and,
when given, the tokenizer sha256; :func:`mixture_stores` gives the trainer the stores, checked
against its tokenizer and the JSONL files' sha256.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dataset.dedup import HashSet
from dataset.manifest import MANIFEST_VERSION, build_manifest, format_summary
from dataset.mixture_config import (
    MixtureConfig,
    SourceConfig,
    load_mixture_config,
    resolve_tokenizer_ref,
    stage_plan,
)
from dataset.once import build_once, from_rank0
from dataset.outputs import PreparedPaths, check_output_dir, layout, prepared_paths, write_outputs
from dataset.pool import Runner
from dataset.selection import Picked, Spills, build_evalset, select_source
from dataset.sources import first_line
from dataset.spill import close_writers
from dataset.store import TokenStore, build_store, default_num_proc, open_prepared_store
from dataset.tokenizer import doc_targets, load_tokenizer, tokenizer_sha256
from model.errors import UserError

__all__ = [
    "MixtureConfig",
    "PreparedPaths",
    "SourceConfig",
    "find_prepared",
    "format_summary",
    "load_mixture_config",
    "mixture_stores",
    "prepare_mixture",
    "prepared_data",
    "prepared_paths",
]

log = logging.getLogger(__name__)


def _command(config: MixtureConfig, output_dir: str | os.PathLike) -> str:
    return f"python scripts/prepare_dataset.py --config {config.path} --output_dir {output_dir}"


def find_prepared(
    config: MixtureConfig, output_dir: str | os.PathLike, tokenizer_sha256: str | None = None
) -> PreparedPaths:
    """The prepared files of ``config`` in ``output_dir``, checked: all three exist, the manifest
    is of this version's layout (MANIFEST_VERSION: an older one is refused here, the one place
    that reads manifests for the trainers), was written from this version of the config (its
    sha256) and, in tokens mode with ``tokenizer_sha256`` given (the trainer's tokenizer,
    :func:`dataset.tokenizer.tokenizer_sha256`), its tokens were counted with that tokenizer (None:
    that check is skipped). Otherwise a one-line UserError naming both values and the command
    which (re)makes the files."""
    paths = prepared_paths(config, output_dir)
    command = _command(config, output_dir)
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"{missing[0]} not found; prepare the mixture first: {command}")
    manifest = json.loads(paths.manifest.read_text())
    version = manifest.get("manifest_version")
    if version != MANIFEST_VERSION:
        raise UserError(
            f"{paths.manifest} is of manifest version {version}, written by an older prepare_dataset (this "
            f"version reads {MANIFEST_VERSION}); re-run: {command} --overwrite"
        )
    sha = manifest.get("config_sha256")
    if sha != config.sha256:
        raise UserError(
            f"{paths.manifest} was prepared from a different version of {config.path} "
            f"(config sha256 {str(sha)[:12]} vs now {config.sha256[:12]}); re-run: {command} --overwrite"
        )
    if tokenizer_sha256 is not None and config.mix_by == "tokens":
        counted = manifest.get("tokenizer_sha256")
        if counted != tokenizer_sha256:
            raise UserError(
                f"{paths.manifest} counted tokens with tokenizer sha256 {str(counted)[:12]}, not with this "
                f"model's tokenizer (sha256 {tokenizer_sha256[:12]}); re-run: {command} "
                "--tokenizer_path <the model's tokenizer folder> --overwrite"
            )
    return paths


def prepared_data(
    config: MixtureConfig,
    prepared_dir: str | os.PathLike | None,
    cache_dir: str | os.PathLike,
    tokenizer: Any = None,
) -> PreparedPaths:
    """The prepared files of a mixture: those in ``prepared_dir`` (checked against the config and,
    in tokens mode, against ``tokenizer``'s sha256), or, with ``prepared_dir`` None, a preparation
    cached under ``cache_dir`` by the config's hash (plus the tokenizer's), made on first use with
    every core, by one process per copy of the cache under torchrun (:mod:`dataset.once`).
    ``tokenizer``: the model's tokenizer object (or None: the config's ``tokenizer:``); it counts a
    tokens-mode mixture's tokens and, in either mode, tokenizes the rows once into the token
    stores written beside the files."""
    tokens = config.mix_by == "tokens" and tokenizer is not None
    if prepared_dir is not None:
        try:
            return find_prepared(config, prepared_dir, tokenizer_sha256(tokenizer) if tokens else None)
        except UserError as e:
            raise UserError(f"--use_prepared: {e}") from None
    key = config.sha256[:12] + (f"-tok{tokenizer_sha256(tokenizer)[:12]}" if tokenizer is not None else "")
    out = Path(cache_dir) / "mixtures" / f"{config.name}-{key}"
    paths = prepared_paths(config, out)

    def prepare() -> None:
        log.info(
            f"Preparing {config.path} into {out} (pass --use_prepared to read files from scripts/prepare_dataset.py)"
        )
        prepare_mixture(config, out, num_proc=default_num_proc(), overwrite=True, tokenizer=tokenizer)

    build_once(out.parent, paths.manifest.is_file, prepare)
    return paths


def mixture_stores(
    config: MixtureConfig,
    prepared_dir: str | os.PathLike | None,
    cache_dir: str | os.PathLike,
    tokenizer: Any,
    val_paths: list[str] | None = None,
    num_proc: int | None = None,
) -> tuple[TokenStore, TokenStore]:
    """The train and validation token stores a mid-training run trains on: the stores prepared
    beside the mixture's files (:func:`prepared_data`; checked against ``tokenizer`` and the files'
    sha256, :func:`dataset.store.open_prepared_store`, never tokenized again), else, for files
    prepared without a tokenizer, the trainer's cache (:func:`dataset.store.build_store`).
    ``val_paths``: validation files to use instead of the mixture's val split. Each store logs
    ``token store: <folder> (from prepare_dataset | tokenized now | cached, N tokens)``."""
    paths = prepared_data(config, prepared_dir, cache_dir, tokenizer)
    command = _command(config, paths.manifest.parent)

    def store(jsonl: Path, folder: Path) -> TokenStore:
        # rank 0 decides, so that every process goes the same way (and through the same collectives)
        if from_rank0(lambda: (folder / "meta.json").is_file()):
            if not (folder / "meta.json").is_file():
                raise UserError(
                    f"{folder} not found on this node, but rank 0 has it; give every node the same prepared files"
                )
            try:
                return open_prepared_store(folder, jsonl, tokenizer, command)
            except UserError as e:
                raise UserError(f"--use_prepared: {e}" if prepared_dir is not None else str(e)) from None
        return build_store([jsonl], tokenizer, cache_dir, num_proc)

    train = store(paths.train, paths.train_store)
    val = (
        build_store(val_paths, tokenizer, cache_dir, num_proc)
        if val_paths
        else store(paths.val, paths.val_store)
    )
    return train, val


def _tokenizer_ref(config: MixtureConfig, tokenizer: Any) -> tuple[Any, str, str] | None:
    """Which tokenizer counts a tokens-mode mixture's tokens and tokenizes the rows into the token
    stores: ``(tokenizer object or None, reference, origin)``, or None in rows mode without one.
    Cheap; :func:`_load_tokenizer` loads it.

    ``tokenizer`` wins over the config's ``tokenizer:``: a tokenizer object, or a folder path
    (relative to the working directory) or Hugging Face id (loaded with ``transformers.AutoTokenizer``,
    never with remote code). UserError at once when tokens mode has none or names a missing folder;
    :func:`_load_tokenizer` raises one when it does not load or is not a fast tokenizer with EOS.
    """
    if tokenizer is None:
        if config.mix_by != "tokens":
            return None
        if config.tokenizer is None:
            raise UserError(
                f"{config.path}: mix_by: tokens needs the tokenizer the model will train with: set "
                "tokenizer: (a folder or a Hugging Face id) in the config or pass --tokenizer_path"
            )
        tok, ref, origin = None, config.tokenizer, f"{config.path}: tokenizer"
    elif isinstance(tokenizer, (str, os.PathLike)):
        tok, ref, origin = None, resolve_tokenizer_ref(str(tokenizer), Path.cwd()), "--tokenizer_path"
    else:
        tok, origin = tokenizer, "tokenizer"
        ref = str(getattr(tokenizer, "name_or_path", "") or "(a tokenizer object)")
    if tok is None and os.path.isabs(ref) and not os.path.isdir(ref):
        raise UserError(
            f"{origin}: {ref}: no such tokenizer folder; train one with "
            f"`python scripts/train_tokenizer.py --output_dir {ref}` or fix the path"
        )
    return tok, ref, origin


def _load_tokenizer(tok: Any, ref: str, origin: str) -> tuple[Any, str]:
    if tok is None and os.path.isabs(ref):
        tok = load_tokenizer(ref)
    elif tok is None:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(ref)
        except Exception as e:  # noqa: BLE001 - any failure to fetch or parse is the user's to fix
            raise UserError(
                f"{origin}: {ref!r} is no folder here and does not load as a Hugging Face id "
                f"({first_line(e)}); download the tokenizer and point at its folder"
            ) from None
    if not hasattr(tok, "backend_tokenizer"):
        raise UserError(f"{origin}: {ref} is not a fast (Rust) tokenizer; token counting needs one")
    try:
        doc_targets(tok)
    except UserError as e:
        raise UserError(f"{origin}: {ref}: {e}") from None
    return tok, ref


# ---------------------------------------------------------------------------- entry point


def prepare_mixture(
    config: MixtureConfig | str | os.PathLike,
    output_dir: str | os.PathLike,
    num_proc: int = 1,
    overwrite: bool = False,
    cache_dir: str | None = None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Build the mixture a config describes; write train/val JSONL, their token stores (with a
    tokenizer) and a manifest; return the manifest.

    ``cache_dir`` is passed to ``datasets.load_dataset`` (default: the Hugging Face cache).
    ``tokenizer``: a tokenizer object, folder or Hugging Face id that wins over the config's
    ``tokenizer:`` (:func:`_tokenizer_ref`); it counts a tokens-mode plan and, in either mode,
    tokenizes the kept rows once into the token stores written beside the JSONL files
    (:mod:`dataset.outputs`). The plan, the rows' layout and the manifest are described in the
    module docstring. Memory holds a few numbers per row: the rows themselves wait in a spill
    folder beside the outputs (:mod:`dataset.spill`), removed at the end. UserError on bad input,
    a source short of its plan, or a stage left without rows; nothing is written then.
    """
    if not isinstance(config, MixtureConfig):
        config = load_mixture_config(config)
    out = Path(output_dir)
    paths = prepared_paths(config, out)
    check_output_dir(out, paths, overwrite)
    if num_proc < 1:
        raise UserError(f"num_proc must be >= 1, got {num_proc}")

    found = _tokenizer_ref(config, tokenizer)
    names = [s.name for s in config.sources]
    plan = stage_plan(config.total, config.stages or None, [s.ratio for s in config.sources], names)
    # Loading a tokenizer imports transformers (seconds): do it while the evaluation sets are
    # read, in a thread started after the pool has forked its workers.
    with ThreadPoolExecutor(max_workers=1) as loader, Runner(num_proc) as runner:
        loading = loader.submit(_load_tokenizer, *found) if found is not None else None
        evalset, eval_records = build_evalset(config, runner, cache_dir)
    tok, tok_ref = loading.result() if loading is not None else (None, None)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    spill = tempfile.mkdtemp(prefix=f".{config.name}.spill-", dir=out)
    try:
        started = time.perf_counter()
        seen = HashSet() if config.dedup else None
        spills = Spills()
        picks: list[Picked] = []
        with Runner(num_proc, evalset, tok, spill_dir=spill) as runner:
            for i, source in enumerate(config.sources):
                planned = [row[i] for row in plan]
                picks.append(select_source(source, planned, config, runner, seen, spills, cache_dir))
        del seen
        close_writers(spill)  # this process's spill file (num_proc 1), before it is read
        split_layout = layout(picks, len(plan), config.val_ratio)
        manifest = build_manifest(config, plan, picks, split_layout, tok, tok_ref, evalset, eval_records)
        stage_names = [st.name for st in config.stages] if config.stages else None
        selected = time.perf_counter()
        write_outputs(paths, manifest, picks, split_layout, names, stage_names, spills.paths, tok)
        log.info(
            f"prepare: {sum(p.rows for p in picks):,} rows selected in {selected - started:.1f} s, written"
            f"{' with their token stores' if tok is not None else ''} in {time.perf_counter() - selected:.1f} s"
        )
    finally:
        close_writers(spill)
        shutil.rmtree(spill, ignore_errors=True)
        if created and out.exists() and not any(out.iterdir()):
            out.rmdir()
    return manifest

"""Prepare a data mixture: what a config asks for is exactly what lands on disk.

``prepare_mixture`` runs, per source in config order:

1. load (:mod:`dataset.sources`: local JSON through :mod:`dataset.io`, the reader every tool
   uses; Hub ids, parquet and text files through ``datasets.load_dataset``);
2. walk the rows in a seeded random order, rendering each (:mod:`dataset.formats`),
   filtering (:mod:`dataset.filters`), dropping rows that overlap the evaluation sets
   (:mod:`dataset.decontam`) and exact duplicates of rows kept so far, in this source
   or an earlier one, until the source's plan is met or the source runs out (then rows
   repeat, up to ``max_repeats`` uses each);
3. split train/validation by a hash of the text and interleave sources so every prefix
   of each file (of each stage) follows the mixture (:mod:`dataset.blend`);
4. write ``{name}_train.jsonl``, ``{name}_val.jsonl`` and ``{name}_manifest.json``, each
   atomically, the manifest last.

Only the rows needed are rendered and filtered, so time and memory follow the plan, not the
size of the inputs. Results do not depend on ``num_proc``: workers process batches and the
main process consumes them in order.

The plan, and the contract with the trainer
-------------------------------------------
``mix_by: rows`` (the default): ``total_samples`` rows, a source's ``ratio`` is its share of
rows. Files and manifest are exactly those of the format before ``mix_by`` existed.

``mix_by: tokens``: ``total_tokens`` tokens, a source's ``ratio`` is its share of tokens.
Tokens are counted with the tokenizer the model trains with (``tokenizer:`` in the config,
or the ``tokenizer`` argument / ``prepare_dataset.py --tokenizer_path``, which wins), as the
trainer trains on them, as targets: ``len(encode_texts(tok, [text])[0]) + doc_targets(tok)``
(every token of a document but its first is a target: the text and EOS after a BOS, the text
but its first token and EOS without one; :func:`dataset.tokenizer.doc_targets`), so the plan's
shares are shares of what is trained.

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

Manifest, with ``mix_by: tokens`` or ``stages`` (rows mode without stages writes none of it):
``mix_by``, ``total_tokens``; ``tokenizer`` (``ref``, ``sha256``, ``targets_per_document``,
``bos``) and ``tokenizer_sha256`` in tokens mode; ``plan`` = ``{unit, total, written, rule,
sources: [...], stages: [...]}`` where each source entry has ``name, share, planned, written,
written_share, rows, unique_rows, unique_available, available_exact, epochs, max_repeats,
max_uses_per_row`` and each stage entry ``name, fraction, planned, written, rows, train_rows,
val_rows, train_tokens, val_tokens, sources: [{name, share, planned, written, written_share,
rows, train_rows, val_rows, train_tokens, val_tokens, epochs}]`` (amounts in ``unit``; token
fields null in rows mode); and, with stages, ``stages`` = ``[{name, fraction, train_rows,
val_rows, train_tokens, val_tokens}]`` in order. ``epochs`` = units used / unique units
available after filters, dedup and decontamination; exact when the source was read to its end
(``available_exact``), else extrapolated from the rows read. Above 4 epochs a warning (returns
from repeated data fall after ~4 epochs: Muennighoff et al. 2023, "Scaling Data-Constrained
Language Models"). :func:`find_prepared` checks the config sha256 and, when given, the
tokenizer sha256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from dataset.blend import interleave, interleave_sized, is_val
from dataset.io import AtomicFiles
from dataset.manifest import build_manifest, format_summary
from dataset.mixture_config import (
    MixtureConfig,
    SourceConfig,
    load_mixture_config,
    resolve_tokenizer_ref,
    stage_plan,
)
from dataset.pool import Runner
from dataset.selection import Layout, Picked, build_evalset, select_source
from dataset.sources import first_line
from dataset.tokenizer import doc_targets, load_tokenizer, tokenizer_sha256
from model.errors import UserError

__all__ = [
    "MixtureConfig",
    "SourceConfig",
    "find_prepared",
    "format_summary",
    "load_mixture_config",
    "prepare_mixture",
    "prepared_data",
    "prepared_paths",
]

log = logging.getLogger(__name__)


class PreparedPaths(NamedTuple):
    train: Path  # {output_dir}/{name}_train.jsonl
    val: Path  # {output_dir}/{name}_val.jsonl
    manifest: Path  # {output_dir}/{name}_manifest.json


def prepared_paths(config: MixtureConfig, output_dir: str | os.PathLike) -> PreparedPaths:
    """The one place that knows how a prepared mixture's files are named."""
    out = Path(output_dir)
    return PreparedPaths(
        out / f"{config.name}_train.jsonl",
        out / f"{config.name}_val.jsonl",
        out / f"{config.name}_manifest.json",
    )


def find_prepared(
    config: MixtureConfig, output_dir: str | os.PathLike, tokenizer_sha256: str | None = None
) -> PreparedPaths:
    """The prepared files of ``config`` in ``output_dir``, checked: all three exist, the manifest
    was written from this version of the config (its sha256) and, in tokens mode with
    ``tokenizer_sha256`` given (the trainer's tokenizer, :func:`dataset.tokenizer.tokenizer_sha256`),
    its tokens were counted with that tokenizer (None: that check is skipped). Otherwise a
    one-line UserError naming both hashes and the command which (re)makes the files."""
    paths = prepared_paths(config, output_dir)
    command = f"python scripts/prepare_dataset.py --config {config.path} --output_dir {output_dir}"
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"{missing[0]} not found; prepare the mixture first: {command}")
    manifest = json.loads(paths.manifest.read_text())
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
) -> tuple[Path, Path]:
    """(train, val) JSONL of a mixture: the files prepared in ``prepared_dir`` (checked against the
    config and, in tokens mode, against ``tokenizer``'s sha256), or, with ``prepared_dir`` None, a
    preparation cached under ``cache_dir`` by the config's hash (plus the tokenizer's in tokens
    mode), made on first use. ``tokenizer``: the model's tokenizer object (or None: the config's
    ``tokenizer:``); it counts a tokens-mode mixture's tokens."""
    tokens = config.mix_by == "tokens" and tokenizer is not None
    if prepared_dir is not None:
        try:
            paths = find_prepared(config, prepared_dir, tokenizer_sha256(tokenizer) if tokens else None)
        except UserError as e:
            raise UserError(f"--use_prepared: {e}") from None
        return paths.train, paths.val
    key = config.sha256[:12] + (f"-tok{tokenizer_sha256(tokenizer)[:12]}" if tokens else "")
    out = Path(cache_dir) / "mixtures" / f"{config.name}-{key}"
    paths = prepared_paths(config, out)
    if not paths.manifest.is_file():
        log.info(
            f"Preparing {config.path} into {out} (pass --use_prepared to read files from scripts/prepare_dataset.py)"
        )
        prepare_mixture(config, out, tokenizer=tokenizer if tokens else None)
    return paths.train, paths.val


def _tokenizer_ref(config: MixtureConfig, tokenizer: Any) -> tuple[Any, str, str] | None:
    """Which tokenizer counts a tokens-mode mixture: ``(tokenizer object or None, reference, origin)``,
    or None in rows mode (a tokenizer given then is unused, and said so). Cheap; :func:`_load_tokenizer`
    loads it.

    ``tokenizer`` wins over the config's ``tokenizer:``: a tokenizer object, or a folder path
    (relative to the working directory) or Hugging Face id (loaded with ``transformers.AutoTokenizer``,
    never with remote code). UserError at once when tokens mode has none or names a missing folder;
    :func:`_load_tokenizer` raises one when it does not load or is not a fast tokenizer with EOS.
    """
    if config.mix_by != "tokens":
        if tokenizer is not None:
            log.warning(f"warning: {config.path.name} mixes by rows: the tokenizer given is not used")
        return None
    if tokenizer is None:
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


# ---------------------------------------------------------------------------- writing


def _check_output_dir(out: Path, paths: tuple[Path, Path, Path], overwrite: bool) -> None:
    """Fail before any work if the outputs cannot be written (or exist without overwrite)."""
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"output dir {out}: {probe} is a file, not a folder; pick another --output_dir")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"output dir {out}: {probe} is not writable; pick another --output_dir")
    if not overwrite:
        for p in paths:
            if p.exists():
                raise UserError(f"{p} exists; pass --overwrite (overwrite=True) to replace it")


def _write_jsonl(f, rows: Iterator[tuple[str, ...]]) -> dict[str, Any]:
    """Write ``(text, source)`` or ``(text, source, stage)`` rows as JSON lines; their count, bytes, sha256."""
    digest = hashlib.sha256()
    n = size = 0
    for r in rows:
        row = {"text": r[0], "source": r[1]} if len(r) == 2 else {"text": r[0], "source": r[1], "stage": r[2]}
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        f.write(line)
        digest.update(line)
        n += 1
        size += len(line)
    return {"rows": n, "bytes": size, "sha256": digest.hexdigest()}


def _layout(picks: list[Picked], n_stages: int, val_ratio: float) -> dict[str, Layout]:
    """Each source's rows per split and stage, in the source's order: ``{"train"|"val": [stage][source]}``."""
    out: dict[str, Layout] = {"train": [[] for _ in range(n_stages)], "val": [[] for _ in range(n_stages)]}
    for p in picks:
        val = np.fromiter((is_val(h, val_ratio) for h in p.hashes), dtype=bool, count=len(p.hashes))
        for k in range(n_stages):
            in_stage = p.stage == k
            out["train"][k].append(np.flatnonzero(in_stage & ~val))
            out["val"][k].append(np.flatnonzero(in_stage & val))
    return out


def _ordered(
    picks: list[Picked], layout: Layout, names: list[str], stage_names: list[str] | None
) -> Iterator[tuple[str, ...]]:
    """The rows of one split: stage by stage, sources interleaved by the deficit rule within a stage
    (of rows, or of tokens when the rows carry token counts)."""
    for k, per_source in enumerate(layout):
        if picks[0].tokens is None:
            order = interleave([len(ix) for ix in per_source])
        else:
            order = interleave_sized([p.tokens[ix].tolist() for p, ix in zip(picks, per_source, strict=True)])  # type: ignore[index]
        cursor = [0] * len(per_source)
        for s in order.tolist():
            text = picks[s].texts[per_source[s][cursor[s]]]
            cursor[s] += 1
            yield (text, names[s]) if stage_names is None else (text, names[s], stage_names[k])


def _versions() -> dict[str, str]:
    import datasets
    import pyarrow
    import yaml

    return {
        "python": sys.version.split()[0],
        "datasets": datasets.__version__,
        "pyarrow": pyarrow.__version__,
        "numpy": np.__version__,
        "pyyaml": yaml.__version__,
    }


# ---------------------------------------------------------------------------- entry point


def prepare_mixture(
    config: MixtureConfig | str | os.PathLike,
    output_dir: str | os.PathLike,
    num_proc: int = 1,
    overwrite: bool = False,
    cache_dir: str | None = None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Build the mixture a config describes; write train/val JSONL and a manifest; return the manifest.

    ``cache_dir`` is passed to ``datasets.load_dataset`` (default: the Hugging Face cache).
    ``tokenizer`` (tokens mode): a tokenizer object, folder or Hugging Face id that wins over the
    config's ``tokenizer:`` (:func:`_tokenizer_ref`). The plan, the rows' layout and the manifest
    are described in the module docstring. UserError on bad input, a source short of its plan, or a
    stage left without rows; nothing is written then.
    """
    if not isinstance(config, MixtureConfig):
        config = load_mixture_config(config)
    out = Path(output_dir)
    paths = prepared_paths(config, out)
    _check_output_dir(out, paths, overwrite)
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
    seen: set[int] = set()
    picks: list[Picked] = []
    with Runner(num_proc, evalset, tok) as runner:
        for i, source in enumerate(config.sources):
            picks.append(select_source(source, [row[i] for row in plan], config, runner, seen, cache_dir))
    layout = _layout(picks, len(plan), config.val_ratio)

    manifest = build_manifest(config, plan, picks, layout, tok, tok_ref, evalset, eval_records)
    records = manifest["sources"]
    stage_names = [st.name for st in config.stages] if config.stages else None
    writer = AtomicFiles()
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with writer.open(paths[0]) as f:
            train_info = _write_jsonl(
                f,
                tqdm(
                    _ordered(picks, layout["train"], names, stage_names),
                    total=sum(r["train"] for r in records),
                    desc="write train",
                    unit="row",
                    disable=None,
                    leave=False,
                ),
            )
        with writer.open(paths[1]) as f:
            val_info = _write_jsonl(f, _ordered(picks, layout["val"], names, stage_names))
        manifest["outputs"] = {
            "train": {"file": paths[0].name, **train_info},
            "val": {"file": paths[1].name, **val_info},
        }
        manifest["versions"] = _versions()
        with writer.open(paths[2]) as f:
            f.write((json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
        writer.commit()
    except OSError as e:
        writer.discard()
        if created and out.exists() and not any(out.iterdir()):
            out.rmdir()
        raise UserError(
            f"output dir {out}: cannot write ({e.strerror or e}); pick another --output_dir"
        ) from None
    except BaseException:
        writer.discard()
        raise
    return manifest

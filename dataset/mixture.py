"""Prepare a data mixture: what a config asks for is exactly what lands on disk.

``prepare_mixture`` runs, per source in config order:

1. load with ``datasets.load_dataset`` (a Hugging Face id or local files);
2. walk the rows in a seeded random order, rendering each (:mod:`dataset.formats`),
   filtering (:mod:`dataset.filters`), dropping rows that overlap the evaluation sets
   (:mod:`dataset.decontam`) and exact duplicates of rows kept so far, in this source
   or an earlier one, until ``round(ratio x total_samples)`` rows are kept or the
   source runs out (then rows repeat, up to ``max_repeats`` uses each);
3. split train/validation by a hash of the text and interleave sources so every prefix
   of each file follows the mixture (:mod:`dataset.blend`);
4. write ``{name}_train.jsonl``, ``{name}_val.jsonl`` and ``{name}_manifest.json``, each
   atomically, the manifest last.

Only the rows needed are rendered and filtered, so time and memory follow
``total_samples``, not the size of the inputs. Results do not depend on ``num_proc``:
workers process batches and the main process consumes them in order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from dataset import sources
from dataset.blend import allocate, interleave, is_val, repeat_order
from dataset.decontam import EvalNgrams
from dataset.formats import FormatSpec
from dataset.io import AtomicFiles
from dataset.mixture_config import MixtureConfig, SourceConfig, load_mixture_config
from dataset.pool import Runner, eval_batch, pool_process_batch, process_batch
from model.errors import UserError

__all__ = [
    "MixtureConfig",
    "SourceConfig",
    "format_summary",
    "load_mixture_config",
    "prepare_mixture",
    "prepared_data",
    "prepared_paths",
]

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
BYTES_PER_TOKEN = 4  # rough English BPE average; exact counts come after tokenization


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


def find_prepared(config: MixtureConfig, output_dir: str | os.PathLike) -> PreparedPaths:
    """The prepared files of ``config`` in ``output_dir``, checked: all three exist and the manifest
    was written from this version of the config (its sha256). Otherwise a UserError that names the
    command which (re)makes them."""
    paths = prepared_paths(config, output_dir)
    command = f"python scripts/prepare_dataset.py --config {config.path} --output_dir {output_dir}"
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"{missing[0]} not found; prepare the mixture first: {command}")
    sha = json.loads(paths.manifest.read_text()).get("config_sha256")
    if sha != config.sha256:
        raise UserError(
            f"{paths.manifest} was prepared from a different version of {config.path} "
            f"(config sha256 {str(sha)[:12]} vs now {config.sha256[:12]}); re-run: {command} --overwrite"
        )
    return paths


def prepared_data(
    config: MixtureConfig, prepared_dir: str | os.PathLike | None, cache_dir: str | os.PathLike
) -> tuple[Path, Path]:
    """(train, val) JSONL of a mixture: the files prepared in ``prepared_dir`` (checked against the
    config), or, with ``prepared_dir`` None, a preparation cached under ``cache_dir`` by the
    config's hash (made on first use)."""
    if prepared_dir is not None:
        try:
            paths = find_prepared(config, prepared_dir)
        except UserError as e:
            raise UserError(f"--use_prepared: {e}") from None
        return paths.train, paths.val
    out = Path(cache_dir) / "mixtures" / f"{config.name}-{config.sha256[:12]}"
    paths = prepared_paths(config, out)
    if not paths.manifest.is_file():
        log.info(
            f"Preparing {config.path} into {out} (pass --use_prepared to read files from scripts/prepare_dataset.py)"
        )
        prepare_mixture(config, out)
    return paths.train, paths.val


# ---------------------------------------------------------------------------- stages


def _build_evalset(
    config: MixtureConfig, runner: Runner, cache_dir: str | None
) -> tuple[EvalNgrams | None, list]:
    if not config.decontaminate:
        return None, []
    parts: list[np.ndarray] = []
    records = []
    for i, ref in enumerate(config.decontaminate):
        where = f"{config.path.name}: decontaminate[{i}]"
        ds, files = sources.load(ref, where, cache_dir)
        columns = sources.check_columns(ds, ref, where)
        bar = tqdm(total=len(ds), desc=f"eval set {ref.label}"[:40], unit="row", disable=None, leave=False)
        tasks = ((rows, ref.format, config.decontaminate_ngram) for rows in sources.batches(ds, columns))
        offset = 0
        for hashes, errors in runner.map(eval_batch, eval_batch, tasks):
            for j, err in enumerate(errors):
                if err:
                    raise UserError(f"{where} ({ref.label}): row {offset + j}: {err}")
            parts.append(hashes)
            offset += len(errors)
            bar.update(len(errors))
        bar.close()
        records.append({**sources.ref_record(ref, ds, files), "rows": len(ds)})
    evalset = EvalNgrams(
        np.concatenate(parts) if parts else np.zeros(0, np.uint64),
        config.decontaminate_ngram,
        config.decontaminate_threshold,
    )
    log.info("decontamination: %d evaluation %d-grams from %d sets", len(evalset), evalset.n, len(records))
    return evalset, records


def _source_seed(seed: int, name: str) -> list[int]:
    """Per-source RNG seed: adding or reordering sources leaves each one's sample unchanged."""
    return [seed, int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")]


def _select_source(
    source: SourceConfig,
    needed: int,
    config: MixtureConfig,
    runner: Runner,
    seen: set[int],
    cache_dir: str | None,
) -> tuple[list[str], list[int], dict[str, Any]]:
    """Pick ``needed`` rows of one source: ``(texts, hashes, manifest record)``."""
    where = f"{config.path.name}: source {source.name!r}"
    ds, files = sources.load(source, where, cache_dir)
    columns = sources.check_columns(ds, source, where)
    rng = np.random.default_rng(_source_seed(config.seed, source.name))

    dropped = dict.fromkeys(("empty", *source.filters), 0)
    stats = {"decontaminated": 0, "duplicates": 0}
    texts: list[str] = []
    hashes: list[int] = []
    own: set[int] = set()
    read = 0
    in_flight: deque[np.ndarray] = deque()  # row indices of the batches handed out, in order

    def tasks() -> Iterator[tuple]:
        reader = sources.RowReader(ds, columns)
        for idx in sources.row_order(len(ds), rng):
            in_flight.append(idx)
            yield reader[idx.tolist()], source.format, source.filters

    def local(rows: dict[str, list], spec: FormatSpec, filters: dict) -> list:
        return process_batch(rows, spec, filters, runner.evalset)

    bar = tqdm(total=needed, desc=f"{source.name}"[:24], unit="row", disable=None, leave=False)
    results = runner.map(pool_process_batch, local, tasks())
    try:
        for batch in results:
            idx = in_flight.popleft()
            for j, (verdict, text, h) in enumerate(batch):
                if verdict.startswith("error"):
                    raise UserError(
                        f"{where} ({source.label}): row {int(idx[j])}: {verdict[7:]}; "
                        "fix the data or the source's format/text_field"
                    )
                read += 1
                if verdict == "decontaminated":
                    stats["decontaminated"] += 1
                elif verdict:
                    dropped[verdict] += 1
                elif config.dedup and (h in own or h in seen):
                    stats["duplicates"] += 1
                else:
                    own.add(h)
                    texts.append(text)  # type: ignore[arg-type]
                    hashes.append(h)
                    if len(texts) == needed:
                        break
            bar.update(len(texts) - bar.n)
            if len(texts) == needed:
                break
    finally:
        results.close()
        bar.close()

    kept = len(texts)
    drop_summary = ", ".join(f"{k} {v}" for k, v in dropped.items() if v) or "none"
    if kept == 0:
        raise UserError(
            f"{where} ({source.label}) is empty after filters: {read} rows read, dropped: {drop_summary}, "
            f"decontaminated {stats['decontaminated']}, duplicates {stats['duplicates']}; loosen its filters"
        )
    uses = math.ceil(needed / kept)
    if uses > source.max_repeats:
        raise UserError(
            f"{where} ({source.label}) is short: {kept} rows available after filters, dedup and "
            f"decontamination, {needed} needed (ratio {source.ratio:g} x {config.total_samples}); "
            f"max_repeats {source.max_repeats} allows {kept * source.max_repeats}: set max_repeats: {uses} "
            "or lower its ratio or total_samples"
        )
    # Rows were drawn in runs of consecutive rows; shuffle so neighbours in the file do not
    # stay neighbours in the output. Then every row once, extra uses only if short.
    shuffle = rng.permutation(kept)
    texts, hashes = [texts[i] for i in shuffle], [hashes[i] for i in shuffle]
    pick = repeat_order(kept, needed, rng)
    record = {
        "name": source.name,
        **sources.ref_record(source, ds, files),
        "ratio": source.ratio,
        "filters": source.filters,
        "rows_total": len(ds),
        "rows_read": read,
        "dropped": dropped,
        "decontaminated": stats["decontaminated"],
        "duplicates": stats["duplicates"],
        "kept": kept,
        "selected": needed,
        "unique_selected": min(kept, needed),
        "max_repeats": source.max_repeats,
        "repeat_factor": round(needed / min(kept, needed), 6),
        "max_uses_per_row": uses,
    }
    seen.update(hashes)
    return [texts[i] for i in pick], [hashes[i] for i in pick], record


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


def _write_jsonl(f, rows: Iterator[tuple[str, str]]) -> dict[str, Any]:
    digest = hashlib.sha256()
    n = size = 0
    for text, source in rows:
        line = (json.dumps({"text": text, "source": source}, ensure_ascii=False) + "\n").encode("utf-8")
        f.write(line)
        digest.update(line)
        n += 1
        size += len(line)
    return {"rows": n, "bytes": size, "sha256": digest.hexdigest()}


def _ordered(per_source: list[list[str]], names: list[str]) -> Iterator[tuple[str, str]]:
    order = interleave([len(rows) for rows in per_source])
    cursor = [0] * len(per_source)
    for s in order:
        yield per_source[s][cursor[s]], names[s]
        cursor[s] += 1


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
) -> dict[str, Any]:
    """Build the mixture a config describes; write train/val JSONL and a manifest; return the manifest.

    ``cache_dir`` is passed to ``datasets.load_dataset`` (default: the Hugging Face cache).
    """
    if not isinstance(config, MixtureConfig):
        config = load_mixture_config(config)
    out = Path(output_dir)
    paths = prepared_paths(config, out)
    _check_output_dir(out, paths, overwrite)
    if num_proc < 1:
        raise UserError(f"num_proc must be >= 1, got {num_proc}")

    counts = allocate(config.total_samples, [s.ratio for s in config.sources])
    with Runner(num_proc) as runner:
        evalset, eval_records = _build_evalset(config, runner, cache_dir)
    seen: set[int] = set()
    selected: list[tuple[list[str], list[int]]] = []
    records: list[dict[str, Any]] = []
    with Runner(num_proc, evalset) as runner:
        for source, needed in zip(config.sources, counts, strict=True):
            texts, hashes, record = _select_source(source, needed, config, runner, seen, cache_dir)
            selected.append((texts, hashes))
            records.append(record)

    names = [s.name for s in config.sources]
    train: list[list[str]] = []
    val: list[list[str]] = []
    for (texts, hashes), record in zip(selected, records, strict=True):
        flags = [is_val(h, config.val_ratio) for h in hashes]
        train.append([t for t, v in zip(texts, flags, strict=True) if not v])
        val.append([t for t, v in zip(texts, flags, strict=True) if v])
        record["train"], record["val"] = len(train[-1]), len(val[-1])
        record["est_tokens"] = sum(len(t.encode("utf-8")) for t in texts) // BYTES_PER_TOKEN
    all_tokens = sum(r["est_tokens"] for r in records) or 1
    for record in records:
        record["sample_share"] = round(record["selected"] / config.total_samples, 6)
        record["token_share"] = round(record["est_tokens"] / all_tokens, 6)

    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "name": config.name,
        "config_path": str(config.path),
        "config_sha256": config.sha256,
        "seed": config.seed,
        "total_samples": config.total_samples,
        "val_ratio": config.val_ratio,
        "dedup": config.dedup,
        "decontamination": {
            "method": "word n-gram overlap: a row goes when the share of its n-grams found in the sets > threshold",
            "ngram": config.decontaminate_ngram,
            "threshold": config.decontaminate_threshold,
            "eval_ngrams": len(evalset) if evalset is not None else 0,
            "sets": eval_records,
        },
        "token_estimate": f"utf-8 bytes / {BYTES_PER_TOKEN}",
        "sources": records,
    }
    writer = AtomicFiles()
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with writer.open(paths[0]) as f:
            train_info = _write_jsonl(
                f,
                tqdm(
                    _ordered(train, names),
                    total=sum(map(len, train)),
                    desc="write train",
                    unit="row",
                    disable=None,
                    leave=False,
                ),
            )
        with writer.open(paths[1]) as f:
            val_info = _write_jsonl(f, _ordered(val, names))
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


# ---------------------------------------------------------------------------- report


def format_summary(manifest: dict[str, Any]) -> str:
    """A one-screen table of a manifest: where every row came from and where it went."""
    head = (
        "source",
        "ratio",
        "read",
        "filtered",
        "decont",
        "dups",
        "kept",
        "selected",
        "repeat",
        "train",
        "val",
        "samples",
        "tokens",
    )
    rows = []
    for s in manifest["sources"]:
        rows.append(
            (
                s["name"],
                f"{s['ratio']:.3f}",
                f"{s['rows_read']:,}",
                f"{sum(s['dropped'].values()):,}",
                f"{s['decontaminated']:,}",
                f"{s['duplicates']:,}",
                f"{s['kept']:,}",
                f"{s['selected']:,}",
                f"{s['repeat_factor']:.2f}x",
                f"{s['train']:,}",
                f"{s['val']:,}",
                f"{100 * s['sample_share']:.1f}%",
                f"{100 * s['token_share']:.1f}%",
            )
        )
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

    def fmt(r: tuple) -> str:
        return "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    lines = [f"mixture {manifest['name']}  (config sha256 {manifest['config_sha256'][:12]})", fmt(head)]
    lines += [fmt(r) for r in rows]
    out = manifest.get("outputs", {})
    for split in ("train", "val"):
        if split in out:
            lines.append(
                f"{split:5s} {out[split]['rows']:>9,} rows  {out[split]['bytes'] / 1e6:8.1f} MB  {out[split]['file']}"
            )
    drops = "; ".join(
        f"{s['name']}: " + ", ".join(f"{k} {v}" for k, v in s["dropped"].items() if v)
        for s in manifest["sources"]
        if any(s["dropped"].values())
    )
    if drops:
        lines.append(f"filtered by: {drops}")
    d = manifest["decontamination"]
    if d["sets"]:
        lines.append(
            f"decontamination: {len(d['sets'])} eval sets, {d['eval_ngrams']:,} {d['ngram']}-grams, threshold {d['threshold']}"
        )
    return "\n".join(lines)

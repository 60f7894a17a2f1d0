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

import contextlib
import glob
import hashlib
import json
import logging
import math
import multiprocessing
import os
import re
import sys
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dataset.blend import allocate, interleave, is_val, repeat_order, text_hash
from dataset.decontam import EvalNgrams, ngram_hashes_batch
from dataset.filters import TextFilter
from dataset.formats import FormatSpec, MissingFieldError, render_row
from dataset.jsonl import iter_jsonl
from dataset.mixture_config import DataRef, MixtureConfig, SourceConfig, load_mixture_config
from model.errors import UserError

__all__ = [
    "MixtureConfig",
    "SourceConfig",
    "format_summary",
    "load_mixture_config",
    "prepare_mixture",
    "prepared_paths",
]

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
BATCH_SIZE = 1000
LOAD_CHUNK_BYTES = 1 << 20
BYTES_PER_TOKEN = 4  # rough English BPE average; exact counts come after tokenization
HUB_HINT = (
    "check the id and your network, or download the data and point data_files: at the local "
    "copies (see config/data/midtrain/phase1/local.yaml)"
)


def _default_output_dir() -> Path:
    from trainer.paths import repo_path

    return repo_path("dataset")


def prepared_paths(
    config: MixtureConfig, output_dir: str | os.PathLike | None = None
) -> tuple[Path, Path, Path]:
    """``(train, val, manifest)`` paths of a prepared mixture; default folder: the repo's dataset/."""
    out = Path(output_dir) if output_dir is not None else _default_output_dir()
    return (
        out / f"{config.name}_train.jsonl",
        out / f"{config.name}_val.jsonl",
        out / f"{config.name}_manifest.json",
    )


# ---------------------------------------------------------------------------- loading


def _expand_files(ref: DataRef, where: str) -> list[str]:
    files: list[str] = []
    for pattern in ref.data_files:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise UserError(
                f"{where}: data_files {pattern!r} matches no file; fix the path (relative to the config)"
            )
        files += [m for m in matches if m not in files]
    return files


def _first_bad_json_line(files: list[str]) -> str | None:
    """``file:line: problem; what to do`` for the first malformed JSON line among ``files``, or None."""
    for path in files:
        if path.endswith(".json"):
            try:
                with open(path, encoding="utf-8") as f:
                    json.load(f)
                continue  # one JSON document: whatever went wrong, it was not the syntax
            except json.JSONDecodeError as e:
                if not e.msg.startswith("Extra data"):  # "Extra data": JSON lines in a .json file
                    return f"{path}:{e.lineno}: malformed JSON ({e.msg}, column {e.colno}); fix that line"
            except UnicodeDecodeError as e:
                return f"{path}: not UTF-8 ({e.reason}); re-encode the file as UTF-8"
        try:
            for _ in iter_jsonl(path):
                pass
        except UserError as e:
            return str(e)
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


@contextlib.contextmanager
def _quiet_datasets_logs() -> Iterator[None]:
    """Mute datasets' own error logs while loading: a failure becomes our one-line UserError."""
    import datasets  # noqa: F401 - its import sets the level we override

    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _load(ref: DataRef, where: str, cache_dir: str | None) -> tuple[Any, list[str]]:
    """``(datasets.Dataset, files)`` for a source or eval set; UserError on any failure."""
    with _quiet_datasets_logs():
        return _load_quietly(ref, where, cache_dir)


def _load_quietly(ref: DataRef, where: str, cache_dir: str | None) -> tuple[Any, list[str]]:
    import datasets

    if ref.dataset:
        try:
            ds = datasets.load_dataset(
                ref.dataset, ref.subset, split=ref.split, revision=ref.revision, cache_dir=cache_dir
            )
        except Exception as e:  # noqa: BLE001 - any failure to fetch is the user's to fix
            raise UserError(
                f"{where}: cannot load Hugging Face dataset {ref.dataset!r} ({_first_line(e)}); {HUB_HINT}"
            ) from None
        return ds, []
    files = _expand_files(ref, where)
    try:
        # 1 MB read chunks (datasets' default is 10 MB): the one-time JSON -> Arrow conversion
        # then peaks at ~20 MB whatever the file size, and runs as fast (measured).
        chunks = {"chunksize": LOAD_CHUNK_BYTES} if ref.builder in ("json", "text") else {}
        ds = datasets.load_dataset(
            ref.builder, data_files=files, split="train", cache_dir=cache_dir, **chunks
        )
    except Exception as e:  # noqa: BLE001 - reported as one line below
        bad = _first_bad_json_line(files) if ref.builder == "json" else None
        if bad:
            raise UserError(f"{where}: {bad}") from None
        raise UserError(f"{where}: cannot read {ref.label} ({_first_line(e)})") from None
    return ds, files


def _check_columns(ds: Any, ref: DataRef, where: str) -> list[str]:
    missing = ref.format.missing_columns(ds.column_names)
    if missing:
        hint = (
            "set text_field: to one of them" if ref.format.format == "text" else "pick the format that fits"
        )
        raise UserError(
            f"{where} ({ref.label}): rows have no field {', '.join(map(repr, missing))} "
            f"needed by format {ref.format.format} (fields: {', '.join(ds.column_names)}); {hint}"
        )
    return ref.format.columns(ds.column_names)


def _resolved_revision(ds: Any) -> str | None:
    """The Hub commit a dataset was read at: datasets caches it under a folder named by the sha."""
    for f in getattr(ds, "cache_files", None) or []:
        parent = os.path.basename(os.path.dirname(f.get("filename", "")))
        if re.fullmatch(r"[0-9a-f]{40}", parent):
            return parent
    return None


def _file_record(path: str) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"path": path, "bytes": os.path.getsize(path), "sha256": digest.hexdigest()}


# ---------------------------------------------------------------------------- workers

# Set in each worker process by _init_worker (and read only there): the evaluation
# n-grams are ~10 MB, so they travel once per worker instead of once per batch.
_WORKER_EVAL: EvalNgrams | None = None


def _init_worker(evalset: EvalNgrams | None) -> None:
    global _WORKER_EVAL
    _WORKER_EVAL = evalset


def _render_batch(rows: dict[str, list], spec: FormatSpec) -> tuple[list[str | None], list[str]]:
    """Rendered texts (None where a row failed) and the error per row ("" when fine)."""
    names = list(rows)
    n = len(rows[names[0]]) if names else 0
    texts: list[str | None] = []
    errors: list[str] = []
    for i in range(n):
        try:
            texts.append(render_row({k: rows[k][i] for k in names}, spec))
            errors.append("")
        except (MissingFieldError, ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            texts.append(None)
            errors.append(str(e) or type(e).__name__)
    return texts, errors


def process_batch(
    rows: dict[str, list], spec: FormatSpec, filters: dict, evalset: EvalNgrams | None
) -> list[tuple[str, str | None, int]]:
    """Per row ``(verdict, text, hash)``: verdict "" keeps the row, else names why it goes.

    Verdicts: a filter name, "empty", "decontaminated", or "error: <message>". Text and
    hash are only filled for kept rows.
    """
    check = TextFilter(filters)
    texts, errors = _render_batch(rows, spec)
    verdicts = [f"error: {err}" if err else check(t) for t, err in zip(texts, errors, strict=True)]
    passing = [i for i, v in enumerate(verdicts) if not v]
    if evalset is not None and len(evalset) and passing:
        dirty = evalset.contaminated([texts[i] for i in passing])
        for i, bad in zip(passing, dirty, strict=True):
            if bad:
                verdicts[i] = "decontaminated"
    return [
        ("", texts[i], text_hash(texts[i])) if not v else (v, None, 0)  # type: ignore[arg-type]
        for i, v in enumerate(verdicts)
    ]


def _pool_process_batch(rows: dict[str, list], spec: FormatSpec, filters: dict) -> list:
    return process_batch(rows, spec, filters, _WORKER_EVAL)


def eval_batch(rows: dict[str, list], spec: FormatSpec, n: int) -> tuple[np.ndarray, list[str]]:
    """n-gram hashes of a batch of evaluation rows, and the error per row."""
    texts, errors = _render_batch(rows, spec)
    hashes, _ = ngram_hashes_batch([t or "" for t in texts], n)
    return hashes, errors


class _Runner:
    """Runs batch functions in-process (num_proc=1) or in a pool, always yielding in order."""

    def __init__(self, num_proc: int, evalset: EvalNgrams | None = None):
        self.num_proc = num_proc
        self.evalset = evalset
        self.pool = None
        if num_proc > 1:
            methods = multiprocessing.get_all_start_methods()
            # fork is cheap and the workers only run pure Python and numpy; elsewhere spawn.
            ctx = multiprocessing.get_context(
                "fork" if "fork" in methods and sys.platform == "linux" else "spawn"
            )
            self.pool = ctx.Pool(num_proc, initializer=_init_worker, initargs=(evalset,))

    def map(self, fn: Callable, local_fn: Callable, tasks: Iterator[tuple]) -> Iterator[Any]:
        """Yield ``fn(*task)`` for each task, in order, keeping at most 2 x num_proc in flight."""
        if self.pool is None:
            for task in tasks:
                yield local_fn(*task)
            return
        pending: deque = deque()
        try:
            for task in tasks:
                pending.append(self.pool.apply_async(fn, task))
                if len(pending) >= 2 * self.num_proc:
                    yield pending.popleft().get()
            while pending:
                yield pending.popleft().get()
        finally:
            # The consumer may stop early (a source has its rows): let the few batches in
            # flight finish, so no worker is left blocked writing a result nobody reads.
            for result in pending:
                result.wait(timeout=60)  # bounded: a worker killed by Ctrl-C never answers

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None

    def terminate(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    def __enter__(self) -> _Runner:
        return self

    def __exit__(self, exc_type, *_) -> None:
        # Graceful shutdown normally; on errors (and Ctrl-C) do not wait for the workers.
        if exc_type is None:
            self.close()
        else:
            self.terminate()


def draw_run(n_rows: int) -> int:
    """How many consecutive rows are drawn together from a source of ``n_rows`` rows.

    Arrow files are memory-mapped and every page fault maps ~64 KB around it, so rows
    drawn one by one from a large file would map most of the file. Runs of up to 64
    consecutive rows (n / 1024, at least 1) keep the pages touched proportional to the
    rows used. The rows kept are shuffled afterwards, so only the sample, not the output
    order, is clustered: ~1,000 or more random places per source.
    """
    return max(1, min(64, n_rows // 1024))


def _row_order(n_rows: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Row indices in a seeded random order (random runs of :func:`draw_run` rows), ~BATCH_SIZE at a time."""
    run = draw_run(n_rows)
    starts = rng.permutation(-(-n_rows // run)) * run
    per_batch = max(1, BATCH_SIZE // run)
    for i in range(0, len(starts), per_batch):
        idx = (starts[i : i + per_batch, None] + np.arange(run)).ravel()
        yield idx[idx < n_rows]


class _RowReader:
    """Reads rows of a memory-mapped dataset, re-mapping its Arrow files every REMAP_ROWS rows.

    Every page of an Arrow file that is read stays mapped, and counted in resident
    memory, for as long as the mapping lives. Opening the files afresh from time to time
    drops those pages, so memory stays flat however large the input is.
    """

    REMAP_ROWS = 2_000

    def __init__(self, ds: Any, columns: list[str]):
        self.ds, self.columns = ds, columns
        files = [f["filename"] for f in ds.cache_files or []]
        self.remappable = bool(files) and ds._indices is None and all(os.path.exists(f) for f in files)
        self.files = files
        self.view = ds.select_columns(columns)
        self.since_remap = 0

    def _remap(self) -> None:
        import datasets

        self.view = None  # the last reference: its mapping is released here
        parts = [datasets.Dataset.from_file(f, info=self.ds.info, split=self.ds.split) for f in self.files]
        fresh = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
        self.view = fresh.select_columns(self.columns)
        self.since_remap = 0

    def __getitem__(self, key: slice | list[int]) -> dict[str, list]:
        if self.remappable and self.since_remap >= self.REMAP_ROWS:
            self._remap()
        rows = self.view[key]
        self.since_remap += len(next(iter(rows.values()))) if rows else 0
        return rows


def _batches(ds: Any, columns: list[str]) -> Iterator[dict[str, list]]:
    """Column dicts of BATCH_SIZE rows in storage order."""
    reader = _RowReader(ds, columns)
    for start in range(0, len(ds), BATCH_SIZE):
        yield reader[start : start + BATCH_SIZE]


# ---------------------------------------------------------------------------- stages


def _build_evalset(
    config: MixtureConfig, runner: _Runner, cache_dir: str | None
) -> tuple[EvalNgrams | None, list]:
    if not config.decontaminate:
        return None, []
    parts: list[np.ndarray] = []
    records = []
    for i, ref in enumerate(config.decontaminate):
        where = f"{config.path.name}: decontaminate[{i}]"
        ds, files = _load(ref, where, cache_dir)
        columns = _check_columns(ds, ref, where)
        bar = tqdm(total=len(ds), desc=f"eval set {ref.label}"[:40], unit="row", disable=None, leave=False)
        tasks = ((rows, ref.format, config.decontaminate_ngram) for rows in _batches(ds, columns))
        offset = 0
        for hashes, errors in runner.map(eval_batch, eval_batch, tasks):
            for j, err in enumerate(errors):
                if err:
                    raise UserError(f"{where} ({ref.label}): row {offset + j}: {err}")
            parts.append(hashes)
            offset += len(errors)
            bar.update(len(errors))
        bar.close()
        records.append({**_ref_record(ref, ds, files), "rows": len(ds)})
    evalset = EvalNgrams(
        np.concatenate(parts) if parts else np.zeros(0, np.uint64),
        config.decontaminate_ngram,
        config.decontaminate_threshold,
    )
    log.info("decontamination: %d evaluation %d-grams from %d sets", len(evalset), evalset.n, len(records))
    return evalset, records


def _ref_record(ref: DataRef, ds: Any, files: list[str]) -> dict[str, Any]:
    if ref.dataset:
        return {
            "dataset": ref.dataset,
            "subset": ref.subset,
            "split": ref.split,
            "revision": ref.revision,
            "revision_resolved": _resolved_revision(ds),
            "format": ref.format.format,
        }
    return {"data_files": [_file_record(f) for f in files], "format": ref.format.format}


def _source_seed(seed: int, name: str) -> list[int]:
    """Per-source RNG seed: adding or reordering sources leaves each one's sample unchanged."""
    return [seed, int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")]


def _select_source(
    source: SourceConfig,
    needed: int,
    config: MixtureConfig,
    runner: _Runner,
    seen: set[int],
    cache_dir: str | None,
) -> tuple[list[str], list[int], dict[str, Any]]:
    """Pick ``needed`` rows of one source: ``(texts, hashes, manifest record)``."""
    where = f"{config.path.name}: source {source.name!r}"
    ds, files = _load(source, where, cache_dir)
    columns = _check_columns(ds, source, where)
    rng = np.random.default_rng(_source_seed(config.seed, source.name))

    dropped = dict.fromkeys(("empty", *source.filters), 0)
    stats = {"decontaminated": 0, "duplicates": 0}
    texts: list[str] = []
    hashes: list[int] = []
    own: set[int] = set()
    read = 0
    in_flight: deque[np.ndarray] = deque()  # row indices of the batches handed out, in order

    def tasks() -> Iterator[tuple]:
        reader = _RowReader(ds, columns)
        for idx in _row_order(len(ds), rng):
            in_flight.append(idx)
            yield reader[idx.tolist()], source.format, source.filters

    def local(rows: dict[str, list], spec: FormatSpec, filters: dict) -> list:
        return process_batch(rows, spec, filters, runner.evalset)

    bar = tqdm(total=needed, desc=f"{source.name}"[:24], unit="row", disable=None, leave=False)
    results = runner.map(_pool_process_batch, local, tasks())
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
        **_ref_record(source, ds, files),
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


class _AtomicWriter:
    """Write files as ``.<name>.tmp`` siblings, then rename them all into place at once."""

    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path]] = []

    def open(self, path: Path):
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.pending.append((tmp, path))
        return open(tmp, "wb")

    def commit(self) -> None:
        for tmp, path in self.pending:
            os.replace(tmp, path)
        self.pending.clear()

    def discard(self) -> None:
        for tmp, _ in self.pending:
            tmp.unlink(missing_ok=True)
        self.pending.clear()


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
    output_dir: str | os.PathLike | None = None,
    num_proc: int = 1,
    overwrite: bool = False,
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """Build the mixture a config describes; write train/val JSONL and a manifest; return the manifest.

    ``output_dir`` defaults to the repo's dataset/ folder; ``cache_dir`` is passed to
    ``datasets.load_dataset`` (default: the Hugging Face cache).
    """
    if not isinstance(config, MixtureConfig):
        config = load_mixture_config(config)
    out = Path(output_dir) if output_dir is not None else _default_output_dir()
    paths = prepared_paths(config, out)
    _check_output_dir(out, paths, overwrite)
    if num_proc < 1:
        raise UserError(f"num_proc must be >= 1, got {num_proc}")

    counts = allocate(config.total_samples, [s.ratio for s in config.sources])
    with _Runner(num_proc) as runner:
        evalset, eval_records = _build_evalset(config, runner, cache_dir)
    seen: set[int] = set()
    selected: list[tuple[list[str], list[int]]] = []
    records: list[dict[str, Any]] = []
    with _Runner(num_proc, evalset) as runner:
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
    writer = _AtomicWriter()
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

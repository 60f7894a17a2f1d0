"""Which rows of each source a mixture takes: the evaluation n-grams to avoid, then each source's
rows in a seeded order, rendered, filtered, decontaminated and deduplicated until its plan (rows
or tokens, per stage) is met. The recipe around it is dataset.mixture.prepare_mixture.
"""

from __future__ import annotations

import hashlib
import logging
import math
from array import array
from collections import deque
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from dataset import sources
from dataset.blend import assign_stages, repeat_order, repeat_until
from dataset.decontam import EvalNgrams
from dataset.dedup import HashSet
from dataset.formats import FormatSpec
from dataset.mixture_config import MixtureConfig, SourceConfig
from dataset.pool import Batch, Runner, eval_batch, pool_process_batch, process_batch
from dataset.sources import MapReader
from dataset.spill import REF_DTYPE, REF_FIELDS
from dataset.stream import StreamReader, load_stream, stream_columns
from model.errors import UserError

log = logging.getLogger("dataset.mixture")

Layout = list[list[np.ndarray]]  # [stage][source] -> indices into that source's Picked rows


def build_evalset(
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
                    raise UserError(f"{where} ({ref.label}): {_row_at(ds, offset + j)}: {err}")
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


def _row_at(rows: Any, index: int) -> str:
    """``file:line`` of a row of local JSON files, else ``row N`` (0-based) of a dataset."""
    return rows.where(index) if hasattr(rows, "where") else f"row {index}"


def _source_seed(seed: int, name: str) -> list[int]:
    """Per-source RNG seed: adding or reordering sources leaves each one's sample unchanged."""
    return [seed, int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")]


class Picked(NamedTuple):
    """One source's rows in output order (repeats included), with what the plan needs of them:
    fixed-size numbers per row, the texts and token ids staying in the spill (:mod:`dataset.spill`)."""

    refs: np.ndarray  # (rows,) REF_DTYPE: spill file, offset, JSON bytes, ids, text bytes
    hashes: np.ndarray  # (rows,) uint64 text hash (the validation split, dedup)
    tokens: np.ndarray | None  # (rows,) int32 tokens per row as trained (tokens mode), else None
    counted: np.ndarray | None  # (rows,) int32 tokens per row as trained when a tokenizer is given
    stage: np.ndarray  # (rows,) int16 stage index per row
    available: int | None  # unique units after filters, dedup, decontamination (None: unknown)
    available_exact: bool  # the source was read to its end; else ``available`` is extrapolated
    record: dict[str, Any]

    @property
    def rows(self) -> int:
        return len(self.hashes)


class Spills:
    """The spill files that batches came from, numbered in the order first seen."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self._index: dict[str, int] = {}

    def index(self, path: str) -> int:
        if path not in self._index:
            self._index[path] = len(self.paths)
            self.paths.append(path)
        return self._index[path]


def select_source(
    source: SourceConfig,
    planned: list[int],
    config: MixtureConfig,
    runner: Runner,
    seen: HashSet | None,
    spills: Spills,
    cache_dir: str | None,
) -> Picked:
    """Pick one source's rows for its plan (units per stage, in stage order). ``seen``: the
    hashes of every row kept so far (None without dedup); this source's are added to it."""
    where = f"{config.path.name}: source {source.name!r}"
    rng = np.random.default_rng(_source_seed(config.seed, source.name))
    reader = open_source(source, where, cache_dir, rng)
    counting = config.mix_by == "tokens"
    needed = sum(planned)

    dropped = dict.fromkeys(("empty", *source.filters), 0)
    stats = {"decontaminated": 0, "duplicates": 0}
    kept_refs, kept_hashes, kept_tokens = array("q"), array("Q"), array("q")
    read = got = 0  # rows read; units kept (rows, or tokens)
    largest = 0  # the most units a kept row had (a streamed source's batches are sized by it)
    in_flight: deque[np.ndarray] = deque()  # row positions of the batches handed out, in order

    def room() -> int:
        """Rows to hand out now (0: wait for the batches in flight), so that reading stops at the
        plan. A streamed source: no more than could all be needed, were every row in flight kept
        at the size of the largest row seen (rows: 1), and in tokens mode no more than the rows
        read so far (batches grow from one row as the largest size seen becomes a better bound).
        A whole dataset: the rows still expected to be needed at the units per row read so far
        (rows read past the plan are work thrown away, here the tokenizing of them)."""
        flying = sum(map(len, in_flight))
        if reader.streaming:
            if not counting:
                return max(0, needed - got - flying)
            if largest == 0:
                return 0 if flying else 1
            return max(0, min(-(-(needed - got) // largest), read + 1) - flying)
        if got == 0:
            return sources.BATCH_SIZE
        return max(0, math.ceil((needed - got) * read / got) - flying)

    def local(rows: dict[str, list], spec: FormatSpec, filters: dict) -> Batch:
        return process_batch(rows, spec, filters, runner.evalset, runner.tokenizer, runner.spill_dir)  # type: ignore[arg-type]

    def more() -> bool:
        return room() > 0

    def tasks() -> Iterator[tuple]:
        for idx, rows in reader.batches(room):
            in_flight.append(idx)
            yield rows, source.format, source.filters

    bar = tqdm(total=needed, desc=f"{source.name}"[:24], unit=config.unit[:-1], disable=None, leave=False)
    results = runner.map(pool_process_batch, local, tasks(), more)
    try:
        for batch in results:
            idx = in_flight.popleft()
            file = spills.index(batch.spill)
            frozen = seen.frozen(batch.hashes) if seen is not None else None
            for j, verdict in enumerate(batch.verdicts):
                if verdict.startswith("error"):
                    raise UserError(
                        f"{where} ({source.label}): {reader.where(int(idx[j]))}: {verdict[7:]}; "
                        "fix the data or the source's format/text_field"
                    )
                read += 1
                if verdict == "decontaminated":
                    stats["decontaminated"] += 1
                    continue
                if verdict:
                    dropped[verdict] += 1
                    continue
                h = int(batch.hashes[j])
                if seen is not None:
                    if seen.contains(h, bool(frozen[j])):  # type: ignore[index]
                        stats["duplicates"] += 1
                        continue
                    seen.add(h)
                ntok = int(batch.tokens[j])
                kept_refs.extend((file, *batch.refs[j].tolist()))
                kept_hashes.append(h)
                kept_tokens.append(ntok)
                largest = max(largest, ntok if counting else 1)
                got += ntok if counting else 1
                if got >= needed:
                    break
            if seen is not None:
                seen.settle()
            bar.update(min(got, needed) - bar.n)
            if got >= needed:
                break
    finally:
        results.close()
        bar.close()
    kept = Kept(kept_refs, kept_hashes, kept_tokens, read, dropped, stats)
    return _picked(source, planned, config, reader, rng, kept, runner.tokenizer is not None, where)


def _compact(refs: np.ndarray) -> np.ndarray:
    """(rows, REF_FIELDS) int64 references as REF_DTYPE records (24 bytes a row)."""
    out = np.empty(len(refs), dtype=REF_DTYPE)
    for k, name in enumerate(("file", "offset", "nbytes", "nids", "tbytes")):
        out[name] = refs[:, k]
    return out


def open_source(
    source: SourceConfig, where: str, cache_dir: str | None, rng: np.random.Generator
) -> MapReader | StreamReader:
    """A source's rows in its seeded order: the whole dataset in a random order of runs, or a
    stream through a shuffle buffer (``streaming: true``, :mod:`dataset.stream`)."""
    if source.streaming:
        ds, files = load_stream(source, where, cache_dir)
        columns = sources.check_columns(ds, source, where, stream_columns(ds))
        seed = [int(x) for x in rng.integers(0, 2**63, size=2)]
        return StreamReader(ds, files, source, columns, seed)
    ds, files = sources.load(source, where, cache_dir)
    return MapReader(ds, files, source, sources.check_columns(ds, source, where), rng)


class Kept(NamedTuple):
    """What reading a source kept, in its reading order: a reference, hash and size per row."""

    refs: array  # REF_FIELDS int64 per row
    hashes: array  # uint64 per row
    tokens: array  # int64 per row: targets with a tokenizer, else 0
    read: int  # rows read
    dropped: dict[str, int]  # rows per filter (and "empty")
    stats: dict[str, int]  # decontaminated, duplicates


def _picked(
    source: SourceConfig,
    planned: list[int],
    config: MixtureConfig,
    reader: MapReader | StreamReader,
    rng: np.random.Generator,
    found: Kept,
    tokenized: bool,
    where: str,
) -> Picked:
    """The rows picked from what a source's reading kept: repeats when short, stages, the record."""
    counting = config.mix_by == "tokens"
    needed = sum(planned)
    read, dropped, stats = found.read, found.dropped, found.stats
    kept = len(found.hashes)
    kept_refs, kept_hashes, kept_tokens = found.refs, found.hashes, found.tokens
    got = sum(kept_tokens) if counting else kept
    drop_summary = ", ".join(f"{k} {v}" for k, v in dropped.items() if v) or "none"
    if kept == 0:
        raise UserError(
            f"{where} ({source.label}) is empty after filters: {read} rows read, dropped: {drop_summary}, "
            f"decontaminated {stats['decontaminated']}, duplicates {stats['duplicates']}; loosen its filters"
        )
    uses = math.ceil(needed / got)
    if uses > source.max_repeats:
        total_key = "total_tokens" if counting else "total_samples"
        amount = f"{got} tokens in {kept} rows" if counting else f"{kept} rows"
        short = (
            f"the stream ended before its plan: {read} rows read, {amount} kept"
            if reader.streaming
            else f"is short: {amount} available"
        )
        raise UserError(
            f"{where} ({source.label}) {short} after filters, dedup and "
            f"decontamination, {needed} needed (share {source.ratio:g} x {config.total}); "
            f"max_repeats {source.max_repeats} allows {got * source.max_repeats}: set max_repeats: {uses} "
            f"or lower its share or {total_key}"
        )
    # Rows were drawn in runs of consecutive rows (or from a shuffle buffer); shuffle so
    # neighbours in the file do not stay neighbours in the output. Then every row once, extra
    # uses only if short.
    shuffle = rng.permutation(kept)
    refs = _compact(np.frombuffer(kept_refs, dtype=np.int64).reshape(kept, REF_FIELDS)[shuffle])
    hashes = np.frombuffer(kept_hashes, dtype=np.uint64)[shuffle]
    sizes = np.frombuffer(kept_tokens, dtype=np.int64)[shuffle].astype(np.int32)
    if counting:
        pick = repeat_until(sizes, needed, rng)
        units = sizes[pick]
    else:
        pick = repeat_order(kept, needed, rng)
        units = np.ones(len(pick), dtype=np.int64)
    unique = int(len(np.unique(pick)))
    exact = reader.read_to_end(read)
    total = reader.total_rows(read)
    available = got if exact else (round(got * total / read) if total is not None else None)
    record = {
        "name": source.name,
        **reader.record(read),
        "ratio": source.ratio,
        "filters": source.filters,
        "rows_total": total,
        "rows_read": read,
        "dropped": dropped,
        "decontaminated": stats["decontaminated"],
        "duplicates": stats["duplicates"],
        "kept": kept,
        "selected": len(pick),
        "unique_selected": unique,
        "max_repeats": source.max_repeats,
        "repeat_factor": round(len(pick) / unique, 6),
        "max_uses_per_row": int(np.bincount(pick).max()),
    }
    counted = sizes[pick] if tokenized else None
    return Picked(
        refs=refs[pick],
        hashes=hashes[pick],
        tokens=counted if counting else None,
        counted=counted,
        stage=assign_stages(units, planned).astype(np.int16),
        available=available,
        available_exact=exact,
        record=record,
    )

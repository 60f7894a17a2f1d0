"""Which rows of each source a mixture takes: the evaluation n-grams to avoid, then each source's
rows in a seeded order, rendered, filtered, decontaminated and deduplicated until its plan (rows
or tokens, per stage) is met. The recipe around it is dataset.mixture.prepare_mixture.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import deque
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from dataset import sources
from dataset.blend import assign_stages, repeat_order, repeat_until
from dataset.decontam import EvalNgrams
from dataset.formats import FormatSpec
from dataset.mixture_config import MixtureConfig, SourceConfig
from dataset.pool import Runner, eval_batch, pool_process_batch, process_batch
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
    """One source's rows in output order (repeats included), with what the plan needs of them."""

    texts: list[str]
    hashes: list[int]
    tokens: np.ndarray | None  # tokens per row as trained (tokens mode), else None
    stage: np.ndarray  # stage index per row
    available: int  # unique units (rows or tokens) the source holds after filters, dedup, decontamination
    available_exact: bool  # the source was read to its end; else ``available`` is extrapolated
    record: dict[str, Any]


def select_source(
    source: SourceConfig,
    planned: list[int],
    config: MixtureConfig,
    runner: Runner,
    seen: set[int],
    cache_dir: str | None,
) -> Picked:
    """Pick one source's rows for its plan (units per stage, in stage order)."""
    where = f"{config.path.name}: source {source.name!r}"
    ds, files = sources.load(source, where, cache_dir)
    columns = sources.check_columns(ds, source, where)
    rng = np.random.default_rng(_source_seed(config.seed, source.name))
    counting = runner.tokenizer is not None
    needed = sum(planned)

    dropped = dict.fromkeys(("empty", *source.filters), 0)
    stats = {"decontaminated": 0, "duplicates": 0}
    texts: list[str] = []
    hashes: list[int] = []
    sizes: list[int] = []  # tokens per kept row (tokens mode)
    own: set[int] = set()
    read = got = 0  # rows read; units kept (rows, or tokens)
    in_flight: deque[np.ndarray] = deque()  # row indices of the batches handed out, in order

    def tasks() -> Iterator[tuple]:
        reader = sources.RowReader(ds, columns)
        for idx in sources.row_order(len(ds), rng):
            in_flight.append(idx)
            yield reader[idx.tolist()], source.format, source.filters

    def local(rows: dict[str, list], spec: FormatSpec, filters: dict) -> list:
        return process_batch(rows, spec, filters, runner.evalset, runner.tokenizer)

    def more() -> bool:
        """Hand out another batch unless those in flight are expected to meet the plan (at the
        units per row read so far, plus 10%): batches past the plan are work thrown away."""
        if read == 0:
            return True
        return got + sum(map(len, in_flight)) * got / read < needed * 1.1

    bar = tqdm(total=needed, desc=f"{source.name}"[:24], unit=config.unit[:-1], disable=None, leave=False)
    results = runner.map(pool_process_batch, local, tasks(), more)
    try:
        for batch in results:
            idx = in_flight.popleft()
            for j, (verdict, text, h, ntok) in enumerate(batch):
                if verdict.startswith("error"):
                    raise UserError(
                        f"{where} ({source.label}): {_row_at(ds, int(idx[j]))}: {verdict[7:]}; "
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
                    sizes.append(ntok)
                    got += ntok if counting else 1
                    if got >= needed:
                        break
            bar.update(min(got, needed) - bar.n)
            if got >= needed:
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
    uses = math.ceil(needed / got)
    if uses > source.max_repeats:
        total_key = "total_tokens" if counting else "total_samples"
        amount = f"{got} tokens in {kept} rows" if counting else f"{kept} rows"
        raise UserError(
            f"{where} ({source.label}) is short: {amount} available after filters, dedup and "
            f"decontamination, {needed} needed (share {source.ratio:g} x {config.total}); "
            f"max_repeats {source.max_repeats} allows {got * source.max_repeats}: set max_repeats: {uses} "
            f"or lower its share or {total_key}"
        )
    # Rows were drawn in runs of consecutive rows; shuffle so neighbours in the file do not
    # stay neighbours in the output. Then every row once, extra uses only if short.
    shuffle = rng.permutation(kept)
    texts, hashes = [texts[i] for i in shuffle], [hashes[i] for i in shuffle]
    if counting:
        token_sizes = np.asarray(sizes, dtype=np.int64)[shuffle]
        pick = repeat_until(token_sizes, needed, rng)
        units = token_sizes[pick]
    else:
        pick = repeat_order(kept, needed, rng)
        units = np.ones(len(pick), dtype=np.int64)
    unique = int(len(np.unique(pick)))
    exact = read == len(ds)
    available = got if exact else round(got * len(ds) / read)
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
        "selected": len(pick),
        "unique_selected": unique,
        "max_repeats": source.max_repeats,
        "repeat_factor": round(len(pick) / unique, 6),
        "max_uses_per_row": int(np.bincount(pick).max()),
    }
    seen.update(hashes)
    return Picked(
        texts=[texts[i] for i in pick],
        hashes=[hashes[i] for i in pick],
        tokens=units if counting else None,
        stage=assign_stages(units, planned),
        available=available,
        available_exact=exact,
        record=record,
    )

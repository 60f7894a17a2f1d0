"""What a prepared mixture writes, and where: the JSONL files, the token stores beside them, the
manifest, all renamed into place together (:class:`dataset.io.AtomicFiles`, the manifest last).

``{name}_train.jsonl`` / ``{name}_val.jsonl``: the rows, in order (stage by stage, sources
interleaved by the deficit rule). With a tokenizer (``mix_by: tokens``, or a tokenizer given in
rows mode) also ``{name}_train.store/`` and ``{name}_val.store/``: the same documents as token
stores (:mod:`dataset.store`, written by its StoreWriter from the ids the workers computed when
they counted the rows: byte for byte the store :func:`dataset.store.build_store` makes of the
JSONL file, so the trainer uses it instead of tokenizing again). Each store's ``meta.json``
names its JSONL file and that file's sha256, which the trainer checks
(:func:`dataset.store.open_prepared_store`). Rows are read back from the spill
(:mod:`dataset.spill`) in output order, so memory stays flat.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from dataset.blend import interleave, interleave_sized, val_mask
from dataset.io import AtomicFiles
from dataset.selection import Layout, Picked
from dataset.spill import REF_DTYPE, SpillReader
from dataset.store import StoreWriter
from model.errors import UserError

_STORE_BATCH = 1024  # documents handed to the store writer at once


class PreparedPaths(NamedTuple):
    train: Path  # {output_dir}/{name}_train.jsonl
    val: Path  # {output_dir}/{name}_val.jsonl
    manifest: Path  # {output_dir}/{name}_manifest.json

    @property
    def train_store(self) -> Path:
        """{output_dir}/{name}_train.store: the train split's token store (with a tokenizer)."""
        return self.train.with_suffix(".store")

    @property
    def val_store(self) -> Path:
        return self.val.with_suffix(".store")


def prepared_paths(config: Any, output_dir: str | os.PathLike) -> PreparedPaths:
    """The one place that knows how a prepared mixture's files are named."""
    out = Path(output_dir)
    return PreparedPaths(
        out / f"{config.name}_train.jsonl",
        out / f"{config.name}_val.jsonl",
        out / f"{config.name}_manifest.json",
    )


def check_output_dir(out: Path, paths: PreparedPaths, overwrite: bool) -> None:
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
        for p in (*paths, paths.train_store, paths.val_store):
            if p.exists():
                raise UserError(f"{p} exists; pass --overwrite (overwrite=True) to replace it")


def layout(picks: list[Picked], n_stages: int, val_ratio: float) -> dict[str, Layout]:
    """Each source's rows per split and stage, in the source's order: ``{"train"|"val": [stage][source]}``."""
    out: dict[str, Layout] = {"train": [[] for _ in range(n_stages)], "val": [[] for _ in range(n_stages)]}
    for p in picks:
        val = val_mask(p.hashes, val_ratio)
        for k in range(n_stages):
            in_stage = p.stage == k
            out["train"][k].append(np.flatnonzero(in_stage & ~val))
            out["val"][k].append(np.flatnonzero(in_stage & val))
    return out


def ordered(picks: list[Picked], split: Layout) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Per stage ``k`` of one split: ``(k, the source of each row in file order, the rows' spill
    references in that order)``: sources interleaved by the deficit rule within a stage (of
    rows, or of tokens in tokens mode); each source's rows in its own order."""
    for k, per_source in enumerate(split):
        if picks[0].tokens is None:
            order = interleave([len(ix) for ix in per_source])
        else:
            order = interleave_sized([p.tokens[ix].tolist() for p, ix in zip(picks, per_source, strict=True)])  # type: ignore[index]
        refs = np.empty(len(order), dtype=REF_DTYPE)
        for s, ix in enumerate(per_source):
            refs[order == s] = picks[s].refs[ix]
        yield k, order, refs


def _write_split(
    f: Any,
    store: StoreWriter | None,
    reader: SpillReader,
    picks: list[Picked],
    split: Layout,
    names: list[str],
    stage_names: list[str] | None,
    bar: Any,
) -> dict[str, Any]:
    """One split's rows as JSON lines into ``f`` (and, with ``store``, as documents into it); the
    file's rows, bytes and sha256. A line is ``json.dumps({"text", "source"[, "stage"]},
    ensure_ascii=False)``, put together from the text's JSON string the worker spilled."""
    digest = hashlib.sha256()
    n = size = 0
    for k, order, refs in ordered(picks, split):
        stage = stage_names[k] if stage_names is not None else None
        extra = {"stage": stage} if stage is not None else {}
        tails = [
            json.dumps({"source": name} | extra, ensure_ascii=False)[1:].encode("utf-8") + b"\n"
            for name in names
        ]
        for at in range(0, len(order), _STORE_BATCH):
            ids: list[np.ndarray] = []
            sources = order[at : at + _STORE_BATCH].tolist()
            for s, (file, offset, nbytes, nids, _) in zip(
                sources, refs[at : at + _STORE_BATCH].tolist(), strict=True
            ):
                text, tokens = reader.read(file, offset, nbytes, nids)
                line = b'{"text": ' + text + b", " + tails[s]
                f.write(line)
                digest.update(line)
                size += len(line)
                ids.append(tokens)
            if store is not None:
                store.add_batch(
                    np.concatenate(ids),
                    [len(x) for x in ids],
                    [names[s] for s in sources],
                    [stage] * len(ids),
                )
            n += len(sources)
            bar.update(len(sources))
    return {"rows": n, "bytes": size, "sha256": digest.hexdigest()}


def versions() -> dict[str, str]:
    """The library versions a manifest records."""
    import sys

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


def write_outputs(
    paths: PreparedPaths,
    manifest: dict[str, Any],
    picks: list[Picked],
    split_layout: dict[str, Layout],
    names: list[str],
    stage_names: list[str] | None,
    spill_files: list[str],
    tok: Any,
) -> None:
    """Write the JSONL files, the token stores (with ``tok``) and the manifest (completed with
    ``outputs``), renamed into place together; a store an earlier run left where this run writes
    none is removed. Nothing is left behind on failure (UserError naming the folder on OSError)."""
    from dataset.tokenizer import token_dtype

    out = paths.manifest.parent
    writer = AtomicFiles()
    created = not out.exists()
    dtype = token_dtype(tok) if tok is not None else np.uint32
    total = {k: sum(len(ix) for stage in split_layout[k] for ix in stage) for k in ("train", "val")}
    try:
        out.mkdir(parents=True, exist_ok=True)
        outputs: dict[str, Any] = {}
        with SpillReader(spill_files, dtype) as reader:
            for key, path, store_path in (
                ("train", paths.train, paths.train_store),
                ("val", paths.val, paths.val_store),
            ):
                has_rows = total[key] > 0  # no store of an empty split (val_ratio 0)
                store = (
                    StoreWriter(writer.folder(store_path), tok, str(path))
                    if tok is not None and has_rows
                    else None
                )
                if store is None and store_path.exists():
                    writer.remove(store_path)
                bar = tqdm(total=total[key], desc=f"write {key}", unit="row", disable=None, leave=False)
                try:
                    with writer.open(path) as f:
                        info = _write_split(
                            f, store, reader, picks, split_layout[key], names, stage_names, bar
                        )
                finally:
                    bar.close()
                    if store is not None:
                        store.close()
                outputs[key] = {"file": path.name, **info}
                if store is not None:
                    meta = store.finish([{"path": path.name, "sha256": info["sha256"]}])
                    outputs[key]["store"] = {
                        "folder": store_path.name,
                        "tokens": meta["num_tokens"],
                        "documents": meta["num_docs"],
                        "tokenizer_sha256": meta["tokenizer_sha256"],
                    }
        manifest["outputs"] = outputs
        manifest["versions"] = versions()
        with writer.open(paths.manifest) as f:
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

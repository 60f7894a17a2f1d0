"""Mixture configs: YAML files under config/data/, validated on load.

A mixture names its sources, the share each contributes (of rows, or of tokens with
``mix_by: tokens``), optionally an ordered list of ``stages`` with their own shares, how
each source is rendered and filtered, and which evaluation sets no training row may overlap.
Every key is documented in config/README.md; an unknown key, a bad value or a missing
required field is a ``UserError`` naming the file and the field.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dataset.blend import allocate
from dataset.decontam import DEFAULT_NGRAM, DEFAULT_THRESHOLD
from dataset.filters import FILTERS, TextFilter
from dataset.formats import FORMAT_OPTIONS, FORMATS, FormatSpec, template_fields
from model.errors import UserError, check_keys

TOP_KEYS = {
    "name",
    "mix_by",
    "total_samples",
    "total_tokens",
    "tokenizer",
    "stages",
    "val_ratio",
    "seed",
    "dedup",
    "sources",
    "decontaminate",
    "decontaminate_ngram",
    "decontaminate_threshold",
}
DATA_KEYS = {"dataset", "data_files", "subset", "split", "revision", "format"} | FORMAT_OPTIONS
SOURCE_KEYS = DATA_KEYS | {"name", "ratio", "max_repeats", "filters", "streaming", "shuffle_buffer"}
DEFAULT_SHUFFLE_BUFFER = 10_000  # rows: a streamed source's seeded order comes from a buffer this large
STAGE_KEYS = {"name", "fraction", "ratios"}
MIX_BY = ("rows", "tokens")
LOCAL_EXTENSIONS = {
    ".jsonl": "json",
    ".json": "json",
    ".jsonl.gz": "json",
    ".json.gz": "json",
    ".parquet": "parquet",
    ".txt": "text",
}


def local_builder(path: str) -> str | None:
    """The reader of a local file by its name's ending (LOCAL_EXTENSIONS), or None."""
    name = path.lower()
    return next((b for ext, b in LOCAL_EXTENSIONS.items() if name.endswith(ext)), None)


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
RATIO_TOLERANCE = 1e-6


@dataclass(frozen=True, kw_only=True)
class DataRef:
    """Where rows come from and how each row becomes text."""

    dataset: str | None = None  # a Hugging Face dataset id
    data_files: tuple[str, ...] = ()  # absolute paths or globs of local files
    subset: str | None = None  # the HF config name
    split: str = "train"
    revision: str | None = None
    format: FormatSpec = field(default_factory=FormatSpec)

    @property
    def label(self) -> str:
        """A short description for messages: the dataset id, or the file names."""
        if self.dataset:
            return self.dataset + (f" ({self.subset})" if self.subset else "") + f" split {self.split}"
        names = [os.path.basename(p) for p in self.data_files]
        return ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")

    @property
    def builder(self) -> str | None:
        """The datasets builder for local files ("json", "parquet", "text"); None for a hub id."""
        if not self.data_files:
            return None
        return local_builder(self.data_files[0])


@dataclass(frozen=True, kw_only=True)
class SourceConfig(DataRef):
    """One source of a mixture."""

    name: str
    ratio: float  # share of the total (rows or tokens); with stages: sum of fraction x stage share
    max_repeats: int = 1
    filters: dict[str, dict[str, Any]] = field(default_factory=dict)
    streaming: bool = False  # read through datasets' streaming mode (dataset.stream)
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER  # rows in the shuffle buffer of a streamed source


@dataclass(frozen=True, kw_only=True)
class StageConfig:
    """One stage of a curriculum: a ``fraction`` of the mixture's total with its own shares."""

    name: str
    fraction: float  # of total_samples / total_tokens; the stages' fractions sum to 1
    ratios: dict[str, float]  # every source name (config order) -> share in [0, 1]; 0 = left out


@dataclass(frozen=True, kw_only=True)
class MixtureConfig:
    """A validated mixture config.

    ``mix_by`` "rows": ``total_samples`` is set, ``total_tokens`` None, shares count rows.
    ``mix_by`` "tokens": ``total_tokens`` is set, ``total_samples`` None, shares count tokens
    of ``tokenizer`` (a resolved folder path or a Hugging Face id; None: given at prepare time).
    ``stages`` is empty for a mixture without stages.
    """

    name: str
    path: Path
    sha256: str
    total_samples: int | None
    val_ratio: float
    seed: int
    dedup: bool
    sources: list[SourceConfig]
    decontaminate: list[DataRef]
    decontaminate_ngram: int = DEFAULT_NGRAM
    decontaminate_threshold: float = DEFAULT_THRESHOLD
    mix_by: str = "rows"
    total_tokens: int | None = None
    tokenizer: str | None = None
    stages: list[StageConfig] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def total(self) -> int:
        """What the plan splits: ``total_samples`` (rows) or ``total_tokens`` (tokens)."""
        return self.total_tokens if self.mix_by == "tokens" else self.total_samples  # type: ignore[return-value]

    @property
    def unit(self) -> str:
        return "tokens" if self.mix_by == "tokens" else "rows"


def default_name(path: Path) -> str:
    """``config/data/midtrain/phase1/default.yaml`` -> ``midtrain_phase1_default``; else the stem."""
    parts = path.resolve().with_suffix("").parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i - 1 : i + 1] == ("config", "data"):
            return "_".join(parts[i + 1 :])
    return path.stem


class _Checker:
    """Field checks that raise one-line UserErrors: ``<file>: <field>: <problem>``."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, problem: str) -> UserError:
        return UserError(f"{self.path}: {where}: {problem}" if where else f"{self.path}: {problem}")

    def keys(self, obj: Any, where: str, allowed: set[str], required: tuple[str, ...] = ()) -> dict:
        return check_keys(obj, allowed, where, file=self.path, required=required, hint="see config/README.md")

    def integer(self, value: Any, where: str, lo: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"expected an integer, got {value!r}")
        if lo is not None and value < lo:
            raise self.fail(where, f"must be >= {lo}, got {value}")
        return value

    def number(self, value: Any, where: str, lo: float, hi: float, lo_open=False, hi_open=False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(where, f"expected a number, got {value!r}")
        if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
            lo_s, hi_s = ("(" if lo_open else "[") + f"{lo}", f"{hi}" + (")" if hi_open else "]")
            raise self.fail(where, f"must be in {lo_s}, {hi_s}, got {value}")
        return float(value)

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(where, f"expected a non-empty string, got {value!r}")
        return value


def _resolve_files(value: Any, where: str, check: _Checker, base: Path) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise check.fail(where, "expected a path/glob or a list of them")
    out = []
    for i, item in enumerate(items):
        check.string(item, f"{where}[{i}]" if isinstance(value, list) else where)
        p = Path(os.path.expanduser(item))
        resolved = os.path.normpath(p if p.is_absolute() else base / p)
        if local_builder(resolved) is None:
            raise check.fail(where, f"{item!r}: unsupported file type (use {', '.join(LOCAL_EXTENSIONS)})")
        out.append(resolved)
    builders = {local_builder(p) for p in out}
    if len(builders) > 1:
        raise check.fail(where, "mixes file types; give each type its own source")
    return tuple(out)


def _data_ref(obj: dict, where: str, check: _Checker, base: Path, default_split: str) -> dict[str, Any]:
    """The DataRef fields of a source or eval-set entry."""
    has_ds, has_files = "dataset" in obj, "data_files" in obj
    if has_ds == has_files:
        raise check.fail(
            where, "give exactly one of dataset: (a Hugging Face id) or data_files: (local files)"
        )
    out: dict[str, Any] = {}
    if has_ds:
        out["dataset"] = check.string(obj["dataset"], f"{where}.dataset")
        for key in ("subset", "revision"):
            if obj.get(key) is not None:
                out[key] = str(check.string(obj[key], f"{where}.{key}"))
        out["split"] = check.string(obj.get("split", default_split), f"{where}.split")
    else:
        for key in ("subset", "split", "revision"):
            if key in obj:
                raise check.fail(f"{where}.{key}", "applies to dataset:, not to data_files: (remove it)")
        out["data_files"] = _resolve_files(obj["data_files"], f"{where}.data_files", check, base)
    fmt = obj.get("format", "text")
    if fmt not in FORMATS:
        raise check.fail(f"{where}.format", f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    info = FORMATS[fmt]
    for key in sorted(FORMAT_OPTIONS - info.options):
        if key in obj:
            owners = ", ".join(n for n, f in FORMATS.items() if key in f.options)
            raise check.fail(f"{where}.{key}", f"only applies to format {owners}, not {fmt}")
    for key in sorted(info.required - set(obj)):
        raise check.fail(f"{where}.{key}", f"format {fmt} needs {key}:")
    text_field = check.string(obj.get("text_field", "text"), f"{where}.text_field")
    template = None
    if fmt == "template":
        template = check.string(obj["template"], f"{where}.template")
        try:
            if not template_fields(template):
                raise ValueError("it reads no {field} of the row")
        except ValueError as e:
            raise check.fail(f"{where}.template", f"bad template: {e}") from None
    out["format"] = FormatSpec(format=fmt, text_field=text_field, template=template)
    return out


def _streaming(obj: dict, where: str, check: _Checker) -> dict[str, Any]:
    """A source's ``streaming`` (bool) and ``shuffle_buffer`` (rows >= 1, only with streaming)."""
    streaming = obj.get("streaming", False)
    if not isinstance(streaming, bool):
        raise check.fail(f"{where}.streaming", f"expected true or false, got {streaming!r}")
    if "shuffle_buffer" in obj and not streaming:
        raise check.fail(f"{where}.shuffle_buffer", "only applies with streaming: true (remove it)")
    buffer = check.integer(obj.get("shuffle_buffer", DEFAULT_SHUFFLE_BUFFER), f"{where}.shuffle_buffer", lo=1)
    return {"streaming": streaming, "shuffle_buffer": buffer}


def _filters(obj: Any, where: str, check: _Checker) -> dict[str, dict[str, Any]]:
    """A source's ``filters:``, checked against the filter table (dataset.filters.FILTERS)."""
    if obj is None:
        return {}
    check.keys(obj, where, set(FILTERS))
    out: dict[str, dict[str, Any]] = {}
    for name, params in obj.items():
        w, spec = f"{where}.{name}", FILTERS[name]
        check.keys(params, w, set(spec.params), required=tuple(sorted(spec.required)))
        values: dict[str, Any] = {}
        for key, kind in spec.params.items():
            value = params.get(key, kind[-1])
            if value is not None and kind[0] == "int":
                value = check.integer(value, f"{w}.{key}", lo=kind[1])
            elif value is not None:
                value = check.number(value, f"{w}.{key}", 0.0, 1.0)
            values[key] = value
        try:
            TextFilter({name: values})
        except ValueError as e:
            raise check.fail(w, str(e).removeprefix(f"{name} filter: ")) from None
        out[name] = values
    return out


def load_mixture_config(path: str | os.PathLike) -> MixtureConfig:
    """Read and validate a mixture YAML; relative ``data_files`` resolve against its folder."""
    path = Path(path)
    check = _Checker(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such mixture config (see config/data/ for examples)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read: {e}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise check.fail(where, f"invalid YAML: {problem}") from None
    check.keys(raw, "", TOP_KEYS, required=("sources",))
    base = path.resolve().parent

    name = raw.get("name", default_name(path))
    if not isinstance(name, str) or not _NAME.match(name):
        raise check.fail("name", f"{name!r}: use letters, digits, '_', '-', '.' (it names the output files)")
    mix_by = raw.get("mix_by", "rows")
    if mix_by not in MIX_BY:
        raise check.fail("mix_by", f"expected rows or tokens, got {mix_by!r}")
    total_samples, total_tokens, tokenizer = _totals(raw, mix_by, check, base)
    val_ratio = check.number(raw.get("val_ratio", 0.05), "val_ratio", 0.0, 1.0, hi_open=True)
    seed = check.integer(raw.get("seed", 42), "seed", lo=0)
    dedup = raw.get("dedup", True)
    if not isinstance(dedup, bool):
        raise check.fail("dedup", f"expected true or false, got {dedup!r}")
    ngram = check.integer(raw.get("decontaminate_ngram", DEFAULT_NGRAM), "decontaminate_ngram", lo=1)
    threshold = check.number(
        raw.get("decontaminate_threshold", DEFAULT_THRESHOLD),
        "decontaminate_threshold",
        0.0,
        1.0,
        hi_open=True,
    )

    staged = "stages" in raw
    if not isinstance(raw["sources"], list) or not raw["sources"]:
        raise check.fail("sources", "expected a non-empty list of sources")
    objs: list[dict[str, Any]] = []
    for i, obj in enumerate(raw["sources"]):
        where = f"sources[{i}]"
        check.keys(obj, where, SOURCE_KEYS, required=("name",) if staged else ("name", "ratio"))
        if staged and "ratio" in obj:
            raise check.fail(
                f"{where}.ratio", "with stages:, each stage's ratios: give the shares (remove this ratio)"
            )
        src_name = check.string(obj["name"], f"{where}.name")
        if not _NAME.match(src_name):
            raise check.fail(f"{where}.name", f"{src_name!r}: use letters, digits, '_', '-', '.'")
        if any(o["name"] == src_name for o in objs):
            raise check.fail(f"{where}.name", f"duplicate source name {src_name!r}")
        objs.append(obj)
    names = [o["name"] for o in objs]
    stages = _stages(raw["stages"], names, check) if staged else []
    if staged:
        shares = {n: sum(st.fraction * st.ratios[n] for st in stages) for n in names}
        for i, n in enumerate(names):
            if shares[n] == 0:
                raise check.fail(f"sources[{i}]", f"source {n!r} has share 0 in every stage; remove it")
    else:
        shares = {
            o["name"]: check.number(o["ratio"], f"sources[{i}].ratio", 0.0, 1.0, lo_open=True)
            for i, o in enumerate(objs)
        }
    sources = [
        SourceConfig(
            name=o["name"],
            ratio=shares[o["name"]],
            max_repeats=check.integer(o.get("max_repeats", 1), f"sources[{i}].max_repeats", lo=1),
            filters=_filters(o.get("filters"), f"sources[{i}].filters", check),
            **_streaming(o, f"sources[{i}]", check),
            **_data_ref(o, f"sources[{i}]", check, base, default_split="train"),
        )
        for i, o in enumerate(objs)
    ]
    if not staged:
        ratio_sum = sum(s.ratio for s in sources)
        if abs(ratio_sum - 1.0) > RATIO_TOLERANCE:
            listed = ", ".join(f"{s.name}={s.ratio:g}" for s in sources)
            raise check.fail(
                "sources", f"ratios sum to {ratio_sum:.6g}, not 1 ({listed}); fix the ratio: values"
            )
    total = total_tokens if mix_by == "tokens" else total_samples
    assert total is not None  # _totals gives the one mix_by asks for
    total_key = "total_tokens" if mix_by == "tokens" else "total_samples"
    for k, counts in enumerate(stage_plan(total, stages or None, [s.ratio for s in sources], names)):
        for s, c in zip(sources, counts, strict=True):
            share = stages[k].ratios[s.name] if stages else s.ratio
            if share > 0 and c < 1:
                at = f" in stage {stages[k].name!r}" if stages else ""
                raise check.fail(
                    total_key, f"{total} gives source {s.name!r} no {mix_by}{at}; raise {total_key}"
                )

    evals_raw = raw.get("decontaminate") or []
    if not isinstance(evals_raw, list):
        raise check.fail("decontaminate", "expected a list of evaluation sets")
    evals = []
    for i, obj in enumerate(evals_raw):
        where = f"decontaminate[{i}]"
        check.keys(obj, where, DATA_KEYS)
        evals.append(DataRef(**_data_ref(obj, where, check, base, default_split="test")))

    canonical: dict[str, Any] = {
        "config": raw,
        "data_files": {
            "sources": [list(s.data_files) for s in sources],
            "decontaminate": [list(e.data_files) for e in evals],
        },
    }
    if tokenizer is not None:  # only then: configs without one keep their sha256
        canonical["tokenizer"] = tokenizer
    blob = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return MixtureConfig(
        name=name,
        path=path.resolve(),
        sha256=hashlib.sha256(blob.encode("utf-8")).hexdigest(),
        total_samples=total_samples,
        val_ratio=val_ratio,
        seed=seed,
        dedup=dedup,
        sources=sources,
        decontaminate=evals,
        decontaminate_ngram=ngram,
        decontaminate_threshold=threshold,
        mix_by=mix_by,
        total_tokens=total_tokens,
        tokenizer=tokenizer,
        stages=stages,
        raw=raw,
    )


def _totals(raw: dict, mix_by: str, check: _Checker, base: Path) -> tuple[int | None, int | None, str | None]:
    """``(total_samples, total_tokens, tokenizer)``: exactly the keys ``mix_by`` asks for."""
    want, other = (
        ("total_tokens", "total_samples") if mix_by == "tokens" else ("total_samples", "total_tokens")
    )
    if other in raw:
        raise check.fail(
            other,
            f"does not apply with mix_by: {mix_by} (use {want}:, or set mix_by: {'rows' if other == 'total_samples' else 'tokens'})",
        )
    if want not in raw:
        raise check.fail(want, f"required key is missing (mix_by: {mix_by})")
    total = check.integer(raw[want], want, lo=1)
    tokenizer = None
    if "tokenizer" in raw:
        if mix_by != "tokens":
            raise check.fail(
                "tokenizer", "only mix_by: tokens counts tokens (remove it, or set mix_by: tokens)"
            )
        tokenizer = resolve_tokenizer_ref(check.string(raw["tokenizer"], "tokenizer"), base)
    return (None, total, tokenizer) if mix_by == "tokens" else (total, None, None)


def resolve_tokenizer_ref(value: str, base: Path) -> str:
    """A tokenizer reference: a folder path (relative ones resolve against ``base``, the config's
    folder, like ``data_files``) or a Hugging Face id. A value that starts with ``.``, ``/`` or
    ``~``, or names an existing folder relative to ``base``, is a path; anything else is an id."""
    p = Path(os.path.expanduser(value))
    resolved = os.path.normpath(p if p.is_absolute() else base / p)
    if value.startswith((".", "/", "~")) or os.path.isdir(resolved):
        return resolved
    return value


def _stages(obj: Any, names: list[str], check: _Checker) -> list[StageConfig]:
    if not isinstance(obj, list) or not obj:
        raise check.fail("stages", "expected a non-empty list of {name, fraction, ratios}")
    stages: list[StageConfig] = []
    for k, st in enumerate(obj):
        where = f"stages[{k}]"
        check.keys(st, where, STAGE_KEYS, required=tuple(sorted(STAGE_KEYS)))
        name = check.string(st["name"], f"{where}.name")
        if not _NAME.match(name):
            raise check.fail(f"{where}.name", f"{name!r}: use letters, digits, '_', '-', '.'")
        if any(s.name == name for s in stages):
            raise check.fail(f"{where}.name", f"duplicate stage name {name!r}")
        fraction = check.number(st["fraction"], f"{where}.fraction", 0.0, 1.0, lo_open=True)
        ratios = st["ratios"]
        if not isinstance(ratios, dict) or not ratios:
            raise check.fail(f"{where}.ratios", "expected a mapping {source name: share}")
        for src in ratios:
            if src not in names:
                raise check.fail(
                    f"{where}.ratios.{src}", f"no source named {src!r} (sources: {', '.join(names)})"
                )
        shares = {n: check.number(ratios.get(n, 0), f"{where}.ratios.{n}", 0.0, 1.0) for n in names}
        total = sum(shares.values())
        if abs(total - 1.0) > RATIO_TOLERANCE:
            listed = ", ".join(f"{n}={v:g}" for n, v in shares.items() if v)
            raise check.fail(f"{where}.ratios", f"shares sum to {total:.6g}, not 1 ({listed}); fix them")
        stages.append(StageConfig(name=name, fraction=fraction, ratios=shares))
    fsum = sum(s.fraction for s in stages)
    if abs(fsum - 1.0) > RATIO_TOLERANCE:
        listed = ", ".join(f"{s.name}={s.fraction:g}" for s in stages)
        raise check.fail("stages", f"fractions sum to {fsum:.6g}, not 1 ({listed}); fix the fraction: values")
    return stages


def stage_plan(
    total: int, stages: list[StageConfig] | None, ratios: list[float], names: list[str]
) -> list[list[int]]:
    """Planned units (rows or tokens) per stage and source, ``[stage][source]``, integers.

    Without stages one row: ``allocate(total, ratios)``. With stages, the stages' totals are
    ``allocate(total, fractions)`` and each stage's is split by its ratios the same way, so every
    number is an integer within 1 of its exact share and everything sums to ``total``.
    """
    if not stages:
        return [allocate(total, ratios)]
    per_stage = allocate(total, [s.fraction for s in stages])
    return [allocate(t, [s.ratios[n] for n in names]) for t, s in zip(per_stage, stages, strict=True)]

"""Evaluation data for eval_llm.py: validation documents, MMLU questions, HumanEval / MBPP problems.

A benchmark comes from the Hugging Face Hub by default (``datasets.load_dataset``) or from local
files. Local JSON files (.jsonl, .json, either gzipped) are read by :mod:`dataset.io`, the reader
the trainers, the tokenizer trainer and prepare_dataset use, so a file reads the same in every
tool and a bad one is refused with the same ``file:line: what; what to do``; parquet and CSV
files go through ``datasets``. A local file the user names must exist and be valid
(``UserError`` otherwise); a hub dataset that cannot be reached is skipped with one line that
says how to pass local files (``DataUnavailable``). Rows a loader leaves out (empty validation
texts, the non-test tasks of a full MBPP file) are counted in a log line, never dropped silently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataset.formats import mmlu_answer_letter
from dataset.io import is_json_file, iter_docs, iter_jsonl
from dataset.sources import first_line, quiet_datasets
from model.errors import UserError
from trainer.evaluation.codetasks import CodeTask, humaneval_tasks, mbpp_tasks

log = logging.getLogger(__name__)

# Hub defaults. MBPP's "full" config keeps the original split (test = task_ids 11-510).
MMLU_HUB = ("cais/mmlu", "all")
HUMANEVAL_HUB = ("openai/openai_humaneval", None)
MBPP_HUB = ("google-research-datasets/mbpp", "full")
MBPP_TEST_IDS = range(11, 511)  # the test split of the MBPP paper (README of google-research/mbpp)
MMLU_CHOICES = 4
_BUILDERS = {".parquet": "parquet", ".csv": "csv"}  # local files read by datasets (JSON: dataset.io)


class DataUnavailable(Exception):
    """A default (hub) data source could not be loaded; the metric is skipped with this message."""


# --------------------------------------------------------------------------- loading


def load_local_rows(path: str | Path, what: str) -> list[dict[str, Any]]:
    """Rows of one local file: JSON lines or a JSON array (.jsonl, .json, either + .gz) through
    :func:`dataset.io.iter_jsonl`, each row exactly as in the file; parquet or CSV through
    ``datasets`` (every row has every column, None where absent).

    Raises UserError: ``file:line: what; what to do`` from the JSON reader, one line naming the
    file for a missing, unknown, unreadable or empty parquet/CSV file.
    """
    return [row for _, row in load_local_located(path, what)]


def load_local_located(path: str | Path, what: str) -> list[tuple[str, dict[str, Any]]]:
    """:func:`load_local_rows` with where each row is: ``file:line`` for JSON files, ``file: row N``
    (1-based, after the header) for parquet and CSV; for error messages about one row."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} file not found")
    if is_json_file(path):
        return [(f"{path}:{lineno}", row) for lineno, row in iter_jsonl(path)]
    builder = _BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise UserError(f"{path}: unknown {what} file type; use .jsonl, .jsonl.gz, .json, .parquet or .csv")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: {what} file is empty; give a {builder} file with a header and rows")
    from datasets import load_dataset

    try:
        with quiet_datasets(progress=False):
            ds = load_dataset(builder, data_files=str(path), split="train")
    except Exception as e:  # noqa: BLE001 - a malformed file, mixed column types, ...: the user's file
        raise UserError(
            f"{path}: cannot read {what} rows ({first_line(e)}); check that it is a valid UTF-8 {builder} file"
        ) from None
    if len(ds) == 0:
        raise UserError(f"{path}: no {what} rows; give a {builder} file with rows")
    return [(f"{path}: row {i}", row) for i, row in enumerate(ds.to_list(), 1)]


def _is_connection_error(e: BaseException) -> bool:
    """datasets reports no network (or HF_HUB_OFFLINE=1) as ConnectionError "Couldn't reach ..."."""
    text = str(e).lower()
    return isinstance(e, (ConnectionError, TimeoutError)) or "couldn't reach" in text or "offline" in text


QUICK_FAILURE_S = 2.0  # a Hub failure this fast (offline mode, no DNS) costs nothing to retry


class Hub:
    """Loads default datasets from the Hugging Face Hub; ``enabled=False`` never tries.

    Each dataset's note names that dataset and its own error. After a slow connection failure
    (each attempt can take ~25 s of retries) the next datasets are not tried, and their notes say
    which dataset the Hub did not answer for; after a quick one (HF_HUB_OFFLINE=1, no DNS) each
    dataset is tried, since a cached copy may still load.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.unreachable: str | None = None  # "repo (error)" of the last slow connection failure

    def rows(self, repo: str, config: str | None, split: str, what: str, local_flag: str) -> list[dict]:
        return [row for _, row in self.located(repo, config, split, what, local_flag)]

    def located(
        self, repo: str, config: str | None, split: str, what: str, local_flag: str
    ) -> list[tuple[str, dict]]:
        """(``repo split row N``, row) per row of a Hub dataset; DataUnavailable (one line that
        names ``repo`` and says how to pass local files) when it cannot be loaded."""
        hint = f"pass {local_flag} to use local files"
        if not self.enabled:
            raise DataUnavailable(f"{what} skipped: no {local_flag} given and --no_hub is set")
        if self.unreachable:
            raise DataUnavailable(
                f"{what} skipped: {repo} was not tried, the Hugging Face Hub did not answer for "
                f"{self.unreachable}; {hint}"
            )
        import time

        from datasets import load_dataset

        t0 = time.monotonic()
        try:
            with quiet_datasets(progress=False):
                ds = load_dataset(repo, config, split=split)
        except Exception as e:  # noqa: BLE001 - no network, offline mode, a renamed dataset, ...
            if _is_connection_error(e):
                if time.monotonic() - t0 > QUICK_FAILURE_S:
                    self.unreachable = f"{repo} ({first_line(e)})"
                raise DataUnavailable(
                    f"{what} skipped: cannot reach {repo} on the Hugging Face Hub ({first_line(e)}); {hint}"
                ) from None
            raise DataUnavailable(
                f"{what} skipped: cannot load {repo} from the Hub ({first_line(e)}); {hint}"
            ) from None
        return [(f"{repo} {split} row {i}", row) for i, row in enumerate(ds.to_list(), 1)]


# --------------------------------------------------------------------------- validation documents


@dataclass(frozen=True)
class Doc:
    text: str
    source: str


def read_val_docs(path: str | Path) -> list[Doc]:
    """``{"text", "source"}`` rows of a val split (:func:`dataset.io.iter_docs`: source defaults to
    the file's stem); rows with an empty text are left out, and a warning counts them."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: validation file not found")
    rows = list(iter_docs(path))
    docs = [Doc(text, source) for text, source in rows if text]
    if not docs:
        raise UserError(f'{path}: no documents to evaluate: all {len(rows)} rows have an empty "text"')
    if len(docs) < len(rows):
        log.warning(
            f'{path}: {len(rows) - len(docs)} of {len(rows)} rows have an empty "text" and are not evaluated'
        )
    return docs


def val_path_from_config(config_path: str | Path, prepared_dir: str | Path) -> Path:
    """The prepared val split of a mixture config, checked like the trainers check it
    (dataset.mixture.find_prepared: the files exist and were prepared from this version of the
    config); otherwise a UserError that names the command which (re)makes them."""
    from dataset.mixture import find_prepared, load_mixture_config

    return find_prepared(load_mixture_config(config_path), prepared_dir).val


def limit_per_source(docs: list[Doc], limit: int | None) -> list[Doc]:
    """The first ``limit`` documents of each source (all of them without a limit)."""
    if limit is None:
        return docs
    seen: dict[str, int] = {}
    out = []
    for d in docs:
        if seen.get(d.source, 0) < limit:
            seen[d.source] = seen.get(d.source, 0) + 1
            out.append(d)
    return out


# --------------------------------------------------------------------------- MMLU


@dataclass(frozen=True)
class MCQuestion:
    question: str
    choices: tuple[str, ...]
    answer: int  # index into choices, 0 = A
    subject: str


def parse_mmlu_rows(rows: list[dict[str, Any]], where: str) -> list[MCQuestion]:
    """Validate MMLU rows (question, 4 choices, answer 0-3 or A-D, optional subject)."""
    out = []
    for i, row in enumerate(rows, 1):
        at = f"{where}: row {i}"
        for name in ("question", "choices", "answer"):
            if row.get(name) is None:
                raise UserError(
                    f"{at}: missing field '{name}' (MMLU rows need question, choices, answer, subject)"
                )
        choices = row["choices"]
        if isinstance(choices, str) or not isinstance(choices, (list, tuple)) or len(choices) != MMLU_CHOICES:
            raise UserError(f"{at}: 'choices' must be a list of {MMLU_CHOICES} strings, got {choices!r:.80}")
        try:
            letter = mmlu_answer_letter(row["answer"], MMLU_CHOICES)
        except ValueError as e:
            raise UserError(f"{at}: {e} (expected 0-3 or A-D)") from None
        subject = row.get("subject") or ""
        out.append(
            MCQuestion(
                str(row["question"]), tuple(str(c) for c in choices), "ABCD".index(letter), str(subject)
            )
        )
    if not out:
        raise UserError(f"{where}: no MMLU questions")
    return out


def _split_file(folder: Path, split: str) -> Path | None:
    for ext in (".jsonl", ".json", ".parquet", ".csv", ".jsonl.gz", ".json.gz"):
        if (folder / f"{split}{ext}").is_file():
            return folder / f"{split}{ext}"
    return None


def load_mmlu(
    path: str | None, dev_path: str | None, need_dev: bool, hub: Hub, require_dev: bool = True
) -> tuple[list[MCQuestion], list[MCQuestion] | None, str]:
    """(test questions, dev questions or None, description of where they came from).

    ``path`` is a folder holding ``test.jsonl`` (and ``dev.jsonl`` for k-shot examples), or a
    file of test questions with ``dev_path`` naming the dev file; None loads cais/mmlu. A dev
    split that ``need_dev`` asks for but that does not exist is an error if ``require_dev``,
    else None.
    """
    if path is None:
        repo, config = MMLU_HUB
        test = parse_mmlu_rows(hub.rows(repo, config, "test", "MMLU", "--mmlu_path"), f"{repo} test")
        dev = (
            parse_mmlu_rows(hub.rows(repo, config, "dev", "MMLU", "--mmlu_path"), f"{repo} dev")
            if need_dev
            else None
        )
        return test, dev, f"{repo} ({config}) from the Hub"
    p = Path(path)
    if p.is_dir():
        test_file = _split_file(p, "test")
        if test_file is None:
            raise UserError(f"{p}: no test.jsonl in this folder (MMLU folders hold test.jsonl and dev.jsonl)")
        if dev_path is None:
            found = _split_file(p, "dev")
            dev_path = str(found) if found else None
    else:
        test_file = p
    test = parse_mmlu_rows(load_local_rows(test_file, "MMLU"), str(test_file))
    dev = None
    if need_dev:
        if dev_path is None and not require_dev:
            return test, None, str(test_file)
        if dev_path is None:
            raise UserError(
                f"--shots asks for k-shot examples but there is no dev split beside {test_file}; "
                "pass --mmlu_dev FILE or use --shots 0"
            )
        dev = parse_mmlu_rows(load_local_rows(dev_path, "MMLU dev"), str(dev_path))
    return test, dev, str(test_file)


def spread(items: list, limit: int | None) -> list:
    """At most ``limit`` items spread evenly over the list (so an MMLU sample covers every subject)."""
    if limit is None or limit >= len(items):
        return items
    return [items[i * len(items) // limit] for i in range(limit)]


# --------------------------------------------------------------------------- code


@dataclass(frozen=True)
class CodeProblem:
    task_id: str
    prompt: str  # what the model is given
    solution: str  # the canonical solution scored after it


def _require(row: dict, names: tuple[str, ...], at: str) -> None:
    for name in names:
        if not isinstance(row.get(name), str):
            raise UserError(f"{at}: missing string field '{name}'")


def _locations(rows: list[dict], where: str, locs: list[str] | None) -> list[str]:
    return locs if locs is not None else [f"{where}: row {i}" for i in range(1, len(rows) + 1)]


def humaneval_problems(rows: list[dict], where: str, locs: list[str] | None = None) -> list[CodeProblem]:
    """HumanEval rows (prompt, canonical_solution) for the solution loss; ``locs`` names each
    row (``file:line``) in errors, else ``where: row N``."""
    out = []
    for i, (row, at) in enumerate(zip(rows, _locations(rows, where, locs), strict=True), 1):
        _require(row, ("prompt", "canonical_solution"), at)
        out.append(CodeProblem(str(row.get("task_id", i)), row["prompt"], row["canonical_solution"]))
    return out


def mbpp_prompt(text: str, tests: list[str]) -> str:
    """The MBPP task as an Alpaca instruction: the description and its asserts, then the response.

    The Alpaca layout is the one the mid-training code source is rendered with
    (dataset.formats.render_alpaca), so this measures the skill mid-training teaches.
    """
    from dataset.formats import ALPACA_TEMPLATE_NO_INPUT

    instruction = text.strip() + "\nYour code should pass these tests:\n" + "\n".join(tests)
    return ALPACA_TEMPLATE_NO_INPUT.format(instruction=instruction, output="")


def mbpp_test_split(rows: list[dict], locs: list[str], where: str) -> tuple[list[dict], list[str]]:
    """A full 974-task file cut to the test split (task_ids 11-510), said in a log line; a file of
    just the test split (or any other subset) stays as it is."""
    ids = {row.get("task_id") for row in rows}
    if not set(MBPP_TEST_IDS) < ids:
        return rows, locs
    keep = [i for i, row in enumerate(rows) if row.get("task_id") in MBPP_TEST_IDS]
    log.info(
        f"{where}: the full MBPP set ({len(rows)} rows); scoring its test split, task_ids "
        f"{MBPP_TEST_IDS.start}-{MBPP_TEST_IDS.stop - 1}: {len(keep)} rows"
    )
    return [rows[i] for i in keep], [locs[i] for i in keep]


def mbpp_problems(rows: list[dict], where: str, locs: list[str] | None = None) -> list[CodeProblem]:
    """MBPP rows (text, code, test_list) for the solution loss; a full 974-task file is cut to the
    test split (:func:`mbpp_test_split`)."""
    rows, locs = mbpp_test_split(rows, _locations(rows, where, locs), where)
    out = []
    for i, (row, at) in enumerate(zip(rows, locs, strict=True), 1):
        _require(row, ("text", "code"), at)
        tests = row.get("test_list") or []
        if not isinstance(tests, list):
            raise UserError(f"{at}: 'test_list' must be a list of strings")
        out.append(
            CodeProblem(
                str(row.get("task_id", i)), mbpp_prompt(row["text"], [str(t) for t in tests]), row["code"]
            )
        )
    return out


@dataclass
class CodeData:
    """The code sets found: problems for the solution loss, tasks to execute (when asked for),
    where each set came from, and a note per set that was skipped."""

    problems: dict[str, list[CodeProblem]] = field(default_factory=dict)
    tasks: dict[str, CodeTask] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def load_code(
    humaneval_path: str | None,
    mbpp_path: str | None,
    hub: Hub,
    execute: bool = False,
    only: list[str] | None = None,
) -> CodeData:
    """HumanEval and MBPP (or the sets named in ``only``) from local files or the Hub. With
    ``execute``, also the pass@1 tasks (:mod:`trainer.evaluation.codetasks`), which need more
    fields: a row without them is a UserError naming its file and line."""
    out = CodeData()
    for name, path, (repo, config), flag in (
        ("humaneval", humaneval_path, HUMANEVAL_HUB, "--humaneval_path"),
        ("mbpp", mbpp_path, MBPP_HUB, "--mbpp_path"),
    ):
        if only is not None and name not in only:
            continue
        try:
            located = (
                load_local_located(path, name) if path else hub.located(repo, config, "test", name, flag)
            )
        except DataUnavailable as e:
            out.notes.append(str(e))
            continue
        where = str(path) if path else repo
        rows, locs = [r for _, r in located], [loc for loc, _ in located]
        if name == "humaneval":
            out.problems[name] = humaneval_problems(rows, where, locs)
            if execute:
                out.tasks[name] = humaneval_tasks(rows, locs)
        else:
            rows, locs = mbpp_test_split(rows, locs, where)
            out.problems[name] = mbpp_problems(rows, where, locs)
            if execute:
                out.tasks[name] = mbpp_tasks(rows, locs)
        out.where[name] = where if path else f"{repo} from the Hub"
    return out

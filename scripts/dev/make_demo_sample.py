"""Cut the real demo sample in dataset/demo/ out of the public rows in ../shared/data.

    python scripts/dev/make_demo_sample.py            # rewrite dataset/demo/ from ../shared/data
    python scripts/dev/make_demo_sample.py --check    # exit 1 if the committed files differ

`make demo` trains on these files; nothing in them is generated or edited by hand. Every
choice is a fixed rule (a prefix, a task_id range, the first rows of each subject), so the
output is byte-identical for the same inputs, and the inputs are pinned by sha256 (the values
in ../shared/data/SOURCES.md): a different input file is an error, not a different sample.

| file | rows | what | used for |
|---|---|---|---|
| tinystories.jsonl | 2,000 | the first 2,000 TinyStories (V1 train) | pretraining, replay |
| mbpp_train.jsonl | 474 | MBPP task_ids 1-10 and 511-974 as Alpaca rows | code |
| mmlu_aux_train.jsonl | 1,218 | MMLU auxiliary_train (science_elementary/middle) | reasoning |
| mbpp_test.jsonl | 500 | MBPP test split, task_ids 11-510, rows as published | evaluation only |
| mmlu_test.jsonl | 570 | the first 10 MMLU test questions of each of 57 subjects | evaluation only |

Rows are copied as the JSON text of their source line, except mbpp_train.jsonl, whose rows are
rewritten in the Alpaca layout that eval_llm scores MBPP with (trainer/evaluation/data.py
mbpp_prompt): instruction = the task text, "Your code should pass these tests:" and its asserts;
output = the reference code, unchanged. SOURCES.md (origin, sha256 and licence of every file)
is written from the same facts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from dataset.io import AtomicFiles, file_sha256, iter_json_records
from model.errors import UserError
from trainer.cli import run
from trainer.paths import REPO_ROOT, shared_data

OUT_DIR = REPO_ROOT / "dataset" / "demo"
SHARED_DATA = shared_data()

N_STORIES = 2000
MMLU_TEST_PER_SUBJECT = 10
MBPP_TEST_IDS = range(11, 511)  # the MBPP paper's test split (google-research mbpp/README.md)
NL = b"\n"
MBPP_TESTS_HEADER = "\nYour code should pass these tests:\n"  # as trainer/evaluation/data.mbpp_prompt

# The input files and their sha256, as listed in ../shared/data/SOURCES.md.
INPUTS = {
    "tinystories": (
        "tinystories/train_v1_first2MiB.jsonl",
        "0b058aa611dbbe58e3bde677e4d0df99a1b6857e9ead9d2938a7b61ba4edb698",
    ),
    "mbpp": ("mbpp/mbpp.jsonl", "ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f"),
    "mmlu_aux": (
        "mmlu/auxiliary_train_subset.jsonl",
        "e5208aa29b25617e1cd7f40adbe60a8ed6116ca91d361ebae0250fb45fa9e4bc",
    ),
    "mmlu_test": ("mmlu/test.jsonl", "4e7d1086525e0c0c22bcbcf679d945ff62674a282bb3ebb74bf018dffe6deb56"),
}

TINYSTORIES = (
    "TinyStories (Eldan & Li 2023, arXiv:2305.07759; Hugging Face `roneneldan/TinyStories`). "
    "Licence: **CDLA-Sharing-1.0** (https://cdla.dev/sharing-1-0/), as on the dataset card; "
    "these rows are shared under the same agreement."
)
MBPP = (
    "MBPP, Mostly Basic Python Problems (Austin et al. 2021, arXiv:2108.07732; "
    "Hugging Face `google-research-datasets/mbpp`). Licence: **CC BY 4.0** "
    "(https://creativecommons.org/licenses/by/4.0/), as on the dataset card (the "
    "google-research repository it comes from is Apache-2.0 and its MBPP README names no licence)."
)
MMLU = (
    "MMLU, Measuring Massive Multitask Language Understanding (Hendrycks et al. 2021, "
    "arXiv:2009.03300; github.com/hendrycks/test, Hugging Face `cais/mmlu`). Licence: **MIT**, "
    "notice below."
)
MIT_NOTICE = """\
MIT License

Copyright (c) 2020 Dan Hendrycks

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


class Part(NamedTuple):
    """One output file: how it is cut from one input, and what SOURCES.md says about it."""

    name: str
    input: str  # a key of INPUTS
    use: str  # "training" or "evaluation only"
    select: Callable[[Iterator[tuple[str, dict]]], Iterator[str]]  # (JSON text, row) -> output lines
    rule: str
    origin: str
    licence: str


def _first_stories(records):
    for i, (text, _) in enumerate(records):
        if i == N_STORIES:
            return
        yield text


def mbpp_alpaca(row: dict) -> dict:
    """An MBPP row as the Alpaca row whose rendering is eval_llm's MBPP prompt plus the reference code."""
    instruction = row["text"].strip() + MBPP_TESTS_HEADER + "\n".join(row["test_list"])
    return {"task_id": row["task_id"], "instruction": instruction, "input": "", "output": row["code"]}


def _mbpp_train(records):
    for _, row in records:
        if row["task_id"] not in MBPP_TEST_IDS:
            yield json.dumps(mbpp_alpaca(row), ensure_ascii=False)


def _mbpp_test(records):
    for text, row in records:
        if row["task_id"] in MBPP_TEST_IDS:
            yield text


def _all_rows(records):
    for text, _ in records:
        yield text


def _first_per_subject(records):
    seen: dict[str, int] = {}
    for text, row in records:
        seen[row["subject"]] = seen.get(row["subject"], 0) + 1
        if seen[row["subject"]] <= MMLU_TEST_PER_SUBJECT:
            yield text


PARTS = (
    Part(
        "tinystories.jsonl", "tinystories", "training (pretraining; replay in mid-training)", _first_stories,
        f'the first {N_STORIES:,} rows, `{{"text"}}`, copied line for line',
        "rows 0-1,999 of TinyStories-train.txt (V1, the HF `train` split) via the 2 MiB prefix in "
        "`gusjengis/toy-RNN` commit e4c7ff8bba4ff7989e69a3a816ebe4b14813b41e, `data/tinystories_sample.txt` "
        "(blob 23ed82344f0eba3cd12b3f8486ebdb7f8fc97c41), split on `<|endoftext|>` and stripped",
        TINYSTORIES,
    ),
    Part(
        "mbpp_train.jsonl", "mbpp", "training (code)", _mbpp_train,
        "task_ids 1-10 and 511-974 (everything outside the test split), rewritten as Alpaca rows "
        '`{"task_id", "instruction", "input", "output"}`: instruction = `text` + "Your code should pass '
        'these tests:" + the asserts of `test_list`, one a line (the prompt eval_llm scores MBPP with), '
        "input empty, output = `code` unchanged (CRLF line ends included)",
        "`OckBench/OckBench` commit b72752a0ba5989d3c212675ec60d3eedcd838628, `data/mbpp.jsonl` "
        "(blob 96e2dc2f7dd95b7b87b38dc46e42cbed444251bb), the MBPP file as widely redistributed (equal to the "
        "copy in `muitiiifruckt/ASE` up to line ends; shared/data/SOURCES.md says how it compares with "
        "google-research HEAD)",
        MBPP,
    ),
    Part(
        "mmlu_aux_train.jsonl", "mmlu_aux", "training (reasoning)", _all_rows,
        'all 1,218 rows, `{"question", "choices", "answer", "subject", "split"}`, copied line for line',
        "MMLU `auxiliary_train` files science_elementary.csv (617 rows) and science_middle.csv (601) from "
        "`xetdata/LLM_Evolution` commit 60895c6a0471f7387e43956698caff94a035bc44, `data/mmlu/auxiliary_train/`, "
        "one JSON row per CSV row (answer letter -> index 0-3). MMLU's auxiliary_train collects questions from earlier "
        "multiple-choice sets (its other files are ARC, MCTest, OBQA, RACE and law questions); these two "
        "are distributed with MMLU under its licence",
        MMLU,
    ),
    Part(
        "mbpp_test.jsonl", "mbpp", "evaluation only (`eval_llm --mbpp_path`; decontaminated against)", _mbpp_test,
        "task_ids 11-510, the MBPP paper's test split, copied line for line (all six original fields)",
        "as mbpp_train.jsonl",
        MBPP,
    ),
    Part(
        "mmlu_test.jsonl", "mmlu_test", "evaluation only (`eval_llm --mmlu_path`; decontaminated against)",
        _first_per_subject,
        f"the first {MMLU_TEST_PER_SUBJECT} rows of each of the 57 subjects (in file order), copied line for line",
        "MMLU `test` CSVs from `stanford-cs336/assignment5-alignment` commit "
        "eb2c562e05802d3c9ee4c4ec2eec43b104d77e9e, `data/mmlu/test/`, one JSON row per CSV row "
        "(answer letter -> index 0-3), subjects in sorted order",
        MMLU,
    ),
)  # fmt: skip


def check_inputs(shared: Path) -> dict[str, Path]:
    """The input paths, each verified against its pinned sha256. UserError names a missing or changed file."""
    paths = {}
    for key, (rel, sha) in INPUTS.items():
        path = shared / rel
        if not path.is_file():
            raise UserError(
                f"{path}: not found; give --shared_dir, the folder described by shared/data/SOURCES.md"
            )
        got = file_sha256(path)
        if got != sha:
            raise UserError(
                f"{path}: sha256 {got}, expected {sha} (the file listed in shared/data/SOURCES.md); "
                "the demo sample is cut from that exact file"
            )
        paths[key] = path
    return paths


def build(shared: Path = SHARED_DATA) -> dict[str, bytes]:
    """Every file of dataset/demo/ as ``{file name: bytes}``, SOURCES.md included; deterministic.

    Raises UserError when an input is missing or differs from the pinned file.
    """
    paths = check_inputs(shared)
    files: dict[str, bytes] = {}
    for part in PARTS:
        records = ((text, row) for _, text, row in iter_json_records(paths[part.input]))
        files[part.name] = "".join(line + "\n" for line in part.select(records)).encode("utf-8")
    files["SOURCES.md"] = sources_md(files).encode("utf-8")
    return files


def sources_md(files: dict[str, bytes]) -> str:
    """dataset/demo/SOURCES.md: per file its rows, bytes, sha256, use, origin, rule and licence."""
    out = [
        "# dataset/demo: a small real sample for `make demo`",
        "",
        "Real rows from public datasets, cut out of `../shared/data` (its SOURCES.md tells how each",
        "file there was obtained) by `scripts/dev/make_demo_sample.py`, which writes this file too:",
        "",
        "    python scripts/dev/make_demo_sample.py           # rewrite dataset/demo/",
        "    python scripts/dev/make_demo_sample.py --check   # exit 1 if these files differ from its output",
        "",
        "Nothing here is generated or edited by hand. `config/data/pretrain/demo.yaml` pretrains on the",
        "stories; `config/data/demo.yaml` mid-trains on stories (replay), MBPP (code) and MMLU",
        "auxiliary_train (reasoning), decontaminated against the two evaluation-only files, which",
        "`make demo` scores before and after mid-training. Code Alpaca, used by the offline",
        "mid-training recipe, is CC BY-NC 4.0 and is deliberately **not** shipped here.",
        "",
        "| file | rows | bytes | sha256 | used for |",
        "|---|---|---|---|---|",
    ]
    for part in PARTS:
        blob = files[part.name]
        rows = blob.count(NL)
        out.append(
            f"| `{part.name}` | {rows:,} | {len(blob):,} | `{hashlib.sha256(blob).hexdigest()}` | {part.use} |"
        )
    for part in PARTS:
        rel, sha = INPUTS[part.input]
        out += [
            "",
            f"## {part.name}",
            "",
            f"- Dataset: {part.licence}",
            f"- Cut from: `shared/data/{rel}` (sha256 `{sha}`): {part.rule}.",
            f"- That file's origin: {part.origin}.",
        ]
    out += [
        "",
        "## Licence notices",
        "",
        "- TinyStories rows: Community Data License Agreement - Sharing, Version 1.0,",
        "  https://cdla.dev/sharing-1-0/. Redistributed unmodified under the same agreement.",
        "- MBPP rows: Creative Commons Attribution 4.0 International,",
        "  https://creativecommons.org/licenses/by/4.0/. Attribution: Austin, Odena, Nye, Bosma,",
        "  Michalewski, Dohan, Jiang, Cai, Terry, Le, Sutton, *Program Synthesis with Large Language",
        "  Models*, 2021. Changes: `mbpp_train.jsonl` puts each task's text and asserts into an",
        "  Alpaca instruction (above); `mbpp_test.jsonl` is unchanged.",
        "- MMLU rows (`mmlu_aux_train.jsonl`, `mmlu_test.jsonl`), from github.com/hendrycks/test:",
        "",
        *("    " + line if line else "" for line in MIT_NOTICE.splitlines()),
        "",
    ]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--shared_dir", default=str(SHARED_DATA), help="the shared data folder (default: ../shared/data)"
    )
    p.add_argument("--out_dir", default=str(OUT_DIR), help="where to write (default: dataset/demo/)")
    p.add_argument("--check", action="store_true", help="compare with the files on disk instead of writing")
    args = p.parse_args()
    files = build(Path(args.shared_dir))
    out = Path(args.out_dir)
    if args.check:
        stale = [
            name
            for name, blob in files.items()
            if not (out / name).is_file() or (out / name).read_bytes() != blob
        ]
        if stale:
            print(f"stale: {', '.join(stale)}; run python scripts/dev/make_demo_sample.py", file=sys.stderr)
            sys.exit(1)
        print(f"{out}: up to date ({len(files)} files)")
        return
    out.mkdir(parents=True, exist_ok=True)
    writer = AtomicFiles()
    try:
        for name, blob in files.items():
            with writer.open(out / name) as f:
                f.write(blob)
        writer.commit()
    except BaseException:
        writer.discard()
        raise
    for name, blob in files.items():
        print(f"{out / name}: {blob.count(NL):,} lines, {len(blob):,} bytes")


if __name__ == "__main__":
    run(main)

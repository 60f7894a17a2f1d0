"""GSM8K, HumanEval and MBPP as lm-evaluation-harness's own tasks define them, checked against the
installed harness itself (the ``eval`` extra): its task objects build the prompts and generation
settings from the real files in ../shared/data, its filters and metric score the answers, and on a
tiny export its ``--model hf`` generates what eval_llm generates (scripts/dev/bench_gsm8k_harness.py).
"""

from __future__ import annotations

import json

import pytest

from dataset.tokenizer import load_tokenizer
from tests.helpers import ONE_THREAD, load_script, run_script, shared_file
from tests.trainer.evaluation.support import export_checkpoint, lm_eval_or_skip, tiny_config
from trainer.evaluation import codetasks, gsm8k
from trainer.evaluation.data import Hub, load_code

bench = load_script("scripts/dev/bench_gsm8k_harness.py", "bench_gsm8k_harness")


@pytest.fixture(scope="module")
def harness_tasks(tmp_path_factory):
    """The harness's task objects for the three tasks over the local files, requests built for
    their first 12 documents (the GSM8K sampler seeded as simple_evaluate seeds it)."""
    lm_eval_or_skip()
    from lm_eval.tasks import TaskManager, get_task_dict

    tmp = tmp_path_factory.mktemp("tasks")
    he, mbpp = shared_file("humaneval", "HumanEval.jsonl.gz"), shared_file("mbpp", "mbpp.jsonl")
    files = {
        "gsm8k": {
            "train": str(shared_file("gsm8k", "train.jsonl")),
            "test": str(shared_file("gsm8k", "test.jsonl")),
        }
    }
    for name in ("humaneval", "mbpp"):
        (tmp / f"{name}.jsonl").write_text(bench._code_rows(name, he, mbpp))
        files[name] = {"test": str(tmp / f"{name}.jsonl")}
    names = {n: bench.task_yaml(n, tmp, f, None) for n, f in files.items()}
    tasks = get_task_dict(list(names.values()), TaskManager(include_path=str(tmp), include_defaults=False))
    out = {}
    for n, t in names.items():
        task = tasks[t]
        task.set_fewshot_seed(1234)
        task.build_all_requests(limit=12, rank=0, world_size=1)
        out[n] = sorted(task.instances, key=lambda i: i.doc_id)
    return out


@pytest.fixture(scope="module")
def ours():
    code = load_code(
        str(shared_file("humaneval", "HumanEval.jsonl.gz")),
        str(shared_file("mbpp", "mbpp.jsonl")),
        Hub(enabled=False),
        execute=True,
    )
    test, train, _ = gsm8k.load_gsm8k(str(shared_file("gsm8k", "test.jsonl")), None, 5, Hub(enabled=False))
    return {
        "gsm8k": (gsm8k.gsm8k_prompts(test[:12], train, 5), gsm8k.UNTIL, gsm8k.MAX_GEN),
        **{
            n: ([t.prompt for t in task.items[:12]], task.until, task.max_gen)
            for n, task in code.tasks.items()
        },
    }


@pytest.mark.parametrize("name", ["gsm8k", "humaneval", "mbpp"])
def test_prompts_and_generation_settings_are_the_harness_tasks(harness_tasks, ours, name):
    from lm_eval.models.huggingface import HFLM

    prompts, until, max_gen = ours[name]
    instances = harness_tasks[name]
    assert [i.args[0] for i in instances] == prompts
    kwargs = instances[0].args[1]
    assert tuple(kwargs["until"]) == until and not kwargs["do_sample"]
    default = HFLM.max_gen_toks.fget(None)  # the model's default cap (256) for tasks without one
    assert kwargs.get("max_gen_toks", default) == max_gen


def test_mbpp_examples_are_the_harness_and_the_dataset_rows():
    lm_eval_or_skip()
    theirs = bench.mbpp_fewshot_samples()
    assert [{k: v for k, v in s.items() if k != "is_fewshot"} for s in theirs] == list(codetasks.MBPP_FEWSHOT)
    with open(shared_file("mbpp", "mbpp.jsonl"), encoding="utf-8") as f:
        rows = {r["task_id"]: r for r in map(json.loads, f)}
    for s in codetasks.MBPP_FEWSHOT:
        assert {k: rows[s["task_id"]][k] for k in ("task_id", "text", "code", "test_list")} == s


ANSWERS = [
    "She has 16 - 3 - 4 = 9 eggs.\n#### 18",
    "The answer is $1,234.50.\n#### 1,234",
    "#### -7\n#### 8",
    "It costs 5 dollars. So 5.",
    "no number at all",
    "",
    "   ",
    "Total: 3,000 and then 2.5 and finally $40.",
    "#### 12.",
    "#### .",
]


def test_filters_and_exact_match_are_the_harness_own(ours):
    """Our strict-match / flexible-extract and exact match against the installed harness's RegexFilter
    and exact_match on awkward answers and the real references."""
    lm_eval_or_skip()
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    strict = RegexFilter(regex_pattern=gsm8k.STRICT.pattern, group_select=0)
    flexible = RegexFilter(regex_pattern=gsm8k.FLEXIBLE.pattern, group_select=-1)
    with open(shared_file("gsm8k", "test.jsonl"), encoding="utf-8") as f:
        refs = [json.loads(line)["answer"] for _, line in zip(range(40), f, strict=False)]
    answers = ANSWERS + refs
    for ours_re, group, theirs in ((gsm8k.STRICT, 0, strict), (gsm8k.FLEXIBLE, -1, flexible)):
        want = [r[0] for r in theirs.apply([[a] for a in answers], [{}] * len(answers))]
        got = [gsm8k.extract(a, ours_re, group) for a in answers]
        assert got == want
        for pred in got:
            for ref in refs[:10] + ["So 18.\n#### 18", "#### 1234"]:
                harness = exact_match_hf_evaluate(
                    [pred], [ref], regexes_to_ignore=list(gsm8k.IGNORE), ignore_case=True
                )["exact_match"]
                assert gsm8k.exact_match(pred, ref) == bool(harness), (pred, ref)
    # the references themselves are right answers by both filters
    scored = gsm8k.score(refs, [gsm8k.MathQuestion("q", r) for r in refs])
    assert scored["strict"]["correct"] == len(refs) == scored["flexible"]["correct"]


def test_generations_equal_the_harness_on_an_export(tokenizer_dir, tmp_path):
    """The bench script end to end on a tiny random model trained at 384 tokens (GSM8K prompts are
    cut to 128 tokens, 256 generated; HumanEval gets half the context, as the harness is told):
    our model and its export through transformers generate exactly what the harness's --model hf
    generates, and GSM8K's extracted answers and verdicts are the harness's."""
    lm_eval_or_skip()
    tok = load_tokenizer(tokenizer_dir)
    path, _ = export_checkpoint(tmp_path, tok, tiny_config(len(tok)), 384, seed=5)
    out = tmp_path / "bench.json"
    run_script(
        "scripts/dev/bench_gsm8k_harness.py",
        *("--weight", str(path), "--tasks", "gsm8k,humaneval,mbpp", "--limit", "2"),
        *("--batch_size", "2", "--harness_batch_size", "2", "--output", str(out)),
        env={**ONE_THREAD, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        timeout=900,
    )
    summary = json.loads(out.read_text())["summary"]
    assert {(r["task"], r["setting"]) for r in summary} == {
        (t, s) for t in ("gsm8k", "humaneval", "mbpp") for s in ("eval_llm --weight", "eval_llm --hf")
    }
    for r in summary:
        assert r["n"] == 2 and r["same_prompt"] == 2 and r["same_text"] == 2, r
        if r["task"] == "gsm8k":
            assert r["same_strict"] == r["same_flexible"] == r["same_verdict_strict"] == 2, r
        if r["task"] == "humaneval":
            assert r["max_new_tokens"] == 192  # the task's 1024 leave no room in 384: half
    generations = json.loads(out.read_text())["generations"]
    assert any(t.strip() for task in generations.values() for t in task["eval_llm --weight"])

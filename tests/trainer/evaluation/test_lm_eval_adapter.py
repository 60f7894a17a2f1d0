"""Any lm-evaluation-harness task through eval_llm's model: the adapter (trainer/evaluation/harness.py)
against the harness's own ``--model hf`` on the same model's export, offline, on local task YAMLs
over ../shared/data: a multiple-choice task (loglikelihood), a perplexity task
(loglikelihood_rolling, documents longer than the context) and GSM8K (generate_until)."""

from __future__ import annotations

import json

import pytest
import torch

from dataset.tokenizer import load_tokenizer
from tests.helpers import ONE_THREAD, run_script, shared_file
from tests.trainer.evaluation.support import export_checkpoint, lm_eval_or_skip, tiny_config
from trainer.evaluation.models import ModelSpec, load_eval_model

pytestmark = pytest.mark.usefixtures("one_thread")

CONTEXT = 320  # GSM8K's 256 new tokens leave 64 for the prompt; stories take several windows


def task_yamls(folder) -> list[str]:
    """Three local tasks; returns their names."""
    import lm_eval

    mmlu, stories = shared_file("mmlu", "dev.jsonl"), shared_file("tinystories", "validation_first1000.jsonl")
    gsm = {"train": str(shared_file("gsm8k", "train.jsonl")), "test": str(shared_file("gsm8k", "test.jsonl"))}
    original = f"{lm_eval.__path__[0]}/tasks/gsm8k/gsm8k.yaml"
    (folder / "local_mc.yaml").write_text(
        "task: local_mc\ndataset_path: json\ndataset_kwargs:\n"
        f"  data_files: {{test: {json.dumps(str(mmlu))}}}\n"
        "output_type: multiple_choice\ntest_split: test\n"
        'doc_to_text: "{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. {{choices[2]}}\\nD. {{choices[3]}}\\nAnswer:"\n'
        'doc_to_choice: ["A", "B", "C", "D"]\ndoc_to_target: answer\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    (folder / "local_ppl.yaml").write_text(
        "task: local_ppl\ndataset_path: json\ndataset_kwargs:\n"
        f"  data_files: {{test: {json.dumps(str(stories))}}}\n"
        "output_type: loglikelihood_rolling\ntest_split: test\n"
        'doc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n"
    )
    (folder / "local_gsm8k.yaml").write_text(
        f"include: {json.dumps(original)}\ntask: local_gsm8k\ntag: []\ndataset_path: json\n"
        f"dataset_name: null\ndataset_kwargs:\n  data_files: {json.dumps(gsm)}\n"
    )
    return ["local_mc", "local_ppl", "local_gsm8k"]


@pytest.fixture(scope="module")
def setup(tokenizer_dir, tmp_path_factory):
    lm_eval_or_skip()
    tmp = tmp_path_factory.mktemp("adapter")
    tok = load_tokenizer(tokenizer_dir)
    path, folder = export_checkpoint(tmp, tok, tiny_config(len(tok)), CONTEXT, seed=7)
    tasks_dir = tmp / "tasks"
    tasks_dir.mkdir()
    return path, folder, tasks_dir, task_yamls(tasks_dir)


def evaluate(model, tasks_dir, tasks, **kw):
    """simple_evaluate on the first 3 documents of each task, with every sample logged."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    return lm_eval.simple_evaluate(
        model=model,
        tasks=tasks,
        limit=3,
        batch_size=2,
        log_samples=True,
        bootstrap_iters=0,
        task_manager=tm,
        **kw,
    )


def test_adapter_equals_the_harness_own_model_on_every_request_type(setup):
    from trainer.evaluation.harness import make_lm

    path, folder, tasks_dir, tasks = setup
    em = load_eval_model(ModelSpec("weight", str(path)), "", None, "cpu", torch.float32, None)
    assert em.max_len == CONTEXT
    ours = evaluate(make_lm(em, batch_size=2), tasks_dir, tasks)
    theirs = evaluate(
        "hf", tasks_dir, tasks, model_args={"pretrained": str(folder), "dtype": "float32"}, device="cpu"
    )
    for task in tasks:
        a = sorted(ours["samples"][task], key=lambda s: (s["doc_id"], s.get("filter", "")))
        b = sorted(theirs["samples"][task], key=lambda s: (s["doc_id"], s.get("filter", "")))
        assert len(a) == len(b) > 0
        for x, y in zip(a, b, strict=True):
            assert x["arguments"] == y["arguments"]
            if task == "local_gsm8k":
                assert x["resps"] == y["resps"] and x["filtered_resps"] == y["filtered_resps"]
            elif task == "local_mc":
                for (ll_x, greedy_x), (ll_y, greedy_y) in zip(
                    [r[0] for r in x["resps"]], [r[0] for r in y["resps"]], strict=True
                ):
                    assert float(ll_x) == pytest.approx(float(ll_y), abs=1e-4) and greedy_x == greedy_y
            else:  # a sum over the windows of a document longer than the context
                assert float(x["resps"][0][0]) == pytest.approx(float(y["resps"][0][0]), rel=1e-5)
        for metric, value in theirs["results"][task].items():
            if isinstance(value, float) and "stderr" not in metric:
                assert ours["results"][task][metric] == pytest.approx(value, rel=1e-5), (task, metric)
    # the documents were longer than the context: several windows each
    stories = [s["doc"]["text"] for s in ours["samples"]["local_ppl"]]
    assert max(len(em.encode([t])[0]) for t in stories) > CONTEXT


def test_eval_llm_runs_harness_tasks_beside_its_own(setup, tmp_path):
    path, _, tasks_dir, _ = setup
    out = tmp_path / "r.json"
    proc = run_script(
        "eval_llm.py",
        *("--weight", str(path), "--no_lm", "--no_mmlu", "--no_code", "--no_gsm8k", "--no_samples"),
        *("--lm_eval_tasks", "local_mc,local_ppl", "--lm_eval_include", str(tasks_dir), "--limit", "3"),
        *("--output", str(out)),
        env={**ONE_THREAD, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    report = json.loads(out.read_text())
    (res,) = report["results"].values()
    tasks = res["lm_eval"]["tasks"]
    assert tasks["local_mc"]["n"] == 3 and 0 <= tasks["local_mc"]["acc"] <= 1
    assert tasks["local_ppl"]["word_perplexity"] > 1 and res["lm_eval"]["seconds"] > 0
    metrics = [r["metric"] for r in report["summary"]]
    assert "lm-eval local_mc acc" in metrics and "lm-eval local_ppl bits_per_byte" in metrics
    assert "lm-eval local_mc acc" in proc.stdout


def test_unknown_task_is_refused_in_one_line(setup):
    from model.errors import UserError
    from trainer.evaluation.harness import task_manager

    _, _, tasks_dir, _ = setup
    with pytest.raises(UserError) as e:
        task_manager(("local_mc", "no_such_task"), str(tasks_dir))
    assert str(e.value).startswith("--lm_eval_tasks: lm-evaluation-harness has no task no_such_task (nor ")

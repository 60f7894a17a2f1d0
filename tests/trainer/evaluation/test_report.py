"""The generation metrics in the reports: eval_llm's table cells and the ablation report's pooled
pass@1 / exact-match table, from an eval_llm JSON written the way eval_llm writes it."""

from __future__ import annotations

import json

from trainer.ablation.report import generation_counts, generation_table
from trainer.ablation.stats import wilson95
from trainer.evaluation.gsm8k import proportion
from trainer.evaluation.report import fmt_delta, fmt_value, summary_rows


def test_eval_table_shows_intervals_and_deltas_in_points():
    results = {
        "a": {"humaneval_pass@1": proportion(3, 20), "exec": {"humaneval": {}}},
        "b": {"humaneval_pass@1": proportion(7, 20), "exec": {"humaneval": {}}},
    }
    (row,) = summary_rows(results, ["a", "b"])
    assert row["metric"] == "humaneval pass@1" and row["better"] == "higher"
    _, lo, hi = wilson95(3, 20)
    assert fmt_value(row, "a") == f"15.00% [{lo * 100:.1f}, {hi * 100:.1f}]"
    assert fmt_delta(row, "a", "b") == "+20.00 pp better"


def test_ablation_report_pools_generation_metrics_over_seeds(tmp_path):
    report = {
        "results": {
            "pretrain_64": {
                "humaneval_pass@1": proportion(0, 164),
                "gsm8k_exact_match_strict": proportion(1, 50),
            },
            "v_s1_64": {
                "humaneval_pass@1": proportion(2, 164),
                "gsm8k_exact_match_strict": proportion(3, 50),
            },
            "v_s2_64": {
                "humaneval_pass@1": proportion(4, 164),
                "gsm8k_exact_match_strict": proportion(5, 50),
            },
            "other_64": {"mmlu": {}},
        }
    }
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(report))
    second = tmp_path / "generation.json"  # a second eval_llm report (the study's generation pass)
    second.write_text(json.dumps({"results": {"v_s2_64": {"gsm8k_exact_match_flexible": proportion(6, 50)}}}))
    counts = generation_counts([path, tmp_path / "not_written.json", second])
    assert counts["v_s2_64"] == {
        "humaneval_pass@1": (4, 164),
        "gsm8k_exact_match_strict": (5, 50),
        "gsm8k_exact_match_flexible": (6, 50),
    }
    assert "other_64" not in counts
    pooled = {"correct": 6, "total": 328, "wilson95": wilson95(6, 328)}
    pre = {"generation": {"humaneval_pass@1": {"correct": 0, "total": 164, "wilson95": wilson95(0, 164)}}}
    variants = {"v": {"label": "30% replay", "generation": {"humaneval_pass@1": pooled}}}
    lines = generation_table(pre, variants)
    assert lines[-4:-2] == ["| model | HumanEval pass@1 |", "|---|---|"]
    p, lo, hi = wilson95(6, 328)
    assert lines[-1] == f"| 30% replay | 6 / 328 = {100 * p:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] |"
    assert lines[-2].startswith("| pretrained | 0 / 164 = 0.0% [0.0, ")
    assert generation_table(pre, variants, "SmolLM2 (start)")[-2].startswith("| SmolLM2 (start) | 0 / 164")
    assert generation_table({"generation": {}}, {"v": {"label": "x", "generation": {}}}) == []

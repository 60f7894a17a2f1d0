"""eval_llm.py and trainer/evaluation.py: scoring checked against independent computations on real data."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from dataset.tokenizer import load_tokenizer
from model import MiniGPTForCausalLM, ModelConfig
from model.errors import UserError
from tests.helpers import ONE_THREAD, REPO, load_script, run_script, shared_file
from tests.trainer.evaluation.support import jsonl
from trainer.cli import run
from trainer.evaluation.data import (
    DataUnavailable,
    Doc,
    Hub,
    MCQuestion,
    mbpp_problems,
    parse_mmlu_rows,
    read_val_docs,
)
from trainer.evaluation.lm import code_loss, lm_per_source
from trainer.evaluation.mmlu import (
    accuracy_stats,
    letter_continuations,
    mmlu_eval,
)
from trainer.evaluation.models import EvalModel, MiniGPTEval

eval_llm = load_script("eval_llm.py", "eval_llm")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        initializer_range=0.1,  # peaky logits, so wrong positions or tokens would show
    )
    return MiniGPTForCausalLM(cfg).eval()


def evalmodel(model, tok, max_len=2048) -> MiniGPTEval:
    return MiniGPTEval(model, "tiny", "memory", tok, max_len, "cpu", torch.float32, {})


@pytest.fixture(scope="module")
def mmlu():
    """A few real test questions from several subjects, and the real dev split."""
    test = parse_mmlu_rows(jsonl(shared_file("mmlu", "test.jsonl")), "test")
    dev = parse_mmlu_rows(jsonl(shared_file("mmlu", "dev.jsonl")), "dev")
    short = [q for q in test if len(q.question) + sum(map(len, q.choices)) < 250]
    return short[:: len(short) // 12][:12], dev


# --------------------------------------------------------------------------- scoring paths


def test_prefix_cache_and_pruned_last_layer_match_model_forward(model, tok):
    em = evalmodel(model, tok)
    g = torch.Generator().manual_seed(1)
    prefix = tuple(torch.randint(3, len(tok), (11,), generator=g).tolist())
    rows = [torch.randint(3, len(tok), (n,), generator=g).tolist() for n in (6, 13, 2)]
    for pre in ((), prefix):
        for positions in ([[5], [12], [1]], [[0, 5], [7, 12], [1]], [list(range(len(r))) for r in rows]):
            got = em.logits_at(pre, rows, positions)
            for r, p, g_ in zip(rows, positions, got, strict=True):
                with torch.no_grad():
                    want = model(torch.tensor([list(pre) + r]))[0, len(pre) :][p]
                torch.testing.assert_close(g_, want, atol=1e-5, rtol=1e-5)


def test_bf16_scoring_equals_the_model_under_autocast(model, tok):
    """Pre-cast weights and the pruned last layer change nothing against plain autocast."""
    import copy

    em = MiniGPTEval(copy.deepcopy(model), "tiny", "memory", tok, 2048, "cpu", torch.bfloat16, {})
    ids = torch.randint(3, len(tok), (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = model(ids).float()
    got = em.logits_at((), ids.tolist(), [[39], [17]])
    torch.testing.assert_close(torch.cat(got), torch.stack([want[0, 39], want[1, 17]]), atol=2e-2, rtol=0)


class Oracle(EvalModel):
    """A planted model: it reads the question in its input and puts all its mass on the answer's
    letter tokens (or on the next letter's, with ``offset=1``)."""

    kind = "oracle"

    def __init__(self, questions: list[MCQuestion], offset: int, tok):
        super().__init__("oracle", "memory", tok, 4096, "cpu", torch.float32, {})
        self.questions, self.offset = questions, offset
        self.letters = letter_continuations(self, ["Answer:"], [""])[0]

    def logits_at(self, prefix, rows, positions):
        out = []
        for row, pos in zip(rows, positions, strict=True):
            text = self.tokenizer.decode(list(prefix) + list(row))
            # the question asked is the last one in the text (the k-shot examples come first)
            q = max(self.questions, key=lambda q: text.rfind(q.question.strip()))
            lg = torch.zeros(len(pos), len(self.tokenizer))
            for t in self.letters[(q.answer + self.offset) % 4]:
                lg[:, t] = 30.0
            out.append(lg)
        return out


@pytest.mark.parametrize("offset,expected", [(0, 1.0), (1, 0.0)])
def test_planted_model_scores_exactly(tok, mmlu, offset, expected):
    test, dev = mmlu
    r = mmlu_eval(Oracle(test, offset, tok), test, dev, 1, batch_size=5)
    assert r["acc"] == expected and r["macro_acc"] == expected and r["n"] == len(test)
    assert all(s["acc"] == expected for s in r["subjects"].values())
    assert sum(s["n"] for s in r["subjects"].values()) == len(test)


def test_accuracy_stats_standard_errors():
    r = accuracy_stats([True, True, False, False, True, False], ["a", "a", "a", "b", "b", "b"])
    assert r["acc"] == 0.5 and r["n"] == 6
    assert r["acc_se"] == pytest.approx(math.sqrt(0.25 / 5))
    assert r["subjects"] == {"a": {"acc": 2 / 3, "n": 3}, "b": {"acc": 1 / 3, "n": 3}}
    assert r["macro_acc"] == pytest.approx(0.5)
    se_s = math.sqrt((2 / 3) * (1 / 3) / 2)
    assert r["macro_acc_se"] == pytest.approx(math.sqrt(2 * se_s**2) / 2)


# --------------------------------------------------------------------------- language modelling, code


@pytest.fixture(scope="module")
def mixed_val(tmp_path_factory):
    """A val split mixing real TinyStories (replay) and Code Alpaca (code) documents."""
    path = tmp_path_factory.mktemp("val") / "mix_val.jsonl"
    stories = jsonl(shared_file("tinystories", "validation_first1000.jsonl"))[:6]
    code = jsonl(shared_file("code_instructions", "code_alpaca_2k.jsonl"))[:6]
    rows = []
    for s, c in zip(stories, code, strict=True):
        rows.append({"text": s["text"], "source": "tinystories"})
        rows.append({"text": f"{c['instruction']}\n{c['output']}", "source": "code"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("logit_rows", [None, 7], ids=["whole-rows", "rows-in-spans-of-7"])
def test_lm_per_source_matches_direct_computation(model, tok, mixed_val, monkeypatch, logit_rows):
    """Also with the logits budget cut to 7 positions (a long window of a big-vocabulary model is
    scored in spans of positions, each its own forward pass): the same numbers."""
    if logit_rows:
        monkeypatch.setattr("trainer.evaluation.lm.LOGITS_BUDGET", logit_rows * len(tok))
    docs = read_val_docs(mixed_val)
    res = lm_per_source(evalmodel(model, tok), docs, batch_size=3)
    assert set(res) == {"tinystories", "code", "all"}
    for source in ("tinystories", "code"):
        nll = text_nll = 0.0
        tokens = n_bytes = 0
        for d in (d for d in docs if d.source == source):
            ids = [tok.bos_token_id] + tok.encode(d.text, add_special_tokens=False) + [tok.eos_token_id]
            with torch.no_grad():
                losses = F.cross_entropy(
                    model(torch.tensor([ids[:-1]]))[0], torch.tensor(ids[1:]), reduction="none"
                )
            nll += losses.sum().item()
            text_nll += losses[:-1].sum().item()
            tokens += len(ids) - 1
            n_bytes += len(d.text.encode("utf-8"))
        r = res[source]
        assert r["tokens"] == tokens and r["bytes"] == n_bytes and r["docs"] == 6
        assert r["loss"] == pytest.approx(nll / tokens, rel=1e-5)
        assert r["ppl"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
        assert r["bpb"] == pytest.approx(text_nll / math.log(2) / n_bytes, rel=1e-5)
    assert res["all"]["tokens"] == res["code"]["tokens"] + res["tinystories"]["tokens"]


def test_long_documents_are_scored_in_windows_every_token_once(model, tok, mixed_val):
    docs = read_val_docs(mixed_val)
    full = lm_per_source(evalmodel(model, tok), docs, batch_size=4)
    short = lm_per_source(evalmodel(model, tok, max_len=32), docs, batch_size=4)
    for source in full:
        assert short[source]["tokens"] == full[source]["tokens"]
        assert short[source]["bytes"] == full[source]["bytes"]
        assert math.isfinite(short[source]["loss"])


def test_code_loss_scores_only_the_solution(model, tok):
    rows = jsonl(shared_file("humaneval", "HumanEval.jsonl.gz"))[:3]
    from trainer.evaluation.data import humaneval_problems

    problems = humaneval_problems(rows, "humaneval")
    r = code_loss(evalmodel(model, tok), problems, 2, "humaneval")
    expect = sum(
        len(tok.encode(p.prompt + p.solution, add_special_tokens=False))
        - len(tok.encode(p.prompt, add_special_tokens=False))
        for p in problems
    )
    assert r["tokens"] == expect and r["problems"] == 3
    assert r["bytes"] == sum(len(p.solution.encode()) for p in problems)


def test_mbpp_full_file_is_cut_to_the_test_split():
    problems = mbpp_problems(jsonl(shared_file("mbpp", "mbpp.jsonl")), "mbpp")
    assert len(problems) == 500 and problems[0].task_id == "11" and problems[-1].task_id == "510"
    assert "Your code should pass these tests:\nassert" in problems[0].prompt
    assert problems[0].prompt.endswith("### Response:\n")


# --------------------------------------------------------------------------- the script


def _pair(folder, pretrained):
    """Two checkpoints written by the real trainer: the tiny pretrain and a copy as "mid"."""
    shutil.copy(pretrained / "pretrain_64.pth", folder / "pretrain_64.pth")
    shutil.copy(pretrained / "pretrain_64.pth", folder / "mid_64.pth")
    return folder


def test_side_by_side_report(pretrained, tmp_path, mixed_val):
    out = tmp_path / "eval" / "report.json"
    proc = run_script(
        "eval_llm.py",
        "--save_dir",
        str(_pair(tmp_path, pretrained)),
        "--weight",
        "pretrain",
        "--weight",
        "mid_64",
        "--val_path",
        str(mixed_val),
        "--mmlu_path",
        str(shared_file("mmlu")),
        "--shots",
        "0,1",
        "--humaneval_path",
        str(shared_file("humaneval", "HumanEval.jsonl.gz")),
        "--mbpp_path",
        str(shared_file("mbpp", "mbpp.jsonl")),
        "--gsm8k_path",
        str(shared_file("gsm8k", "test.jsonl")),
        "--limit",
        "12",
        "--code_samples",
        "1",
        "--max_new_tokens",
        "8",
        "--output",
        str(out),
        env=ONE_THREAD,
    )
    assert "delta (mid_64 - pretrain_64)" in proc.stdout
    report = json.loads(out.read_text())
    assert [m["label"] for m in report["models"]] == ["pretrain_64", "mid_64"]
    a, b = report["results"]["pretrain_64"], report["results"]["mid_64"]
    assert set(a["lm"]) == {"tinystories", "code", "all"}
    assert set(a["mmlu"]) == {"0-shot", "1-shot"} and a["mmlu"]["0-shot"]["n"] == 12
    assert set(a["code"]) == {"humaneval", "mbpp"} and a["code"]["mbpp"]["problems"] == 12
    assert set(a["samples"]) == {"story", "code", "instruction", "question"} and len(a["code_samples"]) == 1
    # the same weights give the same numbers, whatever their name
    assert a["lm"] == b["lm"] and a["mmlu"]["1-shot"]["acc"] == b["mmlu"]["1-shot"]["acc"]
    # pass@1 and GSM8K exact match side by side, with 95% intervals (a 0.2M model: 0, shown as 0)
    for key in ("humaneval_pass@1", "mbpp_pass@1", "gsm8k_exact_match_strict", "gsm8k_exact_match_flexible"):
        assert a[key] == b[key] and a[key]["n"] == 12 and a[key]["value"] == a[key]["correct"] / 12
        lo, hi = a[key]["ci95"]
        assert lo <= a[key]["value"] <= hi and hi > 0.2  # 12 problems: a wide interval
    assert a["exec"]["humaneval"]["max_new_tokens"] == 8 and a["gsm8k"]["shots"] == 5
    assert sum(a["exec"]["mbpp"]["status"].values()) == 12 and a["gsm8k"]["questions_per_s"] > 0
    assert "--max_new_tokens 8 caps every generation" in " ".join(report["notes"])
    assert report["sandbox"]["timeout"] == 3.0 and "namespaces" in report["sandbox"]["isolation"]
    metrics = [r["metric"] for r in report["summary"]]
    assert (
        "val tinystories loss" in metrics and "MMLU 0-shot acc" in metrics and "mbpp solution loss" in metrics
    )
    assert {"humaneval pass@1", "mbpp pass@1", "GSM8K 5-shot EM strict", "GSM8K 5-shot EM flexible"} <= set(
        metrics
    )
    assert "humaneval pass@1" in proc.stdout and "GSM8K 5-shot EM strict" in proc.stdout
    md = out.with_suffix(".md").read_text()
    assert "| metric | pretrain_64 | mid_64 |" in md and "## MMLU 1-shot by subject" in md
    assert "## Generation (pass@1, GSM8K)" in md and "| mbpp pass@1 | mid_64 | 12 |" in md
    png = out.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(str(out.with_suffix(".png"))).shape[0] > 100


def test_demo_style_run_skips_missing_data_with_a_note(pretrained, tmp_path, mixed_val):
    """Only repo data (a val split and a small MMLU-format file) and no Hub: the code metrics,
    whose default is the Hub, are skipped with one line each and the run succeeds."""
    mmlu_file = _write(
        tmp_path / "reasoning_test.jsonl",
        [
            {
                "question": f"What is {i} + 2?",
                "choices": [str(i + 1), str(i + 2), str(i + 3), "0"],
                "answer": 1,
                "subject": "sums",
            }
            for i in range(6)
        ],
    )
    out = tmp_path / "demo.json"
    proc = run_script(
        "eval_llm.py",
        *("--save_dir", str(pretrained), "--weight", "pretrain", "--val_path", str(mixed_val)),
        *("--mmlu_path", str(mmlu_file), "--no_samples", "--output", str(out)),
        env={"HF_HUB_OFFLINE": "1", **ONE_THREAD},
    )
    report = json.loads(out.read_text())
    # the default --shots 0,5 falls back to 0-shot: the file has no dev split beside it
    assert list(report["results"]["pretrain_64"]["mmlu"]) == ["0-shot"]
    assert report["results"]["pretrain_64"]["mmlu"]["0-shot"]["n"] == 6
    assert "code" not in report["results"]["pretrain_64"]
    kshot, humaneval, mbpp, gsm8k = report["notes"]
    assert kshot.startswith("MMLU k-shot skipped: no dev split beside")
    # each Hub note names its own dataset and carries its own error (field report: the second
    # and third notes quoted the first dataset's "Couldn't reach 'openai/openai_humaneval'")
    for note, what, repo, flag in (
        (humaneval, "humaneval", "openai/openai_humaneval", "--humaneval_path"),
        (mbpp, "mbpp", "google-research-datasets/mbpp", "--mbpp_path"),
        (gsm8k, "GSM8K", "openai/gsm8k", "--gsm8k_path"),
    ):
        assert note.startswith(f"{what} skipped: cannot reach {repo} on the Hugging Face Hub ("), note
        assert note.endswith(f"); pass {flag} to use local files"), note
        others = {"openai/openai_humaneval", "google-research-datasets/mbpp", "openai/gsm8k"} - {repo}
        assert not any(o in note for o in others), note
        assert f"note: {note}" in proc.stdout
    assert "MMLU 0-shot acc" in proc.stdout


def test_hub_loader_reads_a_dataset_folder_through_the_same_call(tmp_path):
    """Hub.rows is load_dataset(repo, config, split): a local dataset folder takes the same path."""
    folder = tmp_path / "mmlu_like"
    folder.mkdir()
    shutil.copy(shared_file("mmlu", "dev.jsonl"), folder / "test.jsonl")
    rows = Hub().rows(str(folder), None, "test", "MMLU", "--mmlu_path")
    assert len(parse_mmlu_rows(rows, "folder")) == 285
    with pytest.raises(DataUnavailable, match="--no_hub"):
        Hub(enabled=False).rows("cais/mmlu", "all", "test", "MMLU", "--mmlu_path")


# --------------------------------------------------------------------------- bad input


def fails(capsys, argv) -> str:
    """Run eval_llm's main as the script does; return its one error line."""
    with pytest.raises(SystemExit) as e:
        run(lambda: eval_llm.main(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_what_needs_no_model_is_refused_before_any_model_is_loaded(pretrained, tmp_path, capsys):
    """Field report: --device cuda:0 without CUDA was refused only after the model had loaded (and
    its parity was proven). Flags, the device and the data files are checked first: with a model
    name that cannot load, the error is still the device's or the data file's."""
    err = fails(capsys, ["--weight", "nosuch", "--device", "cuda:99", "--no_hub"])
    assert "--device cuda:99" in err and "nosuch" not in err, err
    bad = _write(tmp_path / "gsm.jsonl", [{"question": "What is 1 + 1?"}])
    err = fails(capsys, ["--weight", "nosuch", "--gsm8k_path", str(bad), "--gsm8k_shots", "0", "--no_hub"])
    assert f"{bad}:1: field 'answer' must be a string" in err and "nosuch" not in err, err
    good = _write(tmp_path / "gsm_ok.jsonl", [{"question": "What is 1 + 1?", "answer": "#### 2"}])
    err = fails(capsys, ["--weight", "nosuch", "--gsm8k_path", str(good), "--no_hub"])
    assert f"no {tmp_path / 'train.jsonl'}; pass --gsm8k_train_path" in err, err


def test_code_selftest_runs_the_canonical_solutions(capsys):
    """--code_selftest needs no model: each set's own solutions through the sandbox, one line each
    (the full sets: scripts/dev/bench_eval.py --selftest)."""
    args = [
        "--code_selftest",
        "--humaneval_path",
        str(shared_file("humaneval", "HumanEval.jsonl.gz")),
        "--mbpp_path",
        str(shared_file("mbpp", "mbpp.jsonl")),
        "--limit",
        "6",
        "--no_hub",
    ]
    run(lambda: eval_llm.main(args))
    out = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in out if line.startswith(("humaneval:", "mbpp:"))] == [
        "humaneval: 6/6 canonical solutions pass",
        "mbpp: 6/6 canonical solutions pass",
    ]
    err = fails(capsys, ["--code_selftest", "--weight", "pretrain"])
    assert "--code_selftest runs the datasets' own solutions, no model" in err


def test_a_hub_note_after_a_slow_failure_names_its_own_dataset():
    """After a slow connection failure the next datasets are not tried: their notes name
    themselves and say which dataset the Hub did not answer for."""
    hub = Hub()
    hub.unreachable = "cais/mmlu (ConnectionError: Couldn't reach 'cais/mmlu' on the Hub)"
    with pytest.raises(DataUnavailable) as e:
        hub.located("openai/openai_humaneval", None, "test", "humaneval", "--humaneval_path")
    assert str(e.value) == (
        "humaneval skipped: openai/openai_humaneval was not tried, the Hugging Face Hub did not answer "
        "for cais/mmlu (ConnectionError: Couldn't reach 'cais/mmlu' on the Hub); pass --humaneval_path "
        "to use local files"
    )


def test_scoring_is_float32_unless_asked():
    """bf16 flips near-tie MMLU answers of small models (scripts/dev/bench_mmlu_harness.py counts them),
    so eval_llm scores in fp32 unless --dtype says otherwise."""
    assert eval_llm.parse_args(["--weight", "x"]).dtype == "float32"
    assert eval_llm.parse_args(["--weight", "x", "--dtype", "bfloat16"]).dtype == "bfloat16"


def test_bad_inputs_give_one_line(pretrained, tmp_path, capsys):
    d = tmp_path
    base = ["--save_dir", str(pretrained), "--no_hub", "--no_samples"]
    err = fails(capsys, [*base, "--weight", "nosuch"])
    assert "--weight nosuch: no checkpoint" in err and "pretrain_64.pth" in err
    (d / "corrupt_64.pth").write_bytes(b"PK\x03\x04 not really a zip")
    assert "not a readable checkpoint" in fails(capsys, ["--save_dir", str(d), "--weight", "corrupt"])
    torch.save({"state_dict": {"w": torch.zeros(2)}}, d / "foreign_64.pth")
    assert "not a miniGPT checkpoint" in fails(capsys, ["--save_dir", str(d), "--weight", "foreign"])

    good = {"question": "Q?", "choices": ["a", "b", "c", "d"], "answer": 0, "subject": "s"}
    for row, msg in (
        ({k: v for k, v in good.items() if k != "choices"}, "missing field 'choices'"),
        ({**good, "answer": 4}, "outside 0..3"),
        ({**good, "answer": "E"}, "not one of A, B, C, D"),
        ({**good, "choices": ["a", "b"]}, "list of 4 strings"),
    ):
        f = d / "bad_mmlu.jsonl"
        f.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
        err = fails(capsys, [*base, "--weight", "pretrain", "--mmlu_path", str(f), "--shots", "0"])
        assert msg in err and "row 2" in err, err
    f.write_text(json.dumps(good) + "\n")
    err = fails(capsys, [*base, "--weight", "pretrain", "--mmlu_path", str(f), "--shots", "0,5"])
    assert "no dev split" in err and "--mmlu_dev" in err
    (d / "empty.jsonl").write_text("")
    err = fails(capsys, [*base, "--weight", "pretrain", "--val_path", str(d / "empty.jsonl")])
    assert "empty.jsonl: no rows" in err, err
    assert "not found" in fails(
        capsys, [*base, "--weight", "pretrain", "--val_path", str(d / "missing.jsonl")]
    )
    assert "--shots" in fails(capsys, [*base, "--weight", "pretrain", "--shots", "zero"])
    assert "no config.json" in fails(capsys, [*base, "--hf_path", str(d)])
    assert "at least one model" in fails(capsys, base)


def test_missing_prepared_split_names_the_command(pretrained, tmp_path, capsys):
    err = fails(
        capsys,
        [
            "--save_dir",
            str(pretrained),
            "--weight",
            "pretrain",
            "--data_config",
            str(REPO / "config/data/demo.yaml"),
            "--prepared_dir",
            str(tmp_path),
        ],
    )
    assert (
        f"python scripts/prepare_dataset.py --config {REPO / 'config/data/demo.yaml'} --output_dir {tmp_path}"
        in err
    )


def test_data_config_reads_its_prepared_val_split(tmp_path):
    from dataset.manifest import MANIFEST_VERSION
    from dataset.mixture import load_mixture_config
    from trainer.evaluation.data import val_path_from_config

    config = REPO / "config/data/demo.yaml"
    mix = load_mixture_config(config)
    val = _write(tmp_path / f"{mix.name}_val.jsonl", [{"text": "a story", "source": "stories"}])
    _write(tmp_path / f"{mix.name}_train.jsonl", [{"text": "another story", "source": "stories"}])
    manifest = tmp_path / f"{mix.name}_manifest.json"
    version = {"manifest_version": MANIFEST_VERSION}
    manifest.write_text(json.dumps({"config_sha256": mix.sha256, **version}))
    assert val_path_from_config(config, tmp_path) == val
    # the same check as the trainers': a split prepared from another version of the config is refused
    manifest.write_text(json.dumps({"config_sha256": "0" * 64, **version}))
    with pytest.raises(UserError, match="prepared from a different version"):
        val_path_from_config(config, tmp_path)


def test_unknown_weight_as_a_real_process(pretrained):
    proc = run_script("eval_llm.py", "--save_dir", str(pretrained), "--weight", "nosuch", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "pretrain_64.pth" in proc.stderr


def test_unreadable_data_is_a_user_error(tmp_path):
    f = tmp_path / "broken.jsonl"
    f.write_text('{"question": "a"\n')
    with pytest.raises(UserError, match=r"broken.jsonl:1: malformed JSON .*; fix or remove that line"):
        from trainer.evaluation.data import load_local_rows

        load_local_rows(f, "MMLU")
    assert read_val_docs(_write(tmp_path / "v.jsonl", [{"text": "hi"}])) == [Doc("hi", "v")]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path

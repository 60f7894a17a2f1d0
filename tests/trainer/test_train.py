import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from model import MiniGPTForCausalLM, ModelConfig
from model.errors import UserError
from tests.helpers import ONE_THREAD, TINY_MODEL, run_script, shared_file, torchrun
from trainer import runtime, throughput
from trainer.checkpoint import atomic_torch_save, load_model, weights_state
from trainer.paths import REPO_ROOT

STORIES = "tinystories/train_v1_first2MiB.jsonl"


def metrics(folder, stem="pretrain_64"):
    return [json.loads(line) for line in (folder / f"{stem}_metrics.jsonl").read_text().splitlines()]


def pretrain_args(tokenizer_dir, out, *extra):
    return [
        "trainer/train_pretrain.py",
        "--data_path",
        str(shared_file(*STORIES.split("/"))),
        "--tokenizer_path",
        str(tokenizer_dir),
        *TINY_MODEL,
        "--max_seq_len",
        "64",
        "--batch_size",
        "8",
        "--save_dir",
        str(out),
        "--checkpoint_dir",
        str(out),
        "--cache_dir",
        str(out / "cache"),
        "--log_interval",
        "1",
        "--eval_interval",
        "0",
        *extra,
    ]


def test_tiny_pretrain_lowers_val_loss(pretrained):
    evals = [r for r in metrics(pretrained) if r["kind"] == "eval"]
    assert [e["step"] for e in evals] == [0, 30, 60]
    assert evals[-1]["loss_all"] < evals[0]["loss_all"] - 1.0, evals
    train = [r for r in metrics(pretrained) if r["kind"] == "train"]
    assert all(r["tokens_per_sec"] > 0 and 0 < r["mfu"] < 1 for r in train)
    # the summary names the precision and the peak every MFU above was taken against
    summary = [r for r in metrics(pretrained) if r["kind"] == "summary"][-1]
    if auto_dtype_here() is not None:
        assert summary["dtype"] == auto_dtype_here()
    cfg = ModelConfig(**torch.load(pretrained / "pretrain_64.pth", weights_only=True)["model_config"])
    peak = summary["mfu_peak_tflops"] * 1e12
    for r in train:
        assert r["mfu"] == pytest.approx(r["tokens_per_sec"] * cfg.flops_per_token(128) / peak, rel=1e-3)
    assert (pretrained / "pretrain_64.pth").is_file() and (
        pretrained / "ckpt" / "pretrain_64_resume.pth"
    ).is_file()


def auto_dtype_here() -> str | None:
    """What --dtype auto must pick on this machine's CPU: bfloat16 only with bf16 matmul instructions,
    read from the kernel's list of CPU flags (/proc/cpuinfo: a source independent of torch's); None
    where there is no such file."""
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        return None
    flags = {
        f
        for line in info.read_text().splitlines()
        if line.startswith("flags")
        for f in line.split(":")[1].split()
    }
    return "bfloat16" if flags & {"avx512_bf16", "amx_bf16"} else "float32"


def test_dtype_auto_is_bf16_only_where_the_cpu_multiplies_bf16(monkeypatch):
    cpu = torch.device("cpu")
    # torch's private checks exist (a renamed one would otherwise read as "no bf16" everywhere)
    assert all(
        callable(getattr(torch.cpu, n, None)) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )
    here = auto_dtype_here()
    if here is None:
        pytest.skip("no /proc/cpuinfo to check torch's answer against")
    assert runtime.cpu_has_bf16_matmul() == (here == "bfloat16")
    assert runtime.resolve_dtype("auto", cpu) == runtime.DTYPES[here]
    note = runtime.precision_note("auto", runtime.resolve_dtype("auto", cpu), cpu)
    bf16_note = runtime.precision_note("bfloat16", torch.bfloat16, cpu)
    if auto_dtype_here() == "bfloat16":
        assert (note, bf16_note) == ("bfloat16 (--dtype auto)", "bfloat16")
    else:
        assert (
            note == "float32 (--dtype auto: this CPU has no bf16 matmul instructions (AVX-512 BF16 or AMX))"
        )
        assert "emulated" in bf16_note and "--dtype auto picks float32" in bf16_note
    assert runtime.precision_note("float32", torch.float32, cpu) == "float32"
    with pytest.raises(UserError, match="--dtype 'half': unknown dtype; use one of auto, bfloat16"):
        runtime.resolve_dtype("half", cpu)
    with pytest.raises(
        UserError, match="--dtype 'auto': unknown dtype; use one of bfloat16, float16, float32"
    ):
        runtime.resolve_dtype(
            "auto", cpu, auto=False
        )  # a stored dtype (export_hf) must not depend on the CPU
    # the other branches, whatever this machine is
    for has, want in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(runtime, "cpu_has_bf16_matmul", lambda has=has: has)
        assert runtime.resolve_dtype("auto", cpu) == want
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert runtime.resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert (
        runtime.precision_note("auto", torch.float16, torch.device("cuda"))
        == "float16 (--dtype auto: this GPU has no bf16)"
    )


def test_the_cpu_mfu_peak_is_the_matmul_of_the_runs_precision(monkeypatch):
    """A float32 run's MFU against the float32 matmul, a bf16 run's against the bf16 one."""
    asked: list[torch.dtype] = []

    def measured(device, dtype):
        asked.append(dtype)
        return 1e12

    monkeypatch.setattr(throughput, "measure_matmul_flops", measured)
    for dtype in (torch.float32, torch.bfloat16):
        got = throughput.peak_flops(torch.device("cpu"), dtype)
        assert got == (1e12, f"CPU, measured {str(dtype).removeprefix('torch.')} matmul")
    assert asked == [torch.float32, torch.bfloat16]


def test_checkpoint_is_self_describing_and_reloads_identically(pretrained, tmp_path):
    ckpt = torch.load(pretrained / "pretrain_64.pth", map_location="cpu", weights_only=True)
    assert ckpt["model_config"]["hidden_size"] == 64 and ckpt["meta"]["stage"] == "pretrain"
    if auto_dtype_here() is not None:
        assert ckpt["meta"]["dtype"] == auto_dtype_here()  # the default, --dtype auto, as resolved here
    model, tok, _ = load_model(pretrained / "pretrain_64.pth")
    x = torch.tensor([tok("Once upon a time")["input_ids"]])
    resumed, _, _ = load_model(pretrained / "ckpt" / "pretrain_64_resume.pth")
    with torch.no_grad():
        assert torch.equal(model(x), resumed(x))
    # save -> load round trip of a fresh model
    torch.manual_seed(1)
    fresh = MiniGPTForCausalLM(
        ModelConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    atomic_torch_save(weights_state(fresh, tok, {"stage": "test"}), tmp_path / "m.pth")
    again, tok2, _ = load_model(tmp_path / "m.pth")
    with torch.no_grad():
        assert torch.equal(fresh(x), again(x))
    assert tok2("Once upon a time")["input_ids"] == x[0].tolist()


def test_wandb_offline_writes_run_files(tokenizer_dir, tmp_path):
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    run_script(
        *pretrain_args(tokenizer_dir, tmp_path, "--max_steps", "3", "--use_wandb", "--wandb_project", "t"),
        env=env,
    )
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    records = list(runs[0].glob("run-*.wandb"))
    assert len(records) == 1
    data = records[0].read_bytes()  # the offline run's record log carries every logged key
    for key in (b"train/loss", b"train/lr", b"train/grad_norm", b"train/tokens_per_sec", b"train/mfu"):
        assert key in data, key


def test_ddp_gloo_matches_single_process(tokenizer_dir, tmp_path):
    """2 gloo ranks with batch 4 each == 1 process with batch 8: same rows, same mean loss."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    common = ["--max_steps", "4", "--dtype", "float32", "--save_interval", "0"]
    run_script(*pretrain_args(tokenizer_dir, single, *common))
    args = pretrain_args(tokenizer_dir, ddp, *common)
    args[args.index("--batch_size") + 1] = "4"
    run_script(*torchrun(2), *args, env={"OMP_NUM_THREADS": "1"})
    a = [r["loss"] for r in metrics(single) if r["kind"] == "train"]
    b = [r["loss"] for r in metrics(ddp) if r["kind"] == "train"]
    assert len(a) == len(b) == 4
    # fp32; differences come only from summation order across ranks
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4, (a, b)


def bad(*args, **kw):
    proc = run_script(*args, check=False, **kw)
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    return lines[-1]


def test_bad_inputs_give_one_line_and_exit_2(tokenizer_dir, tmp_path, pretrained):
    out = tmp_path / "out"
    args = pretrain_args(tokenizer_dir, out, "--max_steps", "2")
    i = args.index("--data_path") + 1

    missing = list(args)
    missing[i] = str(tmp_path / "nope.jsonl")
    assert "nope.jsonl: data file not found" in bad(*missing)

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    args_empty = list(args)
    args_empty[i] = str(empty)
    assert "empty" in bad(*args_empty)

    malformed = tmp_path / "bad.jsonl"
    malformed.write_text('{"text": "ok"}\n{"text": "unterminated\n')
    args_bad = list(args)
    args_bad[i] = str(malformed)
    assert "bad.jsonl:2" in bad(*args_bad)

    assert "--dtype 'int8'" in bad(*args, "--dtype", "int8")
    assert "--device" in bad(*args, "--device", "tpu")
    assert "--device cuda" in bad(*args, "--device", "cuda") if not torch.cuda.is_available() else True

    broken_tok = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, broken_tok)
    (broken_tok / "tokenizer.json").write_text("{not json")
    args_tok = list(args)
    args_tok[args_tok.index("--tokenizer_path") + 1] = str(broken_tok)
    assert "unreadable tokenizer" in bad(*args_tok)

    # a checkpoint whose weights do not fit the architecture it claims
    ckpt = torch.load(pretrained / "pretrain_64.pth", weights_only=True)
    ckpt["model_config"]["num_hidden_layers"] = 3
    torch.save(ckpt, tmp_path / "other_64.pth")
    assert "do not match the model config" in bad(*args, "--from_weight", str(tmp_path / "other_64.pth"))
    # an architecture flag that disagrees with the checkpoint
    assert "--hidden_size 128 does not match" in bad(
        *args, "--from_weight", str(pretrained / "pretrain_64.pth"), "--hidden_size", "128"
    )
    # a file that is not a checkpoint at all
    (tmp_path / "junk.pth").write_bytes(b"not a zip file")
    assert "not a readable checkpoint" in bad(*args, "--from_weight", str(tmp_path / "junk.pth"))
    # nothing half-written
    assert not (out / "pretrain_64.pth").exists()
    assert not [p for p in out.rglob("*.tmp")] if out.exists() else True


def test_paths_resolve_from_repo_root_not_cwd(tokenizer_dir, tmp_path):
    from trainer.paths import repo_path

    assert repo_path("out") == REPO_ROOT / "out"
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert repo_path("checkpoints") == REPO_ROOT / "checkpoints"
    finally:
        os.chdir(cwd)


def test_pretraining_takes_any_schedule_of_the_table(tokenizer_dir, tmp_path):
    """--lr_schedule is shared by both stages: pretraining with WSD runs the table's WSD, step for step."""
    from trainer.schedule import get_wsd_lr

    out = tmp_path / "wsd"
    flags = ["--max_steps", "6", "--lr_schedule", "wsd", "--decay_ratio", "0.5", "--warmup_ratio", "0.2"]
    proc = run_script(*pretrain_args(tokenizer_dir, out, *flags, "--learning_rate", "1e-3"))
    assert "Warmup-stable-decay: 1 warmup, 2 stable, 3 decay steps out of 6" in proc.stdout
    lrs = [r["lr"] for r in metrics(out) if r["kind"] == "train"]
    assert lrs == [get_wsd_lr(s, 6, 1e-3, 0.2, 0.5) for s in range(6)]


def test_the_fused_loss_trains_as_the_plain_loss(tokenizer_dir, tmp_path):
    """20 fp32 steps with the fused chunked LM head + loss (the default) and with logits +
    F.cross_entropy: the same losses, gradient norms and validation losses within 1e-5."""
    runs = {}
    for loss in ("fused", "plain"):
        out = tmp_path / loss
        extra = ["--max_steps", "20", "--dtype", "float32", "--loss", loss, "--learning_rate", "3e-3"]
        extra += [
            "--val_path",
            str(shared_file("tinystories", "validation_first1000.jsonl")),
            "--eval_interval",
            "10",
        ]
        run_script(*pretrain_args(tokenizer_dir, out, *extra, "--eval_batches", "2"), env=ONE_THREAD)
        runs[loss] = metrics(out)
    for kind, keys in (("train", ("loss", "grad_norm")), ("eval", ("loss_all",))):
        a = [r[k] for r in runs["fused"] if r["kind"] == kind for k in keys]
        b = [r[k] for r in runs["plain"] if r["kind"] == kind for k in keys]
        assert len(a) == len(b) > 2
        assert a == pytest.approx(b, abs=1e-5, rel=1e-5), kind


@pytest.mark.slow
def test_compile_compiles_once_and_a_failed_compile_trains_eagerly(tokenizer_dir, tmp_path):
    """--use_compile on a run whose epoch ends on a short step (filler rows keep the shapes): one
    compilation, no recompiles (TORCH_LOGS=recompiles prints none), the compile time said, losses
    those of eager training (fp32, 1e-4). With a C++ compiler that fails, one warning line and the
    run goes on eagerly with the eager losses exactly."""
    data = tmp_path / "small.jsonl"
    with open(shared_file(*STORIES.split("/"))) as f:
        data.write_text("".join(next(f) for _ in range(60)))
    common = ["--max_seq_len", "64", "--batch_size", "8", "--dtype", "float32", "--epochs", "1"]

    def train(name: str, *extra: str, env: dict | None = None):
        out = tmp_path / name
        args = pretrain_args(tokenizer_dir, out, *common, *extra)
        args[args.index("--data_path") + 1] = str(data)
        proc = run_script(*args, env={**ONE_THREAD, **(env or {})})
        return proc, [r["loss"] for r in metrics(out) if r["kind"] == "train"]

    _, eager = train("eager", "--no_compile")
    proc, compiled = train("compiled", "--use_compile", env={"TORCH_LOGS": "recompiles,graph_breaks"})
    log = proc.stdout + proc.stderr
    assert "torch.compile: on (--use_compile)" in log and "torch.compile: the first step took" in log
    assert "Recompiling" not in log and "recompil" not in proc.stderr.lower(), proc.stderr[-2000:]
    # one graph break by design, at the fused loss (torch.compiler.disable); a check that reads a
    # tensor's value in the model (positions.max()) broke the graph there too
    breaks = [x.split("in user code at ")[-1] for x in proc.stderr.splitlines() if "Graph break" in x]
    assert breaks and all(b.startswith(str(REPO_ROOT / "model" / "loss.py")) for b in breaks), breaks
    assert len(compiled) == len(eager) >= 3
    assert compiled == pytest.approx(eager, abs=1e-4)
    proc, fallback = train("fallback", "--use_compile", env={"CXX": "/bin/false"})
    lines = [x for x in (proc.stdout + proc.stderr).splitlines() if "torch.compile failed" in x]
    assert len(lines) == 1 and lines[0].endswith("training eagerly instead"), lines
    assert fallback == eager


def test_a_resume_keeps_the_precision_the_run_resolved():
    """The resume state stores the resolved dtype; --dtype auto on the resume command (the same command
    line again) takes it, on whatever machine; another explicit dtype contradicts the run."""
    import argparse

    from trainer.config import restore_run_args

    saved = {"dtype": "bfloat16"}
    for given in (set(), {"dtype"}):
        out, _ = restore_run_args(argparse.Namespace(dtype="auto"), given, saved, 1, "run.pth")
        assert out.dtype == "bfloat16"
    with pytest.raises(UserError, match="--dtype float32 contradicts the run being resumed"):
        restore_run_args(argparse.Namespace(dtype="float32"), {"dtype"}, saved, 1, "run.pth")

"""make gpu-check: a clear line without a GPU, and every step on the CPU in --smoke mode."""

from __future__ import annotations

import re

import pytest
import torch

from tests.helpers import REPO, run_script


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so():
    proc = run_script("scripts/dev/gpu_check.py", env={"PYTHONPATH": str(REPO)}, check=False)
    assert proc.returncode == 2 and "no CUDA GPU on this machine" in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.long
def test_every_step_runs_in_smoke_mode(tmp_path):
    proc = run_script(
        "scripts/dev/gpu_check.py",
        "--smoke",
        "--out",
        str(tmp_path),
        env={"PYTHONPATH": str(REPO)},
        timeout=1200,
    )
    table = proc.stdout.split("step          result")[1]
    for step in (
        "bf16",
        "resume",
        "compile",
        "ddp",
        "fsdp",
        "eval/export",
        "throughput 125M",
        "documents",
        "vs Trainer",
    ):
        assert f"\n{step}" in table, step
    assert (
        "max loss difference after resume 0.0e+00 (bit-identical)" in table
    )  # CPU kernels are deterministic
    # step 9: both trainers trained the tiny model (the Trainer's accelerate comes with the dev extra)
    got = re.search(
        r"ours-eager \(default\) ([0-9]+) tokens/s \(([0-9.]+)x hf\).*; hf ([0-9]+) tokens/s", table
    )
    assert got, table
    ours, ratio, hf = int(got[1]), float(got[2]), int(got[3])
    assert ours > 0 and hf > 0 and ratio == pytest.approx(ours / hf, abs=0.01)
    assert "stories:" in table and "code:" in table and "reasoning:" in table  # validation per source

"""Throughput maths: model FLOPs utilisation (MFU) against a peak from a table or a measurement."""

from __future__ import annotations

import time

import torch

from trainer.runtime import dtype_name

# Dense bf16/fp16 tensor-core peaks (no sparsity), FLOP/s, from the vendors' data sheets.
GPU_PEAK_FLOPS = {
    "H200": 989.5e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989.5e12,
    "GH200": 989.5e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "A10G": 70e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,
    "T4": 65e12,
}


def gpu_peak_flops(name: str) -> float | None:
    """The table entry whose key appears in the device name (longest key first), or None."""
    for key in sorted(GPU_PEAK_FLOPS, key=len, reverse=True):
        if key.lower() in name.lower():
            return GPU_PEAK_FLOPS[key]
    return None


def measure_matmul_flops(
    device: torch.device, dtype: torch.dtype, n: int = 2048, seconds: float = 1.0, window: int = 4
) -> float:
    """Achieved FLOP/s of an n x n matmul in ``dtype``, the practical peak of this machine: the best
    of the windows of ``window`` matmuls that fit in ``seconds`` (after a warm-up), so that a
    moment of load from another process lowers one window, not the peak (a mean over the whole
    time would take the slowdown for the machine's peak and overstate every MFU against it)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    best, start = 0.0, time.perf_counter()
    while True:
        t0 = time.perf_counter()
        for _ in range(window):
            a @ b
        sync()
        now = time.perf_counter()
        best = max(best, 2 * n**3 * window / (now - t0))
        if now - start >= seconds:
            return best


def peak_flops(
    device: torch.device, dtype: torch.dtype, override_tflops: float | None = None
) -> tuple[float, str]:
    """(peak FLOP/s per device, where the number came from): ``override_tflops``, else on CUDA the data
    sheet's dense bf16 peak (a measured bf16 matmul for a GPU not in the table), on the CPU the best
    2048^3 matmul in ``dtype`` measured now."""
    if override_tflops:
        return override_tflops * 1e12, "--peak_tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak_flops(name)
        if peak is not None:
            return peak, f"{name} data sheet"
        half = torch.float16 if dtype == torch.float16 else torch.bfloat16  # a GPU without bf16 runs fp16
        return measure_matmul_flops(device, half), f"{name}, measured {dtype_name(half)} matmul"
    # the run's own precision: a float32 run against the float32 matmul, a bf16 run against the bf16
    # one (on a CPU without bf16 instructions ~80x slower: runtime.cpu_has_bf16_matmul)
    return measure_matmul_flops(device, dtype), f"CPU, measured {dtype_name(dtype)} matmul"


def mfu(tokens_per_sec: float, flops_per_token: float, peak: float) -> float:
    """Model FLOPs utilisation in [0, 1] (can exceed 1 only if the peak is wrong)."""
    return tokens_per_sec * flops_per_token / peak if peak > 0 else 0.0

"""Throughput maths: model FLOPs utilisation (MFU) against a peak from a table or a measurement."""

from __future__ import annotations

import time

import torch

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
    device: torch.device, dtype: torch.dtype, n: int = 1024, seconds: float = 1.0
) -> float:
    """Achieved FLOP/s of an n x n matmul in ``dtype``: the practical peak of this machine."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    iters, t0 = 0, time.perf_counter()
    while True:
        for _ in range(4):
            a @ b
        iters += 4
        sync()
        el = time.perf_counter() - t0
        if el >= seconds:
            return 2 * n**3 * iters / el


def peak_flops(
    device: torch.device, dtype: torch.dtype, override_tflops: float | None = None
) -> tuple[float, str]:
    """(peak FLOP/s per device, where the number came from)."""
    if override_tflops:
        return override_tflops * 1e12, "--peak_tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak_flops(name)
        if peak is not None:
            return peak, f"{name} data sheet"
        return measure_matmul_flops(device, torch.bfloat16), f"{name}, measured bf16 matmul"
    mm_dtype = torch.float32 if dtype == torch.float32 else torch.bfloat16
    return measure_matmul_flops(
        device, mm_dtype
    ), f"CPU, measured {str(mm_dtype).removeprefix('torch.')} matmul"


def mfu(tokens_per_sec: float, flops_per_token: float, peak: float) -> float:
    """Model FLOPs utilisation in [0, 1] (can exceed 1 only if the peak is wrong)."""
    return tokens_per_sec * flops_per_token / peak if peak > 0 else 0.0

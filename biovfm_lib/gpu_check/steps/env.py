"""Step 1, env: what the figures were taken on, and the measured matmul ceiling.

MFU elsewhere in the check is against the vendor's dense bf16 peak (the table in
:mod:`biovfm_lib.train.meter`); the 8192^3 bf16 matmul says how much of that peak this GPU,
driver and cuBLAS actually reach, which is what a model at "40 % MFU" should be read against.
"""
from __future__ import annotations

import platform
import time

import torch

from biovfm_lib.gpu_check.context import StepContext
from biovfm_lib.train.meter import PEAK_BF16_FLOPS, peak_flops


def matmul_tflops(n: int, dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    """TFLOP/s of ``repeats`` (n x n) @ (n x n) products, 2 n^3 FLOPs each, after a warm-up."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):  # the library's handles, the clocks' ramp
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e12


def nccl_version() -> str:
    version = torch.cuda.nccl.version()  # a tuple in recent torch, an int in older ones
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def env(ctx: StepContext) -> None:
    ctx.put(python=platform.python_version(), torch=torch.__version__,
            cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
            cpu_threads=torch.get_num_threads())
    if not ctx.needs_cuda("GPU, cuDNN, NCCL and the 8192^3 bf16 matmul"):
        tflops = matmul_tflops(1024, torch.float32, torch.device("cpu"), 5)
        ctx.put(matmul="1024^3 fp32 on CPU (the GPU figure's code path, not its size)",
                matmul_tflops=round(tflops, 3))
        return
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    name = torch.cuda.get_device_name(dev)
    entry = max((k for k in PEAK_BF16_FLOPS if k in name), key=len, default=None)
    peak = peak_flops(dev)
    ctx.put(gpu=name, gpus=torch.cuda.device_count(),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            compute_capability=f"{props.major}.{props.minor}",
            cudnn=torch.backends.cudnn.version(),
            nccl=nccl_version(),
            peak_bf16_tflops=peak / 1e12 if peak else None,
            peak_table_entry=entry)
    if peak is None:
        ctx.note(f"{name} is not in the peak table: MFU is not computed")
    tflops = matmul_tflops(8192, torch.bfloat16, dev, 50)
    ctx.put(matmul="8192^3 bf16", matmul_tflops=round(tflops, 1),
            matmul_fraction_of_peak=round(tflops * 1e12 / peak, 3) if peak else None)
    ctx.check("bf16 matmul ceiling 8192^3", round(tflops, 1),
              f"table peak {entry}: {peak / 1e12:.0f} TFLOP/s" if peak else "no table entry",
              None, "TFLOP/s")

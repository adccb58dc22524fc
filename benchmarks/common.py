"""Shared pieces of the benchmarks: the hardware's measured matmul peak, FLOP counts, memory."""

from __future__ import annotations

import platform
import resource
import time

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Measured FLOP/s of a large square matmul in `dtype` on this device (the MFU denominator)."""
    dev = device()
    if dev.type == "cuda":
        n = 8192
    a = torch.randn(n, n, device=dev).to(dtype)
    b = torch.randn(n, n, device=dev).to(dtype)
    a @ b  # warm-up
    sync()
    tic = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return 2 * n**3 * repeats / (time.perf_counter() - tic)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def llm_train_flops_per_token(n_params: int) -> float:
    """Forward 2N + backward to the activations 2N; LoRA's weight gradients are negligible.

    (A fully trained model would add another 2N for weight gradients: the usual 6N.)
    """
    return 4.0 * n_params


def peak_memory_mb() -> float:
    """Peak GPU memory allocated, or the process's peak resident set size on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} | torch {torch.__version__}"
    return (f"{cpu}, {torch.get_num_threads()} threads, capability {torch.backends.cpu.get_cpu_capability()}"
            f" | torch {torch.__version__}")


def table(rows: list[dict], columns: list[str]) -> str:
    """A plain fixed-width table."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)

"""One device and precision policy for training, evaluation, analyses, generation and benchmarks.

accelerate decides the device (CUDA when present, else CPU; the process's own GPU under
`accelerate launch`); the run's `train.mixed_precision` decides the autocast dtype everywhere.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from accelerate import PartialState

# cuBLAS reads its workspace setting once, at its first call on the GPU; deterministic cuBLAS
# kernels need this one, so it is set when rrglib is imported (before any GPU work).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def default_device() -> torch.device:
    """The device accelerate assigns to this process."""
    return PartialState().device


def bf16_is_emulated(device: torch.device) -> bool:
    """True on a CPU without AVX-512: bf16 matmuls measured ~400x slower than fp32 there."""
    return device.type == "cpu" and "AVX512" not in torch.backends.cpu.get_cpu_capability()


def autocast(mixed_precision: str, device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    """The autocast context for `mixed_precision` ("no", "bf16", "fp16"; see TrainConfig) on `device`."""
    device_type = torch.device(device).type
    if mixed_precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    if mixed_precision == "fp16" and device_type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def use_deterministic_kernels(device: torch.device, on: bool = True) -> None:
    """On CUDA, make one seed give one model: deterministic kernels (an op without one warns
    rather than fails) and no cuDNN autotuning. Measured on an H200: two same-seed runs of the
    toy training differed without it. A no-op on a CPU, whose kernels are deterministic for a
    given machine and thread count."""
    if torch.device(device).type != "cuda":
        return
    torch.use_deterministic_algorithms(on, warn_only=True)
    if on:
        torch.backends.cudnn.benchmark = False


def place(model: torch.nn.Module, device: torch.device | str | None = None) -> torch.nn.Module:
    """Move `model` to `device` (default: `default_device()`) and return it."""
    return model.to(default_device() if device is None else torch.device(device))

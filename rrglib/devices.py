"""One device and precision policy for training, evaluation, analyses, generation and benchmarks.

accelerate decides the device (CUDA when present, else CPU; the process's own GPU under
`accelerate launch`); the run's `train.mixed_precision` decides the autocast dtype everywhere.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from accelerate import PartialState


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


def place(model: torch.nn.Module, device: torch.device | str | None = None) -> torch.nn.Module:
    """Move `model` to `device` (default: `default_device()`) and return it."""
    return model.to(default_device() if device is None else torch.device(device))

"""What decides a study's numbers besides its code and configs: the commit, the CPU, the build.

A re-run on another CPU (AVX2 vs AVX-512), with other thread counts or another torch/BLAS
build can change every metric; the study manifest records these so a difference is explained.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# Packages whose versions can change results or their rendering.
PACKAGES = (
    "torch", "torchvision", "transformers", "peft", "accelerate", "tokenizers", "safetensors",
    "numpy", "pandas", "scipy", "statsmodels", "pycocoevalcap", "efficientnet-lite-pytorch",
    "papermill", "nbconvert", "ipykernel",
)  # fmt: skip
# CPU flags that select different kernels (and so different float rounding) in torch/oneDNN.
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
             "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile")
# torch.__config__.show() build settings worth keeping (the rest are compiler flags).
BUILD_KEYS = ("TORCH_VERSION", "BLAS_INFO", "LAPACK_INFO", "USE_MKL", "USE_MKLDNN",
              "USE_OPENMP", "CUDA_VERSION")


def git_state(root: Path, exclude: Path | None = None) -> dict[str, Any]:
    """{"commit", "dirty"} of the checkout at root; both None outside git."""
    root = Path(root).resolve()
    # The study's own results are rewritten while it runs; they do not make the code dirty.
    skip = []
    if exclude is not None and Path(exclude).resolve().is_relative_to(root):
        skip = [f":(exclude){Path(exclude).resolve().relative_to(root).as_posix()}"]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", *skip))
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def cpu_info() -> dict[str, Any]:
    """CPU model and the instruction-set flags that change numerics (Linux /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
            break
    return {"model": model, "isa": [f for f in ISA_FLAGS if f in flags]}


def torch_build() -> dict[str, Any]:
    """torch's CPU capability in use and the BLAS/LAPACK/OpenMP settings it was built with."""
    import torch

    settings: dict[str, str] = {}
    for line in torch.__config__.show().splitlines():
        if "Build settings:" in line:
            for item in line.split("Build settings:", 1)[1].split(", "):
                key, _, value = item.strip().partition("=")
                if key in BUILD_KEYS:
                    settings[key] = value
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), **settings}


def package_versions() -> dict[str, str | None]:
    """Python and the installed versions of PACKAGES (None when not installed)."""
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def environment() -> dict[str, Any]:
    """Everything above except git, with a short id so steps can point at one shared record."""
    env = {"cpu": cpu_info(), "torch_build": torch_build(), "packages": package_versions(),
           "platform": platform.platform()}
    env["id"] = hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest()[:12]
    return env

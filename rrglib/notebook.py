"""The study notebooks' shared setup: cwd, threads, quiet progress bars, display defaults."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any


def setup(num_threads: int | None = None, out_dir: str | Path | None = None) -> None:
    """Prepare a notebook: repo root as cwd, threads, quiet output, display defaults, out_dir."""
    import matplotlib.pyplot as plt
    import pandas as pd
    from tqdm import TqdmWarning

    cwd = Path.cwd()
    if not (cwd / "configs").is_dir() and (cwd.parent / "configs").is_dir():
        os.chdir(cwd.parent)  # opened by hand from notebooks/: paths are relative to the repo
    if num_threads:
        import torch

        torch.set_num_threads(int(num_threads))
    # Warnings that say nothing about the results (each one seen in a rendered study).
    warnings.filterwarnings("ignore", category=TqdmWarning)  # "IProgress not found" (no widgets)
    # transformers' own deprecations (e.g. is_gradient_checkpointing): not about our numbers
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers(\.|$)")
    warnings.filterwarnings("ignore", message=r"Converting a tensor with requires_grad=True")
    if os.environ.get("RRG_STUDY_RUNNER") or os.environ.get("TQDM_DISABLE"):
        silence_progress_bars()
    for option, value in [("max_columns", None), ("max_rows", 500), ("max_colwidth", None),
                          ("width", 200)]:
        pd.set_option(f"display.{option}", value)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 110, "savefig.bbox": "tight",
                         "axes.spines.top": False, "axes.spines.right": False})
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)


def silence_progress_bars() -> None:
    """Under the study runner, tqdm bars would leave hundreds of fragments in the notebook.

    tqdm honours TQDM_DISABLE only where a call does not pass `disable=` itself, so the class
    that `tqdm.auto` hands out is replaced before the library imports it.
    """
    import tqdm.auto
    from tqdm.std import tqdm as std_tqdm

    class QuietTqdm(std_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "disable": True})

    tqdm.auto.tqdm = QuietTqdm

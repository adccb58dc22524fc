"""The study notebooks' shared setup and the few helpers their cells share."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

DEMO_BUILDER = "data_prep.demo"  # the `builder` that data_prep.demo writes into its meta file
DEMO_META = "manifest.meta.json"


class ForeignDataset(RuntimeError):
    """10_data was asked to build synthetic data into a folder that holds something else."""


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


def demo_data_state(data_dir: str | Path, **wanted: Any) -> str:
    """"current" if data_dir holds a SynthCXR build with the `wanted` options, else "build".

    Refuses (ForeignDataset) a folder that data_prep.demo did not create: 10_data must never
    write synthetic images into a real dataset. `wanted`: n, seed, image_size, positive_fraction.
    """
    d = Path(data_dir)
    if not d.exists() or (d.is_dir() and not d.is_symlink() and not any(d.iterdir())):
        return "build"
    try:
        meta = json.loads((d / DEMO_META).read_text()) if (d / DEMO_META).is_file() else {}
    except json.JSONDecodeError:
        meta = {}
    if d.is_symlink() or (d / "images").is_symlink() or meta.get("builder") != DEMO_BUILDER:
        raise ForeignDataset(
            f"{d} is not a SynthCXR folder built by {DEMO_BUILDER} (no {DEMO_META} with builder "
            f"{DEMO_BUILDER!r}); 10_data will not write into it: pass -p build_demo=false to use "
            f"it as it is, or choose a new data_dir for the synthetic data")
    # The builder stores the seed beside `options`, not inside it.
    recorded = {**(meta.get("options") or {}), "seed": meta.get("seed")}
    return "current" if all(recorded.get(k) == v for k, v in wanted.items()) else "build"


def study_provenance(study_dir: str | Path) -> tuple[Any, list[str]]:
    """(finished steps per commit, environment and threads as a DataFrame, manifest warnings)."""
    import pandas as pd

    from rrglib.study import Manifest, provenance_warnings

    manifest = Manifest.load(Path(study_dir) / "manifest.json")
    envs = manifest.data.get("environments", {})
    rows = []
    for rec in (r for r in manifest.steps.values() if r.get("status") == "done"):
        env, git = envs.get(rec.get("environment"), {}), rec.get("git") or {}
        rows.append({"commit": str(git.get("commit"))[:10], "dirty": git.get("dirty"),
                     "cpu": (env.get("cpu") or {}).get("model"),
                     "torch cpu capability": (env.get("torch_build") or {}).get("cpu_capability"),
                     "torch": (env.get("packages") or {}).get("torch"),
                     "threads": rec.get("threads")})
    table = pd.DataFrame(rows)
    if len(table):
        table = table.value_counts(dropna=False).rename("steps").reset_index()
    return table, provenance_warnings(manifest)

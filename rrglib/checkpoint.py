"""Run directories and checkpoints: what a training run writes, and when it may delete.

- A run directory is ours when it holds our marker (`.rrg-run`) or a run's `config.yaml`, and
  nothing but the files a run writes. Nothing else is ever deleted.
- One training at a time per directory: an `fcntl.flock`, which the kernel releases however
  the process exits (so a dead run's lock is never an obstacle).
- A checkpoint is written completely, then `checkpoints/latest` switches to it by one rename.
- `--resume` refuses a changed setting that alters training, naming the keys, unless allowed.
"""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .config import RunConfig

RUN_MARKER = ".rrg-run"
LOCK_NAME = ".rrg-lock"
# Everything a run (training, then evaluation) writes into its directory.
RUN_CONTENTS = (RUN_MARKER, LOCK_NAME, "config.yaml", "metrics.jsonl", "summary.json", "checkpoints",
                "best", "final", "eval-*", "weights_digest.rank*.txt")
# Settings that change logging, speed or bookkeeping but not the weights a run trains.
NOT_TRAINING_KEYS = frozenset({
    "name", "output_dir", "data.num_workers", "data.eval_batch_size", "train.num_threads", "train.log_with",
    "train.checkpoint_every_steps", "train.log_every_steps", "train.feature_cache_dir",
})
REPO_ROOT = Path(__file__).resolve().parents[1]


class RunDirError(ValueError):
    """An output directory that training refuses to use; the message says why and what to do."""


class RunLockedError(RunDirError):
    """Another training holds the directory's lock."""


def _is_ours(name: str, extra: tuple[str, ...] = ()) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in RUN_CONTENTS + extra)


def check_output_dir(run_dir: Path, manifest: str | Path | None = None, extra: tuple[str, ...] = ()) -> None:
    """Refuse a directory a run must not write into or clear (`extra`: more names a run writes)."""
    target, cwd = run_dir.resolve(), Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise RunDirError(f"output_dir {run_dir} is the working directory or a parent of it; "
                          "set output_dir to a new folder such as runs/<name>")
    if target == REPO_ROOT or target in REPO_ROOT.parents or target == Path.home().resolve():
        raise RunDirError(f"output_dir {run_dir} is the checkout, a parent of it or the home folder; "
                          "set output_dir to a new folder such as runs/<name>")
    if manifest:
        data_root = Path(manifest).resolve()
        data_root = data_root.parent if data_root.suffix == ".csv" else data_root
        if target == data_root or target in data_root.parents:
            raise RunDirError(f"output_dir {run_dir} holds the dataset {manifest}; "
                              "set output_dir to a folder outside the data")
    if target.exists() and not target.is_dir():
        raise RunDirError(f"output_dir {run_dir} is a file; set output_dir to a folder")
    names = sorted(p.name for p in target.iterdir()) if target.is_dir() else []
    if "manifest.csv" in names:
        raise RunDirError(f"output_dir {run_dir} holds a manifest.csv (a dataset); set output_dir to a "
                          "folder outside the data")
    foreign = [n for n in names if not _is_ours(n, extra)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" (+{len(foreign) - 5} more)" if len(foreign) > 5 else "")
        raise RunDirError(f"output_dir {run_dir} holds files that are not a training run's ({shown}); "
                          "set output_dir to a new or empty folder")
    if set(names) - {LOCK_NAME} and not {RUN_MARKER, "config.yaml"} & set(names):
        raise RunDirError(f"output_dir {run_dir} is not marked as a training run (no {RUN_MARKER} or "
                          "config.yaml); set output_dir to a new or empty folder")


def clear_run_dir(run_dir: Path, extra: tuple[str, ...] = ()) -> None:
    """Delete what a run wrote into `run_dir` (never the lock, never a foreign file)."""
    check_output_dir(run_dir, extra=extra)
    for entry in run_dir.iterdir() if run_dir.is_dir() else []:
        if entry.name == LOCK_NAME or not _is_ours(entry.name, extra):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def mark_run_dir(run_dir: Path, cfg: RunConfig) -> None:
    """Write our marker and the run's config: from now on the folder is provably a run of ours."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_MARKER).write_text(json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                  "config_hash": cfg.hash()}) + "\n")
    cfg.to_yaml(run_dir / "config.yaml")


class RunLock:
    """An exclusive, non-blocking flock on `<run_dir>/.rrg-lock`, held while training."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def __enter__(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.run_dir / LOCK_NAME, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunLockedError(f"{self.run_dir} is in use by another training (pid {holder}); wait for it "
                                 "to finish or set another output_dir") from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.handle.closed:
            fcntl.flock(self.handle, fcntl.LOCK_UN)  # now, though a forked worker may hold the file
            self.handle.close()


def open_run_dir(cfg: RunConfig, resume: bool, overwrite: bool,
                 allow_config_change: bool) -> tuple[RunLock, Path | None, dict[str, Any]]:
    """Lock the run directory; (lock, checkpoint to resume or None, config changes since it).

    A new run (or `overwrite`) starts from an empty directory: no old metrics of a dead run stay.
    """
    run_dir = Path(cfg.output_dir)
    if resume and overwrite:
        raise ValueError("pass either --resume or --overwrite, not both")
    extra = (cfg.name,) if cfg.train.log_with else ()  # an accelerate tracker's folder
    check_output_dir(run_dir, cfg.data.manifest, extra)
    if resume:
        check_resume(run_dir, cfg, allow_config_change)  # before the lock creates a misspelt folder
    lock = RunLock(run_dir).__enter__()
    try:
        if resume:
            ckpt, changes = check_resume(run_dir, cfg, allow_config_change)
            if changes:
                cfg.to_yaml(run_dir / "config.yaml")  # the saved config says what runs from now on
            return lock, ckpt, changes
        if latest_checkpoint(run_dir) is not None and not overwrite:
            raise FileExistsError(f"{run_dir} already holds a checkpoint; pass --resume to continue it "
                                  "or --overwrite to start again")
        clear_run_dir(run_dir, extra)
        mark_run_dir(run_dir, cfg)
        return lock, None, {}
    except BaseException:
        lock.__exit__()
        raise


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        is_section = isinstance(value, dict)
        out.update(_flatten(value, f"{prefix}{key}.") if is_section else {prefix + key: value})
    return out


def config_changes(saved: RunConfig, given: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Keys whose change alters training, with (saved, given) values."""
    old, new = _flatten(saved.to_dict()), _flatten(given.to_dict())
    return {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys())
            if k not in NOT_TRAINING_KEYS and old.get(k) != new.get(k)}


def check_resume(run_dir: Path, cfg: RunConfig, allow_config_change: bool = False) -> tuple[Path, dict]:
    """The checkpoint to resume from and the config changes since; refuses what cannot resume."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise RunDirError(f"--resume: {run_dir} holds no checkpoint ({run_dir / 'checkpoints' / 'latest'} "
                          "is missing); check output_dir, or train without --resume")
    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        raise RunDirError(f"--resume: {saved_file} is missing, so the run's settings are unknown; "
                          "train again with --overwrite")
    changes = config_changes(RunConfig.from_yaml(saved_file), cfg)
    if changes and not allow_config_change:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
        raise RunDirError(f"--resume: the config differs from the run's {saved_file} in settings that alter "
                          f"training ({listed}); resume with the saved settings, pass --allow-config-change "
                          "to continue anyway, or start again with --overwrite")
    return ckpt, changes


def state_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every weight: equal digests mean bit-identical models."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def rng_state() -> dict[str, Any]:
    """The global RNG states as tensors and plain numbers (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any]) -> Path:
    """Write checkpoints/ckpt-<step>/ completely, then atomically point `latest` at it."""
    name = f"ckpt-{state['global_step']:07d}-{state['epoch']}-{state['batch']}"
    root = run_dir / "checkpoints"
    tmp, final = root / (name + ".partial"), root / name
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # everything a run changes: mapper, aux head, LoRA and (once trained) the encoder
    keep = ("mapper.", "aux_head.") + (("encoder.",) if model.stores_encoder else ())
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()
               if k.startswith(keep) or "lora_" in k}, str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    (root / "latest.partial").write_text(name)
    os.replace(root / "latest.partial", root / "latest")  # the switch is one rename
    for old in root.glob("ckpt-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The complete checkpoint `checkpoints/latest` points at, or None."""
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def checkpoint_state(path: Path) -> dict[str, Any]:
    """The loop's position (epoch, batch, step, stage, best...) saved in a checkpoint."""
    return json.loads((path / "state.json").read_text())


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Restore weights, optimizer and RNG states; the optimizer must already have the run's groups."""
    missing = model.load_state_dict(load_file(str(path / "trainable.safetensors")), strict=False)
    if missing.unexpected_keys:
        raise ValueError(f"{path}: checkpoint does not match the model ({missing.unexpected_keys[:3]}); "
                         "resume with the run's own config")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    set_rng_state(torch.load(path / "rng.pt", weights_only=True))

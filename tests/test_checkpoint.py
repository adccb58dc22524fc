"""Run directories and checkpoints: what may be deleted, the lock, RNG state, resume checks."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rrglib.checkpoint import (
    LOCK_NAME,
    RUN_MARKER,
    RunDirError,
    RunLock,
    RunLockedError,
    check_output_dir,
    check_resume,
    clear_run_dir,
    config_changes,
    latest_checkpoint,
    mark_run_dir,
    rng_state,
    set_rng_state,
)
from rrglib.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"

HOLD_LOCK = """
import sys, time
from pathlib import Path
from rrglib.checkpoint import RunLock
with RunLock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_rng_state_round_trips_and_loads_with_weights_only(tmp_path):
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), random.random(), np.random.rand())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


def test_refuses_the_working_directory_its_parents_the_checkout_and_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for target in (Path("."), tmp_path, tmp_path.parent, ROOT, ROOT.parent):
        with pytest.raises(RunDirError, match="working directory|checkout"):
            check_output_dir(target)
    data = tmp_path / "data" / "smoke"
    data.mkdir(parents=True)
    (data / "manifest.csv").write_text("id\n")
    with pytest.raises(RunDirError, match="dataset"):
        check_output_dir(data, data / "manifest.csv")
    with pytest.raises(RunDirError, match="dataset"):
        check_output_dir(tmp_path / "data", data / "manifest.csv")  # a parent of the data
    with pytest.raises(RunDirError, match="manifest.csv"):
        check_output_dir(data)  # any dataset, even one the config does not name


def test_only_a_run_of_ours_with_only_our_files_may_be_cleared(tmp_path):
    run = tmp_path / "run"
    check_output_dir(run)  # a new folder is fine
    run.mkdir()
    check_output_dir(run)  # so is an empty one
    (run / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="notes.txt"):
        clear_run_dir(run)
    assert (run / "notes.txt").read_text() == "mine"
    (run / "notes.txt").unlink()
    (run / "final").mkdir()
    with pytest.raises(RunDirError, match="not marked"):
        clear_run_dir(run)  # our file names, but no marker or config: not provably ours
    mark_run_dir(run, load_config(SMOKE))
    for name in ("metrics.jsonl", "summary.json", "weights_digest.rank0.txt", LOCK_NAME):
        (run / name).write_text("x")
    (run / "checkpoints" / "ckpt-1").mkdir(parents=True)
    (run / "eval-test").mkdir()
    clear_run_dir(run)
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # the lock stays with its holder


def test_legacy_run_without_marker_but_with_its_config_is_ours(tmp_path):
    run = tmp_path / "run"
    load_config(SMOKE).to_yaml(run / "config.yaml")
    (run / "metrics.jsonl").write_text("{}\n")
    clear_run_dir(run)
    assert list(run.iterdir()) == []
    mark_run_dir(run, load_config(SMOKE))
    assert (run / RUN_MARKER).is_file() and (run / "config.yaml").is_file()


def test_a_second_process_cannot_take_the_lock_and_a_dead_holder_leaves_none(tmp_path):
    run = tmp_path / "run"
    env_path = {"PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run), "60"], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, **env_path})
    try:
        assert holder.stdout.readline().strip() == "locked"
        tic = time.perf_counter()
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            RunLock(run).__enter__()
        assert time.perf_counter() - tic < 2  # refused at once, not after waiting
    finally:
        holder.kill()  # like kill -9: no clean-up, the lock file stays behind
        holder.wait()
    assert (run / LOCK_NAME).is_file()
    with RunLock(run):  # the kernel released the dead holder's flock
        pass
    with RunLock(run), pytest.raises(RunLockedError):
        RunLock(run).__enter__()  # another handle in this process is refused too


def test_config_changes_ignore_bookkeeping_and_name_training_keys():
    a = load_config(SMOKE)
    b = load_config(SMOKE, ["train.num_threads=2", "name=other", "output_dir=elsewhere", "train.log_every_steps=5"])
    assert config_changes(a, b) == {}
    c = load_config(SMOKE, ["train.lr_mapper=0.5", "model.mapper.dropout=0.2"])
    assert config_changes(a, c) == {"model.mapper.dropout": (0.0, 0.2), "train.lr_mapper": (1e-3, 0.5)}


def test_resume_needs_a_checkpoint_and_the_same_settings(tmp_path):
    run = tmp_path / "run"
    cfg = load_config(SMOKE, [f"output_dir={run}"])
    with pytest.raises(RunDirError, match=f"{run}.*no checkpoint"):
        check_resume(run, cfg)
    mark_run_dir(run, cfg)
    ckpt = run / "checkpoints" / "ckpt-0000003-0-3"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text("{}")
    (run / "checkpoints" / "latest").write_text(ckpt.name)
    assert latest_checkpoint(run) == ckpt
    assert check_resume(run, cfg) == (ckpt, {})
    changed = load_config(SMOKE, [f"output_dir={run}", "train.lr_lora=0.1"])
    with pytest.raises(RunDirError, match=r"train.lr_lora: 0.001 -> 0.1.*--allow-config-change"):
        check_resume(run, changed)
    assert check_resume(run, changed, allow_config_change=True)[1] == {"train.lr_lora": (1e-3, 0.1)}

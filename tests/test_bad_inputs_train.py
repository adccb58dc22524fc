"""`python -m rrglib.train` given what hostile users and failing machines give it.

Each bad input stops with one line naming the file or key and the fix, and nothing that the
run did not create is deleted or overwritten.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _toydata import make_toy_manifest

from rrglib.train import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
FAST = ["train.strategy=frozen", "train.epochs=1", "train.val_generation_samples=0",
        "train.checkpoint_every_steps=0"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_manifest(tmp_path_factory.mktemp("toy"))


def refused(capsys, *argv: str) -> str:
    """Run the CLI, expect exit status 2 and return its one-line error."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("override, words", [
    ("train.epochs=two", ["train.epochs", "whole number"]),
    ("data.batch_size=0", ["data.batch_size", ">= 1"]),
    ("train.best_metric=val_f2", ["train.best_metric", "val_loss, val_f1"]),
    ("train.lr_lora=-0.001", ["train.lr_lora", "> 0"]),
    ("model.mapper.dropout=1.5", ["model.mapper.dropout", "< 1.0"]),
])
def test_bad_config_values_stop_before_any_model_is_built(capsys, tmp_path, override, words):
    err = refused(capsys, "--config", SMOKE, f"output_dir={tmp_path / 'run'}", override)
    assert SMOKE in err and all(w in err for w in words), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, words", [("", ["is empty"]), ("train: [1\n", ["YAML syntax error", "line"])])
def test_broken_config_files_are_named(capsys, tmp_path, text, words):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    err = refused(capsys, "--config", path)
    assert str(path) in err and all(w in err for w in words), err


def test_overwrite_into_the_working_directory_refuses_and_deletes_nothing(capsys, toy, tmp_path, monkeypatch):
    work = tmp_path / "checkout"
    (work / "src").mkdir(parents=True)
    (work / "src" / "code.py").write_text("print('keep me')\n")
    (work / "config.yaml").write_text("name: looks like a run\n")
    before = tree(work)
    monkeypatch.chdir(work)
    for target in (".", "src/.."):
        err = refused(capsys, "--config", SMOKE, "--overwrite", f"output_dir={target}", f"data.manifest={toy}", *FAST)
        assert "working directory" in err
    err = refused(capsys, "--config", SMOKE, "--overwrite", f"output_dir={ROOT}", f"data.manifest={toy}", *FAST)
    assert "checkout" in err
    assert tree(work) == before


def test_output_dir_in_the_data_refuses_and_keeps_the_data(capsys, toy):
    before = tree(toy.parent)
    for target in (toy.parent, toy.parent / "images"):
        err = refused(capsys, "--config", SMOKE, "--overwrite", f"output_dir={target}", f"data.manifest={toy}", *FAST)
        assert "dataset" in err or "manifest.csv" in err or "not a training run" in err, err
    assert tree(toy.parent) == before


def test_overwrite_keeps_a_folder_with_foreign_files(capsys, toy, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "paper.tex").write_text("draft")
    err = refused(capsys, "--config", SMOKE, "--overwrite", f"output_dir={out}", f"data.manifest={toy}", *FAST)
    assert "paper.tex" in err and "new or empty folder" in err
    assert (out / "paper.tex").read_text() == "draft"


def test_resume_on_a_misspelt_directory_is_an_error_naming_it(capsys, toy, tmp_path):
    missing = tmp_path / "runs" / "two_stgae"
    err = refused(capsys, "--config", SMOKE, "--resume", f"output_dir={missing}", f"data.manifest={toy}", *FAST)
    assert str(missing) in err and "no checkpoint" in err
    assert not missing.exists()


def test_resume_with_a_changed_learning_rate_refuses_naming_the_key(capsys, toy, tmp_path):
    run = tmp_path / "run"
    args = ["--config", SMOKE, f"output_dir={run}", f"data.manifest={toy}", *FAST]
    main(args)
    saved = (run / "config.yaml").read_text()
    err = refused(capsys, *args, "--resume", "train.lr_mapper=0.5", "train.num_threads=1")
    assert "train.lr_mapper: 0.001 -> 0.5" in err and "--allow-config-change" in err
    assert "num_threads" not in err  # a thread count does not change what is trained
    assert (run / "config.yaml").read_text() == saved
    main([*args, "--resume", "--allow-config-change", "train.lr_mapper=0.5"])
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "config_change" and records[-1]["changes"] == {"train.lr_mapper": [1e-3, 0.5]}
    assert "lr_mapper: 0.5" in (run / "config.yaml").read_text()
    err = refused(capsys, *args, "--resume", "--overwrite")
    assert "not both" in err


@pytest.mark.slow
def test_a_second_training_into_the_same_directory_is_refused_at_once(capsys, toy, tmp_path):
    run = tmp_path / "run"
    args = ["--config", SMOKE, f"output_dir={run}", f"data.manifest={toy}", "train.val_generation_samples=0",
            "train.strategy=frozen", "train.epochs=4"]
    first = subprocess.Popen([sys.executable, "-m", "rrglib.train", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while not (run / ".rrg-lock").is_file() or not (run / ".rrg-lock").read_text().strip():
            assert first.poll() is None and time.time() < deadline, first.communicate()[1][-2000:]
            time.sleep(0.2)
        tic = time.perf_counter()
        err = refused(capsys, *args, "--overwrite")
        assert f"in use by another training (pid {first.pid})" in err
        assert time.perf_counter() - tic < 10
    finally:
        _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-2000:]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [0, 1, 2, 3]  # one run, not two interleaved

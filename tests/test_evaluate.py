"""Evaluation: generation tables, metrics files, grounding controls, baselines, single images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _toydata import make_toy_manifest

from rrglib import devices
from rrglib.baselines import (
    baseline_inputs,
    baselines_current,
    most_frequent_report,
    retrieval_generations,
    run_baselines,
)
from rrglib.config import load_config
from rrglib.data import ReportDataset, derangement, load_manifest
from rrglib.evaluate import evaluate_run, generate_reports, load_run
from rrglib.metrics.nlg import java_available
from rrglib.reporting import load_eval, stats_of
from rrglib.train import train

ROOT = Path(__file__).resolve().parents[1]
NIH = ROOT / "tests" / "fixtures" / "real_cxr"  # two NIH ChestX-ray14 images, downscaled


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evalrun")
    toy = make_toy_manifest(root / "data")
    cfg = load_config(ROOT / "configs" / "smoke.yaml", [
        f"data.manifest={toy}", f"output_dir={root / 'run'}", "train.strategy=frozen", "train.epochs=1",
        "train.val_generation_samples=0", "train.checkpoint_every_steps=0", "generation.max_new_tokens=8"])
    return train(cfg)


def test_derangement_moves_every_study():
    for n in (2, 3, 10, 101):
        perm = derangement(n, seed=n)
        assert sorted(perm) == list(range(n))
        assert (perm != np.arange(n)).all()
    with pytest.raises(ValueError):
        derangement(1)


def test_generation_table_keeps_each_study_its_own_reference(run):
    model, cfg = load_run(run)
    manifest = load_manifest(cfg.data.manifest)
    ds = ReportDataset(manifest, "test", 64, model.encoder.mean, model.encoder.std)
    tables = {src: generate_reports(model, ds, cfg.generation, batch_size=3, images=src, show=False)
              for src in ("true", "blank", "shuffled")}
    for table in tables.values():
        assert list(table["id"]) == list(ds.df["id"])
        assert list(table["reference"]) == list(ds.df["report"])
        lps = [json.loads(x) for x in table["logprobs"]]
        assert all(0 < len(lp) <= 8 and max(lp) <= 0 for lp in lps)
    # a different image changes the prompts, hence the log-probs of the same greedy tokens
    assert tables["true"]["logprobs"].tolist() != tables["blank"]["logprobs"].tolist()
    with pytest.raises(ValueError, match="images must be one of"):
        generate_reports(model, ds, cfg.generation, images="noise")


def test_evaluate_run_writes_metrics_with_intervals(run):
    res = evaluate_run(run, split="test", n_boot=200, show=False)
    out = Path(res["out_dir"])
    assert out == run / "eval-test"
    for name in ("generations.csv", "metrics.json", "metrics.csv", "per_observation.csv"):
        assert (out / name).is_file()
    payload = json.loads((out / "metrics.json").read_text())
    assert payload["n"] == 8 and payload["decoding"]["max_new_tokens"] == 8
    for key in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "F1-RB-14-micro", "F1-RB-5-macro"):
        if key == "METEOR" and not java_available():  # METEOR needs Java: NaN, said so, no interval
            assert np.isnan(payload["metrics"][key])
            continue
        lo, hi = payload["ci95"][key]
        assert lo - 1e-9 <= payload["metrics"][key] <= hi + 1e-9
    table = pd.read_csv(out / "metrics.csv")
    assert {"metric", "value", "ci_low", "ci_high"} <= set(table.columns)
    # the saved per-study statistics reproduce every metric, for paired tests without re-scoring
    stats = stats_of(load_eval(out))
    for key, value in payload["metrics"].items():
        assert stats.point()[key] == pytest.approx(value, abs=1e-9, nan_ok=True), key


def test_evaluation_places_the_model_on_the_accelerator(run, tmp_path, monkeypatch):
    # pretend accelerate found a GPU; record where the model is sent (the move itself is a no-op)
    monkeypatch.setattr(devices, "default_device", lambda: torch.device("cuda", 0))
    moved = []

    def to(self, *args, **kwargs):
        moved.append((type(self).__name__, args[0] if args else kwargs.get("device")))
        return self

    monkeypatch.setattr(torch.nn.Module, "to", to)
    res = evaluate_run(run, max_samples=2, n_boot=10, out_dir=tmp_path / "eval", show=False)
    assert res["n"] == 2
    assert ("ReportGenerator", torch.device("cuda", 0)) in moved
    moved.clear()
    load_run(run, device="cpu")  # an explicit device wins
    assert [d for name, d in moved if name == "ReportGenerator"] == [torch.device("cpu")]


def test_most_frequent_report_is_the_mode():
    reports = pd.Series(["a b", "normal heart.", "c", "normal heart.", "c", "normal heart."])
    assert most_frequent_report(reports) == "normal heart."


def test_retrieval_returns_the_nearest_training_report():
    train_feats = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    test_feats = torch.nn.functional.normalize(torch.tensor([[0.1, 1.0], [1.0, 0.05]]), dim=-1)
    train_df = pd.DataFrame({"report": ["right", "up", "diagonal"]})
    test_df = pd.DataFrame({"id": ["t1", "t2"], "report": ["x", "y"]})
    out = retrieval_generations(train_feats, test_feats, train_df, test_df)
    assert out["generated"].tolist() == ["up", "right"]
    assert out["reference"].tolist() == ["x", "y"]


def test_baselines_are_scored_like_models(run, tmp_path):
    cfg = load_config(run / "config.yaml")
    res = run_baselines(cfg, tmp_path / "baselines", n_boot=100)
    assert set(res) == {"most_frequent", "retrieval"}
    gens = pd.read_csv(tmp_path / "baselines" / "most_frequent" / "generations.csv")
    assert gens["generated"].nunique() == 1
    assert (tmp_path / "baselines" / "retrieval" / "metrics.json").is_file()
    # the toy images fully determine the report, so retrieval must beat one fixed report
    assert res["retrieval"]["metrics"]["F1-RB-14-micro"] >= res["most_frequent"]["metrics"]["F1-RB-14-micro"]
    # stored baselines are reused only when scored from the same data, split size, code and machine
    out = tmp_path / "baselines"
    assert baselines_current(out, baseline_inputs(cfg, "test", 100, None))
    assert not baselines_current(out, baseline_inputs(cfg, "test", 200, None))
    assert not baselines_current(out, baseline_inputs(cfg, "test", 100, 5))
    assert not baselines_current(out, {**baseline_inputs(cfg, "test", 100, None), "manifest_sha256": "0" * 64})
    (out / "retrieval" / "metrics.json").unlink()
    assert not baselines_current(out, baseline_inputs(cfg, "test", 100, None))


@pytest.mark.slow
def test_single_image_cli_prints_one_report_per_image(run):
    images = sorted(str(p) for p in NIH.glob("*.png"))
    proc = subprocess.run([sys.executable, "-m", "rrglib.generate", *images, "--run", str(run)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("== ") == len(images)
    bad = subprocess.run([sys.executable, "-m", "rrglib.generate", "nope.png", "--run", str(run)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "nope.png" in bad.stderr

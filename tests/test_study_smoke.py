"""The real study notebooks, end to end under papermill, at smoke size (tiny random models)."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from rrglib.study import load_spec, run_study

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("smoke_study")
    spec = yaml.safe_load((ROOT / "configs" / "study_smoke.yaml").read_text())
    spec.update(root=str(ROOT), results_dir=str(tmp / "results"), work_dir=str(tmp / "runs"))
    spec["parameters"]["data_dir"] = str(tmp / "data")
    path = tmp / "study_smoke.yaml"
    path.write_text(yaml.safe_dump(spec))
    run_study(load_spec(path))
    return tmp


def executed(path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, f"{path}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    return nb


def printed(nb: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")


def test_every_step_finished_and_rendered(smoke_study):
    results = smoke_study / "results"
    steps = list(json.loads((results / "manifest.json").read_text())["steps"].values())
    assert len(steps) == 2 + 2 * 5 + 1
    assert all(s["status"] == "done" for s in steps)
    for nb in ["00_overview", "10_data", "90_summary"]:
        executed(results / f"{nb}.ipynb")
        assert (results / f"{nb}.html").is_file()
    for run in ("two_stage_aux", "image_blind"):
        for nb in ("20_train", "30_evaluate", "40_attention", "50_calibration", "60_grounding"):
            executed(results / run / f"{nb}.ipynb")


def test_values_recorded_by_the_notebooks(smoke_study):
    results = smoke_study / "results"
    # 30_evaluate prints how many test studies it scored: the study's max_test_samples
    assert "8 test studies" in printed(executed(results / "two_stage_aux" / "30_evaluate.ipynb"))
    summary = json.loads((results / "two_stage_aux" / "train_summary.json").read_text())
    assert summary["strategy"] == "two_stage" and summary["epochs_run"] == 2
    config = yaml.safe_load((results / "image_blind" / "config.yaml").read_text())
    assert config["model"]["image_blind"] is True and config["data"]["manifest"].endswith("manifest.csv")
    metrics = json.loads((results / "two_stage_aux" / "eval-test" / "metrics.json").read_text())
    assert metrics["n"] == 8 and "F1-RB-14-micro" in metrics["ci95"]
    grounding = pd.read_csv(results / "two_stage_aux" / "grounding" / "grounding.csv", index_col=0)
    assert {"true", "blank", "shuffled", "drop blank", "drop shuffled"} <= set(grounding.columns)
    attention = pd.read_csv(results / "two_stage_aux" / "attention_by_layer.csv")
    assert len(attention) == 2 and attention["mean"].between(0, 1).all()  # two layers in tiny-gpt2
    calibration = json.loads((results / "two_stage_aux" / "calibration.json").read_text())
    assert 0 <= calibration["token"]["ece_width (T=1)"] <= 1 and calibration["token"]["temperature"] > 0


def test_summary_tables(smoke_study):
    results = smoke_study / "results"
    table = pd.read_csv(results / "summary.csv", index_col=0)
    assert {"two_stage_aux", "image_blind", "baseline: most_frequent", "baseline: retrieval"} <= set(table.index)
    analyses = pd.read_csv(results / "analyses.csv", index_col=0)
    assert {"F1-14 true", "attention share, first layer", "token ECE"} <= set(analyses.columns)
    assert (results / "claims.csv").is_file() and (results / "attention_by_layer.png").is_file()


def test_rendered_outputs_are_clean(smoke_study):
    results = smoke_study / "results"
    for path in sorted(results.rglob("*.ipynb")):
        nb = executed(path)
        text = printed(nb)
        assert "\r" not in text and "it/s]" not in text, f"{path.name}: progress-bar fragments"
        # 60_grounding scores NLG without Java on purpose; rrglib.metrics still warns about it
        warned = [line for line in text.splitlines()
                  if "Warning" in line and "NLG metrics without Java" not in line]
        assert not warned, f"{path.name}: {warned[:3]}"
        assert str(ROOT) + "/" not in json.dumps(nb), f"{path}: an absolute path of this checkout"
        assert nb.metadata["papermill"]["input_path"].startswith("notebooks/")
    html = (results / "two_stage_aux" / "20_train.html").read_text()
    assert "from rrglib" not in html and "run_work_dir" not in html  # no code, no parameters
    assert "Curves" in html and "<img" in html  # the narrative and the figure
    manifest = json.loads((results / "manifest.json").read_text())
    assert len(manifest["commits"]) == 1 and len(manifest["environments"]) == 1
    env = next(iter(manifest["environments"].values()))
    assert env["cpu"]["model"] and env["torch_build"]["cpu_capability"]


def test_rerun_skips_every_finished_step(smoke_study):
    path = smoke_study / "results" / "manifest.json"
    before = json.loads(path.read_text())["steps"]
    run_study(load_spec(smoke_study / "study_smoke.yaml"))
    after = json.loads(path.read_text())["steps"]
    assert after.keys() == before.keys()
    assert all(after[k]["exec_id"] == before[k]["exec_id"] for k in before)  # nothing re-executed

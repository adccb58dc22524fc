"""The real study notebooks, end to end under papermill, at smoke size (tiny random models)."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from study_runner.study import load_spec, run_study

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # the whole study under papermill: minutes
# configs/study_smoke.yaml: two arms with seeds [0, 1]; the analyses run for seed 0 only
ARMS = ("two_stage_aux", "deranged_aux")
ANALYSES = ("40_attention", "50_calibration", "60_grounding")


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
    assert len(steps) == 2 + len(ARMS) * (5 + 2) + 1
    assert all(s["status"] == "done" for s in steps)
    for nb in ["00_overview", "10_data", "90_summary"]:
        executed(results / f"{nb}.ipynb")
        assert (results / f"{nb}.html").is_file()
    for arm in ARMS:
        for nb in ("20_train", "30_evaluate", *ANALYSES):
            executed(results / f"{arm}_s0" / f"{nb}.ipynb")
        for nb in ("20_train", "30_evaluate"):
            executed(results / f"{arm}_s1" / f"{nb}.ipynb")
        assert not any((results / f"{arm}_s1" / f"{nb}.ipynb").exists() for nb in ANALYSES)


def test_values_recorded_by_the_notebooks(smoke_study):
    results = smoke_study / "results"
    # 30_evaluate prints how many test studies it scored: the study's max_test_samples
    assert "8 test studies" in printed(executed(results / "two_stage_aux_s0" / "30_evaluate.ipynb"))
    summary = json.loads((results / "two_stage_aux_s0" / "train_summary.json").read_text())
    assert summary["strategy"] == "two_stage" and summary["epochs_run"] == 2
    for seed in (0, 1):  # the control: deranged image-report pairs, one derangement per seed
        config = yaml.safe_load((results / f"deranged_aux_s{seed}" / "config.yaml").read_text())
        assert config["data"]["image_pairing"] == "deranged" and config["train"]["seed"] == seed
    assert config["data"]["manifest"].endswith("manifest.csv")
    metrics = json.loads((results / "two_stage_aux_s0" / "eval-test" / "metrics.json").read_text())
    assert metrics["n"] == 8 and "F1-RB-14-micro" in metrics["ci95"]
    grounding = pd.read_csv(results / "two_stage_aux_s0" / "grounding" / "grounding.csv", index_col=0)
    assert {"true", "blank"} <= set(grounding.columns)
    tests = pd.read_csv(results / "two_stage_aux_s0" / "grounding" / "grounding_tests.csv")
    assert set(tests["condition"]) == {"blank", "shuffled"} and (tests["ci low"] <= tests["ci high"]).all()
    shown = executed(results / "two_stage_aux_s0" / "60_grounding.ipynb")
    markdown = [o["data"]["text/markdown"] for c in shown.cells if c.cell_type == "code"
                for o in c.get("outputs", []) if "text/markdown" in o.get("data", {})]
    assert markdown and markdown[-1].startswith("**Conclusion.** With another study's image")
    attention = pd.read_csv(results / "two_stage_aux_s0" / "attention_by_layer.csv")
    assert len(attention) == 2 and attention["mean"].between(0, 1).all()  # two layers in tiny-gpt2
    calibration = json.loads((results / "two_stage_aux_s0" / "calibration.json").read_text())
    assert 0 <= calibration["token"]["ece_width (T=1)"] <= 1 and calibration["token"]["temperature"] > 0


def test_summary_tables(smoke_study):
    results = smoke_study / "results"
    table = pd.read_csv(results / "summary.csv", index_col=0)
    runs = {f"{arm}_s{seed}" for arm in ARMS for seed in (0, 1)}
    assert runs | {"baseline: most_frequent", "baseline: retrieval"} <= set(table.index)
    seeds = pd.read_csv(results / "seed_table.csv")
    assert set(seeds["arm"]) == set(ARMS) and (seeds["seeds"] == 2).all()
    assert seeds["F1-RB-13abn-micro" == seeds["metric"]]["mean ± sd"].str.contains("±").all()
    # the pre-registered tests of the spec, Holm-adjusted within each family, full verdicts
    claims = pd.read_csv(results / "claims.csv")
    assert list(claims["hypothesis"]) == ["H1a", "H1b", "S1"]
    assert (claims["p Holm"] >= claims["p"]).all() and claims["p Holm"].le(1).all()
    from statsmodels.stats.multitest import multipletests

    for _, family in claims.groupby("family"):
        assert family["p Holm"].to_numpy() == pytest.approx(multipletests(family["p"], method="holm")[1])
    assert claims["verdict"].isin(["supported", "contradicted", "not supported at this power"]).all()
    assert claims["statement"].str.contains("Holm-adjusted p").all()
    assert claims["detectable at 80%"].notna().all() and (claims["detectable at 80%"] >= 0).all()
    paper = pd.read_csv(results / "paper_claims.csv")
    assert paper.set_index("id").loc["C5", "verdict"].startswith("S1 ")  # C5 is tested by S1
    per_finding = pd.read_csv(results / "per_finding.csv")
    assert {"observation", "precision", "recall", "f1", "arm", "run"} <= set(per_finding.columns)
    assert set(per_finding["run"]) == runs
    analyses = pd.read_csv(results / "analyses.csv", index_col=0)
    assert set(analyses.index) == set(ARMS) and "attention share, first layer" in analyses.columns
    for figure in ("forest_primary.png", "training_curves.png"):
        assert (results / figure).is_file(), figure
    summary = printed(executed(results / "90_summary.ipynb"))
    assert "no training log" not in summary and "not shown:" not in summary  # curves + real CXR


def last_markdown(nb: nbformat.NotebookNode) -> str:
    """The markdown the notebook's last code cell displays (where a page's conclusion is)."""
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    return "".join(o["data"]["text/markdown"] for o in last.get("outputs", [])
                   if "text/markdown" in o.get("data", {}))


def test_pages_end_with_their_conclusion(smoke_study):
    results = smoke_study / "results"
    summary = last_markdown(executed(results / "90_summary.ipynb"))
    assert "- **H1a**" in summary and "Holm-adjusted p" in summary and "per seed on" in summary
    assert last_markdown(executed(results / "two_stage_aux_s0" / "40_attention.ipynb")).startswith("**Conclusion")
    calibration = last_markdown(executed(results / "two_stage_aux_s0" / "50_calibration.ipynb"))
    assert "paper's observation" in calibration or "too few" in calibration


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
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        # no red lines from tools (the PTB jar's progress line, a library's prints) ...
        stderr = "".join(o.get("text", "") for o in outputs if o.get("name") == "stderr")
        assert all("NLG metrics without Java" in line or not line.strip() or line.startswith(" ")
                   for line in stderr.splitlines()), f"{path.name}: stderr {stderr[:200]!r}"
        # ... and no stray return values (a byte count from write_text) as a cell's result
        bare = [o["data"]["text/plain"] for o in outputs if o.get("output_type") == "execute_result"
                and "".join(o["data"].get("text/plain", "")).strip().isdigit()]
        assert not bare, f"{path.name}: a bare number as a cell result {bare}"
        assert str(ROOT) + "/" not in json.dumps(nb), f"{path}: an absolute path of this checkout"
        assert nb.metadata["papermill"]["input_path"].startswith("notebooks/")
    html = (results / "two_stage_aux_s0" / "20_train.html").read_text()
    assert "from rrglib" not in html and "run_work_dir" not in html  # no code, no parameters
    assert "Curves" in html and "<img" in html  # the narrative and the figure
    manifest = json.loads((results / "manifest.json").read_text())
    assert len(manifest["commits"]) == 1 and len(manifest["environments"]) == 1
    env = next(iter(manifest["environments"].values()))
    assert env["cpu"]["model"] and env["torch_build"]["cpu_capability"]


def browser() -> str | None:
    import shutil

    return next((shutil.which(b) for b in ("chromium-headless-shell", "chromium", "google-chrome")
                 if shutil.which(b)), None)


def test_report_view_in_a_headless_browser(smoke_study, tmp_path):
    """The HTML a reviewer opens, rendered by a real browser (offline: the CDN scripts fail)."""
    import subprocess

    exe = browser()
    if exe is None:
        pytest.fail("no headless browser: .ci/run installs chromium-headless-shell (apt)")
    page = smoke_study / "results" / "90_summary.html"
    shot = tmp_path / "page.png"
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    subprocess.run([*base, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert "90 · Summary" in dom and "The pre-registered tests" in dom  # the narrative rendered
    for hidden in ("study_dir =", "setup(num_threads", "injected-parameters"):
        assert hidden not in dom, f"{hidden!r} is on the page"
    first = dom.index("90 · Summary")
    assert dom.find("<table", 0, first) == -1 and dom.find("<img", 0, first) == -1  # the title comes first
    from PIL import Image

    pixels = Image.open(shot).convert("L")
    assert pixels.size == (1200, 900) and pixels.getextrema()[0] < 128  # text drawn, not a blank page


def test_rerun_skips_every_finished_step(smoke_study):
    path = smoke_study / "results" / "manifest.json"
    before = json.loads(path.read_text())["steps"]
    run_study(load_spec(smoke_study / "study_smoke.yaml"))
    after = json.loads(path.read_text())["steps"]
    assert after.keys() == before.keys()
    assert all(after[k]["exec_id"] == before[k]["exec_id"] for k in before)  # nothing re-executed

"""Study runner: tiny notebooks executed through papermill in a temporary repo layout."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from study_runner import study

REPO = Path(__file__).resolve().parents[1]

# Each notebook appends "<notebook>:<run_name>" to calls.log (execution order and counts)
# and dumps the parameters it received into <out>/<notebook>.params.json.
RECORD = """
import json, os
from pathlib import Path
name = {name!r}
with open("calls.log", "a") as f:
    f.write(f"{{name}}:{{run_name}}\\n")
out = Path(run_dir or study_dir)
out.mkdir(parents=True, exist_ok=True)
keys = ["study_name", "study_dir", "work_dir", "run_name", "run_dir", "run_work_dir",
        "config", "overrides", "runs", "num_threads", "lr", "extra"]
got = {{k: globals().get(k) for k in keys}}
got["omp"] = os.environ.get("OMP_NUM_THREADS")
got["cwd"] = os.getcwd()
(out / f"{{name}}.params.json").write_text(json.dumps(got))
"""


def write_notebook(path: Path, name: str, extra_code: str = "", declare: str = "") -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(
        "study_dir = None\nrun_name = None\nrun_dir = None\nlr = 0.1\nextra = None\nfail = False" + declare
    )
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# {name}"),
        params,
        nbformat.v4.new_code_cell(RECORD.format(name=name) + extra_code),
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def make_repo(tmp: Path, spec: dict, fail_check: bool = False) -> Path:
    write_notebook(tmp / "notebooks/10_prep.ipynb", "10_prep")
    write_notebook(
        tmp / "notebooks/20_train.ipynb",
        "20_train",
        "if fail:\n    raise ValueError(f'asked to fail in {run_name}')\n",
    )
    write_notebook(
        tmp / "notebooks/30_check.ipynb",
        "30_check",
        "raise RuntimeError('boom in check')\n" if fail_check else "",
    )
    write_notebook(tmp / "notebooks/90_summary.ipynb", "90_summary")
    (tmp / "configs").mkdir(exist_ok=True)
    (tmp / "configs/base.yaml").write_text("train:\n  strategy: frozen\n  epochs: 1\n")
    path = tmp / "configs/study_t.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def calls(tmp: Path) -> list[str]:
    log = tmp / "calls.log"
    return log.read_text().split() if log.exists() else []


def run(spec_path: Path, params: dict | None = None, **kw) -> study.Manifest:
    return study.run_study(study.load_spec(spec_path, params), out=lambda line: None, **kw)


BASE = {
    "name": "t",
    "parameters": {"base_config": "configs/base.yaml", "num_threads": 1, "lr": 0.5},
    "before": ["10_prep"],
    "runs": [
        {"name": "a", "overrides": ["train.strategy=frozen"]},
        {"name": "b", "overrides": ["train.epochs=2"], "parameters": {"extra": 7}},
    ],
    "per_run": ["20_train"],
    "after": ["90_summary"],
}


@pytest.mark.slow
def test_run_skip_rerun_and_status(tmp_path, capsys):
    spec_path = make_repo(tmp_path, BASE)
    manifest = run(spec_path)
    assert calls(tmp_path) == ["10_prep:None", "20_train:a", "20_train:b", "90_summary:None"]

    res = tmp_path / "results/t"
    meta = nbformat.read(res / "a/20_train.ipynb", as_version=4).metadata["papermill"]
    assert meta["input_path"] == "notebooks/20_train.ipynb"  # no path of this machine
    assert meta["output_path"] == "results/t/a/20_train.ipynb"
    for rel in ["10_prep", "a/20_train", "b/20_train", "90_summary"]:
        assert (res / f"{rel}.ipynb").is_file() and (res / f"{rel}.html").is_file()
    html = (res / "a/20_train.html").read_text()
    assert "<style" in html and "<h1 id=\"20_train\">" in html  # CSS inline, narrative shown
    assert "asked to fail" not in html and "lr = 0.1" not in html  # code and parameters are not

    got = json.loads((res / "b/20_train.params.json").read_text())
    assert got["study_name"] == "t" and got["study_dir"] == "results/t"
    assert got["work_dir"] == "runs/t" and got["run_work_dir"] == "runs/t/b"
    assert got["run_name"] == "b" and got["run_dir"] == "results/t/b"
    assert got["config"] == "configs/base.yaml" and got["overrides"] == ["train.epochs=2"]
    assert got["runs"] == ["a", "b"] and got["lr"] == 0.5 and got["extra"] == 7
    assert got["num_threads"] == 1 and got["omp"] == "1"
    assert Path(got["cwd"]).resolve() == tmp_path.resolve()
    top = json.loads((res / "10_prep.params.json").read_text())
    assert top["run_name"] is None and top["run_dir"] is None

    data = json.loads((res / "manifest.json").read_text())
    assert data == manifest.data and list(data["steps"]) == [
        "10_prep", "a/20_train", "b/20_train", "90_summary"
    ]  # fmt: skip
    rec = data["steps"]["a/20_train"]
    assert rec["status"] == "done" and rec["output"] == "results/t/a/20_train.ipynb"
    assert rec["html"] == "results/t/a/20_train.html"
    assert len(rec["config_hash"]) == 16 and rec["wall_s"] > 0
    assert rec["started_at"] <= rec["finished_at"]
    env = data["environments"][rec["environment"]]
    assert {"python", "torch", "transformers", "peft", "accelerate", "papermill"} <= set(
        env["packages"]
    )
    assert env["cpu"]["model"] and isinstance(env["cpu"]["isa"], list)
    assert env["torch_build"]["cpu_capability"] and rec["threads"] == 1
    assert set(rec["git"]) == {"commit", "dirty"}  # tmp_path is no git repo: both None
    assert data["warnings"] == [] and data["commits"] == ["None"]
    assert rec["upstream"] == {"10_prep": data["steps"]["10_prep"]["exec_id"]}

    # Unchanged: nothing executes again.
    run(spec_path)
    assert len(calls(tmp_path)) == 4

    # One run's overrides change: that run and the summary rerun, nothing else.
    spec = dict(BASE, runs=[BASE["runs"][0], dict(BASE["runs"][1], overrides=["train.epochs=3"])])
    spec_path.write_text(yaml.safe_dump(spec))
    lines: list[str] = []
    study.run_study(study.load_spec(spec_path), out=lines.append)
    assert calls(tmp_path)[4:] == ["20_train:b", "90_summary:None"]
    assert any(line.startswith("[1/2] b/20_train done in") for line in lines), lines

    # A CLI parameter reaches every notebook and changes every hash.
    steps = study.plan(study.load_spec(spec_path, {"lr": 0.01}))
    assert [s.action for s in steps] == ["run"] * 4
    assert all(s.reason == "parameters changed" for s in steps[:1])

    assert study.main(["status", str(spec_path)]) == 0
    table = capsys.readouterr().out
    assert "b/20_train" in table and "done" in table


@pytest.mark.slow
def test_failure_stops_and_resume(tmp_path, capsys):
    spec = dict(BASE, before=[], runs=[{"name": "x"}], per_run=["20_train", "30_check"])
    spec_path = make_repo(tmp_path, spec, fail_check=True)
    with pytest.raises(study.StudyFailed) as err:
        run(spec_path)
    msg = str(err.value)
    assert "results/t/x/30_check.ipynb" in msg and "boom in check" in msg
    partial = nbformat.read(tmp_path / "results/t/x/30_check.ipynb", as_version=4)
    assert any(
        o.get("ename") == "RuntimeError" for c in partial.cells for o in c.get("outputs", [])
    )
    steps = err.value.manifest.steps
    assert steps["x/20_train"]["status"] == "done"
    assert steps["x/30_check"]["status"] == "failed"
    assert "boom in check" in steps["x/30_check"]["error"]
    assert steps["90_summary"]["status"] == "skipped"
    assert calls(tmp_path) == ["20_train:x", "30_check:x"]

    # A dry run shows the resume point without executing anything.
    assert study.main(["run", str(spec_path), "--only", "x", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "skip  x/20_train" in out and "run   x/30_check" in out and "last status: failed" in out
    write_notebook(tmp_path / "notebooks/30_check.ipynb", "30_check")  # the fix
    run(spec_path)
    assert calls(tmp_path)[2:] == ["30_check:x", "90_summary:None"]  # 20_train not redone


def test_dry_run_executes_nothing(tmp_path, capsys):
    spec_path = make_repo(tmp_path, BASE)
    assert study.main(["run", str(spec_path), "--dry-run", "-p", "lr=0.2", "--only", "a"]) == 0
    out = capsys.readouterr().out
    assert "run   a/20_train" in out and "hold  b/20_train" in out
    assert "hold  90_summary" in out  # waits for the run that is not selected
    assert calls(tmp_path) == [] and not (tmp_path / "results").exists()


def test_spec_errors(tmp_path, capsys):
    spec_path = make_repo(tmp_path, dict(BASE, per_run=["20_train", "nope"]))
    assert study.main(["run", str(spec_path), "--dry-run"]) == 1
    assert "nope" in capsys.readouterr().err
    make_repo(tmp_path, BASE)
    with pytest.raises(study.SpecError, match="standard parameter"):
        study.load_spec(spec_path, {"run_name": "x"})
    assert study.parse_param("a=1e-3") == ("a", "1e-3") and study.parse_param("b=[1,2]")[1] == [
        1,
        2,
    ]


def test_second_run_is_refused_while_locked(tmp_path):
    spec = study.load_spec(make_repo(tmp_path, BASE))
    with study._study_lock(spec.work_dir / ".study.lock"):
        with pytest.raises(study.StudyLocked):
            study.run_study(spec, out=lambda line: None)
    assert calls(tmp_path) == []


def test_force_and_only(tmp_path):
    make_repo(tmp_path, BASE)
    spec = study.load_spec(tmp_path / "configs/study_t.yaml")
    manifest = study.Manifest(spec.manifest_path)
    for s in study.plan(spec, manifest):  # pretend everything finished
        s.output.parent.mkdir(parents=True, exist_ok=True)
        s.output.write_text("{}")
        manifest.steps[s.key] = {"status": "done", "hashes": s.hashes, "exec_id": s.key}
        manifest.steps[s.key]["upstream"] = {k: k for k in s.upstream}
    assert {s.action for s in study.plan(spec, manifest)} == {"skip"}
    forced = study.plan(spec, manifest, force=["a"])
    assert [s.key for s in forced if s.action == "run"] == ["a/20_train", "90_summary"]
    assert {s.action for s in study.plan(spec, manifest, force=[])} == {"run"}
    manifest.steps["10_prep"]["exec_id"] = "again"  # executed since the runs were
    assert {s.action for s in study.plan(spec, manifest, only=["b"])} == {"skip", "run", "hold"}


def test_kernel_runs_this_interpreter(tmp_path, monkeypatch):
    from jupyter_client.kernelspec import KernelSpecManager

    name = study.ensure_kernel(tmp_path)
    assert study._runs_this_python(KernelSpecManager().get_kernel_spec(name).argv[0])

    # A `python3` kernel that points at another interpreter is not used.
    other = tmp_path / "elsewhere/kernels/python3"
    other.mkdir(parents=True)
    argv = ["/opt/other/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (other / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "x", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "elsewhere"))
    name = study.ensure_kernel(tmp_path / "work")
    assert name != "python3"
    assert KernelSpecManager().get_kernel_spec(name).argv[0] == sys.executable


def test_repo_notebooks_are_clean():
    paths = sorted((REPO / "notebooks").glob("*.ipynb"))
    if not paths:
        pytest.skip("no notebooks yet")
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged `parameters`"
        assert code and code[0] is tagged[0], (
            f"{path.name}: `parameters` must be the first code cell"
        )
        for c in code:
            assert not c.outputs and c.execution_count is None, f"{path.name}: clear outputs"


def test_repo_notebooks_declare_every_study_parameter_they_read():
    # a step's rerun hash covers only declared parameters: an undeclared read would go stale
    import ast

    names = set(study.STANDARD_PARAMETERS)
    for spec_path in (REPO / "configs").glob("study_*.yaml"):
        names |= set(yaml.safe_load(spec_path.read_text()).get("parameters") or {})
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        used = set()
        for c in nb.cells:
            if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", []):
                used |= {n.id for n in ast.walk(ast.parse(c.source)) if isinstance(n, ast.Name)}
        missing = (used & names) - study.declared_parameters(path)
        assert not missing, f"{path.name} reads {sorted(missing)} without declaring them"


@pytest.mark.slow
def test_a_parameter_reruns_only_the_notebooks_that_declare_it(tmp_path):
    spec = dict(BASE, parameters=dict(BASE["parameters"], check_n=4), per_run=["20_train", "30_check"])
    spec_path = make_repo(tmp_path, spec)
    write_notebook(tmp_path / "notebooks/30_check.ipynb", "30_check", declare="\ncheck_n: int = 2")
    assert study.declared_parameters(tmp_path / "notebooks/30_check.ipynb") == {
        "study_dir", "run_name", "run_dir", "lr", "extra", "fail", "check_n"}
    run(spec_path)
    first = len(calls(tmp_path))
    spec["parameters"]["check_n"] = 8
    spec_path.write_text(yaml.safe_dump(spec))
    steps = {s.key: s for s in study.plan(study.load_spec(spec_path))}
    assert steps["a/20_train"].action == "skip" and steps["10_prep"].action == "skip"
    assert steps["a/30_check"].action == "run" and steps["a/30_check"].reason == "parameters changed"
    assert steps["90_summary"].action == "run"
    run(spec_path)
    assert sorted(calls(tmp_path)[first:]) == ["30_check:a", "30_check:b", "90_summary:None"]


@pytest.mark.slow
def test_a_fresh_checkout_reruns_the_committed_study(tmp_path):
    import shutil

    spec_path = make_repo(tmp_path, BASE)
    run(spec_path)
    assert len(calls(tmp_path)) == 4
    spec = study.load_spec(spec_path)
    first = study.Manifest.load(spec.manifest_path).data["workspace"]
    assert first == study.read_workspace(spec.work_dir)
    assert all(s.action == "skip" for s in study.plan(spec))
    shutil.rmtree(tmp_path / "runs")  # what a clone of the repository looks like: results, no runs/
    steps = study.plan(study.load_spec(spec_path))
    assert all(s.action == "run" and "another checkout" in s.reason for s in steps)
    held = {s.key: s.action for s in study.plan(study.load_spec(spec_path), only=["a"])}
    assert held["b/20_train"] == "hold" and held["a/20_train"] == "run"  # --only still applies
    run(spec_path)
    assert len(calls(tmp_path)) == 8
    again = study.Manifest.load(spec.manifest_path).data["workspace"]
    assert again != first and again == study.read_workspace(spec.work_dir)
    assert all(s.action == "skip" for s in study.plan(study.load_spec(spec_path)))


@pytest.mark.slow
def test_html_is_a_report_and_the_notebook_keeps_everything(tmp_path):
    import papermill

    from study_runner.export import export_html, relative_paths

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("secret_param = 1")
    params.metadata["tags"] = ["parameters"]
    hidden = nbformat.v4.new_code_cell("print('dropped-cell-output')")
    hidden.metadata["tags"] = ["remove-cell"]
    dump = nbformat.v4.new_code_cell("print('long-config-dump')")
    dump.metadata["tags"] = ["remove-output"]
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Findings\n\nThe narrative a reviewer reads."),
        params, hidden, dump,
        nbformat.v4.new_code_cell("import pandas as pd\nprint(f'shown-output-{secret_param + 41}')\n"
                                  "pd.DataFrame({'metric': ['F1'], 'value': [0.5]})"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src, out = tmp_path / "notebooks/n.ipynb", tmp_path / "results/n.ipynb"
    src.parent.mkdir()
    out.parent.mkdir()
    nbformat.write(nb, src)
    papermill.execute_notebook(str(src), str(out), parameters={"secret_param": 2},
                               kernel_name=study.ensure_kernel(tmp_path / "work"), cwd=str(tmp_path),
                               progress_bar=False)
    relative_paths(out, tmp_path)
    html = export_html(out).read_text()
    assert "The narrative a reviewer reads." in html and "shown-output-43" in html
    assert "<table" in html and "metric" in html  # the table output
    for absent in ("secret_param", "dropped-cell-output", "long-config-dump", "print(", "import pandas"):
        assert absent not in html, absent
    executed = nbformat.read(out, as_version=4)  # the notebook itself keeps everything
    text = json.dumps(executed)
    assert "dropped-cell-output" in text and "long-config-dump" in text and "secret_param = 2" in text
    assert executed.metadata["papermill"]["input_path"] == "notebooks/n.ipynb"
    assert str(tmp_path) not in text


def test_provenance_warns_when_steps_mix_commits_or_machines(tmp_path):
    manifest = study.Manifest(tmp_path / "manifest.json")
    manifest.steps["a"] = {"status": "done", "git": {"commit": "1" * 40, "dirty": False},
                           "environment": "e1"}
    manifest.steps["b"] = {"status": "done", "git": {"commit": "1" * 40, "dirty": False},
                           "environment": "e1"}
    manifest.steps["c"] = {"status": "failed", "git": {"commit": "2" * 40}, "environment": "e2"}
    assert study.provenance_warnings(manifest) == []  # a failed step does not count
    manifest.steps["c"]["status"] = "done"
    warnings = study.provenance_warnings(manifest)
    assert len(warnings) == 2 and "2 different commits" in warnings[0]
    assert "2222222222" in warnings[0] and "different environments" in warnings[1]


def test_environment_records_what_decides_the_numbers():
    from rrglib import provenance

    env = provenance.environment()
    assert env["cpu"]["model"] and set(env["cpu"]["isa"]) <= set(provenance.ISA_FLAGS)
    assert isinstance(env["torch_build"]["cpu_capability"], str)  # AVX2, AVX512, DEFAULT, ...
    assert env["torch_build"].get("BLAS_INFO") and env["packages"]["torch"]
    assert len(env["id"]) == 12 and env["id"] == provenance.environment()["id"]


def test_comparisons_come_from_the_spec(tmp_path):
    spec_path = make_repo(tmp_path, dict(BASE, comparisons=[["b", "a"]]))
    spec = study.load_spec(spec_path)
    assert spec.comparisons == [("b", "a")]
    summary = [s for s in study.plan(spec) if s.key == "90_summary"][0]
    assert summary.parameters["comparisons"] == [["b", "a"]]
    spec_path.write_text(yaml.safe_dump(dict(BASE, comparisons=[["b", "nope"]])))
    with pytest.raises(study.SpecError, match="pair of run names"):
        study.load_spec(spec_path)
    demo = study.load_spec(REPO / "configs/study_demo.yaml")
    assert ("two_stage_aux", "frozen_aux") in demo.comparisons


def test_setup_helper(tmp_path, monkeypatch):
    import warnings

    import pandas as pd
    import tqdm.auto

    from rrglib import notebook

    (tmp_path / "configs").mkdir()
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")  # JupyterLab opened in notebooks/
    monkeypatch.setattr(tqdm.auto, "tqdm", tqdm.auto.tqdm)  # restored after the test
    monkeypatch.setenv("RRG_STUDY_RUNNER", "1")
    with warnings.catch_warnings(record=True) as seen, pd.option_context("display.max_columns", 5):
        warnings.simplefilter("always")
        notebook.setup(1, out_dir="runs/x/results")
        warnings.warn("Converting a tensor with requires_grad=True to a scalar", UserWarning, stacklevel=1)
        warnings.warn(tqdm.TqdmWarning("IProgress not found"), stacklevel=1)
        warnings.warn("a real problem", UserWarning, stacklevel=1)
        assert pd.get_option("display.max_columns") is None
        assert pd.get_option("display.max_colwidth") is None
    assert [str(w.message) for w in seen] == ["a real problem"]
    assert Path.cwd() == tmp_path and (tmp_path / "runs/x/results").is_dir()
    assert tqdm.auto.tqdm(range(3), disable=False).disable  # no bars in executed notebooks


def test_demo_data_is_reused_on_a_second_run(tmp_path):
    import pandas as pd

    from data_prep.demo import build, build_state
    from rrglib.labels import CHEXPERT_OBSERVATIONS

    rows = [{"id": f"CXR{i}", "findings": f"Findings {i}.", "impression": "Impression.",
             "report": f"Findings {i}.", **{o: float("nan") for o in CHEXPERT_OBSERVATIONS},
             "No Finding": 1.0} for i in range(30)]
    options = dict(n=12, seed=3, image_size=48, positive_fraction=None)
    data = tmp_path / "data/demo"
    assert build_state(data, **options) == "build"  # new folder
    build(data, workers=1, sources=pd.DataFrame(rows), **options)
    assert build_state(data, **options) == "current"  # what 10_data checks: reuse
    assert build_state(data, **dict(options, seed=4)) == "build"
    assert build_state(data, **dict(options, n=13)) == "build"
    interrupted = tmp_path / "data/interrupted"  # the builder's marker, no meta yet: ours, rebuilt
    interrupted.mkdir()
    (interrupted / ".synthcxr").write_text("")
    assert build_state(interrupted, **options) == "build"


def test_notebook_defaults_are_the_demo_profile():
    # opened by hand, 10 -> 20 -> 30 must train and evaluate a real demo model, not the smoke one
    demo = yaml.safe_load((REPO / "configs/study_demo.yaml").read_text())["parameters"]
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        cell = next(c for c in nbformat.read(path, as_version=4).cells
                    if "parameters" in c.metadata.get("tags", []))
        defaults: dict = {}
        exec(cell.source, {}, defaults)
        for key, value in defaults.items():
            if key in demo:
                assert value == demo[key], f"{path.name}: {key} = {value!r}, the demo study has {demo[key]!r}"
        if "config" in defaults:
            assert defaults["config"] == demo["base_config"], path.name
        assert all("smoke" not in str(v) for v in defaults.values()), path.name
        for key in ("study_dir", "run_dir", "run_work_dir", "work_dir"):  # never into results/
            assert not str(defaults.get(key, "runs/")).startswith("results"), (path.name, key)


SEEDED = dict(
    BASE,
    runs=[{"name": "a", "overrides": ["train.strategy=frozen"], "seeds": [0, 2]},
          {"name": "b", "overrides": ["train.epochs=2"]}],
    per_run=["20_train", "30_check"],
    first_seed_only=["30_check"],
    comparisons=[["a", "b"]],
    hypotheses=[{"name": "H1", "arm_a": "a", "arm_b": "b", "metric": "F1-RB-13abn-micro",
                 "direction": "greater", "text": "a beats b", "family": "primary"}],
)


def test_seeds_expand_an_arm_into_one_run_per_seed(tmp_path, capsys):
    spec = study.load_spec(make_repo(tmp_path, SEEDED))
    assert [r.name for r in spec.runs] == ["a_s0", "a_s2", "b"]
    assert spec.runs[1].overrides == ["train.strategy=frozen", "train.seed=2"]  # seed last: wins
    assert spec.arms == {"a": ["a_s0", "a_s2"], "b": ["b"]}
    assert spec.comparisons == [("a", "b")] and spec.hypotheses[0]["arm_a"] == "a"
    steps = {s.key: s for s in study.plan(spec)}
    # first_seed_only: the later seeds skip 30_check, unseeded arms keep it
    assert list(steps) == ["10_prep", "a_s0/20_train", "a_s0/30_check", "a_s2/20_train",
                           "b/20_train", "b/30_check", "90_summary"]
    assert steps["90_summary"].upstream == ["a_s0/30_check", "a_s2/20_train", "b/30_check"]
    params = steps["90_summary"].parameters
    assert params["arms"] == {"a": ["a_s0", "a_s2"], "b": ["b"]}
    assert params["runs"] == ["a_s0", "a_s2", "b"] and params["hypotheses"] == SEEDED["hypotheses"]
    assert steps["a_s2/20_train"].config_hash != steps["a_s0/20_train"].config_hash  # other seed
    assert study.main(["run", str(tmp_path / "configs/study_t.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "arm a: runs a_s0, a_s2" in out and "run   a_s2/20_train" in out


def test_arm_names_select_all_their_seeds(tmp_path):
    spec = study.load_spec(make_repo(tmp_path, SEEDED))
    only = {s.key: s.action for s in study.plan(spec, only=["a"])}
    assert only["a_s0/20_train"] == only["a_s2/20_train"] == "run" and only["b/20_train"] == "hold"
    assert {s.key: s.action for s in study.plan(spec, only=["a_s2"])}["a_s0/20_train"] == "hold"
    forced = study.plan(spec, study.Manifest(spec.manifest_path), force=["a"])
    assert {s.key for s in forced if s.reason == "forced"} == {
        "a_s0/20_train", "a_s0/30_check", "a_s2/20_train"}
    # adding an arm leaves the other runs' hashes alone (`arms`, like `runs`, is not hashed)
    before = {s.key: s.hashes for s in study.plan(spec)}
    bigger = dict(SEEDED, runs=[*SEEDED["runs"], {"name": "c", "seeds": [1]}])
    spec.path.write_text(yaml.safe_dump(bigger, sort_keys=False))
    after = {s.key: s.hashes for s in study.plan(study.load_spec(spec.path))}
    assert after["a_s2/20_train"] == before["a_s2/20_train"] and "c_s1/20_train" in after


@pytest.mark.parametrize("change, message", [
    ({"runs": [{"name": "a", "seeds": [0, 0]}]}, "distinct integers"),
    ({"runs": [{"name": "a", "seeds": []}]}, "non-empty"),
    ({"runs": [{"name": "a", "seeds": ["x"]}]}, "integers"),
    ({"runs": [{"name": "a", "seeds": [0]}, {"name": "a_s0"}]}, "used twice: a_s0"),
    ({"runs": [{"name": "a", "seeds": [1]}, {"name": "a"}]}, "used twice: a"),
    ({"first_seed_only": ["90_summary"]}, "not in per_run"),
    ({"comparisons": [["a_s0", "b"]]}, "pair of run names"),
    ({"hypotheses": [{"name": "H1", "arm_a": "a_s0", "arm_b": "b"}]}, "a_s0 is not an arm"),
    ({"hypotheses": [{"name": "H1", "arm_a": "a", "arm_b": "b", "metrc": "x"}]}, "unknown"),
    ({"hypotheses": [{"name": "H1", "arm_a": "a", "arm_b": "b", "direction": "up"}]}, "direction"),
    ({"hypotheses": [{"name": "H", "arm_a": "a", "arm_b": "b"}] * 2}, "hypothesis name"),
])
def test_seed_and_hypothesis_spec_errors(tmp_path, change, message):
    with pytest.raises(study.SpecError, match=message):
        study.load_spec(make_repo(tmp_path, dict(SEEDED, **change)))


def test_hypothesis_keys_match_the_reporting_dataclass():
    import dataclasses

    from rrglib.reporting import Hypothesis

    assert set(study.HYPOTHESIS_KEYS) == {f.name for f in dataclasses.fields(Hypothesis)}


def test_the_study_specs_load_with_their_plans():
    for name in ("study_demo", "study_demo_full", "study_smoke"):
        spec = study.load_spec(REPO / f"configs/{name}.yaml")
        arms_in_plan = {h[k] for h in spec.hypotheses for k in ("arm_a", "arm_b")}
        assert arms_in_plan <= set(spec.arms), name
    full = study.load_spec(REPO / "configs/study_demo_full.yaml")
    primary = {h["name"]: h for h in full.hypotheses if h.get("family", "primary") == "primary"}
    for h in primary.values():  # every arm of a primary comparison has >= 3 seeds
        assert len(full.arms[h["arm_a"]]) >= 3 and len(full.arms[h["arm_b"]]) >= 3, h["name"]
    deranged = [r for r in full.runs if "data.image_pairing=deranged" in r.overrides]
    assert {r.arm for r in deranged} == {"deranged_aux"} and len(deranged) == 3
    assert full.results_dir.name == "demo_full"

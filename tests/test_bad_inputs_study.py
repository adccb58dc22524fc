"""Hostile and mistaken inputs to the study runner: each a one-line error naming the problem and
the fix, and nothing deleted or written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_study import BASE, calls, make_repo, write_notebook

from data_prep.demo import ForeignDataset, build_state
from study_runner import study

REPO = Path(__file__).resolve().parents[1]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../other", "-x", ".hidden", "", "a b"])
def test_unsafe_run_names_are_refused(tmp_path, capsys, name):
    spec_path = make_repo(tmp_path, dict(BASE, runs=[{"name": name}]))
    assert study.main(["run", str(spec_path)]) == 1
    err = error_line(capsys)
    assert "not a safe name" in err and "letters, digits" in err
    assert calls(tmp_path) == [] and not (tmp_path / "results").exists()
    assert not (tmp_path / "runs").exists()


def test_unsafe_study_name_is_refused(tmp_path, capsys):
    spec_path = make_repo(tmp_path, dict(BASE, name=".."))
    assert study.main(["run", str(spec_path)]) == 1
    assert "not a safe name" in error_line(capsys) and not (tmp_path / "results").exists()


def test_safe_names_pass(tmp_path):
    spec_path = make_repo(tmp_path, dict(BASE, runs=[{"name": "two_stage-2.b"}]))
    assert [s.run for s in study.plan(study.load_spec(spec_path))][1] == "two_stage-2.b"


def test_unknown_cli_parameter_lists_the_valid_ones(tmp_path, capsys):
    spec_path = make_repo(tmp_path, BASE)
    assert study.main(["run", str(spec_path), "-p", "demo_nn=5"]) == 1
    err = error_line(capsys)
    assert "unknown parameter(s) demo_nn" in err and "valid:" in err and "lr" in err
    assert calls(tmp_path) == [] and not (tmp_path / "results").exists()


def test_unknown_spec_parameter_is_refused(tmp_path, capsys):
    spec_path = make_repo(tmp_path, dict(BASE, parameters=dict(BASE["parameters"], n_bot=10)))
    assert study.main(["run", str(spec_path), "--dry-run"]) == 1
    assert "n_bot" in error_line(capsys)
    run_param = dict(BASE, runs=[{"name": "a", "parameters": {"lrr": 1}}])
    spec_path.write_text(yaml.safe_dump(run_param))
    with pytest.raises(study.SpecError, match="run a: unknown parameter"):
        study.load_spec(spec_path)


def test_the_repo_studies_refuse_a_misspelt_parameter():
    with pytest.raises(study.SpecError, match=r"demo_nn.*valid: .*demo_n"):
        study.load_spec(REPO / "configs/study_demo.yaml", {"demo_nn": 5})
    assert study.load_spec(REPO / "configs/study_demo.yaml", {"demo_n": 100})  # the right name


def test_unknown_force_name_lists_the_valid_ones(tmp_path, capsys):
    spec_path = make_repo(tmp_path, BASE)
    assert study.main(["run", str(spec_path), "--force", "frozn"]) == 1
    err = error_line(capsys)
    assert "--force: no run, notebook or step named frozn" in err
    assert "runs a, b" in err and "20_train" in err
    assert calls(tmp_path) == [] and not (tmp_path / "results").exists()
    assert study.main(["run", str(spec_path), "--dry-run", "--force", "a", "20_train",
                       "b/20_train"]) == 0  # the valid kinds of names


def foreign_dataset(path: Path) -> dict[str, bytes]:
    """A real-looking dataset (not built by data_prep.demo); returns its files' contents."""
    (path / "images").mkdir(parents=True)
    (path / "images/CXR1.png").write_bytes(b"real image")
    (path / "manifest.csv").write_text("id,split,report\nCXR1,train,real\n")
    (path / "manifest.meta.json").write_text(json.dumps({"builder": "data_prep.iu_xray"}))
    return {str(p): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_demo_build_refuses_a_foreign_dataset(tmp_path):
    data = tmp_path / "data/iu_xray"
    before = foreign_dataset(data)
    with pytest.raises(ForeignDataset, match=r"not a SynthCXR folder.*build_demo=false") as err:
        build_state(data, n=48, seed=0, image_size=64, positive_fraction=None)
    assert "\n" not in str(err.value)
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray/notes.txt").write_text("mine")
    with pytest.raises(ForeignDataset):  # any folder with files and no SynthCXR meta
        build_state(tmp_path / "stray", n=48)
    assert {str(p): p.read_bytes() for p in data.rglob("*") if p.is_file()} == before


def test_demo_build_refuses_a_symlinked_image_folder(tmp_path):
    real = tmp_path / "NLMCXR_png"
    real.mkdir()
    data = tmp_path / "data/demo"
    data.mkdir(parents=True)
    (data / "manifest.meta.json").write_text(json.dumps({"builder": "data_prep.demo"}))
    (data / "images").symlink_to(real)  # as data_prep.iu_xray links the original images
    with pytest.raises(ForeignDataset):
        build_state(data, n=48)


@pytest.mark.slow
def test_10_data_refuses_a_foreign_data_dir_through_the_runner(tmp_path, capsys):
    data = tmp_path / "iu_xray"
    before = foreign_dataset(data)
    spec = {"name": "bad", "root": str(REPO), "results_dir": str(tmp_path / "results"),
            "work_dir": str(tmp_path / "runs"), "before": ["10_data"],
            "parameters": {"demo_n": 48, "demo_image_size": 64, "num_threads": 1}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert study.main(["run", str(path), "-p", f"data_dir={data}"]) == 1
    err = capsys.readouterr().err.splitlines()[0]  # the error; the next line says where to look
    assert "ForeignDataset" in err and "not a SynthCXR folder" in err and "build_demo=false" in err
    assert {str(p): p.read_bytes() for p in data.rglob("*") if p.is_file()} == before


SLEEPER = "import time\nPath = __import__('pathlib').Path\nPath('started').write_text('1')\ntime.sleep(60)\n"


@pytest.mark.slow
def test_sigterm_marks_the_running_step_failed(tmp_path):
    spec = dict(BASE, before=[], runs=[{"name": "x"}], after=[])
    spec_path = make_repo(tmp_path, spec)
    write_notebook(tmp_path / "notebooks/20_train.ipynb", "20_train", SLEEPER)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "study_runner", "run", str(spec_path)],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "started").exists():
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "marked failed" in err
    steps = json.loads((tmp_path / "results/t/manifest.json").read_text())["steps"]
    assert steps["x/20_train"]["status"] == "failed"
    assert "SIGTERM" in steps["x/20_train"]["error"]
    assert all(r["status"] != "running" for r in steps.values())
    plan = {s.key: s for s in study.plan(study.load_spec(spec_path))}
    assert plan["x/20_train"].action == "run"  # a rerun resumes there

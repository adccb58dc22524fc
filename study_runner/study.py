"""Study runner: a study spec -> its notebooks executed in order with papermill -> a manifest.

    python -m study_runner run configs/study_demo.yaml [--dry-run] [-p key=value ...]
        [--only RUN ...] [--force [NAME ...]]
    python -m study_runner status configs/study_demo.yaml [-p key=value ...]

A spec (configs/study_*.yaml) names the study, its `parameters` (`-p` wins), the notebooks to run
`before` the runs, for each run (`per_run`; `first_seed_only` ones for an arm's first seed) and
`after` them, and its arms (`runs`); an arm with `seeds` expands into runs `<arm>_s<seed>` with
`train.seed=<seed>` appended to its overrides. Notebooks run with cwd = the repo root and get
STANDARD_PARAMETERS, then the spec's, the run's and the `-p` parameters; a parameter no notebook
declares is an error, so a misspelt name never runs the study with a default. A step executes
again when it never finished, when its notebook, its declared parameters or its config changed,
when forced, when a step it reads from executes again, or when executed in another checkout.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import yaml

from rrglib import provenance
from rrglib.config import apply_overrides
from study_runner.export import export_html, relative_paths

STANDARD_PARAMETERS = (
    "study_name", "study_dir", "work_dir", "run_name", "run_dir", "run_work_dir", "config",
    "overrides", "runs", "arms", "comparisons", "hypotheses", "num_threads",
)  # fmt: skip
# Parameters that change how fast a notebook runs, not what it computes: kept out of hashes.
EXECUTION_ONLY_PARAMETERS = ("num_threads",)
SPEC_KEYS = ("name", "root", "results_dir", "work_dir", "parameters", "before", "runs", "per_run",
             "first_seed_only", "after", "comparisons", "hypotheses")
RUN_KEYS = ("name", "overrides", "parameters", "config", "seeds")
# The keys of rrglib.reporting.Hypothesis (tests/test_study.py checks the two agree).
HYPOTHESIS_KEYS = ("name", "arm_a", "arm_b", "metric", "direction", "text", "family")
# A name becomes a directory: no `.`/`..`, no separators, no leading dash or dot.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
WORKSPACE_FILE = ".study-workspace"
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_KERNEL_NAME = "rrg-study-python"


class SpecError(ValueError):
    """The study spec or a command-line argument is wrong; the message says how to fix it."""


class StudyLocked(RuntimeError):
    """Another `run` of the same study holds its lock."""


class StudyFailed(RuntimeError):
    """A notebook failed or the run was interrupted; `.manifest` holds what was written."""

    def __init__(self, message: str, manifest: Manifest):
        super().__init__(message)
        self.manifest = manifest


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so the running step is recorded as failed."""


# -- spec ----------------------------------------------------------------------------------
@dataclass
class RunSpec:
    """One run: an arm of the spec, or one seed of an arm declared with `seeds`."""

    name: str
    overrides: list[str]
    parameters: dict[str, Any]
    config: str | None
    arm: str  # the spec entry's name (== name for an arm without seeds)
    first_seed: bool = True  # False for an arm's later seeds (they skip `first_seed_only`)


@dataclass
class StudySpec:
    name: str
    path: Path
    root: Path
    results_dir: Path
    work_dir: Path
    parameters: dict[str, Any]
    cli_parameters: dict[str, Any]
    before: list[str]
    runs: list[RunSpec]
    per_run: list[str]
    after: list[str]
    first_seed_only: list[str] = field(default_factory=list)
    comparisons: list[tuple[str, str]] = field(default_factory=list)
    hypotheses: list[dict[str, Any]] = field(default_factory=list)

    @property
    def arms(self) -> dict[str, list[str]]:
        """{arm: the names of its runs}, in spec order."""
        arms: dict[str, list[str]] = {}
        for r in self.runs:
            arms.setdefault(r.arm, []).append(r.name)
        return arms

    @property
    def manifest_path(self) -> Path:
        return self.results_dir / "manifest.json"

    @property
    def notebooks_dir(self) -> Path:
        return self.root / "notebooks"

    @property
    def notebooks(self) -> list[str]:
        return [*self.before, *self.per_run, *self.after]


def parse_param(item: str) -> tuple[str, Any]:
    """`key=value` -> (key, value parsed as a YAML scalar)."""
    if "=" not in item:
        raise SpecError(f"parameter {item!r} must look like key=value")
    key, raw = item.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def check_name(name: Any, what: str) -> str:
    """`name` if it is safe as a directory name, else a SpecError saying what is allowed."""
    if not isinstance(name, str) or not SAFE_NAME.match(name):
        raise SpecError(
            f"{what} {name!r} is not a safe name: use letters, digits, _ . - starting with a "
            "letter or digit (it becomes a directory; `.` and `..` are refused)")
    return name


def _check_keys(where: str, data: dict, valid: tuple[str, ...]) -> None:
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(valid)}")


def _parse_runs(path: Path, raw_runs: list[Any]) -> list[RunSpec]:
    runs: list[RunSpec] = []
    arms: list[str] = []
    for i, raw in enumerate(raw_runs):
        if not isinstance(raw, dict):
            raise SpecError(f"{path}: runs[{i}] must be a mapping with a `name`")
        name = check_name(raw.get("name"), f"{path}: runs[{i}] name")
        _check_keys(f"{path}: run {name}", raw, RUN_KEYS)
        overrides = [str(o) for o in raw.get("overrides") or []]
        config, seeds = raw.get("config"), raw.get("seeds")
        params = dict(raw.get("parameters") or {})
        if seeds is None:
            runs.append(RunSpec(name, overrides, params, config, name))
        elif (isinstance(seeds, list) and seeds and len(set(seeds)) == len(seeds)
              and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
            runs += [RunSpec(f"{name}_s{seed}", [*overrides, f"train.seed={seed}"], dict(params),
                             config, name, first_seed=j == 0) for j, seed in enumerate(seeds)]
        else:
            raise SpecError(f"{path}: run {name}: seeds must be a non-empty list of distinct "
                            f"integers >= 0, e.g. seeds: [0, 1, 2]; got {seeds!r}")
        arms.append(name)
    names = [r.name for r in runs]
    dupes = {n for n in names if names.count(n) > 1} | {a for a in arms if arms.count(a) > 1}
    # an arm's name may equal its own single run; any other coincidence makes names ambiguous
    dupes |= set(arms) & {r.name for r in runs if r.arm != r.name}
    if dupes:
        raise SpecError(f"{path}: run or arm name(s) used twice: {', '.join(sorted(dupes))}"
                        " (an arm with `seeds` makes runs <arm>_s<seed>: rename the clashing arm)")
    return runs


def _parse_comparisons(path: Path, raw: Any, arms: set[str]) -> list[tuple[str, str]]:
    for item in raw or []:
        if not (isinstance(item, list) and len(item) == 2 and set(item) <= arms):
            raise SpecError(f"{path}: comparisons: {item!r} must be a pair of run names (arm "
                            f"names) from {', '.join(sorted(arms))}, e.g. [two_stage, frozen]")
    return [(str(a), str(b)) for a, b in raw or []]


def _parse_hypotheses(path: Path, raw: Any, arms: set[str]) -> list[dict[str, Any]]:
    """The pre-registered tests, checked here so a typo fails before hours of training."""
    for i, item in enumerate(raw or []):
        where = f"{path}: hypotheses[{i}]"
        if not isinstance(item, dict):
            raise SpecError(f"{where} must be a mapping with keys {', '.join(HYPOTHESIS_KEYS)}")
        missing = [k for k in ("name", "arm_a", "arm_b") if k not in item]
        unknown = sorted(set(item) - set(HYPOTHESIS_KEYS))
        if missing or unknown:
            raise SpecError(f"{where}: missing {missing}, unknown {unknown}; valid keys: "
                            f"{', '.join(HYPOTHESIS_KEYS)} (name, arm_a, arm_b required)")
        absent = sorted({item["arm_a"], item["arm_b"]} - arms)
        if absent:
            raise SpecError(f"{where} ({item['name']}): {', '.join(map(str, absent))} is not an "
                            f"arm of the study; arms: {', '.join(sorted(arms))}")
        if item.get("direction", "greater") not in ("greater", "less"):
            raise SpecError(f"{where} ({item['name']}): direction must be greater or less")
    names = [h["name"] for h in raw or []]
    dupes = sorted({str(n) for n in names if names.count(n) > 1})
    if dupes:
        raise SpecError(f"{path}: hypothesis name(s) used twice: {', '.join(dupes)}")
    return [dict(h) for h in raw or []]


def load_spec(path: str | Path, params: dict[str, Any] | None = None) -> StudySpec:
    """Read and validate a study spec; `params` (e.g. from `-p`) override its parameters."""
    path = Path(path).resolve()
    if not path.is_file():
        raise SpecError(f"study spec {path} does not exist (see configs/study_*.yaml)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SpecError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a study spec must be a YAML mapping")
    _check_keys(str(path), data, SPEC_KEYS)
    name = check_name(data.get("name"), f"{path}: study name")
    root = (path.parent / data["root"]).resolve() if "root" in data else path.parent.parent
    runs = _parse_runs(path, data.get("runs") or [])
    lists = {k: [str(n).removesuffix(".ipynb") for n in data.get(k) or []]
             for k in ("before", "per_run", "after", "first_seed_only")}
    stray = sorted(set(lists["first_seed_only"]) - set(lists["per_run"]))
    if stray:
        raise SpecError(f"{path}: first_seed_only lists {', '.join(stray)}, not in per_run "
                        f"({', '.join(lists['per_run'])})")
    listed = {*lists["before"], *lists["per_run"], *lists["after"]}
    missing = sorted(n for n in listed if not (root / f"notebooks/{n}.ipynb").is_file())
    if missing:
        raise SpecError(f"{path}: notebook(s) not found in {root / 'notebooks'}: "
                        f"{', '.join(missing)}")
    clash = sorted({r.name for r in runs} & listed)
    if clash:
        raise SpecError(f"{path}: run name(s) equal to notebook names: {', '.join(clash)}")
    if runs and not lists["per_run"]:
        raise SpecError(f"{path}: `runs` given but `per_run` lists no notebooks")
    arms = {r.arm for r in runs}
    spec = StudySpec(
        name=name, path=path, root=root, runs=runs,
        results_dir=root / data.get("results_dir", f"results/{name}"),
        work_dir=root / data.get("work_dir", f"runs/{name}"),
        parameters=dict(data.get("parameters") or {}), cli_parameters=dict(params or {}),
        comparisons=_parse_comparisons(path, data.get("comparisons"), arms),
        hypotheses=_parse_hypotheses(path, data.get("hypotheses"), arms), **lists,
    )  # fmt: skip
    _check_parameters(spec)
    return spec


def _check_parameters(spec: StudySpec) -> None:
    """No standard name reused; every given parameter declared by some notebook of the study."""
    declared: set[str] = set()
    for nb in spec.notebooks:
        names = declared_parameters(spec.notebooks_dir / f"{nb}.ipynb")
        if names is None:  # a notebook without a parameters cell takes anything
            return
        declared |= names
    reserved = set(STANDARD_PARAMETERS) - set(EXECUTION_ONLY_PARAMETERS)
    # base_config is read by the runner itself, so it is valid without a notebook declaring it
    valid = (declared | {"base_config", *EXECUTION_ONLY_PARAMETERS}) - reserved
    sources = [("-p", spec.cli_parameters), (f"{spec.path.name} parameters", spec.parameters)]
    sources += [(f"{spec.path.name} run {r.name}", r.parameters) for r in spec.runs]
    for where, mapping in sources:
        if set(mapping) & reserved:
            raise SpecError(f"{where}: may not set standard parameter(s) "
                            f"{', '.join(sorted(set(mapping) & reserved))} (the runner sets them)")
        unknown = sorted(set(mapping) - valid)
        if unknown:
            raise SpecError(f"{where}: unknown parameter(s) {', '.join(unknown)}: no notebook of "
                            f"the study declares them; valid: {', '.join(sorted(valid))}")


def declared_parameters(notebook: Path) -> set[str] | None:
    """Names the notebook's `parameters` cell assigns; None if it has no such cell."""
    for cell in json.loads(notebook.read_text()).get("cells", []):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            names: set[str] = set()
            for node in ast.parse("".join(cell.get("source", []))).body:
                if isinstance(node, ast.Assign):
                    names.update(t.id for t in node.targets if isinstance(t, ast.Name))
                elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    names.add(node.target.id)
            return names
    return None


# -- plan ----------------------------------------------------------------------------------
@dataclass
class Step:
    key: str  # "10_data" (study-level) or "frozen/20_train"
    phase: str  # before | run | after
    run: str | None
    arm: str | None
    notebook: Path
    output: Path
    parameters: dict[str, Any]
    upstream: list[str]  # keys of the steps whose results this one reads
    hashes: dict[str, str]  # notebook / parameters / config
    action: str = "run"  # run | skip | hold (not selected, or waits for a held step)
    reason: str = ""

    @property
    def config_hash(self) -> str:
        return _digest(self.hashes)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _config_digest(root: Path, config: str | None, overrides: list[str]) -> str:
    # The parsed YAML with overrides applied, so comment and layout edits do not rerun.
    if config is None:
        return _digest(overrides)
    if not (root / config).is_file():
        return f"missing:{config}"
    data = yaml.safe_load((root / config).read_text()) or {}
    if isinstance(data, dict):
        apply_overrides(data, overrides)
    return _digest(data)


def _parameters_digest(params: dict[str, Any], declared: set[str] | None, phase: str) -> str:
    # Adding a run must not invalidate the others: only `after` steps depend on the run list.
    unhashed = set(EXECUTION_ONLY_PARAMETERS) | ({"runs", "arms"} if phase != "after" else set())
    return _digest({k: v for k, v in params.items()
                    if k not in unhashed and (declared is None or k in declared)})


def _make_step(spec: StudySpec, nb: str, run: RunSpec | None, phase: str,
               upstream: list[str]) -> Step:
    merged = {**spec.parameters, **(run.parameters if run else {}), **spec.cli_parameters}
    run_dir = spec.results_dir / run.name if run else None
    params: dict[str, Any] = {
        "study_name": spec.name, "study_dir": _rel(spec.results_dir, spec.root),
        "work_dir": _rel(spec.work_dir, spec.root), "run_name": run and run.name,
        "run_dir": run_dir and _rel(run_dir, spec.root),
        "run_work_dir": run and _rel(spec.work_dir / run.name, spec.root),
        "config": (run and run.config) or merged.get("base_config"),
        "overrides": list(run.overrides) if run else [], "runs": [r.name for r in spec.runs],
        "arms": spec.arms, "comparisons": [list(pair) for pair in spec.comparisons],
        "hypotheses": [dict(h) for h in spec.hypotheses], "num_threads": os.cpu_count() or 1,
        **merged,
    }  # fmt: skip
    notebook = spec.notebooks_dir / f"{nb}.ipynb"
    hashes = {"notebook": hashlib.sha256(notebook.read_bytes()).hexdigest()[:16],
              "parameters": _parameters_digest(params, declared_parameters(notebook), phase),
              "config": _config_digest(spec.root, params["config"], params["overrides"])}
    return Step(f"{run.name}/{nb}" if run else nb, phase, run and run.name, run and run.arm,
                notebook, (run_dir or spec.results_dir) / f"{nb}.ipynb", params, upstream, hashes)


def read_workspace(work_dir: Path, create: bool = False) -> str | None:
    """The id of the checkout whose <work_dir> holds this study's checkpoints (None if absent).

    The committed manifest names the workspace it was executed in; a fresh clone has no
    <work_dir>, so its first `run` executes the whole study instead of skipping steps whose
    checkpoints it does not have.
    """
    path = Path(work_dir) / WORKSPACE_FILE
    current = (path.read_text().strip() or None) if path.is_file() else None
    if current is None and create:
        path.parent.mkdir(parents=True, exist_ok=True)
        current = uuid.uuid4().hex
        path.write_text(current + "\n")
    return current


def from_another_checkout(spec: StudySpec, manifest: Manifest) -> bool:
    """True when the manifest's records were executed in a checkout other than this one."""
    return bool(manifest.steps) and manifest.data.get("workspace") != read_workspace(spec.work_dir)


def _check_selection(spec: StudySpec, force: list[str] | None, only: list[str] | None) -> None:
    runs = [r.name for r in spec.runs]
    names = set(runs) | set(spec.arms)
    unknown = sorted(set(only or []) - names)
    if unknown:
        raise SpecError(f"--only: no run or arm named {', '.join(unknown)} in {spec.path.name}; "
                        f"valid: {', '.join(sorted(names))}")
    keys = {f"{r}/{nb}" for r in runs for nb in spec.per_run}
    unknown = sorted(set(force or []) - names - set(spec.notebooks) - keys)
    if unknown:
        raise SpecError(
            f"--force: no run, notebook or step named {', '.join(unknown)} in {spec.path.name}; "
            f"valid: runs {', '.join(runs) or '(none)'}; notebooks {', '.join(spec.notebooks)}; "
            f"or a step such as {next(iter(sorted(keys)), '10_data')}")


def plan(spec: StudySpec, manifest: Manifest | None = None, force: list[str] | None = None,
         only: list[str] | None = None) -> list[Step]:
    """Every step in execution order with an action (run/skip/hold) and why.

    `force`: None (nothing), [] (everything) or run/arm/step/notebook names; `only`: runs or arms.
    """
    _check_selection(spec, force, only)
    manifest = manifest if manifest is not None else Manifest.load(spec.manifest_path)
    steps: list[Step] = []
    for nb in spec.before:
        steps.append(_make_step(spec, nb, None, "before", [s.key for s in steps[-1:]]))
    prev, ends = [s.key for s in steps[-1:]], []
    for run in spec.runs:
        run_prev = prev
        for nb in spec.per_run:
            if run.first_seed or nb not in spec.first_seed_only:
                steps.append(_make_step(spec, nb, run, "run", run_prev))
                run_prev = [steps[-1].key]
        ends += run_prev
    prev = ends or prev
    for nb in spec.after:
        steps.append(_make_step(spec, nb, None, "after", prev))
        prev = [steps[-1].key]

    by_key = {s.key: s for s in steps}
    foreign = from_another_checkout(spec, manifest) and (
        f"results come from another checkout ({_rel(spec.work_dir, spec.root)} with its "
        "checkpoints is not this one's)")
    for step in steps:
        step.action, step.reason = ("run", foreign) if foreign else _decide(
            step, by_key, manifest.steps, force)
        if step.action == "run" and only is not None and not {step.run, step.arm} & {*only, None}:
            step.action, step.reason = "hold", f"not selected (--only); would run: {step.reason}"
    return steps


def _decide(step: Step, by_key: dict[str, Step], records: dict[str, dict],
            force: list[str] | None) -> tuple[str, str]:
    held = [k for k in step.upstream if by_key[k].action == "hold"]
    if held:
        return "hold", f"waits for {held[0]}"
    if force is not None and (not force or {step.key, step.run, step.arm, step.notebook.stem}
                              & set(force)):
        return "run", "forced"
    rec = records.get(step.key)
    if rec is None:
        return "run", "not run yet"
    if rec.get("status") != "done":
        return "run", f"last status: {rec.get('status')}"
    recorded = dict(rec.get("hashes", {}))
    if isinstance(rec.get("parameters"), dict):  # judged by what the notebook declares now
        recorded["parameters"] = _parameters_digest(
            rec["parameters"], declared_parameters(step.notebook), step.phase)
    changed = [k for k, v in step.hashes.items() if recorded.get(k) != v]
    if changed:
        return "run", f"{'/'.join(changed)} changed"
    for key in step.upstream:
        if by_key[key].action == "run":
            return "run", f"{key} reruns"
        if rec.get("upstream", {}).get(key) != records.get(key, {}).get("exec_id"):
            return "run", f"{key} was executed again since"
    if not step.output.is_file():
        return "run", "executed notebook missing"
    return "skip", "up to date"


# -- manifest ------------------------------------------------------------------------------
class Manifest:
    """results/<study>/manifest.json: one record per step, plus the environments they ran in."""

    def __init__(self, path: Path, data: dict[str, Any] | None = None):
        self.path, self.data = Path(path), data or {}
        self.data.setdefault("steps", {})

    @property
    def steps(self) -> dict[str, dict[str, Any]]:
        return self.data["steps"]

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        try:
            return cls(path, json.loads(Path(path).read_text()) if Path(path).is_file() else None)
        except json.JSONDecodeError as e:
            raise SpecError(f"{path} is not valid JSON ({e}); delete it to start the study afresh"
                            ) from e

    def save(self) -> None:
        """Write atomically (temp file + rename) so a crash never leaves half a manifest."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.data["updated_at"] = _now()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        os.replace(tmp, self.path)


def provenance_warnings(manifest: Manifest) -> list[str]:
    """Say loudly when the finished steps came from several commits, dirty code or machines."""
    done = [r for r in manifest.steps.values() if r.get("status") == "done"]
    commits = sorted({str((r.get("git") or {}).get("commit")) for r in done})
    envs = {str(r.get("environment")) for r in done}
    out = []
    if len(commits) > 1:
        out.append(f"WARNING: the steps were executed from {len(commits)} different commits "
                   f"({', '.join(c[:10] for c in commits)}); rerun with --force for one commit")
    if any((r.get("git") or {}).get("dirty") for r in done):
        out.append("WARNING: some steps ran with uncommitted code changes (git dirty)")
    if len(envs) > 1:
        out.append(f"WARNING: the steps ran in {len(envs)} different environments (CPU, torch "
                   "build or packages: see `environments`); numbers may not be comparable")
    return out


def study_provenance(study_dir: str | Path) -> tuple[Any, list[str]]:
    """(finished steps per commit, environment and threads as a DataFrame, manifest warnings)."""
    import pandas as pd

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


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# -- execution -----------------------------------------------------------------------------
def _runs_this_python(argv0: str) -> bool:
    # jupyter_client replaces a bare `python`/`python3` with sys.executable; anything else
    # must be this interpreter's path itself. No resolve(): a venv's python is a symlink to
    # the base interpreter, and following it would leave the venv.
    bare = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}
    return argv0 in bare or os.path.abspath(argv0) == os.path.abspath(sys.executable)


def ensure_kernel(work_dir: Path) -> str:
    """Name of a kernel that runs this interpreter: `python3` if it does, else a private spec.

    The private spec lives in <work_dir>/.jupyter/kernels, found through JUPYTER_PATH, so
    nothing is installed into the environment or the user's Jupyter directories.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    with contextlib.suppress(NoSuchKernel):
        argv = KernelSpecManager().get_kernel_spec("python3").argv
        if argv and _runs_this_python(argv[0]):
            return "python3"
    kdir = work_dir / ".jupyter" / "kernels" / _KERNEL_NAME
    kdir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (kdir / "kernel.json").write_text(json.dumps(
        {"argv": argv, "display_name": "Python 3 (ipykernel)", "language": "python"}, indent=1))
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        p for p in (str(work_dir / ".jupyter"), os.environ.get("JUPYTER_PATH")) if p)
    return _KERNEL_NAME


def _execute_step(step: Step, root: Path, kernel: str, progress_bar: bool) -> dict[str, Any]:
    """Run one notebook with papermill, clean and export it; never raises for notebook errors."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    step.output.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    result: dict[str, Any] = {"status": "done", "error": None, "started_at": _now()}
    strip = str(root.resolve()) + "/"
    threads = str(step.parameters.get("num_threads") or 1)
    # The kernel's threads, and progress bars kept off the page (rrglib.notebook.setup).
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "RRG_STUDY_RUNNER": "1",
           "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    try:
        with mock.patch.dict(os.environ, env):  # the kernel inherits them; restored after
            papermill.execute_notebook(
                str(step.notebook), str(step.output), parameters=step.parameters,
                kernel_name=kernel, cwd=str(root), progress_bar=progress_bar)
    except PapermillExecutionError as e:
        tb = _ANSI_RE.sub("", "\n".join(e.traceback or [])).replace(strip, "")
        result.update(status="failed", error=f"{e.ename}: {e.evalue}".replace(strip, ""),
                      traceback=tb[-4000:], failed_cell=e.exec_count)
    except Exception as e:  # kernel died, timed out, could not start, ...
        result.update(status="failed", error=f"{type(e).__name__}: {e}".replace(strip, ""))
    result.update(finished_at=_now(), wall_s=round(time.monotonic() - t0, 2))
    if step.output.is_file():
        try:
            relative_paths(step.output, root)
            result["html"] = _rel(export_html(step.output), root)
        except Exception as e:  # an unreadable partial notebook must not hide the real error
            result["html_error"] = f"{type(e).__name__}: {e}"
    return result


def _fmt_duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


def _quiet_unknown_params(record: logging.LogRecord) -> bool:
    # Every notebook receives all standard parameters, most declare only those they use.
    return "Passed unknown parameter" not in record.getMessage()


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into `Terminated` (a KeyboardInterrupt) while the study runs."""
    def handler(signum: int, frame: Any) -> None:
        raise Terminated("terminated (SIGTERM)")

    main = threading.current_thread() is threading.main_thread()  # signals work only there
    old = signal.signal(signal.SIGTERM, handler) if main else None
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def _study_lock(path: Path) -> Iterator[None]:
    """One `run` per study at a time: a second would plan from a manifest about to change."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:  # closing the file releases the lock
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StudyLocked(f"the study is already running here ({path} is locked)") from None
        yield


def run_study(spec: StudySpec, dry_run: bool = False, force: list[str] | None = None,
              only: list[str] | None = None,
              out: Callable[[str], None] | None = None) -> Manifest:
    """Execute the study's stale steps; raise StudyFailed (manifest saved) if a notebook fails."""
    out = out or (lambda line: print(line, flush=True))
    if dry_run:
        manifest = Manifest.load(spec.manifest_path)
        steps = plan(spec, manifest, force=force, only=only)
        for arm, names in spec.arms.items():
            if names != [arm]:
                out(f"arm {arm}: runs {', '.join(names)} (override train.seed=<seed>)")
        for s in steps:
            out(f"{s.action:<5} {s.key:<40} {s.reason}")
        todo = sum(s.action == "run" for s in steps)
        out(f"{todo} to run, {len(steps) - todo} skipped or held (dry run: nothing executed)")
        return manifest
    with _study_lock(spec.work_dir / ".study.lock"), _sigterm_raises():
        manifest = Manifest.load(spec.manifest_path)  # read under the lock: it may have changed
        steps = plan(spec, manifest, force=force, only=only)
        todo = [s for s in steps if s.action == "run"]
        # Forget steps no longer in the spec, keep plan order so the file reads top to bottom;
        # records of another checkout's execution are forgotten as a whole (all of it reruns).
        old = {} if from_another_checkout(spec, manifest) else manifest.steps
        manifest.data["steps"] = {s.key: old[s.key] for s in steps if s.key in old}
        manifest.data.update(study=spec.name, spec=_rel(spec.path, spec.root),
                             workspace=read_workspace(spec.work_dir, create=True))
        out(f"study {spec.name}: {len(todo)} step(s) to run, {len(steps) - len(todo)} up to "
            "date or held")
        if todo:
            _execute(spec, manifest, todo, out)
        used = {r.get("environment") for r in manifest.steps.values()}
        manifest.data["environments"] = {k: v for k, v in manifest.data.get("environments", {})
                                         .items() if k in used}
        manifest.data["commits"] = sorted({str((r.get("git") or {}).get("commit"))
                                           for r in manifest.steps.values() if r.get("git")})
        manifest.data["warnings"] = provenance_warnings(manifest)
        manifest.save()
        for line in manifest.data["warnings"]:
            out(line)
        return manifest


def _execute(spec: StudySpec, manifest: Manifest, todo: list[Step],
             out: Callable[[str], None]) -> None:
    """Execute `todo` in order; raise StudyFailed at a failed step, re-raise an interrupt."""
    env = provenance.environment()
    manifest.data.setdefault("environments", {})[env["id"]] = env
    common = {"git": provenance.git_state(spec.root, spec.results_dir), "environment": env["id"]}
    logging.getLogger("papermill").addFilter(_quiet_unknown_params)
    kernel = ensure_kernel(spec.work_dir)
    t0 = time.monotonic()
    for i, step in enumerate(todo, 1):
        manifest.steps[step.key] = {
            "run": step.run, "phase": step.phase, "notebook": _rel(step.notebook, spec.root),
            "output": _rel(step.output, spec.root), "status": "running", "reason": step.reason,
            "config_hash": step.config_hash, "hashes": step.hashes,
            "config": step.parameters["config"], "overrides": step.parameters["overrides"],
            "parameters": step.parameters, "threads": step.parameters.get("num_threads"),
            "upstream": {k: manifest.steps.get(k, {}).get("exec_id") for k in step.upstream},
            "exec_id": uuid.uuid4().hex[:12], **common,
            "started_at": _now(), "finished_at": None, "wall_s": None, "error": None,
        }  # fmt: skip
        manifest.save()
        out(f"[{i}/{len(todo)}] {step.key} started ({step.reason})")
        try:
            result = _execute_step(step, spec.root, kernel, sys.stderr.isatty())
        except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: no step is left `running`
            manifest.steps[step.key].update(status="failed", error=str(e) or "interrupted (Ctrl-C)",
                                            finished_at=_now())
            _mark_skipped(spec, manifest, todo[i:], step.key)
            raise
        manifest.steps[step.key].update(result)
        manifest.save()
        took = _fmt_duration(result["wall_s"])
        if result["status"] != "done":
            out(f"[{i}/{len(todo)}] {step.key} FAILED after {took}: {result['error']}")
            _mark_skipped(spec, manifest, todo[i:], step.key)
            r = manifest.steps[step.key]
            raise StudyFailed(
                f"study {spec.name} stopped: notebook {r['output']} failed: {r['error']}\n"
                f"  (executed notebook with the traceback: {r['output']}; source: "
                f"{r['notebook']}; rerun the same command to resume at this step)", manifest)
        out(f"[{i}/{len(todo)}] {step.key} done in {took}")
    out(f"study {spec.name}: {len(todo)} step(s) done in {_fmt_duration(time.monotonic() - t0)}")


def _mark_skipped(spec: StudySpec, manifest: Manifest, rest: list[Step], failed: str) -> None:
    """Steps planned after the failed one say why they did not run (for `status`)."""
    for s in rest:
        rec = manifest.steps.setdefault(
            s.key, {"run": s.run, "phase": s.phase, "notebook": _rel(s.notebook, spec.root)})
        rec.update(status="skipped", reason=f"not run: {failed} failed")
    manifest.save()


def status_table(spec: StudySpec) -> str:
    """A table of every step: status, wall time, finish time, and what a rerun would do."""
    manifest = Manifest.load(spec.manifest_path)
    rows = [("step", "status", "wall", "finished", "next run")]
    for s in plan(spec, manifest):
        r = manifest.steps.get(s.key, {})
        wall = _fmt_duration(r["wall_s"]) if r.get("wall_s") is not None else "-"
        nxt = "skip" if s.action == "skip" else f"{s.action}: {s.reason}"
        rows.append((s.key, r.get("status", "-"), wall, (r.get("finished_at") or "-")[:19], nxt))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
             for row in rows]
    lines += [f"failed: {r.get('output')}: {r['error']}" for r in manifest.steps.values()
              if r.get("status") == "failed" and r.get("error")]
    return "\n".join(lines + provenance_warnings(manifest))


# -- CLI -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m study_runner", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="execute the study's stale notebooks")
    status = sub.add_parser("status", help="show each step's status and times")
    for p in (run, status):
        p.add_argument("spec", help="study spec YAML, e.g. configs/study_demo.yaml")
        p.add_argument("-p", "--param", action="extend", nargs="+", default=[],
                       metavar="KEY=VALUE", help="notebook parameter (YAML), overrides the spec")
    run.add_argument("--dry-run", action="store_true", help="list what would run and why")
    run.add_argument("--only", action="extend", nargs="+", metavar="RUN",
                     help="execute only these runs")
    run.add_argument("--force", nargs="*", metavar="NAME",
                     help="rerun everything, or the named runs / steps / notebooks")
    args = ap.parse_args(argv)
    try:
        spec = load_spec(args.spec, dict(parse_param(p) for p in args.param))
        if args.cmd == "status":
            print(status_table(spec))
            return 0
        run_study(spec, dry_run=args.dry_run, force=args.force, only=args.only)
    except (SpecError, StudyFailed, StudyLocked) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"{e or 'interrupted'}: the running step is marked failed; rerun to resume",
              file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

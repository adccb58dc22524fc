"""Study runner: executes the ordered notebooks of a study spec with papermill.

    python -m rrglib.study run configs/study_demo.yaml [--dry-run] [--jobs N]
        [-p key=value ...] [--only RUN ...] [--force [NAME ...]]
    python -m rrglib.study status configs/study_demo.yaml [-p key=value ...]

Study spec (YAML)::

    name: demo                  # required; results/<name>/ and runs/<name>/ by default
    results_dir: results/demo   # optional: executed notebooks, HTML, manifest.json
    work_dir: runs/demo         # optional: checkpoints, caches (gitignored)
    notebooks_dir: notebooks    # optional; default <root>/notebooks
    config: configs/demo.yaml   # optional base run config; else parameters.base_config
    parameters:                 # papermill parameters for every notebook (CLI -p wins)
      base_config: configs/demo.yaml
      num_threads: 1
    before: [00_overview, 10_data]          # study-level, once, in order, before the runs
    runs:
      - name: frozen                        # [A-Za-z0-9_.-]+, unique
        overrides: [train.strategy=frozen]  # section.key=value on the base config
        config: configs/other.yaml          # optional per-run base config
        parameters: {extra: 1}              # optional per-run parameters
    per_run: [20_train, 30_evaluate]        # executed in order for every run
    after: [90_summary]                     # study-level, after all runs are done

The root (the notebooks' working directory, against which every relative path resolves)
is the spec file's parent's parent (configs/.. = the repo), or `root:` in the spec.
A notebook name `20_train` means `<notebooks_dir>/20_train.ipynb`; its executed copy is
`<results_dir>/<run>/20_train.ipynb` (study-level steps: `<results_dir>/20_train.ipynb`),
with an offline-readable HTML export beside it.

Standard parameters every notebook receives (paths relative to the root):
`study_name`, `study_dir`, `work_dir`, `run_name`, `run_dir`, `run_work_dir` (the last
three None for study-level steps), `config` (the run's base config path), `overrides`
(list of str), `runs` (all run names), `num_threads` (from the parameters, else
cores // jobs for run steps, all cores for study-level ones; the kernel also gets
OMP_NUM_THREADS / MKL_NUM_THREADS). Then the spec's `parameters`, the run's `parameters`
and the CLI `-p` values (YAML scalars), later ones winning; none may reuse a standard name.
The base config is the run's `config`, else the spec's `config`, else the `base_config`
parameter (so `-p base_config=configs/smoke.yaml` reruns a whole study at smoke size).

Kernel: `python3` when its kernelspec starts this interpreter (a bare `python` argv, which
jupyter_client replaces with sys.executable, or this exact path); otherwise a private
kernelspec for sys.executable under <work_dir>/.jupyter, found through JUPYTER_PATH.
Notebooks run with cwd = root. With `--jobs N` runs go to N spawned worker processes;
the parent alone writes manifest.json, atomically, at every step start and end.

Reruns: a step's config hash covers the notebook file, the parameters its `parameters` cell
declares (so a study parameter only one notebook reads reruns only that notebook and what
follows it; not `num_threads`, which only sets speed; `runs` only for `after` steps, so
adding a run redoes only the summary) and its config (YAML with overrides applied). A step
executes again when it never finished, its hash changed, its executed notebook is missing, it is forced (`--force`:
everything; `--force NAME`: the runs, step keys like `frozen/30_evaluate`, or notebooks
named), or a step it depends on executes again (the previous step of its run; for the first
run step the last `before` step; for `after` steps every run's last step). So a change
reruns everything after it, and a failed study resumes at the failed step. `--only RUN`
executes only those runs (and stale study-level steps); `after` steps wait until every run
is done. Steps planned but not reached after a failure are marked `skipped`.
The manifest names the checkout it was executed in (an id in `<work_dir>/.study-workspace`):
in another checkout, such as a fresh clone holding the committed results but none of the
checkpoints, every step executes again.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import contextlib
import datetime as dt
import hashlib
import json
import logging
import multiprocessing
import os
import queue
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from rrglib.config import apply_overrides

STANDARD_PARAMETERS = (
    "study_name",
    "study_dir",
    "work_dir",
    "run_name",
    "run_dir",
    "run_work_dir",
    "config",
    "overrides",
    "runs",
)
# Parameters that change how fast a notebook runs, not what it computes: kept out of hashes.
EXECUTION_ONLY_PARAMETERS = ("num_threads",)
VERSIONED_PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "papermill",
    "nbconvert",
    "ipykernel",
)
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_KERNEL_NAME = "rrg-study-python"


class SpecError(ValueError):
    """The study spec is malformed or names files that do not exist."""


class StudyLocked(RuntimeError):
    """Another `run` of the same study holds its lock."""


class StudyFailed(RuntimeError):
    """A notebook failed; `.manifest` holds the state that was written."""

    def __init__(self, message: str, manifest: Manifest):
        super().__init__(message)
        self.manifest = manifest


# -- spec ----------------------------------------------------------------------------------
@dataclass
class RunSpec:
    name: str
    overrides: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    config: str | None = None


@dataclass
class StudySpec:
    name: str
    path: Path
    root: Path
    notebooks_dir: Path
    results_dir: Path
    work_dir: Path
    config: str | None
    parameters: dict[str, Any]
    cli_parameters: dict[str, Any]
    before: list[str]
    runs: list[RunSpec]
    per_run: list[str]
    after: list[str]

    @property
    def manifest_path(self) -> Path:
        return self.results_dir / "manifest.json"


def parse_param(item: str) -> tuple[str, Any]:
    """`key=value` -> (key, value parsed as a YAML scalar)."""
    if "=" not in item:
        raise SpecError(f"parameter {item!r} must look like key=value")
    key, raw = item.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def load_spec(path: str | Path, params: dict[str, Any] | None = None) -> StudySpec:
    """Read and validate a study spec; `params` (e.g. from `-p`) override its parameters."""
    path = Path(path).resolve()
    if not path.is_file():
        raise SpecError(f"study spec {path} does not exist (see configs/study_*.yaml)")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a study spec must be a YAML mapping")
    known = {
        "name",
        "root",
        "results_dir",
        "work_dir",
        "notebooks_dir",
        "config",
        "parameters",
        "before",
        "runs",
        "per_run",
        "after",
    }
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpecError(
            f"{path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
        )
    name = data.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise SpecError(f"{path}: `name` must be a simple name like demo, got {name!r}")
    root = (path.parent / data["root"]).resolve() if "root" in data else path.parent.parent
    params = dict(params or {})
    parameters = dict(data.get("parameters") or {})
    for where, mapping in (("parameters", parameters), ("-p", params)):
        clash = sorted(set(mapping) & set(STANDARD_PARAMETERS))
        if clash:
            raise SpecError(f"{path}: {where} may not set standard parameter(s) {', '.join(clash)}")

    runs = []
    for i, raw in enumerate(data.get("runs") or []):
        if not isinstance(raw, dict) or not _NAME_RE.match(str(raw.get("name", ""))):
            raise SpecError(f"{path}: runs[{i}] needs a `name` made of letters, digits, _ . -")
        extra = sorted(set(raw) - {"name", "overrides", "parameters", "config"})
        if extra:
            raise SpecError(f"{path}: runs[{i}] ({raw['name']}): unknown key(s) {', '.join(extra)}")
        run_params = dict(raw.get("parameters") or {})
        clash = sorted(set(run_params) & set(STANDARD_PARAMETERS))
        if clash:
            raise SpecError(
                f"{path}: run {raw['name']} may not set standard parameter(s) {', '.join(clash)}"
            )
        runs.append(
            RunSpec(
                str(raw["name"]),
                [str(o) for o in raw.get("overrides") or []],
                run_params,
                raw.get("config"),
            )
        )
    names = [r.name for r in runs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecError(f"{path}: run name(s) used twice: {', '.join(dupes)}")

    notebooks_dir = root / data.get("notebooks_dir", "notebooks")
    lists = {
        k: [str(n).removesuffix(".ipynb") for n in data.get(k) or []]
        for k in ("before", "per_run", "after")
    }
    missing = sorted(
        {n for ns in lists.values() for n in ns if not (notebooks_dir / f"{n}.ipynb").is_file()}
    )
    if missing:
        raise SpecError(f"{path}: notebook(s) not found in {notebooks_dir}: {', '.join(missing)}")
    clash = sorted(set(names) & {n for ns in lists.values() for n in ns})
    if clash:
        raise SpecError(f"{path}: run name(s) equal to notebook names: {', '.join(clash)}")
    if runs and not lists["per_run"]:
        raise SpecError(f"{path}: `runs` given but `per_run` lists no notebooks")
    return StudySpec(
        name=name,
        path=path,
        root=root,
        notebooks_dir=notebooks_dir,
        results_dir=root / data.get("results_dir", f"results/{name}"),
        work_dir=root / data.get("work_dir", f"runs/{name}"),
        config=data.get("config"),
        parameters=parameters,
        cli_parameters=params,
        before=lists["before"],
        runs=runs,
        per_run=lists["per_run"],
        after=lists["after"],
    )


# -- plan ----------------------------------------------------------------------------------
@dataclass
class Step:
    key: str  # "10_data" (study-level) or "frozen/20_train"
    phase: str  # before | run | after
    run: str | None
    notebook: Path
    output: Path
    parameters: dict[str, Any]
    config: str | None
    overrides: list[str]
    upstream: list[str]  # keys of the steps whose results this one reads
    hashes: dict[str, str]  # notebook / parameters / config
    config_hash: str
    action: str = "run"  # run | skip | hold (not selected, or waits for a held step)
    reason: str = ""

    @property
    def html(self) -> Path:
        return self.output.with_suffix(".html")


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _config_digest(root: Path, config: str | None, overrides: list[str]) -> str:
    # The parsed YAML with overrides applied, so comment and layout edits do not rerun.
    if config is None:
        return _digest(json.dumps(overrides).encode())
    path = root / config
    if not path.is_file():
        return f"missing:{config}"
    data = yaml.safe_load(path.read_text()) or {}
    if isinstance(data, dict):
        apply_overrides(data, overrides)
    return _digest(json.dumps(data, sort_keys=True, default=str).encode())


def declared_parameters(notebook: Path) -> set[str] | None:
    """Names the notebook's `parameters` cell assigns; None if it has no such cell."""
    cells = json.loads(notebook.read_text()).get("cells", [])
    for cell in cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell.get("source", []))
            names: set[str] = set()
            for node in ast.parse(source).body:
                targets = node.targets if isinstance(node, ast.Assign) else (
                    [node.target] if isinstance(node, ast.AnnAssign) else [])
                names.update(t.id for t in targets if isinstance(t, ast.Name))
            return names
    return None


def _parameters_digest(params: dict[str, Any], declared: set[str] | None, phase: str) -> str:
    # Adding a run must not invalidate the others: only `after` steps depend on the run list.
    unhashed = set(EXECUTION_ONLY_PARAMETERS) | ({"runs"} if phase != "after" else set())
    hashed = {k: v for k, v in params.items()
              if k not in unhashed and (declared is None or k in declared)}
    return _digest(json.dumps(hashed, sort_keys=True, default=str).encode())


def _num_threads(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def _make_step(
    spec: StudySpec, nb: str, run: RunSpec | None, phase: str, upstream: list[str], jobs: int
) -> Step:
    root = spec.root
    config = (run.config if run and run.config else None) or spec.config
    merged = {**spec.parameters, **(run.parameters if run else {}), **spec.cli_parameters}
    config = config or merged.get("base_config")
    overrides = list(run.overrides) if run else []
    run_dir = spec.results_dir / run.name if run else None
    params: dict[str, Any] = {
        "study_name": spec.name,
        "study_dir": _rel(spec.results_dir, root),
        "work_dir": _rel(spec.work_dir, root),
        "run_name": run.name if run else None,
        "run_dir": _rel(run_dir, root) if run_dir else None,
        "run_work_dir": _rel(spec.work_dir / run.name, root) if run else None,
        "config": config,
        "overrides": overrides,
        "runs": [r.name for r in spec.runs],
        "num_threads": _num_threads(jobs),
        **merged,
    }
    notebook = spec.notebooks_dir / f"{nb}.ipynb"
    hashes = {
        "notebook": _digest(notebook.read_bytes()),
        "parameters": _parameters_digest(params, declared_parameters(notebook), phase),
        "config": _config_digest(root, config, overrides),
    }
    return Step(
        key=f"{run.name}/{nb}" if run else nb,
        phase=phase,
        run=run.name if run else None,
        notebook=notebook,
        output=(run_dir or spec.results_dir) / f"{nb}.ipynb",
        parameters=params,
        config=config,
        overrides=overrides,
        upstream=upstream,
        hashes=hashes,
        config_hash=_digest(json.dumps(hashes, sort_keys=True).encode()),
    )


WORKSPACE_FILE = ".study-workspace"


def read_workspace(work_dir: Path) -> str | None:
    """The id of the checkout whose <work_dir> holds this study's checkpoints (None if absent)."""
    path = Path(work_dir) / WORKSPACE_FILE
    return path.read_text().strip() or None if path.is_file() else None


def _ensure_workspace(work_dir: Path) -> str:
    # The manifest (committed with the results) names the workspace it was executed in; a fresh
    # clone has no <work_dir>, so its first `run` executes the whole study instead of skipping
    # steps whose checkpoints it does not have.
    current = read_workspace(work_dir)
    if current is None:
        work_dir.mkdir(parents=True, exist_ok=True)
        current = uuid.uuid4().hex
        (work_dir / WORKSPACE_FILE).write_text(current + "\n")
    return current


def from_another_checkout(spec: StudySpec, manifest: Manifest) -> bool:
    """True when the manifest's records were executed in a checkout other than this one."""
    return bool(manifest.steps) and manifest.data.get("workspace") != read_workspace(spec.work_dir)


def plan(
    spec: StudySpec,
    manifest: Manifest | None = None,
    force: list[str] | None = None,
    only: list[str] | None = None,
    jobs: int = 1,
) -> list[Step]:
    """All steps of the study in execution order, each with an action (run/skip/hold) and why.

    `force`: None (nothing), [] (everything) or names of runs, steps or notebooks.
    `only`: names of runs to execute (study-level steps still run when needed).
    """
    manifest = manifest if manifest is not None else Manifest.load(spec.manifest_path)
    unknown = sorted(set(only or []) - {r.name for r in spec.runs})
    if unknown:
        raise SpecError(f"--only: no run named {', '.join(unknown)} in {spec.path}")
    steps: list[Step] = []
    prev: list[str] = []
    for nb in spec.before:
        steps.append(_make_step(spec, nb, None, "before", prev, 1))
        prev = [steps[-1].key]
    ends = []
    for run in spec.runs:
        run_prev = prev
        for nb in spec.per_run:
            steps.append(_make_step(spec, nb, run, "run", run_prev, jobs))
            run_prev = [steps[-1].key]
        ends += run_prev
    prev = ends or prev
    for nb in spec.after:
        steps.append(_make_step(spec, nb, None, "after", prev, 1))
        prev = [steps[-1].key]

    by_key = {s.key: s for s in steps}
    foreign = from_another_checkout(spec, manifest)
    for step in steps:
        if foreign:
            step.action, step.reason = "run", (
                f"results come from another checkout ({_rel(spec.work_dir, spec.root)} with its "
                "checkpoints is not this one's)")
        else:
            step.action, step.reason = _decide(step, by_key, manifest.steps, force)
        if (
            step.action == "run"
            and only is not None
            and step.run not in only
            and step.run is not None
        ):
            step.action, step.reason = "hold", f"not selected (--only); would run: {step.reason}"
    return steps


def _decide(
    step: Step, by_key: dict[str, Step], records: dict[str, dict], force: list[str] | None
) -> tuple[str, str]:
    held = [k for k in step.upstream if by_key[k].action == "hold"]
    if held:
        return "hold", f"waits for {held[0]}"
    nb_name = step.notebook.stem
    if force is not None and (not force or {step.key, step.run, nb_name} & set(force)):
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
    """results/<study>/manifest.json: one record per step; only the parent process writes it."""

    def __init__(self, path: Path, data: dict[str, Any] | None = None):
        self.path = Path(path)
        self.data = data or {"steps": {}}
        self.data.setdefault("steps", {})

    @property
    def steps(self) -> dict[str, dict[str, Any]]:
        return self.data["steps"]

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        path = Path(path)
        if not path.is_file():
            return cls(path)
        try:
            return cls(path, json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise SpecError(
                f"{path} is not valid JSON ({e}); delete it to start the study afresh"
            ) from e

    def save(self) -> None:
        """Write atomically (temp file + rename) so a crash never leaves half a manifest."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.data["updated_at"] = _now()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        os.replace(tmp, self.path)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _git_info(root: Path, exclude: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        return out.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        # The study's own results are rewritten while it runs; they do not make the code dirty.
        status = git(
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            f":(exclude){_rel(exclude, root)}",
        )
        return {"commit": commit, "dirty": bool(status)}
    except (OSError, RuntimeError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for pkg in VERSIONED_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


# -- execution -----------------------------------------------------------------------------
def _runs_this_python(argv0: str) -> bool:
    # jupyter_client replaces a bare `python`/`python3` with sys.executable; anything else
    # must be this interpreter's path itself. No resolve(): a venv's python is a symlink to
    # the base interpreter, and following it would leave the venv.
    bare = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}
    return argv0 in bare or os.path.abspath(argv0) == os.path.abspath(sys.executable)


def ensure_kernel(work_dir: Path) -> str:
    """Name of a kernel that runs this interpreter: `python3` if it does, else a private spec.

    The private spec lives in <work_dir>/.jupyter/kernels and is found through JUPYTER_PATH,
    so nothing is installed into the environment or the user's Jupyter directories.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec("python3")
        if spec.argv and _runs_this_python(spec.argv[0]):
            return "python3"
    except NoSuchKernel:
        pass
    kdir = work_dir / ".jupyter" / "kernels" / _KERNEL_NAME
    kdir.mkdir(parents=True, exist_ok=True)
    (kdir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (ipykernel)",
                "language": "python",
            },
            indent=1,
        )
    )
    jpath = str(work_dir / ".jupyter")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        p for p in (jpath, os.environ.get("JUPYTER_PATH")) if p
    )
    return _KERNEL_NAME


@contextlib.contextmanager
def _environ(updates: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def export_html(notebook: Path) -> Path:
    """Write <notebook>.html beside it: lab template, CSS and images embedded.

    Only MathJax and require.js are referenced from a CDN; offline, the page renders with
    its styles, outputs and figures, and formulas show as TeX source.
    """
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", embed_images=True)
    body, _ = exporter.from_notebook_node(
        nbformat.read(notebook, as_version=4),
        resources={"metadata": {"path": str(notebook.parent)}},
    )
    out = notebook.with_suffix(".html")
    out.write_text(body, encoding="utf-8")
    return out


def _execute_step(step: Step, root: Path, kernel: str, progress_bar: bool) -> dict[str, Any]:
    """Run one notebook with papermill, export HTML; never raises for notebook errors."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    threads = str(step.parameters.get("num_threads") or 1)
    step.output.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    result: dict[str, Any] = {"status": "done", "error": None, "started_at": _now()}
    try:
        with _environ({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}):
            papermill.execute_notebook(
                str(step.notebook),
                str(step.output),
                parameters=step.parameters,
                kernel_name=kernel,
                cwd=str(root),
                progress_bar=progress_bar,
            )
    except PapermillExecutionError as e:
        tb = _ANSI_RE.sub("", "\n".join(e.traceback or []))
        result.update(
            status="failed",
            error=f"{e.ename}: {e.evalue}",
            traceback=tb[-4000:],
            failed_cell=e.exec_count,
        )
    except Exception as e:  # kernel died, timed out, could not start, ...
        result.update(status="failed", error=f"{type(e).__name__}: {e}")
    result["finished_at"] = _now()
    result["wall_s"] = round(time.monotonic() - t0, 2)
    if step.output.is_file():
        try:
            result["html"] = _rel(export_html(step.output), root)
        except Exception as e:  # an unreadable partial notebook must not hide the real error
            result["html_error"] = f"{type(e).__name__}: {e}"
    return result


def _run_group(
    steps: list[Step],
    root: Path,
    kernel: str,
    progress_bar: bool,
    emit: Callable[[tuple], None],
    should_stop: Callable[[], bool],
) -> None:
    """Execute steps in order, reporting ("start"|"end", key, payload); stop at a failure."""
    for step in steps:
        if should_stop():
            return
        emit(("start", step.key, _now()))
        result = _execute_step(step, root, kernel, progress_bar)
        emit(("end", step.key, result))
        if result["status"] != "done":
            return


_worker_queue: Any = None
_worker_stop: Any = None


def _worker_init(q: Any, stop: Any) -> None:
    global _worker_queue, _worker_stop
    _worker_queue, _worker_stop = q, stop
    logging.getLogger("papermill").addFilter(_quiet_unknown_params)


def _worker_run(steps: list[Step], root: Path, kernel: str) -> None:
    try:
        _run_group(steps, root, kernel, False, _worker_queue.put, _worker_stop.is_set)
    finally:
        _worker_queue.put(("group_done", steps[0].run, None))


def _quiet_unknown_params(record: logging.LogRecord) -> bool:
    # Every notebook receives all standard parameters, most declare only those they use.
    return "Passed unknown parameter" not in record.getMessage()


def _fmt_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


class _Recorder:
    """Parent-side bookkeeping: the manifest's single writer and the progress printer."""

    def __init__(
        self, spec: StudySpec, manifest: Manifest, steps: list[Step], out: Callable[[str], None]
    ):
        self.spec, self.manifest, self.out = spec, manifest, out
        self.by_key = {s.key: s for s in steps}
        self.total = sum(s.action == "run" for s in steps)
        self.counter = 0
        self.index: dict[str, int] = {}
        self.failed: list[str] = []
        self.common = {"git": _git_info(spec.root, spec.results_dir), "versions": _versions()}

    def handle(self, event: tuple) -> None:
        kind, key, payload = event
        if kind == "start":
            self.start(key, payload)
        elif kind == "end":
            self.end(key, payload)

    def start(self, key: str, started_at: str) -> None:
        step = self.by_key[key]
        self.counter += 1
        self.index[key] = self.counter
        root = self.spec.root
        self.manifest.steps[key] = {
            "run": step.run,
            "phase": step.phase,
            "notebook": _rel(step.notebook, root),
            "output": _rel(step.output, root),
            "status": "running",
            "reason": step.reason,
            "config_hash": step.config_hash,
            "hashes": step.hashes,
            "config": step.config,
            "overrides": step.overrides,
            "parameters": step.parameters,
            "upstream": {k: self.manifest.steps.get(k, {}).get("exec_id") for k in step.upstream},
            "exec_id": uuid.uuid4().hex[:12],
            **self.common,
            "started_at": started_at,
            "finished_at": None,
            "wall_s": None,
            "error": None,
        }
        self.manifest.save()
        self.out(f"[{self.counter}/{self.total}] {key} started ({step.reason})")

    def end(self, key: str, result: dict[str, Any]) -> None:
        rec = self.manifest.steps[key]
        rec.update(result)
        self.manifest.save()
        i = self.index[key]
        took = _fmt_duration(result["wall_s"])
        if result["status"] == "done":
            self.out(f"[{i}/{self.total}] {key} done in {took}")
        else:
            self.failed.append(key)
            self.out(f"[{i}/{self.total}] {key} FAILED after {took}: {result['error']}")

    def interrupted(self, error: str = "interrupted") -> None:
        """Mark steps that were running as failed (Ctrl-C, a crashed worker)."""
        for key, rec in self.manifest.steps.items():
            if rec.get("status") == "running":
                rec.update(status="failed", error=error, finished_at=_now())
                self.failed.append(key)
        self.manifest.save()


def run_study(
    spec: StudySpec,
    dry_run: bool = False,
    jobs: int = 1,
    force: list[str] | None = None,
    only: list[str] | None = None,
    out: Callable[[str], None] | None = None,
) -> Manifest:
    """Execute the study's stale steps; raise StudyFailed (manifest saved) if a notebook fails."""
    if dry_run:
        return _run_study(spec, True, jobs, force, only, out)
    with _study_lock(spec.work_dir / ".study.lock"):
        return _run_study(spec, False, jobs, force, only, out)


@contextlib.contextmanager
def _study_lock(path: Path) -> Iterator[None]:
    """One `run` per study at a time: a second would plan from a manifest about to change."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks here; run one study at a time
            yield
            return
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StudyLocked(f"the study is already running here ({path} is locked)") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run_study(
    spec: StudySpec,
    dry_run: bool = False,
    jobs: int = 1,
    force: list[str] | None = None,
    only: list[str] | None = None,
    out: Callable[[str], None] | None = None,
) -> Manifest:
    """run_study's body, called with the study lock held (unless dry)."""
    out = out or (lambda line: print(line, flush=True))
    jobs = max(1, int(jobs))
    manifest = Manifest.load(spec.manifest_path)
    steps = plan(spec, manifest, force=force, only=only, jobs=jobs)
    todo = [s for s in steps if s.action == "run"]
    if dry_run:
        for s in steps:
            out(f"{s.action:<5} {s.key:<40} {s.reason}")
        out(
            f"{len(todo)} to run, {len(steps) - len(todo)} skipped or held (dry run: nothing executed)"
        )
        return manifest

    # Forget steps no longer in the spec, keep plan order so the file reads top to bottom;
    # records of another checkout's execution are forgotten as a whole (all of it reruns here).
    old = {} if from_another_checkout(spec, manifest) else manifest.steps
    manifest.data["steps"] = {s.key: old[s.key] for s in steps if s.key in old}
    manifest.data.update(study=spec.name, spec=_rel(spec.path, spec.root),
                         workspace=_ensure_workspace(spec.work_dir))
    skipped = len(steps) - len(todo)
    out(
        f"study {spec.name}: {len(todo)} step(s) to run, {skipped} up to date or held"
        f"{f', {jobs} jobs' if jobs > 1 else ''}"
    )
    rec = _Recorder(spec, manifest, steps, out)
    if not todo:
        manifest.save()
        return manifest

    logging.getLogger("papermill").addFilter(_quiet_unknown_params)
    kernel = ensure_kernel(spec.work_dir)
    progress = jobs == 1 and sys.stderr.isatty()
    t0 = time.monotonic()
    try:
        for phase in ("before", "run", "after"):
            phase_steps = [s for s in todo if s.phase == phase]
            if rec.failed or not phase_steps:
                continue
            groups: dict[str | None, list[Step]] = {}
            for s in phase_steps:
                groups.setdefault(s.run, []).append(s)
            if phase == "run" and jobs > 1 and len(groups) > 1:
                _run_parallel(list(groups.values()), spec, kernel, jobs, rec)
            else:
                for group in groups.values():
                    if rec.failed:
                        break
                    _run_group(
                        group, spec.root, kernel, progress, rec.handle, lambda: bool(rec.failed)
                    )
    except KeyboardInterrupt:
        rec.interrupted()
        raise
    for s in todo:  # planned but never started: say why, so `status` shows it
        r = manifest.steps.get(s.key)
        if rec.failed and s.key not in rec.index:
            if r is None:
                manifest.steps[s.key] = r = {
                    "run": s.run,
                    "phase": s.phase,
                    "notebook": _rel(s.notebook, spec.root),
                }
            r.update(status="skipped", reason=f"not run: {rec.failed[0]} failed")
    manifest.save()
    if rec.failed:
        key = rec.failed[0]
        r = manifest.steps[key]
        raise StudyFailed(
            f"study {spec.name} stopped: notebook {r['output']} failed: {r['error']}\n"
            f"  (executed notebook with the traceback: {r['output']}; source: {r['notebook']};"
            f" rerun the same command to resume at this step)",
            manifest,
        )
    out(f"study {spec.name}: {len(todo)} step(s) done in {_fmt_duration(time.monotonic() - t0)}")
    return manifest


def _run_parallel(
    groups: list[list[Step]], spec: StudySpec, kernel: str, jobs: int, rec: _Recorder
) -> None:
    """One run per worker process; workers report events, the parent records them."""
    # spawn: a clean interpreter per worker, no forked copies of the parent's threads
    ctx = multiprocessing.get_context("spawn")
    events, stop = ctx.Queue(), ctx.Event()
    finished = 0
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=min(jobs, len(groups)),
        mp_context=ctx,
        initializer=_worker_init,
        initargs=(events, stop),
    ) as pool:
        futures = [pool.submit(_worker_run, g, spec.root, kernel) for g in groups]
        try:
            while finished < len(groups):
                try:
                    event = events.get(timeout=0.5)
                except queue.Empty:
                    # A worker that died never sends group_done; its future carries the error.
                    crashed = [f for f in futures if f.done() and f.exception() is not None]
                    if crashed and all(f.done() for f in futures):
                        error = f"worker process crashed: {crashed[0].exception()!r}"
                        rec.interrupted(error)
                        if not rec.failed:
                            raise RuntimeError(error) from None
                        break
                    continue
                if event[0] == "group_done":
                    finished += 1
                    continue
                rec.handle(event)
                if rec.failed:
                    stop.set()  # other runs finish their current notebook, then stop
        except KeyboardInterrupt:
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def status_table(spec: StudySpec) -> str:
    """A table of every step: status, wall time, finish time, and what a rerun would do."""
    manifest = Manifest.load(spec.manifest_path)
    steps = plan(spec, manifest)
    rows = [("step", "status", "wall", "finished", "next run")]
    for s in steps:
        r = manifest.steps.get(s.key, {})
        wall = _fmt_duration(r["wall_s"]) if r.get("wall_s") is not None else "-"
        nxt = "skip" if s.action == "skip" else f"{s.action}: {s.reason}"
        rows.append((s.key, r.get("status", "-"), wall, (r.get("finished_at") or "-")[:19], nxt))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in rows
    ]
    for r in manifest.steps.values():
        if r.get("status") == "failed" and r.get("error"):
            lines.append(f"failed: {r.get('output')}: {r['error']}")
    return "\n".join(lines)


# -- CLI -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m rrglib.study", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="execute the study's stale notebooks")
    status = sub.add_parser("status", help="show each step's status and times")
    for p in (run, status):
        p.add_argument("spec", help="study spec YAML, e.g. configs/study_demo.yaml")
        p.add_argument(
            "-p",
            "--param",
            action="extend",
            nargs="+",
            default=[],
            metavar="KEY=VALUE",
            help="notebook parameter (YAML scalar), overrides the spec",
        )
    run.add_argument("--dry-run", action="store_true", help="list what would run and why")
    run.add_argument("--jobs", "-j", type=int, default=1, help="runs executed side by side")
    run.add_argument(
        "--only", action="extend", nargs="+", metavar="RUN", help="execute only these runs"
    )
    run.add_argument(
        "--force",
        nargs="*",
        metavar="NAME",
        help="rerun everything, or the named runs / steps / notebooks",
    )
    args = ap.parse_args(argv)
    try:
        spec = load_spec(args.spec, dict(parse_param(p) for p in args.param))
        if args.cmd == "status":
            print(status_table(spec))
            return 0
        run_study(spec, dry_run=args.dry_run, jobs=args.jobs, force=args.force, only=args.only)
    except (SpecError, StudyFailed, StudyLocked) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the running step is marked failed; rerun to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

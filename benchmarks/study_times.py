"""End-to-end time of each step of an executed study, from its manifest.

    python benchmarks/study_times.py results/demo
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dir", nargs="?", default="results/demo")
    args = parser.parse_args()
    path = Path(args.study_dir) / "manifest.json"
    if not path.is_file():
        raise SystemExit(f"{path} not found: run the study first (python -m study_runner run ...)")
    manifest = json.loads(path.read_text())
    steps = manifest["steps"]
    rows, per_notebook, total = [], {}, 0.0
    for key, rec in steps.items():
        wall = rec.get("wall_s") or 0.0
        total += wall
        name = key.split("/")[-1]
        per_notebook[name] = per_notebook.get(name, 0.0) + wall
        rows.append({"step": key, "status": rec.get("status"), "minutes": f"{wall / 60:.2f}"})
    print(table(rows, ["step", "status", "minutes"]))
    print()
    print(table([{"notebook": k, "minutes (all runs)": f"{v / 60:.1f}"} for k, v in per_notebook.items()],
                ["notebook", "minutes (all runs)"]))
    print(f"\ntotal: {total / 60:.1f} minutes of notebook execution")
    for env in manifest.get("environments", {}).values():  # what the times were measured on
        threads = sorted({str(r.get("threads")) for r in steps.values() if r.get("threads")})
        print(f"on {env['cpu']['model']} ({env['torch_build']['cpu_capability']}), "
              f"threads {', '.join(threads)}, torch {env['packages']['torch']}")
    for line in manifest.get("warnings", []):
        print(line)


if __name__ == "__main__":
    main()

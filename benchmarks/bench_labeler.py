"""Labeler throughput on one core: the rule labeler and the naive baseline on IU X-Ray.

    OMP_NUM_THREADS=1 python benchmarks/bench_labeler.py [--repeats 3]

Labels all 3,955 IU X-Ray reports (findings + impression) `--repeats` times and prints the best
rate in reports/s. The target is >= 500 reports/s for the rule labeler (the study labels every
generated report of every evaluation with it). CPU time (process_time) is printed beside wall
time: on a loaded machine the wall-clock rate understates the labeler.
"""

from __future__ import annotations

import argparse
import time

from data_prep.iu_reports import read_iu_xray_reports
from rrglib.labeler import label_reports
from rrglib.labeler.agreement import naive_label_reports

TARGET = 500.0


def best_rate(label, texts: list[str], repeats: int) -> tuple[float, float]:
    """(reports/s by wall clock, reports/s by CPU time), best of `repeats`."""
    wall = cpu = 0.0
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        label(texts)
        wall = max(wall, len(texts) / (time.perf_counter() - w))
        cpu = max(cpu, len(texts) / max(time.process_time() - c, 1e-9))
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    texts = read_iu_xray_reports()["report"].tolist()
    print(f"{len(texts)} IU X-Ray reports, best of {args.repeats}")
    for name, label in (("rule", label_reports), ("naive", naive_label_reports)):
        wall, cpu = best_rate(label, texts, args.repeats)
        verdict = "ok" if name != "rule" or cpu >= TARGET else f"BELOW {TARGET:.0f}"
        print(f"{name:6s} {wall:7.0f} reports/s wall  {cpu:7.0f} reports/s cpu  {verdict}")


if __name__ == "__main__":
    main()

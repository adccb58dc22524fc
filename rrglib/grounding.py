"""Grounding: does the report depend on the image?

Controls replace each study's image by a blank one or by another study's image (a derangement:
no study keeps its own); `rrglib.evaluate.generate_reports(images=...)` runs them,
`grounding_table` sets the metrics of each condition beside the real images' and
`grounding_tests` gives each drop a paired interval and test on the same studies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from rrglib.metrics import StudyStats, holm, paired_null, paired_test
from rrglib.metrics.resampling import percentile_interval


def grounding_table(results: Mapping[str, Mapping[str, Any]], reference: str = "real",
                    metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Metrics per input condition (real, blank, shuffled image ...) and each one's drop from
    `reference`. Values are CE metric dicts (`clinical_efficacy`'s scores or `score_reports`'s
    output); default metrics: every F1 the reference condition has."""
    flat = {k: dict(v.get("metrics", v)) for k, v in results.items()}
    if reference not in flat:
        raise KeyError(f"reference condition {reference!r} not in results ({sorted(flat)})")
    names = list(metrics) if metrics is not None else [m for m in flat[reference] if m.startswith("F1-")]
    table = pd.DataFrame({c: [float(v.get(m, np.nan)) for m in names] for c, v in flat.items()},
                         index=pd.Index(names, name="metric"))
    for c in flat:
        if c != reference:
            table[f"drop {c}"] = table[reference] - table[c]
    return table


def grounding_tests(stats: Mapping[str, StudyStats], metrics: Sequence[str], reference: str = "true",
                    clusters: Any = None, n_resamples: int = 5000, seed: int = 0) -> pd.DataFrame:
    """Each condition's drop from `reference` (reference - condition) on the same studies, with a
    paired bootstrap 95% interval and a paired permutation p-value, both resampling whole clusters
    (e.g. the source report of a demo case) when given; Holm across the table's rows.

    One row per (condition, metric): drop, ci low, ci high, p, p Holm, studies, clusters.
    """
    if reference not in stats:
        raise KeyError(f"reference condition {reference!r} not in stats ({sorted(stats)})")
    ref, rows = stats[reference], []
    n_clusters = len(np.unique(np.asarray(clusters))) if clusters is not None else ref.n
    for condition, other in stats.items():
        if condition == reference:
            continue
        for metric in metrics:
            drop, replicates = paired_null(ref, other, metric, n_resamples, seed, "bootstrap", clusters)
            low, high = percentile_interval(replicates)
            p = paired_test(ref, other, metric, n_resamples, seed, "permutation", clusters)
            rows.append({"condition": condition, "metric": metric, "drop": drop, "ci low": low,
                         "ci high": high, "p": p, "studies": ref.n, "clusters": n_clusters})
    table = pd.DataFrame(rows)
    if len(table):
        table["p Holm"] = holm(table["p"].to_numpy())
    return table


def grounding_conclusion(tests: pd.DataFrame, metric: str, condition: str = "shuffled",
                         n_resamples: int | None = None) -> str:
    """One sentence: does `metric` drop detectably under `condition` (default: each study gets
    another study's image)?"""
    from rrglib.reporting import format_p

    names = {"shuffled": "another study's image", "blank": "a blank image"}
    given = names.get(condition, f"the {condition} input")

    row = tests[(tests["condition"] == condition) & (tests["metric"] == metric)]
    if row.empty:
        raise KeyError(f"no test of {metric!r} under {condition!r} in the grounding tests")
    r = row.iloc[0]
    interval = f"{r['drop']:+.3f} [{r['ci low']:+.3f}, {r['ci high']:+.3f}]"
    p = format_p(r["p Holm"], n_resamples)
    if r["p Holm"] < 0.05 and r["ci low"] > 0:
        verdict = f"the reports depend on the image: it scores detectably lower with {given}"
    elif r["p Holm"] < 0.05 and r["ci high"] < 0:
        verdict = f"it scores detectably *higher* with {given}: not what image use predicts"
    else:
        verdict = f"no detectable change with {given}, at this number of studies"
    return (f"With {given}, {metric} changes by {interval} (real - {condition}; paired "
            f"bootstrap 95% interval over {int(r['clusters'])} source clusters of {int(r['studies'])} "
            f"studies; permutation p, Holm over this table's rows, {p}): {verdict}.")

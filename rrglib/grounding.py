"""Grounding: does the report depend on the image?

Controls replace each study's image by a blank one or by another study's image (a derangement:
no study keeps its own); `rrglib.evaluate.generate_reports(images=...)` runs them, and
`grounding_table` sets the metrics of each condition beside the real images'.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd


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

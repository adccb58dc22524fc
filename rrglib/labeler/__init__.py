"""Rule-based CheXpert-style labeler: report text -> 14 observations (1 / 0 / -1 / NaN).

``engine`` reads a report with the data of ``phrases``; ``chexbert`` is the optional CheXbert
labeler; ``agreement`` scores any labeler against IU X-Ray's MeSH tags."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from rrglib.iu_reports import read_reports
from rrglib.labeler.chexbert import ChexbertLabeler
from rrglib.labeler.engine import (
    MENTION_PATTERNS,
    SENTENCE_BOUNDARY,
    UNMENTION_PATTERNS,
    RuleLabeler,
    label_frequency_table,
    label_report,
    label_reports,
    normalise,
    normalise_with_map,
)
from rrglib.labeler.phrases import MENTIONS


def get_labeler(spec: str | Path | None = None) -> RuleLabeler | ChexbertLabeler:
    """None or "rule": the rule-based labeler; a path: CheXbert from that local checkpoint."""
    if spec is None or str(spec).lower() in ("rule", "rb", "rule-based"):
        return RuleLabeler()
    return ChexbertLabeler(spec)


def read_iu_xray_reports(path: str | Path | None = None) -> pd.DataFrame:
    """IU X-Ray reports (``rrglib.iu_reports`` columns) plus ``report``: findings + impression,
    the text the labeler reads."""
    df = read_reports(path)
    df["report"] = [" ".join(s for s in pair if s)
                    for pair in zip(df["findings"], df["impression"], strict=True)]
    return df


__all__ = [
    "MENTIONS", "MENTION_PATTERNS", "SENTENCE_BOUNDARY", "UNMENTION_PATTERNS", "ChexbertLabeler",
    "RuleLabeler", "get_labeler", "label_frequency_table", "label_report", "label_reports",
    "normalise", "normalise_with_map", "read_iu_xray_reports",
]  # fmt: skip

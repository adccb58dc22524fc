"""Rule-based CheXpert-style labeler: report text -> 14 observations (1 / 0 / -1 / NaN).

``engine`` reads a report with the data of ``phrases``; ``chexbert`` is the optional CheXbert
labeler; ``agreement`` scores any labeler against IU X-Ray's MeSH tags."""

from __future__ import annotations

from pathlib import Path

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


__all__ = [
    "MENTIONS", "MENTION_PATTERNS", "SENTENCE_BOUNDARY", "UNMENTION_PATTERNS", "ChexbertLabeler",
    "RuleLabeler", "get_labeler", "label_frequency_table", "label_report", "label_reports",
    "normalise", "normalise_with_map",
]  # fmt: skip

"""Report-generation metrics: NLG (pycocoevalcap), clinical efficacy, bootstrap and paired tests,
and seed-level statistics (rrglib.metrics.seeds: two-level bootstrap, seed-unit test, Holm, power).

Also exposed as local Hugging Face `evaluate` modules, loaded by path (no hub needed):
``load_evaluate_module("rrg_nlg")`` and ``load_evaluate_module("rrg_clinical")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rrglib.metrics.clinical import (
    PRIMARY_METRIC,
    clinical_efficacy,
    confusion_counts,
    per_observation_table,
)
from rrglib.metrics.nlg import NLG_KEYS, java_available, nlg_pair_stats, nlg_scores, tokenize
from rrglib.metrics.scoring import (
    StudyStats,
    bootstrap_ci,
    build_study_stats,
    paired_null,
    paired_test,
    results_table,
    score_reports,
)
from rrglib.metrics.seeds import (
    ArmSummary,
    SeedComparison,
    bootstrap_replicates,
    compare_arms,
    holm,
    mean_sd,
    minimum_detectable_difference,
    summarize_arm,
    welch_two_level,
)

MODULES_DIR = Path(__file__).resolve().parent / "modules"


def load_evaluate_module(name: str, **kwargs: Any) -> Any:
    """Load one of our `evaluate` modules ("rrg_nlg", "rrg_clinical") by its absolute path."""
    import evaluate

    path = MODULES_DIR / name / f"{name}.py"
    if not path.is_file():
        available = sorted(p.name for p in MODULES_DIR.iterdir() if p.is_dir())
        raise FileNotFoundError(f"no evaluate module {path}; available: {available}")
    return evaluate.load(str(path), **kwargs)


__all__ = [
    "ArmSummary",
    "NLG_KEYS",
    "PRIMARY_METRIC",
    "SeedComparison",
    "StudyStats",
    "bootstrap_ci",
    "bootstrap_replicates",
    "build_study_stats",
    "clinical_efficacy",
    "compare_arms",
    "confusion_counts",
    "holm",
    "java_available",
    "load_evaluate_module",
    "mean_sd",
    "minimum_detectable_difference",
    "nlg_pair_stats",
    "nlg_scores",
    "paired_null",
    "paired_test",
    "per_observation_table",
    "results_table",
    "score_reports",
    "summarize_arm",
    "tokenize",
    "welch_two_level",
]

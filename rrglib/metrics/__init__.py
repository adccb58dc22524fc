"""Report-generation metrics: NLG (pycocoevalcap), clinical efficacy, bootstrap and paired tests,
and seed-level statistics (rrglib.metrics.seeds: two-level bootstrap, seed-unit test, Holm, power).

Also local Hugging Face `evaluate` modules, loaded by path (no hub needed):
``load_evaluate_module("rrg_nlg")`` and ``load_evaluate_module("rrg_clinical")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rrglib.metrics.clinical import PRIMARY_METRIC, clinical_efficacy
from rrglib.metrics.nlg import NLG_KEYS, java_available, nlg_scores
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
    bootstrap_replicates,
    compare_arms,
    holm,
    mean_sd,
    minimum_detectable_difference,
    welch_two_level,
)


def load_evaluate_module(name: str, **kwargs: Any) -> Any:
    """Load one of our `evaluate` modules ("rrg_nlg", "rrg_clinical") by its absolute path."""
    import evaluate

    modules = Path(__file__).resolve().parent / "modules"
    path = modules / name / f"{name}.py"
    if not path.is_file():
        available = sorted(p.name for p in modules.iterdir() if p.is_dir())
        raise FileNotFoundError(f"no evaluate module {path}; available: {available}")
    return evaluate.load(str(path), **kwargs)


__all__ = ["NLG_KEYS", "PRIMARY_METRIC", "StudyStats", "bootstrap_ci", "bootstrap_replicates",
           "build_study_stats", "clinical_efficacy", "compare_arms", "holm", "java_available",
           "load_evaluate_module", "mean_sd", "minimum_detectable_difference", "nlg_scores",
           "paired_null", "paired_test", "results_table", "score_reports", "welch_two_level"]

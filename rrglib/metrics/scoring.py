"""One entry point for all metrics, bootstrap 95% intervals and paired tests between systems.

Every metric is a function of sums over studies of per-study statistics (BLEU clipped n-gram
counts and lengths, ROUGE-L, CIDEr-D and METEOR per pair, clinical tp/fp/fn per observation),
so a bootstrap resample is a vector of study weights and all resamples are one matrix product
(Java never runs again). BLEU, ROUGE-L and the clinical scores are recomputed exactly from
resampled sums; two are not:
- CIDEr-D keeps the full test set's document frequencies; resamples average per-pair scores.
- METEOR: resamples average per-pair scores times (corpus METEOR / mean per-pair METEOR), so the
  full sample gives the corpus score exactly (METEOR 1.5 pools chunk and match statistics the
  pairs do not expose). Each system's scale stays with its own pairs in a permutation.
With `clusters` (one id per study, e.g. the manifest's `source_id`), studies of one source are
resampled together: see rrglib.metrics.resampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from rrglib.labels import CHEXPERT_OBSERVATIONS
from rrglib.metrics.clinical import CONVENTIONS, ce_from_counts, clinical_efficacy, confusion_counts
from rrglib.metrics.nlg import BLEU_COLUMNS, bleu_from_sums, nlg_pair_stats
from rrglib.metrics.resampling import bootstrap_weights, percentile_interval, swap_masks


@dataclass
class StudyStats:
    """Per-study sufficient statistics of one system on one test set (keep it for paired tests)."""

    ids: list[Any]
    columns: list[str]  # names of the columns of `values`
    values: np.ndarray  # (n_studies, n_columns)
    meteor_scale: float = 1.0  # corpus METEOR / mean per-pair METEOR
    tag: str = "RB"

    @property
    def n(self) -> int:
        return len(self.ids)

    def _block(self, prefix: str) -> slice:
        idx = [i for i, c in enumerate(self.columns) if c.startswith(prefix)]
        return slice(idx[0], idx[-1] + 1)

    def metrics_from_sums(self, sums: np.ndarray, counts: np.ndarray,
                          meteor_scale: float | None = None) -> dict[str, np.ndarray]:
        """All metrics from column sums (..., n_columns) over `counts` drawn studies.

        `meteor_scale` overrides the system's own (1.0 for sums of `scaled_values()`)."""
        scale = self.meteor_scale if meteor_scale is None else meteor_scale
        bleu = bleu_from_sums(sums[..., self._block("bleu_")])
        out = {f"BLEU-{k + 1}": bleu[..., k] for k in range(4)}
        out["METEOR"] = sums[..., self.columns.index("meteor")] / counts * scale
        out["ROUGE-L"] = sums[..., self.columns.index("rouge")] / counts
        out["CIDEr"] = sums[..., self.columns.index("cider")] / counts
        for suffix in CONVENTIONS:
            parts = {k: sums[..., self._block(f"{k}{suffix}|")] for k in ("tp", "fp", "fn")}
            out.update(ce_from_counts(**parts, tag=self.tag, suffix=suffix))
        return out

    def point(self) -> dict[str, float]:
        sums = self.values.sum(0)
        return {k: float(v) for k, v in self.metrics_from_sums(sums, np.float64(self.n)).items()}

    def scaled_values(self) -> np.ndarray:
        """`values` with each pair's METEOR already multiplied by this system's METEOR scale."""
        values = self.values.copy()
        values[:, self.columns.index("meteor")] *= self.meteor_scale
        return values


def build_study_stats(references: list[str], hypotheses: list[str], ids: list[Any] | None = None,
                      labeler: Any = None, backend: str = "auto",
                      ) -> tuple[StudyStats, dict[str, float], dict[str, Any]]:
    """Score once: (per-study stats, exact corpus scores, extras: labels, per-observation table)."""
    from rrglib.labeler import get_labeler

    ids = list(range(len(references))) if ids is None else list(ids)
    if len(ids) != len(references):
        raise ValueError(f"{len(ids)} ids for {len(references)} reports")
    if labeler is None or isinstance(labeler, str):
        labeler = get_labeler(labeler)
    tag = getattr(labeler, "tag", "RB")

    nlg, pairs = nlg_pair_stats(list(references), list(hypotheses), backend)
    ref_labels = labeler.label_reports(references, index=ids)
    gen_labels = labeler.label_reports(hypotheses, index=ids)
    ce, table = clinical_efficacy(ref_labels, gen_labels, tag=tag)
    counts = confusion_counts(ref_labels, gen_labels)
    columns = [*BLEU_COLUMNS, "rouge", "cider", "meteor"]
    blocks = [pairs["bleu"], *(pairs[k][:, None] for k in ("rouge", "cider", "meteor"))]
    for suffix in CONVENTIONS:
        for kind in ("tp", "fp", "fn"):
            columns += [f"{kind}{suffix}|{o}" for o in CHEXPERT_OBSERVATIONS]
            blocks.append(counts[kind + suffix])
    mean_meteor = float(np.mean(pairs["meteor"]))
    scale = nlg["METEOR"] / mean_meteor if np.isfinite(mean_meteor) and mean_meteor > 0 else 1.0
    stats = StudyStats(ids, columns, np.hstack(blocks), meteor_scale=scale, tag=tag)
    labels = {"reference": ref_labels, "generated": gen_labels}
    return stats, {**nlg, **ce}, {"labels": labels, "per_observation": table}


def bootstrap_ci(stats: StudyStats, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                 clusters: Any = None) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval over studies (whole clusters when given) for every metric."""
    weights = bootstrap_weights(stats.n, n_boot, np.random.default_rng(seed), clusters)
    boot = stats.metrics_from_sums(weights @ stats.values, weights.sum(1))
    return {k: percentile_interval(v, level) for k, v in boot.items()}


def score_reports(references: list[str], hypotheses: list[str], ids: list[Any] | None = None,
                  n_boot: int = 1000, seed: int = 0, labeler: Any = None, backend: str = "auto",
                  clusters: Any = None) -> dict[str, Any]:
    """All metrics with bootstrap 95% intervals (resampling whole clusters when given).

    Returns {"metrics": {name: value}, "ci": {name: (low, high)}, "per_observation": DataFrame,
    "labels": {"reference": df, "generated": df}, "stats": StudyStats (for paired_test),
    "n": number of studies}. NLG values are pycocoevalcap's corpus scores; names in NLG_KEYS and
    rrglib.metrics.clinical's docstring.
    """
    stats, scores, extras = build_study_stats(references, hypotheses, ids, labeler, backend)
    ci = bootstrap_ci(stats, n_boot, seed, clusters=clusters) if n_boot > 0 else {}
    return {"metrics": scores, "ci": ci, "stats": stats, "n": stats.n, **extras}


def paired_null(stats_a: StudyStats, stats_b: StudyStats, metric: str, n_resamples: int = 10000,
                seed: int = 0, method: str = "permutation",
                clusters: Any = None) -> tuple[float, np.ndarray]:
    """(observed A - B, resampled differences) of a paired test; see `paired_test`.

    Permutation mixes the systems' METEOR-scaled per-pair values, so a swapped study carries its
    own system's METEOR scale and the null is centred on 0.
    """
    if list(stats_a.ids) != list(stats_b.ids) or stats_a.columns != stats_b.columns:
        raise ValueError("paired_test needs both systems scored on the same studies, same order")
    if metric not in stats_a.point():
        raise KeyError(f"unknown metric {metric!r}; choose one of {sorted(stats_a.point())}")
    rng = np.random.default_rng(seed)
    a, b = stats_a.scaled_values(), stats_b.scaled_values()

    def delta(sum_a: np.ndarray, sum_b: np.ndarray, counts: np.ndarray) -> np.ndarray:
        ma = stats_a.metrics_from_sums(sum_a, counts, meteor_scale=1.0)[metric]
        return ma - stats_b.metrics_from_sums(sum_b, counts, meteor_scale=1.0)[metric]

    n = np.float64(stats_a.n)
    observed = float(delta(a.sum(0), b.sum(0), n))
    if method == "permutation":
        swap = swap_masks(stats_a.n, n_resamples, rng, clusters)
        keep = 1.0 - swap
        return observed, delta(keep @ a + swap @ b, swap @ a + keep @ b, n)
    if method == "bootstrap":
        weights = bootstrap_weights(stats_a.n, n_resamples, rng, clusters)
        return observed, delta(weights @ a, weights @ b, weights.sum(1))
    raise ValueError(f"method must be permutation or bootstrap, got {method!r}")


def paired_test(stats_a: StudyStats, stats_b: StudyStats, metric: str, n_resamples: int = 10000,
                seed: int = 0, method: str = "permutation", clusters: Any = None) -> float:
    """Two-sided p-value that systems A and B score `metric` equally on the same studies.

    "permutation" (approximate randomisation): swap A's and B's outputs per study (per cluster
    when `clusters` gives one id per study) at random.
    "bootstrap": resample studies (clusters) and count how often the centred difference is as
    extreme. The smallest possible p is 1 / (n_resamples + 1).
    """
    observed, deltas = paired_null(stats_a, stats_b, metric, n_resamples, seed, method, clusters)
    centred = deltas if method == "permutation" else deltas - observed
    extreme = np.abs(centred) >= abs(observed) - 1e-12
    return float((extreme.sum() + 1) / (n_resamples + 1))


def results_table(result: dict[str, Any]) -> pd.DataFrame:
    """score_reports output as a table: value, CI low, CI high per metric."""
    rows = {k: (v, *result["ci"].get(k, (np.nan, np.nan))) for k, v in result["metrics"].items()}
    return pd.DataFrame.from_dict(rows, orient="index", columns=["value", "ci_low", "ci_high"])

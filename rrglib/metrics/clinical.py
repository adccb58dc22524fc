"""Clinical efficacy: precision / recall / F1 of observation labels, generated vs reference.

Names say what they are: ``{P|R|F1}-{labeler}-{14|13abn|5}-{micro|macro}[-u0]``. labeler: "RB"
is our rule-based labeler, "CXB" CheXbert (never call RB numbers CXB). 14: all CheXpert
observations (No Finding included, as in the common CheXbert scorer); 13abn: the 13 abnormal
ones (ABNORMAL), the primary metric's set, on which a constant normal report scores 0;
5: CHEXPERT_5. micro pools counts over observations, macro averages per-observation scores.
Positive or uncertain = 1 by default; "-u0": uncertain = 0. An empty denominator scores 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rrglib.labels import ABNORMAL, CHEXPERT_5, CHEXPERT_OBSERVATIONS, is_positive

CONVENTIONS: dict[str, str] = {"": "positive or uncertain = 1", "-u0": "uncertain = 0"}
SUBSETS = {"14": CHEXPERT_OBSERVATIONS, "13abn": ABNORMAL, "5": CHEXPERT_5}
# The study's pre-registered primary metric (see the analysis plan in configs/study_demo_full.yaml).
PRIMARY_METRIC = "F1-RB-13abn-micro"


def binarize(labels: pd.DataFrame, uncertain_positive: bool = True) -> np.ndarray:
    """(n, 14) bool in CHEXPERT_OBSERVATIONS order: 1 (and -1 if uncertain_positive) -> True."""
    missing = [c for c in CHEXPERT_OBSERVATIONS if c not in labels.columns]
    if missing:
        raise ValueError(f"label frame lacks columns {missing}; expected label_reports() output")
    values = labels[list(CHEXPERT_OBSERVATIONS)].to_numpy(dtype=float)
    return is_positive(values, uncertain_positive)


def confusion_counts(reference: pd.DataFrame, generated: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per-study tp/fp/fn (n, 14) for each convention, keyed like "tp", "tp-u0"."""
    if len(reference) != len(generated):
        raise ValueError(f"{len(reference)} reference rows but {len(generated)} generated rows")
    out = {}
    for suffix, unc_pos in (("", True), ("-u0", False)):
        ref, gen = binarize(reference, unc_pos), binarize(generated, unc_pos)
        out["tp" + suffix] = (ref & gen).astype(float)
        out["fp" + suffix] = (~ref & gen).astype(float)
        out["fn" + suffix] = (ref & ~gen).astype(float)
    return out


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), 0.0)


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    return _div(2 * tp, 2 * tp + fp + fn)


def micro_f1(reference: np.ndarray, generated: np.ndarray) -> float:
    """Micro F1 of two boolean (n, labels) matrices: pooled counts, 0 when nothing is positive."""
    ref, gen = np.asarray(reference, dtype=bool), np.asarray(generated, dtype=bool)
    return float(_f1(*(np.asarray(float(x.sum())) for x in (ref & gen, ~ref & gen, ref & ~gen))))


def ce_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tag: str = "RB",
                   suffix: str = "") -> dict[str, np.ndarray]:
    """All P/R/F1 micro/macro scores from summed counts of shape (..., 14)."""
    out: dict[str, np.ndarray] = {}
    for subset, names in SUBSETS.items():
        cols = [CHEXPERT_OBSERVATIONS.index(o) for o in names]
        t, p, n = tp[..., cols], fp[..., cols], fn[..., cols]
        T, P, N = t.sum(-1), p.sum(-1), n.sum(-1)  # micro: pool the counts over observations
        out[f"P-{tag}-{subset}-micro{suffix}"] = _div(T, T + P)
        out[f"R-{tag}-{subset}-micro{suffix}"] = _div(T, T + N)
        out[f"F1-{tag}-{subset}-micro{suffix}"] = _f1(T, P, N)
        # macro: score each observation, then average (sklearn's average="macro")
        out[f"P-{tag}-{subset}-macro{suffix}"] = _div(t, t + p).mean(-1)
        out[f"R-{tag}-{subset}-macro{suffix}"] = _div(t, t + n).mean(-1)
        out[f"F1-{tag}-{subset}-macro{suffix}"] = _f1(t, p, n).mean(-1)
    return out


def clinical_efficacy(reference: pd.DataFrame, generated: pd.DataFrame,
                      tag: str = "RB") -> tuple[dict[str, float], pd.DataFrame]:
    """CE scores (both conventions) and a per-observation table from two label frames."""
    counts = confusion_counts(reference, generated)
    scores: dict[str, float] = {}
    for suffix in CONVENTIONS:
        sums = {k: counts[k + suffix].sum(0) for k in ("tp", "fp", "fn")}
        ce = ce_from_counts(**sums, tag=tag, suffix=suffix)
        scores.update({k: float(v) for k, v in ce.items()})
    return scores, per_observation_table(counts)


def per_observation_table(counts: dict[str, np.ndarray]) -> pd.DataFrame:
    """Precision/recall/F1 and counts per observation, default convention (and F1 for -u0)."""
    tp, fp, fn = (counts[k].sum(0) for k in ("tp", "fp", "fn"))
    return pd.DataFrame(
        {"precision": _div(tp, tp + fp), "recall": _div(tp, tp + fn), "f1": _f1(tp, fp, fn),
         "f1-u0": _f1(*(counts[k + "-u0"].sum(0) for k in ("tp", "fp", "fn"))),
         "reference positives": tp + fn, "generated positives": tp + fp},
        index=pd.Index(CHEXPERT_OBSERVATIONS, name="observation"))

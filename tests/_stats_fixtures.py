"""Synthetic per-study statistics (no labeler, no Java) for the statistics and reporting tests."""

from __future__ import annotations

import numpy as np

from rrglib.labels import CHEXPERT_OBSERVATIONS
from rrglib.metrics import StudyStats
from rrglib.metrics.clinical import CONVENTIONS
from rrglib.metrics.nlg import BLEU_COLUMNS

K = len(CHEXPERT_OBSERVATIONS)
COLUMNS = [*BLEU_COLUMNS, "rouge", "cider", "meteor"] + [
    f"{kind}{suffix}|{o}" for suffix in CONVENTIONS for kind in ("tp", "fp", "fn")
    for o in CHEXPERT_OBSERVATIONS
]


def synthetic_stats(
    rouge: np.ndarray,
    ref: np.ndarray | None = None,
    gen: np.ndarray | None = None,
    meteor: np.ndarray | None = None,
    meteor_scale: float = 1.0,
) -> StudyStats:
    """StudyStats whose ROUGE-L/CIDEr per study is `rouge`, METEOR `meteor`, labels ref vs gen."""
    rouge = np.asarray(rouge, float)
    n = len(rouge)
    ref = np.zeros((n, K), bool) if ref is None else np.asarray(ref, bool)
    gen = ref.copy() if gen is None else np.asarray(gen, bool)
    meteor = rouge if meteor is None else np.asarray(meteor, float)
    bleu = np.tile([5, 3, 2, 1, 10, 9, 8, 7, 10, 12], (n, 1)).astype(float)
    counts = [(ref & gen), (~ref & gen), (ref & ~gen)]
    blocks = [bleu, rouge[:, None], rouge[:, None], meteor[:, None], *counts, *counts]
    values = np.hstack([b.astype(float) for b in blocks])
    return StudyStats(list(range(n)), list(COLUMNS), values, meteor_scale=meteor_scale)


def seed_design(
    rng: np.random.Generator,
    mu: float,
    study_effect: np.ndarray,
    n_seeds: int,
    sd_seed: float,
    sd_noise: float = 0.02,
) -> list[StudyStats]:
    """One arm: per-study ROUGE-L = mu + seed effect + study effect + noise, for each seed."""
    runs = []
    for _ in range(n_seeds):
        seed_effect = rng.normal(0, sd_seed)
        noise = rng.normal(0, sd_noise, len(study_effect))
        runs.append(synthetic_stats(mu + seed_effect + study_effect + noise))
    return runs

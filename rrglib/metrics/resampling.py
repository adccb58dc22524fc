"""How test studies are resampled: bootstrap weights and permutation swaps, by case or by cluster.

Studies that share a source (demo cases rendered from the same IU report share its label vector
and report text) are not independent. Given one cluster id per study, a bootstrap draws whole
clusters with replacement and a paired permutation swaps two systems' outputs for a whole
cluster at once; without clusters every study is its own cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Clusters = Sequence[Any] | np.ndarray | None


def cluster_index(n: int, clusters: Clusters = None) -> np.ndarray:
    """(n,) integer cluster of each study (0..n_clusters-1); no clusters: each study its own."""
    if clusters is None:
        return np.arange(n)
    clusters = np.asarray(clusters)
    if clusters.shape != (n,):
        raise ValueError(
            f"clusters has shape {clusters.shape} but there are {n} studies: pass one cluster id "
            "per study, in the order of the study statistics (e.g. the manifest's source_id)")
    if clusters.dtype.kind == "f" and np.isnan(clusters).any():
        raise ValueError("clusters contains NaN: every study needs a cluster id (source_id)")
    return np.unique(clusters, return_inverse=True)[1].reshape(n)


def bootstrap_weights(n: int, n_boot: int, rng: np.random.Generator,
                      clusters: Clusters = None) -> np.ndarray:
    """(n_boot, n) how often each study is drawn: clusters are drawn with replacement, whole.

    A resample draws as many clusters as there are, so its number of studies (the row sum, which
    averaging metrics use as the count) varies when clusters differ in size.
    """
    groups = cluster_index(n, clusters)
    k = int(groups.max()) + 1 if n else 0
    draws = rng.integers(0, k, size=(n_boot, k)) + (np.arange(n_boot) * k)[:, None]
    per_cluster = np.bincount(draws.ravel(), minlength=n_boot * k).reshape(n_boot, k)
    return per_cluster[:, groups].astype(float)


def swap_masks(n: int, n_resamples: int, rng: np.random.Generator,
               clusters: Clusters = None) -> np.ndarray:
    """(n_resamples, n) 0/1: swap two systems' outputs of a study (a cluster's all together)."""
    groups = cluster_index(n, clusters)
    k = int(groups.max()) + 1 if n else 0
    return rng.integers(0, 2, size=(n_resamples, k))[:, groups].astype(float)


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates."""
    alpha = (1 - level) / 2
    return float(np.quantile(replicates, alpha)), float(np.quantile(replicates, 1 - alpha))

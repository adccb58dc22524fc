"""Seed-level statistics, cluster resampling and the centred METEOR permutation null."""

from __future__ import annotations

import numpy as np
import pytest
from _stats_fixtures import seed_design, synthetic_stats
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from rrglib.metrics import (
    bootstrap_ci,
    bootstrap_replicates,
    compare_arms,
    holm,
    mean_sd,
    minimum_detectable_difference,
    paired_null,
    paired_test,
    welch_two_level,
)
from rrglib.metrics.resampling import bootstrap_weights, cluster_index, swap_masks
from rrglib.metrics.seeds import percentile_interval, seed_scores


# --- Holm ---------------------------------------------------------------------------------------
def test_holm_by_hand_and_as_statsmodels() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm(p) == pytest.approx(multipletests(p, method="holm")[1])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    with pytest.raises(ValueError, match="NaN"):
        holm([0.01, float("nan")])


# --- the seed-level test ------------------------------------------------------------------------
def test_welch_without_test_set_variance_is_scipys_welch() -> None:
    a, b = np.array([0.31, 0.35, 0.30]), np.array([0.28, 0.27, 0.29, 0.26])
    ours = welch_two_level(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert ours.t == pytest.approx(ref.statistic) and ours.p == pytest.approx(ref.pvalue)
    # by hand for one arm without variance: va = 1/3, vb = 0 -> df = 2, t = 2 / sqrt(1/3)
    hand = welch_two_level(np.array([1.0, 2.0, 3.0]), np.zeros(3))
    assert hand.df == pytest.approx(2.0) and hand.t == pytest.approx(2 / np.sqrt(1 / 3))
    assert hand.p == pytest.approx(2 * sps.t.sf(2 / np.sqrt(1 / 3), 2))


def test_test_set_variance_widens_the_test() -> None:
    a, b = np.array([0.31, 0.35, 0.30]), np.array([0.28, 0.27, 0.29])
    plain, wide = welch_two_level(a, b), welch_two_level(a, b, var_test=0.01**2)
    assert wide.se == pytest.approx(np.sqrt(plain.se**2 + 1e-4))
    assert wide.p > plain.p
    # no seed variance at all: the test-set term alone, with a normal reference distribution
    flat = welch_two_level(np.full(3, 0.3), np.full(3, 0.28), var_test=0.01**2)
    assert np.isinf(flat.df) and flat.p == pytest.approx(2 * sps.norm.sf(2.0))


# --- power --------------------------------------------------------------------------------------
def test_detectable_difference_shrinks_with_seeds_and_scales_with_sd() -> None:
    mdes = [minimum_detectable_difference(0.01, n) for n in (3, 5, 10, 30)]
    assert all(x > y for x, y in zip(mdes, mdes[1:], strict=False))
    assert minimum_detectable_difference(0.02, 5) == pytest.approx(2 * mdes[1])
    # many seeds: the normal approximation (z_0.975 + z_0.8) * sd * sqrt(2 / n)
    z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)
    assert minimum_detectable_difference(1.0, 400) == pytest.approx(z * np.sqrt(2 / 400), rel=0.01)
    # a stricter alpha (Holm's first step in a family of 3) needs a larger difference
    assert minimum_detectable_difference(0.01, 3, alpha=0.05 / 3) > mdes[0]
    with pytest.raises(ValueError, match="2 seeds"):
        minimum_detectable_difference(0.01, 1)


# --- cluster resampling -------------------------------------------------------------------------
def test_cluster_bootstrap_draws_whole_clusters() -> None:
    clusters = np.array(["r1", "r1", "r2", "r3", "r3", "r3"])
    groups = cluster_index(6, clusters)
    w = bootstrap_weights(6, 500, np.random.default_rng(0), clusters)
    for g in range(3):
        members = w[:, groups == g]
        assert (members == members[:, :1]).all()  # a cluster is drawn whole, or not at all
    sizes = np.array([2, 1, 3])
    # a resample draws 3 clusters: its study count is the sum of the drawn clusters' sizes
    per_cluster = np.stack([w[:, groups == g][:, 0] for g in range(3)], 1)
    assert (per_cluster.sum(1) == 3).all() and (w.sum(1) == per_cluster @ sizes).all()
    assert len(set(w.sum(1))) > 1
    swaps = swap_masks(6, 200, np.random.default_rng(0), clusters)
    assert all((swaps[:, groups == g] == swaps[:, groups == g][:, :1]).all() for g in range(3))
    with pytest.raises(ValueError, match="one cluster id per study"):
        cluster_index(5, clusters)


def test_no_clusters_is_the_case_bootstrap() -> None:
    w = bootstrap_weights(8, 100, np.random.default_rng(1))
    assert (w.sum(1) == 8).all()
    same = bootstrap_weights(8, 100, np.random.default_rng(1), clusters=np.arange(8))
    assert (w == same).all()


def _duplicated(rng: np.random.Generator, copies: int):
    """30 studies where A beats B slightly, each study repeated `copies` times (one cluster)."""
    base = rng.uniform(0.2, 0.6, 30)
    a = synthetic_stats(np.repeat(base + rng.normal(0.02, 0.05, 30), copies))
    b = synthetic_stats(np.repeat(base, copies))
    return a, b, np.repeat(np.arange(30), copies)


def test_clustered_copies_do_not_shrink_intervals_or_p_values() -> None:
    one, one_b, _ = _duplicated(np.random.default_rng(3), 1)
    four, four_b, clusters = _duplicated(np.random.default_rng(3), 4)
    p_one = paired_test(one, one_b, "ROUGE-L", 2000)
    p_case = paired_test(four, four_b, "ROUGE-L", 2000)
    p_cluster = paired_test(four, four_b, "ROUGE-L", 2000, clusters=clusters)
    assert p_case < p_one / 3  # copies treated as independent studies: overconfident
    assert p_cluster == pytest.approx(p_one, abs=0.03)
    width = {k: np.diff(v["ROUGE-L"])[0] for k, v in {
        "one": bootstrap_ci(one, 2000), "case": bootstrap_ci(four, 2000),
        "cluster": bootstrap_ci(four, 2000, clusters=clusters)}.items()}
    assert width["case"] < 0.7 * width["one"]
    assert width["cluster"] == pytest.approx(width["one"], rel=0.15)


# --- the METEOR permutation null ----------------------------------------------------------------
def test_meteor_permutation_null_is_centred() -> None:
    rng = np.random.default_rng(0)
    m_a, m_b = rng.uniform(0.2, 0.5, 80), rng.uniform(0.1, 0.4, 80)
    a = synthetic_stats(m_a, meteor_scale=1.3)
    b = synthetic_stats(m_b, meteor_scale=0.8)
    observed, null = paired_null(a, b, "METEOR", 4000)
    assert observed == pytest.approx(1.3 * m_a.mean() - 0.8 * m_b.mean())
    se = null.std() / np.sqrt(len(null))
    assert abs(null.mean()) < 4 * se
    # the old statistic (each mixed sum scaled by its own side's scale) was off by this much
    off_centre = (1.3 - 0.8) * (m_a.mean() + m_b.mean()) / 2
    assert off_centre > 50 * se
    # swapped systems: the same null mirrored; identical systems: centred, p = 1
    _, swapped = paired_null(b, a, "METEOR", 4000)
    assert swapped == pytest.approx(-null) and abs(swapped.mean()) < 4 * se
    _, same = paired_null(a, a, "METEOR", 4000)
    assert same == pytest.approx(0.0) and paired_test(a, a, "METEOR", 500) == 1.0


# --- two-level bootstrap ------------------------------------------------------------------------
def test_two_level_intervals_cover_the_truth_and_are_wider() -> None:
    """Two arms of 3 seeds with no true difference; seed variance dominates test-set variance."""
    rng = np.random.default_rng(7)
    hits = {"t": 0, "two-level": 0, "test set only": 0}
    widths = {"two-level": [], "test set only": []}
    sims = 50
    for i in range(sims):
        studies = rng.normal(0, 0.05, 60)
        a = seed_design(rng, 0.5, studies + rng.normal(0, 0.02, 60), 3, sd_seed=0.02)
        b = seed_design(rng, 0.5, studies, 3, sd_seed=0.02)
        c = compare_arms(a, b, "ROUGE-L", n_boot=300, seed=i)
        fixed = percentile_interval(bootstrap_replicates(a, "ROUGE-L", b, 300, i, resample_seeds=False))
        for name, (low, high) in (("t", c.ci), ("two-level", c.ci_bootstrap), ("test set only", fixed)):
            hits[name] += low <= 0.0 <= high  # the truth: no difference
        widths["two-level"].append(np.diff(c.ci_bootstrap)[0])
        widths["test set only"].append(np.diff(fixed)[0])
    assert hits["t"] >= 0.9 * sims
    # with 3 seeds the percentile bootstrap is narrow (about 80%), why claims cite the t interval
    assert hits["two-level"] >= 0.65 * sims
    assert hits["test set only"] <= hits["two-level"] - 0.2 * sims
    assert np.mean(widths["two-level"]) > 2 * np.mean(widths["test set only"])


def test_seed_summary_by_hand() -> None:
    runs = [synthetic_stats(np.full(10, v)) for v in (0.2, 0.3, 0.4)]
    assert seed_scores(runs, "ROUGE-L") == pytest.approx([0.2, 0.3, 0.4])
    mean, sd = mean_sd(runs, "ROUGE-L")
    assert mean == pytest.approx(0.3) and sd == pytest.approx(0.1)
    with pytest.raises(ValueError, match="at least 2"):
        bootstrap_replicates(runs[:1], "ROUGE-L")
    with pytest.raises(KeyError, match="unknown metric"):
        bootstrap_replicates(runs, "F1-CXB-14-micro")


def test_compare_arms_finds_a_seed_level_effect() -> None:
    rng = np.random.default_rng(11)
    studies = rng.normal(0, 0.05, 60)
    better = seed_design(rng, 0.55, studies, 3, sd_seed=0.01)
    worse = seed_design(rng, 0.45, studies, 3, sd_seed=0.01)
    c = compare_arms(better, worse, "ROUGE-L", n_boot=500)
    assert c.estimate == pytest.approx(c.scores_a.mean() - c.scores_b.mean())
    assert c.ci[0] > 0 and c.ci_bootstrap[0] > 0 and c.p < 0.01 and 0 < c.sd_test < 0.01
    # the t interval excludes 0 exactly when the test rejects at 1 - level
    q = sps.t.ppf(0.975, c.test.df)
    assert c.ci == pytest.approx((c.estimate - q * c.test.se, c.estimate + q * c.test.se))
    # shared studies cancel in the difference: the test-set sd is far below the studies' 0.05/sqrt(60)
    assert c.sd_test < 0.5 * 0.05 / np.sqrt(60)
    assert c.mde == pytest.approx(
        minimum_detectable_difference(c.test.se / np.sqrt(2 / 3), 3, 3), rel=1e-9)
    same = compare_arms(worse, seed_design(rng, 0.45, studies, 3, sd_seed=0.01), "ROUGE-L", n_boot=500)
    assert same.p > 0.05 and same.ci[0] < 0 < same.ci[1]
    with pytest.raises(ValueError, match="same test studies"):
        compare_arms(better, [synthetic_stats(np.zeros(5))] * 3, "ROUGE-L")

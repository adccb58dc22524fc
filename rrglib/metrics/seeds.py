"""Seed-level statistics: the unit of replication is the training seed.

Input: per arm, one `StudyStats` per seed, all scored on the same test studies in the same order.
A claim about an arm meets seed variance (another seed trains another model) and test-set
variance (another test sample scores the same model differently). `bootstrap_replicates`
resamples both (seeds, then test clusters); `compare_arms` tests with a standard error that adds
both (`welch_two_level`). With few seeds the two-level percentile interval is too narrow
(resampling 3 seeds shrinks their variance by 2/3; measured in tests/test_stats.py: about 80%
coverage for a nominal 95%), so a claim cites the test's own t interval (it excludes 0 exactly
when p < 1 - level), the bootstrap one beside it.
Pairing: each replicate scores every seed of both arms on one draw of test clusters, so study
difficulty common to the arms cancels. Seeds are not paired across arms (the same seed number
under another strategy trains another model); if shared seeds correlate the arms, treating them
as independent errs conservative.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rrglib.metrics.resampling import bootstrap_weights, percentile_interval
from rrglib.metrics.scoring import StudyStats


def _check_runs(runs: Sequence[StudyStats], metric: str, what: str = "arm") -> None:
    if len(runs) < 2:
        raise ValueError(f"{what} has {len(runs)} seed(s): seed-level statistics need at least 2 "
                         "(the study design asks for >= 3 per arm of a primary comparison)")
    if any(list(r.ids) != list(runs[0].ids) for r in runs[1:]):
        raise ValueError(f"the seeds of {what} were not scored on the same test studies in the "
                         "same order")
    if metric not in runs[0].point():
        raise KeyError(f"unknown metric {metric!r}; choose one of {sorted(runs[0].point())}")


def seed_scores(runs: Sequence[StudyStats], metric: str) -> np.ndarray:
    """(n_seeds,) the metric of each seed's run on the whole test set."""
    return np.array([r.point()[metric] for r in runs])


def mean_sd(runs: Sequence[StudyStats], metric: str) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of the metric across seeds."""
    scores = seed_scores(runs, metric)
    sd = float(scores.std(ddof=1)) if len(scores) > 1 else float("nan")
    return float(scores.mean()), sd


def bootstrap_replicates(runs_a: Sequence[StudyStats], metric: str,
                         runs_b: Sequence[StudyStats] | None = None, n_boot: int = 2000,
                         seed: int = 0, clusters: Any = None,
                         resample_seeds: bool = True) -> np.ndarray:
    """(n_boot,) bootstrap replicates of arm A's seed-mean (or A - B) of `metric`.

    Each replicate draws n_seeds seeds with replacement per arm and one set of test clusters
    shared by every seed of both arms (all were scored on the same test set).
    `resample_seeds=False` keeps the seeds fixed: the test-set level alone.
    """
    _check_runs(runs_a, metric, "arm A")
    if runs_b is not None:
        _check_runs(runs_b, metric, "arm B")
        if list(runs_b[0].ids) != list(runs_a[0].ids):
            raise ValueError("arms A and B were not scored on the same test studies in the same "
                             "order")
    rng = np.random.default_rng(seed)
    weights = bootstrap_weights(runs_a[0].n, n_boot, rng, clusters)
    counts = weights.sum(1)

    def arm_mean(runs: Sequence[StudyStats]) -> np.ndarray:
        # (n_boot, n_seeds): every seed scored on every replicate's test set
        per_seed = np.stack([r.metrics_from_sums(weights @ r.values, counts)[metric]
                             for r in runs], 1)
        if resample_seeds:
            pick = rng.integers(0, len(runs), size=per_seed.shape)
            per_seed = np.take_along_axis(per_seed, pick, axis=1)
        return per_seed.mean(1)

    out = arm_mean(runs_a)
    return out - arm_mean(runs_b) if runs_b is not None else out


def _two_level(runs_a: Sequence[StudyStats], metric: str, runs_b: Sequence[StudyStats] | None,
               n_boot: int, seed: int, clusters: Any) -> tuple[np.ndarray, float]:
    """(two-level replicates, test-set variance of the estimate with the seeds fixed)."""
    both = bootstrap_replicates(runs_a, metric, runs_b, n_boot, seed, clusters)
    fixed = bootstrap_replicates(runs_a, metric, runs_b, n_boot, seed + 1, clusters,
                                 resample_seeds=False)
    return both, float(fixed.var(ddof=1))


@dataclass(frozen=True)
class TTest:
    """A t statistic with its degrees of freedom, two-sided p-value and standard error."""

    t: float
    df: float
    p: float
    se: float


def welch_two_level(scores_a: np.ndarray, scores_b: np.ndarray, var_test: float = 0.0) -> TTest:
    """Welch's t-test over seed-level scores, its variance widened by the test-set variance.

    The seed is the unit of replication, so the seeds' scores are the sample. With 3 seeds per
    arm a permutation of seed labels has only 20 relabelings (smallest two-sided p = 0.1) and can
    never reject at 0.05, hence Welch's t. `var_test` (test-set variance of the difference of seed
    means, cluster bootstrap with seeds fixed) is added so the test covers what the two-level
    interval covers. The df stay Welch-Satterthwaite's for the seed terms alone, so p grows with
    var_test (a known extra variance would raise the df and could lower p); with var_test = 0
    this is scipy's Welch test. Seed variance on a fixed test set also holds seed-by-study noise,
    so the test errs slightly conservative.
    """
    from scipy import stats as sps  # here, not at import: scipy.stats takes seconds to load

    a, b = np.asarray(scores_a, float), np.asarray(scores_b, float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff = float(a.mean() - b.mean())
    var = va + vb + float(var_test)
    if var <= 0:  # no variance at any level: the difference is certain on this design
        return TTest(t=float("nan"), df=float("nan"), p=1.0 if diff == 0 else 0.0, se=0.0)
    denom = va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)
    df = (va + vb) ** 2 / denom if denom > 0 else float("inf")
    t = diff / np.sqrt(var)
    p = 2 * (sps.norm.sf(abs(t)) if np.isinf(df) else sps.t.sf(abs(t), df))
    return TTest(t=float(t), df=float(df), p=float(p), se=float(np.sqrt(var)))


def t_interval(estimate: float, se: float, df: float, level: float = 0.95) -> tuple[float, float]:
    """estimate +- t quantile (df; normal when df is inf or NaN) * se."""
    from scipy import stats as sps

    half = 0.5 + level / 2
    q = sps.norm.ppf(half) if np.isinf(df) or np.isnan(df) else sps.t.ppf(half, df)
    return float(estimate - q * se), float(estimate + q * se)


def minimum_detectable_difference(sd: float, n_a: int, n_b: int | None = None,
                                  alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true difference a two-sided two-sample t-test detects with the given power.

    `sd` is one seed's score sd; statsmodels solves for the standardised effect. Compare with the
    paper's +2 F1 points = 0.02 on our scale. The pooled df (n_a + n_b - 2) are at least Welch's,
    so for the Welch test the true detectable difference is, if anything, larger.
    """
    from statsmodels.stats.power import TTestIndPower

    n_b = n_a if n_b is None else n_b
    if n_a < 2 or n_b < 2:
        raise ValueError(f"power needs >= 2 seeds per arm, got {n_a} and {n_b}")
    effect = TTestIndPower().solve_power(effect_size=None, nobs1=n_a, alpha=alpha, power=power,
                                         ratio=n_b / n_a, alternative="two-sided")
    return float(np.asarray(effect).item() * sd)


def holm(pvalues: Sequence[float], alpha: float = 0.05) -> np.ndarray:
    """Holm-adjusted p-values across one family of tests (statsmodels' multipletests)."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, float)
    if np.isnan(p).any():
        raise ValueError(f"p-values contain NaN: {p.tolist()}; every test of the family needs a p")
    return multipletests(p, alpha=alpha, method="holm")[1]


@dataclass(frozen=True)
class ArmSummary:
    """One arm on one metric across its seeds."""

    metric: str
    scores: np.ndarray  # one score per seed on the whole test set
    mean: float
    sd: float  # across seeds (ddof=1)
    ci: tuple[float, float]  # mean +- t(n-1) * sqrt(sd^2 / n + test-set variance of the mean)
    ci_bootstrap: tuple[float, float]  # two-level percentile bootstrap (seeds, then clusters)


def summarize_arm(runs: Sequence[StudyStats], metric: str, n_boot: int = 2000, seed: int = 0,
                  clusters: Any = None, level: float = 0.95) -> ArmSummary:
    """Mean +- sd across seeds and intervals that cover seed and test-set variance."""
    scores = seed_scores(runs, metric)
    mean, sd = mean_sd(runs, metric)
    both, var_test = _two_level(runs, metric, None, n_boot, seed, clusters)
    se = np.sqrt(sd**2 / len(scores) + var_test)
    return ArmSummary(metric=metric, scores=scores, mean=mean, sd=sd,
                      ci=t_interval(mean, se, len(scores) - 1, level),
                      ci_bootstrap=percentile_interval(both, level))


@dataclass(frozen=True)
class SeedComparison:
    """Arm A vs arm B on one metric, seeds as the unit (see `compare_arms`)."""

    metric: str
    scores_a: np.ndarray  # one score per seed on the whole test set
    scores_b: np.ndarray
    estimate: float  # mean over A's seeds - mean over B's seeds
    ci: tuple[float, float]  # t interval: estimate +- t(df) * se of the test
    ci_bootstrap: tuple[float, float]  # two-level percentile bootstrap (seeds, then test clusters)
    test: TTest
    sd_test: float  # test-set standard deviation of the estimate (seeds fixed)
    mde: float  # smallest difference detected at `power` (80%) by this design

    @property
    def p(self) -> float:
        return self.test.p


def compare_arms(runs_a: Sequence[StudyStats], runs_b: Sequence[StudyStats], metric: str,
                 n_boot: int = 2000, seed: int = 0, clusters: Any = None, level: float = 0.95,
                 power_alpha: float = 0.05, power: float = 0.8) -> SeedComparison:
    """Estimate, intervals, seed-level test and power of A - B on `metric`.

    The power's sd is this design's effective per-seed sd, sqrt(V / (1/n_a + 1/n_b)) with V the
    test's variance (seed and test-set terms); pass `power_alpha` = alpha / m for the strictest
    Holm step of a family of m tests.
    """
    a, b = seed_scores(runs_a, metric), seed_scores(runs_b, metric)
    both, var_test = _two_level(runs_a, metric, runs_b, n_boot, seed, clusters)
    test = welch_two_level(a, b, var_test)
    sd_eff = test.se / np.sqrt(1 / len(a) + 1 / len(b))
    estimate = float(a.mean() - b.mean())
    return SeedComparison(
        metric=metric, scores_a=a, scores_b=b, estimate=estimate,
        ci=t_interval(estimate, test.se, test.df, level),
        ci_bootstrap=percentile_interval(both, level), test=test, sd_test=float(np.sqrt(var_test)),
        mde=minimum_detectable_difference(sd_eff, len(a), len(b), power_alpha, power))

"""Statistics that decide: bootstrap confidence intervals and paired verdicts.

* :func:`mean_ci`: the mean of a metric's per-sample scores with a 95 % bootstrap confidence
  interval (scipy.stats.bootstrap, BCa; the percentile interval where BCa is undefined).
* :func:`compare`: one split method against one baseline on the same samples: the paired
  differences, their mean with a bootstrap CI, and the two-sided Wilcoxon signed-rank p-value
  (scipy.stats.wilcoxon).
* :func:`holm`: Holm's step-down correction of a family of p-values (the metrics of one
  Quantus category).
* :func:`verdicts`: every split method against the best baseline of every metric (the
  non-split, non-control method with the best mean), win / tie / loss per metric at
  α = 0.05 after Holm's correction over the category's metrics, and per category.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05
RESAMPLES = 2000


def mean_ci(values, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the finite values; NaN for none, (v, v, v) for one or equal ones."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(v.mean())
    if v.size == 1 or np.all(v == v[0]):
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for method in ("BCa", "percentile"):
            ci = stats.bootstrap(
                (v,),
                np.mean,
                confidence_level=level,
                n_resamples=RESAMPLES,
                method=method,
                random_state=rng,
                vectorized=True,
            ).confidence_interval
            if np.isfinite(ci.low) and np.isfinite(ci.high):
                return mean, float(ci.low), float(ci.high)
    return mean, float("nan"), float("nan")


@dataclass(frozen=True)
class Comparison:
    """A split method against a baseline on one metric, paired per sample."""

    n: int  # samples where both scores are finite
    delta: float  # mean of (split - baseline)
    low: float  # 95 % bootstrap CI of delta
    high: float
    p: float  # two-sided Wilcoxon signed-rank p-value (1 when every pair is equal)
    better: int  # +1: the split method is better, -1: worse, 0: no direction


def compare(split, baseline, higher_is_better: bool, seed: int = 0) -> Comparison:
    from scipy import stats

    a = np.asarray(split, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    d = a[both] - b[both]
    if d.size == 0:
        nan = float("nan")
        return Comparison(0, nan, nan, nan, nan, 0)
    delta, low, high = mean_ci(d, seed)
    nonzero = d[d != 0]
    if nonzero.size == 0:
        return Comparison(int(d.size), delta, low, high, 1.0, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    # the direction of the test statistic: the signed-rank sum of the nonzero differences
    ranks = stats.rankdata(np.abs(nonzero))
    signed = float(np.sum(ranks * np.sign(nonzero)))
    sign = int(np.sign(signed)) * (1 if higher_is_better else -1)
    return Comparison(int(d.size), delta, low, high, p, sign)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values (NaN stays NaN and is not counted in the family)."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    if idx.size == 0:
        return out.tolist()
    order = idx[np.argsort(p[idx], kind="stable")]
    m = idx.size
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def verdict(comparison: Comparison, p_adjusted: float) -> str:
    if not np.isfinite(p_adjusted) or p_adjusted >= ALPHA or comparison.better == 0:
        return "tie"
    return "win" if comparison.better > 0 else "loss"


def category_verdict(verdicts: list[str]) -> str:
    """win: a win and no loss; loss: a loss and no win; mixed: both; tie: neither."""
    wins, losses = "win" in verdicts, "loss" in verdicts
    if wins and losses:
        return "mixed"
    return "win" if wins else "loss" if losses else "tie"


@dataclass(frozen=True)
class MetricVerdict:
    method: str
    category: str
    metric: str
    baseline: str  # the best baseline of this metric (by mean)
    comparison: Comparison
    p_holm: float
    verdict: str


def verdicts(
    table: dict[tuple[str, str], np.ndarray],
    split_methods: list[str],
    baselines: list[str],
    metrics: list[str],
    category_of: dict[str, str],
    higher_is_better: dict[str, bool],
    seed: int = 0,
) -> list[MetricVerdict]:
    """Every split method against each metric's best baseline; Holm per method and category.

    `table[method, metric]` holds the per-sample scores, in the same sample order for every
    method."""
    best_of = {m: _best_baseline(table, baselines, m, higher_is_better[m]) for m in metrics}
    out: list[MetricVerdict] = []
    for method in split_methods:
        for category in dict.fromkeys(category_of[m] for m in metrics):
            found = [
                (
                    metric,
                    best_of[metric],
                    compare(
                        table[method, metric],
                        table[best_of[metric], metric],
                        higher_is_better[metric],
                        seed,
                    ),
                )
                for metric in metrics
                if category_of[metric] == category
                and best_of[metric] is not None
                and np.isfinite(table[method, metric]).any()
            ]
            adjusted = holm([c.p for _, _, c in found])
            for (metric, best, comparison), p in zip(found, adjusted, strict=True):
                out.append(
                    MetricVerdict(
                        method, category, metric, best, comparison, p, verdict(comparison, p)
                    )
                )
    return out


def _best_baseline(
    table: dict[tuple[str, str], np.ndarray], baselines: list[str], metric: str, higher: bool
) -> str | None:
    """The baseline with the best mean on `metric` (None where none has a finite score)."""
    means = {
        b: float(np.nanmean(table[b, metric]))
        for b in baselines
        if np.isfinite(table[b, metric]).any()
    }
    ranked = [b for b in baselines if b in means and np.isfinite(means[b])]
    sign = 1 if higher else -1
    return max(ranked, key=lambda b: sign * means[b]) if ranked else None

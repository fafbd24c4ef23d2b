"""Bootstrap CIs, paired Wilcoxon verdicts and Holm's correction (onnxsplit.eval.stats)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

if importlib.util.find_spec("scipy") is None:
    pytest.skip("the statistics need scipy (the eval extra)", allow_module_level=True)

from onnxsplit.eval.stats import (  # noqa: E402
    category_verdict,
    compare,
    holm,
    mean_ci,
    verdicts,
)


def test_bootstrap_interval_covers_the_true_mean() -> None:
    rng = np.random.default_rng(0)
    covered = 0
    for i in range(100):
        v = rng.exponential(2.0, 64)  # skewed, true mean 2
        mean, low, high = mean_ci(v, seed=i)
        assert low <= mean <= high
        covered += low <= 2.0 <= high
    assert 85 <= covered <= 100  # nominal 95 %


def test_interval_edge_cases() -> None:
    assert mean_ci([3.0, 3.0, 3.0]) == (3.0, 3.0, 3.0)
    assert np.isnan(mean_ci([np.nan, np.inf])[0])
    assert mean_ci([1.0, np.nan]) == (1.0, 1.0, 1.0)


def test_holm_step_down() -> None:
    # sorted 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → monotone 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert np.isnan(holm([0.2, np.nan])[1]) and holm([0.2, np.nan])[0] == pytest.approx(0.2)
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_paired_direction_follows_the_metric() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1, 128)
    split = base + 0.3 + rng.normal(0, 0.3, 128)  # higher on every pair, roughly
    up = compare(split, base, higher_is_better=True)
    down = compare(split, base, higher_is_better=False)
    assert up.p < 1e-6 and up.better == 1 and down.better == -1
    assert up.low < 0.3 < up.high
    same = compare(base, base, True)
    assert same.p == 1.0 and same.better == 0
    # a pair with a NaN is dropped, not counted
    assert compare([1.0, np.nan, 2.0], [0.0, 1.0, 1.0], True).n == 2


def test_verdicts_against_each_metrics_best_baseline() -> None:
    rng = np.random.default_rng(2)
    n = 96
    noise = lambda: rng.normal(0, 0.2, n)  # noqa: E731
    table = {
        # a: higher is better; b: lower is better
        ("weak", "a"): 0.0 + noise(),
        ("strong", "a"): 1.0 + noise(),
        ("weak", "b"): 1.0 + noise(),
        ("strong", "b"): 2.0 + noise(),
        ("split", "a"): 1.5 + noise(),  # beats the best baseline on a (strong)
        ("split", "b"): 1.0 + noise(),  # ties the best baseline on b (weak)
    }
    found = verdicts(
        table,
        ["split"],
        ["weak", "strong"],
        ["a", "b"],
        {"a": "faithfulness", "b": "faithfulness"},
        {"a": True, "b": False},
    )
    by_metric = {v.metric: v for v in found}
    assert by_metric["a"].baseline == "strong" and by_metric["a"].verdict == "win"
    assert by_metric["b"].baseline == "weak" and by_metric["b"].verdict == "tie"
    assert category_verdict([v.verdict for v in found]) == "win"
    assert category_verdict(["win", "loss", "tie"]) == "mixed"
    assert category_verdict(["tie", "loss"]) == "loss"

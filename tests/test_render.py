"""Rendering of maps (onnxsplit.explain.render / schemes): colour schemes fixed by the method,
0 drawn as neutral, robust percentile scaling, maps back on the photo at its own size, figures,
component arrays, and the summary of several runs into one folder."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from onnxsplit.attribution.methods import METHODS
from onnxsplit.cli import main
from onnxsplit.explain import render, schemes
from onnxsplit.explain.render import Explained, View

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
CNN = SAMPLES / "digits_cnn_op17_legacy.onnx"
PNG = SAMPLES / "digit_2.png"
RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ONNXSPLIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# -- the scheme is the method's, never the data's ----------------------------------------------
SIGNED = ["gradient", "gradient_x_input", "splitcam", "splitlrp", "splitgrad", "lrp_epsilon",
          "lrp_zplus", "lrp_epsilon_plus", "splitgrad_g", "splitgrad_h"]  # fmt: skip
SEQUENTIAL = ["gradcam", "layercam"]


def test_every_compiled_method_has_a_fixed_scheme():
    assert set(SIGNED[:8]) | set(SEQUENTIAL) <= set(METHODS)
    for name in METHODS:  # a method added later is drawn signed until it is listed
        assert schemes.scheme_for(name).cmap in ("bwr", "YlOrRd"), name
    for name in SIGNED:
        scheme = schemes.scheme_for(name)
        assert (scheme.cmap, scheme.signed) == ("bwr", True), name
    for name in SEQUENTIAL:
        assert schemes.scheme_for(name) == schemes.Scheme("YlOrRd", False), name
    sides = {n: schemes.scheme_for(n) for n in ("splitcam_pos", "splitlrp_g")}
    assert all(s.side == "for" and s.cmap == "Reds" and not s.signed for s in sides.values())
    sides = {n: schemes.scheme_for(n) for n in ("splitcam_neg", "splitlrp_h")}
    assert all(s.side == "against" and s.cmap == "Blues" for s in sides.values())


@pytest.mark.parametrize("method", ["splitlrp", "gradcam", "gradient"])
def test_the_scheme_does_not_depend_on_the_data(method):
    """A map that happens to be >= 0 and one with negative values get the same scheme, and
    the same value is drawn in the same colour in both (same scale)."""
    positive = RNG.random((16, 16))
    signed = positive - 0.5
    signed[0, 0] = positive[0, 0] = 0.75
    scheme = schemes.scheme_for(method)
    one = render.colorize(positive, scheme, scale=1.0)
    two = render.colorize(signed, scheme, scale=1.0)
    assert np.array_equal(one[0, 0], two[0, 0])
    # and the picture of a signed method is diverging whatever the data
    if scheme.signed:
        assert np.array_equal(render.colorize(np.zeros((2, 2)), scheme, 1.0)[0, 0], [255] * 3)


def test_a_signed_map_renders_zero_as_neutral():
    scheme = schemes.scheme_for("splitcam")
    saliency = np.zeros((8, 8))
    saliency[2, 2], saliency[5, 5] = 1.0, -1.0
    heat = render.colorize(saliency, scheme, scale=1.0)
    assert np.array_equal(heat[0, 0], [255, 255, 255])  # white
    assert heat[2, 2, 0] > 200 and heat[2, 2, 2] < 50  # red = for
    assert heat[5, 5, 2] > 200 and heat[5, 5, 0] < 50  # blue = against
    photo = RNG.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    drawn = render.overlay(photo, saliency, scheme, 1.0)
    base = np.round(render.backdrop(photo)).astype(np.uint8)
    zero = saliency == 0
    assert np.array_equal(drawn[zero], base[zero])  # 0: the photo itself, untinted
    assert drawn[2, 2, 0] > drawn[2, 2, 2] and drawn[5, 5, 2] > drawn[5, 5, 0]


def test_a_cam_starts_at_the_photo():
    scheme = schemes.scheme_for("gradcam")
    photo = RNG.integers(0, 255, (4, 4, 3), dtype=np.uint8)
    drawn = render.overlay(photo, np.zeros((4, 4)), scheme, 1.0)
    assert np.array_equal(drawn, np.round(render.backdrop(photo)).astype(np.uint8))


# -- robust scaling ----------------------------------------------------------------------------
def test_percentile_scaling_ignores_a_few_outliers():
    saliency = RNG.random((100, 100))
    saliency[0, :5] = 1000.0  # 5 speckle pixels of 10 000 (LRP-like)
    scale = schemes.robust_scale(saliency, signed=True)
    assert scale == pytest.approx(np.percentile(np.abs(saliency), 99.5))
    assert 0.9 < scale < 1.0
    heat = render.colorize(saliency, schemes.scheme_for("splitlrp"))
    # most of the map is visibly coloured, not washed out by the outliers
    assert np.mean(heat[..., 1] < 200) > 0.3


def test_percentile_scaling_is_symmetric_for_signed_maps():
    saliency = np.linspace(-2.0, 1.0, 10_000)
    scale = schemes.robust_scale(saliency, signed=True)
    assert scale == pytest.approx(np.percentile(np.abs(saliency), 99.5))
    values = schemes.normalize(saliency, schemes.scheme_for("gradient"), scale)
    assert values.min() == -1.0 and values.max() == pytest.approx(1.0 / scale)
    # a sequential map is scaled from 0 by its positive values
    assert schemes.robust_scale(np.array([-5.0, 0.0, 1.0]), signed=False) <= 1.0


def test_scaling_of_sparse_and_zero_maps():
    sparse = np.zeros((100, 100))
    sparse[3, 3] = 2.0
    assert schemes.robust_scale(sparse, True) == 2.0  # the percentile is 0: the maximum
    assert schemes.robust_scale(np.zeros((4, 4)), True) == 1.0
    assert np.all(render.colorize(np.zeros((4, 4)), schemes.scheme_for("splitcam")) == 255)


# -- on the photo, at its own size -------------------------------------------------------------
def test_maps_go_back_onto_the_photo_at_its_size_and_aspect():
    saliency = np.arange(16.0).reshape(4, 4)
    crop = render.to_photo(saliency, View(30, 50, "crop"), 30, 50)
    assert crop.shape == (30, 50)
    assert np.isnan(crop[:, :10]).all() and np.isnan(crop[:, 40:]).all()  # outside the crop
    assert np.isfinite(crop[:, 10:40]).all()
    assert crop[0, 10] < crop[-1, 39]  # orientation kept
    stretch = render.to_photo(saliency, View(30, 50, "stretch"), 15, 25)
    assert stretch.shape == (15, 25) and np.isfinite(stretch).all()
    photo = RNG.integers(0, 255, (30, 50, 3), dtype=np.uint8)
    drawn = render.draw(saliency, "gradient", 15.0, photo, View(30, 50, "crop"))
    assert drawn.shape == (30, 50, 3)
    assert render.draw(saliency, "gradient", 15.0, photo, View(30, 50), max_side=25).shape == (
        15,
        25,
        3,
    )


def test_coincidences_identical_up_to_relu_and_different():
    a = RNG.normal(size=(8, 8))
    found = schemes.coincidences({"splitcam": [a], "gradcam": [np.clip(a, 0, None)],
                                  "gradient": [RNG.normal(size=(8, 8))]})  # fmt: skip
    assert found == [
        {"methods": ["splitcam", "gradcam"], "relation": "equal up to ReLU", "max_rel_diff": 0.0}
    ]
    assert "Grad-CAM before its ReLU" in schemes.describe_coincidence(found[0])
    same = schemes.coincidences({"x": [a], "y": [a * (1 + 1e-7)]})
    assert same[0]["relation"] == "identical"


def _explained(photo=None) -> Explained:
    maps = {
        "splitcam": RNG.normal(size=(8, 8)),
        "splitcam_pos": RNG.random((8, 8)),
        "splitcam_neg": RNG.random((8, 8)),
        "gradcam": RNG.random((8, 8)),
    }
    view = None if photo is None else View(*photo.shape[:2], "crop")
    return Explained("x", "x.png", photo, view, np.arange(10.0), 9, None,
                     ["splitcam", "gradcam"], maps, ["a note"])  # fmt: skip


@pytest.mark.parametrize("with_photo", [True, False])
def test_figure_has_the_photo_every_method_and_the_two_sides(with_photo):
    photo = RNG.integers(0, 255, (60, 90, 3), dtype=np.uint8) if with_photo else None
    result = _explained(photo)
    assert result.components("splitcam") == ["splitcam_pos", "splitcam_neg"]
    assert result.components("gradcam") == []
    assert result.top(2)[0][:2] == (9, "class 9")
    assert "% of Σ P" in result.share("splitcam_neg")
    figure = Image.open(io.BytesIO(render.figure_png(result, dpi=50)))
    result.methods = ["gradcam"]
    single = Image.open(io.BytesIO(render.figure_png(result, dpi=50)))
    assert figure.width > 1.4 * single.width  # 3 columns against 2
    assert figure.height > 2 * single.height  # 3 rows (map, for, against) against 1


# -- explain writes it all ---------------------------------------------------------------------
def test_explain_writes_overlays_at_photo_size_components_and_a_figure(tmp_path):
    photo = tmp_path / "wide.png"
    digit = np.asarray(Image.open(PNG).convert("RGB"))
    Image.fromarray(np.concatenate([digit, digit], axis=1)).save(photo)  # 8 x 16, not square
    out = tmp_path / "out"
    result = invoke("explain", CNN, photo, "--method", "splitcam,splitlrp,gradcam",
                    "--preprocess", "digits", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    for method in ("splitcam", "splitlrp", "gradcam"):
        assert Image.open(out / f"wide_{method}.png").size == (16, 8)  # the photo's own size
        assert np.load(out / f"wide_{method}.npy").shape == (8, 8)  # the model's resolution
    pos, neg = np.load(out / "wide_splitcam_pos.npy"), np.load(out / "wide_splitcam_neg.npy")
    np.testing.assert_allclose(pos - neg, np.load(out / "wide_splitcam.npy"), atol=1e-5)
    g, h = np.load(out / "wide_splitlrp_g.npy"), np.load(out / "wide_splitlrp_h.npy")
    np.testing.assert_allclose(g - h, np.load(out / "wide_splitlrp.npy"), atol=1e-5)
    assert (out / "wide_figure.png").stat().st_size > 10_000
    rows = json.loads((out / "summary.json").read_text())
    assert [r["components"] for r in rows] == [
        "wide_splitcam_pos.npy,wide_splitcam_neg.npy", "wide_splitlrp_g.npy,wide_splitlrp_h.npy", ""
    ]  # fmt: skip
    assert all(0 <= r["probability"] <= 1 for r in rows)


def test_maps_only_writes_no_components(tmp_path):
    out = tmp_path / "out"
    result = invoke("explain", CNN, PNG, "--method", "splitlrp", "--preprocess", "digits",
                    "--maps-only", "--no-figures", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "digit_2_splitlrp.npy", "digit_2_splitlrp.png", "summary.csv", "summary.json"
    ]  # fmt: skip


def test_summary_keeps_every_method_and_input_of_earlier_runs(tmp_path):
    out = tmp_path / "out"
    digits = tmp_path / "d.npy"
    np.save(digits, np.load(SAMPLES / "digits_test_inputs.npy")[:2])
    first = invoke("explain", CNN, digits, "--method", "gradient,gradcam", "--out", out)
    assert first.exit_code == 0, first.output
    second = invoke("explain", CNN, digits, PNG, "--method", "gradcam,splitcam",
                    "--preprocess", "digits", "--out", out)  # fmt: skip
    assert second.exit_code == 0, second.output
    assert "2 rows of earlier runs kept" in second.output
    rows = json.loads((out / "summary.json").read_text())
    got = sorted((r["output"], r["method"]) for r in rows)
    assert got == sorted(
        [(f"d_{i}_{m}", m) for i in range(2) for m in ("gradient", "gradcam", "splitcam")]
        + [("digit_2_gradcam", "gradcam"), ("digit_2_splitcam", "splitcam")]
    )  # rewritten files have one row each (this run's)
    csv_lines = (out / "summary.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(rows)
    for row in rows:
        assert (out / f"{row['output']}.npy").exists()

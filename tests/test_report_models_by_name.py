"""`onnxsplit explain efficientnet_lite0 photo.png`: a zoo model by name, with the preprocessing
and class names stored in the compiled model (contract.META_PREPROCESS / META_LABELS), a
warning when a given --preprocess contradicts them, and the ImageNet-1k names built in."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from onnxsplit import contract
from onnxsplit.cli import main
from onnxsplit.explain.runner import read_labels_default
from onnxsplit.zoo import registry
from onnxsplit.zoo.photos import imagenet_label, load_photo

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ONNXSPLIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_imagenet_names_are_built_in():
    names = read_labels_default(1000)
    assert len(names) == 1000 and names[285] == "Egyptian cat" and names[967] == "espresso"
    assert imagenet_label(450).startswith("bobsled")
    assert read_labels_default(10) is None


def test_an_unknown_model_name_is_one_clear_error(tmp_path):
    result = invoke("explain", "no_such_model", SAMPLES / "digit_2.png", "--out", tmp_path / "o")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: model 'no_such_model' is neither a file nor a zoo model ("
        + ", ".join(registry.ZOO_SPECS)
        + ")"
    ]
    missing = invoke("explain", "gone.onnx", SAMPLES / "digit_2.png", "--out", tmp_path / "o")
    assert "error: model file 'gone.onnx' does not exist" in missing.output


def test_stored_preprocessing_travels_from_the_source_model(tmp_path):
    """A model whose metadata carries onnxsplit.explain.preprocess/labels is explained with
    them; a contradicting --preprocess is used, with one warning on stderr."""
    model = onnx.load(str(SAMPLES / "digits_cnn_op17_legacy.onnx"))
    stored = {
        contract.META_PREPROCESS: json.dumps(
            {
                "name": "digits",
                "scale": 1 / 256,
                "mean": [0.0],
                "std": [1.0],
                "color": "gray",
                "resize": "stretch",
                "quantize": 1 / 16,
            }  # fmt: skip
        ),
        contract.META_LABELS: json.dumps([f"digit {i}" for i in range(10)]),
    }
    for key, value in stored.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    path = tmp_path / "digits.onnx"
    onnx.save(model, str(path))
    out = tmp_path / "out"
    result = invoke("explain", path, SAMPLES / "digit_2.png", "--method", "gradient", "--out", out)
    assert result.exit_code == 0, result.output
    assert "(stored in the model)" in result.stdout and not result.stderr
    assert "predicted 2 digit 2" in result.stdout
    again = invoke("explain", path, SAMPLES / "digit_2.png", "--method", "gradient",
                   "--preprocess", "unit", "--out", tmp_path / "again")  # fmt: skip
    assert again.exit_code == 0, again.output
    warnings = again.stderr.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: --preprocess unit")
    assert "contradicts the preprocessing stored in the model" in warnings[0]
    same = invoke("explain", path, SAMPLES / "digit_2.png", "--method", "gradient",
                  "--preprocess", "digits", "--out", tmp_path / "same")  # fmt: skip
    assert same.exit_code == 0 and not same.stderr  # the same numbers: no warning


NEEDS_LITE0 = pytest.mark.skipif(
    not registry.is_available("efficientnet_lite0"),
    reason=registry.ZOO_SPECS["efficientnet_lite0"].pip,
)


@NEEDS_LITE0
def test_a_zoo_name_resolves_to_its_export_preprocessing_and_names():
    from onnxsplit.explain.preprocess import stored_preprocess
    from onnxsplit.explain.runner import resolve_model

    source = resolve_model("efficientnet_lite0")
    assert source.zoo == "efficientnet_lite0" and source.path == registry.model_path(source.zoo)
    pre = stored_preprocess(source.stamps[contract.META_PREPROCESS])
    assert (pre.scale, pre.mean, pre.std, pre.resize) == (1.0, (127.0,), (128.0,), "crop")
    assert json.loads(source.stamps[contract.META_LABELS])[967] == "espresso"


@pytest.mark.slow
@NEEDS_LITE0
def test_efficientnet_by_name_needs_no_other_flag(tmp_path):
    photos = []
    for name in ("chelsea", "coffee"):
        photos.append(tmp_path / f"{name}.png")
        Image.fromarray(load_photo(name)).save(photos[-1])
    out = tmp_path / "out"
    result = invoke("explain", "efficientnet_lite0", *photos, "--method", "splitcam,gradcam",
                    "--report", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not result.stderr
    assert "efficientnet-lite: x = (pixel * 1 - 127) / 128" in result.stdout
    assert "class names: stored in the model" in result.stdout
    assert "chelsea.png: predicted 285 Egyptian cat" in result.stdout
    assert "coffee.png: predicted 967 espresso" in result.stdout
    assert "note: SplitCAM (P − N) and Grad-CAM are the same map" in result.stdout
    rows = json.loads((out / "summary.json").read_text())
    assert {r["predicted_label"] for r in rows} == {"Egyptian cat", "espresso"}
    assert all(r["same_as"] for r in rows)
    assert (out / "report.html").is_file() and (out / "chelsea_figure.png").is_file()
    compiled = Path(result.stdout.split("model: ", 1)[1].split(" (", 1)[0])
    meta = contract.metadata(onnx.load(str(compiled), load_external_data=False))
    assert json.loads(meta[contract.META_LABELS])[285] == "Egyptian cat"
    assert json.loads(meta[contract.META_PREPROCESS])["name"] == "efficientnet-lite"
    # the default the issue met: --preprocess imagenet for EfficientNet-Lite0 now warns
    warned = invoke("explain", "efficientnet_lite0", photos[0], "--method", "gradcam",
                    "--preprocess", "imagenet", "--no-figures", "--out", tmp_path)  # fmt: skip
    assert warned.exit_code == 0, warned.output
    assert "contradicts the preprocessing stored in the model" in warned.stderr

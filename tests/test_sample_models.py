"""The bundled digits sample models (regenerate with scripts/make_sample_models.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
MANIFEST = json.loads((SAMPLES / "manifest.json").read_text())
MODELS = MANIFEST["models"]
MIN_ACCURACY = 0.85


def _inputs():
    x = np.load(SAMPLES / MANIFEST["test_inputs"])
    y = np.load(SAMPLES / MANIFEST["test_labels"])
    return x, y


def _session(entry) -> ort.InferenceSession:
    return ort.InferenceSession(str(SAMPLES / entry["file"]), providers=["CPUExecutionProvider"])


def _run(sess: ort.InferenceSession, entry, x: np.ndarray) -> np.ndarray:
    (logits,) = sess.run([entry["output_name"]], {entry["input_name"]: x})
    return logits


def test_manifest_lists_every_model_file():
    listed = {e["file"] for e in MODELS}
    on_disk = {p.name for p in SAMPLES.glob("*.onnx")}
    assert listed == on_disk
    assert {e["arch"] for e in MODELS} == {"mlp", "cnn", "resnet", "depthwise"}
    assert {e["exporter"] for e in MODELS} == {"legacy", "dynamo"}


def test_sample_dir_is_small_and_self_contained():
    files = list(SAMPLES.iterdir())
    assert all(p.is_file() for p in files), "no sub-directories"
    assert sum(p.stat().st_size for p in files) < 3 * 1024 * 1024
    assert not [p.name for p in files if p.suffix not in {".onnx", ".json", ".npy", ".png"}]


def test_test_arrays():
    x, y = _inputs()
    assert x.dtype == np.float32 and x.shape == (MANIFEST["n_test_saved"], 1, 8, 8)
    assert y.dtype == np.int64 and y.shape == (len(x),)
    assert x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_array_equal(x * 16, np.rint(x * 16))  # pixel / 16 with integer pixels
    assert set(y.tolist()) <= set(range(10))


@pytest.mark.parametrize("png", MANIFEST["pngs"], ids=lambda p: p["file"])
def test_png_round_trips_to_test_input(png):
    gray = np.asarray(Image.open(SAMPLES / png["file"]))
    assert gray.dtype == np.uint8 and gray.shape == (8, 8)
    x_png = (np.rint(gray.astype(np.float32) / 16) / 16).astype(np.float32)  # png_to_input
    x, y = _inputs()
    np.testing.assert_array_equal(x_png, x[png["test_index"], 0])
    assert y[png["test_index"]] == png["label"]


@pytest.mark.parametrize("entry", MODELS, ids=lambda e: e["file"])
def test_sample_model(entry):
    path = SAMPLES / entry["file"]
    assert path.is_file()
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert opset == entry["opset"]
    assert f"_op{opset}_{entry['exporter']}.onnx" in entry["file"]

    x, y = _inputs()
    sess = _session(entry)
    batch8 = np.concatenate([_run(sess, entry, x[i : i + 8]) for i in range(0, len(x), 8)])
    batch1 = np.concatenate([_run(sess, entry, x[i : i + 1]) for i in range(len(x))])
    assert batch8.shape == batch1.shape == (len(x), 10)
    np.testing.assert_allclose(batch1, batch8, rtol=0, atol=1e-4)
    accuracy = float((batch8.argmax(1) == y).mean())
    assert accuracy >= MIN_ACCURACY, f"{entry['file']}: accuracy {accuracy:.3f} on {len(x)}"

    for png in MANIFEST["pngs"]:  # the CLI default images are classified correctly
        assert batch8[png["test_index"]].argmax() == png["label"]

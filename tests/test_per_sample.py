"""per_sample: a compiled graph run one sample at a time inside a Scan over the batch.

The wrapped model must compute the same logits and maps for any batch size, keep the
interface (names, shapes, metadata), pass onnx's checker, and be chosen only where it pays:
CPU, large samples, a backward pass through the network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxsplit.attribution.attach import attach_methods
from onnxsplit.errors import OnnxSplitError
from onnxsplit.per_sample import scan_over_batch, worth_scanning
from onnxsplit.runtime import make_session, per_sample_for

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


def _run(model: onnx.ModelProto, x: np.ndarray, target: np.ndarray) -> list[np.ndarray]:
    session = make_session(model.SerializeToString(), "cpu", 1)
    name = session.get_inputs()[0].name
    return session.run(None, {name: x, "target": target})


@pytest.mark.parametrize(
    "name", ["digits_resnet_op18_dynamo.onnx", "digits_depthwise_op17_legacy.onnx"]
)
def test_scan_over_batch_computes_the_same_maps(name):
    source = onnx.load(str(SAMPLES / name))
    batched = attach_methods(source, ["splitlrp", "gradient"])
    scanned = attach_methods(source, ["splitlrp", "gradient"], per_sample=True)
    onnx.checker.check_model(scanned, full_check=True)
    assert [n.op_type for n in scanned.graph.node] == ["Scan"]
    assert [i.name for i in scanned.graph.input] == [i.name for i in batched.graph.input]
    assert [o.name for o in scanned.graph.output] == [o.name for o in batched.graph.output]
    meta = {p.key: p.value for p in scanned.metadata_props}
    assert meta["onnxsplit.per_sample"] == "scan"
    assert meta["onnxsplit.attribution.methods"] == '["splitlrp", "gradient"]'
    x_all = np.load(SAMPLES / "digits_test_inputs.npy")
    for batch in (1, 3, 5):
        x = x_all[:batch]
        target = np.array([-1, 3, -1, 0, 7][:batch], np.int64)
        for a, b in zip(_run(batched, x, target), _run(scanned, x, target), strict=True):
            assert a.shape == b.shape
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * max(1.0, np.abs(a).max()))


def test_per_sample_auto_only_where_it_pays():
    """Small samples (the 8x8 digits) stay batched; so does a CAM's graph (no backward pass
    through the network), even on a large model."""
    digits = onnx.load(str(SAMPLES / "digits_resnet_op18_dynamo.onnx"))
    auto = attach_methods(digits, ["splitlrp"], components=False, per_sample="auto")
    assert "Scan" not in {n.op_type for n in auto.graph.node}
    assert not worth_scanning(auto, digits)
    assert per_sample_for("cpu") == "auto"
    with pytest.raises(ValueError, match="per_sample"):
        attach_methods(digits, ["splitlrp"], per_sample="yes")


def test_per_sample_auto_on_efficientnet():
    from onnxsplit.zoo import registry

    if not registry.is_available("efficientnet_lite0"):
        pytest.skip(registry.ZOO_SPECS["efficientnet_lite0"].pip)
    source = onnx.load(str(registry.model_path("efficientnet_lite0")))
    lrp = attach_methods(source, ["splitlrp"], components=False, per_sample="auto")
    cam = attach_methods(source, ["splitcam"], components=False, per_sample="auto")
    assert [n.op_type for n in lrp.graph.node] == ["Scan"]
    assert "Scan" not in {n.op_type for n in cam.graph.node}


def test_scan_over_batch_refuses_a_rank0_output():
    node = helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(OnnxSplitError, match="cannot run 'y' per sample: it has no batch axis"):
        scan_over_batch(model)


@pytest.mark.parametrize("opset", [11, 17])
def test_scan_over_batch_of_a_plain_model(opset):
    """Any model whose inputs and outputs are batched, at opsets with Unsqueeze's axes as an
    attribute (11) or an input (17): the same outputs for every batch size."""
    source = onnx.load(str(SAMPLES / f"digits_cnn_op{opset}_legacy.onnx"))
    scanned = scan_over_batch(source)
    onnx.checker.check_model(scanned, full_check=True)
    plain = make_session(source.SerializeToString(), "cpu", 1)
    wrapped = make_session(scanned.SerializeToString(), "cpu", 1)
    name = plain.get_inputs()[0].name
    x = np.load(SAMPLES / "digits_test_inputs.npy")[:3]
    np.testing.assert_array_equal(wrapped.run(None, {name: x})[0], plain.run(None, {name: x})[0])

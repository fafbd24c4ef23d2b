"""The compiled gradient through edge- and reflect-mode Pad equals torch autograd."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxsplit.attribution import attach_methods
from onnxsplit.runtime import make_session

torch = pytest.importorskip("torch")

TORCH_MODE = {"edge": "replicate", "reflect": "reflect"}


def pad_model(mode: str, pads: list[int], weights: np.ndarray) -> onnx.ModelProto:
    """x [N, 2, 5, 6] -> Pad(mode) -> Relu -> Flatten -> Gemm (3 classes)."""
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["p"], mode=mode, name="pad"),
        helper.make_node("Relu", ["p"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "W"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "pad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [
            numpy_helper.from_array(np.asarray(pads, np.int64), "pads"),
            numpy_helper.from_array(weights, "W"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("mode", ["edge", "reflect"])
@pytest.mark.parametrize(
    "pads",
    [[0, 0, 1, 2, 0, 0, 3, 1], [0, 0, 2, 0, 0, 0, 0, 4], [0, 0, 0, 1, 0, 0, 1, 0]],
)
def test_edge_and_reflect_pad_gradient_matches_torch(mode, pads):
    rng = np.random.default_rng(sum(pads))
    h = 5 + pads[2] + pads[6]
    w = 6 + pads[3] + pads[7]
    weights = rng.standard_normal((3, 2 * h * w)).astype(np.float32)
    x = rng.standard_normal((4, 2, 5, 6)).astype(np.float32)
    targets = np.array([0, 2, 1, -1], np.int64)

    model = attach_methods(pad_model(mode, pads, weights), ["gradient"])
    logits, grad = make_session(model.SerializeToString(), "cpu").run(
        ["logits", "map_gradient"], {"x": x, "target": targets}
    )

    xt = torch.tensor(x, requires_grad=True)
    torch_pads = (pads[3], pads[7], pads[2], pads[6])  # (left, right, top, bottom)
    padded = torch.nn.functional.pad(xt, torch_pads, mode=TORCH_MODE[mode])
    out = torch.relu(padded).flatten(1) @ torch.tensor(weights).T
    chosen = np.where(targets < 0, out.detach().numpy().argmax(1), targets)
    out[torch.arange(4), torch.tensor(chosen)].sum().backward()
    reference = xt.grad.numpy().sum(1)  # maps sum the channels

    np.testing.assert_allclose(logits, out.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, reference, rtol=1e-5, atol=1e-5)
    assert np.abs(reference).max() > 0.1

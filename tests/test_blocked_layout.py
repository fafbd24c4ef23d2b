"""blocked_layout: exact rewrites that keep onnxruntime's blocked CPU layout (NCHWc) unbroken.

Checked against onnxruntime itself: the rewritten graphs compute the same numbers bit for bit,
and onnxruntime's optimized graph of a SplitLRP map on a ReLU6 network has no Clip left
outside a convolution and no divisor guard at the rectifier steps.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxsplit.attribution.attach import attach_methods
from onnxsplit.blocked_layout import channel_scale, fuse_clips

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
RNG = np.random.default_rng(7)


def _session(model: onnx.ModelProto, optimized: Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _model(nodes, outputs, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5, 5])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in initializers.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _rewritten(model: onnx.ModelProto, rewrite) -> onnx.ModelProto:
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(model))
    rewrite(graph)
    out = gs.export_onnx(graph.cleanup().toposort())
    out.ir_version = 8
    return out


def test_channel_scale_is_exact():
    """x * factor as a depthwise 1x1 Conv: bit-identical to numpy for +-1 and +-1/2."""
    x = RNG.standard_normal((3, 4, 5, 5)).astype(np.float32) * 1e3
    factors = (1.0, -1.0, 0.5, -0.5)

    def rewrite(graph):
        data = graph.inputs[0]
        graph.outputs = [
            channel_scale(graph, data, f, 4, f"scale{i}") for i, f in enumerate(factors)
        ]
        for out in graph.outputs:
            out.dtype = np.float32

    model = _rewritten(_model([], [], {}), rewrite)
    results = _session(model).run(None, {"x": x})
    for factor, result in zip(factors, results, strict=True):
        np.testing.assert_array_equal(result, x * np.float32(factor))


def test_fuse_clips_reads_the_relu_and_gives_shared_clips_a_conv(tmp_path):
    """A ReLU6 beside a Relu of the same Conv output reads the Relu (which may then fuse);
    a Clip with a negative floor does not (clip(relu(x), -1, 1) would differ); a Clip that
    shares its input gets an identity depthwise Conv; a sole reader is left alone. Outputs are
    bit-identical, and onnxruntime fuses every Clip into a convolution."""
    w = RNG.standard_normal((4, 4, 3, 3)).astype(np.float32)
    consts = {
        "W": w,
        "W2": RNG.standard_normal((4, 4, 1, 1)).astype(np.float32),
        "zero": np.zeros((), np.float32),
        "six": np.full((), 6.0, np.float32),
        "lo": np.full((), -1.0, np.float32),
        "hi": np.ones((), np.float32),
    }
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        n("Clip", ["c", "zero", "six"], ["relu6"]),
        n("Relu", ["c"], ["relu"]),
        n("Clip", ["c", "lo", "hi"], ["hard"]),
        n("Conv", ["x", "W2"], ["d"]),
        n("Clip", ["d", "zero", "six"], ["alone"]),
    ]
    model = _model(nodes, ["relu6", "relu", "hard", "alone"], consts)
    rewritten = _rewritten(model, fuse_clips)
    producer = {o: node for node in rewritten.graph.node for o in node.output}
    clips = {node.output[0]: node for node in rewritten.graph.node if node.op_type == "Clip"}
    identity = producer[clips["relu6"].input[0]]
    assert identity.op_type == "Conv" and identity.input[0] == "relu"
    hard = producer[clips["hard"].input[0]]
    assert hard.op_type == "Conv" and hard.input[0] == "c"
    assert clips["alone"].input[0] == "d"

    assert _optimized_ops(model, tmp_path)["Clip"] == 2  # before: two cannot fuse
    assert _optimized_ops(rewritten, tmp_path)["Clip"] == 0
    x = RNG.standard_normal((2, 4, 5, 5)).astype(np.float32) * 4
    for a, b in zip(
        _session(model).run(None, {"x": x}), _session(rewritten).run(None, {"x": x}), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def _optimized_ops(model: onnx.ModelProto, tmp_path: Path) -> collections.Counter:
    path = tmp_path / "optimized.onnx"
    _session(model, path)
    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def test_splitlrp_on_a_relu6_network_keeps_the_blocked_layout(tmp_path):
    """The SplitLRP map of the depthwise ReLU6 digits model: in onnxruntime's optimized graph
    every Clip is fused into a convolution, the re-centerings need no Sub or Abs, and the only
    divisor guards (Max) are the residual sum's two; the logits are the source's."""
    source = onnx.load(str(SAMPLES / "digits_depthwise_op17_legacy.onnx"))
    model = attach_methods(source, ["splitlrp"], components=False)
    ops = _optimized_ops(model, tmp_path)
    assert ops["Clip"] == 0, ops
    assert ops["Abs"] == 0 and ops["Max"] == 2, ops
    x = np.load(SAMPLES / "digits_test_inputs.npy")[:4]
    name = source.graph.input[0].name
    expected = _session(source).run(None, {name: x})[0]
    target = np.full(len(x), -1, np.int64)
    logits = _session(model).run(["logits"], {name: x, "target": target})[0]
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5)

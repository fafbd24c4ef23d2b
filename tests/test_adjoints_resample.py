"""Adjoints of Resize / Upsample, Gather, Tile, DepthToSpace, SpaceToDepth and ConvTranspose
(onnxsplit.attribution.adjoints_resample) and the ConvTranspose split rule.

- Each op is linear in its data input: the compiled adjoint, run on unit seeds, must give the
  transpose of the matrix that onnxruntime's forward op applies to unit inputs (exact up to
  float32 rounding), for every supported mode.
- Small torch modules exported with the legacy exporter: attach_methods(["gradient"]) must give
  torch's float64 autograd (summed over channels), and the other methods must compile and run.
- convert_model splits a ConvTranspose model exactly (normalized, raw, plain four-term form).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from onnxsplit.attribution import attach_methods, differentiate, supported_backward_ops
from onnxsplit.attribution.autodiff import UnsupportedBackwardError
from onnxsplit.attribution.methods import SplitLRP
from onnxsplit.convert import convert_model, relative_error
from onnxsplit.emit import to_model
from onnxsplit.runtime import make_session
from onnxsplit.split import supported_ops

RNG = np.random.default_rng(7)
NEW_OPS = ("Resize", "Upsample", "Gather", "Tile", "DepthToSpace", "SpaceToDepth", "ConvTranspose")


# ------------------------------------------------------------------ adjoint = transposed map
def single_node(node, shape, inits=None, opset=17) -> onnx.ModelProto:
    """x [N, *shape[1:]] (batch dynamic) -> node -> y."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape[1:]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    initializers = [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()]
    graph = helper.make_graph([node], "case", [x], [y], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return onnx.shape_inference.infer_shapes(model, data_prop=True)


def backward_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """(x, dy) -> dx, the compiled adjoint of the model's one output."""
    opset = model.opset_import[0].version
    graph = gs.import_onnx(model)
    x, y = graph.inputs[0], graph.outputs[0]
    dy = gs.Variable("dy", np.float32, y.shape)
    dx = differentiate(graph, {y.name: dy}, [x.name], opset=opset)[x.name]
    dx.name, dx.dtype = "dx", np.float32
    graph.inputs, graph.outputs = [x, dy], [dx]
    graph.cleanup().toposort()
    return to_model(graph, opset, {})


def check_transposed(model: onnx.ModelProto, shape) -> float:
    """max |adjoint - forward^T| / max |forward| over unit inputs and unit seeds."""
    n_in = int(np.prod(shape[1:]))
    basis = np.eye(n_in, dtype=np.float32).reshape(n_in, *shape[1:])
    (y,) = make_session(model.SerializeToString(), "cpu").run(None, {"x": basis})
    forward = y.reshape(n_in, -1).T.astype(np.float64)  # A [n_out, n_in]
    n_out = forward.shape[0]
    seeds = np.eye(n_out, dtype=np.float32).reshape(n_out, *y.shape[1:])
    back = make_session(backward_model(model).SerializeToString(), "cpu")
    zeros = np.zeros((n_out, *shape[1:]), np.float32)
    (dx,) = back.run(None, {"x": zeros, "dy": seeds})
    adjoint = dx.reshape(n_out, n_in).astype(np.float64)  # row k: A^T e_k = A[k]
    return relative_error(adjoint, forward)


def resize(shape, mode, coordinate, nearest=None, scales=None, sizes=None, opset=17, **attrs):
    inputs, inits = ["x", ""], {}
    if scales is not None:
        inputs.append("scales")
        inits["scales"] = np.asarray(scales, np.float32)
    if sizes is not None:  # of the spatial axes (opset 18 axes): the batch is not fixed
        inputs += ["", "sizes"] if scales is None else ["sizes"]
        inits["sizes"] = np.asarray(sizes, np.int64)
        attrs.setdefault("axes", list(range(len(shape) - len(sizes), len(shape))))
        opset = max(opset, 18)
    attrs = dict(attrs, mode=mode, coordinate_transformation_mode=coordinate)
    if nearest:
        attrs["nearest_mode"] = nearest
    return single_node(helper.make_node("Resize", inputs, ["y"], **attrs), shape, inits, opset)


COORDINATES = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"]
NEAREST = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
GEOMETRIES = [  # (input shape, scales or sizes)
    ((1, 2, 3, 4), {"scales": [1, 1, 2, 2]}),
    ((1, 1, 4, 5), {"scales": [1, 1, 1.7, 0.6]}),
    ((1, 1, 5, 3), {"sizes": [7, 8]}),
    ((1, 1, 6, 7), {"sizes": [4, 7]}),
]


@pytest.mark.parametrize("coordinate", COORDINATES + ["tf_half_pixel_for_nn"])
@pytest.mark.parametrize("nearest", NEAREST)
def test_resize_nearest_adjoint_is_the_transposed_map(coordinate, nearest):
    worst = max(
        check_transposed(resize(shape, "nearest", coordinate, nearest, **kw), shape)
        for shape, kw in GEOMETRIES
    )
    assert worst <= 1e-6, worst


@pytest.mark.parametrize("coordinate", COORDINATES + ["half_pixel_symmetric"])
def test_resize_linear_adjoint_is_the_transposed_map(coordinate):
    opset = 19 if coordinate == "half_pixel_symmetric" else 17
    worst = max(
        check_transposed(resize(shape, "linear", coordinate, opset=opset, **kw), shape)
        for shape, kw in GEOMETRIES
    )
    assert worst <= 1e-6, worst


@pytest.mark.parametrize(
    "build",
    [
        # opset 18 axes, a rank-3 input, linear on the last two of rank 4 (NHWC-like scales)
        lambda: resize((1, 2, 3, 4), "linear", "half_pixel", sizes=[5, 9], axes=[2, 3]),
        lambda: resize((1, 2, 5), "nearest", "asymmetric", "floor", scales=[1, 1, 3]),
        lambda: resize((1, 3, 4, 2), "linear", "align_corners", scales=[1, 2, 1.5, 1]),
        # Resize-10 and Upsample-9: asymmetric coordinates, truncation
        lambda: single_node(
            helper.make_node("Resize", ["x", "scales"], ["y"], mode="nearest"),
            (1, 1, 3, 4),
            {"scales": np.array([1, 1, 2.5, 1.5], np.float32)},
            10,
        ),
        lambda: single_node(
            helper.make_node("Upsample", ["x", "scales"], ["y"], mode="nearest"),
            (1, 2, 3, 4),
            {"scales": np.array([1, 1, 2, 3], np.float32)},
            9,
        ),
        lambda: single_node(
            helper.make_node("Upsample", ["x", "scales"], ["y"], mode="linear"),
            (1, 1, 3, 4),
            {"scales": np.array([1, 1, 2, 1.5], np.float32)},
            9,
        ),
    ],
    ids=["axes_sizes", "rank3", "nhwc", "resize10", "upsample9_nearest", "upsample9_linear"],
)
def test_resize_variants(build):
    model = build()
    shape = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert check_transposed(model, shape) <= 1e-6


@pytest.mark.parametrize(
    "node, shape, inits",
    [
        (helper.make_node("Gather", ["x", "i"], ["y"], axis=1), (1, 4, 3), {"i": [0, 3, -1, 0]}),
        (helper.make_node("Gather", ["x", "i"], ["y"], axis=2), (1, 2, 5), {"i": [[4, 4], [0, 2]]}),
        (helper.make_node("Gather", ["x", "i"], ["y"], axis=-1), (1, 2, 3, 4), {"i": 2}),
        (helper.make_node("Gather", ["x", "i"], ["y"], axis=1), (1, 3, 2, 2), {"i": [1, 1]}),
        (helper.make_node("Tile", ["x", "r"], ["y"]), (1, 2, 3, 2), {"r": [1, 2, 1, 3]}),
        (helper.make_node("Tile", ["x", "r"], ["y"]), (1, 3, 2), {"r": [1, 1, 2]}),
        (helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2), (1, 8, 2, 3), {}),
        (helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2, mode="CRD"), (1, 8, 2, 3), {}),
        (helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2), (1, 2, 4, 6), {}),
    ],
    ids=["gather_dup_neg", "gather_2d_idx", "gather_scalar", "gather_channels", "tile4",
         "tile3", "d2s_dcr", "d2s_crd", "s2d"],
)  # fmt: skip
def test_rearranging_adjoints_are_the_transposed_map(node, shape, inits):
    inits = {k: np.asarray(v, np.int64) for k, v in inits.items()}
    assert check_transposed(single_node(node, shape, inits), shape) <= 1e-6


@pytest.mark.parametrize(
    "attrs, shape, weight",
    [
        ({"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, (1, 4, 3, 3), (4, 2)),
        ({"strides": [2, 3], "pads": [0, 1, 1, 0], "group": 2}, (1, 4, 2, 3), (4, 3)),
        ({"strides": [1, 1], "dilations": [2, 1], "pads": [1, 0, 0, 1]}, (1, 2, 3, 3), (2, 2)),
        ({"strides": [2], "pads": [1, 0], "output_padding": [1]}, (1, 3, 4), (3, 2)),
    ],
    ids=["stride2_outpad", "groups", "dilated", "conv1d"],
)
def test_conv_transpose_adjoint_is_the_transposed_map(attrs, shape, weight):
    rank = len(shape) - 2
    w = RNG.standard_normal((*weight, *[3] * rank)).astype(np.float32)
    b = RNG.standard_normal(weight[1] * attrs.get("group", 1)).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)
    model = single_node(node, shape, {"w": w, "b": b})
    # the bias is an offset: compare the linear part (the forward at unit inputs minus at 0)
    n_in = int(np.prod(shape[1:]))
    session = make_session(model.SerializeToString(), "cpu")
    basis = np.concatenate([np.zeros((1, n_in)), np.eye(n_in)]).astype(np.float32)
    (y,) = session.run(None, {"x": basis.reshape(n_in + 1, *shape[1:])})
    forward = (y[1:] - y[:1]).reshape(n_in, -1).T.astype(np.float64)
    n_out = forward.shape[0]
    back = make_session(backward_model(model).SerializeToString(), "cpu")
    seeds = np.eye(n_out, dtype=np.float32).reshape(n_out, *y.shape[1:])
    zeros = np.zeros((n_out, *shape[1:]), np.float32)
    (dx,) = back.run(None, {"x": zeros, "dy": seeds})
    assert relative_error(dx.reshape(n_out, n_in), forward) <= 1e-6


@pytest.mark.parametrize(
    "build, why",
    [
        (lambda: resize((1, 1, 3, 3), "cubic", "half_pixel", scales=[1, 1, 2, 2]), "cubic"),
        (
            lambda: resize((1, 1, 3, 3), "linear", "half_pixel", scales=[1, 1, 2, 2], antialias=1,
                           opset=18),
            "antialias",
        ),
        (
            lambda: resize((1, 1, 3, 3), "nearest", "half_pixel_symmetric", scales=[1, 1, 2, 2],
                           opset=19),
            "half_pixel_symmetric",
        ),
    ],
    ids=["cubic", "antialias", "nearest_symmetric"],
)  # fmt: skip
def test_unsupported_resize_is_one_clear_error(build, why):
    with pytest.raises(UnsupportedBackwardError, match=why) as info:
        backward_model(build())
    assert [op for _, op, _ in info.value.problems] == ["Resize"]


def test_tile_of_the_batch_axis_reads_the_runtime_shape():
    node = helper.make_node("Tile", ["x", "r"], ["y"])
    model = single_node(node, (1, 3, 2), {"r": np.array([2, 1, 2], np.int64)})
    x = RNG.standard_normal((4, 3, 2)).astype(np.float32)
    dy = RNG.standard_normal((8, 3, 4)).astype(np.float32)
    (dx,) = make_session(backward_model(model).SerializeToString(), "cpu").run(
        None, {"x": x, "dy": dy}
    )
    expected = dy.reshape(2, 4, 3, 2, 2).sum(axis=(0, 3))
    assert relative_error(dx, expected) <= 1e-6


def test_every_new_op_has_an_adjoint_and_conv_transpose_a_split_rule():
    assert set(NEW_OPS) <= set(supported_backward_ops())
    assert "ConvTranspose" in supported_ops()


# ------------------------------------------------------------------ torch modules
class Gather(nn.Module):
    def forward(self, x):
        return x[:, [2, 0, 2, 1, 2]]


class Repeat(nn.Module):
    def forward(self, x):
        return x.repeat(1, 2, 1, 3)


def classifier(body: nn.Module, channels: int, classes: int = 5, seed: int = 0) -> nn.Module:
    """body (an image map) -> ReLU conv -> global average -> linear."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        body,
        nn.LazyConv2d(6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, classes),
    )
    return net


def export(module: nn.Module, shape) -> onnx.ModelProto:
    example = torch.randn(*shape)
    module.eval()
    with torch.no_grad():
        module(example)  # materialize the lazy layer
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return onnx.load_from_string(buffer.getvalue())


def torch_gradient(module: nn.Module, x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """d logit_target / d x summed over channels, float64 torch autograd."""
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    reference = module.double()
    try:
        logits = reference(xt)
        logits[torch.arange(len(x)), torch.as_tensor(target)].sum().backward()
    finally:
        module.float()
    return xt.grad.sum(dim=1).numpy()


TORCH_CASES = {
    "nearest_x2": (lambda: nn.Upsample(scale_factor=2, mode="nearest"), (2, 3, 5, 4)),
    "nearest_size": (lambda: nn.Upsample(size=(7, 10), mode="nearest"), (2, 3, 5, 4)),
    "bilinear_x2": (lambda: nn.Upsample(scale_factor=2, mode="bilinear"), (2, 3, 5, 4)),
    "bilinear_x2_corners": (
        lambda: nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
        (2, 3, 5, 4),
    ),
    "bilinear_size": (lambda: nn.Upsample(size=(7, 9), mode="bilinear"), (2, 3, 5, 4)),
    "bilinear_size_corners": (
        lambda: nn.Upsample(size=(9, 6), mode="bilinear", align_corners=True),
        (2, 3, 5, 4),
    ),
    "gather_repeated": (Gather, (2, 3, 4, 4)),
    "tile": (Repeat, (2, 3, 4, 3)),
    "pixel_shuffle": (lambda: nn.PixelShuffle(2), (2, 8, 3, 4)),
    "pixel_unshuffle": (lambda: nn.PixelUnshuffle(2), (2, 2, 6, 4)),
    "conv_transpose": (
        lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
        (2, 4, 4, 5),
    ),
}


def _run(model: onnx.ModelProto, feeds: dict, outputs=None):
    return make_session(model.SerializeToString(), "cpu").run(outputs, feeds)


@pytest.mark.parametrize("name", sorted(TORCH_CASES))
def test_gradient_matches_torch_autograd(name):
    make, shape = TORCH_CASES[name]
    module = classifier(make(), shape[1])
    model = export(module, shape)
    x = RNG.standard_normal(shape).astype(np.float32)
    (reference,) = _run(model, {"input": x})
    with torch.no_grad():
        assert relative_error(reference, module(torch.from_numpy(x)).numpy()) < 1e-5
    explained = attach_methods(model, ["gradient"])
    feeds = {"input": x, "target": np.full(len(x), -1, np.int64)}
    logits, saliency = _run(explained, feeds, ["logits", "map_gradient"])
    assert relative_error(logits, reference) < 1e-5
    expected = torch_gradient(module, x, reference.argmax(1))
    assert saliency.shape == expected.shape
    assert relative_error(saliency, expected) <= 1e-4


class Decoder(nn.Module):
    """Upsample + ConvTranspose + PixelShuffle between ReLU convolutions."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="bilinear"),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(),
            nn.PixelShuffle(2),
            nn.Conv2d(2, 6, 3, padding=1),
            nn.ReLU(),
            nn.Upsample(scale_factor=0.5, mode="nearest"),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(6, 4),
        )

    def forward(self, x):
        return self.body(x)


def test_all_method_kinds_compile_and_run_on_resampling_layers():
    module = Decoder().eval()
    model = export(module, (2, 3, 6, 6))
    methods = ["gradient", "gradcam", "splitlrp", "lrp_epsilon_plus"]
    explained = attach_methods(model, methods)
    x = RNG.standard_normal((3, 3, 6, 6)).astype(np.float32)
    outputs = {o.name: o for o in explained.graph.output}
    names = ["logits"] + [f"map_{m}" for m in methods]
    assert set(names) <= set(outputs)
    values = _run(explained, {"input": x, "target": np.full(3, -1, np.int64)}, names)
    (reference,) = _run(model, {"input": x})
    assert relative_error(values[0], reference) < 1e-5
    for name, value in zip(names[1:], values[1:], strict=True):
        assert value.shape == (3, 6, 6), name
        assert np.all(np.isfinite(value)), name
        assert np.any(value != 0), name
    expected = torch_gradient(module, x, reference.argmax(1))
    assert relative_error(values[1], expected) <= 1e-4


def test_splitlrp_conserves_through_resampling_layers():
    """SplitLRP's seeded ConvTranspose blocks and the Resize / DepthToSpace adjoints in its
    ratio form: relevance of g plus the absorbed bias shares is g's logit."""
    model = export(Decoder().eval(), (2, 3, 6, 6))
    explained = attach_methods(model, [SplitLRP(lam=1.0, diagnostics=True)])
    x = RNG.standard_normal((3, 3, 6, 6)).astype(np.float32)
    names = [o.name for o in explained.graph.output]
    values = _run(explained, {"input": x, "target": np.full(3, 1, np.int64)})
    out = dict(zip(names, values, strict=True))
    g = out["splitlrp_logit_g"]
    relevance = out["map_splitlrp_g"]
    assert relevance.min() >= 0
    conserved = relevance.reshape(3, -1).sum(1) + out["splitlrp_absorbed_g"]
    assert relative_error(conserved, g) <= 1e-5
    assert relative_error(g - out["splitlrp_logit_h"], out["logits"][:, 1]) <= 1e-5


@pytest.mark.parametrize("mode, fast", [("normalized", True), ("normalized", False), ("raw", True)])
def test_conv_transpose_is_split_exactly(mode, fast):
    torch.manual_seed(5)
    module = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1, groups=2),
        nn.ReLU(),
        nn.ConvTranspose2d(4, 3, 2, stride=2, bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 20 * 20, 5),
    ).eval()
    model = export(module, (2, 3, 5, 5))
    split = convert_model(model, mode=mode, fast=fast).model
    assert any(n.op_type == "ConvTranspose" for n in split.graph.node)
    x = RNG.standard_normal((3, 3, 5, 5)).astype(np.float32)
    (reference,) = _run(model, {"input": x})
    logits, g, h = _run(split, {"input": x}, ["logits", "g", "h"])
    # raw streams grow with depth: exact up to their float32 rounding
    streams = max(float(np.abs(g).max()), float(np.abs(h).max()), 1.0)
    tolerance = 1e-5 if mode == "normalized" else 1e-6 * streams / np.abs(reference).max()
    assert relative_error(logits, reference) <= tolerance
    assert relative_error(g - h, logits) <= 1e-6 * streams / np.abs(logits).max()


def test_splitlrp_relevance_and_ratio_forms_agree_through_resampling_layers():
    """LRP shares relevance through ConvTranspose (a weighted map, ops.WEIGHTED) and Resize
    (a non-negative linear map, ops.LINEAR_POOLS) like through Conv and pools: SplitLRP's
    slower relevance form then equals its ratio form (before ConvTranspose and Resize were in
    those families, the relevance form passed a plain gradient through them: 0.9-2.9 apart)."""
    model = export(Decoder().eval(), (2, 3, 6, 6))
    x = RNG.standard_normal((3, 3, 6, 6)).astype(np.float32)
    maps = {}
    for form in ("ratio", "relevance"):
        explained = attach_methods(model, [SplitLRP(form=form, name=f"lrp_{form}")])
        values = _run(explained, {"input": x, "target": np.full(3, 2, np.int64)})
        out = dict(zip([o.name for o in explained.graph.output], values, strict=True))
        maps[form] = out[f"map_lrp_{form}"]
    scale = float(np.abs(maps["ratio"]).max())
    assert float(np.abs(maps["ratio"] - maps["relevance"]).max()) <= 1e-3 * scale

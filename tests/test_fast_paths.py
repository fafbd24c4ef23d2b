"""The cheaper formulations of the split methods compute the same maps as the plain ones.

- SplitCAM from the target layer (from_layer=True, the default): where the stabilizer
  re-centers at the layer, only the graph after it is split, seeded with (relu(A), relu(-A))
  from the original activation; the maps equal those of the full split graph (from_layer=False)
  to rounding, with gradient and relevance evidence, on the digits sample models and
  EfficientNet-Lite0; where the layer is not re-centered or a skip connection passes it, the full
  split graph is built (the same graph as from_layer=False).
- The seeded split graph (SplitLRP, SplitGrad, SplitCAM on the full split): affine layers take
  W (p - q) + b from the original graph and map only the mass p + q (or, on a stream re-centered
  from a Relu/ReLU6 output, whose negative part is 0, map p with W+ and W-), re-centerings read
  the original activation, and the affine layers' backward passes are overrides with two
  transposed maps; every output equals that of the four-term split graph (built when a method
  needs it: SplitLRP(form='relevance')) to rounding, diagnostics (absorbed bias shares) included.
  With winner-takes-all maxout a re-centered Relu/ReLU6 is one ratio step s * A / p (no masks).
- The backward passes keep the input's batch symbol under shape inference (onnxruntime needs it
  to keep them in its NCHWc layout).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxsplit.attribution import attach_methods
from onnxsplit.attribution.methods import SplitCAM, SplitGrad, SplitLRP

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
DIGITS = (
    "digits_cnn_op17_legacy.onnx",
    "digits_cnn_op11_legacy.onnx",
    "digits_resnet_op18_dynamo.onnx",
    "digits_depthwise_op17_legacy.onnx",
)
TARGETS = np.array([-1, 3, -1, 0], np.int64)


def _run(model: onnx.ModelProto, x: np.ndarray, target: np.ndarray) -> dict:
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feed = {model.graph.input[0].name: x, "target": target}
    return dict(zip(names, session.run(None, feed), strict=True))


def _rel(a: np.ndarray, b: np.ndarray, scale: float) -> float:
    return float(np.abs(a - b).max() / max(scale, 1e-30))


def _head_nodes(model: onnx.ModelProto) -> int:
    return sum(n.name.startswith("splithead") for n in model.graph.node)


def _full_split_nodes(model: onnx.ModelProto) -> int:
    return sum(n.name.startswith("split/") for n in model.graph.node)


def _is_split_map(node) -> bool:
    """A convolution of the split graph (not a per-channel scaling, blocked_layout)."""
    return (
        node.op_type == "Conv"
        and node.name.startswith("split/")
        and "channel_scale" not in node.name
    )


def _compare_cam(model, x, target, pairs, tol):
    out = _run(model, x, target)
    for new, old in pairs:
        # P - N cancels (gradient evidence at inner layers: |P| ~ 1e3, |P - N| ~ 0.5), so the
        # error is measured on the scale of the streams' evidence P and N
        scale = max(np.abs(out[f"map_{old}_{part}"]).max() for part in ("pos", "neg"))
        for suffix in ("", "_pos", "_neg"):
            err = _rel(out[f"map_{new}{suffix}"], out[f"map_{old}{suffix}"], scale)
            assert err < tol, (new, suffix, err)
    return out


CAM_PAIRS = (("splitcam", "full"), ("rel", "rel_full"))


def _cams(layer=None, mode="normalized"):
    return [
        SplitCAM(layer, mode=mode),
        SplitCAM(layer, mode=mode, name="full", from_layer=False),
        SplitCAM(layer, mode=mode, evidence="relevance", name="rel"),
        SplitCAM(layer, mode=mode, evidence="relevance", name="rel_full", from_layer=False),
    ]


@pytest.mark.parametrize("name", DIGITS)
def test_splitcam_from_layer_equals_full_split(name):
    model = attach_methods(onnx.load(str(SAMPLES / name)), _cams())
    assert _head_nodes(model) > 0
    x = np.load(SAMPLES / "digits_test_inputs.npy")[:4]
    _compare_cam(model, x, TARGETS, CAM_PAIRS, 1e-5)


@pytest.mark.parametrize("layer", ["relu_2", "add_40"])
def test_splitcam_from_inner_layer_equals_full_split(layer):
    """A deeper head: residual blocks, re-centerings and Max nodes after the layer (relu_2
    feeds a convolution and a residual Add; add_40 is a re-centered merge)."""
    source = onnx.load(str(SAMPLES / "digits_resnet_op18_dynamo.onnx"))
    model = attach_methods(source, _cams(layer))
    assert _head_nodes(model) > 0
    x = np.load(SAMPLES / "digits_test_inputs.npy")[:4]
    _compare_cam(model, x, TARGETS, CAM_PAIRS, 1e-5)


@pytest.mark.parametrize(
    ("layer", "mode"),
    [
        ("relu_3", "normalized"),  # the skip connection relu_2 -> add_76 passes it
        ("getitem_3", "normalized"),  # a convolution's output: not re-centered
        ("relu_6", "raw"),  # no re-centering at all
    ],
)
def test_splitcam_falls_back_to_the_full_split(layer, mode):
    source = onnx.load(str(SAMPLES / "digits_resnet_op18_dynamo.onnx"))
    model = attach_methods(source, [SplitCAM(layer, mode=mode)])
    assert _head_nodes(model) == 0 and _full_split_nodes(model) > 0
    both = attach_methods(
        source,
        [SplitCAM(layer, mode=mode), SplitCAM(layer, mode=mode, name="full", from_layer=False)],
    )
    x = np.load(SAMPLES / "digits_test_inputs.npy")[:4]
    out = _run(both, x, TARGETS)
    for suffix in ("", "_pos", "_neg"):
        np.testing.assert_array_equal(out[f"map_splitcam{suffix}"], out[f"map_full{suffix}"])


def test_splitcam_from_layer_is_small():
    """The default SplitCAM splits only the head: no split convolution on the digits CNN."""
    model = attach_methods(onnx.load(str(SAMPLES / DIGITS[0])), ["splitcam"])
    assert _full_split_nodes(model) == 0
    head = [n.op_type for n in model.graph.node if n.name.startswith("splithead/")]
    assert head and "Conv" not in head


def test_splitcam_from_layer_efficientnet():
    from onnxsplit.zoo import registry

    if not registry.is_available("efficientnet_lite0"):
        pytest.skip(registry.ZOO_SPECS["efficientnet_lite0"].pip)
    from onnxsplit.zoo.photos import load_photo

    source = onnx.load(str(registry.model_path("efficientnet_lite0")))
    x = registry.preprocess("efficientnet_lite0", [load_photo("chelsea"), load_photo("coffee")])
    model = attach_methods(source, _cams()[:2])
    assert _head_nodes(model) > 0
    _compare_cam(model, x, np.array([-1, 967], np.int64), CAM_PAIRS[:1], 3e-5)


def _seeded_methods():
    return [
        SplitLRP(diagnostics=True),
        SplitLRP(maxout="proportional", name="prop"),
        SplitLRP(lam="balanced", name="bal"),
        SplitGrad(),
        SplitCAM(name="cam", from_layer=False),
        SplitCAM(name="cam_rel", evidence="relevance", from_layer=False),
    ]


def _compare_seeded(source, x, target, tol):
    seeded = attach_methods(source, _seeded_methods())
    # a relevance-form SplitLRP walks the four-term nodes: the split graph is not seeded
    plain = attach_methods(source, _seeded_methods() + [SplitLRP(form="relevance", name="rf")])
    convs = [sum(_is_split_map(n) for n in m.graph.node) for m in (seeded, plain)]
    assert 0 < convs[0] <= convs[1] // 2  # one or two maps per layer instead of four
    a, b = _run(seeded, x, target), _run(plain, x, target)
    for key, value in a.items():
        scale = np.abs(b[key]).max()
        if key.startswith("map_cam"):  # P - N cancels: the scale of the evidence P and N
            base = key.split("_pos")[0].split("_neg")[0]
            scale = max(np.abs(b[f"{base}_{part}"]).max() for part in ("pos", "neg"))
        assert _rel(value, b[key], scale) < tol, (key, _rel(value, b[key], scale))
    return a


@pytest.mark.parametrize("name", DIGITS[:1] + DIGITS[2:] + ("digits_mlp_op17_legacy.onnx",))
def test_seeded_split_equals_four_term_split(name):
    x = np.load(SAMPLES / "digits_test_inputs.npy")[:4]
    source = onnx.load(str(SAMPLES / name))
    if "mlp" in name:  # no rank-4 layer: no SplitCAM
        seeded = attach_methods(source, _seeded_methods()[:4])
        plain = attach_methods(
            source, _seeded_methods()[:4] + [SplitLRP(form="relevance", name="rf")]
        )
        a, b = _run(seeded, x, TARGETS), _run(plain, x, TARGETS)
        for key, value in a.items():
            assert _rel(value, b[key], np.abs(b[key]).max()) < 1e-5, key
        return
    _compare_seeded(source, x, TARGETS, 1e-5)


@pytest.mark.slow  # ~5 min on 2 loaded cores (the four-term relevance form is the slow part)
def test_seeded_split_efficientnet():
    from onnxsplit.zoo import registry

    if not registry.is_available("efficientnet_lite0"):
        pytest.skip(registry.ZOO_SPECS["efficientnet_lite0"].pip)
    from onnxsplit.zoo.photos import load_photo

    source = onnx.load(str(registry.model_path("efficientnet_lite0")))
    x = registry.preprocess("efficientnet_lite0", [load_photo("chelsea"), load_photo("coffee")])
    out = _compare_seeded(source, x, np.array([-1, 967], np.int64), 1e-4)
    for label in ("g", "h"):  # conservation holds on the seeded graph itself
        total = out[f"splitlrp_logit_{label}"]
        conserved = out[f"map_splitlrp_{label}"].reshape(2, -1).sum(1)
        conserved = conserved + out[f"splitlrp_absorbed_{label}"]
        np.testing.assert_allclose(conserved, total, rtol=1e-4)


# ------------------------------------------------------- SplitLRP's map in one backward pass
def _convs(model: onnx.ModelProto) -> int:
    return sum(n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") for n in model.graph.node)


@pytest.mark.parametrize("name", [*DIGITS, "digits_mlp_op17_legacy.onnx"])
@pytest.mark.parametrize("lam", [1.0, 1.5])
def test_splitlrp_map_in_one_pass_equals_two_passes(name, lam):
    """The ratio-form backward is linear in its seed, so R_g - lam R_h is one pass seeded with
    (1, -lam) on the (g, h) logits; diagnostics=True still runs R_g and R_h apart."""
    model = onnx.load(str(SAMPLES / name))
    x = np.load(SAMPLES / "digits_test_inputs.npy")[:4]
    methods = [SplitLRP(lam=lam), SplitLRP(lam=lam, diagnostics=True, name="apart")]
    out = _run(attach_methods(model, methods), x, TARGETS)
    scale = float(np.abs(out["map_apart_g"]).max())
    for part in ("", "_g", "_h"):
        assert _rel(out[f"map_splitlrp{part}"], out[f"map_apart{part}"], scale) < 1e-5, part
    assert np.abs(out["map_splitlrp"]).max() > 0.01 * scale


def test_map_only_graph_drops_the_component_pass():
    model = onnx.load(str(SAMPLES / "digits_resnet_op18_dynamo.onnx"))
    full = attach_methods(model, ["splitlrp", "gradcam"])
    lean = attach_methods(model, ["splitlrp", "gradcam"], components=False)
    assert [o.name for o in lean.graph.output] == ["logits", "map_splitlrp", "map_gradcam"]
    assert _convs(lean) < 0.8 * _convs(full)
    x = np.load(SAMPLES / "digits_test_inputs.npy")[:4]
    a, b = _run(full, x, TARGETS), _run(lean, x, TARGETS)
    for key in ("logits", "map_splitlrp", "map_gradcam"):
        np.testing.assert_allclose(b[key], a[key], rtol=1e-6, atol=1e-7)


# ------------------------------------------- onnxruntime's blocked layout needs known shapes
@pytest.mark.parametrize(
    "name", ["digits_resnet_op17_legacy.onnx", "digits_resnet_op18_dynamo.onnx", DIGITS[3]]
)
def test_backward_keeps_the_batch_symbol(name):
    """Every tensor of the SplitLRP / gradient backward passes has the input's batch symbol
    after onnx shape inference: the adjoints of pools, reshapes and pads use constant targets
    (Reshape 0 / Expand 1 for the batch, static Slice ends), not Shape(x). Where it was lost,
    onnxruntime could not prove two operands equal-shaped and ran the backward's Mul/Sum
    outside its NCHWc layout, with a layout conversion around each (EfficientNet-Lite0:
    SplitLRP 6.1x -> 5.8x the forward)."""
    model = onnx.load(str(SAMPLES / name))
    batch = model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    out = attach_methods(model, ["splitlrp", "gradient"], components=False)
    inferred = onnx.shape_inference.infer_shapes(out)
    backward = [
        v
        for v in inferred.graph.value_info
        if v.name.startswith(("splitlrp_gh/", "grad/")) and len(v.type.tensor_type.shape.dim) > 1
    ]
    assert len(backward) > 20
    lost = [v.name for v in backward if v.type.tensor_type.shape.dim[0].dim_param != batch]
    assert not lost, lost[:5]


def test_rectifier_ratio_step_has_no_masks():
    """With winner-takes-all maxout a re-centered Relu / ReLU6 is one ratio step s * A / p on
    the rectifier's positive input: the SplitLRP map's backward has no Where/Equal masks, and
    its seeded layers after a rectifier map one stream (fewer convolutions than before)."""
    model = onnx.load(str(SAMPLES / DIGITS[3]))
    lean = attach_methods(model, ["splitlrp"], components=False)
    ops = [n.op_type for n in lean.graph.node if n.name.startswith("splitlrp_gh")]
    assert "Where" not in ops and "Equal" not in ops
    assert ops.count("Div") >= 3  # one per rectifier step
    proportional = attach_methods(model, [SplitLRP(maxout="proportional")], components=False)
    assert _convs(lean) < _convs(proportional)

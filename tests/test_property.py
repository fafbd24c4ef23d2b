"""Property tests: any exported ReLU network is split exactly and its compiled gradient is torch's.

Hypothesis draws small random ReLU networks built in torch from the supported ops (convs with
random groups/strides/pads/dilations, max/avg pools with ceil_mode and padding, residual adds,
concats, eval-mode BatchNorm with random running statistics, channel-shuffle reshapes, flatten,
ReLU/ReLU6/LeakyReLU, Linear heads), exports them with `torch.onnx.export` (legacy exporter at
opsets 11-20, dynamo exporter at opsets 18-21) with a dynamic batch axis, and checks

- exactness: the normalized split (and the raw split of shallow nets) reproduces the logits of
  onnxruntime on the original export, max|delta| / max|f| <= 1e-4, at a random batch size;
- the compiled gradient: `attach_methods(model, ["gradient"])` outputs `map_gradient`, the
  input gradient of the chosen logit summed over the channel axis (methods.Gradient +
  AttributionContext.channel_sum); it equals torch autograd of the same torch module (float64).
  Every drawn op has an adjoint (Resize since the adjoint-rules round; reflect/edge Pad
  before); a refusal would have to be one clear UnsupportedBackwardError naming the nodes.

Default run: a bounded number of examples (see PROFILES). Long run (documented in
docs/inputs.md):

    ONNXSPLIT_HYPOTHESIS=long python -m pytest tests/test_property.py -q \
        --hypothesis-show-statistics        # 500 + 40 examples; xlong: 1200 + 60

Failures hypothesis shrank become regular tests at the bottom of this file (`test_regression_*`).
"""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from onnxsplit.attribution.attach import attach_methods  # noqa: E402
from onnxsplit.attribution.autodiff import UnsupportedBackwardError  # noqa: E402
from onnxsplit.convert import convert_model, relative_error  # noqa: E402
from onnxsplit.runtime import make_session  # noqa: E402

nn = torch.nn
TOLERANCE = 1e-4  # exactness of the split logits (the project's EXACTNESS_TOLERANCE)
GRAD_TOLERANCE = 1e-3  # float32 onnxruntime vs float64 torch, relative to max |gradient|
# raw mode: g and h grow with depth and window sums (docs/split.md), f = g - h then carries
# their float32 rounding; accept max|delta| <= 1e-4 * RAW_ROUNDING * max(|g|, |h|) as well
RAW_ROUNDING = 1e-2

# -- profiles --------------------------------------------------------------------------------
# examples per test: (legacy exporter, dynamo exporter). The dynamo exporter takes seconds per
# model, so it is sampled rarely.
PROFILES = {"default": (20, 2), "long": (500, 40), "xlong": (1200, 60)}
PROFILE = os.environ.get("ONNXSPLIT_HYPOTHESIS", "default")
if PROFILE not in PROFILES:
    raise RuntimeError(f"ONNXSPLIT_HYPOTHESIS={PROFILE!r}: choose one of {sorted(PROFILES)}")
LEGACY_EXAMPLES, DYNAMO_EXAMPLES = PROFILES[PROFILE]
COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


# -- random architectures ----------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """A random network: input [N, channels, size, size], body blocks, a head, classes."""

    channels: int
    size: int
    blocks: tuple
    head: tuple
    classes: int
    seed: int

    def depth(self) -> int:
        """Affine layers on the longest path (raw mode is only exact on shallow nets)."""
        count = {"conv": 1, "res": 1, "cat": 1, "bn": 1}
        head = 1 + (self.head[1] > 0) + (self.head[1] > 0 and self.head[3])
        return sum(count.get(b[0], 0) for b in self.blocks) + head


ACTIVATIONS = ("relu", "relu6", "leaky", "prelu", "none")


def conv_out(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def pool_out(size: int, k: int, stride: int, pad: int, ceil: bool) -> int:
    span = size + 2 * pad - k
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def ceil_out_onnx(size: int, k: int, stride: int, pad: int) -> int:
    """The output size onnx shape inference gives a ceil_mode pool (no dropped last window)."""
    return -(-(size + 2 * pad - k) // stride) + 1


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def specs(draw, max_blocks: int = 5) -> Spec:
    channels = draw(st.sampled_from([1, 3]))
    size = draw(st.integers(4, 14))
    c, s = channels, size
    blocks = []
    for _ in range(draw(st.integers(0, max_blocks))):
        kind = draw(
            st.sampled_from(["conv", "conv", "pool", "res", "cat", "shuffle", "bn", "up", "pad"])
        )
        act = draw(st.sampled_from(ACTIVATIONS))
        alpha = draw(st.sampled_from([0.0, 0.01, 0.2, 0.5, 1.0]))
        if kind == "conv":
            k = draw(st.integers(1, 3))
            dil = draw(st.integers(1, 2))
            pad = draw(st.integers(0, 2))
            stride = draw(st.integers(1, 2))
            if conv_out(s, k, stride, pad, dil) < 1:
                continue
            depthwise = draw(st.booleans())
            if depthwise:
                out = c * draw(st.integers(1, 2))
                groups = c
            else:
                out = draw(st.sampled_from([2, 3, 4, 6, 8]))
                groups = draw(st.sampled_from(divisors(math.gcd(c, out))))
            bn = draw(st.booleans())
            blocks.append(("conv", out, k, stride, pad, dil, groups, bn, act, alpha))
            c, s = out, conv_out(s, k, stride, pad, dil)
        elif kind == "pool":
            k = draw(st.integers(1, 3))
            stride = draw(st.integers(1, 2))
            pad = draw(st.integers(0, k // 2))
            ceil = draw(st.booleans())
            avg = draw(st.booleans())
            if s + 2 * pad < k or pool_out(s, k, stride, pad, ceil) < 1:
                continue
            if ceil and pool_out(s, k, stride, pad, True) != ceil_out_onnx(s, k, stride, pad):
                # torch drops a last window that starts in the padding; onnx shape inference
                # does not (onnxruntime rejects such exports at opset >= 13, see
                # test_ceil_mode_pool_whose_last_window_starts_in_the_padding)
                continue
            if blocks and blocks[-1][:2] == ("pad", "zeros"):
                # torch's legacy exporter fuses ZeroPad2d into the next pool's pads: a max pool
                # then pads with -inf (wrong values) or gets pads >= kernel (onnxruntime refuses)
                continue
            include = draw(st.booleans())
            blocks.append(("pool", "avg" if avg else "max", k, stride, pad, ceil, include))
            s = pool_out(s, k, stride, pad, ceil)
        elif kind == "res":
            blocks.append(("res", draw(st.booleans()), act, alpha))
        elif kind == "cat":
            a, b = draw(st.integers(1, 4)), draw(st.integers(1, 4))
            blocks.append(("cat", a, b, act, alpha))
            c = c + a + b
        elif kind == "shuffle":
            groups = [g for g in divisors(c) if 1 < g < c]
            if not groups:
                continue
            blocks.append(("shuffle", draw(st.sampled_from(groups))))
        elif kind == "up":
            if s > 8:
                continue
            blocks.append(("up", draw(st.sampled_from(["nearest", "bilinear"]))))
            s *= 2
        elif kind == "pad":
            pad = draw(st.integers(1, 2))
            mode = draw(st.sampled_from(["zeros", "reflect", "replicate"]))
            if mode == "reflect" and s <= pad:
                continue
            blocks.append(("pad", mode, pad))
            s += 2 * pad
        else:
            blocks.append(("bn",))
    hidden = draw(st.sampled_from([0, 0, 5, 12]))
    # amax after an overlapping max pool duplicates the maximum (test_regression_*_ties_*)
    heads = ["gap", "flatten", "mean", "amax"]
    pooling = draw(st.sampled_from(heads))
    head = (pooling, hidden, draw(st.sampled_from(ACTIVATIONS[:4])), draw(st.booleans()))
    classes = draw(st.integers(2, 10))
    seed = draw(st.integers(0, 2**16))
    return Spec(channels, size, tuple(blocks), head, classes, seed)


# -- torch modules -----------------------------------------------------------------------------
def activation(name: str, alpha: float, channels: int) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "relu6":
        return nn.ReLU6()
    if name == "leaky":
        return nn.LeakyReLU(alpha)
    if name == "prelu":  # per-channel slopes in [0, 1] (convex), seeded by Net
        prelu = nn.PReLU(channels)
        with torch.no_grad():
            prelu.weight.uniform_(0.0, 1.0).clamp_(max=alpha + 0.5)
        return prelu
    return nn.Identity()


def batchnorm(channels: int, generator: torch.Generator) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(channels, generator=generator))  # any sign
        bn.bias.copy_(torch.randn(channels, generator=generator) * 0.5)
        bn.running_mean.copy_(torch.randn(channels, generator=generator) * 0.5)
        bn.running_var.copy_(torch.rand(channels, generator=generator) * 1.5 + 0.5)
    return bn


class Residual(nn.Module):
    def __init__(self, channels: int, bn: bool, act: nn.Module, generator):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = batchnorm(channels, generator) if bn else nn.Identity()
        self.act = act

    def forward(self, x):
        return self.act(x + self.bn(self.conv(x)))


class Concat(nn.Module):
    def __init__(self, channels: int, a: int, b: int, act: nn.Module):
        super().__init__()
        self.left = nn.Conv2d(channels, a, 1)
        self.right = nn.Conv2d(channels, b, 3, padding=1)
        self.act = act

    def forward(self, x):
        return torch.cat([x, self.act(self.left(x)), self.right(x)], dim=1)


class Shuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        n, c, h, w = x.shape
        x = x.reshape(n, self.groups, c // self.groups, h, w).transpose(1, 2)
        return x.reshape(n, c, h, w)


class Reduce(nn.Module):
    """x.mean((2, 3)) -> ReduceMean, x.amax((2, 3)) -> ReduceMax."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how

    def forward(self, x):
        return x.mean((2, 3)) if self.how == "mean" else x.amax((2, 3))


class Net(nn.Module):
    def __init__(self, spec: Spec):
        super().__init__()
        torch.manual_seed(spec.seed)
        generator = torch.Generator().manual_seed(spec.seed)
        layers: list[nn.Module] = []
        c, s = spec.channels, spec.size
        for block in spec.blocks:
            kind = block[0]
            if kind == "conv":
                _, out, k, stride, pad, dil, groups, bn, act, alpha = block
                layers.append(nn.Conv2d(c, out, k, stride, pad, dil, groups))
                if bn:
                    layers.append(batchnorm(out, generator))
                layers.append(activation(act, alpha, out))
                c, s = out, conv_out(s, k, stride, pad, dil)
            elif kind == "pool":
                _, how, k, stride, pad, ceil, include = block
                if how == "max":
                    layers.append(nn.MaxPool2d(k, stride, pad, ceil_mode=ceil))
                else:
                    layers.append(
                        nn.AvgPool2d(k, stride, pad, ceil_mode=ceil, count_include_pad=include)
                    )
                s = pool_out(s, k, stride, pad, ceil)
            elif kind == "res":
                _, bn, act, alpha = block
                layers.append(Residual(c, bn, activation(act, alpha, c), generator))
            elif kind == "cat":
                _, a, b, act, alpha = block
                layers.append(Concat(c, a, b, activation(act, alpha, a)))
                c += a + b
            elif kind == "shuffle":
                layers.append(Shuffle(block[1]))
            elif kind == "up":
                layers.append(nn.Upsample(scale_factor=2, mode=block[1]))
                s *= 2
            elif kind == "pad":
                _, mode, pad = block
                pads = {"zeros": nn.ZeroPad2d, "reflect": nn.ReflectionPad2d}
                layers.append(pads.get(mode, nn.ReplicationPad2d)(pad))
                s += 2 * pad
            else:
                layers.append(batchnorm(c, generator))
        how, hidden, act, norm = spec.head
        if how == "gap":
            layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            features = c
        elif how in ("mean", "amax"):
            layers.append(Reduce(how))
            features = c
        else:
            layers.append(nn.Flatten())
            features = c * s * s
        if hidden:
            layers += [nn.Linear(features, hidden), activation(act, 0.3, hidden)]
            if norm:
                bn = nn.BatchNorm1d(hidden)
                bn.load_state_dict(batchnorm(hidden, generator).state_dict())
                layers.append(bn)
            features = hidden
        layers.append(nn.Linear(features, spec.classes))
        self.body = nn.Sequential(*layers)
        self.eval()

    def forward(self, x):
        return self.body(x)


# -- export, run, compare ----------------------------------------------------------------------
def export(module: nn.Module, spec: Spec, exporter: str, opset: int, batch: int):
    example = torch.randn(batch, spec.channels, spec.size, spec.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            buffer = io.BytesIO()
            torch.onnx.export(
                module,
                (example,),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
            return onnx.load_from_string(buffer.getvalue())
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
            optimize=True,
            verbose=False,
        )
        return program.model_proto


def run(model: onnx.ModelProto, feeds: dict, outputs=None):
    return make_session(model.SerializeToString(), "cpu").run(outputs, feeds)


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


def check(
    spec: Spec, exporter: str, opset: int, export_batch: int, run_batch: int, gradient=True
) -> None:
    module = Net(spec)
    model = export(module, spec, exporter, opset, export_batch)
    rng = np.random.default_rng(spec.seed)
    x = rng.standard_normal((run_batch, spec.channels, spec.size, spec.size)).astype(np.float32)
    try:
        (reference,) = run(model, {"input": x})
    except Exception:  # an export onnxruntime refuses says nothing about onnxsplit
        hypothesis.reject()
    with torch.no_grad():
        eager = module(torch.from_numpy(x)).numpy()
    # the export itself must be faithful, or the comparisons below say nothing about onnxsplit
    if relative_error(reference, eager) >= 1e-4:
        hypothesis.reject()

    modes = ["normalized"] + (["raw"] if spec.depth() <= 3 else [])
    for mode in modes:
        split = convert_model(model, mode=mode).model
        logits, g, h = run(split, {"input": x}, ["logits", "g", "h"])
        error = relative_error(logits, reference)
        if mode == "raw":  # exact up to the float32 rounding of the (large) raw streams
            streams = max(float(np.abs(g).max()), float(np.abs(h).max()))
            scale = max(float(np.abs(reference).max()), 1e-12)
            error = min(error, error * scale / (RAW_ROUNDING * streams))
        assert error <= TOLERANCE, f"{mode} split: max|delta|/max|f| = {error:.2e}"
        np.testing.assert_allclose(g - h, logits, rtol=0, atol=1e-5 * np.abs(g).max() + 1e-12)

    if not gradient:
        return
    try:
        explained = attach_methods(model, ["gradient"])
    except UnsupportedBackwardError as exc:
        # by design: Resize (nn.Upsample) has no adjoint rule and only constant-mode Pad is
        # differentiated; a clear error that names exactly those nodes
        for _, op, why in exc.problems:
            assert op == "Resize" or "only constant-mode Pad" in why, str(exc)
        assert any(
            b[0] == "up" or b[:2] in (("pad", "reflect"), ("pad", "replicate")) for b in spec.blocks
        ), str(exc)
        return
    with torch.no_grad():
        target = module.double()(torch.tensor(x, dtype=torch.float64)).argmax(1).numpy()
    module.float()
    logits, saliency = run(
        explained, {"input": x, "target": target.astype(np.int64)}, ["logits", "map_gradient"]
    )
    assert relative_error(logits, reference) <= TOLERANCE
    expected = torch_gradient(module, x, target)
    assert saliency.shape == expected.shape == (run_batch, spec.size, spec.size)
    scale = max(float(np.abs(expected).max()), 1e-12)
    worst = float(np.abs(saliency - expected).max()) / scale
    assert worst <= GRAD_TOLERANCE, f"map_gradient differs from torch autograd: {worst:.2e}"


# -- the properties ----------------------------------------------------------------------------
@settings(max_examples=LEGACY_EXAMPLES, **COMMON)
@given(
    spec=specs(),
    opset=st.integers(11, 20),
    export_batch=st.integers(1, 3),
    run_batch=st.integers(1, 5),
)
def test_legacy_export_is_split_exactly_with_torch_gradient(spec, opset, export_batch, run_batch):
    check(spec, "legacy", opset, export_batch, run_batch)


@settings(max_examples=DYNAMO_EXAMPLES, **COMMON)
@given(
    spec=specs(max_blocks=4),
    opset=st.integers(18, 21),
    export_batch=st.integers(2, 3),  # torch.export specializes a batch of 1
    run_batch=st.integers(1, 5),
)
def test_dynamo_export_is_split_exactly_with_torch_gradient(spec, opset, export_batch, run_batch):
    check(spec, "dynamo", opset, export_batch, run_batch)


# -- shrunk failures as regular tests ----------------------------------------------------------
def test_regression_upsample_gradient_is_one_clear_error():
    spec = Spec(1, 4, (("up", "nearest"),), ("gap", 0, "relu", False), 2, 0)
    check(spec, "legacy", 11, 1, 1)


def test_regression_reflect_pad_gradient_is_one_clear_error():
    spec = Spec(1, 4, (("pad", "reflect", 1),), ("gap", 0, "relu", False), 2, 0)
    check(spec, "legacy", 11, 1, 1)


def ceil_pool_helper_model() -> onnx.ModelProto:
    """MaxPool(k=1, s=2, ceil_mode) on 4x4: onnxruntime and torch give 2x2 (the last window
    would start outside the input), onnx shape inference says 3x3; then Flatten -> Gemm[2, 4]."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[1, 1], strides=[2, 2], ceil_mode=1),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "W"], ["y"], transB=1),
    ]
    weight = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    graph = helper.make_graph(
        nodes,
        "ceil_pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(weight, "W")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    return model


def ceil_pool_torch_export() -> onnx.ModelProto:
    """The shrunk hypothesis example (legacy exporter, opset 11)."""
    spec = Spec(
        channels=1,
        size=5,
        blocks=(
            ("pool", "max", 1, 1, 0, False, False),
            ("conv", 2, 2, 1, 0, 1, 1, False, "relu", 0.0),
            ("pool", "max", 1, 2, 0, True, False),
        ),
        head=("flatten", 0, "relu", False),
        classes=2,
        seed=0,
    )
    return export(Net(spec), spec, "legacy", 11, 1)


@pytest.mark.parametrize("build", [ceil_pool_helper_model, ceil_pool_torch_export])
def test_regression_ceil_mode_pool_whose_last_window_starts_in_the_padding(build):
    """A ceil_mode pool whose last window starts outside the input (opset < 13, runs in
    onnxruntime) gets a too-large shape from onnx's shape inference after the opset upgrade:
    the emitted graph fails onnx's checker. Exact, or one clear error (it was a raw
    InferenceError)."""
    from onnxsplit.errors import OnnxSplitError

    model = build()
    name = model.graph.input[0].name
    dims = [d.dim_value or 3 for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(1).standard_normal(dims).astype(np.float32)
    (reference,) = run(model, {name: x})  # the original runs in onnxruntime
    try:
        split = convert_model(model).model
    except OnnxSplitError as exc:
        assert "ceil_mode" in str(exc) and "Traceback" not in str(exc)
        return  # a clear refusal
    (logits,) = run(split, {name: x}, ["logits"])
    assert relative_error(logits, reference) <= TOLERANCE


def test_regression_raw_split_of_a_wide_max_is_exact_up_to_stream_rounding():
    """Shrunk: raw max|delta|/max|f| = 1.5e-4 with max|g| = 2400 max|f| (float32 rounding)."""
    spec = Spec(
        channels=1,
        size=14,
        blocks=(
            ("res", False, "relu", 0.0),
            ("cat", 1, 1, "relu", 0.0),
            ("pool", "max", 3, 1, 0, False, False),
        ),
        head=("amax", 0, "relu", False),
        classes=2,
        seed=0,
    )
    check(spec, "legacy", 11, 1, 1)


# ReduceMax / GlobalMaxPool with k tied maxima (an overlapping max pool before a global max):
# the adjoint shares dy evenly (torch's amax rule); it used to send dy to every tied position,
# a gradient k times too large.


def test_regression_reduce_max_ties_after_overlapping_max_pool():
    """Shrunk: MaxPool(2, stride 1) on 4x4 then x.amax((2, 3)): map_gradient = 4x torch's."""
    spec = Spec(
        channels=1,
        size=4,
        blocks=(("pool", "max", 2, 1, 0, False, False),),
        head=("amax", 0, "relu", False),
        classes=2,
        seed=0,
    )
    check(spec, "legacy", 11, 1, 1)


def test_regression_global_max_pool_ties_against_finite_differences():
    """onnx.helper: MaxPool(2, stride 1) -> GlobalMaxPool -> Flatten -> Gemm; the input's
    unique maximum moves the logit by w * eps, the compiled gradient says k * w."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[1, 1]),
        helper.make_node("GlobalMaxPool", ["p"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "W"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "ties",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(np.array([[2.0], [-1.0]], np.float32), "W")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4) / 16  # maximum at (3, 3)
    x[0, 0, 1, 1] = 2.0  # the unique maximum, inside 4 overlapping windows
    explained = attach_methods(model, ["gradient"])
    (saliency,) = run(explained, {"x": x, "target": np.zeros(1, np.int64)}, ["map_gradient"])
    eps = 1e-2
    bumped = x.copy()
    bumped[0, 0, 1, 1] += eps
    numeric = (run(model, {"x": bumped})[0][0, 0] - run(model, {"x": x})[0][0, 0]) / eps
    assert numeric == pytest.approx(2.0, rel=1e-3)
    assert saliency[0, 1, 1] == pytest.approx(numeric, rel=1e-3)


def test_regression_unfaithful_export_is_rejected():
    """Shrunk: ZeroPad2d(1) -> MaxPool2d(2, 1) exported by the legacy exporter differs from
    torch (the pad is fused into MaxPool's -inf padding), a torch exporter issue: such
    examples are rejected (and the strategy no longer draws a zero pad before a pool)."""
    blocks = (("pad", "zeros", 1), ("pool", "max", 2, 1, 0, False, False))
    spec = Spec(1, 4, blocks, ("gap", 0, "relu", False), 2, 0)
    with pytest.raises(hypothesis.errors.UnsatisfiedAssumption):
        check(spec, "legacy", 11, 1, 1)


@pytest.mark.parametrize("opset", [11, 13])
def test_regression_batchnorm_after_channel_shuffle(opset):
    """Legacy export (dynamic batch) of a channel shuffle (Reshape/Transpose/Reshape with
    Shape-computed targets) then a standalone eval BatchNorm2d: onnx's shape inference leaves
    the Reshape output rank unknown; canonicalize takes it from the target's length (it was
    refused: 'the input rank is unknown')."""
    blocks = (("cat", 1, 2, "relu", 0.0), ("shuffle", 2), ("bn",))
    spec = Spec(1, 4, blocks, ("gap", 0, "relu", False), 2, 0)
    check(spec, "legacy", opset, 1, 1)

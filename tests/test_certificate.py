"""Try to break the deletion certificate (docs/certified.md).

For a raw split f = g - h (g, h monotone and convex in (x+, x-) around the reference c) and
every y that deletes a set of positions towards c, fully or partly (y = c + (1 - t)(x - c),
one t in [0, 1] per position):

    f_j(x) - sum_p t_p D_j[p]  <=  f_j(y)  <=  f_j(x) + sum_p t_p U_j[p]    for every class j

The property tests draw random small ReLU networks (tests/test_property.py's strategy: convs,
pools, residuals, concats, BatchNorm, ReLU/ReLU6/LeakyReLU/PReLU, upsampling, pads, four heads)
and random difference-of-monotone models (onnxsplit.train's DCNet, random weights and center),
random references c (0, a number, one value per element), random inputs and random deletion
sets (full and partial), and evaluate f(y) in float64 with torch. Every bound of every class is
checked; the certified sufficient set of `certify.judge` is deleted and the prediction must
survive. A violation beyond the stated float tolerance fails the test. The counts are printed
at the end of the module (`-s`) and written to $ONNXSPLIT_CERT_REPORT (JSON) when set.

    ONNXSPLIT_HYPOTHESIS=long python -m pytest tests/test_certificate.py -q -s   # 400 + 120
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections import Counter

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
hypothesis = pytest.importorskip("hypothesis")

from click.testing import CliRunner  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_property import Net, export, specs  # noqa: E402

from onnxsplit.attribution.attach import attach_methods  # noqa: E402
from onnxsplit.attribution.autodiff import UnsupportedBackwardError  # noqa: E402
from onnxsplit.attribution.certificate import CERT_TOLERANCE, Certificate  # noqa: E402
from onnxsplit.certify import (  # noqa: E402
    compile_certificate,
    judge,
    run_all_classes,
)
from onnxsplit.cli import main  # noqa: E402
from onnxsplit.contract import META_REFERENCE, Interface, metadata  # noqa: E402
from onnxsplit.convert import convert, convert_model, relative_error  # noqa: E402
from onnxsplit.errors import OnnxSplitError  # noqa: E402
from onnxsplit.precision import finish_float64, to_float64  # noqa: E402
from onnxsplit.runtime import make_session  # noqa: E402
from onnxsplit.verify import verify  # noqa: E402

PROFILES = {"default": (14, 6), "long": (400, 120)}  # examples: (random nets, DC models)
PROFILE = os.environ.get("ONNXSPLIT_HYPOTHESIS", "default")
NETS, DC_MODELS = PROFILES.get(PROFILE, PROFILES["long"])
SETS = 12  # deletion sets per input
SAMPLES = os.path.join(os.path.dirname(__file__), "..", "sample_models")
COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
# float tolerance of a bound, on top of the sample's measured |g - h - f| (the slack certify
# adds): the logits' own rounding (1e-5 of max|f|) and the maps' (1e-5 of sum D + sum U)
ROUNDING = 1e-5

TALLY: Counter = Counter()
SLACK: dict[str, list[float]] = {"lower": [], "upper": [], "width": []}


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    text = {
        "checks": TALLY["checks"],
        "violations": TALLY["violations"],
        "sufficiency checks": TALLY["sufficient"],
        "models": TALLY["models"],
        "float64 models": TALLY["float64"],
        "inputs": TALLY["inputs"],
        "inputs without certificate": TALLY["uncertified"],
        "median lower slack / max|f|": _median(SLACK["lower"]),
        "median upper slack / max|f|": _median(SLACK["upper"]),
    }
    print(f"\ncertificate checks ({PROFILE}): {json.dumps(text)}")
    path = os.environ.get("ONNXSPLIT_CERT_REPORT")
    if path:
        with open(path, "w") as handle:
            json.dump(text, handle, indent=1)


def _median(values):
    return float(np.median(values)) if values else None


# -- the checker -------------------------------------------------------------------------------
def deletions(rng, x, reference, positions_shape, channel_axis, sets=SETS):
    """(t [sets, *positions], y [sets, *x.shape]): half full deletions (t in {0, 1}), half
    partial (t in [0, 1]); y = c + (1 - t)(x - c), t broadcast over the channel axis."""
    ts, ys = [], []
    for s in range(sets):
        mask = rng.random(positions_shape) < rng.random()
        t = mask * (1.0 if s % 2 == 0 else rng.random(positions_shape))
        tb = t if channel_axis is None else np.expand_dims(t, channel_axis)
        ys.append(reference + (1.0 - tb) * (x - reference))
        ts.append(t)
    return np.stack(ts), np.stack(ys)


def check_bounds(f64, compiled, x, maps, rng, label):
    """Every class's bounds on random deletions of every certified input; f64(y) -> [B, K]
    float64 logits. Returns the number of violations."""
    iface = Interface.of(compiled.model)
    channel = 0 if iface.layout.startswith("NC") else None
    c = np.broadcast_to(np.asarray(compiled.reference, np.float64), x.shape[1:])
    violations = 0
    for i in range(len(x)):
        TALLY["inputs"] += 1
        error = maps.error[i]
        if not error <= CERT_TOLERANCE:
            TALLY["uncertified"] += 1
            assert np.isnan(maps.drop[i]).all(), "a map was issued for an inexact split"
            continue
        logits, drop, rise = maps.logits[i], maps.drop[i], maps.rise[i]
        assert np.all(drop >= 0) and np.all(rise >= 0), "D or U negative"
        scale = float(np.max(np.abs(logits)))
        slack = error * scale
        t, y = deletions(rng, x[i].astype(np.float64), c, drop.shape[1:], channel)
        fy = f64(y)  # [sets, K]
        t_flat = t.reshape(len(t), -1)
        lower = logits[None] - t_flat @ drop.reshape(len(logits), -1).T  # [sets, K]
        upper = logits[None] + t_flat @ rise.reshape(len(logits), -1).T
        tol = slack + ROUNDING * (
            scale
            + drop.sum(axis=tuple(range(1, drop.ndim)))
            + rise.sum(axis=tuple(range(1, rise.ndim)))
        )
        low_gap = fy - lower + tol[None]
        high_gap = upper - fy + tol[None]
        bad = int(np.sum(low_gap < 0) + np.sum(high_gap < 0))
        TALLY["checks"] += 2 * fy.size
        TALLY["violations"] += bad
        violations += bad
        assert bad == 0, (
            f"{label}: certificate violated {bad} time(s): worst lower "
            f"{low_gap.min():.3g}, worst upper {high_gap.min():.3g} (tolerance {tol.max():.3g})"
        )
        k = int(np.argmax(logits))
        SLACK["lower"].extend(((fy[:, k] - lower[:, k]) / max(scale, 1e-12)).tolist())
        SLACK["upper"].extend(((upper[:, k] - fy[:, k]) / max(scale, 1e-12)).tolist())
        # the certified sufficient set: delete everything else fully; the prediction survives
        same = x[i] == c
        at_ref = same.all(axis=0) if channel == 0 else same
        verdict = judge("x", logits, drop, rise, error, at_ref, 0.5, CERT_TOLERANCE)
        if verdict.certified and verdict.largest_deletion:
            order = np.argsort(drop[k].reshape(-1), kind="stable")
            t_star = np.zeros(drop[k].size)
            t_star[order[: verdict.largest_deletion]] = 1.0
            t_star = t_star.reshape(drop.shape[1:])
            tb = t_star if channel is None else np.expand_dims(t_star, channel)
            y_star = c + (1.0 - tb) * (x[i] - c)
            out = f64(y_star[None])[0]
            rivals = np.delete(out, k)
            TALLY["sufficient"] += 1
            assert out[k] > rivals.max() - 2 * tol.max(), f"{label}: the certified set failed"
    return violations


def certify_batch(model, reference, x):
    """compile_certificate + run_all_classes as `onnxsplit certify` does (float32, float64
    where float32 is not exact on an input)."""
    compiled = compile_certificate(model, reference, "auto")
    session = make_session(compiled.model.SerializeToString(), "cpu")
    maps = run_all_classes(compiled, session, x)
    if compiled.dtype == "float32" and compiled.kind == "raw split":
        if not np.all(maps.error <= CERT_TOLERANCE):
            compiled = compile_certificate(model, reference, "float64")
            session = make_session(compiled.model.SerializeToString(), "cpu")
            maps = run_all_classes(compiled, session, x)
    TALLY["models"] += 1
    TALLY["float64"] += compiled.dtype == "float64"
    return compiled, maps


def torch_f64(module):
    def f(y):
        with torch.no_grad():
            return module.double()(torch.tensor(y, dtype=torch.float64)).numpy()

    return f


# -- random ReLU networks through the raw split ---------------------------------------------
@st.composite
def references(draw, shape):
    kind = draw(st.sampled_from(["zero", "zero", "scalar", "array"]))
    if kind == "zero":
        return None
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    if kind == "scalar":
        return float(np.float32(rng.normal(0, 0.7)))
    return rng.normal(0, 0.7, shape).astype(np.float32)


@settings(max_examples=NETS, **COMMON)
@given(spec=specs(max_blocks=3), data=st.data(), opset=st.integers(13, 17))
def test_certificate_holds_on_random_relu_networks(spec, data, opset):
    module = Net(spec)
    model = export(module, spec, "legacy", opset, 2)
    rng = np.random.default_rng(spec.seed)
    x = rng.standard_normal((3, spec.channels, spec.size, spec.size)).astype(np.float32)
    try:
        (reference,) = make_session(model.SerializeToString(), "cpu").run(None, {"input": x})
    except Exception:
        hypothesis.reject()
    with torch.no_grad():
        eager = module(torch.from_numpy(x)).numpy()
    if relative_error(reference, eager) >= 1e-4:  # an unfaithful export says nothing here
        hypothesis.reject()
    c = data.draw(references((spec.channels, spec.size, spec.size)))
    try:
        compiled, maps = certify_batch(model, c, x)
    except UnsupportedBackwardError:
        hypothesis.reject()  # an op form without an adjoint: one clear error (test_property)
    except OnnxSplitError as exc:
        # refused, one line: the raw split is not exact even in float64 (deep nets), or
        # float64 cannot run the model (Resize) and float32 is not exact
        assert "not exact on a probe" in str(exc) or "float64:" in str(exc), str(exc)
        hypothesis.event("refused: " + ("float64 not exact" if "probe" in str(exc) else "Resize"))
        hypothesis.reject()
    hypothesis.event(f"certified in {compiled.dtype}, depth {spec.depth()}")
    module.float()
    check_bounds(torch_f64(module), compiled, x, maps, rng, f"net {spec}")


# -- difference-of-monotone models (onnxsplit train --kind dc), random weights ------------------
def dc_model(arch: str, seed: int, center: float, parametrisation: str):
    from onnxsplit.train.models import build_model
    from onnxsplit.train.trainer import TrainResult, export_onnx

    torch.manual_seed(seed)
    module = build_model(
        arch, "dc", (1, 8, 8), 10, parametrisation, hidden=(16, 8), channels=(4, 8),
        center=center,
    )  # fmt: skip
    module.eval()
    with torch.no_grad():  # random non-zero BatchNorm statistics (a trained model has them)
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    result = TrainResult(
        arch=arch, kind="dc", data="random", parametrisation=parametrisation, seed=seed,
        epochs=0, train_accuracy=0.0, test_accuracy=0.0, seconds=0.0, parameters=0, lr=0.0,
        center=center, input_shape=(1, 8, 8), classes=[str(i) for i in range(10)],
        model=module,
    )  # fmt: skip
    return module, export_onnx(result, (1, 8, 8))


@settings(max_examples=DC_MODELS, **COMMON)
@given(
    arch=st.sampled_from(["mlp", "cnn"]),
    seed=st.integers(0, 2**16),
    center=st.sampled_from([0.0, 0.25, 0.5]),
    parametrisation=st.sampled_from(["softplus", "square", "clamp"]),
)
def test_certificate_holds_on_difference_of_monotone_models(arch, seed, center, parametrisation):
    module, model = dc_model(arch, seed, center, parametrisation)
    rng = np.random.default_rng(seed)
    x = rng.random((3, 1, 8, 8)).astype(np.float32)  # digits-like inputs in [0, 1]
    compiled, maps = certify_batch(model, None, x)
    assert compiled.kind == "dc-trained" and compiled.reference == center
    assert np.all(maps.error == 0)  # logits = g - h by construction
    check_bounds(torch_f64(module), compiled, x, maps, rng, f"dc {arch} seed {seed}")


# -- the bundled digits models (raw split, float32 and float64) -----------------------------
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_certificate_holds_on_the_digits_models(name):
    path = os.path.join(SAMPLES, f"digits_{name}_op17_legacy.onnx")
    model = onnx.load(path)
    x = np.load(os.path.join(SAMPLES, "digits_test_inputs.npy"))[:8].astype(np.float32)
    compiled, maps = certify_batch(model, None, x)
    assert compiled.dtype == ("float32" if name == "mlp" else "float64")
    session = make_session(to_float64_original(model).SerializeToString(), "cpu")

    def f64(y):  # the original model in float64 (onnxruntime, Conv rewritten)
        return session.run(None, {"input": y.astype(np.float32)})[0].astype(np.float64)

    rng = np.random.default_rng(0)
    assert check_bounds(f64, compiled, x, maps, rng, name) == 0


def to_float64_original(model):
    """The original model computed in float64 (input float32, outputs float64)."""
    return finish_float64(to_float64(model), "input")


# -- the compiled method ------------------------------------------------------------------------
def test_compiled_outputs_shapes_metadata_and_the_run_time_guard():
    model = onnx.load(os.path.join(SAMPLES, "digits_mlp_op17_legacy.onnx"))
    compiled = attach_methods(model, ["certificate"])
    names = [o.name for o in compiled.graph.output]
    assert names == ["logits", "map_certificate", "cert_drop", "cert_rise", "certificate_error"]
    assert json.loads(metadata(compiled)[META_REFERENCE]) == 0.0
    x = np.load(os.path.join(SAMPLES, "digits_test_inputs.npy"))[:4].astype(np.float32)
    session = make_session(compiled.SerializeToString(), "cpu")
    got = dict(zip(names, session.run(names, {"input": x, "target": np.full(4, -1)}), strict=True))
    assert got["cert_drop"].shape == got["cert_rise"].shape == (4, 8, 8)
    assert got["certificate_error"].shape == (4,)
    np.testing.assert_array_equal(got["map_certificate"], got["cert_drop"])
    # D = x+ dg/dx+ (x >= 0 here): with f_k = g_k - h_k, D - U = gradient x input of f_k
    grad = attach_methods(model, ["gradient_x_input"])
    (gxi,) = make_session(grad.SerializeToString(), "cpu").run(
        ["map_gradient_x_input"], {"input": x, "target": np.full(4, -1)}
    )
    np.testing.assert_allclose(got["cert_drop"] - got["cert_rise"], gxi, atol=1e-4)
    # the run-time guard: a tolerance below the split's rounding gives NaN maps, never zeros
    strict = attach_methods(model, [Certificate(tolerance=0.0, probe=False)])
    session = make_session(strict.SerializeToString(), "cpu")
    drop, error = session.run(["cert_drop", "certificate_error"], {"input": x, "target": [-1] * 4})
    assert np.all(np.isnan(drop[error > 0])) and np.all(np.isfinite(drop[error == 0]))


def test_certificate_is_refused_where_it_cannot_be_proven():
    resnet = onnx.load(os.path.join(SAMPLES, "digits_resnet_op17_legacy.onnx"))
    with pytest.raises(OnnxSplitError, match="raw split is not exact on a probe input"):
        attach_methods(resnet, ["certificate"])
    mlp = onnx.load(os.path.join(SAMPLES, "digits_mlp_op17_legacy.onnx"))
    with pytest.raises(OnnxSplitError, match="re-centers .* no deletion bound follows"):
        attach_methods(mlp, [Certificate(mode="normalized")])
    with pytest.raises(OnnxSplitError, match="too deep for the raw split"):
        compile_certificate(deep_mlp(), None, "auto")


def deep_mlp(layers: int = 60) -> onnx.ModelProto:
    torch.manual_seed(0)
    body = [m for _ in range(layers) for m in (torch.nn.Linear(16, 16), torch.nn.ReLU())]
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), *body,
                                 torch.nn.Linear(16, 10)).eval()  # fmt: skip
    return export_torch(module, (1, 1, 8, 8))


def export_torch(module, shape) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.randn(*shape),), buffer, dynamo=False, opset_version=17,
            input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "n"}},
        )  # fmt: skip
    return onnx.load_from_string(buffer.getvalue())


# -- the honest raw split -----------------------------------------------------------------------
def three_conv_cnn() -> onnx.ModelProto:
    torch.manual_seed(1)
    nn = torch.nn
    module = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(16, 10),
    ).eval()  # fmt: skip
    return export_torch(module, (1, 3, 32, 32))


def test_raw_convert_refuses_an_inexact_split_and_float64_is_exact(tmp_path):
    deep = tmp_path / "deep.onnx"
    onnx.save(deep_mlp(), deep)
    for dtype in ("float32", "float64"):  # 5e27 streams: nan in float32, garbage in float64
        with pytest.raises(OnnxSplitError, match="not exact on a probe input"):
            convert(deep, tmp_path / "deep.split.onnx", mode="raw", dtype=dtype)
    assert not (tmp_path / "deep.split.onnx").exists()
    cnn = tmp_path / "cnn.onnx"
    onnx.save(three_conv_cnn(), cnn)
    with pytest.raises(OnnxSplitError, match="--dtype float64 keeps 9 more digits"):
        convert(cnn, tmp_path / "cnn.split.onnx", mode="raw")
    result = convert(cnn, tmp_path / "cnn.split.onnx", mode="raw", dtype="float64")
    assert result.probe["relative_error"] < 1e-6
    split = onnx.load(str(tmp_path / "cnn.split.onnx"))
    types = {o.name: o.type.tensor_type.elem_type for o in split.graph.output}
    assert types == {"logits": 1, "g": 11, "h": 11}  # float32 logits, float64 streams
    report = verify(onnx.load(str(cnn)), split)
    assert report.passed(), report.report()


def test_convert_dtype_float64_on_the_command_line(tmp_path):
    cnn = tmp_path / "cnn.onnx"
    onnx.save(three_conv_cnn(), cnn)
    runner = CliRunner()
    result = runner.invoke(main, ["convert", str(cnn), "--mode", "raw"])
    assert result.exit_code != 0 and "--dtype float64" in result.output
    result = runner.invoke(main, ["convert", str(cnn), "--mode", "raw", "--dtype", "float64"])
    assert result.exit_code == 0, result.output
    assert "dtype: float64" in result.output
    result = runner.invoke(main, ["convert", str(cnn), "--dtype", "float64", "--force"])
    assert result.exit_code != 0 and "is for --mode raw" in result.output


@pytest.mark.parametrize("seed", range(6))
def test_float64_rewrites_equal_onnxruntime_float32(seed):
    """Conv (groups, dilations, strides, pads, SAME), ConvTranspose (output_padding, groups),
    AveragePool (ceil_mode, count_include_pad), global pools: float64 rewrite == float32."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    cases = [
        ("Conv", dict(strides=[2, 1], dilations=[1, 2], pads=[1, 0, 2, 1], group=2), [6, 2, 3, 2]),
        ("Conv", dict(auto_pad="SAME_UPPER", strides=[2, 2], group=4), [4, 1, 3, 3]),
        ("ConvTranspose", dict(strides=[2, 2], pads=[1, 0, 0, 1], output_padding=[1, 0]),
         [4, 3, 3, 2]),
        ("ConvTranspose", dict(group=4, strides=[1, 2], dilations=[2, 1]), [4, 2, 2, 3]),
        ("AveragePool", dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1],
                             ceil_mode=1, count_include_pad=seed % 2), None),
        ("GlobalAveragePool", {}, None),
        ("GlobalMaxPool", {}, None),
    ]  # fmt: skip
    for op, attrs, wshape in cases:
        inits, inputs = [], ["x"]
        if wshape is not None:
            w = rng.standard_normal(wshape).astype(np.float32)
            inits.append(numpy_helper.from_array(w, "w"))
            inputs.append("w")
        node = helper.make_node(op, inputs, ["y"], **attrs)
        graph = helper.make_graph(
            [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 7, 6])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits,
        )  # fmt: skip
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        x = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
        (want,) = make_session(model.SerializeToString(), "cpu").run(None, {"x": x})
        (got,) = make_session(to_float64_original_named(model).SerializeToString(), "cpu").run(
            None, {"x": x}
        )
        assert got.dtype == np.float64 and got.shape == want.shape, op
        assert relative_error(got, want) < 1e-6, op


def to_float64_original_named(model):
    return finish_float64(to_float64(model), "x")


def test_float64_refuses_resize():
    spec_model = onnx.load(os.path.join(SAMPLES, "digits_mlp_op17_legacy.onnx"))
    resize = onnx.helper.make_node("Resize", ["input", "", "scales"], ["up"], mode="nearest")
    spec_model.graph.node.insert(0, resize)
    with pytest.raises(OnnxSplitError, match="float64: the model uses Resize"):
        convert_model(spec_model, mode="raw", dtype="float64")


# -- the command ------------------------------------------------------------------------------
def test_certify_command_writes_maps_and_one_line_per_input(tmp_path):
    inputs = tmp_path / "digits.npy"
    np.save(inputs, np.load(os.path.join(SAMPLES, "digits_test_inputs.npy"))[:3])
    model = os.path.join(SAMPLES, "digits_mlp_op17_legacy.onnx")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["certify", model, str(inputs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("digits_")]
    assert len(lines) == 3 and all("certified sufficient" in line for line in lines)
    summary = json.loads((out / "certificate.json").read_text())
    assert summary["reference"] == 0.0 and len(summary["inputs"]) == 3
    for i in range(3):
        drop = np.load(out / f"digits_{i}_cert_drop.npy")
        assert drop.shape == (8, 8) and np.all(drop >= 0)
        assert (out / f"digits_{i}_certificate.png").read_bytes()[:4] == b"\x89PNG"
    # a reference: certify f(. + c); the interval is about deletion towards c
    result = CliRunner().invoke(main, ["certify", model, str(inputs), "--reference", "0.25"])
    assert result.exit_code == 0 and "irrelevant" in result.output


def test_certify_says_so_in_one_line_where_no_bound_holds(tmp_path):
    deep = tmp_path / "deep.onnx"
    onnx.save(deep_mlp(), deep)
    inputs = tmp_path / "x.npy"
    np.save(inputs, np.zeros((2, 1, 8, 8), np.float32))
    result = CliRunner().invoke(main, ["certify", str(deep), str(inputs)])
    assert result.exit_code != 0
    assert result.output.strip().count("\n") == 0, result.output
    assert "no bound can be proven" in result.output and "[" not in result.output
    # an input whose split is not exact: one line, no interval
    verdict = judge("x", np.array([1.0, 0.0]), np.ones((2, 4)), np.ones((2, 4)), 1e-3,
                    np.zeros(4, bool))  # fmt: skip
    assert not verdict.certified and "no certificate" in verdict.line()
    assert "[" not in verdict.line()

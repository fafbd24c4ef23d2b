"""The `onnxsplit` command line on the real digits sample models (click's CliRunner)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx.reference import ReferenceEvaluator

from onnxsplit.cli import main

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
MANIFEST = json.loads((SAMPLES / "manifest.json").read_text())
DIGITS_NPY = SAMPLES / MANIFEST["test_inputs"]
DIGITS = np.load(DIGITS_NPY).astype(np.float32)
MLP = SAMPLES / "digits_mlp_op17_legacy.onnx"
CNN = SAMPLES / "digits_cnn_op17_legacy.onnx"
CONVERT_MODELS = [
    "digits_mlp_op9_legacy.onnx",  # needs the opset 9 -> 13 conversion
    "digits_cnn_op17_legacy.onnx",
    "digits_resnet_op21_dynamo.onnx",
]
DEFAULT_DOMAINS = ("", "ai.onnx")


def invoke(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_ok(result) -> None:
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert result.exception is None
    assert "Traceback" not in result.output


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cpu_session(model: Path | onnx.ModelProto) -> ort.InferenceSession:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def original_logits(path: Path, x: np.ndarray) -> np.ndarray:
    return cpu_session(path).run(["logits"], {"input": x})[0]


def provider_ort_picks(path: Path) -> str:
    """The provider onnxruntime really runs a session on when CUDA is preferred (as 'auto')."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "CPUExecutionProvider"
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(
            str(path), options, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
        )
    except Exception:
        return "CPUExecutionProvider"
    return session.get_providers()[0]


def summary_value(pattern: str, output: str) -> re.Match:
    match = re.search(pattern, output, re.MULTILINE)
    assert match, f"{pattern!r} not in summary:\n{output}"
    return match


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def dims(value: onnx.ValueInfoProto) -> list:
    return [
        d.dim_param if d.HasField("dim_param") else d.dim_value
        for d in value.type.tensor_type.shape.dim
    ]


def assert_dynamic_batch(value: onnx.ValueInfoProto) -> None:
    first = value.type.tensor_type.shape.dim[0]
    assert first.HasField("dim_param") and first.dim_param, f"{value.name}: {dims(value)}"
    assert not first.HasField("dim_value"), f"{value.name}: fixed batch {first.dim_value}"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Each (model, mode) converted once per module: path of the split model."""
    folder = tmp_path_factory.mktemp("converted")
    cache: dict[tuple[str, str], Path] = {}

    def get(model: Path, mode: str = "normalized") -> Path:
        key = (model.name, mode)
        if key not in cache:
            out = folder / f"{model.stem}.{mode}.split.onnx"
            result = invoke("convert", model, "-o", out, "--mode", mode)
            assert_ok(result)
            cache[key] = out
        return cache[key]

    return get


# convert ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CONVERT_MODELS)
def test_convert_writes_a_checked_exact_split_model(name, tmp_path):
    source = SAMPLES / name
    out = tmp_path / "split.onnx"
    result = invoke("convert", source, "-o", out)
    assert_ok(result)
    assert out.is_file()
    text = result.output

    # the summary: provider actually used, exactness, node counts, where it wrote
    provider = summary_value(r"^provider: (\S+)$", text).group(1)
    assert provider == provider_ort_picks(out)
    error = float(summary_value(r"max\|logits - original\| / max\|original\| = (\S+)", text)[1])
    assert 0 <= error < 1e-4
    before, after = map(int, summary_value(r"nodes: (\d+) \(original\) -> (\d+)", text).groups())
    original = onnx.load(str(source))
    split = onnx.load(str(out))
    assert before == len(original.graph.node)
    assert after == len(split.graph.node)
    assert f"wrote {out}" in text
    assert "mode: normalized" in text

    # the written model
    onnx.checker.check_model(str(out), full_check=True)
    assert {n.domain for n in split.graph.node} <= set(DEFAULT_DOMAINS)
    assert {o.domain for o in split.opset_import} <= set(DEFAULT_DOMAINS)
    assert [o.name for o in split.graph.output] == ["logits", "g", "h"]
    assert [i.name for i in split.graph.input] == ["input"]
    for value in [*split.graph.input, *split.graph.output]:
        assert_dynamic_batch(value)
    meta = metadata(split)
    assert meta["onnxsplit.mode"] == "normalized"
    assert meta["onnxsplit.input"] == "input"
    assert meta["onnxsplit.source_output"] == "logits"

    session = cpu_session(out)
    for batch in (1, 8):
        x = DIGITS[:batch]
        reference = original_logits(source, x)
        logits, g, h = session.run(["logits", "g", "h"], {"input": x})
        assert logits.shape == reference.shape == (batch, 10)
        scale = float(np.abs(reference).max())
        np.testing.assert_allclose(logits, reference, rtol=0, atol=1e-5 * scale)
        np.testing.assert_allclose(g - h, logits, rtol=0, atol=1e-5 * scale)
        assert (logits.argmax(1) == reference.argmax(1)).all()


def test_convert_device_cpu_reports_cpu_provider(tmp_path):
    result = invoke("convert", MLP, "-o", tmp_path / "s.onnx", "--device", "cpu")
    assert_ok(result)
    assert "provider: CPUExecutionProvider" in result.output


def test_convert_no_probe_skips_exactness_line(tmp_path):
    result = invoke("convert", MLP, "-o", tmp_path / "s.onnx", "--no-probe")
    assert_ok(result)
    assert "exactness" not in result.output and "provider:" not in result.output
    assert (tmp_path / "s.onnx").is_file()


def test_default_output_path_is_beside_the_model(tmp_path):
    model = tmp_path / "my_model.onnx"
    shutil.copy(MLP, model)
    result = invoke("convert", model)
    assert_ok(result)
    expected = tmp_path / "my_model.split.onnx"
    assert expected.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_model.onnx", "my_model.split.onnx"]
    assert f"wrote {expected}" in result.output
    onnx.checker.check_model(str(expected), full_check=True)


def test_written_file_has_ordinary_permissions(tmp_path):
    out = tmp_path / "s.onnx"
    assert_ok(invoke("convert", MLP, "-o", out, "--no-probe"))
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_input_model_is_byte_identical_after_conversion(tmp_path):
    model = tmp_path / "model.onnx"
    shutil.copy(CNN, model)
    digest, mtime = sha256(model), model.stat().st_mtime_ns
    assert_ok(invoke("convert", model, "--mode", "raw"))
    assert sha256(model) == digest == sha256(CNN)
    assert model.stat().st_mtime_ns == mtime
    split = onnx.load(str(tmp_path / "model.split.onnx"))
    assert metadata(split)["onnxsplit.source"] == f"model.onnx sha256:{digest}"


# verify ----------------------------------------------------------------------------------
def violation(label: str, output: str) -> float:
    return float(summary_value(rf"^{label}: largest violation (\S+) \(relative\)$", output)[1])


@pytest.mark.parametrize("model", [MLP, CNN], ids=["mlp", "cnn"])
def test_raw_mode_then_verify_passes_with_convexity_checks(model, converted):
    split = converted(model, "raw")
    assert metadata(onnx.load(str(split)))["onnxsplit.mode"] == "raw"
    result = invoke("verify", model, split)
    assert_ok(result)
    text = result.output
    assert "mode: raw" in text
    assert "static check, every multiplying weight >= 0: passed" in text
    assert violation("monotonicity", text) <= 1e-4
    assert violation("midpoint convexity", text) <= 1e-4
    for batch in (1, 8):
        assert float(summary_value(rf"exactness, batch {batch}: .* = (\S+)$", text)[1]) < 1e-4
    assert text.rstrip().endswith("verification passed")


@pytest.mark.parametrize("model", [MLP, CNN], ids=["mlp", "cnn"])
def test_verify_normalized_mode_passes(model, converted):
    result = invoke("verify", model, converted(model))
    assert_ok(result)
    assert "mode: normalized" in result.output
    assert "static check" not in result.output  # raw-only checks
    assert "largest intermediate value" in result.output
    assert "verification passed" in result.output


def test_verify_with_real_digit_inputs(converted):
    result = invoke("verify", CNN, converted(CNN), "--inputs", DIGITS_NPY)
    assert_ok(result)
    for batch in (1, 8):
        assert float(summary_value(rf"exactness, batch {batch}: .* = (\S+)$", result.output)[1]) < (
            1e-5
        )
    assert "verification passed" in result.output


def test_verify_raw_mlp_with_real_digit_inputs(converted):
    result = invoke("verify", MLP, converted(MLP, "raw"), "--inputs", DIGITS_NPY)
    assert_ok(result)
    assert "static check, every multiplying weight >= 0: passed" in result.output
    assert "verification passed" in result.output


# --expose --------------------------------------------------------------------------------
def candidate_target_layers(model: Path) -> list[tuple[str, str]]:
    result = invoke("inspect", model)
    assert_ok(result)
    lines = result.output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("candidate target layers"))
    layers = []
    for line in lines[start + 1 :]:
        match = re.match(r"^  (\S+)  \((\w+), shape ", line)
        if not match:
            break
        layers.append((match[1], match[2]))
    return layers


@pytest.mark.parametrize(
    "name", ["digits_cnn_op17_legacy.onnx", "digits_cnn_op21_dynamo.onnx"], ids=["legacy", "dynamo"]
)
def test_expose_adds_streams_whose_difference_is_the_intermediate(name, tmp_path):
    source = SAMPLES / name
    relus = [layer for layer, op in candidate_target_layers(source) if op == "Relu"]
    assert relus, "inspect lists no Relu target layer"
    tensor = relus[0]
    out = tmp_path / "exposed.onnx"
    result = invoke("convert", source, "-o", out, "--expose", tensor)
    assert_ok(result)
    assert f"exposed streams of '{tensor}'" in result.output
    split = onnx.load(str(out))
    onnx.checker.check_model(split, full_check=True)
    names = [o.name for o in split.graph.output]
    assert names == ["logits", "g", "h", f"{tensor}__g", f"{tensor}__h"]
    assert json.loads(metadata(split)["onnxsplit.exposed"]) == {
        tensor: [f"{tensor}__g", f"{tensor}__h"]
    }

    original = onnx.load(str(source))
    original.graph.output.append(onnx.helper.make_tensor_value_info(tensor, 1, None))
    x = DIGITS[:8]
    logits_ref, inner_ref = cpu_session(original).run(["logits", tensor], {"input": x})
    logits, g, h = cpu_session(out).run(["logits", f"{tensor}__g", f"{tensor}__h"], {"input": x})
    assert g.shape == h.shape == inner_ref.shape
    scale = float(np.abs(inner_ref).max())
    np.testing.assert_allclose(g - h, inner_ref, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(logits, logits_ref, rtol=0, atol=1e-5 * np.abs(logits_ref).max())


# inspect / ops ---------------------------------------------------------------------------
def test_inspect_reports_ops_support_layout_and_target_layers():
    result = invoke("inspect", CNN)
    assert_ok(result)
    text = result.output
    entry = next(e for e in MANIFEST["models"] if e["file"] == CNN.name)
    for op, count in entry["op_types"].items():
        assert re.search(rf"^  {op}\s+{count}  split rule$", text, re.MULTILINE), op
    assert "convertible: yes" in text
    assert re.search(r"^input: input \['batch', 1, 8, 8\]  layout: NCHW$", text, re.MULTILINE)
    assert "outputs: logits" in text
    layers = candidate_target_layers(CNN)
    assert layers and {op for _, op in layers} <= {"Relu", "MaxPool", "LeakyRelu", "Clip"}
    produced = {t for n in onnx.load(str(CNN)).graph.node for t in n.output}
    assert {name for name, _ in layers} <= produced


def test_ops_lists_rules_with_their_kind():
    result = invoke("ops")
    assert_ok(result)
    kinds = {}
    for line in result.output.splitlines()[1:]:
        op, kind, *_ = line.split()
        kinds[op] = kind
    expected = {
        "Conv": "affine",
        "Gemm": "affine",
        "MatMul": "affine",
        "Relu": "rectifier",
        "Clip": "rectifier",
        "MaxPool": "rectifier",
        "AveragePool": "linear",
        "Add": "merge",
    }
    assert {op: kinds.get(op) for op in expected} == expected
    assert result.output.splitlines()[0].split() == ["op_type", "kind", "rule"]


# the emitted model on another runtime ----------------------------------------------------
@pytest.mark.parametrize("model", [MLP, CNN], ids=["mlp", "cnn"])
def test_reference_evaluator_agrees_with_onnxruntime(model, converted):
    split = converted(model)
    names = ["logits", "g", "h"]
    ort_out = cpu_session(split).run(names, {"input": DIGITS})
    ref_out = ReferenceEvaluator(onnx.load(str(split))).run(names, {"input": DIGITS})
    scale = float(np.abs(ort_out[0]).max())
    for name, a, b in zip(names, ort_out, ref_out, strict=True):
        assert a.shape == b.shape, name
        assert float(np.abs(a - b).max()) <= 1e-5 * scale, name
    np.testing.assert_allclose(
        ref_out[0], original_logits(model, DIGITS), rtol=0, atol=1e-5 * scale
    )


# the console script ----------------------------------------------------------------------
def test_console_script_end_to_end(tmp_path):
    exe = shutil.which("onnxsplit")
    if exe is None:
        pytest.skip("the onnxsplit console script is not on PATH")
    out = tmp_path / "s.onnx"
    proc = subprocess.run(
        [exe, "convert", str(MLP), "-o", str(out), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"wrote {out}" in proc.stdout
    assert "provider: CPUExecutionProvider" in proc.stdout
    onnx.checker.check_model(str(out), full_check=True)
    bad = subprocess.run(
        [exe, "convert", str(tmp_path / "missing.onnx")], capture_output=True, text=True
    )
    assert bad.returncode != 0
    assert "does not exist" in bad.stderr and "Traceback" not in bad.stderr


# -- convert --methods ------------------------------------------------------------------------
@pytest.mark.parametrize("maps_only", [False, True])
def test_convert_with_methods_writes_an_attribution_model(tmp_path, maps_only):
    out = tmp_path / "cnn.explain.onnx"
    args = ["convert", str(CNN), "-o", str(out), "--methods", "splitlrp,gradcam", "--device", "cpu"]
    result = invoke(*args, *(["--maps-only"] if maps_only else []))
    assert result.exit_code == 0, result.output
    assert (
        "exactness of logits on a probe input" in result.output and f"wrote {out}" in result.output
    )
    model = onnx.load(str(out))
    names = [o.name for o in model.graph.output]
    expected = ["logits", "map_splitlrp", "map_gradcam"]
    if not maps_only:
        expected = ["logits", "map_splitlrp", "map_splitlrp_g", "map_splitlrp_h", "map_gradcam"]
    assert names == expected
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.load(SAMPLES / "digits_test_inputs.npy")[:3]
    outputs = session.run(None, {"input": x, "target": np.full(3, -1, np.int64)})
    reference = ort.InferenceSession(str(CNN), providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )
    np.testing.assert_allclose(outputs[0], reference[0], rtol=1e-5, atol=1e-5)
    assert all(o.shape == (3, 8, 8) for o in outputs[1:])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--maps-only"], "--target-layer and --maps-only need --methods M1,M2"),
        (["--methods", "gradcam", "--mode", "raw"], "cannot be combined with --mode raw"),
        (["--methods", "nosuch"], "unknown method 'nosuch'"),
    ],
)
def test_convert_with_methods_refuses_bad_options(tmp_path, extra, message):
    result = invoke("convert", str(CNN), "-o", str(tmp_path / "x.onnx"), *extra)
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output and not (tmp_path / "x.onnx").exists()

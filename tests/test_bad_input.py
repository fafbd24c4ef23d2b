"""Bad input: one clear message (no traceback), a non-zero exit, nothing written or changed."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
from pathlib import Path

import graphs
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxsplit.cli import main
from onnxsplit.split import RULES

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
MLP = SAMPLES / "digits_mlp_op17_legacy.onnx"
PNG = SAMPLES / "digit_2.png"
RNG = np.random.default_rng(0)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under `folder` (hidden temporary files included) with its content hash."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_file():
            entries[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            entries[key] = "<dir>"
    return entries


def assert_refused(result, folder: Path, before: dict, *fragments: str, code: int | None = None):
    """Non-zero exit through SystemExit, message with every fragment, folder untouched."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), f"unhandled: {result.exception!r}"
    if code is not None:
        assert result.exit_code == code
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, f"{fragment!r} not in:\n{result.output}"
    assert snapshot(folder) == before


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


# these graphs read the input 'a'
vector_model = functools.partial(graphs.vector_model, inputs=("a",))


def weight(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


# unreadable files ------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["convert", "inspect"])
def test_missing_file(command, tmp_path):
    before = snapshot(tmp_path)
    model = tmp_path / "missing.onnx"
    assert_refused(invoke(command, model), tmp_path, before, "missing.onnx", "does not exist")


def test_missing_file_in_missing_folder(tmp_path):
    before = snapshot(tmp_path)
    model = tmp_path / "nowhere" / "missing.onnx"
    assert_refused(invoke("convert", model), tmp_path, before, "missing.onnx", "does not exist")


@pytest.mark.parametrize("command", ["convert", "inspect"])
def test_folder_instead_of_file(command, tmp_path):
    folder = tmp_path / "model.onnx"
    folder.mkdir()
    before = snapshot(tmp_path)
    assert_refused(invoke(command, folder), tmp_path, before, "model.onnx", "is a folder")


@pytest.mark.parametrize("command", ["convert", "inspect"])
def test_empty_file(command, tmp_path):
    model = tmp_path / "empty.onnx"
    model.touch()
    before = snapshot(tmp_path)
    assert_refused(invoke(command, model), tmp_path, before, "empty.onnx", "is empty")


@pytest.mark.parametrize("command", ["convert", "inspect"])
def test_truncated_onnx_file(command, tmp_path):
    data = MLP.read_bytes()
    model = tmp_path / "truncated.onnx"
    model.write_bytes(data[: len(data) // 2])
    before = snapshot(tmp_path)
    assert_refused(
        invoke(command, model), tmp_path, before, "truncated.onnx", "not a readable ONNX model"
    )


@pytest.mark.parametrize("kind", ["png", "text"])
def test_not_an_onnx_file(kind, tmp_path):
    model = tmp_path / f"model.{kind}"
    if kind == "png":
        shutil.copy(PNG, model)
    else:
        model.write_text("this is a text file, not an ONNX model\n" * 20)
    before = snapshot(tmp_path)
    assert_refused(invoke("convert", model), tmp_path, before, model.name, "ONNX")


# unsupported graphs ----------------------------------------------------------------------
def unsupported_model() -> onnx.ModelProto:
    """Conv -> Sigmoid and, on another branch, Tanh; then LRN, a mid-graph Softmax, Relu."""
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c"], ["s"], name="sigmoid_branch"),
        helper.make_node("Tanh", ["c"], ["t"], name="tanh_branch"),
        helper.make_node("Add", ["s", "t"], ["a"], name="add1"),
        helper.make_node("LRN", ["a"], ["l"], name="lrn1", size=3),
        helper.make_node("Softmax", ["l"], ["sm"], name="softmax_mid", axis=1),
        helper.make_node("Relu", ["sm"], ["y"], name="relu_out"),
    ]
    graph = helper.make_graph(
        nodes,
        "unsupported",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])],
        [numpy_helper.from_array(weight(4, 3, 3, 3), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def test_unsupported_ops_are_all_listed_in_one_error(tmp_path):
    model = save(unsupported_model(), tmp_path / "unsupported.onnx")
    before = snapshot(tmp_path)
    result = invoke("convert", model)
    offenders = [
        ("sigmoid_branch", "Sigmoid"),
        ("tanh_branch", "Tanh"),
        ("lrn1", "LRN"),
        ("softmax_mid", "Softmax"),
    ]
    fragments = [f"node '{name}' (op {op})" for name, op in offenders]
    assert_refused(result, tmp_path, before, *fragments, "4 node(s)", "supported ops")
    assert result.output.count("error:") == 1
    problem_lines = [line for line in result.output.splitlines() if line.startswith("  - node")]
    assert len(problem_lines) == len(offenders)
    for name in ("conv1", "add1", "relu_out"):
        assert f"'{name}'" not in result.output
    supported = result.output.split("supported ops", 1)[1]
    for op in RULES:
        assert op in supported


def test_inspect_marks_unsupported_ops(tmp_path):
    model = save(unsupported_model(), tmp_path / "unsupported.onnx")
    result = invoke("inspect", model)
    assert result.exit_code == 0 and result.exception is None
    for op in ("Sigmoid", "Tanh", "LRN", "Softmax"):
        assert any(op in line and "UNSUPPORTED" in line for line in result.output.splitlines())
    assert "convertible: yes" not in result.output


def test_product_of_two_activations(tmp_path):
    nodes = [
        helper.make_node("Relu", ["a"], ["r"], name="relu1"),
        helper.make_node("Mul", ["a", "r"], ["y"], name="mul_activations"),
    ]
    model = save(vector_model(nodes), tmp_path / "mul.onnx")
    before = snapshot(tmp_path)
    assert_refused(
        invoke("convert", model),
        tmp_path,
        before,
        "node 'mul_activations' (op Mul)",
        "product of two activations",
    )


@pytest.mark.parametrize("numerator", ["W", "a"], ids=["const_by_activation", "activations"])
def test_division_by_an_activation(numerator, tmp_path):
    nodes = [
        helper.make_node("Relu", ["a"], ["r"], name="relu1"),
        helper.make_node("Div", [numerator, "r"], ["y"], name="div_by_activation"),
    ]
    model = save(vector_model(nodes, inits={"W": weight(4)}), tmp_path / "div.onnx")
    before = snapshot(tmp_path)
    result = invoke("convert", model)
    assert_refused(result, tmp_path, before, "node 'div_by_activation' (op Div)")
    assert "division by an activation" in result.output or "divisor must be a constant" in (
        result.output
    )


def test_leaky_relu_with_slope_above_one(tmp_path):
    nodes = [helper.make_node("LeakyRelu", ["a"], ["y"], name="leaky2", alpha=2.0)]
    model = save(vector_model(nodes), tmp_path / "leaky.onnx")
    before = snapshot(tmp_path)
    assert_refused(
        invoke("convert", model),
        tmp_path,
        before,
        "node 'leaky2' (op LeakyRelu)",
        "alpha=2.0 outside [0, 1]",
        "non-convex",
    )


def test_clip_with_inverted_bounds(tmp_path):
    nodes = [helper.make_node("Clip", ["a", "lo", "hi"], ["y"], name="clip_inverted")]
    inits = {"lo": np.float32(0.5), "hi": np.float32(-0.5)}
    model = save(vector_model(nodes, inits=inits), tmp_path / "clip.onnx")
    before = snapshot(tmp_path)
    assert_refused(
        invoke("convert", model), tmp_path, before, "node 'clip_inverted' (op Clip)", "inverted"
    )


# several inputs / outputs ----------------------------------------------------------------
def two_input_model() -> onnx.ModelProto:
    """Float inputs 'a' and 'b'; only 'a' is used."""
    nodes = [helper.make_node("MatMul", ["a", "W"], ["y"], name="matmul1")]
    return vector_model(nodes, inputs=("a", "b"), inits={"W": weight(4, 4)})


def test_two_inputs_without_input_option(tmp_path):
    model = save(two_input_model(), tmp_path / "two_inputs.onnx")
    before = snapshot(tmp_path)
    assert_refused(invoke("convert", model), tmp_path, before, "2 inputs", "a, b", "--input")


def test_unknown_input_name(tmp_path):
    model = save(two_input_model(), tmp_path / "two_inputs.onnx")
    before = snapshot(tmp_path)
    result = invoke("convert", model, "--input", "nope")
    assert_refused(result, tmp_path, before, "'nope'", "a, b")


def test_input_option_picks_one_input_without_probe(tmp_path):
    model = save(two_input_model(), tmp_path / "two_inputs.onnx")
    result = invoke("convert", model, "--input", "a", "--no-probe")
    assert result.exit_code == 0, result.output + repr(result.exception)
    split = onnx.load(str(tmp_path / "two_inputs.split.onnx"))
    assert [i.name for i in split.graph.input] == ["a"]


def test_input_option_picks_one_input_with_probe(tmp_path):
    model = save(two_input_model(), tmp_path / "two_inputs.onnx")
    result = invoke("convert", model, "--input", "a")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (tmp_path / "two_inputs.split.onnx").is_file()


def test_input_option_naming_an_unused_input(tmp_path):
    model = save(two_input_model(), tmp_path / "two_inputs.onnx")
    before = snapshot(tmp_path)
    assert_refused(invoke("convert", model, "--input", "b"), tmp_path, before, "'b'")


def test_second_input_used_by_the_graph(tmp_path):
    nodes = [helper.make_node("Add", ["a", "b"], ["y"], name="add_inputs")]
    model = save(vector_model(nodes, inputs=("a", "b")), tmp_path / "two_used.onnx")
    before = snapshot(tmp_path)
    result = invoke("convert", model, "--input", "a")
    assert_refused(result, tmp_path, before, "node 'add_inputs' (op Add)")


def two_output_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("MatMul", ["a", "W"], ["y"], name="matmul1"),
        helper.make_node("Relu", ["y"], ["z"], name="relu1"),
    ]
    return vector_model(nodes, outputs=("y", "z"), inits={"W": weight(4, 4)})


def test_two_outputs_without_output_name(tmp_path):
    model = save(two_output_model(), tmp_path / "two_outputs.onnx")
    before = snapshot(tmp_path)
    assert_refused(invoke("convert", model), tmp_path, before, "2 outputs", "y, z")


def test_two_outputs_message_suggests_output_name_option(tmp_path):
    model = save(two_output_model(), tmp_path / "two_outputs.onnx")
    result = invoke("convert", model)
    assert result.exit_code != 0
    assert "--output-name" in result.output


def test_two_outputs_with_output_name_converts(tmp_path):
    model = save(two_output_model(), tmp_path / "two_outputs.onnx")
    result = invoke("convert", model, "--output-name", "z")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "output: z -> logits, g, h" in result.output
    split = onnx.load(str(tmp_path / "two_outputs.split.onnx"))
    assert [o.name for o in split.graph.output] == ["logits", "g", "h"]
    assert {p.key: p.value for p in split.metadata_props}["onnxsplit.source_output"] == "z"


def test_unknown_output_name(tmp_path):
    model = save(two_output_model(), tmp_path / "two_outputs.onnx")
    before = snapshot(tmp_path)
    result = invoke("convert", model, "--output-name", "nope")
    assert_refused(result, tmp_path, before, "'nope'", "y, z")


def test_expose_unknown_tensor(tmp_path):
    model = tmp_path / "model.onnx"
    shutil.copy(MLP, model)
    before = snapshot(tmp_path)
    result = invoke("convert", model, "--expose", "no_such_tensor")
    assert_refused(result, tmp_path, before, "cannot expose 'no_such_tensor'")


# destinations ----------------------------------------------------------------------------
@pytest.fixture
def model_copy(tmp_path) -> Path:
    model = tmp_path / "model.onnx"
    shutil.copy(MLP, model)
    return model


def test_existing_output_needs_force(model_copy, tmp_path):
    out = tmp_path / "model.split.onnx"
    out.write_bytes(b"keep me")
    before = snapshot(tmp_path)
    result = invoke("convert", model_copy)
    assert_refused(result, tmp_path, before, "model.split.onnx", "already exists", "--force")
    assert out.read_bytes() == b"keep me"

    result = invoke("convert", model_copy, "--force")
    assert result.exit_code == 0, result.output + repr(result.exception)
    split = onnx.load(str(out))
    assert {p.key for p in split.metadata_props} >= {"onnxsplit.mode"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.split.onnx"]
    assert snapshot(tmp_path)["model.onnx"] == before["model.onnx"]


@pytest.mark.parametrize("force", [False, True])
def test_output_equal_to_input_is_refused(force, model_copy, tmp_path):
    (tmp_path / "sub").mkdir()
    before = snapshot(tmp_path)
    for target in (model_copy, tmp_path / "sub" / ".." / "model.onnx"):
        args = ["convert", model_copy, "-o", target] + (["--force"] if force else [])
        assert_refused(invoke(*args), tmp_path, before, "refusing to overwrite the input model")


def test_output_folder_does_not_exist(model_copy, tmp_path):
    before = snapshot(tmp_path)
    result = invoke("convert", model_copy, "-o", tmp_path / "no_such_dir" / "out.onnx")
    assert_refused(result, tmp_path, before, "no_such_dir", "does not exist")


def test_output_folder_not_writable(model_copy, tmp_path):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root: permission bits do not stop writing here")
        before = snapshot(tmp_path)
        result = invoke("convert", model_copy, "-o", folder / "out.onnx")
        assert_refused(result, tmp_path, before, "read_only", "not writable")
    finally:
        folder.chmod(0o700)


def test_output_folder_not_writable_by_access_check(model_copy, tmp_path, monkeypatch):
    """As root the permission bits are bypassed: simulate what os.access says for a user."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if Path(path).resolve() == folder.resolve() and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    before = snapshot(tmp_path)
    result = invoke("convert", model_copy, "-o", folder / "out.onnx")
    assert_refused(result, tmp_path, before, "read_only", "not writable")


# option values ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "option, value", [("--mode", "fancy"), ("--device", "tpu")], ids=["mode", "device"]
)
def test_unknown_option_values(option, value, model_copy, tmp_path):
    before = snapshot(tmp_path)
    result = invoke("convert", model_copy, option, value)
    assert_refused(result, tmp_path, before, f"Invalid value for '{option}'", value, code=2)


# verify ----------------------------------------------------------------------------------
def test_verify_second_model_not_written_by_onnxsplit(tmp_path):
    before = snapshot(tmp_path)
    result = invoke("verify", MLP, MLP)
    assert_refused(result, tmp_path, before, "not written by `onnxsplit convert`")


def test_verify_missing_split_model(tmp_path):
    before = snapshot(tmp_path)
    result = invoke("verify", MLP, tmp_path / "absent.split.onnx")
    assert_refused(result, tmp_path, before, "absent.split.onnx", "does not exist")


def test_verify_unreadable_inputs(model_copy, tmp_path):
    assert invoke("convert", model_copy, "--no-probe").exit_code == 0
    inputs = tmp_path / "inputs.npy"
    inputs.write_text("not numpy")
    before = snapshot(tmp_path)
    result = invoke("verify", model_copy, tmp_path / "model.split.onnx", "--inputs", inputs)
    assert_refused(result, tmp_path, before, "cannot read inputs", "inputs.npy")


def test_verify_inputs_of_the_wrong_shape(model_copy, tmp_path):
    assert invoke("convert", model_copy, "--no-probe").exit_code == 0
    inputs = tmp_path / "flat.npy"
    np.save(inputs, np.zeros((4, 64), np.float32))
    before = snapshot(tmp_path)
    result = invoke("verify", model_copy, tmp_path / "model.split.onnx", "--inputs", inputs)
    assert_refused(result, tmp_path, before, "flat.npy")

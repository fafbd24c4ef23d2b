"""Canonicalization of real export conventions: old IR, external data, opsets, BN, Softmax."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import conv_then, n, weights

from onnxsplit.canonicalize import canonicalize
from onnxsplit.convert import convert, convert_model, relative_error, run_original
from onnxsplit.runtime import make_session

SAMPLES = Path(__file__).parent.parent / "sample_models"
DIGITS = np.load(SAMPLES / "digits_test_inputs.npy")


def _check_exact(model: onnx.ModelProto, split: onnx.ModelProto, input_name="input") -> float:
    meta = {p.key: p.value for p in split.metadata_props}
    session = make_session(split.SerializeToString(), "cpu")
    worst = 0.0
    for batch in (1, 8):
        x = DIGITS[:batch]
        reference = run_original(model, input_name, meta["onnxsplit.source_output"], x, "cpu")
        worst = max(worst, relative_error(session.run(["logits"], {input_name: x})[0], reference))
    return worst


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("*.onnx")), ids=lambda p: p.stem)
def test_every_sample_export_converts_exactly(path: Path) -> None:
    model = onnx.load(path)
    assert _check_exact(model, convert_model(model).model) <= 1e-4


def test_initializers_listed_as_graph_inputs_old_ir() -> None:
    model = onnx.load(SAMPLES / "digits_cnn_op11_legacy.onnx")
    for init in model.graph.initializer:
        model.graph.input.append(
            onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
        )
    model.ir_version = 3
    assert len(model.graph.input) > 1
    result = convert_model(model)  # must not ask which input to explain
    assert result.input_name == "input"
    assert _check_exact(model, result.model) <= 1e-4


def test_external_data_model(tmp_path: Path) -> None:
    model = onnx.load(SAMPLES / "digits_resnet_op17_legacy.onnx")
    path = tmp_path / "resnet_external.onnx"
    onnx.save_model(
        model,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert (tmp_path / "weights.bin").exists()
    result = convert(path, tmp_path / "out.onnx", device="cpu")
    assert result.probe["relative_error"] <= 1e-4
    original = onnx.load(SAMPLES / "digits_resnet_op17_legacy.onnx")  # save_model moved `model`
    assert _check_exact(original, onnx.load(tmp_path / "out.onnx")) <= 1e-4


def test_opset9_export_is_converted_up() -> None:
    model = onnx.load(SAMPLES / "digits_mlp_op9_legacy.onnx")
    result = convert_model(model)
    assert result.source_opset == 9 and result.opset >= 13
    assert _check_exact(model, result.model) <= 1e-4


def test_batchnorm_folded_and_trailing_softmax_removed() -> None:
    model = conv_then(
        [
            n("BatchNormalization", ["a", "g", "b", "m", "v"], ["bn"]),
            n("Relu", ["bn"], ["r"]),
            n("GlobalAveragePool", ["r"], ["p"]),
            n("Flatten", ["p"], ["f"]),
            n("Softmax", ["f"], ["y"], axis=1),
        ],
        {"g": weights(4), "b": weights(4), "m": weights(4), "v": np.abs(weights(4)) + 0.5},
    )
    canonical = canonicalize(model)
    ops = [node.op for node in canonical.graph.nodes]
    assert "BatchNormalization" not in ops and "Softmax" not in ops
    assert canonical.folded_batchnorms == 1 and canonical.removed_softmax
    result = convert_model(model)
    x = np.random.default_rng(0).standard_normal([3, 3, 6, 6]).astype(np.float32)
    reference = run_original(model, "x", "f", x, "cpu")
    logits = make_session(result.model.SerializeToString(), "cpu").run(["logits"], {"x": x})[0]
    assert relative_error(logits, reference) <= 1e-5


def test_canonicalize_does_not_modify_its_argument() -> None:
    model = onnx.load(SAMPLES / "digits_cnn_op11_legacy.onnx")
    before = model.SerializeToString()
    convert_model(model)
    assert model.SerializeToString() == before


def test_zero_pads_fold_into_the_convs_that_read_them() -> None:
    """A TF-"SAME" Pad (zeros on the spatial axes only) read only by a Conv becomes the
    Conv's pads; a reflect Pad, and a zero Pad that a Relu also reads, stay."""
    pads = np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64)
    model = conv_then(
        [
            n("Pad", ["a", "p"], ["ap"]),
            n("Conv", ["ap", "W2"], ["c"], strides=[2, 2]),
            n("Pad", ["c", "p"], ["cp"], mode="reflect"),
            n("Conv", ["cp", "W3"], ["d"]),
            n("Pad", ["d", "p"], ["dp"]),
            n("Conv", ["dp", "W3"], ["e"], pads=[1, 1, 0, 0]),
            n("Relu", ["dp"], ["r"]),
            n("Add", ["e", "r"], ["y"]),
        ],
        {"p": pads, "W2": weights(4, 4, 3, 3), "W3": weights(4, 4, 2, 2)},
        size=9,
    )
    canonical = canonicalize(model)
    convs = [node for node in canonical.graph.nodes if node.op == "Conv"]
    assert [node.op for node in canonical.graph.nodes].count("Pad") == 2
    assert list(convs[1].attrs["pads"]) == [0, 0, 1, 1]  # the folded one
    result = convert_model(model)
    x = np.random.default_rng(1).standard_normal([2, 3, 9, 9]).astype(np.float32)
    reference = run_original(model, "x", "y", x, "cpu")
    logits = make_session(result.model.SerializeToString(), "cpu").run(["logits"], {"x": x})[0]
    assert relative_error(logits, reference) <= 1e-5

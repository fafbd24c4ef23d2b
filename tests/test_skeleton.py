"""Weightless shape inference / checking and the lean export (issue 7: bounded memory)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import numpy_helper, shape_inference

from onnxsplit import skeleton
from onnxsplit.canonicalize import canonicalize
from onnxsplit.emit import export_lean
from onnxsplit.memory import return_large_blocks_to_os
from onnxsplit.split.driver import split_graph
from onnxsplit.stabilize import get_stabilizer

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
RESNET = SAMPLES / "digits_resnet_op17_legacy.onnx"


def test_skeleton_drops_only_large_weights():
    model = onnx.load(str(RESNET))
    bare = skeleton.skeleton(model)
    assert [n.name for n in bare.graph.node] == [n.name for n in model.graph.node]
    large = [t for t in model.graph.initializer if skeleton._large(t)]
    assert large, "the sample model should have weights above the threshold"
    stubs = {t.name: t for t in bare.graph.initializer}
    for tensor in model.graph.initializer:
        stub = stubs[tensor.name]
        assert list(stub.dims) == list(tensor.dims) and stub.data_type == tensor.data_type
        if skeleton._large(tensor):
            assert stub.data_location == onnx.TensorProto.EXTERNAL and not stub.raw_data
        else:
            np.testing.assert_array_equal(
                numpy_helper.to_array(stub), numpy_helper.to_array(tensor)
            )
    assert bare.ByteSize() < model.ByteSize() / 2


def test_weightless_inference_matches_full_inference():
    model = onnx.load(str(RESNET))
    full = shape_inference.infer_shapes(model, data_prop=True)
    lean = skeleton.infer_shapes(onnx.load(str(RESNET)), data_prop=True)

    def shapes(m):
        return {v.name: str(v.type) for v in [*m.graph.value_info, *m.graph.output]}

    assert shapes(lean) == shapes(full)
    assert len(lean.graph.value_info) > 10


def test_weightless_checker_still_rejects_broken_graphs():
    model = onnx.load(str(RESNET))
    skeleton.check_model(model)  # a valid model passes
    broken = onnx.load(str(RESNET))
    broken.graph.node[3].input[0] = "no_such_tensor"
    with pytest.raises(onnx.checker.ValidationError, match="no_such_tensor"):
        skeleton.check_model(broken)
    wrong = onnx.load(str(RESNET))
    conv = next(n for n in wrong.graph.node if n.op_type == "Conv")
    conv.attribute.append(onnx.helper.make_attribute("kernel_shape", [5, 5, 5]))
    with pytest.raises(onnx.checker.ValidationError):
        skeleton.check_model(wrong)


def test_lean_export_equals_graphsurgeon_export():
    canonical = canonicalize(onnx.load(str(RESNET)))
    split = split_graph(canonical, get_stabilizer("normalized"), fast=True)
    reference = gs.export_onnx(split.graph)
    lean = export_lean(split.graph)
    assert [n.name for n in lean.graph.node] == [n.name for n in reference.graph.node]
    ref = {t.name: numpy_helper.to_array(t) for t in reference.graph.initializer}
    got = {t.name: numpy_helper.to_array(t) for t in lean.graph.initializer}
    assert ref.keys() == got.keys()
    for name, value in ref.items():
        assert got[name].dtype == value.dtype
        np.testing.assert_array_equal(got[name], value)
    # the graph's constants are left as they were
    for tensor in split.graph.tensors().values():
        if isinstance(tensor, gs.Constant):
            assert tensor.values.size == np.prod(tensor.shape)


def test_mmap_threshold_setting_applies_on_linux():
    assert return_large_blocks_to_os() == sys_is_glibc_linux()


def sys_is_glibc_linux() -> bool:
    import platform
    import sys

    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

"""Weightless views of a model for shape inference and the checker.

`onnx.shape_inference.infer_shapes` and `onnx.checker.check_model(full_check=True)` serialize
the whole model, parse it again in C++ and (inference) hand back a full copy: four copies of
every weight for an answer that depends on none of the large ones. A *skeleton* keeps the
graph, the value infos and every small initializer (shape tensors, scalars: data propagation
needs their values) but replaces each large initializer by a stub with the same name, type and
dims whose data is marked as external, so the weights are never copied.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
from onnx import shape_inference

# initializers with more elements than this lose their data in a skeleton
SMALL_ELEMENTS = 4096
STUB_LOCATION = "weights.bin"


def _stub(tensor: onnx.TensorProto) -> onnx.TensorProto:
    stub = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
    stub.data_location = onnx.TensorProto.EXTERNAL
    entry = stub.external_data.add()
    entry.key, entry.value = "location", STUB_LOCATION
    return stub


def _large(tensor: onnx.TensorProto) -> bool:
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count > SMALL_ELEMENTS


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose large initializers are data-less stubs (see module doc)."""
    graph = model.graph
    out = onnx.ModelProto()
    for name in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(out, name, getattr(model, name))
    out.opset_import.extend(model.opset_import)
    out.metadata_props.extend(model.metadata_props)
    out.functions.extend(model.functions)
    out.graph.name = graph.name
    out.graph.node.extend(graph.node)
    out.graph.input.extend(graph.input)
    out.graph.output.extend(graph.output)
    out.graph.value_info.extend(graph.value_info)
    out.graph.sparse_initializer.extend(graph.sparse_initializer)
    out.graph.initializer.extend(_stub(t) if _large(t) else t for t in graph.initializer)
    return out


def infer_shapes(model: onnx.ModelProto, **kwargs) -> onnx.ModelProto:
    """`onnx.shape_inference.infer_shapes` on a skeleton; the inferred value infos and output
    types are written back into `model` (modified in place and returned)."""
    inferred = shape_inference.infer_shapes(skeleton(model), **kwargs)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)
    return model


def check_model(model: onnx.ModelProto) -> None:
    """The full ONNX checker (with strict shape inference) on a skeleton of `model`.

    Large initializers are checked for name, type and dims, not for their byte count; every
    emitted initializer comes from a numpy array, whose byte count matches its dims. The
    checker insists that external data files exist, so the skeleton is checked from a
    temporary folder holding it and an empty stand-in for the weights.
    """
    with tempfile.TemporaryDirectory(prefix="onnxsplit-check-") as folder:
        path = Path(folder) / "skeleton.onnx"
        (Path(folder) / STUB_LOCATION).touch()
        path.write_bytes(skeleton(model).SerializeToString())
        onnx.checker.check_model(str(path), full_check=True)

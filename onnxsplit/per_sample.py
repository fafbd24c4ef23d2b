"""Run a compiled model one sample at a time inside the graph (a Scan over the batch axis).

A compiled attribution graph keeps many activations of the forward pass alive for its
backward passes and makes many elementwise passes over them. On a CPU these passes are
memory-bound: at batch 16 EfficientNet-Lite0's first-stage tensors are 77 MB each and stream
from main memory, at batch 1 they stay in the cache. `scan_over_batch` wraps the graph in a
Scan whose body is the same graph at batch 1, so onnxruntime runs the whole graph per sample:
the same numbers, one model for any batch size, the cache behaviour (and the peak memory) of
batch 1. Worth it where one sample's tensors are large; for a small model the per-run overhead
of each iteration dominates (`worth_scanning`).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxsplit.errors import OnnxSplitError
from onnxsplit.ops import WEIGHTED_ALL

SCAN_PREFIX = "per_sample/"
MIN_SAMPLE_BYTES = 1 << 20  # the largest activation of one sample, below which Scan costs more


def scan_over_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its graph as the body of a Scan over axis 0 of every input and output.

    Every graph input and output must have the batch as its first axis and every sample must be
    computed independently of the others (true of every graph `attach_methods` emits: no op
    mixes samples). The initializers move into the body: onnxruntime folds, fuses and
    pre-packs a subgraph's own constants, not the outer graph's (with the weights outside,
    SplitLRP on EfficientNet-Lite0 ran 1.9x slower)."""
    graph = model.graph
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims:
            raise OnnxSplitError(
                f"cannot run '{value.name}' per sample: it has no batch axis (rank 0)"
            )
    rename = {v.name: SCAN_PREFIX + v.name for v in list(graph.input) + list(graph.output)}
    axes = SCAN_PREFIX + "axes0"
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)

    def batch_axis(op: str, source: str, out: str) -> onnx.NodeProto:
        """Unsqueeze / Squeeze of axis 0 (axes an input from opset 13, an attribute before)."""
        if opset >= 13:
            return helper.make_node(op, [source, axes], [out])
        return helper.make_node(op, [source], [out], axes=[0])

    body_nodes = [
        batch_axis("Unsqueeze", SCAN_PREFIX + "in/" + v.name, rename[v.name]) for v in graph.input
    ]
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [rename.get(name, name) for name in node.input]
        copy.output[:] = [rename.get(name, name) for name in node.output]
        body_nodes.append(copy)
    body_nodes += [
        batch_axis("Squeeze", rename[v.name], SCAN_PREFIX + "out/" + v.name) for v in graph.output
    ]
    body = helper.make_graph(
        body_nodes,
        "per_sample",
        [_sample_info(v, SCAN_PREFIX + "in/" + v.name) for v in graph.input],
        [_sample_info(v, SCAN_PREFIX + "out/" + v.name) for v in graph.output],
        [*graph.initializer, numpy_helper.from_array(np.array([0], np.int64), axes)],
    )  # no value_info: inside, the batch is 1, and onnxruntime infers the static shapes
    scan = helper.make_node(
        "Scan",
        [v.name for v in graph.input],
        [v.name for v in graph.output],
        name=SCAN_PREFIX + "Scan",
        num_scan_inputs=len(graph.input),
        body=body,
    )
    outer = helper.make_graph([scan], graph.name, list(graph.input), list(graph.output))
    wrapped = helper.make_model(
        outer, opset_imports=list(model.opset_import), ir_version=model.ir_version
    )
    wrapped.producer_name = model.producer_name
    wrapped.metadata_props.extend(model.metadata_props)
    entry = wrapped.metadata_props.add()
    entry.key, entry.value = "onnxsplit.per_sample", "scan"
    return wrapped


def _sample_info(value: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    """The value info of one sample of `value` (its first axis dropped)."""
    tensor = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim][1:]
    return helper.make_tensor_value_info(name, tensor.elem_type, dims)


def largest_sample_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the largest float activation of one sample with a fully static shape (0 where
    shape inference gives none, or fails: a model over protobuf's 2 GB, say)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except (onnx.shape_inference.InferenceError, ValueError, RuntimeError):
        return 0
    largest = 0
    for value in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = value.type.tensor_type.shape.dim
        sizes = [d.dim_value for d in dims[1:]]
        if len(dims) > 1 and all(s > 0 for s in sizes):
            largest = max(largest, 4 * int(np.prod(sizes)))
    return largest


def _maps(model: onnx.ModelProto) -> int:
    return sum(n.op_type in WEIGHTED_ALL for n in model.graph.node)


def worth_scanning(compiled: onnx.ModelProto, source: onnx.ModelProto) -> bool:
    """Whether running `compiled` per sample pays on a CPU: one sample's activations are large
    (>= 1 MiB) and the graph holds a backward pass through the network (at least twice the
    source's convolutions and matrix products), i.e. it keeps the forward's activations alive
    and passes over them again. A CAM's graph (the forward and the head's backward) gains
    nothing (EfficientNet-Lite0, batch 16: SplitCAM 9.9 vs 10.2 ms/img)."""
    return _maps(compiled) >= 2 * _maps(source) and largest_sample_bytes(source) >= MIN_SAMPLE_BYTES

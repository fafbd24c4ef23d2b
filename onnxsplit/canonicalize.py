"""Canonicalize a real-world export into the small, regular graph the split rules expect.

Steps, in order: drop initializers listed as graph inputs (old IR), inline local functions,
convert opsets below 13 up to 13, infer shapes, fold constants (ConstantOfShape weights,
Identity/Transpose chains on weights, static Shape/Gather arithmetic), turn Dropout into
Identity, fold BatchNormalization into the preceding Conv, and remove a trailing
Softmax/LogSoftmax so that the logits are explained.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import inliner, version_converter

from onnxsplit import skeleton
from onnxsplit.errors import OnnxSplitError
from onnxsplit.ops import QUANTIZED, TRAILING_NORMALIZERS

MIN_OPSET = 13


@dataclass
class Canonical:
    """The canonical graph plus what canonicalization changed."""

    graph: gs.Graph
    opset: int
    source_opset: int
    removed_softmax: list[str] = field(default_factory=list)
    folded_batchnorms: int = 0
    original_outputs: list[str] = field(default_factory=list)


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise OnnxSplitError("the model declares no default-domain opset")


def canonicalize(model: onnx.ModelProto) -> Canonical:
    """Return a canonical copy of `model`; the argument is not modified."""
    model = _copy(model)
    source_opset = default_opset(model)
    _drop_initializer_inputs(model)
    if model.functions:
        model = inliner.inline_local_functions(model)
    if source_opset < 7:
        _per_channel_prelu_slopes(model)
    if source_opset < MIN_OPSET:
        try:
            model = version_converter.convert_version(model, MIN_OPSET)
        except Exception as exc:
            raise OnnxSplitError(
                f"could not convert the model from opset {source_opset} to opset {MIN_OPSET}: {exc}"
            ) from None
    opset = default_opset(model)
    model = _infer_shapes(model)
    original_outputs = [o.name for o in model.graph.output]
    _silence_graphsurgeon()
    graph = gs.import_onnx(model)
    try:
        graph.toposort()
    except Exception as exc:
        raise OnnxSplitError(
            f"the graph cannot be ordered (does it contain a cycle?): {exc}"
        ) from None
    _dropout_to_identity(graph)
    graph.fold_constants(error_ok=True).cleanup()
    if _fold_weight_dequantize(graph):
        graph.fold_constants(error_ok=True).cleanup()
    _refuse_quantized(graph)
    folded = _fold_batchnorm_into_conv(graph)
    removed = _remove_trailing_normalizers(graph)
    graph = _reinfer_shapes(graph.cleanup().toposort(), model)
    # shapes known now (e.g. TF-"SAME" pads computed from Shape(activation)) fold in a second pass
    graph.fold_constants(error_ok=True).cleanup().toposort()
    if _fold_zero_pads_into_convs(graph):
        graph.cleanup().toposort()
    _batch_kept_by_reshapes(graph)
    graph = _reinfer_shapes(graph, model, fresh=True)
    for _ in range(3):  # each pass lets inference carry the new ranks one step further
        if not _ranks_from_reshape_targets(graph):
            break
        graph = _reinfer_shapes(graph, model)
    return Canonical(
        graph=graph,
        opset=opset,
        source_opset=source_opset,
        removed_softmax=removed,
        folded_batchnorms=folded,
        original_outputs=original_outputs,
    )


def _fold_weight_dequantize(graph: gs.Graph) -> int:
    """DequantizeLinear of constants (weight-only quantization) as float constants:
    (q - zero_point) * scale, per tensor or per axis (graphsurgeon's folding keeps Q/DQ nodes).
    Returns the number folded."""
    folded = 0
    for node in graph.nodes:
        if node.op != "DequantizeLinear" or node.attrs.get("block_size", 0):
            continue
        values = [_constant(t) if t.name else None for t in node.inputs]
        if len(values) < 2 or values[0] is None or values[1] is None:
            continue
        if len(values) > 2 and node.inputs[2].name and values[2] is None:
            continue
        q, scale = values[0].astype(np.float64), values[1].astype(np.float64)
        zero = values[2].astype(np.float64) if len(values) > 2 and values[2] is not None else 0.0
        if scale.ndim == 1 and scale.size > 1:  # per axis
            axis = int(node.attrs.get("axis", 1)) % q.ndim
            shape = [1] * q.ndim
            shape[axis] = scale.size
            scale = scale.reshape(shape)
            zero = np.reshape(zero, shape) if np.ndim(zero) else zero
        result = ((q - zero) * scale).astype(values[1].dtype)
        out = node.outputs[0]
        constant = gs.Constant(f"{out.name}_dequantized", result)
        for reader in list(out.outputs):
            for i, tensor in enumerate(reader.inputs):
                if tensor is out:
                    reader.inputs[i] = constant
        graph.outputs = [constant if t is out else t for t in graph.outputs]
        node.outputs.clear()
        folded += 1
    return folded


def _refuse_quantized(graph: gs.Graph) -> None:
    """One error naming the quantization nodes left after constant folding."""
    nodes = [n for n in graph.nodes if n.op in QUANTIZED]
    if nodes:
        listed = ", ".join(f"'{n.name or '<unnamed>'}' ({n.op})" for n in nodes[:6])
        more = f" and {len(nodes) - 6} more" if len(nodes) > 6 else ""
        raise OnnxSplitError(
            f"the model is quantized: {listed}{more} quantize activations, whose split and "
            "gradients are a step function (zero almost everywhere). Explain the float model "
            "the quantized one was made from (weight-only DequantizeLinear of initializers is "
            "accepted: it folds into float weights)"
        )


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    clone = onnx.ModelProto()
    clone.CopyFrom(model)
    return clone


def _per_channel_prelu_slopes(model: onnx.ModelProto) -> None:
    """PRelu before opset 7 applies a slope of shape [C] per channel (axis 1); from opset 7 on
    the slope broadcasts from the last axis, so such slopes become [C, 1, ..., 1] before the
    opset upgrade (which leaves them as they are)."""
    graph = model.graph
    slopes = {t.name: t for t in graph.initializer}
    prelus = [n for n in graph.node if n.op_type == "PRelu" and n.input[1] in slopes]
    if not prelus:
        return
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton.skeleton(model)).graph
    except Exception:
        inferred = graph
    ranks = {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in [*inferred.input, *inferred.value_info, *inferred.output]
        if v.type.tensor_type.HasField("shape")
    }
    for node in prelus:
        slope, rank = slopes[node.input[1]], ranks.get(node.input[0], 0)
        if len(slope.dims) == 1 and slope.dims[0] > 1 and rank >= 3:
            slope.dims[:] = [slope.dims[0]] + [1] * (rank - 2)


def _ranks_from_reshape_targets(graph: gs.Graph) -> bool:
    """Give a Reshape output of unknown shape the rank its target's length says.

    onnx's shape inference gives up on a Reshape whose target is computed at run time (e.g. a
    channel shuffle's Concat(Shape(x)[0], g, C/g, H, W) under a dynamic batch), although the
    target's static length is the output's rank; rank-dependent rules (a standalone
    BatchNormalization) need it. Returns whether anything changed.
    """
    changed = False
    for node in graph.nodes:
        output = node.outputs[0] if node.outputs else None
        if node.op != "Reshape" or output is None or output.shape is not None:
            continue
        target = node.inputs[1].shape
        if target is not None and len(target) == 1 and isinstance(target[0], int):
            output.shape = [f"{output.name}_dim{i}" for i in range(target[0])]
            output.dtype = node.inputs[0].dtype
            changed = True
    return changed


def _silence_graphsurgeon() -> None:
    gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.CRITICAL


def _drop_initializer_inputs(model: onnx.ModelProto) -> None:
    initializers = {t.name for t in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in initializers]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    model.ir_version = max(model.ir_version, 4)  # IR < 4 requires initializers as inputs


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return skeleton.infer_shapes(model, data_prop=True)
    except Exception:
        return model  # shapes are a convenience; rules that need them say so


def _reinfer_shapes(graph: gs.Graph, model: onnx.ModelProto, fresh: bool = False) -> gs.Graph:
    """Infer shapes again once constants are folded (reshape targets are then known).

    fresh: from scratch, since an earlier pass's entries would stick, e.g. a batch dimension
    that only had a fresh 'unk__' name while a Pad's pads were still computed from Shape(x);
    with the input's batch symbol on every activation, onnxruntime can prove operands
    equal-shaped. (Not fresh: keep the ranks `_ranks_from_reshape_targets` wrote.)"""
    folded = gs.export_onnx(graph)
    folded.ir_version = model.ir_version
    if fresh:
        clean = onnx.ModelProto()
        clean.CopyFrom(folded)
        del clean.graph.value_info[:]
        try:
            return gs.import_onnx(skeleton.infer_shapes(clean, data_prop=True))
        except Exception:
            pass
    return gs.import_onnx(_infer_shapes(folded))


def _dropout_to_identity(graph: gs.Graph) -> None:
    for node in graph.nodes:
        if node.op == "Dropout":
            node.op = "Identity"
            node.attrs = {}
            node.inputs = node.inputs[:1]
            node.outputs = node.outputs[:1]


def _constant(tensor: gs.Tensor | None) -> np.ndarray | None:
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    return None


def _fold_batchnorm_into_conv(graph: gs.Graph) -> int:
    folded = 0
    graph_outputs = {id(t) for t in graph.outputs}
    for bn in list(graph.nodes):
        if bn.op != "BatchNormalization" or not bn.inputs[0].inputs:
            continue
        conv = bn.inputs[0].inputs[0]
        params = [_constant(t) for t in bn.inputs[1:5]]
        if (
            conv.op != "Conv"
            or any(p is None for p in params)
            or len(bn.inputs[0].outputs) != 1
            or id(bn.inputs[0]) in graph_outputs
            or _constant(conv.inputs[1]) is None
            or (len(conv.inputs) > 2 and _constant(conv.inputs[2]) is None)
        ):
            continue
        scale, shift, mean, var = (p.astype(np.float64) for p in params)
        eps = float(bn.attrs.get("epsilon", 1e-5))
        factor = scale / np.sqrt(var + eps)
        weight = _constant(conv.inputs[1])
        bias = _constant(conv.inputs[2]) if len(conv.inputs) > 2 else np.zeros(weight.shape[0])
        dtype = weight.dtype
        new_weight = weight.astype(np.float64) * factor.reshape(-1, *([1] * (weight.ndim - 1)))
        new_bias = (bias.astype(np.float64) - mean) * factor + shift
        conv.inputs[1] = gs.Constant(f"{conv.name}_W_bnfold", new_weight.astype(dtype))
        bias_const = gs.Constant(f"{conv.name}_B_bnfold", new_bias.astype(dtype))
        if len(conv.inputs) > 2:
            conv.inputs[2] = bias_const
        else:
            conv.inputs.append(bias_const)
        conv.outputs = [bn.outputs[0]]
        bn.outputs = []
        folded += 1
    return folded


def _fold_zero_pads_into_convs(graph: gs.Graph) -> int:
    """Zero Pads of the spatial axes read only by Convs (TF-"SAME" exports) become the
    Convs' own pads: the same numbers, and no Pad / Slice pair in each split and backward
    pass (onnxruntime fuses the pair in a forward pass, not in our graphs)."""
    folded = 0
    graph_outputs = {id(t) for t in graph.outputs}
    for pad in list(graph.nodes):
        if pad.op != "Pad" or _attr_text(pad, "mode", "constant") != "constant":
            continue
        x, out = pad.inputs[0], pad.outputs[0]
        pads = _constant(pad.inputs[1]) if len(pad.inputs) > 1 else None
        value = _constant(pad.inputs[2]) if len(pad.inputs) > 2 and pad.inputs[2].name else None
        readers = list(out.outputs)
        if (
            pads is None
            or (len(pad.inputs) > 2 and pad.inputs[2].name and (value is None or np.any(value)))
            or (len(pad.inputs) > 3 and pad.inputs[3].name)  # axes (opset 18)
            or x.shape is None
            or pads.size != 2 * len(x.shape)
            or len(x.shape) < 3
            or np.any(pads < 0)
            or np.any(pads.reshape(2, -1)[:, :2])  # batch or channel padded
            or id(out) in graph_outputs
            or not readers
            or any(
                n.op != "Conv"
                or n.inputs[0] is not out
                or _attr_text(n, "auto_pad", "NOTSET") != "NOTSET"
                for n in readers
            )
        ):
            continue
        spatial = len(x.shape) - 2
        begin, end = pads.reshape(2, -1)[:, 2:]
        for conv in readers:
            own = list(conv.attrs.get("pads", [0] * (2 * spatial)))
            conv.attrs["pads"] = [int(a) + int(b) for a, b in zip(own, [*begin, *end], strict=True)]
            conv.inputs[0] = x
        pad.outputs.clear()
        folded += 1
    return folded


def _batch_kept_by_reshapes(graph: gs.Graph) -> int:
    """Reshape(x, [-1, d1, ...]) with x = [batch, c1, ...] and d1 * ... = c1 * ... becomes
    Reshape(x, [0, d1, ...]) with allowzero 0 (every d_i > 0): the same tensor, but shape
    inference keeps the batch symbol instead of a fresh unknown (the flatten of torch.onnx's
    dynamo exporter)."""
    changed = 0
    for node in graph.nodes:
        if node.op != "Reshape":
            continue
        x, target = node.inputs[0], _constant(node.inputs[1])
        if x.shape is None or target is None or target.ndim != 1 or target.size < 2:
            continue
        rest, dims = [int(v) for v in target[1:]], x.shape
        if (
            int(target[0]) != -1
            or any(v <= 0 for v in rest)
            or not isinstance(dims[0], str)
            or any(not isinstance(d, int | np.integer) for d in dims[1:])
            or int(np.prod(rest)) != int(np.prod([int(d) for d in dims[1:]]))
        ):
            continue
        node.inputs[1] = gs.Constant(f"{node.name}_shape_batch", np.asarray([0, *rest], np.int64))
        if "allowzero" in node.attrs:  # no other 0 in the target: allowzero changes nothing
            node.attrs["allowzero"] = 0
        changed += 1
    return changed


def _attr_text(node: gs.Node, name: str, default: str) -> str:
    value = node.attrs.get(name, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def _remove_trailing_normalizers(graph: gs.Graph) -> list[str]:
    removed = []
    for index, output in enumerate(graph.outputs):
        producers = output.inputs
        if len(producers) == 1 and producers[0].op in TRAILING_NORMALIZERS:
            node = producers[0]
            logits = node.inputs[0]
            graph.outputs[index] = logits
            node.outputs = []
            removed.append(f"{node.name or node.op} ({node.op})")
        elif _is_wrapped_softmax(output):
            # opset < 13 Softmax on rank > 2, as version_converter rewrites it:
            # Reshape(Softmax(Flatten(x)), Shape(x)) -> x
            reshape = producers[0]
            softmax = reshape.inputs[0].inputs[0]
            flatten = softmax.inputs[0].inputs[0]
            graph.outputs[index] = flatten.inputs[0]
            reshape.outputs = []
            removed.append(f"{softmax.name or softmax.op} ({softmax.op}, opset < 13 form)")
    return removed


def _is_wrapped_softmax(output: gs.Tensor) -> bool:
    try:
        reshape = output.inputs[0]
        softmax = reshape.inputs[0].inputs[0]
        flatten = softmax.inputs[0].inputs[0]
    except (IndexError, AttributeError):
        return False
    return (
        reshape.op == "Reshape" and softmax.op in TRAILING_NORMALIZERS and flatten.op == "Flatten"
    )

"""float64 graphs for the raw split, where float32 loses f = g - h to cancellation.

The raw split's streams grow with depth (|W| instead of W at every layer) while f stays of the
size of the logits, so f = g - h keeps about log10(max|f| / max|g|) + 7 significant digits in
float32: none at all on a 60-layer MLP, 2-3 on a 3-conv CNN. In float64 the same graph keeps
9 more digits.

    to_float64(model)       the model computed in float64: float initializers, Constant and
                            ConstantOfShape values, Cast-to-float and every declared float
                            type become double (compile it like any model)
    finish_float64(model)   a compiled float64 model made runnable on onnxruntime's CPU
                            provider, which has no float64 kernel for Conv, ConvTranspose,
                            AveragePool, GlobalAveragePool, GlobalMaxPool, Resize (measured,
                            onnxruntime 1.31): each of the first five is rewritten into ops
                            that have one (Pad, Slice, MatMul, Reshape, Transpose, Add, Mul,
                            ReduceMean, ReduceMax; the same numbers up to float64 rounding);
                            the data input becomes float32 again and is cast inside the graph.

Resize/Upsample have no float64 kernel and no exact rewrite here: such models are refused.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

from onnxsplit.errors import OnnxSplitError

FLOAT, DOUBLE = TensorProto.FLOAT, TensorProto.DOUBLE
NO_FLOAT64 = ("Resize", "Upsample")  # no float64 kernel on the CPU and no rewrite here
LOWERED = ("Conv", "ConvTranspose", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` that computes in float64 (see the module docstring)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    refused = sorted({n.op_type for n in graph.node if n.op_type in NO_FLOAT64})
    if refused:
        raise OnnxSplitError(
            f"float64: the model uses {', '.join(refused)}, which onnxruntime's CPU provider "
            "cannot run in float64; use the float32 split"
        )
    for i, tensor in enumerate(graph.initializer):
        if tensor.data_type == FLOAT:
            array = numpy_helper.to_array(tensor).astype(np.float64)
            graph.initializer[i].CopyFrom(numpy_helper.from_array(array, tensor.name))
    for node in graph.node:
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == FLOAT:
                    attr.i = DOUBLE
        if node.op_type in ("Constant", "ConstantOfShape"):
            _constant_to_double(node)
    for value in [*graph.input, *graph.output, *graph.value_info]:
        kind = value.type.tensor_type
        if kind.elem_type == FLOAT:
            kind.elem_type = DOUBLE
    return model


def _constant_to_double(node: onnx.NodeProto) -> None:
    for i, attr in enumerate(list(node.attribute)):
        if attr.name == "value" and attr.t.data_type == FLOAT:
            array = numpy_helper.to_array(attr.t).astype(np.float64)
            attr.t.CopyFrom(numpy_helper.from_array(array, attr.t.name))
        elif attr.name in ("value_float", "value_floats"):
            values = np.asarray(attr.f if attr.name == "value_float" else list(attr.floats))
            del node.attribute[i]
            node.attribute.append(
                helper.make_attribute("value", numpy_helper.from_array(values.astype(np.float64)))
            )


def finish_float64(
    model: onnx.ModelProto, input_name: str, float32_outputs: tuple[str, ...] = ()
) -> onnx.ModelProto:
    """`model` (compiled in float64) with the ops onnxruntime's CPU lacks in float64 rewritten,
    the data input `input_name` declared float32 (cast to float64 inside) and the outputs named
    in `float32_outputs` cast back to float32."""
    model = lower_float64(model)
    graph = model.graph
    inner = _fresh(graph, f"{input_name}__float64")
    for node in graph.node:
        node.input[:] = [inner if t == input_name else t for t in node.input]
        node.output[:] = [inner if t == input_name else t for t in node.output]
    for value in graph.input:
        if value.name == input_name:
            value.type.tensor_type.elem_type = FLOAT
    nodes = [helper.make_node("Cast", [input_name], [inner], to=DOUBLE, name=inner + "/cast")]
    for value in graph.output:
        if value.name in float32_outputs and value.type.tensor_type.elem_type == DOUBLE:
            wide = _fresh(graph, f"{value.name}__float64")
            for node in graph.node:
                node.output[:] = [wide if t == value.name else t for t in node.output]
                node.input[:] = [wide if t == value.name else t for t in node.input]
            graph.node.append(helper.make_node("Cast", [wide], [value.name], to=FLOAT))
            value.type.tensor_type.elem_type = FLOAT
    for i, node in enumerate(nodes):
        graph.node.insert(i, node)
    del graph.value_info[:]
    try:  # declared types for every tensor (readers such as verify look them up)
        return shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        return model


def lower_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite Conv, ConvTranspose, AveragePool, GlobalAveragePool and GlobalMaxPool into ops
    that onnxruntime's CPU provider runs in float64 (static spatial shapes needed)."""
    if not any(n.op_type in LOWERED for n in model.graph.node):
        return model
    try:
        inferred = shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:
        raise OnnxSplitError(f"float64: shape inference failed ({exc})") from None
    graph = inferred.graph
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    lower = _Lowering(graph, shapes, constants, opset)
    out = []
    for node in graph.node:
        out.extend(lower.node(node) if node.op_type in LOWERED else [node])
    del graph.node[:]
    graph.node.extend(out)
    graph.initializer.extend(lower.initializers)
    del graph.value_info[:]
    return inferred


def _fresh(graph: onnx.GraphProto, candidate: str) -> str:
    used = {t for n in graph.node for t in [*n.input, *n.output]}
    used |= {v.name for v in [*graph.input, *graph.output, *graph.initializer]}
    name, k = candidate, 0
    while name in used:
        k += 1
        name = f"{candidate}_{k}"
    return name


class _Lowering:
    def __init__(self, graph, shapes, constants, opset):
        self.shapes = shapes
        self.constants = constants
        self.opset = opset
        self.initializers: list[onnx.TensorProto] = []
        self.used = {t for n in graph.node for t in [*n.input, *n.output]}
        self.used |= {v.name for v in [*graph.input, *graph.output, *graph.initializer]}
        self.nodes: list[onnx.NodeProto] = []
        self.scope = ""

    # -- plumbing -----------------------------------------------------------------------------
    def name(self, hint: str) -> str:
        base = f"{self.scope}/{hint}"
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name

    def const(self, array, hint="c") -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type, inputs, output=None, **attrs) -> str:
        out = output or self.name(op_type.lower())
        self.nodes.append(
            helper.make_node(op_type, inputs, [out], name=self.name(op_type), **attrs)
        )
        return out

    def spatial(self, tensor: str, what: str) -> list[int]:
        shape = self.shapes.get(tensor)
        if shape is None or any(d is None for d in shape[1:]):
            raise OnnxSplitError(
                f"float64: {what} needs static channel and spatial sizes, '{tensor}' has "
                f"{shape}; use the float32 split"
            )
        return list(shape)

    def pad(self, x: str, begin: list[int], end: list[int], rank_before: int, after: int = 0):
        """Zero-pad the spatial axes (axes rank_before .. rank_before + len(begin) - 1 of a
        tensor with `after` axes behind them); negative pads crop."""
        if not any(begin) and not any(end):
            return x
        lead, trail = [0] * rank_before, [0] * after
        pads = lead + list(begin) + trail + lead + list(end) + trail
        return self.op("Pad", [x, self.const(np.asarray(pads, np.int64), "pads")])

    def window(self, x: str, axes: list[int], starts, steps, counts) -> str:
        ends = [s + (c - 1) * t + 1 for s, c, t in zip(starts, counts, steps, strict=True)]
        return self.op(
            "Slice",
            [
                x,
                self.const(np.asarray(starts, np.int64), "starts"),
                self.const(np.asarray(ends, np.int64), "ends"),
                self.const(np.asarray(axes, np.int64), "axes"),
                self.const(np.asarray(steps, np.int64), "steps"),
            ],
        )

    def total(self, terms: list[str]) -> str:
        return terms[0] if len(terms) == 1 else self.op("Sum", terms)

    # -- the rewrites -------------------------------------------------------------------------
    def node(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        self.nodes = []
        self.scope = f"float64/{node.name or node.op_type}"
        getattr(self, "_" + node.op_type.lower())(node)
        return self.nodes

    def _attrs(self, node):
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def _geometry(self, node, in_sizes, kernel, out_sizes):
        """(strides, dilations, pads_begin) of a conv/pool node whose output sizes are known."""
        attrs = self._attrs(node)
        nd = len(in_sizes)
        strides = list(attrs.get("strides", [1] * nd))
        dilations = list(attrs.get("dilations", [1] * nd))
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            begin = []
            for size, s, k, d, o in zip(
                in_sizes, strides, kernel, dilations, out_sizes, strict=True
            ):
                pad = max((o - 1) * s + (k - 1) * d + 1 - size, 0)
                small = pad // 2
                begin.append(small if auto_pad == "SAME_UPPER" else pad - small)
        elif auto_pad == "VALID":
            begin = [0] * nd
        else:
            begin = list(attrs.get("pads", [0] * (2 * nd)))[:nd]
        return strides, dilations, begin

    def _conv(self, node):
        x, w_name = node.input[0], node.input[1]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        w = self.constants.get(w_name)
        if w is None:
            raise OnnxSplitError("float64: a Conv with run-time weights cannot be rewritten")
        shape, out_shape = self.spatial(x, "Conv"), self.spatial(node.output[0], "Conv")
        in_sizes, outs, nd = shape[2:], out_shape[2:], len(shape) - 2
        group = int(self._attrs(node).get("group", 1))
        kernel = list(w.shape[2:])
        strides, dilations, begin = self._geometry(node, in_sizes, kernel, outs)
        channels, out_ch = shape[1], w.shape[0]
        # channels last: [N, *spatial, C]
        xt = self.op("Transpose", [x], perm=[0, *range(2, nd + 2), 1])
        needed = [
            (o - 1) * s + (k - 1) * d + 1 - b - size
            for o, s, k, d, b, size in zip(
                outs, strides, kernel, dilations, begin, in_sizes, strict=True
            )
        ]
        xp = self.pad(xt, begin, needed, 1, 1)
        terms = []
        for offset in itertools.product(*(range(k) for k in kernel)):
            starts = [a * d for a, d in zip(offset, dilations, strict=True)]
            xs = self.window(xp, list(range(1, nd + 1)), starts, strides, outs)
            wa = w[(slice(None), slice(None), *offset)]  # [M, C/g]
            terms.append(self._contract(xs, wa, group, channels, out_ch, outs, transpose=True))
        y = self.total(terms)
        self._finish(node, y, bias, nd, out_ch)

    def _contract(self, xs, wa, group, channels, out_ch, outs, transpose):
        """[N, *outs, C] times the per-group matrix: Conv (wa [M, C/g], transpose=True) or
        ConvTranspose (wa [C, M/g]) -> [N, *outs, M]."""
        if group == 1:
            matrix = wa.T if transpose else wa  # [C, M]
            return self.op("MatMul", [xs, self.const(np.ascontiguousarray(matrix), "w")])
        per_in, per_out = channels // group, out_ch // group
        if per_in == 1:  # depthwise: an elementwise product (a batched MatMul of 1x1 blocks
            # is two orders of magnitude slower on onnxruntime's CPU)
            weights = wa.reshape(group, per_out)  # both layouts: [g, M/g]
            if per_out == 1:
                return self.op("Mul", [xs, self.const(weights.reshape(-1), "w")])
            column = self.op(
                "Reshape", [xs, self.const(np.asarray([0, *outs, group, 1], np.int64), "shape")]
            )
            product = self.op("Mul", [column, self.const(weights, "w")])
            return self.op(
                "Reshape",
                [product, self.const(np.asarray([0, *outs, out_ch], np.int64), "shape")],
            )
        if transpose:  # [M, C/g] -> [g, C/g, M/g]
            blocks = wa.reshape(group, per_out, per_in).transpose(0, 2, 1)
        else:  # [C, M/g] -> [g, C/g, M/g]
            blocks = wa.reshape(group, per_in, per_out)
        grouped = self.op(
            "Reshape",
            [xs, self.const(np.asarray([0, *outs, group, 1, per_in], np.int64), "shape")],
        )
        product = self.op("MatMul", [grouped, self.const(np.ascontiguousarray(blocks), "w")])
        return self.op(
            "Reshape", [product, self.const(np.asarray([0, *outs, out_ch], np.int64), "shape")]
        )

    def _finish(self, node, y, bias, nd, out_ch):
        """Channels-last sum -> [N, M, *spatial] (+ bias) into the node's output."""
        if bias is None:
            self.op("Transpose", [y], output=node.output[0], perm=[0, nd + 1, *range(1, nd + 1)])
            return
        y = self.op("Transpose", [y], perm=[0, nd + 1, *range(1, nd + 1)])
        b = self.constants.get(bias)
        if b is None:
            raise OnnxSplitError("float64: a Conv with a run-time bias cannot be rewritten")
        shaped = self.const(b.reshape(1, out_ch, *[1] * nd), "bias")
        self.op("Add", [y, shaped], output=node.output[0])

    def _convtranspose(self, node):
        x, w_name = node.input[0], node.input[1]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        w = self.constants.get(w_name)
        if w is None:
            raise OnnxSplitError(
                "float64: a ConvTranspose with run-time weights cannot be rewritten"
            )
        attrs = self._attrs(node)
        shape = self.spatial(x, "ConvTranspose")
        outs = self.spatial(node.output[0], "ConvTranspose")[2:]
        in_sizes, nd = shape[2:], len(shape) - 2
        group = int(attrs.get("group", 1))
        kernel = list(w.shape[2:])
        strides = list(attrs.get("strides", [1] * nd))
        dilations = list(attrs.get("dilations", [1] * nd))
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if auto_pad != "NOTSET" or "output_shape" in attrs:
            raise OnnxSplitError(
                "float64: a ConvTranspose with auto_pad or output_shape cannot be rewritten"
            )
        begin = list(attrs.get("pads", [0] * (2 * nd)))[:nd]
        channels, out_ch = shape[1], w.shape[1] * group
        xt = self.op("Transpose", [x], perm=[0, *range(2, nd + 2), 1])
        # zero insertion: value i at position i * s (length size * s)
        spread = xt
        if any(s != 1 for s in strides):
            axes = [2 + 2 * i for i in range(nd)]
            spread = self.op("Unsqueeze", [xt, self.const(np.asarray(axes, np.int64), "axes")])
            pads = [0] * (2 * nd + 2) * 2
            for i, s in enumerate(strides):
                pads[(2 * nd + 2) + 2 + 2 * i] = s - 1
            spread = self.op("Pad", [spread, self.const(np.asarray(pads, np.int64), "pads")])
            spread = self.op(
                "Reshape",
                [
                    spread,
                    self.const(
                        np.asarray(
                            [0, *[i * s for i, s in zip(in_sizes, strides, strict=True)], channels],
                            np.int64,
                        ),
                        "shape",
                    ),
                ],
            )
        spread_sizes = [i * s for i, s in zip(in_sizes, strides, strict=True)]
        terms = []
        for offset in itertools.product(*(range(k) for k in kernel)):
            wa = w[(slice(None), slice(None), *offset)]  # [C, M/g]
            z = self._contract(spread, wa, group, channels, out_ch, spread_sizes, transpose=False)
            shift = [a * d - b for a, d, b in zip(offset, dilations, begin, strict=True)]
            end = [o - (L + t) for o, L, t in zip(outs, spread_sizes, shift, strict=True)]
            terms.append(self.pad(z, shift, end, 1, 1))
        self._finish(node, self.total(terms), bias, nd, out_ch)

    def _averagepool(self, node):
        x = node.input[0]
        attrs = self._attrs(node)
        shape, outs = (
            self.spatial(x, "AveragePool"),
            self.spatial(node.output[0], "AveragePool")[2:],
        )
        in_sizes, nd = shape[2:], len(shape) - 2
        kernel = list(attrs["kernel_shape"])
        strides, dilations, begin = self._geometry(node, in_sizes, kernel, outs)
        pads = list(attrs.get("pads", [0] * (2 * nd)))
        end_pads = pads[nd:] if len(pads) == 2 * nd else [0] * nd
        if "auto_pad" in attrs and attrs["auto_pad"] not in (b"NOTSET", "NOTSET"):
            end_pads = [
                max((o - 1) * s + (k - 1) * d + 1 - size - b, 0)
                for o, s, k, d, size, b in zip(
                    outs, strides, kernel, dilations, in_sizes, begin, strict=True
                )
            ]
        if int(attrs.get("ceil_mode", 0)) and "auto_pad" not in attrs:
            # onnxruntime drops a last window that starts in the end padding (onnx's shape
            # inference keeps it): compute the sizes as onnxruntime does
            outs = []
            for size, s, k, d, b, e in zip(
                in_sizes, strides, kernel, dilations, begin, end_pads, strict=True
            ):
                out = -(-(size + b + e - (k - 1) * d - 1) // s) + 1
                outs.append(out - 1 if (out - 1) * s >= size + b else out)
        include = int(attrs.get("count_include_pad", 0))
        needed = [
            max((o - 1) * s + (k - 1) * d + 1 - b - size, 0)
            for o, s, k, d, b, size in zip(
                outs, strides, kernel, dilations, begin, in_sizes, strict=True
            )
        ]
        xp = self.pad(x, begin, needed, 2)
        terms = []
        for offset in itertools.product(*(range(k) for k in kernel)):
            starts = [a * d for a, d in zip(offset, dilations, strict=True)]
            terms.append(self.window(xp, list(range(2, nd + 2)), starts, strides, outs))
        # 1 / divisor per output position: positions inside the input (count_include_pad=0) or
        # inside the padded input (=1), as onnxruntime counts them
        per_axis = []
        for size, o, s, k, d, b, e in zip(
            in_sizes, outs, strides, kernel, dilations, begin, end_pads, strict=True
        ):
            taps = (np.arange(o) * s - b)[:, None] + np.arange(k)[None, :] * d
            low, high = (0, size) if not include else (-b, size + e)
            per_axis.append(((taps >= low) & (taps < high)).sum(axis=1))
        counts = per_axis[0].astype(np.float64)
        for axis in per_axis[1:]:
            counts = np.multiply.outer(counts, axis)
        factor = (1.0 / np.maximum(counts, 1)).reshape(1, 1, *outs)
        self.op("Mul", [self.total(terms), self.const(factor, "factor")], output=node.output[0])

    def _globalaveragepool(self, node):
        self._global(node, "ReduceMean")

    def _globalmaxpool(self, node):
        self._global(node, "ReduceMax")

    def _global(self, node, op):
        shape = self.shapes.get(node.input[0])
        if shape is None:
            raise OnnxSplitError(f"float64: the rank of '{node.input[0]}' is unknown")
        axes = list(range(2, len(shape)))
        if self.opset >= 18:  # ReduceMean / ReduceMax take their axes as an input
            self.op(
                op,
                [node.input[0], self.const(np.asarray(axes, np.int64), "axes")],
                output=node.output[0],
                keepdims=1,
            )
        else:
            self.op(op, [node.input[0]], output=node.output[0], axes=axes, keepdims=1)

"""Pooling and reductions.

Average-type pools are linear with non-negative coefficients and act on each stream alone.
Max-type pools use the convex DC rule: with d = p - q and S = a window sum of q,

    maxpool(d) = (maxpool(d) + S) - S,   maxpool(d) + S = max_i(p_i + sum_{j != i} c_j q_j)

where S = sum_j c_j q_j with c_j >= 1 (an AveragePool of q times the window size), so the
positive stream is monotone and convex in (p, q) and f is computed exactly from d. When the input
is re-centered after a rectifier, q = 0 and the rule coincides with the argmax rule.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxsplit.split.emitter import Emitter
from onnxsplit.split.registry import Kind, rule
from onnxsplit.split.rules_layout import per_stream
from onnxsplit.split.values import Abstract, Pair, Value

POOL_ATTRS = ("auto_pad", "kernel_shape", "pads", "strides", "ceil_mode")


def _check_maxpool(node: gs.Node, inputs: list[Abstract]) -> str | None:
    if len(node.outputs) > 1 and node.outputs[1].outputs:
        return "the Indices output of MaxPool is used"
    if any(d != 1 for d in node.attrs.get("dilations", [])):
        return "dilated MaxPool is not supported"
    return None


@rule(
    "MaxPool",
    kind=Kind.RECTIFIER,
    check=_check_maxpool,
    summary="DC rule: (maxpool(p - q) + S, S) with S = window sum of q (convex, exact)",
)
def maxpool(em: Emitter, node: gs.Node, inputs: list[Value]) -> list[Value]:
    pair = inputs[0]
    attrs = {k: v for k, v in node.attrs.items() if k in POOL_ATTRS}
    peak = em.one("MaxPool", [em.sub(pair.pos, pair.neg)], attrs)
    window = int(np.prod(node.attrs["kernel_shape"]))
    mean = em.one("AveragePool", [pair.neg], {**attrs, "count_include_pad": 1})
    total = em.mul(mean, np.asarray(window, em.dtype))
    return [Pair(em.add(peak, total), total)]


def _spatial_axes(node: gs.Node) -> list[int] | None:
    shape = node.inputs[0].shape
    return None if shape is None else list(range(2, len(shape)))


def _check_global_max(node: gs.Node, inputs: list[Abstract]) -> str | None:
    return None if _spatial_axes(node) is not None else "the input rank is unknown"


@rule(
    "GlobalMaxPool",
    kind=Kind.RECTIFIER,
    check=_check_global_max,
    summary="DC rule with S = spatial sum of q",
)
def global_maxpool(em: Emitter, node: gs.Node, inputs: list[Value]) -> list[Value]:
    pair = inputs[0]
    peak = em.one("GlobalMaxPool", [em.sub(pair.pos, pair.neg)])
    axes = em.const(np.asarray(_spatial_axes(node), np.int64), "axes", np.int64)
    total = em.one("ReduceSum", [pair.neg, axes], {"keepdims": 1})
    return [Pair(em.add(peak, total), total)]


@rule("ReduceMax", kind=Kind.RECTIFIER, summary="DC rule with S = sum of q over the reduced axes")
def reduce_max(em: Emitter, node: gs.Node, inputs: list[Value]) -> list[Value]:
    pair = inputs[0]
    peak = em.one("ReduceMax", [em.sub(pair.pos, pair.neg), *node.inputs[1:]], dict(node.attrs))
    axes = node.attrs.get("axes")
    axes_input = node.inputs[1] if len(node.inputs) > 1 else None
    if axes is not None:
        axes_input = em.const(np.asarray(axes, np.int64), "axes", np.int64)
    keep = {"keepdims": int(node.attrs.get("keepdims", 1))}
    total = em.one("ReduceSum", [pair.neg] + ([axes_input] if axes_input is not None else []), keep)
    return [Pair(em.add(peak, total), total)]


@rule(
    "AveragePool",
    "GlobalAveragePool",
    "ReduceMean",
    "ReduceSum",
    kind=Kind.LINEAR,
    summary="non-negative linear map applied to each stream",
)
def linear_pool(em: Emitter, node: gs.Node, inputs: list[Value]) -> list[Value]:
    return per_stream(em, node, inputs, data_inputs=(0,))

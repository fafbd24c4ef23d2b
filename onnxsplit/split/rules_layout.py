"""Selection and reshaping ops: they act on each stream alone with the same parameters."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxsplit.split.emitter import Emitter
from onnxsplit.split.registry import Kind, is_split, rule
from onnxsplit.split.values import Abstract, Const, Pair, Plain, Value, negative_part, positive_part

RESHAPING_OPS = (
    "Flatten",
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Slice",
    "Split",
    "Expand",
    "Tile",
    "DepthToSpace",
    "SpaceToDepth",
)


def per_stream(
    em: Emitter, node: gs.Node, inputs: list[Value], data_inputs: Sequence[int]
) -> list[Value]:
    """Emit `node` once per stream; constants at data positions are split by sign."""
    outputs: list[list[gs.Variable]] = []
    for side in ("pos", "neg"):
        operands = []
        for i, value in enumerate(inputs):
            if value is None:
                operands.append(None)
            elif isinstance(value, Pair):
                operands.append(getattr(value, side))
            elif isinstance(value, Const) and i in data_inputs:
                part = positive_part if side == "pos" else negative_part
                operands.append(em.const(part(np.asarray(value.value, em.dtype))))
            elif isinstance(value, Const):
                operands.append(em.const(value.value, "param", value.value.dtype))
            else:
                operands.append(value.tensor)
        outputs.append(em.op(node.op, operands, dict(node.attrs), len(node.outputs)))
    differences = _selection_of_differences(em, node, inputs, data_inputs)
    # each op here maps a zero stream to zero, so a zero negative stream stays zero where
    # the constants it mixes in (pad values, concatenated data) have no negative part
    zero_neg = all(
        value.zero_neg
        if isinstance(value, Pair)
        else not (isinstance(value, Const) and i in data_inputs and np.any(value.value < 0))
        for i, value in enumerate(inputs)
        if value is not None
    ) and any(isinstance(value, Pair) for value in inputs)
    return [
        Pair(pos, neg, difference, zero_neg)
        for pos, neg, difference in zip(*outputs, differences, strict=True)
    ]


# ops that only select, copy or rearrange elements: they commute with relu, so a minimal pair
# (relu(d), relu(-d)) stays minimal and its d can be carried along
SELECTION_OPS = {*RESHAPING_OPS, "Gather", "Concat", "Where", "Pad", "Identity"}


def _selection_of_differences(
    em: Emitter, node: gs.Node, inputs: list[Value], data_inputs: Sequence[int]
) -> list[gs.Variable | None]:
    pairs = [v for v in inputs if isinstance(v, Pair)]
    minimal = all(p.difference is not None for p in pairs)
    if not (em.fast and minimal and node.op in SELECTION_OPS):
        return [None] * len(node.outputs)
    if node.op == "Pad" and (node.attrs.get("mode", "constant") not in ("constant", b"constant")):
        return [None] * len(node.outputs)
    operands = []
    for value in inputs:
        if value is None:
            operands.append(None)
        elif isinstance(value, Pair):
            operands.append(value.difference)
        elif isinstance(value, Const):
            operands.append(em.const(value.value, "param", value.value.dtype))
        else:
            operands.append(value.tensor)
    return em.op(node.op, operands, dict(node.attrs), len(node.outputs))


def _check_params(node: gs.Node, inputs: list[Abstract], data: Sequence[int]) -> str | None:
    for i, value in enumerate(inputs):
        if i not in data and value is not None and is_split(value):
            return f"input {i} ('{node.inputs[i].name}') must not depend on the activation values"
    return None


def _layout_rule(op_types: Sequence[str], data: Sequence[int], summary: str) -> None:
    def check(node: gs.Node, inputs: list[Abstract]) -> str | None:
        return _check_params(node, inputs, data)

    def emit(em: Emitter, node: gs.Node, inputs: list[Value]) -> list[Value]:
        return per_stream(em, node, inputs, data)

    rule(*op_types, kind=Kind.LAYOUT, check=check, summary=summary)(emit)


_layout_rule(
    RESHAPING_OPS,
    data=(0,),
    summary="reshaping/selection applied to each stream",
)
_layout_rule(["Gather"], data=(0,), summary="selection with constant indices, per stream")
_layout_rule(["Concat"], data=range(64), summary="concatenation per stream")
_layout_rule(["Where"], data=(1, 2), summary="selection by a condition that is not an activation")


def _check_pad(node: gs.Node, inputs: list[Abstract]) -> str | None:
    return _check_params(node, inputs, (0, 2))


@rule(
    "Pad",
    kind=Kind.LAYOUT,
    check=_check_pad,
    summary="any mode; a constant pad value c pads the streams with c+ and c-",
)
def pad(em: Emitter, node: gs.Node, inputs: list[Value]) -> list[Value]:
    return per_stream(em, node, inputs, data_inputs=(0, 2))


def _check_resize(node: gs.Node, inputs: list[Abstract]) -> str | None:
    mode = node.attrs.get("mode", "nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode == "cubic":
        return "cubic interpolation has negative weights; use nearest or linear"
    return _check_params(node, inputs, (0,))


@rule(
    "Resize",
    "Upsample",
    kind=Kind.LAYOUT,
    check=_check_resize,
    summary="nearest or linear interpolation (non-negative weights), per stream",
)
def resize(em: Emitter, node: gs.Node, inputs: list[Value]) -> list[Value]:
    return per_stream(em, node, inputs, data_inputs=(0,))


@rule("Identity", "Dropout", kind=Kind.LAYOUT, summary="passes both streams through")
def identity(em: Emitter, node: gs.Node, inputs: list[Value]) -> list[Value]:
    return [inputs[0]]


def _check_cast(node: gs.Node, inputs: list[Abstract]) -> str | None:
    target = node.attrs.get("to")
    source = node.inputs[0].dtype
    if source is not None and target is not None:
        if onnx.helper.tensor_dtype_to_np_dtype(int(target)) != np.dtype(source):
            return "casting an activation to another type is not supported"
    return None


@rule(
    "Cast",
    "CastLike",
    kind=Kind.LAYOUT,
    check=_check_cast,
    summary="a cast to the activation's own float type is an identity",
)
def cast(em: Emitter, node: gs.Node, inputs: list[Value]) -> list[Value]:
    return [inputs[0]]


@rule("Shape", "Size", kind=Kind.LAYOUT, summary="shape of an activation (plain, not split)")
def shape(em: Emitter, node: gs.Node, inputs: list[Value]) -> list[Value]:
    out = em.one(node.op, [inputs[0].pos], dict(node.attrs), hint=node.op.lower())
    return [Plain(out)]

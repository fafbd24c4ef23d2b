"""The op-rule table: one rule per ONNX op_type, registered with the `rule` decorator.

A rule receives the emitter, the original node and the values of its inputs (Const, Plain or
Pair) and returns the values of its outputs. Its `check` runs before anything is emitted and
returns the reason a node cannot be split exactly (or None), so that every offending node of a
model is reported in one error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

import onnx_graphsurgeon as gs

from onnxsplit.split.values import Abstract, Const, SplitMarker, Value


class Kind(str, Enum):
    """How an op acts on the two streams; decides where the stabilizer re-centers."""

    AFFINE = "affine"  # weights of any sign: W+ and W- mix the streams
    MERGE = "merge"  # sums of several activations (residual Add, Sub, Sum)
    RECTIFIER = "rectifier"  # max-type ops: Relu, Clip, LeakyRelu, MaxPool ...
    LINEAR = "linear"  # non-negative linear maps applied to each stream alone (pools, means)
    LAYOUT = "layout"  # selection / reshaping applied to each stream alone


EmitFn = Callable[["Emitter", gs.Node, list[Value]], list[Value]]  # noqa: F821
CheckFn = Callable[[gs.Node, list[Abstract]], str | None]


@dataclass(frozen=True)
class Rule:
    op_type: str
    kind: Kind
    emit: EmitFn
    check: CheckFn
    summary: str


RULES: dict[str, Rule] = {}


def _no_check(node: gs.Node, inputs: list[Abstract]) -> str | None:
    return None


def rule(*op_types: str, kind: Kind, summary: str, check: CheckFn | None = None):
    """Register `emit` as the split rule of each op in `op_types`."""

    def register(emit: EmitFn) -> EmitFn:
        for op_type in op_types:
            if op_type in RULES:
                raise RuntimeError(f"duplicate split rule for {op_type}")
            RULES[op_type] = Rule(op_type, kind, emit, check or _no_check, summary)
        return emit

    return register


def supported_ops() -> list[str]:
    return sorted(RULES)


# shared checks -----------------------------------------------------------------------
def is_split(value: Abstract | Value) -> bool:
    from onnxsplit.split.values import Pair

    return isinstance(value, SplitMarker | Pair)


def const_inputs(node: gs.Node, inputs: Sequence[Abstract], indices: Sequence[int]) -> str | None:
    """Reason unless every listed (present) input is a compile-time constant."""
    for i in indices:
        if i < len(inputs) and inputs[i] is not None and not isinstance(inputs[i], Const):
            what = "an activation" if is_split(inputs[i]) else "computed at run time"
            return f"input {i} ('{node.inputs[i].name}') must be a constant, but it is {what}"
    return None


def only_first_split(node: gs.Node, inputs: Sequence[Abstract]) -> str | None:
    """Reason unless the activation enters through input 0 only and the rest are constants."""
    if not is_split(inputs[0]):
        return "the activation must be input 0"
    return const_inputs(node, inputs, range(1, len(inputs)))

"""A small builder on top of onnx-graphsurgeon that emits the split graph node by node."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from onnxsplit.blocked_layout import channel_scale
from onnxsplit.split.values import Const, Pair, negative_part, positive_part

Operand = gs.Tensor | np.ndarray | float


class Emitter:
    """Owns the graph being built; every emitted node and constant gets a unique name."""

    def __init__(
        self,
        graph: gs.Graph,
        opset: int,
        dtype: np.dtype,
        fast: bool = False,
        seeded: bool = False,
    ):
        self.graph = graph
        # fast: affine layers on minimal pairs use the difference/mass form (two convolutions
        # instead of four); the streams are the same numbers up to rounding
        self.fast = fast
        # seeded: the split graph will run beside its source graph, whose tensors it may read
        # (`original`): affine layers take W (p - q) + b from there and only map the mass
        # p + q (rules_affine._split_linear_seeded); each such layer is recorded in `blocks`
        self.seeded = seeded
        self.blocks: list = []
        self.exposed: set[str] = set()  # source tensors whose streams are read as they are
        self.positive: set[str] = set()  # emitted streams that are > 0 by construction
        self.originals: dict[str, gs.Variable] = {}
        self.opset = opset
        self.dtype = np.dtype(dtype)
        self._counter = 0
        self.scope = "split"

    def name(self, hint: str) -> str:
        self._counter += 1
        return f"{self.scope}/{hint}_{self._counter}"

    def const(self, array: np.ndarray | float, hint: str = "c", dtype=None) -> gs.Constant:
        value = np.asarray(array, dtype=dtype or self.dtype)
        return gs.Constant(self.name(hint), value)

    def original(self, tensor: gs.Tensor) -> gs.Variable:
        """A placeholder for the source graph's tensor (an extra input of the split graph)."""
        if tensor.name not in self.originals:
            self.originals[tensor.name] = gs.Variable(
                tensor.name, dtype=tensor.dtype or self.dtype, shape=tensor.shape
            )
        return self.originals[tensor.name]

    def _operand(self, value: Operand) -> gs.Tensor:
        if isinstance(value, gs.Tensor):
            return value
        return self.const(value)

    def op(
        self,
        op_type: str,
        inputs: Sequence[Operand | None],
        attrs: dict | None = None,
        num_outputs: int = 1,
        hint: str | None = None,
        domain: str | None = None,
    ) -> list[gs.Variable]:
        tensors = [
            gs.Variable.empty() if value is None else self._operand(value) for value in inputs
        ]
        outputs = [gs.Variable(self.name(hint or op_type.lower())) for _ in range(num_outputs)]
        node = gs.Node(
            op_type,
            name=self.name(op_type),
            attrs=dict(attrs or {}),
            inputs=tensors,
            outputs=outputs,
            domain=domain,
        )
        self.graph.nodes.append(node)
        return outputs

    def one(
        self,
        op_type: str,
        inputs: Sequence[Operand | None],
        attrs: dict | None = None,
        hint: str | None = None,
    ) -> gs.Variable:
        return self.op(op_type, inputs, attrs, 1, hint)[0]

    # elementwise helpers -------------------------------------------------------------
    def add(self, a: Operand, b: Operand) -> gs.Variable:
        return self.one("Add", [a, b])

    def sub(self, a: Operand, b: Operand) -> gs.Variable:
        return self.one("Sub", [a, b])

    def mul(self, a: Operand, b: Operand) -> gs.Variable:
        return self.one("Mul", [a, b])

    def max(self, *values: Operand) -> gs.Variable:
        return self.one("Max", list(values))

    def relu(self, a: Operand) -> gs.Variable:
        return self.one("Relu", [a])

    def neg(self, a: Operand) -> gs.Variable:
        return self.one("Neg", [a])

    def total(self, values: Sequence[gs.Variable]) -> gs.Variable:
        return values[0] if len(values) == 1 else self.one("Sum", list(values))

    def plus_scaled(
        self, a: gs.Variable, b: gs.Variable, factor: float, channels: int | None
    ) -> gs.Variable:
        """a + factor * b for factor +-1 or +-1/2 (exact). With the channel count of a rank-4 b
        the product is a depthwise 1x1 Conv, whose sum onnxruntime fuses in its blocked layout
        (a Mul or Sub would run in plain layout with reorders around it; blocked_layout)."""
        if channels:
            scaled = channel_scale(self.graph, b, factor, channels, self.name("channel_scale"))
            return self.add(a, scaled)
        if factor == -1.0:
            return self.sub(a, b)
        scaled = self.mul(b, np.asarray(abs(factor), self.dtype))
        return self.add(a, scaled) if factor > 0 else self.sub(a, scaled)

    def plus_const(self, a: gs.Variable, c: np.ndarray) -> gs.Variable:
        """a + c, skipping the node when c is all zeros."""
        return a if not np.any(c) else self.add(a, c)

    def times_const(self, a: gs.Variable, c: np.ndarray) -> gs.Variable | None:
        """a * c, skipping the node when c is all ones; None when c is all zeros."""
        if not np.any(c):
            return None
        if np.all(c == 1):
            return a
        return self.mul(a, c)

    # pair helpers -------------------------------------------------------------------
    def pair_of_const(self, value: np.ndarray) -> Pair:
        value = np.asarray(value, dtype=self.dtype)
        return Pair(
            self.const(positive_part(value), "cpos"), self.const(negative_part(value), "cneg")
        )

    def as_pair(self, value) -> Pair:
        if isinstance(value, Pair):
            return value
        if isinstance(value, Const):
            return self.pair_of_const(value.value)
        raise TypeError(f"cannot use {value!r} as a split activation")

    def zeros_like(self, a: gs.Variable) -> gs.Variable:
        return self.mul(a, np.zeros((), self.dtype))

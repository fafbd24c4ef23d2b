"""A small builder on top of onnx-graphsurgeon that emits the split graph node by node."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from onnxsplit.blocked_layout import channel_scale
from onnxsplit.split.values import Const, Pair, negative_part, positive_part

Operand = gs.Tensor | np.ndarray | float
SHARED_CONSTANT_ELEMENTS = 4096  # constants this large are emitted once per content


def names_in(graph: gs.Graph) -> set[str]:
    """Every tensor and node name of `graph`."""
    names = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
    for node in graph.nodes:
        names.add(node.name)
        names.update(t.name for t in node.inputs)
        names.update(t.name for t in node.outputs)
    names.discard("")
    return names


def all_tensors(graph: gs.Graph) -> list[gs.Tensor]:
    """Every tensor of `graph` once, by identity (two tensors may share a name while a graph
    is being built; `graph.tensors()` would keep one of them)."""
    seen: dict[int, gs.Tensor] = {}
    for tensor in [*graph.inputs, *graph.outputs]:
        seen[id(tensor)] = tensor
    for node in graph.nodes:
        for tensor in [*node.inputs, *node.outputs]:
            seen[id(tensor)] = tensor
    return list(seen.values())


def fresh_name(candidate: str, taken: set[str]) -> str:
    """`candidate`, or `candidate~k` with the smallest k >= 1 that no name in `taken` has;
    the result is added to `taken`."""
    name, k = candidate, 0
    while name in taken:
        k += 1
        name = f"{candidate}~{k}"
    taken.add(name)
    return name


def claim_names(graph: gs.Graph, wanted: Sequence[tuple[gs.Tensor, str]], taken: set[str]) -> None:
    """Give each tensor its wanted (public) name; any other tensor of the graph that has one of
    those names is renamed to a fresh one first. This is how user tensors named `logits`,
    `g`, `target`, `map_*` ... step aside for the names onnxsplit's contract gives."""
    wanted_ids = {id(t) for t, _ in wanted}
    names = {name for _, name in wanted}
    for tensor in all_tensors(graph):
        if tensor.name in names and id(tensor) not in wanted_ids and tensor.name:
            tensor.name = fresh_name(tensor.name, taken | names)
            taken.add(tensor.name)
    for tensor, name in wanted:
        tensor.name = name
        taken.add(name)


class Emitter:
    """Owns the graph being built; every emitted node and constant gets a unique name."""

    def __init__(
        self,
        graph: gs.Graph,
        opset: int,
        dtype: np.dtype,
        fast: bool = False,
        seeded: bool = False,
        taken: set[str] | None = None,
    ):
        self.graph = graph
        # every name in use: the graph's own and (for a split graph that will run beside its
        # source) the source's, so that no emitted tensor can take a user tensor's name
        self.taken: set[str] = set(taken or ()) | names_in(graph)
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
        self.originals: dict[str, gs.Variable] = {}  # source name -> placeholder
        self.sources: dict[str, gs.Tensor] = {}  # source name -> the source graph's tensor
        self.opset = opset
        self.dtype = np.dtype(dtype)
        self._counter = 0
        self._constants: dict[tuple, gs.Constant] = {}  # large constants by content
        self.scope = "split"

    def name(self, hint: str) -> str:
        """A name no tensor or node of the graph (or of `taken`) has."""
        while True:
            self._counter += 1
            candidate = f"{self.scope}/{hint}_{self._counter}"
            if candidate not in self.taken:
                self.taken.add(candidate)
                return candidate

    def const(self, array: np.ndarray | float, hint: str = "c", dtype=None) -> gs.Constant:
        """A constant; large ones are shared by content (every backward pass derives the same
        flipped, transposed or sign-split weights: one copy each instead of one per pass)."""
        value = np.asarray(array, dtype=dtype or self.dtype)
        if value.size < SHARED_CONSTANT_ELEMENTS:
            return gs.Constant(self.name(hint), value)
        value = np.ascontiguousarray(value)
        key = (value.dtype.str, value.shape, hashlib.blake2b(value.data, digest_size=16).digest())
        shared = self._constants.get(key)
        if shared is None:
            shared = self._constants[key] = gs.Constant(self.name(hint), value)
        return shared

    def original(self, tensor: gs.Tensor) -> gs.Variable:
        """A placeholder for the source graph's tensor (an extra input of the split graph)."""
        if tensor.name not in self.originals:
            self.originals[tensor.name] = gs.Variable(
                self.name("original"), dtype=tensor.dtype or self.dtype, shape=tensor.shape
            )
            self.sources[tensor.name] = tensor
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
            scaled = channel_scale(
                self.graph, b, factor, channels, self.name("channel_scale"), self.dtype
            )
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

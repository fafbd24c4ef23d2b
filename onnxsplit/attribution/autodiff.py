"""Reverse-mode differentiation of an ONNX graph, compiled into ONNX nodes.

`differentiate` walks a gs.Graph backwards from seed adjoints (e.g. the one-hot target row of the
logits) and appends the adjoint nodes to the same graph, using only default-domain ops: the
result is a graph that computes the forward pass and its backward pass in one inference call.

Adjoint rules live in a table keyed by op_type (`ADJOINTS`, filled by the `adjoint` decorator,
one rule per op, like the split rules). A rule receives the pass state, the forward node, the
adjoints of the node's outputs (None where an output has none) and which inputs need an
adjoint; it returns one adjoint (or None) per input. Callers may replace rules per op (the LRP
methods pass modified rules as data), stop the gradient at named tensors, and replace the
backward pass of a whole subgraph (`SubgraphAdjoint`: e.g. the split graph's re-centering nodes
are an identity in the backward pass).

Conventions: convolution-like rules (Conv, AveragePool) need static spatial sizes (canonical
graphs have them after shape inference); MaxPool needs opset >= 16 (ScatterElements with
reduction='add'); ties of Max/Min go to the first input.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxsplit.errors import OnnxSplitError
from onnxsplit.ops import clip_operands
from onnxsplit.split.emitter import Emitter

Grad = gs.Variable | None
AdjointFn = Callable[["Backward", gs.Node, list[Grad], list[bool]], list[Grad]]

MIN_OPSET = 16  # ScatterElements(reduction='add') for MaxPool
NON_DIFFERENTIABLE = {
    "Shape",
    "Size",
    "ArgMax",
    "ArgMin",
    "Equal",
    "Greater",
    "GreaterOrEqual",
    "Less",
    "LessOrEqual",
    "Not",
    "And",
    "Or",
    "Xor",
    "NonZero",
    "IsNaN",
    "IsInf",
    "ConstantOfShape",
    "Range",
    "OneHot",
}


class UnsupportedBackwardError(OnnxSplitError):
    """Nodes on the differentiated path that have no adjoint rule (all named in one error)."""

    def __init__(self, problems: list[tuple[str, str, str]]):
        self.problems = problems
        lines = [f"  - node '{name}' (op {op}): {why}" for name, op, why in problems]
        super().__init__(
            f"cannot compile the backward pass of {len(problems)} node(s):\n"
            + "\n".join(lines)
            + "\nadjoint rules exist for: "
            + ", ".join(sorted(ADJOINTS))
        )


@dataclass(frozen=True)
class AdjointRule:
    op_type: str
    fn: AdjointFn
    summary: str

    def __call__(self, bw: Backward, node: gs.Node, douts: list[Grad], needs: list[bool]):
        return self.fn(bw, node, douts, needs)


ADJOINTS: dict[str, AdjointRule] = {}


def adjoint(*op_types: str, summary: str = ""):
    """Register `fn` as the adjoint rule of each op in `op_types`."""

    def register(fn: AdjointFn) -> AdjointFn:
        for op_type in op_types:
            if op_type in ADJOINTS:
                raise RuntimeError(f"duplicate adjoint rule for {op_type}")
            ADJOINTS[op_type] = AdjointRule(op_type, fn, summary or (fn.__doc__ or "").strip())
        return fn

    return register


def supported_backward_ops() -> list[str]:
    return sorted(ADJOINTS)


@dataclass(frozen=True)
class SubgraphAdjoint:
    """Replace the backward pass of the nodes between `inputs` and `outputs` by `fn`.

    fn(bw, adjoints of outputs) -> adjoints of inputs. `identity(inputs, outputs)` passes the
    adjoint of output i straight to input i.
    """

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    fn: Callable[[Backward, list[Grad]], list[Grad]]

    @staticmethod
    def identity(inputs: Sequence[str], outputs: Sequence[str]) -> SubgraphAdjoint:
        return SubgraphAdjoint(tuple(inputs), tuple(outputs), lambda bw, douts: list(douts))


@dataclass
class _Virtual:
    """Stands for a SubgraphAdjoint in the processing order."""

    override: SubgraphAdjoint
    inputs: list[gs.Tensor] = field(default_factory=list)
    outputs: list[gs.Tensor] = field(default_factory=list)


# ------------------------------------------------------------------------------------------
# the pass
# ------------------------------------------------------------------------------------------
class Backward:
    """State and helpers of one reverse pass over a graph."""

    def __init__(self, graph: gs.Graph, em: Emitter, opset: int):
        self.graph = graph
        self.em = em
        self.opset = opset
        self.active: set[str] = set()
        self._shapes: dict[str, gs.Variable] = {}

    # -- constants and small builders ------------------------------------------------------
    def i64(self, values, hint: str = "i64") -> gs.Constant:
        return self.em.const(np.asarray(values, np.int64), hint, np.int64)

    def scalar(self, value: float) -> gs.Constant:
        return self.em.const(np.asarray(value, self.em.dtype), "s")

    def shape_of(self, tensor: gs.Tensor) -> gs.Tensor:
        """Shape(tensor) as an int64 tensor (a constant when the shape is static)."""
        static = static_shape(tensor)
        if static is not None:
            return self.i64(static, "shape")
        if tensor.name not in self._shapes:
            self._shapes[tensor.name] = self.em.one("Shape", [tensor], hint="shape")
        return self._shapes[tensor.name]

    def zeros_like(self, tensor: gs.Tensor) -> gs.Variable:
        return self.em.one("Expand", [self.scalar(0.0), self.shape_of(tensor)], hint="zeros")

    def shape_from(self, tensor: gs.Tensor, like: Sequence | None, keep: int) -> gs.Tensor:
        """The shape of `tensor` as a constant for an op applied to a tensor of shape `like`,
        where every dimension that is not static (the batch) is the same symbol in both and
        is written as `keep` (Reshape: 0 copies it; Expand: 1 keeps it). Shape inference then
        carries the symbol on, which onnxruntime needs to keep a backward pass in its blocked
        layout; a runtime Shape where that does not hold."""
        dims = tensor.shape
        aligned = like is not None and (keep == 0 or len(like) == len(dims or ()))
        if dims is not None and aligned:  # Reshape copies dim i; Expand aligns equal ranks
            constant = []
            for i, d in enumerate(dims):
                if isinstance(d, int | np.integer) and d >= 0:
                    constant.append(int(d))
                elif isinstance(d, str) and d and i < len(like) and like[i] == d:
                    constant.append(keep)
                else:
                    break
            else:
                return self.i64(constant, "shape")
        return self.shape_of(tensor)

    def reshape_like(
        self, grad: gs.Tensor, tensor: gs.Tensor, like: Sequence | None = None
    ) -> gs.Variable:
        """Reshape(grad, shape of tensor); like: the shape of grad (its primal's)."""
        return self.em.one("Reshape", [grad, self.shape_from(tensor, like, 0)])

    def expand_like(self, grad: gs.Tensor, tensor: gs.Tensor, like: Sequence | None) -> gs.Variable:
        """Expand(grad) to the shape of `tensor`; like: the shape of grad (its primal's)."""
        return self.em.one("Expand", [grad, self.shape_from(tensor, like, 1)])

    def reduce_sum(self, grad: gs.Tensor, axes: Sequence[int], keepdims: bool) -> gs.Variable:
        if not axes:
            return grad
        attrs = {"keepdims": int(keepdims)}
        return self.em.one("ReduceSum", [grad, self.i64(list(axes), "axes")], attrs)

    def unbroadcast(self, grad: gs.Tensor, tensor: gs.Tensor, out: gs.Tensor) -> gs.Tensor:
        """Sum `grad` (shaped like the broadcast result `out`) down to the shape of `tensor`."""
        xs, ys = tensor.shape, out.shape
        if xs is None:
            raise OnnxSplitError(f"the rank of '{tensor.name}' is unknown (cannot unbroadcast)")
        if ys is not None and list(xs) == list(ys):
            return grad
        rank_y = len(ys) if ys is not None else len(xs)
        lead = rank_y - len(xs)
        grad = self.reduce_sum(grad, list(range(lead)), keepdims=False)
        # reducing an axis of size 1 is a no-op, so every axis of `tensor` of size 1 may be reduced
        ones = [i for i, d in enumerate(xs) if d == 1 and (ys is None or ys[lead + i] != 1)]
        return self.reduce_sum(grad, ones, keepdims=True)

    def where(self, cond: gs.Tensor, a: gs.Tensor | float, b: gs.Tensor | float) -> gs.Variable:
        a = self.scalar(a) if isinstance(a, int | float) else a
        b = self.scalar(b) if isinstance(b, int | float) else b
        return self.em.one("Where", [cond, a, b])

    def run_rule(
        self, op_type: str, node: gs.Node, douts: list[Grad], needs: list[bool]
    ) -> list[Grad]:
        """Apply the standard adjoint of `op_type` (e.g. from a modified LRP rule)."""
        return ADJOINTS[op_type](self, node, douts, needs)


def static_shape(tensor: gs.Tensor) -> list[int] | None:
    shape = tensor.shape
    if shape is None or any(not isinstance(d, int | np.integer) or d < 0 for d in shape):
        return None
    return [int(d) for d in shape]


def constant_value(tensor: gs.Tensor | None) -> np.ndarray | None:
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    return None


def _is_float(tensor: gs.Tensor) -> bool:
    if tensor.dtype is None:
        return True
    try:
        return np.issubdtype(np.dtype(tensor.dtype), np.floating)
    except TypeError:
        return True


def _differentiable_outputs(node: gs.Node) -> list[gs.Tensor]:
    if node.op in NON_DIFFERENTIABLE:
        return []
    if node.op == "MaxPool":
        return node.outputs[:1]
    return [t for t in node.outputs if _is_float(t)]


def differentiate(
    graph: gs.Graph,
    seeds: Mapping[str, gs.Tensor],
    wrt: Sequence[str],
    *,
    opset: int,
    dtype=np.float32,
    stop_gradient: Iterable[str] = (),
    overrides: Sequence[SubgraphAdjoint] = (),
    rules: Mapping[str, Callable] | None = None,
    emitter: Emitter | None = None,
    scope: str = "grad",
) -> dict[str, Grad]:
    """Append the backward pass to `graph`; return the adjoint of each tensor named in `wrt`.

    seeds: adjoint of each seeded (output) tensor, e.g. {"logits": one_hot}. The adjoints of
    several seeds add up. stop_gradient: tensors treated as constants. overrides: subgraphs
    whose backward pass is replaced. rules: per-op replacements of the ADJOINTS table.
    An entry of the result is None when the tensor does not influence the seeds.
    """
    table = dict(ADJOINTS)
    table.update(rules or {})
    em = emitter or Emitter(graph, opset, np.dtype(dtype))
    em.scope = scope
    bw = Backward(graph, em, opset)
    tensors = graph.tensors()
    for name in list(seeds) + list(wrt):
        if name not in tensors:
            raise OnnxSplitError(f"the graph has no tensor '{name}'")

    order = _processing_order(graph, overrides, tensors)
    stop = set(stop_gradient)
    # forward: tensors that depend on a wrt tensor (through differentiable outputs)
    active = {name for name in wrt if name not in stop}
    for item in order:
        ins = [t.name for t in item.inputs if t is not None and t.name]
        if not any(n in active for n in ins):
            continue
        outs = item.outputs if isinstance(item, _Virtual) else _differentiable_outputs(item)
        active.update(t.name for t in outs if t.name not in stop)
    bw.active = active

    grads: dict[str, list[gs.Tensor]] = {}
    for name, seed in seeds.items():
        if name in active:
            grads.setdefault(name, []).append(seed)

    def total(name: str) -> Grad:
        parts = grads.get(name)
        if not parts:
            return None
        if len(parts) > 1:
            em.scope = f"{scope}/sum"
            parts[:] = [em.one("Sum", list(parts))]
        return parts[0]

    problems = []
    for item in reversed(order):
        outputs = item.outputs
        douts = [total(t.name) if t.name in active else None for t in outputs]
        if all(d is None for d in douts):
            continue
        needs = [t is not None and t.name in active for t in item.inputs]
        if not any(needs):
            continue
        if isinstance(item, _Virtual):
            em.scope = f"{scope}/override"
            dins = item.override.fn(bw, douts)
        else:
            rule = table.get(item.op) if item.domain in ("", "ai.onnx", None) else None
            em.scope = f"{scope}/{item.name or item.op}"
            try:
                if rule is None:
                    raise _Unsupported("no adjoint rule")
                dins = rule(bw, item, douts, needs)
            except _Unsupported as exc:
                problems.append((item.name or "<unnamed>", item.op, str(exc)))
                dins = _stand_in(douts, needs)  # go on: every node without an adjoint is named
            except Exception:
                if not problems:
                    raise
                dins = _stand_in(douts, needs)  # after a problem the pass is only a search
        for tensor, need, din in zip(item.inputs, needs, dins, strict=False):
            if need and din is not None:
                grads.setdefault(tensor.name, []).append(din)
    if problems:
        raise UnsupportedBackwardError(problems)
    em.scope = scope
    return {name: total(name) for name in wrt}


def _stand_in(douts: list[Grad], needs: list[bool]) -> list[Grad]:
    """Adjoints that only carry the search on past a node that cannot be differentiated (the
    pass raises UnsupportedBackwardError at its end; nothing it emitted is used)."""
    first = next((d for d in douts if d is not None), None)
    return [first if need else None for need in needs]


def _processing_order(
    graph: gs.Graph, overrides: Sequence[SubgraphAdjoint], tensors: Mapping[str, gs.Tensor]
) -> list[gs.Node | _Virtual]:
    """Topological order of the nodes with each overridden subgraph collapsed into one item.

    An override is ordered after everything its inputs depend on (its own nodes may not read
    them: a seeded re-centering computes its outputs from the source graph's tensor)."""
    graph.toposort()
    nodes = list(graph.nodes)
    if not overrides:
        return nodes
    owner: dict[int, int] = {}  # id(node) -> item index
    items: list[gs.Node | _Virtual] = []
    for ov in overrides:
        inside = _subgraph_nodes(ov, tensors)
        virtual = _Virtual(ov, [tensors[n] for n in ov.inputs], [tensors[n] for n in ov.outputs])
        for n in inside:
            owner[id(n)] = len(items)
        items.append(virtual)
    for node in nodes:
        if id(node) not in owner:
            owner[id(node)] = len(items)
            items.append(node)
    # dependencies: the producers of every tensor an item reads
    deps: list[set[int]] = [set() for _ in items]
    for k, item in enumerate(items):
        for t in item.inputs:
            if t is not None and t.inputs:
                j = owner.get(id(t.inputs[0]))
                if j is not None and j != k:
                    deps[k].add(j)
    for node in nodes:  # nodes inside an override read tensors too
        k = owner[id(node)]
        if isinstance(items[k], _Virtual):
            for t in node.inputs:
                if t.inputs:
                    j = owner.get(id(t.inputs[0]))
                    if j is not None and j != k:
                        deps[k].add(j)
    users: list[list[int]] = [[] for _ in items]
    for k, ds in enumerate(deps):
        for j in ds:
            users[j].append(k)
    # Kahn's algorithm, the graph's own order among ready items
    rank = {k: i for i, k in enumerate(owner[id(n)] for n in nodes)}
    pending = [len(ds) for ds in deps]
    ready_keys = [(rank.get(k, -1), k) for k in range(len(items)) if not pending[k]]
    heapq.heapify(ready_keys)
    order: list[gs.Node | _Virtual] = []
    while ready_keys:
        _, k = heapq.heappop(ready_keys)
        order.append(items[k])
        for u in users[k]:
            pending[u] -= 1
            if not pending[u]:
                heapq.heappush(ready_keys, (rank.get(u, -1), u))
    if len(order) != len(items):
        raise OnnxSplitError("the overridden subgraphs form a cycle")
    return order


def _subgraph_nodes(ov: SubgraphAdjoint, tensors: Mapping[str, gs.Tensor]) -> list[gs.Node]:
    """Nodes on a path from the override's inputs to its outputs."""
    starts = set(ov.inputs)
    inside: dict[int, gs.Node] = {}
    stack = [tensors[n] for n in ov.outputs]
    seen: set[str] = set()
    while stack:
        tensor = stack.pop()
        if tensor.name in seen or tensor.name in starts:
            continue
        seen.add(tensor.name)
        if not tensor.inputs:
            raise OnnxSplitError(
                f"override {ov.inputs} -> {ov.outputs}: '{tensor.name}' is not computed from the "
                "override's inputs"
            )
        node = tensor.inputs[0]
        inside[id(node)] = node
        stack.extend(t for t in node.inputs if isinstance(t, gs.Variable) and t.name)
    if not inside:
        raise OnnxSplitError(f"override {ov.inputs} -> {ov.outputs} contains no node")
    return list(inside.values())


class _Unsupported(Exception):
    """Raised by a rule for a node form it cannot differentiate (collected, then reported)."""


# ------------------------------------------------------------------------------------------
# helpers shared by the rules
# ------------------------------------------------------------------------------------------
def _attr(node: gs.Node, name: str, default):
    value = node.attrs.get(name, default)
    return value.decode() if isinstance(value, bytes) else value


def _spatial(node: gs.Node, tensor: gs.Tensor) -> list[int]:
    shape = static_shape(tensor)
    if shape is None or len(shape) < 3:
        shape_any = tensor.shape
        if shape_any is not None and len(shape_any) >= 3:
            spatial = shape_any[2:]
            if all(isinstance(d, int | np.integer) and d >= 0 for d in spatial):
                return [int(d) for d in spatial]
        raise _Unsupported(f"the spatial size of '{tensor.name}' must be static")
    return shape[2:]


def _window_geometry(
    node: gs.Node, in_sizes: list[int], kernel: list[int]
) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """(strides, dilations, pads_begin, pads_end, output sizes) of a conv/pool node."""
    nd = len(in_sizes)
    strides = list(_attr(node, "strides", [1] * nd))
    dilations = list(_attr(node, "dilations", [1] * nd))
    auto_pad = _attr(node, "auto_pad", "NOTSET")
    ceil_mode = int(_attr(node, "ceil_mode", 0))
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end, outs = [], [], []
        for size, s, e in zip(in_sizes, strides, eff, strict=True):
            out = math.ceil(size / s)
            pad = max((out - 1) * s + e - size, 0)
            small = pad // 2
            begin.append(small if auto_pad == "SAME_UPPER" else pad - small)
            end.append(pad - begin[-1])
            outs.append(out)
        return strides, dilations, begin, end, outs
    if auto_pad == "VALID":
        begin, end = [0] * nd, [0] * nd
    else:
        pads = list(_attr(node, "pads", [0] * (2 * nd)))
        begin, end = pads[:nd], pads[nd:]
    outs = []
    for size, s, e, b, f in zip(in_sizes, strides, eff, begin, end, strict=True):
        span = size + b + f - e
        out = (math.ceil(span / s) if ceil_mode else span // s) + 1
        if ceil_mode and (out - 1) * s >= size + b:  # last window must start inside
            out -= 1
        outs.append(out)
    return strides, dilations, begin, end, outs


def _transpose_conv(
    bw: Backward,
    grad: gs.Tensor,
    weight: gs.Tensor,
    in_sizes: list[int],
    kernel: list[int],
    strides: list[int],
    dilations: list[int],
    begin: list[int],
    outs: list[int],
    group: int = 1,
) -> gs.Variable:
    """ConvTranspose that maps a gradient of the output grid back onto `in_sizes` exactly."""
    end, extra = [], []
    for size, k, s, d, b, o in zip(in_sizes, kernel, strides, dilations, begin, outs, strict=True):
        base = s * (o - 1) + (k - 1) * d + 1 - b - size  # ConvTranspose size minus wanted size
        end.append(max(base, 0))
        extra.append(max(-base, 0))
    attrs = {
        "kernel_shape": list(kernel),
        "strides": list(strides),
        "dilations": list(dilations),
        "pads": list(begin) + end,
        "group": int(group),
    }
    flipped = _flipped_conv(
        bw, grad, weight, kernel, strides, dilations, begin, end, extra, group, outs
    )
    if flipped is not None:
        return flipped
    if any(extra):
        if any(e >= max(s, d) for e, s, d in zip(extra, strides, dilations, strict=True)):
            raise _Unsupported("input positions beyond the last window exceed the stride")
        attrs["output_padding"] = extra
    return bw.em.one("ConvTranspose", [grad, weight], attrs)


def _flipped_conv(bw, grad, weight, kernel, strides, dilations, begin, end, extra, group, outs):
    """A ConvTranspose with constant weights as the equivalent Conv: weights flipped in space,
    in/out channels swapped per group, strides > 1 (2-D) by zero insertion into the adjoint.
    The same numbers, and onnxruntime's CPU Conv kernels are several times faster than its
    ConvTranspose for depthwise and stride-1 layers. None where it does not apply, and for
    strided ungrouped layers, where onnxruntime's ConvTranspose (GEMM + col2im, no zeros
    multiplied) is 3-14x faster than a Conv over the zero-inserted adjoint (EfficientNet's
    stem, 32 -> 3 channels: 1.5 vs 21 ms at batch 4; 3x3 256 -> 128: 4.8 vs 16.6 ms).
    Strided depthwise layers keep the zero insertion: per sample (how the CPU runs large
    models, onnxsplit.per_sample) it beats onnxruntime's ConvTranspose for 3x3 and 5x5
    kernels alike (EfficientNet-Lite0: 3.1 vs 3.4 ms, 1.0 vs 1.8 ms at batch 1; at batch 16
    the 3x3 ones are faster native, 68 vs 84 ms)."""
    w = constant_value(weight)
    if w is None or (group == 1 and any(s != 1 for s in strides)):
        return None
    span = [(k - 1) * d for k, d in zip(kernel, dilations, strict=True)]
    # on the input upsampled by zero insertion (length size * s, s - 1 zeros after each value)
    pads = [e - b for e, b in zip(span, begin, strict=True)] + [
        e - f + x - (s - 1) for e, f, x, s in zip(span, end, extra, strides, strict=True)
    ]
    if any(p < 0 for p in pads):
        return None
    if any(s != 1 for s in strides):
        if len(strides) != 2 or len(outs) != 2:
            return None
        grad = _zero_upsample(bw, grad, int(w.shape[0]), [int(o) for o in outs], strides)
    out_ch, in_per_group = w.shape[:2]
    per_group = out_ch // group
    spatial = w.shape[2:]
    blocks = w.reshape(group, per_group, in_per_group, *spatial)
    swapped = np.swapaxes(blocks, 1, 2).reshape(group * in_per_group, per_group, *spatial)
    flip = (slice(None), slice(None)) + (slice(None, None, -1),) * len(spatial)
    flipped = np.ascontiguousarray(swapped[flip])
    attrs = {
        "kernel_shape": list(kernel),
        "strides": [1] * len(kernel),
        "dilations": list(dilations),
        "pads": pads,
        "group": int(group),
    }
    return bw.em.one("Conv", [grad, bw.em.const(flipped.astype(w.dtype), "wflip", w.dtype)], attrs)


def _zero_upsample(bw, x, c, sizes, strides):
    """[N, c, h, w] -> [N, c, h*sh, w*sw], x at the multiples of the strides and zeros between:
    a depthwise 1x1 ConvTranspose with unit weights (the fastest of Pad, Concat+DepthToSpace and
    this in onnxruntime on the CPU)."""
    del sizes
    ones = bw.em.const(np.ones((c, 1, 1, 1), bw.em.dtype), "ones")
    attrs = {
        "kernel_shape": [1, 1],
        "strides": list(strides),
        "group": int(c),
        "output_padding": [s - 1 for s in strides],
    }
    return bw.em.one("ConvTranspose", [x, ones], attrs)


# ------------------------------------------------------------------------------------------
# elementwise rules
# ------------------------------------------------------------------------------------------
@adjoint("Identity", "Dropout", summary="passes the adjoint through")
def _identity(bw, node, douts, needs):
    return [douts[0]]


@adjoint("Cast", "CastLike", summary="a float-to-float cast passes the adjoint through")
def _cast(bw, node, douts, needs):
    if not _is_float(node.outputs[0]):
        return [None] * len(node.inputs)
    grad = douts[0]
    if node.inputs[0].dtype is not None and node.outputs[0].dtype is not None:
        if np.dtype(node.inputs[0].dtype) != np.dtype(node.outputs[0].dtype):
            to = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(node.inputs[0].dtype))
            grad = bw.em.one("Cast", [grad], {"to": int(to)})
    return [grad] + [None] * (len(node.inputs) - 1)


@adjoint("Neg", summary="-dy")
def _neg(bw, node, douts, needs):
    return [bw.em.neg(douts[0])]


@adjoint("Relu", summary="Where(x > 0, dy, 0)")
def _relu(bw, node, douts, needs):
    x = node.inputs[0]
    return [bw.where(bw.em.one("Greater", [x, bw.scalar(0.0)]), douts[0], 0.0)]


def _clip_bounds(bw: Backward, node: gs.Node) -> tuple[gs.Tensor | None, gs.Tensor | None]:
    lo, hi = clip_operands(node)
    return tuple(bw.scalar(b) if isinstance(b, float) else b for b in (lo, hi))


@adjoint("Clip", summary="Where(lo < x < hi, dy, 0) (the torch convention at the bounds)")
def _clip(bw, node, douts, needs):
    x = node.inputs[0]
    lo, hi = _clip_bounds(bw, node)
    conds = []
    if lo is not None:
        conds.append(bw.em.one("Greater", [x, lo]))
    if hi is not None:
        conds.append(bw.em.one("Less", [x, hi]))
    if not conds:
        return [douts[0]] + [None] * (len(node.inputs) - 1)
    cond = conds[0] if len(conds) == 1 else bw.em.one("And", conds)
    return [bw.where(cond, douts[0], 0.0)] + [None] * (len(node.inputs) - 1)


@adjoint("LeakyRelu", summary="Where(x > 0, dy, alpha dy)")
def _leaky(bw, node, douts, needs):
    x, dy = node.inputs[0], douts[0]
    alpha = float(node.attrs.get("alpha", 0.01))
    cond = bw.em.one("Greater", [x, bw.scalar(0.0)])
    return [bw.where(cond, dy, bw.em.mul(dy, bw.scalar(alpha)))]


@adjoint("PRelu", summary="Where(x > 0, dy, slope dy) (no adjoint for the slope)")
def _prelu(bw, node, douts, needs):
    x, slope = node.inputs[:2]
    if needs[1]:
        raise _Unsupported("the slope depends on the differentiated input")
    dy = douts[0]
    cond = bw.em.one("Greater", [x, bw.scalar(0.0)])
    return [bw.where(cond, dy, bw.em.mul(dy, slope)), None]


@adjoint("Abs", summary="Sign(x) dy")
def _abs(bw, node, douts, needs):
    return [bw.em.mul(douts[0], bw.em.one("Sign", [node.inputs[0]]))]


@adjoint("Max", "Min", summary="routes dy to the input that won (ties: the first one)")
def _max_min(bw, node, douts, needs):
    y, dy = node.outputs[0], douts[0]
    x0, x1 = (node.inputs + [None])[:2]
    if len(node.inputs) == 2 and x0.shape is not None and x1.shape is not None:
        if list(x0.shape) == list(x1.shape) == list(y.shape or []):  # no broadcasting
            first = bw.where(bw.em.one("Equal", [x0, y]), dy, 0.0)
            return [first if needs[0] else None, bw.em.sub(dy, first) if needs[1] else None]
    taken = None
    result: list[Grad] = []
    for x, need in zip(node.inputs, needs, strict=True):
        won = bw.em.one("Equal", [x, y])
        if taken is not None:
            won = bw.em.one("And", [won, bw.em.one("Not", [taken])])
        grad = bw.unbroadcast(bw.where(won, dy, 0.0), x, y) if need else None
        result.append(grad)
        taken = won if taken is None else bw.em.one("Or", [taken, won])
    return result


@adjoint("Add", "Sum", summary="dy to every input, summed over its broadcast axes")
def _add(bw, node, douts, needs):
    y, dy = node.outputs[0], douts[0]
    return [
        bw.unbroadcast(dy, x, y) if need else None
        for x, need in zip(node.inputs, needs, strict=True)
    ]


@adjoint("Sub", summary="(dy, -dy), summed over broadcast axes")
def _sub(bw, node, douts, needs):
    (a, b), y, dy = node.inputs, node.outputs[0], douts[0]
    return [
        bw.unbroadcast(dy, a, y) if needs[0] else None,
        bw.unbroadcast(bw.em.neg(dy), b, y) if needs[1] else None,
    ]


@adjoint("Mul", summary="product rule: dy * other, summed over broadcast axes")
def _mul(bw, node, douts, needs):
    (a, b), y, dy = node.inputs, node.outputs[0], douts[0]
    return [
        bw.unbroadcast(bw.em.mul(dy, b), a, y) if needs[0] else None,
        bw.unbroadcast(bw.em.mul(dy, a), b, y) if needs[1] else None,
    ]


@adjoint("Div", summary="(dy / b, -dy a / b^2), summed over broadcast axes")
def _div(bw, node, douts, needs):
    (a, b), y, dy = node.inputs, node.outputs[0], douts[0]
    da = bw.unbroadcast(bw.em.one("Div", [dy, b]), a, y) if needs[0] else None
    db = None
    if needs[1]:
        db = bw.unbroadcast(bw.em.neg(bw.em.one("Div", [bw.em.mul(dy, y), b])), b, y)
    return [da, db]


@adjoint("Where", summary="dy to the selected branch")
def _where(bw, node, douts, needs):
    cond, a, b = node.inputs
    y, dy = node.outputs[0], douts[0]
    return [
        None,
        bw.unbroadcast(bw.where(cond, dy, 0.0), a, y) if needs[1] else None,
        bw.unbroadcast(bw.where(cond, 0.0, dy), b, y) if needs[2] else None,
    ]


@adjoint("BatchNormalization", summary="dy * scale / sqrt(var + eps) per channel (inference)")
def _batchnorm(bw, node, douts, needs):
    params = [constant_value(t) for t in node.inputs[1:5]]
    if any(p is None for p in params) or any(needs[1:5]):
        raise _Unsupported("scale, bias, mean and variance must be constants")
    if node.inputs[0].shape is None:
        raise _Unsupported("the input rank is unknown")
    scale, _, _, var = (p.astype(np.float64) for p in params)
    factor = scale / np.sqrt(var + float(node.attrs.get("epsilon", 1e-5)))
    shape = (-1,) + (1,) * (len(node.inputs[0].shape) - 2)
    return [bw.em.mul(douts[0], factor.reshape(shape).astype(bw.em.dtype))] + [None] * 4


# ------------------------------------------------------------------------------------------
# affine rules
# ------------------------------------------------------------------------------------------
@adjoint("Conv", summary="ConvTranspose with the same weights, strides, pads, dilations, group")
def _conv(bw, node, douts, needs):
    x, weight = node.inputs[:2]
    if any(needs[1:]):
        raise _Unsupported("weights and bias must not depend on the differentiated input")
    w = constant_value(weight)
    kernel = list(node.attrs.get("kernel_shape", w.shape[2:] if w is not None else []))
    if not kernel:
        raise _Unsupported("the kernel shape is unknown")
    in_sizes = _spatial(node, x)
    strides, dilations, begin, _, outs = _window_geometry(node, in_sizes, kernel)
    if node.outputs[0].shape is not None and static_shape(node.outputs[0]) is not None:
        outs = static_shape(node.outputs[0])[2:]
    group = int(node.attrs.get("group", 1))
    grad = _transpose_conv(
        bw, douts[0], weight, in_sizes, kernel, strides, dilations, begin, outs, group
    )
    return [grad] + [None] * (len(node.inputs) - 1)


def _swap_last(bw: Backward, tensor: gs.Tensor) -> gs.Tensor:
    value = constant_value(tensor)
    if value is not None:
        return bw.em.const(np.swapaxes(value, -1, -2), "wT", value.dtype)
    if tensor.shape is None:
        raise _Unsupported(f"the rank of '{tensor.name}' is unknown")
    rank = len(tensor.shape)
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    return bw.em.one("Transpose", [tensor], {"perm": perm})


@adjoint("MatMul", summary="dA = dY B^T, dB = A^T dY, summed over broadcast batch axes")
def _matmul(bw, node, douts, needs):
    (a, b), y, dy = node.inputs, node.outputs[0], douts[0]
    for t in (a, b):
        if t.shape is not None and len(t.shape) < 2:
            raise _Unsupported("1-D operands are not supported")
    da = db = None
    if needs[0]:
        da = bw.unbroadcast(bw.em.one("MatMul", [dy, _swap_last(bw, b)]), a, y)
    if needs[1]:
        db = bw.unbroadcast(bw.em.one("MatMul", [_swap_last(bw, a), dy]), b, y)
    return [da, db]


@adjoint("Gemm", summary="transposed MatMul (alpha, transA, transB); dC = beta dY unbroadcast")
def _gemm(bw, node, douts, needs):
    a, b = node.inputs[:2]
    alpha = float(node.attrs.get("alpha", 1.0))
    beta = float(node.attrs.get("beta", 1.0))
    trans_a, trans_b = int(node.attrs.get("transA", 0)), int(node.attrs.get("transB", 0))
    dy = douts[0]
    em = bw.em

    def operand(t: gs.Tensor, trans: int, scale: float = 1.0) -> gs.Tensor:
        value = constant_value(t)
        if value is not None:
            value = value.T if trans else value
            return em.const((value * scale).astype(value.dtype), "w", value.dtype)
        out = em.one("Transpose", [t], {"perm": [1, 0]}) if trans else t
        return out if scale == 1.0 else em.mul(out, bw.scalar(scale))

    result: list[Grad] = [None] * len(node.inputs)
    if needs[0]:
        # d op(A) = alpha dY op(B)^T; dA = (d op(A))^T when transA
        b_t = operand(b, 1 - trans_b, alpha)
        grad = em.one("MatMul", [dy, b_t])
        result[0] = em.one("Transpose", [grad], {"perm": [1, 0]}) if trans_a else grad
    if needs[1]:
        a_t = operand(a, 1 - trans_a, alpha)
        grad = em.one("MatMul", [a_t, dy])
        result[1] = em.one("Transpose", [grad], {"perm": [1, 0]}) if trans_b else grad
    if len(node.inputs) > 2 and needs[2]:
        scaled = dy if beta == 1.0 else em.mul(dy, bw.scalar(beta))
        result[2] = bw.unbroadcast(scaled, node.inputs[2], node.outputs[0])
    return result


# ------------------------------------------------------------------------------------------
# pooling and reductions
# ------------------------------------------------------------------------------------------
@adjoint(
    "MaxPool",
    summary="re-run MaxPool for its Indices; ScatterElements(reduction='add') of dy there",
)
def _maxpool(bw, node, douts, needs):
    if bw.opset < MIN_OPSET:
        raise _Unsupported(
            f"needs opset >= {MIN_OPSET} (ScatterElements with reduction='add'); convert the "
            "model with onnx.version_converter (attach_methods does)"
        )
    x, dy = node.inputs[0], douts[0]
    em = bw.em
    attrs = {k: v for k, v in node.attrs.items() if k != "storage_order"}
    _, indices = em.op("MaxPool", [x], attrs, 2)
    flat = bw.i64([-1], "flat")
    size = em.one("Reshape", [em.one("Size", [x]), bw.i64([1], "one")])
    zeros = em.one("Expand", [bw.scalar(0.0), size])
    scatter = em.one(
        "ScatterElements",
        [zeros, em.one("Reshape", [indices, flat]), em.one("Reshape", [dy, flat])],
        {"axis": 0, "reduction": "add"},
    )
    return [bw.reshape_like(scatter, x)]


@adjoint(
    "AveragePool",
    summary="ConvTranspose with a ones kernel of dy times the per-window factor (any pads, "
    "count_include_pad, ceil_mode)",
)
def _avgpool(bw, node, douts, needs):
    x, y, dy = node.inputs[0], node.outputs[0], douts[0]
    em = bw.em
    kernel = list(node.attrs["kernel_shape"])
    in_sizes = _spatial(node, x)
    strides, dilations, begin, end, outs = _window_geometry(node, in_sizes, kernel)
    if static_shape(y) is not None:
        outs = static_shape(y)[2:]
    # factor_o = 1 / divisor_o, read off the runtime's own AveragePool of ones
    ones = np.ones([1, 1, *in_sizes], em.dtype)
    counts = _window_counts(in_sizes, kernel, strides, dilations, begin, outs)
    pooled = em.one("AveragePool", [em.const(ones, "ones")], dict(node.attrs))
    factor = em.one("Div", [pooled, em.const(np.maximum(counts, 1)[None, None], "count")])
    flat = em.one("Reshape", [dy, bw.i64([-1, 1, *outs], "shape")])
    weighted = em.mul(flat, factor)
    kernel_ones = em.const(np.ones([1, 1, *kernel], em.dtype), "kones")
    grad = _transpose_conv(
        bw, weighted, kernel_ones, in_sizes, kernel, strides, dilations, begin, outs
    )
    return [bw.reshape_like(grad, x)]


def _window_counts(in_sizes, kernel, strides, dilations, begin, outs) -> np.ndarray:
    """Number of input (non-pad) positions in each pooling window."""
    per_axis = []
    for size, k, s, d, b, o in zip(in_sizes, kernel, strides, dilations, begin, outs, strict=True):
        starts = np.arange(o) * s - b
        taps = starts[:, None] + np.arange(k)[None, :] * d
        per_axis.append(((taps >= 0) & (taps < size)).sum(axis=1))
    counts = per_axis[0]
    for axis in per_axis[1:]:
        counts = np.multiply.outer(counts, axis)
    return counts.astype(np.float32)


def _mean_scale(bw: Backward, x: gs.Tensor, y: gs.Tensor) -> gs.Tensor:
    """Size(y) / Size(x) as a float scalar (a constant when both shapes are static)."""
    xs, ys = static_shape(x), static_shape(y)
    if xs is not None and ys is not None:
        return bw.scalar(float(np.prod(ys)) / float(np.prod(xs)))
    em = bw.em
    sizes = [em.one("Cast", [em.one("Size", [t])], {"to": onnx.TensorProto.FLOAT}) for t in (y, x)]
    ratio = em.one("Div", sizes)
    if em.dtype != np.float32:
        to = onnx.helper.np_dtype_to_tensor_dtype(em.dtype)
        ratio = em.one("Cast", [ratio], {"to": int(to)})
    return ratio


@adjoint("GlobalAveragePool", summary="Expand(dy) / (spatial size)")
def _global_avgpool(bw, node, douts, needs):
    x, y = node.inputs[0], node.outputs[0]
    expanded = bw.expand_like(douts[0], x, y.shape)
    return [bw.em.mul(expanded, _mean_scale(bw, x, y))]


def _reduce_axes(node: gs.Node, rank: int) -> list[int] | None:
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
        value = constant_value(node.inputs[1])
        if value is None:
            raise _Unsupported("the axes must be a constant")
        axes = value.reshape(-1).tolist()
    if axes is None or len(axes) == 0:
        if int(node.attrs.get("noop_with_empty_axes", 0)):
            return []
        return list(range(rank))
    return sorted(int(a) % rank for a in axes)


def _expand_reduced(bw: Backward, node: gs.Node, dy: gs.Tensor) -> gs.Tensor:
    x = node.inputs[0]
    if x.shape is None:
        raise _Unsupported("the input rank is unknown")
    axes = _reduce_axes(node, len(x.shape))
    if not int(node.attrs.get("keepdims", 1)) and axes:
        dy = bw.em.one("Unsqueeze", [dy, bw.i64(axes, "axes")])
    # dy has x's dims except 1 on the reduced axes
    return bw.expand_like(dy, x, [1 if i in axes else d for i, d in enumerate(x.shape)])


@adjoint("ReduceSum", summary="Expand(dy) over the reduced axes")
def _reduce_sum(bw, node, douts, needs):
    return [_expand_reduced(bw, node, douts[0])] + [None] * (len(node.inputs) - 1)


@adjoint("ReduceMean", summary="Expand(dy) over the reduced axes / count")
def _reduce_mean(bw, node, douts, needs):
    x, y = node.inputs[0], node.outputs[0]
    grad = bw.em.mul(_expand_reduced(bw, node, douts[0]), _mean_scale(bw, x, y))
    return [grad] + [None] * (len(node.inputs) - 1)


def _route_to_max(bw: Backward, x: gs.Tensor, y_kept, dy_kept, axes: list[int]):
    """dy shared evenly by the positions equal to the maximum (torch's amax rule): k tied
    maxima get dy / k each, so the input gradient sums to dy (not k dy)."""
    em = bw.em
    to = int(onnx.helper.np_dtype_to_tensor_dtype(em.dtype))
    tied = em.one("Cast", [em.one("Equal", [x, y_kept])], {"to": to})
    count = bw.reduce_sum(tied, axes, keepdims=True)
    return em.mul(tied, em.one("Div", [dy_kept, count]))


@adjoint("GlobalMaxPool", summary="dy shared by the positions equal to the maximum")
def _global_maxpool(bw, node, douts, needs):
    x = node.inputs[0]
    if x.shape is None:
        raise _Unsupported("the input rank is unknown")
    axes = list(range(2, len(x.shape)))
    return [_route_to_max(bw, x, node.outputs[0], douts[0], axes)]


@adjoint("ReduceMax", summary="dy shared by the positions equal to the maximum")
def _reduce_max(bw, node, douts, needs):
    x, y, dy = node.inputs[0], node.outputs[0], douts[0]
    if x.shape is None:
        raise _Unsupported("the input rank is unknown")
    axes = _reduce_axes(node, len(x.shape))
    if not int(node.attrs.get("keepdims", 1)) and axes:
        y = bw.em.one("Unsqueeze", [y, bw.i64(axes, "axes")])
        dy = bw.em.one("Unsqueeze", [dy, bw.i64(axes, "axes")])
    if not axes:  # noop_with_empty_axes: the identity
        return [dy] + [None] * (len(node.inputs) - 1)
    return [_route_to_max(bw, x, y, dy, axes)] + [None] * (len(node.inputs) - 1)


# ------------------------------------------------------------------------------------------
# layout rules
# ------------------------------------------------------------------------------------------
@adjoint("Flatten", "Reshape", "Squeeze", "Unsqueeze", summary="Reshape(dy, Shape(x))")
def _reshape(bw, node, douts, needs):
    if any(needs[1:]):
        raise _Unsupported("the target shape depends on the differentiated values")
    grad = bw.reshape_like(douts[0], node.inputs[0], node.outputs[0].shape)
    return [grad] + [None] * (len(node.inputs) - 1)


@adjoint("Expand", summary="sum over the broadcast axes")
def _expand(bw, node, douts, needs):
    return [bw.unbroadcast(douts[0], node.inputs[0], node.outputs[0]), None]


@adjoint("Transpose", summary="Transpose with the inverse permutation")
def _transpose(bw, node, douts, needs):
    perm = node.attrs.get("perm")
    if perm is None:
        if node.inputs[0].shape is None:
            raise _Unsupported("the input rank is unknown")
        perm = list(reversed(range(len(node.inputs[0].shape))))
    inverse = [int(i) for i in np.argsort(perm)]
    return [bw.em.one("Transpose", [douts[0]], {"perm": inverse})]


@adjoint(
    "Pad",
    summary="Slice of dy (constant mode); edge/reflect: the padded border's dy added back "
    "onto the input positions it copies (non-negative pads)",
)
def _pad(bw, node, douts, needs):
    x = node.inputs[0]
    mode = _attr(node, "mode", "constant")
    if mode not in ("constant", "edge", "reflect"):
        raise _Unsupported(f"Pad mode '{mode}' is not differentiated")
    pads = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if pads is None:
        pads = node.attrs.get("pads")
    if pads is None:
        raise _Unsupported("the pads must be constants")
    pads = np.asarray(pads, np.int64).reshape(-1)
    if np.any(pads < 0):
        raise _Unsupported("negative pads are not supported")
    half = len(pads) // 2
    axes = list(range(half))
    if len(node.inputs) > 3 and node.inputs[3].name:
        value = constant_value(node.inputs[3])
        if value is None or x.shape is None:
            raise _Unsupported("the axes must be constants")
        axes = [int(a) % len(x.shape) for a in value.reshape(-1)]
    begin = pads[:half]
    if not np.any(begin) and not np.any(pads[half:]):
        return [douts[0]] + [None] * (len(node.inputs) - 1)
    if mode != "constant":
        grad = _fold_border(bw, x, douts[0], axes, begin, pads[half:], mode)
        return [grad] + [None] * (len(node.inputs) - 1)
    em = bw.em
    padded = [i for i in range(half) if begin[i] or pads[half + i]]  # slice those axes only
    axes, begin = [axes[i] for i in padded], begin[padded]
    sizes = [x.shape[a] if x.shape is not None else None for a in axes]
    if all(isinstance(d, int | np.integer) and d >= 0 for d in sizes):  # static: constants
        ends = bw.i64([int(b) + int(d) for b, d in zip(begin, sizes, strict=True)], "end")
    else:
        shape = bw.shape_of(x)
        size = em.one("Gather", [shape, bw.i64(axes, "axes")], {"axis": 0})
        ends = em.add(size, bw.i64(begin, "begin"))
    grad = em.one("Slice", [douts[0], bw.i64(begin, "begin"), ends, bw.i64(axes, "axes")])
    return [grad] + [None] * (len(node.inputs) - 1)


def _fold_border(bw, x, dy, axes, begin, end, mode: str):
    """Adjoint of an edge/reflect Pad, one padded axis at a time (both modes are separable):
    the core of dy, plus each border's dy added onto the input positions it was copied from
    (edge: summed onto the first/last element; reflect: mirrored onto elements 1..b and
    n-1-e..n-2)."""
    shape = x.shape
    if shape is None:
        raise _Unsupported("the input rank is unknown")
    em, rank = bw.em, len(shape)
    grad = dy
    for axis, b, e in zip(axes, (int(v) for v in begin), (int(v) for v in end), strict=True):
        if not b and not e:
            continue
        n = shape[axis]
        if not isinstance(n, int | np.integer) or n < 1:
            raise _Unsupported(f"the padded axis {axis} must have a static size")
        if mode == "reflect" and max(b, e) > n - 1:
            raise _Unsupported("reflect pads must be smaller than the padded axis")
        at = bw.i64([axis], "axis")

        def take(start, stop, step=1, source=grad, at=at):
            args = [source, bw.i64([start], "s"), bw.i64([stop], "e"), at, bw.i64([step], "st")]
            return em.one("Slice", args)

        def place(part, before, after, axis=axis):
            pads = [0] * (2 * rank)
            pads[axis], pads[rank + axis] = before, after
            return em.one("Pad", [part, bw.i64(pads, "pads")])

        total = take(b, b + n)
        if mode == "edge":
            sums = {"keepdims": 1}
            if b:
                head = em.one("ReduceSum", [take(0, b), at], sums)
                total = em.add(total, place(head, 0, n - 1))
            if e:
                tail = em.one("ReduceSum", [take(b + n, b + n + e), at], sums)
                total = em.add(total, place(tail, n - 1, 0))
        else:  # reflect: padded[b - 1 - i] = x[1 + i], padded[b + n + i] = x[n - 2 - i]
            lowest = -(2**62)
            if b:
                total = em.add(total, place(take(b - 1, lowest, -1), 1, n - 1 - b))
            if e:
                total = em.add(total, place(take(b + n + e - 1, b + n - 1, -1), n - 1 - e, 1))
        grad = total
    return grad


@adjoint("Slice", summary="Pad of dy with zeros (constant starts/ends/axes, step 1)")
def _slice(bw, node, douts, needs):
    x = node.inputs[0]
    shape = x.shape
    params = [constant_value(t) if t.name else None for t in node.inputs[1:]]
    if any(p is None for p in params[:2]) or any(
        t.name and p is None for t, p in zip(node.inputs[3:], params[2:], strict=False)
    ):
        raise _Unsupported("starts, ends, axes and steps must be constants")
    if shape is None:
        raise _Unsupported("the input rank is unknown")
    rank = len(shape)
    starts, ends = (np.asarray(p, np.int64).reshape(-1) for p in params[:2])
    axes = params[2] if len(params) > 2 and params[2] is not None else np.arange(len(starts))
    steps = params[3] if len(params) > 3 and params[3] is not None else np.ones(len(starts))
    pads = [0] * (2 * rank)
    for start, end, axis, step in zip(
        starts, ends, np.reshape(axes, -1), np.reshape(steps, -1), strict=True
    ):
        axis = int(axis) % rank
        if int(step) != 1:
            raise _Unsupported("only step 1 is differentiated")
        dim = shape[axis]
        if not isinstance(dim, int | np.integer):
            raise _Unsupported(f"the sliced axis {axis} must have a static size")
        begin, stop, _ = slice(int(start), int(end), 1).indices(int(dim))
        stop = max(stop, begin)
        pads[axis] = begin
        pads[rank + axis] = int(dim) - stop
    if not any(pads):
        return [douts[0]] + [None] * (len(node.inputs) - 1)
    grad = bw.em.one("Pad", [douts[0], bw.i64(pads, "pads")], {"mode": "constant"})
    return [grad] + [None] * (len(node.inputs) - 1)


def _sizes_along(bw: Backward, tensors: Sequence[gs.Tensor], axis: int) -> list:
    """Size of each tensor along `axis`: ints where static, else 1-element int64 tensors."""
    sizes = []
    for t in tensors:
        dim = None if t.shape is None else t.shape[axis]
        if isinstance(dim, int | np.integer) and dim >= 0:
            sizes.append(int(dim))
        else:
            shape = bw.em.one("Shape", [t])
            sizes.append(bw.em.one("Gather", [shape, bw.i64([axis], "axis")], {"axis": 0}))
    return sizes


@adjoint("Concat", summary="Slice of dy for each input")
def _concat(bw, node, douts, needs):
    y = node.outputs[0]
    rank = len(y.shape) if y.shape is not None else len(node.inputs[0].shape)
    axis = int(node.attrs["axis"]) % rank
    sizes = _sizes_along(bw, node.inputs, axis)
    result: list[Grad] = []
    offset: int | gs.Tensor = 0
    em = bw.em
    for need, size in zip(needs, sizes, strict=True):
        if isinstance(offset, int) and isinstance(size, int):
            end: int | gs.Tensor = offset + size
        else:
            end = em.add(_as_tensor(bw, offset), _as_tensor(bw, size))
        if need:
            starts, ends = _as_tensor(bw, offset), _as_tensor(bw, end)
            result.append(em.one("Slice", [douts[0], starts, ends, bw.i64([axis], "axis")]))
        else:
            result.append(None)
        offset = end
    return result


def _as_tensor(bw: Backward, value) -> gs.Tensor:
    return bw.i64([value], "v") if isinstance(value, int) else value


@adjoint("Split", summary="Concat of the output adjoints (zeros where an output has none)")
def _split(bw, node, douts, needs):
    x = node.inputs[0]
    rank = len(x.shape) if x.shape is not None else None
    if rank is None:
        raise _Unsupported("the input rank is unknown")
    axis = int(node.attrs.get("axis", 0)) % rank
    parts = [
        d if d is not None else bw.zeros_like(out)
        for d, out in zip(douts, node.outputs, strict=True)
    ]
    grad = parts[0] if len(parts) == 1 else bw.em.one("Concat", parts, {"axis": axis})
    return [grad] + [None] * (len(node.inputs) - 1)


from onnxsplit.attribution import adjoints_resample  # noqa: E402,F401

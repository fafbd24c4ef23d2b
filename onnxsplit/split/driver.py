"""Apply the op rules to a canonical graph and build the dual-stream graph."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxsplit.canonicalize import Canonical
from onnxsplit.errors import OnnxSplitError, UnsupportedModelError
from onnxsplit.ops import NOT_PIECEWISE_LINEAR
from onnxsplit.split.emitter import Emitter, all_tensors, claim_names, names_in
from onnxsplit.split.registry import RULES, supported_ops
from onnxsplit.split.values import SPLIT, Abstract, Const, Pair, Plain, SplitMarker, Value
from onnxsplit.stabilize import Stabilizer, rectifies_at_zero

X_POS, X_NEG = "x_pos", "x_neg"


@dataclass(frozen=True)
class Recentered:
    """A re-centering (p, q) -> (relu(p - q), relu(q - p)) of the split graph, as references.

    source: the source graph's tensor A the outputs were made from (seeded: (relu(A),
    relu(A) - A)), or None. rectifier_pos: for a seeded re-centering of a Relu / Clip(0, hi)
    output, the positive stream p of the rectifier's input pair (p, q) (the rectifier passes
    relu(p - q), whose winner-takes-all adjoint reaches p alone)."""

    pos_in: gs.Tensor
    neg_in: gs.Tensor
    pos_out: gs.Tensor
    neg_out: gs.Tensor
    source: gs.Tensor | None = None
    rectifier_pos: gs.Tensor | None = None


@dataclass
class SplitGraph:
    """The split graph and what attribution needs from it, as tensor references (never names:
    merging it beside the source graph renames its tensors)."""

    graph: gs.Graph
    input_name: str
    output_name: str
    seed: gs.Tensor  # the source graph's tensor the split graph's input stands for
    logits: gs.Tensor
    g: gs.Tensor
    h: gs.Tensor
    x_pos: gs.Tensor
    x_neg: gs.Tensor
    exposed: dict[str, tuple[str, str]] = field(default_factory=dict)  # layer -> output names
    streams: dict[str, tuple[gs.Tensor, gs.Tensor]] = field(default_factory=dict)  # exposed
    rule_counts: Counter = field(default_factory=Counter)
    # every re-centering; a backward pass that treats the removed common part as a constant
    # passes adjoints straight through these
    recentered: list[Recentered] = field(default_factory=list)
    # seeded affine layers (rules_affine.AffineBlock), whose backward pass is an override
    blocks: list = field(default_factory=list)
    # placeholders of the source graph's tensors the seeded split graph reads (its inputs
    # after the first): (placeholder, source tensor)
    reads: list[tuple[gs.Tensor, gs.Tensor]] = field(default_factory=list)
    positive: list[gs.Tensor] = field(default_factory=list)  # streams > 0 by construction


def choose_input(canonical: Canonical, name: str | None) -> gs.Variable:
    inputs = canonical.graph.inputs
    if not inputs:
        raise OnnxSplitError("the model has no graph input")
    if name is not None:
        for tensor in inputs:
            if tensor.name == name:
                return _checked_input(tensor)
        raise OnnxSplitError(
            f"the model has no input '{name}'; its inputs are: " + ", ".join(t.name for t in inputs)
        )
    if len(inputs) > 1:
        raise OnnxSplitError(
            f"the model has {len(inputs)} inputs ({', '.join(t.name for t in inputs)}); "
            "choose the image/feature input with --input NAME"
        )
    tensor = inputs[0]
    return _checked_input(tensor)


def _checked_input(tensor: gs.Variable) -> gs.Variable:
    if tensor.shape and tensor.shape[0] == 0:
        raise OnnxSplitError(
            f"input '{tensor.name}' declares batch 0 ({tensor.shape}); export the model with "
            "a batch >= 1 or a dynamic batch axis"
        )
    if tensor.dtype is None or not np.issubdtype(np.dtype(tensor.dtype), np.floating):
        raise OnnxSplitError(
            f"input '{tensor.name}' has type {tensor.dtype}; a float input is needed"
        )
    return tensor


def choose_output(canonical: Canonical, name: str | None) -> gs.Variable:
    outputs = canonical.graph.outputs
    names = canonical.original_outputs
    if name is not None:
        for original, tensor in zip(names, outputs, strict=True):
            if name in (original, tensor.name):
                return tensor
        raise OnnxSplitError(
            f"the model has no output '{name}'; its outputs are: {', '.join(names)}"
        )
    if len(outputs) > 1:
        raise OnnxSplitError(
            f"the model has {len(outputs)} outputs ({', '.join(names)}); "
            "choose the logits with --output-name NAME"
        )
    return outputs[0]


def _abstract_inputs(node: gs.Node, values: dict[str, Abstract]) -> list[Abstract | None]:
    result = []
    for tensor in node.inputs:
        if isinstance(tensor, gs.Constant):
            result.append(Const(np.asarray(tensor.values)))
        elif not tensor.name:
            result.append(None)
        else:
            result.append(values.get(tensor.name, Plain(tensor)))
    return result


def check_graph(graph: gs.Graph, data_input: gs.Variable) -> None:
    """Raise one error naming every node that has no exact split rule."""
    problems = find_problems(graph, data_input)
    if problems:
        raise UnsupportedModelError(problems, supported_ops())


def find_problems(graph: gs.Graph, data_input: gs.Variable) -> list[tuple[str, str, str]]:
    """(node, op, reason) for every node on the activation path that cannot be split."""
    values: dict[str, Abstract] = {data_input.name: SPLIT}
    problems: list[tuple[str, str, str]] = []
    for node in graph.nodes:
        inputs = _abstract_inputs(node, values)
        if not any(isinstance(v, SplitMarker) for v in inputs):
            continue
        rule = RULES.get(node.op) if node.domain in ("", "ai.onnx", None) else None
        if rule is None:
            if node.op in NOT_PIECEWISE_LINEAR:
                why = "not piecewise linear"
            elif node.domain not in ("", "ai.onnx", None):
                why = f"custom domain '{node.domain}' is not supported"
            else:
                why = "no split rule for this op"
            problems.append((node.name or "<unnamed>", node.op, why))
        else:
            reason = rule.check(node, inputs)
            if reason:
                problems.append((node.name or "<unnamed>", node.op, reason))
        produces_plain = node.op in ("Shape", "Size")
        for out in node.outputs:
            values[out.name] = Plain(out) if produces_plain else SPLIT
    return problems


def split_graph(
    canonical: Canonical,
    stabilizer: Stabilizer,
    *,
    input_name: str | None = None,
    output_name: str | None = None,
    expose: tuple[str, ...] = (),
    fast: bool = False,
    start: str | None = None,
    seeded: bool = False,
) -> SplitGraph:
    """Build the split graph of `canonical`. Outputs: logits, g, h (+ exposed streams).

    start: split only the part of the graph after the tensor `start` (see `head_start_ok`):
    the split graph's input is that tensor A, seeded as the minimal pair (relu(A), relu(-A)),
    which is what the full split graph holds there when its stabilizer re-centers at `start`.
    seeded: the graph will run beside `canonical` and may read its tensors (extra inputs of the
    split graph, after the data input): affine layers take W (p - q) + b from the source and
    map only the mass p + q (one convolution per layer; SplitGraph.blocks lists them).
    """
    source = canonical.graph
    data_input = choose_input(canonical, input_name)
    output = choose_output(canonical, output_name)
    _check_dangling_inputs(source)
    check_other_inputs_unused(source, data_input)
    check_graph(source, data_input)
    known = {t.name for n in source.nodes for t in n.outputs}
    for name in expose:
        if name not in known:
            raise OnnxSplitError(f"cannot expose '{name}': the model has no such tensor")
    skip: set[int] = set()
    seed = data_input
    if start is not None:
        reason = head_start_problem(canonical, stabilizer, start, data_input, output)
        if reason:
            raise OnnxSplitError(f"cannot split from '{start}': {reason}")
        seed = source.tensors()[start]
        after = _downstream_nodes(source, start)
        skip = {id(n) for n in source.nodes if id(n) not in after and _depends_on(n, data_input)}

    graph = gs.Graph(opset=canonical.opset, name="onnxsplit")
    dtype = np.dtype(data_input.dtype)
    # the fast form relies on minimal pairs, which only a re-centering stabilizer maintains
    stable = bool(stabilizer.recenter_kinds)
    em = Emitter(
        graph,
        canonical.opset,
        dtype,
        fast=fast and stable,
        seeded=seeded and stable,
        taken=names_in(source),
    )
    em.exposed = set(expose)
    x = gs.Variable(seed.name, dtype=seed.dtype or data_input.dtype, shape=seed.shape)
    graph.inputs = [x]
    em.scope = "input"
    x_pos = em.relu(x)
    x_neg = em.relu(em.neg(x))
    values: dict[str, Value] = {seed.name: Pair(x_pos, x_neg, x)}
    exposed: dict[str, tuple[gs.Variable, gs.Variable]] = {}
    streams: dict[str, tuple[gs.Tensor, gs.Tensor]] = {}
    recentered: list[Recentered] = []
    rule_counts: Counter = Counter()

    for node in source.nodes:
        if id(node) in skip:
            continue
        inputs = _value_inputs(node, values)
        if not any(isinstance(v, Pair) for v in inputs):
            _copy_plain(em, node, inputs, values)
            continue
        rule = RULES[node.op]
        em.scope = node.name or node.op
        rule_counts[node.op] += 1
        outputs = rule.emit(em, node, inputs)
        split_inputs = sum(isinstance(v, Pair) for v in inputs)
        for tensor, value in zip(node.outputs, outputs, strict=True):
            if isinstance(value, Pair) and tensor.name in expose:
                g = em.one("Identity", [value.pos])
                h = em.one("Identity", [value.neg])
                g.dtype = h.dtype = dtype
                g.shape = h.shape = tensor.shape
                exposed[tensor.name] = (g, h)
                streams[tensor.name] = (value.pos, value.neg)
            if (
                isinstance(value, Pair)
                and tensor is not output
                and stabilizer.wants(rule.kind, split_inputs)
            ):
                em.scope = f"{node.name or node.op}/recenter"
                stable = stabilizer.apply(em, value, tensor)
                from_source = stable.difference is em.originals.get(tensor.name)
                rectifier_pos = None
                if from_source and stable.zero_neg and rectifies_at_zero(node):
                    rectifier_pos = inputs[0].pos
                recentered.append(
                    Recentered(
                        value.pos,
                        value.neg,
                        stable.pos,
                        stable.neg,
                        tensor if from_source else None,
                        rectifier_pos,
                    )
                )
                value = stable
            values[tensor.name] = value

    final = values.get(output.name)
    if not isinstance(final, Pair):
        raise OnnxSplitError(f"output '{output.name}' does not depend on input '{data_input.name}'")
    em.scope = "output"
    logits = em.sub(final.pos, final.neg)
    g, h = em.one("Identity", [final.pos]), em.one("Identity", [final.neg])
    for tensor in (logits, g, h):
        tensor.dtype, tensor.shape = dtype, output.shape
    exposed_outputs = [t for pair in exposed.values() for t in pair]
    graph.outputs = [logits, g, h, *exposed_outputs]
    if em.seeded:  # seeded re-centerings read the source: keep the streams they re-center
        # and the seeded layers' inputs (a zero negative stream may have no reader), which
        # the backward passes refer to
        kept = {id(t) for t in graph.outputs}
        streams_kept = [(r.pos_in, r.neg_in, r.pos_out, r.neg_out) for r in recentered]
        streams_kept += [(b.pos_in, b.neg_in) for b in em.blocks]
        for group in streams_kept:
            for tensor in group:
                if id(tensor) not in kept:
                    kept.add(id(tensor))
                    tensor.dtype = tensor.dtype or dtype
                    graph.outputs.append(tensor)
    graph.inputs = [x, *em.originals.values()]
    graph.cleanup().toposort()
    # the public names of the split model; any other tensor that has one is renamed
    public = [(logits, "logits"), (g, "g"), (h, "h"), (x_pos, X_POS), (x_neg, X_NEG)]
    for name, (eg, eh) in exposed.items():
        public += [(eg, f"{name}__g"), (eh, f"{name}__h")]
    positive = [t for t in all_tensors(graph) if t.name in em.positive]  # before renaming
    claim_names(graph, public, em.taken)
    return SplitGraph(
        graph,
        seed.name,
        output.name,
        seed=seed,
        logits=logits,
        g=g,
        h=h,
        x_pos=x_pos,
        x_neg=x_neg,
        exposed={name: (eg.name, eh.name) for name, (eg, eh) in exposed.items()},
        streams=streams,
        rule_counts=rule_counts,
        recentered=recentered,
        blocks=list(em.blocks),
        reads=[(em.originals[name], em.sources[name]) for name in em.originals],
        positive=positive,
    )


def _downstream_nodes(graph: gs.Graph, name: str) -> set[int]:
    """ids of the nodes that read `name` directly or through other nodes."""
    found: set[int] = set()
    stack = [graph.tensors()[name]]
    while stack:
        for node in stack.pop().outputs:
            if id(node) not in found:
                found.add(id(node))
                stack.extend(node.outputs)
    return found


def _depends_on(node: gs.Node, tensor: gs.Tensor) -> bool:
    """Whether `node` reads `tensor` directly or through other nodes."""
    stack, seen = [node], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for t in current.inputs:
            if t is tensor or t.name == tensor.name:
                return True
            stack.extend(t.inputs)
    return False


def head_start_problem(
    canonical: Canonical,
    stabilizer: Stabilizer,
    start: str,
    data_input: gs.Tensor,
    output: gs.Tensor,
) -> str | None:
    """Why the split graph cannot start at tensor `start` (None when it can).

    It can when the full split graph re-centers there (so its streams are exactly
    (relu(A), relu(-A)) with A the original tensor, up to rounding) and every activation the
    rest of the graph reads comes from `start` (no skip connection around it)."""
    source = canonical.graph
    tensors = source.tensors()
    if start not in tensors or not tensors[start].inputs:
        return "no node computes it"
    if start == output.name:
        return "it is the output"
    producer = tensors[start].inputs[0]
    rule = RULES.get(producer.op)
    if rule is None or not _depends_on(producer, data_input):
        return "it is not a split activation"
    split_inputs = sum(
        1
        for t in producer.inputs
        if t.name and (t is data_input or _depends_on_tensor(t, data_input))
    )
    if not stabilizer.wants(rule.kind, split_inputs):
        return f"the '{stabilizer.name}' stabilizer does not re-center after {producer.op}"
    after = _downstream_nodes(source, start)
    if not any(output in n.outputs for n in source.nodes if id(n) in after):
        return "the output does not depend on it"
    for node in source.nodes:
        if id(node) not in after:
            continue
        for t in node.inputs:
            if t.name == start or isinstance(t, gs.Constant) or not t.name:
                continue
            if t is data_input or (
                t.inputs and id(t.inputs[0]) not in after and _depends_on(t.inputs[0], data_input)
            ):
                return f"node '{node.name}' ({node.op}) reads '{t.name}', computed before it"
    return None


def _depends_on_tensor(tensor: gs.Tensor, data_input: gs.Tensor) -> bool:
    return bool(tensor.inputs) and _depends_on(tensor.inputs[0], data_input)


def _check_dangling_inputs(graph: gs.Graph) -> None:
    """A node input that nothing produces (no node, initializer or graph input)."""
    produced = {t.name for t in graph.inputs} | {t.name for n in graph.nodes for t in n.outputs}
    for node in graph.nodes:
        for tensor in node.inputs:
            if tensor.name and not isinstance(tensor, gs.Constant) and tensor.name not in produced:
                raise OnnxSplitError(
                    f"node '{node.name}' (op {node.op}) reads tensor '{tensor.name}', which no "
                    "node, initializer or graph input provides: the model is incomplete"
                )


def check_other_inputs_unused(graph: gs.Graph, data_input: gs.Variable) -> None:
    readers: dict[str, list[str]] = {}
    for node in graph.nodes:
        for tensor in node.inputs:
            readers.setdefault(tensor.name, []).append(f"node '{node.name}' (op {node.op})")
    others = [t.name for t in graph.inputs if t is not data_input and t.name in readers]
    if others:
        detail = "; ".join(f"'{name}' is read by {', '.join(readers[name])}" for name in others)
        raise OnnxSplitError(
            f"the model computes with other inputs besides '{data_input.name}': {detail}. "
            "onnxsplit splits models with one data input (choose it with --input NAME)"
        )
    if data_input.name not in readers:
        raise OnnxSplitError(
            f"no node reads input '{data_input.name}'; choose the data input with --input NAME"
        )


def _value_inputs(node: gs.Node, values: dict[str, Value]) -> list[Value | None]:
    result = []
    for tensor in node.inputs:
        if isinstance(tensor, gs.Constant):
            result.append(Const(np.asarray(tensor.values)))
        elif not tensor.name:
            result.append(None)
        else:
            result.append(values[tensor.name])
    return result


def _copy_plain(
    em: Emitter, node: gs.Node, inputs: list[Value | None], values: dict[str, Value]
) -> None:
    """Copy a node that only sees constants and shape arithmetic."""
    operands = []
    for tensor, value in zip(node.inputs, inputs, strict=True):
        if value is None:
            operands.append(None)
        elif isinstance(value, Const):
            operands.append(tensor if isinstance(tensor, gs.Constant) else em.const(value.value))
        else:
            operands.append(value.tensor)
    em.scope = node.name or node.op
    outs = em.op(node.op, operands, dict(node.attrs), len(node.outputs), domain=node.domain)
    for tensor, out in zip(node.outputs, outs, strict=True):
        values[tensor.name] = Plain(out)

"""The split graph inside an attribution model: merge it beside the original graph, find its
re-centering nodes (SplitGraph.recentered), and read off the two streams at a target layer.

The `normalized` stabilizer re-centers a pair (p, q) as d = Sub(p, q), (Relu(d), Relu(Neg(d))).
In the backward pass the removed common part min(p, q) is a constant, so the adjoint of the
re-centered pair passes straight to (p, q): each re-centering becomes an identity
`SubgraphAdjoint`. The nodes are found by their structure (a Sub whose output feeds exactly one
Relu and one Neg, the Neg feeding exactly one Relu); no other split rule emits that pattern.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
import onnx_graphsurgeon as gs

from onnxsplit.attribution.autodiff import SubgraphAdjoint
from onnxsplit.canonicalize import Canonical
from onnxsplit.errors import OnnxSplitError
from onnxsplit.split.driver import X_NEG, X_POS, head_start_problem, split_graph
from onnxsplit.split.registry import Kind
from onnxsplit.stabilize import Stabilizer, get_stabilizer

PREFIX = "split/"
HEAD_PREFIX = "splithead/"


# Attribution-only stabilizers beside onnxsplit.stabilize's modes: "every-layer" re-centers
# after every layer (affine ones too) except the last, as the prototype of FINDINGS.md did.
EXTRA_MODES = {
    "every-layer": Stabilizer(
        "every-layer", frozenset({Kind.AFFINE, Kind.RECTIFIER, Kind.MERGE, Kind.LINEAR})
    ),
}


def stabilizer_for(mode: str) -> Stabilizer:
    return EXTRA_MODES[mode] if mode in EXTRA_MODES else get_stabilizer(mode)


@dataclass(frozen=True)
class Recentering:
    """(p, q) -> (relu(p - q), relu(q - p)) in the split graph."""

    pos_in: gs.Tensor
    neg_in: gs.Tensor
    pos_out: gs.Tensor
    neg_out: gs.Tensor

    def override(self) -> SubgraphAdjoint:
        return SubgraphAdjoint.identity(
            (self.pos_in.name, self.neg_in.name), (self.pos_out.name, self.neg_out.name)
        )


@dataclass
class MergedSplit:
    """Tensors of a split graph merged into the attribution graph."""

    g: gs.Tensor
    h: gs.Tensor
    x_pos: gs.Tensor | None = None  # relu(x), the input's positive stream
    x_neg: gs.Tensor | None = None  # relu(-x)
    streams: dict[str, tuple[gs.Tensor, gs.Tensor]] = field(default_factory=dict)
    recenterings: list[Recentering] = field(default_factory=list)
    ratio_overrides: list | None = None  # SplitLRP's re-centering adjoints, built once

    def overrides(self) -> list[SubgraphAdjoint]:
        return [r.override() for r in self.recenterings]


def find_recenterings(nodes) -> list[Recentering]:
    found = []
    for sub in nodes:
        if sub.op != "Sub" or len(sub.inputs) != 2:
            continue
        d = sub.outputs[0]
        consumers = list(d.outputs)
        if len(consumers) != 2 or sorted(n.op for n in consumers) != ["Neg", "Relu"]:
            continue
        relu = next(n for n in consumers if n.op == "Relu")
        neg = next(n for n in consumers if n.op == "Neg")
        neg_users = list(neg.outputs[0].outputs)
        if len(neg_users) != 1 or neg_users[0].op != "Relu":
            continue
        found.append(
            Recentering(sub.inputs[0], sub.inputs[1], relu.outputs[0], neg_users[0].outputs[0])
        )
    return found


def _with_shapes(graph: gs.Graph, opset: int) -> gs.Graph:
    """The split emitter leaves intermediate shapes open; the adjoint rules want them."""
    model = gs.export_onnx(graph)
    del model.opset_import[:]
    model.opset_import.append(onnx.helper.make_opsetid("", opset))
    model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import))
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        return graph
    return gs.import_onnx(model)


def can_start_at(
    canonical: Canonical, data: gs.Tensor, logits: gs.Tensor, layer: str, mode: str
) -> bool:
    """Whether the split graph may start at `layer` (merge_split_graph(start=layer)): the
    stabilizer re-centers there and nothing after it reads an earlier activation."""
    return head_start_problem(canonical, stabilizer_for(mode), layer, data, logits) is None


def merge_split_graph(
    graph: gs.Graph,
    canonical: Canonical,
    data: gs.Tensor,
    logits: gs.Tensor,
    layers: tuple[str, ...],
    mode: str = "normalized",
    start: str | None = None,
    prefix: str | None = None,
) -> MergedSplit:
    """Build the split graph of `canonical` exposing `layers` and add its nodes to `graph`.

    Call before anything is added to canonical.graph (the split compiler reads it). The split
    graph reads the same data input; its tensors and nodes are renamed with the prefix 'split/'.
    The streams of each layer are returned re-centered when the stabilizer re-centers there.

    start: split only the graph after the original tensor `start`, seeded with
    (relu(A), relu(-A)) (prefix 'splithead/'; `can_start_at` tells whether it may). Its input
    streams x_pos, x_neg are then the streams at `start`, which is the only layer exposed.
    """
    prefix = prefix or (PREFIX if start is None else HEAD_PREFIX)
    split = split_graph(
        canonical,
        stabilizer_for(mode),
        input_name=data.name,
        output_name=logits.name,
        expose=() if start is not None else tuple(layers),
        start=start,
    )
    sg = _with_shapes(split.graph, canonical.opset)
    source_input = sg.inputs[0]
    reads = data if start is None else graph.tensors()[start]
    outputs = {t.name: t for t in sg.outputs}
    for tensor in sg.tensors().values():
        if tensor is not source_input:
            tensor.name = prefix + tensor.name
    for node in sg.nodes:
        node.name = prefix + (node.name or node.op)
        for i, tensor in enumerate(node.inputs):
            if tensor is source_input:
                node.inputs[i] = reads
    graph.nodes.extend(sg.nodes)
    tensors = sg.tensors()
    recenterings = [
        Recentering(*(tensors[prefix + n] for n in names))
        for names in split.recentered
        if all(prefix + n in tensors for n in names)
    ]
    if len(recenterings) != len(split.recentered):  # a name lost: fall back to the structure
        recenterings = find_recenterings(sg.nodes)
    by_input = {(r.pos_in.name, r.neg_in.name): r for r in recenterings}
    merged = MergedSplit(
        outputs["g"],
        outputs["h"],
        tensors.get(prefix + X_POS),
        tensors.get(prefix + X_NEG),
        recenterings=recenterings,
    )
    if start is not None:
        for layer in layers:
            if layer != start:
                raise OnnxSplitError(f"a split graph from '{start}' cannot expose '{layer}'")
        merged.streams[start] = (merged.x_pos, merged.x_neg)
        return merged
    for layer in layers:
        if layer not in split.exposed:
            raise OnnxSplitError(f"the split graph did not expose '{layer}'")
        g_name, h_name = split.exposed[layer]
        pos = outputs[g_name].inputs[0].inputs[0]
        neg = outputs[h_name].inputs[0].inputs[0]
        rec = by_input.get((pos.name, neg.name))
        merged.streams[layer] = (rec.pos_out, rec.neg_out) if rec else (pos, neg)
    return merged

"""The split graph inside an attribution model: merge it beside the original graph and read
off the two streams at a target layer, from the split compiler's records (references to its
tensors, `split.driver.SplitGraph`), never by names or by pattern.

The `normalized` stabilizer re-centers a pair (p, q) as (relu(p - q), relu(q - p)). In the
backward pass the removed common part min(p, q) is a constant, so the adjoint of the
re-centered pair passes straight to (p, q): each re-centering becomes an identity
`SubgraphAdjoint` (or SplitLRP's ratio step).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxsplit.attribution import lrp
from onnxsplit.attribution.autodiff import Backward, SubgraphAdjoint
from onnxsplit.canonicalize import Canonical
from onnxsplit.errors import OnnxSplitError
from onnxsplit.split.driver import SplitGraph, head_start_problem, split_graph
from onnxsplit.split.emitter import all_tensors, fresh_name, names_in
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
    source: gs.Tensor | None = None  # seeded: the original tensor the outputs are made from
    # a seeded re-centering of a Relu / Clip(0, hi) output A: the positive stream p of the
    # rectifier's input pair (p, q). Its positive input is max(p, q), whose winner-takes-all
    # adjoint goes to p where p >= q and to q only where relu(p - q) = A = 0, i.e. with a
    # zero factor A / max(p, q): so the rectifier and the re-centering together have the
    # adjoint s -> (s * A / p) on p alone (`rectifier_adjoint`), without masks.
    rectifier_pos: gs.Tensor | None = None

    def inputs(self) -> tuple[str, ...]:
        names = (self.pos_in.name, self.neg_in.name)
        return names if self.source is None else (*names, self.source.name)

    def outputs(self) -> tuple[str, str]:
        return (self.pos_out.name, self.neg_out.name)

    def adjoint(self, fn) -> SubgraphAdjoint:
        """An override of this re-centering: fn(bw, (d pos_out, d neg_out)) -> (d pos_in,
        d neg_in); the source tensor (seeded) gets no adjoint."""
        if self.source is None:
            return SubgraphAdjoint(self.inputs(), self.outputs(), fn)
        return SubgraphAdjoint(
            self.inputs(), self.outputs(), lambda bw, douts: [*fn(bw, douts), None]
        )

    def override(self) -> SubgraphAdjoint:
        return self.adjoint(lambda bw, douts: list(douts))

    def rectifier_adjoint(self, divisor: gs.Tensor) -> SubgraphAdjoint:
        """The rectifier and this re-centering as one step in SplitLRP's ratio form with
        winner-takes-all maxout: s_p = s_out * A / divisor (divisor: p, or p guarded against
        0; `lrp.ratio_step`), nothing to q."""
        assert self.rectifier_pos is not None and self.source is not None

        def fn(bw: Backward, douts):
            d = douts[0]
            if d is None:
                return [None, None]
            return [lrp.ratio_step(bw, d, self.pos_out, divisor), None]

        return SubgraphAdjoint((self.rectifier_pos.name, self.source.name), self.outputs(), fn)


@dataclass
class SeededBlock:
    """A seeded affine layer of the split graph (rules_affine._split_linear_seeded):
    (p, q, f) -> (p', q') = (m + f / 2, m - f / 2) with m = |W|/2 (p + q) + |b|/2 and f the
    source graph's output. Its backward pass (`override`) is the Jacobian transpose of the
    four-term form (W+ p + W- q + b+, W- p + W+ q + b-) in two transposed maps:

        s_p = |W|/2^T (s_p' + s_q') + W/2^T (s_p' - s_q'),
        s_q = |W|/2^T (s_p' + s_q') - W/2^T (s_p' - s_q').

    This is the gradient, and SplitLRP's ratio form with absorbed biases (the z-rule of a
    non-negative linear layer with its bias share absorbed is the gradient of s = R / value);
    `sink` collects the absorbed bias relevance sum(b+ s_p' + b- s_q') per sample."""

    pos_in: gs.Tensor
    neg_in: gs.Tensor
    original: gs.Tensor | None  # None: q = 0 and (p', q') = (W+ p + b+, W- p + b-)
    pos_out: gs.Tensor
    neg_out: gs.Tensor
    mass: gs.Node  # a map of the block reading `total` (its weight is replaced)
    total: gs.Tensor
    half_weight: np.ndarray  # W / 2, times the scale of (p', q') (2: the block emits 2p', 2q')
    bias_parts: tuple[np.ndarray, np.ndarray] | None  # (b+, b-), times the same scale
    zero_neg: bool = False  # q = relu(A) - A = 0 by construction (A >= 0 in the source)

    def override(self, sink: list | None = None, drop_zero_neg: bool = False) -> SubgraphAdjoint:
        """drop_zero_neg: give q no adjoint when it is 0 by construction (SplitLRP's ratio
        form, where the re-centering that made q multiplies its adjoint by q / q_in = 0)."""

        constants = self._constant_inputs()  # read by the block, given no adjoint
        extra = [None] * len(constants)

        def fn(bw: Backward, douts):
            dp, dq = douts
            em = bw.em
            if dp is None and dq is None:
                return [None, None, *extra]
            w = 2 * self.half_weight
            w_pos, w_neg = (np.maximum(v, 0).astype(w.dtype) for v in (w, -w))
            if drop_zero_neg and self.zero_neg:  # s_p = W+^T s_p' + W-^T s_q', s_q unused
                parts = [
                    self._transposed(bw, d, part)
                    for d, part in ((dp, w_pos), (dq, w_neg))
                    if d is not None
                ]
                grads = [em.total(parts), None]
            elif dp is None or dq is None:  # one output stream's adjoint d: W+^T d, W-^T d
                d, first, second = (dp, w_pos, w_neg) if dq is None else (dq, w_neg, w_pos)
                grads = [self._transposed(bw, d, first), self._transposed(bw, d, second)]
            else:
                sigma, delta = em.add(dp, dq), em.sub(dp, dq)
                a = self._transposed(bw, sigma, np.abs(self.half_weight))
                b = self._transposed(bw, delta, self.half_weight)
                grads = [em.add(a, b), em.sub(a, b)]
            if sink is not None and self.bias_parts is not None:
                terms = [
                    em.mul(d, em.const(part.astype(em.dtype), "bias"))
                    for d, part in zip((dp, dq), self.bias_parts, strict=True)
                    if d is not None and np.any(part)
                ]
                if terms:
                    sink.append(lrp._per_sample_sum(bw, em.total(terms), self.pos_out))
            return [*grads, *extra]

        return SubgraphAdjoint(
            (self.pos_in.name, self.neg_in.name, *constants),
            (self.pos_out.name, self.neg_out.name),
            fn,
        )

    def _constant_inputs(self) -> list[str]:
        """The source tensor f and, where the mass p + q was not summed from the streams
        (a re-centering's |A|), the tensor it was computed from."""
        names = [] if self.original is None else [self.original.name]
        streams = {self.pos_in.name, self.neg_in.name}
        made = self.total.inputs[0] if self.total.inputs else None
        if self.total.name not in streams and not (
            made is not None and {t.name for t in made.inputs} <= streams
        ):
            names.append(self.total.name)
        return names

    def _transposed(self, bw: Backward, grad: gs.Tensor, weight: np.ndarray):
        """The adjoint of the block's map with the weights `weight`."""
        node = self.mass
        needs = [t is self.total for t in node.inputs]
        data = needs.index(True)
        inputs = [
            t if i == data else bw.em.const(weight, "w", weight.dtype)
            for i, t in enumerate(node.inputs[:2])
        ]
        out = node.outputs[0]
        like = gs.Variable(out.name + "__signed", dtype=out.dtype, shape=out.shape)
        fake = gs.Node(node.op, attrs=dict(node.attrs), inputs=inputs, outputs=[like])
        try:
            return bw.run_rule(node.op, fake, [grad], needs[:2])[data]
        finally:
            fake.inputs.clear()
            fake.outputs.clear()


@dataclass
class MergedSplit:
    """Tensors of a split graph merged into the attribution graph."""

    g: gs.Tensor
    h: gs.Tensor
    x_pos: gs.Tensor | None = None  # relu(x), the input's positive stream
    x_neg: gs.Tensor | None = None  # relu(-x)
    streams: dict[str, tuple[gs.Tensor, gs.Tensor]] = field(default_factory=dict)
    recenterings: list[Recentering] = field(default_factory=list)
    ratio_overrides: dict = field(default_factory=dict)  # SplitLRP's, per maxout, built once
    blocks: list[SeededBlock] = field(default_factory=list)
    positive: set[str] = field(default_factory=set)  # stream tensors > 0 by construction

    def overrides(self) -> list[SubgraphAdjoint]:
        """Every override a backward pass of the split graph needs: the re-centerings as
        identities and the seeded affine layers (`block_overrides`)."""
        return [r.override() for r in self.recenterings] + self.block_overrides()

    def block_overrides(
        self, sink: list | None = None, drop_zero_neg: bool = False
    ) -> list[SubgraphAdjoint]:
        """The backward passes of the seeded affine layers (none unless built `seeded`)."""
        return [b.override(sink, drop_zero_neg) for b in self.blocks]

    def with_sink(self, overrides: list[SubgraphAdjoint], sink: list | None):
        """`overrides` (SplitLRP's ratio form) with the seeded affine layers' entries collecting
        absorbed bias shares into `sink` (unchanged when sink is None)."""
        if sink is None or not self.blocks:
            return overrides
        outputs = {(b.pos_out.name, b.neg_out.name) for b in self.blocks}
        kept = [o for o in overrides if tuple(o.outputs) not in outputs]
        return kept + self.block_overrides(sink, drop_zero_neg=True)


def infer_shapes_in_place(graph: gs.Graph, opset: int) -> None:
    """The split emitter leaves intermediate shapes open; the adjoint rules want them. Shapes
    are inferred on an exported copy and set on the graph's own tensors (their names are
    unique in the split graph), so references held elsewhere stay valid."""
    model = gs.export_onnx(graph, do_type_check=False)
    del model.opset_import[:]
    model.opset_import.append(onnx.helper.make_opsetid("", opset))
    model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import))
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        return
    infos = {v.name: v for v in [*model.graph.value_info, *model.graph.output]}
    for tensor in all_tensors(graph):
        info = infos.get(tensor.name)
        if info is None or isinstance(tensor, gs.Constant):
            continue
        kind = info.type.tensor_type
        if kind.elem_type and tensor.dtype is None:
            tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type)
        if kind.HasField("shape") and tensor.shape is None:
            tensor.shape = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in kind.shape.dim
            ]


def can_start_at(
    canonical: Canonical, data: gs.Tensor, logits: gs.Tensor, layer: str, mode: str
) -> bool:
    """Whether the split graph may start at `layer` (merge_split_graph(start=layer)): the
    stabilizer re-centers there and nothing after it reads an earlier activation."""
    return head_start_problem(canonical, stabilizer_for(mode), layer, data, logits) is None


def build_split(
    canonical: Canonical,
    data: gs.Tensor,
    logits: gs.Tensor,
    layers: tuple[str, ...],
    mode: str = "normalized",
    start: str | None = None,
    seeded: bool = False,
) -> SplitGraph:
    """The split graph that `merge_split_graph` merges (compiled from canonical.graph)."""
    return split_graph(
        canonical,
        stabilizer_for(mode),
        input_name=data.name,
        output_name=logits.name,
        expose=() if start is not None else tuple(layers),
        start=start,
        seeded=seeded,
    )


def merge_split_graph(
    graph: gs.Graph,
    canonical: Canonical,
    data: gs.Tensor,
    logits: gs.Tensor,
    layers: tuple[str, ...],
    mode: str = "normalized",
    start: str | None = None,
    prefix: str | None = None,
    seeded: bool = False,
    split: SplitGraph | None = None,
    taken: set[str] | None = None,
) -> MergedSplit:
    """Build the split graph of `canonical` exposing `layers` and add its nodes to `graph`.

    Call before anything is added to canonical.graph (the split compiler reads it). The split
    graph reads the same data input (and, seeded, the source tensors it was built from: its
    placeholders are replaced by those tensors, by reference). Its own tensors are renamed
    with `prefix` into names that nothing in `graph` has (`taken`: every name in use, updated);
    what attribution needs comes from the split compiler's records as references, so no path
    is found, lost or doubled by a name. The streams of each layer are returned re-centered
    when the stabilizer re-centers there.

    start: split only the graph after the original tensor `start`, seeded with
    (relu(A), relu(-A)) (prefix 'splithead/'; `can_start_at` tells whether it may). Its input
    streams x_pos, x_neg are then the streams at `start`, which is the only layer exposed.
    seeded: affine layers read the original graph's outputs (one map per layer instead of
    four); their backward passes must then be replaced by `MergedSplit.block_overrides()`.
    split: the result of `build_split` with the same arguments, when several split graphs are
    merged into one graph (build them all before merging any: the compiler reads the graph).
    """
    prefix = prefix or (PREFIX if start is None else HEAD_PREFIX)
    if split is None:
        split = build_split(canonical, data, logits, layers, mode, start, seeded)
    if taken is None:
        taken = names_in(graph)
    sg = split.graph
    infer_shapes_in_place(sg, canonical.opset)
    reads = {id(placeholder): tensor for placeholder, tensor in split.reads}
    reads[id(sg.inputs[0])] = split.seed
    for tensor in all_tensors(sg):
        if id(tensor) not in reads and tensor.name:  # "" marks an omitted optional input
            tensor.name = fresh_name(prefix + tensor.name, taken)
    for node in sg.nodes:
        node.name = fresh_name(prefix + (node.name or node.op), taken)
        for i, tensor in enumerate(node.inputs):
            if id(tensor) in reads:
                node.inputs[i] = reads[id(tensor)]
    graph.nodes.extend(sg.nodes)
    sg.nodes = []
    recenterings = [
        Recentering(r.pos_in, r.neg_in, r.pos_out, r.neg_out, r.source, r.rectifier_pos)
        for r in split.recentered
    ]
    merged = MergedSplit(
        split.g,
        split.h,
        split.x_pos,
        split.x_neg,
        recenterings=recenterings,
        positive={t.name for t in split.positive},
    )
    for b in split.blocks:
        merged.blocks.append(
            SeededBlock(
                b.pos_in,
                b.neg_in,
                b.original,
                b.pos_out,
                b.neg_out,
                b.mass_node,
                b.total,
                b.half_weight,
                b.bias_parts,
                b.zero_neg,
            )
        )
    if start is not None:
        for layer in layers:
            if layer != start:
                raise OnnxSplitError(f"a split graph from '{start}' cannot expose '{layer}'")
        merged.streams[start] = (merged.x_pos, merged.x_neg)
        return merged
    by_input = {(id(r.pos_in), id(r.neg_in)): r for r in recenterings}
    for layer in layers:
        if layer not in split.streams:
            raise OnnxSplitError(f"the split graph did not expose '{layer}'")
        pos, neg = split.streams[layer]
        rec = by_input.get((id(pos), id(neg)))
        merged.streams[layer] = (rec.pos_out, rec.neg_out) if rec else (pos, neg)
    return merged

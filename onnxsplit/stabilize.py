"""Normalization nodes that keep the two streams bounded on deep networks.

`raw` emits the plain DC split: g and h are globally monotone and convex in (x+, x-), but their
magnitudes grow geometrically with depth (|W| instead of W at every layer) and f = g - h is lost
to cancellation on deep networks. `normalized` (the default) re-centers a tensor after every
rectifier and every merge of activations: (p, q) -> (relu(p - q), relu(q - p)), i.e. it removes
the common part min(p, q). f and the activation pattern are unchanged; the streams become the
minimal split of the activation, so every value stays of the size of the activations themselves.
docs/normalization.md has the numbers behind this choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from onnxsplit.blocked_layout import static_channels
from onnxsplit.ops import clip_floor
from onnxsplit.split.emitter import Emitter
from onnxsplit.split.registry import Kind
from onnxsplit.split.values import Pair


@dataclass(frozen=True)
class Stabilizer:
    name: str
    recenter_kinds: frozenset[Kind]

    def wants(self, kind: Kind, split_inputs: int) -> bool:
        if kind == Kind.MERGE:
            return Kind.MERGE in self.recenter_kinds and split_inputs >= 2
        return kind in self.recenter_kinds

    def apply(self, em: Emitter, pair: Pair, original: gs.Tensor | None = None) -> Pair:
        """(relu(d), relu(-d)) with d = pos - neg; with `em.seeded`, d is the source graph's
        tensor `original` (which pos - neg equals up to rounding) and relu(-d) = relu(d) - d."""
        if em.seeded and original is not None:
            difference = em.original(original)
            if non_negative_source(original):  # relu(A) = A, relu(-A) = 0
                pos = em.one("Identity", [difference])
                return Pair(pos, em.sub(pos, difference), difference, zero_neg=True, total=pos)
            pos = em.relu(difference)
            channels = static_channels(original)
            neg = em.plus_scaled(pos, difference, -1.0, channels)
            # relu(d) + relu(-d) = |d| exactly; an Add stays in onnxruntime's blocked layout
            total = em.add(pos, neg) if channels else em.one("Abs", [difference])
            return Pair(pos, neg, difference, total=total)
        difference = em.sub(pair.pos, pair.neg)
        return Pair(em.relu(difference), em.relu(em.neg(difference)), difference)


def non_negative_source(tensor: gs.Tensor) -> bool:
    """Whether a source graph's tensor is >= 0 by construction: the output of a Relu or of a
    Clip with a constant lower bound >= 0 (so relu(-A) = 0 after a seeded re-centering)."""
    if not tensor.inputs:
        return False
    node = tensor.inputs[0]
    if node.op == "Relu":
        return True
    floor = clip_floor(node) if node.op == "Clip" else None
    return floor is not None and floor >= 0


def rectifies_at_zero(node: gs.Node) -> bool:
    """A Relu, or a Clip whose lower bound is 0: on a split pair (p, q) its positive output
    stream is max(p, q) (ReLU6's cap only adds to the negative stream)."""
    return node.op == "Relu" or (node.op == "Clip" and clip_floor(node) == 0.0)


STABILIZERS = {
    "normalized": Stabilizer("normalized", frozenset({Kind.RECTIFIER, Kind.MERGE})),
    "raw": Stabilizer("raw", frozenset()),
}


def get_stabilizer(mode: str) -> Stabilizer:
    from onnxsplit.errors import OnnxSplitError

    if mode not in STABILIZERS:
        raise OnnxSplitError(f"unknown mode '{mode}'; choose one of {', '.join(STABILIZERS)}")
    return STABILIZERS[mode]

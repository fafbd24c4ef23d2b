"""Affine ops: the weights W = W+ - W- and biases b = b+ - b- mix the two streams.

    z+ = W+ a+ + W- a- + b+        z- = W- a+ + W+ a- + b-

so z+ - z- = W (a+ - a-) + b, and every coefficient applied to a stream is non-negative.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxsplit.split.emitter import Emitter
from onnxsplit.split.registry import Kind, const_inputs, is_split, only_first_split, rule
from onnxsplit.split.values import Abstract, Const, Pair, Value, negative_part, positive_part
from onnxsplit.stabilize import rectifies_at_zero

Apply = Callable[[gs.Variable, np.ndarray], gs.Variable]
FLOOR = 1e-30  # added to b+ of a stream that only a rectifier's ratio step divides by


def split_linear(
    em: Emitter,
    pair: Pair,
    weight: np.ndarray,
    apply: Apply,
    bias: np.ndarray | None = None,
    original: gs.Tensor | None = None,
) -> Pair:
    """Apply the linear map `apply(., W)` to a pair, with W split by sign, then add the bias.

    original: the node's output in the source graph (= W (p - q) + b), given by rules that
    compute a whole node; with `em.seeded` it replaces the convolution of the difference."""
    if em.seeded and original is not None:
        return _split_linear_seeded(em, pair, weight, apply, bias, original)
    if em.fast and pair.difference is not None:
        return _split_linear_minimal(em, pair.difference, weight, apply, bias)
    w_pos, w_neg = positive_part(weight), negative_part(weight)

    def stream(same: gs.Variable, other: gs.Variable, w_same, w_other) -> gs.Variable:
        terms = [
            apply(same, w_same) if np.any(w_same) else None,
            apply(other, w_other) if np.any(w_other) else None,
        ]
        terms = [t for t in terms if t is not None]
        if not terms:
            return em.zeros_like(apply(same, w_same))
        return em.total(terms)

    pos = stream(pair.pos, pair.neg, w_pos, w_neg)
    neg = stream(pair.pos, pair.neg, w_neg, w_pos)
    if bias is not None:
        pos = em.plus_const(pos, positive_part(bias))
        neg = em.plus_const(neg, negative_part(bias))
    return Pair(pos, neg)


def _split_linear_minimal(
    em: Emitter, d: gs.Variable, weight: np.ndarray, apply: Apply, bias: np.ndarray | None
) -> Pair:
    """The same streams from d when (p, q) = (relu(d), relu(-d)):

    W+ relu(d) + W- relu(-d) = (|W| |d| + W d) / 2,  so with the mass m = |W| |d| + |b| and the
    output f = W d + b:   p' = (m + f) / 2,  q' = (m - f) / 2,   p' - q' = f.

    Emitted as maps with W/2 and |W|/2 (halving is exact: the same numbers as halving the
    sums, without the two multiplications).
    """
    half = np.asarray(0.5, weight.dtype)
    output = apply(d, (weight * half).astype(weight.dtype))
    mass = apply(em.one("Abs", [d]), (np.abs(weight) * half).astype(weight.dtype))
    if bias is not None:
        output = em.plus_const(output, (bias * half).astype(bias.dtype))
        mass = em.plus_const(mass, (np.abs(bias) * half).astype(bias.dtype))
    return Pair(em.add(mass, output), em.sub(mass, output))


def _split_linear_seeded(
    em: Emitter,
    pair: Pair,
    weight: np.ndarray,
    apply: Apply,
    bias: np.ndarray | None,
    original: gs.Tensor,
) -> Pair:
    """The streams from the mass of the pair and the source graph's output f = W (p - q) + b:

    W+ p + W- q + b+ = (|W| (p + q) + |b| + f) / 2,   W- p + W+ q + b- = (|W| (p + q) + |b| - f) / 2

    (W+ = (|W| + W) / 2, W- = (|W| - W) / 2; any pair, minimal or not). One map with |W| / 2
    per layer; the backward pass of the block (p, q, f) -> (p', q') is an override
    (`em.blocks`, onnxsplit.attribution.splitgraph) with two transposed maps, |W|^T and W^T.
    """
    half = np.asarray(0.5, em.dtype)

    def mapped(x: gs.Variable, w: np.ndarray, b: np.ndarray | None):
        """(w x + b, the node of w x)"""
        y = apply(x, w.astype(weight.dtype))
        node = y.inputs[0]
        if b is not None:
            b = b.astype(weight.dtype)
            if node.op == "Conv" and len(node.inputs) == 2:  # the Conv's own bias input
                per_channel = np.broadcast_to(b.reshape(-1), w.shape[:1])
                node.inputs.append(em.const(np.ascontiguousarray(per_channel), "b"))
            else:
                y = em.plus_const(y, b)
        return y, node

    rectified = _feeds_rectifiers_only(original) and original.name not in em.exposed
    scale = 1.0
    if pair.zero_neg and rectified:
        # q = 0 by construction and only p' is read on (by the rectifier's ratio step):
        # (W+ p + b+, W- p + b-), whose second map nothing reads. p >= 0, so with FLOOR
        # added to b+ the stream p' is > 0 everywhere (em.positive: the ratio step divides
        # by it without a guard); FLOOR is below float32's resolution of any b+ > 1e-23
        total, source = pair.pos, None
        lifted = (0 if bias is None else positive_part(bias)) + np.asarray(FLOOR, weight.dtype)
        pos, node = mapped(total, positive_part(weight), np.asarray(lifted, weight.dtype))
        em.positive.add(pos.name)
        neg, _ = mapped(total, negative_part(weight), bias if bias is None else negative_part(bias))
    else:  # one map of the mass p + q (q = 0: of p) and f from the source
        total = pair.pos if pair.zero_neg else pair.total or em.add(pair.pos, pair.neg)
        source = original
        f = em.original(original)
        if rectified:
            # only the rectifier reads the streams, and its ratio step is scale-free: emit
            # (2p', 2q') = (m + f, m - f) with m = |W| (p + q) + |b|, so that the sum is one
            # addition of two convolution outputs (onnxruntime keeps it in its blocked
            # layout and fuses it into the map) instead of halving f first
            scale = 2.0
            # where the rectifier's output A > 0, f > 0 and m + f = m + relu(f); elsewhere
            # the ratio step multiplies by A = 0, so m + relu(f) serves, and with FLOOR in m
            # it is > 0 (no guard). A Relu's own output is read (the source keeps its
            # Conv+Relu fusion); for a ReLU6 the Relu is emitted here, and
            # blocked_layout.fuse_clips lets the Clip read it (exact: the Clip's floor is 0)
            relu = _relu_output(original)
            lifted = (0 if bias is None else np.abs(bias)) + np.asarray(FLOOR, weight.dtype)
            mass, node = mapped(total, np.abs(weight), np.asarray(lifted, weight.dtype))
            pos = em.add(mass, em.relu(f) if relu is None else em.original(relu))
            em.positive.add(pos.name)
            neg = em.plus_scaled(mass, f, -1.0, _channels_beside(node, f))
        else:
            mass, node = mapped(
                total, np.abs(weight) * half, bias if bias is None else np.abs(bias) * half
            )
            channels = _channels_beside(node, f)
            pos = em.plus_scaled(mass, f, 0.5, channels)
            neg = em.plus_scaled(mass, f, -0.5, channels)
    em.blocks.append(
        AffineBlock(
            pair.pos,
            pair.neg,
            source,
            pos,
            neg,
            node,
            total,
            (weight * half * scale).astype(weight.dtype),
            None if bias is None else (positive_part(bias) * scale, negative_part(bias) * scale),
            pair.zero_neg,
        )
    )
    return Pair(pos, neg)


def _channels_beside(node: gs.Node, f: gs.Tensor) -> int | None:
    """The output channels of a 2-D Conv map whose source output f is rank 4 (where a
    depthwise Conv can scale f), else None."""
    if node.op == "Conv" and f.shape is not None and len(f.shape) == 4:
        return int(node.inputs[1].shape[0])
    return None


def _feeds_rectifiers_only(tensor: gs.Tensor) -> bool:
    """Whether every reader of the source tensor is a Relu or a Clip with lower bound 0."""
    readers = list(tensor.outputs)
    return bool(readers) and all(rectifies_at_zero(node) for node in readers)


def _relu_output(tensor: gs.Tensor) -> gs.Tensor | None:
    """The output of the one Relu that reads the source tensor, if that is its only reader."""
    readers = list(tensor.outputs)
    if len(readers) == 1 and readers[0].op == "Relu":
        return readers[0].outputs[0]
    return None


@dataclass(frozen=True)
class AffineBlock:
    """A seeded affine layer (p, q, f) -> (p', q'): its tensors and its map node (reading
    `total` = p + q) as references, W / 2, and (b+, b-) for the absorbed bias shares; the last
    two times the scale of the emitted streams (2 where it emits (2p', 2q') for a rectifier)."""

    pos_in: gs.Tensor
    neg_in: gs.Tensor
    original: gs.Tensor | None  # the source graph's tensor f (None: q = 0, two-map form)
    pos_out: gs.Tensor
    neg_out: gs.Tensor
    mass_node: gs.Node
    total: gs.Tensor
    half_weight: np.ndarray
    bias_parts: tuple[np.ndarray, np.ndarray] | None
    zero_neg: bool = False  # q = 0 by construction (total = p)


def scale_pair(em: Emitter, pair: Pair, factor: np.ndarray) -> Pair:
    """Elementwise multiplication of a pair by a constant of any sign (with broadcasting)."""
    factor = np.asarray(factor, dtype=em.dtype)
    return split_linear(em, pair, factor, lambda x, w: em.times_const(x, w) or em.mul(x, w))


def shift_pair(em: Emitter, pair: Pair, offset: np.ndarray) -> Pair:
    offset = np.asarray(offset, dtype=em.dtype)
    return Pair(
        em.plus_const(pair.pos, positive_part(offset)),
        em.plus_const(pair.neg, negative_part(offset)),
    )


# Conv -------------------------------------------------------------------------------
def _check_conv(node: gs.Node, inputs: list[Abstract]) -> str | None:
    return only_first_split(node, inputs)


@rule(
    "Conv",
    kind=Kind.AFFINE,
    check=_check_conv,
    summary="W+/W- convolutions on each stream (groups, dilations, pads, auto_pad kept)",
)
def conv(em: Emitter, node: gs.Node, inputs: list[Value]) -> list[Value]:
    return [split_convolution(em, node, inputs)]


def split_convolution(em: Emitter, node: gs.Node, inputs: list[Value]) -> Value:
    """A Conv or ConvTranspose with constant weights (and bias) on a split activation: the
    same op with W+ and W- (its attributes kept) on each stream."""
    weight = inputs[1].value
    bias = inputs[2].value if len(inputs) > 2 and inputs[2] is not None else None
    if bias is not None:
        bias = bias.reshape(-1, *([1] * (weight.ndim - 2)))  # broadcast over [N, O, *spatial]
    attrs = dict(node.attrs)
    return split_linear(
        em,
        inputs[0],
        weight,
        lambda x, w: em.one(node.op, [x, w], attrs),
        bias,
        original=node.outputs[0],
    )


# Gemm / MatMul ----------------------------------------------------------------------
def _check_gemm(node: gs.Node, inputs: list[Abstract]) -> str | None:
    if is_split(inputs[0]) and not is_split(inputs[1]):
        return const_inputs(node, inputs, [1, 2])
    if is_split(inputs[1]) and not is_split(inputs[0]):
        return const_inputs(node, inputs, [0, 2])
    return "a product of two activations is not piecewise linear"


@rule(
    "Gemm",
    kind=Kind.AFFINE,
    check=_check_gemm,
    summary="alpha*A'B' + beta*C with the constant factor split by sign (transA/transB)",
)
def gemm(em: Emitter, node: gs.Node, inputs: list[Value]) -> list[Value]:
    alpha = float(node.attrs.get("alpha", 1.0))
    beta = float(node.attrs.get("beta", 1.0))
    trans_a, trans_b = int(node.attrs.get("transA", 0)), int(node.attrs.get("transB", 0))
    bias = beta * inputs[2].value if len(inputs) > 2 and inputs[2] is not None else None
    if isinstance(inputs[0], Pair):
        data = transpose_pair(em, inputs[0]) if trans_a else inputs[0]
        weight = inputs[1].value.T if trans_b else inputs[1].value
        apply = lambda x, w: em.one("MatMul", [x, w])  # noqa: E731
    else:
        data = transpose_pair(em, inputs[1]) if trans_b else inputs[1]
        weight = inputs[0].value.T if trans_a else inputs[0].value
        apply = lambda x, w: em.one("MatMul", [w, x])  # noqa: E731
    out = split_linear(em, data, alpha * weight, apply, bias, original=node.outputs[0])
    return [out]


def transpose_pair(em: Emitter, pair: Pair) -> Pair:
    return Pair(
        em.one("Transpose", [pair.pos], {"perm": [1, 0]}),
        em.one("Transpose", [pair.neg], {"perm": [1, 0]}),
    )


@rule(
    "MatMul",
    kind=Kind.AFFINE,
    check=_check_gemm,
    summary="activation @ constant or constant @ activation, the constant split by sign",
)
def matmul(em: Emitter, node: gs.Node, inputs: list[Value]) -> list[Value]:
    original = node.outputs[0]
    if isinstance(inputs[0], Pair):
        apply = lambda x, w: em.one("MatMul", [x, w])  # noqa: E731
        return [split_linear(em, inputs[0], inputs[1].value, apply, original=original)]
    apply = lambda x, w: em.one("MatMul", [w, x])  # noqa: E731
    return [split_linear(em, inputs[1], inputs[0].value, apply, original=original)]


# BatchNormalization (when nothing precedes it to fold into) -----------------------------
def _check_batchnorm(node: gs.Node, inputs: list[Abstract]) -> str | None:
    return only_first_split(node, inputs[:5]) or (
        None if node.inputs[0].shape is not None else "the input rank is unknown"
    )


@rule(
    "BatchNormalization",
    kind=Kind.AFFINE,
    check=_check_batchnorm,
    summary="per-channel affine s*x + t (inference mode), s split by sign",
)
def batchnorm(em: Emitter, node: gs.Node, inputs: list[Value]) -> list[Value]:
    scale, shift, mean, var = (np.asarray(v.value, np.float64) for v in inputs[1:5])
    factor = scale / np.sqrt(var + float(node.attrs.get("epsilon", 1e-5)))
    offset = shift - mean * factor
    rank = len(node.inputs[0].shape)
    shape = (-1,) + (1,) * (rank - 2)
    out = scale_pair(em, inputs[0], factor.reshape(shape))
    return [shift_pair(em, out, offset.reshape(shape))]


# elementwise arithmetic ----------------------------------------------------------------
def _check_mul(node: gs.Node, inputs: list[Abstract]) -> str | None:
    split = [is_split(v) for v in inputs]
    if all(split):
        return "a product of two activations is not piecewise linear"
    other = inputs[1] if split[0] else inputs[0]
    if not isinstance(other, Const):
        return "the factor must be a constant"
    return None


@rule(
    "Mul",
    kind=Kind.AFFINE,
    check=_check_mul,
    summary="multiplication by a constant of any sign (broadcast)",
)
def mul(em: Emitter, node: gs.Node, inputs: list[Value]) -> list[Value]:
    pair, factor = (inputs[0], inputs[1]) if isinstance(inputs[0], Pair) else (inputs[1], inputs[0])
    return [scale_pair(em, pair, factor.value)]


def _check_div(node: gs.Node, inputs: list[Abstract]) -> str | None:
    if not is_split(inputs[0]):
        return "division by an activation is not piecewise linear"
    if not isinstance(inputs[1], Const):
        return "the divisor must be a constant"
    if np.any(inputs[1].value == 0):
        return "the divisor contains zeros"
    return None


@rule("Div", kind=Kind.AFFINE, check=_check_div, summary="division by a non-zero constant")
def div(em: Emitter, node: gs.Node, inputs: list[Value]) -> list[Value]:
    return [scale_pair(em, inputs[0], 1.0 / inputs[1].value.astype(np.float64))]


def _check_sum(node: gs.Node, inputs: list[Abstract]) -> str | None:
    for i, value in enumerate(inputs):
        if not is_split(value) and not isinstance(value, Const):
            return f"input {i} is computed at run time but is not an activation"
    return None


@rule(
    "Add",
    "Sum",
    kind=Kind.MERGE,
    check=_check_sum,
    summary="sum of activations (residuals) per stream; constants split by sign",
)
def add(em: Emitter, node: gs.Node, inputs: list[Value]) -> list[Value]:
    pairs = [v for v in inputs if isinstance(v, Pair)]
    offset = sum((v.value for v in inputs if isinstance(v, Const)), np.zeros((), em.dtype))
    out = Pair(em.total([p.pos for p in pairs]), em.total([p.neg for p in pairs]))
    return [shift_pair(em, out, offset)]


@rule(
    "Sub",
    kind=Kind.MERGE,
    check=_check_sum,
    summary="a - b = (a+ + b-) - (a- + b+); constants split by sign",
)
def sub(em: Emitter, node: gs.Node, inputs: list[Value]) -> list[Value]:
    left, right = (em.as_pair(v) for v in inputs)
    return [Pair(em.add(left.pos, right.neg), em.add(left.neg, right.pos))]


@rule("Neg", kind=Kind.LAYOUT, summary="swaps the two streams")
def neg(em: Emitter, node: gs.Node, inputs: list[Value]) -> list[Value]:
    return [Pair(inputs[0].neg, inputs[0].pos)]

"""Max-type ops. With z = p - q, each is a maximum of non-negative combinations of p and q:

    relu(z)        = max(p, q) - q
    clip(z, lo, hi)= max(p, q + lo) - max(p - hi, q)        (ReLU6: lo = 0, hi = 6)
    leaky(z, a)    = max(p + a q, a p + q) - (1 + a) q       (0 <= a <= 1)
    max_i(z_i)     = max_i(p_i + sum_{j!=i} q_j) - sum_j q_j
    |z|            = 2 max(p, q) - (p + q)

so both output streams stay monotone and convex in (p, q).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxsplit.ops import clip_operands
from onnxsplit.split.emitter import Emitter
from onnxsplit.split.registry import Kind, const_inputs, is_split, rule
from onnxsplit.split.values import Abstract, Const, Pair, Value


@rule("Relu", kind=Kind.RECTIFIER, summary="max(p, q) - q")
def relu(em: Emitter, node: gs.Node, inputs: list[Value]) -> list[Value]:
    pair = inputs[0]
    return [Pair(em.max(pair.pos, pair.neg), pair.neg)]


def clip_bounds(node: gs.Node, inputs: list[Value | Abstract]) -> tuple[float | None, float | None]:
    """(lo, hi) of a Clip, None where unbounded (inputs since opset 11, attributes before)."""
    bounds = []
    for index, operand in enumerate(clip_operands(node), start=1):
        if isinstance(operand, gs.Tensor):  # its abstract value (a folded constant or not)
            value = inputs[index] if index < len(inputs) else None
            operand = (
                float(np.asarray(value.value).reshape(-1)[0]) if isinstance(value, Const) else None
            )
        bounds.append(operand)
    lo, hi = bounds
    lo = None if lo is not None and np.isneginf(lo) else lo
    hi = None if hi is not None and np.isposinf(hi) else hi
    return lo, hi


def _check_clip(node: gs.Node, inputs: list[Abstract]) -> str | None:
    reason = const_inputs(node, inputs, [1, 2])
    if reason:
        return reason
    lo, hi = clip_bounds(node, inputs)
    if lo is not None and hi is not None and hi < lo:
        return f"Clip bounds are inverted (min {lo} > max {hi})"
    return None


@rule(
    "Clip",
    kind=Kind.RECTIFIER,
    check=_check_clip,
    summary="max(p, q + lo) - max(p - hi, q); ReLU6 in one step",
)
def clip(em: Emitter, node: gs.Node, inputs: list[Value]) -> list[Value]:
    pair = inputs[0]
    lo, hi = clip_bounds(node, inputs)
    if lo is None:
        pos = pair.pos
    else:
        pos = em.max(pair.pos, em.plus_const(pair.neg, np.asarray(lo, em.dtype)))
    if hi is None:
        neg = pair.neg
    else:
        neg = em.max(em.plus_const(pair.pos, np.asarray(-hi, em.dtype)), pair.neg)
    return [Pair(pos, neg)]


def _leaky(em: Emitter, pair: Pair, slope: np.ndarray) -> Pair:
    """leaky(z) = max(z, a z) for 0 <= a <= 1."""
    slope = np.asarray(slope, em.dtype)
    scaled_neg = em.mul(pair.neg, slope)  # shared, so that pos - neg cancels exactly
    pos = em.max(em.add(pair.pos, scaled_neg), em.add(em.mul(pair.pos, slope), pair.neg))
    return Pair(pos, em.add(pair.neg, scaled_neg))


def _check_leaky(node: gs.Node, inputs: list[Abstract]) -> str | None:
    alpha = float(node.attrs.get("alpha", 0.01))
    if not 0 <= alpha <= 1:
        return f"alpha={alpha} outside [0, 1] makes the activation non-convex"
    return None


@rule(
    "LeakyRelu",
    kind=Kind.RECTIFIER,
    check=_check_leaky,
    summary="max(p + a q, a p + q) - (1 + a) q for 0 <= a <= 1",
)
def leaky_relu(em: Emitter, node: gs.Node, inputs: list[Value]) -> list[Value]:
    return [_leaky(em, inputs[0], np.asarray(float(node.attrs.get("alpha", 0.01))))]


def _check_prelu(node: gs.Node, inputs: list[Abstract]) -> str | None:
    reason = const_inputs(node, inputs, [1])
    if reason:
        return reason
    slope = inputs[1].value
    if np.any(slope < 0) or np.any(slope > 1):
        return "slopes outside [0, 1] make the activation non-convex"
    return None


@rule(
    "PRelu",
    kind=Kind.RECTIFIER,
    check=_check_prelu,
    summary="LeakyRelu with a constant per-channel slope in [0, 1]",
)
def prelu(em: Emitter, node: gs.Node, inputs: list[Value]) -> list[Value]:
    return [_leaky(em, inputs[0], inputs[1].value)]


def _check_max(node: gs.Node, inputs: list[Abstract]) -> str | None:
    for i, value in enumerate(inputs):
        if not is_split(value) and not isinstance(value, Const):
            return f"input {i} is computed at run time but is not an activation"
    return None


def pair_max(em: Emitter, pairs: list[Pair]) -> Pair:
    """max_i(p_i - q_i) as (max_i(p_i + sum_{j != i} q_j), sum_j q_j)."""
    candidates = [
        em.total([pairs[i].pos] + [pairs[j].neg for j in range(len(pairs)) if j != i])
        for i in range(len(pairs))
    ]
    return Pair(em.max(*candidates), em.total([p.neg for p in pairs]))


@rule(
    "Max", kind=Kind.RECTIFIER, check=_check_max, summary="max_i(p_i + sum_{j!=i} q_j) - sum_j q_j"
)
def maximum(em: Emitter, node: gs.Node, inputs: list[Value]) -> list[Value]:
    return [pair_max(em, [em.as_pair(v) for v in inputs])]


@rule("Min", kind=Kind.RECTIFIER, check=_check_max, summary="min(z) = -max(-z)")
def minimum(em: Emitter, node: gs.Node, inputs: list[Value]) -> list[Value]:
    pairs = [em.as_pair(v) for v in inputs]
    flipped = pair_max(em, [Pair(p.neg, p.pos) for p in pairs])
    return [Pair(flipped.neg, flipped.pos)]


@rule("Abs", kind=Kind.RECTIFIER, summary="2 max(p, q) - (p + q)")
def absolute(em: Emitter, node: gs.Node, inputs: list[Value]) -> list[Value]:
    pair = inputs[0]
    larger = em.max(pair.pos, pair.neg)
    return [Pair(em.add(larger, larger), em.add(pair.pos, pair.neg))]

"""LRP as a modified backward pass: rules are data (zennit style), keyed by ONNX op_type.

A rule has the signature of an adjoint rule, `rule(bw, node, douts, needs) -> dins`, but it
propagates relevance instead of a gradient. `differentiate(..., rules=composite)` uses the
composite's rule where there is one and the ordinary adjoint elsewhere (layout ops, MaxPool and
Max: the gradient there routes relevance to the winner, i.e. winner takes all).

Rules (as in zennit; stabilize(z) = z + eps * sign(z), sign(0) = +1):
- Epsilon(eps): R_in = x * J^T (R / stabilize(z)) with z the node's own output (bias included,
  so the bias absorbs its share); for weight-free linear ops (pools, residual Add, Mul by a
  constant) with a tiny eps this is zennit's Norm: relevance shared in proportion.
- ZPlus(): z = (W+ x+ + b+) + W- x-, R_in = x+ * J_{W+}^T (R / z) + x- * J_{W-}^T (R / z).
- Pass(): relevance goes unchanged to input 0 (rectifiers: Relu, Clip, LeakyRelu, PRelu).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxsplit.attribution.autodiff import Backward, Grad, constant_value

WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
POOL_OPS = ("AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum")
MERGE_OPS = ("Add", "Sum", "Sub")
SCALE_OPS = ("Mul", "Div", "Neg", "BatchNormalization")
RECTIFIER_OPS = ("Relu", "Clip", "LeakyRelu", "PRelu")
NORM_EPS = 1e-6


def stabilize(bw: Backward, z: gs.Tensor, eps: float) -> gs.Variable:
    """z + eps * sign(z) with sign(0) = +1."""
    shift = bw.where(bw.em.one("GreaterOrEqual", [z, bw.scalar(0.0)]), eps, -eps)
    return bw.em.add(z, shift)


@dataclass(frozen=True)
class Pass:
    """Relevance passes unchanged to input 0."""

    def __call__(self, bw: Backward, node: gs.Node, douts: list[Grad], needs: list[bool]):
        return [douts[0]] + [None] * (len(node.inputs) - 1)


@dataclass(frozen=True)
class Epsilon:
    """R_in = x * J^T (R / stabilize(z)); z = the node's output."""

    epsilon: float = 1e-6

    def __call__(self, bw: Backward, node: gs.Node, douts: list[Grad], needs: list[bool]):
        ratio = bw.em.one("Div", [douts[0], stabilize(bw, node.outputs[0], self.epsilon)])
        grads = bw.run_rule(node.op, node, [ratio] + [None] * (len(node.outputs) - 1), needs)
        return [
            bw.em.mul(x, g) if need and g is not None else None
            for x, g, need in zip(node.inputs, grads, needs, strict=False)
        ]


@dataclass(frozen=True)
class ZPlus:
    """z = (W+ x+ + b+) + W- x-; relevance in proportion to the positive contributions."""

    stabilizer: float = 1e-6
    zero_bias: bool = False

    def __call__(self, bw: Backward, node: gs.Node, douts: list[Grad], needs: list[bool]):
        em = bw.em
        data = 0 if needs[0] else 1
        other = 1 - data
        x, w = node.inputs[data], node.inputs[other]
        weight = constant_value(w)
        if weight is None or any(needs[i] for i in range(len(needs)) if i != data):
            return bw.run_rule(node.op, node, douts, needs)  # not a weight layer here
        scale = float(node.attrs.get("alpha", 1.0))
        w_pos = np.maximum(weight, 0).astype(weight.dtype)
        w_neg = np.minimum(weight, 0).astype(weight.dtype)
        if scale < 0:
            w_pos, w_neg = w_neg, w_pos
        x_pos = em.relu(x)
        x_neg = em.neg(em.relu(em.neg(x)))
        for t in (x_pos, x_neg):
            t.dtype, t.shape = x.dtype, x.shape

        def operands(xs: gs.Tensor, ws: np.ndarray, with_bias: bool) -> list[gs.Tensor]:
            ops = [None, None]
            ops[data], ops[other] = xs, em.const(ws, "w", ws.dtype)
            if with_bias and len(node.inputs) > 2 and node.inputs[2].name:
                bias = constant_value(node.inputs[2])
                if bias is None:
                    return ops
                bias_pos = np.maximum(bias * float(node.attrs.get("beta", 1.0)), 0)
                ops.append(em.const(bias_pos.astype(bias.dtype), "b", bias.dtype))
            return ops

        pos_inputs = operands(x_pos, w_pos, not self.zero_bias)
        neg_inputs = operands(x_neg, w_neg, False)
        attrs = dict(node.attrs)
        attrs.pop("beta", None)
        z_pos = em.one(node.op, pos_inputs, attrs)
        z_neg = em.one(node.op, neg_inputs, attrs)
        for z in (z_pos, z_neg):
            z.dtype, z.shape = node.outputs[0].dtype, node.outputs[0].shape
        ratio = em.one("Div", [douts[0], stabilize(bw, em.add(z_pos, z_neg), self.stabilizer)])
        relevance = []
        for inputs in (pos_inputs, neg_inputs):
            fake = gs.Node(node.op, attrs=attrs, inputs=inputs[:2], outputs=[_like(node)])
            flags = [i == data for i in range(2)]
            grads = bw.run_rule(node.op, fake, [ratio], flags)
            fake.inputs.clear()
            fake.outputs.clear()
            relevance.append(em.mul(inputs[data], grads[data]))
        result: list[Grad] = [None] * len(node.inputs)
        result[data] = em.add(*relevance)
        return result


def _like(node: gs.Node) -> gs.Variable:
    out = node.outputs[0]
    return gs.Variable(out.name + "__zplus", dtype=out.dtype, shape=out.shape)


def composite(
    weight_rule, *, merge_rule=None, pool_rule=None, scale_rule=None, overrides=None
) -> dict:
    """A rule table: weight ops get `weight_rule`, the rest the shared defaults."""
    norm = Epsilon(NORM_EPS)
    table = {op: Pass() for op in RECTIFIER_OPS}
    table.update({op: pool_rule or norm for op in POOL_OPS})
    table.update({op: merge_rule or norm for op in MERGE_OPS})
    table.update({op: scale_rule or norm for op in SCALE_OPS})
    table.update({op: weight_rule for op in WEIGHT_OPS})
    table.update(overrides or {})
    return table


def epsilon_composite(epsilon: float = 0.1) -> dict:
    """LRP-epsilon on every weight layer."""
    return composite(Epsilon(epsilon))


def zplus_composite() -> dict:
    """LRP-z+ on every weight layer."""
    return composite(ZPlus())


def epsilon_plus_composite(epsilon: float = 1e-6) -> dict:
    """zennit's EpsilonPlus: z+ on convolutions, epsilon on dense layers (Gemm, MatMul)."""
    return composite(ZPlus(), overrides={"Gemm": Epsilon(epsilon), "MatMul": Epsilon(epsilon)})

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
from onnxsplit.ops import LINEAR_POOLS as POOL_OPS
from onnxsplit.ops import MERGES as MERGE_OPS
from onnxsplit.ops import RECTIFIERS as RECTIFIER_OPS
from onnxsplit.ops import SCALES as SCALE_OPS
from onnxsplit.ops import WEIGHTED as WEIGHT_OPS

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


# ------------------------------------------------------------------------------------------
# relevance on the split graph (SplitLRP)
# ------------------------------------------------------------------------------------------
def _merge_signs(node: gs.Node) -> list[float]:
    if node.op == "Sub":
        return [1.0, -1.0]
    return [1.0] * len(node.inputs)


@dataclass(frozen=True)
class SplitMerge:
    """z+-rule on a sum of split streams (Add, Sum, Sub): relevance is shared among the
    non-negative contributions c_i = ±x_i in proportion to relu(c_i).

    Constant inputs: a positive constant (a bias b+) takes its share, which is absorbed (and,
    when `sink` is a list, appended to it as a [N] per-sample total); `absorb=False` gives
    constants no share (everything is conserved). A negative constant (the -c of a capped
    rectifier, max(z+ - 6, z-)) or a subtracted stream is no contribution, so relevance passes
    whole to the non-negative terms.
    """

    absorb: bool = True
    epsilon: float = NORM_EPS
    sink: list | None = None

    def __call__(self, bw: Backward, node: gs.Node, douts: list[Grad], needs: list[bool]):
        em = bw.em
        y, dy = node.outputs[0], douts[0]
        signs = _merge_signs(node)
        parts: list[gs.Tensor] = []
        contribution: list[gs.Tensor | None] = []
        constant_total = 0.0
        constant_tensor = None
        for x, sign in zip(node.inputs, signs, strict=True):
            value = constant_value(x)
            if value is not None:
                share = np.maximum(sign * value, 0)
                if self.absorb and np.any(share):
                    if share.size == 1:
                        constant_total += float(share.reshape(-1)[0])
                    else:
                        c = em.const(share.astype(bw.em.dtype), "bias")
                        constant_tensor = (
                            c if constant_tensor is None else em.add(constant_tensor, c)
                        )
                contribution.append(None)
                continue
            c = em.relu(x if sign > 0 else em.neg(x))
            contribution.append(c)
            parts.append(c)
        if constant_total:
            parts.append(bw.scalar(constant_total))
        if constant_tensor is not None:
            parts.append(constant_tensor)
        den = parts[0] if len(parts) == 1 else em.one("Sum", parts)
        ratio = em.one("Div", [dy, em.add(den, bw.scalar(self.epsilon))])
        result: list[Grad] = []
        for x, c, need in zip(node.inputs, contribution, needs, strict=True):
            result.append(
                bw.unbroadcast(em.mul(c, ratio), x, y) if need and c is not None else None
            )
        if self.sink is not None and (constant_total or constant_tensor is not None):
            kept = [r for r in result if r is not None]
            absorbed = em.sub(dy, kept[0] if len(kept) == 1 else em.one("Sum", kept))
            self.sink.append(_per_sample_sum(bw, absorbed, y))
        return result


@dataclass(frozen=True)
class SplitMaxProportional:
    """Max of split streams: relevance shared among the branches in proportion to relu(x_i)
    (the variant of the winner-takes-all gradient routing)."""

    epsilon: float = NORM_EPS

    def __call__(self, bw: Backward, node: gs.Node, douts: list[Grad], needs: list[bool]):
        em = bw.em
        y, dy = node.outputs[0], douts[0]
        parts = [em.relu(x) for x in node.inputs]
        den = parts[0] if len(parts) == 1 else em.one("Sum", parts)
        ratio = em.one("Div", [dy, em.add(den, bw.scalar(self.epsilon))])
        return [
            bw.unbroadcast(em.mul(p, ratio), x, y) if need else None
            for p, x, need in zip(parts, node.inputs, needs, strict=True)
        ]


def _per_sample_sum(bw: Backward, tensor: gs.Tensor, like: gs.Tensor) -> gs.Variable:
    rank = len(like.shape) if like.shape is not None else None
    if rank is None or rank < 2:
        return bw.em.one("ReduceSum", [tensor], {"keepdims": 0})
    return bw.reduce_sum(tensor, list(range(1, rank)), keepdims=False)


def split_composite(*, maxout: str = "wta", absorb: bool = True, sink: list | None = None) -> dict:
    """SplitLRP's rule table for the split graph (every weight and stream there is >= 0).

    - Conv / MatMul / Gemm (W+ or W- on one stream, no bias), Mul / Div by a non-negative
      constant, pools: the z-rule R_in = x * J^T (R / z), z = the node's output;
    - Add / Sum / Sub: `SplitMerge` (bias shares absorbed unless absorb=False);
    - Max (the maxout of a rectifier, and max pooling's DC rule): winner takes all (the
      gradient routing, ties to the first input) or `maxout='proportional'`;
    - everything else (Pad, Flatten, Reshape, Identity, MaxPool of the difference): the
      ordinary adjoint. Re-centerings are identities (SubgraphAdjoint overrides).
    """
    if maxout not in ("wta", "proportional"):
        raise ValueError(f"maxout must be 'wta' or 'proportional', not {maxout!r}")
    norm = Epsilon(NORM_EPS)
    table: dict = {op: norm for op in WEIGHT_OPS + POOL_OPS + ("Mul", "Div")}
    merge = SplitMerge(absorb=absorb, sink=sink)
    table.update({op: merge for op in MERGE_OPS})
    if maxout == "proportional":
        table["Max"] = SplitMaxProportional()
    return table


# ------------------------------------------------------------------------------------------
# the same relevance, propagated as a ratio (the fast form SplitLRP compiles)
# ------------------------------------------------------------------------------------------
TINY = 1e-30


def safe_ratio(
    bw: Backward, num: gs.Tensor, den: gs.Tensor, non_negative: bool = False
) -> gs.Variable:
    """relu(num) / max(den, TINY): the factor out/in of a node that passes relevance whole
    (non_negative: num is known to be >= 0, the Relu is left out)."""
    em = bw.em
    return em.one("Div", [num if non_negative else em.relu(num), em.max(den, bw.scalar(TINY))])


def ratio_step(bw: Backward, s: gs.Tensor, out: gs.Tensor, divisor: gs.Tensor) -> gs.Variable:
    """s * out / divisor in a backward pass, the product first: s and out come out of
    convolutions, so onnxruntime multiplies them in its blocked layout, and the division (no
    blocked kernel) is the step's one pass in plain layout."""
    return bw.em.one("Div", [bw.em.mul(s, out), divisor])


@dataclass(frozen=True)
class RatioMerge:
    """Add / Sum / Sub in the ratio form s = R / value of split relevance.

    With non-negative streams x_i and contributions c_i = ±x_i or a constant, the z+-rule
    R_i = relu(c_i) R_y / D (D = sum of the positive contributions; constants count when
    `absorb`) reads s_i = s_y * y / D. For a plain sum of streams and non-negative constants
    y = D: the ordinary gradient. A subtracted stream gets nothing; a negative constant (the -6
    of ReLU6's cap) passes relevance whole. `sink` collects the absorbed relevance per sample.
    """

    absorb: bool = True
    sink: list | None = None

    def __call__(self, bw: Backward, node: gs.Node, douts: list[Grad], needs: list[bool]):
        em = bw.em
        y, dy = node.outputs[0], douts[0]
        signs = _merge_signs(node)
        streams, constants = [], []
        for x, sign in zip(node.inputs, signs, strict=True):
            value = constant_value(x)
            if value is None:
                streams.append((x, sign))
            else:
                constants.append(sign * np.asarray(value, np.float64))
        plain = all(sign > 0 for _, sign in streams) and all(np.all(c >= 0) for c in constants)
        if plain and (self.absorb or not any(np.any(c) for c in constants)):
            scaled = dy
        else:
            parts = [x for x, sign in streams if sign > 0]
            if self.absorb:
                pos = sum((np.maximum(c, 0) for c in constants), np.zeros(()))
                if np.any(pos):
                    parts.append(em.const(pos.astype(em.dtype), "bias"))
            den = parts[0] if len(parts) == 1 else em.one("Sum", parts)
            scaled = em.mul(dy, safe_ratio(bw, y, den))
        result: list[Grad] = []
        for x, sign in zip(node.inputs, signs, strict=True):
            need = needs[len(result)]
            if not need or constant_value(x) is not None or sign < 0:
                result.append(None)
            else:
                result.append(bw.unbroadcast(scaled, x, y))
        if self.sink is not None and constants:
            kept = [em.mul(x, r) for x, r in zip(node.inputs, result, strict=True) if r is not None]
            total = em.mul(y, dy)
            if kept:
                total = em.sub(total, _sum_to(bw, kept, y))
            self.sink.append(_per_sample_sum(bw, total, y))
        return result


def _sum_to(bw: Backward, tensors: list[gs.Tensor], like: gs.Tensor) -> gs.Tensor:
    """Sum tensors that may be broadcast against `like` (each reduced per sample later)."""
    em = bw.em
    return tensors[0] if len(tensors) == 1 else em.one("Sum", tensors)


@dataclass(frozen=True)
class RatioMaxProportional:
    """Max in the ratio form with proportional sharing: s_i = s_y * y / sum_j relu(x_j)."""

    def __call__(self, bw: Backward, node: gs.Node, douts: list[Grad], needs: list[bool]):
        em = bw.em
        y, dy = node.outputs[0], douts[0]
        parts = [em.relu(x) for x in node.inputs]
        den = parts[0] if len(parts) == 1 else em.one("Sum", parts)
        scaled = em.mul(dy, safe_ratio(bw, y, den))
        return [
            bw.unbroadcast(scaled, x, y) if need else None
            for x, need in zip(node.inputs, needs, strict=True)
        ]


def split_ratio_rules(
    *, maxout: str = "wta", absorb: bool = True, sink: list | None = None
) -> dict:
    """SplitLRP's rules in the ratio form s = R / value (see `split_composite` for the
    relevance form they equal): through every non-negative linear node the z-rule is the
    ordinary gradient of s, so only merges with constants or subtractions (`RatioMerge`) and,
    for maxout='proportional', Max need their own rule; the re-centerings are scaled identities
    (`recentering_ratio`). Relevance is read off as value * s."""
    if maxout not in ("wta", "proportional"):
        raise ValueError(f"maxout must be 'wta' or 'proportional', not {maxout!r}")
    merge = RatioMerge(absorb=absorb, sink=sink)
    table: dict = {op: merge for op in MERGE_OPS}
    if maxout == "proportional":
        table["Max"] = RatioMaxProportional()
    return table

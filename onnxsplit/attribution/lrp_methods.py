"""Layer-wise relevance propagation: each method overrides `rules()` (rules as data, the
composites of onnxsplit.attribution.lrp)."""

from __future__ import annotations

from onnxsplit.attribution import lrp
from onnxsplit.attribution.base import AttributionMethod, register


class LRPMethod(AttributionMethod):
    """Layer-wise relevance propagation of the one-hot target row (zennit's convention: the
    relevance at the logits is the one-hot row; multiply by the logit for R = f_k)."""

    def rules(self) -> dict:
        raise NotImplementedError

    def build(self, ctx):
        relevance = ctx.backward(
            {ctx.logits.name: ctx.onehot},
            [ctx.data.name],
            rules=self.rules(),
            scope=self.name,
        )[ctx.data.name]
        if relevance is None:
            relevance = ctx.em.mul(ctx.data, ctx.scalar(0.0))
        ctx.em.scope = self.name
        return {f"map_{self.name}": ctx.channel_sum(relevance)}


class LRP(LRPMethod):
    """LRP with a custom rule table {op_type: rule} (see onnxsplit.attribution.lrp)."""

    def __init__(self, rules: dict, name: str = "lrp"):
        self._rules = dict(rules)
        self.name = name

    def rules(self):
        return self._rules


@register
class LRPEpsilon(LRPMethod):
    """LRP-epsilon on every Conv/Gemm/MatMul (epsilon = 0.1), proportional pools and sums."""

    name = "lrp_epsilon"

    def __init__(self, epsilon: float = 0.1):
        self.epsilon = epsilon

    def rules(self):
        return lrp.epsilon_composite(self.epsilon)


@register
class LRPZPlus(LRPMethod):
    """LRP-z+ on every Conv/Gemm/MatMul, proportional pools and sums."""

    name = "lrp_zplus"

    def rules(self):
        return lrp.zplus_composite()


@register
class LRPEpsilonPlus(LRPMethod):
    """zennit's EpsilonPlus: z+ on convolutions, epsilon (1e-6) on dense layers."""

    name = "lrp_epsilon_plus"

    def rules(self):
        return lrp.epsilon_plus_composite()

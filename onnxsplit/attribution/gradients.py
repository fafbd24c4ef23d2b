"""Input-gradient methods: each overrides `combine(ctx, x, grad)`."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxsplit.attribution.base import AttributionMethod, register
from onnxsplit.attribution.context import AttributionContext


class InputGradientMethod(AttributionMethod):
    """Maps from the gradient of the target logit w.r.t. the input, summed over channels."""

    def gradient_targets(self, ctx):
        return [ctx.data.name]

    def combine(self, ctx: AttributionContext, x: gs.Tensor, grad: gs.Tensor) -> gs.Tensor:
        raise NotImplementedError

    def build(self, ctx):
        em = ctx.em
        em.scope = self.name
        value = self.combine(ctx, ctx.data, ctx.gradient(ctx.data.name))
        return {f"map_{self.name}": ctx.channel_sum(value)}


@register
class Gradient(InputGradientMethod):
    """Gradient: sum over channels of d logit_k / d x."""

    name = "gradient"

    def combine(self, ctx, x, grad):
        return grad


@register
class GradientXInput(InputGradientMethod):
    """Gradient x Input: sum over channels of x * d logit_k / d x."""

    name = "gradient_x_input"

    def combine(self, ctx, x, grad):
        return ctx.em.mul(x, grad)

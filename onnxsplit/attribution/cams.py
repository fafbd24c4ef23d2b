"""Class activation maps: each overrides `cam(ctx, activation, grad)`; maps are upsampled
(Resize linear, half_pixel: torch's interpolation with align_corners=False) to the input's
spatial size."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxsplit.attribution.base import AttributionMethod, register
from onnxsplit.attribution.context import AttributionContext
from onnxsplit.errors import OnnxSplitError


class CAMMethod(AttributionMethod):
    """Maps from the activation A [N, C, *spatial] of a target layer and its gradient."""

    takes_layer = True

    def __init__(self, target_layer: str | None = None):
        self.target_layer = target_layer

    def layer(self, ctx: AttributionContext) -> str:
        return self.target_layer or ctx.target_layer

    def gradient_targets(self, ctx):
        return [self.layer(ctx)]

    def cam(self, ctx: AttributionContext, activation: gs.Tensor, grad: gs.Tensor) -> gs.Tensor:
        raise NotImplementedError

    def build(self, ctx):
        name = self.layer(ctx)
        activation = ctx.tensor(name)
        rank = len(ctx.data.shape) if ctx.data.shape is not None else 4
        if activation.shape is not None and (len(activation.shape) != rank or rank < 3):
            raise OnnxSplitError(
                f"target layer '{name}' has shape {activation.shape}; a CAM layer has the "
                f"input's rank {rank} ([N, C, *spatial])"
            )
        ctx.em.scope = self.name
        cam = self.cam(ctx, activation, ctx.gradient(name))
        return {f"map_{self.name}": ctx.upsample(cam)}


def sum_channels(ctx: AttributionContext, tensor: gs.Tensor) -> gs.Variable:
    return ctx.em.one("ReduceSum", [tensor, ctx._i64([1])], {"keepdims": 0})


@register
class GradCAM(CAMMethod):
    """Grad-CAM: relu(sum_c mean_hw(dA_c) A_c)."""

    name = "gradcam"

    def cam(self, ctx, activation, grad):
        em = ctx.em
        axes = list(range(2, len(activation.shape or [0, 0, 0, 0])))
        if ctx.opset >= 18:
            weights = em.one("ReduceMean", [grad, ctx._i64(axes)], {"keepdims": 1})
        else:
            weights = em.one("ReduceMean", [grad], {"axes": axes, "keepdims": 1})
        return em.relu(sum_channels(ctx, em.mul(weights, activation)))


@register
class LayerCAM(CAMMethod):
    """LayerCAM: relu(sum_c relu(dA_c) A_c)."""

    name = "layercam"

    def cam(self, ctx, activation, grad):
        em = ctx.em
        return em.relu(sum_channels(ctx, em.mul(em.relu(grad), activation)))

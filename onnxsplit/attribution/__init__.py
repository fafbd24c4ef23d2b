"""Attribution compiled into ONNX: backward passes as default-domain ONNX nodes.

`attach_methods(model, methods)` returns a model whose one inference call yields the logits and
saliency maps (Gradient, Gradient x Input, Grad-CAM, LayerCAM, LRP-epsilon, LRP-z+, zennit's
EpsilonPlus; SplitCAM, SplitLRP and SplitGrad on the DC-split graph, docs/methods.md).
"""

from onnxsplit.attribution.attach import attach_methods
from onnxsplit.attribution.autodiff import (
    ADJOINTS,
    SubgraphAdjoint,
    adjoint,
    differentiate,
    supported_backward_ops,
)
from onnxsplit.attribution.methods import METHODS, AttributionMethod

__all__ = [
    "ADJOINTS",
    "METHODS",
    "AttributionMethod",
    "SubgraphAdjoint",
    "adjoint",
    "attach_methods",
    "differentiate",
    "supported_backward_ops",
]

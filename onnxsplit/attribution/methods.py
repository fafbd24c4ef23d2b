"""Attribution methods compiled into the graph: one class per method on a shared base
(attribution/base.py), one file per family:

- gradients.py: `Gradient`, `GradientXInput` (override `combine(ctx, x, grad)`);
- cams.py: `GradCAM`, `LayerCAM` (override `cam(ctx, activation, grad)`);
- lrp_methods.py: `LRPEpsilon`, `LRPZPlus`, `LRPEpsilonPlus` (override `rules()`);
- split_methods.py: `SplitCAM`, `SplitLRP`, `SplitGrad` on the split graph f = g - h.

Every map has the input's spatial shape: input-space maps are summed over the channel axis of
the input (wherever it is, see `Layout`), CAMs are upsampled. Maps are not normalized. This
module gathers the families (importing them registers them in `METHODS`).
"""

from onnxsplit.attribution.base import (
    METHODS,
    AttributionMethod,
    make_method,
    method_list,
    parse_methods,
    register,
)
from onnxsplit.attribution.cams import CAMMethod, GradCAM, LayerCAM
from onnxsplit.attribution.certificate import Certificate  # noqa: F401
from onnxsplit.attribution.context import (
    AttributionContext,
    Layout,
    default_target_layer,
    detect_layout,
)
from onnxsplit.attribution.gradients import Gradient, GradientXInput, InputGradientMethod
from onnxsplit.attribution.lrp_methods import LRP, LRPEpsilon, LRPEpsilonPlus, LRPMethod, LRPZPlus
from onnxsplit.attribution.split_methods import (
    BALANCED,
    SplitCAM,
    SplitGrad,
    SplitLRP,
    ratio_overrides,
    split_outputs,
    weigh_negative,
)

# the order users see (`onnxsplit methods`, reports): by family, then as each file registers
_FAMILIES = ("gradients", "cams", "lrp_methods", "split_methods", "certificate")
_ordered = sorted(METHODS.items(), key=lambda kv: _FAMILIES.index(kv[1].__module__.split(".")[-1]))
METHODS.clear()
METHODS.update(_ordered)

__all__ = [
    "BALANCED",
    "CAMMethod",
    "LRP",
    "METHODS",
    "AttributionContext",
    "AttributionMethod",
    "GradCAM",
    "Gradient",
    "GradientXInput",
    "InputGradientMethod",
    "LRPEpsilon",
    "LRPEpsilonPlus",
    "LRPMethod",
    "LRPZPlus",
    "Layout",
    "LayerCAM",
    "SplitCAM",
    "SplitGrad",
    "SplitLRP",
    "default_target_layer",
    "detect_layout",
    "make_method",
    "method_list",
    "parse_methods",
    "ratio_overrides",
    "register",
    "split_outputs",
    "weigh_negative",
]

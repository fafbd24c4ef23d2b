"""ConvTranspose with constant weights: an affine map like Conv, split the same way.

    z+ = W+ *T a+ + W- *T a- + b+        z- = W- *T a+ + W+ *T a- + b-

(*T: the transposed convolution with the node's own strides, pads, dilations, group and
output_padding), so z+ - z- = W *T (a+ - a-) + b with non-negative coefficients per stream.
rules_affine.split_linear emits it: the four-term form, the difference/mass form (fast) and
the seeded form (one map of the mass per layer; its backward pass runs the ConvTranspose
adjoint, onnxsplit.attribution.adjoints_resample).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxsplit.split.emitter import Emitter
from onnxsplit.split.registry import Kind, only_first_split, rule
from onnxsplit.split.rules_affine import split_convolution
from onnxsplit.split.values import Abstract, Value


def _check_conv_transpose(node: gs.Node, inputs: list[Abstract]) -> str | None:
    return only_first_split(node, inputs)


@rule(
    "ConvTranspose",
    kind=Kind.AFFINE,
    check=_check_conv_transpose,
    summary="W+/W- transposed convolutions on each stream (strides, pads, output_padding, "
    "dilations, group kept)",
)
def conv_transpose(em: Emitter, node: gs.Node, inputs: list[Value]) -> list[Value]:
    return [split_convolution(em, node, inputs)]

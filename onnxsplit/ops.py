"""What onnxsplit knows about ONNX ops, in one place: op families and typed views of attributes.

Split rules, adjoints, LRP composites, the CAM layer search, `inspect` and the evaluation's
weight randomisation read their op lists and attribute conventions from here, so an op family
is listed once and a Clip's bounds are parsed once.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

# piecewise-linear activations whose output is a CAM candidate ("the last rectifier")
RECTIFIERS = ("Relu", "Clip", "LeakyRelu", "PRelu")
# affine maps with a constant weight operand (LRP's weight rules, the per-sample cost model,
# MPRT randomisation)
WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
WEIGHTED_ALL = WEIGHTED
# non-negative linear maps without weights (pools, interpolation): LRP shares in proportion
LINEAR_POOLS = ("AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum", "Resize", "Upsample")
# global poolings over the spatial axes (a DC model's CAM features sit before one)
GLOBAL_POOLS = ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax")
# sums of activations
MERGES = ("Add", "Sum", "Sub")
# multiplication by a constant
SCALES = ("Mul", "Div", "Neg", "BatchNormalization")
# ops that read their input channels-first: the first one below the input tells its layout
CHANNELS_FIRST = ("Conv", "ConvTranspose", "MaxPool", "AveragePool")
# outputs normalized after the logits: removed by canonicalize, the logits are explained
TRAILING_NORMALIZERS = ("Softmax", "LogSoftmax", "Sigmoid")

NOT_PIECEWISE_LINEAR = frozenset(
    {
        "Sigmoid",
        "Tanh",
        "Gelu",
        "Erf",
        "Softmax",
        "LogSoftmax",
        "HardSigmoid",
        "HardSwish",
        "Elu",
        "Selu",
        "Celu",
        "Softplus",
        "Softsign",
        "Mish",
        "Exp",
        "Log",
        "Sqrt",
        "Pow",
        "LRN",
        "LpNormalization",
        "InstanceNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "Reciprocal",
        "Sin",
        "Cos",
        "ThresholdedRelu",
        "Einsum",
    }
)

# int8 quantization on the activation path: a step function, whose DC split and gradient are
# meaningless (zero almost everywhere); refused by every command alike. Weight-only
# quantization (DequantizeLinear of initializers) folds into float weights and is accepted.
QUANTIZED = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "QLinearAdd",
        "QLinearMul",
        "QLinearGlobalAveragePool",
        "QLinearAveragePool",
        "QLinearConcat",
        "QLinearSigmoid",
        "QLinearLeakyRelu",
        "QGemm",
        "ConvInteger",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
    }
)

ClipOperand = gs.Tensor | float | None


def clip_operands(node: gs.Node) -> tuple[ClipOperand, ClipOperand]:
    """(lo, hi) of a Clip: the input tensor (opset >= 11), the attribute's value (before), or
    None where the bound is absent."""
    operands: list[ClipOperand] = []
    for index, attr in ((1, "min"), (2, "max")):
        if index < len(node.inputs) and node.inputs[index].name:
            operands.append(node.inputs[index])
        elif attr in node.attrs:
            operands.append(float(node.attrs[attr]))
        else:
            operands.append(None)
    return operands[0], operands[1]


def constant_scalar(operand: ClipOperand) -> float | None:
    """A bound's value when it is a constant scalar (a float or a one-element Constant)."""
    if isinstance(operand, float):
        return operand
    if isinstance(operand, gs.Constant) and operand.values.size == 1:
        return float(np.asarray(operand.values).reshape(-1)[0])
    return None


def clip_floor(node: gs.Node) -> float | None:
    """The constant scalar lower bound of a Clip (None: unbounded or not a constant scalar)."""
    low, _ = clip_operands(node)
    return None if low is None else constant_scalar(low)

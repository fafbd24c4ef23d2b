"""The DC split: op rules (one per ONNX op_type) and the driver that applies them."""

from onnxsplit.split import (  # noqa: F401
    rules_affine,
    rules_layout,
    rules_pooling,
    rules_rectifiers,
    rules_transposed,
)
from onnxsplit.split.registry import RULES, Kind, Rule, supported_ops

__all__ = ["RULES", "Kind", "Rule", "supported_ops"]

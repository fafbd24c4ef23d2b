"""The DC split: op rules (one per ONNX op_type) and the driver that applies them."""

from onnxsplit.split import rules_affine, rules_layout, rules_pooling, rules_rectifiers  # noqa: F401
from onnxsplit.split.registry import RULES, Kind, Rule, supported_ops

__all__ = ["RULES", "Kind", "Rule", "supported_ops"]

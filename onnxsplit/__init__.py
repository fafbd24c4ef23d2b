"""onnxsplit: compile ReLU ONNX models into exact, stabilized DC-split graphs f = g - h."""

__version__ = "0.1.0"

from onnxsplit.convert import ConvertResult, convert, convert_model  # noqa: E402
from onnxsplit.errors import OnnxSplitError  # noqa: E402
from onnxsplit.explainer import Explainer  # noqa: E402

__all__ = [
    "ConvertResult",
    "Explainer",
    "OnnxSplitError",
    "convert",
    "convert_model",
    "__version__",
]

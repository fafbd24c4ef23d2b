"""Load an ONNX model from disk with clear errors for missing, truncated or foreign files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from onnxsplit.errors import OnnxSplitError


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(path: str | Path) -> onnx.ModelProto:
    """Read an ONNX file (with its external data, if any) without modifying it."""
    path = Path(path)
    if not path.exists():
        raise OnnxSplitError(f"model file '{path}' does not exist")
    if path.is_dir():
        raise OnnxSplitError(f"'{path}' is a folder; give the path of an .onnx file")
    if path.stat().st_size == 0:
        raise OnnxSplitError(f"model file '{path}' is empty")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise OnnxSplitError(
            f"'{path}' is not a readable ONNX model (truncated or another format?): {exc}"
        ) from None
    except Exception as exc:  # protobuf raises a variety of errors on garbage
        raise OnnxSplitError(f"'{path}' is not a readable ONNX model: {exc}") from None
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise OnnxSplitError(f"'{path}' contains no graph nodes: is it an ONNX model?")
    if _uses_external_data(model):
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
            for tensor in model.graph.initializer:  # now held in memory
                tensor.data_location = onnx.TensorProto.DEFAULT
                del tensor.external_data[:]
        except Exception as exc:
            raise OnnxSplitError(
                f"model '{path}' keeps its weights in external data files that could not be "
                f"read ({exc}); keep the data files next to the model"
            ) from None
    return model


def _uses_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)

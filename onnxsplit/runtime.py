"""onnxruntime sessions: pick the execution provider and report the one actually used."""

from __future__ import annotations

import functools
from pathlib import Path

import onnx
import onnxruntime as ort

from onnxsplit.errors import OnnxSplitError

DEVICES = ("auto", "cpu", "cuda")
CUDA = "CUDAExecutionProvider"
# TF32 (a 10-bit mantissa in float32 convolutions, on by default in onnxruntime's CUDA provider)
# costs the split its exactness: g - h cancels, and an H100 gave 1e-3 relative error in the
# logits and 0.66 in VGG16's SplitCAM map against the CPU (docs/performance.md, GPU).
CUDA_OPTIONS = {"use_tf32": "0"}


@functools.cache
def cuda_usable() -> bool:
    """True when the CUDA provider really initialises (libraries present, a GPU visible)."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    ort.set_default_logger_severity(4)
    try:
        node = onnx.helper.make_node("Identity", ["x"], ["y"])
        value = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
        graph = onnx.helper.make_graph(
            [node], "probe", [value], [onnx.helper.make_tensor_value_info("y", 1, [1])]
        )
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
        model.ir_version = 8
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
        )
        return "CUDAExecutionProvider" in session.get_providers()
    except Exception:
        return False
    finally:
        ort.set_default_logger_severity(2)


def providers_for(device: str) -> list[str]:
    if device not in DEVICES:
        raise OnnxSplitError(f"unknown device '{device}'; choose one of {', '.join(DEVICES)}")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" and not cuda_usable():
        raise OnnxSplitError(
            "--device cuda was asked for, but no usable CUDA runtime was found "
            f"(onnxruntime {ort.__version__} providers: {', '.join(ort.get_available_providers())})"
        )
    if cuda_usable():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def per_sample_for(device: str) -> bool | str:
    """attach_methods' per_sample for a device: "auto" where the CPU provider will run the
    graph (onnxsplit.per_sample), False where CUDA will (batches are the GPU's parallelism)."""
    return "auto" if providers_for(device)[0] == "CPUExecutionProvider" else False


def make_session(
    model: str | Path | bytes, device: str = "auto", threads: int | None = None
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    providers = [(p, CUDA_OPTIONS) if p == CUDA else p for p in providers_for(device)]
    return ort.InferenceSession(source, options, providers=providers)


def provider_used(session: ort.InferenceSession) -> str:
    """The provider that actually runs the session (never the one merely asked for)."""
    return session.get_providers()[0]

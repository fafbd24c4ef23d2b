"""Execution-provider choice: CUDA when usable (without TF32), the CPU otherwise."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from onnxsplit import runtime
from onnxsplit.errors import OnnxSplitError

MLP = Path(__file__).resolve().parent.parent / "sample_models" / "digits_mlp_op17_legacy.onnx"


class Recorder:
    """Stands in for ort.InferenceSession and records the providers it was given."""

    calls: list = []

    def __init__(self, source, options, providers):
        Recorder.calls.append(providers)


def test_auto_picks_cuda_without_tf32_when_usable(monkeypatch):
    monkeypatch.setattr(runtime, "cuda_usable", lambda: True)
    monkeypatch.setattr(ort, "InferenceSession", Recorder)
    Recorder.calls = []
    runtime.make_session(str(MLP), "auto")
    runtime.make_session(str(MLP), "cuda")
    runtime.make_session(str(MLP), "cpu")
    cuda = ("CUDAExecutionProvider", {"use_tf32": "0"})
    assert Recorder.calls == [
        [cuda, "CPUExecutionProvider"],
        [cuda, "CPUExecutionProvider"],
        ["CPUExecutionProvider"],
    ]


def test_cpu_when_cuda_is_not_usable(monkeypatch):
    monkeypatch.setattr(runtime, "cuda_usable", lambda: False)
    session = runtime.make_session(str(MLP), "auto")
    assert runtime.provider_used(session) == "CPUExecutionProvider"
    with pytest.raises(OnnxSplitError, match="no usable CUDA runtime"):
        runtime.make_session(str(MLP), "cuda")

"""`onnxsplit train`: self-explaining networks trained as f = g - h of two monotone networks.

Training needs the optional torch extra (``pip install torch==2.13.0``); torch is imported
only by :mod:`onnxsplit.train.models` and :mod:`onnxsplit.train.trainer`, lazily from here, so
:func:`explain_trained` (pure ONNX) works without torch.

* :func:`train` (arch, data, epochs, out, kind, seed, progress) -> :class:`TrainResult`
* :func:`explain_trained` (model or path) -> an attribution-ready ONNX model built from the
  model's own g and h (maps map_self_g, map_self_h, map_self).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onnxsplit.train.explain import explain_trained, is_trained_dc

if TYPE_CHECKING:  # pragma: no cover
    from onnxsplit.train.trainer import TrainResult, export_onnx, train

__all__ = ["TrainResult", "explain_trained", "export_onnx", "is_trained_dc", "train"]


def __getattr__(name: str):
    if name in ("train", "TrainResult", "export_onnx"):
        from onnxsplit.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'onnxsplit.train' has no attribute '{name}'")

"""Python API: an explainer object that takes arrays and returns maps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from onnxsplit.emit import metadata
from onnxsplit.errors import OnnxSplitError
from onnxsplit.load import load_model
from onnxsplit.runtime import make_session, per_sample_for, provider_used


class Explainer:
    """Compile `methods` into one ONNX model (or reuse a compiled one) and run it.

    >>> explainer = Explainer("model.onnx", ["splitcam", "gradcam"])
    >>> logits, maps = explainer(x)            # x in the model's own layout, [N, ...]
    >>> maps["splitcam"].shape                  # [N, H, W]
    """

    def __init__(
        self,
        model: str | Path | onnx.ModelProto,
        methods: Sequence[str] = ("splitcam",),
        target_layer: str | None = None,
        device: str = "auto",
    ):
        proto = model if isinstance(model, onnx.ModelProto) else load_model(model)
        compiled = metadata(proto).get("onnxsplit.attribution.methods")
        if compiled is None or not set(methods) <= set(__import__("json").loads(compiled)):
            from onnxsplit.attribution.attach import attach_methods

            proto = attach_methods(
                proto, list(methods), target_layer, per_sample=per_sample_for(device)
            )
        self.model = proto
        self.methods = list(methods)
        self.session = make_session(proto.SerializeToString(), device)
        self.input_name = self.session.get_inputs()[0].name

    @property
    def provider(self) -> str:
        return provider_used(self.session)

    def __call__(
        self, x: np.ndarray, target: int | Sequence[int] | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        x = np.asarray(x, dtype=np.float32)
        if target is None:
            targets = np.full(len(x), -1, np.int64)
        else:
            targets = np.broadcast_to(np.asarray(target, np.int64), (len(x),)).copy()
        names = ["logits"] + [f"map_{m}" for m in self.methods]
        try:
            outputs = self.session.run(names, {self.input_name: x, "target": targets})
        except Exception as exc:  # shape/dtype mistakes surface here from onnxruntime
            raise OnnxSplitError(
                f"cannot explain an array of shape {list(x.shape)}: {exc}"
            ) from None
        logits = outputs[0]
        classes = logits.shape[1]
        if np.any((targets < -1) | (targets >= classes)):
            raise OnnxSplitError(f"target out of range: the model has {classes} classes")
        return logits, dict(zip(self.methods, outputs[1:], strict=True))

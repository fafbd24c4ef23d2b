"""Python API: an explainer object that takes arrays and returns maps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from onnxsplit.contract import LOGITS, Interface, map_output
from onnxsplit.load import load_model
from onnxsplit.runtime import make_session, per_sample_for, provider_used


class Explainer:
    """Compile `methods` into one ONNX model (or reuse a compiled one) and run it.

    >>> explainer = Explainer("model.onnx", ["splitcam", "gradcam"])
    >>> logits, maps = explainer(x)            # x in the model's own layout, [N, ...]
    >>> maps["splitcam"].shape                  # [N, H, W]

    A model with a fixed batch is run in chunks of that batch; NaN/inf inputs and targets
    outside -1..K-1 are refused (onnxsplit.contract.Interface.run).
    """

    def __init__(
        self,
        model: str | Path | onnx.ModelProto,
        methods: Sequence[str] = ("splitcam",),
        target_layer: str | None = None,
        device: str = "auto",
        *,
        input_name: str | None = None,
        output_name: str | None = None,
    ):
        from onnxsplit.attribution.methods import parse_methods

        methods = parse_methods(methods)
        proto = model if isinstance(model, onnx.ModelProto) else load_model(model)
        compiled = None
        try:
            compiled = Interface.of(proto)
        except Exception:
            pass  # not an attribution model: compiled below
        if compiled is None or not set(methods) <= set(compiled.methods):
            from onnxsplit.attribution.attach import attach_methods

            proto = attach_methods(
                proto,
                methods,
                target_layer,
                input_name=input_name,
                output_name=output_name,
                per_sample=per_sample_for(device),
            )
            compiled = Interface.of(proto)
        self.model = proto
        self.methods = list(methods)
        self.interface = compiled
        self.session = make_session(proto.SerializeToString(), device)
        self.input_name = compiled.input_name

    @property
    def provider(self) -> str:
        return provider_used(self.session)

    def __call__(
        self, x: np.ndarray, target: int | Sequence[int] | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        names = [LOGITS] + [map_output(m) for m in self.methods]
        outputs = self.interface.run(self.session, np.asarray(x), target, names)
        return outputs[0], dict(zip(self.methods, outputs[1:], strict=True))

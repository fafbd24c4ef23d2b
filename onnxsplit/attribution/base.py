"""The base of every attribution method and the registry of methods by name.

As in pytorch-grad-cam, each method family overrides one function (attribution/gradients.py:
`combine`; cams.py: `cam`; lrp_methods.py: `rules`, rules as data; split_methods.py works on the
split graph f = g - h built beside the original). A method class registers itself with
`@register`; `METHODS` maps names to classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx_graphsurgeon as gs

from onnxsplit.attribution.context import AttributionContext
from onnxsplit.errors import OnnxSplitError

METHODS: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make `cls` available by its `name`."""
    if cls.name in METHODS:
        raise RuntimeError(f"method '{cls.name}' registered twice")
    METHODS[cls.name] = cls
    return cls


class AttributionMethod:
    """Base class. `build` returns {output name: map [N, H, W]}."""

    name = "method"
    takes_layer = False  # built with the --target-layer (CAMs)
    saliency = True  # a map of relevance (False: a bound, like the certificate)

    def prepare(self, ctx: AttributionContext) -> None:
        """Request what must exist before the graph is extended (split graphs)."""

    def gradient_targets(self, ctx: AttributionContext) -> list[str]:
        """Tensors whose plain gradient (of the target logit) the method reads."""
        return []

    def build(self, ctx: AttributionContext) -> dict[str, gs.Tensor]:
        raise NotImplementedError

    def describe(self) -> str:
        return (self.__doc__ or self.name).strip().splitlines()[0]

    def metadata(self, ctx: AttributionContext) -> dict[str, str]:
        """Keys of the method's own in the compiled model's metadata (none by default)."""
        return {}


def method_list(values: str | Sequence[str]) -> list[str]:
    """Method names from a comma list or several (`"a,b"`, `["a,b", "c"]`), duplicates dropped
    keeping the order: the one spelling of every command and of the Python API."""
    chunks = [values] if isinstance(values, str) else list(values)
    names = [n.strip() for chunk in chunks for n in str(chunk).split(",") if n.strip()]
    return list(dict.fromkeys(names))


def parse_methods(values: str | Sequence[str]) -> list[str]:
    """`method_list`, each name checked against METHODS (one error naming the valid ones)."""
    names = method_list(values)
    if not names:
        raise OnnxSplitError("no attribution method requested (see `onnxsplit methods`)")
    for name in names:
        if name not in METHODS:
            raise OnnxSplitError(f"unknown method '{name}'; choose from {', '.join(METHODS)}")
    return names


def make_method(method: str | AttributionMethod, target_layer: str | None = None):
    if isinstance(method, AttributionMethod):
        return method
    if method not in METHODS:
        raise OnnxSplitError(f"unknown method '{method}'; choose from {', '.join(METHODS)}")
    cls = METHODS[method]
    return cls(target_layer) if cls.takes_layer else cls()

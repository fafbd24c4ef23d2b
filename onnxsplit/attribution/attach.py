"""attach_methods: one ONNX model that returns the logits and the requested saliency maps.

    inputs:  <data input of the original model>, target int64 [N] (-1 = the predicted class)
    outputs: logits [N, K], map_<method> [N, H, W] for each method (SplitCAM adds
             map_splitcam_pos and map_splitcam_neg; SplitLRP and SplitGrad add
             map_<name>_g and map_<name>_h; outputs not named map_* are [N] diagnostics)

The model is canonicalized (onnxsplit.canonicalize), raised to opset >= 17 (MaxPool's backward
uses ScatterElements with reduction='add', opset 16), and the backward passes are compiled into
default-domain ONNX nodes (onnxsplit.attribution.autodiff). The result passes
onnx.checker.check_model(full_check=True).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import onnx
import onnx_graphsurgeon as gs
from onnx import shape_inference, version_converter

from onnxsplit import __version__
from onnxsplit.attribution.methods import AttributionContext, AttributionMethod, make_method
from onnxsplit.blocked_layout import fuse_clips
from onnxsplit.canonicalize import Canonical, canonicalize
from onnxsplit.emit import to_model
from onnxsplit.errors import OnnxSplitError
from onnxsplit.per_sample import scan_over_batch, worth_scanning
from onnxsplit.split.driver import choose_input, choose_output

ATTRIBUTION_OPSET = 17


def raise_opset(canonical: Canonical, opset: int = ATTRIBUTION_OPSET) -> Canonical:
    """The canonical graph converted to `opset` (unchanged when it is already that high)."""
    if canonical.opset >= opset:
        return canonical
    model = gs.export_onnx(canonical.graph)
    del model.opset_import[:]
    model.opset_import.append(onnx.helper.make_opsetid("", canonical.opset))
    try:
        converted = version_converter.convert_version(model, opset)
    except Exception as exc:
        raise OnnxSplitError(
            f"could not convert the model from opset {canonical.opset} to {opset} "
            f"(needed for the MaxPool backward pass): {exc}"
        ) from None
    try:
        converted = shape_inference.infer_shapes(converted, data_prop=True)
    except Exception:
        pass
    graph = gs.import_onnx(converted)
    return dataclasses.replace(canonical, graph=graph.cleanup().toposort(), opset=opset)


def attach_methods(
    model: onnx.ModelProto,
    methods: Sequence[str | AttributionMethod],
    target_layer: str | None = None,
    *,
    input_name: str | None = None,
    output_name: str | None = None,
    components: bool = True,
    per_sample: bool | str = False,
) -> onnx.ModelProto:
    """Return a model computing the logits and one map per method in one inference call.

    methods: names from onnxsplit.attribution.methods.METHODS ('gradient', 'gradient_x_input',
    'gradcam', 'layercam', 'lrp_epsilon', 'lrp_zplus', 'lrp_epsilon_plus', 'splitcam',
    'splitlrp', 'splitgrad') or method instances (docs/methods.md defines each).
    target_layer: the tensor the CAM methods explain (default: the last rank-4 rectifier
    output of the canonical graph). components=False: only `logits` and `map_<method>`
    (no component maps or diagnostics; the work only they need is left out, e.g. SplitLRP's
    R_h pass). per_sample: run the graph one sample at a time inside a Scan over the batch
    (onnxsplit.per_sample; for onnxruntime's CPU provider, where it keeps large models'
    tensors in the cache); "auto": where that pays (`per_sample.worth_scanning`). The same
    numbers either way. The argument `model` is not modified.
    """
    if per_sample not in (True, False, "auto"):
        raise ValueError(f"per_sample must be True, False or 'auto', not {per_sample!r}")
    if not methods:
        raise OnnxSplitError("no attribution method requested")
    resolved = [make_method(m, target_layer) for m in methods]
    names = [m.name for m in resolved]
    if len(set(names)) != len(names):
        raise OnnxSplitError(f"a method is requested twice: {names}")
    canonical = raise_opset(canonicalize(model))
    data = choose_input(canonical, input_name)
    logits = choose_output(canonical, output_name)
    if logits.shape is not None and len(logits.shape) != 2:
        raise OnnxSplitError(f"output '{logits.name}' must be [N, classes], got {logits.shape}")

    ctx = AttributionContext(canonical, data, logits, target_layer)
    for method in resolved:
        method.prepare(ctx)
    ctx.build_splits()
    ctx.build_seed()
    ctx.compute_gradients([n for m in resolved for n in m.gradient_targets(ctx)])
    maps: dict[str, gs.Tensor] = {}
    for method in resolved:
        maps.update(method.build(ctx))

    graph = ctx.graph
    ctx.em.scope = "outputs"
    outputs = [_named(ctx, logits, "logits", list(logits.shape or [None, None]))]
    batch = data.shape[0] if data.shape else None
    map_shape = [batch] + [data.shape[a] for a in ctx.layout.spatial_axes]
    if ctx.layout.channel_axis is None:
        map_shape = list(data.shape or [batch, None])
    if not components:
        maps = {name: maps[f"map_{name}"] for name in names}
        maps = {f"map_{name}": tensor for name, tensor in maps.items()}
    for name, tensor in maps.items():  # maps [N, H, W]; diagnostics (not map_*) [N]
        outputs.append(_named(ctx, tensor, name, map_shape if name.startswith("map_") else [batch]))
    graph.inputs = [data, ctx.target]
    graph.outputs = outputs
    fuse_clips(graph.cleanup())  # on the final graph: its readers decide what fuses
    graph.toposort()
    layer = None
    if any(hasattr(m, "layer") for m in resolved):
        layer = next(m.layer(ctx) for m in resolved if hasattr(m, "layer"))
    meta = {
        "onnxsplit.version": __version__,
        "onnxsplit.attribution.methods": json.dumps(names),
        "onnxsplit.attribution.maps": json.dumps(
            {name: _describe(resolved, name) for name in maps}
        ),
        "onnxsplit.attribution.target_layer": layer or "",
        "onnxsplit.attribution.layout": ctx.layout.name,
        "onnxsplit.input": data.name,
        "onnxsplit.source_output": logits.name,
    }
    compiled = to_model(graph, canonical.opset, meta)
    if per_sample is True or (per_sample == "auto" and worth_scanning(compiled, model)):
        return scan_over_batch(compiled)
    return compiled


def _named(ctx: AttributionContext, tensor: gs.Tensor, name: str, shape) -> gs.Variable:
    """`tensor` as a graph output named `name` (an Identity copy unless it has that name)."""
    if tensor.name == name:
        tensor.dtype, tensor.shape = ctx.dtype, shape
        return tensor
    clash = ctx.graph.tensors().get(name)
    if clash is not None:
        clash.name = f"{name}__internal"
    out = ctx.em.one("Identity", [tensor])
    out.name, out.dtype, out.shape = name, ctx.dtype, shape
    return out


def _describe(methods: Sequence[AttributionMethod], output: str) -> str:
    for method in methods:
        if output == f"map_{method.name}" or output.startswith(f"map_{method.name}_"):
            return method.describe()
    return ""

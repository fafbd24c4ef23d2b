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

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import shape_inference, version_converter

from onnxsplit import __version__
from onnxsplit.attribution.methods import AttributionContext, AttributionMethod, make_method
from onnxsplit.blocked_layout import fuse_clips
from onnxsplit.canonicalize import Canonical, canonicalize
from onnxsplit.contract import (
    CERT_PREFIX,
    LOGITS,
    MAP_PREFIX,
    META_BATCH,
    META_HEAD,
    META_INPUT,
    META_LAYOUT,
    META_MAPS,
    META_METHODS,
    META_SOURCE_INPUT,
    META_SOURCE_OUTPUT,
    META_TARGET_LAYER,
    META_VERSION,
    TARGET,
    map_output,
)
from onnxsplit.emit import to_model
from onnxsplit.errors import OnnxSplitError
from onnxsplit.per_sample import scan_over_batch, worth_scanning
from onnxsplit.split.driver import check_other_inputs_unused, choose_input, choose_output
from onnxsplit.split.emitter import Emitter, claim_names, fresh_name

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
    target_layer: the tensor the CAM methods explain (default: the last rectifier output of
    the input's rank in the canonical graph). components=False: only `logits` and `map_<method>`
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
    check_other_inputs_unused(canonical.graph, data)  # every method alike
    logits = choose_output(canonical, output_name)
    source_output, source_input = logits.name, data.name
    logits, head = explained_head(canonical, logits)
    if target_layer is not None and target_layer not in canonical.graph.tensors():
        raise OnnxSplitError(
            f"--target-layer '{target_layer}': the model has no tensor of that name "
            "(`onnxsplit inspect MODEL` lists the candidate layers)"
        )

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
    em = ctx.em
    em.scope = "outputs"
    batch = data.shape[0] if data.shape else None
    map_shape = [batch] + [data.shape[a] for a in ctx.layout.spatial_axes]
    if ctx.layout.channel_axis is None:
        map_shape = list(data.shape or [batch, None])
    if not components:
        maps = {map_output(name): maps[map_output(name)] for name in names}
    public = [(LOGITS, logits, list(logits.shape or [None, None]))]
    for name, tensor in maps.items():  # maps [N, H, W]; diagnostics (not map_*) [N]
        public.append(
            (name, tensor, map_shape if name.startswith((MAP_PREFIX, CERT_PREFIX)) else [batch])
        )
    outputs = []
    for name, tensor, shape in public:  # a copy per output: one tensor may serve two
        out = em.one("Identity", [tensor])
        out.dtype, out.shape = ctx.dtype, shape
        outputs.append((out, name))
    graph.inputs = [data, ctx.target]
    graph.outputs = [out for out, _ in outputs]
    wanted = [(ctx.target, TARGET), *outputs]
    if data.name in {name for _, name in wanted} or data.name.startswith(MAP_PREFIX):
        wanted.append((data, fresh_name(f"input_{data.name}", em.taken)))
    claim_names(graph, wanted, em.taken)
    fuse_clips(graph.cleanup())  # on the final graph: its readers decide what fuses
    graph.toposort()
    layer = None
    if any(hasattr(m, "layer") for m in resolved):
        layer = next(m.layer(ctx) for m in resolved if hasattr(m, "layer"))
    meta = {
        META_VERSION: __version__,
        META_METHODS: json.dumps(names),
        META_MAPS: json.dumps({name: _describe(resolved, name) for name in maps}),
        META_TARGET_LAYER: layer or "",
        META_LAYOUT: ctx.layout.name,
        META_INPUT: data.name,
        META_SOURCE_OUTPUT: source_output,
        META_SOURCE_INPUT: source_input,
        META_BATCH: str(batch) if isinstance(batch, int) else "",
        META_HEAD: head,
    }
    for method in resolved:  # a method's own keys (the certificate's reference)
        meta.update(method.metadata(ctx))
    compiled = to_model(graph, canonical.opset, meta)
    if per_sample is True or (per_sample == "auto" and worth_scanning(compiled, model)):
        return scan_over_batch(compiled)
    return compiled


def explained_head(canonical: Canonical, output: gs.Tensor) -> tuple[gs.Tensor, str]:
    """The [N, K] tensor whose entries are explained, and how it was read from `output`:
    [N, K] as it is; [N] as [N, 1]; [N, K, 1, ...] flattened (SqueezeNet/DenseNet exports);
    [N, K, *spatial] (segmentation) as the class score summed over the map. It replaces
    `output` among the canonical graph's outputs, so every split graph explains it too."""
    shape = output.shape
    if shape is None or len(shape) == 2:
        return output, "logits [N, K]"
    graph = canonical.graph
    em = Emitter(graph, canonical.opset, np.dtype(output.dtype or np.float32))
    em.scope = "head"
    rank = len(shape)
    if rank == 0:
        raise OnnxSplitError(f"output '{output.name}' is a scalar; a per-sample output is needed")
    if rank == 1:
        head = em.one("Unsqueeze", [output, em.const(np.asarray([1]), "axes", np.int64)])
        how = "one score [N] as [N, 1]"
    elif all(d == 1 for d in shape[2:]):
        head = em.one("Flatten", [output], {"axis": 1})
        how = f"[N, K, {', '.join('1' * (rank - 2))}] flattened to [N, K]"
    else:
        axes = em.const(np.arange(2, rank), "axes", np.int64)
        head = em.one("ReduceSum", [output, axes], {"keepdims": 0})
        how = f"segmentation [N, K, {', '.join('*' * (rank - 2))}]: class k summed over the map"
    head.dtype = output.dtype
    head.shape = [shape[0], 1 if rank == 1 else shape[1]]
    graph.outputs = [head if t is output else t for t in graph.outputs]
    graph.cleanup().toposort()
    return head, how


def _describe(methods: Sequence[AttributionMethod], output: str) -> str:
    for method in methods:
        if output == f"map_{method.name}" or output.startswith(f"map_{method.name}_"):
            return method.describe()
    return ""

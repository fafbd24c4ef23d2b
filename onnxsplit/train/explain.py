"""Explain a DC-trained model (f = g - h, from `onnxsplit train`) by its own two branches.

No conversion step: the model already computes g and h from the split input
(x+, x-) = (x_pos, x_neg) named in its metadata (onnxsplit.kind = "dc-trained",
onnxsplit.input_streams). For the target class k (target[n] = -1: the predicted class):

    map_self_g[n, i, j] = sum_c ( x+ * dg_k/dx+  +  x- * dg_k/dx- )[n, c, i, j]
    map_self_h[n, i, j] = the same with h_k
    map_self            = map_self_g - map_self_h

Both partial derivatives are >= 0 (g and h have non-negative weights) and x+, x- >= 0, so
map_self_g and map_self_h are non-negative maps of positive and negative evidence. map_self
equals gradient x input of f_k with respect to the (centred) input x = x+ - x-, because
d/dx f(relu(x), relu(-x)) x = x+ df/dx+ + x- df/dx-.

The backward passes are compiled into default-domain ONNX nodes by
:func:`onnxsplit.attribution.autodiff.differentiate`; the result is one model with inputs
(data, target int64 [N]) and outputs logits, map_self_g, map_self_h, map_self. No torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxsplit import __version__
from onnxsplit.attribution.attach import raise_opset
from onnxsplit.attribution.autodiff import differentiate
from onnxsplit.canonicalize import canonicalize
from onnxsplit.contract import LOGITS, TARGET, build_target_seed
from onnxsplit.emit import metadata, to_model
from onnxsplit.errors import OnnxSplitError
from onnxsplit.ops import GLOBAL_POOLS
from onnxsplit.split.emitter import Emitter, claim_names

DC_KIND = "dc-trained"
MAPS = {
    "map_self_g": "sum over channels and both streams of x+- * d g_k / d x+- (positive evidence)",
    "map_self_h": "sum over channels and both streams of x+- * d h_k / d x+- (negative evidence)",
    "map_self": "map_self_g - map_self_h (= gradient x input of f_k = g_k - h_k)",
    "map_selfcam_g": "class activation map of g_k: sum_c A_c * d g_k / d A_c at the features A "
    "the branch's global pooling averages (>= 0; sums to g_k minus its bias), resized to "
    "the input (linear) with the sum kept",
    "map_selfcam_h": "the same for h_k",
    "map_selfcam": "map_selfcam_g - map_selfcam_h (sums to f_k minus its bias)",
}
CARRIED = ("onnxsplit.arch", "onnxsplit.classes", "onnxsplit.preprocess", "onnxsplit.train")


def is_trained_dc(model: onnx.ModelProto) -> bool:
    """True for a model written by `onnxsplit train --kind dc` (metadata onnxsplit.kind)."""
    return metadata(model).get("onnxsplit.kind") == DC_KIND


def explain_trained(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    """The attribution model of a DC-trained model (see the module docstring).

    ``model``: an ONNX model or a path to one, with metadata onnxsplit.kind = "dc-trained".
    The argument is not modified.
    """
    if not isinstance(model, onnx.ModelProto):
        path = Path(model)
        if not path.is_file():
            raise OnnxSplitError(f"model file '{path}' does not exist")
        model = onnx.load(str(path))
    meta = metadata(model)
    kind = meta.get("onnxsplit.kind")
    if kind != DC_KIND:
        raise OnnxSplitError(
            "explain_trained needs a model trained by `onnxsplit train --kind dc` (metadata "
            f"onnxsplit.kind = '{DC_KIND}'); this model has onnxsplit.kind = {kind!r}. "
            "Explain other models with `onnxsplit convert` / attach_methods."
        )
    try:
        input_name = meta["onnxsplit.input"]
        pos_name, neg_name = json.loads(meta["onnxsplit.input_streams"])
    except (KeyError, ValueError) as exc:
        raise OnnxSplitError(f"the dc-trained model's metadata is incomplete: {exc}") from None

    canonical = raise_opset(canonicalize(model))
    graph = canonical.graph
    tensors = graph.tensors()
    for name in (input_name, pos_name, neg_name, "logits", "g", "h"):
        if name not in tensors:
            raise OnnxSplitError(f"the dc-trained model has no tensor '{name}'")
    data, logits = tensors[input_name], tensors["logits"]
    x_pos, x_neg = tensors[pos_name], tensors[neg_name]
    dtype = np.dtype(data.dtype or np.float32)
    em = Emitter(graph, canonical.opset, dtype)

    def i64(value) -> gs.Constant:
        return em.const(np.asarray(value, np.int64), "i", np.int64)

    batch = data.shape[0] if data.shape else None
    target, _, onehot = build_target_seed(em, logits, batch)

    rank = len(data.shape) if data.shape is not None else 2
    pooled = {branch: _pooled_features(graph, branch) for branch in ("g", "h")}
    with_cam = rank == 4 and all(t is not None for t in pooled.values())
    maps: dict[str, gs.Tensor] = {}
    for branch in ("g", "h"):
        wrt = [pos_name, neg_name] + ([pooled[branch].name] if with_cam else [])
        grads = differentiate(
            graph,
            {branch: onehot},
            wrt,
            opset=canonical.opset,
            dtype=dtype,
            emitter=em,
            scope=f"self_{branch}",
        )
        em.scope = f"map_self_{branch}"
        parts = [
            em.mul(stream, grads[stream.name])
            for stream in (x_pos, x_neg)
            if grads[stream.name] is not None
        ]
        if not parts:
            total = em.mul(x_pos, em.const(np.zeros((), dtype)))
        else:
            total = em.total(parts)
        maps[f"map_self_{branch}"] = (
            em.one("ReduceSum", [total, i64([1])], {"keepdims": 0}) if rank >= 3 else total
        )
        if with_cam:
            em.scope = f"map_selfcam_{branch}"
            features = pooled[branch]
            cam = em.one(
                "ReduceSum",
                [em.mul(features, grads[features.name]), i64([1])],
                {"keepdims": 0},
            )
            maps[f"map_selfcam_{branch}"] = _upsample(em, i64, cam, features, data)
    em.scope = "map_self"
    maps["map_self"] = em.sub(maps["map_self_g"], maps["map_self_h"])
    if with_cam:
        maps["map_selfcam"] = em.sub(maps["map_selfcam_g"], maps["map_selfcam_h"])

    map_shape = [batch, *data.shape[2:]] if rank >= 3 else list(data.shape or [batch, None])
    em.scope = "outputs"
    logits.dtype = dtype
    public = [(em.one("Identity", [logits]), LOGITS)]
    public[0][0].dtype, public[0][0].shape = dtype, logits.shape
    order = ["map_self_g", "map_self_h", "map_self", "map_selfcam_g", "map_selfcam_h"]
    for name in [*order, "map_selfcam"]:
        if name not in maps:
            continue
        out = em.one("Identity", [maps[name]])
        out.dtype, out.shape = dtype, map_shape
        public.append((out, name))
    outputs = [out for out, _ in public]
    graph.inputs = [data, target]
    graph.outputs = outputs
    claim_names(graph, [(target, TARGET), *public], em.taken)
    graph.cleanup().toposort()
    meta_out = {
        "onnxsplit.version": __version__,
        "onnxsplit.source_kind": DC_KIND,
        "onnxsplit.attribution.methods": json.dumps(["self"]),
        "onnxsplit.attribution.maps": json.dumps(
            {o.name: MAPS[o.name] for o in outputs if o.name in MAPS}
        ),
        "onnxsplit.attribution.layout": "NCHW" if rank >= 3 else "flat",
        "onnxsplit.input": data.name,
        "onnxsplit.source_output": "logits",
        "onnxsplit.input_streams": json.dumps([pos_name, neg_name]),
    }
    meta_out.update({key: meta[key] for key in CARRIED if key in meta})
    return to_model(graph, canonical.opset, meta_out)


def _ancestor_nodes(tensor: gs.Tensor) -> list[gs.Node]:
    seen: set[int] = set()
    nodes: list[gs.Node] = []
    stack = [tensor]
    while stack:
        t = stack.pop()
        for node in t.inputs:
            if id(node) not in seen:
                seen.add(id(node))
                nodes.append(node)
                stack.extend(node.inputs)
    return nodes


def _pooled_features(graph: gs.Graph, branch: str) -> gs.Tensor | None:
    """The rank-4 tensor that the branch's (only) global pooling averages, if there is one."""
    other = "h" if branch == "g" else "g"
    tensors = graph.tensors()
    shared = {id(n) for n in _ancestor_nodes(tensors[other])}
    pools = [
        n for n in _ancestor_nodes(tensors[branch]) if n.op in GLOBAL_POOLS and id(n) not in shared
    ]
    if len(pools) != 1:
        return None
    features = pools[0].inputs[0]
    shape = features.shape
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[2:]):
        return None
    return features


def _upsample(em: Emitter, i64, cam: gs.Tensor, features: gs.Tensor, data: gs.Tensor):
    """[N, h, w] -> [N, H, W] (Resize linear, half_pixel), times hw / HW (keeps the sum)."""
    h, w = features.shape[2:]
    big_h, big_w = data.shape[2:]
    batched = em.one("Unsqueeze", [cam, i64([1])])
    lead = em.one("Slice", [em.one("Shape", [batched]), i64([0]), i64([2])])
    sizes = em.one("Concat", [lead, i64([big_h, big_w])], {"axis": 0})
    resized = em.one(
        "Resize",
        [batched, None, None, sizes],
        {"mode": "linear", "coordinate_transformation_mode": "half_pixel"},
    )
    scaled = em.mul(resized, em.const(np.asarray(h * w / (big_h * big_w), em.dtype)))
    return em.one("Squeeze", [scaled, i64([1])])

"""An ONNX classifier seen by Quantus as a torch model, and its compiled attribution models.

Quantus wants a ``torch.nn.Module``. :class:`OnnxClassifier` is a thin one: ``forward`` takes a
channel-first torch tensor, runs the ONNX model in onnxruntime (transposing to NHWC first when
the model wants channels last) and returns the output as a torch tensor. Explanations never go
through torch: :meth:`OnnxClassifier.explain` runs the graph that
:func:`onnxsplit.attribution.attach.attach_methods` compiled for one method, for the classifier's
*current* weights, so a randomised or shifted copy (the randomisation and input-invariance
tests) is recompiled and explained by its own compiled graph.

:class:`CompiledModels` holds the onnxruntime sessions: compiled models of the original weights
are cached on disk by content hash (``<cache>/eval/``), those of modified weights only in memory.

A model trained by ``onnxsplit train --kind dc`` (metadata onnxsplit.kind = "dc-trained") is
also explained by its own branches: the method ``self`` compiles
:func:`onnxsplit.train.explain_trained` and its maps are the methods ``self`` (g - h, gradient x
input), ``self_g``, ``self_h``, ``selfcam`` (class activation map of g - h), ``selfcam_g`` and
``selfcam_h`` (:data:`SELF_MAPS`).

Pseudo methods for controls: ``random`` (seeded uniform noise, a map that knows nothing) and
``<method>@other`` (the map of ``<method>`` for another class than the one asked for).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from onnxsplit.contract import TARGET
from onnxsplit.errors import OnnxSplitError
from onnxsplit.ops import WEIGHTED_ALL
from onnxsplit.runtime import make_session, per_sample_for, provider_used

PASS_THROUGH = ("Transpose", "Identity", "Pad", "Flatten", "Reshape")


def model_hash(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString()).hexdigest()[:20]


# the own maps of a DC-trained model (onnxsplit.train.explain_trained), all read from the one
# compiled model "self"; the selfcam maps exist for models with a global pooling (the CNN)
SELF_MAPS = ("self", "self_g", "self_h", "selfcam", "selfcam_g", "selfcam_h")


def base_method(name: str) -> tuple[str, str]:
    """(method compiled by attach_methods, graph output read) for a method name.

    ``splitcam`` reads ``map_splitcam``; ``splitcam_pos`` compiles ``splitcam`` and reads
    ``map_splitcam_pos`` (any ``<method>_<suffix>`` output of a method in METHODS works).
    The self maps of a DC-trained model (:data:`SELF_MAPS`) compile ``self`` (its
    ``explain_trained`` model) and read ``map_<name>``.
    """
    from onnxsplit.attribution.methods import METHODS

    if name in SELF_MAPS:
        return "self", f"map_{name}"
    if name in METHODS:
        return name, f"map_{name}"
    owners = [m for m in METHODS if name.startswith(m + "_")]
    if not owners:
        raise OnnxSplitError(
            f"unknown method '{name}'; choose from {', '.join(METHODS)}, 'random', "
            "'<method>_<output suffix>', '<method>@other' or, for a model trained by "
            f"`onnxsplit train --kind dc`, its own maps {', '.join(SELF_MAPS)}"
        )
    return max(owners, key=len), f"map_{name}"


def check_method(name: str) -> None:
    """Raise OnnxSplitError for a name that is neither a method, a map variant nor a control."""
    if name == "random":
        return
    base_method(name.removesuffix("@other"))


@dataclass(frozen=True)
class ModelInfo:
    input_name: str
    output_name: str
    layout: str  # NCHW | NHWC
    channels: int
    height: int
    width: int
    num_classes: int
    probabilities: bool = False  # the output is a softmax already

    @property
    def chw(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


def model_info(model: onnx.ModelProto) -> ModelInfo:
    from onnxsplit.explain.preprocess import input_layout

    init = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init]
    if len(inputs) != 1:
        raise OnnxSplitError(f"the model must have one data input, it has {len(inputs)}")
    dims = [d.dim_value or d.dim_param or None for d in inputs[0].type.tensor_type.shape.dim]
    layout = input_layout(dims)
    out = model.graph.output[0]
    odims = [d.dim_value for d in out.type.tensor_type.shape.dim]
    if len(odims) != 2 or not odims[1]:
        raise OnnxSplitError(f"the model output '{out.name}' must be [N, classes], got {odims}")
    return ModelInfo(
        inputs[0].name,
        out.name,
        layout.layout,
        layout.channels,
        layout.height,
        layout.width,
        int(odims[1]),
        any(n.op_type == "Softmax" and out.name in n.output for n in model.graph.node),
    )


class PredictionCache:
    """Model outputs by (model hash, input content), at most `limit` bytes (least recently
    used out first). Quantus asks for the same predictions again and again: the unperturbed
    inputs in every faithfulness and axiomatic metric, and FaithfulnessCorrelation's random
    subsets, which are the same for every method (they are drawn from the metric's seed)."""

    def __init__(self, limit: int = 256 << 20):
        self.limit = limit
        self.size = 0
        self.hits = 0
        self.misses = 0
        self._rows: OrderedDict[bytes, np.ndarray] = OrderedDict()

    @staticmethod
    def key(model_key: str, row: np.ndarray) -> bytes:
        # SHA-1 runs in hardware on current CPUs: 0.6 ms for a 224 px image, BLAKE2b 1.8 ms
        digest = hashlib.sha1(memoryview(np.ascontiguousarray(row)).cast("B"))
        digest.update(f"{row.dtype}{row.shape}".encode())
        return model_key.encode() + digest.digest()

    def get(self, key: bytes) -> np.ndarray | None:
        row = self._rows.get(key)
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        self._rows.move_to_end(key)
        return row

    def put(self, key: bytes, row: np.ndarray) -> None:
        if self.limit <= 0 or key in self._rows:
            return
        row = np.array(row, copy=True)
        self._rows[key] = row
        self.size += row.nbytes
        while self.size > self.limit and self._rows:
            _, old = self._rows.popitem(last=False)
            self.size -= old.nbytes


class CompiledModels:
    """onnxruntime sessions of a classifier and of its attribution models, by content hash."""

    def __init__(
        self,
        device: str = "auto",
        cache_dir: Path | None = None,
        target_layer: str | None = None,
        keep: int = 6,
        threads: int | None = None,
        keep_compiled: int = 8,
        predict_cache_bytes: int = 256 << 20,
    ):
        self.device = device
        self.cache_dir = cache_dir
        self.target_layer = target_layer
        self.keep = keep
        self.threads = threads  # onnxruntime intra-op threads (None: all cores)
        self.keep_compiled = keep_compiled
        self.persistent: set[str] = set()  # model hashes whose compiled files go to disk
        self._sessions: OrderedDict[tuple[str, str], object] = OrderedDict()
        # compiled bytes of modified weights (MPRT's randomised and the shifted models), kept
        # in memory so that the next shard of samples does not compile them again
        self._compiled_bytes: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self.compiles = 0
        self.runs = 0  # onnxruntime runs of plain models (predictions)
        self.predictions = PredictionCache(predict_cache_bytes)
        self.provider = "CPUExecutionProvider"

    def session(self, model: onnx.ModelProto, key: str, method: str | None):
        """The session of the plain model (method None) or of `method` compiled into it."""
        slot = (key, method or "")
        if slot in self._sessions:
            self._sessions.move_to_end(slot)
            return self._sessions[slot]
        if method is None:
            data = model.SerializeToString()
        else:
            data = self._compiled(model, key, method)
        session = make_session(data, self.device, self.threads)
        self.provider = provider_used(session)
        self._sessions[slot] = session
        while len(self._sessions) > self.keep:
            self._sessions.popitem(last=False)
        return session

    def release(self, keep: str | None = None, method: str | None = None) -> None:
        """Close every session except those of model hash `keep`: its plain session and its
        compiled `method` (a 224 px attribution graph's session holds GBs of arena)."""
        for slot in list(self._sessions):
            if slot not in ((keep, ""), (keep, method)):
                del self._sessions[slot]
        import gc

        gc.collect()

    def _compiled(self, model: onnx.ModelProto, key: str, method: str) -> bytes:
        from onnxsplit.attribution.attach import attach_methods
        from onnxsplit.compile_key import compiled_model_key

        path = None
        if self.cache_dir is not None and key in self.persistent:
            per_sample = per_sample_for(self.device)
            variant = method if per_sample is False else f"{method}+per_sample_{per_sample}"
            tag = compiled_model_key(key, variant, self.target_layer, 16)
            path = self.cache_dir / f"{key}-{method}-{tag}.onnx"
            if path.is_file():
                return path.read_bytes()
        elif (key, method) in self._compiled_bytes:
            self._compiled_bytes.move_to_end((key, method))
            return self._compiled_bytes[key, method]
        self.compiles += 1
        if method == "self":  # a DC-trained model's own maps
            from onnxsplit.train.explain import explain_trained

            data = explain_trained(model).SerializeToString()
        else:
            # several outputs (a DC-trained model: logits, g, h): explain the first, which is
            # the one the classifier reads (model_info)
            output = model.graph.output[0].name if len(model.graph.output) > 1 else None
            data = attach_methods(
                model,
                [method],
                self.target_layer,
                output_name=output,
                per_sample=per_sample_for(self.device),
            ).SerializeToString()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}-{zlib.crc32(data)}")
            tmp.write_bytes(data)
            tmp.replace(path)
        else:
            self._compiled_bytes[key, method] = data
            while len(self._compiled_bytes) > self.keep_compiled:
                self._compiled_bytes.popitem(last=False)
        return data


class OnnxClassifier(torch.nn.Module):
    """A torch module that runs an ONNX classifier (channel-first tensors in, outputs out).

    Instances are never modified after construction: :meth:`randomised` and :meth:`shifted`
    return new classifiers (a deep copy shares the weights, which are never written to).
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        runtime: CompiledModels,
        info: ModelInfo | None = None,
        seed: int = 0,
        batch_size: int = 8,
        name: str = "original",
        mprt_stages: int = 3,
    ):
        super().__init__()
        self.proto = model
        self.key = model_hash(model)
        self.runtime = runtime
        self.info = info or model_info(model)
        self.seed = seed
        self.batch_size = batch_size
        self.label = name
        self.mprt_stages = mprt_stages
        self.eval()

    def __deepcopy__(self, memo):
        clone = OnnxClassifier.__new__(OnnxClassifier)
        torch.nn.Module.__init__(clone)
        for attr in (
            "proto",
            "key",
            "runtime",
            "info",
            "seed",
            "batch_size",
            "label",
            "mprt_stages",
        ):
            setattr(clone, attr, getattr(self, attr))
        clone.eval()
        return clone

    # -- layout -------------------------------------------------------------------------
    def to_model_layout(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 3:
            x = x[:, None]
        if self.info.layout == "NHWC":
            x = np.transpose(x, (0, 2, 3, 1))
        return np.ascontiguousarray(x)

    # -- forward --------------------------------------------------------------------------
    @contextlib.contextmanager
    def recording(self, batch: int = 64):
        """While active, predictions are not answered but gathered (zeros are returned), and
        run `batch` inputs at a time into the prediction cache (onnxsplit.eval.metrics
        .run_metric's prefetch); what is left is run when the block ends."""
        pending: list[np.ndarray] = []

        def flush() -> None:
            if pending:
                rows = np.concatenate(pending)
                pending.clear()
                self._recorder = None
                try:
                    self._predict(rows, batch)
                finally:
                    self._recorder = record

        def record(x: np.ndarray) -> np.ndarray:
            pending.append(x)
            if sum(len(p) for p in pending) >= batch:
                flush()
            return np.zeros((len(x), self.info.num_classes), np.float32)

        self._recorder = record
        try:
            yield
            flush()
        finally:
            self._recorder = None

    def predict_numpy(self, x_nchw: np.ndarray) -> np.ndarray:
        """The model's outputs; inputs seen before (by content) come from the runtime's
        PredictionCache, the others run in batches of `batch_size`."""
        x = self.to_model_layout(x_nchw)
        recorder = getattr(self, "_recorder", None)
        if recorder is not None:
            return recorder(x)
        return self._predict(x, self.batch_size)

    def _predict(self, x: np.ndarray, batch: int) -> np.ndarray:
        """Outputs for inputs `x` already in the model's layout, cached rows looked up."""
        cache = self.runtime.predictions
        keys = [cache.key(self.key, row) for row in x]
        found = [cache.get(k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            session = self.runtime.session(self.proto, self.key, None)
            todo = x[missing]
            out = []
            for i in range(0, len(todo), batch):
                self.runtime.runs += 1
                out.append(session.run(None, {self.info.input_name: todo[i : i + batch]})[0])
            out = np.concatenate(out).astype(np.float32)
            for i, row in zip(missing, out, strict=True):
                found[i] = row
                cache.put(keys[i], row)
        return np.stack(found).astype(np.float32)

    def forward(self, x):
        array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        return torch.from_numpy(self.predict_numpy(array))

    # -- explanations ---------------------------------------------------------------------
    def explain(self, method: str, x_nchw: np.ndarray, targets) -> np.ndarray:
        """Maps [N, H, W] (float32) of `method` for classes `targets` on channel-first inputs."""
        x_nchw = np.asarray(x_nchw, dtype=np.float32)
        targets = np.asarray(targets, dtype=np.int64).reshape(-1)
        if method == "random":
            return np.stack([self._random_map(x) for x in x_nchw])
        if method.endswith("@other"):
            method = method.removesuffix("@other")
            k = self.info.num_classes
            targets = (targets + max(1, k // 2)) % k
        compiled, output = base_method(method)
        session = self.runtime.session(self.proto, self.key, compiled)
        names = [o.name for o in session.get_outputs()]
        if output not in names:
            raise OnnxSplitError(f"the compiled '{compiled}' model has no output '{output}'")
        index = names.index(output)
        x = self.to_model_layout(x_nchw)
        data_name = next(i.name for i in session.get_inputs() if i.name != TARGET)
        maps = []
        for i in range(0, len(x), self.batch_size):
            feeds = {data_name: x[i : i + self.batch_size]}
            feeds[TARGET] = targets[i : i + self.batch_size]
            maps.append(session.run(None, feeds)[index])
        return np.concatenate(maps).astype(np.float32)

    def _random_map(self, x: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([self.seed, zlib.crc32(np.ascontiguousarray(x).tobytes())])
        return rng.random((self.info.height, self.info.width), dtype=np.float32)

    # -- modified copies --------------------------------------------------------------------
    def weighted_layers(self) -> list[tuple[str, list[str]]]:
        """(node name, initializer names) of every Conv/Gemm/MatMul with constant weights,
        in graph order (input side first)."""
        init = {t.name for t in self.proto.graph.initializer}
        layers = []
        for i, node in enumerate(self.proto.graph.node):
            if node.op_type in WEIGHTED_ALL:
                params = [name for name in node.input[1:] if name in init]
                if params:
                    layers.append((node.name or f"{node.op_type}_{i}", params))
        return layers

    def stage_counts(self) -> list[int]:
        """How many layers (from the top) each randomisation stage has randomised: the last
        layer, then `mprt_stages - 1` evenly spaced steps down to all of them."""
        n = len(self.weighted_layers())
        if n == 0:
            raise OnnxSplitError("the model has no Conv/Gemm/MatMul layer with constant weights")
        k = max(1, self.mprt_stages - 1)
        return sorted({1} | {max(1, round(n * i / k)) for i in range(1, k + 1)})

    def randomisation_stages(self, order: str = "top_down", seed: int = 42):
        """(name, randomised copy) per stage: cascading from the top ('top_down'), from the
        input ('bottom_up'), or each group of layers alone ('independent')."""
        layers = self.weighted_layers()
        n, previous = len(layers), 0
        for count in self.stage_counts():
            if order == "top_down":
                chosen, name = layers[n - count :], f"top {count}/{n} layers"
            elif order == "bottom_up":
                chosen, name = layers[:count], f"bottom {count}/{n} layers"
            else:
                chosen, name = (
                    layers[n - count : n - previous],
                    f"layers {n - count}-{n - previous}",
                )
            previous = count
            yield name, self.randomised(chosen, seed, name)

    def randomised(self, layers: list[tuple[str, list[str]]], seed: int, name: str):
        """A copy whose listed initializers are redrawn from N(0, std of the original tensor),
        each from a generator seeded by (seed, tensor name): cascades stay consistent."""
        model = copy.deepcopy(self.proto)
        wanted = {p for _, params in layers for p in params}
        for tensor in model.graph.initializer:
            if tensor.name not in wanted:
                continue
            rng = np.random.default_rng([seed, zlib.crc32(tensor.name.encode())])
            value = numpy_helper.to_array(tensor)
            std = float(value.std()) or 1.0 / np.sqrt(max(1, value[0].size if value.ndim else 1))
            new = (rng.standard_normal(value.shape) * std).astype(value.dtype)
            tensor.CopyFrom(numpy_helper.from_array(new, tensor.name))
        return self._derived(model, name)

    def _derived(self, model: onnx.ModelProto, name: str) -> OnnxClassifier:
        return OnnxClassifier(
            model, self.runtime, self.info, self.seed, self.batch_size, name, self.mprt_stages
        )

    def shifted(self, delta: float):
        """A copy for inputs shifted by the constant `delta`: f'(x + delta) = f(x).

        The first affine layer absorbs the shift into its bias (b - delta * sum of each output's
        weights) and zero padding in front of it pads with `delta` instead, so the copy is exact
        also at the borders. Raises OnnxSplitError when the data input reaches the first layer
        through anything but Transpose/Identity/constant Pad/Flatten/Reshape.
        """
        model = copy.deepcopy(self.proto)
        graph = model.graph
        init = {t.name: t for t in graph.initializer}
        name = self.info.input_name
        while True:
            users = [n for n in graph.node if name in n.input]
            if len(users) != 1:
                raise OnnxSplitError("input shift: the data input feeds several nodes")
            node = users[0]
            if node.op_type in WEIGHTED_ALL:
                break
            if node.op_type not in PASS_THROUGH:
                raise OnnxSplitError(f"input shift: '{node.op_type}' before the first layer")
            if node.op_type == "Pad":
                _shift_pad(model, node, delta)
            name = node.output[0]
        if node.op_type not in ("Conv", "Gemm") or node.input[1] not in init:
            raise OnnxSplitError(f"input shift: the first layer is a {node.op_type}")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        weight = numpy_helper.to_array(init[node.input[1]]).astype(np.float64)
        if node.op_type == "Conv":
            if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                raise OnnxSplitError("input shift: Conv with auto_pad")
            per_output = weight.reshape(weight.shape[0], -1).sum(axis=1)
            pads = list(attrs.get("pads", []))
            if any(pads):
                _pad_before_conv(model, node, pads, delta)
        else:
            if attrs.get("transA", 0):
                raise OnnxSplitError("input shift: Gemm with transA")
            per_output = weight.sum(axis=1) if attrs.get("transB", 0) else weight.sum(axis=0)
            per_output = per_output * float(attrs.get("alpha", 1.0))
        _shift_bias(model, node, -delta * per_output)
        return self._derived(model, "shifted")


def _shift_pad(model: onnx.ModelProto, node: onnx.NodeProto, delta: float) -> None:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("mode", b"constant") not in (b"constant", "constant"):
        raise OnnxSplitError("input shift: a Pad that is not constant")
    for attr in node.attribute:  # opset < 11: the value is an attribute
        if attr.name == "value":
            attr.f = attr.f + delta
            return
    if "pads" in attrs:
        node.attribute.append(onnx.helper.make_attribute("value", float(delta)))
        return
    init = {t.name: t for t in model.graph.initializer}
    value = 0.0
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in init:
            raise OnnxSplitError("input shift: a Pad whose value is not a constant")
        value = float(numpy_helper.to_array(init[node.input[2]]).reshape(-1)[0])
    name = f"{node.name or 'pad'}__shifted_value"
    model.graph.initializer.append(
        numpy_helper.from_array(np.array(value + delta, np.float32), name)
    )
    inputs = list(node.input) + [""] * max(0, 3 - len(node.input))
    inputs[2] = name
    del node.input[:]
    node.input.extend(inputs)


def _pad_before_conv(model, node, pads: list[int], delta: float) -> None:
    rank = len(pads) // 2
    full = [0, 0] + pads[:rank] + [0, 0] + pads[rank:]
    prefix = f"{node.name or 'conv'}__shift"
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 11:
        pad = onnx.helper.make_node(
            "Pad", [node.input[0]], [f"{prefix}_out"], pads=full, value=float(delta)
        )
    else:
        pad = None
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(full, np.int64), f"{prefix}_pads"),
            numpy_helper.from_array(np.array(delta, np.float32), f"{prefix}_value"),
        ]
    )
    pad = pad or onnx.helper.make_node(
        "Pad", [node.input[0], f"{prefix}_pads", f"{prefix}_value"], [f"{prefix}_out"]
    )
    node.input[0] = f"{prefix}_out"
    for attr in node.attribute:
        if attr.name == "pads":
            del attr.ints[:]
            attr.ints.extend([0] * len(pads))
    nodes = list(model.graph.node)
    nodes.insert(nodes.index(node), pad)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _shift_bias(model, node, change: np.ndarray) -> None:
    init = {t.name: t for t in model.graph.initializer}
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in init:
            raise OnnxSplitError("input shift: the first layer's bias is not a constant")
        tensor = init[node.input[2]]
        bias = numpy_helper.to_array(tensor)
        if node.op_type == "Gemm":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            beta = float(attrs.get("beta", 1.0))
            change = change / beta
        new = (bias.astype(np.float64) + np.broadcast_to(change, bias.shape)).astype(bias.dtype)
        tensor.CopyFrom(numpy_helper.from_array(new, tensor.name))
        return
    name = f"{node.name or 'layer'}__shift_bias"
    model.graph.initializer.append(numpy_helper.from_array(change.astype(np.float32), name))
    while len(node.input) < 2:
        node.input.append("")
    if len(node.input) == 2:
        node.input.append(name)
    else:
        node.input[2] = name

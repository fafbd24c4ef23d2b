"""The contract of an attribution-ready model: what `attach_methods` emits and every consumer
(`explain`, `Explainer`, `evaluate`, `export-web`, trained DC models, the Node/web examples)
reads. One module, so that no consumer guesses a name, a position or a layout.

    inputs:  <data>  the model's own input (its name kept; metadata `onnxsplit.input`)
             target  int64 [N]: the class explained per sample, -1 = the predicted class
    outputs: logits  [N, K] (the explained output; metadata `onnxsplit.source_output` names
             the model's tensor), map_<method> [N, *spatial], component maps map_<method>_*,
             and [N] diagnostics (not map_*)

A target outside -1..K-1 makes every map NaN (the graph checks it; never a map of zeros), and
`Interface.run` refuses it first with one clear error. The layout of the data input is recorded
once, at compile time (`onnxsplit.attribution.layout`), and read from the metadata after.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxsplit.emit import metadata  # noqa: F401 (the contract's reader of metadata_props)
from onnxsplit.errors import OnnxSplitError

TARGET = "target"
LOGITS = "logits"
MAP_PREFIX = "map_"
CERT_PREFIX = "cert_"  # certificate maps (cert_drop, cert_rise): [N, *spatial] like map_*
CERT_DROP = "cert_drop"  # the certificate's D map (onnxsplit/attribution/certificate.py)
CERT_RISE = "cert_rise"  # its U map
CERT_ERROR = "certificate_error"  # [N] diagnostic: max_k |g_k - h_k - f_k| / max_k |f_k|
# names the contract gives to graph inputs/outputs; a user tensor never keeps one of them
RESERVED = (TARGET, LOGITS)

META_VERSION = "onnxsplit.version"
META_METHODS = "onnxsplit.attribution.methods"
META_MAPS = "onnxsplit.attribution.maps"
META_TARGET_LAYER = "onnxsplit.attribution.target_layer"
META_LAYOUT = "onnxsplit.attribution.layout"
META_INPUT = "onnxsplit.input"
META_SOURCE_OUTPUT = "onnxsplit.source_output"
META_SOURCE_INPUT = "onnxsplit.source_input"  # the data input's name in the user's model
META_BATCH = "onnxsplit.batch"  # the declared batch: an int, or "" for a dynamic batch
META_HEAD = "onnxsplit.attribution.head"  # how the explained output was read (docs/inputs.md)
# how images become the model's input (JSON: name, scale, mean, std, color, resize, quantize)
META_PREPROCESS = "onnxsplit.explain.preprocess"
META_LABELS = "onnxsplit.explain.labels"  # class names in logit order (JSON list)
# the certificate's deletion reference c (JSON number or nested list, in the model's input space)
META_REFERENCE = "onnxsplit.reference"


def map_output(method: str) -> str:
    """The output name of a method's map."""
    return MAP_PREFIX + method


# -- building (compile time) ---------------------------------------------------------------
def build_target_seed(em, logits: gs.Tensor, batch) -> tuple[gs.Variable, gs.Variable, gs.Variable]:
    """The `target` input and its one-hot seed: (target int64 [N], chosen class int64 [N],
    one-hot [N, K] in the logits' float type). -1 picks the argmax; a target outside -1..K-1
    gives a row of NaN, so every map of that sample is NaN rather than silently zero."""

    def i64(value) -> gs.Constant:
        return em.const(np.asarray(value, np.int64), "i", np.int64)

    dtype = em.dtype
    em.scope = "target"
    target = gs.Variable(em.name(TARGET), dtype=np.int64, shape=[batch])
    argmax = em.one("ArgMax", [logits], {"axis": 1, "keepdims": 0})
    chosen = em.one("Where", [em.one("Less", [target, i64(0)]), argmax, target])
    classes = em.one("Gather", [em.one("Shape", [logits]), i64(1)], {"axis": 0})
    rows = em.one("Range", [i64(0), classes, i64(1)])
    column = em.one("Unsqueeze", [chosen, i64([1])])
    to = int(onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
    onehot = em.one("Cast", [em.one("Equal", [column, rows])], {"to": to})
    # out of range (target < -1 or >= K): the one-hot row is all zero; add NaN to it
    valid = em.one(
        "And",
        [em.one("Less", [target, classes]), em.one("Greater", [target, i64(-2)])],
    )
    nan = em.const(np.asarray(np.nan, dtype), "nan")
    zero = em.const(np.asarray(0.0, dtype), "zero")
    poison = em.one("Where", [em.one("Unsqueeze", [valid, i64([1])]), zero, nan])
    onehot = em.one("Add", [onehot, poison])
    onehot.dtype = dtype
    return target, chosen, onehot


# -- reading (run time) ----------------------------------------------------------------------
@dataclass(frozen=True)
class Interface:
    """The inputs, outputs and facts of a compiled attribution model, read once."""

    input_name: str
    input_shape: tuple  # declared dims (int or None for symbolic)
    input_dtype: np.dtype
    methods: tuple[str, ...]
    outputs: tuple[str, ...]
    layout: str  # 'NCHW', 'NHWC', 'NCL', ... or 'flat' (see attribution.methods.Layout)
    batch: int | None  # declared batch, None when dynamic
    classes: int | None

    @classmethod
    def of(cls, model: onnx.ModelProto) -> Interface:
        meta = metadata(model)
        inputs = {i.name: i for i in model.graph.input}
        name = meta.get(META_INPUT) or next(iter(n for n in inputs if n != TARGET), None)
        if name not in inputs or TARGET not in inputs:
            raise OnnxSplitError(
                f"not an attribution model: inputs {list(inputs)} lack <data> and '{TARGET}' "
                "(compile one with `onnxsplit convert MODEL --methods ...`)"
            )
        dims = tuple(_dims(inputs[name]))
        elem = inputs[name].type.tensor_type.elem_type
        outputs = tuple(o.name for o in model.graph.output)
        if LOGITS not in outputs:
            raise OnnxSplitError(f"not an attribution model: it has no '{LOGITS}' output")
        logits = next(o for o in model.graph.output if o.name == LOGITS)
        logit_dims = _dims(logits)
        methods = json.loads(meta.get(META_METHODS, "[]"))
        if not methods:
            methods = [o.removeprefix(MAP_PREFIX) for o in outputs if o.startswith(MAP_PREFIX)]
        batch = dims[0] if dims and isinstance(dims[0], int) else None
        return cls(
            input_name=name,
            input_shape=dims,
            input_dtype=np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)),
            methods=tuple(methods),
            outputs=outputs,
            layout=meta.get(META_LAYOUT, ""),
            batch=batch,
            classes=logit_dims[1]
            if len(logit_dims) > 1 and isinstance(logit_dims[1], int)
            else None,
        )

    def check_input(self, x: np.ndarray, source: str = "the input") -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != len(self.input_shape):
            raise OnnxSplitError(
                f"{source} has shape {list(x.shape)}; the model's input '{self.input_name}' "
                f"is {_show(self.input_shape)}"
            )
        for axis, (got, want) in enumerate(zip(x.shape[1:], self.input_shape[1:], strict=True)):
            if isinstance(want, int) and got != want:
                raise OnnxSplitError(
                    f"{source} has shape {list(x.shape)}; the model's input '{self.input_name}' "
                    f"is {_show(self.input_shape)} (axis {axis + 1} differs)"
                )
        if not np.all(np.isfinite(x)):
            raise OnnxSplitError(
                f"{source} contains NaN or inf values (a preprocessing with std 0?); "
                "maps of non-finite inputs are meaningless"
            )
        return x.astype(self.input_dtype, copy=False)

    def check_targets(self, targets: np.ndarray, classes: int | None = None) -> None:
        classes = classes or self.classes
        if classes is None:
            return
        bad = np.asarray(targets)[(targets < -1) | (targets >= classes)]
        if bad.size:
            raise OnnxSplitError(
                f"target {int(bad[0])} is out of range: the model has {classes} classes "
                f"(0..{classes - 1}, or -1 for the predicted class)"
            )

    def targets(self, target, n: int) -> np.ndarray:
        if target is None:
            return np.full(n, -1, np.int64)
        return np.broadcast_to(np.asarray(target, np.int64), (n,)).copy()

    def run(
        self,
        session,
        x: np.ndarray,
        target=None,
        outputs: Sequence[str] | None = None,
        source: str = "the input",
    ) -> list[np.ndarray]:
        """Run `outputs` (default: logits and every map) for the batch x, in chunks of the
        declared batch (the last one padded) when the model has a fixed batch. Checks the input
        and the targets first and the logits after: one clear error, never a map of zeros."""
        x = self.check_input(x, source)
        if len(x) == 0:
            raise OnnxSplitError(f"{source} holds no sample (its batch axis is empty)")
        targets = self.targets(target, len(x))
        self.check_targets(targets)
        names = list(outputs or self.outputs)
        if LOGITS not in names:
            names = [LOGITS, *names]
        step = self.batch or len(x)
        if step < 1:
            raise OnnxSplitError(f"the model's input '{self.input_name}' declares batch 0")
        parts: list[list[np.ndarray]] = []
        for start in range(0, len(x), step):
            chunk, chunk_t = x[start : start + step], targets[start : start + step]
            real = len(chunk)
            if self.batch and real < self.batch:
                pad = self.batch - real
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
                chunk_t = np.concatenate([chunk_t, np.full(pad, -1, np.int64)])
            got = session.run(names, {self.input_name: chunk, TARGET: chunk_t})
            parts.append([g[:real] for g in got])
        result = [np.concatenate([p[i] for p in parts]) for i in range(len(names))]
        logits = result[names.index(LOGITS)]
        self.check_targets(targets, logits.shape[1] if logits.ndim > 1 else None)
        if not np.all(np.isfinite(logits)):
            raise OnnxSplitError(f"the model's logits are not finite for {source}")
        if outputs is not None and LOGITS not in outputs:
            result.pop(names.index(LOGITS))
        return result


def _dims(info: onnx.ValueInfoProto) -> list:
    shape = info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def _show(dims) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in dims) + "]"

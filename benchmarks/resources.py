"""Bounded resources: peak memory of `explain` over many images and of `convert` on big models.

    python benchmarks/resources.py [--counts 100,1000] [--mlp-mb 300] [--skip-efficientnet]

1. `onnxsplit explain` over a folder of N small PNGs (random 24-64 px crops of the bundled real
   photos) with the digits CNN sample model, `--preprocess digits --method gradient`: inputs are
   streamed in batches, so the peak RSS should not grow with N.
2. `onnxsplit convert` (with its exactness probe, and with --no-probe) of EfficientNet-Lite0
   (about 19 MB of weights, from onnxsplit.zoo) and of a plain ReLU MLP of --mlp-mb MB built
   with onnx.helper: peak RSS / model file size (the 300 MB MLP needs about 5 GB free; the
   full run takes about 5 minutes on 2 CPUs).

Every measurement runs the real CLI in a fresh subprocess and reads its VmHWM (peak resident
set) from /proc/self/status at exit, next to the VmHWM of the same interpreter that only imports
onnxsplit.cli (the baseline). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIGITS_CNN = ROOT / "sample_models" / "digits_cnn_op17_legacy.onnx"

PROBE = r"""
import json, sys, time
start = time.perf_counter()
code = 0
if sys.argv[1:]:
    from onnxsplit.cli import main
    try:
        main(sys.argv[1:], standalone_mode=False)
    except SystemExit as exc:
        code = exc.code or 0
else:
    import onnxsplit.cli  # noqa: F401  (the baseline: imports only)
status = dict(
    line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line
)
print("@@" + json.dumps({
    "peak_mb": int(status["VmHWM"].split()[0]) / 1024,
    "seconds": time.perf_counter() - start,
    "code": code,
}))
"""


def measure(args: list[str], env: dict) -> dict:
    """Run the CLI with `args` in a fresh interpreter; return its peak RSS (MB) and time."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("@@")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{args} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    result = json.loads(lines[-1][2:])
    if result["code"] not in (0, None):
        raise RuntimeError(f"{args} exited {result['code']}:\n{done.stdout[-2000:]}")
    return result


def make_images(folder: Path, count: int, seed: int = 0) -> Path:
    """`count` small PNG crops (24-64 px, random positions) of the bundled real photos."""
    from PIL import Image

    from onnxsplit.zoo.photos import PHOTO_NAMES, load_photo

    photos = [load_photo(name) for name in PHOTO_NAMES]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        photo = photos[index % len(photos)]
        side = int(rng.integers(24, 65))
        top = int(rng.integers(0, photo.shape[0] - side))
        left = int(rng.integers(0, photo.shape[1] - side))
        crop = photo[top : top + side, left : left + side]
        Image.fromarray(crop).save(folder / f"img_{index:05d}.png")
    return folder


def build_mlp(path: Path, megabytes: int, seed: int = 0) -> Path:
    """A ReLU MLP [N, 2048] -> ... -> [N, 10] of about `megabytes` MB of float32 weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    width = 2048
    layers = max(1, round(megabytes * 2**20 / (4 * width * width)))
    rng = np.random.default_rng(seed)
    nodes, inits, previous = [], [], "x"
    for index in range(layers):
        weight = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits += [
            numpy_helper.from_array(weight, f"W{index}"),
            numpy_helper.from_array(np.zeros(width, np.float32), f"b{index}"),
        ]
        nodes += [
            helper.make_node("Gemm", [previous, f"W{index}", f"b{index}"], [f"z{index}"]),
            helper.make_node("Relu", [f"z{index}"], [f"r{index}"]),
        ]
        previous = f"r{index}"
    head = (rng.standard_normal((width, 10)) / np.sqrt(width)).astype(np.float32)
    inits.append(numpy_helper.from_array(head, "head"))
    nodes.append(helper.make_node("MatMul", [previous, "head"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="100,1000")
    parser.add_argument("--mlp-mb", type=int, default=300)
    parser.add_argument("--skip-efficientnet", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    options = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxsplit-resources-") as scratch:
        work = Path(scratch)
        env = dict(os.environ, ONNXSPLIT_CACHE=str(work / "cache"), OMP_NUM_THREADS="2")
        base = measure([], env)
        rows.append(("python + import onnxsplit.cli (baseline)", "", base, None))

        counts = [int(c) for c in options.counts.split(",")]
        folder = make_images(work / "images", max(counts))
        # compile the attribution model once so that every run below reads it from the cache
        measure(
            [
                "explain",
                DIGITS_CNN,
                folder / "img_00000.png",
                "--method",
                "gradient",
                "--preprocess",
                "digits",
                "--out",
                work / "warm",
                "--device",
                "cpu",
            ],
            env,
        )
        for count in counts:
            subset = work / f"images_{count}"
            subset.mkdir()
            for index in range(count):
                name = f"img_{index:05d}.png"
                os.link(folder / name, subset / name)
            result = measure(
                [
                    "explain",
                    DIGITS_CNN,
                    subset,
                    "--method",
                    "gradient",
                    "--preprocess",
                    "digits",
                    "--out",
                    work / f"out_{count}",
                    "--device",
                    "cpu",
                ],
                env,
            )
            written = len(list((work / f"out_{count}").glob("*.npy")))
            assert written == count, (written, count)
            rows.append((f"explain digits CNN, {count} images", f"{count} maps", result, None))

        # the fixed cost of a conversion (onnx, onnx-graphsurgeon, onnxruntime loaded, a probe)
        tiny = ROOT / "sample_models" / "digits_mlp_op17_legacy.onnx"
        convert_base = measure(
            ["convert", tiny, "-o", work / "tiny.split.onnx", "--device", "cpu"], env
        )
        rows.append(("convert digits MLP (20 kB): fixed cost", "", convert_base, None))
        models = []
        if not options.skip_efficientnet:
            try:
                from onnxsplit.zoo import registry

                models.append(("EfficientNet-Lite0", registry.model_path("efficientnet_lite0")))
            except Exception as exc:  # the wheel is optional
                print(f"(EfficientNet-Lite0 skipped: {exc})", file=sys.stderr)
        models.append(
            (f"ReLU MLP {options.mlp_mb} MB", build_mlp(work / "mlp.onnx", options.mlp_mb))
        )
        for label, path in models:
            size_mb = path.stat().st_size / 2**20
            for probe in (True, False):
                out = work / f"{path.stem}.split.onnx"
                args = ["convert", path, "-o", out, "--force", "--device", "cpu"]
                result = measure(args + ([] if probe else ["--no-probe"]), env)
                out_mb = out.stat().st_size / 2**20
                what = f"convert {label}" + ("" if probe else " --no-probe")
                rows.append((what, f"{size_mb:.1f} MB -> {out_mb:.1f} MB", result, size_mb))

    print(
        "| run | data | peak RSS (MB) | above import baseline (MB) "
        "| peak / model size (above the fixed cost of a conversion) | s |"
    )
    print("|---|---|---|---|---|---|")
    for what, data, result, size_mb in rows:
        extra = result["peak_mb"] - base["peak_mb"]
        ratio = ""
        if size_mb:
            variable = (result["peak_mb"] - convert_base["peak_mb"]) / size_mb
            ratio = f"{result['peak_mb'] / size_mb:.1f}x ({variable:.1f}x)"
        print(
            f"| {what} | {data} | {result['peak_mb']:.0f} | {extra:.0f} | {ratio} "
            f"| {result['seconds']:.1f} |"
        )
    if options.json:
        options.json.write_text(json.dumps([[w, d, r, s] for w, d, r, s in rows], indent=1))


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"\n(total {time.perf_counter() - start:.0f} s)", file=sys.stderr)

#!/usr/bin/env python
"""Regenerate ``sample_models/``: four small digits classifiers trained on the scikit-learn 8x8
digits set and exported to ONNX with both torch exporters at several opsets.

Usage::

    python scripts/make_sample_models.py [--out sample_models] [--seed 0]

Needs the ``torch`` and ``zoo`` extras (torch==2.13.0 CPU, onnxscript, scikit-learn) plus
onnxruntime. Everything is seeded and training runs single-threaded, so a rerun reproduces the
same weights and accuracies.

Outputs (in ``--out``):

* ``digits_<arch>_op<OPSET>_<exporter>.onnx`` -- ``exporter`` is ``legacy`` (TorchScript,
  ``dynamo=False``) or ``dynamo`` (``torch.export``). ``OPSET`` is the opset actually stored in
  the file. Input ``input`` ``[batch, 1, 8, 8]`` float32 = pixel / 16, output ``logits``
  ``[batch, 10]``.
* ``manifest.json`` -- one entry per model file plus the data/preprocessing conventions.
* ``digits_test_inputs.npy`` / ``digits_test_labels.npy`` -- the first 32 test digits.
* ``digit_<label>.png`` -- three real 8x8 test digits, gray = min(pixel * 16, 255).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxsplit.zoo import digits  # noqa: E402

# arch -> epochs (each trains in a few seconds on 1-2 CPU cores)
EPOCHS = {"mlp": 20, "cnn": 12, "resnet": 8, "depthwise": 12}
# (exporter, requested opset, archs); legacy opset 9 is attempted for MLP and CNN only
EXPORTS = [
    ("legacy", 9, ("mlp", "cnn")),
    ("legacy", 11, tuple(EPOCHS)),
    ("legacy", 17, tuple(EPOCHS)),
    ("dynamo", 18, tuple(EPOCHS)),
    ("dynamo", 21, tuple(EPOCHS)),
]
N_TEST_SAVED = 32
N_CHECK = 8
ATOL = 1e-4
PNG_COUNT = 3
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def export_legacy(model, example, path: Path, opset: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )


def export_dynamo(model, example, path: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: batch},),
        external_data=False,
        optimize=True,
    )
    # Drop the per-node Python stack traces: they hold absolute paths of the machine that ran
    # the export (and would make the files differ between checkouts). The other node metadata
    # (namespace, class hierarchy, fx node) is kept.
    model_proto = program.model_proto
    for node in model_proto.graph.node:
        keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    onnx.save_model(model_proto, str(path), save_as_external_data=False)


def file_opset(model_proto: onnx.ModelProto) -> int:
    return next(o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx"))


def dims(value_info) -> list:
    return [
        d.dim_param if d.HasField("dim_param") else d.dim_value
        for d in value_info.type.tensor_type.shape.dim
    ]


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def short_error(exc: Exception) -> str:
    """One readable line: drop onnxruntime's source locations and C++ template noise."""
    text = " ".join(str(exc).split())
    text = re.sub(r"/\S+\.(h|cc|cpp):\d+ ", "", text)
    text = re.sub(r" \[with [^\]]*\]", "", text)
    return text[:300]


def to_png_gray(x: np.ndarray) -> np.ndarray:
    """[8, 8] float pixel/16 -> uint8 gray = min(pixel * 16, 255)."""
    pixel = np.rint(x * 16).astype(np.int64)
    return np.clip(pixel * 16, 0, 255).astype(np.uint8)


def from_png_gray(gray: np.ndarray) -> np.ndarray:
    """Exact inverse of :func:`to_png_gray`: round(gray / 16) / 16 as float32."""
    return (np.rint(gray.astype(np.float32) / 16) / 16).astype(np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "sample_models")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("digits_*.onnx*"):
        old.unlink()
    for old in out.glob("digit_*.png"):
        old.unlink()

    torch.set_num_threads(1)  # bit-reproducible training independent of the machine's cores
    data = digits.load_digits_split(args.seed)
    x_test, y_test = data[2], data[3]
    x_check = x_test[:N_CHECK]

    models, accuracy = {}, {}
    for arch, epochs in EPOCHS.items():
        t0 = time.perf_counter()
        model = digits.build(arch, args.seed)
        accuracy[arch] = digits.train(model, data, epochs=epochs, seed=args.seed)
        model.eval()
        models[arch] = model
        n_params = sum(p.numel() for p in model.state_dict().values() if p.is_floating_point())
        print(
            f"trained {arch:9s} {epochs:2d} epochs  test acc {accuracy[arch]:.4f}  "
            f"{n_params * 4 / 1024:6.1f} KB  {time.perf_counter() - t0:5.1f} s"
        )

    example = torch.from_numpy(x_test[:2].copy())
    entries, failures, rows = [], [], []
    for exporter, opset, archs in EXPORTS:
        for arch in archs:
            model = models[arch]
            tmp = out / f"digits_{arch}_req{opset}_{exporter}.onnx"
            try:
                if exporter == "legacy":
                    export_legacy(model, example, tmp, opset)
                else:
                    export_dynamo(model, example, tmp, opset)
            except Exception as exc:  # record and continue: some opsets are expected to fail
                msg = f"{type(exc).__name__}: {short_error(exc)}"
                failures.append({"arch": arch, "exporter": exporter, "opset": opset, "error": msg})
                print(f"FAILED  {arch} {exporter} opset {opset}: {msg}")
                for leftover in out.glob(tmp.name + "*"):
                    leftover.unlink()
                continue
            proto = onnx.load(str(tmp))
            real_opset = file_opset(proto)
            path = out / f"digits_{arch}_op{real_opset}_{exporter}.onnx"
            tmp.replace(path)
            stray = sorted(p.name for p in out.iterdir() if p.name.startswith(path.name + "."))
            assert not stray, f"external data left next to {path.name}: {stray}"
            assert not any(
                t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer
            ), f"{path.name} references external data"
            with torch.no_grad():
                ref = model(torch.from_numpy(x_check)).numpy()
            try:
                onnx.checker.check_model(str(path), full_check=True)
                got = ort_logits(path, x_check)
                got1 = [ort_logits(path, x_check[i : i + 1]) for i in range(N_CHECK)]
                onnx_acc = float((ort_logits(path, x_test).argmax(1) == y_test).mean())
            except Exception as exc:  # e.g. a file onnx.checker accepts but onnxruntime refuses
                msg = f"{type(exc).__name__}: {short_error(exc)}"
                failures.append({"arch": arch, "exporter": exporter, "opset": opset, "error": msg})
                print(f"INVALID {path.name} (removed): {msg}")
                path.unlink()
                continue
            diff = float(max(np.abs(got - ref).max(), np.abs(np.concatenate(got1) - ref).max()))
            ok = diff <= ATOL
            op_types = collections.Counter(n.op_type for n in proto.graph.node)
            entry = {
                "file": path.name,
                "arch": arch,
                "opset": real_opset,
                "requested_opset": opset,
                "exporter": exporter,
                "torch_version": torch.__version__,
                "test_accuracy": round(accuracy[arch], 6),
                "onnx_test_accuracy": round(onnx_acc, 6),
                "n_test": int(len(y_test)),
                "input_name": proto.graph.input[0].name,
                "input_shape": dims(proto.graph.input[0]),
                "output_name": proto.graph.output[0].name,
                "output_shape": dims(proto.graph.output[0]),
                "preprocessing": "pixel/16",
                "size_bytes": path.stat().st_size,
                "op_types": dict(sorted(op_types.items())),
            }
            entries.append(entry)
            rows.append((entry, diff, ok))
            if not ok:
                failures.append(
                    {"arch": arch, "exporter": exporter, "opset": opset, "error": f"diff {diff}"}
                )

    # test arrays + PNGs
    np.save(out / "digits_test_inputs.npy", x_test[:N_TEST_SAVED].astype(np.float32))
    np.save(out / "digits_test_labels.npy", y_test[:N_TEST_SAVED].astype(np.int64))
    with torch.no_grad():
        preds = [m(torch.from_numpy(x_test)).argmax(1).numpy() for m in models.values()]
    all_right = np.all([p == y_test for p in preds], axis=0)
    pngs, seen = [], set()
    for i, label in enumerate(y_test):  # first test digits of distinct labels, all models right
        if len(pngs) == PNG_COUNT:
            break
        if int(label) in seen or not all_right[i]:
            continue
        seen.add(int(label))
        gray = to_png_gray(x_test[i, 0])
        name = f"digit_{int(label)}.png"
        Image.fromarray(gray, mode="L").save(out / name, optimize=True)
        back = from_png_gray(np.asarray(Image.open(out / name)))
        assert np.array_equal(back, x_test[i, 0]), f"{name} does not round-trip"
        pngs.append({"file": name, "label": int(label), "test_index": i})

    manifest = {
        "description": "Digit classifiers trained on sklearn.datasets.load_digits (8x8)",
        "generator": "scripts/make_sample_models.py",
        "seed": args.seed,
        "split": "numpy.random.default_rng(seed).permutation(1797); first 360 test, rest train",
        "preprocessing": "pixel/16",
        "input": {"name": INPUT_NAME, "shape": ["batch", 1, 8, 8], "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", 10], "dtype": "float32"},
        "test_inputs": "digits_test_inputs.npy",
        "test_labels": "digits_test_labels.npy",
        "n_test_saved": N_TEST_SAVED,
        "png_from_input": "gray = min(pixel * 16, 255) = min(round(x * 256), 255), uint8 8x8 L",
        "png_to_input": "x = round(gray / 16) / 16 (exact inverse; gray / 255 is within 0.004)",
        "pngs": pngs,
        "models": entries,
        "export_failures": failures,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

    print()
    hdr = f"{'file':40s} {'arch':9s} {'op':>3s} {'exporter':8s} {'acc':>6s} {'onnx':>6s}"
    print(hdr + f" {'KB':>6s} {'maxdiff':>9s}")
    for e, diff, ok in rows:
        print(
            f"{e['file']:40s} {e['arch']:9s} {e['opset']:3d} {e['exporter']:8s} "
            f"{e['test_accuracy']:6.4f} {e['onnx_test_accuracy']:6.4f} "
            f"{e['size_bytes'] / 1024:6.1f} {diff:9.2e}{'' if ok else '  FAIL'}"
        )
    total = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(
        f"\n{len(entries)} models, {len(failures)} failures, sample_models/ = {total / 1024:.1f} KB"
    )
    for f in failures:
        print(f"  failed: {f}")
    for e in entries:
        print(f"  {e['file']}: {e['op_types']}")
    missing = {(a, e, o) for e, o, archs in EXPORTS if o != 9 for a in archs} - {
        (e["arch"], e["exporter"], e["requested_opset"]) for e in entries
    }
    ok = all(ok for _, _, ok in rows) and total <= 3 * 1024 * 1024 and not missing
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""export_bundle: one folder with everything a page or a Node program needs to explain images.

    <out_dir>/model.onnx        the attribution-ready model (onnxsplit.attribution.attach_methods)
    <out_dir>/preprocess.json   image -> input tensor: crop/resize mode, scale, mean, std, layout
    <out_dir>/labels.json       class names in logit order (a JSON list of strings)
    <out_dir>/bundle.json       manifest: the graph's input/output contract, methods, checksums

The folder is built in a hidden staging folder beside `out_dir` and renamed into place, so a
reader never sees half a bundle. An existing `out_dir` is only replaced with force=True, and only
when it is empty or an earlier bundle (it holds bundle.json). The contract is in docs/deploy.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from onnxsplit import __version__, contract
from onnxsplit.emit import metadata, write_atomic
from onnxsplit.errors import OnnxSplitError
from onnxsplit.explain.inputs import check_labels, read_labels
from onnxsplit.explain.preprocess import (
    InputLayout,
    Preprocess,
    check_channels,
    get_preprocess,
    model_layout,
)
from onnxsplit.load import file_sha256, load_model

BUNDLE_FORMAT = 1
MODEL_FILE = "model.onnx"
PREPROCESS_FILE = "preprocess.json"
LABELS_FILE = "labels.json"
MANIFEST_FILE = "bundle.json"

# How the examples (examples/node/preprocess.mjs) resize: PIL's Image.resize(BILINEAR), i.e. a
# triangle filter whose support grows with the shrink factor (antialiased), in two 8-bit passes
# (horizontal, then vertical) with 22-bit fixed-point weights. Same numbers as Pillow.
INTERPOLATION = "pil-bilinear"

TARGET_SEMANTICS = (
    "class index to explain for each batch item; -1 explains the predicted class (argmax of logits)"
)


def export_bundle(
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    methods: Sequence[str] = ("splitcam", "gradcam"),
    preset: str | Preprocess = "efficientnet-lite",
    labels: Sequence[str] | str | os.PathLike | None = None,
    force: bool = False,
    *,
    target_layer: str | None = None,
    input_name: str | None = None,
    output_name: str | None = None,
    check: bool = True,
    maps_only: bool = False,
) -> Path:
    """Write the bundle of `model_path` to `out_dir` and return `out_dir`.

    methods: attribution methods (onnxsplit.attribution.methods.METHODS); a model that already
    carries them (converted with --methods) is used as it is. preset: a preprocessing preset name
    (onnxsplit.explain.preprocess.PRESETS), a JSON object or file, or a Preprocess. labels: class
    names, a .json list or a text file with one name per line; None: ImageNet names for 1000
    classes, else class_<i>. check: run the bundled model once with onnxruntime (CPU) on a zero
    input and verify its outputs before anything is written to `out_dir`. maps_only: the model
    outputs only logits and map_<method> (no component maps; SplitLRP needs one relevance pass
    instead of two).
    """
    out = Path(out_dir)
    _check_out_dir(out, force)
    source = Path(model_path)
    methods = list(methods)
    if not methods:
        raise OnnxSplitError("no attribution method requested")
    model = _attribution_model(source, methods, target_layer, input_name, output_name, maps_only)
    pre = preset if isinstance(preset, Preprocess) else get_preprocess(preset)

    data, target = _inputs(model)
    meta = metadata(model)
    layout = model_layout(_dims(data), meta.get(contract.META_LAYOUT))
    logits, maps = _outputs(model)
    classes = _dims(logits)[1] if len(_dims(logits)) == 2 else None
    if not isinstance(classes, int):
        raise OnnxSplitError(
            f"output '{contract.LOGITS}' must have a static class axis, got {_dims(logits)}"
        )
    preprocessing = preprocess_spec(pre, data.name, layout)
    names = _labels(labels, classes)

    payload = model.SerializeToString()
    manifest = {
        "format": "onnxsplit-bundle",
        "format_version": BUNDLE_FORMAT,
        "onnxsplit": __version__,
        "model": MODEL_FILE,
        "model_sha256": hashlib.sha256(payload).hexdigest(),
        "source_model": source.name,
        "source_sha256": file_sha256(source),
        "opset": max(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0
        ),
        "preprocess": PREPROCESS_FILE,
        "labels": LABELS_FILE,
        "methods": json.loads(meta.get(contract.META_METHODS, "[]")),
        "target_layer": meta.get(contract.META_TARGET_LAYER, ""),
        "inputs": [
            _io(data, "image batch after preprocess.json"),
            _io(target, TARGET_SEMANTICS),
        ],
        "outputs": [_io(logits, "class scores (model output before any softmax)")]
        + [_io(m, _map_doc(meta, m.name)) for m in maps],
        "maps": [m.name for m in maps],
    }
    if check:
        _smoke_test(model, payload, layout, [o["name"] for o in manifest["outputs"]], classes)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(staging, 0o777 & ~_umask())
        write_atomic(payload, staging / MODEL_FILE)
        _write_json(preprocessing, staging / PREPROCESS_FILE)
        _write_json(names, staging / LABELS_FILE)
        _write_json(manifest, staging / MANIFEST_FILE)
        _replace(staging, out, force)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def read_bundle(bundle_dir: str | os.PathLike) -> dict:
    """The manifest of a bundle with 'preprocess' and 'labels' replaced by their contents."""
    root = Path(bundle_dir)
    try:
        manifest = json.loads((root / MANIFEST_FILE).read_text())
        manifest["preprocess"] = json.loads((root / manifest["preprocess"]).read_text())
        manifest["labels"] = json.loads((root / manifest["labels"]).read_text())
    except (OSError, ValueError, KeyError) as exc:
        raise OnnxSplitError(f"'{root}' is not a readable onnxsplit bundle: {exc}") from None
    return manifest


def _check_out_dir(out: Path, force: bool) -> None:
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise OnnxSplitError(f"'{out}' exists and is not a folder; choose another --out")
    if not force:
        raise OnnxSplitError(f"'{out}' already exists; pass --force (force=True) to replace it")
    if any(out.iterdir()) and not (out / MANIFEST_FILE).is_file():
        raise OnnxSplitError(
            f"'{out}' is not empty and holds no {MANIFEST_FILE}: refusing to replace a folder "
            "that is not an onnxsplit bundle"
        )


def _replace(staging: Path, out: Path, force: bool) -> None:
    """Rename `staging` to `out`; an existing `out` (checked earlier) is swapped out first."""
    if not out.exists():
        os.replace(staging, out)
        return
    _check_out_dir(out, force)
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    old.rmdir()
    os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _attribution_model(
    source: Path,
    methods: list[str],
    target_layer: str | None,
    input_name: str | None,
    output_name: str | None,
    maps_only: bool = False,
) -> onnx.ModelProto:
    model = load_model(source)
    compiled = json.loads(metadata(model).get(contract.META_METHODS, "[]") or "[]")
    if compiled:
        missing = [m for m in methods if m not in compiled]
        if missing:
            raise OnnxSplitError(
                f"'{source}' is already an attribution model with methods {compiled}; it lacks "
                f"{missing}: export the original model instead"
            )
        return model
    from onnxsplit.attribution.attach import attach_methods

    return attach_methods(
        model,
        methods,
        target_layer,
        input_name=input_name,
        output_name=output_name,
        components=not maps_only,
    )


def _inputs(model: onnx.ModelProto) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    inputs = list(model.graph.input)
    if len(inputs) != 2 or inputs[1].name != contract.TARGET:
        raise OnnxSplitError(
            f"expected inputs (<data>, target), got {[i.name for i in inputs]}: is it an "
            "attribution model?"
        )
    return inputs[0], inputs[1]


def _outputs(model: onnx.ModelProto):
    outputs = list(model.graph.output)
    if not outputs or outputs[0].name != contract.LOGITS:
        raise OnnxSplitError(
            f"expected the first output '{contract.LOGITS}', got {[o.name for o in outputs]}"
        )
    maps = [o for o in outputs[1:] if o.name.startswith(contract.MAP_PREFIX)]
    if not maps:
        raise OnnxSplitError("the model has no map_<method> output")
    return outputs[0], maps


def _dims(info: onnx.ValueInfoProto) -> list:
    shape = info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in shape.dim]


def _io(info: onnx.ValueInfoProto, doc: str) -> dict:
    dtype = onnx.helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)
    return {"name": info.name, "dtype": np.dtype(dtype).name, "shape": _dims(info), "doc": doc}


def _map_doc(meta: dict[str, str], name: str) -> str:
    described = json.loads(meta.get(contract.META_MAPS, "{}") or "{}")
    text = described.get(name, "")
    return f"{text} [N, H, W] at input resolution, not normalized".strip()


def preprocess_spec(pre: Preprocess, input_name: str, layout: InputLayout) -> dict:
    """preprocess.json: how to turn an RGB uint8 image into the model input (see 'formula')."""
    channels = layout.channels
    check_channels(pre, channels)
    if any(float(s) == 0 for s in pre.std):
        raise OnnxSplitError(f"preprocessing '{pre.name}': std contains 0")
    if pre.color == "gray" and channels != 1:
        raise OnnxSplitError(
            f"preprocessing '{pre.name}' is gray; the model wants {channels} channels"
        )
    color = "gray" if channels == 1 else pre.color
    return {
        "format_version": BUNDLE_FORMAT,
        "preset": pre.name,
        "input": input_name,
        "dtype": "float32",
        "layout": layout.layout,
        "channels": channels,
        "height": layout.height,
        "width": layout.width,
        "size": [layout.height, layout.width],
        "color": color,
        "resize": pre.resize,
        "interpolation": INTERPOLATION,
        "scale": float(pre.scale),
        "mean": [float(v) for v in pre.mean],
        "std": [float(v) for v in pre.std],
        "quantize": None if pre.quantize is None else float(pre.quantize),
        "gray_weights": [0.299, 0.587, 0.114],
        "formula": (
            "rgb uint8 -> (resize == 'crop': centre square crop of the shorter side) -> "
            "resize to height x width (interpolation) -> color ('bgr': reverse channels, "
            "'gray': dot with gray_weights) -> x = pixel * scale -> (quantize: x = "
            "round_half_even(x / quantize) * quantize) -> x = (x - mean[c]) / std[c] "
            "(one value: all channels) in float32 -> layout"
        ),
    }


def _labels(labels, classes: int) -> list[str]:
    if labels is None:
        if classes == 1000:
            from onnxsplit.zoo.photos import imagenet_label

            return [imagenet_label(i) for i in range(classes)]
        return [f"class_{i}" for i in range(classes)]
    if isinstance(labels, str | os.PathLike):
        names = read_labels(Path(labels))
        check_labels(names, classes, f"labels file '{labels}'")
        return names
    names = [str(n) for n in labels]
    check_labels(names, classes, "the labels argument")
    return names


def _smoke_test(
    model: onnx.ModelProto, payload: bytes, layout: InputLayout, outputs: list[str], classes: int
) -> None:
    """Run the bundled model once on a zero image through the contract (onnxsplit.contract:
    a fixed batch is padded) and check the output shapes."""
    from onnxsplit.runtime import make_session

    iface = contract.Interface.of(model)
    x = np.zeros(layout.batch_shape(1), np.float32)
    try:
        session = make_session(payload, "cpu")
        got = iface.run(session, x, None, outputs, source="a zero image")
    except OnnxSplitError:
        raise
    except Exception as exc:
        raise OnnxSplitError(f"the bundled model does not run in onnxruntime: {exc}") from None
    size = (1, layout.height, layout.width)
    for name, value in zip(outputs, got, strict=True):
        want = (1, classes) if name == contract.LOGITS else size
        if value.shape != want:
            raise OnnxSplitError(f"output '{name}' has shape {value.shape}, expected {want}")


def _write_json(value, path: Path) -> None:
    write_atomic((json.dumps(value, indent=1, ensure_ascii=False) + "\n").encode(), path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

"""`onnxsplit explain`: compile (or reuse) an attribution-ready model and write maps for inputs."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxsplit.compile_key import compiled_model_key
from onnxsplit.emit import metadata, save_model
from onnxsplit.errors import OnnxSplitError
from onnxsplit.explain.inputs import Item, iterate
from onnxsplit.explain.preprocess import InputLayout, Preprocess, input_layout, to_input
from onnxsplit.explain.render import write_item, write_summary
from onnxsplit.load import file_sha256, load_model
from onnxsplit.runtime import make_session, per_sample_for, provider_used


def cache_root() -> Path:
    root = os.environ.get("ONNXSPLIT_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "onnxsplit"


def compiled_methods(model: onnx.ModelProto) -> list[str]:
    raw = metadata(model).get("onnxsplit.attribution.methods")
    return json.loads(raw) if raw else []


def attribution_model(
    model_path: Path, method: str, target_layer: str | None, per_sample: bool | str = False
) -> tuple[Path, bool]:
    """(path of a model that computes `method`, whether it came from the cache).

    An already converted model that carries the method is used as it is; an original model is
    converted on the fly (`per_sample`: as attach_methods) and cached by content hash,
    method, layer, per-sample choice, onnxsplit version and a fingerprint of the compiler's
    own source (so a changed compiler never serves a map of an older one).
    """
    model = load_model(model_path)
    if method in compiled_methods(model):
        return model_path, False
    variant = method if per_sample is False else f"{method}+per_sample_{per_sample}"
    key = compiled_model_key(file_sha256(model_path), variant, target_layer, 24)
    cached = cache_root() / "compiled" / f"{model_path.stem}-{method}-{key}.onnx"
    if cached.exists():
        try:
            if method in compiled_methods(onnx.load(str(cached))):
                return cached, True
        except Exception:
            pass  # a corrupted cache entry is rebuilt below
        cached.unlink(missing_ok=True)
    from onnxsplit.train.explain import explain_trained, is_trained_dc

    if is_trained_dc(model):  # a self-explaining DC model: maps of its own g and h branches
        compiled = explain_trained(model)
        available = [o.name.removeprefix("map_") for o in compiled.graph.output[1:]]
        if method not in available:
            raise OnnxSplitError(
                f"'{model_path}' is a trained difference-of-monotone model; it explains itself "
                f"with: {', '.join(available)}"
            )
        _stamp_methods(compiled, available)
    else:
        from onnxsplit.attribution.attach import attach_methods

        compiled = attach_methods(
            model, [method], target_layer, components=False, per_sample=per_sample
        )
    cached.parent.mkdir(parents=True, exist_ok=True)
    save_model(compiled, cached)
    return cached, False


def _stamp_methods(model: onnx.ModelProto, methods: list[str]) -> None:
    for entry in model.metadata_props:
        if entry.key == "onnxsplit.attribution.methods":
            entry.value = json.dumps(methods)
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = "onnxsplit.attribution.methods", json.dumps(methods)


@dataclass
class ExplainRun:
    rows: list[dict]
    provider: str
    model: Path
    from_cache: bool


def batches(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _array_items(item: Item, layout_shape: tuple[int, ...]) -> list[Item]:
    """A .npy holds one input (model layout) or a batch of them."""
    array = item.array
    if array.shape == layout_shape:
        return [item]
    if array.ndim == len(layout_shape) + 1 and array.shape[1:] == layout_shape:
        return [Item(f"{item.name}_{i}", item.source, array=a) for i, a in enumerate(array)]
    raise OnnxSplitError(
        f"array '{item.source}' has shape {list(array.shape)}; the model wants "
        f"{list(layout_shape)} or [B, {', '.join(map(str, layout_shape))}]"
    )


def explain(
    model_path: Path,
    inputs: list[Path],
    method: str,
    out_dir: Path,
    *,
    target: int | None = None,
    target_layer: str | None = None,
    batch_size: int = 8,
    device: str = "auto",
    preprocess: Preprocess,
    labels: list[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> ExplainRun:
    """Write <out>/<input>_<method>.png/.npy and summary.csv/json; all or nothing."""
    if batch_size < 1:
        raise OnnxSplitError("--batch-size must be at least 1")
    if out_dir.exists() and not out_dir.is_dir():
        raise OnnxSplitError(f"output '{out_dir}' exists and is not a folder")
    path, from_cache = attribution_model(
        model_path, method, target_layer, per_sample=per_sample_for(device)
    )
    session = make_session(path, device)
    data_input = session.get_inputs()[0]
    layout: InputLayout = input_layout(list(data_input.shape))
    sample_shape = layout.batch_shape(1)[1:]
    map_name = f"map_{method}"
    missing = [p for p in [out_dir, *out_dir.parents] if not p.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".onnxsplit-explain-", dir=out_dir))
    except OSError as exc:
        raise OnnxSplitError(
            f"cannot write into output folder '{out_dir}': {exc.strerror or exc}"
        ) from None
    rows: list[dict] = []
    used: set[str] = set()
    names: list[str] | None = None
    done = False
    try:
        for batch in batches(iterate(inputs), batch_size):
            expanded: list[Item] = []
            for item in batch:
                expanded += _array_items(item, sample_shape) if item.array is not None else [item]
            arrays, shown = [], []
            for item in expanded:
                if item.array is not None:
                    arrays.append(item.array)
                    shown.append(None)
                else:
                    x, image = to_input(item.image, layout, preprocess)
                    arrays.append(x)
                    shown.append(image)
            x = np.stack(arrays)
            targets = np.full(len(x), -1 if target is None else target, np.int64)
            start = time.perf_counter()
            logits, maps = session.run(
                ["logits", map_name], {data_input.name: x, "target": targets}
            )
            elapsed = (time.perf_counter() - start) * 1000 / len(x)
            classes = logits.shape[1]
            if names is None:
                names = read_labels(labels, classes) or []
            if target is not None and not 0 <= target < classes:
                raise OnnxSplitError(
                    f"target {target} is out of range: the model has {classes} "
                    f"classes (0..{classes - 1}); use --target auto"
                )
            if not np.all(np.isfinite(maps)):
                raise OnnxSplitError(
                    f"the {method} map is not finite for {expanded[0].source}; nothing was written"
                )
            for item, image, row_logits, saliency in zip(
                expanded, shown, logits, maps, strict=True
            ):
                stem = _unique(f"{item.name}_{method}", used)
                write_item(staging, stem, image, saliency)
                predicted = int(np.argmax(row_logits))
                explained = predicted if target is None else target
                rows.append(
                    {
                        "input": str(item.source),
                        "output": stem,
                        "method": method,
                        "predicted": predicted,
                        "predicted_label": _label(names, predicted),
                        "logit": float(row_logits[predicted]),
                        "target": explained,
                        "target_label": _label(names, explained),
                        "provider": provider_used(session),
                        "ms_per_image": round(elapsed, 2),
                    }
                )
            if progress:
                progress(len(batch))
        write_summary(staging, rows)
        for produced in staging.iterdir():
            os.replace(produced, out_dir / produced.name)
        done = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not done:
            _remove_created_folders(missing)
    return ExplainRun(rows, provider_used(session), path, from_cache)


def _remove_created_folders(created: list[Path]) -> None:
    """After a failed run, remove the folders this run created (innermost first) if empty."""
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            return


def _unique(stem: str, used: set[str]) -> str:
    candidate, index = stem, 1
    while candidate in used:
        index += 1
        candidate = f"{stem}_{index}"
    used.add(candidate)
    return candidate


def _label(labels: list[str] | None, index: int) -> str:
    if labels and 0 <= index < len(labels):
        return labels[index]
    return ""


def read_labels(path: Path | None, classes: int | None = None) -> list[str] | None:
    """Labels from a text file (one per line) or a JSON list/dict; ImageNet names for 1000."""
    if path is None:
        if classes == 1000:
            try:
                from onnxsplit.zoo.photos import imagenet_label

                return [imagenet_label(i) for i in range(1000)]
            except Exception:
                return None
        return None
    try:
        text = path.read_text()
    except OSError as exc:
        raise OnnxSplitError(f"cannot read labels '{path}': {exc}") from None
    if path.suffix == ".json":
        data = json.loads(text)
        if isinstance(data, dict):
            return [str(data[k]) for k in sorted(data, key=lambda k: int(k))]
        return [str(v) for v in data]
    return [line.strip() for line in text.splitlines() if line.strip()]

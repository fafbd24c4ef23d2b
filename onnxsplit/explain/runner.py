"""`onnxsplit explain`: compile (or reuse) an attribution-ready model and write maps for inputs."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxsplit import contract
from onnxsplit.compile_key import compiled_model_key
from onnxsplit.emit import metadata, save_model
from onnxsplit.errors import OnnxSplitError
from onnxsplit.explain.inputs import Item, check_labels, iterate, read_labels
from onnxsplit.explain.preprocess import InputLayout, Preprocess, model_layout, to_input
from onnxsplit.explain.render import write_item, write_summary
from onnxsplit.load import file_sha256, load_model
from onnxsplit.runtime import make_session, per_sample_for, provider_used


def cache_root() -> Path:
    root = os.environ.get("ONNXSPLIT_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "onnxsplit"


def compiled_methods(model: onnx.ModelProto) -> list[str]:
    raw = metadata(model).get(contract.META_METHODS)
    return json.loads(raw) if raw else []


def attribution_model(
    model_path: Path,
    methods: Sequence[str] | str,
    target_layer: str | None = None,
    per_sample: bool | str = False,
    *,
    input_name: str | None = None,
    output_name: str | None = None,
) -> tuple[Path, bool]:
    """(path of one model that computes every method of `methods`, whether it came from the
    cache).

    An already converted model that carries the methods is used as it is; an original model is
    converted on the fly (one `attach_methods` call for all methods; `per_sample`: as
    attach_methods) and cached by content hash, the sorted method list, layer, input and output
    names, per-sample choice, onnxsplit version and a fingerprint of the compiler's own source
    (so a changed compiler never serves a map of an older one).
    """
    path, from_cache, _ = _attribution_model(
        model_path, methods, target_layer, per_sample, input_name, output_name
    )
    return path, from_cache


def _attribution_model(
    model_path: Path,
    methods: Sequence[str] | str,
    target_layer: str | None,
    per_sample: bool | str,
    input_name: str | None,
    output_name: str | None,
) -> tuple[Path, bool, onnx.ModelProto]:
    methods = [methods] if isinstance(methods, str) else list(dict.fromkeys(methods))
    if not methods:
        raise OnnxSplitError("no attribution method requested")
    model = load_model(model_path)
    carried = compiled_methods(model)
    if carried:  # an attribution model already (convert --methods, export-web)
        missing = [m for m in methods if m not in carried]
        if missing:
            raise OnnxSplitError(
                f"'{model_path}' is already an attribution model with methods {carried}; it "
                f"lacks {missing}: explain the original model instead"
            )
        return model_path, False, model
    ordered = sorted(methods)
    variant = ",".join(ordered) + f"|input={input_name}|output={output_name}"
    if per_sample is not False:
        variant += f"+per_sample_{per_sample}"
    key = compiled_model_key(file_sha256(model_path), variant, target_layer, 24)
    cached = cache_root() / "compiled" / f"{model_path.stem}-{'+'.join(ordered)}-{key}.onnx"
    if cached.exists():
        try:
            entry = onnx.load(str(cached))
            if set(methods) <= set(compiled_methods(entry)):
                return cached, True, entry
        except Exception:
            pass  # a corrupted cache entry is rebuilt below
        cached.unlink(missing_ok=True)
    from onnxsplit.train.explain import explain_trained, is_trained_dc

    if is_trained_dc(model):  # a self-explaining DC model: maps of its own g and h branches
        compiled = explain_trained(model)
        available = [
            o.name.removeprefix(contract.MAP_PREFIX)
            for o in compiled.graph.output
            if o.name.startswith(contract.MAP_PREFIX)
        ]
        if not set(methods) <= set(available):
            raise OnnxSplitError(
                f"'{model_path}' is a trained difference-of-monotone model; it explains itself "
                f"with: {', '.join(available)}"
            )
        _stamp_methods(compiled, available)
    else:
        from onnxsplit.attribution.attach import attach_methods

        compiled = attach_methods(
            model,
            methods,
            target_layer,
            input_name=input_name,
            output_name=output_name,
            components=False,
            per_sample=per_sample,
        )
    cached.parent.mkdir(parents=True, exist_ok=True)
    save_model(compiled, cached)
    return cached, False, compiled


def _stamp_methods(model: onnx.ModelProto, methods: list[str]) -> None:
    for entry in model.metadata_props:
        if entry.key == contract.META_METHODS:
            entry.value = json.dumps(methods)
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = contract.META_METHODS, json.dumps(methods)


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


def _array_items(item: Item, sample_shape: tuple) -> list[Item]:
    """A .npy holds one input (model layout, no batch axis) or a batch of them; None in
    `sample_shape` is a dynamic axis (any size)."""
    array = item.array

    def fits(shape: tuple) -> bool:
        return len(shape) == len(sample_shape) and all(
            want is None or got == want for got, want in zip(shape, sample_shape, strict=True)
        )

    if fits(array.shape):
        return [item]
    if array.ndim == len(sample_shape) + 1 and fits(array.shape[1:]):
        return [Item(f"{item.name}_{i}", item.source, array=a) for i, a in enumerate(array)]
    shown = ", ".join("N" if d is None else str(d) for d in sample_shape)
    raise OnnxSplitError(
        f"array '{item.source}' has shape {list(array.shape)}; the model wants "
        f"[{shown}] or [B, {shown}]"
    )


def _batch_source(items: list[Item]) -> str:
    if len(items) == 1:
        return f"input '{items[0].source}'"
    return f"the batch of inputs '{items[0].source}' ... '{items[-1].source}'"


def explain(
    model_path: Path,
    inputs: list[Path],
    methods: Sequence[str] | str,
    out_dir: Path,
    *,
    target: int | None = None,
    target_layer: str | None = None,
    input_name: str | None = None,
    output_name: str | None = None,
    batch_size: int = 8,
    device: str = "auto",
    preprocess: Preprocess,
    labels: Path | list[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> ExplainRun:
    """Write <out>/<input>_<method>.png/.npy for every method and summary.csv/json (one row per
    input and method) from one compiled model and one inference per batch; all or nothing."""
    methods = [methods] if isinstance(methods, str) else list(dict.fromkeys(methods))
    if batch_size < 1:
        raise OnnxSplitError("--batch-size must be at least 1")
    if out_dir.exists() and not out_dir.is_dir():
        raise OnnxSplitError(f"output '{out_dir}' exists and is not a folder")
    names = read_labels(labels) if isinstance(labels, str | os.PathLike) else labels
    path, from_cache, compiled = _attribution_model(
        model_path, methods, target_layer, per_sample_for(device), input_name, output_name
    )
    iface = contract.Interface.of(compiled)
    del compiled
    if target is not None:
        iface.check_targets(np.asarray([target]))
    if names is not None:
        check_labels(names, iface.classes, _labels_source(labels))
    elif iface.classes is not None:
        names = read_labels_default(iface.classes)
    session = make_session(path, device)
    provider = provider_used(session)
    sample_shape = tuple(iface.input_shape[1:])
    layout: InputLayout | None = None  # for images; found at the first one
    outputs = [contract.LOGITS, *(contract.map_output(m) for m in methods)]
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
                    if layout is None:
                        layout = model_layout(list(iface.input_shape), iface.layout)
                    x, image = to_input(item.image, layout, preprocess)
                    arrays.append(x)
                    shown.append(image)
            x = np.stack(arrays)
            start = time.perf_counter()
            logits, *maps = iface.run(session, x, target, outputs, source=_batch_source(expanded))
            elapsed = (time.perf_counter() - start) * 1000 / len(x)
            if names is None:
                names = read_labels_default(logits.shape[1]) or []
            elif iface.classes is None:  # a dynamic class axis: the first batch tells
                check_labels(names, logits.shape[1], _labels_source(labels))
            for method, saliency in zip(methods, maps, strict=True):
                finite = np.isfinite(saliency.reshape(len(saliency), -1)).all(axis=1)
                if not finite.all():
                    bad = expanded[int(np.argmin(finite))].source
                    raise OnnxSplitError(
                        f"the {method} map is not finite for {bad}; nothing was written"
                    )
            for i, (item, image, row_logits) in enumerate(
                zip(expanded, shown, logits, strict=True)
            ):
                predicted = int(np.argmax(row_logits))
                explained = predicted if target is None or target == -1 else target
                for method, saliency in zip(methods, maps, strict=True):
                    stem = _unique(f"{item.name}_{method}", used)
                    write_item(staging, stem, image, saliency[i])
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
                            "provider": provider,
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
    return ExplainRun(rows, provider, path, from_cache)


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


def _labels_source(labels) -> str:
    if isinstance(labels, str | os.PathLike):
        return f"labels file '{labels}'"
    return "the labels argument"


def read_labels_default(classes: int | None) -> list[str] | None:
    """ImageNet names for a 1000-class model (when the zoo extra is installed), else None."""
    if classes == 1000:
        try:
            from onnxsplit.zoo.photos import imagenet_label

            return [imagenet_label(i) for i in range(1000)]
        except Exception:
            return None
    return None

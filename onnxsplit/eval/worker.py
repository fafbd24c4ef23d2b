"""One evaluation worker: one onnxruntime runtime, one method on one shard at a time.

The serial engine runs one :class:`EvaluationWorker` in the process; the Ray engine runs one per
actor. Either way a unit (onnxsplit.eval.shards.Unit) is computed by the same code from the same
arrays and seeds, so both engines give the same per-sample scores.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxsplit.eval.metrics import CATEGORY_OF, MetricContext, metric_specs, run_metric
from onnxsplit.eval.shards import Unit, unit_seed


@dataclass(frozen=True)
class WorkerSettings:
    """What every worker of one evaluation is built from (picklable, sent to Ray actors)."""

    model: bytes  # the serialized ONNX classifier
    metrics: tuple[str, ...]  # the metrics that run (skipped ones already removed)
    ctx: MetricContext
    device: str = "auto"
    cache_dir: str | None = None
    target_layer: str | None = None
    batch_size: int = 8
    threads: int | None = None  # onnxruntime intra-op threads; None: all cores
    predict_cache_bytes: int = 256 << 20  # onnxmodel.PredictionCache (0: none)
    keep_compiled: int = 8  # compiled randomised / shifted models kept in memory (0: none)
    prefetch: int = 64  # batch of the prefetched predictions (metrics.run_metric; 0: none)
    fast_checks: bool = True  # metrics.check_attributions instead of Quantus' own


class EvaluationWorker:
    """Computes units: the maps of one method on one shard, then every metric on them."""

    def __init__(self, settings: WorkerSettings):
        import onnx

        from onnxsplit.eval.onnxmodel import CompiledModels, OnnxClassifier

        self.settings = settings
        cache = Path(settings.cache_dir) if settings.cache_dir else None
        self.runtime = CompiledModels(
            settings.device,
            cache,
            settings.target_layer,
            threads=settings.threads,
            keep_compiled=settings.keep_compiled,
            predict_cache_bytes=settings.predict_cache_bytes,
        )
        ctx = settings.ctx
        self.classifier = OnnxClassifier(
            onnx.load_from_string(settings.model),
            self.runtime,
            seed=ctx.seed,
            batch_size=settings.batch_size,
            mprt_stages=ctx.mprt_stages,
        )
        self.runtime.persistent.add(self.classifier.key)
        self._method: str | None = None

    def run(self, unit: Unit, x: np.ndarray, y: np.ndarray, s: np.ndarray | None) -> dict:
        """{"scores": {metric: [score per sample]}, "errors": [...], "seconds", "worker"}."""
        from onnxsplit.eval.onnxmodel import base_method

        started = time.perf_counter()
        if self._method != unit.method:  # a new method: drop the last one's sessions
            self.runtime.release(keep=self.classifier.key)
            self._method = unit.method
        part = slice(unit.start, unit.stop)
        x, y = np.asarray(x[part]), np.asarray(y[part])
        s = None if s is None else np.asarray(s[part])
        ctx, specs, method = self.settings.ctx, metric_specs(), unit.method
        softmax = False if self.classifier.info.probabilities else None
        scores: dict[str, list[float]] = {}
        errors: list[str] = []
        try:
            a = self.classifier.explain(method, x, y)[:, None]
        except Exception as exc:  # a method the model cannot compile: a row of NaN
            errors.append(f"{method}: {type(exc).__name__}: {exc}")
            a = None
        compiled = None if method == "random" else base_method(method.removesuffix("@other"))[0]
        for name in self.settings.metrics:
            values = np.full(len(x), np.nan)
            if a is not None:
                try:
                    values = run_metric(
                        specs[name],
                        ctx,
                        self.classifier,
                        method,
                        x,
                        y,
                        a,
                        s,
                        self.settings.batch_size,
                        softmax,
                        seed=unit_seed(ctx.seed, name, unit.shard),
                        prefetch=self.settings.prefetch,
                        fast_checks=self.settings.fast_checks,
                    )
                except Exception as exc:
                    errors.append(f"{method} / {name}: {type(exc).__name__}: {exc}")
                if CATEGORY_OF[name] in ("randomisation", "axiomatic"):
                    # the randomised / shifted models' sessions (their compiled bytes stay)
                    self.runtime.release(self.classifier.key, compiled)
            scores[name] = [float(v) for v in values]
        return {
            "scores": scores,
            "errors": errors,
            "seconds": time.perf_counter() - started,
            "worker": f"{socket.gethostname()}:{os.getpid()}",
            "provider": self.runtime.provider,
            "compiles": self.runtime.compiles,
            "runs": self.runtime.runs,
            "cache_hits": self.runtime.predictions.hits,
        }

"""Issue 17: how much faster the evaluation got, measured side by side in one run.

1. Speed-ups: the default metric set on EfficientNet-Lite0 (grid2, 224 px) with the workers'
   speed-ups (prefetched predictions, the prediction cache, in-memory compiled randomised and
   shifted models, the vectorised attribution check) against the same run without them
   (evaluate(caches=False), the shape of an evaluation before issue 17).
2. Engines: the same evaluation on a local Ray cluster with 1 and with 2 workers, and on the
   local engine.

    python benchmarks/eval_speed.py                  # ≈ 20 min on 2 CPU cores
    python benchmarks/eval_speed.py --samples 8 --methods gradcam,splitlrp

Prints seconds per sample and the ratios; every run scores the same samples with the same seeds
(the tables are checked equal).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def timed(label: str, **kwargs) -> tuple[float, str]:
    from onnxsplit.eval.harness import evaluate

    started = time.perf_counter()
    result = evaluate(**kwargs)
    seconds = time.perf_counter() - started
    assert not result.errors, result.errors
    per = seconds / result.n_samples
    print(f"{label:<38} {seconds:8.1f} s   {per:6.2f} s/sample", flush=True)
    return seconds, (Path(kwargs["out_dir"]) / "scores.csv").read_text()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--data", default="grid2")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--methods", default="gradcam,lrp_epsilon_plus,splitcam,splitlrp")
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-speedups", action="store_true", help="only the engines")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    work = Path(tempfile.mkdtemp(prefix="onnxsplit-eval-speed-"))
    common = dict(
        model=args.model,
        methods=methods,
        metrics=["default"],
        data=args.data,
        limit=args.samples,
        shard_size=args.shard_size,
        cache_dir=work / "cache",  # the original models' compiled files: shared, warmed below
    )
    print(
        f"{args.model} on {args.data}: {args.samples} samples, methods {', '.join(methods)}, "
        f"shards of {args.shard_size}, {os.cpu_count()} CPUs"
    )
    # the original models' compiled files, shared by every run below through cache_dir
    timed("warm-up (compiles the original models)", out_dir=work / "warm", **{**common, "limit": 2})
    # one shard with every sample: the shape of an evaluation before issue 17
    whole = {**common, "shard_size": args.samples}
    if not args.skip_speedups:
        before, t_before = timed(
            "local, speed-ups off (before)", out_dir=work / "a", caches=False, **whole
        )
        after, t_after = timed("local, speed-ups on (after)", out_dir=work / "b", **whole)
        equal = t_before == t_after
        print(f"speed-ups: {before / after:.2f}x less time per sample; tables equal: {equal}")
    local, t_local = timed(f"local, shards of {args.shard_size}", out_dir=work / "c", **common)
    if not args.skip_ray:
        import ray

        ray.init(include_dashboard=False, log_to_driver=False)
        one, t_one = timed("ray, 1 worker", out_dir=work / "r1", engine="ray", workers=1, **common)
        two, t_two = timed("ray, 2 workers", out_dir=work / "r2", engine="ray", workers=2, **common)
        ray.shutdown()
        print(
            f"ray: 2 workers {one / two:.2f}x faster than 1; 2 workers vs the local engine "
            f"{local / two:.2f}x; tables equal: {t_one == t_two == t_local}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

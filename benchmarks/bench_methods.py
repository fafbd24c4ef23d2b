"""ms/image of every compiled method next to a plain forward pass of the original model.

    python benchmarks/bench_methods.py [--model efficientnet_lite0] [--repeats 5] [--threads 2]

Each configuration is timed in alternation with the plain forward pass on the same session
options, so the printed ratios hold on a noisy machine. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx

from onnxsplit.attribution.attach import attach_methods
from onnxsplit.attribution.methods import METHODS
from onnxsplit.convert import convert_model
from onnxsplit.runtime import make_session, provider_used
from onnxsplit.zoo import registry
from onnxsplit.zoo.photos import PHOTO_NAMES, load_photo


def best_time(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()

    model = onnx.load(registry.model_path(args.model))
    photos = [load_photo(name) for name in list(PHOTO_NAMES)[:16]]
    while len(photos) < 16:
        photos += photos
    x16 = registry.preprocess(args.model, photos[:16])
    x1 = x16[:1]
    data = model.graph.input[0].name
    plain = make_session(model.SerializeToString(), args.device, args.threads)

    candidates: dict[str, tuple[object, dict]] = {}
    split = convert_model(model).model
    candidates["split forward (logits, g, h)"] = (
        make_session(split.SerializeToString(), args.device, args.threads),
        {},
    )
    for method in args.methods.split(","):
        compiled = attach_methods(model, [method])
        candidates[method] = (
            make_session(compiled.SerializeToString(), args.device, args.threads),
            {"target": None},
        )

    print(
        f"model: {args.model}   provider: {provider_used(plain)}   "
        f"threads: {args.threads or 'default'}   best of {args.repeats}"
    )
    print(
        "| method | ms/img, batch 1 | ms/img, batch 16 | images/s (16) | "
        "× forward (1) | × forward (16) |"
    )
    print("|---|---|---|---|---|---|")
    for name, (session, extra) in candidates.items():
        row = []
        for x in (x1, x16):
            feeds = {data: x}
            if "target" in extra:
                feeds["target"] = np.full(len(x), -1, np.int64)
            session.run(None, feeds)
            plain.run(None, {data: x})
            t_method = best_time(lambda s=session, f=feeds: s.run(None, f), args.repeats)
            t_plain = best_time(lambda x=x: plain.run(None, {data: x}), args.repeats)
            row.append((t_method / len(x) * 1000, t_method / t_plain, len(x) / t_method))
        (m1, r1, _), (m16, r16, ips) = row
        print(f"| {name} | {m1:.1f} | {m16:.1f} | {ips:.1f} | {r1:.2f} | {r16:.2f} |")
    t_plain = best_time(lambda: plain.run(None, {data: x16}), args.repeats)
    print(f"\nplain forward: {t_plain / 16 * 1000:.1f} ms/img at batch 16")


if __name__ == "__main__":
    main()

"""How tight is the deletion certificate? The numbers of docs/certified.md.

    python benchmarks/certificate_tightness.py [--dc-mlp dc_mlp.onnx --dc-cnn dc_cnn.onnx]
        [--sets 20] [--json out.json]

For the digits sample models (raw split; float64 where float32 is not exact) and, when given,
models from `onnxsplit train --kind dc`, on the 32 saved test digits:

- the certificate against f(y) on random deletions (half full, half partial; f(y) of the
  original model, float64 where the split is float64): checks, violations, median slack of the
  lower bound f(y) - (f_k - D(S)) and of the upper bound (f_k + U(S)) - f(y);
- the scale: median max_k |g_k| (the raw split's streams) against median |f_k|;
- the certified interval of f_k after deleting the 50 % lowest-D positions (median width),
  the share of inputs whose prediction is certified to survive that deletion ("certified
  sufficiency at 50 %"), the median largest certified deletion, the share of positions with
  D = 0 and of those at the reference;
- interval bound propagation (IBP, the cheapest LiRPA bound) of f_k over the same deletion box
  (every deleted pixel anywhere between c and x) for the MLPs, beside D and U;
- milliseconds per input of `certify` (all classes, one batched run).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnxsplit.certify import compile_certificate, judge, run_all_classes
from onnxsplit.contract import Interface
from onnxsplit.precision import finish_float64, to_float64
from onnxsplit.runtime import make_session

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


def deletion_sets(rng, x, c, sets):
    ts, ys = [], []
    for s in range(sets):
        mask = rng.random(x.shape[1:]) < rng.random()
        t = mask * (1.0 if s % 2 == 0 else rng.random(x.shape[1:]))
        ys.append(c + (1.0 - t[None]) * (x - c))
        ts.append(t)
    return np.stack(ts), np.stack(ys)


def original_f64(model: onnx.ModelProto, dtype: str):
    """f of the original model (float64 when the certificate is float64)."""
    if dtype == "float64":  # canonical first: folded pads and shapes (static for the rewrite)
        import onnx_graphsurgeon as gs

        from onnxsplit.canonicalize import canonicalize

        canonical = canonicalize(to_float64(model))
        model = gs.export_onnx(canonical.graph)
        del model.opset_import[:]
        model.opset_import.append(onnx.helper.make_opsetid("", canonical.opset))
        model = finish_float64(model, model.graph.input[0].name)
    session = make_session(model.SerializeToString(), "cpu")
    name = model.graph.input[0].name

    def f(y):
        out = session.run(None, {name: y.astype(np.float32)})[0]
        return out.astype(np.float64)

    return f


def stream_scale(model: onnx.ModelProto, x: np.ndarray, dtype: str, trained: bool) -> np.ndarray:
    """max_k |g_k| per input: the model's own g (trained) or the raw split's."""
    if trained:
        session = make_session(model.SerializeToString(), "cpu")
        g, h = session.run(["g", "h"], {model.graph.input[0].name: x})
    else:
        from onnxsplit.convert import convert_model

        split = convert_model(model, mode="raw", dtype=dtype).model
        session = make_session(split.SerializeToString(), "cpu")
        g, h = session.run(["g", "h"], {split.graph.input[0].name: x})
    return np.maximum(np.abs(g).max(1), np.abs(h).max(1))


def ibp_mlp(model: onnx.ModelProto, lo: np.ndarray, hi: np.ndarray) -> tuple:
    """Interval bounds of the logits of a Flatten -> (Gemm -> Relu)* -> Gemm model (float64)."""
    weights = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    lo, hi = lo.reshape(len(lo), -1), hi.reshape(len(hi), -1)
    for node in model.graph.node:
        if node.op_type == "Gemm":
            w, b = weights[node.input[1]], weights[node.input[2]]
            trans = any(a.name == "transB" and a.i for a in node.attribute)
            w = w.T if trans else w
            wp, wn = np.maximum(w, 0), np.minimum(w, 0)
            lo, hi = lo @ wp + hi @ wn + b, hi @ wp + lo @ wn + b
        elif node.op_type == "Relu":
            lo, hi = np.maximum(lo, 0), np.maximum(hi, 0)
        elif node.op_type not in ("Flatten",):
            return None
    return lo, hi


def mlp_layers(model: onnx.ModelProto):
    """[(W [out, in], b)] of a Flatten -> (Gemm -> Relu)* -> Gemm model, or None."""
    weights = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type == "Gemm":
            w = weights[node.input[1]]
            trans = any(a.name == "transB" and a.i for a in node.attribute)
            layers.append((w if trans else w.T, weights[node.input[2]]))
        elif node.op_type not in ("Flatten", "Relu"):
            return None
    return layers


def crown_mlp(layers, lo: np.ndarray, hi: np.ndarray, spec: np.ndarray | None = None):
    """CROWN bounds (linear relaxation, back-substitution to the input box; adaptive lower
    slope) of every output of a ReLU MLP over the box [lo, hi] (flat, one sample), or of the
    linear specification spec @ outputs (rows) when given."""
    bounds = []  # pre-activation (l, u) of every hidden layer

    def back(k: int, c: np.ndarray) -> np.ndarray:
        """max over the box of c . z_k (rows of c), z_k the pre-activation of layer k."""
        w, b = layers[k]
        lam, const = c @ w, c @ b
        for i in range(k - 1, -1, -1):
            low, u = bounds[i]
            active, dead = low >= 0, u <= 0
            cross = ~active & ~dead
            up_slope = np.where(active, 1.0, np.where(dead, 0.0, u / np.where(cross, u - low, 1)))
            up_icpt = np.where(cross, -up_slope * low, 0.0)
            low_slope = np.where(active, 1.0, np.where(dead, 0.0, (u > -low).astype(float)))
            slope = np.where(lam >= 0, up_slope, low_slope)
            const = const + np.sum(np.where(lam >= 0, lam * up_icpt, 0.0), axis=1)
            lam = lam * slope
            w, b = layers[i]
            const, lam = const + lam @ b, lam @ w
        return const + np.maximum(lam, 0) @ hi + np.minimum(lam, 0) @ lo

    for k in range(len(layers)):
        eye = np.eye(len(layers[k][1]))
        if k == len(layers) - 1 and spec is not None:
            eye = spec
        upper, lower = back(k, eye), -back(k, -eye)
        if k < len(layers) - 1:
            bounds.append((lower, upper))
    return lower, upper


def crown_greedy(layers, x, c, order, k) -> int:
    """FAME-style: the longest prefix of `order` (positions, deleted anywhere in [c, x]) whose
    box CROWN certifies the prediction k on (lower bound of f_k - f_j > 0 for every j),
    by bisection (the boxes are nested)."""
    classes = len(layers[-1][1])
    spec = np.stack([np.eye(classes)[k] - np.eye(classes)[j] for j in range(classes) if j != k])

    def holds(m: int) -> bool:
        lo, hi = x.copy(), x.copy()
        lo[order[:m]] = np.minimum(x[order[:m]], c[order[:m]])
        hi[order[:m]] = np.maximum(x[order[:m]], c[order[:m]])
        return bool(np.all(crown_mlp(layers, lo, hi, spec)[0] > 0))

    low, high = 0, len(order)
    if not holds(0):
        return 0
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if holds(mid) else (low, mid - 1)
    return low


def measure(label, model, x, sets, rng, trained=False):
    start = time.perf_counter()
    compiled = compile_certificate(model, None, "auto")
    session = make_session(compiled.model.SerializeToString(), "cpu")
    maps = run_all_classes(compiled, session, x)
    if compiled.dtype == "float32" and not trained and not np.all(maps.error <= 1e-4):
        compiled = compile_certificate(model, None, "float64")
        session = make_session(compiled.model.SerializeToString(), "cpu")
        maps = run_all_classes(compiled, session, x)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    run_all_classes(compiled, session, x)
    per_input_ms = 1000 * (time.perf_counter() - start) / len(x)
    f = original_f64(model, compiled.dtype)
    c = np.broadcast_to(np.asarray(compiled.reference, np.float64), x.shape[1:])
    scale = stream_scale(model, x, compiled.dtype, trained)
    iface = Interface.of(compiled.model)
    assert iface.layout.startswith("NC")
    rows = {k: [] for k in ("low", "up", "width", "lost", "survive", "largest", "zero", "ref")}
    checks = violations = 0
    ibp_width, cert_width, crown_width, informative = [], [], [], []
    layers = None if trained else mlp_layers(model)
    ibp_s = crown_s = greedy_s = 0.0
    crown_deletion, cert_deletion = [], []
    for i in range(len(x)):
        logits, drop, rise, err = maps.logits[i], maps.drop[i], maps.rise[i], maps.error[i]
        k = int(np.argmax(logits))
        at_ref = (x[i] == c).all(axis=0)
        v = judge("x", logits, drop, rise, err, at_ref, 0.5)
        if not v.certified:
            continue
        t, y = deletion_sets(rng, x[i].astype(np.float64), c, sets)
        fy = f(y)
        tf = t.reshape(sets, -1)
        lower = logits - tf @ drop.reshape(len(logits), -1).T
        upper = logits + tf @ rise.reshape(len(logits), -1).T
        tol = v.slack + 1e-5 * (np.abs(logits).max() + drop.sum() + rise.sum())
        checks += 2 * fy.size
        violations += int(np.sum(fy < lower - tol) + np.sum(fy > upper + tol))
        rows["low"] += list(fy[:, k] - lower[:, k])
        rows["up"] += list(upper[:, k] - fy[:, k])
        rows["width"].append(v.high - v.low)
        rows["lost"].append(v.score - v.low)
        rows["survive"].append(v.survives)
        rows["largest"].append(v.largest_deletion - v.at_reference)
        rows["zero"].append(v.irrelevant / v.positions)
        rows["ref"].append(v.at_reference / v.positions)
        if not trained:
            # the deletion box of the 50 % lowest-D positions, every pixel anywhere in [c, x]
            order = np.argsort(drop[k].reshape(-1), kind="stable")[: v.deleted]
            box_lo, box_hi = x[i].astype(np.float64).copy(), x[i].astype(np.float64).copy()
            flat_lo, flat_hi = box_lo.reshape(len(box_lo), -1), box_hi.reshape(len(box_hi), -1)
            cc = c.reshape(len(c), -1)
            flat_lo[:, order] = np.minimum(flat_lo[:, order], cc[:, order])
            flat_hi[:, order] = np.maximum(flat_hi[:, order], cc[:, order])
            bounds = None
            if layers is not None:
                tick = time.perf_counter()
                bounds = ibp_mlp(model, box_lo[None], box_hi[None])
                ibp_s += time.perf_counter() - tick
            if bounds is not None:
                ibp_width.append(float(bounds[1][0, k] - bounds[0][0, k]))
                cert_width.append(v.high - v.low)
                tick = time.perf_counter()
                low, up = crown_mlp(layers, box_lo.reshape(-1), box_hi.reshape(-1))
                crown_s += time.perf_counter() - tick
                crown_width.append(float(up[k] - low[k]))
                tick = time.perf_counter()
                order_all = np.argsort(drop[k].reshape(-1), kind="stable")
                found = crown_greedy(
                    layers, x[i].astype(np.float64).reshape(-1), c.reshape(-1), order_all, k
                )
                greedy_s += time.perf_counter() - tick
                crown_deletion.append(found - v.at_reference)
                cert_deletion.append(v.largest_deletion - v.at_reference)
        # certified to survive deleting half of the positions that differ from the reference
        d = drop[k].reshape(-1)
        free = np.flatnonzero(~at_ref.reshape(-1))
        half = free[np.argsort(d[free], kind="stable")[: len(free) // 2]]
        low_k = logits[k] - d[half].sum() - v.slack
        rival = max(
            logits[j] + rise[j].reshape(-1)[half].sum() + v.slack
            for j in range(len(logits))
            if j != k
        )
        informative.append(bool(low_k > rival))
    med = lambda values: float(np.median(values)) if len(values) else float("nan")  # noqa: E731
    return {
        "model": label,
        "dtype": compiled.dtype,
        "inputs": len(x),
        "checks": checks,
        "violations": violations,
        "median |f_k|": med(np.abs(maps.logits.max(1))),
        "median max|g|,|h|": med(scale),
        "median lower slack": med(rows["low"]),
        "median upper slack": med(rows["up"]),
        "median width after deleting 50%": med(rows["width"]),
        "median certified drop after deleting 50%": med(rows["lost"]),
        "certified to survive deleting 50%": float(np.mean(rows["survive"])),
        "median certified deletion beyond the reference": med(rows["largest"]),
        "share D = 0": med(rows["zero"]),
        "share at the reference": med(rows["ref"]),
        "certified to survive deleting 50% of the non-reference positions": float(
            np.mean(informative)
        ),
        "IBP median width, same box": med(ibp_width),
        "CROWN median width, same box": med(crown_width),
        "certificate median width, same box": med(cert_width),
        "median deletion beyond the reference, certificate greedy": med(cert_deletion),
        "median deletion beyond the reference, CROWN greedy": med(crown_deletion),
        "CROWN greedy ms per input": round(1000 * greedy_s / max(len(crown_deletion), 1), 2),
        "IBP ms per box": round(1000 * ibp_s / max(len(ibp_width), 1), 3),
        "CROWN ms per box": round(1000 * crown_s / max(len(crown_width), 1), 3),
        "compile s": round(compile_s, 2),
        "ms per input (all classes)": round(per_input_ms, 2),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dc-mlp", type=Path)
    parser.add_argument("--dc-cnn", type=Path)
    parser.add_argument("--sets", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    x = np.load(SAMPLES / "digits_test_inputs.npy").astype(np.float32)
    rng = np.random.default_rng(0)
    results = []
    for name in ("mlp", "cnn", "depthwise", "resnet"):
        model = onnx.load(SAMPLES / f"digits_{name}_op17_legacy.onnx")
        results.append(measure(f"digits {name} (raw)", model, x, args.sets, rng))
        print(json.dumps(results[-1]))
    for label, path in (("DC-trained MLP", args.dc_mlp), ("DC-trained CNN", args.dc_cnn)):
        if path is not None:
            results.append(measure(label, onnx.load(path), x, args.sets, rng, trained=True))
            print(json.dumps(results[-1]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

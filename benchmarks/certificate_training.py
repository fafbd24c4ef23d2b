"""Training for tight certificates: a DC objective that shrinks D and U (docs/certified.md).

    python benchmarks/certificate_training.py [--arch mlp cnn] [--lam 0 0.01 0.1 1] [--json F]

A model trained as f = g - h (onnxsplit.train's DCNet: non-negative branches on the split input
(relu(x - c), relu(c - x)), c = 0.5) is certified by its own branches. The certificate of
deleting everything is D_y = dg_y/dX . X for the true class y and U_j = dh_j/dX . X for the
others, so the objective adds

    lam * mean_n ( dg_y/dX . X + (1/K) sum_j dh_j/dX . X )

(one double-backward pass: the gradient of g_y + mean_j h_j, dotted with X) to the cross
entropy (--objective total), or a hinge on the certified margin of a random half S of the
pixels deleted (--objective margin, certified training in the manner of IBP training):

    lam * mean_n relu(1 - [f_y - D_y(S) - max_{j != y} f_j - sum_j U_j(S)])

(sum_j U_j(S) >= every U_j(S): one pass for all classes).

Reported on the 360 test digits (the sample models' split): accuracy, the share of test
samples whose top-1 is certified to survive deleting the 50 % lowest-D pixels (towards c), the
median certified interval width of f_y after that deletion, the median number of pixels
certified deletable (the greedy of `onnxsplit certify`), the median D and U totals. Training
as `onnxsplit train --kind dc` (square weights, Adam 3e-2, cosine, 60 epochs, batch 32, seed 0).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from onnxsplit.certify import compile_certificate, judge, run_all_classes
from onnxsplit.runtime import make_session
from onnxsplit.train.data import load_digits_dataset
from onnxsplit.train.models import build_model, project, split_input
from onnxsplit.train.trainer import TrainResult, accuracy, export_onnx


def fit(
    arch: str,
    lam: float,
    epochs: int = 60,
    seed: int = 0,
    center: float = 0.5,
    objective: str = "total",
    margin: float = 1.0,
):
    data = load_digits_dataset()
    torch.manual_seed(seed)
    model = build_model(arch, "dc", (1, 8, 8), 10, "square", center=center)
    xt, yt = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    batch = 32
    steps = epochs * ((len(xt) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(seed)
    project(model)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch):
            idx = perm[i : i + batch]
            if len(idx) < 2:
                continue
            opt.zero_grad(set_to_none=True)
            x = split_input(xt[idx], center).requires_grad_(lam > 0)
            g, h = model.g(x), model.h(x)
            loss = F.cross_entropy(g - h, yt[idx])
            if lam > 0 and objective == "total":
                onehot = F.one_hot(yt[idx], 10).to(g.dtype)
                seed_sum = (g * onehot).sum() + h.mean(dim=1).sum()
                (grad,) = torch.autograd.grad(seed_sum, x, create_graph=True)
                loss = loss + lam * (grad * x).sum() / len(idx)
            elif lam > 0:  # the certified margin of a random half deleted (hinge)
                onehot = F.one_hot(yt[idx], 10).to(g.dtype)
                (dg,) = torch.autograd.grad((g * onehot).sum(), x, create_graph=True)
                (dh,) = torch.autograd.grad(h.sum(), x, create_graph=True)
                keep = torch.rand(len(idx), 1, 8, 8, generator=gen) < 0.5
                deleted = (~torch.cat([keep, keep], dim=1)).to(x.dtype)  # both streams
                drop = (dg * x * deleted).flatten(1).sum(1)
                rise = (dh * x * deleted).flatten(1).sum(1)  # >= every U_j (all are >= 0)
                f = g - h
                rival = (f - 1e9 * onehot).max(dim=1).values
                certified = (f * onehot).sum(1) - drop - rival - rise
                loss = loss + lam * F.relu(margin - certified).mean()
            loss.backward()
            opt.step()
            sched.step()
            project(model)
    seconds = time.perf_counter() - start
    model.eval()
    result = TrainResult(
        arch=arch, kind="dc", data="digits", parametrisation="square", seed=seed,
        epochs=epochs, train_accuracy=accuracy(model, data.x_train, data.y_train),
        test_accuracy=accuracy(model, data.x_test, data.y_test), seconds=seconds, parameters=0,
        lr=3e-2, center=center, input_shape=(1, 8, 8), classes=data.classes, model=model,
    )  # fmt: skip
    return result, export_onnx(result, (1, 8, 8)), data


def evaluate(result, model, data) -> dict:
    compiled = compile_certificate(model)
    session = make_session(compiled.model.SerializeToString(), "cpu")
    x = data.x_test
    maps = run_all_classes(compiled, session, x)
    c = float(compiled.reference)
    verdicts = [
        judge("x", maps.logits[i], maps.drop[i], maps.rise[i], maps.error[i], x[i, 0] == c, 0.5)
        for i in range(len(x))
    ]
    k = maps.logits.argmax(1)
    d_total = maps.drop[np.arange(len(x)), k].sum(axis=(1, 2))
    u_total = maps.rise[np.arange(len(x)), k].sum(axis=(1, 2))
    survives = np.mean([v.survives for v in verdicts])
    width = np.median([v.high - v.low for v in verdicts])
    deletable = np.median([v.largest_deletion for v in verdicts])
    return {
        "arch": result.arch,
        "test accuracy": round(result.test_accuracy, 4),
        "certified to survive deleting 50%": round(float(survives), 4),
        "median width after deleting 50%": round(float(width), 3),
        "median certified deletable pixels": float(deletable),
        "median |f_k|": round(float(np.median(np.abs(maps.logits.max(1)))), 3),
        "median D_k total": round(float(np.median(d_total)), 3),
        "median U_k total": round(float(np.median(u_total)), 3),
        "train s": round(result.seconds, 1),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["mlp"])
    parser.add_argument("--lam", nargs="+", type=float, default=[0.0, 0.01, 0.1, 1.0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--objective", choices=["total", "margin"], default="total")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for arch in args.arch:
        for lam in args.lam:
            result, model, data = fit(arch, lam, args.epochs, objective=args.objective)
            rows.append(
                {"objective": args.objective, "lambda": lam, **evaluate(result, model, data)}
            )
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

"""The numbers of docs/training.md: accuracies, parametrisations, the digit-grid pointing game.

    python -m onnxsplit.train.benchmark --out-dir DIR [--seed 0 --seed 1 ...] [--grids 200]

1. trains the three kinds (relu, dc, monotone) of both architectures with the defaults of
   :func:`onnxsplit.train.train` on the digits (one process, 2 torch threads), recording test
   and train accuracy, wall and CPU seconds;
2. trains the dc model of both architectures under each weight parametrisation (softplus,
   square, clamp);
3. exports the CNNs of the first seed at 16x16 (``--gap 4``: 20x20, the same grid with a
   4-pixel gap between the tiles) and plays the 2x2 digit-grid pointing game
   (:mod:`onnxsplit.train.pointing`): the dc model's own maps (:func:`explain_trained`) against
   Gradient, Gradient x Input, Grad-CAM, LRP-epsilon and LRP-z+ of the unconstrained network
   (and of the dc network), all compiled with ``attach_methods``.

Writes DIR/training_benchmark.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from onnxsplit.attribution.attach import attach_methods
from onnxsplit.train.data import load_dataset
from onnxsplit.train.explain import explain_trained
from onnxsplit.train.models import ARCHS, KINDS, PARAMETRISATIONS
from onnxsplit.train.pointing import build_digit_grids, grid_accuracy, pointing_game
from onnxsplit.train.trainer import DEFAULT_PARAMETRISATION, export_onnx, train

BASELINES = ["gradient", "gradient_x_input", "gradcam", "lrp_epsilon", "lrp_zplus"]


def _row(result, cpu: float) -> dict:
    return {
        "arch": result.arch,
        "kind": result.kind,
        "parametrisation": result.parametrisation,
        "seed": result.seed,
        "epochs": result.epochs,
        "test_accuracy": result.test_accuracy,
        "train_accuracy": result.train_accuracy,
        "final_loss": result.history[-1]["loss"] if result.history else None,
        "wall_s": result.seconds,
        "cpu_s": cpu,
        "parameters": result.parameters,
    }


def run(
    out_dir: Path,
    seeds=(0,),
    grids: int = 200,
    parametrisations: bool = True,
    archs=ARCHS,
    gaps=(0,),
    pointing: bool = True,
) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset("digits")
    report: dict = {"seeds": list(seeds), "accuracy": [], "parametrisations": [], "pointing": []}
    results = {}

    def fit(arch: str, kind: str, seed: int, parametrisation: str, out: Path | None):
        cpu = time.process_time()
        result = train(
            arch=arch,
            kind=kind,
            seed=seed,
            out=out,
            dataset=dataset,
            parametrisation=parametrisation,
        )
        row = _row(result, time.process_time() - cpu)
        print(json.dumps(row), flush=True)
        return result, row

    for seed in seeds:
        for arch in archs:
            for kind in KINDS:
                out = out_dir / f"digits_{arch}_{kind}_seed{seed}.onnx"
                result, row = fit(arch, kind, seed, DEFAULT_PARAMETRISATION, out)
                results[(arch, kind, seed)] = result
                report["accuracy"].append(row)
                if kind == "dc":
                    report["parametrisations"].append(row)
                    for par in PARAMETRISATIONS if parametrisations else ():
                        if par != DEFAULT_PARAMETRISATION:
                            report["parametrisations"].append(fit(arch, kind, seed, par, None)[1])
        (out_dir / "training_benchmark.json").write_text(json.dumps(report, indent=2))

    if pointing and "cnn" in archs:
        seed = seeds[0]
        for gap in gaps:
            images, classes = build_digit_grids(
                dataset.x_test, dataset.y_test, grids, seed=seed, gap=gap
            )
            size = images.shape[-1]
            models = {k: export_onnx(results[("cnn", k, seed)], (1, size, size)) for k in KINDS}
            self_maps = explain_trained(models["dc"])
            relu_maps = attach_methods(models["relu"], BASELINES)
            dc_maps = attach_methods(models["dc"], ["gradient", "lrp_zplus"], output_name="logits")
            explainers = {
                f"dc: {name}": (self_maps, name)
                for name in (
                    "map_self",
                    "map_self_g",
                    "map_self_h",
                    "map_selfcam",
                    "map_selfcam_g",
                    "map_selfcam_h",
                )
            }
            for method in BASELINES:
                explainers[f"relu: {method}"] = (relu_maps, f"map_{method}")
            for method in ("gradient", "lrp_zplus"):
                explainers[f"dc: {method} (attach_methods)"] = (dc_maps, f"map_{method}")
            report["pointing"].append(
                {
                    "seed": seed,
                    "gap": gap,
                    "size": size,
                    "grids": grids,
                    "samples": grids * 4,
                    "grid_top1_in_grid": {
                        kind: grid_accuracy(models[kind], images, classes) for kind in KINDS
                    },
                    "scores": pointing_game(explainers, images, classes, gap),
                }
            )
    (out_dir / "training_benchmark.json").write_text(json.dumps(report, indent=2))
    print(markdown(report))
    return report


def markdown(report: dict) -> str:
    lines = ["| arch | kind | test acc | train acc | epochs | wall s | CPU s | parameters |"]
    lines.append("|---|---|---|---|---|---|---|---|")
    for r in report["accuracy"]:
        lines.append(
            f"| {r['arch']} | {r['kind']} | {r['test_accuracy']:.4f} | "
            f"{r['train_accuracy']:.4f} | {r['epochs']} | {r['wall_s']:.1f} | "
            f"{r['cpu_s']:.1f} | {r['parameters']} |"
        )
    if report["parametrisations"]:
        lines += ["", "| arch | kind | parametrisation | test acc | train acc | final loss |"]
        lines.append("|---|---|---|---|---|---|")
        for r in report["parametrisations"]:
            lines.append(
                f"| {r['arch']} | {r['kind']} | {r['parametrisation']} | "
                f"{r['test_accuracy']:.4f} | {r['train_accuracy']:.4f} | {r['final_loss']:.4f} |"
            )
    for p in report["pointing"]:
        lines += [
            "",
            f"pointing game {p['size']}x{p['size']} (gap {p['gap']}): {p['grids']} grids, "
            f"{p['samples']} samples, models of seed {p['seed']}",
            "",
        ]
        lines += ["| map | hit rate | positive mass in tile |", "|---|---|---|"]
        for name, s in p["scores"].items():
            lines.append(f"| {name} | {s['hit']:.3f} | {s['mass']:.3f} |")
        lines.append("")
        lines.append(f"grid top-1 is one of the grid's classes: {p['grid_top1_in_grid']}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--seed", type=int, action="append", help="repeatable (default 0)")
    parser.add_argument("--grids", type=int, default=200)
    parser.add_argument("--no-parametrisations", action="store_true")
    parser.add_argument("--arch", action="append", choices=ARCHS)
    parser.add_argument("--no-pointing", action="store_true")
    parser.add_argument("--gap", type=int, action="append", help="grid gaps (default 0)")
    args = parser.parse_args(argv)
    run(
        args.out_dir,
        tuple(args.seed or [0]),
        args.grids,
        not args.no_parametrisations,
        tuple(args.arch) if args.arch else ARCHS,
        tuple(args.gap or [0]),
        not args.no_pointing,
    )


if __name__ == "__main__":
    main()

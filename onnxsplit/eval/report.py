"""Tables and figures of an evaluation, and the command that regenerates docs/results.md.

    python -m onnxsplit.eval.report                 # docs/results.md + docs/results_ranks.png
    python -m onnxsplit.eval.report --quick         # a smoke run (few samples, cheap settings)

It evaluates every method in METHODS plus the 'random' control with the default metrics (two
or more per Quantus category) on EfficientNet-Lite0 (2×2 grids at 224 px, 112 px per tile) and
on the sample digits CNN (held-out test digits, ink masks), and with the localisation metrics on
EfficientNet-Lite0 exported at 448 px (2×2 grids of 224 px tiles, the setting of FINDINGS.md);
it writes the per-run folders (results.csv, scores.csv, results.md, ranks.png) under --work-dir.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from onnxsplit.eval.metrics import CATEGORIES, metric_specs

ROW_FIELDS = (
    "model",
    "dataset",
    "category",
    "metric",
    "method",
    "n",
    "mean",
    "se",
    "higher_is_better",
    "metric_rank",
    "category_rank",
)


def _fmt(value: float, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "nan"
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}f}"


def write_result(result, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "results.csv": out_dir / "results.csv",
        "scores.csv": out_dir / "scores.csv",
        "results.md": out_dir / "results.md",
        "ranks.png": out_dir / "ranks.png",
    }
    with open(files["results.csv"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=ROW_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in result.rows:
            out = {"model": result.model, "dataset": result.dataset, **row}
            for key in ("mean", "se"):
                out[key] = repr(float(out[key]))
            writer.writerow({k: out[k] for k in ROW_FIELDS})
    with open(files["scores.csv"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(
            handle,
            fieldnames=["model", "dataset", "method", "category", "metric", "sample", "score"],
            lineterminator="\n",
        )
        writer.writeheader()
        for row in result.scores:
            writer.writerow({**row, "score": repr(float(row["score"]))})
    meta = {
        key: getattr(result, key)
        for key in ("model", "dataset", "methods", "metrics", "n_samples", "seed", "provider")
    }
    meta.update(notes=result.notes, errors=result.errors, seconds=result.seconds)
    files["meta.json"] = out_dir / "meta.json"
    files["meta.json"].write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    files["results.md"].write_text(
        f"# Evaluation: {result.model} on {result.dataset}\n\n" + markdown_section(result),
        encoding="utf-8",
    )
    plot_ranks([result], files["ranks.png"])
    result.files = files
    return files


def load_result(out_dir: Path):
    """The EvaluationResult written into `out_dir` (meta.json + scores.csv), ranks recomputed."""
    from onnxsplit.eval.harness import EvaluationResult, summarise

    meta = json.loads((out_dir / "meta.json").read_text(encoding="utf-8"))
    with open(out_dir / "scores.csv", newline="", encoding="utf-8") as handle:
        scores = [{**row, "score": float(row["score"])} for row in csv.DictReader(handle)]
    rows, category_ranks, mean_ranks = summarise(scores, meta["methods"], meta["metrics"])
    return EvaluationResult(
        model=meta["model"],
        dataset=meta["dataset"],
        methods=meta["methods"],
        metrics=meta["metrics"],
        n_samples=meta["n_samples"],
        seed=meta["seed"],
        provider=meta["provider"],
        rows=rows,
        scores=scores,
        category_ranks=category_ranks,
        mean_category_rank=mean_ranks,
        errors=meta["errors"],
        notes=meta["notes"],
        seconds=meta["seconds"],
        out_dir=out_dir,
    )


def markdown_section(result, level: int = 2) -> str:
    """Rank summary, split-method summary and per-category tables (mean ± standard error)."""
    h = "#" * level
    specs = metric_specs()
    lines = [
        f"Model `{result.model}`, dataset `{result.dataset}`: {result.n_samples} samples, seed "
        f"{result.seed}, {len(result.methods)} methods, provider {result.provider}, "
        f"{result.seconds / 60:.1f} min.",
        "",
    ]
    lines += [f"- {note}" for note in result.notes]
    lines += ["", f"{h} Ranks per category (1 = best; mean rank over the category's metrics)", ""]
    categories = [c for c in CATEGORIES if c in result.category_ranks]
    lines.append("| method | " + " | ".join(categories) + " | mean |")
    lines.append("|---|" + "---|" * (len(categories) + 1))
    for method in result.methods:
        cells = []
        for c in categories:
            rank = result.category_ranks[c][method]
            cells.append(f"{rank:.0f} ({result.mean_category_rank[c][method]:.1f})")
        overall = np.mean([result.category_ranks[c][method] for c in categories])
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {overall:.2f} |")
    lines.append("")
    split_lines = split_summary(result)
    if split_lines:
        lines += [f"{h} Where the split methods rank", "", *split_lines, ""]
    for category in categories:
        metrics = [m for m in result.metrics if specs[m].category == category]
        lines += [f"{h} {category.capitalize()}", ""]
        for m in metrics:
            arrow = "↑" if specs[m].higher_is_better else "↓"
            lines.append(f"- `{m}` {arrow}: {specs[m].description}")
        lines.append("")
        lines.append(
            "| method | "
            + " | ".join(f"{m} {'↑' if specs[m].higher_is_better else '↓'}" for m in metrics)
            + " | rank |"
        )
        lines.append("|---|" + "---|" * (len(metrics) + 1))
        best = {m: _best(result, m) for m in metrics}
        for method in result.methods:
            cells = []
            for m in metrics:
                row = _row(result, method, m)
                text = f"{_fmt(row['mean'])} ± {_fmt(row['se'], 2)}"
                cells.append(f"**{text}**" if method in best[m] else text)
            rank = result.category_ranks[category][method]
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {rank:.0f} |")
        lines.append("")
    if result.errors:
        lines += [f"{h} Errors", ""] + [f"- {e}" for e in result.errors] + [""]
    return "\n".join(lines)


def _row(result, method: str, metric: str) -> dict:
    return next(r for r in result.rows if r["method"] == method and r["metric"] == metric)


def _best(result, metric: str) -> set[str]:
    rows = [r for r in result.rows if r["metric"] == metric and math.isfinite(r["mean"])]
    if not rows:
        return set()
    top = min(r["metric_rank"] for r in rows)
    return {r["method"] for r in rows if r["metric_rank"] == top}


def is_control(method: str) -> bool:
    return method == "random" or method.endswith("@other")


def split_summary(result) -> list[str]:
    """One line per split method (name starting with 'split') and category: its rank, and
    how far it is from the best baseline (neither a split method nor a control) in mean
    metric rank and on each metric."""
    specs = metric_specs()
    lines = []
    n = len(result.methods)
    baselines = [m for m in result.methods if not m.startswith("split") and not is_control(m)]
    if not baselines:
        return lines
    for method in [m for m in result.methods if m.startswith("split")]:
        for category, ranks in result.category_ranks.items():
            mean = result.mean_category_rank[category]
            best = min(baselines, key=lambda m: (mean[m], result.methods.index(m)))
            gap = mean[method] - mean[best]
            if abs(gap) < 1e-9:
                where = f"tied with the best baseline, {best}"
            elif gap < 0:
                where = f"ahead of the best baseline, {best}, by {-gap:.1f} mean ranks"
            else:
                where = f"behind the best baseline, {best}, by {gap:.1f} mean ranks"
            values = []
            for metric in [m for m in result.metrics if specs[m].category == category]:
                mine, other = _row(result, method, metric), _row(result, best, metric)
                values.append(f"{metric} {_fmt(mine['mean'])} vs {_fmt(other['mean'])}")
            lines.append(
                f"- {method}, {category}: rank {ranks[method]:.0f} of {n}, {where} ("
                + "; ".join(values)
                + ")"
            )
    return lines


def plot_ranks(results: list, path: Path) -> None:
    """One heat map per evaluation: methods × categories, the rank written in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = [max(1, len(r.category_ranks)) for r in results]
    height = 0.9 + 0.42 * max(len(r.methods) for r in results)
    fig, axes = plt.subplots(
        1,
        len(results),
        figsize=(2.2 * len(results) + 1.0 * sum(widths), height),
        squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )
    for ax, result in zip(axes[0], results, strict=True):
        categories = [c for c in CATEGORIES if c in result.category_ranks]
        grid = np.array(
            [[result.category_ranks[c][m] for c in categories] for m in result.methods], float
        )
        n = len(result.methods)
        ax.imshow(grid, cmap="RdYlGn_r", vmin=1, vmax=max(2, n), aspect="auto")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=10)
        ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
        ax.set_yticks(range(n), result.methods)
        ax.set_title(f"{result.model} · {result.dataset} (n={result.n_samples})", fontsize=10)
    fig.suptitle("rank per category (1 = best)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def docs_markdown(results: list, command: str, figure: str) -> str:
    lines = [
        "# Attribution quality: Quantus metrics per category",
        "",
        "Generated by `" + command + "` (do not edit by hand; see docs/evaluate.md).",
        "Every number is the mean ± standard error over the samples; ↑ higher is better, "
        "↓ lower is better; bold = best in the column. A method's category rank is the rank "
        "of its mean rank over the category's metrics (in brackets). `random` is a control: "
        "a seeded uniform-noise map. With few samples the standard errors are wide: read a "
        "difference smaller than the two standard errors as a tie.",
        "",
        f"![ranks per category]({figure})",
        "",
    ]
    for result in results:
        lines += [f"## {result.model} on {result.dataset}", "", markdown_section(result, 3), ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    from onnxsplit.attribution.methods import METHODS
    from onnxsplit.eval.harness import evaluate

    parser = argparse.ArgumentParser(prog="python -m onnxsplit.eval.report", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"))
    parser.add_argument("--work-dir", type=Path, default=Path("benchmarks/eval_results"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--limit", type=int, default=8, help="EfficientNet samples")
    parser.add_argument("--digits-limit", type=int, default=32, help="digit samples")
    parser.add_argument("--metrics", nargs="+", default=["default"])
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--skip-efficientnet", action="store_true")
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--skip-448", action="store_true")
    parser.add_argument(
        "--limit-448", type=int, default=16, help="samples of the 448 px localisation run"
    )
    parser.add_argument("--quick", action="store_true", help="few samples, cheap settings")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rebuild docs from the runs already in --work-dir (no evaluation)",
    )
    args = parser.parse_args(argv)

    methods = args.methods or [*METHODS, "random"]
    cheap = {"steps": 8, "nr_runs": 5, "nr_samples": 2, "mprt_stages": 2} if args.quick else {}
    root = Path(__file__).resolve().parents[2]
    runs = []
    if not args.skip_efficientnet:
        runs.append(("efficientnet_lite0", "grid2", 4 if args.quick else args.limit, args.metrics))
    if not args.skip_448:
        limit = 4 if args.quick else args.limit_448
        runs.append(("efficientnet_lite0@448", "grid2", limit, ["localisation"]))
    if not args.skip_digits:
        digits = root / "sample_models" / "digits_cnn_op17_legacy.onnx"
        runs.append((digits, "digits", 8 if args.quick else args.digits_limit, args.metrics))
    results = []
    for model, data, limit, metrics in runs:
        name = Path(str(model)).stem
        if args.render_only:
            results.append(load_result(args.work_dir / f"{name}-{data}"))
            continue
        started = time.perf_counter()

        def progress(step, total, message, name=name, started=started):
            elapsed = time.perf_counter() - started
            print(f"[{name} {step}/{total} {elapsed:6.0f}s] {message}", file=sys.stderr, flush=True)

        results.append(
            evaluate(
                model,
                methods,
                metrics,
                data,
                args.work_dir / f"{name}-{data}",
                seed=args.seed,
                limit=limit,
                device=args.device,
                progress=progress,
                **cheap,
            )
        )
    figure = args.out.with_name(args.out.stem + "_ranks.png")
    plot_ranks(results, figure)
    given = list(argv) if argv is not None else sys.argv[1:]
    given = [a for a in given if a != "--render-only"]
    command = " ".join(["python -m onnxsplit.eval.report", *given])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(docs_markdown(results, command, figure.name), encoding="utf-8")
    print(f"wrote {args.out} and {figure}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

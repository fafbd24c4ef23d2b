"""Tables and figures of an evaluation, and the command that regenerates docs/results.md.

    python -m onnxsplit.eval.report                 # docs/results.md + docs/results_ranks.png
    python -m onnxsplit.eval.report --quick         # a smoke run (few samples, cheap settings)
    python -m onnxsplit.eval.report --engine ray    # the same on a (local) Ray cluster

It evaluates every saliency method in METHODS plus the 'random' control with the default
metrics (two or more per Quantus category) on EfficientNet-Lite0 (2×2 grids at 224 px, 112 px
per tile; --limit samples, default 128), on the FER2013 mini-Xception (the face-grid pointing
game, --fer-limit, default 128) and on the sample digits CNN (held-out test digits, ink masks),
and with the localisation metrics on EfficientNet-Lite0 exported at 448 px (2×2 grids of
224 px tiles); it writes the per-run folders (results.csv, scores.csv, results.md, ranks.png,
shards/) under --work-dir. Every run is resumable: finished shards are reused, so rerunning
the command after an interruption, or to regenerate the tables, computes only what is missing.

Each run's section has the means with 95 % bootstrap CIs and the paired verdicts of every split
method against each metric's best baseline (onnxsplit.eval.stats).

Then the self-explaining models of issue 5 (:func:`self_explaining_section`): a DC CNN (f = g −
h, monotone g and h) and an unconstrained CNN, both trained by ``onnxsplit train --arch cnn
--data digits-grid`` (seeded; the models are written to --work-dir/self_explaining/ and reused
when present), evaluated on the digit-grid pointing game (``digits-grid``) with localisation,
faithfulness and robustness metrics: the DC model's own maps against post-hoc methods on the
same DC model and on the unconstrained network, paired per tile.
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
    "ci_low",
    "ci_high",
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
            for key in ("mean", "se", "ci_low", "ci_high"):
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
    meta.update(
        notes=result.notes,
        errors=result.errors,
        seconds=result.seconds,
        engine=result.engine,
        workers=result.workers,
        machine=result.machine,
        command=result.command,
    )
    files["meta.json"] = out_dir / "meta.json"
    files["meta.json"].write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    files["results.md"].write_text(
        f"# Evaluation: {result.model} on {result.dataset}\n\n" + markdown_section(result),
        encoding="utf-8",
    )
    plot_ranks([result], files["ranks.png"])
    result.files = files
    return files


# split-graph variants of the research runs whose names do not start with "split"
# (benchmarks/research_second_model.py: SplitLRP of the margin, gated SplitLRP)
SPLIT_VARIANTS = ("csplit", "gated_head")


def is_split(method: str) -> bool:
    return method.startswith("split") or method in SPLIT_VARIANTS


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
        engine=meta.get("engine", "local"),
        workers=meta.get("workers", 1),
        machine=meta.get("machine", ""),
        command=meta.get("command", ""),
    )


def markdown_section(result, level: int = 2) -> str:
    """Rank summary, paired verdicts of the split methods and per-category tables (mean with
    its 95 % bootstrap CI)."""
    h = "#" * level
    specs = metric_specs()
    workers = f"{result.workers} worker{'s' * (result.workers > 1)}"
    lines = [
        f"Model `{result.model}`, dataset `{result.dataset}`: {result.n_samples} samples, seed "
        f"{result.seed}, {len(result.methods)} methods, provider {result.provider}, engine "
        f"{result.engine} ({workers}), {result.seconds / 60:.1f} min wall"
        + (f" on {result.machine}" if result.machine else "")
        + ".",
        "",
    ]
    if result.command:
        lines += ["```", result.command, "```", ""]
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
    verdict_lines = verdict_section(result)
    if verdict_lines:
        lines += [f"{h} Split methods against the best baseline (paired per sample)", ""]
        lines += [*verdict_lines, ""]
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
                low, high = row.get("ci_low", math.nan), row.get("ci_high", math.nan)
                text = f"{_fmt(row['mean'])} [{_fmt(low, 2)}, {_fmt(high, 2)}]"
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


# each split method's own baseline: the method it refines (the issue's question, "does SplitCAM
# explain better than Grad-CAM, SplitLRP than LRP-ε+?")
COUNTERPART = {"splitcam": "gradcam", "splitlrp": "lrp_epsilon_plus", "splitgrad": "gradient"}


def result_verdicts(result, counterparts: bool = False) -> list:
    """onnxsplit.eval.stats.verdicts of every split method (is_split) against each metric's
    best baseline (neither a split method nor a control), or with `counterparts` against its
    own baseline (COUNTERPART, where the run has it); per-sample scores paired by sample."""
    from onnxsplit.eval.stats import verdicts

    specs = metric_specs()
    baselines = [m for m in result.methods if not is_split(m) and not is_control(m)]
    splits = [m for m in result.methods if is_split(m)]
    if not baselines or not splits:
        return []
    by_key: dict[tuple[str, str], dict[str, float]] = {}
    for row in result.scores:
        by_key.setdefault((row["method"], row["metric"]), {})[row["sample"]] = row["score"]
    samples = list(dict.fromkeys(row["sample"] for row in result.scores))
    table = {
        (method, metric): np.asarray(
            [by_key.get((method, metric), {}).get(k, np.nan) for k in samples], np.float64
        )
        for method in [*baselines, *splits]
        for metric in result.metrics
    }
    pairs = [(splits, baselines)]
    if counterparts:
        pairs = [([m], [COUNTERPART[m]]) for m in splits if COUNTERPART.get(m) in baselines]
    found = []
    for mine, theirs in pairs:
        found += verdicts(
            table,
            mine,
            theirs,
            list(result.metrics),
            {m: specs[m].category for m in result.metrics},
            {m: specs[m].higher_is_better for m in result.metrics},
            seed=result.seed,
        )
    return found


def _category_cells(found: list, method: str, categories, bold: bool = False) -> list[str]:
    from onnxsplit.eval.stats import category_verdict

    cells = []
    for category in categories:
        mine = [v.verdict for v in found if v.method == method and v.category == category]
        counts = "/".join(str(mine.count(k)) for k in ("win", "tie", "loss"))
        verdict = f"**{category_verdict(mine)}**" if bold else category_verdict(mine)
        cells.append(f"{verdict} ({counts})" if mine else "—")
    return cells


def verdict_section(result) -> list[str]:
    """Per split method and category: win / tie / loss against the best baseline and against
    its own baseline; then one row per metric."""
    from onnxsplit.eval.stats import ALPHA

    best = result_verdicts(result)
    own = result_verdicts(result, counterparts=True)
    if not best:
        return []
    lines = [
        f"Each split method against the best baseline of each metric (the baseline with the "
        f"best mean), and against its own baseline (SplitCAM against Grad-CAM, SplitLRP against "
        f"LRP-ε+, SplitGrad against the gradient), paired per sample: the mean difference with "
        f"its 95 % bootstrap CI and the two-sided Wilcoxon signed-rank test, Holm-corrected "
        f"over the category's metrics; win / loss where p < {ALPHA} (in the metric's better / "
        f"worse direction), tie otherwise. A category is a win when it has a win and no loss, "
        f"mixed when it has both; the brackets count the category's metrics won / tied / lost.",
        "",
    ]
    categories = list(dict.fromkeys(v.category for v in best))
    lines.append("| method | against | " + " | ".join(categories) + " |")
    lines.append("|---|---|" + "---|" * len(categories))
    for method in dict.fromkeys(v.method for v in best):
        cells = _category_cells(best, method, categories, bold=True)
        lines.append(f"| {method} | the best baseline | " + " | ".join(cells) + " |")
        if any(v.method == method for v in own):
            cells = _category_cells(own, method, categories, bold=True)
            lines.append(f"| {method} | {COUNTERPART[method]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| method | metric | baseline | split − baseline [95 % CI] | p (Holm) | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for v in [*best, *own]:
        c = v.comparison
        arrow = "↑" if metric_specs()[v.metric].higher_is_better else "↓"
        lines.append(
            f"| {v.method} | {v.metric} {arrow} | {v.baseline} | {_fmt(c.delta)} "
            f"[{_fmt(c.low, 2)}, {_fmt(c.high, 2)}] | {_fmt_p(v.p_holm)} | {v.verdict} |"
        )
    return lines


def verdict_overview(results: list) -> list[str]:
    """One table over every run: per model, split method and category the paired verdict
    against the best baselines and against its own baseline (win/tie/loss counts)."""
    rows = []
    for result in results:
        run = f"{result.model} · {result.dataset} (n={result.n_samples})"
        best, own = result_verdicts(result), result_verdicts(result, counterparts=True)
        for method in dict.fromkeys(v.method for v in best):
            cells = _category_cells(best, method, CATEGORIES)
            rows.append(f"| {run} | {method} | best baseline | " + " | ".join(cells) + " |")
            if any(v.method == method for v in own):
                cells = _category_cells(own, method, CATEGORIES)
                rows.append(
                    f"| {run} | {method} | {COUNTERPART[method]} | " + " | ".join(cells) + " |"
                )
    if not rows:
        return []
    return [
        "## Verdicts at a glance",
        "",
        "Each split method against the best baseline of every metric and against its own "
        "baseline (Grad-CAM for SplitCAM, LRP-ε+ for SplitLRP, the gradient for SplitGrad), "
        "paired per sample (Wilcoxon signed-rank, Holm-corrected per category; details in "
        "each run's verdict table): win, tie, loss or mixed per category, with the counts of "
        "the category's metrics won / tied / lost.",
        "",
        "| run | method | against | " + " | ".join(CATEGORIES) + " |",
        "|---|---|---|" + "---|" * len(CATEGORIES),
        *rows,
        "",
    ]


def _fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.0e}"


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
        "Every number is the mean over the samples with its 95 % bootstrap confidence "
        "interval in brackets; ↑ higher is better, ↓ lower is better; bold = best mean in "
        "the column. A method's category rank is the rank of its mean rank over the "
        "category's metrics (in brackets). `random` is a control: a seeded uniform-noise map. "
        "Ranks order means; whether a split method beats a baseline is decided by the paired "
        "tests of each run's verdict table (Wilcoxon signed-rank over the same samples, "
        "Holm-corrected per category).",
        "",
        f"![ranks per category]({figure})",
        "",
        *verdict_overview(results),
    ]
    for result in results:
        lines += [f"## {result.model} on {result.dataset}", "", markdown_section(result, 3), ""]
    return "\n".join(lines).rstrip() + "\n"


# -- self-explaining models (issue 5) ---------------------------------------------------------
SELF_DATA = "digits-grid"
SELF_DC_METHODS = [
    "self",
    "self_g",
    "self_h",
    "selfcam",
    "selfcam_g",
    "selfcam_h",
    # post hoc on the DC model itself: explaining itself against being explained (issue 17).
    # No CAM: g and h share no layer, so Grad-CAM's default layer is not on every path to
    # f = g − h and its maps are zero (the model's own CAM is selfcam)
    "gradient_x_input",
    "lrp_epsilon_plus",
    "splitlrp",
    "random",
]
SELF_METRICS = [
    "pointing_game",
    "attribution_localisation",
    "top_k_intersection",
    "relevance_rank_accuracy",
    "faithfulness_correlation",
    "pixel_flipping_norm",
    "region_perturbation_norm",
    "max_sensitivity",
    "local_lipschitz",
]
SELF_BATCH = 64
OWN = ("self", "self_g", "self_h", "selfcam", "selfcam_g", "selfcam_h")
OWN_LABELS = {
    "self": "g − h, gradient × input",
    "self_g": "g only",
    "self_h": "h only, evidence against",
    "selfcam": "CAM of g − h",
    "selfcam_g": "CAM of g only",
    "selfcam_h": "CAM of h only",
}


def self_model_path(work_dir: Path, kind: str) -> Path:
    return work_dir / "self_explaining" / f"{SELF_DATA}_cnn_{kind}.onnx"


def self_commands(work_dir: Path, relu_methods: list[str]) -> list[str]:
    """The shell commands that produce the two models and the two evaluation runs."""
    lines = []
    for kind in ("dc", "relu"):
        lines.append(
            f"onnxsplit train --arch cnn --data {SELF_DATA} --kind {kind} --seed 0 "
            f"--out {self_model_path(work_dir, kind)}"
        )
    for kind, methods in (("dc", SELF_DC_METHODS), ("relu", relu_methods)):
        path = self_model_path(work_dir, kind)
        lines.append(
            f"onnxsplit evaluate --model {path} --data {SELF_DATA} --methods "
            f"{','.join(methods)} --metrics {','.join(SELF_METRICS)} --batch-size {SELF_BATCH} "
            f"--seed 0 --out {work_dir / f'{path.stem}-{SELF_DATA}'}"
        )
    return lines


def _per_sample(result, method: str, metric: str) -> dict[str, float]:
    return {
        r["sample"]: r["score"]
        for r in result.scores
        if r["method"] == method and r["metric"] == metric
    }


def self_verdicts(dc, relu, metrics: list[str]) -> list[str]:
    """Per metric, the DC model's better own map of f (`self` or `selfcam`, by mean) against
    the best post-hoc method on the same DC model and against the best on the unconstrained
    model, paired per sample (the same tiles), Wilcoxon signed-rank, Holm over the metrics of
    each comparison."""
    from onnxsplit.eval.stats import compare, holm, verdict

    specs = metric_specs()
    # the model's explanations of f = g − h (its g-only and h-only maps explain a branch)
    own = [m for m in dc.methods if m in ("self", "selfcam")]
    same = [m for m in dc.methods if m not in OWN and not is_control(m)]
    other = [m for m in relu.methods if not is_control(m)]
    if not own:
        return []

    def best(result, methods, metric):
        sign = 1 if specs[metric].higher_is_better else -1
        finite = [m for m in methods if math.isfinite(_row(result, m, metric)["mean"])]
        return max(finite, key=lambda m: sign * _row(result, m, metric)["mean"], default=None)

    families = {}
    for label, result, methods in (("same", dc, same), ("other", relu, other)):
        found = []
        for metric in metrics:
            mine, theirs = best(dc, own, metric), best(result, methods, metric)
            if mine is None or theirs is None:
                continue
            a, b = _per_sample(dc, mine, metric), _per_sample(result, theirs, metric)
            keys = [k for k in a if k in b]
            c = compare(
                [a[k] for k in keys],
                [b[k] for k in keys],
                specs[metric].higher_is_better,
                seed=dc.seed,
            )
            found.append((metric, mine, theirs, c))
        adjusted = holm([c.p for *_, c in found])
        families[label] = {
            f[0]: (*f[1:], p, verdict(f[3], p)) for f, p in zip(found, adjusted, strict=True)
        }
    lines = [
        "Per metric, the DC model's best own map against the best post-hoc method on the same "
        "DC model (" + ", ".join(f"`{m}`" for m in same) + ") and against the best on the "
        "unconstrained model (" + ", ".join(f"`{m}`" for m in other) + "): the mean paired "
        "difference (own − post hoc) with its 95 % bootstrap CI, the two-sided Wilcoxon "
        "signed-rank test on the same tiles, Holm-corrected over the metrics of each column; "
        "win / loss at p < 0.05.",
        "",
        "| metric | best own map | post hoc on the same DC model | own − post hoc | p (Holm) "
        "| verdict | post hoc on the unconstrained model | own − post hoc | p (Holm) | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    tally = {"same": [], "other": []}
    for metric in metrics:
        cells = []
        mine = None
        for label in ("same", "other"):
            entry = families[label].get(metric)
            if entry is None:
                cells += ["", "", "", ""]
                continue
            mine, theirs, c, p, v = entry
            tally[label].append(v)
            cells += [
                f"`{theirs}`",
                f"{_fmt(c.delta)} [{_fmt(c.low, 2)}, {_fmt(c.high, 2)}]",
                _fmt_p(p),
                f"**{v}**",
            ]
        arrow = "↑" if specs[metric].higher_is_better else "↓"
        lines.append(f"| {metric} {arrow} | `{mine}` | " + " | ".join(cells) + " |")
    lines.append("")
    for label, text in (("same", "the same DC model"), ("other", "the unconstrained model")):
        v = tally[label]
        lines.append(
            f"- Against post-hoc methods on {text}: {v.count('win')} wins, {v.count('tie')} "
            f"ties, {v.count('loss')} losses of {len(v)} metrics."
        )
    return lines


def self_explaining_section(dc, relu, info: dict | None = None, commands=()) -> str:
    """The comparison table: the DC model's own maps (and the controls on each model) against
    the post-hoc methods on the unconstrained model, per metric, with a verdict per metric."""
    specs = metric_specs()
    info = info or {}
    metrics = [m for m in dc.metrics if m in relu.metrics]
    rows = []  # (label, result, method)
    for method in dc.methods:
        if method in OWN:
            label = f"DC own: `{method}` ({OWN_LABELS[method]})"
        elif method == "random":
            label = "DC model: `random` (control)"
        else:
            label = f"DC model, post hoc: `{method}`"
        rows.append((label, dc, method))
    for method in relu.methods:
        suffix = " (control)" if is_control(method) else ""
        rows.append((f"unconstrained, post hoc: `{method}`{suffix}", relu, method))
    best: dict[str, set[int]] = {}
    for m in metrics:
        higher = specs[m].higher_is_better
        values = [(i, _row(r, meth, m)["mean"]) for i, (_, r, meth) in enumerate(rows)]
        finite = [(i, v) for i, v in values if math.isfinite(v)]
        if finite:
            top = (max if higher else min)(v for _, v in finite)
            best[m] = {i for i, v in finite if v == top}
    lines = [
        "| map | "
        + " | ".join(f"{m} {'↑' if specs[m].higher_is_better else '↓'}" for m in metrics)
        + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for i, (label, result, method) in enumerate(rows):
        cells = []
        for m in metrics:
            row = _row(result, method, m)
            low, high = row.get("ci_low", math.nan), row.get("ci_high", math.nan)
            text = f"{_fmt(row['mean'])} [{_fmt(low, 2)}, {_fmt(high, 2)}]"
            cells.append(f"**{text}**" if i in best.get(m, ()) else text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    verdict_lines = self_verdicts(dc, relu, metrics)
    out = []
    if info:
        out += [f"- {line}" for line in info.get("lines", [])]
        out.append("")
    out += [
        f"{len(dc.methods)} maps of the DC model and {len(relu.methods)} of the unconstrained "
        f"model, {dc.n_samples} samples (tiles) each, seed {dc.seed}; mean [95 % bootstrap "
        "CI]; bold = best in the column.",
        "",
        *lines,
        "",
        *verdict_lines,
        "",
    ]
    for m in metrics:
        out.append(f"- `{m}`: {specs[m].description}")
    if commands:
        out += ["", "Commands:", "", "```", *commands, "```"]
    return "\n".join(out)


def self_model_info(paths: dict[str, Path]) -> list[str]:
    """One line per model: its training metadata (top-4 recall on the held-out grids)."""
    import onnx

    from onnxsplit.emit import metadata

    lines = []
    for kind, path in paths.items():
        meta = metadata(onnx.load(str(path)))
        train = json.loads(meta.get("onnxsplit.train", "{}"))
        test = train.get("test_accuracy", float("nan"))
        lines.append(
            f"{kind} CNN (`{path.name}`): top-4 recall {test:.4f} "
            f"on the 500 held-out test grids, {train.get('train_accuracy', float('nan')):.4f} on "
            f"the 3000 training grids ({train.get('epochs')} epochs, seed {train.get('seed')})"
        )
    return lines


SELF_CERTIFIED = """\
### What is certified (docs/certified.md)

Only a difference-of-monotone model's maps come with a proof. Where g and h are monotone and
convex in the doubled input (a DC-trained model, or the raw split of a shallow ReLU net), one
backward pass gives per-feature bounds D_k and U_k such that deleting any set S of features
towards the reference moves f_k by at least −D_k(S) and at most +U_k(S); `onnxsplit certify`
reports the largest deletion certified to keep the prediction (property test: 212,184 bound
checks over 520 models, 0 violations). The DC MLP trained with the margin objective keeps its
class provably for 97.5 % of the test digits when their 50 % lowest-D pixels are deleted (0.8 %
for the plain DC MLP), at −0.5 points of accuracy (98.6 → 98.1 %); the DC CNN reaches 9 % at
−3.4 points. Post-hoc maps of an unconstrained network (Grad-CAM, LRP, SplitLRP on the
normalized split) certify nothing: no value of theirs bounds the change of f under a deletion;
on the raw split of the digits CNN the bound holds but is vacuous (median slack ≈ 1.2e3 logit
units against logits ≈ 7).
"""


SELF_READING = """\
**Why the models are trained on the grids.** Both CNNs are fully convolutional with global
average pooling, so they would accept a 16×16 grid after training on single 8×8 digits, but
there a 4-digit grid is out of their domain (docs/training.md: the 8×8-trained DC CNN's top-1 on
a grid is one of the grid's classes for only 46.5 % of the grids, the unconstrained CNN's for
73.5 %), and a pointing score would mix the quality of the maps with the failure to transfer.
Trained on the grids (multi-label: which four digits the grid holds, a sigmoid per class), each
model explains the logit of a class it has learned to detect anywhere in a grid, on held-out
test digits. The post-hoc methods run on the unconstrained CNN, the stronger classifier (top-4
recall 0.99 against 0.88). `pixel_flipping_norm` and `region_perturbation_norm` divide the
deletion curves by the spread σ of each model's logits so that the two models can be compared;
`faithfulness_correlation` is a correlation and needs no rescaling; each model has its own
`random` row as its chance level.

**Explaining itself against being explained (seed 0, 400 tiles, paired per tile).** Post hoc
on the *same* DC model, the model's own maps (`self`, `selfcam`) win 4 of the 9 metrics and lose
5 against the best of gradient × input, LRP-ε+ and SplitLRP. SplitLRP on the DC model points into
the right tile more often (0.98 against 0.90 for the own g − h map) and puts more of its positive
mass there (0.74 against 0.70 for the own CAM). The own maps rank the tile's pixels better
(relevance_rank_accuracy 0.59 against 0.35, top_k_intersection 0.82 against 0.71) and are more
stable under noise (max_sensitivity 0.76 against 0.98). Faithfulness is split: gradient × input
correlates better with deletions (0.49 against 0.19), the own CAM's pixel-flipping curve falls
faster (1.24 σ against 1.95 σ) and its region curve slower. So a built-in explanation is not
better than a good post-hoc method on the same network, it is different: sharper inside the
object, less often on it. Grad-CAM cannot be asked on the DC model: g and h share no layer, so
no single layer lies on every path to f = g − h, and its maps at the default layer are zero.

**Against the unconstrained network: the DC model's own maps lose to its best post-hoc method
on every metric.** Much of that gap is the model, not the explanation: SplitLRP itself, applied
to the DC model, is also behind SplitLRP on the unconstrained model (attribution_localisation
0.74 against 0.96), and the DC model is the weaker classifier (top-4 recall 0.88 against 0.99).

- *Localisation.* The own g − h map points into the right tile for 90 % of the tiles (chance
  25 %; the 8×8-trained DC model of docs/training.md reached 37 % on the 16×16 grids), but every
  post-hoc method on the unconstrained CNN points at least as well (0.94–1.00). Grad-CAM,
  LayerCAM, SplitCAM, SplitLRP and SplitGrad point right for every tile. Grad-CAM, SplitCAM,
  SplitLRP, SplitGrad and LRP-ε+ also put 0.87–0.96 of the positive mass into the tile, against
  0.65–0.70 for the own maps. The own maps rank the tile's pixels (relevance_rank_accuracy 0.59)
  better than the gradient-type maps (0.28–0.39) but worse than the CAMs (0.94–0.96).
- *g and h separately.* The h maps (evidence against the class) are at chance for
  localisation. g alone localises less well than g − h: a part that g and h share (they are not
  unique, docs/training.md) spreads over all four tiles and cancels only in the difference.
- *Faithfulness.* The own map has a faithfulness correlation of 0.19, below every post-hoc map
  (0.32–0.59) and below gradient × input on the DC model itself (0.49). Part of this is the
  baseline: the metrics delete pixels to black (0), and gradient × x is the first-order
  prediction of that change. The own map is gradient × (x − c) with c = 0.5, the prediction of
  a move to grey, and it gives background pixels, which deletion leaves unchanged, a relevance
  of −0.5·∂f. The deletion curves mostly measure the model here. On the DC model even the
  random map's curve *rises* (pixel_flipping_norm +3.1 σ): its logits on an emptied grid are far
  outside their range on grids (on an all-black input one logit is 188, against 4.9 on average
  for a present class). Within the DC model the own maps still delete better than its random
  control (region_perturbation_norm −1.8 and −1.7 against −2.6). On the unconstrained CNN every
  curve falls, the random one included (+0.81).
- *Robustness.* The own maps change more under input noise (max_sensitivity 0.76 for the own
  CAM, 1.13 for g − h) than the CAM-type maps of the unconstrained CNN (0.10–0.15). They are
  about as sensitive as its gradient-type maps (0.78–0.96).

In short, the model's built-in explanation localises far above chance without any attribution
method. On these grids it is neither as precise nor as faithful as the best post-hoc methods on
an unconstrained network of the same architecture, and the DC model is also the weaker
classifier."""


def _self_runs(args, methods: list[str], cheap: dict) -> str:
    """Train (when absent) and evaluate the DC and the unconstrained digit-grid CNNs, or load
    their runs; the markdown section comparing them."""
    from onnxsplit.eval.harness import evaluate

    relu_methods = [m for m in methods if not m.startswith("self")]
    paths = {kind: self_model_path(args.work_dir, kind) for kind in ("dc", "relu")}
    runs = {}
    commands = self_commands(args.work_dir, relu_methods)
    for kind, chosen in (("dc", SELF_DC_METHODS), ("relu", relu_methods)):
        path = paths[kind]
        folder = args.work_dir / f"{path.stem}-{SELF_DATA}"
        if args.render_only or (args.reuse_existing and (folder / "meta.json").is_file()):
            runs[kind] = load_result(folder)
            continue
        if not path.is_file():  # the same call as `onnxsplit train` (self_commands)
            from onnxsplit.train.trainer import train

            path.parent.mkdir(parents=True, exist_ok=True)
            train(arch="cnn", data=SELF_DATA, kind=kind, seed=args.seed, out=path)
        started = time.perf_counter()

        def progress(step, total, message, name=path.stem, started=started):
            elapsed = time.perf_counter() - started
            print(f"[{name} {step}/{total} {elapsed:6.0f}s] {message}", file=sys.stderr, flush=True)

        runs[kind] = evaluate(
            path,
            chosen,
            SELF_METRICS,
            SELF_DATA,
            folder,
            seed=args.seed,
            batch_size=SELF_BATCH,
            limit=16 if args.quick else args.self_limit,
            device=args.device,
            progress=progress,
            engine=args.engine,
            address=args.address,
            workers=args.workers,
            command=commands[2 if kind == "dc" else 3],
            **cheap,
        )
    body = self_explaining_section(
        runs["dc"],
        runs["relu"],
        {"lines": self_model_info(paths)},
        commands + ["python -m onnxsplit.eval.report"],
    )
    return "\n".join(
        [
            "## Self-explaining models (issue 5)",
            "",
            "A DC CNN trained as f = g − h with monotone g and h (`onnxsplit train --kind dc`, "
            "docs/training.md) explains itself by its own branches; here its own maps meet the "
            "post-hoc methods of the unconstrained CNN trained by the same command (`--kind "
            "relu`) on the digit-grid pointing game (`digits-grid`: 2×2 grids of held-out "
            "test digits, one sample per tile, the tile as the mask).",
            "",
            body,
            "",
            "### Reading",
            "",
            SELF_READING,
            "",
            SELF_CERTIFIED,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    from onnxsplit.attribution.methods import METHODS
    from onnxsplit.eval.harness import evaluate

    parser = argparse.ArgumentParser(prog="python -m onnxsplit.eval.report", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"))
    parser.add_argument("--work-dir", type=Path, default=Path("benchmarks/eval_results"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--limit", type=int, default=128, help="EfficientNet samples")
    parser.add_argument("--fer-limit", type=int, default=128, help="FER face-grid samples")
    parser.add_argument("--skip-fer", action="store_true")
    parser.add_argument("--engine", choices=["local", "ray"], default="local")
    parser.add_argument("--address", default=None, help="Ray cluster (--engine ray)")
    parser.add_argument("--workers", type=int, default=None, help="Ray actors")
    parser.add_argument("--digits-limit", type=int, default=128, help="digit samples")
    parser.add_argument("--metrics", nargs="+", default=["default"])
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--skip-efficientnet", action="store_true")
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--skip-448", action="store_true")
    parser.add_argument(
        "--limit-448", type=int, default=16, help="samples of the 448 px localisation run"
    )
    parser.add_argument("--skip-self", action="store_true", help="no self-explaining section")
    parser.add_argument(
        "--self-limit", type=int, default=400, help="samples (tiles) of the digits-grid runs"
    )
    parser.add_argument(
        "--reuse-existing",
        action="store_true",
        help="load every run whose folder is already in --work-dir, evaluate the others",
    )
    parser.add_argument("--quick", action="store_true", help="few samples, cheap settings")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rebuild docs from the runs already in --work-dir (no evaluation)",
    )
    args = parser.parse_args(argv)

    methods = args.methods or [*(n for n, m in METHODS.items() if m.saliency), "random"]
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
    if not args.skip_fer:
        limit = 8 if args.quick else args.fer_limit
        runs.append(("fer_mini_xception", "face-grid", limit, args.metrics))
    results = []
    for model, data, limit, metrics in runs:
        name = Path(str(model)).stem
        folder = args.work_dir / f"{name}-{data}"
        if args.render_only or (args.reuse_existing and (folder / "meta.json").is_file()):
            results.append(load_result(folder))
            continue
        started = time.perf_counter()

        def progress(step, total, message, name=name, started=started):
            elapsed = time.perf_counter() - started
            print(f"[{name} {step}/{total} {elapsed:6.0f}s] {message}", file=sys.stderr, flush=True)

        command = (
            f"onnxsplit evaluate --model {model} --data {data} --limit {limit} --methods "
            f"{','.join(methods)} --metrics {','.join(metrics)} --seed {args.seed} --out {folder}"
            + (f" --engine {args.engine}" if args.engine != "local" else "")
        )
        results.append(
            evaluate(
                model,
                methods,
                metrics,
                data,
                folder,
                seed=args.seed,
                limit=limit,
                device=args.device,
                progress=progress,
                engine=args.engine,
                address=args.address,
                workers=args.workers,
                command=command,
                **cheap,
            )
        )
    section = None
    if not args.skip_self:
        section = _self_runs(args, methods, cheap)
    figure = args.out.with_name(args.out.stem + "_ranks.png")
    plot_ranks(results, figure)
    given = list(argv) if argv is not None else sys.argv[1:]
    given = [a for a in given if a not in ("--render-only", "--reuse-existing")]
    command = " ".join(["python -m onnxsplit.eval.report", *given])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = docs_markdown(results, command, figure.name)
    if section is not None:
        text = text.rstrip() + "\n\n" + section.rstrip() + "\n"
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} and {figure}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

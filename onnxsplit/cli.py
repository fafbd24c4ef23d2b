"""The `onnxsplit` command line."""

from __future__ import annotations

import functools
import shlex
import sys
from pathlib import Path

import click
import numpy as np

from onnxsplit.errors import OnnxSplitError


def device_option(help: str | None = None):
    """--device auto|cpu|cuda (onnxsplit.runtime.DEVICES)."""
    choices = ["auto", "cpu", "cuda"]
    return click.option(
        "--device", type=click.Choice(choices), default="auto", show_default=True, help=help
    )


def engine_options(command):
    """--engine local|ray, --address and --workers, the same in explain and evaluate."""
    command = click.option(
        "--workers",
        default=None,
        type=click.IntRange(min=1),
        help="Ray actors (default: one per GPU of the cluster, else one per CPU).",
    )(command)
    command = click.option(
        "--address",
        default=None,
        help="The Ray cluster to join (auto, or HOST:PORT of its head); default: a new local one.",
    )(command)
    return click.option(
        "--engine",
        type=click.Choice(["local", "ray"]),
        default="local",
        show_default=True,
        help="local: this process; ray: actors on a Ray cluster (pip install "
        "'onnxsplit[ray]', docs/evaluate.md).",
    )(command)


def _report(exc: OnnxSplitError):
    click.echo(f"error: {exc}", err=True)
    sys.exit(exc.exit_code)


def user_errors(command):
    """Print an OnnxSplitError as one message (no traceback) and exit non-zero."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except OnnxSplitError as exc:
            _report(exc)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing was written", err=True)
            sys.exit(130)

    return wrapper


def _compiled_method(name: str) -> None:
    """A method attach_methods compiles (onnxsplit.attribution.methods.METHODS)."""
    from onnxsplit.attribution.methods import METHODS

    if name not in METHODS:
        raise OnnxSplitError(f"unknown method '{name}'; choose from {', '.join(METHODS)}")


def _explained_method(name: str) -> None:
    """A compiled method, or a map of a model trained by `onnxsplit train --kind dc`."""
    from onnxsplit.attribution.methods import METHODS
    from onnxsplit.train.explain import MAPS

    own = [m.removeprefix("map_") for m in MAPS]
    if name not in METHODS and name not in own:
        raise OnnxSplitError(
            f"unknown method '{name}'; choose from {', '.join(METHODS)} (or, for a model "
            f"trained by `onnxsplit train --kind dc`, its own maps {', '.join(own)})"
        )


def _evaluated_method(name: str) -> None:
    """What `evaluate` scores: methods, map variants and controls (eval.onnxmodel)."""
    from onnxsplit.eval.onnxmodel import check_method

    check_method(name)


def methods_option(default: tuple[str, ...] = (), check=_compiled_method, help: str = ""):
    """--method/--methods M1,M2, the same in every command that takes methods: a comma list,
    repeatable (`--method a,b --method c`), duplicates dropped keeping the order; an unknown
    name is one `error:` line that lists the valid ones. The value is a tuple of names (the
    default when the option is not given)."""

    def parse(ctx, param, value) -> tuple[str, ...]:
        from onnxsplit.attribution.methods import method_list

        given = tuple(value or ())
        names = tuple(method_list(given))
        try:
            if given and not names:
                raise OnnxSplitError(
                    "--method needs at least one method name (see `onnxsplit methods`)"
                )
            for name in names:
                check(name)
        except OnnxSplitError as exc:
            _report(exc)
        return names

    shown = f" [default: {','.join(default)}]" if default else ""
    return click.option(
        "--method",
        "--methods",
        "methods",
        multiple=True,
        default=default,
        metavar="M1,M2",
        callback=parse,
        help=help
        + " A comma list; repeatable; --method and --methods are the same option."
        + shown,
    )


@click.group()
@click.version_option(package_name="onnxsplit")
def main() -> None:
    """Compile ReLU ONNX models into exact DC-split graphs f = g - h."""


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "output_path",
    type=click.Path(path_type=Path),
    help="Where to write the split model (default: MODEL.split.onnx).",
)
@click.option(
    "--mode",
    type=click.Choice(["normalized", "raw"]),
    default="normalized",
    show_default=True,
    help="normalized: re-centered, bounded streams; raw: the globally monotone "
    "and convex split (for verification; overflows on deep models).",
)
@click.option("--input", "input_name", help="Name of the data input (models with several).")
@click.option(
    "--output-name",
    "output_name",
    help="Name of the output to explain (models with several outputs).",
)
@click.option(
    "--expose",
    multiple=True,
    metavar="TENSOR",
    help="Also output the two streams at this intermediate tensor (repeatable).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--no-probe", is_flag=True, help="Skip the exactness probe on a random input.")
@device_option("Execution provider for the probe.")
@methods_option(
    help="Write an attribution-ready model instead (default MODEL.explain.onnx): logits and "
    "map_<method> per method (see `onnxsplit methods`).",
)
@click.option("--target-layer", default=None, metavar="TENSOR", help="CAM layer (--methods).")
@click.option(
    "--maps-only",
    is_flag=True,
    help="With --methods: only logits and map_<method> (no component maps; SplitLRP then "
    "needs one relevance pass instead of two).",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float64"]),
    default="float32",
    show_default=True,
    help="float64: the raw split computed in float64 (where float32 loses f = g - h); "
    "input and logits stay float32, g and h are float64. With --mode raw.",
)
@user_errors
def convert(
    model,
    output_path,
    mode,
    input_name,
    output_name,
    expose,
    force,
    no_probe,
    device,
    methods,
    target_layer,
    maps_only,
    dtype,
):
    """Write the split model of MODEL: outputs logits, g and h with logits = g - h.

    With --methods: the attribution-ready model (logits + one saliency map per method)."""
    from onnxsplit.convert import convert as run_convert
    from onnxsplit.convert import convert_with_methods
    from onnxsplit.memory import return_large_blocks_to_os

    return_large_blocks_to_os()
    if methods or target_layer or maps_only:
        if not methods:
            raise OnnxSplitError("--target-layer and --maps-only need --methods M1,M2")
        if mode != "normalized" or expose or dtype != "float32":
            raise OnnxSplitError(
                "--methods cannot be combined with --mode raw, --expose or --dtype float64 "
                "(`onnxsplit certify --dtype float64` compiles a float64 certificate)"
            )
        summary = convert_with_methods(
            model,
            output_path,
            list(methods),
            target_layer=target_layer,
            input_name=input_name,
            output_name=output_name,
            force=force,
            probe=not no_probe,
            device=device,
            components=not maps_only,
        )
        click.echo(summary)
        return
    result = run_convert(
        model,
        output_path,
        mode=mode,
        input_name=input_name,
        output_name=output_name,
        expose=tuple(expose),
        force=force,
        probe=not no_probe,
        device=device,
        dtype=dtype,
    )
    click.echo(result.summary())


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@user_errors
def inspect(model):
    """Show MODEL's ops, which are supported, its input layout and candidate target layers."""
    from onnxsplit.inspect_model import inspect as run_inspect
    from onnxsplit.load import load_model

    click.echo(run_inspect(load_model(model)).report())


@main.command()
@click.option("--markdown", is_flag=True, help="Print a markdown table (as in docs/split.md).")
def ops(markdown):
    """List the supported ops (generated from the rule registry)."""
    from onnxsplit.split import RULES

    if markdown:
        click.echo("| op_type | kind | rule |\n|---|---|---|")
    else:
        click.echo(f"{'op_type':<20} {'kind':<10} rule")
    for op_type in sorted(RULES):
        entry = RULES[op_type]
        if markdown:
            click.echo(f"| {op_type} | {entry.kind.value} | {entry.summary.replace('|', '/')} |")
        else:
            click.echo(f"{op_type:<20} {entry.kind.value:<10} {entry.summary}")


@main.command()
@click.argument("model")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@methods_option(
    ("splitcam",),
    _explained_method,
    help="Attribution methods (see `onnxsplit methods`), compiled into one model and run in "
    "one inference per batch.",
)
@click.option(
    "--target",
    default="auto",
    show_default=True,
    help="Class index to explain, or 'auto' (or -1) for the predicted class.",
)
@click.option("--target-layer", default=None, metavar="TENSOR", help="CAM layer.")
@click.option("--input", "input_name", help="Name of the data input (models with several).")
@click.option(
    "--output-name",
    "output_name",
    help="Name of the output to explain (models with several outputs).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("explanations"),
    show_default=True,
)
@click.option("--batch-size", default=8, show_default=True, type=int)
@device_option()
@click.option(
    "--preprocess",
    "preprocess_spec",
    default=None,
    help="Preset (imagenet, efficientnet-lite, unit, none, digits), a JSON object "
    "or a JSON file with scale/mean/std/color/resize/quantize (an export-web preprocess.json "
    "works). Default: the one stored in the model (zoo models), else imagenet.",
)
@click.option(
    "--labels",
    "labels_path",
    type=click.Path(path_type=Path),
    help="Class names, one per class: text file (one per line) or JSON (list, or object "
    "index -> name). Default: the names stored in the model (zoo models), or the ImageNet-1k "
    "names for a 1000-class head.",
)
@click.option(
    "--report",
    is_flag=True,
    help="Also write report.html: one offline page, a gallery of inputs x methods with the "
    "top-5 classes per input.",
)
@click.option(
    "--figures/--no-figures",
    default=True,
    show_default=True,
    help="Write <input>_figure.png per input (photo, every map, for/against maps).",
)
@click.option(
    "--maps-only",
    is_flag=True,
    help="Only the methods' maps: no for/against component maps (SplitLRP and SplitGrad "
    "then need one backward pass instead of two).",
)
@engine_options
@user_errors
def explain(
    model,
    inputs,
    methods,
    target,
    target_layer,
    input_name,
    output_name,
    out_dir,
    batch_size,
    device,
    preprocess_spec,
    labels_path,
    report,
    figures,
    maps_only,
    engine,
    address,
    workers,
):
    """Write saliency maps of MODEL (an .onnx file or a zoo model such as efficientnet_lite0)
    for images, folders or .npy arrays (INPUTS): per input and method <input>_<method>.png
    (the map over the photo) and .npy, per input <input>_figure.png, summary.csv/json, and
    report.html with --report."""
    from onnxsplit.explain.inputs import collect
    from onnxsplit.explain.preprocess import get_preprocess
    from onnxsplit.explain.runner import explain as run_explain
    from onnxsplit.progress import bar

    if target == "auto":
        target_index = None
    else:
        try:
            target_index = int(target)
        except ValueError:
            raise OnnxSplitError(
                f"--target must be a class index or 'auto', not '{target}'"
            ) from None
    pre = get_preprocess(preprocess_spec) if preprocess_spec is not None else None
    total = len(collect(list(inputs)))
    with bar(total, "explaining", "input") as progress:
        run = run_explain(
            model,
            list(inputs),
            list(methods),
            out_dir,
            target=target_index,
            target_layer=target_layer,
            input_name=input_name,
            output_name=output_name,
            batch_size=batch_size,
            device=device,
            preprocess=pre,
            labels=labels_path,
            progress=progress.update,
            components=not maps_only,
            figures=figures,
            report=report,
            warn=lambda message: click.echo(f"warning: {message}", err=True),
            engine=engine,
            address=address,
            workers=workers,
        )
    source = "cache" if run.from_cache else "compiled now"
    click.echo(f"model: {run.model} ({source})")
    click.echo(f"provider: {run.provider}" + (f"   engine: {engine}" if engine != "local" else ""))
    if run.preprocess is not None:
        from onnxsplit.explain.preprocess import describe

        click.echo(f"preprocessing: {describe(run.preprocess)} ({run.preprocess_source})")
    if run.labels_source:
        click.echo(f"class names: {run.labels_source}")
    seen: set[str] = set()
    shown = 0
    for row in run.rows:
        if row["input"] in seen:
            continue
        seen.add(row["input"])
        shown += 1
        if shown > 20:
            continue
        label = f" {row['predicted_label']}" if row["predicted_label"] else ""
        score = f"p {row['probability']:.2f}, " if row["probability"] != "" else ""
        explained = "" if row["target"] == row["predicted"] else f", explained {row['target']}"
        click.echo(
            f"{row['input']}: predicted {row['predicted']}{label} ({score}logit "
            f"{row['logit']:.3f}){explained}"
        )
    if shown > 20:
        click.echo(f"... {shown - 20} more inputs")
    for note in run.notes:
        click.echo(f"note: {note}")
    kept = f" ({run.earlier_rows} rows of earlier runs kept)" if run.earlier_rows else ""
    click.echo(
        f"wrote {len(run.rows)} map(s), {len(run.figures)} figure(s) to {out_dir}; "
        f"summary.csv{kept}"
    )
    if run.report is not None:
        click.echo(f"report: {run.report}")


@main.command("export-web")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder for the bundle (model.onnx, preprocess.json, labels.json).",
)
@methods_option(("splitcam", "gradcam"), help="Methods to compile.")
@click.option(
    "--preset",
    default="efficientnet-lite",
    show_default=True,
    help="Preprocessing preset, JSON object or JSON file.",
)
@click.option("--labels", type=click.Path(path_type=Path), help="Class names file.")
@click.option("--target-layer", default=None, metavar="TENSOR")
@click.option("--input", "input_name", default=None)
@click.option("--output-name", default=None)
@click.option("--no-check", is_flag=True, help="Skip the test run in onnxruntime.")
@click.option("--force", is_flag=True, help="Replace an earlier bundle in --out.")
@click.option("--maps-only", is_flag=True, help="Only logits and map_<method> (no component maps).")
@user_errors
def export_web(
    model,
    out_dir,
    methods,
    preset,
    labels,
    target_layer,
    input_name,
    output_name,
    no_check,
    force,
    maps_only,
):
    """Write what a browser or Node app needs to explain with MODEL (see docs/deploy.md)."""
    from onnxsplit.deploy.web import export_bundle

    folder = export_bundle(
        model,
        out_dir,
        methods=methods,
        preset=preset,
        labels=labels,
        force=force,
        target_layer=target_layer,
        input_name=input_name,
        output_name=output_name,
        check=not no_check,
        maps_only=maps_only,
    )
    click.echo(f"wrote bundle to {folder}")


@main.command()
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Original ONNX model (or a zoo name such as efficientnet_lite0).",
)
@methods_option(
    ("gradcam", "layercam", "splitcam", "lrp_zplus", "gradient"),
    _evaluated_method,
    help="Methods to score (see `onnxsplit methods`; also map variants such as splitcam_pos, "
    "'random' and '<method>@other', docs/evaluate.md).",
)
@click.option(
    "--metrics",
    default="default",
    show_default=True,
    help="Comma-separated metric names or categories, 'default' or 'all'.",
)
@click.option(
    "--data",
    default="grid2",
    show_default=True,
    help="grid2, grid3, quokka, digits, or a dataset folder (docs/evaluate.md).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("evaluation"),
    show_default=True,
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--batch-size", default=8, show_default=True, type=int)
@click.option("--limit", default=None, type=int, help="Use at most this many samples.")
@device_option()
@engine_options
@click.option(
    "--shard-size",
    default=32,
    show_default=True,
    type=int,
    help="Samples per unit of work; each finished unit is kept in OUT/shards.",
)
@user_errors
def evaluate(
    model_path,
    methods,
    metrics,
    data,
    out_dir,
    seed,
    batch_size,
    limit,
    device,
    engine,
    address,
    workers,
    shard_size,
):
    """Score every method with Quantus metrics; write results.csv/.md and ranks.png.

    Each finished shard is kept in OUT/shards: rerunning the same command after Ctrl-C or a
    crash resumes where it stopped."""
    from onnxsplit import extras
    from onnxsplit.progress import bar

    # what the harness and Quantus import, checked before anything runs (one error line)
    extras.require(
        ["torch", "quantus", "pandas", "scipy", "cv2", "skimage", "sklearn", "cachetools"],
        "onnxsplit evaluate",
    )
    try:
        from onnxsplit.eval.harness import evaluate as run_evaluate
    except ImportError as exc:
        found = extras.from_import_error(exc, "onnxsplit evaluate")
        if found is None:
            raise
        raise found from None

    with bar(None, "evaluating", "step") as shown:

        def progress(step: int, total: int, message: str) -> None:
            if shown.total != total:
                shown.reset(total=max(total, 1))
            shown.set_description_str(message[:40], refresh=False)
            shown.update(max(step - shown.n, 0))

        try:
            result = run_evaluate(
                model_path,
                list(methods),
                _names(metrics),
                data,
                out_dir,
                seed=seed,
                batch_size=batch_size,
                limit=limit,
                device=device,
                progress=progress,
                engine=engine,
                address=address,
                workers=workers,
                shard_size=shard_size,
                command=shlex.join(["onnxsplit", *sys.argv[1:]]),
            )
        except ImportError as exc:
            found = extras.from_import_error(exc, "onnxsplit evaluate")
            if found is None:
                raise
            raise found from None
        except KeyboardInterrupt:
            click.echo(
                f"interrupted; the finished shards are kept in {out_dir / 'shards'}: rerun the "
                "same command to resume",
                err=True,
            )
            sys.exit(130)
    click.echo(
        f"provider: {result.provider}   samples: {result.n_samples}   engine: {result.engine} "
        f"({result.workers} worker{'s' * (result.workers > 1)})   {result.seconds:.0f} s"
    )
    click.echo(f"wrote {out_dir / 'results.md'}, results.csv and ranks.png")


@main.command()
@click.option("--arch", type=click.Choice(["mlp", "cnn"]), default="mlp", show_default=True)
@click.option(
    "--data",
    default="digits",
    show_default=True,
    help="digits (8x8 digits), digits-grid (16x16 grids of four digits; multi-label: which "
    "four classes are present), or an image folder FOLDER/<class>/*.png.",
)
@click.option("--epochs", default=None, type=int, help="Default: the architecture's default.")
@click.option(
    "--kind",
    type=click.Choice(["dc", "relu", "monotone"]),
    default="dc",
    show_default=True,
    help="dc: f = g - h with monotone g, h; relu: unconstrained; monotone: one branch.",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--out",
    "out_path",
    type=click.Path(path_type=Path),
    default=Path("model.onnx"),
    show_default=True,
)
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@user_errors
def train(arch, data, epochs, kind, seed, out_path, force):
    """Train a self-explaining difference-of-monotone model (or a baseline) and export ONNX."""
    from onnxsplit.emit import check_destination
    from onnxsplit.train.trainer import train as run_train

    check_destination(out_path, force)
    result = run_train(
        arch=arch,
        data=data,
        epochs=epochs,
        out=out_path,
        kind=kind,
        seed=seed,
        progress=lambda line: click.echo(line, err=True),
    )
    click.echo(
        f"{result.kind} {result.arch}: train accuracy {result.train_accuracy:.4f}, "
        f"test accuracy {result.test_accuracy:.4f} ({result.seconds:.1f} s)"
    )
    click.echo(f"wrote {out_path}")


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


@main.command()
def methods():
    """List the attribution methods that can be compiled into a model."""
    from onnxsplit.attribution.methods import METHODS

    for name, cls in METHODS.items():
        doc = (cls.__doc__ or "").strip().splitlines()
        click.echo(f"{name:<20} {doc[0] if doc else ''}")


@main.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder for the demo's split model (default: the cache, $ONNXSPLIT_CACHE/demo or "
    "~/.cache/onnxsplit/demo; never the current folder).",
)
@device_option()
@user_errors
def demo(out_dir, device):
    """Convert the bundled sample model and run it on the bundled digit image."""
    from onnxsplit.demo import run_demo

    result, report = run_demo(out_dir, device)
    click.echo(result.summary())
    click.echo(report)


@main.command()
@click.argument("original", type=click.Path(path_type=Path))
@click.argument("split", type=click.Path(path_type=Path))
@click.option(
    "--inputs",
    "inputs_path",
    type=click.Path(path_type=Path),
    help=".npy array of inputs (default: seeded random probe inputs).",
)
@click.option(
    "--tolerance",
    default=1e-4,
    show_default=True,
    help="Largest accepted max|Δ| / max|f| of the logits.",
)
@user_errors
def verify(original, split, inputs_path, tolerance):
    """Check SPLIT against ORIGINAL: exactness, magnitudes; raw mode: monotone convexity."""
    from onnxsplit.load import load_model
    from onnxsplit.verify import verify as run_verify

    inputs = None
    if inputs_path is not None:
        try:
            inputs = np.load(inputs_path).astype(np.float32)
        except Exception as exc:
            raise OnnxSplitError(f"cannot read inputs '{inputs_path}': {exc}") from None
    report = run_verify(
        load_model(original), load_model(split), inputs, inputs_label=f"inputs '{inputs_path}'"
    )
    click.echo(report.report())
    if not report.passed(tolerance):
        click.echo("verification FAILED", err=True)
        sys.exit(1)
    click.echo("verification passed")


def _add_certify() -> None:
    """`onnxsplit certify` (onnxsplit/certify.py builds the click command; docs/certified.md)."""
    from onnxsplit.certify import command

    main.add_command(command(user_errors))


_add_certify()

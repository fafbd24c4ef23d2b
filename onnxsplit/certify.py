"""`onnxsplit certify`: certified deletion bounds per input, from one pair of maps (D, U).

For the raw split f = g - h (and a model trained as g - h) the compiled `certificate` method
gives, for a class k, D_k and U_k per position (onnxsplit/attribution/certificate.py). For every
set S of positions deleted towards the reference c, fully or partly,

    f_k(x) - D_k(S)  <=  f_k(y)  <=  f_k(x) + U_k(S)          (docs/certified.md)

This module compiles the certificate (float32, or float64 where float32 loses f), runs it for
every class in one batched run, and reports per input:

- the certified interval of the predicted score after deleting the lowest-D fraction 1 - keep;
- the largest deletion it certifies the prediction survives: delete positions in increasing
  D_k while f_k - D_k(S) > max_{j != k} f_j + U_j(S) (both sides widened by the sample's
  measured discrepancy |g - h - f|); the kept positions are a certified sufficient set;
- the share of positions certified irrelevant (D_k = 0: deleting them cannot lower f_k).

Where the guarantee does not hold (no exact split, a non-finite map) it says so in one line and
prints no bound.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from onnxsplit.contract import (
    CERT_DROP,
    CERT_ERROR,
    CERT_RISE,
    LOGITS,
    META_REFERENCE,
    Interface,
    metadata,
)
from onnxsplit.errors import OnnxSplitError

DTYPES = ("auto", "float32", "float64")
# max|g - h - f| / max|f| up to which a sample's split counts as exact (the compiled method's
# CERT_TOLERANCE; kept here so that importing the command line stays light)
TOLERANCE = 1e-4


# -- compiling ------------------------------------------------------------------------------
@dataclass
class Compiled:
    """A certificate model (contract inputs <data>, target; outputs logits, cert_drop,
    cert_rise, certificate_error) and how to feed it."""

    model: onnx.ModelProto
    reference: float | np.ndarray  # in the user's input space
    shifted: bool  # the model's input is x - reference
    dtype: str  # the precision the split computes in
    kind: str  # "raw split" or "dc-trained"
    notes: list[str] = field(default_factory=list)

    def feed(self, x: np.ndarray) -> np.ndarray:
        if not self.shifted:
            return x
        return (x - np.asarray(self.reference, np.float32)).astype(np.float32)


def parse_reference(text: str | None, input_shape: tuple) -> float | np.ndarray | None:
    """--reference: a number, or an .npy array broadcastable to one input without its batch."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    path = Path(text)
    if not path.is_file():
        raise OnnxSplitError(
            f"--reference '{text}' is neither a number nor an .npy file of the input's shape"
        )
    try:
        value = np.load(path, allow_pickle=False).astype(np.float32)
    except Exception as exc:
        raise OnnxSplitError(f"cannot read reference '{path}': {exc}") from None
    single = [d if isinstance(d, int) else 1 for d in input_shape[1:]]
    try:
        np.broadcast_to(value, single)
    except ValueError:
        raise OnnxSplitError(
            f"reference '{path}' has shape {list(value.shape)}; one input is {single}"
        ) from None
    if not np.all(np.isfinite(value)):
        raise OnnxSplitError(f"reference '{path}' contains NaN or infinite values")
    return value


def shift_reference(model: onnx.ModelProto, reference, input_name: str) -> onnx.ModelProto:
    """f(. + c): the model whose input (same name) is the displacement z = x - c, so that the
    raw split's doubled input (relu(z), relu(-z)) = (relu(x - c), relu(c - x))."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inner = f"{input_name}__plus_reference"
    value = np.asarray(reference, np.float32)
    value = value.reshape(1, *value.shape) if value.ndim else value
    for node in graph.node:
        node.input[:] = [inner if t == input_name else t for t in node.input]
    graph.initializer.append(onnx.numpy_helper.from_array(value, f"{input_name}__reference"))
    graph.node.insert(0, helper.make_node("Add", [input_name, f"{input_name}__reference"], [inner]))
    return model


def compile_certificate(
    model: onnx.ModelProto,
    reference: float | np.ndarray | None = None,
    dtype: str = "auto",
    tolerance: float = TOLERANCE,
) -> Compiled:
    """The certificate model of `model` (see `Compiled`).

    A model written by `onnxsplit train --kind dc` is certified by its own branches (reference:
    its center). Any other model by its raw split: dtype 'auto' compiles float32 and falls back
    to float64 when the float32 raw split is not exact on the probe. Refusals are one
    OnnxSplitError line."""
    from onnxsplit.train.explain import is_trained_dc

    if dtype not in DTYPES:
        raise OnnxSplitError(f"--dtype must be one of {', '.join(DTYPES)}, not '{dtype}'")
    if is_trained_dc(model):
        return _compile_trained(model, reference)
    from onnxsplit.attribution.attach import attach_methods
    from onnxsplit.attribution.certificate import Certificate
    from onnxsplit.precision import finish_float64, to_float64

    input_name = _input_name(model)
    c = 0.0 if reference is None else reference
    shifted = bool(np.any(np.asarray(c) != 0))
    source = shift_reference(model, c, input_name) if shifted else model
    recorded = c.tolist() if isinstance(c, np.ndarray) else float(c)
    notes = []
    if dtype in ("auto", "float32"):
        try:
            compiled = attach_methods(
                source,
                [Certificate(tolerance=tolerance, reference=recorded)],
                input_name=input_name,
            )
            return Compiled(compiled, c, shifted, "float32", "raw split", notes)
        except OnnxSplitError as exc:
            if dtype == "float32" or "not exact on a probe" not in str(exc):
                raise
            notes.append("float32 raw split not exact on the probe: compiled in float64")
    compiled = attach_methods(
        to_float64(source),
        [Certificate(tolerance=tolerance, reference=recorded)],
        input_name=input_name,
    )
    meta = metadata(compiled)
    compiled = finish_float64(compiled, meta.get("onnxsplit.input", input_name))
    return Compiled(compiled, c, shifted, "float64", "raw split", notes)


def _input_name(model: onnx.ModelProto) -> str:
    inits = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if len(names) != 1:
        raise OnnxSplitError(
            f"certify needs a model with one data input; this one has {len(names)}: {names}"
        )
    return names[0]


def _compile_trained(model: onnx.ModelProto, reference) -> Compiled:
    """A DC-trained model's own branches: D = map_self_g, U = map_self_h (its logits are g - h
    by construction, so its certificate_error is 0)."""
    from onnxsplit.train.explain import explain_trained

    train = json.loads(metadata(model).get("onnxsplit.train", "{}") or "{}")
    center = float(train.get("center", 0.0))
    if reference is not None and not np.all(np.asarray(reference) == center):
        raise OnnxSplitError(
            f"a DC-trained model certifies deletion towards its own center c = {center:g} (its "
            "branches read relu(x - c), relu(c - x)); drop --reference or give that value"
        )
    compiled = explain_trained(model)
    graph = compiled.graph
    elem = next(o for o in graph.output if o.name == LOGITS).type.tensor_type.elem_type
    shape = next(o for o in graph.output if o.name == "map_self_g").type.tensor_type.shape
    for source, name in (("map_self_g", CERT_DROP), ("map_self_h", CERT_RISE)):
        graph.node.append(helper.make_node("Identity", [source], [name]))
        out = helper.make_tensor_value_info(name, elem, None)
        out.type.tensor_type.shape.CopyFrom(shape)
        graph.output.append(out)
    # [N] zeros: ReduceSum(logits * 0) over the classes (axes as an input from opset 13 on)
    zero = onnx.numpy_helper.from_array(np.zeros((), _np_type(elem)), "certificate/zero")
    axes = onnx.numpy_helper.from_array(np.asarray([1], np.int64), "certificate/axes")
    graph.initializer.extend([zero, axes])
    graph.node.append(helper.make_node("Mul", [LOGITS, zero.name], ["certificate/zeros"]))
    graph.node.append(
        helper.make_node("ReduceSum", ["certificate/zeros", axes.name], [CERT_ERROR], keepdims=0)
    )
    graph.output.append(helper.make_tensor_value_info(CERT_ERROR, elem, None))
    entry = compiled.metadata_props.add()
    entry.key, entry.value = META_REFERENCE, json.dumps(center)
    return Compiled(compiled, center, False, "float32", "dc-trained")


def _np_type(elem: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem))


# -- running --------------------------------------------------------------------------------
@dataclass
class Maps:
    """logits [N, K]; drop, rise [N, K, *map]: D_j and U_j of every class j; error [N]."""

    logits: np.ndarray
    drop: np.ndarray
    rise: np.ndarray
    error: np.ndarray


def run_all_classes(compiled: Compiled, session, x: np.ndarray, chunk: int = 256) -> Maps:
    """D_j, U_j for every class j: the batch repeated once per class (target j), in chunks."""
    iface = Interface.of(compiled.model)
    z = compiled.feed(x)
    (logits,) = iface.run(session, z, None, [LOGITS])
    n, classes = logits.shape
    repeated = np.repeat(z, classes, axis=0)
    targets = np.tile(np.arange(classes, dtype=np.int64), n)
    parts = []
    step = max(1, chunk)
    for start in range(0, len(repeated), step):
        parts.append(
            iface.run(
                session,
                repeated[start : start + step],
                targets[start : start + step],
                [CERT_DROP, CERT_RISE, CERT_ERROR],
            )
        )
    drop, rise, error = (np.concatenate([p[i] for p in parts]) for i in range(3))
    shape = drop.shape[1:]
    return Maps(
        logits.astype(np.float64),
        drop.reshape(n, classes, *shape).astype(np.float64),
        rise.reshape(n, classes, *shape).astype(np.float64),
        error.reshape(n, classes)[:, 0].astype(np.float64),
    )


# -- what one input's maps certify ------------------------------------------------------------
@dataclass
class Verdict:
    name: str
    certified: bool
    reason: str = ""  # why not
    predicted: int = -1
    score: float = float("nan")
    runner_up: int = -1
    runner_up_score: float = float("nan")
    positions: int = 0
    at_reference: int = 0
    irrelevant: int = 0  # D_k = 0
    keep: float = 0.5
    deleted: int = 0  # the lowest-D positions deleted for the interval
    low: float = float("nan")
    high: float = float("nan")
    survives: bool = False  # the prediction is certified to survive that deletion
    margin: float = float("nan")  # f_k - D_k(S) - max_j (f_j + U_j(S)), slack included
    largest_deletion: int = 0  # certified by the greedy in increasing D_k
    slack: float = 0.0  # the measured |g - h - f| added to every bound
    dtype: str = "float32"

    def line(self) -> str:
        if not self.certified:
            return f"{self.name}: no certificate: {self.reason}"
        share = self.irrelevant / self.positions
        keep = self.positions - self.largest_deletion
        survives = (
            f"the prediction survives (margin {self.margin:.3g})"
            if self.survives
            else "the prediction is not certified to survive"
        )
        return (
            f"{self.name}: class {self.predicted} (f = {self.score:.4g}, runner-up "
            f"{self.runner_up}: {self.runner_up_score:.4g}); deleting the {self.deleted} "
            f"lowest-D of {self.positions} positions keeps f_{self.predicted} in "
            f"[{self.low:.4g}, {self.high:.4g}] and {survives}; certified sufficient: "
            f"{keep} of {self.positions} positions (the other {self.largest_deletion} "
            f"deleted); irrelevant (D = 0): {share:.0%} ({self.at_reference} at the reference)"
        )

    def row(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def judge(
    name: str,
    logits: np.ndarray,
    drop: np.ndarray,
    rise: np.ndarray,
    error: float,
    at_reference: np.ndarray,
    keep: float = 0.5,
    tolerance: float = TOLERANCE,
    dtype: str = "float32",
) -> Verdict:
    """What the maps of one input certify (logits [K], drop/rise [K, *map] for every class,
    error: its certificate_error; at_reference: positions where x already equals c)."""
    k = int(np.argmax(logits))
    if not (np.isfinite(error) and error <= tolerance):
        return Verdict(
            name,
            False,
            f"the split is not exact on this input (max|g - h - f| / max|f| = {error:.1e} > "
            f"{tolerance:g}), so no bound is proven",
            dtype=dtype,
        )
    if not (np.all(np.isfinite(drop)) and np.all(np.isfinite(rise))):
        return Verdict(name, False, "a certificate map is not finite", dtype=dtype)
    if np.any(drop < 0) or np.any(rise < 0):  # never for a monotone split; refuse, do not guess
        return Verdict(name, False, "a certificate map is negative (not a monotone split)")
    classes = len(logits)
    d = drop[k].reshape(-1)
    u = rise.reshape(classes, -1)
    n = d.size
    slack = float(error * np.max(np.abs(logits)))
    order = np.argsort(d, kind="stable")
    cum_d = np.concatenate([[0.0], np.cumsum(d[order])])  # D_k of the first m positions
    cum_u = np.concatenate([np.zeros((classes, 1)), np.cumsum(u[:, order], axis=1)], axis=1)
    others = [j for j in range(classes) if j != k]
    lower = logits[k] - cum_d - slack  # [n + 1]
    rival = (
        np.max(logits[others, None] + cum_u[others] + slack, axis=0)
        if others
        else np.full(n + 1, -np.inf)
    )
    holds = lower > rival
    largest = int(np.argmin(holds)) - 1 if not np.all(holds) else n  # first failure - 1
    deleted = int(round((1.0 - keep) * n))
    runner = others[int(np.argmax(logits[others]))] if others else -1
    return Verdict(
        name,
        True,
        predicted=k,
        score=float(logits[k]),
        runner_up=runner,
        runner_up_score=float(logits[runner]) if others else float("nan"),
        positions=n,
        at_reference=int(np.sum(at_reference)),
        irrelevant=int(np.sum(d == 0)),
        keep=keep,
        deleted=deleted,
        low=float(lower[deleted]),
        high=float(logits[k] + cum_u[k, deleted] + slack),
        survives=bool(holds[deleted]),
        margin=float(lower[deleted] - rival[deleted]),
        largest_deletion=max(largest, 0),
        slack=slack,
        dtype=dtype,
    )


# -- the command ------------------------------------------------------------------------------
def load_inputs(paths: list[Path], iface: Interface, preprocess: str | None):
    """(name, x [C, H, W] or the input without batch) per input: .npy arrays (a batch gives one
    input per row) and images (with --preprocess)."""
    from onnxsplit.explain.inputs import iterate

    rank = len(iface.input_shape)
    for item in iterate(paths):
        if item.array is not None:
            array = item.array
            if array.ndim == rank - 1:
                yield item.name, array
            elif array.ndim == rank:
                width = len(str(len(array) - 1))
                for i, row in enumerate(array):
                    yield f"{item.name}_{i:0{width}d}", row
            else:
                raise OnnxSplitError(
                    f"array '{item.source}' has shape {list(array.shape)}; one input of the "
                    f"model is {list(iface.input_shape[1:])}"
                )
            continue
        if preprocess is None:
            raise OnnxSplitError(
                f"image '{item.source}' needs --preprocess (e.g. digits, unit, imagenet); "
                ".npy arrays are fed as they are"
            )
        from onnxsplit.explain.preprocess import get_preprocess, input_layout, to_input

        layout = input_layout(list(iface.input_shape))
        x, _ = to_input(item.image, layout, get_preprocess(preprocess))
        yield item.name, x


def certify(
    model_path: Path,
    inputs: list[Path],
    *,
    reference: str | None = None,
    keep: float = 0.5,
    out_dir: Path | None = None,
    dtype: str = "auto",
    preprocess: str | None = None,
    tolerance: float = TOLERANCE,
    echo=print,
) -> list[Verdict]:
    """Certify every input; write maps, figures and certificate.json/csv into out_dir."""
    from onnxsplit.load import load_model
    from onnxsplit.runtime import make_session

    if not 0.0 <= keep <= 1.0:
        raise OnnxSplitError(f"--keep must be a fraction in [0, 1], not {keep}")
    model = load_model(Path(model_path))
    shape = tuple(
        d.dim_value if d.HasField("dim_value") else None
        for d in model.graph.input[0].type.tensor_type.shape.dim
    )
    compiled = compile_certificate(model, parse_reference(reference, shape), dtype, tolerance)
    for note in compiled.notes:
        echo(note)
    iface = Interface.of(compiled.model)
    items = list(load_inputs(list(inputs), iface, preprocess))
    if not items:
        raise OnnxSplitError("no inputs to certify")
    x = np.stack([iface.check_input(a[None], f"input '{n}'")[0] for n, a in items])
    session = make_session(compiled.model.SerializeToString(), "cpu")
    maps = run_all_classes(compiled, session, x)
    inexact = int(np.sum(~(maps.error <= tolerance)))
    if inexact and dtype == "auto" and compiled.dtype == "float32" and compiled.kind == "raw split":
        echo(f"float32 raw split not exact on {inexact} input(s): compiled in float64")
        compiled = compile_certificate(model, compiled_reference(compiled), "float64", tolerance)
        iface = Interface.of(compiled.model)
        session = make_session(compiled.model.SerializeToString(), "cpu")
        maps = run_all_classes(compiled, session, x)
    ref = np.broadcast_to(np.asarray(compiled.reference, np.float32), x.shape[1:])
    channel = _channel_axis(iface)
    verdicts = []
    for i, (name, _) in enumerate(items):
        same = x[i] == ref
        at_ref = same.all(axis=channel - 1) if channel is not None else same
        verdict = judge(
            name,
            maps.logits[i],
            maps.drop[i],
            maps.rise[i],
            float(maps.error[i]),
            at_ref,
            keep,
            tolerance,
            compiled.dtype,
        )
        verdicts.append(verdict)
        echo(verdict.line())
    if out_dir is not None:
        write_outputs(Path(out_dir), items, x, maps, verdicts, compiled, iface)
        echo(f"wrote {len(items)} certificates to {out_dir}")
    return verdicts


def compiled_reference(compiled: Compiled):
    """The reference as compile_certificate takes it (None for 0)."""
    return None if not compiled.shifted else compiled.reference


def _channel_axis(iface: Interface) -> int | None:
    layout = iface.layout
    if layout.startswith("NC"):
        return 1
    if layout.startswith("N") and layout.endswith("C") and layout != "NC":
        return len(iface.input_shape) - 1
    return None


def write_outputs(out_dir, items, x, maps, verdicts, compiled, iface) -> None:
    from onnxsplit.emit import write_atomic

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OnnxSplitError(f"cannot write into output folder '{out_dir}': {exc}") from None
    rows = []
    for i, ((name, _), verdict) in enumerate(zip(items, verdicts, strict=True)):
        k = int(np.argmax(maps.logits[i]))
        drop, rise = maps.drop[i, k], maps.rise[i, k]
        for label, value in (("cert_drop", drop), ("cert_rise", rise)):
            buffer = io.BytesIO()
            np.save(buffer, value.astype(np.float32))
            write_atomic(buffer.getvalue(), out_dir / f"{name}_{label}.npy")
        write_atomic(figure(x[i], drop, rise, verdict, iface), out_dir / f"{name}_certificate.png")
        rows.append(verdict.row())
    summary = {
        "reference": compiled.reference.tolist()
        if isinstance(compiled.reference, np.ndarray)
        else compiled.reference,
        "kind": compiled.kind,
        "dtype": compiled.dtype,
        "inputs": rows,
    }
    write_atomic(json.dumps(summary, indent=1).encode(), out_dir / "certificate.json")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(text.getvalue().encode(), out_dir / "certificate.csv")


def figure(x, drop, rise, verdict: Verdict, iface: Interface) -> bytes:
    """input | D (Reds) | U (Blues) | the certified sufficient set, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    channel = _channel_axis(iface)
    shown = x if channel is None else np.moveaxis(x, channel - 1, -1)
    if shown.ndim == 1 or drop.ndim != 2:
        side = int(np.ceil(np.sqrt(drop.size)))
        flat = np.zeros(side * side)
        flat[: drop.size] = drop.reshape(-1)
        drop = flat.reshape(side, side)
        rise = np.pad(rise.reshape(-1), (0, side * side - rise.size)).reshape(side, side)
        shown = np.pad(x.reshape(-1), (0, side * side - x.size)).reshape(side, side)
    if shown.ndim == 3:
        shown = shown[..., 0] if shown.shape[-1] == 1 else shown
    panels = 4 if verdict.certified else 3
    fig, axes = plt.subplots(1, panels, figsize=(3 * panels, 3.3), dpi=100)
    span = (shown - shown.min()) / max(float(np.ptp(shown)), 1e-12)
    axes[0].imshow(span, cmap="gray" if span.ndim == 2 else None)
    axes[0].set_title("input", fontsize=9)
    top = max(float(np.max(drop)), float(np.max(rise)), 1e-12)
    for ax, value, cmap, title in (
        (axes[1], drop, "Reds", f"cert_drop D (sum {np.sum(drop):.3g})"),
        (axes[2], rise, "Blues", f"cert_rise U (sum {np.sum(rise):.3g})"),
    ):
        image = ax.imshow(value, cmap=cmap, vmin=0, vmax=top)
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046)
    if verdict.certified:
        order = np.argsort(drop.reshape(-1), kind="stable")
        kept = np.ones(drop.size, bool)
        kept[order[: verdict.largest_deletion]] = False
        gray = span if span.ndim == 2 else span.mean(axis=-1)
        rgb = np.repeat(gray[..., None], 3, axis=-1)
        tint = np.array([0.25, 0.45, 0.95])
        deleted = ~kept.reshape(drop.shape)
        rgb[deleted] = 0.35 * rgb[deleted] + 0.65 * tint
        axes[3].imshow(rgb)
        axes[3].set_title(
            f"certified sufficient: {kept.sum()} of {kept.size} kept\n(blue: deleted)",
            fontsize=9,
        )
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        verdict.line()
        if not verdict.certified
        else f"{verdict.name}: class "
        f"{verdict.predicted}, f in [{verdict.low:.3g}, {verdict.high:.3g}] after "
        f"deleting {verdict.deleted}",
        fontsize=9,
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


# -- the command line (registered at the end of onnxsplit/cli.py) ------------------------------
def command(wrap=lambda f: f):
    """The click command `certify` (wrap: the CLI's one-line error handler)."""
    import click

    @click.command("certify")
    @click.argument("model", type=click.Path(path_type=Path))
    @click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
    @click.option(
        "--reference",
        default=None,
        metavar="C",
        help="Deletion reference: a number or an .npy array of one input's shape "
        "[default: 0; a DC-trained model: its center].",
    )
    @click.option(
        "--keep",
        default=0.5,
        show_default=True,
        type=float,
        help="Fraction of positions kept: the certified interval is for deleting the others "
        "(lowest D first).",
    )
    @click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Write maps here.")
    @click.option(
        "--dtype",
        type=click.Choice(list(DTYPES)),
        default="auto",
        show_default=True,
        help="Precision of the raw split; auto: float64 where float32 is not exact.",
    )
    @click.option("--preprocess", default=None, help="For image inputs (as in explain).")
    @wrap
    def certify_command(model, inputs, reference, keep, out_dir, dtype, preprocess):
        """Certified deletion bounds of MODEL's prediction for INPUTS (.npy arrays or images):
        per input the score interval after deleting the lowest-D positions, the largest
        certified sufficient set and the share of certified-irrelevant positions
        (docs/certified.md)."""
        certify(
            model,
            list(inputs),
            reference=reference,
            keep=keep,
            out_dir=out_dir,
            dtype=dtype,
            preprocess=preprocess,
            echo=click.echo,
        )

    return certify_command


__all__ = [
    "Compiled",
    "Maps",
    "Verdict",
    "certify",
    "command",
    "compile_certificate",
    "judge",
    "run_all_classes",
    "shift_reference",
]

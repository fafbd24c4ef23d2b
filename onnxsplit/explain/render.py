"""Pictures of maps: overlays on the user's photo, one figure per input, arrays, the summary.

The colour scheme of a map is fixed by its method (onnxsplit.explain.schemes): signed maps are
blue-white-red centred at 0, CAMs sequential from 0. Each map is scaled by a robust percentile
(schemes.robust_scale), mapped back from the model's input (the preprocessing's centre crop or
stretch) onto the photo at the photo's own size and aspect, and drawn over a desaturated copy of
the photo with an opacity that grows with |value|: a value of 0 leaves the photo as it is, the
part of the photo the model did not see (outside a centre crop) is dimmed.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from onnxsplit.emit import write_atomic
from onnxsplit.explain.schemes import (
    COMPONENTS,
    Scheme,
    colormap,
    colormap_position,
    component_of,
    display_name,
    lookup,
    normalize,
    robust_scale,
    scheme_for,
)

ALPHA = 0.85  # opacity of a map at full scale
GAMMA = 0.7  # opacity = ALPHA * |v| ** GAMMA: weak evidence stays visible, 0 is transparent
OUTSIDE = 0.45  # brightness of the photo outside the model's crop


# -- where the model's input sits on the photo -------------------------------------------------
@dataclass(frozen=True)
class View:
    """The photo (height, width) and how preprocessing fitted it to the model's input:
    'crop' = the centre square of the shorter side (onnxsplit.explain.preprocess.fit),
    'stretch' = the whole photo."""

    height: int
    width: int
    resize: str = "crop"

    def box(self, height: int | None = None, width: int | None = None) -> tuple[float, ...]:
        """(left, top, right, bottom) of the model's input on the photo shown at
        (height, width) (default: the photo's own size)."""
        height, width = height or self.height, width or self.width
        if self.resize != "crop":
            return 0.0, 0.0, float(width), float(height)
        side = min(self.width, self.height)
        left, top = (self.width - side) // 2, (self.height - side) // 2
        sy, sx = height / self.height, width / self.width
        return left * sx, top * sy, (left + side) * sx, (top + side) * sy


def resize_map(saliency: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of a float map (PIL mode F)."""
    image = Image.fromarray(np.asarray(saliency, np.float32), mode="F")
    return np.asarray(image.resize((max(width, 1), max(height, 1)), Image.BILINEAR), np.float32)


def to_photo(saliency: np.ndarray, view: View, height: int, width: int) -> np.ndarray:
    """The map on the photo shown at (height, width): resized into the model's box, NaN
    outside it."""
    left, top, right, bottom = (int(round(v)) for v in view.box(height, width))
    canvas = np.full((height, width), np.nan, np.float32)
    canvas[top:bottom, left:right] = resize_map(saliency, right - left, bottom - top)
    return canvas


# -- colours -----------------------------------------------------------------------------------
def colorize(saliency: np.ndarray, scheme: Scheme, scale: float | None = None) -> np.ndarray:
    """A bare heat map (RGB uint8): the scheme's colour of map / scale (0 is white for a signed
    map, the scheme's first colour for a sequential one)."""
    scale = robust_scale(saliency, scheme.signed) if scale is None else scale
    values = normalize(saliency, scheme, scale)
    rgb = lookup(scheme, colormap_position(values, scheme))
    rgb[np.isnan(values)] = 1.0
    return np.round(rgb * 255).astype(np.uint8)


def backdrop(photo: np.ndarray) -> np.ndarray:
    """The photo the maps are drawn on: mostly desaturated, so the colours read as the map's."""
    photo = np.asarray(photo, np.float32)
    gray = photo @ np.array([0.299, 0.587, 0.114], np.float32)
    return 0.25 * photo + 0.75 * gray[..., None]


def overlay(photo: np.ndarray, saliency_on_photo: np.ndarray, scheme: Scheme, scale: float):
    """Draw a map (already at the photo's size, NaN = not seen by the model) over the photo:
    colour of the scheme, opacity ALPHA * |v| ** GAMMA; 0 leaves the (desaturated) photo."""
    values = normalize(saliency_on_photo, scheme, scale)
    unseen = np.isnan(values)
    values = np.nan_to_num(values, nan=0.0)
    colour = lookup(scheme, colormap_position(values, scheme)) * 255.0
    alpha = (ALPHA * np.abs(values) ** GAMMA)[..., None]
    base = backdrop(photo)
    base[unseen] *= OUTSIDE
    return np.round(base * (1 - alpha) + colour * alpha).clip(0, 255).astype(np.uint8)


def shown_photo(photo: np.ndarray, max_side: int | None) -> np.ndarray:
    """The photo at most `max_side` pixels on its longer side (aspect kept)."""
    height, width = photo.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return photo
    factor = max_side / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return np.asarray(Image.fromarray(photo).resize(size, Image.LANCZOS))


def draw(
    saliency: np.ndarray,
    name: str,
    scale: float,
    photo: np.ndarray | None = None,
    view: View | None = None,
    max_side: int | None = None,
) -> np.ndarray:
    """The picture of map `name`: over the photo (at its own size, or at most `max_side`) when
    there is one, else a bare heat map (small maps enlarged with nearest neighbours)."""
    scheme = scheme_for(name)
    if photo is None or saliency.ndim != 2:
        heat = colorize(np.atleast_2d(saliency), scheme, scale)
        side = max(heat.shape[:2])
        if max_side and side < max_side:
            factor = max(1, max_side // side)
            heat = np.repeat(np.repeat(heat, factor, axis=0), factor, axis=1)
        return heat
    view = view or View(photo.shape[0], photo.shape[1], "stretch")
    photo = shown_photo(photo, max_side)
    return overlay(photo, to_photo(saliency, view, *photo.shape[:2]), scheme, scale)


# -- one input's result ------------------------------------------------------------------------
@dataclass
class Explained:
    """Everything drawn for one input: its photo (None for .npy inputs), how the model saw it,
    its logits and class names, and the maps (method and component names -> [H, W])."""

    name: str
    source: str
    photo: np.ndarray | None
    view: View | None
    logits: np.ndarray
    target: int
    labels: Sequence[str] | None
    methods: list[str]
    maps: dict[str, np.ndarray]
    notes: list[str] = field(default_factory=list)

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.logits))

    @property
    def probabilities(self) -> np.ndarray | None:
        """Softmax of the logits (None for a single-output head)."""
        if self.logits.size < 2:
            return None
        shifted = np.exp(self.logits.astype(np.float64) - np.max(self.logits))
        return shifted / shifted.sum()

    def label(self, index: int) -> str:
        if self.labels and 0 <= index < len(self.labels):
            return str(self.labels[index])
        return f"class {index}"

    def score(self, index: int) -> str:
        probabilities = self.probabilities
        logit = f"logit {float(self.logits[index]):.2f}"
        if probabilities is None:
            return logit
        return f"p = {probabilities[index]:.2f}, {logit}"

    def top(self, k: int = 5) -> list[tuple[int, str, float | None, float]]:
        """(class, name, probability or None, logit) of the k highest logits."""
        probabilities = self.probabilities
        order = np.argsort(-self.logits, kind="stable")[:k]
        return [
            (
                int(i),
                self.label(int(i)),
                None if probabilities is None else float(probabilities[i]),
                float(self.logits[i]),
            )
            for i in order
        ]

    def components(self, method: str) -> list[str]:
        """The component maps of `method` present for this input ("for" first)."""
        names = [f"{method}_{suffix}" for suffix, _, _ in COMPONENTS.get(method, ())]
        return names if all(n in self.maps for n in names) else []

    def scales(self) -> dict[str, float]:
        """The scale of every map: its own robust percentile (the colour bars show it; the
        "against" map's caption compares the two sides' sums)."""
        names = [n for m in self.methods for n in (m, *self.components(m))]
        return {n: robust_scale(self.maps[n], scheme_for(n).signed) for n in names}

    def share(self, name: str) -> str:
        """For an "against" map: its sum as a share of the "for" map's sum."""
        part = component_of(name)
        if part is None or part[2] != "against":
            return ""
        method = part[0]
        first = self.components(method)[0]
        total = float(np.sum(np.abs(self.maps[first])))
        if total == 0:
            return ""
        ratio = float(np.sum(np.abs(self.maps[name]))) / total
        label = COMPONENTS[method][0][2]
        return f"Σ = {100 * ratio:.0f}% of Σ {label}"


def panel_names(result: Explained) -> list[list[str]]:
    """Per method: [the map, then its "for" and "against" maps when present]."""
    return [[m, *result.components(m)] for m in result.methods]


# -- the figure --------------------------------------------------------------------------------
FIGURE_SIDE = 400  # longest side of a panel's picture in the figure, pixels


def short_label(name: str, limit: int = 28) -> str:
    """A class name for a figure title: the first synonym of an ImageNet-style list."""
    first = name.split(",")[0].strip()
    return first if len(first) <= limit else first[: limit - 1] + "…"


def _format(value: float) -> str:
    return f"{value:.2g}" if 1e-2 <= abs(value) < 1e3 or value == 0 else f"{value:.1e}"


def figure_png(result: Explained, dpi: int = 100) -> bytes:
    """One figure per input: the photo (with the top-5) and one column per method: its map,
    and for split methods the "for" and "against" maps below it; each with the method, the
    class explained, its score and a colour bar. Notes (methods that coincide) at the bottom."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    columns = panel_names(result)
    rows = max(len(c) for c in columns)
    photo = None if result.photo is None else shown_photo(result.photo, FIGURE_SIDE)
    if photo is not None:
        height, width = photo.shape[:2]
    else:
        height, width = np.shape(next(iter(result.maps.values())))[-2:]
    panel_w = 2.7
    panel_h = panel_w * height / max(width, 1) + 1.0
    notes = 0.4 * len(result.notes)
    figure = Figure(
        figsize=(panel_w * (len(columns) + 1), panel_h * rows + notes),
        dpi=dpi,
        layout="constrained",
    )
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(rows, len(columns) + 1)
    scales = result.scales()
    explained = short_label(result.label(result.target))
    predicted = result.predicted

    first = figure.add_subplot(grid[0, 0])
    if photo is not None:
        first.imshow(photo)
        if result.view is not None and result.view.resize == "crop":
            left, top, right, bottom = result.view.box(*photo.shape[:2])
            box = Rectangle((left, top), right - left, bottom - top, fill=False, ls="--", ec="w")
            first.add_patch(box)
    else:
        first.text(0.5, 0.5, "(array input)", ha="center", va="center")
    first.set_xticks([])
    first.set_yticks([])
    title = f"{result.name}\npredicted: {short_label(result.label(predicted))}"
    if result.target != predicted:
        title += f"\nexplained: {explained}"
    first.set_title(title, fontsize=9)
    lines = ["top 5:"] + [
        f"{i:>4} {short_label(n, 20):<20} " + (f"{p:.2f}" if p is not None else f"{z:.2f}")
        for i, n, p, z in result.top(5)
    ]
    if rows > 1:
        text_axis = figure.add_subplot(grid[1, 0])
        text_axis.axis("off")
        text_axis.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=7.5)
    else:
        first.set_xlabel("\n".join(lines), fontsize=7, family="monospace", loc="left")

    for column, names in enumerate(columns, start=1):
        for row, name in enumerate(names):
            axis = figure.add_subplot(grid[row, column])
            scheme = scheme_for(name)
            picture = draw(
                result.maps[name], name, scales[name], result.photo, result.view, FIGURE_SIDE
            )
            axis.imshow(picture, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            heading = display_name(name)
            if row == 0:
                heading += f"\n{explained} ({result.score(result.target)})"
            elif result.share(name):
                heading += f"\n{result.share(name)}"
            axis.set_title(heading, fontsize=8.5)
            low = -scales[name] if scheme.signed else 0.0
            mappable = ScalarMappable(Normalize(low, scales[name]), colormap(scheme))
            bar = figure.colorbar(
                mappable, ax=axis, orientation="horizontal", fraction=0.05, pad=0.02, aspect=30
            )
            ticks = [low, 0.0, scales[name]] if scheme.signed else [0.0, scales[name]]
            bar.set_ticks(ticks)
            bar.set_ticklabels([_format(t) for t in ticks])
            bar.ax.tick_params(labelsize=6.5, length=2, pad=1)
            labels = bar.ax.get_xticklabels()
            labels[0].set_horizontalalignment("left")
            labels[-1].set_horizontalalignment("right")
            side = "against" if scheme.side == "against" else "for"
            bar.set_label(
                "blue against, red for (99.5th pct)" if scheme.signed else f"{side} (99.5th pct)",
                fontsize=6.5,
                labelpad=1,
            )
    if result.notes:
        import textwrap

        width = int(18 * panel_w * (len(columns) + 1))
        text = "\n".join(textwrap.fill("note: " + n, width) for n in result.notes)
        figure.supxlabel(text, fontsize=7.5, x=0.0, ha="left")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


# -- files -------------------------------------------------------------------------------------
def png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(rgb: np.ndarray, quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def write_item(
    out_dir: Path,
    stem: str,
    image: np.ndarray | None,
    saliency: np.ndarray,
    *,
    name: str = "",
    scale: float | None = None,
    view: View | None = None,
    components: dict[str, np.ndarray] | None = None,
) -> None:
    """<stem>.npy (the raw map at the model's resolution), <stem>_<suffix>.npy for each
    component map, and <stem>.png: the map over the photo at the photo's own size."""
    write_atomic(npy_bytes(saliency.astype(np.float32)), out_dir / f"{stem}.npy")
    for suffix, part in (components or {}).items():
        write_atomic(npy_bytes(part.astype(np.float32)), out_dir / f"{stem}_{suffix}.npy")
    if image is not None:
        scheme = scheme_for(name)
        scale = robust_scale(saliency, scheme.signed) if scale is None else scale
        view = view or View(image.shape[0], image.shape[1], "stretch")
        picture = overlay(image, to_photo(saliency, view, *image.shape[:2]), scheme, scale)
        write_atomic(png_bytes(picture), out_dir / f"{stem}.png")


def write_summary(out_dir: Path, rows: list[dict], extra: dict | None = None) -> None:
    """summary.json ({"rows": ..., plus `extra`} when extra is given, else the list of rows)
    and summary.csv: one row per input and method of the run."""
    if not rows:
        return
    payload = rows if extra is None else {"rows": rows, **extra}
    write_atomic(json.dumps(payload, indent=2).encode(), out_dir / "summary.json")
    fields = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(text.getvalue().encode(), out_dir / "summary.csv")

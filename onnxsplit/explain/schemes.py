"""Colour schemes of maps, fixed by the method (never by the data), and robust scaling.

A *signed* map (gradients, LRP, the split maps P - N, R_g - R_h, dg - dh) is drawn with the
diverging blue-white-red scheme centred at 0: red is evidence for the explained class, blue
evidence against, 0 is neutral (white on a bare heat map, the photo itself on an overlay). A
*non-negative* map (Grad-CAM, LayerCAM: a ReLU ends them) is drawn with a sequential scheme that
starts at 0. The split methods' components are drawn as their two sides: the "for" part (SplitCAM
P, SplitLRP R_g) in reds, the "against" part (SplitCAM N, SplitLRP R_h) in blues, on one scale
per pair so that the two can be compared. SplitGrad's components (dg/dx, dh/dx) are signed.

Scaling is robust, as in Captum's `visualize_image_attr` (outlier percentile) and zennit's
`imgify` (symmetric): the scale is the 99.5th percentile of |map| (signed) or of the map
(non-negative), so a few extreme pixels (LRP's speckle) do not wash the rest out; values beyond
it are clipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PERCENTILE = 99.5

# method name -> human name shown on figures and in the report
DISPLAY = {
    "gradient": "Gradient",
    "gradient_x_input": "Gradient × Input",
    "gradcam": "Grad-CAM",
    "layercam": "LayerCAM",
    "lrp_epsilon": "LRP-ε",
    "lrp_zplus": "LRP-z⁺",
    "lrp_epsilon_plus": "LRP-ε⁺ (EpsilonPlus)",
    "splitcam": "SplitCAM (P − N)",
    "splitlrp": "SplitLRP (R_g − R_h)",
    "splitgrad": "SplitGrad (dg − dh)",
    "self": "own map (g − h)",
    "self_g": "own map g",
    "self_h": "own map h",
    "selfcam": "own CAM (g − h)",
    "selfcam_g": "own CAM g",
    "selfcam_h": "own CAM h",
}

# methods whose map is >= 0 by construction (a ReLU ends them): sequential scheme
NON_NEGATIVE = frozenset({"gradcam", "layercam", "self_g", "self_h", "selfcam_g", "selfcam_h"})

# the split methods' "for" and "against" maps: method -> ((suffix, side, label), ...)
COMPONENTS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "splitcam": (("pos", "for", "P"), ("neg", "against", "N")),
    "splitlrp": (("g", "for", "R_g"), ("h", "against", "R_h")),
    "splitgrad": (("g", "for", "dg/dx"), ("h", "against", "dh/dx")),
}
# components that are >= 0 by construction (shares of g_k, h_k); splitgrad's are signed
SIGNED_COMPONENTS = frozenset({"splitgrad_g", "splitgrad_h"})


@dataclass(frozen=True)
class Scheme:
    """How one map is drawn: `signed` (diverging, centred at 0) or not (sequential from 0)."""

    cmap: str
    signed: bool
    side: str = "map"  # map | for | against

    @property
    def description(self) -> str:
        if self.signed:
            return "red = for, blue = against, white/photo = 0"
        if self.side == "against":
            return "evidence against (0 = photo)"
        return "evidence for (0 = photo)"


DIVERGING = "bwr"  # blue - white - red, white exactly at the centre
SEQUENTIAL = "YlOrRd"  # pale yellow -> red, for maps that start at 0 (CAMs)
FOR = "Reds"
AGAINST = "Blues"


def component_of(name: str) -> tuple[str, str, str, str] | None:
    """(method, suffix, side, label) when `name` is a split method's component map."""
    for method, parts in COMPONENTS.items():
        for suffix, side, label in parts:
            if name == f"{method}_{suffix}":
                return method, suffix, side, label
    return None


def scheme_for(name: str) -> Scheme:
    """The scheme of map `name` (a method, or `<method>_<suffix>` for a component): decided by
    the name alone. Unknown names are drawn as signed (a map that turns out >= 0 then shows
    white to red, which is still right)."""
    part = component_of(name)
    if part is not None:
        method, _, side, _ = part
        if name in SIGNED_COMPONENTS:
            return Scheme(DIVERGING, True, side)
        return Scheme(FOR if side == "for" else AGAINST, False, side)
    if name in NON_NEGATIVE:
        return Scheme(SEQUENTIAL, False)
    return Scheme(DIVERGING, True)


def display_name(name: str) -> str:
    part = component_of(name)
    if part is not None:
        method, _, side, label = part
        short = DISPLAY.get(method, method).split(" (")[0]
        return f"{short}: {side} ({label})"
    return DISPLAY.get(name, name)


def robust_scale(saliency: np.ndarray, signed: bool, percentile: float = PERCENTILE) -> float:
    """The value drawn at full colour: the `percentile` of |map| (signed) or of max(map, 0);
    the maximum when that percentile is 0 (a map with fewer non-zero pixels than the tail);
    1.0 for a map of zeros (drawn as all neutral)."""
    values = np.asarray(saliency, np.float64)
    values = values[np.isfinite(values)]
    values = np.abs(values) if signed else np.clip(values, 0, None)
    if values.size == 0:
        return 1.0
    scale = float(np.percentile(values, percentile))
    if scale <= 0:
        scale = float(values.max())
    return scale if scale > 0 else 1.0


def normalize(saliency: np.ndarray, scheme: Scheme, scale: float) -> np.ndarray:
    """Values in [-1, 1] (signed) or [0, 1]: map / scale, clipped; NaN stays NaN."""
    values = np.asarray(saliency, np.float64) / scale
    low = -1.0 if scheme.signed else 0.0
    return np.where(np.isnan(values), np.nan, np.clip(values, low, 1.0))


def colormap_position(values: np.ndarray, scheme: Scheme) -> np.ndarray:
    """Where normalized values sit on the colormap (0..1): 0 -> 0.5 for signed maps."""
    return 0.5 + 0.5 * values if scheme.signed else values


def colormap(scheme: Scheme):
    """The scheme's matplotlib colormap; the diverging one with an odd number of entries, so
    that 0 falls on pure white (matplotlib's 256-entry bwr has no exact centre)."""
    from matplotlib import colormaps
    from matplotlib.colors import LinearSegmentedColormap

    if scheme.cmap == DIVERGING:
        return LinearSegmentedColormap.from_list(
            "onnxsplit_bwr", [(0.0, 0.0, 1.0), (1.0, 1.0, 1.0), (1.0, 0.0, 0.0)], N=257
        )
    return colormaps[scheme.cmap]


def lookup(scheme: Scheme, positions: np.ndarray) -> np.ndarray:
    """RGB floats (..., 3) in [0, 1] of the scheme's colormap at `positions` (0..1)."""
    return colormap(scheme)(np.nan_to_num(positions, nan=0.0))[..., :3]


def gradient_stops(scheme: Scheme, count: int = 11) -> list[str]:
    """CSS colours along the scheme (for an HTML colour bar)."""
    rgb = lookup(scheme, np.linspace(0, 1, count))
    return ["#" + "".join(f"{int(round(c * 255)):02x}" for c in row) for row in rgb]


def coincidences(
    maps: dict[str, list[np.ndarray]], tolerance: float = 1e-4, relu_tolerance: float = 0.02
) -> list[dict]:
    """Pairs of methods whose maps are the same on every input of the run: identical (max
    relative difference at most `tolerance`), or equal once both are passed through a ReLU
    (at most `relu_tolerance`: e.g. SplitCAM and Grad-CAM at a global-average-pool + dense
    head, where SplitCAM = P - N is Grad-CAM before its ReLU; Grad-CAM applies its ReLU before
    the bilinear upsampling to the input size, which differs from after it by up to the
    largest negative value next to a zero crossing, ~1e-2 of the maximum on photos). The
    relative difference is max |a - b| / max(max|a|, max|b|)."""
    names = list(maps)
    found = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            raw = _max_relative(maps[a], maps[b], relu=False)
            if raw <= tolerance:
                found.append({"methods": [a, b], "relation": "identical", "max_rel_diff": raw})
                continue
            rectified = _max_relative(maps[a], maps[b], relu=True)
            if rectified <= relu_tolerance:
                found.append(
                    {"methods": [a, b], "relation": "equal up to ReLU", "max_rel_diff": rectified}
                )
    return found


def _max_relative(first: list[np.ndarray], second: list[np.ndarray], relu: bool) -> float:
    worst = 0.0
    for a, b in zip(first, second, strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            return float("inf")
        if relu:
            a, b = np.clip(a, 0, None), np.clip(b, 0, None)
        top = max(float(np.max(np.abs(a))), float(np.max(np.abs(b))))
        if top == 0:
            continue
        worst = max(worst, float(np.max(np.abs(a - b))) / top)
    return worst


def describe_coincidence(entry: dict) -> str:
    """One sentence about two methods whose maps coincide (see `coincidences`)."""
    a, b = (display_name(m) for m in entry["methods"])
    how = "the same map" if entry["relation"] == "identical" else "the same map up to a ReLU"
    text = f"{a} and {b} are {how} here (max relative difference {entry['max_rel_diff']:.1e})"
    if entry["relation"] != "identical" and {"splitcam", "gradcam"} == set(entry["methods"]):
        text += (
            ": at a global-average-pool + dense head SplitCAM's P − N is Grad-CAM before its "
            "ReLU; only SplitCAM also shows where the evidence is against"
        )
    return text

"""Preprocessing presets: image (RGB uint8) -> model input, in the model's own layout."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from onnxsplit.errors import OnnxSplitError


@dataclass(frozen=True)
class Preprocess:
    """x = (pixel * scale - mean) / std per channel, after resizing to the model's size."""

    name: str
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    color: str = "rgb"  # rgb | bgr | gray
    resize: str = "crop"  # crop: shorter side + centre crop; stretch: to the exact size
    quantize: float | None = None  # round to this step after scaling (digits)
    extra: dict = field(default_factory=dict)


PRESETS = {
    "imagenet": Preprocess("imagenet", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    "efficientnet-lite": Preprocess("efficientnet-lite", scale=1.0, mean=(127.0,), std=(128.0,)),
    "unit": Preprocess("unit"),
    "none": Preprocess("none", scale=1.0),
    "digits": Preprocess(
        "digits", scale=1.0 / 256.0, color="gray", resize="stretch", quantize=1.0 / 16.0
    ),
}


# what a custom preprocessing (JSON object or file) may set, and what it means
KEYS = {
    "scale": "number: x = pixel * scale (default 1/255)",
    "mean": "number or list of per-channel numbers (default 0)",
    "std": "number or list of per-channel numbers (default 1)",
    "color": "'rgb', 'bgr' or 'gray' (default 'rgb')",
    "resize": "'crop' (shorter side, centre crop) or 'stretch' (default 'crop')",
    "quantize": "number or null: round x to this step after scaling (default null)",
}
# the other keys of an export-web bundle's preprocess.json (descriptive; read and ignored)
BUNDLE_KEYS = (
    "format_version", "preset", "input", "dtype", "layout", "channels", "height", "width",
    "size", "interpolation", "gray_weights", "formula",
)  # fmt: skip
EXAMPLE = '{"scale": 0.00392, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}'


def get_preprocess(spec: str) -> Preprocess:
    """A preset name, a JSON object, or the path of a JSON file (keys: `KEYS`; the extra keys
    of an export-web bundle's preprocess.json are accepted and ignored)."""
    if spec in PRESETS:
        return PRESETS[spec]
    text = spec
    if spec.lstrip().startswith("{"):
        source = f"--preprocess JSON '{_short(spec)}'"
    else:
        path = Path(spec)
        if not path.exists():
            raise OnnxSplitError(
                f"unknown preprocessing '{spec}'; use a preset ({', '.join(PRESETS)}), "
                "a JSON object or a JSON file"
            )
        source = f"preprocessing file '{path}'"
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise OnnxSplitError(f"cannot read {source}: {_reason(exc)}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise OnnxSplitError(
            f"{source} is not valid JSON ({exc}); give a preset ({', '.join(PRESETS)}) or a "
            f"JSON object such as {EXAMPLE}"
        ) from None
    if not isinstance(data, dict):
        raise OnnxSplitError(
            f"{source} holds a JSON {type(data).__name__}; it must be a JSON object with the "
            f"keys {', '.join(KEYS)} (e.g. {EXAMPLE})"
        )
    unknown = [k for k in data if k not in KEYS and k not in BUNDLE_KEYS]
    if unknown:
        raise OnnxSplitError(
            f"{source} has unknown key(s) {', '.join(map(repr, unknown))}; the keys are: "
            + "; ".join(f"{k}: {v}" for k, v in KEYS.items())
        )
    return Preprocess(
        name=str(data.get("preset", "custom")) if "format_version" in data else "custom",
        scale=_number(data, "scale", 1 / 255, source),
        mean=_numbers(data, "mean", source),
        std=_numbers(data, "std", source),
        color=_choice(data, "color", ("rgb", "bgr", "gray"), source),
        resize=_choice(data, "resize", ("crop", "stretch"), source),
        quantize=None if data.get("quantize") is None else _number(data, "quantize", 0, source),
    )


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(data: dict, key: str, default: float, source: str) -> float:
    value = data.get(key, default)
    if not _is_number(value):
        raise OnnxSplitError(f"{source}: '{key}' must be {KEYS[key]}, not {json.dumps(value)}")
    return float(value)


def _numbers(data: dict, key: str, source: str) -> tuple[float, ...]:
    value = data.get(key, 0.0 if key == "mean" else 1.0)
    values = value if isinstance(value, list) else [value]
    if not values or not all(_is_number(v) for v in values):
        raise OnnxSplitError(f"{source}: '{key}' must be {KEYS[key]}, not {json.dumps(value)}")
    return tuple(float(v) for v in values)


def _choice(data: dict, key: str, choices: tuple[str, ...], source: str) -> str:
    value = data.get(key, choices[0])
    if value not in choices:
        raise OnnxSplitError(f"{source}: '{key}' must be {KEYS[key]}, not {json.dumps(value)}")
    return value


@dataclass(frozen=True)
class InputLayout:
    layout: str  # NCHW | NHWC
    channels: int
    height: int
    width: int

    def batch_shape(self, n: int) -> tuple[int, ...]:
        if self.layout == "NCHW":
            return (n, self.channels, self.height, self.width)
        return (n, self.height, self.width, self.channels)


def input_layout(shape: list) -> InputLayout:
    """Layout of an image input [N, C, H, W] or [N, H, W, C] with static C, H, W."""
    if len(shape) != 4:
        raise OnnxSplitError(f"the model input has shape {shape}; image explanations need rank 4")
    _, a, b, c = shape
    if isinstance(a, int) and a in (1, 3) and isinstance(b, int) and isinstance(c, int):
        return InputLayout("NCHW", a, b, c)
    if isinstance(c, int) and c in (1, 3) and isinstance(a, int) and isinstance(b, int):
        return InputLayout("NHWC", c, a, b)
    raise OnnxSplitError(
        f"cannot tell the image layout of input shape {shape}: need static [N,C,H,W] or "
        "[N,H,W,C] with C = 1 or 3"
    )


def model_layout(shape: list, recorded: str | None = None) -> InputLayout:
    """The image layout of a model input: the one the compiler recorded (metadata
    onnxsplit.attribution.layout: 'NCHW', 'NHWC', 'flat', ...) when there is one, else the guess
    of `input_layout` from the shape."""
    if not recorded:
        return input_layout(shape)
    static = len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape[1:])
    if recorded in ("NCHW", "NHWC") and static:
        if recorded == "NCHW":
            return InputLayout("NCHW", shape[1], shape[2], shape[3])
        return InputLayout("NHWC", shape[3], shape[1], shape[2])
    raise OnnxSplitError(
        f"the model input has shape {shape} and layout {recorded}; images need a static "
        "[N, C, H, W] (NCHW) or [N, H, W, C] (NHWC) input: give .npy arrays of one input "
        "(without the batch axis) instead"
    )


def fit(image: np.ndarray, height: int, width: int, mode: str) -> np.ndarray:
    """Resize an RGB uint8 image to (height, width): centre crop of the shorter side or stretch."""
    pil = Image.fromarray(image)
    if mode == "crop":
        side = min(pil.width, pil.height)
        left, top = (pil.width - side) // 2, (pil.height - side) // 2
        pil = pil.crop((left, top, left + side, top + side))
    return np.asarray(pil.resize((width, height), Image.BILINEAR), dtype=np.uint8)


def check_channels(pre: Preprocess, channels: int) -> None:
    """mean and std have one value (all channels) or one per channel."""
    for key, values in (("mean", pre.mean), ("std", pre.std)):
        if len(values) not in (1, channels):
            raise OnnxSplitError(
                f"preprocessing '{pre.name}': {key} has {len(values)} values; the model input "
                f"has {channels} channels"
            )


def to_input(
    image: np.ndarray, layout: InputLayout, pre: Preprocess
) -> tuple[np.ndarray, np.ndarray]:
    """(model input without batch axis, the resized RGB image the map is drawn over)."""
    check_channels(pre, layout.channels)
    shown = fit(image, layout.height, layout.width, pre.resize)
    pixels = shown.astype(np.float32)
    if pre.color == "gray" or layout.channels == 1:
        pixels = (pixels @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    elif pre.color == "bgr":
        pixels = pixels[..., ::-1]
    x = pixels * pre.scale
    if pre.quantize:
        x = np.round(x / pre.quantize) * pre.quantize
    with np.errstate(divide="ignore", invalid="ignore"):  # std 0: refused by the run's check
        x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    if x.shape[-1] != layout.channels:
        raise OnnxSplitError(
            f"preprocessing '{pre.name}' gives {x.shape[-1]} channels; the model wants "
            f"{layout.channels}"
        )
    if layout.layout == "NCHW":
        x = np.transpose(x, (2, 0, 1))
    return np.ascontiguousarray(x, dtype=np.float32), shown


# -- preprocessing stored in a model's metadata (contract.META_PREPROCESS) ---------------------
def preprocess_json(pre: Preprocess) -> str:
    """The preprocessing as the JSON object `--preprocess` reads back (plus its name)."""
    return json.dumps(
        {
            "name": pre.name,
            "scale": pre.scale,
            "mean": list(pre.mean),
            "std": list(pre.std),
            "color": pre.color,
            "resize": pre.resize,
            "quantize": pre.quantize,
        }
    )


def stored_preprocess(text: str, source: str = "the model's metadata") -> Preprocess:
    """The Preprocess of a `preprocess_json` string."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise OnnxSplitError(f"{source} holds a preprocessing that is not a JSON object: {text!r}")
    name = str(data.pop("name", "stored"))
    pre = get_preprocess(json.dumps(data))
    return Preprocess(
        name, pre.scale, pre.mean, pre.std, pre.color, pre.resize, pre.quantize, pre.extra
    )


def same_preprocess(a: Preprocess, b: Preprocess, channels: int = 3) -> bool:
    """True when the two give the same model input (names aside)."""

    def spread(values: tuple[float, ...]) -> np.ndarray:
        return np.broadcast_to(np.asarray(values, np.float64), (channels,))

    if (a.color, a.resize) != (b.color, b.resize) or (a.quantize is None) != (b.quantize is None):
        return False
    if a.quantize is not None and not np.isclose(a.quantize, b.quantize):
        return False
    try:
        # x = (p * scale - mean) / std: compare the affine map per channel
        gain_a, gain_b = a.scale / spread(a.std), b.scale / spread(b.std)
        off_a, off_b = spread(a.mean) / spread(a.std), spread(b.mean) / spread(b.std)
    except ValueError:
        return False
    return bool(np.allclose(gain_a, gain_b, rtol=1e-4) and np.allclose(off_a, off_b, atol=1e-4))


def describe(pre: Preprocess) -> str:
    """One line: name and formula."""

    def show(values: tuple[float, ...]) -> str:
        shown = [f"{v:g}" for v in values]
        return shown[0] if len(shown) == 1 else "(" + ", ".join(shown) + ")"

    return (
        f"{pre.name}: x = (pixel * {pre.scale:.6g} - {show(pre.mean)}) / {show(pre.std)}, "
        f"{pre.color}, {'centre crop' if pre.resize == 'crop' else 'stretched'}"
    )

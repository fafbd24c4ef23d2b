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


def get_preprocess(spec: str) -> Preprocess:
    """A preset name, a JSON object, or the path of a JSON file."""
    if spec in PRESETS:
        return PRESETS[spec]
    text = spec
    if not spec.lstrip().startswith("{"):
        path = Path(spec)
        if not path.exists():
            raise OnnxSplitError(
                f"unknown preprocessing '{spec}'; use a preset ({', '.join(PRESETS)}), "
                "a JSON object or a JSON file"
            )
        text = path.read_text()
    try:
        data = json.loads(text)
        return Preprocess(
            name="custom",
            scale=float(data.get("scale", 1 / 255)),
            mean=tuple(data.get("mean", (0.0,))),
            std=tuple(data.get("std", (1.0,))),
            color=data.get("color", "rgb"),
            resize=data.get("resize", "crop"),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise OnnxSplitError(f"invalid preprocessing JSON: {exc}") from None


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


def fit(image: np.ndarray, height: int, width: int, mode: str) -> np.ndarray:
    """Resize an RGB uint8 image to (height, width): centre crop of the shorter side or stretch."""
    pil = Image.fromarray(image)
    if mode == "crop":
        side = min(pil.width, pil.height)
        left, top = (pil.width - side) // 2, (pil.height - side) // 2
        pil = pil.crop((left, top, left + side, top + side))
    return np.asarray(pil.resize((width, height), Image.BILINEAR), dtype=np.uint8)


def to_input(
    image: np.ndarray, layout: InputLayout, pre: Preprocess
) -> tuple[np.ndarray, np.ndarray]:
    """(model input without batch axis, the resized RGB image the map is drawn over)."""
    shown = fit(image, layout.height, layout.width, pre.resize)
    pixels = shown.astype(np.float32)
    if pre.color == "gray" or layout.channels == 1:
        pixels = (pixels @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    elif pre.color == "bgr":
        pixels = pixels[..., ::-1]
    x = pixels * pre.scale
    if pre.quantize:
        x = np.round(x / pre.quantize) * pre.quantize
    x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    if x.shape[-1] != layout.channels:
        raise OnnxSplitError(
            f"preprocessing '{pre.name}' gives {x.shape[-1]} channels; the model wants "
            f"{layout.channels}"
        )
    if layout.layout == "NCHW":
        x = np.transpose(x, (2, 0, 1))
    return np.ascontiguousarray(x, dtype=np.float32), shown

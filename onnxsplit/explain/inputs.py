"""Collect explain inputs (image files, folders, .npy arrays) with one clear error per problem."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from onnxsplit.errors import OnnxSplitError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
MAX_PIXELS = 100_000_000


@dataclass
class Item:
    """One thing to explain: an RGB uint8 image or a ready model-input array."""

    name: str
    source: Path
    image: np.ndarray | None = None  # H x W x 3 uint8
    array: np.ndarray | None = None  # already preprocessed, model layout without batch axis


def collect(paths: list[Path]) -> list[Path]:
    """Expand folders (sorted, images and .npy only); reject missing paths up front."""
    files: list[Path] = []
    for path in paths:
        if not path.exists():
            raise OnnxSplitError(f"input '{path}' does not exist")
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and (p.suffix.lower() in IMAGE_SUFFIXES or p.suffix == ".npy")
            )
            if not found:
                raise OnnxSplitError(f"folder '{path}' contains no images or .npy files")
            files.extend(found)
        else:
            files.append(path)
    return files


def load_image(path: Path) -> np.ndarray:
    """Any readable image as RGB uint8: gray and 16-bit are scaled, alpha is dropped."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our own limit below names the size; opening reads the header
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                raise OnnxSplitError(
                    f"image '{path}' has {image.width}x{image.height} pixels; the limit is "
                    f"{MAX_PIXELS:,} — downscale it first"
                )
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                data = np.asarray(image, dtype=np.float64)
                top = 65535.0 if data.max() > 255 else 255.0
                gray = np.clip(data / top * 255.0, 0, 255).astype(np.uint8)
                return np.repeat(gray[..., None], 3, axis=2)
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except OnnxSplitError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise OnnxSplitError(f"cannot read image '{path}': {exc}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def load_array(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise OnnxSplitError(f"cannot read array '{path}': {exc}") from None
    if array.dtype.kind not in "fiu":
        raise OnnxSplitError(f"array '{path}' has dtype {array.dtype}; a numeric array is needed")
    if array.size == 0:
        raise OnnxSplitError(f"array '{path}' is empty (shape {list(array.shape)})")
    array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise OnnxSplitError(f"array '{path}' contains NaN or infinite values")
    return array


def iterate(paths: list[Path]) -> Iterator[Item]:
    """Items in order; a .npy file of shape [B, ...] yields B items."""
    for path in collect(paths):
        if path.suffix == ".npy":
            array = load_array(path)
            yield Item(path.stem, path, array=array)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            yield Item(path.stem, path, image=load_image(path))
        else:
            raise OnnxSplitError(
                f"input '{path}' is neither an image ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                "nor a .npy array"
            )


LABELS_FORMS = (
    "a text file with one name per line, a JSON list of names, or a JSON object "
    '{"0": name, "1": name, ...}'
)


def read_labels(path: Path) -> list[str]:
    """Class names in logit order from a text file (one per line) or a .json file (a list of
    names, or an object class index -> name covering 0..K-1); one clear error per problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OnnxSplitError(
            f"cannot read labels file '{path}': {getattr(exc, 'strerror', None) or exc}"
        ) from None
    if Path(path).suffix.lower() != ".json":
        return [line.strip() for line in text.splitlines() if line.strip()]
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise OnnxSplitError(
            f"labels file '{path}' is not JSON: {exc}; give {LABELS_FORMS}"
        ) from None
    if isinstance(data, list):
        return [str(name) for name in data]
    if isinstance(data, dict):
        try:
            indices = {int(key): str(name) for key, name in data.items()}
        except ValueError:
            indices = {}
        if sorted(indices) == list(range(len(data))):
            return [indices[i] for i in range(len(data))]
    raise OnnxSplitError(
        f"labels file '{path}' must hold a JSON list of names or an object whose keys are the "
        f"class indices 0..K-1; give {LABELS_FORMS}"
    )


def check_labels(names: list[str], classes: int | None, source: str) -> None:
    """As many names as the model has classes (the class count is unknown: nothing to check)."""
    if classes is not None and len(names) != classes:
        raise OnnxSplitError(
            f"{source} has {len(names)} names; the model has {classes} classes (one name per "
            "class, in logit order)"
        )

"""Write maps: PNG overlay (photo + colour map), raw .npy, and a summary table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from onnxsplit.emit import write_atomic


def colorize(saliency: np.ndarray, signed: bool) -> np.ndarray:
    """RGB uint8 colour map: blue-white-red for signed maps, black-red-yellow for positive ones."""
    from matplotlib import colormaps

    if signed:
        scale = max(float(np.max(np.abs(saliency))), 1e-12)
        values = 0.5 + 0.5 * saliency / scale
        cmap = colormaps["bwr"]
    else:
        low, high = float(np.min(saliency)), float(np.max(saliency))
        values = (saliency - low) / max(high - low, 1e-12)
        cmap = colormaps["inferno"]
    return (cmap(np.clip(values, 0, 1))[..., :3] * 255).astype(np.uint8)


def overlay(image: np.ndarray, saliency: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    signed = bool(np.min(saliency) < 0)
    heat = colorize(saliency, signed)
    if heat.shape[:2] != image.shape[:2]:
        heat = np.asarray(Image.fromarray(heat).resize(image.shape[1::-1], Image.BILINEAR))
    return (alpha * heat + (1 - alpha) * image).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def write_item(out_dir: Path, stem: str, image: np.ndarray | None, saliency: np.ndarray) -> None:
    write_atomic(npy_bytes(saliency.astype(np.float32)), out_dir / f"{stem}.npy")
    if image is not None:
        write_atomic(png_bytes(overlay(image, saliency)), out_dir / f"{stem}.png")


def write_summary(out_dir: Path, rows: list[dict]) -> None:
    if not rows:
        return
    write_atomic(json.dumps(rows, indent=2).encode(), out_dir / "summary.json")
    import io

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(text.getvalue().encode(), out_dir / "summary.csv")

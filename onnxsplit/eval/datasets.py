"""Evaluation datasets: images, object masks and the class to explain.

Built-in names:

* ``grid2`` / ``grid3``: the grid pointing game (:mod:`onnxsplit.eval.grid`): real photos of
  distinct ImageNet classes tiled 2×2 / 3×3, one sample per tile, mask = that tile. The tile
  size is the model's input size divided by the grid (112 px per tile for a 224 px model, 224
  px for a 448 px one), so the grid is fed at its own resolution. ImageNet models only.
* ``quokka``: imgaug's quokka photo with its annotated polygon as mask; the class explained is
  the model's prediction (ImageNet has no quokka class; EfficientNet-Lite0 says "wombat").
* ``digits``: the held-out test digits of the sample digit models (sklearn's 8×8 digits, the
  split of :func:`onnxsplit.zoo.digits.load_digits_split`), target = the true digit, mask = the
  ink (pixel > 0). The digit models take a fixed 8×8 input (Flatten + Gemm head), so grids of
  digits cannot be fed to them.
* ``digits-grid``: the digit-grid pointing game for 16×16 models (those of ``onnxsplit train
  --data digits-grid``): 2×2 grids of four held-out test digits of four distinct classes (the
  grids of :func:`onnxsplit.train.pointing.build_digit_grids`, drawn with ``seed``), one sample
  per tile, target = the true class of the tile, mask = the tile (8×8).
* ``face-grid``: the face pointing game of the FER2013 mini-Xception (``fer_mini_xception``):
  2×2 grids of one LFW face and three LFW non-face patches, target = the model's emotion for
  the face alone, mask = the face's tile; up to 200 grids (:mod:`onnxsplit.eval.faces`).
* a folder ``DIR`` laid out as::

      DIR/images/<name>.png|jpg|jpeg   the images (any size; RGB, gray is stacked)
      DIR/masks/<name>.png             optional: the object mask, non-zero = object
      DIR/labels.csv                   optional: lines "name,target" (a header line is
                                       allowed; target -1 or a missing line = the predicted
                                       class)

  (ImageNet-S has this shape once its class folders are flattened.) Localisation metrics need
  a mask for every sample; without masks they are reported as not applicable.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxsplit.errors import OnnxSplitError

BUILTIN = ("grid2", "grid3", "quokka", "digits", "digits-grid", "face-grid")
DIGIT_GRIDS = 100  # grids of the digits-grid dataset without a limit (400 samples)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class Sample:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray | None  # (H, W) bool, the object / the tile of the class; None = unknown
    target: int  # class to explain; -1 = the model's prediction
    name: str


def load_dataset(
    spec: str | Path,
    *,
    model_name: str = "",
    input_size: tuple[int, int] = (224, 224),
    seed: int = 0,
    limit: int | None = None,
) -> list[Sample]:
    """The samples of a built-in dataset or a folder (see the module docstring).

    ``limit`` keeps that many samples (a seeded choice of grids, the first test digits, a
    seeded subset of a folder); the result is the same for the same arguments.
    """
    text = str(spec)
    if text in ("grid2", "grid3"):
        return _grid(int(text[-1]), model_name, input_size, seed, limit)
    if text == "quokka":
        return _quokka()[: limit if limit is not None else None]
    if text == "digits":
        return _digits(limit)
    if text == "digits-grid":
        return _digit_grids(input_size, seed, limit)
    if text == "face-grid":
        if "fer" not in model_name.lower() or tuple(input_size) != (64, 64):
            raise OnnxSplitError(
                f"face-grid takes its classes from the FER2013 mini-Xception (fer_mini_xception, "
                f"64x64 gray); model '{model_name}' is another"
            )
        from onnxsplit.eval.faces import face_grids

        return face_grids(limit, seed)
    path = Path(spec)
    if path.is_dir():
        return load_folder(path, seed=seed, limit=limit)
    raise OnnxSplitError(
        f"unknown dataset '{spec}': use {', '.join(BUILTIN)} or a folder with images/, "
        "masks/ and labels.csv (see docs/evaluate.md)"
    )


def _grid(grid: int, model_name: str, size: tuple[int, int], seed: int, limit: int | None):
    from onnxsplit.eval.grid import build_grid_dataset

    if "efficientnet_lite0" not in model_name:
        raise OnnxSplitError(
            f"the grid datasets take their classes from EfficientNet-Lite0 (ImageNet); model "
            f"'{model_name}' is not an EfficientNet-Lite0 export"
        )
    if size[0] != size[1] or size[0] % grid:
        raise OnnxSplitError(f"a {grid}x{grid} grid needs a square input, got {size}")
    tile = size[0] // grid
    per_grid = grid * grid
    max_grids = None if limit is None else max(1, math.ceil(limit / per_grid))
    samples = build_grid_dataset("efficientnet_lite0", grid, tile, max_grids=max_grids, seed=seed)
    out = [Sample(s.image, s.mask, int(s.target), s.name) for s in samples]
    return out[:limit] if limit is not None else out


def _quokka() -> list[Sample]:
    from onnxsplit.zoo.photos import load_photo, quokka_mask

    return [Sample(load_photo("quokka"), quokka_mask(), -1, "quokka")]


def _digits(limit: int | None) -> list[Sample]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # the test split of onnxsplit.zoo.digits.load_digits_split(seed=0) (first 20 % shuffled)
    order = np.random.default_rng(0).permutation(len(digits.target))
    test = order[: int(np.ceil(0.2 * len(order)))]
    if limit is not None:
        test = test[:limit]
    samples = []
    for i in test:
        pixels = digits.images[i].astype(np.int64)  # 0..16
        gray = np.minimum(pixels * 16, 255).astype(np.uint8)  # the sample PNGs' encoding
        samples.append(
            Sample(np.stack([gray] * 3, axis=-1), pixels > 0, int(digits.target[i]), f"digit{i}")
        )
    return samples


def _digit_grids(size: tuple[int, int], seed: int, limit: int | None) -> list[Sample]:
    from onnxsplit.train.data import load_digits_dataset
    from onnxsplit.train.pointing import TILE, build_digit_grids, tile_masks

    if tuple(size) != (2 * TILE, 2 * TILE):
        raise OnnxSplitError(
            f"digits-grid needs a model with a {2 * TILE}x{2 * TILE} input (train one with "
            f"`onnxsplit train --data digits-grid`), this one takes {size[0]}x{size[1]}"
        )
    digits = load_digits_dataset()
    n_grids = DIGIT_GRIDS if limit is None else max(1, math.ceil(limit / 4))
    images, classes = build_digit_grids(digits.x_test, digits.y_test, n_grids, seed=seed)
    masks = tile_masks()
    samples = []
    for g, (image, tiles) in enumerate(zip(images, classes, strict=True)):
        # pixel / 16 back to the 0..255 encoding of the sample digit PNGs (the digits preset
        # reads it back exactly: / 256, rounded to 1/16)
        gray = np.minimum(np.rint(image[0] * 256.0), 255).astype(np.uint8)
        rgb = np.stack([gray] * 3, axis=-1)
        for t, target in enumerate(tiles):
            samples.append(Sample(rgb, masks[t], int(target), f"dgrid{g}_t{t}"))
    return samples[:limit] if limit is not None else samples


def read_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        array = np.asarray(im)
    if array.ndim == 3:
        array = array[..., : min(3, array.shape[-1])].max(axis=-1)
    return array != 0


def load_folder(root: Path, seed: int = 0, limit: int | None = None) -> list[Sample]:
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise OnnxSplitError(f"dataset folder '{root}' has no images/ folder")
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise OnnxSplitError(f"'{images_dir}' holds no .png/.jpg images")
    labels = _read_labels(root / "labels.csv")
    if limit is not None and limit < len(files):
        keep = np.sort(np.random.default_rng(seed).choice(len(files), size=limit, replace=False))
        files = [files[i] for i in keep]
    samples = []
    for path in files:
        image = read_image(path)
        mask_path = root / "masks" / f"{path.stem}.png"
        mask = read_mask(mask_path) if mask_path.is_file() else None
        if mask is not None and mask.shape != image.shape[:2]:
            raise OnnxSplitError(
                f"mask '{mask_path}' is {mask.shape}, its image is {image.shape[:2]}"
            )
        samples.append(Sample(image, mask, labels.get(path.stem, -1), path.stem))
    return samples


def _read_labels(path: Path) -> dict[str, int]:
    if not path.is_file():
        return {}
    labels = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.reader(handle):
            if len(row) < 2 or not row[0].strip():
                continue
            name, target = row[0].strip(), row[1].strip()
            try:
                labels[Path(name).stem] = int(target)
            except ValueError:
                if labels:  # only the first line may be a header
                    raise OnnxSplitError(f"{path}: target '{target}' is not an integer") from None
    return labels


def fit_mask(mask: np.ndarray, height: int, width: int, mode: str) -> np.ndarray:
    """A mask resized like its image by onnxsplit.explain.preprocess.fit (crop or stretch)."""
    from onnxsplit.explain.preprocess import fit

    gray = np.where(mask, 255, 0).astype(np.uint8)
    return fit(gray, height, width, mode) >= 128

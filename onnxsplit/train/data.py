"""Training data for `onnxsplit train`: the scikit-learn digits set or an image folder.

Both give a :class:`Dataset` of float32 images ``[N, C, H, W]`` in ``[0, 1]`` and int64 labels.
No torch here: the arrays are numpy.

* ``"digits"``: :func:`onnxsplit.zoo.digits.load_digits_split` semantics (``pixel / 16``, 8x8,
  a fixed seeded permutation, the first 20 % of it is the test set). Re-implemented here so that
  this module does not import torch at module level.
* ``"digits-grid"``: 2x2 grids (16x16) of four digits of four distinct classes, a multi-label
  task (``y`` is multi-hot float32 ``[N, 10]``): 3000 training grids drawn from the training
  digits, 500 test grids from the test digits (:func:`load_digit_grid_dataset`). A network
  trained on it sees the grid pointing game of ``onnxsplit evaluate --data digits-grid`` in
  its own domain.
* a folder ``FOLDER/<class_name>/*.png`` (also .jpg/.jpeg/.bmp/.gif): classes are the
  sub-folder names in sorted order; images are read with PIL, converted to grayscale ("L")
  unless any image has colour (then "RGB"), resized (bilinear) to the size of the most common
  image size, scaled by 1/255. The test set is a seeded 20 % of every class (at least one
  image of each class with two or more images).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onnxsplit.errors import OnnxSplitError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


@dataclass
class Dataset:
    """Images ``[N, C, H, W]`` float32 in [0, 1]; labels int64 ``[N]`` (one class each) or, for
    a multi-label task, multi-hot float32 ``[N, classes]``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str] = field(default_factory=list)
    name: str = ""
    preprocess: str = ""

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def multilabel(self) -> bool:
        return self.y_train.ndim == 2


def load_digits_dataset(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """The 8x8 digits as in :func:`onnxsplit.zoo.digits.load_digits_split` (same split)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - depends on the environment
        raise OnnxSplitError(
            "the digits data set needs scikit-learn (pip install scikit-learn)"
        ) from None
    digits = load_digits()
    x = (digits.images.astype(np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(np.ceil(test_fraction * len(y)))
    test, tr = order[:n_test], order[n_test:]
    return Dataset(
        np.ascontiguousarray(x[tr]),
        np.ascontiguousarray(y[tr]),
        np.ascontiguousarray(x[test]),
        np.ascontiguousarray(y[test]),
        classes=[str(i) for i in range(10)],
        name="digits",
        preprocess="float32 [N, 1, 8, 8] = sklearn digits pixel / 16 (range [0, 1])",
    )


GRID_TRAIN, GRID_TEST = 3000, 500


def load_digit_grid_dataset(n_train: int = GRID_TRAIN, n_test: int = GRID_TEST) -> Dataset:
    """16x16 grids of four 8x8 digits with four distinct classes (row-major tiles), multi-hot
    labels. Training grids use only training digits (draw seed 1), test grids only test
    digits (draw seed 2), so the held-out digits stay held out."""
    from onnxsplit.train.pointing import build_digit_grids

    digits = load_digits_dataset()
    parts = []
    for x, y, n, seed in (
        (digits.x_train, digits.y_train, n_train, 1),
        (digits.x_test, digits.y_test, n_test, 2),
    ):
        images, classes = build_digit_grids(x, y, n, seed=seed)
        hot = np.zeros((n, len(digits.classes)), np.float32)
        np.put_along_axis(hot, classes, 1.0, axis=1)
        parts += [images, hot]
    return Dataset(
        *parts,
        classes=digits.classes,
        name="digits-grid",
        preprocess=(
            "float32 [N, 1, 16, 16]: a 2x2 grid of sklearn digits, pixel / 16 (range [0, 1]); "
            "multi-label (sigmoid per class)"
        ),
    )


def load_folder_dataset(folder: str | Path, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """Images of ``folder/<class_name>/*.png`` (see the module docstring)."""
    from PIL import Image

    root = Path(folder)
    if not root.is_dir():
        raise OnnxSplitError(f"data folder '{root}' does not exist (or pass --data digits)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                files.append((path, label))
    used = sorted({label for _, label in files})
    if len(used) < 2:
        raise OnnxSplitError(
            f"'{root}' must hold at least two class folders with images "
            f"({', '.join(IMAGE_SUFFIXES)}), layout FOLDER/<class_name>/image.png; found "
            f"{len(used)}"
        )
    images = []
    for path, _ in files:
        try:
            with Image.open(path) as im:
                images.append(im.convert("RGBA") if im.mode in ("P", "LA") else im.copy())
        except Exception as exc:
            raise OnnxSplitError(f"cannot read image '{path}': {exc}") from None
    colour = any(_has_colour(im) for im in images)
    mode = "RGB" if colour else "L"
    size = Counter(im.size for im in images).most_common(1)[0][0]
    arrays = []
    for im in images:
        im = im.convert(mode)
        if im.size != size:
            im = im.resize(size, Image.BILINEAR)
        a = np.asarray(im, np.float32) / np.float32(255.0)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    x = np.stack(arrays).astype(np.float32)
    y = np.array([label for _, label in files], np.int64)
    rng = np.random.default_rng(seed)
    test_mask = np.zeros(len(y), bool)
    for label in used:
        idx = np.flatnonzero(y == label)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(test_fraction * len(idx)))
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        else:
            n_test = 0
        test_mask[idx[:n_test]] = True
    train_idx = np.flatnonzero(~test_mask)
    test_idx = np.flatnonzero(test_mask)
    train_idx = train_idx[rng.permutation(len(train_idx))]
    channels = 3 if colour else 1
    return Dataset(
        np.ascontiguousarray(x[train_idx]),
        np.ascontiguousarray(y[train_idx]),
        np.ascontiguousarray(x[test_idx]),
        np.ascontiguousarray(y[test_idx]),
        classes=classes,
        name=str(root),
        preprocess=(
            f"float32 [N, {channels}, {size[1]}, {size[0]}] = PIL {mode} image resized "
            f"(bilinear) to {size[0]}x{size[1]}, pixel / 255 (range [0, 1])"
        ),
    )


def _has_colour(image) -> bool:
    if image.mode in ("L", "1", "I", "I;16", "F"):
        return False
    rgb = np.asarray(image.convert("RGB"), np.int16)
    return bool(np.any(rgb[..., 0] != rgb[..., 1]) or np.any(rgb[..., 1] != rgb[..., 2]))


def load_dataset(data: str | Path, seed: int = 0) -> Dataset:
    """``"digits"``, ``"digits-grid"`` or an image folder; ``seed`` draws the train/test split
    (training uses a fixed split seed 0, so that models trained with different seeds share one
    test set; the grids have fixed draws)."""
    if str(data) == "digits":
        return load_digits_dataset(seed)
    if str(data) == "digits-grid":
        return load_digit_grid_dataset()
    return load_folder_dataset(data, seed)

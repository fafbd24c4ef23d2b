"""What every attribution method compiles against: the input's layout, the default CAM layer,
and `AttributionContext` (the graph being built, the target seed, shared backward passes and
the split graphs merged beside the original)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxsplit.attribution.autodiff import differentiate
from onnxsplit.attribution.splitgraph import (
    MergedSplit,
    build_split,
    can_start_at,
    merge_split_graph,
)
from onnxsplit.canonicalize import Canonical
from onnxsplit.contract import build_target_seed
from onnxsplit.errors import OnnxSplitError
from onnxsplit.ops import CHANNELS_FIRST, RECTIFIERS
from onnxsplit.split.emitter import Emitter

# channels first / last, by the input's rank
CHANNEL_LAYOUTS = {3: ("NCL", "NLC"), 4: ("NCHW", "NHWC"), 5: ("NCDHW", "NDHWC")}


@dataclass(frozen=True)
class Layout:
    """Where the channels of the data input are: channels first ('NCL', 'NCHW', 'NCDHW': axis
    1), channels last ('NLC', 'NHWC', 'NDHWC') or 'flat' (no spatial axes: [N, F])."""

    name: str
    channel_axis: int | None
    spatial_axes: tuple[int, ...]


def detect_layout(graph: gs.Graph, data: gs.Tensor) -> Layout:
    """NHWC when the first Transpose downstream of the input moves the last axis to axis 1 (or,
    with no Transpose before the first Conv, when only the last axis looks like channels)."""
    shape = data.shape
    if shape is None or len(shape) < 3:
        return Layout("flat", None, ())
    rank = len(shape)
    first, last = CHANNEL_LAYOUTS.get(rank, (f"NC+{rank - 2}d", f"N+{rank - 2}dC"))
    nchw = Layout(first, 1, tuple(range(2, rank)))
    nhwc = Layout(last, rank - 1, tuple(range(1, rank - 1)))
    frontier, seen = [data], set()
    while frontier:
        tensor = frontier.pop(0)
        for node in tensor.outputs:
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.op == "Transpose":
                perm = list(node.attrs.get("perm", []))
                return nhwc if len(perm) == rank and perm[1] == rank - 1 else nchw
            if node.op in CHANNELS_FIRST:
                return nchw
            frontier.extend(node.outputs)
    channels = {1, 3, 4}
    if shape[1] not in channels and shape[-1] in channels:
        return nhwc
    return nchw


def cam_candidates(
    graph: gs.Graph, data: gs.Tensor, logits: gs.Tensor | None = None
) -> list[gs.Node]:
    """Rectifier nodes whose output has the input's rank (>= 3: [N, C, L], [N, C, H, W],
    [N, C, D, H, W]; an NHWC image's layers are NCHW inside), in graph order; with `logits`,
    only those between the input and the logits. Empty for inputs without spatial axes."""
    rank = len(data.shape) if data.shape is not None else 4
    if rank < 3:
        return []
    graph.toposort()
    on_path = _descendants(data) & _ancestors(logits) if logits is not None else None
    found = []
    for node in graph.nodes:
        out = node.outputs[0] if node.outputs else None
        if node.op not in RECTIFIERS or out is None or out.shape is None:
            continue
        if len(out.shape) == rank and (on_path is None or out.name in on_path):
            found.append(node)
    return found


def default_target_layer(graph: gs.Graph, data: gs.Tensor, logits: gs.Tensor) -> str:
    """The last of the `cam_candidates` between the input and the logits."""
    rank = len(data.shape) if data.shape is not None else 4
    if rank < 3:
        raise OnnxSplitError(
            "class activation maps need an input with spatial axes ([N, C, L], [N, C, H, W], "
            f"[N, C, D, H, W]); input '{data.name}' has shape {data.shape}"
        )
    candidates = cam_candidates(graph, data, logits)
    if not candidates:
        raise OnnxSplitError(
            f"the model has no rank-{rank} rectifier output for a class activation map; "
            "pass --target-layer NAME (`onnxsplit inspect MODEL` lists candidates)"
        )
    return candidates[-1].outputs[0].name


def _descendants(tensor: gs.Tensor) -> set[str]:
    seen, stack = set(), [tensor]
    while stack:
        t = stack.pop()
        if t.name in seen:
            continue
        seen.add(t.name)
        for node in t.outputs:
            stack.extend(node.outputs)
    return seen


def _ancestors(tensor: gs.Tensor) -> set[str]:
    seen, stack = set(), [tensor]
    while stack:
        t = stack.pop()
        if t.name in seen:
            continue
        seen.add(t.name)
        for node in t.inputs:
            stack.extend(x for x in node.inputs if x.name)
    return seen


class AttributionContext:
    """The graph being built and what the methods share: the one-hot seed of the target, one
    plain backward pass for every requested gradient, and the merged split graph."""

    def __init__(
        self,
        canonical: Canonical,
        data: gs.Tensor,
        logits: gs.Tensor,
        target_layer: str | None = None,
    ):
        self.canonical = canonical
        self.graph = canonical.graph
        self.opset = canonical.opset
        self.data = data
        self.logits = logits
        self.dtype = np.dtype(data.dtype or np.float32)
        self.em = Emitter(self.graph, self.opset, self.dtype)
        self.layout = detect_layout(self.graph, data)
        self._target_layer = target_layer
        self._split_requests: dict[str, set[str]] = {}
        self._splits: dict[str, MergedSplit] = {}
        self._unseeded: set[str] = set()
        self._head_requests: list[tuple[str, str]] = []  # (mode, layer)
        self._heads: dict[tuple[str, str], MergedSplit] = {}
        self._gradients: dict[str, gs.Tensor | None] = {}
        self.target: gs.Variable | None = None
        self.onehot: gs.Variable | None = None
        self.chosen: gs.Variable | None = None  # the class explained, int64 [N]
        self._passes = 0

    # -- set-up phases (called by attach_methods) ---------------------------------------
    @property
    def target_layer(self) -> str:
        if self._target_layer is None:
            self._target_layer = default_target_layer(self.graph, self.data, self.logits)
        tensors = self.graph.tensors()
        if self._target_layer not in tensors:
            raise OnnxSplitError(f"the model has no tensor '{self._target_layer}'")
        return self._target_layer

    def request_split(
        self, layer: str | None, mode: str = "normalized", seeded: bool = True
    ) -> None:
        """Ask for the split graph of `mode`, exposing the streams at `layer` (None: none).

        seeded=False: the method walks the four-term affine nodes of the split graph with its
        own rules (SplitLRP's relevance form, unabsorbed biases), so every affine layer is
        emitted in the four-term form; otherwise the seeded form (one map of the mass per
        layer, the product W (p - q) + b read from the original graph) when every request
        allows it. A backward pass over the split graph must then use the override lists of
        MergedSplit.overrides() / ratio_overrides() (which carry the seeded layers' adjoints,
        `MergedSplit.block_overrides`); with its own rules on affine nodes, pass False."""
        if self.onehot is not None:
            raise RuntimeError("split graphs must be requested before the graph is extended")
        layers = self._split_requests.setdefault(mode, set())
        if layer is not None:
            layers.add(layer)
        if not seeded:
            self._unseeded.add(mode)

    def request_head_split(self, layer: str, mode: str = "normalized") -> bool:
        """Ask for the split graph of `mode` from `layer` on, seeded with the original
        activation A there as (relu(A), relu(-A)) (`head_split`). Where the stabilizer does not
        re-center at `layer` (or a skip connection passes it), ask for the full split graph
        instead (`request_split`) and return False."""
        if self.onehot is not None:
            raise RuntimeError("split graphs must be requested before the graph is extended")
        if (mode, layer) in self._head_requests:
            return True
        if can_start_at(self.canonical, self.data, self.logits, layer, mode):
            self._head_requests.append((mode, layer))
            return True
        self.request_split(layer, mode)
        return False

    def build_splits(self) -> None:
        jobs = [
            (("full", mode), tuple(sorted(layers)), mode, None, None, mode not in self._unseeded)
            for mode, layers in self._split_requests.items()
        ]
        jobs += [
            (("head", mode, layer), (layer,), mode, layer, f"splithead{k or ''}/", False)
            for k, (mode, layer) in enumerate(self._head_requests)
        ]
        args = (self.canonical, self.data, self.logits)
        # compile every split graph before merging any (the compiler reads self.graph)
        built = [
            build_split(*args, layers, mode, start, seeded)
            for _, layers, mode, start, _, seeded in jobs
        ]
        for (key, layers, mode, start, prefix, seeded), split in zip(jobs, built, strict=True):
            merged = merge_split_graph(
                self.graph,
                *args,
                layers,
                mode,
                start=start,
                prefix=prefix,
                seeded=seeded,
                split=split,
                taken=self.em.taken,
            )
            if key[0] == "full":
                self._splits[mode] = merged
            else:
                self._heads[(mode, start)] = merged

    def build_seed(self) -> None:
        """target int64 [N] (-1 = argmax of the logits) -> one-hot rows [N, K]
        (contract.build_target_seed; the input gets its public name when the graph is done)."""
        batch = self.data.shape[0] if self.data.shape else None
        self.target, self.chosen, self.onehot = build_target_seed(self.em, self.logits, batch)

    def compute_gradients(self, names: list[str]) -> None:
        """One plain backward pass of the target logit for every requested tensor."""
        names = [n for n in dict.fromkeys(names) if n not in self._gradients]
        if names:
            self._gradients.update(self.backward({self.logits.name: self.onehot}, names))

    # -- what methods use ----------------------------------------------------------------
    def tensor(self, name: str) -> gs.Tensor:
        return self.graph.tensors()[name]

    def gradient(self, name: str) -> gs.Tensor:
        grad = self._gradients.get(name)
        if grad is None:
            if name not in self._gradients:
                raise RuntimeError(f"the gradient of '{name}' was not requested")
            return self.em.mul(self.tensor(name), self.scalar(0.0))
        return grad

    def split(self, mode: str = "normalized") -> MergedSplit:
        return self._splits[mode]

    def head_split(self, layer: str, mode: str = "normalized") -> MergedSplit | None:
        """The split graph from `layer` on (None unless `request_head_split` granted it)."""
        return self._heads.get((mode, layer))

    def backward(self, seeds, wrt, **kwargs) -> dict:
        self._passes += 1
        return differentiate(
            self.graph,
            seeds,
            wrt,
            opset=self.opset,
            dtype=self.dtype,
            emitter=self.em,
            scope=kwargs.pop("scope", f"backward{self._passes}"),
            **kwargs,
        )

    def scalar(self, value: float) -> gs.Constant:
        return self.em.const(np.asarray(value, self.dtype), "s")

    def _i64(self, value) -> gs.Constant:
        return self.em.const(np.asarray(value, np.int64), "i", np.int64)

    def channel_sum(self, tensor: gs.Tensor) -> gs.Variable:
        """Sum an input-shaped tensor over the input's channel axis -> [N, *spatial]."""
        if self.layout.channel_axis is None:
            return tensor
        return self.em.one(
            "ReduceSum", [tensor, self._i64([self.layout.channel_axis])], {"keepdims": 0}
        )

    def upsample(self, cam: gs.Tensor) -> gs.Variable:
        """[N, h, w] -> [N, H, W] at the input's spatial size (Resize linear, half_pixel)."""
        if self.layout.channel_axis is None:
            raise OnnxSplitError("class activation maps need an image input (rank >= 3)")
        em = self.em
        spatial = [self.data.shape[a] for a in self.layout.spatial_axes]
        if all(isinstance(d, int) for d in spatial):
            sizes_hw = self._i64(spatial)
        else:
            sizes_hw = em.one(
                "Gather",
                [em.one("Shape", [self.data]), self._i64(list(self.layout.spatial_axes))],
                {"axis": 0},
            )
        batched = em.one("Unsqueeze", [cam, self._i64([1])])
        lead = em.one(
            "Slice", [em.one("Shape", [batched]), self._i64([0]), self._i64([2])], hint="lead"
        )
        sizes = em.one("Concat", [lead, sizes_hw], {"axis": 0})
        resized = em.one(
            "Resize",
            [batched, None, None, sizes],
            {"mode": "linear", "coordinate_transformation_mode": "half_pixel"},
        )
        return em.one("Squeeze", [resized, self._i64([1])])

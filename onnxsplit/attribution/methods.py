"""Attribution methods compiled into the graph: one class per method on a shared base.

As in pytorch-grad-cam, each method overrides one function:
- input-gradient methods (`Gradient`, `GradientXInput`) override `combine(ctx, x, grad)`;
- CAM methods (`GradCAM`, `LayerCAM`) override `cam(ctx, activation, grad)`;
- LRP methods (`LRPEpsilon`, `LRPZPlus`, `LRPEpsilonPlus`) override `rules()` (rules as data);
- split methods (`SplitCAM`) work on the split graph f = g - h built beside the original.

Every map is [N, H, W] at input resolution: input-space maps are summed over the channel axis
of the input (NCHW or NHWC, see `Layout`), CAMs are upsampled with Resize (linear, half_pixel:
the same as torch's bilinear interpolation with align_corners=False). Maps are not normalized.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxsplit.attribution import lrp
from onnxsplit.attribution.autodiff import Backward, SubgraphAdjoint, differentiate
from onnxsplit.attribution.splitgraph import (
    MergedSplit,
    build_split,
    can_start_at,
    merge_split_graph,
)
from onnxsplit.blocked_layout import channel_scale, static_channels
from onnxsplit.canonicalize import Canonical
from onnxsplit.contract import build_target_seed
from onnxsplit.errors import OnnxSplitError
from onnxsplit.ops import CHANNELS_FIRST, RECTIFIERS
from onnxsplit.split.emitter import Emitter
from onnxsplit.stabilize import non_negative_source

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


def default_target_layer(graph: gs.Graph, data: gs.Tensor, logits: gs.Tensor) -> str:
    """The last rectifier output between the input and the logits whose rank is the input's
    (>= 3: [N, C, L], [N, C, H, W], [N, C, D, H, W]; an NHWC image's layers are NCHW inside)."""
    rank = len(data.shape) if data.shape is not None else 4
    if rank < 3:
        raise OnnxSplitError(
            "class activation maps need an input with spatial axes ([N, C, L], [N, C, H, W], "
            f"[N, C, D, H, W]); input '{data.name}' has shape {data.shape}"
        )
    graph.toposort()
    below = _descendants(data)
    above = _ancestors(logits)
    last = None
    for node in graph.nodes:
        if node.op not in RECTIFIERS:
            continue
        out = node.outputs[0]
        if out.shape is not None and len(out.shape) == rank and out.name in below & above:
            last = out.name
    if last is None:
        raise OnnxSplitError(
            f"the model has no rank-{rank} rectifier output for a class activation map; "
            "pass --target-layer NAME (`onnxsplit inspect MODEL` lists candidates)"
        )
    return last


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


# ----------------------------------------------------------------------------------------
# methods
# ----------------------------------------------------------------------------------------
class AttributionMethod:
    """Base class. `build` returns {output name: map [N, H, W]}."""

    name = "method"

    def prepare(self, ctx: AttributionContext) -> None:
        """Request what must exist before the graph is extended (split graphs)."""

    def gradient_targets(self, ctx: AttributionContext) -> list[str]:
        """Tensors whose plain gradient (of the target logit) the method reads."""
        return []

    def build(self, ctx: AttributionContext) -> dict[str, gs.Tensor]:
        raise NotImplementedError

    def describe(self) -> str:
        return (self.__doc__ or self.name).strip().splitlines()[0]


class InputGradientMethod(AttributionMethod):
    """Maps from the gradient of the target logit w.r.t. the input, summed over channels."""

    def gradient_targets(self, ctx):
        return [ctx.data.name]

    def combine(self, ctx: AttributionContext, x: gs.Tensor, grad: gs.Tensor) -> gs.Tensor:
        raise NotImplementedError

    def build(self, ctx):
        em = ctx.em
        em.scope = self.name
        value = self.combine(ctx, ctx.data, ctx.gradient(ctx.data.name))
        return {f"map_{self.name}": ctx.channel_sum(value)}


class Gradient(InputGradientMethod):
    """Gradient: sum over channels of d logit_k / d x."""

    name = "gradient"

    def combine(self, ctx, x, grad):
        return grad


class GradientXInput(InputGradientMethod):
    """Gradient x Input: sum over channels of x * d logit_k / d x."""

    name = "gradient_x_input"

    def combine(self, ctx, x, grad):
        return ctx.em.mul(x, grad)


class CAMMethod(AttributionMethod):
    """Maps from the activation A [N, C, h, w] of a target layer and its gradient."""

    def __init__(self, target_layer: str | None = None):
        self.target_layer = target_layer

    def layer(self, ctx: AttributionContext) -> str:
        return self.target_layer or ctx.target_layer

    def gradient_targets(self, ctx):
        return [self.layer(ctx)]

    def cam(self, ctx: AttributionContext, activation: gs.Tensor, grad: gs.Tensor) -> gs.Tensor:
        raise NotImplementedError

    def build(self, ctx):
        name = self.layer(ctx)
        activation = ctx.tensor(name)
        rank = len(ctx.data.shape) if ctx.data.shape is not None else 4
        if activation.shape is not None and (len(activation.shape) != rank or rank < 3):
            raise OnnxSplitError(
                f"target layer '{name}' has shape {activation.shape}; a CAM layer has the "
                f"input's rank {rank} ([N, C, *spatial])"
            )
        ctx.em.scope = self.name
        cam = self.cam(ctx, activation, ctx.gradient(name))
        return {f"map_{self.name}": ctx.upsample(cam)}


def _sum_channels(ctx: AttributionContext, tensor: gs.Tensor) -> gs.Variable:
    return ctx.em.one("ReduceSum", [tensor, ctx._i64([1])], {"keepdims": 0})


class GradCAM(CAMMethod):
    """Grad-CAM: relu(sum_c mean_hw(dA_c) A_c)."""

    name = "gradcam"

    def cam(self, ctx, activation, grad):
        em = ctx.em
        axes = list(range(2, len(activation.shape or [0, 0, 0, 0])))
        if ctx.opset >= 18:
            weights = em.one("ReduceMean", [grad, ctx._i64(axes)], {"keepdims": 1})
        else:
            weights = em.one("ReduceMean", [grad], {"axes": axes, "keepdims": 1})
        return em.relu(_sum_channels(ctx, em.mul(weights, activation)))


class LayerCAM(CAMMethod):
    """LayerCAM: relu(sum_c relu(dA_c) A_c)."""

    name = "layercam"

    def cam(self, ctx, activation, grad):
        em = ctx.em
        return em.relu(_sum_channels(ctx, em.mul(em.relu(grad), activation)))


class LRPMethod(AttributionMethod):
    """Layer-wise relevance propagation of the one-hot target row (zennit's convention: the
    relevance at the logits is the one-hot row; multiply by the logit for R = f_k)."""

    def rules(self) -> dict:
        raise NotImplementedError

    def build(self, ctx):
        relevance = ctx.backward(
            {ctx.logits.name: ctx.onehot},
            [ctx.data.name],
            rules=self.rules(),
            scope=self.name,
        )[ctx.data.name]
        if relevance is None:
            relevance = ctx.em.mul(ctx.data, ctx.scalar(0.0))
        ctx.em.scope = self.name
        return {f"map_{self.name}": ctx.channel_sum(relevance)}


class LRP(LRPMethod):
    """LRP with a custom rule table {op_type: rule} (see onnxsplit.attribution.lrp)."""

    def __init__(self, rules: dict, name: str = "lrp"):
        self._rules = dict(rules)
        self.name = name

    def rules(self):
        return self._rules


class LRPEpsilon(LRPMethod):
    """LRP-epsilon on every Conv/Gemm/MatMul (epsilon = 0.1), proportional pools and sums."""

    name = "lrp_epsilon"

    def __init__(self, epsilon: float = 0.1):
        self.epsilon = epsilon

    def rules(self):
        return lrp.epsilon_composite(self.epsilon)


class LRPZPlus(LRPMethod):
    """LRP-z+ on every Conv/Gemm/MatMul, proportional pools and sums."""

    name = "lrp_zplus"

    def rules(self):
        return lrp.zplus_composite()


class LRPEpsilonPlus(LRPMethod):
    """zennit's EpsilonPlus: z+ on convolutions, epsilon (1e-6) on dense layers."""

    name = "lrp_epsilon_plus"

    def rules(self):
        return lrp.epsilon_plus_composite()


class SplitCAM(AttributionMethod):
    """SplitCAM on the split graph: P = sum_c e_g(A+) A+ + e_g(A-) A-, N likewise with h_k.

    e = the sensitivity of the stream's logit (evidence='gradient': dg_k/dA, re-centerings an
    identity in the backward pass; P - N = gradient x activation) or the split relevance per
    unit activation (evidence='relevance': the ratio s = R / A of SplitLRP, so P = sum_c R_g at
    the layer, N = sum_c R_h, both conservative shares of g_k and h_k).
    Outputs map_splitcam = P - lam N (combine='diff'), P (combine='pos') or relu(P - lam N)
    (combine='relu_diff'), map_splitcam_pos = P and map_splitcam_neg = N (both >= 0),
    upsampled to the input size. A+ and A- are the streams at the target layer (re-centered
    where the stabilizer re-centers: after a rectifier they are (relu(A), relu(-A))).
    lam='balanced' sets lam = sum P / sum N per map (P - lam N sums to zero).

    from_layer=True (default): where the stabilizer re-centers at the target layer, only the
    graph after it is split, seeded with (relu(A), relu(-A)) from the original activation A
    (the same streams as the full split graph's, which recomputes A with more rounding; the
    maps agree to rounding, tests/test_fast_paths.py). Elsewhere, or with from_layer=False,
    the whole split graph is built.
    """

    name = "splitcam"

    def __init__(
        self,
        target_layer: str | None = None,
        mode: str = "normalized",
        evidence: str = "gradient",
        combine: str = "diff",
        lam: float | str = 1.0,
        name: str | None = None,
        from_layer: bool = True,
    ):
        if evidence not in ("gradient", "relevance"):
            raise ValueError(f"evidence must be 'gradient' or 'relevance', not {evidence!r}")
        if combine not in ("diff", "pos", "relu_diff"):
            raise ValueError(f"combine must be 'diff', 'pos' or 'relu_diff', not {combine!r}")
        self.target_layer = target_layer
        self.mode = mode
        self.evidence = evidence
        self.combine = combine
        self.lam = _check_lam(lam)
        self.from_layer = from_layer
        if name is not None:
            self.name = name

    def layer(self, ctx: AttributionContext) -> str:
        return self.target_layer or ctx.target_layer

    def prepare(self, ctx):
        if not (self.from_layer and ctx.request_head_split(self.layer(ctx), self.mode)):
            ctx.request_split(self.layer(ctx), self.mode)

    def build(self, ctx):
        split = ctx.head_split(self.layer(ctx), self.mode) if self.from_layer else None
        split = split or ctx.split(self.mode)
        pos, neg = split.streams[self.layer(ctx)]
        overrides = (
            split.overrides() if self.evidence == "gradient" else ratio_overrides(ctx, split)
        )
        rules = None if self.evidence == "gradient" else lrp.split_ratio_rules()
        evidence = []
        for label, stream in (("g", split.g), ("h", split.h)):
            grads = ctx.backward(
                {stream.name: ctx.onehot},
                [pos.name, neg.name],
                overrides=overrides,
                rules=rules,
                scope=f"{self.name}_{label}",
            )
            em = ctx.em
            em.scope = self.name
            terms = [em.mul(grads[t.name], t) for t in (pos, neg) if grads[t.name] is not None]
            if not terms:
                terms = [em.mul(pos, ctx.scalar(0.0))]
            evidence.append(_sum_channels(ctx, em.total(terms)))
        positive, negative = evidence
        em = ctx.em
        scaled = weigh_negative(ctx, positive, negative, self.lam)
        if self.combine == "pos":
            combined = positive
        elif self.combine == "relu_diff":
            combined = em.relu(em.sub(positive, scaled))
        else:
            combined = em.sub(positive, scaled)
        return {
            f"map_{self.name}": ctx.upsample(combined),
            f"map_{self.name}_pos": ctx.upsample(positive),
            f"map_{self.name}_neg": ctx.upsample(negative),
        }


def ratio_overrides(
    ctx: AttributionContext, split: MergedSplit, maxout: str = "wta"
) -> list[SubgraphAdjoint]:
    """Re-centerings in SplitLRP's ratio form: s_in = s_out * out / in per stream (relevance
    passes unchanged), and the seeded affine layers (split.block_overrides()). With
    winner-takes-all maxout, a re-centered Relu / ReLU6 output A is one step from the
    rectifier's input pair (p, q): s_p = s_out * A / p (Recentering.rectifier_adjoint). The
    numerators and guarded divisors are built once per split graph and shared by every pass."""
    if maxout in split.ratio_overrides:
        return split.ratio_overrides[maxout]
    bw = Backward(ctx.graph, ctx.em, ctx.opset)
    scope, ctx.em.scope = ctx.em.scope, "split_relevance/recenter"
    result = []
    for r in split.recenterings:
        # seeded: (relu(A), relu(A) - A) are >= 0 by construction
        known = r.source is not None
        # a seeded re-centering of a tensor that is >= 0 in the source (a Relu or ReLU6
        # output) has neg_out = relu(A) - A = 0: its factor is 0, so no relevance flows back
        # into the negative stream (None: the nodes that would carry zeros are skipped)
        zero_neg = known and non_negative_source(r.source)
        if zero_neg and maxout == "wta" and r.rectifier_pos is not None:
            divisor = r.rectifier_pos
            if divisor.name not in split.positive:  # guard against 0 / 0
                divisor = ctx.em.max(divisor, bw.scalar(lrp.TINY))
            result.append(r.rectifier_adjoint(divisor))
            continue
        # the numerator out and the guarded divisor max(in, TINY) once; the step itself,
        # (s_out * out) / divisor, in each pass (lrp.ratio_step, as the rectifier step)
        em = ctx.em
        steps = [(r.pos_out, r.pos_in)] + ([] if zero_neg else [(r.neg_out, r.neg_in)])
        factors = [
            (out if known else em.relu(out), em.max(den, bw.scalar(lrp.TINY))) for out, den in steps
        ]
        channels = static_channels(r.source) if known else None
        steps = _ratio_steps(factors + [None] * (2 - len(factors)), channels)
        result.append(r.adjoint(steps))
    ctx.em.scope = scope
    split.ratio_overrides[maxout] = result + split.block_overrides(drop_zero_neg=True)
    return split.ratio_overrides[maxout]


class SplitLRP(AttributionMethod):
    """SplitLRP: layer-wise relevance on the split graph, R_g and R_h kept separate.

    R_g starts as g_k on the g-stream logit (R_h: h_k on the h-stream); at every affine layer
    the relevance of each output stream is shared among its non-negative contributions
    (W+ a+, W- a-, b+: the z-rule; the bias share is absorbed), the maxout of each rectifier
    gives it whole to the branch that won (or in proportion, maxout='proportional'), residual
    sums and pools share it in proportion, re-centerings pass it unchanged. Compiled in the
    ratio form s = R / value (lrp.split_ratio_rules: an ordinary backward pass except at
    re-centerings and merges with constants), R = value * s at the input streams x+, x-.

    Outputs map_splitlrp = sum over channels and over (x+, x-) of R_g - lam * R_h,
    map_splitlrp_g and map_splitlrp_h (both >= 0). `diagnostics=True` adds
    splitlrp_absorbed_g / _h [N]: the relevance the biases absorbed (sum R_g + absorbed = g_k).
    `form='relevance'` compiles the slower relevance form (lrp.split_composite; same maps).
    lam = 1 (default) is the conservative map (it sums to f_k less the biases' net share);
    lam='balanced' = sum R_g / sum R_h per map (zero-sum).
    """

    name = "splitlrp"

    def __init__(
        self,
        lam: float | str = 1.0,
        maxout: str = "wta",
        absorb: bool = True,
        mode: str = "normalized",
        name: str | None = None,
        diagnostics: bool = False,
        form: str = "ratio",
        contrast: bool = False,
    ):
        if form not in ("ratio", "relevance"):
            raise ValueError(f"form must be 'ratio' or 'relevance', not {form!r}")
        self.lam = _check_lam(lam)
        self.maxout = maxout
        self.absorb = absorb
        self.mode = mode
        self.diagnostics = diagnostics
        self.form = form
        self.contrast = contrast
        if name is not None:
            self.name = name

    def prepare(self, ctx):
        if ctx.dtype.itemsize < 4:
            raise OnnxSplitError(
                f"{self.name} needs float32 or float64: its ratio steps divide by streams "
                f"that underflow in {ctx.dtype} (NaN maps). Convert the model to float32 "
                "first (e.g. onnxconverter-common's float16 converter); the other methods "
                f"compile in {ctx.dtype}"
            )
        # the seeded affine layers' backward is the ratio form with absorbed biases
        ctx.request_split(None, self.mode, seeded=self.form == "ratio" and self.absorb)

    def _other_classes(self, ctx) -> gs.Tensor:
        """Softmax weights of the other classes, normalized to sum 1 per sample [N, K]."""
        em = ctx.em
        em.scope = f"{self.name}_contrast"
        prob = em.one("Softmax", [ctx.logits], {"axis": 1})
        others = em.mul(prob, em.sub(ctx.scalar(1.0), ctx.onehot))
        total = em.one("ReduceSum", [others, ctx._i64([1])], {"keepdims": 1})
        return em.one("Div", [others, em.max(total, ctx.scalar(1e-30))])

    def _overrides(self, ctx, split) -> list[SubgraphAdjoint]:
        if self.form == "relevance":
            return split.overrides()
        return ratio_overrides(ctx, split, self.maxout)

    def relevance(self, ctx, split, stream, label, overrides, weights=None, minus=None):
        """Input relevance ([N, C, H, W], x+ and x- parts added) of one stream's logit (of
        the stream's logits weighted by `weights` [N, K] when given). `minus=(stream2, lam)`
        (ratio form): the relevance of stream minus lam * that of stream2 in ONE pass (the
        ratio-form backward is linear in its seed: its factors, masks and shares depend on the
        forward values only)."""
        em = ctx.em
        em.scope = f"{self.name}_{label}"
        sink: list | None = [] if self.diagnostics else None
        kwargs = {"maxout": self.maxout, "absorb": self.absorb, "sink": sink}
        weights = ctx.onehot if weights is None else weights
        if self.form == "ratio":
            seed, rules = weights, lrp.split_ratio_rules(**kwargs)
        else:
            seed, rules = em.mul(weights, stream), lrp.split_composite(**kwargs)
        seeds = {stream.name: seed}
        if minus is not None:
            other, lam = minus
            seeds[other.name] = em.mul(weights, ctx.scalar(-lam))
        inputs = (split.x_pos, split.x_neg)
        grads = ctx.backward(
            seeds,
            [t.name for t in inputs],
            overrides=split.with_sink(overrides, sink),
            rules=rules,
            scope=f"{self.name}_{label}",
        )
        em.scope = self.name
        parts = []
        for t in inputs:
            g = grads[t.name]
            if g is not None:
                parts.append(em.mul(t, g) if self.form == "ratio" else g)
        total = em.total(parts) if parts else em.mul(ctx.data, ctx.scalar(0.0))
        absorbed = None
        if sink is not None:
            zero = em.one(
                "ReduceSum", [em.mul(ctx.onehot, ctx.scalar(0.0)), ctx._i64([1])], {"keepdims": 0}
            )
            absorbed = em.total(sink) if sink else zero
        return total, absorbed

    def build(self, ctx):
        split = ctx.split(self.mode)
        if split.x_pos is None or split.x_neg is None:
            raise OnnxSplitError("the split graph has no input streams x_pos / x_neg")
        overrides = self._overrides(ctx, split)
        em = ctx.em
        if self.form == "ratio" and not self.diagnostics and self.lam != BALANCED:
            # one pass for the map, R_g - lam R_h; a second (R_h) only for the component
            # outputs, so attach_methods(components=False) prunes it
            r_map, _ = self.relevance(
                ctx, split, split.g, "gh", overrides, minus=(split.h, self.lam)
            )
            r_h, _ = self.relevance(ctx, split, split.h, "h", overrides)
            em.scope = self.name
            maps = (ctx.channel_sum(r_map), ctx.channel_sum(r_h))
            out = split_outputs(ctx, self.name, *maps, self.lam, single_pass=True)
        else:
            r_g, abs_g = self.relevance(ctx, split, split.g, "g", overrides)
            r_h, abs_h = self.relevance(ctx, split, split.h, "h", overrides)
            em.scope = self.name
            maps = (ctx.channel_sum(r_g), ctx.channel_sum(r_h))
            out = split_outputs(ctx, self.name, *maps, self.lam, single_pass=False)
        if self.contrast:  # R_g of the other classes' g-streams (softmax-weighted)
            r_c, _ = self.relevance(ctx, split, split.g, "c", overrides, self._other_classes(ctx))
            out[f"map_{self.name}_c"] = ctx.channel_sum(r_c)
            em.scope = self.name
        if self.diagnostics:
            out[f"{self.name}_absorbed_g"] = abs_g
            out[f"{self.name}_absorbed_h"] = abs_h
            for label, stream in (("g", split.g), ("h", split.h)):
                picked = em.mul(ctx.onehot, stream)
                out[f"{self.name}_logit_{label}"] = em.one(
                    "ReduceSum", [picked, ctx._i64([1])], {"keepdims": 0}
                )
        return out


class SplitGrad(SplitLRP):
    """SplitGrad: the sensitivities of g_k and h_k to the input in SplitLRP's ratio form.

    s_g(x+) = R_g(x+) / x+ and s_g(x-) = R_g(x-) / x- are the gradients of g_k with respect to
    the input streams of the split network in which every re-centering (p, q) -> (p - m, q - m)
    is frozen as the scaling p -> p * (p - m) / p (instead of the shift by a constant m, whose
    exact sensitivities grow like prod |W| and overflow float32 on deep networks): non-negative
    (every coefficient of that network is), bounded, and SplitGrad x input = SplitLRP.
    As a function of x (x+ = relu(x), x- = relu(-x)): dg/dx = [x > 0] s_g(x+) - [x < 0] s_g(x-).
    Outputs map_splitgrad = sum_c dg/dx - lam dh/dx, map_splitgrad_g, map_splitgrad_h; as in
    SplitLRP the map is one pass seeded (1, -lam) on (g, h) for a numeric lam, and the second
    pass (dh/dx) only feeds the component outputs.
    """

    name = "splitgrad"

    def build(self, ctx):
        split = ctx.split(self.mode)
        if split.x_pos is None or split.x_neg is None:
            raise OnnxSplitError("the split graph has no input streams x_pos / x_neg")
        overrides = self._overrides(ctx, split)
        em = ctx.em
        one_pass = self.lam != BALANCED
        passes = [("gh", split.g), ("h", split.h)] if one_pass else [("g", split.g), ("h", split.h)]
        maps = []
        for label, stream in passes:
            em.scope = f"{self.name}_{label}"
            rules = lrp.split_ratio_rules(maxout=self.maxout, absorb=self.absorb)
            inputs = (split.x_pos, split.x_neg)
            seeds = {stream.name: ctx.onehot}
            if label == "gh":
                seeds[split.h.name] = em.mul(ctx.onehot, ctx.scalar(-self.lam))
            grads = ctx.backward(
                seeds,
                [t.name for t in inputs],
                overrides=overrides,
                rules=rules,
                scope=f"{self.name}_{label}",
            )
            em.scope = self.name
            zero = ctx.scalar(0.0)
            parts = []
            if grads[split.x_pos.name] is not None:
                above = em.one("Greater", [ctx.data, zero])
                parts.append(em.one("Where", [above, grads[split.x_pos.name], zero]))
            if grads[split.x_neg.name] is not None:
                below = em.one("Less", [ctx.data, zero])
                parts.append(em.neg(em.one("Where", [below, grads[split.x_neg.name], zero])))
            total = em.total(parts) if parts else em.mul(ctx.data, zero)
            maps.append(ctx.channel_sum(total))
        return split_outputs(ctx, self.name, *maps, self.lam, single_pass=one_pass)


def split_outputs(ctx, name: str, first, map_h, lam, single_pass: bool) -> dict:
    """map_<name>, map_<name>_g and map_<name>_h of SplitLRP / SplitGrad from their two
    passes: `first` is the map itself (R_g - lam R_h from one pass seeded (1, -lam); then
    R_g = map + lam R_h) when `single_pass`, else R_g."""
    em = ctx.em
    weighted = weigh_negative(ctx, first, map_h, lam)
    if single_pass:
        return {
            f"map_{name}": first,
            f"map_{name}_g": em.add(first, weighted),
            f"map_{name}_h": map_h,
        }
    return {f"map_{name}": em.sub(first, weighted), f"map_{name}_g": first, f"map_{name}_h": map_h}


BALANCED = "balanced"


def _check_lam(lam) -> float | str:
    if lam == BALANCED:
        return BALANCED
    try:
        return float(lam)
    except (TypeError, ValueError):
        raise ValueError(f"lam must be a number or 'balanced', not {lam!r}") from None


def weigh_negative(ctx: AttributionContext, positive, negative, lam) -> gs.Tensor:
    """lam * negative; lam='balanced': sum(positive) / sum(negative) per sample, so that
    positive - lam * negative sums to zero over each map."""
    em = ctx.em
    if lam == BALANCED:  # rank-agnostic: [N, ...] -> [N, D] -> per-sample sums [N, 1]
        flat_p = em.one("Flatten", [positive], {"axis": 1})
        flat_n = em.one("Flatten", [negative], {"axis": 1})
        total_p = em.one("ReduceSum", [flat_p, ctx._i64([1])], {"keepdims": 1})
        total_n = em.one("ReduceSum", [flat_n, ctx._i64([1])], {"keepdims": 1})
        floor = em.max(em.mul(em.one("Abs", [total_p]), ctx.scalar(1e-12)), ctx.scalar(1e-30))
        ratio = em.one("Div", [total_p, em.max(total_n, floor)])
        return em.one("Reshape", [em.mul(flat_n, ratio), em.one("Shape", [negative])])
    return negative if lam == 1.0 else em.mul(negative, ctx.scalar(lam))


def _ratio_steps(factors, channels: int | None):
    """Adjoint of a re-centering in the ratio form: s_in = s_out * out / in, per stream
    (factors: (out, guarded in) per stream, None where the stream gets nothing). With the
    static channel count of a rank-4 tensor, each step's result passes an identity depthwise
    Conv: a residual sum's adjoint meets blocked convolution outputs in a Sum, which
    onnxruntime otherwise runs in plain layout with reorders on both sides."""

    def step(bw, d, factor):
        em = bw.em
        s = lrp.ratio_step(bw, d, *factor)
        return (
            s
            if channels is None
            else channel_scale(em.graph, s, 1.0, channels, em.name("blocked"), em.dtype)
        )

    def fn(bw, douts):
        return [
            None if d is None or f is None else step(bw, d, f)
            for d, f in zip(douts, factors, strict=True)
        ]

    return fn


METHODS: dict[str, type[AttributionMethod]] = {
    cls.name: cls
    for cls in (
        Gradient,
        GradientXInput,
        GradCAM,
        LayerCAM,
        LRPEpsilon,
        LRPZPlus,
        LRPEpsilonPlus,
        SplitCAM,
        SplitLRP,
        SplitGrad,
    )
}


def method_list(values: str | Sequence[str]) -> list[str]:
    """Method names from a comma list or several (`"a,b"`, `["a,b", "c"]`), duplicates dropped
    keeping the order: the one spelling of every command and of the Python API."""
    chunks = [values] if isinstance(values, str) else list(values)
    names = [n.strip() for chunk in chunks for n in str(chunk).split(",") if n.strip()]
    return list(dict.fromkeys(names))


def parse_methods(values: str | Sequence[str]) -> list[str]:
    """`method_list`, each name checked against METHODS (one error naming the valid ones)."""
    names = method_list(values)
    if not names:
        raise OnnxSplitError("no attribution method requested (see `onnxsplit methods`)")
    for name in names:
        if name not in METHODS:
            raise OnnxSplitError(f"unknown method '{name}'; choose from {', '.join(METHODS)}")
    return names


def make_method(method: str | AttributionMethod, target_layer: str | None = None):
    if isinstance(method, AttributionMethod):
        return method
    if method not in METHODS:
        raise OnnxSplitError(f"unknown method '{method}'; choose from {', '.join(METHODS)}")
    cls = METHODS[method]
    if issubclass(cls, CAMMethod | SplitCAM):
        return cls(target_layer)
    return cls()

"""The methods of the DC split f = g - h: SplitCAM, SplitLRP and SplitGrad (docs/methods.md)."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxsplit.attribution import lrp
from onnxsplit.attribution.autodiff import Backward, SubgraphAdjoint
from onnxsplit.attribution.base import AttributionMethod, register
from onnxsplit.attribution.cams import sum_channels
from onnxsplit.attribution.context import AttributionContext
from onnxsplit.attribution.splitgraph import MergedSplit
from onnxsplit.blocked_layout import channel_scale, static_channels
from onnxsplit.errors import OnnxSplitError
from onnxsplit.stabilize import non_negative_source


@register
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
    takes_layer = True

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
            evidence.append(sum_channels(ctx, em.total(terms)))
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


@register
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


@register
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

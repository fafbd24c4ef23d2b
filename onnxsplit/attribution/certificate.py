"""The deletion certificate of the raw DC split f = g - h (docs/certified.md).

In the raw split, g_k and h_k are monotone non-decreasing and convex in the doubled input
X = (x+, x-) = (relu(x), relu(-x)) (reference c = 0; a reference c is the split of
f(. + c), fed x - c: onnxsplit.certify.shift_reference). Deleting features towards the
reference, fully or partly, moves every coordinate of y between 0 and x, i.e. Y <= X in
doubled coordinates. Then for every class k and every such y

    f_k(x) - D_k(x - y)  <=  f_k(y)  <=  f_k(x) + U_k(x - y)

with D_k = sum over coordinates of dg_k/dX * (X - Y) and U_k the same with h_k: monotonicity
gives g(Y) <= g(X), h(Y) <= h(X); convexity gives g(Y) >= g(X) + dg(X).(Y - X) (any
subgradient; the backward pass computes one). Both are additive over features, so one pair of
maps certifies every deletion set at once.

Outputs (for the class named by `target`, summed over the channel axis like every map):

    cert_drop [N, *spatial]  D: x+ dg_k/dx+ + x- dg_k/dx-, the most that deleting a position
                             fully to the reference can lower f_k (>= 0)
    cert_rise [N, *spatial]  U: the same with h_k, the most it can raise f_k (>= 0)
    map_certificate          = cert_drop (every contract consumer reads map_<method>)
    certificate_error [N]    max_k |g_k - h_k - f_k| / max_k |f_k| on this sample

A sample whose split is not exact (certificate_error > tolerance, or not finite) gets NaN maps:
no bound is issued where g - h does not reproduce f. At compile time the raw split is probed on
a seeded random input and refused when it is not exact there.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxsplit.attribution.base import AttributionMethod, register
from onnxsplit.attribution.context import AttributionContext
from onnxsplit.contract import CERT_DROP, CERT_ERROR, CERT_RISE, META_REFERENCE
from onnxsplit.errors import OnnxSplitError

__all__ = ["CERT_DROP", "CERT_ERROR", "CERT_RISE", "CERT_TOLERANCE", "Certificate"]

# max_k |g_k - h_k - f_k| / max_k |f_k| up to which a sample's split counts as exact
CERT_TOLERANCE = 1e-4
MODES = ("raw", "normalized")


@register
class Certificate(AttributionMethod):
    """Certificate: deletion bounds of the raw split, cert_drop D = x+- . dg_k/dx+- and
    cert_rise U = x+- . dh_k/dx+- per position; f_k(x) - D(S) <= f_k(y) <= f_k(x) + U(S) for
    every y that deletes the positions S (fully or partly) towards the reference.

    mode='raw' (default): the plain DC split. mode='normalized' is refused unless its split
    has no re-centering (then it is the raw split): a re-centered stream relu(p - q) is not
    monotone in (x+, x-), so no bound follows. tolerance: the largest relative discrepancy
    max|g - h - f| / max|f| of the probe (compile time) and of each sample (run time, NaN maps
    above it). reference: recorded in the metadata (`onnxsplit.reference`); the graph itself
    always certifies deletion towards its input's zero (see shift_reference).
    """

    name = "certificate"
    saliency = False  # bounds, not relevance: not scored by the Quantus metrics

    def __init__(
        self,
        mode: str = "raw",
        tolerance: float = CERT_TOLERANCE,
        probe: bool = True,
        reference: float | list | None = None,
    ):
        if mode not in MODES:
            raise OnnxSplitError(
                f"certificate: unknown mode '{mode}'; choose one of raw, normalized"
            )
        self.mode = mode
        self.tolerance = float(tolerance)
        self.probe = probe
        self.reference = 0.0 if reference is None else reference

    def prepare(self, ctx: AttributionContext) -> None:
        if self.probe and self.mode == "raw":
            check_raw_split(ctx, self.tolerance)
        ctx.request_split(None, self.mode, seeded=False)

    def metadata(self, ctx: AttributionContext) -> dict[str, str]:
        """Extra metadata of the compiled model (attach_methods reads it)."""
        return {META_REFERENCE: json.dumps(self.reference)}

    def build(self, ctx: AttributionContext) -> dict[str, gs.Tensor]:
        split = ctx.split(self.mode)
        if split.recenterings:
            raise OnnxSplitError(
                f"certificate: the {self.mode} split re-centers {len(split.recenterings)} "
                "tensor(s), so g and h are not monotone and convex in (x+, x-) and no deletion "
                "bound follows; certify the raw split (mode='raw')"
            )
        if split.x_pos is None or split.x_neg is None:
            raise OnnxSplitError("the split graph has no input streams x_pos / x_neg")
        em = ctx.em
        maps = []
        for label, stream in (("g", split.g), ("h", split.h)):
            grads = ctx.backward(
                {stream.name: ctx.onehot},
                [split.x_pos.name, split.x_neg.name],
                overrides=split.overrides(),
                scope=f"{self.name}_{label}",
            )
            em.scope = self.name
            parts = [
                em.mul(t, grads[t.name])
                for t in (split.x_pos, split.x_neg)
                if grads[t.name] is not None
            ]
            # a stream that does not depend on the input: D = 0 (times the seed, so an
            # out-of-range target still gives NaN)
            zero = em.mul(ctx.data, ctx.scalar(0.0))
            total = em.total(parts) if parts else zero
            maps.append(ctx.channel_sum(total))
        em.scope = self.name
        error = self._discrepancy(ctx, split)
        valid = em.one("LessOrEqual", [error, ctx.scalar(self.tolerance)])
        drop, rise = (self._guard(ctx, m, valid) for m in maps)
        return {
            f"map_{self.name}": drop,
            CERT_DROP: drop,
            CERT_RISE: rise,
            CERT_ERROR: error,
        }

    def _discrepancy(self, ctx: AttributionContext, split) -> gs.Variable:
        """max_k |g_k - h_k - f_k| / max(max_k |f_k|, tiny) per sample [N]."""
        em = ctx.em

        def row_max(t):  # ReduceMax takes its axes as an input from opset 18 on
            if ctx.opset >= 18:
                return em.one("ReduceMax", [t, ctx._i64([1])], {"keepdims": 0})
            return em.one("ReduceMax", [t], {"axes": [1], "keepdims": 0})

        gap = em.one("Abs", [em.sub(em.sub(split.g, split.h), ctx.logits)])
        worst = row_max(gap)
        scale = row_max(em.one("Abs", [ctx.logits]))
        tiny = ctx.scalar(np.finfo(ctx.dtype).tiny)
        return em.one("Div", [worst, em.max(scale, tiny)])

    def _guard(self, ctx: AttributionContext, tensor: gs.Tensor, valid: gs.Tensor):
        """`tensor` [N, ...] where the sample's split is exact, NaN elsewhere."""
        em = ctx.em
        if ctx.layout.channel_axis is None:  # flat: maps have the input's shape
            rank = len(ctx.data.shape or [None, None])
        else:
            rank = 1 + len(ctx.layout.spatial_axes)
        mask = valid
        if rank > 1:
            mask = em.one("Unsqueeze", [valid, ctx._i64(list(range(1, rank)))])
        nan = ctx.scalar(np.nan)
        return em.one("Where", [mask, tensor, nan])


def check_raw_split(ctx: AttributionContext, tolerance: float = CERT_TOLERANCE) -> float | None:
    """Refuse (one line) when the raw split of the graph being compiled does not reproduce its
    logits on a seeded random probe input within `tolerance` (relative to max|f|). Returns the
    measured error (None when the input has dynamic non-batch axes: no probe, the run-time
    guard remains)."""
    from onnxsplit.convert import convert_model, probe_input_shape, relative_error
    from onnxsplit.runtime import make_session

    graph = ctx.graph.copy()
    graph.outputs = [t for t in graph.outputs if t.name == ctx.logits.name]
    model = gs.export_onnx(graph.cleanup(), do_type_check=False)
    del model.opset_import[:]
    model.opset_import.append(onnx.helper.make_opsetid("", ctx.opset))
    model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import))
    try:
        shape = probe_input_shape(model, ctx.data.name, 2)
    except OnnxSplitError:
        return None
    split = convert_model(
        model, mode="raw", input_name=ctx.data.name, output_name=ctx.logits.name
    ).model
    if ctx.dtype == np.float64:  # onnxruntime's CPU has no float64 Conv & co.: rewrite them
        from onnxsplit.precision import lower_float64

        model, split = lower_float64(model), lower_float64(split)
    x = np.random.default_rng(0).standard_normal(shape).astype(ctx.dtype)
    (reference,) = make_session(model.SerializeToString(), "cpu").run(
        [ctx.logits.name], {ctx.data.name: x}
    )
    (logits,) = make_session(split.SerializeToString(), "cpu").run(["logits"], {ctx.data.name: x})
    error = relative_error(logits, reference)
    if not error <= tolerance:
        hint = (
            "try the float64 model (onnxsplit certify --dtype float64)"
            if ctx.dtype != np.float64
            else "the net is too deep for the raw split"
        )
        raise OnnxSplitError(
            f"certificate: the raw split is not exact on a probe input (max|g - h - f| / max|f| "
            f"= {error:.1e} > {tolerance:g}): its streams lose f to {ctx.dtype} rounding, so no "
            f"bound can be proven; {hint}"
        )
    return error

"""Research loop for the split saliency methods on EfficientNet-Lite0 (issue 9).

Every method (and variant) is compiled into one ONNX model with `attach_methods` and run with
onnxruntime on the CPU; maps are scored with

* the grid pointing game (onnxsplit.eval.grid): 2x2 grids of 224 px tiles fed to the 448x448
  export (70 grids, 280 maps by default; `--grids N` takes a seeded subset), optionally 3x3
  grids (`--grid3 N`, 672x672 export) and off-centre crops (`--crops`): hit, mass, mass>1/2,
  and the shift-invariant top-k (share of the |tile| highest pixels in the tile) and AUC
  (positive mass rewards any map shifted down: Grad-CAM - mean(Grad-CAM) gains 0.15);
* faithfulness: deletion / insertion AUC on the single photos at 224 px, top-1 class; the most
  relevant pixels first (the map's value, summed over channels), 16 steps of 1/16 of the pixels,
  removed pixels replaced by a Gaussian-blurred copy of the photo (sigma 10 px), area under the
  softmax probability of the class (deletion lower is better, insertion higher);
* class sensitivity (`class corr`): the mean Pearson correlation between the maps of two
  different classes of one grid (lower is better: maps of two classes of an image must differ);
* complexity: Quantus' Sparseness (Gini of |map|) and Complexity (entropy of |map|) on the
  single photos, with the faithfulness rows;
* robustness: max-sensitivity on 5 photos: max over 4 uniform perturbations of radius 0.05 (in
  the model's (x - 127) / 128 input space, about 6 grey levels) of ||m(x + d) - m(x)|| / ||m(x)||
  (Frobenius norms, the class fixed); lower is better.

Experimental variants (ContrastLRP, ContrastSplitLRP, GatedSplitLRP) are defined here as
subclasses of the shipped methods; docs/research_log.md records every bundle's numbers.

Compiled models and per-method results are cached under $ONNXSPLIT_CACHE/research (or
~/.cache/onnxsplit/research): compiled models keyed by the method definition and a hash of
onnxsplit/attribution/*.py, maps keyed by the method definition (the attributes that differ
from the constructor's defaults; bump MAPS_VERSION when a definition's numbers change), so a
rerun only computes what changed.

    python benchmarks/research_loop.py                      # every method, the full benchmark
    python benchmarks/research_loop.py --grids 16 -m splitlrp -m lrp_zplus   # a quick look
    python benchmarks/research_loop.py --list               # the method table

Prints a markdown table (one row per map; variants computed from a method's extra outputs,
e.g. R_g - lam R_h from map_splitlrp_g / map_splitlrp_h, appear as their own rows).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxsplit.attribution import attach_methods, lrp  # noqa: E402
from onnxsplit.attribution import methods as M  # noqa: E402
from onnxsplit.attribution.autodiff import constant_value  # noqa: E402
from onnxsplit.eval.grid import (  # noqa: E402
    build_grid_dataset,
    pointing_scores,
    rank_scores,
    square_tile,
)
from onnxsplit.zoo import registry  # noqa: E402
from onnxsplit.zoo.photos import PHOTO_NAMES, load_photo  # noqa: E402

FAITH_STEPS = 16
BLUR_SIGMA = 10.0
ROBUST_RADIUS = 0.05
ROBUST_DRAWS = 4
ROBUST_PHOTOS = ("chelsea", "coffee", "rocket", "flower", "camera")


# ------------------------------------------------------------------------------ methods
# EfficientNet-Lite0 tensors (canonical names, the same at every input size)
LAYERS = {
    "head": None,  # the default: the last rectifier output (1280 channels)
    "head_pre": "/_conv_head/Conv_output_0",  # before the last rectifier (z+, z- both live)
    "b15_proj": "/_blocks.15/_project_conv/Conv_output_0",  # last block, linear bottleneck
    "b15_dw": "/_blocks.15/Clip_1_output_0",  # last depthwise rectifier
    "b14_add": "/_blocks.14/Add_output_0",  # the last residual sum
    "b10_add": "/_blocks.10/Add_output_0",  # 28x28 at 448 px
}


@dataclass
class Spec:
    """Methods compiled into one model (they share its forward passes) and the maps read from
    its outputs. make(): list of AttributionMethod; maps: row name -> fn(outputs) -> [N, H, W].
    """

    key: str
    make: Callable[[], list]
    maps: dict[str, Callable[[dict], np.ndarray]] = field(default_factory=dict)
    note: str = ""


def _out(name: str) -> Callable[[dict], np.ndarray]:
    return lambda o: o[name]


def _lam(prefix: str, lam: float, a: str = "g", b: str = "h", relu=False) -> Callable:
    def fn(o):
        m = o[f"{prefix}_{a}"] - lam * o[f"{prefix}_{b}"]
        return np.maximum(m, 0) if relu else m

    return fn


def _balanced(prefix: str, a: str = "g", b: str = "h") -> Callable:
    """R_g - lam R_h with lam = sum R_g / sum R_h per map (the map sums to zero)."""

    def fn(o):
        g, h = o[f"{prefix}_{a}"], o[f"{prefix}_{b}"]
        return g - h * (g.sum() / max(float(h.sum()), 1e-30))

    return fn


def _lrp_rows(key: str, lams=(1.0,)) -> dict:
    maps = {}
    for lam in lams:
        maps[key if lam == 1.0 else f"{key} λ={lam:g}"] = _lam(f"map_{key}", lam)
    maps[f"{key} λ=balanced"] = _balanced(f"map_{key}")
    maps[f"{key} R_g"] = _out(f"map_{key}_g")
    maps[f"{key} R_h"] = _out(f"map_{key}_h")
    return maps


def _cam_rows(key: str, lams=(1.0,)) -> dict:
    maps = {key: _lam(f"map_{key}", 1.0, "pos", "neg"), f"{key} P": _out(f"map_{key}_pos")}
    for lam in lams:
        if lam != 1.0:
            maps[f"{key} P-{lam:g}N"] = _lam(f"map_{key}", lam, "pos", "neg")
        maps[f"{key} relu(P-{lam:g}N)"] = _lam(f"map_{key}", lam, "pos", "neg", relu=True)
    maps[f"{key} P-λN balanced"] = _balanced(f"map_{key}", "pos", "neg")
    maps[f"{key} N"] = _out(f"map_{key}_neg")
    return maps


# ------------------------------------------------------------------------------ variants
# Experimental definitions (issue 9). They subclass the shipped methods and use only the
# AttributionContext API; a variant that wins is merged into onnxsplit.attribution by hand.
def _softmax_others(ctx) -> gs.Tensor:
    """w [N, K]: the softmax of the logits without the target class, normalised to sum 1."""
    em = ctx.em
    prob = em.one("Softmax", [ctx.logits], {"axis": 1})
    others = em.mul(prob, em.sub(ctx.scalar(1.0), ctx.onehot))
    total = em.one("ReduceSum", [others, ctx._i64([1])], {"keepdims": 1})
    return em.one("Div", [others, em.max(total, ctx.scalar(1e-30))])


class ContrastLRP(M.LRPMethod):
    """A baseline LRP composite seeded with (e_k - w) * f (w = softmax of the other classes):
    the relevance of the margin f_k - sum_c w_c f_c (CLRP / SGLRP-style contrast). Seeding with
    the logits (not the one-hot row) keeps every class on the same scale through the epsilon
    rule at the dense layer (R = x W_c, not x W_c / f_c)."""

    def __init__(self, rules: str = "epsilon_plus", name: str = "clrp_eps_plus"):
        self.rules_name = rules
        self.name = name

    def rules(self):
        return getattr(lrp, f"{self.rules_name}_composite")()

    def build(self, ctx):
        em = ctx.em
        em.scope = f"{self.name}_seed"
        seed = em.mul(em.sub(ctx.onehot, _softmax_others(ctx)), ctx.logits)
        plain = em.mul(ctx.onehot, ctx.logits)
        out = {}
        for suffix, s in (("", seed), ("_k", plain)):
            relevance = ctx.backward(
                {ctx.logits.name: s}, [ctx.data.name], rules=self.rules(), scope=self.name + suffix
            )[ctx.data.name]
            em.scope = self.name
            out[f"map_{self.name}{suffix}"] = ctx.channel_sum(relevance)
        return out


class LayerLRP(M.LRPMethod):
    """A baseline LRP composite's relevance at a layer, summed over channels and upsampled
    (the CAM-shaped counterpart of SplitCAM with relevance evidence at the same layer)."""

    def __init__(self, layer: str, rules: str = "epsilon_plus", name: str = "lrpcam"):
        self.cam_layer = layer
        self.rules_name = rules
        self.name = name

    def rules(self):
        return getattr(lrp, f"{self.rules_name}_composite")()

    def build(self, ctx):
        relevance = ctx.backward(
            {ctx.logits.name: ctx.onehot}, [self.cam_layer], rules=self.rules(), scope=self.name
        )[self.cam_layer]
        ctx.em.scope = self.name
        cam = ctx.em.one("ReduceSum", [relevance, ctx._i64([1])], {"keepdims": 0})
        return {f"map_{self.name}": ctx.upsample(cam)}


@dataclass(frozen=True)
class LamEpsilon:
    """Epsilon rule on a dense layer whose backward weights are W+ - lam W- (the forward z is
    the layer's own output): the baseline counterpart of SplitLRP's lam, which weighs the
    h-stream (the relevance of the negative contributions) by lam. lam = 1: lrp.Epsilon."""

    lam: float = 1.5
    epsilon: float = 1e-6

    def __call__(self, bw, node, douts, needs):
        em = bw.em
        data = 0 if needs[0] else 1
        other = 1 - data
        weight = constant_value(node.inputs[other])
        if weight is None or any(needs[i] for i in range(len(needs)) if i != data):
            return lrp.Epsilon(self.epsilon)(bw, node, douts, needs)
        scaled = np.maximum(weight, 0) - self.lam * np.maximum(-weight, 0)
        if float(node.attrs.get("alpha", 1.0)) < 0:
            scaled = np.minimum(weight, 0) - self.lam * np.maximum(weight, 0)
        ratio = em.one("Div", [douts[0], lrp.stabilize(bw, node.outputs[0], self.epsilon)])
        ops = [None, None]
        ops[data], ops[other] = node.inputs[data], em.const(scaled.astype(weight.dtype), "w")
        attrs = dict(node.attrs)
        attrs.pop("beta", None)
        out = node.outputs[0]
        fake = gs.Node(
            node.op,
            attrs=attrs,
            inputs=ops,
            outputs=[gs.Variable(out.name + "__lam", dtype=out.dtype, shape=out.shape)],
        )
        grads = bw.run_rule(node.op, fake, [ratio], [i == data for i in range(2)])
        fake.inputs.clear()
        fake.outputs.clear()
        result = [None] * len(node.inputs)
        result[data] = em.mul(node.inputs[data], grads[data])
        return result


class LamEpsilonPlus(M.LRPMethod):
    """LRP-EpsilonPlus with LamEpsilon(lam) on the dense layers (z+ on convolutions)."""

    def __init__(self, lam: float = 1.5, name: str = "eps_plus_lam"):
        self.lam = lam
        self.name = name

    def rules(self):
        rule = LamEpsilon(self.lam)
        return lrp.composite(lrp.ZPlus(), overrides={"Gemm": rule, "MatMul": rule})


@dataclass(frozen=True)
class NodeSwitch:
    """`special` on the nodes named in `names`, `default` elsewhere."""

    default: object
    special: object
    names: frozenset

    def __call__(self, bw, node, douts, needs):
        rule = self.special if node.name in self.names else self.default
        return rule(bw, node, douts, needs)


def last_weight_node(ctx) -> gs.Node | None:
    """The weight layer (Conv/Gemm/MatMul) nearest the logits on the path back from them."""
    seen, stack = set(), [ctx.logits]
    while stack:
        tensor = stack.pop(0)
        for node in tensor.inputs:
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.op in lrp.WEIGHT_OPS and any(
                constant_value(t) is not None for t in node.inputs[1:2]
            ):
                return node
            stack.extend(t for t in node.inputs if constant_value(t) is None)
    return None


class LastEpsilonPlus(M.LRPMethod):
    """EpsilonPlus with the epsilon rule on the last weight layer whatever its type (zennit's
    EpsilonPlus puts it on dense layers only: on a network whose classifier is a convolution,
    e.g. the FER mini-Xception, EpsilonPlus is z+ everywhere and starts class-agnostic)."""

    name = "lrp_eps_plus_last"

    def build(self, ctx):
        last = last_weight_node(ctx)
        names = frozenset({last.name} if last is not None else ())
        eps = lrp.Epsilon(1e-6)
        rule = NodeSwitch(lrp.ZPlus(), eps, names)
        self._rules = lrp.composite(rule, overrides={"Gemm": eps, "MatMul": eps})
        return super().build(ctx)

    def rules(self):
        return self._rules


class ContrastSplitLRP(M.SplitLRP):
    """SplitLRP of the margin f_k - sum_c w_c f_c: R_g, R_h of class k as usual and R_gc, R_hc
    of the softmax-weighted other classes (w as in ContrastLRP), all four >= 0; the map
    (R_g - R_h) - (R_gc - R_hc) sums to the margin less the biases' net share."""

    def build(self, ctx):
        split = ctx.split(self.mode)
        overrides = self._overrides(ctx, split)
        em = ctx.em
        em.scope = f"{self.name}_w"
        w = _softmax_others(ctx)
        out = {}
        for label, stream, weights in (
            ("g", split.g, None),
            ("h", split.h, None),
            ("gc", split.g, w),
            ("hc", split.h, w),
        ):
            r, _ = self.relevance(ctx, split, stream, label, overrides, weights)
            em.scope = self.name
            out[f"map_{self.name}_{label}"] = ctx.channel_sum(r)
        own = em.sub(out[f"map_{self.name}_g"], out[f"map_{self.name}_h"])
        other = em.sub(out[f"map_{self.name}_gc"], out[f"map_{self.name}_hc"])
        return {f"map_{self.name}": em.sub(own, other), **out}


class GatedSplitLRP(M.SplitLRP):
    """SplitLRP gated at a layer by SplitCAM's sign: R_g and R_h are computed at the layer's
    streams; P, N = their channel sums per position (SplitCAM with relevance evidence); only
    the positions with P > gate_lam * N pass their relevance (both R_g and R_h) on to the
    input. Outputs map_<name>_g, _h (gated, >= 0) and _pos: R_g alone, scaled per position
    by relu(P - N) / P (a non-negative map that sums to sum relu(P - N), less biases)."""

    def __init__(self, layer: str | None = None, gate_lam: float = 1.0, name: str = "gated"):
        super().__init__(name=name)
        self.gate_layer = layer
        self.gate_lam = gate_lam

    def layer(self, ctx) -> str:
        return self.gate_layer or ctx.target_layer

    def prepare(self, ctx):
        ctx.request_split(self.layer(ctx), self.mode)

    def build(self, ctx):
        split = ctx.split(self.mode)
        pos, neg = split.streams[self.layer(ctx)]
        overrides = self._overrides(ctx, split)
        em = ctx.em
        ratios, totals = {}, {}
        for label, stream in (("g", split.g), ("h", split.h)):
            grads = ctx.backward(
                {stream.name: ctx.onehot},
                [pos.name, neg.name],
                overrides=overrides,
                rules=lrp.split_ratio_rules(maxout=self.maxout, absorb=self.absorb),
                scope=f"{self.name}_{label}_top",
            )
            em.scope = self.name
            zero = em.mul(pos, ctx.scalar(0.0))
            s = [grads[t.name] if grads[t.name] is not None else zero for t in (pos, neg)]
            ratios[label] = s
            rel = em.add(em.mul(pos, s[0]), em.mul(neg, s[1]))
            totals[label] = em.one("ReduceSum", [rel, ctx._i64([1])], {"keepdims": 1})
        p, n = totals["g"], totals["h"]
        above = em.one("Greater", [p, em.mul(n, ctx.scalar(self.gate_lam))])
        gate = em.one("Cast", [above], {"to": onnx.TensorProto.FLOAT})
        keep = em.one("Div", [em.relu(em.sub(p, n)), em.max(p, ctx.scalar(1e-30))])
        out = {}
        for label, factor in (("g", gate), ("h", gate), ("pos", keep)):
            s = ratios["h" if label == "h" else "g"]
            seeds = {pos.name: em.mul(s[0], factor), neg.name: em.mul(s[1], factor)}
            inputs = (split.x_pos, split.x_neg)
            grads = ctx.backward(
                seeds,
                [t.name for t in inputs],
                overrides=overrides,
                rules=lrp.split_ratio_rules(maxout=self.maxout, absorb=self.absorb),
                scope=f"{self.name}_{label}",
            )
            em.scope = self.name
            parts = [em.mul(t, grads[t.name]) for t in inputs if grads[t.name] is not None]
            out[f"map_{self.name}_{label}"] = ctx.channel_sum(em.total(parts))
        diff = em.sub(out[f"map_{self.name}_g"], out[f"map_{self.name}_h"])
        return {f"map_{self.name}": diff, **out}


BASELINES = tuple(name for name in M.METHODS if not name.startswith("split"))


def method_specs() -> dict[str, Spec]:
    specs = [
        Spec(
            "baselines",
            lambda: [M.make_method(n) for n in BASELINES],
            {n: _out(f"map_{n}") for n in BASELINES},
        ),
        Spec(
            "split",
            lambda: [
                M.SplitLRP(lam=1.0),
                M.SplitGrad(lam=1.0),
                M.SplitCAM(evidence="gradient", combine="diff", lam=1.0),
            ],
            {
                **_lrp_rows("splitlrp", lams=(1.0, 0.5, 0.8, 1.2, 1.25, 1.5, 2.0, 3.0)),
                "splitgrad": _out("map_splitgrad"),
                **_cam_rows("splitcam", lams=(1.0, 1.25, 1.5, 2.0)),
            },
        ),
        Spec(
            "splitcam_layers",
            lambda: [
                M.SplitCAM(LAYERS[layer], evidence=ev, name=f"scam_{ev[:3]}_{layer}")
                for layer in ("head_pre", "b15_proj", "b15_dw", "b14_add")
                for ev in ("gradient", "relevance")
            ],
            {
                row: fn
                for layer in ("head_pre", "b15_proj", "b15_dw", "b14_add")
                for ev in ("gra", "rel")
                for row, fn in _cam_rows(f"scam_{ev}_{layer}", lams=(1.0, 0.5, 1.5)).items()
            },
            "SplitCAM at layers where both streams carry information",
        ),
        Spec(
            "splitlrp_contrast",
            lambda: [M.SplitLRP(contrast=True, name="splitlrp_c")],
            {
                "splitlrp_c R_g-R_c": _lam("map_splitlrp_c", 1.0, "g", "c"),
                "splitlrp_c R_g-R_h-R_c": lambda o: (
                    o["map_splitlrp_c_g"] - o["map_splitlrp_c_h"] - o["map_splitlrp_c_c"]
                ),
                "splitlrp_c R_c": _out("map_splitlrp_c_c"),
            },
            "contrast against the other classes' g-streams (softmax-weighted)",
        ),
        Spec(
            "splitlrp_prop",
            lambda: [M.SplitLRP(maxout="proportional", name="splitlrp_prop")],
            _lrp_rows("splitlrp_prop", lams=(1.0, 1.5)),
            "proportional maxout",
        ),
        Spec(
            "splitlrp_nobias",
            lambda: [M.SplitLRP(absorb=False, name="splitlrp_nobias")],
            _lrp_rows("splitlrp_nobias", lams=(1.0, 1.5)),
            "biases take no share",
        ),
        Spec(
            "splitlrp_every",
            lambda: [M.SplitLRP(mode="every-layer", name="splitlrp_every")],
            _lrp_rows("splitlrp_every", lams=(1.0, 1.5)),
            "re-centering after every layer (FINDINGS' prototype)",
        ),
        Spec(
            "contrast",
            lambda: [ContrastSplitLRP(name="csplit"), ContrastLRP()],
            {
                "csplit (R_g-R_h)-(R_gc-R_hc)": lambda o: (
                    o["map_csplit_g"] - o["map_csplit_h"] - o["map_csplit_gc"] + o["map_csplit_hc"]
                ),
                "csplit R_g-R_gc": _lam("map_csplit", 1.0, "g", "gc"),
                "csplit (R_g-R_h) - 0.5(R_gc-R_hc)": lambda o: (
                    o["map_csplit_g"]
                    - o["map_csplit_h"]
                    - 0.5 * (o["map_csplit_gc"] - o["map_csplit_hc"])
                ),
                "clrp_eps_plus (margin)": _out("map_clrp_eps_plus"),
                "clrp_eps_plus f_k only": _out("map_clrp_eps_plus_k"),
            },
            "contrast against the softmax-weighted other classes (margin f_k - sum w_c f_c)",
        ),
        Spec(
            "gated",
            lambda: [
                GatedSplitLRP(None, name="gated_head"),
                GatedSplitLRP(LAYERS["b10_add"], name="gated_b10"),
            ],
            {
                row: fn
                for key in ("gated_head", "gated_b10")
                for row, fn in {
                    f"{key} R_g-R_h": _lam(f"map_{key}", 1.0),
                    f"{key} λ=balanced": _balanced(f"map_{key}"),
                    f"{key} pos": _out(f"map_{key}_pos"),
                }.items()
            },
            "SplitLRP gated by the sign of SplitCAM's P - N at a layer",
        ),
        Spec(
            "scam_deep",
            lambda: [
                M.SplitCAM(LAYERS[layer], evidence="relevance", name=f"scam_rel_{layer}")
                for layer in ("b10_add", "b14_add")
            ],
            {
                row: fn
                for layer in ("b10_add", "b14_add")
                for row, fn in _cam_rows(f"scam_rel_{layer}", lams=(1.0, 1.5)).items()
            },
            "SplitCAM with relevance evidence at residual sums (b10: 28x28, b14: 14x14 at 448 px)",
        ),
        Spec(
            "lrpcam",
            lambda: [
                LayerLRP(LAYERS[layer], name=f"lrpcam_{layer}") for layer in ("b10_add", "b14_add")
            ],
            {f"lrpcam_{layer}": _out(f"map_lrpcam_{layer}") for layer in ("b10_add", "b14_add")},
            "LRP-EpsilonPlus relevance at the same layers, summed over channels (baseline)",
        ),
        Spec(
            "eps_plus_lam",
            lambda: [
                LamEpsilonPlus(lam, name=f"eps_plus_lam{int(lam * 10)}") for lam in (1.5, 2.0)
            ],
            {
                f"lrp_epsilon_plus λ={lam:g}": _out(f"map_eps_plus_lam{int(lam * 10)}")
                for lam in (1.5, 2.0)
            },
            "EpsilonPlus with the dense layer's negative weights scaled by lam (baseline λ)",
        ),
    ]
    return {s.key: s for s in specs}


# ------------------------------------------------------------------------------ caching
def cache_root() -> Path:
    env = os.environ.get("ONNXSPLIT_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "onnxsplit"
    return base / "research"


def code_hash() -> str:
    h = hashlib.sha256()
    for path in sorted((ROOT / "onnxsplit" / "attribution").glob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def compiled(spec: Spec, size: int) -> Path:
    methods = spec.make()
    desc = [repr(sorted(vars(m).items())) for m in methods]
    ident = json.dumps([spec.key, size, desc, code_hash()])
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    path = cache_root() / "models" / f"{spec.key}-{size}-{digest}.onnx"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    source = onnx.load(str(registry.model_path("efficientnet_lite0", size=size)))
    model = attach_methods(source, methods)
    tmp = path.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)
    return path


class Runner:
    def __init__(self, path: Path, threads: int | None = None):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.enable_cpu_mem_arena = False  # the 448 px backward passes need several GB
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]

    def __call__(self, x: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(None, {"input": x, "target": target.astype(np.int64)})
        return dict(zip(self.names, values, strict=True))


def to_input(images: np.ndarray) -> np.ndarray:
    x = (np.asarray(images, np.float32) - 127.0) / 128.0
    if x.ndim == 3:
        x = x[None]
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


# ------------------------------------------------------------------------------ benchmarks
def blurred(image: np.ndarray) -> np.ndarray:
    from PIL import Image, ImageFilter

    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(BLUR_SIGMA)))


class Classifier:
    def __init__(self):
        path = registry.model_path("efficientnet_lite0")
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def prob(self, images: np.ndarray, target: int) -> np.ndarray:
        logits = self.session.run(None, {"input": to_input(images)})[0]
        z = logits - logits.max(1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        return p[:, target]


def deletion_insertion(clf: Classifier, image, saliency, target) -> tuple[float, float]:
    order = np.argsort(-saliency.reshape(-1), kind="stable")
    base = blurred(image)
    n = order.size
    del_imgs, ins_imgs = [], []
    for step in range(FAITH_STEPS + 1):
        chosen = order[: n * step // FAITH_STEPS]
        m = np.zeros(n, bool)
        m[chosen] = True
        m = m.reshape(saliency.shape)[..., None]
        del_imgs.append(np.where(m, base, image))
        ins_imgs.append(np.where(m, image, base))
    d = clf.prob(np.stack(del_imgs), target)
    i = clf.prob(np.stack(ins_imgs), target)
    auc = lambda y: float(((y[1:] + y[:-1]) / 2).mean())  # noqa: E731
    return auc(d), auc(i)


def photo_set() -> list[tuple[str, np.ndarray]]:
    return [(name, square_tile(load_photo(name), 224)) for name in PHOTO_NAMES]


def crop_dataset(seed: int = 0, n: int = 40):
    """2x2 grids built from random off-centre 80 % crops of the photos (not the exact tiles)."""
    from onnxsplit.eval.grid import GridSample, grid_photos

    rng = np.random.default_rng(seed + 1000)
    kept = grid_photos()
    samples = []
    for g in range(n // 4):
        chosen = rng.choice(len(kept), 4, replace=False)
        image = np.zeros((448, 448, 3), np.uint8)
        for pos, i in enumerate(chosen):
            photo = load_photo(kept[i][0])
            h, w = photo.shape[:2]
            side = int(min(h, w) * 0.8)
            top = int(rng.integers(0, h - side + 1))
            left = int(rng.integers(0, w - side + 1))
            crop = photo[top : top + side, left : left + side]
            r, c = divmod(pos, 2)
            image[r * 224 : (r + 1) * 224, c * 224 : (c + 1) * 224] = square_tile(crop, 224)
        for pos, i in enumerate(chosen):
            r, c = divmod(pos, 2)
            mask = np.zeros((448, 448), bool)
            mask[r * 224 : (r + 1) * 224, c * 224 : (c + 1) * 224] = True
            samples.append(GridSample(image, mask, kept[i][1], f"crop{g}_t{pos}"))
    return samples


# ------------------------------------------------------------------------------ map store
MAPS_VERSION = "v1"  # bump when a method's numbers change without its definition changing


def method_desc(method) -> str:
    """The class and the attributes that differ from the constructor's defaults: a new option
    added to a method class (with a default that keeps the old maps) does not invalidate the
    stored maps; a changed definition needs MAPS_VERSION bumped."""
    import inspect

    try:
        params = inspect.signature(type(method).__init__).parameters
    except (TypeError, ValueError):
        params = {}
    defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    attrs = {
        k: v
        for k, v in vars(method).items()
        if not (k in defaults and _same(defaults[k], v)) and not k.startswith("_cache")
    }
    return f"{type(method).__name__}:{getattr(method, 'name', '')}:{sorted(attrs.items())!r}"


def _same(a, b) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except (TypeError, ValueError):
        return False


def store_dir(spec: Spec, size: int, label: str) -> Path:
    methods = spec.make()
    desc = json.dumps([MAPS_VERSION, spec.key, size, [method_desc(m) for m in methods]])
    digest = hashlib.sha256(desc.encode()).hexdigest()[:12]
    return cache_root() / "maps" / f"{spec.key}-{digest}" / label


def compute_maps(spec: Spec, size: int, label: str, items, threads=None) -> Path:
    """Run the bundle on every item (name, x [1,3,S,S], target) not yet stored; store each
    sample's outputs (maps as float16 / max|map| with the scale, logits) in one .npz."""
    directory = store_dir(spec, size, label)
    todo = [it for it in items if not (directory / f"{it[0]}.npz").is_file()]
    if not todo:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    runner = Runner(compiled(spec, size), threads)
    t0 = time.time()
    for name, x, target in todo:
        out = runner(x, np.array([target]))
        arrays = {"logits": out["logits"][0]}
        for key, value in out.items():
            if key.startswith("map_"):
                v = value[0].astype(np.float32)
                scale = float(np.abs(v).max()) or 1.0
                arrays[key] = (v / scale).astype(np.float16)
                arrays[key + "__scale"] = np.float32(scale)
        tmp = directory / f"{name}.tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, directory / f"{name}.npz")
    per = (time.time() - t0) / len(todo)
    (directory / "seconds_per_map.txt").write_text(f"{per:.3f}\n")
    return directory


def load_maps(directory: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(directory / f"{name}.npz") as data:
        out = {"logits": data["logits"]}
        for key in data.files:
            if key.startswith("map_") and not key.endswith("__scale"):
                out[key] = data[key].astype(np.float32) * data[key + "__scale"]
    return out


def grid_items(samples):
    return [(s.name, to_input(s.image), s.target) for s in samples]


# ------------------------------------------------------------------------------ scores
def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(-1) - a.mean()
    b = b.reshape(-1) - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 1.0


def _pooled(m: np.ndarray, f: int = 4) -> np.ndarray:
    h, w = m.shape[0] // f * f, m.shape[1] // f * f
    return m[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))


def score_rows(spec: Spec, directory: Path, samples) -> dict[str, dict]:
    """Pointing / rank scores per map, and `class_corr`: the mean Pearson correlation (on 4x4
    pooled maps) between the maps of two different tiles' classes of the same grid (the
    maps of two classes of one image should differ: lower is better; Quantus' RandomLogit
    asks the same with SSIM)."""
    per_row: dict[str, list] = {row: [] for row in spec.maps}
    corr: dict[str, list] = {row: [] for row in spec.maps}
    groups: dict[str, list] = {}
    for s in samples:
        groups.setdefault(s.name.rsplit("_t", 1)[0], []).append(s)
    for members in groups.values():
        outs = [load_maps(directory, s.name) for s in members]
        for row, fn in spec.maps.items():
            maps = []
            for s, out in zip(members, outs, strict=True):
                m = fn(out)
                per_row[row].append({**pointing_scores(m, s.mask), **rank_scores(m, s.mask)})
                maps.append(_pooled(np.asarray(m, np.float64)))
            for i in range(len(maps)):
                for j in range(i + 1, len(maps)):
                    corr[row].append(_pearson(maps[i], maps[j]))
    return {
        row: {
            **{k: float(np.mean([sc[k] for sc in scores])) for k in scores[0]},
            "class_corr": float(np.mean(corr[row])) if corr[row] else None,
        }
        for row, scores in per_row.items()
    }


def complexity_scores(m: np.ndarray) -> dict[str, float]:
    """Quantus' Sparseness (Gini index of |m|, higher = sparser) and Complexity (entropy of
    |m| / sum |m|, lower = simpler), on the map at input resolution."""
    a = np.sort(np.abs(np.asarray(m, np.float64)).reshape(-1)) + 1e-12
    n = a.size
    gini = float(np.sum((2 * np.arange(1, n + 1) - n - 1) * a) / (n * np.sum(a)))
    p = a / a.sum()
    return {"sparseness": gini, "complexity": float(-(p * np.log(p)).sum())}


def faith_rows(spec: Spec, directory: Path, photos, clf, rows) -> dict[str, dict]:
    result = {}
    for row in rows:
        pairs, comp = [], []
        for name, image in photos:
            out = load_maps(directory, name)
            target = int(out["logits"].argmax())
            m = spec.maps[row](out)
            pairs.append(deletion_insertion(clf, image, m, target))
            comp.append(complexity_scores(m))
        result[row] = {
            "deletion": float(np.mean([p[0] for p in pairs])),
            "insertion": float(np.mean([p[1] for p in pairs])),
            "sparseness": float(np.mean([c["sparseness"] for c in comp])),
            "complexity": float(np.mean([c["complexity"] for c in comp])),
        }
    return result


def robust_items(seed: int):
    photos = [(n, square_tile(load_photo(n), 224)) for n in ROBUST_PHOTOS]
    rng = np.random.default_rng(seed)
    items = []
    for name, image in photos:
        x = to_input(image)
        items.append((f"{name}_d0", x, -1))
        for d in range(1, ROBUST_DRAWS + 1):
            noise = rng.uniform(-ROBUST_RADIUS, ROBUST_RADIUS, x.shape).astype(np.float32)
            items.append((f"{name}_d{d}", x + noise, None))
    return items


def robust_rows(spec: Spec, directory: Path, rows) -> dict[str, dict]:
    result = {}
    for row in rows:
        sens = []
        for name in ROBUST_PHOTOS:
            m0 = spec.maps[row](load_maps(directory, f"{name}_d0")).astype(np.float64)
            ref = max(np.linalg.norm(m0), 1e-30)
            worst = max(
                np.linalg.norm(spec.maps[row](load_maps(directory, f"{name}_d{d}")) - m0) / ref
                for d in range(1, ROBUST_DRAWS + 1)
            )
            sens.append(worst)
        result[row] = {"max_sens": float(np.mean(sens))}
    return result


def compute_robust(spec: Spec, seed: int, threads=None) -> Path:
    """The perturbed photos keep the class of the clean photo (its top-1)."""
    items = robust_items(seed)
    directory = store_dir(spec, 224, f"robust{seed}")
    clean = [it for it in items if it[2] == -1]
    compute_maps(spec, 224, f"robust{seed}", clean, threads)
    fixed = []
    for name, x, target in items:
        if target is None:
            base = load_maps(directory, name.rsplit("_d", 1)[0] + "_d0")
            target = int(base["logits"].argmax())
        fixed.append((name, x, target))
    return compute_maps(spec, 224, f"robust{seed}", fixed, threads)


# ------------------------------------------------------------------------------ main
def fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--method", action="append", help="bundle keys (default: all)")
    parser.add_argument("-r", "--row", action="append", help="only rows containing this text")
    parser.add_argument("--grids", type=int, default=None, help="2x2 grids (default: all 70)")
    parser.add_argument("--grid3", type=int, default=0, help="also N 3x3 grids (672 px)")
    parser.add_argument("--crops", type=int, default=0, help="also N maps on crop grids")
    parser.add_argument("--faith", action="append", default=[], help="rows for faithfulness")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--json", type=Path, help="write all rows as JSON here")
    args = parser.parse_args(argv)
    specs = method_specs()
    if args.list:
        for key, spec in specs.items():
            print(f"{key:24s} rows: {', '.join(spec.maps)}  {spec.note}")
        return 0
    chosen = args.method or list(specs)
    unknown = [k for k in chosen if k not in specs]
    if unknown:
        parser.error(f"unknown bundle(s) {unknown}; --list shows them")
    datasets = {"g2": (448, build_grid_dataset(max_grids=args.grids, seed=args.seed))}
    if args.grid3:
        from onnxsplit.eval.grid import DEFAULT_PHOTOS, EXTRA_PHOTOS

        photos = DEFAULT_PHOTOS + EXTRA_PHOTOS
        samples = build_grid_dataset(grid=3, photos=photos, max_grids=args.grid3, seed=args.seed)
        datasets["g3"] = (672, samples)
    if args.crops:
        datasets["crop"] = (448, crop_dataset(args.seed, args.crops))
    clf = Classifier() if args.faith else None
    photos = photo_set()
    table: dict[str, dict] = {}
    times: dict[str, float] = {}
    for key in chosen:
        spec = specs[key]
        rows = [r for r in spec.maps if not args.row or any(t in r for t in args.row)]
        t = time.time()
        for label, (size, samples) in datasets.items():
            directory = compute_maps(spec, size, label, grid_items(samples), args.threads)
            if label == "g2":
                timing = directory / "seconds_per_map.txt"
                times[key] = float(timing.read_text()) if timing.is_file() else 0.0
            for row, scores in score_rows(spec, directory, samples).items():
                if row in rows:
                    table.setdefault(row, {}).update({f"{label}:{k}": v for k, v in scores.items()})
        wanted = [r for r in rows if any(f == "all" or f == r for f in args.faith)]
        if wanted:
            items = [(n, to_input(img), -1) for n, img in photos]
            directory = compute_maps(spec, 224, "photos", items, args.threads)
            for row, scores in faith_rows(spec, directory, photos, clf, wanted).items():
                table[row].update(scores)
            directory = compute_robust(spec, args.seed, args.threads)
            for row, scores in robust_rows(spec, directory, wanted).items():
                table[row].update(scores)
        print(f"# {key}: {time.time() - t:.0f} s", file=sys.stderr, flush=True)
    cols = ["g2:hit", "g2:mass", "g2:mass_half", "g2:topk", "g2:auc", "g2:class_corr"]
    heads = ["hit", "mass", "mass>½", "top-k", "AUC", "class corr ↓"]
    for label, head in (("g3", "3×3"), ("crop", "crops")):
        if label in datasets:
            cols += [f"{label}:hit", f"{label}:mass", f"{label}:topk"]
            heads += [f"{head} hit", f"{head} mass", f"{head} top-k"]
    if args.faith:
        cols += ["deletion", "insertion", "max_sens", "sparseness", "complexity"]
        heads += ["deletion ↓", "insertion ↑", "max-sens ↓", "sparseness ↑", "complexity ↓"]
    n = len(datasets["g2"][1])
    print(f"\n{n} maps on 2x2 grids (EfficientNet-Lite0 at 448 px), seed {args.seed}\n")
    print("| method | " + " | ".join(heads) + " |")
    print("|---|" + "---|" * len(heads))
    for row, values in table.items():
        print(f"| {row} | " + " | ".join(fmt(values.get(c)) for c in cols) + " |")
    print(
        "\nseconds per 448 px map (CPU, shared): "
        + ", ".join(f"{k} {v:.1f}" for k, v in times.items())
    )
    if args.json:
        args.json.write_text(json.dumps({"rows": table, "times": times}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

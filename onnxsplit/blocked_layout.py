"""Exact rewrites that keep onnxruntime's blocked CPU layout (NCHWc) unbroken.

onnxruntime runs 2-D convolutions in a channel-blocked layout and keeps a tensor in it only
through ops with blocked kernels (Conv with a fused activation or sum, Add/Sum/Mul of
equal-shaped blocked tensors, Relu/Sigmoid/Tanh, pools, Concat); any other op reads and writes
plain NCHW, with a reorder pass on each side. A depthwise 1x1 convolution runs blocked at the
cost of one elementwise pass, so it stands in for such an op (or its missing fusion) where
that saves passes. Every rewrite here is exact (weights +-1 or a power of two, bias 0) and
uses standard ONNX ops only; other runtimes pay at most one cheap pass per rewrite.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxsplit.ops import clip_floor


def channels_of(tensor: gs.Tensor) -> int | None:
    """C of a rank-4 [N, C, H, W] tensor made by a 2-D Conv with a constant weight (or by a
    Relu of one, which onnxruntime fuses into it)."""
    producers = list(tensor.inputs)
    if len(producers) == 1 and producers[0].op == "Relu":
        return channels_of(producers[0].inputs[0])
    if len(producers) != 1 or producers[0].op != "Conv" or tensor.shape is None:
        return None
    weight = producers[0].inputs[1]
    if not isinstance(weight, gs.Constant) or len(weight.shape) != 4 or len(tensor.shape) != 4:
        return None
    return int(weight.shape[0])


def static_channels(tensor: gs.Tensor) -> int | None:
    """Axis 1 of a rank-4 tensor of static size (where a depthwise 1x1 Conv can scale it)."""
    shape = tensor.shape
    if shape is None or len(shape) != 4 or not isinstance(shape[1], int):
        return None
    return int(shape[1])


def channel_scale(
    graph: gs.Graph, x: gs.Tensor, factor: float, channels: int, name: str, dtype=None
) -> gs.Variable:
    """x * factor as a depthwise 1x1 Conv (x: [N, channels, H, W]); exact for factor +-1
    or a power of two. onnxruntime fuses an Add of its output into it."""
    dtype = np.dtype(x.dtype or dtype or np.float32)
    weight = gs.Constant(f"{name}/w", np.full((channels, 1, 1, 1), factor, dtype))
    bias = gs.Constant(f"{name}/b", np.zeros(channels, dtype))
    out = gs.Variable(f"{name}/out", dtype=x.dtype, shape=x.shape)
    graph.nodes.append(
        gs.Node("Conv", name, {"group": channels}, inputs=[x, weight, bias], outputs=[out])
    )
    return out


def fuse_clips(graph: gs.Graph) -> int:
    """Let each Clip with constant bounds fuse into the convolution it reads in onnxruntime.

    onnxruntime fuses Conv+Clip (and Conv+Relu) into one blocked convolution only where the
    activation is the Conv's sole reader; where the split or a backward pass reads the
    pre-activation x too (every ReLU6 of a MobileNet or EfficientNet), the Clip runs in plain
    layout with a reorder on each side (three passes instead of none). So, exactly:
    a Clip whose floor is >= 0 reads relu(x) where a Relu of x exists (clip(relu(x)) =
    clip(x); x may then have the Relu as its sole reader, which fuses), and a Clip whose
    input has other readers gets its own identity depthwise Conv to fuse with.
    Returns the number of Clips given an identity Conv."""
    rewritten = 0
    for node in list(graph.nodes):
        if node.op != "Clip":
            continue
        bounds = [t for t in node.inputs[1:] if t.name]
        if not all(isinstance(t, gs.Constant) for t in bounds):  # onnxruntime fuses constants
            continue
        x = node.inputs[0]
        floor = clip_floor(node)
        relus = [n for n in x.outputs if n.op == "Relu"]
        if relus and floor is not None and floor >= 0:
            x = node.inputs[0] = relus[0].outputs[0]
        channels = channels_of(x)
        shared = len(x.outputs) > 1 or x in graph.outputs  # no fusion into its Conv
        if channels is None or not shared:
            continue
        name = f"{node.outputs[0].name}/channel_scale"  # tensor names are unique
        node.inputs[0] = channel_scale(graph, x, 1.0, channels, name)
        rewritten += 1
    return rewritten

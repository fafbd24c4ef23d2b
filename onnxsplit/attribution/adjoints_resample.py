"""Adjoint rules of the resampling and rearranging ops that the split compiler handles:
Resize / Upsample, Gather, Tile, DepthToSpace, SpaceToDepth and ConvTranspose.

Every one of these maps is linear in its data input, so its adjoint is the transposed map:

- Resize / Upsample (nearest, linear): separable, one interpolation matrix R [out, in] per
  resized axis, computed here in numpy with onnxruntime's arithmetic (float32 coordinates,
  its nearest_mode rounding, its clamping at the borders); the adjoint applies R^T per axis as
  a MatMul (or, where R is a block pattern such as nearest 2x, as Reshape + ReduceSum). The
  resized axes need static sizes (a sizes input may be computed, as torch's Concat(Shape(x)[:2],
  sizes)); cubic, antialias, tf_crop_and_resize, nearest with half_pixel_symmetric and a scales
  input that is not a constant are refused with a clear reason.
- Gather (constant indices): a one-hot MatMul (repeated indices add up).
- Tile (constant repeats): dy reshaped into [repeats, size] blocks per axis, ReduceSum.
- DepthToSpace / SpaceToDepth: the inverse permutation (SpaceToDepth, DepthToSpace DCR, and
  for DepthToSpace CRD a channel Gather after the SpaceToDepth).
- ConvTranspose: a Conv with the same weights, strides, pads, dilations and group.

The module registers its rules on import (onnxsplit.attribution.autodiff imports it last).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxsplit.attribution.autodiff import (
    Backward,
    _attr,
    _Unsupported,
    adjoint,
    constant_value,
)

# ------------------------------------------------------------------------------------------
# Resize / Upsample
# ------------------------------------------------------------------------------------------
COORDINATE_MODES = (
    "half_pixel",
    "half_pixel_symmetric",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_half_pixel_for_nn",
)


def original_coordinates(coordinate: str, scale: float, n_in: int, n_out: int) -> np.ndarray:
    """The input coordinate of each output position (float32, as onnxruntime computes it)."""
    f32 = np.float32
    x = np.arange(n_out, dtype=f32)
    s, length_in, length_out = f32(scale), f32(n_in), f32(n_out)
    if coordinate == "asymmetric":
        return x / s
    if coordinate == "half_pixel":
        return (x + f32(0.5)) / s - f32(0.5)
    if coordinate == "pytorch_half_pixel":
        return (x + f32(0.5)) / s - f32(0.5) if n_out > 1 else np.zeros(n_out, f32)
    if coordinate == "tf_half_pixel_for_nn":
        return (x + f32(0.5)) / s
    if coordinate == "align_corners":
        if n_out == 1:
            return np.zeros(n_out, f32)
        return x * (length_in - f32(1)) / (length_out - f32(1))
    if coordinate == "half_pixel_symmetric":  # float parameters, the last steps in double
        adjustment = length_out / (s * length_in)
        offset = (length_in / f32(2)) * (f32(1) - adjustment)
        return (float(offset) + (x.astype(np.float64) + 0.5) / float(s) - 0.5).astype(f32)
    raise _Unsupported(f"coordinate_transformation_mode '{coordinate}' is not differentiated")


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """std::round: halves away from zero."""
    return np.where(x >= 0, np.floor(x + 0.5), np.ceil(x - 0.5))


def nearest_indices(orig: np.ndarray, nearest: str, downsampling: bool) -> np.ndarray:
    """The input index of each output position (onnxruntime's get_nearest_pixel)."""
    x = orig.astype(np.float64)  # float32 values, exact in float64
    if nearest == "floor":
        index = np.floor(x)
    elif nearest == "ceil":
        index = np.ceil(x)
    elif nearest == "round_prefer_ceil":
        index = _round_half_away(x)
    elif nearest == "round_prefer_floor":
        index = np.where(x == np.trunc(x) + 0.5, np.floor(x), _round_half_away(x))
    elif nearest == "simple":  # Upsample and Resize-10
        index = np.ceil(x) if downsampling else np.trunc(x)
    else:
        raise _Unsupported(f"nearest_mode '{nearest}' is not differentiated")
    return index.astype(np.int64)


def interpolation_matrix(
    mode: str, coordinate: str, nearest: str, scale: float, n_in: int, n_out: int
) -> np.ndarray:
    """R [n_out, n_in] with y = R x along one axis (float64 entries of float32 weights)."""
    matrix = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    if np.float32(scale) == np.float32(1.0):  # onnxruntime copies such an axis
        if n_in != n_out:
            raise _Unsupported(f"scale 1 maps size {n_in} to {n_out}")
        return np.eye(n_in)
    orig = original_coordinates(coordinate, scale, n_in, n_out)
    if mode == "nearest":
        index = np.clip(nearest_indices(orig, nearest, scale < 1), 0, n_in - 1)
        matrix[rows, index] = 1.0
        return matrix
    if mode != "linear":
        raise _Unsupported(f"mode '{mode}' is not differentiated (nearest and linear are)")
    v = np.clip(orig, np.float32(0), np.float32(n_in - 1)).astype(np.float32)
    low = np.minimum(v.astype(np.int64), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    d_low = np.abs(v - low.astype(np.float32))  # weight of the high neighbour
    d_high = np.abs(v - high.astype(np.float32))  # weight of the low neighbour
    same = low == high
    d_low = np.where(same, np.float32(0.5), d_low)
    d_high = np.where(same, np.float32(0.5), d_high)
    np.add.at(matrix, (rows, low), d_high.astype(np.float64))
    np.add.at(matrix, (rows, high), d_low.astype(np.float64))
    return matrix


def _dim(value) -> int | None:
    return int(value) if isinstance(value, int | np.integer) and value >= 0 else None


def _optional_constant(node: gs.Node, index: int, what: str) -> np.ndarray | None:
    """The value of an optional input: None when absent or empty; refused unless constant."""
    if index >= len(node.inputs) or not node.inputs[index].name:
        return None
    value = constant_value(node.inputs[index])
    if value is None:
        raise _Unsupported(f"the {what} input must be a constant")
    return None if value.size == 0 else value.reshape(-1)


def resize_plan(node: gs.Node, opset: int) -> list[np.ndarray | None]:
    """One interpolation matrix per axis of a Resize / Upsample node (None: a copied axis)."""
    x, y = node.inputs[0], node.outputs[0]
    if x.shape is None:
        raise _Unsupported("the input rank is unknown")
    rank = len(x.shape)
    mode = _attr(node, "mode", "nearest")
    mode = "linear" if mode in ("bilinear", "trilinear") else mode
    if mode == "cubic":
        raise _Unsupported("cubic interpolation is not differentiated (nearest and linear are)")
    legacy = node.op == "Upsample" or opset < 11
    coordinate = "asymmetric" if legacy else _attr(node, "coordinate_transformation_mode", "")
    coordinate = coordinate or "half_pixel"
    nearest = "simple" if legacy else _attr(node, "nearest_mode", "round_prefer_floor")
    if coordinate == "tf_crop_and_resize":
        raise _Unsupported("tf_crop_and_resize (roi and extrapolation) is not differentiated")
    if coordinate not in COORDINATE_MODES:
        raise _Unsupported(f"coordinate_transformation_mode '{coordinate}' is unknown")
    if coordinate == "half_pixel_symmetric" and mode == "nearest":
        # onnxruntime's mixed float/double arithmetic rounds some ties (the center) the other
        # way than any reproduction found: the selected input could differ by one
        raise _Unsupported("nearest with half_pixel_symmetric is not differentiated")
    if int(_attr(node, "antialias", 0)):
        raise _Unsupported("antialias is not differentiated")
    if _attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        raise _Unsupported("keep_aspect_ratio_policy other than 'stretch' is not differentiated")
    axes = [int(a) % rank for a in _attr(node, "axes", None) or range(rank)]

    def per_axis(values, fill):
        if values is None:
            return None
        if len(values) != len(axes):
            raise _Unsupported("scales/sizes do not match the resized axes")
        full = [fill(i) for i in range(rank)]
        for a, v in zip(axes, values, strict=True):
            full[a] = v
        return full

    if node.op == "Upsample" and "scales" in node.attrs:
        scales = [float(s) for s in node.attrs["scales"]]
        sizes = None
    elif legacy:
        scales = _optional_constant(node, 1, "scales")
        if scales is None:
            raise _Unsupported("the scales input is missing")
        scales, sizes = [float(s) for s in scales], None
    else:
        scales = _optional_constant(node, 2, "scales")
        scales = per_axis(None if scales is None else [float(s) for s in scales], lambda i: 1.0)
        sizes = None
        if scales is None and len(node.inputs) > 3 and node.inputs[3].name:
            sizes = per_axis(symbolic_ints(node.inputs[3]), lambda i: x.shape[i])
    out_shape = list(y.shape) if y.shape is not None and len(y.shape) == rank else [None] * rank
    geometry = []  # per axis: (n_in, n_out, scale), None where the axis is copied
    for i in range(rank):
        n_in, n_out = _dim(x.shape[i]), _dim(out_shape[i])
        if scales is not None:
            scale = scales[i]
            if np.float32(scale) == np.float32(1.0):
                geometry.append(None)  # onnxruntime copies such an axis
                continue
            if n_out is None and n_in is not None:
                n_out = int(np.float32(scale) * np.float32(n_in))
        else:
            target = sizes[i] if sizes is not None and sizes[i] is not None else out_shape[i]
            if isinstance(target, str) and target == x.shape[i]:
                geometry.append(None)  # the input's own (dynamic) size: scale 1
                continue
            n_out = _dim(target) if _dim(target) is not None else n_out
            scale = float(np.float32(n_out) / np.float32(n_in)) if n_in and n_out else None
        if n_in is None or n_out is None:
            raise _Unsupported(f"the size of the resized axis {i} must be static")
        geometry.append((n_in, n_out, scale))
    if all(g is None or g[0] == g[1] for g in geometry):
        return [None] * rank  # onnxruntime copies the input when the shape is unchanged
    return [
        None
        if g is None or np.float32(g[2]) == np.float32(1.0)
        else interpolation_matrix(mode, coordinate, nearest, g[2], g[0], g[1])
        for g in geometry
    ]


def symbolic_ints(tensor: gs.Tensor, depth: int = 0) -> list[int | str | None] | None:
    """The values of a small int64 tensor built from constants and Shape ops (torch's sizes:
    Concat(Slice(Shape(x)), constant)): ints, the symbol of a dynamic dimension it copies, or
    None for an unknown entry; None when the tensor is made some other way."""
    value = constant_value(tensor)
    if value is not None:
        return [int(v) for v in np.asarray(value).reshape(-1)]
    if not tensor.inputs or depth > 16:
        return None
    node = tensor.inputs[0]
    if node.op == "Shape":
        source = node.inputs[0].shape
        if source is None:
            return None
        picked = list(source)[int(node.attrs.get("start", 0)) : node.attrs.get("end", None)]
        return [d if isinstance(d, str) and d else _dim(d) for d in picked]
    if node.op in ("Cast", "Identity", "Squeeze", "Unsqueeze", "Flatten"):
        return symbolic_ints(node.inputs[0], depth + 1)
    if node.op == "Concat":
        parts = [symbolic_ints(t, depth + 1) for t in node.inputs]
        return None if any(p is None for p in parts) else [v for p in parts for v in p]
    params = [constant_value(t) if t.name else None for t in node.inputs[1:]]
    if any(t.name and p is None for t, p in zip(node.inputs[1:], params, strict=True)):
        return None
    data = symbolic_ints(node.inputs[0], depth + 1)
    if data is None:
        return None
    if node.op == "Gather" and int(node.attrs.get("axis", 0)) == 0:
        return [data[int(i)] for i in np.asarray(params[0]).reshape(-1)]
    if node.op == "Slice" and len(params) >= 2:
        start, end = int(params[0].reshape(-1)[0]), int(params[1].reshape(-1)[0])
        step = int(params[3].reshape(-1)[0]) if len(params) > 3 and params[3] is not None else 1
        return data[slice(start, end, step)]
    return None


def _block_factor(matrix: np.ndarray) -> int | None:
    """k where R is the block pattern R[o, o // k] = 1 (each input copied k times in a row)."""
    n_out, n_in = matrix.shape
    if n_out % n_in:
        return None
    k = n_out // n_in
    return k if np.array_equal(matrix, np.repeat(np.eye(n_in), k, axis=0)) else None


def _apply_transposed(bw: Backward, grad: gs.Tensor, matrix: np.ndarray, axis: int, rank: int):
    """grad contracted with R along `axis`: dx[.., i, ..] = sum_o R[o, i] dy[.., o, ..]."""
    em = bw.em
    if axis == rank - 1:
        return em.one("MatMul", [grad, em.const(matrix.astype(em.dtype), "resize_r")])
    if axis == rank - 2:
        return em.one("MatMul", [em.const(matrix.T.astype(em.dtype), "resize_rt"), grad])
    perm = [a for a in range(rank) if a != axis] + [axis]
    moved = em.one("Transpose", [grad], {"perm": perm})
    mapped = em.one("MatMul", [moved, em.const(matrix.astype(em.dtype), "resize_r")])
    return em.one("Transpose", [mapped], {"perm": [int(i) for i in np.argsort(perm)]})


def _block_sum(bw: Backward, grad: gs.Tensor, x: gs.Tensor, factors: dict[int, int]):
    """dy [.., n k, ..] -> [.., n, ..] summed over each block of k (nearest, integer scale);
    None where the reshape needs sizes that are not static."""
    rank = len(x.shape)
    first = min(factors)
    target: list[int] = []
    reduced: list[int] = []
    for i in range(rank):
        n = _dim(x.shape[i])
        if i < first:
            target.append(0 if n is None else n)  # Reshape's 0 copies dy's dim i (= x's)
        elif n is None:
            return None
        elif i in factors:
            target += [n, factors[i]]
            reduced.append(len(target) - 1)
        else:
            target.append(n)
    em = bw.em
    blocks = em.one("Reshape", [grad, bw.i64(target, "shape")])
    return _reduce_sum(bw, blocks, reduced)


def _reduce_sum(bw: Backward, tensor: gs.Tensor, axes: list[int]) -> gs.Variable:
    """ReduceSum without keepdims (axes an attribute before opset 13)."""
    if bw.opset < 13:
        return bw.em.one("ReduceSum", [tensor], {"axes": list(axes), "keepdims": 0})
    return bw.em.one("ReduceSum", [tensor, bw.i64(axes, "axes")], {"keepdims": 0})


@adjoint(
    "Resize",
    "Upsample",
    summary="R^T per resized axis (nearest / linear with onnxruntime's coordinates and "
    "rounding; static sizes; no cubic, antialias, tf_crop_and_resize)",
)
def _resize(bw, node, douts, needs):
    if any(needs[1:]):
        raise _Unsupported("roi, scales and sizes must not depend on the differentiated input")
    plan = resize_plan(node, bw.opset)
    grad = douts[0]
    rest = [None] * (len(node.inputs) - 1)
    resized = {i: m for i, m in enumerate(plan) if m is not None}
    if not resized:
        return [grad, *rest]
    factors = {i: _block_factor(m) for i, m in resized.items()}
    if all(k is not None for k in factors.values()):
        summed = _block_sum(bw, grad, node.inputs[0], factors)
        if summed is not None:
            return [summed, *rest]
    rank = len(plan)
    for axis, matrix in resized.items():
        grad = _apply_transposed(bw, grad, matrix, axis, rank)
    return [grad, *rest]


# ------------------------------------------------------------------------------------------
# Gather, Tile
# ------------------------------------------------------------------------------------------
@adjoint("Gather", summary="one-hot MatMul of dy (constant indices; repeated indices add up)")
def _gather(bw, node, douts, needs):
    x, indices = node.inputs[:2]
    if needs[1]:
        raise _Unsupported("the indices must not depend on the differentiated input")
    idx = constant_value(indices)
    if idx is None:
        raise _Unsupported("the indices must be a constant")
    if x.shape is None:
        raise _Unsupported("the input rank is unknown")
    rank = len(x.shape)
    axis = int(node.attrs.get("axis", 0)) % rank
    size = _dim(x.shape[axis])
    if size is None:
        raise _Unsupported(f"the gathered axis {axis} must have a static size")
    flat = np.asarray(idx, np.int64).reshape(-1)
    flat = np.where(flat < 0, flat + size, flat)
    if flat.size == 0 or np.any(flat < 0) or np.any(flat >= size):
        raise _Unsupported("the indices must be in range and not empty")
    em = bw.em
    onehot = np.zeros((size, flat.size), em.dtype)  # [size, k]: column j selects flat[j]
    onehot[flat, np.arange(flat.size)] = 1
    # dy: x's dims before the axis, the index dims, x's dims after -> [.., k, rest]
    blocks = em.one("Reshape", [douts[0], bw.i64([0] * axis + [flat.size, -1], "shape")])
    summed = em.one("MatMul", [em.const(onehot, "onehot"), blocks])  # [.., size, rest]
    after = [_dim(d) for d in x.shape[axis + 1 :]]
    rest = int(np.prod(after)) if all(d is not None for d in after) else None
    grad = bw.reshape_like(summed, x, [*x.shape[:axis], size, rest])
    return [grad, None]


def _constant_ints(node: gs.Node, index: int, what: str) -> list[int]:
    value = constant_value(node.inputs[index]) if index < len(node.inputs) else None
    if value is None:
        raise _Unsupported(f"the {what} must be a constant")
    return [int(v) for v in np.asarray(value).reshape(-1)]


@adjoint("Tile", summary="dy reshaped into [repeats, size] blocks, ReduceSum over the repeats")
def _tile(bw, node, douts, needs):
    x = node.inputs[0]
    if needs[1]:
        raise _Unsupported("the repeats must not depend on the differentiated input")
    repeats = _constant_ints(node, 1, "repeats")
    if x.shape is None or len(x.shape) != len(repeats):
        raise _Unsupported("the input rank is unknown")
    if all(r == 1 for r in repeats):
        return [douts[0], None]
    if any(r < 1 for r in repeats):
        return [bw.zeros_like(x), None]  # an empty output: no input element is read
    em = bw.em
    first = next(i for i, r in enumerate(repeats) if r != 1)
    dims = [_dim(d) for d in x.shape]
    reduced, target = [], []
    for i, (r, n) in enumerate(zip(repeats, dims, strict=True)):
        if r != 1:
            reduced.append(len(target))
            target.append(r)
        target.append(0 if n is None and i < first else n)
    if any(t is None for t in target):  # a dynamic size after the first tiled axis
        shape = bw.shape_of(x)
        pieces = []
        for i, r in enumerate(repeats):
            if r != 1:
                pieces.append(bw.i64([r], "repeat"))
            ends = [bw.i64([i], "s"), bw.i64([i + 1], "e")]
            pieces.append(em.one("Slice", [shape, *ends]))
        shape_of_blocks = em.one("Concat", pieces, {"axis": 0})
    else:
        shape_of_blocks = bw.i64(target, "shape")
    blocks = em.one("Reshape", [douts[0], shape_of_blocks])
    return [_reduce_sum(bw, blocks, reduced), None]


# ------------------------------------------------------------------------------------------
# DepthToSpace, SpaceToDepth
# ------------------------------------------------------------------------------------------
@adjoint(
    "DepthToSpace",
    summary="SpaceToDepth (DCR); CRD: SpaceToDepth then the channel permutation (a Gather)",
)
def _depth_to_space(bw, node, douts, needs):
    block = int(node.attrs["blocksize"])
    mode = _attr(node, "mode", "DCR")
    em = bw.em
    grad = em.one("SpaceToDepth", [douts[0]], {"blocksize": block})
    if mode == "DCR":
        return [grad]
    if mode != "CRD":
        raise _Unsupported(f"DepthToSpace mode '{mode}' is unknown")
    x = node.inputs[0]
    channels = _dim(x.shape[1]) if x.shape is not None and len(x.shape) > 1 else None
    if channels is None:
        raise _Unsupported("the channel count must be static")
    per = channels // (block * block)
    # x channel c * b^2 + i * b + j is SpaceToDepth's channel (i * b + j) * per + c
    c, ij = np.meshgrid(np.arange(per), np.arange(block * block), indexing="ij")
    perm = (ij * per + c).reshape(-1)
    return [em.one("Gather", [grad, bw.i64(perm, "perm")], {"axis": 1})]


@adjoint("SpaceToDepth", summary="DepthToSpace (DCR), the inverse permutation")
def _space_to_depth(bw, node, douts, needs):
    block = int(node.attrs["blocksize"])
    attrs = {"blocksize": block} if bw.opset < 11 else {"blocksize": block, "mode": "DCR"}
    return [bw.em.one("DepthToSpace", [douts[0]], attrs)]


# ------------------------------------------------------------------------------------------
# ConvTranspose
# ------------------------------------------------------------------------------------------
@adjoint(
    "ConvTranspose",
    summary="Conv with the same weights, strides, pads, dilations and group (output_padding "
    "falls outside every window)",
)
def _conv_transpose(bw, node, douts, needs):
    weight = node.inputs[1]
    if any(needs[1:]):
        raise _Unsupported("weights and bias must not depend on the differentiated input")
    auto_pad = _attr(node, "auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID") or "output_shape" in node.attrs:
        raise _Unsupported("auto_pad SAME_* and output_shape are not differentiated; use pads")
    w = constant_value(weight)
    kernel = list(node.attrs.get("kernel_shape", w.shape[2:] if w is not None else []))
    if not kernel and weight.shape is not None:
        kernel = [_dim(d) for d in weight.shape[2:]]
    if not kernel or any(k is None for k in kernel):
        raise _Unsupported("the kernel shape is unknown")
    nd = len(kernel)
    strides = list(node.attrs.get("strides", [1] * nd))
    dilations = list(node.attrs.get("dilations", [1] * nd))
    pads = [0] * (2 * nd) if auto_pad == "VALID" else list(node.attrs.get("pads", [0] * (2 * nd)))
    begin, end = pads[:nd], pads[nd:]
    extra = list(node.attrs.get("output_padding", [0] * nd))
    if any(e >= s for e, s in zip(extra, strides, strict=True)):
        raise _Unsupported("output_padding must be smaller than the stride")
    # the Conv over dy with the same pads has floor((s (n - 1) + output_padding) / s) + 1 = n
    # outputs: the output_padding positions lie beyond its last window
    attrs = {
        "kernel_shape": [int(k) for k in kernel],
        "strides": [int(s) for s in strides],
        "dilations": [int(d) for d in dilations],
        "pads": [int(p) for p in begin + end],
        "group": int(node.attrs.get("group", 1)),
    }
    return [bw.em.one("Conv", [douts[0], weight], attrs)] + [None] * (len(node.inputs) - 1)

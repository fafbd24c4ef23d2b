"""A 2x2 digit-grid pointing game for the self-explaining models (numpy + onnxruntime, no torch).

A grid is a 16x16 image made of four 8x8 digits of the test set with four distinct classes
(row-major tiles). Every tile gives one sample: target = the true class of the tile, mask = the
tile. A map ``[16, 16]`` for the target class scores

* ``hit``: 1 when the map's (first) maximum lies inside the tile (chance: 0.25);
* ``mass``: the share of the map's positive mass, sum_tile relu(m) / sum relu(m), inside the
  tile (0 for a map without positive value; chance: about 0.25).

A map with NaN or inf scores 0 (the same definitions as ``onnxsplit.eval.grid.pointing_scores``).
Grids are drawn with ``numpy.random.default_rng(seed)``: four distinct classes, then one test
digit of each, in a random tile order.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from onnxsplit.contract import TARGET
from onnxsplit.runtime import make_session

TILE = 8


def build_digit_grids(
    x: np.ndarray, y: np.ndarray, n_grids: int = 200, seed: int = 0, gap: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``images`` float32 [G, C, S, S] and ``classes`` int64 [G, 4] (row-major tiles) from
    8x8 digits ``x`` [N, C, 8, 8] with labels ``y``; S = 16 + gap (``gap`` zero pixels
    between the tiles; 0 for the 16x16 game)."""
    rng = np.random.default_rng(seed)
    by_class = {int(c): np.flatnonzero(y == c) for c in np.unique(y)}
    labels = sorted(by_class)
    if len(labels) < 4:
        raise ValueError("a 2x2 grid needs four distinct classes")
    channels = x.shape[1]
    step = TILE + gap
    images = np.zeros((n_grids, channels, 2 * TILE + gap, 2 * TILE + gap), np.float32)
    classes = np.zeros((n_grids, 4), np.int64)
    for g in range(n_grids):
        chosen = rng.choice(labels, size=4, replace=False)
        for t, c in enumerate(chosen):
            i = int(rng.choice(by_class[int(c)]))
            r, col = divmod(t, 2)
            top, left = r * step, col * step
            images[g, :, top : top + TILE, left : left + TILE] = x[i]
            classes[g, t] = c
    return images, classes


def tile_masks(gap: int = 0) -> np.ndarray:
    """bool [4, S, S]: the quadrant of each tile (the tile plus half the gap), row-major."""
    size = 2 * TILE + gap
    half = size // 2
    masks = np.zeros((4, size, size), bool)
    for t in range(4):
        r, c = divmod(t, 2)
        masks[t, r * half : (r + 1) * half or size, c * half : (c + 1) * half or size] = True
    return masks


def pointing_scores(maps: np.ndarray, masks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample ``hit`` and ``mass`` of maps [S, H, W] against masks [S, H, W]."""
    s = np.asarray(maps, np.float64).reshape(len(maps), -1)
    m = np.asarray(masks, bool).reshape(len(masks), -1)
    finite = np.all(np.isfinite(s), axis=1)
    s = np.where(np.isfinite(s), s, 0.0)
    hit = m[np.arange(len(s)), np.argmax(s, axis=1)].astype(np.float64)
    pos = np.maximum(s, 0.0)
    total = pos.sum(axis=1)
    inside = (pos * m).sum(axis=1)
    mass = np.divide(inside, total, out=np.zeros_like(total), where=total > 0)
    return {"hit": np.where(finite, hit, 0.0), "mass": np.where(finite, mass, 0.0)}


def run_maps(
    model: onnx.ModelProto,
    images: np.ndarray,
    targets: np.ndarray,
    outputs: list[str],
    input_name: str = "input",
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """Run an attribution model (inputs data + target) and return the requested outputs."""
    session = make_session(model.SerializeToString(), "cpu")
    results: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
    for i in range(0, len(images), batch_size):
        values = session.run(
            outputs,
            {input_name: images[i : i + batch_size], TARGET: targets[i : i + batch_size]},
        )
        for name, value in zip(outputs, values, strict=True):
            results[name].append(value)
    return {name: np.concatenate(parts) for name, parts in results.items()}


def pointing_game(
    explainers: Mapping[str, tuple[onnx.ModelProto, str]],
    images: np.ndarray,
    classes: np.ndarray,
    gap: int = 0,
) -> dict[str, dict[str, float]]:
    """Score each explainer ``name -> (attribution model, map output)`` on every tile of every
    grid. Returns ``name -> {"hit", "mass", "samples"}`` (means over samples)."""
    n = len(images)
    sample_images = np.repeat(images, 4, axis=0)
    targets = classes.reshape(-1).astype(np.int64)
    masks = np.tile(tile_masks(gap), (n, 1, 1))
    by_model: dict[int, tuple[onnx.ModelProto, list[str]]] = {}
    for model, output in explainers.values():
        by_model.setdefault(id(model), (model, []))[1].append(output)
    maps: dict[tuple[int, str], np.ndarray] = {}
    for key, (model, outputs) in by_model.items():
        for name, value in run_maps(model, sample_images, targets, outputs).items():
            maps[(key, name)] = value
    table = {}
    for name, (model, output) in explainers.items():
        scores = pointing_scores(maps[(id(model), output)], masks)
        table[name] = {
            "hit": float(scores["hit"].mean()),
            "mass": float(scores["mass"].mean()),
            "samples": int(len(targets)),
        }
    return table


def grid_accuracy(model: onnx.ModelProto, images: np.ndarray, classes: np.ndarray) -> float:
    """Share of grids whose top-1 logit is one of the grid's four classes (logits output)."""
    session = make_session(model.SerializeToString(), "cpu")
    logits = session.run(["logits"], {"input": images})[0]
    top = logits.argmax(1)
    return float(np.mean([top[i] in classes[i] for i in range(len(images))]))

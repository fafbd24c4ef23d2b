"""The grid pointing game: real photos of distinct ImageNet classes tiled into a grid.

ImageNet-S cannot be downloaded here, so localisation is measured on grids of the real photos
shipped with installed packages (:mod:`onnxsplit.zoo.photos`).  Each photo is center-cropped to
a square and resized (PIL bilinear) to ``tile`` px; ``grid × grid`` distinct photos are placed
in a ``(grid·tile) × (grid·tile)`` image, and the class of every tile is explained in turn: the
map for the class of one tile should fall inside that tile.

* The class of a tile is the model's top-1 on the single tile (resized to the model's 224 px
  when ``tile != 224``).  A photo is kept only if that top-1 is *stable*: the mirrored tile gets
  the same top-1.  Photos whose classes collide with another kept photo are dropped (the later
  one in ``photos`` order), so every class of a grid is carried by exactly one tile.
* Grids: every choice of ``grid²`` photos among the kept ones (``itertools.combinations`` in
  ``photos`` order), each in one arrangement drawn with ``numpy.random.default_rng(seed)``.
  With ``max_grids`` smaller than the number of choices, a subset of those grids drawn with
  ``default_rng(seed + 1)`` is used (so it is a subset of the full set); larger, further
  seeded arrangements of the choices are appended (cyclically) until ``max_grids`` grids
  exist — this is how 3×3 grids of 9 photos get more than one grid.
  The result is deterministic given the arguments.
* Defaults reproduce FINDINGS.md: the eight photos chelsea, coffee, rocket, motorcycle, china,
  flower, grace_hopper, camera at 224 px per tile, 2×2 grids: C(8, 4) = 70 grids, 280 samples.

:func:`pointing_scores` scores one map against one tile mask (``hit``, ``mass``, ``mass_half``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

DEFAULT_PHOTOS = (
    "chelsea",
    "coffee",
    "rocket",
    "motorcycle",
    "china",
    "flower",
    "grace_hopper",
    "camera",
)
# Stable under the mirror check but not the photo's true class (astronaut -> "bobsled",
# quokka -> "wombat"); usable when a 3x3 grid needs a ninth photo, not in the defaults.
EXTRA_PHOTOS = ("quokka", "astronaut")
MODEL_TILE = 224


@dataclass
class GridSample:
    """One map to explain: a grid image, the tile of the target class, and the class."""

    image: np.ndarray  # (H, W, 3) uint8 RGB, the whole grid
    mask: np.ndarray  # (H, W) bool, the tile of the target class
    target: int  # class index explained
    name: str  # e.g. "g2_chelsea-coffee-rocket-flower_t0"


def square_tile(photo: np.ndarray, tile: int) -> np.ndarray:
    """Center square crop of an RGB uint8 photo, resized bilinearly (PIL) to ``tile`` px."""
    from PIL import Image

    h, w = photo.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = np.ascontiguousarray(photo[top : top + side, left : left + side, :3])
    return np.asarray(Image.fromarray(crop).resize((tile, tile), Image.BILINEAR))


@cache
def _session(model: str):
    import onnxruntime as ort

    from onnxsplit.zoo.registry import model_path

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(model_path(model)), options, providers=["CPUExecutionProvider"])


def _logits(model: str, image: np.ndarray) -> np.ndarray:
    if model != "efficientnet_lite0":
        raise ValueError(f"the grid pointing game supports 'efficientnet_lite0', not {model!r}")
    if image.shape[:2] != (MODEL_TILE, MODEL_TILE):
        from PIL import Image

        image = np.asarray(Image.fromarray(image).resize((MODEL_TILE, MODEL_TILE), Image.BILINEAR))
    x = (image.astype(np.float32) - 127.0) / 128.0
    x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
    session = _session(model)
    return session.run(None, {session.get_inputs()[0].name: x})[0][0]


@cache
def tile_class(model: str, photo: str, tile: int) -> tuple[int, bool]:
    """(top-1 class of the photo's tile, whether the mirrored tile has the same top-1)."""
    from onnxsplit.zoo.photos import load_photo

    t = square_tile(load_photo(photo), tile)
    top = int(np.argmax(_logits(model, t)))
    mirrored = int(np.argmax(_logits(model, np.ascontiguousarray(t[:, ::-1]))))
    return top, top == mirrored


def grid_photos(
    model: str = "efficientnet_lite0", tile: int = MODEL_TILE, photos: Sequence[str] | None = None
) -> list[tuple[str, int]]:
    """The usable ``(photo, class)`` pairs: stable top-1, classes distinct, in ``photos`` order."""
    kept: list[tuple[str, int]] = []
    for name in DEFAULT_PHOTOS if photos is None else photos:
        cls, stable = tile_class(model, name, tile)
        if stable and all(cls != c for _, c in kept):
            kept.append((name, cls))
    return kept


def build_grid_dataset(
    model: str = "efficientnet_lite0",
    grid: int = 2,
    tile: int = 224,
    photos: Sequence[str] | None = None,
    max_grids: int | None = None,
    seed: int = 0,
) -> list[GridSample]:
    """``grid × grid`` grids of distinct photos, one :class:`GridSample` per tile (row-major).

    The image of a sample is ``(grid·tile, grid·tile, 3)`` uint8; its ``target`` is the class
    of its tile (see the module docstring for how photos, classes and grids are chosen).
    Raises ``ValueError`` when fewer than ``grid²`` photos are usable.
    """
    from onnxsplit.zoo.photos import load_photo

    if grid < 1 or tile < 1:
        raise ValueError(f"grid and tile must be positive, got grid={grid}, tile={tile}")
    kept = grid_photos(model, tile, photos)
    n = grid * grid
    if len(kept) < n:
        raise ValueError(
            f"a {grid}x{grid} grid needs {n} photos with stable, distinct classes; only "
            f"{len(kept)} usable: {[p for p, _ in kept]}"
        )
    rng = np.random.default_rng(seed)
    choices = list(itertools.combinations(range(len(kept)), n))
    arrangements = [tuple(int(i) for i in rng.permutation(c)) for c in choices]
    if max_grids is not None and max_grids < len(arrangements):
        # a seeded subset of the full set (so a subset's samples are samples of the full set)
        pick = np.random.default_rng(seed + 1).choice(len(arrangements), max_grids, False)
        arrangements = [arrangements[i] for i in sorted(pick.tolist())]
    k = 0
    while max_grids is not None and len(arrangements) < max_grids:
        arrangements.append(tuple(int(i) for i in rng.permutation(choices[k % len(choices)])))
        k += 1
    tiles = {i: square_tile(load_photo(kept[i][0]), tile) for i in range(len(kept))}
    side = grid * tile
    samples: list[GridSample] = []
    seen: dict[str, int] = {}
    for order in arrangements:
        image = np.zeros((side, side, 3), np.uint8)
        for pos, i in enumerate(order):
            r, c = divmod(pos, grid)
            image[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = tiles[i]
        stem = f"g{grid}_" + "-".join(kept[i][0] for i in order)
        repeat = seen.get(stem, 0)
        seen[stem] = repeat + 1
        if repeat:
            stem += f"_r{repeat}"
        for pos, i in enumerate(order):
            r, c = divmod(pos, grid)
            mask = np.zeros((side, side), bool)
            mask[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = True
            samples.append(GridSample(image, mask, kept[i][1], f"{stem}_t{pos}"))
    return samples


def pointing_scores(saliency: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Score one map against the tile mask of its class.

    ``saliency``: ``(H, W)`` (a leading axis of size 1, or a channel axis, is summed away) at
    the mask's resolution.  Returns

    * ``hit``: 1.0 if the map's (first) maximum lies inside the mask, else 0.0;
    * ``mass``: the share of the map's positive mass, ``Σ_mask relu(s) / Σ relu(s)``, inside the
      mask (0.0 when the map has no positive value);
    * ``mass_half``: 1.0 if ``mass > 0.5``, else 0.0.

    A map with any NaN or inf scores 0 on all three (a failure, never skipped).
    """
    s = np.asarray(saliency, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if s.ndim == 3:
        s = s.sum(axis=0) if s.shape[1:] == m.shape else s.sum(axis=-1)
    if s.shape != m.shape:
        raise ValueError(f"saliency shape {s.shape} does not match mask shape {m.shape}")
    if not np.all(np.isfinite(s)):
        return {"hit": 0.0, "mass": 0.0, "mass_half": 0.0}
    hit = float(m.flat[int(np.argmax(s))])
    pos = np.maximum(s, 0.0)
    total = float(pos.sum())
    mass = float(pos[m].sum() / total) if total > 0 and math.isfinite(total) else 0.0
    return {"hit": hit, "mass": mass, "mass_half": float(mass > 0.5)}


def rank_scores(saliency: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Localisation scores that a shift or a positive rescaling of the map cannot change
    (unlike ``mass``: subtracting a constant from a map raises its positive mass share).

    * ``topk``: the share of the ``k = mask.sum()`` highest-valued pixels that lie inside the
      mask (Quantus' TopKIntersection / RelevanceRankAccuracy with k = the mask size; random:
      the mask's area share);
    * ``auc``: the probability that a random pixel inside the mask has a higher value than a
      random pixel outside (ties count one half; the ROC AUC of the map as a mask detector;
      random: 0.5).

    A map with any NaN or inf scores 0 on both.
    """
    s = np.asarray(saliency, dtype=np.float64).reshape(-1)
    m = np.asarray(mask, dtype=bool).reshape(-1)
    if s.shape != m.shape:
        raise ValueError(f"saliency size {s.size} does not match mask size {m.size}")
    if not np.all(np.isfinite(s)):
        return {"topk": 0.0, "auc": 0.0}
    k = int(m.sum())
    order = np.argsort(-s, kind="stable")
    topk = float(m[order[:k]].mean()) if k else 0.0
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # average ranks, 1-based
    n_in, n_out = k, m.size - k
    auc = (ranks[m].sum() - n_in * (n_in + 1) / 2) / (n_in * n_out) if n_in and n_out else 0.0
    return {"topk": topk, "auc": float(auc)}

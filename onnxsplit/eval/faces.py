"""The ``face-grid`` dataset: the grid pointing game for the FER2013 mini-Xception (64×64 gray).

scikit-image's ``lfw_subset`` holds 100 LFW face crops and 100 non-face patches (25×25 gray).
Each sample is a 2×2 grid of 32 px tiles: one face (bicubic 25 → 32 px) in a seeded random tile,
three non-face patches in the others; the mask is the face's tile and the class explained is
the model's top-1 emotion for the face alone (bicubic 25 → 64 px), the convention of the
EfficientNet grids (each tile's own class). "Where is the evidence for the face's emotion?" has
one right answer: on the face. Grids 100–199 hold the same faces mirrored (left ↔ right), with
their own top-1 emotion and their own tile and fillers, so that a run can have up to 200
samples; grids i and i + 100 are not independent (one person), which the paired tests ignore.
"""

from __future__ import annotations

import numpy as np

from onnxsplit.eval.datasets import Sample

MODEL = "fer_mini_xception"
TILE = 32
MAX_GRIDS = 200


def _resized(patch: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    image = Image.fromarray((patch * 255).round().astype(np.uint8))
    return np.asarray(image.resize((size, size), Image.BICUBIC))


def _emotions(faces: np.ndarray) -> np.ndarray:
    """The FER model's top-1 class of each face alone (its preprocessing: x / 127.5 − 1)."""
    import onnxruntime as ort

    from onnxsplit.zoo import registry

    session = ort.InferenceSession(
        str(registry.model_path(MODEL)), providers=["CPUExecutionProvider"]
    )
    alone = np.stack([_resized(p, 64) for p in faces]).astype(np.float32)
    x = (alone / 255.0 * 2.0 - 1.0)[..., None]
    name = session.get_inputs()[0].name
    return session.run(None, {name: x})[0].argmax(1)


def face_grids(limit: int | None = None, seed: int = 0) -> list[Sample]:
    """The first `limit` (default 200) face grids, drawn with `seed`."""
    from skimage.data import lfw_subset

    n = MAX_GRIDS if limit is None else min(limit, MAX_GRIDS)
    patches = lfw_subset()  # [200, 25, 25] in [0, 1]: 100 faces, then 100 non-faces
    faces = np.concatenate([patches[:100], patches[:100, :, ::-1]])  # then mirrored
    others = patches[100:]
    labels = _emotions(faces[:n])
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        where = int(rng.integers(4))
        fill = rng.choice(len(others), 3, replace=False)
        canvas = np.zeros((2 * TILE, 2 * TILE), np.uint8)
        mask = np.zeros(canvas.shape, bool)
        k = 0
        for pos in range(4):
            r, c = divmod(pos, 2)
            box = (slice(r * TILE, (r + 1) * TILE), slice(c * TILE, (c + 1) * TILE))
            if pos == where:
                canvas[box] = _resized(faces[i], TILE)
                mask[box] = True
            else:
                canvas[box] = _resized(others[fill[k]], TILE)
                k += 1
        samples.append(Sample(np.stack([canvas] * 3, -1), mask, int(labels[i]), f"face{i:03d}"))
    return samples

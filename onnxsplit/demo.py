"""The embedded default: convert the bundled digits CNN and run it on the bundled digit photo."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from onnxsplit.convert import ConvertResult, convert, run_original
from onnxsplit.load import load_model
from onnxsplit.runtime import make_session, provider_used

DATA = resources.files("onnxsplit") / "data"
SAMPLE_MODEL = "digits_cnn.onnx"
SAMPLE_IMAGE = "digit_6.png"


def digit_png_to_input(path: Path) -> np.ndarray:
    """The exact inverse of the PNG encoding of the digits set (see sample_models/manifest)."""
    gray = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    return (np.round(gray / 16) / 16).reshape(1, 1, *gray.shape).astype(np.float32)


def demo_dir() -> Path:
    """Where `onnxsplit demo` writes without --out: the cache, never the current folder."""
    from onnxsplit.explain.runner import cache_root

    return cache_root() / "demo"


def run_demo(out_dir: Path | None = None, device: str = "auto") -> tuple[ConvertResult, str]:
    out_dir = demo_dir() if out_dir is None else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = Path(str(DATA / SAMPLE_MODEL))
    result = convert(model_path, out_dir / "digits_cnn.split.onnx", force=True, device=device)
    x = digit_png_to_input(Path(str(DATA / SAMPLE_IMAGE)))
    session = make_session(result.path, device)
    logits, g, h = session.run(["logits", "g", "h"], {result.input_name: x})
    reference = run_original(load_model(model_path), result.input_name, result.output_name, x)
    k = int(np.argmax(logits[0]))
    lines = [
        f"image: {SAMPLE_IMAGE} (a real 8x8 digit from scikit-learn's digits set)",
        f"predicted digit: {k}   logit {logits[0, k]:.4f} = g {g[0, k]:.4f} - h {h[0, k]:.4f}",
        f"original model logit: {reference[0, k]:.4f}   "
        f"max |Δ| over all logits: {np.max(np.abs(logits - reference)):.2e}",
        f"provider: {provider_used(session)}",
    ]
    return result, "\n".join(lines)

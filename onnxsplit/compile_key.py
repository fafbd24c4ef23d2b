"""Cache keys of compiled attribution models (`explain` and `evaluate` caches)."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from onnxsplit import __version__


@functools.cache
def compiler_fingerprint() -> str:
    """sha256 (16 hex digits) of the onnxsplit package's Python source, which compiles the
    attribution models: any change to it gives new cache keys."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def compiled_model_key(model_id: str, method: str, target_layer: str | None, length: int) -> str:
    """Key of the model compiled for `method` at `target_layer` from the model `model_id`
    (a content hash), by this onnxsplit version and source."""
    fields = [model_id, method, target_layer, __version__, compiler_fingerprint()]
    return hashlib.sha256("|".join(map(str, fields)).encode()).hexdigest()[:length]

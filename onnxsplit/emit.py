"""Turn the split graph into a checked ONNX model and write it atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from onnxsplit import skeleton
from onnxsplit.errors import OnnxSplitError

DEFAULT_DOMAINS = ("", "ai.onnx")
PROTOBUF_LIMIT = 2**31  # bytes: protobuf cannot serialize a larger message


def to_model(graph: gs.Graph, opset: int, metadata: dict[str, str]) -> onnx.ModelProto:
    """Export, stamp metadata, and run the full ONNX checker (default domain only)."""
    model = export_lean(graph)
    size = model.ByteSize()
    if size >= PROTOBUF_LIMIT:
        raise OnnxSplitError(
            f"the emitted model is {size / 2**30:.1f} GiB, over protobuf's 2 GiB limit for one "
            "ONNX file; compile fewer methods at once (each backward pass adds transformed "
            "copies of the weights) or a smaller model"
        )
    del model.opset_import[:]
    model.opset_import.append(onnx.helper.make_opsetid("", opset))
    model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import))
    model.producer_name = "onnxsplit"
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    foreign = {n.domain for n in model.graph.node if n.domain not in DEFAULT_DOMAINS}
    if foreign:
        raise RuntimeError(f"internal error: emitted graph uses non-default domains {foreign}")
    model = _complete_output_shapes(model)
    try:
        skeleton.check_model(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        detail = str(exc).strip().splitlines()[-1][:300]
        raise OnnxSplitError(
            f"the emitted graph fails onnx's checker ({detail}); please report this with the "
            "model. Known case: a ceil_mode pool whose last window starts in the padding, "
            "whose output size onnx's shape inference and onnxruntime compute differently"
        ) from None
    return model


def export_lean(graph: gs.Graph) -> onnx.ModelProto:
    """`gs.export_onnx` that copies the large weights one at a time.

    graphsurgeon builds every initializer as a TensorProto first and copies the whole list into
    the graph (three copies of the weights at once); here the large constants are exported as
    empty placeholders and their tensors are appended one by one afterwards.
    """
    large = {
        t.name: t
        for t in graph.tensors().values()
        if isinstance(t, gs.Constant)
        and t.export_dtype == t.dtype
        and int(np.prod(t.shape)) > skeleton.SMALL_ELEMENTS
    }
    # `_values`, not `values`: reading `values` would load the lazily imported ones
    saved = {name: t._values for name, t in large.items()}
    try:
        for t in large.values():
            t.values = np.zeros(0, dtype=t.dtype)
        model = gs.export_onnx(graph)
    finally:
        for name, t in large.items():
            t.values = saved[name]
    keep = [t for t in model.graph.initializer if t.name not in large]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    for name, values in saved.items():
        if isinstance(values, gs.ir.tensor.LazyValues):
            entry = model.graph.initializer.add()
            entry.CopyFrom(values.tensor)
            entry.name = name
        else:
            model.graph.initializer.append(numpy_helper.from_array(np.asarray(values), name))
    return model


def _complete_output_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give graph outputs whose shape the source model left open an inferred shape."""
    if all(o.type.tensor_type.HasField("shape") for o in model.graph.output):
        return model
    inferred = onnx.shape_inference.infer_shapes(skeleton.skeleton(model))
    known = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output]}
    for output in model.graph.output:
        if not output.type.tensor_type.HasField("shape"):
            source = known.get(output.name)
            if source is not None and source.type.tensor_type.HasField("shape"):
                output.type.tensor_type.shape.CopyFrom(source.type.tensor_type.shape)
            else:  # the checker wants a shape; no dims is the most it can say
                output.type.tensor_type.shape.SetInParent()
    return model


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def check_destination(path: Path, force: bool, *, protected: tuple[Path, ...] = ()) -> None:
    """Refuse to overwrite the source model, or an existing file without --force."""
    resolved = path.resolve()
    for source in protected:
        if resolved == source.resolve():
            raise OnnxSplitError(f"refusing to overwrite the input model '{source}'")
    if path.is_dir():
        raise OnnxSplitError(f"'{path}' is a folder; give a file name for the output")
    if path.exists() and not force:
        raise OnnxSplitError(f"'{path}' already exists; pass --force to overwrite it")
    if not path.parent.exists():
        raise OnnxSplitError(f"output folder '{path.parent}' does not exist")
    if not os.access(path.parent, os.W_OK):
        raise OnnxSplitError(f"output folder '{path.parent}' is not writable")


def write_atomic(data: bytes, path: Path) -> None:
    """Write to a temporary file beside `path`, then rename: never a partial file."""
    try:
        handle, temporary = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
        )
    except OSError as exc:
        raise OnnxSplitError(f"could not write '{path}': {exc.strerror or exc}") from None
    try:
        os.fchmod(handle, _default_mode(path))
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise OnnxSplitError(f"could not write '{path}': {exc.strerror or exc}") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _default_mode(path: Path) -> int:
    """The mode a plain open() would give: kept for an overwritten file, else 0o666 & ~umask."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def save_model(model: onnx.ModelProto, path: Path, data: bytes | None = None) -> None:
    """Write `model` atomically; `data`: its serialization, when the caller already has it."""
    write_atomic(model.SerializeToString() if data is None else data, path)

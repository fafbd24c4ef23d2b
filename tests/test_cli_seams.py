"""The seams of the command line around the attribution contract (onnxsplit/contract.py): one
method option in every command, several methods in one `explain` run, --input/--output-name,
fixed-batch models, the recorded layout, labels/preprocessing files and all-or-nothing errors.
Real sample models (sample_models/) and tiny torch exports, through click's CliRunner."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxsplit import contract
from onnxsplit.attribution.methods import METHODS
from onnxsplit.cli import main

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
CNN = SAMPLES / "digits_cnn_op17_legacy.onnx"
MLP = SAMPLES / "digits_mlp_op17_legacy.onnx"
DIGITS = np.load(SAMPLES / "digits_test_inputs.npy").astype(np.float32)
LABELS = np.load(SAMPLES / "digits_test_labels.npy")
PNG = SAMPLES / "digit_2.png"


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ONNXSPLIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_ok(result) -> None:
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "Traceback" not in result.output


def assert_refused(result, out: Path | None = None, *fragments: str) -> str:
    """One `error:` line, exit != 0, no traceback, nothing written to `out`."""
    assert result.exit_code not in (0, None), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    if out is not None:
        assert not out.exists() or not list(out.iterdir()), sorted(out.iterdir())
    return errors[0]


def npy(tmp_path: Path, name: str, array: np.ndarray) -> Path:
    path = tmp_path / name
    np.save(path, array)
    return path


def rows(out: Path) -> list[dict]:
    return json.loads((out / "summary.json").read_text())


# -- tiny torch exports -----------------------------------------------------------------------
def _export(module, example, path: Path, dynamic: bool) -> Path:
    torch = pytest.importorskip("torch")
    module.eval()
    buffer = io.BytesIO()
    extra = {"dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}} if dynamic else {}
    with torch.no_grad():
        torch.onnx.export(
            module,
            (example,),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            **extra,
        )
    path.write_bytes(buffer.getvalue())
    return path


def _tiny_cnn(channels: int, nhwc: bool = False):
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(channels, 6, 3, padding=1)
            self.head = nn.Linear(6, 10)

        def forward(self, x):
            if nhwc:
                x = x.permute(0, 3, 1, 2)
            x = torch.relu(self.conv(x))
            return self.head(x.mean(dim=(2, 3)))

    return Tiny()


@pytest.fixture(scope="module")
def fixed_batch(tmp_path_factory):
    """digits-shaped CNNs exported without dynamic_axes: input [B, 1, 8, 8], B = 1 or 4."""
    torch = pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("fixed")
    return {
        b: _export(_tiny_cnn(1), torch.randn(b, 1, 8, 8), folder / f"fixed{b}.onnx", False)
        for b in (1, 4)
    }


@pytest.fixture(scope="module")
def four_channel(tmp_path_factory):
    """An NCHW model with 4 input channels (RGBA-like), dynamic batch."""
    torch = pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("four")
    return _export(_tiny_cnn(4), torch.randn(2, 4, 8, 8), folder / "rgba.onnx", True)


@pytest.fixture(scope="module")
def nhwc_short(tmp_path_factory):
    """An NHWC model [N, 3, 8, 3] (H = 3, W = 8, C = 3): the shape alone reads as NCHW."""
    torch = pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("nhwc")
    return _export(_tiny_cnn(3, nhwc=True), torch.randn(2, 3, 8, 3), folder / "nhwc.onnx", True)


# -- 1. one method option, the same in every command ------------------------------------------
def test_explain_takes_comma_lists_and_repeats_in_order_without_duplicates(tmp_path):
    inputs = npy(tmp_path, "d.npy", DIGITS[:2])
    out = tmp_path / "out"
    result = invoke(
        "explain",
        CNN,
        inputs,
        "--method",
        "gradient,gradcam",
        "--method",
        "gradient",
        "--methods",
        "splitcam",
        "--out",
        out,
    )
    assert_ok(result)
    got = rows(out)
    assert [(r["output"], r["method"]) for r in got] == [
        ("d_0_gradient", "gradient"),
        ("d_0_gradcam", "gradcam"),
        ("d_0_splitcam", "splitcam"),
        ("d_1_gradient", "gradient"),
        ("d_1_gradcam", "gradcam"),
        ("d_1_splitcam", "splitcam"),
    ]
    assert [r["predicted"] for r in got[::3]] == LABELS[:2].tolist()
    for stem in ("d_0_gradient", "d_0_gradcam", "d_0_splitcam", "d_1_splitcam"):
        assert np.load(out / f"{stem}.npy").shape == (8, 8)
    csv = (out / "summary.csv").read_text().splitlines()
    assert len(csv) == 1 + 6 and csv[0].startswith("input,output,method,")


def test_explain_repeated_method_keeps_every_one(tmp_path):
    out = tmp_path / "out"
    assert_ok(
        invoke(
            "explain",
            CNN,
            npy(tmp_path, "d.npy", DIGITS[0]),
            "--method",
            "gradient",
            "--method",
            "lrp_zplus",
            "--out",
            out,
        )
    )
    assert sorted(p.name for p in out.glob("*.npy")) == ["d_gradient.npy", "d_lrp_zplus.npy"]


def test_convert_methods_comma_and_repeat(tmp_path):
    out = tmp_path / "cnn.explain.onnx"
    result = invoke(
        "convert",
        CNN,
        "-o",
        out,
        "--methods",
        "gradient",
        "--method",
        "gradcam,gradient",
        "--maps-only",
        "--no-probe",
    )
    assert_ok(result)
    model = onnx.load(str(out))
    assert [o.name for o in model.graph.output] == ["logits", "map_gradient", "map_gradcam"]


def test_export_web_methods_comma_and_repeat(tmp_path):
    out = tmp_path / "bundle"
    result = invoke(
        "export-web",
        CNN,
        "--out",
        out,
        "--methods",
        "gradient,lrp_zplus",
        "--method",
        "gradient",
        "--preset",
        "digits",
        "--maps-only",
    )
    assert_ok(result)
    manifest = json.loads((out / "bundle.json").read_text())
    assert manifest["maps"] == ["map_gradient", "map_lrp_zplus"]
    assert manifest["methods"] == ["gradient", "lrp_zplus"]


def test_evaluate_methods_comma_and_repeat(tmp_path, monkeypatch):
    import onnxsplit.eval.harness as harness

    seen = {}

    class Result:
        provider, n_samples, engine, workers, seconds = "CPUExecutionProvider", 0, "local", 1, 0.0

    def fake(model, methods, metrics, data, out_dir, **kwargs):
        seen["methods"] = methods
        return Result()

    monkeypatch.setattr(harness, "evaluate", fake)
    result = invoke(
        "evaluate",
        "--model",
        CNN,
        "--methods",
        "gradient,splitcam_pos",
        "--method",
        "random",
        "--method",
        "gradient",
        "--out",
        tmp_path / "e",
    )
    assert_ok(result)
    assert seen["methods"] == ["gradient", "splitcam_pos", "random"]


@pytest.mark.parametrize(
    "command",
    [
        ["explain", CNN, PNG, "--method", "gradient,nope"],
        ["convert", CNN, "--methods", "gradient", "--method", "nope"],
        ["export-web", CNN, "--out", "OUT", "--method", "nope,gradient"],
        ["evaluate", "--model", CNN, "--method", "gradient,nope"],
    ],
    ids=["explain", "convert", "export-web", "evaluate"],
)
def test_unknown_method_is_one_error_line_listing_the_valid_ones(command, tmp_path):
    out = tmp_path / "out"
    args = [out if a == "OUT" else a for a in command]
    if command[0] == "explain":
        args += ["--out", out]
    line = assert_refused(invoke(*args), out, "unknown method 'nope'")
    assert all(name in line for name in METHODS), line
    assert not list(tmp_path.iterdir())


def test_an_empty_method_list_is_refused(tmp_path):
    assert_refused(
        invoke("explain", CNN, PNG, "--method", " , ", "--out", tmp_path / "o"),
        tmp_path / "o",
        "--method needs at least one method name",
    )


# -- 2. several methods in one run: one model, maps as if alone -------------------------------
def test_several_methods_give_the_maps_of_single_runs_and_share_one_cached_model(tmp_path):
    from onnxsplit.explain.runner import cache_root

    inputs = npy(tmp_path, "d.npy", DIGITS[:3])
    both = tmp_path / "both"
    assert_ok(
        invoke(
            "explain",
            CNN,
            inputs,
            "--method",
            "gradcam,gradient",
            "--out",
            both,
            "--batch-size",
            "2",
        )
    )
    for method in ("gradient", "gradcam"):
        alone = tmp_path / method
        assert_ok(invoke("explain", CNN, inputs, "--method", method, "--out", alone))
        for i in range(3):
            np.testing.assert_allclose(
                np.load(both / f"d_{i}_{method}.npy"),
                np.load(alone / f"d_{i}_{method}.npy"),
                rtol=1e-5,
                atol=1e-6,
            )
    # one compiled model for both, found again whatever the order of the names
    entries = [p.name for p in (cache_root() / "compiled").glob(f"{CNN.stem}-gradcam+gradient-*")]
    assert len(entries) == 1
    again = invoke(
        "explain",
        CNN,
        inputs,
        "--method",
        "gradient",
        "--method",
        "gradcam",
        "--out",
        tmp_path / "again",
    )
    assert_ok(again)
    assert "(cache)" in again.output and entries[0] in again.output
    compiled = onnx.load(str(cache_root() / "compiled" / entries[0]))
    outputs = [o.name for o in compiled.graph.output]
    assert outputs == [contract.LOGITS, "map_gradcam", "map_gradient"] or outputs == [
        contract.LOGITS,
        "map_gradient",
        "map_gradcam",
    ]


def test_trained_dc_model_explains_several_of_its_own_maps(tmp_path):
    pytest.importorskip("torch")
    from onnxsplit.train.trainer import train

    model = tmp_path / "dc.onnx"
    train(arch="mlp", epochs=1, out=model, kind="dc", seed=0)
    inputs = npy(tmp_path, "d.npy", DIGITS[:2])
    out = tmp_path / "o"
    assert_ok(invoke("explain", model, inputs, "--method", "self,self_g", "--out", out))
    assert [r["method"] for r in rows(out)] == ["self", "self_g", "self", "self_g"]
    g, f = np.load(out / "d_0_self_g.npy"), np.load(out / "d_0_self.npy")
    assert g.shape == f.shape == (8, 8) and np.all(g >= -1e-6)
    assert_refused(
        invoke("explain", model, inputs, "--method", "self,gradcam", "--out", tmp_path / "p"),
        tmp_path / "p",
        "explains itself with",
    )


# -- 3. --input and --output-name on explain --------------------------------------------------
@pytest.fixture(scope="module")
def two_outputs_two_inputs(tmp_path_factory):
    """The digits CNN with an unused second input and its hidden ReLU as a second output."""
    model = onnx.load(str(CNN))
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    model.graph.output.append(onnx.helper.make_tensor_value_info(relu.output[0], 1, None))
    model.graph.input.append(onnx.helper.make_tensor_value_info("unused", 1, [1]))
    path = tmp_path_factory.mktemp("multi") / "multi.onnx"
    onnx.save(model, str(path))
    return path


def test_explain_input_and_output_name(two_outputs_two_inputs, tmp_path):
    inputs = npy(tmp_path, "d.npy", DIGITS[:2])
    base = ["explain", two_outputs_two_inputs, inputs, "--method", "gradient"]
    assert_refused(invoke(*base, "--out", tmp_path / "a"), tmp_path / "a", "--input NAME")
    assert_refused(
        invoke(*base, "--input", "input", "--out", tmp_path / "b"),
        tmp_path / "b",
        "--output-name NAME",
    )
    assert_refused(
        invoke(*base, "--input", "input", "--output-name", "nope", "--out", tmp_path / "c"),
        tmp_path / "c",
        "no output 'nope'",
    )
    out = tmp_path / "ok"
    result = invoke(*base, "--input", "input", "--output-name", "logits", "--out", out)
    assert_ok(result)
    reference = tmp_path / "ref"
    assert_ok(invoke("explain", CNN, inputs, "--method", "gradient", "--out", reference))
    assert [r["predicted"] for r in rows(out)] == [r["predicted"] for r in rows(reference)]
    np.testing.assert_allclose(
        np.load(out / "d_1_gradient.npy"), np.load(reference / "d_1_gradient.npy"), rtol=1e-5
    )


# -- 4. fixed-batch models run in chunks of their batch ---------------------------------------
@pytest.mark.parametrize("batch", [1, 4])
def test_fixed_batch_model_explains_any_number_of_inputs(fixed_batch, batch, tmp_path):
    model = fixed_batch[batch]
    assert onnx.load(str(model)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == batch
    inputs = npy(tmp_path, "d.npy", DIGITS[:5])
    together = tmp_path / "together"
    assert_ok(invoke("explain", model, inputs, "--method", "gradient,gradcam", "--out", together))
    assert len(rows(together)) == 10
    one_by_one = tmp_path / "single"
    assert_ok(
        invoke(
            "explain",
            model,
            inputs,
            "--method",
            "gradient,gradcam",
            "--out",
            one_by_one,
            "--batch-size",
            "1",
        )
    )
    for i in range(5):
        for method in ("gradient", "gradcam"):
            np.testing.assert_allclose(
                np.load(together / f"d_{i}_{method}.npy"),
                np.load(one_by_one / f"d_{i}_{method}.npy"),
                rtol=1e-5,
                atol=1e-7,
            )
    images = invoke(
        "explain",
        model,
        PNG,
        SAMPLES / "digit_5.png",
        SAMPLES / "digit_6.png",
        "--method",
        "gradient",
        "--preprocess",
        "digits",
        "--out",
        tmp_path / "png",
    )
    assert_ok(images)
    assert len(rows(tmp_path / "png")) == 3


def test_export_web_of_a_fixed_batch_model(fixed_batch, tmp_path):
    out = tmp_path / "bundle"
    assert_ok(
        invoke(
            "export-web",
            fixed_batch[4],
            "--out",
            out,
            "--methods",
            "gradient",
            "--preset",
            "digits",
        )
    )
    assert json.loads((out / "bundle.json").read_text())["inputs"][0]["shape"][0] == 4


# -- 5. the layout the compiler recorded, not a guess from the shape --------------------------
def test_four_channel_nchw_model_is_explained_as_nchw(four_channel, tmp_path):
    from onnxsplit.explain.runner import attribution_model

    path, _ = attribution_model(four_channel, ["gradient"])
    assert contract.metadata(onnx.load(str(path)))[contract.META_LAYOUT] == "NCHW"
    rng = np.random.default_rng(0)
    inputs = npy(tmp_path, "rgba.npy", rng.random((3, 4, 8, 8), dtype=np.float32))
    out = tmp_path / "out"
    assert_ok(invoke("explain", four_channel, inputs, "--method", "gradient", "--out", out))
    assert [np.load(out / f"rgba_{i}_gradient.npy").shape for i in range(3)] == [(8, 8)] * 3
    # an RGB image cannot feed 4 channels: one clear error, not a layout guess
    assert_refused(
        invoke(
            "explain",
            four_channel,
            PNG,
            "--method",
            "gradient",
            "--preprocess",
            "unit",
            "--out",
            tmp_path / "img",
        ),
        tmp_path / "img",
        "gives 3 channels; the model wants 4",
    )


def test_nhwc_model_whose_shape_reads_as_nchw_uses_the_recorded_layout(nhwc_short, tmp_path):
    out = tmp_path / "out"
    assert_ok(
        invoke(
            "explain", nhwc_short, PNG, "--method", "gradient", "--preprocess", "unit", "--out", out
        )
    )
    saliency = np.load(out / "digit_2_gradient.npy")
    assert saliency.shape == (3, 8)  # H = 3, W = 8
    from PIL import Image

    # drawn on the user's image at its own size (the map resized back from the 3x8 input)
    assert Image.open(out / "digit_2_gradient.png").size == Image.open(PNG).size


# -- 6. labels and preprocessing files ---------------------------------------------------------
@pytest.mark.parametrize(
    "name, text, fragments",
    [
        ("labels.json", '["zero", "one",', ["labels file '", "labels.json", "is not JSON"]),
        ("labels.json", '{"a": "zero"}', ["labels.json", "class indices"]),
        ("labels.json", '"zero"', ["labels.json", "JSON list of names"]),
        ("labels.txt", "zero\none\ntwo\n", ["labels.txt", "has 3 names", "10 classes"]),
        ("labels.json", json.dumps([str(i) for i in range(11)]), ["has 11 names", "10 classes"]),
    ],
    ids=["malformed", "bad-keys", "string", "too-few", "too-many"],
)
def test_bad_labels_are_one_clear_error(name, text, fragments, tmp_path):
    labels = tmp_path / name
    labels.write_text(text)
    out = tmp_path / "out"
    result = invoke(
        "explain",
        CNN,
        PNG,
        "--method",
        "gradient",
        "--preprocess",
        "digits",
        "--labels",
        labels,
        "--out",
        out,
    )
    assert_refused(result, out, *fragments)
    assert not out.exists()


def test_labels_json_object_and_text_are_used(tmp_path):
    names = [f"digit {i}" for i in range(10)]
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({str(i): n for i, n in enumerate(names)}))
    out = tmp_path / "out"
    assert_ok(
        invoke(
            "explain",
            CNN,
            PNG,
            "--method",
            "gradient",
            "--preprocess",
            "digits",
            "--labels",
            labels,
            "--out",
            out,
        )
    )
    assert rows(out)[0]["predicted_label"] == "digit 2"


def test_export_web_refuses_a_short_labels_file(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("zero\none\n")
    assert_refused(
        invoke(
            "export-web",
            CNN,
            "--out",
            tmp_path / "b",
            "--method",
            "gradient",
            "--preset",
            "digits",
            "--labels",
            labels,
        ),
        tmp_path / "b",
        "has 2 names",
        "10 classes",
    )


@pytest.mark.parametrize(
    "spec, fragments",
    [
        ('{"std": [1, ', ["--preprocess JSON", '{"std": [1, ', "not valid JSON", "imagenet"]),
        ("FILE:{'scale': 1}", ["preprocessing file '", "pre.json", "not valid JSON"]),
        ("FILE:[1, 2]", ["pre.json", "holds a JSON list", "scale, mean, std"]),
        ('{"stdev": 1}', ["unknown key(s) 'stdev'", "std:"]),
        ('{"mean": "x"}', ["'mean' must be"]),
        ('{"color": "purple"}', ["'color' must be", "'rgb', 'bgr' or 'gray'"]),
        ('{"resize": "zoom"}', ["'resize' must be", "crop"]),
        ("DIR", ["cannot read preprocessing file"]),
    ],
)
def test_bad_preprocessing_is_one_clear_error(spec, fragments, tmp_path):
    if spec == "DIR":
        spec = str(tmp_path)
    elif spec.startswith("FILE:"):
        (tmp_path / "pre.json").write_text(spec[5:])
        spec = str(tmp_path / "pre.json")
    out = tmp_path / "out"
    result = invoke("explain", CNN, PNG, "--method", "gradient", "--preprocess", spec, "--out", out)
    assert_refused(result, out, *fragments)


def test_an_export_web_preprocess_json_is_a_valid_preprocessing(tmp_path):
    bundle = tmp_path / "bundle"
    assert_ok(
        invoke("export-web", CNN, "--out", bundle, "--method", "gradient", "--preset", "digits")
    )
    from_bundle, from_preset = tmp_path / "a", tmp_path / "b"
    base = ["explain", CNN, PNG, "--method", "gradient"]
    assert_ok(invoke(*base, "--preprocess", bundle / "preprocess.json", "--out", from_bundle))
    assert_ok(invoke(*base, "--preprocess", "digits", "--out", from_preset))
    np.testing.assert_array_equal(
        np.load(from_bundle / "digit_2_gradient.npy"), np.load(from_preset / "digit_2_gradient.npy")
    )


# -- 7. out-of-range targets and NaN inputs: one error, nothing written ------------------------
@pytest.mark.parametrize("target", ["10", "-2"])
def test_target_out_of_range_writes_nothing(fixed_batch, target, tmp_path):
    out = tmp_path / "new" / "out"
    result = invoke(
        "explain",
        fixed_batch[1],
        npy(tmp_path, "d.npy", DIGITS[:3]),
        "--method",
        "gradient",
        "--target",
        target,
        "--out",
        out,
    )
    assert_refused(result, out, f"target {target} is out of range", "10 classes")
    assert not (tmp_path / "new").exists()


def test_target_minus_one_is_the_predicted_class(tmp_path):
    out = tmp_path / "out"
    assert_ok(
        invoke(
            "explain",
            CNN,
            npy(tmp_path, "d.npy", DIGITS[:2]),
            "--method",
            "gradient",
            "--target",
            "-1",
            "--out",
            out,
        )
    )
    assert [r["target"] for r in rows(out)] == LABELS[:2].tolist()


def test_nan_input_writes_nothing_and_keeps_an_existing_folder(fixed_batch, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("kept")
    images = [PNG, SAMPLES / "digit_5.png", SAMPLES / "digit_6.png"]
    result = invoke(
        "explain",
        fixed_batch[1],
        *images,
        "--method",
        "gradient",
        "--preprocess",
        '{"std": 0}',
        "--batch-size",
        "2",
        "--out",
        out,
    )
    assert_refused(result, None, "contains NaN or inf values", "digit_2.png")
    assert sorted(p.name for p in out.iterdir()) == ["earlier.txt"]
    fresh = tmp_path / "fresh"
    result = invoke(
        "explain",
        CNN,
        *images,
        "--method",
        "gradient,gradcam",
        "--preprocess",
        '{"std": 0}',
        "--out",
        fresh,
    )
    assert_refused(result, fresh, "contains NaN or inf values")
    assert not fresh.exists()

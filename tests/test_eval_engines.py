"""The evaluation engines (issue 17): serial = Ray, resume after a partial run, a killed worker."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

if importlib.util.find_spec("quantus") is None:  # see docs/evaluate.md for the install
    pytest.skip("the evaluation needs quantus", allow_module_level=True)

from onnxsplit.errors import OnnxSplitError  # noqa: E402
from onnxsplit.eval.harness import evaluate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "sample_models" / "digits_cnn_op17_legacy.onnx"
METHODS = ["gradient", "splitlrp", "random"]
METRICS = [
    "pixel_flipping",
    "faithfulness_correlation",
    "max_sensitivity",
    "pointing_game",
    "mprt",
    "input_invariance",
    "sparseness",
]
CHEAP = dict(limit=12, steps=4, nr_runs=3, nr_samples=2, mprt_stages=2, shard_size=4)


def run(out: Path, cache: Path, **kwargs):
    return evaluate(DIGITS, METHODS, METRICS, "digits", out, cache_dir=cache, **{**CHEAP, **kwargs})


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def serial(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("serial")
    result = run(out, cache)
    assert not result.errors, result.errors
    return out


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    # every argument through the object store (Ray inlines small ones): an actor that Ray
    # restarts must find its constructor argument there again
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _system_config={"max_direct_call_object_size": 1024},
    )
    yield ray
    ray.shutdown()


def scores(out: Path) -> str:
    return (out / "scores.csv").read_text()


def test_ray_equals_serial(serial, ray_cluster, cache, tmp_path) -> None:
    result = run(tmp_path, cache, engine="ray")
    assert result.engine == "ray" and result.workers == 2
    assert scores(tmp_path) == scores(serial)
    workers = {json.loads(p.read_text())["worker"] for p in (tmp_path / "shards").glob("*/*.json")}
    assert len(workers) == 2  # both actors took units


def _descends_from_us(pid: int) -> bool:
    """Whether process `pid` was started (through Ray's raylet) by this test process."""
    while pid > 1:
        if pid == os.getpid():
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


def _busy_worker() -> int | None:
    """The pid of one of our EvaluationWorker actors in the middle of a unit (Ray titles it
    .run); never another Ray cluster's on the same machine."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if title.startswith(b"ray::EvaluationWorker.run") and _descends_from_us(
                int(entry.name)
            ):
                return int(entry.name)
    return None


def test_killed_worker_is_redone(serial, ray_cluster, cache, tmp_path) -> None:
    killed: list[int] = []

    def progress(step: int, total: int, message: str) -> None:
        if step >= 1 and not killed:
            pid = _busy_worker()
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    result = run(tmp_path, cache, engine="ray", progress=progress)
    assert killed, "no actor was busy to kill"
    assert not result.errors, result.errors
    assert not Path(f"/proc/{killed[0]}").exists()  # it died; Ray restarted it and redid the unit
    assert scores(tmp_path) == scores(serial)


def test_interrupted_run_resumes(serial, cache, tmp_path) -> None:
    def interrupt(step: int, total: int, message: str) -> None:
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, cache, progress=interrupt)
    kept = sorted((tmp_path / "shards").glob("*/*.json"))
    assert len(kept) == 4 and not (tmp_path / "scores.csv").exists()
    seen: list[str] = []
    run(tmp_path, cache, progress=lambda step, total, message: seen.append(message))
    assert seen[0] == "4 of 9 shards already done"
    assert len(seen) == 1 + 5  # the start, then only the five missing units
    assert scores(tmp_path) == scores(serial)


def test_other_settings_are_refused(serial, cache) -> None:
    with pytest.raises(OnnxSplitError, match="seed differ"):
        run(serial, cache, seed=1)


def test_metric_seed_does_not_depend_on_the_list(serial, cache, tmp_path) -> None:
    alone = evaluate(
        DIGITS, ["gradient"], ["max_sensitivity"], "digits", tmp_path, cache_dir=cache, **CHEAP
    )
    values = [r["score"] for r in alone.scores]
    lines = [
        line.split(",")
        for line in scores(serial).splitlines()[1:]
        if ",gradient,robustness,max_sensitivity," in line
    ]
    assert values == [float(parts[-1]) for parts in lines]


# -- explain --engine ray ------------------------------------------------------------------
def _explain(out: Path, *extra: str):
    from click.testing import CliRunner

    from onnxsplit.cli import main

    samples = ROOT / "sample_models"
    args = [
        "explain",
        str(DIGITS),
        str(samples / "digit_2.png"),
        str(samples / "digit_5.png"),
        str(samples / "digit_6.png"),
        str(samples / "digits_test_inputs.npy"),
        "--method",
        "gradcam,splitlrp",
        "--preprocess",
        "digits",
        "--batch-size",
        "4",
        "--out",
        str(out),
        *extra,
    ]
    return CliRunner().invoke(main, args)


def test_explain_on_ray_equals_local(ray_cluster, tmp_path) -> None:
    import numpy as np

    local = _explain(tmp_path / "local")
    assert local.exit_code == 0, local.output
    on_ray = _explain(tmp_path / "ray", "--engine", "ray")
    assert on_ray.exit_code == 0, on_ray.output
    assert "on Ray" in on_ray.output and "engine: ray" in on_ray.output
    maps = sorted(p.name for p in (tmp_path / "local").glob("*.npy"))
    assert len(maps) > 20 and maps == sorted(p.name for p in (tmp_path / "ray").glob("*.npy"))
    for name in maps:
        assert np.array_equal(np.load(tmp_path / "local" / name), np.load(tmp_path / "ray" / name))
    rows = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("local", "ray")]
    keep = ("input", "output", "method", "predicted", "target")
    assert [[{k: r[k] for k in keep} for r in rs] for rs in rows][0] == [
        {k: r[k] for k in keep} for r in rows[1]
    ]


def test_explain_refuses_an_address_without_ray(tmp_path) -> None:
    result = _explain(tmp_path / "out", "--address", "auto")
    assert result.exit_code != 0
    assert "--address needs --engine ray" in result.output and "Traceback" not in result.output


def test_an_unreachable_cluster_is_one_error(tmp_path) -> None:
    import socket

    pytest.importorskip("ray")
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # in a fresh process: this one may hold the module's Ray cluster, which ray.init reuses
    args = [
        "explain",
        str(DIGITS),
        str(ROOT / "sample_models" / "digit_2.png"),
        "--preprocess",
        "digits",
        "--engine",
        "ray",
        "--address",
        f"127.0.0.1:{port}",
        "--out",
        str(tmp_path / "out"),
    ]
    code = "import sys; from onnxsplit.cli import main; sys.exit(main())"
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "cannot reach the Ray cluster at" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()

"""`onnxsplit explain --report`: one static offline HTML page (gallery inputs x methods with
the for/against panels and the top-5 per input). Parsed here; rendered in headless Chromium by
the `browser` test (skipped, with the command that enables it, when Chromium is missing)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from onnxsplit.cli import main

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
CNN = SAMPLES / "digits_cnn_op17_legacy.onnx"
ARTIFACTS = Path(__file__).parent / "artifacts"
METHODS = ["splitcam", "splitlrp", "gradcam", "lrp_epsilon_plus"]
PARTS = {"splitcam": ["splitcam_pos", "splitcam_neg"], "splitlrp": ["splitlrp_g", "splitlrp_h"]}
ENABLE = (
    "ONNXSPLIT_INSTALL_BROWSER=1 bash scripts/install_dev.sh (apt-get install chromium), or "
    "set $CHROMIUM to a Chromium/Chrome binary"
)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ONNXSPLIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A report over two digit photos (one enlarged, not square) and two .npy digits."""
    folder = tmp_path_factory.mktemp("report")
    os.environ["ONNXSPLIT_CACHE"] = str(tmp_path_factory.getbasetemp() / "cache")
    digit = Image.open(SAMPLES / "digit_2.png").convert("RGB")
    digit.save(folder / "two.png")
    digit.resize((48, 32), Image.NEAREST).save(folder / "wide two.png")  # a space in the name
    np.save(folder / "digits.npy", np.load(SAMPLES / "digits_test_inputs.npy")[:2])
    out = folder / "out"
    args = ["explain", str(CNN), str(folder / "two.png"), str(folder / "wide two.png"),
            str(folder / "digits.npy"), "--method", ",".join(METHODS), "--preprocess", "digits",
            "--report", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"report: {out / 'report.html'}" in result.output
    return out / "report.html"


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append((tag, dict(attrs)))


def parse(path: Path) -> tuple[str, Page]:
    text = path.read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    return text, page


def test_report_loads_no_network_resources(report):
    text, page = parse(report)
    for tag, attrs in page.tags:
        for key in ("src", "href", "srcset", "poster", "data", "action"):
            value = attrs.get(key)
            if value is not None:
                assert value.startswith("data:"), (tag, key, value[:80])
    assert not re.search(r"https?://", text), re.search(r".{40}https?://.{40}", text)
    assert "@import" not in text and "url(" not in text
    csp = [a for t, a in page.tags if t == "meta" and a.get("http-equiv")]
    assert csp and "default-src 'none'" in csp[0]["content"]


def test_report_has_every_input_method_panel_and_the_top5(report):
    _, page = parse(report)
    rows = [a["data-input"] for t, a in page.tags if t == "tr" and "data-input" in a]
    assert rows == ["two", "wide two", "digits_0", "digits_1"]
    panels = [a["data-map"] for t, a in page.tags if t == "figure" and "data-map" in a]
    want = [n for m in METHODS for n in [m, *PARTS.get(m, [])]]
    assert panels == want * 4
    cells = [a["data-method"] for t, a in page.tags if t == "td" and "data-method" in a]
    assert cells == METHODS * 4
    top5 = [t for t, _ in page.tags if t in ("ol", "li")]
    assert top5.count("ol") == 4 and top5.count("li") == 4 * 5
    images = [a for t, a in page.tags if t == "img"]
    assert len(images) == 2 + 4 * len(want)  # two photos; arrays have none
    for image in images:  # every picture decodes
        head, data = image["src"].split(",", 1)
        assert head in ("data:image/jpeg;base64", "data:image/png;base64")
        Image.open(io.BytesIO(base64.b64decode(data))).load()
    wide = next(a for a in images if a.get("alt") == "wide two")
    assert Image.open(io.BytesIO(base64.b64decode(wide["src"].split(",", 1)[1]))).size == (
        48,
        32,
    )  # the photo at its own aspect
    rows = json.loads((report.parent / "summary.json").read_text())
    assert len(rows) == 4 * len(METHODS)


def _chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


@pytest.mark.browser
def test_report_renders_in_headless_chromium(report, tmp_path):
    """Headless Chromium opens the page from disk (no server): every picture loads, and the
    screenshot (tests/artifacts/report.png, looked at by hand) is not blank."""
    browser = _chromium()
    if browser is None:
        pytest.skip(f"Chromium not found: {ENABLE}")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    url = report.resolve().as_uri()
    dom = subprocess.run(
        [*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    images = int(re.search(r'data-images="(\d+)"', body).group(1))
    loaded = int(re.search(r'data-loaded="(\d+)"', body).group(1))
    assert images == loaded == 2 + 4 * 8, body
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    subprocess.run([*flags, "--window-size=1400,1200", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    picture = np.asarray(Image.open(shot).convert("RGB"), np.float32)
    assert picture.shape[:2] == (1200, 1400)
    assert picture.std() > 20  # not a blank page
    red = (picture[..., 0] > 200) & (picture[..., 1] < 90) & (picture[..., 2] < 90)
    assert red.sum() > 200  # the maps' evidence is drawn

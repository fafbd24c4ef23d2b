"""Raw (un-normalized) mode on the real sample models: the DC structure is really there."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from onnxsplit.convert import convert_model
from onnxsplit.verify import convexity_checks, negative_weights

SAMPLES = Path(__file__).parent.parent / "sample_models"
MODELS = sorted(SAMPLES.glob("digits_*_op17_legacy.onnx")) + sorted(
    SAMPLES.glob("digits_*_op21_dynamo.onnx")
)


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_raw_branches_are_monotone_and_convex(path: Path) -> None:
    result = convert_model(onnx.load(path), mode="raw")
    assert negative_weights(result.model) == [], "a multiplying weight of the split graph is < 0"
    monotone, convex = convexity_checks(result.model, [1, 1, 8, 8], samples=64)
    assert monotone <= 1e-5, f"g or h decreased somewhere (relative {monotone:.1e})"
    assert convex <= 1e-5, f"midpoint convexity violated (relative {convex:.1e})"


def test_normalized_mode_is_not_globally_convex_but_raw_is() -> None:
    """Re-centering trades global convexity for boundedness: the check tells them apart."""
    model = onnx.load(SAMPLES / "digits_resnet_op17_legacy.onnx")
    raw = convert_model(model, mode="raw").model
    normalized = convert_model(model, mode="normalized", fast=False).model
    assert max(convexity_checks(raw, [1, 1, 8, 8])) <= 1e-5
    assert max(convexity_checks(normalized, [1, 1, 8, 8])) > 1e-3

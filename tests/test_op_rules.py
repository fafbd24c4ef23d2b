"""Every op rule on a hand-built graph: exact in both modes; raw mode monotone and convex."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import cases

from onnxsplit.convert import convert_model, relative_error, run_original
from onnxsplit.runtime import make_session
from onnxsplit.verify import convexity_checks, negative_weights

CASES = cases()


def _inputs(model, batch: int) -> np.ndarray:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = [batch] + [d.dim_value for d in dims[1:]]
    return np.random.default_rng(7).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("mode", ["normalized", "normalized-4term", "raw"])
def test_rule_is_exact(name: str, mode: str) -> None:
    model = CASES[name]
    result = convert_model(model, mode=mode.split("-")[0], fast=mode != "normalized-4term")
    session = make_session(result.model.SerializeToString(), "cpu")
    for batch in (1, 3):
        x = _inputs(model, batch)
        reference = run_original(model, "x", "y", x, "cpu")
        logits, g, h = session.run(["logits", "g", "h"], {"x": x})
        assert logits.shape == reference.shape
        assert relative_error(logits, reference) < 1e-5
        np.testing.assert_allclose(g - h, logits, rtol=0, atol=1e-5 * np.abs(g).max())


@pytest.mark.parametrize("name", sorted(CASES))
def test_raw_split_is_monotone_and_convex(name: str) -> None:
    model = CASES[name]
    result = convert_model(model, mode="raw")
    assert negative_weights(result.model) == []
    monotone, convex = convexity_checks(result.model, list(_inputs(model, 1).shape), samples=32)
    assert monotone <= 1e-5
    assert convex <= 1e-5


def test_static_check_detects_negative_weights() -> None:
    model = convert_model(CASES["relu"], mode="raw").model
    weight = next(t for t in model.graph.initializer if t.dims and len(t.dims) == 4)
    from onnx import numpy_helper

    weight.CopyFrom(
        numpy_helper.from_array(-np.abs(numpy_helper.to_array(weight)) - 1, weight.name)
    )
    assert negative_weights(model)


def test_convexity_check_detects_a_concave_branch() -> None:
    """The check must be able to fail: swap g and h so that g = max(p,q) - ... is broken."""
    import onnx_graphsurgeon as gs

    model = convert_model(CASES["relu"], mode="raw").model
    graph = gs.import_onnx(model)
    g = next(t for t in graph.outputs if t.name == "g")
    negated = gs.Variable("g_neg", dtype=np.float32)
    graph.nodes.append(gs.Node("Neg", inputs=[g.inputs[0].inputs[0]], outputs=[negated]))
    g.inputs[0].inputs[0] = negated
    broken = gs.export_onnx(graph)
    broken.ir_version = model.ir_version
    broken.metadata_props.extend(model.metadata_props)
    monotone, convex = convexity_checks(broken, [1, 3, 6, 6], samples=32)
    assert monotone > 1e-3 and convex > 1e-3


@pytest.mark.parametrize("name", sorted(CASES))
def test_fast_normalized_form_gives_the_same_streams(name: str) -> None:
    """The difference/mass form computes the four-term streams, not just the same f."""
    model = CASES[name]
    x = _inputs(model, 2)
    streams = []
    for fast in (True, False):
        split = convert_model(model, fast=fast).model
        streams.append(make_session(split.SerializeToString(), "cpu").run(["g", "h"], {"x": x}))
    (g_fast, h_fast), (g_four, h_four) = streams
    scale = max(np.abs(g_four).max(), 1e-6)
    np.testing.assert_allclose(g_fast, g_four, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(h_fast, h_four, rtol=0, atol=1e-5 * scale)

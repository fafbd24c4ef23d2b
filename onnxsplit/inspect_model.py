"""What `onnxsplit inspect` reports: ops, support, input layout, candidate CAM layers."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import onnx

from onnxsplit.attribution.context import cam_candidates, detect_layout
from onnxsplit.canonicalize import canonicalize
from onnxsplit.split.driver import choose_input, find_problems
from onnxsplit.split.registry import RULES


@dataclass
class Inspection:
    opset: int
    inputs: list[tuple[str, list]]
    outputs: list[str]
    layout: str
    op_counts: Counter
    problems: list[tuple[str, str, str]] = field(default_factory=list)
    target_layers: list[tuple[str, str, list]] = field(default_factory=list)
    removed_softmax: list[str] = field(default_factory=list)

    def report(self) -> str:
        lines = [f"opset: {self.opset}"]
        for name, shape in self.inputs:
            lines.append(f"input: {name} {shape}  layout: {self.layout}")
        lines.append(f"outputs: {', '.join(self.outputs)}")
        if self.removed_softmax:
            lines.append(
                f"trailing normalizer removed on conversion: {', '.join(self.removed_softmax)}"
            )
        lines.append("ops (after canonicalization):")
        bad_ops = {op for _, op, _ in self.problems}
        for op, count in sorted(self.op_counts.items()):
            status = "UNSUPPORTED" if op in bad_ops else ("split rule" if op in RULES else "plain")
            lines.append(f"  {op:<22} {count:>4}  {status}")
        if self.problems:
            lines.append("nodes that cannot be split:")
            lines += [f"  - {name} ({op}): {why}" for name, op, why in self.problems]
        else:
            lines.append("convertible: yes")
        if self.target_layers:
            lines.append("candidate target layers (last spatial feature maps, default last):")
            lines += [f"  {name}  ({op}, shape {shape})" for name, op, shape in self.target_layers]
        return "\n".join(lines)


def _dims(value) -> list:
    return [d if isinstance(d, int) else str(d) for d in (value.shape or [])]


def spatial_layers(canonical) -> list[tuple[str, str, list]]:
    """The CAM candidates the compiler picks from (attribution.context.cam_candidates), in
    graph order."""
    inputs = canonical.graph.inputs
    if not inputs:
        return []
    return [
        (n.outputs[0].name, n.op, _dims(n.outputs[0]))
        for n in cam_candidates(canonical.graph, inputs[0])
    ]


def inspect(model: onnx.ModelProto) -> Inspection:
    canonical = canonicalize(model)
    graph = canonical.graph
    inputs = [(t.name, _dims(t)) for t in graph.inputs]
    problems = find_problems(graph, choose_input(canonical, graph.inputs[0].name)) if inputs else []
    return Inspection(
        opset=canonical.opset,
        inputs=inputs,
        outputs=canonical.original_outputs,
        layout=detect_layout(graph, graph.inputs[0]).name if inputs else "-",
        op_counts=Counter(n.op for n in graph.nodes),
        problems=problems,
        target_layers=spatial_layers(canonical)[-5:],
        removed_softmax=canonical.removed_softmax,
    )

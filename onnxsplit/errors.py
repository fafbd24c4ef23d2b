"""User-facing errors: one clear message each, mapped to a non-zero exit code by the CLI."""

from __future__ import annotations


class OnnxSplitError(Exception):
    """A problem with the user's input (file, model, option); printed without a traceback."""

    exit_code = 2


class UnsupportedModelError(OnnxSplitError):
    """The model contains nodes that have no exact DC-split rule."""

    def __init__(self, problems: list[tuple[str, str, str]], supported: list[str]):
        self.problems = problems
        lines = [f"  - node '{name}' (op {op}): {why}" for name, op, why in problems]
        message = (
            f"the model has {len(problems)} node(s) that cannot be split exactly:\n"
            + "\n".join(lines)
            + "\nonnxsplit handles piecewise-linear ReLU networks; supported ops on activations: "
            + ", ".join(supported)
        )
        super().__init__(message)

"""Evaluation helpers: the grid pointing game (:mod:`onnxsplit.eval.grid`)."""

from onnxsplit.eval.grid import GridSample, build_grid_dataset, pointing_scores

__all__ = ["GridSample", "build_grid_dataset", "pointing_scores"]

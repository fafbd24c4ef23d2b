"""What a tensor of the original graph becomes in the split graph."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs


@dataclass(frozen=True)
class Const:
    """A constant known at compile time (weights, shapes, indices)."""

    value: np.ndarray


@dataclass(frozen=True)
class Plain:
    """A non-split runtime tensor: shape arithmetic derived from Shape of an activation."""

    tensor: gs.Tensor


@dataclass(frozen=True)
class Pair:
    """A split activation: original = pos - neg (both >= 0 in the raw split).

    `difference` is set on a minimal pair (pos, neg) = (relu(d), relu(-d)) made by re-centering:
    it is d itself, which lets the fast normalized form compute the next affine layer from d.
    """

    pos: gs.Variable
    neg: gs.Variable
    difference: gs.Variable | None = None
    zero_neg: bool = False  # neg is 0 by construction (re-centered from a tensor >= 0)
    total: gs.Variable | None = None  # pos + neg where a rule has it at no cost


Value = Const | Plain | Pair


class SplitMarker:
    """Stands for a Pair during the static check, before anything is emitted."""

    def __repr__(self) -> str:
        return "<split>"


SPLIT = SplitMarker()
Abstract = Const | Plain | SplitMarker


def positive_part(array: np.ndarray) -> np.ndarray:
    return np.maximum(array, 0).astype(array.dtype)


def negative_part(array: np.ndarray) -> np.ndarray:
    return np.maximum(-array, 0).astype(array.dtype)

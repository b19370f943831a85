"""Exact Shapley values of tree ensembles read from the graph (next commit)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from numpy.typing import NDArray

if TYPE_CHECKING:
    from cascade.explain._explainer import ExactPath

__all__ = ["read_tree"]


def read_tree(
    model: onnx.ModelProto, n_features: int, n_classes: int, background: NDArray[np.float32]
) -> ExactPath | None:
    return None

"""The explainer's records and errors: what an explanation says, what it may cost, how it fails.

CascadeError
└── ExplainError               bad rows, shape, class or budget: INVALID_ARGUMENT
    ├── ExplainBudgetExceeded  the work needed exceeds the budget's rows or evaluations
    ├── ExplainDeadlineExceeded  the budget's deadline passed mid-way: DEADLINE_EXCEEDED
    └── ExplainUnsupported     the artifact or background cannot be explained: FAILED_PRECONDITION
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import grpc
import numpy as np
from numpy.typing import NDArray

from cascade.errors import CascadeError

__all__ = [
    "ExplainBudget",
    "ExplainBudgetExceeded",
    "ExplainDeadlineExceeded",
    "ExplainError",
    "ExplainUnsupported",
    "Explanation",
    "Method",
    "OutputSpace",
]

Method = Literal["linear", "tree", "kernel"]
# What the attributions decompose: a class's probability, a class's margin (the log-odds or softmax
# logit before the model's link, where a linear or boosted model is additive), or a regressor's value.
OutputSpace = Literal["probability", "margin", "value"]


class ExplainError(CascadeError):
    """Rows, a class or a budget the explainer cannot take: the caller's input."""

    status = grpc.StatusCode.INVALID_ARGUMENT


class ExplainBudgetExceeded(ExplainError):
    """Explaining would need more rows or model evaluations than the budget allows; the message says
    how many it needs, so the caller can ask for fewer rows or a larger budget."""


class ExplainDeadlineExceeded(ExplainError):
    """The budget's deadline passed before every row was explained (nothing partial is returned)."""

    status = grpc.StatusCode.DEADLINE_EXCEEDED
    permanent = False


class ExplainUnsupported(ExplainError):
    """The artifact (or its background) is not one the explainer can take: not the caller's rows but
    the version's state, hence FAILED_PRECONDITION."""

    status = grpc.StatusCode.FAILED_PRECONDITION


@dataclass(frozen=True)
class ExplainBudget:
    """Limits on one `explain` call; None is no limit. `max_evaluations` counts model rows evaluated
    (the exact paths evaluate each explained row once; KernelSHAP evaluates coalitions x background
    rows for each, and is refused before it starts when it would need more)."""

    max_rows: int | None = None
    max_evaluations: int | None = None
    deadline_seconds: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_rows", "max_evaluations"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ExplainError(f"budget {name} must be at least 1: {value}")
        if self.deadline_seconds is not None and not self.deadline_seconds > 0:
            raise ExplainError(f"budget deadline_seconds must be positive: {self.deadline_seconds}")


@dataclass(frozen=True)
class Explanation:
    """Shapley attributions of one output per row, against the explainer's background rows.

    For every row, `base_values + attributions.sum(1) == outputs` within 1e-6 (additivity): the base
    value is the output's mean over the background, and each attribution is the feature's share of
    the move from it to this row's output, in `output_space`."""

    features: list[str]
    method: Method
    output_space: OutputSpace
    class_indices: NDArray[np.int64]  # [N] the class explained per row; -1 for a regressor
    class_labels: list[str] | None  # [N] the label of each row's explained class; None for a regressor
    base_values: NDArray[np.float64]  # [N]
    attributions: NDArray[np.float64]  # [N, F]
    outputs: NDArray[np.float64]  # [N]
    evaluations: int  # model rows evaluated to explain these rows
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: plain lists, ints, floats and strings."""
        return {
            "features": list(self.features),
            "method": self.method,
            "output_space": self.output_space,
            "class_indices": [int(value) for value in self.class_indices],
            "class_labels": None if self.class_labels is None else [str(v) for v in self.class_labels],
            "base_values": [float(value) for value in self.base_values],
            "attributions": [[float(value) for value in row] for row in self.attributions],
            "outputs": [float(value) for value in self.outputs],
            "evaluations": int(self.evaluations),
            "seconds": float(self.seconds),
        }

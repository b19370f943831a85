"""Exact Shapley values of a linear model read from its ONNX graph: the trainer's
[Scaler ->] LinearClassifier | LinearRegressor [-> Normalizer | Identity].

Interventional Shapley values of a linear function f(x) = w.x + c against background rows are
closed-form: phi_i = w_i (x_i - mean(background_i)), with base value f(mean(background)). A
classifier is linear before its link, so it is explained in the margin: a class's score (binary
log-odds, softmax logit) as the LinearClassifier computes it, before LOGISTIC/SOFTMAX. Explaining the
probability instead would need KernelSHAP (the link mixes the features); the margin is exact and
what shap's LinearExplainer reports too. A post-transform of NONE makes the scores themselves the
probabilities, explained in "probability".

The Scaler's (x - offset) * scale folds into the weights: w = coef * scale, c = intercept - w.offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from numpy.typing import NDArray

from cascade.explain._types import Method, OutputSpace

__all__ = ["LinearModel", "LinearPath", "read_linear"]

Floats = NDArray[np.float64]
_PASS_THROUGH = frozenset({"Identity"})
_TRANSFORMS = frozenset({"NONE", "LOGISTIC", "SOFTMAX"})


def _attributes(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _floats(values: object, size: int) -> Floats | None:
    """A per-feature attribute (one value broadcast, or `size`), or None if it has another length."""
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 1:
        return np.full(size, array[0])
    return array if array.size == size else None


@dataclass(frozen=True)
class LinearModel:
    """scores = rows @ weights.T + intercepts, then the model's post-transform (and L1 normalizer)."""

    weights: Floats  # [K, F] in the input's own units (the scaler folded in)
    intercepts: Floats  # [K]
    transform: str  # NONE, LOGISTIC or SOFTMAX (classifiers); NONE for a regressor
    normalize: bool  # an L1 Normalizer follows (skl2onnx's multiclass classifiers)
    classifier: bool

    @property
    def output_space(self) -> OutputSpace:
        if not self.classifier:
            return "value"
        return "probability" if self.transform == "NONE" else "margin"

    def predict(self, rows: NDArray[np.float32]) -> Floats:
        scores = np.asarray(rows, dtype=np.float64) @ self.weights.T + self.intercepts
        if self.transform == "LOGISTIC":
            scores = 1.0 / (1.0 + np.exp(-scores))
        elif self.transform == "SOFTMAX":
            shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
            scores = shifted / shifted.sum(axis=1, keepdims=True)
        if self.normalize:
            scores = scores / np.maximum(np.abs(scores).sum(axis=1, keepdims=True), 1e-300)
        return scores


@dataclass(frozen=True)
class LinearPath:
    """A linear model bound to its background's mean. No model evaluation and no loop: a deadline
    cannot pass within it."""

    model: LinearModel
    mean: Floats  # [F] the background rows' mean
    method: Method
    output_space: OutputSpace

    def predict(self, rows: NDArray[np.float32]) -> Floats:
        return self.model.predict(rows)

    def explain(
        self, rows: NDArray[np.float32], classes: NDArray[np.int64], deadline: float | None
    ) -> tuple[Floats, Floats, Floats]:
        values = np.asarray(rows, dtype=np.float64)
        weights = self.model.weights[classes]  # [N, F] each row's class weights
        intercepts = self.model.intercepts[classes]
        attributions = weights * (values - self.mean)
        base_values = weights @ self.mean + intercepts
        # f(mean) + sum(w (x - mean)) is f(x) = w.x + c, to rounding.
        outputs = np.einsum("nf,nf->n", weights, values) + intercepts
        return base_values, attributions, outputs


def _chain(graph: onnx.GraphProto, input_name: str) -> list[onnx.NodeProto] | None:
    """The graph's nodes in order from the input, if they form one chain (Identity aside)."""
    nodes = [node for node in graph.node if node.op_type not in _PASS_THROUGH]
    if not nodes or nodes[0].input[0] != input_name:
        return None
    return nodes


def _read(model: onnx.ModelProto, n_features: int, n_classes: int) -> LinearModel | None:
    graph = model.graph
    nodes = _chain(graph, graph.input[0].name)
    if nodes is None:
        return None
    offset = np.zeros(n_features)
    scale = np.ones(n_features)
    if nodes[0].op_type == "Scaler":
        attributes = _attributes(nodes.pop(0))
        read_offset = _floats(attributes.get("offset", [0.0]), n_features)
        read_scale = _floats(attributes.get("scale", [1.0]), n_features)
        if read_offset is None or read_scale is None:
            return None
        offset, scale = read_offset, read_scale
    if not nodes or nodes[0].op_type not in ("LinearClassifier", "LinearRegressor"):
        return None
    linear = nodes.pop(0)
    attributes = _attributes(linear)
    classifier = linear.op_type == "LinearClassifier"
    normalize = False
    if nodes:
        tail = _attributes(nodes[0])
        if len(nodes) > 1 or nodes[0].op_type != "Normalizer" or tail.get("norm") != b"L1":
            return None
        normalize = True
    transform = attributes.get("post_transform", b"NONE")
    transform = transform.decode() if isinstance(transform, bytes) else str(transform)
    if transform not in _TRANSFORMS or (not classifier and transform != "NONE"):
        return None
    intercepts = np.asarray(attributes.get("intercepts", []), dtype=np.float64)
    coefficients = np.asarray(attributes.get("coefficients", []), dtype=np.float64)
    targets = len(intercepts) if len(intercepts) else coefficients.size // n_features
    if targets == 0 or coefficients.size != targets * n_features:
        return None
    if not len(intercepts):
        intercepts = np.zeros(targets)
    coefficients = coefficients.reshape(targets, n_features)
    if classifier and targets == 1 and n_classes == 2 and transform == "LOGISTIC":
        # One score for two classes: ONNX Runtime answers [sigmoid(-s), sigmoid(s)].
        coefficients = np.vstack([-coefficients, coefficients])
        intercepts = np.concatenate([-intercepts, intercepts])
        targets = 2
    if targets != (n_classes if classifier else 1):
        return None
    weights = coefficients * scale
    return LinearModel(
        weights=weights,
        intercepts=intercepts - weights @ offset,
        transform=transform,
        normalize=normalize,
        classifier=classifier,
    )


def read_linear(
    model: onnx.ModelProto, n_features: int, n_classes: int, background: NDArray[np.float32]
) -> LinearPath | None:
    """The exact linear path for `model`, or None when its graph is not a plain linear model."""
    linear = _read(model, n_features, n_classes)
    if linear is None:
        return None
    return LinearPath(
        model=linear,
        mean=np.asarray(background, dtype=np.float64).mean(axis=0),
        method="linear",
        output_space=linear.output_space,
    )

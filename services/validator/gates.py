"""Quality gates, transport-free: score candidate and champion on the same rows and judge."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from shared.events import GateResult


@dataclass(frozen=True)
class Thresholds:
    min_rows: int
    min_accuracy: float
    min_r2: float
    max_regression: float


def score(onnx_bytes: bytes, rows: np.ndarray, truth: np.ndarray, task: str) -> float:
    """Accuracy for a classifier, R² for a regressor, of an ONNX model on the given rows."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    predicted = np.asarray(session.run(None, {session.get_inputs()[0].name: rows})[0]).ravel()
    if len(predicted) != len(truth):
        raise ValueError(f"model answered {len(predicted)} predictions for {len(truth)} rows")
    if task == "classification":
        return float(np.mean(predicted.astype(np.int64) == truth.astype(np.int64)))
    residual = float(np.sum((truth - predicted) ** 2))
    total = float(np.sum((truth - truth.mean()) ** 2)) or 1.0
    return 1.0 - residual / total


def judge(
    task: str, rows: int, candidate: float, champion: float | None, limits: Thresholds
) -> list[GateResult]:
    metric = "accuracy" if task == "classification" else "r2"
    floor = limits.min_accuracy if task == "classification" else limits.min_r2
    gates = [
        GateResult(
            name="enough_fresh_rows", passed=rows >= limits.min_rows, value=rows, threshold=limits.min_rows
        ),
        GateResult(
            name=f"min_{metric}",
            passed=candidate >= floor,
            value=candidate,
            threshold=floor,
            detail=f"candidate {metric} on fresh data",
        ),
    ]
    if champion is None:
        gates.append(GateResult(name="no_regression", passed=True, detail="no champion yet"))
    else:
        allowed = champion - limits.max_regression
        gates.append(
            GateResult(
                name="no_regression",
                passed=candidate >= allowed,
                value=candidate,
                threshold=allowed,
                detail=f"champion scored {champion:.4f} on the same rows",
            )
        )
    return gates

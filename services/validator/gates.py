"""Quality gates, transport-free: score candidate and champion on the same rows and judge."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import onnxruntime as ort

from cascade.events import GateResult


@dataclass(frozen=True)
class Thresholds:
    min_rows: int
    min_accuracy: float
    min_r2: float
    max_regression: float
    latency_budget_ms: float = 20.0
    max_artifact_bytes: int = 200 * 1024 * 1024

    def overridden(self, overrides: dict[str, float]) -> Thresholds:
        """These thresholds with a model's own values; an unknown name is a configuration error."""
        unknown = set(overrides) - set(self.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"unknown thresholds {sorted(unknown)}; known: {sorted(self.__dataclass_fields__)}"
            )
        typed = {name: type(getattr(self, name))(value) for name, value in overrides.items()}
        return replace(self, **typed)


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


PARITY_TOLERANCE = 1e-4

Signature = dict[str, list[tuple[str, str, tuple[int, ...]]]]


def schema_gate(candidate: Signature, champion: Signature | None, declared_change: bool) -> GateResult:
    """Inputs and outputs must match the champion's (names, datatypes, shapes), or the change must
    have been declared: clients built against the champion would break otherwise."""
    if champion is None:
        return GateResult(name="schema", passed=True, detail="no champion to be compatible with")
    differences = [
        f"{side}: champion {champion[side]} vs candidate {candidate[side]}"
        for side in ("inputs", "outputs")
        if candidate[side] != champion[side]
    ]
    if not differences:
        return GateResult(name="schema", passed=True, detail="same inputs and outputs as the champion")
    if declared_change:
        return GateResult(name="schema", passed=True, detail="declared change: " + "; ".join(differences))
    return GateResult(name="schema", passed=False, detail="undeclared change: " + "; ".join(differences))


def latency_gate(onnx_bytes: bytes, rows: np.ndarray, budget_ms: float, samples: int = 200) -> GateResult:
    """p99 of one-row inference in onnxruntime (one thread, after a warm-up) within the budget."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    singles = [rows[i % len(rows)][None, :] for i in range(samples)]
    session.run(None, {name: singles[0]})
    timings = np.empty(samples)
    for index, row in enumerate(singles):
        started = time.perf_counter()
        session.run(None, {name: row})
        timings[index] = time.perf_counter() - started
    p99_ms = float(np.percentile(timings, 99) * 1000)
    return GateResult(
        name="latency_p99_ms",
        passed=p99_ms <= budget_ms,
        value=round(p99_ms, 4),
        threshold=budget_ms,
        detail=f"p99 of {samples} one-row runs",
    )


def parity_gate(onnx_bytes: bytes, reference: dict[str, list[list[float]]] | None, task: str) -> GateResult:
    """Recheck ONNX parity on the artifact about to be promoted: it must reproduce the outputs
    scikit-learn gave the trainer for a few held-out rows (probabilities or values within 1e-4,
    relative for values)."""
    if not reference or not reference.get("rows"):
        return GateResult(name="onnx_parity", passed=False, detail="the trainer recorded no parity reference")
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    rows = np.asarray(reference["rows"], dtype=np.float32)
    expected = np.asarray(reference["outputs"], dtype=np.float64)
    outputs = session.run(None, {session.get_inputs()[0].name: rows})
    if task == "classification":
        got = np.asarray(outputs[1], dtype=np.float64)
        gap = float(np.max(np.abs(got - expected)))
        expected_labels = np.asarray(reference.get("labels", []), dtype=np.float64).ravel()
        labels_agree = bool(np.array_equal(np.asarray(outputs[0], dtype=np.float64), expected_labels))
    else:
        got = np.asarray(outputs[0], dtype=np.float64).reshape(expected.shape)
        gap = float(np.max(np.abs(got - expected) / np.maximum(1.0, np.abs(expected))))
        labels_agree = True
    return GateResult(
        name="onnx_parity",
        passed=labels_agree and gap <= PARITY_TOLERANCE,
        value=gap,
        threshold=PARITY_TOLERANCE,
        detail=f"{len(rows)} held-out rows" + ("" if labels_agree else "; labels differ"),
    )


def size_gate(size_bytes: int, budget_bytes: int) -> GateResult:
    return GateResult(
        name="artifact_bytes", passed=size_bytes <= budget_bytes, value=size_bytes, threshold=budget_bytes
    )

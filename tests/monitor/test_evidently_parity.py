"""Cascade's per-feature drift statistics and verdicts against Evidently's on the same data.

Evidently 0.7.23 needs pandas < 3, so it runs in its own venv (bench/.work/evidently-venv, created
on first use by bench/monitor/evidently_env.py; creating it needs PyPI and a failure fails the
test). All cases go to one Evidently subprocess."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cascade.services.monitor.drift import (
    CATEGORICAL,
    NUMERIC,
    Calibration,
    PreparedReference,
    dataset_drifted,
    evaluate,
    feature_drift,
)

pytestmark = pytest.mark.slow

# The evidently mode ignores the calibration: an empty one shows that.
NO_CALIBRATION = Calibration(
    window_size=1,
    false_alarm_rate=0.01,
    thresholds={},
    feature_false_alarm_rate=0.01,
    inflation={},
    draws=0,
    draw_false_alarm_rate=0.0,
    holdout_rows=0,
)

ROOT = Path(__file__).resolve().parents[2]
ENV_SCRIPT = ROOT / "bench" / "monitor" / "evidently_env.py"
WORKER = ROOT / "bench" / "monitor" / "evidently_worker.py"


@dataclass(frozen=True)
class Case:
    name: str
    reference: np.ndarray[Any, np.dtype[np.float64]]
    current: np.ndarray[Any, np.dtype[np.float64]]
    features: list[str]
    categorical: list[str]


def _case(
    name: str, seed: int, reference_rows: int, current_rows: int, shift: float, everywhere: bool = False
) -> Case:
    """Six numeric columns (two shifted, or all six `everywhere`), a ternary and a binary numeric
    column, two categoricals (one of them shifted in its frequencies)."""
    rng = np.random.default_rng(seed)

    def columns(rows: int, moved: float) -> np.ndarray[Any, np.dtype[np.float64]]:
        numeric = rng.normal(size=(rows, 6)) * [1, 2, 0.5, 10, 1, 3] + [0, 5, -1, 100, 0, 0]
        numeric[:, 0] += moved
        numeric[:, 3] += moved * 10
        if everywhere:
            numeric[:, [1, 2, 4, 5]] += moved
        ternary = rng.integers(0, 3, rows)
        binary = rng.random(rows) < 0.3 + moved / 10
        colour = rng.choice(7, rows, p=[0.3, 0.2, 0.15, 0.15, 0.1, 0.05, 0.05])
        level = rng.choice(4, rows, p=np.roll([0.4, 0.3, 0.2, 0.1], int(moved > 0)))
        return np.column_stack([numeric, ternary, binary, colour, level]).astype(np.float64)

    features = [*(f"n{i}" for i in range(6)), "ternary", "binary", "colour", "level"]
    return Case(
        name, columns(reference_rows, 0.0), columns(current_rows, shift), features, ["colour", "level"]
    )


CASES = [
    _case("small reference, no shift", 1, 400, 200, 0.0),
    _case("small reference, shift", 2, 800, 300, 0.6),
    _case("small reference, tiny window", 3, 120, 40, 0.3),
    _case("large reference, no shift", 4, 5000, 1000, 0.0),
    _case("large reference, shift", 5, 3000, 2000, 0.6),
    _case("large reference, slight shift", 6, 2000, 500, 0.15),
    _case("small reference, shift everywhere", 7, 1000, 500, 1.0, everywhere=True),
    _case("large reference, shift everywhere", 8, 1001, 500, 1.0, everywhere=True),
]


@pytest.fixture(scope="module")
def evidently_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    python = subprocess.run(
        [sys.executable, str(ENV_SCRIPT)], check=True, capture_output=True, text=True
    ).stdout.strip()
    work = tmp_path_factory.mktemp("evidently")
    arrays: dict[str, Any] = {}
    for index, case in enumerate(CASES):
        arrays[f"reference_{index}"] = case.reference
        arrays[f"current_{index}"] = case.current
        arrays[f"meta_{index}"] = json.dumps({"features": case.features, "categorical": case.categorical})
    np.savez(work / "cases.npz", **arrays)
    subprocess.run([python, str(WORKER), str(work / "cases.npz"), str(work / "out.json")], check=True)
    results: list[dict[str, Any]] = json.loads((work / "out.json").read_text())
    return results


@pytest.mark.parametrize("index", range(len(CASES)), ids=[case.name for case in CASES])
def test_statistics_tests_and_verdicts_match_evidently(
    index: int, evidently_results: list[dict[str, Any]]
) -> None:
    case, theirs = CASES[index], evidently_results[index]
    kinds = {name: CATEGORICAL if name in case.categorical else NUMERIC for name in case.features}
    # Evidently compares the float64 values as they are: no trip through the model's input type.
    prepared = PreparedReference.of(case.reference, case.features, kinds, input_dtype=None)
    ours = evaluate(prepared, NO_CALIBRATION, case.current, mode="evidently")
    assert ours.drifted == theirs["dataset_drifted"]
    assert ours.features == feature_drift(case.current, prepared)
    for drift in ours.features:
        expected = theirs["columns"][drift.feature]
        assert drift.test == expected["test"], drift.feature
        assert drift.threshold == expected["threshold"], drift.feature
        assert math.isclose(drift.score, expected["score"], rel_tol=1e-6, abs_tol=1e-9), (
            drift.feature,
            drift.score,
            expected["score"],
        )
        drifted = (
            expected["score"] < expected["threshold"]
            if drift.test in ("ks", "chisquare", "z")
            else (expected["score"] >= expected["threshold"])
        )
        assert drift.drifted == drifted, drift.feature
    assert dataset_drifted([d.drifted for d in ours.features]) == theirs["dataset_drifted"]


def test_the_cases_cover_every_default_test_and_both_verdicts(
    evidently_results: list[dict[str, Any]],
) -> None:
    tests = {column["test"] for result in evidently_results for column in result["columns"].values()}
    assert tests == {"ks", "chisquare", "z", "wasserstein", "jensenshannon"}
    assert {result["dataset_drifted"] for result in evidently_results} == {True, False}

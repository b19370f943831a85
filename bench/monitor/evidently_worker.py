"""Runs Evidently's DataDriftPreset on cases written by the project's side; runs inside the
Evidently venv (see evidently_env.py), never in the project's.

Usage: python evidently_worker.py CASES.npz OUT.json [--repeat N]

CASES.npz holds, per case i: `reference_i`, `current_i` (rows x features) and `meta_i`, a JSON
string `{"features": [...], "categorical": [...]}`. OUT.json gets, per case, Evidently's test name,
drift score and threshold per column, its drifted share and the seconds `Report.run` took (the
best of `--repeat` runs, from DataFrames to the finished snapshot).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset

# Evidently names tests by display name; the monitor by short name.
TEST_NAMES = {
    "K-S p_value": "ks",
    "chi-square p_value": "chisquare",
    "Z-test p_value": "z",
    "Wasserstein distance (normed)": "wasserstein",
    "Jensen-Shannon distance": "jensenshannon",
    "PSI": "psi",
}


def run_case(reference: np.ndarray, current: np.ndarray, meta: dict, repeat: int) -> dict:
    features, categorical = meta["features"], set(meta["categorical"])
    definition = DataDefinition(
        numerical_columns=[f for f in features if f not in categorical],
        categorical_columns=[f for f in features if f in categorical],
    )
    best, snapshot = float("inf"), None
    for _ in range(repeat):
        reference_frame = pd.DataFrame(reference, columns=features)
        current_frame = pd.DataFrame(current, columns=features)
        started = time.perf_counter()
        snapshot = Report([DataDriftPreset()]).run(
            Dataset.from_pandas(current_frame, data_definition=definition),
            Dataset.from_pandas(reference_frame, data_definition=definition),
        )
        document = snapshot.dict()
        best = min(best, time.perf_counter() - started)
    columns, share = {}, None
    for metric in document["metrics"]:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            columns[config["column"]] = {
                "test": TEST_NAMES.get(config["method"], config["method"]),
                "score": float(metric["value"]),
                "threshold": float(config["threshold"]),
            }
        elif config["type"].endswith("DriftedColumnsCount"):
            share = float(metric["value"]["share"])
            drift_share = float(config["drift_share"])
    return {
        "columns": columns,
        "drifted_share": share,
        "dataset_drifted": share is not None and share >= drift_share,
        "seconds": best,
    }


def main() -> None:
    cases_path, out_path = sys.argv[1], sys.argv[2]
    repeat = int(sys.argv[sys.argv.index("--repeat") + 1]) if "--repeat" in sys.argv else 1
    cases = np.load(cases_path)
    count = len([name for name in cases.files if name.startswith("meta_")])
    results = [
        run_case(cases[f"reference_{i}"], cases[f"current_{i}"], json.loads(str(cases[f"meta_{i}"])), repeat)
        for i in range(count)
    ]
    with open(out_path, "w") as out:
        json.dump(results, out)


if __name__ == "__main__":
    main()

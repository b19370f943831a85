"""Runs NannyML's univariate drift (its defaults) on streams written by the detection benchmark;
runs inside the NannyML venv (see nannyml_env.py), never in the project's.

Usage: python nannyml_worker.py CASES.npz OUT.json

CASES.npz holds, per case i: `reference_i` (rows x features), `stream_i` (the windows one after
the other) and `meta_i`, a JSON string `{"features": [...], "categorical": [...], "window": n}`.
NannyML fits on the reference in chunks of the window size (its thresholds: mean + 3 std of the
reference chunks' Jensen-Shannon distances) and judges each window of the stream as a chunk.
OUT.json gets, per case, per window: whether any feature alerted, and how many did.
"""

from __future__ import annotations

import json
import sys
import warnings

import nannyml
import numpy as np
import pandas as pd


def run_case(reference: np.ndarray, stream: np.ndarray, meta: dict) -> dict:
    features, window = meta["features"], int(meta["window"])
    calculator = nannyml.UnivariateDriftCalculator(
        column_names=features, treat_as_categorical=meta["categorical"] or None, chunk_size=window
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "too few chunks" and pandas notices: counted, not shown
        calculator.fit(pd.DataFrame(reference, columns=features))
        results = calculator.calculate(pd.DataFrame(stream, columns=features))
    frame = results.filter(period="analysis").to_df()
    alerts = frame[[column for column in frame.columns if column[-1] == "alert"]].to_numpy(dtype=bool)
    return {"alarms": alerts.any(axis=1).tolist(), "alerting_features": alerts.sum(axis=1).tolist()}


def main() -> None:
    cases = np.load(sys.argv[1])
    count = len([name for name in cases.files if name.startswith("meta_")])
    results = [
        run_case(cases[f"reference_{i}"], cases[f"stream_{i}"], json.loads(str(cases[f"meta_{i}"])))
        for i in range(count)
    ]
    with open(sys.argv[2], "w") as out:
        json.dump(results, out)


if __name__ == "__main__":
    main()

"""Training time against rows and trials, with the same in-process baseline each time.

    .venv/bin/python bench/training.py

For 30-feature classification data of growing size, runs the trainer's search (the default spec:
Bayesian TPE over logistic regression, random forests, and XGBoost and LightGBM where installed,
3-fold CV, median pruning) with 4 and 12 trials, and prints wall time, time per trial, and the ratio
to a baseline measured in the same run: one plain fit of a scaled logistic regression on the same
rows; then, per family, the mean time of its trials that ran all folds (pruned ones stop early).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cascade.services.trainer.training import train
from cascade.training_spec import TrainingSpec

ROWS = (500, 5_000, 50_000)
TRIALS = (4, 12)


def main() -> None:
    header = ("rows", "trials", "train (s)", "per trial (s)", "baseline fit (s)", "ratio")
    print("{:>7} {:>6} {:>10} {:>14} {:>17} {:>7}".format(*header))
    for rows in ROWS:
        x, y = make_classification(n_samples=rows, n_features=30, n_informative=10, random_state=0)
        frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(30)]).assign(target=y)
        features = [c for c in frame.columns if c != "target"]
        started = time.perf_counter()
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x.astype(np.float32), y)
        baseline = time.perf_counter() - started
        for trials in TRIALS:
            started = time.perf_counter()
            result = train(frame, features, "target", "classification", spec=TrainingSpec(max_trials=trials))
            elapsed = time.perf_counter() - started
            print(
                f"{rows:>7} {trials:>6} {elapsed:>10.2f} {result.durations['search'] / trials:>14.3f} "
                f"{baseline:>17.3f} {elapsed / baseline:>7.0f}x   best {result.params['estimator']}; "
                f"search {result.durations['search']:.2f} s, "
                f"export+parity {result.durations['export_and_parity']:.2f} s, "
                f"importance {result.durations['importance']:.2f} s",
                flush=True,
            )
            print("        per family, mean of full trials (s): " + _per_family(result.trials), flush=True)


def _per_family(trials: list[dict[str, Any]]) -> str:
    seconds: dict[str, list[float]] = {}
    for trial in trials:
        if not trial["pruned"]:
            seconds.setdefault(trial["estimator"], []).append(trial["seconds"])
    means = [f"{name} {np.mean(times):.3f} (n={len(times)})" for name, times in sorted(seconds.items())]
    return ", ".join(means)


if __name__ == "__main__":
    main()

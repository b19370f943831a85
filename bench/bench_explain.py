"""Per-row explanation latency of cascade.explain over the ONNX artifact, against shap's
KernelExplainer on the scikit-learn model, in the same run, on the same rows and background.

    flock /tmp/cascade-heavy.lock .venv/bin/python bench/bench_explain.py [--rows 100] [--kernel-rows 8] \
        [--regression]

Data: scikit-learn's bundled breast_cancer (30 features, binary), split by the trainer's own hold-out
rule. Models: built and exported exactly as the trainer does (build_pipeline, export_onnx) with
parameters from its search space; background: 100 training rows drawn as the trainer draws its
`explain_background` tag (background_sample, seed 42).

For each model:
- ours: `OnnxExplainer.explain(one row)` per row (as one Explain request of one row), p50/p90 over
  `--rows` held-out rows, and the per-row cost when all rows go in one call (batch);
- shap: `KernelExplainer(f, background).shap_values(one row, nsamples=2*30+2048, l1_reg=False)` (shap's
  "auto" sample size; l1_reg off, since its default keeps only 10 of the 30 features) on the first
  `--kernel-rows` rows, f the sklearn model's function of the same output (log-odds for linear and
  boosting, the class-1 probability for forests);
- accuracy: max |shap KernelExplainer - ours| over those rows (ours is exact: the linear and tree
  paths are checked against the definition in tests/explain), beside the largest |attribution|;
- our KernelSHAP fallback (`method="kernel"`, the same 2108 coalitions x 100 background rows over the
  ONNX session, what an unknown graph gets) on the same rows, and its max error against our exact
  answer where both decompose the same output (forests: the probability).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer, load_diabetes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cascade.explain import OnnxExplainer
from cascade.services.trainer.attribution import background_sample
from cascade.services.trainer.training import build_pipeline, export_onnx
from cascade.splits import holdout_mask

warnings.filterwarnings("ignore")

SEED = 42
BACKGROUND_ROWS = 100
FAMILIES: list[tuple[str, dict[str, Any]]] = [
    ("logistic_regression", {"C": 1.0}),
    ("gradient_boosting", {"n_estimators": 100, "max_depth": 3}),
    ("random_forest", {"n_estimators": 100, "max_depth": 8}),
    ("random_forest", {"n_estimators": 120, "max_depth": 12}),  # the trainer's largest forest
]
# And, with --regression, the trainer's largest regression forest on diabetes (10 features): fully
# grown regression trees are the tree path's slowest case.
REGRESSION: list[tuple[str, dict[str, Any]]] = [
    ("gradient_boosting", {"n_estimators": 100, "max_depth": 3}),
    ("random_forest", {"n_estimators": 120, "max_depth": 12}),
]


def _percentiles(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 90))


def _sklearn_output(name: str, pipeline: Any, task: str) -> Callable[[np.ndarray], np.ndarray]:
    if task == "regression":
        return lambda x: np.asarray(pipeline.predict(x.astype(np.float32)))
    if name == "random_forest":
        return lambda x: np.asarray(pipeline.predict_proba(x.astype(np.float32))[:, 1])
    return lambda x: np.asarray(pipeline.decision_function(x.astype(np.float32)))


def _per_row(
    explainer: OnnxExplainer, rows: np.ndarray, output: int | None
) -> tuple[list[float], np.ndarray]:
    latencies, attributions = [], []
    for row in rows:
        started = time.perf_counter()
        explanation = explainer.explain(row[None, :], output=output)
        latencies.append((time.perf_counter() - started) * 1000)
        attributions.append(explanation.attributions[0])
    return latencies, np.asarray(attributions)


def _split(load: Callable[..., Any], rows: int) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    frame: pd.DataFrame = load(as_frame=True).frame
    features = [c for c in frame.columns if c != "target"]
    held_out = holdout_mask(frame, 0.2)
    x_train = frame.loc[~held_out, features].to_numpy(np.float32)
    y_train = frame.loc[~held_out, "target"].to_numpy()
    return features, x_train, y_train, frame.loc[held_out, features].to_numpy(np.float32)[:rows]


def _run(
    dataset: str, task: str, families: list[tuple[str, dict[str, Any]]], args: argparse.Namespace
) -> None:
    import shap

    load = load_breast_cancer if dataset == "breast_cancer" else load_diabetes
    features, x_train, y_train, x_test = _split(load, args.rows)
    if task == "classification":
        y_train = y_train.astype(np.int64)
    output = 1 if task == "classification" else None
    background = background_sample(x_train, BACKGROUND_ROWS, SEED)
    samples = 2 * len(features) + 2048
    print(
        f"\n{dataset}: {len(features)} features, {len(background)} background rows, {len(x_test)} rows "
        f"(ours), {args.kernel_rows} rows (KernelExplainer, nsamples={samples}, l1_reg=False)\n"
    )
    header = (
        "model", "method", "space", "build ms", "p50 ms", "p90 ms", "batch ms/row",
        "shap p50 ms", "shap p90 ms", "ratio p50", "max|shap-ours|", "max|phi|",
        "fallback p50 ms", "fallback err",
    )  # fmt: skip
    print(" | ".join(header))
    for name, params in families:
        pipeline = build_pipeline(name, task, params, SEED).fit(x_train, y_train)  # type: ignore[arg-type]
        onnx_bytes = export_onnx(pipeline, len(features), task)  # type: ignore[arg-type]
        started = time.perf_counter()
        explainer = OnnxExplainer(onnx_bytes, background, features)
        build_ms = (time.perf_counter() - started) * 1000
        explainer.explain(x_test[:1], output=output)  # warm the session
        latencies, ours = _per_row(explainer, x_test, output)
        started = time.perf_counter()
        batch = explainer.explain(x_test, output=output)
        batch_ms = (time.perf_counter() - started) * 1000 / len(x_test)
        assert np.allclose(batch.attributions, ours, atol=1e-9)

        kernel_rows = x_test[: args.kernel_rows]
        reference = shap.KernelExplainer(_sklearn_output(name, pipeline, task), background.astype(np.float64))
        shap_latencies, shap_values = [], []
        for row in kernel_rows:
            started = time.perf_counter()
            values = reference.shap_values(
                row[None, :].astype(np.float64), nsamples=samples, l1_reg=False, silent=True
            )
            shap_latencies.append((time.perf_counter() - started) * 1000)
            shap_values.append(np.asarray(values).reshape(-1))
        shap_error = float(np.abs(np.asarray(shap_values) - ours[: len(kernel_rows)]).max())

        fallback = OnnxExplainer(onnx_bytes, background, features, method="kernel", kernel_samples=samples)
        fallback_latencies, fallback_values = _per_row(fallback, kernel_rows, output)
        same_space = fallback.output_space == explainer.output_space
        fallback_error = (
            f"{np.abs(fallback_values - ours[: len(kernel_rows)]).max():.1e}"
            if same_space
            else "(other space)"
        )

        p50, p90 = _percentiles(latencies)
        shap_p50, shap_p90 = _percentiles(shap_latencies)
        label = f"{name}({','.join(f'{k}={v}' for k, v in params.items())})"
        print(
            " | ".join(
                [
                    label,
                    explainer.method,
                    explainer.output_space,
                    f"{build_ms:.0f}",
                    f"{p50:.2f}",
                    f"{p90:.2f}",
                    f"{batch_ms:.2f}",
                    f"{shap_p50:.0f}",
                    f"{shap_p90:.0f}",
                    f"{shap_p50 / p50:.0f}x",
                    f"{shap_error:.1e}",
                    f"{np.abs(ours).max():.2f}",
                    f"{_percentiles(fallback_latencies)[0]:.0f}",
                    fallback_error,
                ]
            ),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100, help="held-out rows our explainer explains")
    parser.add_argument("--kernel-rows", type=int, default=8, help="rows shap's KernelExplainer explains")
    parser.add_argument("--regression", action="store_true", help="also diabetes regressors (10 features)")
    args = parser.parse_args()
    _run("breast_cancer", "classification", FAMILIES, args)
    if args.regression:
        _run("diabetes", "regression", REGRESSION, args)


if __name__ == "__main__":
    main()

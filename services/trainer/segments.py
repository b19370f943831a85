"""Out-of-core fitting: a dataset version's Parquet file read segment by segment (Arrow record
batches), never whole, for the families that can learn that way.

Which families can, and how:
- ridge and linear_regression: exactly. One pass accumulates the sufficient statistics (row count,
  sums, X'X and X'y, in float64), from which the standardised least-squares solution is solved;
  the result is the pipeline a whole-frame fit makes, to rounding. Memory: one segment plus a
  features x features matrix.
- logistic_regression: approximately, as stochastic gradient descent on the same log loss
  (SGDClassifier.partial_fit, a few epochs over the segments, the scaler fitted in a first pass).
  Not the same optimiser as the whole-frame L-BFGS fit: a model within tolerance, not identical.
- random_forest and gradient_boosting need the whole frame (every split looks at every row);
  XGBoost and LightGBM can train from external memory but are not wired here.

The hold-out rows are recognised segment by segment (cascade.splits hashes each row on its own), so
a segment-wise fit learns from the same rows as the whole-frame one, and the validator holds out the
same rows. The trainer's service path uses this for versions over CASCADE_TRAINER_OUT_OF_CORE_ROWS
(out_of_core.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from sklearn.linear_model import LinearRegression, Ridge, SGDClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from cascade.errors import InvalidArgument

INCREMENTAL: frozenset[str] = frozenset({"ridge", "linear_regression", "logistic_regression"})
WHOLE_FRAME: frozenset[str] = frozenset({"random_forest", "gradient_boosting", "xgboost", "lightgbm"})
SEGMENT_ROWS = 16_384
SGD_EPOCHS = 5
BUCKETS = 10_000  # cascade.splits.holdout_mask's: a row is held out when its bucket < fraction x BUCKETS
READ_BUFFER_BYTES = 1 << 20  # a column chunk is streamed through a buffer this size
SELECT_SHARE = 0.1  # of all rows, taken from the training rows to score candidates out of core

# (features, labels) of each segment's training rows, afresh on every call: a fit may pass twice.
Segments = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]


Part = Literal["train", "fit", "select", "holdout"]


def parquet_segments(
    path: Path, features: list[str], target: str, holdout: float, rows: int = SEGMENT_ROWS
) -> Segments:
    """The training rows of a Parquet file, `rows` at a time (the held-out rows left out)."""
    return split_segments(path, features, target, holdout, "train", rows)


def split_segments(
    path: Path,
    features: list[str],
    target: str,
    holdout: float,
    part: Part,
    rows: int = SEGMENT_ROWS,
    select_share: float = SELECT_SHARE,
) -> Segments:
    """One part of a Parquet file's rows, `rows` at a time. Every row falls in a bucket by the hash
    cascade.splits uses (so "holdout" is exactly the rows holdout_mask holds out); "train" is the
    rest, which splits into "select" (the next `select_share` of buckets: rows candidates are
    scored on) and "fit" (what candidates learn from)."""
    held_out, selected = int(holdout * BUCKETS), int((holdout + select_share) * BUCKETS)

    def read() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for batch in _file(path).iter_batches(batch_size=rows, columns=[*features, target]):
            frame = batch.to_pandas()
            bucket = row_buckets(frame[[*features, target]])
            if part == "holdout":
                keep = bucket < held_out
            elif part == "train":
                keep = bucket >= held_out
            elif part == "select":
                keep = (bucket >= held_out) & (bucket < selected)
            else:
                keep = bucket >= selected
            kept = frame[keep]
            if len(kept):
                yield kept[features].to_numpy(dtype=np.float32), kept[target].to_numpy()

    return read


def _file(path: Path) -> pq.ParquetFile:
    """The file, read a page at a time. Not pre-buffered: pyarrow's pre-buffering fetches the column
    chunks of every row group iter_batches will read, which is the whole file, before the first
    batch (the segment-wise peak then grew with the file: bench/RESULTS.md)."""
    return pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER_BYTES)


def row_buckets(frame: pd.DataFrame) -> np.ndarray:
    """Each row's bucket in 0..BUCKETS-1, by the hash of its values (as cascade.splits.holdout_mask)."""
    hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64)
    return (hashes % np.uint64(BUCKETS)).astype(np.int64)


def fit_segments(family: str, params: dict[str, float], segments: Segments, seed: int = 42) -> Pipeline:
    """The family's pipeline (scaler and model, as build_pipeline makes) fitted segment by segment."""
    if family in ("ridge", "linear_regression"):
        alpha = float(params.get("alpha", 1.0)) if family == "ridge" else 0.0
        return _least_squares(
            segments, alpha, Ridge(alpha=alpha) if family == "ridge" else LinearRegression()
        )
    if family == "logistic_regression":
        return _log_loss_sgd(segments, float(params.get("C", 1.0)), seed)
    raise InvalidArgument(
        f"{family} cannot be fitted segment by segment; the families that can: {sorted(INCREMENTAL)}"
    )


def _least_squares(segments: Segments, alpha: float, model: Ridge | LinearRegression) -> Pipeline:
    count, sums, cross, target_sum, target_cross = 0, None, None, 0.0, None
    for x, y in segments():
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        count += len(x64)
        sums = x64.sum(axis=0) if sums is None else sums + x64.sum(axis=0)
        cross = x64.T @ x64 if cross is None else cross + x64.T @ x64
        target_sum += float(y64.sum())
        target_cross = x64.T @ y64 if target_cross is None else target_cross + x64.T @ y64
    if count == 0 or sums is None or cross is None or target_cross is None:
        raise InvalidArgument("no training rows in the segments")
    mean = sums / count
    variance = np.maximum(np.diag(cross) / count - mean**2, 0.0)
    scale = np.where(variance > 0, np.sqrt(variance), 1.0)  # as StandardScaler leaves constant columns
    target_mean = target_sum / count
    centred = (cross - count * np.outer(mean, mean)) / np.outer(scale, scale)
    centred_target = (target_cross - count * mean * target_mean) / scale
    coefficients = np.linalg.lstsq(centred + alpha * np.eye(len(mean)), centred_target, rcond=None)[0]
    scaler = StandardScaler()
    scaler.mean_, scaler.var_, scaler.scale_ = mean, variance, scale
    scaler.n_features_in_, scaler.n_samples_seen_ = len(mean), count
    model.coef_, model.intercept_ = coefficients, target_mean
    model.n_features_in_ = len(mean)
    return Pipeline([("scale", scaler), ("model", model)])


def _log_loss_sgd(segments: Segments, c: float, seed: int) -> Pipeline:
    scaler = StandardScaler()
    classes: set[int] = set()
    count = 0
    for x, y in segments():
        scaler.partial_fit(x)
        classes.update(int(v) for v in np.unique(y))
        count += len(x)
    if count == 0:
        raise InvalidArgument("no training rows in the segments")
    # LogisticRegression's penalty is 1/(2C) |w|^2 over the summed loss; SGD's alpha/2 |w|^2 over the mean.
    # Averaged SGD: the last step's weights wander with the last segment; their average settles
    # near the whole-frame optimum (88% agreement with L-BFGS's labels without it, over 95% with).
    model = SGDClassifier(loss="log_loss", alpha=1.0 / (c * count), average=True, random_state=seed)
    labels = np.array(sorted(classes))
    for _ in range(SGD_EPOCHS):
        for x, y in segments():
            model.partial_fit(scaler.transform(x), y.astype(np.int64), classes=labels)
    return Pipeline([("scale", scaler), ("model", model)])
